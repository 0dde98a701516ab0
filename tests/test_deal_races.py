"""Money under races: messages meeting timers, decisions and each other, and mail that fails.

Each race is made to happen, not hoped for: an activity is held at a gate while the other message
arrives, or messages are sent while no worker runs so that one workflow task carries them all;
each test then shows from the history or the gate that the race took place.
"""

import asyncio
import threading
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal

import pytest
import temporalio.workflow
from sqlalchemy import select
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError

from activities.deal_activities import PickupBookingInput, SettlementNotice, TakebackActivities
from domain import rules
from domain.models import DealStatus, IncentiveStatus
from service import deals
from store import reports
from store.db import session_scope
from store.tables import Certificate, DealExtension, EmailMessage, Pickup, ReceiptBatch, ReturnedItem, Settlement
from domain.catalog import default_catalog
from tests.api_helpers import as_the_api_calls
from tests.conftest import add_partner, booking, make_settings
from tests.deal_helpers import PICKUP, count, items, ledger, ledger_amounts, skip_time
from tests.sendgrid_standin import SendGridStandIn
from worker import build_worker

YEAR = timedelta(days=365)


class Gate:
    def __init__(self):
        self.started, self.opened = threading.Event(), threading.Event()

    def hold(self, seconds: float = 40) -> None:
        self.started.set()
        self.opened.wait(seconds)

    async def reached(self) -> bool:
        return await asyncio.to_thread(self.started.wait, 15)


class GatedNotice(TakebackActivities):
    def __init__(self, settings):
        super().__init__(settings)
        self.gate = Gate()

    @activity.defn(name="notify_settlement")
    def notify_settlement(self, notice: SettlementNotice) -> bool:
        self.gate.hold()
        return TakebackActivities.notify_settlement(self, notice)


class GatedCarrier(TakebackActivities):
    """The first carrier booking is held at the gate (a carrier in retries); later attempts go through."""

    def __init__(self, settings):
        super().__init__(settings)
        self.gate = Gate()
        self.calls = 0

    @activity.defn(name="book_pickup")
    def book_pickup(self, booking: PickupBookingInput):
        self.calls += 1
        if self.calls == 1:
            self.gate.hold()
        return TakebackActivities.book_pickup(self, booking)


def count_without_telling(settings, deal_id: str, received) -> bool:
    """The API's receipt up to its store commit, and no further (it died before telling the deal)."""
    from store import settlement

    with session_scope(settings.effective_database_url) as session:
        return settlement.count_receipt(session, deal_id, deals.receipt_batch_id(deal_id, received), received, settings.refresh_max_age_years, default_catalog()).counted


def impact_money(settings) -> tuple[Decimal, Decimal]:
    with session_scope(settings.effective_database_url) as session:
        report = reports.impact(session, default_catalog())
    return Decimal(report["incentives_released"]), Decimal(report["incentives_forfeited"])


def views_money(*views) -> tuple[Decimal, Decimal]:
    released = sum((v.incentive.amount for v in views if v.incentive.status == IncentiveStatus.released), Decimal(0))
    lost = sum((v.incentive.amount for v in views if v.incentive.status in (IncentiveStatus.forfeited, IncentiveStatus.clawed_back)), Decimal(0))
    return released, lost


async def history_of(env, deal_id: str):
    return await deals.deal_handle(env.client, deal_id).fetch_history()


def in_one_task(history, first, *later) -> bool:
    """True when the events matching `later` were accepted in the workflow task that handled the last
    event matching `first`: after that task's completion and before the next task started."""
    events = list(history.events)
    start = max(i for i, e in enumerate(events) if first(e))
    done = next(i for i in range(start, len(events)) if events[i].event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
    following = next((i for i in range(done, len(events)) if events[i].event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED), len(events))
    return all(any(match(events[i]) for i in range(done, following)) for match in later)


async def deliver_extend(env, deal_id: str, extend_by: timedelta, reason: str):
    from workflows.deal import ExtendCommand, TakebackDealWorkflow

    command = ExtendCommand(extend_by_seconds=extend_by.total_seconds(), reason=reason)
    return await deals.deal_handle(env.client, deal_id).execute_update(TakebackDealWorkflow.extend, command, id=reason, rpc_timeout=timedelta(seconds=60))


async def eventually(check, seconds: float = 15) -> bool:
    for _ in range(int(seconds * 10)):
        if check():
            return True
        await asyncio.sleep(0.1)
    return check()


def uncached_worker(env, settings, activities=None):
    """A worker that keeps no workflow in its cache, so the tasks it leaves behind when it stops
    go to the normal queue, where the next worker takes them (not to its own sticky queue)."""
    from concurrent.futures import ThreadPoolExecutor

    from activities.partner_activities import PartnerActivities
    from worker import WORKFLOWS, DealWorker, build_mail_worker

    activities = activities or TakebackActivities(settings)
    worker = DealWorker(
        env.client, task_queue=settings.task_queue, workflows=WORKFLOWS, activities=activities.all() + PartnerActivities(activities).all(),
        activity_executor=ThreadPoolExecutor(max_workers=8), max_cached_workflows=0,
    )
    worker.mail = build_mail_worker(env.client, settings, activities, None, [])  # deals' mail waits on a queue of its own
    return worker


def seen_in_one_task(history, *kinds) -> bool:
    """True when the last event of each kind reached the workflow in the same task: no task started between them."""
    events = list(history.events)
    at = sorted(max(i for i, e in enumerate(events) if e.event_type == kind) for kind in kinds)
    return not any(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED for e in events[at[0] : at[-1]])


def is_event(kind):
    return lambda e: e.event_type == kind


def accepted_update(name: str):
    return lambda e: e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED and e.workflow_execution_update_accepted_event_attributes.accepted_request.input.name == name


async def test_a_cancel_racing_a_release_the_deal_was_not_told_of_is_refused_by_the_store(time_skipping_env, tmp_path):
    """The receipt that meets the condition is committed (the store releases the rebate in the same
    transaction) and its caller dies before the deal is told; a cancel then reaches the deal, which does
    not know it is paid: the store refuses it, the deal stays open and the release stands."""
    env = time_skipping_env
    settings = make_settings(tmp_path)
    add_partner(settings)
    async with build_worker(env.client, settings):
        view = await deals.book_deal(env.client, settings, booking(10))
        assert count_without_telling(settings, view.id, items("R", 8))
        assert (await deals.get_deal(env.client, settings, view.id)).incentive.status == IncentiveStatus.held  # the race: the deal does not know
        with pytest.raises(deals.DealNotOpen, match="paid deal cannot be cancelled"):
            await asyncio.wait_for(deals.cancel_deal(env.client, view.id, "customer withdrew"), 25)
        after = await deals.get_deal(env.client, settings, view.id)
        assert after.status == DealStatus.condition_met and after.incentive.status == IncentiveStatus.released and after.received_units == 8
        retried = await deals.record_receipt(env.client, settings, view.id, items("R", 8))  # the receipt's caller retries: answered as counted
        await skip_time(env, YEAR)
        final = await deals.deal_handle(env.client, view.id).result()
    assert retried["accepted"] == 8
    assert final.status == DealStatus.closed and final.incentive.status == IncentiveStatus.released
    assert ledger_amounts(settings, view.id) == {"released": Decimal("5000.00")}  # no cancelled row beside it
    assert impact_money(settings) == views_money(final) == (Decimal("5000.00"), Decimal(0))
    assert count(settings, EmailMessage, key=f"{view.id}:settlement:released") == 1


async def deadline_fired_while_no_worker_ran(env, settings):
    """A deal of 10 units booked with a partner of `settings`, whose deadline's timer has fired while no
    worker runs (the server skips no time while the task it made waits: the last second passes on the
    wall clock); a message sent now waits beside that TimerFired, for the same workflow task."""
    add_partner(settings)
    async with uncached_worker(env, settings):
        view = await deals.book_deal(env.client, settings, booking(10))
        await env.sleep(YEAR - timedelta(seconds=2))
    await env.sleep(timedelta(seconds=3))
    return view


async def test_a_receipt_in_the_same_task_as_the_deadline_counts_in_the_decision(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path, reminder_offsets="")
    view = await deadline_fired_while_no_worker_ran(env, settings)
    answer = await deals.record_receipt(env.client, settings, view.id, items("T", 8))  # counted by the store before the decision
    async with build_worker(env.client, settings):
        final = await deals.deal_handle(env.client, view.id).result()
    history = await history_of(env, view.id)
    assert seen_in_one_task(history, EventType.EVENT_TYPE_TIMER_FIRED, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)  # the race happened
    assert answer["accepted"] == 8
    assert final.status == DealStatus.closed and final.received_units == 8 and final.incentive.status == IncentiveStatus.released
    assert ledger(settings, view.id) == {"released": 1}
    with session_scope(settings.effective_database_url) as session:
        certificate = session.get(Certificate, view.id)
    assert '"units_received":8' in certificate.content_json


async def test_an_extension_in_the_same_task_as_the_deadline_holds_the_deal_open(time_skipping_env, tmp_path):
    """The SDK applies an update before the timer of the same task: an extension accepted there moves the
    deadline, and the fired timer of the old one (a deal's time is never before a fired timer's moment)
    does not decide the deal."""
    env = time_skipping_env
    settings = make_settings(tmp_path, reminder_offsets="")
    view = await deadline_fired_while_no_worker_ran(env, settings)
    extended = asyncio.create_task(deals.extend_deal(env.client, view.id, "30d", "customer asked"))  # ... and an extension waits beside it
    await asyncio.sleep(1)
    async with build_worker(env.client, settings):
        answer = await asyncio.wait_for(extended, 30)
        live = await deals.get_deal(env.client, settings, view.id)
    history = await history_of(env, view.id)
    assert in_one_task(history, is_event(EventType.EVENT_TYPE_TIMER_FIRED), accepted_update("extend"))  # the race happened
    assert answer.return_deadline == view.return_deadline + timedelta(days=30)
    assert live.status == DealStatus.awaiting_returns and live.incentive.status == IncentiveStatus.held
    assert ledger(settings, view.id) == {}


async def test_a_receipt_counted_whose_deal_was_never_told_counts_at_the_deadline(time_skipping_env, tmp_path):
    """The API committed the batch and died before telling the deal, and nobody retried: the store's
    decision counts it all the same, and a late retry is answered as counted."""
    env = time_skipping_env
    settings = make_settings(tmp_path, reminder_offsets="")
    add_partner(settings)
    async with build_worker(env.client, settings):
        view = await deals.book_deal(env.client, settings, booking(10))
        await env.sleep(YEAR - timedelta(days=1))
        assert count_without_telling(settings, view.id, items("W", 8))
        await env.sleep(timedelta(days=2))
        final = await deals.deal_handle(env.client, view.id).result()
        retried = await deals.record_receipt(env.client, settings, view.id, items("W", 8))  # the caller's retry learns the result
    assert final.status == DealStatus.closed and final.received_units == 8 and final.incentive.status == IncentiveStatus.released
    assert retried["accepted"] == 8 and count(settings, ReturnedItem, deal_id=view.id) == 8


async def test_a_receipt_during_the_forfeit_notice_is_refused_and_burns_nothing(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path, reminder_offsets="")
    add_partner(settings)
    activities = GatedNotice(settings)
    async with build_worker(env.client, settings, activities=activities):
        view = await deals.book_deal(env.client, settings, booking(10))
        await skip_time(env, YEAR)
        assert await activities.gate.reached()  # the forfeit notice is on its way (held) ...
        # ... and the decision did not wait for it: settled, certified and shown expired
        assert await eventually(lambda: count(settings, Certificate, deal_id=view.id) == 1)
        assert (await deals.get_deal(env.client, settings, view.id)).status == DealStatus.expired
        assert ledger(settings, view.id) == {"forfeited": 1}
        with pytest.raises(deals.DealNotOpen):
            await deals.record_receipt(env.client, settings, view.id, items("N", 8))
        assert not activities.gate.opened.is_set()
        activities.gate.opened.set()
        final = await deals.deal_handle(env.client, view.id).result()
        # the refused serials were not burnt: another deal receives them
        other = await deals.book_deal(env.client, settings, booking(10))
        assert (await deals.record_receipt(env.client, settings, other.id, items("N", 8)))["accepted"] == 8
    assert final.status == DealStatus.expired and final.received_units == 0
    assert count(settings, ReturnedItem, deal_id=view.id) == 0
    with session_scope(settings.effective_database_url) as session:
        refused = session.execute(select(ReceiptBatch).where(ReceiptBatch.deal_id == view.id)).scalars().one()
    assert refused.refused_at is not None and refused.processed_at is None
    assert count(settings, EmailMessage, key=f"{view.id}:settlement:forfeited", state="sent") == 1


async def test_two_extends_in_one_task_both_move_the_deadline(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    add_partner(settings)
    async with uncached_worker(env, settings):
        view = await deals.book_deal(env.client, settings, booking(10))
        await deals.request_pickup(env.client, view.id, PICKUP)
    first = asyncio.create_task(deliver_extend(env, view.id, timedelta(days=30), "site closed"))
    second = asyncio.create_task(deliver_extend(env, view.id, timedelta(days=60), "customer audit"))
    await asyncio.sleep(1)
    async with build_worker(env.client, settings):
        answers = await asyncio.wait_for(asyncio.gather(first, second), 30)
        current = await deals.get_deal(env.client, settings, view.id)
    history = await history_of(env, view.id)
    accepted = [i for i, e in enumerate(history.events) if accepted_update("extend")(e)]
    assert len(accepted) == 2
    between = history.events[accepted[0] : accepted[1]]
    assert not any(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED for e in between)  # one task took both: the race happened
    assert current.return_deadline == view.return_deadline + timedelta(days=90)
    assert max(a.return_deadline for a in answers) == current.return_deadline
    assert sorted(current.extensions) == ["+30d: site closed", "+60d: customer audit"]
    assert count(settings, DealExtension, deal_id=view.id) == 2


async def quiet(handle) -> None:
    """Until the deal has no activity under way."""
    for _ in range(100):
        if not (await handle.describe()).raw_description.pending_activities:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{handle.id} still has activities under way")


async def continued_as_new(handle, first_run: str, seconds: float = 10) -> bool:
    """Whether the deal's latest run is another than `first_run` within `seconds`."""
    for _ in range(int(seconds * 10)):
        if (await handle.describe()).run_id != first_run:
            return True
        await asyncio.sleep(0.1)
    return False


@asynccontextmanager
async def a_deal_to_continue_as_new(env, tmp_path, monkeypatch, activities_class=TakebackActivities):
    """A booked deal (10 units) on a running worker of `activities_class`, whose continue-as-new a test forces
    through `forced.pending`: yields (settings, activities, view, handle, its first run's id, forced)."""
    settings = make_settings(tmp_path)
    add_partner(settings)
    forced = ForcedContinueAsNew(monkeypatch)
    activities = activities_class(settings)
    async with build_worker(env.client, settings, activities=activities):
        view = await deals.book_deal(env.client, settings, booking(10))
        handle = deals.deal_handle(env.client, view.id)
        yield settings, activities, view, handle, (await handle.describe()).run_id, forced


class ForcedContinueAsNew:
    """Makes `is_continue_as_new_suggested` true for the next `n` checks of one workflow."""

    def __init__(self, monkeypatch):
        self.pending: dict[str, int] = {}
        original = temporalio.workflow.Info.is_continue_as_new_suggested

        def suggested(info) -> bool:
            if self.pending.get(info.workflow_id, 0) > 0:
                self.pending[info.workflow_id] -= 1
                return True
            return original(info)

        monkeypatch.setattr(temporalio.workflow.Info, "is_continue_as_new_suggested", suggested)


async def test_continue_as_new_never_waits_on_a_carrier_booking_in_retries(time_skipping_env, tmp_path, monkeypatch):
    """A carrier booking is held (in retries) when continue-as-new is suggested: the deal continues as new
    after a short grace, the next run books the pickup once, the caller's request is answered by it, and a
    cancel after it closes the deal."""
    env = time_skipping_env
    async with a_deal_to_continue_as_new(env, tmp_path, monkeypatch, GatedCarrier) as (settings, activities, view, handle, first_run, forced):
        pickup = asyncio.create_task(deals.request_pickup(env.client, view.id, PICKUP, request_id="held-pickup"))
        assert await activities.gate.reached()
        forced.pending[handle.id] = 1
        await deals.record_receipt(env.client, settings, view.id, items("F", 3))  # wakes the deal: continue-as-new is suggested, a booking is held
        assert await continued_as_new(handle, first_run, seconds=30)  # continued as new while the booking was held
        booked = await asyncio.wait_for(pickup, 30)  # answered by the next run, which booked it
        activities.gate.opened.set()
        cancelled = await asyncio.wait_for(deals.cancel_deal(env.client, view.id, "customer withdrew"), 30)
        final = await asyncio.wait_for(handle.result(), 30)
    assert forced.pending[handle.id] == 0
    assert booked.tracking_number and count(settings, Pickup, deal_id=view.id) == 1
    assert cancelled.status == DealStatus.cancelled and final.received_units == 3 and len(final.pickups) == 1
    assert ledger_amounts(settings, view.id) == {"cancelled": Decimal("0.00")}


async def test_an_extension_retried_after_a_continue_as_new_is_applied_once(time_skipping_env, tmp_path, monkeypatch):
    """The engine de-duplicates update ids within a run only: the deal carries the ids it applied."""
    env = time_skipping_env
    async with a_deal_to_continue_as_new(env, tmp_path, monkeypatch) as (settings, _, view, handle, first_run, forced):
        first = await deals.extend_deal(env.client, view.id, "30d", "site closed", request_id="extend-once")
        await quiet(handle)
        forced.pending[handle.id] = 1
        await deals.record_receipt(env.client, settings, view.id, items("E", 1))  # wakes the deal, which continues as new
        assert await continued_as_new(handle, first_run, seconds=10)
        again = await deals.extend_deal(env.client, view.id, "30d", "site closed", request_id="extend-once")
        current = await deals.get_deal(env.client, settings, view.id)
    assert first.return_deadline == again.return_deadline == current.return_deadline == view.return_deadline + timedelta(days=30)
    assert current.extensions == ["+30d: site closed"] and count(settings, DealExtension, deal_id=view.id) == 1


async def test_continue_as_new_keeps_the_deal_and_a_retried_pickup_books_once(time_skipping_env, tmp_path, monkeypatch):
    env = time_skipping_env
    async with a_deal_to_continue_as_new(env, tmp_path, monkeypatch) as (settings, _, view, handle, first_run, forced):
        await deals.record_receipt(env.client, settings, view.id, items("K", 3))
        await quiet(handle)  # the receipt's projection done: the continue-as-new comes after the pickup
        forced.pending[handle.id] = 1
        # Asked as the API asks and retried as a client does: on a loaded machine the retry's query
        # (`pickup_for_request`, just after the continue-as-new) can run past its deadline, a 503 with
        # Retry-After for a caller of the API, which then sends it again.
        pickup = await as_the_api_calls(lambda: deals.request_pickup(env.client, view.id, PICKUP, request_id="order-7-pickup"), env.client)
        assert await continued_as_new(handle, first_run, seconds=10)  # continued as new
        again = await as_the_api_calls(lambda: deals.request_pickup(env.client, view.id, PICKUP, request_id="order-7-pickup"), env.client)  # a retry after it
        current = await deals.get_deal(env.client, settings, view.id)
        await deals.record_receipt(env.client, settings, view.id, items("K", 5, start=3))
        await skip_time(env, YEAR)
        final = await handle.result()
    assert again == pickup and len(current.pickups) == 1 and count(settings, Pickup, deal_id=view.id) == 1
    assert current.received_units == 3
    assert final.status == DealStatus.closed and final.received_units == 8 and ledger(settings, view.id) == {"released": 1}


def mail_settings(tmp_path, standin, **overrides):
    return make_settings(tmp_path, sendgrid_api_key="SG.test", sendgrid_host=standin.url, reminder_offsets="", **overrides)


@pytest.fixture
def standin():
    fake = SendGridStandIn()
    yield fake
    fake.close()


async def test_a_rejected_address_fails_the_mail_not_the_deal(time_skipping_env, tmp_path, standin):
    env = time_skipping_env
    settings = mail_settings(tmp_path, standin)
    add_partner(settings, email="bounces@partner.example")
    standin.rejected_addresses.add("bounces@partner.example")
    async with build_worker(env.client, settings):
        view = await deals.book_deal(env.client, settings, booking(10))
        await skip_time(env, YEAR)
        final = await asyncio.wait_for(deals.deal_handle(env.client, view.id).result(), 30)
        description = await deals.deal_handle(env.client, view.id).describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED and final.status == DealStatus.expired
    assert ledger(settings, view.id) == {"forfeited": 1}
    with session_scope(settings.effective_database_url) as session:
        notice = session.get(EmailMessage, f"{view.id}:settlement:forfeited")
    assert notice.state == "failed" and "400" in notice.last_error and notice.attempts == 1
    assert standin.refusals[400] == 1 and standin.delivered_to("bounces@partner.example") == 0


async def test_a_revoked_key_and_a_long_outage_never_delay_a_decision(time_skipping_env, tmp_path, standin):
    env = time_skipping_env
    settings = mail_settings(tmp_path, standin)
    add_partner(settings)
    async with build_worker(env.client, settings):
        revoked = await deals.book_deal(env.client, settings, booking(10))
        released = await deals.book_deal(env.client, settings, booking(10))
        await env.sleep(YEAR - timedelta(hours=1))
        standin.key_revoked = True  # SendGrid refuses our key from here on
        await deals.record_receipt(env.client, settings, released.id, items("O", 8))  # released now ...
        await env.sleep(timedelta(hours=2))  # ... and the other deal's deadline passes
        # decided on time while no mail could go out: the store shows both decisions and certificates
        assert await eventually(lambda: count(settings, Certificate) == 2)
        assert ledger(settings, revoked.id) == {"forfeited": 1} and ledger(settings, released.id) == {"released": 1}
        assert (await deals.get_deal(env.client, settings, revoked.id)).status == DealStatus.expired
        with session_scope(settings.effective_database_url) as session:
            waiting = {row.key: row for row in session.execute(select(EmailMessage)).scalars()}
        assert {row.state for row in waiting.values()} == {"queued"} and len(waiting) == 2
        assert all("SENDGRID_API_KEY" in row.last_error for row in waiting.values())
        standin.key_revoked, standin.down = False, True  # the key is fixed; now SendGrid is down
        await env.sleep(timedelta(hours=2))
        assert standin.refusals[503] >= 1
        standin.down = False  # and back
        await env.sleep(timedelta(hours=1))
        finals = [await asyncio.wait_for(deals.deal_handle(env.client, d.id).result(), 60) for d in (revoked, released)]
    assert [f.status for f in finals] == [DealStatus.expired, DealStatus.closed]
    with session_scope(settings.effective_database_url) as session:
        states = {row.key: (row.state, row.attempts) for row in session.execute(select(EmailMessage)).scalars()}
    assert {state for state, _ in states.values()} == {"sent"} and all(attempts >= 3 for _, attempts in states.values())
    assert standin.delivered_to("partner@example.com", "forfeited") == 1 and standin.delivered_to("partner@example.com", "released") == 1
    assert standin.delivered_twice() == []
    assert impact_money(settings) == views_money(*finals)
    with session_scope(settings.effective_database_url) as session:
        assert {s.deal_id: s.outcome for s in session.execute(select(Settlement)).scalars()} == {revoked.id: "forfeited", released.id: "released"}



class RefusingCarrier(TakebackActivities):
    """A carrier that refuses every booking for good, as a real provider does after a day of refusals."""

    @activity.defn(name="book_pickup")
    def book_pickup(self, booking):
        raise ApplicationError("no rate for this collection", type="CarrierRefused", non_retryable=True)


async def test_a_pickup_the_carrier_refuses_for_good_shows_failed_and_its_retry_is_answered(time_skipping_env, tmp_path):
    """Before: the deal kept the pickup 'booking' for ever, a retry of the request waited for ever
    (the API answered 503s), and the refusal itself was a 500."""
    env = time_skipping_env
    settings = make_settings(tmp_path)
    add_partner(settings)
    async with build_worker(env.client, settings, activities=RefusingCarrier(settings)):
        view = await deals.book_deal(env.client, settings, booking(10))
        with pytest.raises(deals.PickupBookingFailed, match="no rate"):
            await deals.request_pickup(env.client, view.id, PICKUP, request_id="order-9-pickup")
        with pytest.raises(deals.PickupBookingFailed):  # the retry is answered at once, not after a wait
            await asyncio.wait_for(deals.request_pickup(env.client, view.id, PICKUP, request_id="order-9-pickup"), 10)
        current = await deals.get_deal(env.client, settings, view.id)
        assert [p.status for p in current.pickups] == ["booking_failed"]
        assert rules.open_pickups(current) == 0  # a failed booking does not hold a place among the open pickups
        await deals.record_receipt(env.client, settings, view.id, items("R", 8))
        await skip_time(env, YEAR)
        final = await deals.deal_handle(env.client, view.id).result()
    assert final.status == DealStatus.closed and [p.status for p in final.pickups] == ["booking_failed"]
