"""The worker outlives a Temporal restart: it reconnects and the deal carries on."""

import asyncio
import os
import tempfile
from pathlib import Path

from domain.models import ReceiptItem
from service import deals
from settings import Settings
from temporal_client import connect
from tests.chaos import Stack, free_port
from tests.conftest import add_partner, booking


async def test_worker_reconnects_after_the_server_restarts():
    data_dir = Path(tempfile.mkdtemp(prefix="takeback-reconnect-"))
    port = free_port()
    env = dict(os.environ, TEMPORAL_ADDRESS=f"127.0.0.1:{port}", TAKEBACK_DATA_DIR=str(data_dir))
    env.pop("TAKEBACK_DATABASE_URL", None)
    settings = Settings(data_dir=data_dir, database_url="", temporal_address=f"127.0.0.1:{port}")
    add_partner(settings, "P1")
    stack = Stack(data_dir=data_dir, env=env, temporal_port=port, api_port=free_port())
    try:
        stack.start_server()
        stack.start_worker()
        client = await connect(settings)
        deal = await deals.book_deal(client, settings, booking(10))
        worker_pid = stack.worker.pid

        await asyncio.to_thread(stack.restart_server)  # state file kept; the worker keeps running
        client = await connect(settings)
        items = [ReceiptItem(product_id="C9300-48P", serial_number=f"R-{n}", condition="working", age_years=1) for n in range(8)]
        result = await asyncio.wait_for(deals.record_receipt(client, settings, deal.id, items), timeout=60)
        for _ in range(100):  # the release follows the receipt within moments
            view = await deals.get_deal(client, settings, deal.id)
            if view.incentive.status.value == "released":
                break
            await asyncio.sleep(0.1)
        assert stack.worker.poll() is None and stack.worker.pid == worker_pid  # the same worker process did it
    finally:
        stack.stop()
    assert stack.server_restarts == 1
    assert result["accepted"] == 8 and view.incentive.status.value == "released"
