"""Record the replay histories of a released workflow version: `python -m tests.record_histories --version 1.0`.

Runs each scenario on a fresh time-skipping server and saves its workflows' histories (finished
ones, and deals left open on purpose) as tests/histories/<version>/<name>.json. A version's folder
is written once, when that version is released, and never again: its histories stand for the
deals of that version still running in production, which every later change must replay
(test_replay.py; a change that would break them uses workflow.patched). The script refuses to
write into a folder that exists.
"""

import argparse
import asyncio
import tempfile
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from service import deals
from tests.conftest import booking, make_settings, running_worker, time_skipping_server
from tests.deal_helpers import PICKUP, event, items, skip_time
from workflows.ids import pickup_workflow_id

HISTORIES = Path(__file__).with_name("histories")
YEAR = timedelta(days=365)


async def open_deal(env, settings) -> dict:
    """A deal still awaiting returns: a pickup, a receipt, an extension, a reminder sent; not closed."""
    deal = await deals.book_deal(env.client, settings, booking(10), deal_id="H-OPEN")
    await deals.request_pickup(env.client, deal.id, PICKUP, request_id="pickup-1")
    await deals.record_receipt(env.client, settings, deal.id, items("O", 3), batch_id="H-OPEN-r1")
    await deals.extend_deal(env.client, deal.id, "30d", "customer asked for more time", request_id="extend-1")
    await env.sleep(YEAR - timedelta(days=80))  # past the 90-day reminder of the extended deadline
    return {"open_deal_awaiting_returns": f"deal-{deal.id}"}


async def continued_as_new(env, settings) -> dict:
    """A deal the server tells to continue as new (a dev server whose history limit is low, so the
    suggestion is in the recorded task events as production makes it) and that finishes in its next run."""
    from temporalio.client import WorkflowExecutionStatus

    deal = await deals.book_deal(env.client, settings, booking(10), deal_id="H-CAN")
    handle = deals.deal_handle(env.client, deal.id)
    first_run = (await handle.describe()).run_id
    await deals.request_pickup(env.client, deal.id, PICKUP, request_id="pickup-1")
    for n in range(3):
        await deals.record_receipt(env.client, settings, deal.id, items("N", 1, start=n), batch_id=f"H-CAN-r{n}")
    while (await env.client.get_workflow_handle(handle.id, run_id=first_run).describe()).status == WorkflowExecutionStatus.RUNNING:
        await asyncio.sleep(0.05)
    await deals.request_pickup(env.client, deal.id, PICKUP, request_id="pickup-1")  # a retry, after it
    await deals.record_receipt(env.client, settings, deal.id, items("N", 7, start=3), batch_id="H-CAN-r3")
    await handle.result()
    return {"deal_continued_as_new_first_run": (handle.id, first_run), "deal_continued_as_new_second_run": (handle.id, None)}


async def concurrent_updates(env, settings) -> dict:
    """Two extends taken in one workflow task, then a receipt taken in the task of the deadline
    timer: the worker is away while they arrive, so one task carries them."""
    from tests.conftest import add_partner
    from tests.test_deal_races import deliver_extend, uncached_worker

    add_partner(settings)
    async with uncached_worker(env, settings):
        deal = await deals.book_deal(env.client, settings, booking(10), deal_id="H-TWO")
    extends = [asyncio.create_task(deliver_extend(env, deal.id, timedelta(days=days), reason)) for days, reason in ((30, "site closed"), (60, "audit"))]
    await asyncio.sleep(1)
    async with uncached_worker(env, settings):
        extended = await asyncio.gather(*extends)
        deadline = max(view.return_deadline for view in extended)
        await env.sleep(deadline - await env.get_current_time() - timedelta(seconds=2))
    await env.sleep(timedelta(seconds=3))  # the deadline fires while no worker runs
    await deals.record_receipt(env.client, settings, deal.id, items("T", 8))  # counted by the store; the deal is told beside its TimerFired
    async with uncached_worker(env, settings):
        await deals.deal_handle(env.client, deal.id).result()
    return {"deal_concurrent_updates": f"deal-{deal.id}"}


async def cancel_racing_release(env, settings) -> dict:
    """A cancel that reaches the deal after the store released the rebate and before the deal was told
    (the receipt's caller died after the commit): the store refuses it, the release stands."""
    from tests.conftest import add_partner
    from tests.test_deal_races import count_without_telling

    add_partner(settings)
    deal = await deals.book_deal(env.client, settings, booking(10), deal_id="H-RACE")
    count_without_telling(settings, deal.id, items("C", 8))
    try:
        await asyncio.wait_for(deals.cancel_deal(env.client, deal.id, "customer withdrew", request_id="cancel-1"), 25)
    except deals.DealNotOpen:
        pass
    await deals.record_receipt(env.client, settings, deal.id, items("C", 8))  # the caller's retry tells the deal
    await env.sleep(YEAR)
    await deals.deal_handle(env.client, deal.id).result()
    return {"deal_cancel_racing_release": f"deal-{deal.id}"}


async def pickup_refused_for_good(env, settings) -> dict:
    """A pickup the carrier refuses for good: shown failed, its retry answered with it; a second one books."""
    from tests.conftest import add_partner
    from tests.test_deal_races import RefusingCarrier, uncached_worker

    add_partner(settings)
    async with uncached_worker(env, settings, RefusingCarrier(settings)):  # its tasks go to the next worker, not its sticky queue
        deal = await deals.book_deal(env.client, settings, booking(10), deal_id="H-REFUSED")
        for _ in range(2):
            try:
                await deals.request_pickup(env.client, deal.id, PICKUP, request_id="pickup-refused")
            except deals.PickupBookingFailed:
                pass
    async with running_worker(env.client, settings):
        await deals.request_pickup(env.client, deal.id, PICKUP, request_id="pickup-2")
        await deals.record_receipt(env.client, settings, deal.id, items("F", 10))
        await deals.deal_handle(env.client, deal.id).result()
    return {"deal_pickup_refused_for_good": f"deal-{deal.id}"}


async def continued_as_new_with_messages_pending(env, settings) -> dict:
    """Continue-as-new while a carrier booking is held in retries and mail is on its way: the next run
    books the pickup and sends the mail again (one mail), answers the caller and a retried extension."""
    from temporalio.client import WorkflowExecutionStatus

    from tests.conftest import add_partner
    from tests.test_deal_races import GatedCarrier
    from worker import build_worker

    add_partner(settings)
    activities = GatedCarrier(settings)
    async with build_worker(env.client, settings, activities=activities):
        deal = await deals.book_deal(env.client, settings, booking(10), deal_id="H-CAN-PENDING")
        handle = deals.deal_handle(env.client, deal.id)
        first_run = (await handle.describe()).run_id
        await deals.extend_deal(env.client, deal.id, "30d", "customer asked", request_id="extend-1")
        pickup = asyncio.create_task(deals.request_pickup(env.client, deal.id, PICKUP, request_id="pickup-held"))
        await activities.gate.reached()
        for n in range(6):  # the history grows past the server's suggestion while the booking is held
            await deals.record_receipt(env.client, settings, deal.id, items("P", 1, start=n))
        while (await env.client.get_workflow_handle(handle.id, run_id=first_run).describe()).status == WorkflowExecutionStatus.RUNNING:
            await asyncio.sleep(0.05)
        await pickup
        activities.gate.opened.set()
        await deals.extend_deal(env.client, deal.id, "30d", "customer asked", request_id="extend-1")  # a retry after it: applied once
        await deals.record_receipt(env.client, settings, deal.id, items("P", 4, start=6))
        await handle.result()
    return {"deal_continued_as_new_pending_first_run": (handle.id, first_run), "deal_continued_as_new_pending_second_run": (handle.id, None)}


async def mail_failing(env, settings) -> dict:
    """A partner whose address SendGrid refuses, and SendGrid down when the deal is forfeited."""
    from tests.conftest import add_partner

    add_partner(settings)
    add_partner(settings, "H-BOUNCE", email="bounces@partner.example")
    STANDIN.rejected_addresses.add("bounces@partner.example")
    bounced = await deals.book_deal(env.client, settings, booking(10, partner_id="H-BOUNCE"), deal_id="H-BOUNCED")
    outage = await deals.book_deal(env.client, settings, booking(10), deal_id="H-OUTAGE")
    await env.sleep(YEAR - timedelta(hours=1))
    STANDIN.down = True
    await env.sleep(timedelta(hours=2))
    STANDIN.down = False
    await env.sleep(timedelta(hours=1))
    for deal in (bounced, outage):
        await deals.deal_handle(env.client, deal.id).result()
    return {"deal_mail_rejected": f"deal-{bounced.id}", "deal_mail_outage": f"deal-{outage.id}"}


async def rebate_released(env, settings) -> dict:
    """Carrier events (store only: the deal's history does not see them); release at 8/10; returns after release; closed at the deadline."""
    deal = await deals.book_deal(env.client, settings, booking(10), deal_id="H-REBATE")
    pickup = await deals.request_pickup(env.client, deal.id, PICKUP, request_id="pickup-1")
    t = pickup.tracking_number
    for e in [event("e1", t, "pre_transit"), event("e2", t, "in_transit"), event("e2", t, "in_transit"), event("e0", t, "pre_transit"), event("e3", t, "delivered")]:
        await deals.send_carrier_event(env.client, settings, e)
    await env.sleep(timedelta(days=30))
    await deals.record_receipt(env.client, settings, deal.id, items("H", 8), batch_id="H-REBATE-r1")
    await env.sleep(timedelta(days=30))
    await deals.record_receipt(env.client, settings, deal.id, items("H", 1, start=8), batch_id="H-REBATE-r2")
    await env.sleep(YEAR)
    await deals.deal_handle(env.client, deal.id).result()
    return {"deal_rebate_released": f"deal-{deal.id}"}


async def shortfall_forfeited(env, settings) -> dict:
    """Three reminders, an extension, failure and return-to-sender escalated by the deal, then forfeited at the deadline."""
    deal = await deals.book_deal(env.client, settings, booking(10), deal_id="H-SHORT")
    pickup = await deals.request_pickup(env.client, deal.id, PICKUP, request_id="pickup-1")
    t = pickup.tracking_number
    for e in [event("f1", t, "in_transit"), event("f2", t, "failure"), event("f3", t, "return_to_sender")]:
        await deals.send_carrier_event(env.client, settings, e)
    await deals.record_receipt(env.client, settings, deal.id, items("S", 3), batch_id="H-SHORT-r1")
    await env.sleep(timedelta(days=100))
    await deals.extend_deal(env.client, deal.id, "30d", "customer asked for more time")
    await env.sleep(YEAR)
    await deals.deal_handle(env.client, deal.id).result()
    return {"deal_shortfall_forfeited": f"deal-{deal.id}"}


async def upfront_clawed_back(env, settings) -> dict:
    deal = await deals.book_deal(env.client, settings, booking(10), deal_id="H-UPFRONT")
    await deals.record_receipt(env.client, settings, deal.id, items("U", 2), batch_id="H-UPFRONT-r1")
    await env.sleep(YEAR + timedelta(days=1))
    await deals.deal_handle(env.client, deal.id).result()
    return {"deal_upfront_clawed_back": f"deal-{deal.id}"}


async def cancelled_in_transit(env, settings) -> dict:
    """Cancel while a simulated-carrier pickup is on its way: the deal stops the pickup."""
    deal = await deals.book_deal(env.client, settings, booking(10), deal_id="H-CANCEL")
    pickup = await deals.request_pickup(env.client, deal.id, PICKUP, request_id="pickup-1")
    await env.sleep(timedelta(hours=2, minutes=30))  # two simulated steps
    await deals.cancel_deal(env.client, deal.id, "customer withdrew")
    await deals.deal_handle(env.client, deal.id).result()
    await env.client.get_workflow_handle(pickup_workflow_id(pickup.tracking_number)).result()
    return {"deal_cancelled": f"deal-{deal.id}", "pickup_simulated_then_stopped": pickup_workflow_id(pickup.tracking_number)}


async def all_returned_early(env, settings) -> dict:
    deal = await deals.book_deal(env.client, settings, booking(4, serials=[f"E-{i}" for i in range(4)]), deal_id="H-EARLY")
    await env.sleep(timedelta(days=300))  # past the 90-day reminder
    await deals.record_receipt(env.client, settings, deal.id, items("E", 4) + items("GREY", 1), batch_id="H-EARLY-r1")
    await deals.deal_handle(env.client, deal.id).result()
    return {"deal_all_returned_early": f"deal-{deal.id}"}


async def partner_years(env, settings) -> dict:
    """Certified; year 1 with a deal rolls over; year 2 without one reminds, lapses and is reinstated."""
    from domain.specialization import ExamResult, TrainingRecord
    from service import partners
    from workflows.ids import partner_workflow_id

    await partners.create_partner(env.client, settings, "H-PARTNER", "History Partner", "h@partner.example", "CA")
    await partners.record_training(env.client, "H-PARTNER", TrainingRecord(person_email="a@h.example", person_name="A", hours=5), request_id="t1")
    await partners.record_training(env.client, "H-PARTNER", TrainingRecord(person_email="a@h.example", person_name="A", hours=2), request_id="t2")
    await partners.record_exam(env.client, "H-PARTNER", ExamResult(exam=1, passed=True))
    await partners.record_exam(env.client, "H-PARTNER", ExamResult(exam=2, passed=False))
    await partners.record_exam(env.client, "H-PARTNER", ExamResult(exam=2, passed=True))
    await partners.sign_pledge(env.client, "H-PARTNER")
    await env.sleep(timedelta(days=10))
    handle = env.client.get_workflow_handle(partner_workflow_id("H-PARTNER"))
    first_run = (await handle.describe()).run_id
    await deals.book_deal(env.client, settings, booking(4, partner_id="H-PARTNER"), deal_id="H-DEAL-1")
    await skip_time(env, YEAR)  # rolls over: continue-as-new
    second_run = (await handle.describe()).run_id
    await skip_time(env, YEAR)  # no deal: reminders, then lapsed
    await partners.reinstate(env.client, "H-PARTNER", "late deal approved by ops")
    await deals.book_deal(env.client, settings, booking(4, partner_id="H-PARTNER"), deal_id="H-DEAL-2")
    await skip_time(env, YEAR)  # the reinstated year had its deal: continue-as-new
    from temporalio.client import WorkflowExecutionStatus

    while (await env.client.get_workflow_handle(partner_workflow_id("H-PARTNER"), run_id=second_run).describe()).status == WorkflowExecutionStatus.RUNNING:
        await asyncio.sleep(0.05)
    return {"partner_certified_year_rolled_over": (partner_workflow_id("H-PARTNER"), first_run),
            "partner_reminded_lapsed_reinstated": (partner_workflow_id("H-PARTNER"), second_run)}


async def with_status_attribute(env, settings) -> dict:
    """A deal started with the DealStatus search attribute (TAKEBACK_SEARCH_ATTRIBUTES, a dev server that
    has it): met (condition_met) and closed at its deadline, each move an upsert of the attribute."""
    deal = await deals.book_deal(env.client, settings, booking(10), deal_id="H-STATUS")
    await deals.record_receipt(env.client, settings, deal.id, items("A", 8))
    await deals.deal_handle(env.client, deal.id).result()
    return {"deal_rebate_released_with_status_attribute": f"deal-{deal.id}"}


def _status_attribute_server() -> list[str]:
    from workflows.search_attributes import dev_server_args

    return dev_server_args()


STANDIN = None  # the SendGrid stand-in of mail_failing


def _with_sendgrid() -> dict:
    global STANDIN
    from tests.sendgrid_standin import SendGridStandIn

    STANDIN = STANDIN or SendGridStandIn()
    return {"sendgrid_api_key": "SG.history", "sendgrid_host": STANDIN.url, "reminder_offsets": ""}


# A dev server that suggests continue-as-new once a history has 20 events.
EARLY_CONTINUE_AS_NEW = ["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=20"]

# (scenario, settings overrides, whether the scenario runs its own workers, dev server arguments or None for time skipping)
SCENARIOS = [
    (rebate_released, {}, False, None),
    (shortfall_forfeited, {}, False, None),
    (upfront_clawed_back, {"incentive_mode": "upfront"}, False, None),
    (cancelled_in_transit, {"sim_carrier_step": "1h"}, False, None),
    (all_returned_early, {}, False, None),
    (partner_years, {}, False, None),
    (open_deal, {}, False, None),
    (continued_as_new, {"reminder_offsets": ""}, False, EARLY_CONTINUE_AS_NEW),
    (concurrent_updates, {"reminder_offsets": ""}, True, None),
    (cancel_racing_release, {}, False, None),
    (pickup_refused_for_good, {}, True, None),
    (continued_as_new_with_messages_pending, {"reminder_offsets": ""}, True, EARLY_CONTINUE_AS_NEW),
    (mail_failing, _with_sendgrid, False, None),
    (with_status_attribute, {"search_attributes": True, "return_window": "15s", "reminder_offsets": ""}, False, _status_attribute_server),
]


@asynccontextmanager
async def server(dev_server_args):
    if callable(dev_server_args):
        dev_server_args = dev_server_args()
    if dev_server_args is None:
        async with time_skipping_server() as env:
            yield env
        return
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    from tests.conftest import binary

    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter, dev_server_existing_path=binary("temporal"), dev_server_extra_args=dev_server_args, dev_server_log_level="error"
    )
    try:
        yield env
    finally:
        await env.shutdown()


async def runs_back(client, workflow_id: str, run_id: str | None) -> list[tuple[str, object]]:
    """The run asked for (suffix ""), and the runs it continued from (suffixes "_run1", "_run2" ... from
    the first): a deal continues as new while it runs, and each of its runs must replay."""
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    earlier = []
    previous = history.events[0].workflow_execution_started_event_attributes.continued_execution_run_id
    while previous:
        before = await client.get_workflow_handle(workflow_id, run_id=previous).fetch_history()
        earlier.insert(0, before)
        previous = before.events[0].workflow_execution_started_event_attributes.continued_execution_run_id
    if run_id is not None:  # a run named on purpose (a first run): only it
        return [("", history)]
    return [(f"_run{n}", h) for n, h in enumerate(earlier, start=1)] + [("", history)]


async def record(out_dir: Path) -> list[Path]:
    if out_dir.exists():
        raise SystemExit(f"{out_dir} exists: a released version's histories are never re-recorded (record a new version)")
    out_dir.mkdir(parents=True)
    written = []
    for scenario, overrides, own_workers, dev_server_args in SCENARIOS:
        async with server(dev_server_args) as env:
            with tempfile.TemporaryDirectory() as tmp:
                settings = make_settings(Path(tmp), **(overrides() if callable(overrides) else overrides))
                if own_workers:
                    workflows = await scenario(env, settings)
                else:
                    async with running_worker(env.client, settings):
                        workflows = await scenario(env, settings)
                recorded_runs = set()  # a run named on purpose (a first run) is not written again as an earlier run
                for name, workflow_id in workflows.items():
                    workflow_id, run_id = workflow_id if isinstance(workflow_id, tuple) else (workflow_id, None)
                    for suffix, history in await runs_back(env.client, workflow_id, run_id):
                        run = history.events[0].workflow_execution_started_event_attributes.original_execution_run_id
                        if run in recorded_runs:
                            continue
                        recorded_runs.add(run)
                        path = out_dir / f"{name}{suffix}.json"
                        path.write_text(history.to_json())
                        written.append(path)
                        print(f"wrote {path} ({len(history.events)} events)", flush=True)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", required=True, help="the released workflow version, e.g. 1.0: writes tests/histories/<version>/")
    parser.add_argument("--out", type=Path, help="another folder (to try the scenarios without touching tests/histories)")
    parser.add_argument("--only", nargs="*", help="scenario names to run (with --out)")
    args = parser.parse_args()
    if args.only:
        global SCENARIOS
        SCENARIOS = [entry for entry in SCENARIOS if entry[0].__name__ in args.only]
    asyncio.run(record(args.out or HISTORIES / args.version))


if __name__ == "__main__":
    main()
