"""A SIGKILLed worker polls again within a second of its restart (issue 23, part 6): `takeback worker`
imports and builds only what a worker needs before its first poll. The mail provider's client, the
carrier's, the PDF and QR code libraries, the API's web stack and the trace exporters are imported
where they are used (the first mail, pickup, certificate, health request, or with traces on), so a
worker configured for production (SendGrid, EasyPost) starts without them. Each check runs in a
fresh interpreter: this process has imported everything."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Imported where they are used, never on the way to a worker's first poll (bench/RESULTS.md).
LAZY = (
    "sendgrid",  # activities/mailer.py: at the first mail
    "python_http_client",
    "easypost",  # activities/carrier.py: at the first pickup booked or cancelled
    "reportlab",  # domain/certificate.py: when a certificate's PDF is rendered
    "segno",
    "jinja2",  # the console (API only)
    "fastapi",
    "starlette",  # worker health: served after the worker has started polling
    "uvicorn",
    "opentelemetry.sdk",  # observability/tracing.py: only with traces on
    "opentelemetry.exporter",
)

PRODUCTION_LIKE = {
    "TAKEBACK_ENV": "test",
    "TAKEBACK_WORKFLOW_SANDBOX": "false",  # as in service (the suite turns it on)
    "SENDGRID_API_KEY": "SG.imports-test",
    "TAKEBACK_CARRIER": "easypost",
    "EASYPOST_API_KEY": "EZTK-imports-test",
    "EASYPOST_WEBHOOK_SECRET": "imports-test-webhook-secret-0123456789abcdef",
    "TAKEBACK_RETURNS_ADDRESS": json.dumps({"street1": "1 Dock St", "city": "Ottawa", "zip": "K1A0B1", "country": "CA"}),
    "TAKEBACK_SIM_CARRIER_STEP": "0s",
}

# Ends the interpreter at once once it has reported: finalizing it while the SDK's runtime threads still run
# can abort (PyGILState_Release "must be current", seen once in a full run), which is not what this measures.
REPORT = "import json, os, sys; print(json.dumps(sorted(m for m in {lazy!r} if m in sys.modules)), flush=True); os._exit(0)"


def loaded_in_a_fresh_interpreter(code: str, env: dict | None = None) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", code + "\n" + REPORT.format(lazy=LAZY)], cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_worker_pulls_in_none_of_the_lazy_modules():
    assert loaded_in_a_fresh_interpreter("import worker", PRODUCTION_LIKE) == []


def test_a_worker_configured_for_sendgrid_and_easypost_starts_polling_without_them(dev_server_env, tmp_path):
    """Built and started as `takeback worker` does (its activities, mailer and carrier made from the
    settings), polling a real server: still none of them."""
    start = """
import asyncio
import worker
from settings import get_settings

async def start():
    settings = get_settings()
    client = await worker.connect(settings)
    async with worker.build_worker(client, settings):
        pass  # both queues polled

asyncio.run(start())
"""
    env = {
        **PRODUCTION_LIKE,
        "TEMPORAL_ADDRESS": dev_server_env.client.service_client.config.target_host,
        "TAKEBACK_DATA_DIR": str(tmp_path),
        "TAKEBACK_TASK_QUEUE": f"imports-{uuid.uuid4().hex[:8]}",
    }
    assert loaded_in_a_fresh_interpreter(start, env) == []


def test_the_lazy_ones_still_load_where_they_are_used(tmp_path):
    """The mailer and the carrier made from those settings reach SendGrid's and EasyPost's code at first use."""
    use = f"""
from activities.carrier import carrier_from_settings
from activities.mailer import mailer_from_settings
from settings import Settings

settings = Settings(data_dir={str(tmp_path)!r})
assert mailer_from_settings(settings).client.client.timeout == 10
assert carrier_from_settings(settings).name == "EasyPost"
"""
    assert {"sendgrid", "easypost"} <= set(loaded_in_a_fresh_interpreter(use, PRODUCTION_LIKE))
