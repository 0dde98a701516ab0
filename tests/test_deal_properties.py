"""Property: whatever a deal's callers send at once, and whenever its deadline passes, the deal
answers each call OK or refuses it as not open (409) and nothing else, and what it answered is
what happened: every receipt answered OK is counted and a refused one burns no serial, every
extension answered OK moved the deadline, the money is the one outcome its ending calls for with
the amount the rules compute, the partner hears of it once, and the store, the workflow and the
certificate tell the same story.

Hypothesis chooses a lifecycle: groups of steps, each group sent to one deal at once (receipts,
reposted receipts, extensions, pickups, cancels), with a time jump after each group (days, past
the deadline, or to an hour or a day short of it). Receipts filling the deal race its closing;
calls after a jump past the deadline race the decision.

One time-skipping server and one worker (sandboxed, as every worker of the suite) serve all the
examples of a test: each example books a deal of its own with serials of its own, and closes it
(or terminates it, when the example failed) before the next one starts, so no deal of an earlier
example holds the shared clock. Hypothesis runs in a thread; each example is a coroutine run on
the test's event loop, where the server's client and the worker live. A failure prints the whole
lifecycle and every answer; the first failures of a run are printed again at its end.
"""

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, Phase, given, settings as hypothesis_settings, strategies as st
from sqlalchemy import select
from temporalio.api.enums.v1 import EventType
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Replayer

from domain import rules
from domain.models import DealStatus, IncentiveMode, IncentiveStatus, ReceiptItem
from service import deals
from store import deals as store
from store.db import session_scope
from store.tables import DealExtension, EmailMessage, ReturnedItem, Settlement
from tests.conftest import booking, make_settings, running_worker, time_skipping_server
from tests.deal_helpers import PICKUP, ledger_amounts
from tests.sendgrid_standin import SendGridStandIn
from workflows.deal import TakebackDealWorkflow
from workflows.pickup import PickupWorkflow

REPLAYER = Replayer(workflows=[TakebackDealWorkflow, PickupWorkflow], data_converter=pydantic_data_converter)

PARTNER_EMAIL = "partner@example.com"  # running_worker's partner P1
STEP_TIMEOUT = 20  # seconds of wall time for a group, a jump or the result: a hang is a failure that says where
EXAMPLE_TIMEOUT = 300

# --- lifecycles ---------------------------------------------------------------------------------

# A receipt: `fresh` new serials, plus `repeats` serials some earlier receipt of this deal sent
# (rejected if that one counted them, accepted if it was refused).
receipt = st.builds(lambda fresh, repeats, pick, condition, age: ("receipt", fresh, repeats, pick, condition, age),
                    st.integers(1, 6), st.integers(0, 2), st.integers(0, 1000), st.sampled_from(["working", "damaged", "dead"]), st.integers(0, 9))
repost = st.builds(lambda pick: ("repost", pick), st.integers(0, 1000))  # the same items posted again: a caller's retry
extend = st.builds(lambda days: ("extend", days), st.integers(1, 120))
pickup = st.just(("pickup",))
cancel = st.just(("cancel",))
step = st.one_of(receipt, receipt, receipt, extend, extend, pickup, repost, cancel)
# After a group: days skipped (often none, sometimes up to the deadline and past it), or a landing
# an hour or a day short of the deadline. Never closer: an update that meets a timer firing on the
# time-skipping server is refused by it ("invalid history builder state for action"), which wedges
# the deal and stops the shared clock; never beside a group's calls, which loses updates likewise.
jump = st.one_of(
    st.sampled_from([0, 0, 0, 1, 7, 60, 180, 300, 364, 366, 500]),
    st.builds(lambda hours: ("short of the deadline by hours", hours), st.sampled_from([1, 24])),
)


@dataclass
class Lifecycle:
    mode: str
    committed: int
    rate: Decimal
    value: Decimal
    groups: list  # [(steps sent at once, the jump after them)]


lifecycles = st.builds(
    Lifecycle,
    mode=st.sampled_from(["rebate", "upfront"]),
    committed=st.integers(1, 12),
    rate=st.integers(1, 700).map(lambda n: Decimal(n).scaleb(-4)),  # 0.0001 .. 0.0700
    value=st.integers(0, 10**9).map(lambda n: Decimal(n).scaleb(-2)),  # 0.00 .. 10,000,000.00
    groups=st.lists(st.tuples(st.lists(step, min_size=1, max_size=4), jump), min_size=1, max_size=5),
)


# --- running one lifecycle ----------------------------------------------------------------------


@dataclass
class Answer:
    step: tuple
    outcome: str  # "ok" | "refused" (service.deals.DealNotOpen)
    value: object = None
    items: list = field(default_factory=list)  # a receipt's items
    batch_id: str | None = None
    at: datetime | None = None  # a refused pickup: the deal's clock when it was asked (its ready_on), ...
    after: datetime | None = None  # ... when it was refused (a time jump may have raced it), ...
    deadline_then: datetime | None = None  # ... and the deadline as the earlier groups had left it


@dataclass
class World:
    env: object
    settings: object
    standin: SendGridStandIn
    durations: list = field(default_factory=list)
    outcomes: list = field(default_factory=list)
    unavailable: list = field(default_factory=list)  # calls retried after a 503-like error
    failures: list = field(default_factory=list)  # each failed example, in order


def receipt_items(tag: str, position: int, step: tuple, earlier: list[list[ReceiptItem]]) -> list[ReceiptItem]:
    _, fresh, repeats, pick, condition, age = step
    made = [ReceiptItem(product_id="C9300-48P", serial_number=f"{tag}-{position}-{i}", condition=condition, age_years=age) for i in range(fresh)]
    pool = [item for batch in earlier for item in batch]
    for n in range(min(repeats, len(pool))):
        made.append(pool[(pick + n) % len(pool)])
    return made


# A pickup is checked against the deal as its workflow shows it (ready between today and the
# deadline, units outstanding) before the deal takes it: a deal that reached its end (every unit
# back, its deadline passed) before its workflow acted on it refuses a pickup that way (a 422).
PickupRefused = deals.PickupRefused
# What the API answers 503 for and a caller retries: a read of the deal (a query) cut off by its
# deadline. A query racing the deal's completion can wait that long, on the dev server as here.
UNAVAILABLE = (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED)


async def retried(world: World, what: str, attempt):
    for n in range(3):
        try:
            return await attempt()
        except RPCError as error:
            if error.status not in UNAVAILABLE or n == 2:
                raise
            world.unavailable.append(f"{what}: {error}")


async def call(world: World, deal_id: str, step: tuple, items: list[ReceiptItem] | None, deadline_then) -> Answer:
    env, settings = world.env, world.settings
    at = await env.get_current_time()
    try:
        if step[0] in ("receipt", "repost"):
            answer = await deals.record_receipt(env.client, settings, deal_id, items)
            return Answer(step, "ok", answer, items, deals.receipt_batch_id(deal_id, items))
        if step[0] == "extend":
            return Answer(step, "ok", await deals.extend_deal(env.client, deal_id, f"{step[1]}d", f"property +{step[1]}d"))
        if step[0] == "pickup":
            request = type(PICKUP).model_validate({**PICKUP.model_dump(), "expected_units": 1, "ready_on": at.astimezone(timezone.utc).date().isoformat()})  # ready today
            return Answer(step, "ok", await retried(world, "pickup", lambda: deals.request_pickup(env.client, deal_id, request)))
        if step[0] == "cancel":
            return Answer(step, "ok", await deals.cancel_deal(env.client, deal_id, "property test"))
    except deals.DealNotOpen as refusal:  # the one refusal a caller may get ...
        return Answer(step, "refused", str(refusal), items or [], deals.receipt_batch_id(deal_id, items) if items else None)
    except PickupRefused as refusal:  # ... but for a pickup on a deal at its end, checked in `check`
        return Answer(step, "refused-pickup", str(refusal), at=at, after=await env.get_current_time(), deadline_then=deadline_then)
    raise AssertionError(f"unknown step {step}")


class Stuck(BaseException):
    """A call, jump or result that never came. The deal holds the shared server's clock (a workflow
    task it cannot complete stops the time skipping), so the examples after it would only fail
    too: not an Exception, so that Hypothesis stops at once instead of shrinking on a stopped clock."""


async def within(seconds: float, what: str, handle, *awaitables) -> list:
    """The awaitables' results (or exceptions), or a failure that says which of them did not come
    and what the deal was doing."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    if not tasks:
        return []
    _, pending = await asyncio.wait(tasks, timeout=seconds)
    if not pending:
        return [task.exception() or task.result() for task in tasks]
    for task in pending:
        task.cancel()
    what = f"{what} (still waiting for {[n for n, task in enumerate(tasks) if task in pending]})" if len(tasks) > 1 else what
    try:
        description = await handle.describe(rpc_timeout=timedelta(seconds=5))
        doing = f"{description.status!r}, pending activities {[(a.activity_type.name, a.attempt, a.last_failure.message if a.HasField('last_failure') else '') for a in description.raw_description.pending_activities]}"
        history = await asyncio.wait_for(handle.fetch_history(), 5)
        failed = [e.workflow_task_failed_event_attributes.failure.message for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]
        if failed:
            doing += f", {len(failed)} workflow tasks failed, the last with: {failed[-1][:300]}"
    except Exception as error:
        doing = f"not described: {error!r}"
    raise Stuck(f"{what} took more than {seconds} s; deal {handle.id}: {doing}")


async def within_one(seconds: float, what: str, handle, awaitable):
    [result] = await within(seconds, what, handle, awaitable)
    if isinstance(result, BaseException):
        raise result
    return result


async def play(world: World, life: Lifecycle) -> None:
    env, settings = world.env, world.settings
    started = time.monotonic()
    booked = await deals.book_deal(
        env.client,
        settings.model_copy(update={"incentive_mode": IncentiveMode(life.mode)}),
        booking(life.committed, rate=str(life.rate), value=str(life.value)),
    )
    deal_id, tag = booked.id, uuid.uuid4().hex[:10]
    handle = deals.deal_handle(env.client, deal_id)
    answers: list[Answer] = []
    sent: list[list[ReceiptItem]] = []  # the items of every receipt sent so far, in order
    try:
        position = 0
        for steps, jump in life.groups:
            deadline_then = booked.return_deadline + timedelta(days=extended(answers))
            calls = []
            for step in steps:
                items = None
                if step[0] == "receipt":
                    items = receipt_items(tag, position, step, sent)
                elif step[0] == "repost":
                    if not sent:
                        continue  # nothing to post again yet
                    items = sent[step[1] % len(sent)]
                if items is not None:
                    sent.append(items)
                calls.append((step, call(world, deal_id, step, items, deadline_then)))
                position += 1
            results = await within(STEP_TIMEOUT, f"group {[step for step, _ in calls]}", handle, *(c for _, c in calls))
            for (step, _), result in zip(calls, results):
                if isinstance(result, BaseException):  # anything but a refusal fails the property
                    raise AssertionError(f"{step} of deal {deal_id} raised {result!r}; {life!r}; answers so far: {trace(answers)}") from result
                answers.append(result)
            if isinstance(jump, tuple):  # to short of the deadline as the answers so far set it
                short_of = booked.return_deadline + timedelta(days=extended(answers)) - timedelta(hours=jump[1])
                left = short_of - await env.get_current_time()
                if left > timedelta(0):
                    await within_one(STEP_TIMEOUT, f"a jump to {jump[1]} h before the deadline", handle, env.sleep(left))
            elif jump:
                await within_one(STEP_TIMEOUT, f"a jump of {jump} days", handle, env.sleep(timedelta(days=jump)))

        # Close the deal: past its deadline if nothing closed it. The result waits for its mail.
        current = await retried(world, "get_deal", lambda: deals.get_deal(env.client, settings, deal_id))
        if current.status in (DealStatus.awaiting_returns, DealStatus.condition_met):
            left = current.return_deadline - await env.get_current_time()
            if left > timedelta(0):
                await within_one(STEP_TIMEOUT, "the jump to the deadline", handle, env.sleep(left + timedelta(seconds=1)))
        final = await within_one(STEP_TIMEOUT, "the deal's result", handle, handle.result())
        check(world, life, booked, final, answers, await deals.get_deal(env.client, settings, deal_id))
        # A deal that leaves its worker's cache (a restart, an eviction) replays its history.
        replayed = await REPLAYER.replay_workflow(await handle.fetch_history(), raise_on_replay_failure=False)
        assert replayed.replay_failure is None, f"the history of deal {deal_id} does not replay: {replayed.replay_failure}; {life!r}; answers: {trace(answers)}"
    except BaseException as error:
        try:  # a failed example must not leave its deal holding the shared clock
            await handle.terminate("property example failed")
        except Exception:
            pass
        failure = error
        if isinstance(error, (AssertionError, Stuck)) and repr(life) not in str(error):
            failure = type(error)(f"{error}; {life!r}; answers: {trace(answers)}")
            failure.__cause__ = error
        # Printed again at the end of the run, in order: the first failure is the one to read.
        world.failures.append(f"{type(failure).__name__}: {failure}")
        if failure is error:
            raise
        raise failure
    world.durations.append(time.monotonic() - started)
    world.outcomes.append((life.mode, final.status.value))


def extended(answers: list[Answer]) -> int:
    """Days of the extensions answered OK."""
    return sum(a.step[1] for a in answers if a.step[0] == "extend" and a.outcome == "ok")


def trace(answers: list[Answer]) -> str:
    return "; ".join(f"{a.step[0]}{a.step[1:] if len(a.step) > 1 else ''}:{a.outcome}" + (f"(accepted {a.value['accepted']})" if a.outcome == "ok" and isinstance(a.value, dict) else "") for a in answers)


# --- the invariants -----------------------------------------------------------------------------

SETTLEMENT_SUBJECT = {"released": "released", "forfeited": "forfeited", "clawed_back": "clawed back"}


def differences(one, other) -> dict:
    """The fields in which two views differ: {field: (one's, other's)}."""
    a, b = one.model_dump(mode="json"), other.model_dump(mode="json")
    return {key: (a.get(key), b.get(key)) for key in a.keys() | b.keys() if a.get(key) != b.get(key)}


def expected_money(mode: str, status: DealStatus, amount: Decimal) -> tuple[IncentiveStatus, dict, str]:
    """(the incentive's final status, the ledger rows, the settlement row) an ending calls for."""
    zero = Decimal("0.00")
    if mode == "rebate":
        return {
            DealStatus.closed: (IncentiveStatus.released, {"released": amount}, "released"),
            DealStatus.expired: (IncentiveStatus.forfeited, {"forfeited": amount}, "forfeited"),
            DealStatus.cancelled: (IncentiveStatus.cancelled, {"cancelled": zero}, "cancelled"),
        }[status]
    return {  # upfront: the discount was applied at booking
        DealStatus.closed: (IncentiveStatus.applied, {"applied": amount}, "applied"),
        DealStatus.expired: (IncentiveStatus.clawed_back, {"applied": amount, "clawed_back": amount}, "clawed_back"),
        DealStatus.cancelled: (IncentiveStatus.cancelled, {"applied": amount, "cancelled": amount}, "cancelled"),
    }[status]


def check(world: World, life: Lifecycle, booked, final, answers: list[Answer], stored) -> None:
    settings, deal_id = world.settings, booked.id
    why = f"{life!r}: deal {deal_id} ended {final.status.value}, {final.received_units}/{final.required_units} received; answers: {trace(answers)}"
    ok = [a for a in answers if a.outcome == "ok"]

    # The terms and the amount, as domain.rules computes them.
    amount = rules.incentive_amount(life.value, life.rate)
    assert final.incentive.amount == amount and final.incentive.rate == life.rate and final.incentive.mode == IncentiveMode(life.mode), why
    assert final.committed_units == life.committed and final.required_units == rules.required_units(life.committed, settings.return_threshold), why
    assert final.status in (DealStatus.closed, DealStatus.expired, DealStatus.cancelled), why

    # The ending follows from what was answered, and its money is exactly one outcome with that amount.
    cancels_ok = [a for a in ok if a.step[0] == "cancel"]
    assert (final.status == DealStatus.cancelled) == bool(cancels_ok), why  # a cancel answered OK cancelled it, and only that
    if final.status == DealStatus.closed:
        assert final.received_units >= final.required_units, why
    if final.status == DealStatus.expired:
        assert final.received_units < final.required_units, why
    incentive_status, rows, settlement = expected_money(life.mode, final.status, amount)
    assert final.incentive.status == incentive_status, why
    assert ledger_amounts(settings, deal_id) == rows, why
    with session_scope(settings.effective_database_url) as session:
        decided = session.get(Settlement, deal_id)
        decided = decided and (decided.outcome, decided.amount)
    assert decided == (settlement, rows[settlement]), f"settlement row {decided}; {why}"

    # Receipts: every batch answered OK is counted, once however often it was posted; a refused one burnt nothing.
    by_batch: dict[str, list[Answer]] = {}
    for a in answers:
        if a.batch_id is not None:
            by_batch.setdefault(a.batch_id, []).append(a)
    counted, refused = {}, {}
    for batch_id, posts in by_batch.items():
        outcomes = {a.outcome for a in posts}
        assert len(outcomes) == 1, f"batch {batch_id} was answered both OK and refused; {why}"
        if outcomes == {"ok"}:
            first = posts[0].value
            assert all(a.value == first for a in posts), f"posts of batch {batch_id} answered differently; {why}"
            assert first["accepted"] + len(first["rejected"]) == len(posts[0].items), why
            counted[batch_id] = first
        else:
            refused[batch_id] = posts[0].items
    assert sum(answer["accepted"] for answer in counted.values()) == final.received_units, why
    assert sum(len(answer["rejected"]) for answer in counted.values()) == final.rejected_units, why
    assert final.dispositions.refresh + final.dispositions.recycle + final.dispositions.other == final.received_units, why
    accepted_serials = {item["serial_number"] for answer in counted.values() for item in answer["items"]}
    assert len(accepted_serials) == final.received_units, why
    refused_serials = {item.serial_number for items in refused.values() for item in items} - accepted_serials
    with session_scope(settings.effective_database_url) as session:
        returned = dict(session.execute(select(ReturnedItem.serial, ReturnedItem.batch_id).where(ReturnedItem.deal_id == deal_id)).all())
        burnt = set(session.execute(select(ReturnedItem.serial).where(ReturnedItem.serial.in_(refused_serials))).scalars()) if refused_serials else set()
        extension_rows = session.execute(select(DealExtension.extend_by_seconds).where(DealExtension.deal_id == deal_id)).scalars().all()
        certificate = store.get_certificate(session, deal_id)
    assert set(returned) == accepted_serials and set(returned.values()) <= set(counted), why
    assert not burnt, f"refused receipts burnt {sorted(burnt)}; {why}"

    # Every extension answered OK moved the deadline by its amount, and nothing else moved it.
    extended = [a.step[1] for a in ok if a.step[0] == "extend"]
    assert final.return_deadline == booked.return_deadline + timedelta(days=sum(extended)), why
    assert len(final.extensions) == len(extended) and sorted(extension_rows) == sorted(d * 86400.0 for d in extended), why

    # Pickups answered OK are the deal's pickups; one refused by the pickup rules came at the deal's end.
    for a in answers:
        if a.outcome == "refused-pickup":
            if "still awaits" in a.value:
                assert final.received_units >= life.committed, f"{a.value}; {why}"
            else:
                # ready today: it was no longer today (a jump raced it) or the deal was past its deadline
                day_passed = (a.after.astimezone(timezone.utc) - timedelta(hours=12)).date() > a.at.astimezone(timezone.utc).date()
                assert "is outside" in a.value and (day_passed or a.at > a.deadline_then), f"{a.value} asked at {a.at}, refused by {a.after}; {why}"
    booked_pickups = sorted(a.value.id for a in ok if a.step[0] == "pickup")
    assert sorted(p.id for p in final.pickups) == booked_pickups, why

    # Mail at the provider (which knows each message by our key): nothing twice, every message the
    # store shows sent delivered once, and the settlement notice once, to the partner, with the amount.
    assert world.standin.delivered_twice() == [], why
    with world.standin.lock:
        delivered = {(to, subject, key): n for (to, subject, key), n in world.standin.delivered.items() if key.startswith(f"{deal_id}:")}
    with session_scope(settings.effective_database_url) as session:
        messages = session.execute(select(EmailMessage.to, EmailMessage.subject, EmailMessage.key, EmailMessage.state).where(EmailMessage.deal_id == deal_id)).all()
    assert {m.state for m in messages} <= {"sent"}, f"mail {messages}; {why}"
    assert delivered == {(m.to, m.subject, m.key): 1 for m in messages}, f"delivered {delivered} != sent {messages}; {why}"
    notices = {(to, subject): n for (to, subject, key), n in delivered.items() if key.startswith(f"{deal_id}:settlement:")}
    expected = {} if settlement in ("cancelled", "applied") else {(PARTNER_EMAIL, f"Takeback deal {deal_id}: incentive {SETTLEMENT_SUBJECT[settlement]} ({amount})"): 1}
    assert notices == expected, f"notices {notices}; {why}"

    # The store's view (a closed deal is read from it), the workflow's and the certificate agree.
    assert stored == final, f"the store's view differs from the workflow's in {differences(stored, final)}; {why}"
    assert certificate is not None, why
    content = json.loads(certificate.content_json)
    assert content["units_received"] == final.received_units and content["status"] == final.status.value, why
    assert {item["serial_number"] for item in content["items"]} == accepted_serials, why


# --- the tests ----------------------------------------------------------------------------------

async def run_property(tmp_path, max_examples: int, phases=tuple(Phase)) -> World:
    standin = SendGridStandIn()
    settings = make_settings(tmp_path, sendgrid_api_key="SG.test", sendgrid_host=standin.url)
    try:
        async with time_skipping_server() as env, running_worker(env.client, settings):
            world = World(env, settings, standin)
            loop = asyncio.get_running_loop()

            @hypothesis_settings(max_examples=max_examples, deadline=None, phases=phases, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
            @given(life=lifecycles)
            def deal_lifecycle(life: Lifecycle) -> None:
                asyncio.run_coroutine_threadsafe(asyncio.wait_for(play(world, life), EXAMPLE_TIMEOUT), loop).result()

            try:
                await asyncio.to_thread(deal_lifecycle)
            except BaseException as error:
                if isinstance(error, Stuck):
                    pytest.fail(f"stopped (the server's clock no longer moves): {error}", pytrace=False)
                raise
            finally:
                total = sum(world.durations)
                print(f"\n{len(world.durations)} lifecycles passed in {total:.1f} s (max {max(world.durations, default=0):.1f} s); "
                      f"endings: {sorted(set(world.outcomes))}; retried after a 503-like error: {world.unavailable}")
                for n, failure in enumerate(world.failures[:5], 1):
                    print(f"failure {n} of {len(world.failures)}: {failure}")
    finally:
        standin.close()
    return world


async def test_concurrent_lifecycles_answer_what_happened_and_settle_once(tmp_path):
    # An example costs 0.1-0.3 s on one shared server: about 30 s in all on two cores. No shrinking
    # here: the failures are races, which seldom shrink, and the failing lifecycle is printed whole.
    world = await run_property(tmp_path, max_examples=150, phases=(Phase.explicit, Phase.reuse, Phase.generate))
    assert world.durations


@pytest.mark.slow
async def test_concurrent_lifecycles_full_size(tmp_path):
    world = await run_property(tmp_path, max_examples=1500)
    assert world.durations
