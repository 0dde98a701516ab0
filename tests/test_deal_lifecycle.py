"""A deal's year on the time-skipping server: release, forfeit, claw-back, reminders,
extension, cancel, certificate, and a 50,000-serial booking."""

import asyncio
import hashlib
import json
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus

from activities.deal_activities import DealDecision, ReminderInput, TakebackActivities
from domain.models import DealStatus, IncentiveStatus
from service import deals
from store import deals as store
from store.db import session_scope
from store.tables import Certificate, DealExtension, EmailMessage, OpenSerialClaim, ReminderSent
from tests.conftest import add_partner, booking, make_settings, running_worker
from worker import build_worker
from tests.deal_helpers import PICKUP, count, items, ledger, ledger_amounts, mail, outbox, reminder_offsets_days, settle

YEAR = timedelta(days=365)


async def test_rebate_year_releases_once_and_keeps_accepting_returns(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        view = await deals.book_deal(env.client, settings, booking(10, rate="0.05", value="100000.00"))
        deal_id = view.id
        assert view.status == DealStatus.awaiting_returns and view.required_units == 8
        assert view.return_deadline - view.booked_at == YEAR
        assert view.incentive.status == IncentiveStatus.held and view.incentive.amount == Decimal("5000.00")
        assert ledger(settings, deal_id) == {}  # rebate: nothing moves at booking

        await deals.request_pickup(env.client, deal_id, PICKUP)
        await env.sleep(timedelta(days=40))
        assert (await deals.record_receipt(env.client, settings, deal_id, items("A", 7)))["accepted"] == 7
        view = await settle(env, settings, deal_id)
        assert view.status == DealStatus.awaiting_returns and view.incentive.status == IncentiveStatus.held  # 7 < 8

        await env.sleep(timedelta(days=60))
        await deals.record_receipt(env.client, settings, deal_id, items("A", 1, start=7))
        view = await settle(env, settings, deal_id)
        assert view.status == DealStatus.condition_met and view.incentive.status == IncentiveStatus.released
        assert ledger(settings, deal_id) == {"released": 1}
        assert ledger_amounts(settings, deal_id) == {"released": Decimal("5000.00")}

        # after the release the deal still takes returns, and pays nothing more
        await env.sleep(timedelta(days=100))
        result = await deals.record_receipt(env.client, settings, deal_id, items("A", 1, start=8))
        assert result["accepted"] == 1
        view = await settle(env, settings, deal_id)
        assert view.received_units == 9 and view.status == DealStatus.condition_met

        handle = deals.deal_handle(env.client, deal_id)
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING  # open until the deadline
        await env.sleep(YEAR - timedelta(days=200))
        final = await handle.result()

    assert final.status == DealStatus.closed and final.closed_reason == "return window ended with the condition met"
    assert final.incentive.status == IncentiveStatus.released and final.received_units == 9
    assert ledger(settings, deal_id) == {"released": 1}
    assert final.reminders_sent == [] and count(settings, ReminderSent, deal_id=deal_id) == 0  # met before 90 days out
    released = mail(settings, f"{deal_id}_settlement_released.eml")
    assert released["To"] == "partner@example.com" and released["Cc"] is None and "5000.00" in released["Subject"]
    assert [name for name in outbox(settings) if "reminder" in name] == []
    with session_scope(settings.effective_database_url) as session:
        stored = store.deal_view_from_store(session, deal_id)
    assert stored == final  # the store's read model (what lists and closed deals read) agrees


async def test_all_committed_units_back_closes_the_deal_early(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        view = await deals.book_deal(env.client, settings, booking(5))
        await env.sleep(timedelta(days=20))
        await deals.record_receipt(env.client, settings, view.id, items("E", 5))
        await env.sleep(timedelta(seconds=5))
        description = await deals.deal_handle(env.client, view.id).describe()
        final = await deals.deal_handle(env.client, view.id).result()
    assert description.status == WorkflowExecutionStatus.COMPLETED
    assert final.status == DealStatus.closed and final.closed_reason == "every committed unit returned"
    assert final.return_deadline - final.booked_at == YEAR  # closed months before its deadline
    assert ledger(settings, view.id) == {"released": 1}


async def test_shortfall_is_forfeited_at_the_deadline_not_before(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        view = await deals.book_deal(env.client, settings, booking(10))
        await env.sleep(timedelta(days=10))
        await deals.record_receipt(env.client, settings, view.id, items("S", 7))
        await env.sleep(YEAR - timedelta(days=10) - timedelta(minutes=2))
        before = await deals.get_deal(env.client, settings, view.id)
        assert before.status == DealStatus.awaiting_returns and before.incentive.status == IncentiveStatus.held
        assert "forfeited" not in ledger(settings, view.id)
        await env.sleep(timedelta(minutes=3))
        final = await deals.deal_handle(env.client, view.id).result()

    assert final.status == DealStatus.expired and final.incentive.status == IncentiveStatus.forfeited
    assert final.received_units == 7 and final.closed_reason == "return window ended short of the condition"
    assert ledger_amounts(settings, view.id) == {"forfeited": Decimal("5000.00")}
    notice = mail(settings, f"{view.id}_settlement_forfeited.eml")
    assert notice["To"] == "partner@example.com" and notice["Cc"] == settings.ops_email
    assert count(settings, Certificate, deal_id=view.id) == 1


async def test_upfront_is_applied_at_booking_and_clawed_back_on_shortfall(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path, incentive_mode="upfront")
    async with running_worker(env.client, settings):
        short = await deals.book_deal(env.client, settings, booking(10, rate="0.07", value="12345.67"))
        met = await deals.book_deal(env.client, settings, booking(4))
        assert short.incentive.status == IncentiveStatus.applied and short.incentive.amount == Decimal("864.20")
        await settle(env, settings, short.id)  # the ledger row is written by the deal's first workflow task
        assert ledger_amounts(settings, short.id) == {"applied": Decimal("864.20")}

        await env.sleep(timedelta(days=30))
        await deals.record_receipt(env.client, settings, short.id, items("U", 2))
        await deals.record_receipt(env.client, settings, met.id, items("M", 4, product_id="ASA5516-X"))
        await env.sleep(YEAR)
        final_short = await deals.deal_handle(env.client, short.id).result()
        final_met = await deals.deal_handle(env.client, met.id).result()

    assert final_short.status == DealStatus.expired and final_short.incentive.status == IncentiveStatus.clawed_back
    assert ledger_amounts(settings, short.id) == {"applied": Decimal("864.20"), "clawed_back": Decimal("864.20")}
    notice = mail(settings, f"{short.id}_settlement_clawed_back.eml")
    assert notice["Cc"] == settings.ops_email and "clawed back" in notice["Subject"]
    # the condition met in upfront mode: the discount simply stands
    assert final_met.status == DealStatus.closed and final_met.incentive.status == IncentiveStatus.applied
    assert ledger(settings, met.id) == {"applied": 1}
    assert not [name for name in outbox(settings) if name.startswith(met.id) and "settlement" in name]


async def test_reminders_at_90_30_7_days_each_once_while_the_condition_is_unmet(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        quiet = await deals.book_deal(env.client, settings, booking(10))  # never returns enough
        late = await deals.book_deal(env.client, settings, booking(10))  # meets the condition 20 days out
        await deals.record_receipt(env.client, settings, quiet.id, items("Q", 2))

        await env.sleep(YEAR - timedelta(days=91))
        assert reminder_offsets_days(settings, quiet.id) == [] and outbox(settings) == []
        await env.sleep(timedelta(days=2))  # 89 days left
        assert reminder_offsets_days(settings, quiet.id) == [90]
        assert (await deals.get_deal(env.client, settings, quiet.id)).reminders_sent == ["90d"]
        await env.sleep(timedelta(days=58))  # 31 days left: nothing new
        assert reminder_offsets_days(settings, quiet.id) == [90] and reminder_offsets_days(settings, late.id) == [90]
        await env.sleep(timedelta(days=2))  # 29 days left
        assert reminder_offsets_days(settings, quiet.id) == [30, 90]

        await env.sleep(timedelta(days=9))  # 20 days left: `late` meets its condition
        await deals.record_receipt(env.client, settings, late.id, items("L", 8))
        await env.sleep(timedelta(days=21))
        final_quiet = await deals.deal_handle(env.client, quiet.id).result()
        final_late = await deals.deal_handle(env.client, late.id).result()

    assert final_quiet.reminders_sent == ["90d", "30d", "7d"] and reminder_offsets_days(settings, quiet.id) == [7, 30, 90]
    assert final_late.reminders_sent == ["90d", "30d"] and reminder_offsets_days(settings, late.id) == [30, 90]
    assert final_late.incentive.status == IncentiveStatus.released
    names = outbox(settings)
    assert [n for n in names if n.startswith(quiet.id) and "reminder" in n] == [f"{quiet.id}_reminder_{d}.eml" for d in ("30d", "7d", "90d")]
    assert [n for n in names if n.startswith(late.id) and "reminder" in n] == [f"{late.id}_reminder_{d}.eml" for d in ("30d", "90d")]
    with session_scope(settings.effective_database_url) as session:
        mails = session.execute(select(EmailMessage.key)).scalars().all()
    assert len(mails) == len(set(mails)) and len([k for k in mails if "reminder" in k]) == 5
    reminder = mail(settings, f"{quiet.id}_reminder_7d.eml")
    assert reminder["To"] == "partner@example.com" and "6 more units" in reminder["Subject"]


async def test_extension_moves_the_deadline_and_the_reminders(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        view = await deals.book_deal(env.client, settings, booking(10))
        booked_at = view.booked_at
        await env.sleep(timedelta(days=200))
        extended = await deals.extend_deal(env.client, view.id, "60d", "customer site closed for renovation")
        assert extended.return_deadline == booked_at + YEAR + timedelta(days=60)
        assert extended.extensions == ["+60d: customer site closed for renovation"]

        await env.sleep(timedelta(days=80))  # day 280: the old 90-day mark (275) has passed, the new one (335) not
        assert reminder_offsets_days(settings, view.id) == []
        await env.sleep(timedelta(days=56))  # day 336
        assert reminder_offsets_days(settings, view.id) == [90]
        await env.sleep(timedelta(days=30))  # day 366: past the original deadline, still open
        assert (await deals.get_deal(env.client, settings, view.id)).status == DealStatus.awaiting_returns
        await env.sleep(timedelta(days=60))  # day 426
        final = await deals.deal_handle(env.client, view.id).result()

    assert final.status == DealStatus.expired and final.return_deadline == booked_at + timedelta(days=425)
    assert final.reminders_sent == ["90d", "30d", "7d"]
    with session_scope(settings.effective_database_url) as session:
        extension = session.execute(select(DealExtension).where(DealExtension.deal_id == view.id)).scalars().one()
        deadlines = {d.replace(tzinfo=None) for d in session.execute(select(ReminderSent.deadline).where(ReminderSent.deal_id == view.id)).scalars()}
    assert extension.reason == "customer site closed for renovation" and extension.extend_by_seconds == 60 * 86400
    assert deadlines == {final.return_deadline.replace(tzinfo=None)}  # every reminder named the new deadline


async def test_cancel_pays_nothing_frees_the_serials_and_closes_the_deal(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    serials = [f"C-{i}" for i in range(10)]
    async with running_worker(env.client, settings):
        view = await deals.book_deal(env.client, settings, booking(10, serials=serials))
        await deals.request_pickup(env.client, view.id, PICKUP)
        await env.sleep(timedelta(days=30))
        await deals.record_receipt(env.client, settings, view.id, items("C", 3))
        cancelled = await deals.cancel_deal(env.client, view.id, "customer withdrew")
        assert cancelled.status == DealStatus.cancelled and cancelled.incentive.status == IncentiveStatus.cancelled
        assert cancelled.closed_reason == "cancelled: customer withdrew"
        final = await deals.deal_handle(env.client, view.id).result()
        assert final.status == DealStatus.cancelled

        with pytest.raises(deals.DealNotOpen):
            await deals.record_receipt(env.client, settings, view.id, items("C", 1, start=5))
        with pytest.raises(deals.DealNotOpen):
            await deals.request_pickup(env.client, view.id, PICKUP)
        with pytest.raises(deals.DealNotOpen):
            await deals.extend_deal(env.client, view.id, "30d", "too late")
        with pytest.raises(deals.DealNotOpen):
            await deals.cancel_deal(env.client, view.id, "twice")
        # the cancelled deal's serials may be committed on a new deal
        again = await deals.book_deal(env.client, settings, booking(10, serials=serials))
        assert again.status == DealStatus.awaiting_returns

    assert ledger_amounts(settings, view.id) == {"cancelled": Decimal("0.00")}
    assert count(settings, Certificate, deal_id=view.id) == 1
    assert count(settings, OpenSerialClaim, deal_id=view.id) == 0 and count(settings, OpenSerialClaim, deal_id=again.id) == 10
    assert not [name for name in outbox(settings) if name.startswith(view.id) and "settlement" in name]


async def test_a_paid_deal_cannot_be_cancelled(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        view = await deals.book_deal(env.client, settings, booking(10))
        await deals.record_receipt(env.client, settings, view.id, items("R", 8))
        await settle(env, settings, view.id)
        with pytest.raises(deals.DealNotOpen):
            await deals.cancel_deal(env.client, view.id, "after the money went out")
        view = await deals.get_deal(env.client, settings, view.id)
    assert view.status == DealStatus.condition_met and ledger(settings, view.id) == {"released": 1}


async def test_the_certificate_is_issued_at_close_with_a_checkable_hash(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        view = await deals.book_deal(env.client, settings, booking(4, product_id="ISR4331/K9"))
        await deals.record_receipt(env.client, settings, view.id, items("K", 2, product_id="ISR4331/K9", age_years=2))
        assert count(settings, Certificate, deal_id=view.id) == 0  # not before the deal closes
        await deals.record_receipt(env.client, settings, view.id, items("K", 2, product_id="ISR4331/K9", condition="dead", start=2))
        final = await deals.deal_handle(env.client, view.id).result()

    with session_scope(settings.effective_database_url) as session:
        certificate = store.get_certificate(session, view.id)
    assert certificate.content_hash == hashlib.sha256(certificate.content_json.encode()).hexdigest()
    content = json.loads(certificate.content_json)
    assert content["deal_id"] == view.id and content["status"] == final.status.value == "closed"
    assert content["units_received"] == 4 and content["dispositions"] == {"refresh": 2, "recycle": 2, "other": 0}
    by_serial = {item["serial_number"]: item for item in content["items"]}
    assert by_serial["K-0"]["disposition"] == "refresh" and by_serial["K-0"]["sanitization"]["method"] == "purge"
    assert by_serial["K-3"]["disposition"] == "recycle" and by_serial["K-3"]["sanitization"]["method"] == "destroy"
    assert by_serial["K-3"]["sanitization"]["standard"] == "NIST SP 800-88 Rev. 1"


async def test_fifty_thousand_serials_book_and_complete_with_a_small_history(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    units = 50_000
    serials = [f"BIG-{i}" for i in range(units)]
    async with running_worker(env.client, settings):
        view = await deals.book_deal(env.client, settings, booking(units, serials=serials))
        assert view.committed_units == units and view.required_units == 40_000
        with pytest.raises(store.SerialConflict) as conflict:
            await deals.book_deal(env.client, settings, booking(2, serials=["BIG-49999", "NEW-1"]))
        assert conflict.value.serials == ["BIG-49999"]
        for batch in range(units // 5_000):
            await deals.record_receipt(env.client, settings, view.id, items("BIG", 5_000, start=batch * 5_000), batch_id=f"{view.id}-b{batch}")
        handle = deals.deal_handle(env.client, view.id)
        final = await handle.result()
        history = await handle.fetch_history()

    assert final.status == DealStatus.closed and final.received_units == units and final.closed_reason == "every committed unit returned"
    assert ledger(settings, view.id) == {"released": 1}
    assert count(settings, OpenSerialClaim) == 0  # claims freed at close
    assert len(history.events) < 200, len(history.events)
    largest = max(event.ByteSize() for event in history.events)
    assert largest < 256 * 1024, largest
    with session_scope(settings.effective_database_url) as session:
        assert json.loads(store.get_certificate(session, view.id).content_json)["units_received"] == units


class GatedReminders(TakebackActivities):
    """Holds each reminder until the test opens the gate, to deliver a receipt meanwhile."""

    def __init__(self, settings):
        super().__init__(settings)
        self.started, self.gate = threading.Event(), threading.Event()

    @activity.defn(name="send_reminder")
    def send_reminder(self, reminder: ReminderInput) -> bool:
        self.started.set()
        self.gate.wait(20)
        return TakebackActivities.send_reminder(self, reminder)


async def test_a_receipt_that_arrives_while_a_reminder_goes_out_is_acted_on_at_once(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    add_partner(settings)
    activities = GatedReminders(settings)
    async with build_worker(env.client, settings, activities=activities):
        view = await deals.book_deal(env.client, settings, booking(10))
        await env.sleep(YEAR - timedelta(days=90))  # the 90-day reminder starts ...
        assert await asyncio.to_thread(activities.started.wait, 10)
        await deals.record_receipt(env.client, settings, view.id, items("G", 8))  # ... the condition is met meanwhile
        activities.gate.set()
        view = await settle(env, settings, view.id)
        # released now, not when the 30-day reminder timer would next wake the deal
        assert view.status == DealStatus.condition_met and view.incentive.status == IncentiveStatus.released
        assert view.reminders_sent == ["90d"]
    assert ledger(settings, view.id) == {"released": 1}


class GatedForfeit(TakebackActivities):
    """Holds the forfeit at the deadline until the test opens the gate, to cancel meanwhile."""

    def __init__(self, settings):
        super().__init__(settings)
        self.started, self.gate = threading.Event(), threading.Event()

    @activity.defn(name="decide_and_close")
    def decide_and_close(self, decision: DealDecision):
        self.started.set()
        self.gate.wait(40)
        return TakebackActivities.decide_and_close(self, decision)


async def test_a_cancel_racing_the_deadline_is_refused_and_the_deal_still_finishes(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path, reminder_offsets="")
    add_partner(settings)
    activities = GatedForfeit(settings)
    async with build_worker(env.client, settings, activities=activities):
        view = await deals.book_deal(env.client, settings, booking(10))
        await env.sleep(YEAR)  # the deadline: the forfeit starts ...
        assert await asyncio.to_thread(activities.started.wait, 10)
        # ... and a cancel comes in: refused at once, while the forfeit is still being written
        with pytest.raises(deals.DealNotOpen):
            await asyncio.wait_for(deals.cancel_deal(env.client, view.id, "too late"), 25)
        assert not activities.gate.is_set()  # the race happened: the decision was in flight when the cancel was answered
        activities.gate.set()
        final = await asyncio.wait_for(deals.deal_handle(env.client, view.id).result(), 10)
    assert final.status == DealStatus.expired and final.incentive.status == IncentiveStatus.forfeited
    assert ledger(settings, view.id) == {"forfeited": 1}


async def test_a_retry_of_a_booking_staged_but_never_started_starts_it_with_the_staged_terms(time_skipping_env, tmp_path):
    """The first attempt staged the deal and died before starting its workflow: the retry, booked a while
    later by its own clock, starts the workflow with the booking time (and so the deadline) the store holds."""
    env = time_skipping_env
    settings = make_settings(tmp_path)
    add_partner(settings)
    request = booking(10)
    first_clock = (await env.get_current_time()) - timedelta(hours=1)
    terms = deals.deal_terms("D-STAGED", request, settings, booked_at=first_clock)
    with session_scope(settings.effective_database_url) as session:
        assert store.stage_booking(session, "D-STAGED", request, terms, deals.deal_view(terms, deals.initial_progress(terms, first_clock)))
    async with running_worker(env.client, settings):
        retried = await deals.book_deal(env.client, settings, request, deal_id="D-STAGED")
        live = await deals.get_deal(env.client, settings, "D-STAGED")  # the workflow's own view (a query: the deal is open)
    assert retried.booked_at == live.booked_at == first_clock
    assert retried.return_deadline == live.return_deadline == first_clock + timedelta(days=365)


async def test_a_retried_booking_joins_its_deal_and_after_close_answers_the_closed_deal(time_skipping_env, tmp_path):
    """Update-with-start: the same deal id starts one workflow; a late retry books nothing new."""
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        first, second = await asyncio.gather(
            deals.book_deal(env.client, settings, booking(10), deal_id="D-RETRY"),
            deals.book_deal(env.client, settings, booking(10), deal_id="D-RETRY"),
        )
        assert first == second and first.status == DealStatus.awaiting_returns
        await deals.cancel_deal(env.client, "D-RETRY", "customer withdrew")
        await deals.deal_handle(env.client, "D-RETRY").result()
        late = await deals.book_deal(env.client, settings, booking(10), deal_id="D-RETRY")
    assert late.id == "D-RETRY" and late.status == DealStatus.cancelled
    history = await deals.deal_handle(env.client, "D-RETRY").fetch_history()
    starts = [e for e in history.events if e.HasField("workflow_execution_started_event_attributes")]
    assert len(starts) == 1
    assert ledger_amounts(settings, "D-RETRY") == {"cancelled": Decimal("0.00")}


async def test_an_open_deal_keeps_the_terms_it_was_booked_with_when_the_rules_change(time_skipping_env, tmp_path, monkeypatch):
    """Amount and required units are frozen at booking: a later change of the rules (a lower cap,
    other rounding, another threshold) never re-prices a deal already running."""
    from domain import rules

    from tests.test_deal_races import uncached_worker

    env = time_skipping_env
    settings = make_settings(tmp_path)
    add_partner(settings)
    async with uncached_worker(env, settings):  # every task replays the deal from its history, as after a deploy
        view = await deals.book_deal(env.client, settings, booking(10, rate="0.07", value="100000.00"))
        assert (view.incentive.amount, view.required_units) == (Decimal("7000.00"), 8)
        # A new release changes the rules while the deal runs (and its workflow is replayed afresh).
        monkeypatch.setattr(rules, "incentive_amount", lambda value, rate: Decimal("1.00"))
        monkeypatch.setattr(rules, "required_units", lambda committed, threshold: committed)
        await deals.record_receipt(env.client, settings, view.id, items("T", 8))
        await env.sleep(YEAR)
        final = await deals.deal_handle(env.client, view.id).result()
    assert final.incentive.amount == Decimal("7000.00") and final.required_units == 8
    assert final.status == DealStatus.closed and final.incentive.status == IncentiveStatus.released
    assert ledger_amounts(settings, view.id) == {"released": Decimal("7000.00")}
