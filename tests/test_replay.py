"""Replay the recorded histories (tests/histories, `make histories`) against today's workflow code.

A change that would break running deals (another activity, timer or child, in another order)
fails here. From release 1.0 a version's histories are recorded once and only ever added to
(`make histories VERSION=1.1`): a new worker version takes deals over at their continue-as-new
(Worker Versioning), and a fix that must reach running deals at once goes behind workflow.patched.
"""

from temporalio import workflow

# The sandbox re-imports this module for the altered workflows below: the project's modules
# must pass through, as workflows/deal.py does, so model classes are the same objects.
with workflow.unsafe.imports_passed_through():
    import asyncio
    import json
    from datetime import timedelta
    from pathlib import Path

    import pytest
    from temporalio.api.enums.v1 import EventType
    from temporalio.client import WorkflowHistory
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.worker import Replayer
    from temporalio.workflow import NondeterminismError

    from domain.models import DealView
    from workflows.deal import DealWorkflowInput, TakebackDealWorkflow
    from workflows.pickup import PickupWorkflow
    from workflows.specialization import PartnerSpecializationWorkflow

HISTORIES = Path(__file__).with_name("histories")
# One folder per released workflow version, each kept as recorded: deals of every version may still run.
FILES = sorted(HISTORIES.glob("*/*.json"))


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


def replayer(*workflows) -> Replayer:
    return Replayer(workflows=list(workflows) or [TakebackDealWorkflow, PickupWorkflow, PartnerSpecializationWorkflow], data_converter=pydantic_data_converter)


def activity_types(history: WorkflowHistory) -> set[str]:
    return {
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    }


def test_the_recorded_histories_cover_both_workflows_and_every_ending():
    """Guards against replaying nothing: the set must exist and exercise the paths that matter."""
    histories = [load(path) for path in FILES]
    types = {json.loads(path.read_text())["events"][0]["workflowExecutionStartedEventAttributes"]["workflowType"]["name"] for path in FILES}
    assert types == {"TakebackDealWorkflow", "PickupWorkflow", "PartnerSpecializationWorkflow"}
    endings = {EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW}
    for path, history in zip(FILES, histories):
        if path.stem.startswith("open_"):  # a deal still running when recorded, as deals are at a deploy
            assert history.events[-1].event_type not in endings, path.name
        else:
            assert history.events[-1].event_type in endings, path.name
    activities = set().union(*(activity_types(h) for h in histories))
    # Mail, the carrier, the decision with its close, and the read model are activities of their own.
    assert {"send_reminder", "notify_settlement", "book_pickup", "decide_and_close", "project_deal", "record_extension"} <= activities
    signals = {
        e.workflow_execution_signaled_event_attributes.signal_name
        for h in histories
        for e in h.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    }
    assert {"stop_tracking", "pickup_status", "receipts_counted"} <= signals


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def test_every_release_keeps_its_histories_and_1_0_covers_every_path():
    """Each release from 1.0 has its folder (the pre-1.0 generations went with the release, the only
    histories ever removed); 1.0 holds every path a deal or a partner's year takes, and the shapes a
    deploy meets: open deals, continue-as-new with messages pending, two updates in one task."""
    versions = sorted({path.parent.name for path in FILES}, key=version_key)
    assert versions[0] == "1.0"
    first = {path.stem for path in FILES if path.parent.name == "1.0"}
    assert {
        "deal_rebate_released", "deal_shortfall_forfeited", "deal_upfront_clawed_back", "deal_cancelled", "deal_all_returned_early",
        "deal_pickup_refused_for_good", "open_deal_awaiting_returns", "deal_continued_as_new_first_run", "deal_continued_as_new_second_run",
        "deal_continued_as_new_pending_first_run", "deal_continued_as_new_pending_second_run", "deal_concurrent_updates",
        "deal_cancel_racing_release", "deal_mail_rejected", "deal_mail_outage", "partner_certified_year_rolled_over",
        "partner_reminded_lapsed_reinstated", "pickup_simulated_then_stopped",
    } <= first
    for name in ("deal_continued_as_new_first_run", "deal_continued_as_new_pending_first_run"):
        assert load(HISTORIES / "1.0" / f"{name}.json").events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    def two_in_one_task(history) -> bool:
        accepted = [i for i, e in enumerate(history.events) if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED]
        return any(not any(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED for e in history.events[a:b]) for a, b in zip(accepted, accepted[1:]))

    # The deal continues as new while it waits: its updates are in one of its runs.
    assert any(two_in_one_task(load(path)) for path in (HISTORIES / "1.0").glob("deal_concurrent_updates*.json")), "two updates accepted in one workflow task"
    # One path: no patch markers in any 1.0 history, and no local activities but the simulated carrier's.
    for path in FILES:
        markers = {e.marker_recorded_event_attributes.marker_name for e in load(path).events if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED}
        assert markers <= ({"core_local_activity"} if path.stem.startswith("pickup") else set()), f"{path.name}: {markers}"


@pytest.mark.parametrize("path", FILES, ids=[f"{path.parent.name}/{path.stem}" for path in FILES])
async def test_history_replays_on_todays_code(path):
    result = await replayer().replay_workflow(load(path), raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name} no longer replays: {result.replay_failure!r}"


# What each money history decided (booking(10) or booking(4): 5% of 100,000.00), as the scenarios
# in tests/record_histories.py drive them: replay checks commands, this checks the values.
DECIDED = {
    "deal_rebate_released": ("closed", "released", "5000.00", 9),
    "deal_shortfall_forfeited": ("expired", "forfeited", "5000.00", 3),
    "deal_upfront_clawed_back": ("expired", "clawed_back", "5000.00", 2),
    "deal_cancelled": ("cancelled", "cancelled", "5000.00", 0),
    "deal_all_returned_early": ("closed", "released", "5000.00", 4),
    "deal_continued_as_new_second_run": ("closed", "released", "5000.00", 10),
    "deal_continued_as_new_pending_second_run": ("closed", "released", "5000.00", 10),
    "deal_pickup_refused_for_good": ("closed", "released", "5000.00", 10),
    "deal_concurrent_updates": ("closed", "released", "5000.00", 8),
    "deal_cancel_racing_release": ("closed", "released", "5000.00", 8),
    "deal_mail_rejected": ("expired", "forfeited", "5000.00", 0),
    "deal_mail_outage": ("expired", "forfeited", "5000.00", 0),
}
MONEY_FILES = [path for path in FILES if path.stem in DECIDED]


def decisions(history: WorkflowHistory) -> list[dict]:
    """What the store answered each decide_and_close of the history (DealTotals)."""
    found, scheduled = [], {}
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            completed = event.activity_task_completed_event_attributes
            if scheduled.get(completed.scheduled_event_id) == "decide_and_close":
                found.append(json.loads(completed.result.payloads[0].data))
    return found


@pytest.mark.parametrize("path", MONEY_FILES, ids=[f"{path.parent.name}/{path.stem}" for path in MONEY_FILES])
async def test_each_money_history_decided_what_its_scenario_expects(path):
    history = load(path)
    completed = history.events[-1].workflow_execution_completed_event_attributes.result
    (view,) = await pydantic_data_converter.decode(completed.payloads, [DealView])
    status, incentive, amount, received = DECIDED[path.stem]
    assert (view.status.value, view.incentive.status.value, str(view.incentive.amount), view.received_units) == (status, incentive, amount, received)
    *refused, decided = decisions(history)  # the store's answers, the last one closing the deal: the deal adopted it
    assert (decided["settlement"], decided["received_units"], decided["closed"]) == (incentive, received, True)
    assert all(not r["closed"] and r["settlement"] == incentive for r in refused)  # a cancel the store refused (the rebate released)


# --- the replay test must be able to fail -------------------------------------------------


@workflow.defn(name="TakebackDealWorkflow")
class DealWithAnExtraTimer(TakebackDealWorkflow):
    """Today's deal, plus a one-second timer with each pickup: a change that breaks running deals."""

    @workflow.run
    async def run(self, input: DealWorkflowInput) -> DealView:
        return await super().run(input)

    def _book_pickup(self, pickup_id, request) -> None:
        self.pending_pause = asyncio.ensure_future(workflow.sleep(timedelta(seconds=1)))  # a timer more with each carrier booking
        super()._book_pickup(pickup_id, request)


@workflow.defn(name="TakebackDealWorkflow")
class DealWithAnExtraActivity(TakebackDealWorkflow):
    """Today's deal, closing it twice in the store (one more activity)."""

    @workflow.run
    async def run(self, input: DealWorkflowInput) -> DealView:
        return await super().run(input)

    async def _decide(self, kind: str) -> bool:
        closed = await super()._decide(kind)
        await workflow.execute_activity("close_deal", self.view(), start_to_close_timeout=timedelta(seconds=10))
        return closed


@workflow.defn(name="TakebackDealWorkflow")
class DealUnchanged(TakebackDealWorkflow):
    """The control: registered the same way as the altered ones, without a change."""

    @workflow.run
    async def run(self, input: DealWorkflowInput) -> DealView:
        return await super().run(input)


async def test_the_unchanged_subclass_replays():
    """So the failures below come from the alterations, not from how they are registered."""
    for name in ("deal_rebate_released", "deal_shortfall_forfeited", "deal_cancelled"):
        await replayer(DealUnchanged, PickupWorkflow).replay_workflow(load(HISTORIES / "1.0" / f"{name}.json"))


@pytest.mark.parametrize("version", ["1.0"])
@pytest.mark.parametrize("altered", [DealWithAnExtraTimer, DealWithAnExtraActivity], ids=["extra-timer", "extra-activity"])
async def test_an_altered_deal_workflow_fails_replay(altered, version):
    history = load(HISTORIES / version / "deal_rebate_released.json")
    with pytest.raises(NondeterminismError):
        await replayer(altered, PickupWorkflow).replay_workflow(history)


def test_the_replay_command_passes_over_every_kept_generation():
    """`takeback replay --histories` is what a deploy pipeline runs; here over the recorded corpus."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "cli", "replay", "--histories", str(HISTORIES)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"replayed {len(FILES)} histories: 0 failed" in done.stdout


async def test_the_replay_command_finds_a_change_that_breaks_an_open_deal_on_a_live_server(dev_server_env, tmp_path, monkeypatch):
    from service import deals, replay
    from tests.conftest import booking, make_settings, running_worker

    settings = make_settings(tmp_path)
    async with running_worker(dev_server_env.client, settings):
        view = await deals.book_deal(dev_server_env.client, settings, booking(10))
        await deals.request_pickup(dev_server_env.client, view.id, __import__("tests.deal_helpers", fromlist=["PICKUP"]).PICKUP)
    query = f"WorkflowId = 'deal-{view.id}'"
    today = await replay.replay_server(dev_server_env.client, query)
    assert today.replayed == 1 and today.ok  # the open deal replays on today's code
    monkeypatch.setattr(replay, "WORKFLOWS", [DealWithAnExtraTimer, PickupWorkflow, PartnerSpecializationWorkflow])
    altered = await replay.replay_server(dev_server_env.client, query)
    assert altered.replayed == 1 and not altered.ok and "deal-" + view.id in altered.failures[0][0]


async def test_concurrent_updates_on_a_real_server_replay(dev_server_env, tmp_path):
    """Extends, receipts, pickups and cancels sent at once to one deal, three times: the history a real
    server keeps must replay, or a deal that leaves its worker's cache fails every task from then on.
    Store writes run as local activities made about 1 history in 13 fail here (their results reach the
    workflow in another order on replay); 30 deals find that with a chance above 9 in 10."""
    import asyncio

    from service import deals
    from tests.conftest import booking, make_settings, running_worker
    from tests.deal_helpers import PICKUP, items

    env = dev_server_env
    settings = make_settings(tmp_path)
    failures, accepted = [], 0
    async with running_worker(env.client, settings):
        for n in range(30):
            view = await deals.book_deal(env.client, settings, booking(4))
            await asyncio.gather(deals.extend_deal(env.client, view.id, "91s", "a"), deals.record_receipt(env.client, settings, view.id, items(f"CU{n}-", 1)), deals.request_pickup(env.client, view.id, PICKUP))
            await asyncio.gather(deals.extend_deal(env.client, view.id, "82s", "b"), deals.request_pickup(env.client, view.id, PICKUP), deals.extend_deal(env.client, view.id, "76s", "c"))
            last = deals.cancel_deal(env.client, view.id, "ended") if n % 2 else deals.request_pickup(env.client, view.id, PICKUP)
            await asyncio.gather(deals.extend_deal(env.client, view.id, "8s", "d"), last, return_exceptions=True)  # a cancel may refuse the extend
            history = await deals.deal_handle(env.client, view.id).fetch_history()
            taken = (EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)  # the receipt is a signal
            accepted += sum(1 for e in history.events if e.event_type in taken)
            result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
            if result.replay_failure is not None:
                failures.append(f"deal {view.id}: {result.replay_failure}")
    assert accepted >= 30 * 7  # of 8 messages a deal, 7 at least were taken (a cancel may refuse the extend sent with it)
    assert not failures, f"{len(failures)} of 30 histories do not replay:\n" + "\n".join(failures)


async def test_concurrent_partner_updates_on_a_real_server_replay(dev_server_env, tmp_path):
    """Training, exams and the pledge sent at once (the last of them certifies while the others still
    write): the partner's history must replay, as the deal's must."""
    import asyncio
    import uuid

    from domain.specialization import ExamResult, TrainingRecord
    from service import partners
    from tests.conftest import make_settings, running_worker
    from workflows.ids import partner_workflow_id

    env = dev_server_env
    settings = make_settings(tmp_path)
    failures = []
    async with running_worker(env.client, settings):
        for n in range(20):
            partner_id = f"R-{uuid.uuid4().hex[:8]}"
            await partners.create_partner(env.client, settings, partner_id, "Replay Partner", "r@partner.example", "CA")
            trained = [partners.record_training(env.client, partner_id, TrainingRecord(person_email=f"t{k}@r.example", person_name="T", hours=2), request_id=f"t{k}") for k in range(3)]
            await asyncio.gather(*trained, partners.record_exam(env.client, partner_id, ExamResult(exam=1, passed=True)), partners.record_exam(env.client, partner_id, ExamResult(exam=2, passed=True)), partners.sign_pledge(env.client, partner_id))
            await asyncio.gather(partners.record_training(env.client, partner_id, TrainingRecord(person_email="late@r.example", person_name="L", hours=1), request_id="t9"), partners.sign_pledge(env.client, partner_id))
            view = await partners.specialization(env.client, settings, partner_id)
            assert view.status.value == "certified" and view.training_hours == 7
            history = await env.client.get_workflow_handle(partner_workflow_id(partner_id)).fetch_history()
            result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
            if result.replay_failure is not None:
                failures.append(f"partner {partner_id}: {result.replay_failure}")
    assert not failures, f"{len(failures)} of 20 histories do not replay:\n" + "\n".join(failures)
