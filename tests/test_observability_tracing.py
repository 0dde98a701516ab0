"""Traces (issue 13): with a tracer provider installed (as OTEL_* installs one), one trace runs from
the booking's HTTP request through the Temporal client into the deal's workflow, its activities and
the SendGrid call; without one nothing is traced and no interceptor is installed.

Recorded by an in-memory exporter in this process: the API app, a worker on the dev server and the
SendGrid stand-in. The provider is a process global; it is removed again afterwards, so the rest of
the suite runs untraced, as production does by default.
"""

import asyncio
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from observability import tracing
from temporal_client import connect
from tests.api_helpers import WEBHOOK_SECRET, api_client, booking_body, key
from tests.conftest import add_partner, make_settings
from tests.sendgrid_standin import SendGridStandIn
from worker import build_worker


@contextmanager
def traced():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        # What opentelemetry's own test utilities do (reset_trace_globals): back to no provider at all.
        from opentelemetry.util._once import Once

        trace._TRACER_PROVIDER = None
        trace._TRACER_PROVIDER_SET_ONCE = Once()


async def test_one_trace_runs_from_the_booking_request_to_the_sendgrid_call(dev_server_env, tmp_path):
    standin = SendGridStandIn()
    settings = make_settings(
        tmp_path, temporal_address=dev_server_env.client.service_client.config.target_host, carrier_webhook_secret=WEBHOOK_SECRET,
        sendgrid_key="SG.tracing-test-key-0123456789", sendgrid_host=standin.url,
    )
    add_partner(settings, "P1", "p1@partner.example")
    assert not tracing.active() and tracing.temporal_interceptors() == []  # off by default: nothing installed
    try:
        with traced() as exporter:
            client = await connect(settings)  # the worker takes the tracing interceptor from its client
            async with build_worker(client, settings), api_client(settings) as http:
                ops = key(settings)
                booked = await http.post("/v1/deals", json=booking_body("P1", 2), headers=ops)
                assert booked.status_code == 201, booked.text
                deal = booked.json()["id"]
                items = [{"product_id": "C9300-48P", "serial_number": f"TR-{deal}-{i}", "condition": "working", "age_years": 1} for i in range(2)]
                assert (await http.post(f"/v1/deals/{deal}/receipts", json={"items": items}, headers=ops)).status_code == 200
                for _ in range(200):
                    if standin.delivered_to("p1@partner.example", "released"):
                        break
                    await asyncio.sleep(0.05)
                assert standin.delivered_to("p1@partner.example", "released") == 1
                await client.get_workflow_handle(f"deal-{deal}").result()
                history = await client.get_workflow_handle(f"deal-{deal}").fetch_history()
            spans = exporter.get_finished_spans()
    finally:
        standin.server.shutdown()
    assert not tracing.active()

    request = next(span for span in spans if span.name == "POST /v1/deals")
    in_trace = {span.context.span_id: span for span in spans if span.context.trace_id == request.context.trace_id}
    by_name = {span.name: span for span in in_trace.values()}
    for name in ("StartWorkflow:TakebackDealWorkflow", "RunWorkflow:TakebackDealWorkflow", "StartActivity:notify_settlement",
                 "RunActivity:notify_settlement", "SendGrid POST /v3/mail/send"):
        assert name in by_name, (name, sorted(by_name))

    def ancestors(span) -> list[str]:
        chain = []
        while span.parent is not None and span.parent.span_id in in_trace:
            span = in_trace[span.parent.span_id]
            chain.append(span.name)
        return chain

    # SendGrid's call sits under its activity, the activity under the workflow's start, that under the
    # request. (The SDK's interceptor hangs a workflow's own spans, RunWorkflow and StartActivity, beside
    # each other under the start that carried the caller's context.)
    assert ancestors(by_name["SendGrid POST /v3/mail/send"]) == [
        "RunActivity:notify_settlement", "StartActivity:notify_settlement", "StartWorkflow:TakebackDealWorkflow", "POST /v1/deals"
    ]
    assert ancestors(by_name["RunWorkflow:TakebackDealWorkflow"]) == ["StartWorkflow:TakebackDealWorkflow", "POST /v1/deals"]
    assert by_name["SendGrid POST /v3/mail/send"].attributes["http.response.status_code"] == 202
    # The receipt's signal to its deal is traced under its own request: a trace per caller's action.
    receipt = next(span for span in spans if span.name == "POST /v1/deals/{deal_id}/receipts")
    assert any(span.name.startswith("SignalWorkflow") and span.context.trace_id == receipt.context.trace_id for span in spans)

    # TAKEBACK_SEARCH_ATTRIBUTES is off here (the default): the deal started without DealStatus, so it
    # took neither the patch nor an upsert, and would run as well on a server without the attributes.
    from temporalio.api.enums.v1 import EventType

    markers = [event.marker_recorded_event_attributes for event in history.events if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED]
    patches = b"".join(marker.SerializeToString() for marker in markers)
    assert not patches  # release 1.0: one path, no patch
    upserts = [event.upsert_workflow_search_attributes_event_attributes for event in history.events if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES]
    assert not any("DealStatus" in upsert.search_attributes.indexed_fields for upsert in upserts)


async def test_deals_that_keep_their_status_attribute_replay_as_recorded():
    """Histories of deals started with DealStatus (kept with 1.0 in tests/histories/, recorded once by
    tests/record_histories.py on a dev server that has it): their status upserts and summaries replay on
    every later version of the code (test_replay.py replays them with the rest; this checks they
    hold both moves of the attribute)."""
    from pathlib import Path

    from temporalio.api.enums.v1 import EventType
    from temporalio.client import WorkflowHistory

    from tests.test_replay import replayer

    folder = Path(__file__).with_name("histories") / "1.0"
    seen = []
    for path in sorted(folder.glob("*_with_status_attribute.json")):
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        seen += [
            bytes(event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields["DealStatus"].data)
            for event in history.events
            if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
            and "DealStatus" in event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
        ]
        result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
    assert sorted(set(seen)) == [b'"closed"', b'"condition_met"']  # both moves of the attribute are in them
