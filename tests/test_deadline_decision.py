"""The decision at a deal's deadline and its close in one activity (patches decide-at-once and
decide-and-close, workflows/deal.py): the receipts staged by the deadline are swept in and the
settlement recorded (`sweep_and_settle`), decided by `deadline_outcome` on the deal's count plus the
swept units; the deal adopts what the store holds; the same activity writes the closed view and the
certificate, computed by the rules the deal applies to itself. Fewer engine round trips in a
deadline storm, the same decisions and race guarantees.
"""

import asyncio
from datetime import timedelta
from decimal import Decimal

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType

from activities.deal_activities import DeadlineClose, DeadlineDecision, TakebackActivities, deadline_decision, deadline_outcome
from domain.catalog import default_catalog
from domain.models import DealStatus, DealView, IncentiveStatus
from service import deals
from store import deals as store
from store.db import session_scope
from store.tables import Certificate, Deal, EmailMessage, Settlement
from tests.conftest import add_partner, booking, make_settings
from tests.deal_helpers import count, items, ledger, skip_time
from tests.test_deal_races import Gate, eventually, history_of
from worker import build_worker

YEAR = timedelta(days=365)


class GatedDecision(TakebackActivities):
    def __init__(self, settings):
        super().__init__(settings)
        self.gate = Gate()
        self.calls: list[DeadlineDecision] = []

    @activity.defn(name="decide_and_close")
    def decide_and_close(self, deal: DeadlineClose):
        self.calls.append(deadline_decision(deal.terms, deal.progress))
        self.gate.hold()
        return TakebackActivities.decide_and_close(self, deal)


class LostAfterDeciding(TakebackActivities):
    """The first attempt records the settlement and dies before closing (a worker killed mid-activity)."""

    def __init__(self, settings):
        super().__init__(settings)
        self.attempts = 0

    @activity.defn(name="decide_and_close")
    def decide_and_close(self, deal: DeadlineClose):
        self.attempts += 1
        if self.attempts == 1:
            self.sweep_and_settle(deadline_decision(deal.terms, deal.progress))
            raise RuntimeError("worker lost after recording the settlement")
        return TakebackActivities.decide_and_close(self, deal)


async def closed_with_a_batch_staged_the_day_before_its_deadline(env, settings, batch: list) -> tuple:
    """A deal of 10 units whose batch the API staged a day before the deadline and whose update never came: (booked view, final view)."""
    view = await deals.book_deal(env.client, settings, booking(10))
    await env.sleep(YEAR - timedelta(days=1))
    with session_scope(settings.effective_database_url) as session:
        store.stage_receipt(session, deals.receipt_batch_id(view.id, batch), view.id, batch, staged_at=await env.get_current_time())
    await skip_time(env, timedelta(days=2))
    return view, await deals.deal_handle(env.client, view.id).result()


def scheduled_activities(history) -> list[str]:
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


def test_the_deadline_rule_releases_or_applies_at_the_threshold_and_forfeits_or_claws_back_below():
    assert deadline_outcome("rebate", 8, 8) == "released"
    assert deadline_outcome("rebate", 7, 8) == "forfeited"
    assert deadline_outcome("upfront", 9, 8) == "applied"
    assert deadline_outcome("upfront", 0, 8) == "clawed_back"


async def test_a_batch_staged_by_the_deadline_counts_in_the_one_activity_decision(time_skipping_env, tmp_path):
    """The API staged 8 units and their update never came: the deadline's one activity takes them in,
    releases and closes; no separate sweep, settlement or close activity runs, and the store's closed
    view is the one the deal holds."""
    env = time_skipping_env
    settings = make_settings(tmp_path, reminder_offsets="")
    add_partner(settings)
    async with build_worker(env.client, settings):
        view, final = await closed_with_a_batch_staged_the_day_before_its_deadline(env, settings, items("S", 8))
    assert final.status == DealStatus.closed and final.received_units == 8 and final.incentive.status == IncentiveStatus.released
    assert ledger(settings, view.id) == {"released": 1}
    activities = scheduled_activities(await history_of(env, view.id))
    assert activities.count("decide_and_close") == 1
    assert not {"sweep_receipts", "sweep_and_settle", "record_settlement", "close_deal"} & set(activities)
    # decide, record, then notify: the release notice is scheduled after the decision
    assert activities.index("decide_and_close") < activities.index("notify_settlement")
    with session_scope(settings.effective_database_url) as session:
        assert '"units_received":8' in session.get(Certificate, view.id).content_json
        assert DealView.model_validate_json(session.get(Deal, view.id).view_json) == final


async def test_a_decision_recorded_by_an_attempt_lost_before_the_close_is_closed_once_by_the_retry(time_skipping_env, tmp_path):
    """The settlement is in the store, the close is not: the retry decides nothing anew (one ledger row,
    one notice), takes in the units the lost attempt swept, and closes with the deal's own view."""
    env = time_skipping_env
    settings = make_settings(tmp_path, reminder_offsets="")
    add_partner(settings)
    activities = LostAfterDeciding(settings)
    async with build_worker(env.client, settings, activities=activities):
        view, final = await closed_with_a_batch_staged_the_day_before_its_deadline(env, settings, items("R", 3))
    assert activities.attempts == 2
    assert final.status == DealStatus.expired and final.received_units == 3 and final.incentive.status == IncentiveStatus.forfeited
    assert ledger(settings, view.id) == {"forfeited": 1}
    assert await eventually(lambda: count(settings, EmailMessage, key=f"{view.id}:settlement:forfeited") == 1)
    with session_scope(settings.effective_database_url) as session:
        assert DealView.model_validate_json(session.get(Deal, view.id).view_json) == final
        assert '"units_received":3' in session.get(Certificate, view.id).content_json


async def test_a_cancel_during_the_one_activity_decision_is_refused_and_the_forfeit_stands(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path, reminder_offsets="")
    add_partner(settings)
    activities = GatedDecision(settings)
    async with build_worker(env.client, settings, activities=activities):
        view = await deals.book_deal(env.client, settings, booking(10))
        await skip_time(env, YEAR)
        assert await activities.gate.reached()  # the decision is being swept and recorded ...
        with pytest.raises(deals.DealNotOpen):  # ... and a cancel comes in: refused
            await asyncio.wait_for(deals.cancel_deal(env.client, view.id, "customer withdrew"), 25)
        with pytest.raises(deals.DealNotOpen):  # so is a receipt
            await deals.record_receipt(env.client, settings, view.id, items("L", 8))
        assert not activities.gate.opened.is_set()  # the race happened
        activities.gate.opened.set()
        final = await deals.deal_handle(env.client, view.id).result()
    assert final.status == DealStatus.expired and final.incentive.status == IncentiveStatus.forfeited and final.received_units == 0
    assert ledger(settings, view.id) == {"forfeited": 1}  # no cancelled row beside it
    assert len(activities.calls) == 1 and activities.calls[0].received_units == 0 and activities.calls[0].required_units == 8
    assert await eventually(lambda: count(settings, EmailMessage, key=f"{view.id}:settlement:forfeited") == 1)


async def test_the_store_sweeps_and_settles_once_and_a_retry_answers_as_the_first_attempt(time_skipping_env, tmp_path):
    """Called twice (an attempt that committed and whose answer was lost, then its retry): the same
    swept counts and the same settlement; a settlement held already stands against another outcome."""
    env = time_skipping_env
    settings = make_settings(tmp_path, reminder_offsets="")
    add_partner(settings)
    async with build_worker(env.client, settings):
        view = await deals.book_deal(env.client, settings, booking(10))
        other = await deals.book_deal(env.client, settings, booking(10))
    now = await env.get_current_time()
    batch_id = deals.receipt_batch_id(view.id, items("Q", 6))
    late_id = deals.receipt_batch_id(view.id, items("Z", 5))
    decided_on = []

    def decide(swept):
        received = sum(c.accepted for c in swept)
        decided_on.append(received)
        return deadline_outcome("rebate", received, 8), Decimal("5000.00")

    with session_scope(settings.effective_database_url) as session:
        store.stage_receipt(session, batch_id, view.id, items("Q", 6), staged_at=now)
        store.stage_receipt(session, late_id, view.id, items("Z", 5), staged_at=now + timedelta(days=1))  # after the deadline: not counted
        first = store.sweep_and_settle(session, view.id, "P1", now, [], 5, default_catalog(), decide)
    with session_scope(settings.effective_database_url) as session:
        retry = store.sweep_and_settle(session, view.id, "P1", now, [], 5, default_catalog(), decide)
    with session_scope(settings.effective_database_url) as session:
        counted = store.sweep_and_settle(session, view.id, "P1", now, [batch_id], 5, default_catalog(), decide)
    assert [c.accepted for c in first[0]] == [6] and first[1].outcome == "forfeited" and first[2] is True
    assert [c.accepted for c in retry[0]] == [6] and retry[1].outcome == "forfeited" and retry[2] is False
    assert counted[0] == [] and counted[1].outcome == "forfeited"
    assert decided_on == [6]  # decided once; the retries found the settlement held
    assert ledger(settings, view.id) == {"forfeited": 1}
    # A settlement held already (e.g. a release) stands: nothing contradicts it
    with session_scope(settings.effective_database_url) as session:
        store.record_settlement(session, other.id, "P1", "released", Decimal("5000.00"))
        held = store.sweep_and_settle(session, other.id, "P1", now, [], 5, default_catalog(), lambda swept: ("forfeited", Decimal("5000.00")))
    assert held[1].outcome == "released" and held[2] is False
    assert count(settings, Settlement, deal_id=other.id) == 1 and ledger(settings, other.id) == {"released": 1}


async def test_the_worker_caches_as_many_deals_as_takeback_worker_cache_says(time_skipping_env, tmp_path, monkeypatch):
    from settings import Settings

    monkeypatch.delenv("TAKEBACK_WORKER_CACHE", raising=False)
    assert Settings().worker_cache == 10000  # a storm's 5,000 deals stay cached by default (bench/STORM-NOTES.md)
    monkeypatch.setenv("TAKEBACK_WORKER_CACHE", "2500")
    settings = make_settings(tmp_path)
    assert settings.worker_cache == 2500
    assert build_worker(time_skipping_env.client, settings).config()["max_cached_workflows"] == 2500
    monkeypatch.setenv("TAKEBACK_WORKER_CACHE", "-1")
    with pytest.raises(ValueError):
        make_settings(tmp_path)
