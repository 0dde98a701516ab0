"""Operating it (issue 13), shown on a real stack: the Temporal dev server (with the search
attributes), `takeback worker` and `takeback api` as processes with JSON logs, metrics and health
on, mail through the SendGrid stand-in. Three deals live their lives once for the whole module:

- A (partner OK, 2 units): booked, both units received, incentive released, the release notice
  refused once (SendGrid down: 503) and then sent, the deal closed.
- C (partner NO, whose address SendGrid refuses): booked, received, released, the notice failed for good.
- B (partner OK, 10 units): booked, a pickup the carrier never reports on, 1 unit received: open,
  at risk (TAKEBACK_AT_RISK_WITHIN is 400d) and its pickup silent (TAKEBACK_PICKUP_SILENT_AFTER 0s).

The tests then read what an operator would: the worker's and the API's /metrics, the business
gauges against what the deals did, /readyz and /livez, the JSON log lines, and `temporal workflow
describe` with the DealStatus filter.
"""

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from settings import Settings
from tests.api_helpers import PICKUP, WEBHOOK_SECRET, booking_body, key
from tests.chaos import free_port, wait_port
from tests.conftest import add_partner, binary
from tests.sendgrid_standin import SendGridStandIn

ROOT = Path(__file__).resolve().parent.parent
OK, REFUSED = "OBS-OK", "OBS-NO"
UI_PARTNER = f"OBS-UI-{uuid.uuid4().hex[:6]}"
REFUSED_ADDRESS = "refused@partner.example"


@dataclass
class Observed:
    settings: Settings
    env: dict
    api: str
    worker_metrics: str
    worker_health: str
    logs: Path
    deals: dict = field(default_factory=dict)  # "A", "B", "C" -> deal id
    amounts: dict = field(default_factory=dict)  # "A", "B", "C" -> incentive amount
    booking_request_id: str = ""


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, its labels) -> value, from a Prometheus text page."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(page: dict, name: str, **labels) -> float:
    """The sum over the samples of `name` whose labels include `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (sample, sample_labels), v in page.items() if sample == name and wanted <= sample_labels)


async def until(check, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def spawn(command: str, env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "cli", *command.split()], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest_asyncio.fixture(scope="module")
async def observed(dev_server_env, tmp_path_factory):
    data = tmp_path_factory.mktemp("observed")
    standin = SendGridStandIn()
    standin.rejected_addresses.add(REFUSED_ADDRESS)
    api_port, metrics_port, health_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "TAKEBACK_ENV": "test",
        "TEMPORAL_ADDRESS": dev_server_env.client.service_client.config.target_host,
        "TAKEBACK_DATA_DIR": str(data),
        "TAKEBACK_TASK_QUEUE": f"obs-{uuid.uuid4().hex[:8]}",
        "TAKEBACK_CARRIER_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SENDGRID_API_KEY": "SG.observability-test-key-0123456789",
        "SENDGRID_HOST": standin.url,
        "TAKEBACK_LOG_FORMAT": "json",
        "TAKEBACK_SEARCH_ATTRIBUTES": "true",
        "TAKEBACK_WORKER_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
        "TAKEBACK_WORKER_HEALTH_ADDRESS": f"127.0.0.1:{health_port}",
        "TAKEBACK_GAUGES_CACHE": "0s",
        "TAKEBACK_AT_RISK_WITHIN": "400d",
        "TAKEBACK_PICKUP_SILENT_AFTER": "0s",
    }
    for name in ("TAKEBACK_DATABASE_URL", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        env.pop(name, None)
    settings = Settings(data_dir=data)
    add_partner(settings, OK, "ok@partner.example")
    add_partner(settings, REFUSED, REFUSED_ADDRESS)
    worker = spawn("worker", env, data / "worker.log")
    api = spawn(f"api --port {api_port}", env, data / "api.log")
    try:
        wait_port(api_port, api, "api")
        wait_port(health_port, worker, "worker health")
        seen = Observed(settings, env, f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{metrics_port}/metrics", f"http://127.0.0.1:{health_port}", data)
        async with httpx.AsyncClient(base_url=seen.api, timeout=30) as http:
            await live_three_deals(http, seen, standin)
        yield seen
    finally:
        stop(api)
        stop(worker)
        standin.server.shutdown()


async def live_three_deals(http: httpx.AsyncClient, seen: Observed, standin: SendGridStandIn) -> None:
    ops = key(seen.settings)
    seen.booking_request_id = f"obs-booking-{uuid.uuid4().hex[:8]}"

    async def book(partner: str, units: int, request_id: str | None = None) -> str:
        headers = {**ops, **({"X-Request-Id": request_id} if request_id else {})}
        answer = await http.post("/v1/deals", json=booking_body(partner, units), headers=headers)
        assert answer.status_code == 201, answer.text
        return answer.json()["id"]

    async def receive(deal: str, prefix: str, n: int) -> None:
        items = [{"product_id": "C9300-48P", "serial_number": f"{prefix}-{i}", "condition": "working", "age_years": 1} for i in range(n)]
        answer = await http.post(f"/v1/deals/{deal}/receipts", json={"items": items}, headers=ops)
        assert answer.status_code == 200 and answer.json()["accepted"] == n, answer.text

    async def mail_state(deal: str) -> str | None:
        states = [message["state"] for message in (await http.get(f"/v1/deals/{deal}/emails", headers=ops)).json()]
        return states[0] if states and states[0] in ("sent", "failed") else None

    async def closed(deal: str) -> bool:
        return (await http.get(f"/v1/deals/{deal}", headers=ops)).json()["status"] == "closed"

    run = uuid.uuid4().hex[:6]
    partner = {"id": UI_PARTNER, "name": "Observed", "contact_email": "ui@partner.example", "country": "CA"}
    assert (await http.post("/v1/partners", json=partner, headers=ops)).status_code == 201  # its workflow starts with a summary
    seen.deals["A"] = await book(OK, 2, seen.booking_request_id)
    standin.down = True  # the release notice's first attempt meets an outage (503), its retry gets through
    await receive(seen.deals["A"], f"OBA{run}", 2)
    await until(lambda: asyncio.sleep(0, standin.refusals[503] >= 1), "the notice to meet the outage")
    standin.down = False
    seen.deals["C"] = await book(REFUSED, 2)
    await receive(seen.deals["C"], f"OBC{run}", 2)
    seen.deals["B"] = await book(OK, 10)
    assert (await http.post(f"/v1/deals/{seen.deals['B']}/pickups", json=PICKUP, headers=ops)).status_code == 201
    await receive(seen.deals["B"], f"OBB{run}", 1)
    assert (await http.get(f"/v1/deals/{seen.deals['A']}")).status_code == 401  # no key: counted as a 4xx of its route
    for name in ("A", "C"):
        await until(lambda: closed(seen.deals[name]), f"deal {name} to close")
    assert await until(lambda: mail_state(seen.deals["A"]), "A's notice", timeout=30) == "sent"
    assert await until(lambda: mail_state(seen.deals["C"]), "C's notice") == "failed"
    for name, deal in seen.deals.items():
        seen.amounts[name] = Decimal((await http.get(f"/v1/deals/{deal}", headers=ops)).json()["incentive"]["amount"])


# --- metrics --------------------------------------------------------------------------------------


async def test_the_worker_metrics_count_what_the_deals_did(observed):
    page = samples(httpx.get(observed.worker_metrics, timeout=10).text)
    # The project's counters, through the SDK's meter, with the activity's labels.
    assert value(page, "takeback_emails_sent_total", kind="settlement") == 1  # A's, after the outage
    assert value(page, "takeback_emails_failed_total", kind="settlement", error="MailRejected") == 1  # C's
    assert value(page, "takeback_email_attempts_failed_total", kind="settlement", error="MailTemporarilyUnavailable") == 1
    assert value(page, "takeback_activity_failures_total", activity_type="notify_settlement", error="MailTemporarilyUnavailable") == 1
    # The SDK's own: what the alerts read.
    assert value(page, "temporal_workflow_completed_total", workflow_type="TakebackDealWorkflow") == 2
    assert value(page, "temporal_workflow_task_schedule_to_start_latency_seconds_count") > 0
    # ... with a bucket at the alert's 200 ms, so its p99 is read, not guessed between 100 and 500 ms.
    assert any(name == "temporal_workflow_task_schedule_to_start_latency_seconds_bucket" and ("le", "0.2") in labels for name, labels in page)
    assert value(page, "temporal_activity_execution_failed_total", activity_type="notify_settlement") == 1


async def test_the_api_metrics_count_requests_by_route_and_bookings(observed):
    text = httpx.get(f"{observed.api}/metrics", timeout=10).text
    page = samples(text)
    assert value(page, "takeback_deals_booked_total") == 3
    # The store counts receipts, and decides what they decide, in the API's transaction: counted there.
    assert value(page, "takeback_receipt_batches_processed_total") == 3
    assert value(page, "takeback_receipt_items_total", result="accepted") == 5
    assert value(page, "takeback_settlements_total", outcome="released") == 2  # A and C, every unit back
    assert value(page, "takeback_http_requests_total", route="/v1/deals", method="POST", status="2xx") == 3
    assert value(page, "takeback_http_requests_total", route="/v1/deals/{deal_id}/receipts", method="POST", status="2xx") == 3
    assert value(page, "takeback_http_requests_total", route="/v1/deals/{deal_id}", method="GET", status="4xx") == 1  # the keyless one
    assert value(page, "takeback_http_request_duration_seconds_count", route="/v1/deals", method="POST") == 3
    assert value(page, "takeback_http_request_duration_seconds_bucket", route="/v1/deals", method="POST", le="+Inf") == 3
    # A path no route knows is counted under one label, not its own: random paths cannot grow the series.
    httpx.get(f"{observed.api}/no/such/{uuid.uuid4().hex}", timeout=10)
    page = samples(httpx.get(f"{observed.api}/metrics", timeout=10).text)
    assert value(page, "takeback_http_requests_total", route="unmatched", status="4xx") >= 1
    assert not [labels for name, labels in page if name == "takeback_http_requests_total" and ("route", "/no/such") in labels]


async def test_the_business_gauges_match_the_store(observed):
    page = samples(httpx.get(f"{observed.api}/metrics", timeout=10).text)
    assert value(page, "takeback_deals", status="closed") == 2 and value(page, "takeback_deals", status="awaiting_returns") == 1
    assert value(page, "takeback_deals", status="expired") == 0  # every status shows, at 0 when none has it
    assert Decimal(str(value(page, "takeback_incentive_amount", status="released"))) == observed.amounts["A"] + observed.amounts["C"]
    assert Decimal(str(value(page, "takeback_incentive_amount", status="held"))) == observed.amounts["B"]
    assert value(page, "takeback_deals_at_risk") == 1  # B: 1 of 8 back
    assert value(page, "takeback_pickups_silent") == 1  # B's pickup, never reported on
    assert value(page, "takeback_emails_failed") == 1 and value(page, "takeback_emails_unsent") == 0
    assert value(page, "takeback_email_oldest_unsent_age_seconds") == 0
    assert value(page, "takeback_partners", status="certified") == 2


# --- health ----------------------------------------------------------------------------------------


async def test_api_and_worker_answer_readiness_and_liveness(observed, dev_server_env):
    ready = httpx.get(f"{observed.api}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json() == {"status": "ok", "database": "ok", "temporal": "ok"}
    assert httpx.get(f"{observed.api}/livez", timeout=10).status_code == 200
    worker = httpx.get(f"{observed.worker_health}/readyz", timeout=10)
    assert worker.status_code == 200 and worker.json() == {"status": "ok", "database": "ok", "temporal": "ok", "pollers": "ok"}
    assert httpx.get(f"{observed.worker_health}/livez", timeout=10).json() == {"status": "ok"}
    # A worker Temporal does not see polling is not ready: the check asks the server, by identity.
    from observability.worker_health import WorkerHealth

    class Running:
        is_running, is_shutdown = True, False

    absent = WorkerHealth(dev_server_env.client, Running(), observed.settings.model_copy(update={"task_queue": observed.env["TAKEBACK_TASK_QUEUE"]}), "takeback-worker@nowhere:0:x")
    status, body = await absent.ready()
    assert status == 503 and body["pollers"] == "down" and body["database"] == "ok"


# --- logs ------------------------------------------------------------------------------------------


def json_lines(path: Path) -> list[dict]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    assert parsed
    return parsed


async def test_json_logs_carry_the_ids_and_no_personal_data(observed):
    api_lines = json_lines(observed.logs / "api.log")
    booking = [line for line in api_lines if line.get("path") == "/v1/deals" and line.get("method") == "POST" and line.get("request_id") == observed.booking_request_id]
    assert len(booking) == 1, api_lines[-20:]
    assert booking[0]["deal_id"] == observed.deals["A"] and booking[0]["partner_id"] == OK and booking[0]["status"] == 201
    receipts = [line for line in api_lines if line.get("path") == f"/v1/deals/{observed.deals['A']}/receipts"]
    assert receipts and receipts[0]["deal_id"] == observed.deals["A"] and len(receipts[0]["request_id"]) == 32  # made when none was sent
    worker_lines = json_lines(observed.logs / "worker.log")
    refused = [line for line in worker_lines if "failed for good" in line["message"]]
    assert len(refused) == 1, worker_lines[-20:]
    assert refused[0]["deal_id"] == observed.deals["C"] and refused[0]["workflow_id"] == f"deal-{observed.deals['C']}" and refused[0]["run_id"]
    everything = (observed.logs / "api.log").read_text() + (observed.logs / "worker.log").read_text()
    assert REFUSED_ADDRESS not in everything and "ok@partner.example" not in everything
    assert "SG.observability" not in everything and "tbk_ops_" not in everything.replace("tbk_ops_<redacted>", "")


# --- the Temporal UI's story ------------------------------------------------------------------------


def describe(env: dict, workflow_id: str) -> dict:
    answer = subprocess.run(
        [binary("temporal"), "workflow", "describe", "--workflow-id", workflow_id, "--address", env["TEMPORAL_ADDRESS"], "--namespace", "default", "-o", "json"],
        capture_output=True, text=True, timeout=30,
    )
    assert answer.returncode == 0, answer.stderr
    return json.loads(answer.stdout)


def temporal(env: dict, *arguments: str) -> str:
    answer = subprocess.run([binary("temporal"), *arguments, "--address", env["TEMPORAL_ADDRESS"], "--namespace", "default"], capture_output=True, text=True, timeout=30)
    assert answer.returncode == 0, answer.stderr
    return answer.stdout


async def test_the_temporal_ui_tells_each_deals_story(observed, dev_server_env):
    """`temporal workflow describe` shows the summary and terms set at the start, `temporal workflow
    metadata` the current details the deal keeps; ops filter by DealStatus and PartnerId; activities
    and timers carry summaries; and the deal's history (with its status upserts) replays."""
    from temporalio.api.enums.v1 import EventType

    from tests.test_replay import replayer

    open_deal, closed_deal = observed.deals["B"], observed.deals["A"]
    described = json.loads(temporal(observed.env, "workflow", "describe", "--workflow-id", f"deal-{open_deal}", "-o", "json"))
    metadata = described["executionConfig"]["userMetadata"]
    assert metadata["summary"] == f"Deal {open_deal} · partner {OK} · 10 units (8 required) · incentive {observed.amounts['B']} rebate"
    assert "required back: 8 (80%)" in metadata["details"] and "return window 365d" in metadata["details"]
    current = temporal(observed.env, "workflow", "metadata", "--workflow-id", f"deal-{open_deal}")
    assert "awaiting_returns**: 1 of 8 required units received" in current and f"{open_deal}-p1 scheduled" in current
    assert "received" in temporal(observed.env, "workflow", "metadata", "--workflow-id", f"deal-{closed_deal}")

    async def listed(query: str) -> set[str]:
        return {execution.id async for execution in dev_server_env.client.list_workflows(query)}

    queue = observed.env["TAKEBACK_TASK_QUEUE"]
    closed = await until(lambda: listed(f"TaskQueue='{queue}' AND DealStatus='closed'"), "closed deals in visibility")
    assert closed == {f"deal-{observed.deals['A']}", f"deal-{observed.deals['C']}"}
    assert await until(lambda: listed(f"TaskQueue='{queue}' AND DealStatus='awaiting_returns' AND PartnerId='{OK}'"), "the open deal") == {f"deal-{open_deal}"}

    partner = json.loads(temporal(observed.env, "workflow", "describe", "--workflow-id", f"partner-{UI_PARTNER}", "-o", "json"))
    assert partner["executionConfig"]["userMetadata"]["summary"] == f"Partner {UI_PARTNER} · Environmental Sustainability Specialization"
    assert "**not_certified**: 0 training hours" in temporal(observed.env, "workflow", "metadata", "--workflow-id", f"partner-{UI_PARTNER}")
    assert await until(lambda: listed(f"PartnerId='{UI_PARTNER}'"), "the partner by PartnerId") == {f"partner-{UI_PARTNER}"}

    history = await dev_server_env.client.get_workflow_handle(f"deal-{closed_deal}").fetch_history()
    converter = dev_server_env.client.data_converter.payload_converter
    summaries = {
        converter.from_payload(event.user_metadata.summary, str)
        for event in history.events
        if event.HasField("user_metadata") and event.user_metadata.HasField("summary")
    }
    # Its timer (the monthly look for a new worker version comes before the 90-day reminder), its decision
    # with the close, and the notice beside it.
    assert {"look for a new worker version", "record the decision, close and certify", "release notice"} <= summaries, summaries
    statuses = [
        converter.from_payload(event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields["DealStatus"], str)
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
        and "DealStatus" in event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
    ]
    assert statuses == ["closed"]  # from awaiting_returns, in the step that met the condition and took every unit back
    result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


async def test_the_alerts_and_the_dashboard_read_metrics_the_stack_exports(observed):
    """A rule or a panel over a misspelt metric would stay silent for ever: each name they read is
    exported by the API or the worker that just ran the deals (after the `_total` suffix, `_bucket` ...)."""
    import re

    import yaml

    exported = {name for name, _labels in samples(httpx.get(observed.worker_metrics, timeout=10).text)}
    exported |= {name for name, _labels in samples(httpx.get(f"{observed.api}/metrics", timeout=10).text)}
    deploy = ROOT / "deploy"
    expressions = [rule["expr"] for group in yaml.safe_load((deploy / "prometheus/takeback-alerts.yml").read_text())["groups"] for rule in group["rules"]]
    dashboard = json.loads((deploy / "grafana/takeback-dashboard.json").read_text())
    expressions += [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    read = {name for expression in expressions for name in re.findall(r"\b((?:takeback|temporal)_[a-z_]+)\b", expression)}
    assert len(read) > 15
    assert sorted(read - exported) == []
