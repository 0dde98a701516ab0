"""One arbiter for the money: the store decides what came back and what a deal is paid, one
transaction at a time with the deal's row locked (store.settlement), and the deal adopts it.

The crash points of every step on the money path come from one table, on SQLite and PostgreSQL:
the step fails before its commit, or commits and dies before its answer, and its retry races a
message (a receipt, an extension, a cancel). Whatever happens, every answer a caller got is honoured:
a receipt answered 200 counts, one refused (409) never does, and the deal is decided once, with one
settlement, one ledger row and one notice.
"""

import asyncio
import threading
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy.exc import OperationalError
from temporalio import activity

from activities.deal_activities import DealDecision, TakebackActivities
from domain.catalog import default_catalog
from domain.deal_progress import deadline_outcome
from domain.models import DealStatus, IncentiveStatus
from service import deals
from store import settlement
from store.db import session_scope
from store.tables import Certificate, Deal, EmailMessage, ReturnedItem, Settlement
from tests.conftest import add_partner, booking, make_settings, new_postgres_database
from tests.deal_helpers import count, items, ledger, skip_time
from tests.test_deal_races import Gate, eventually
from worker import build_worker

YEAR = timedelta(days=365)


def test_the_deadline_rule_releases_or_applies_at_the_threshold_and_forfeits_or_claws_back_below():
    assert deadline_outcome("rebate", 8, 8) == "released"
    assert deadline_outcome("rebate", 7, 8) == "forfeited"
    assert deadline_outcome("upfront", 8, 8) == "applied"
    assert deadline_outcome("upfront", 7, 8) == "clawed_back"


# --- the decision activity: its crash points ------------------------------------------------------


class CrashingDecision(TakebackActivities):
    """`decide_and_close` whose first attempt crashes `where` ("before" its commit, or "after" it and before
    its answer), held at a gate meanwhile so that a message races its retry."""

    def __init__(self, settings, where: str):
        super().__init__(settings)
        self.where, self.attempts, self.gate = where, 0, Gate()

    @activity.defn(name="decide_and_close")
    def decide_and_close(self, decision: DealDecision):
        self.attempts += 1
        if self.attempts == 1:
            if self.where == "after":
                with session_scope(self.database_url) as session:
                    settlement.decide(session, decision.terms.deal_id, decision.kind)
            self.gate.hold()
            raise RuntimeError(f"worker lost {self.where} the decision's commit")
        return TakebackActivities.decide_and_close(self, decision)


@dataclass(frozen=True)
class CrashPoint:
    where: str  # before | after: the first attempt dies before its commit, or after it and before its answer
    racing: str  # receipt | extend | cancel | nothing: what reaches the deal while the retry is due
    receipt_counts: bool  # a receipt racing the retry counts (committed before the decision) or is refused


CRASH_POINTS = [
    CrashPoint("before", "nothing", False),
    CrashPoint("after", "nothing", False),
    CrashPoint("before", "receipt", True),  # the decision has not committed: the receipt is before it
    CrashPoint("after", "receipt", False),  # the decision committed: the receipt is after it, refused
    CrashPoint("before", "extend", False),
    CrashPoint("after", "extend", False),
    CrashPoint("before", "cancel", False),
    CrashPoint("after", "cancel", False),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    from store.db import dispose_engine

    url = f"sqlite:///{tmp_path / 'takeback.db'}" if request.param == "sqlite" else new_postgres_database(request.getfixturevalue("postgres_url"))
    yield url
    dispose_engine(url)


@pytest.mark.parametrize("point", CRASH_POINTS, ids=lambda p: f"{p.where}-commit-racing-{p.racing}")
async def test_a_deadline_decision_that_crashes_decides_once_and_honours_every_answer(time_skipping_env, tmp_path, store_url, point):
    env = time_skipping_env
    settings = make_settings(tmp_path, reminder_offsets="", database_url=store_url)
    add_partner(settings)
    activities = CrashingDecision(settings, point.where)
    async with build_worker(env.client, settings, activities=activities):
        view = await deals.book_deal(env.client, settings, booking(10))
        await deals.record_receipt(env.client, settings, view.id, items("A", 7))  # short by one: forfeited unless the racer counts
        await env.sleep(YEAR)
        assert await activities.gate.reached()  # the first attempt is dying ...
        answer = None
        if point.racing == "receipt":  # ... and a message races its retry
            try:
                answer = await deals.record_receipt(env.client, settings, view.id, items("B", 1))
            except deals.DealNotOpen:
                answer = "refused"
        elif point.racing == "extend":
            with pytest.raises(deals.DealNotOpen):
                await asyncio.wait_for(deals.extend_deal(env.client, view.id, "30d", "late"), 20)
        elif point.racing == "cancel":
            with pytest.raises(deals.DealNotOpen):
                await asyncio.wait_for(deals.cancel_deal(env.client, view.id, "late"), 20)
        activities.gate.opened.set()
        final = await asyncio.wait_for(deals.deal_handle(env.client, view.id).result(), 30)
        if point.racing == "receipt":  # the caller's retry is answered as the first time
            try:
                retried = await deals.record_receipt(env.client, settings, view.id, items("B", 1))
            except deals.DealNotOpen:
                retried = "refused"
            assert (retried == "refused") == (answer == "refused")
    assert activities.attempts == 2
    counted = 8 if point.racing == "receipt" and point.receipt_counts else 7
    if point.racing == "receipt":
        assert (answer == "refused") != point.receipt_counts
    assert final.received_units == counted == count(settings, ReturnedItem, deal_id=view.id)
    outcome = "released" if counted >= 8 else "forfeited"
    assert final.incentive.status == IncentiveStatus(outcome) and final.status == (DealStatus.closed if counted >= 8 else DealStatus.expired)
    assert ledger(settings, view.id) == {outcome: 1} and count(settings, Settlement, deal_id=view.id) == 1
    with session_scope(settings.effective_database_url) as session:
        stored = session.get(Deal, view.id)
        assert (stored.received_units, stored.incentive_status, stored.status) == (counted, outcome, final.status.value)
        assert deals.DealView.model_validate_json(stored.view_json) == final  # the closed view the activity wrote is the deal's own
        assert session.get(Certificate, view.id) is not None
    assert await eventually(lambda: count(settings, EmailMessage, key=f"{view.id}:settlement:{outcome}") == 1)
    assert count(settings, EmailMessage, deal_id=view.id) == 1  # one notice, whatever crashed


# --- the receipt: its crash points in the API ------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
async def test_a_receipt_whose_caller_crashes_counts_once_and_its_retry_is_answered(time_skipping_env, tmp_path, store_url, where, monkeypatch):
    """The API's receipt dies before its commit (the store's connection dropped inside the transaction:
    nothing of it counts) or after it and before telling the deal (it counts, the deal is told by the
    retry); the caller's retry is answered with the items, and the deal decides on them once."""
    env = time_skipping_env
    settings = make_settings(tmp_path, reminder_offsets="", database_url=store_url)
    add_partner(settings)
    async with build_worker(env.client, settings):
        view = await deals.book_deal(env.client, settings, booking(10))
        if where == "before":
            original = settlement._decide_on_counts

            def dropped(session, deal):
                original(session, deal)
                raise OperationalError("UPDATE deal", {}, Exception("server closed the connection unexpectedly"))

            monkeypatch.setattr(settlement, "_decide_on_counts", dropped)
            with pytest.raises(OperationalError):
                await deals.record_receipt(env.client, settings, view.id, items("C", 8))
            monkeypatch.setattr(settlement, "_decide_on_counts", original)
            assert count(settings, ReturnedItem, deal_id=view.id) == 0 and ledger(settings, view.id) == {}
        else:
            with session_scope(settings.effective_database_url) as session:
                assert settlement.count_receipt(session, view.id, deals.receipt_batch_id(view.id, items("C", 8)), items("C", 8), 5, default_catalog()).counted
            assert (await deals.get_deal(env.client, settings, view.id)).received_units == 0  # the deal was not told
        retried = await deals.record_receipt(env.client, settings, view.id, items("C", 8))
        told = await deals.get_deal(env.client, settings, view.id)
        await skip_time(env, YEAR)
        final = await deals.deal_handle(env.client, view.id).result()
    assert retried["accepted"] == 8 and told.received_units == 8 and told.incentive.status == IncentiveStatus.released
    assert final.received_units == 8 and count(settings, ReturnedItem, deal_id=view.id) == 8
    assert ledger(settings, view.id) == {"released": 1}


# --- the store under concurrency: receipts racing the decision ---------------------------------------


def _booked(url: str, deal_id: str, units: int = 10, mode: str = "rebate") -> None:
    with session_scope(url) as session:
        session.add(Deal(
            id=deal_id, partner_id="P1", customer_name="Acme", customer_country="CA", opportunity="refresh", new_products_value=Decimal("100000.00"),
            incentive_rate=Decimal("0.05"), incentive_mode=mode, incentive_amount=Decimal("5000.00"), incentive_status="held" if mode == "rebate" else "applied",
            status="awaiting_returns", committed_units=units, required_units=8,
        ))
        session.commit()


def test_receipts_racing_the_decision_count_if_and_only_if_they_committed_before_it(database_url):
    """Twelve receipt batches of one unit race the deadline's decision from as many threads: the decision
    counts exactly the batches committed before it, every later one is refused and burns no serial."""
    from store.migrate import upgrade
    from sqlalchemy import create_engine

    upgrade(create_engine(database_url))
    _booked(database_url, "DRACE", units=20)
    start = threading.Barrier(13)
    answers: dict[str, bool] = {}
    decided = {}

    def receipt(n: int) -> None:
        batch = items(f"S{n}", 1)
        start.wait()
        with session_scope(database_url) as session:
            answers[f"b{n}"] = settlement.count_receipt(session, "DRACE", f"b{n}", batch, 5, default_catalog()).counted

    def decision() -> None:
        start.wait()
        with session_scope(database_url) as session:
            decided["totals"], decided["here"] = settlement.decide(session, "DRACE", "deadline")

    threads = [threading.Thread(target=receipt, args=(n,)) for n in range(12)] + [threading.Thread(target=decision)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    counted = sum(answers.values())
    totals = decided["totals"]
    assert decided["here"] and totals.closed and len(answers) == 12
    assert totals.received_units == counted  # the decision counted exactly the batches committed before it
    assert totals.settlement == ("released" if counted >= 8 else "forfeited")
    with session_scope(database_url) as session:
        assert settlement.totals(session, "DRACE") == totals  # and nothing changed it after
    assert count_rows(database_url, ReturnedItem, "DRACE") == counted  # a refused batch burns no serial


def count_rows(url: str, table, deal_id: str) -> int:
    from sqlalchemy import func, select

    with session_scope(url) as session:
        return session.execute(select(func.count()).select_from(table).where(table.deal_id == deal_id)).scalar_one()


def test_a_cancel_after_the_store_released_the_rebate_is_refused_and_pays_nothing_more(database_url):
    from sqlalchemy import create_engine

    from store.migrate import upgrade

    upgrade(create_engine(database_url))
    _booked(database_url, "DPAID")
    with session_scope(database_url) as session:
        assert settlement.count_receipt(session, "DPAID", "b1", items("P", 8), 5, default_catalog()).totals.settlement == "released"
        totals, decided = settlement.decide(session, "DPAID", "cancel")
        assert not decided and not totals.closed and totals.settlement == "released"
        again, decided = settlement.decide(session, "DPAID", "deadline")
        assert decided and again.closed and again.settlement == "released"  # the deadline closes it; the release stands
        late = settlement.count_receipt(session, "DPAID", "b2", items("Q", 1), 5, default_catalog())
        assert not late.counted and late.totals == again
    assert count_rows(database_url, Settlement, "DPAID") == 1


class _SerializationFailure(Exception):
    sqlstate = "40001"  # as psycopg's SerializationFailure carries it


def test_a_receipt_meeting_a_serialization_failure_is_run_again_and_counted_once(database_url, monkeypatch):
    """PostgreSQL may answer a transaction "could not serialize" (or break a deadlock between two deals'
    receipts crossing on each other's serials): the store rolls back and runs the receipt again."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError as SQLOperationalError

    from store.migrate import upgrade

    upgrade(create_engine(database_url))
    _booked(database_url, "DSER")
    original, failures = settlement._decide_on_counts, []

    def fails_once(session, deal):
        original(session, deal)
        if not failures:
            failures.append(1)
            raise SQLOperationalError("UPDATE deal", {}, _SerializationFailure("could not serialize access due to concurrent update"))

    monkeypatch.setattr(settlement, "_decide_on_counts", fails_once)
    with session_scope(database_url) as session:
        outcome = settlement.count_receipt(session, "DSER", "b1", items("Z", 8), 5, default_catalog())
    assert failures and outcome.counted and outcome.totals.received_units == 8 and outcome.totals.settlement == "released"
    assert count_rows(database_url, ReturnedItem, "DSER") == 8 and count_rows(database_url, Settlement, "DSER") == 1
