"""Replay the recorded histories (tests/histories, `make histories`) against today's workflow code.

A change that would break running deals (another activity, timer or child, in another order)
fails here. An intended change is made safe with workflow.patched, then histories re-recorded.
"""

from temporalio import workflow

# The sandbox re-imports this module for the altered workflows below: the project's modules
# must pass through, as workflows/deal.py does, so model classes are the same objects.
with workflow.unsafe.imports_passed_through():
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
FILES = sorted(HISTORIES.glob("v*/*.json"))


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
        assert history.events[-1].event_type in endings, path.name
    activities = set().union(*(activity_types(h) for h in histories))
    # Mail and closing are activities of their own; store writes run as local activities: markers.
    assert {"send_reminder", "notify_settlement", "escalate_pickup", "close_deal"} <= activities
    for path, history in zip(FILES, histories):
        if not path.stem.startswith("partner"):
            assert any(e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED for e in history.events), path.name
    signals = {
        e.workflow_execution_signaled_event_attributes.signal_name
        for h in histories
        for e in h.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    }
    assert {"stop_tracking", "pickup_status"} <= signals


@pytest.mark.parametrize("path", FILES, ids=[f"{path.parent.name}/{path.stem}" for path in FILES])
async def test_history_replays_on_todays_code(path):
    result = await replayer().replay_workflow(load(path), raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name} no longer replays: {result.replay_failure!r}"


# --- the replay test must be able to fail -------------------------------------------------


@workflow.defn(name="TakebackDealWorkflow")
class DealWithAnExtraTimer(TakebackDealWorkflow):
    """Today's deal, plus a one-second pause before booking: a change that breaks running deals."""

    @workflow.run
    async def run(self, input: DealWorkflowInput) -> DealView:
        return await super().run(input)

    async def _book(self) -> None:
        await workflow.sleep(timedelta(seconds=1))
        await super()._book()


@workflow.defn(name="TakebackDealWorkflow")
class DealWithAnExtraActivity(TakebackDealWorkflow):
    """Today's deal, closing it twice in the store (one more activity)."""

    @workflow.run
    async def run(self, input: DealWorkflowInput) -> DealView:
        return await super().run(input)

    async def _close_v1(self, status, reason) -> None:
        await super()._close_v1(status, reason)
        await workflow.execute_activity("close_deal", self.view(), start_to_close_timeout=timedelta(seconds=10))

    async def _close(self) -> None:
        await super()._close()
        await workflow.execute_activity("close_deal", self.view(), start_to_close_timeout=timedelta(seconds=10))


@workflow.defn(name="TakebackDealWorkflow")
class DealUnchanged(TakebackDealWorkflow):
    """The control: registered the same way as the altered ones, without a change."""

    @workflow.run
    async def run(self, input: DealWorkflowInput) -> DealView:
        return await super().run(input)


async def test_the_unchanged_subclass_replays():
    """So the failures below come from the alterations, not from how they are registered."""
    for name in ("deal_rebate_released", "deal_shortfall_forfeited", "deal_cancelled"):
        await replayer(DealUnchanged, PickupWorkflow).replay_workflow(load(HISTORIES / "v1" / f"{name}.json"))


@pytest.mark.parametrize("altered", [DealWithAnExtraTimer, DealWithAnExtraActivity], ids=["extra-timer", "extra-activity"])
async def test_an_altered_deal_workflow_fails_replay(altered):
    history = load(HISTORIES / "v1" / "deal_rebate_released.json")
    with pytest.raises(NondeterminismError):
        await replayer(altered, PickupWorkflow).replay_workflow(history)
