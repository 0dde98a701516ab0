"""bench/deal_cost.py's count of Temporal Cloud billable Actions (https://docs.temporal.io/cloud/actions),
on small histories built by hand whose count is worked out from the definition, and over every
recorded 1.0 history."""

from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload, SearchAttributes, WorkflowExecution
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.history.v1 import (
    ActivityTaskScheduledEventAttributes,
    ActivityTaskStartedEventAttributes,
    History,
    HistoryEvent,
    MarkerRecordedEventAttributes,
    UpsertWorkflowSearchAttributesEventAttributes,
    WorkflowExecutionStartedEventAttributes,
    WorkflowTaskCompletedEventAttributes,
    WorkflowTaskFailedEventAttributes,
)

from bench.deal_cost import HISTORIES, LATEST, RECORDED_PATHS, count_actions, load_history


def history(*specs) -> History:
    """Events numbered from 1: each spec is (EventType suffix, attribute field name or None, attributes or None)."""
    events = []
    for n, (kind, field, attrs) in enumerate(specs, start=1):
        event = HistoryEvent(event_id=n, event_type=EventType.Value(f"EVENT_TYPE_{kind}"))
        if field:
            getattr(event, field).CopyFrom(attrs)
        events.append(event)
    return History(events=events)


def started(parent: bool = False):
    attrs = WorkflowExecutionStartedEventAttributes()
    if parent:
        attrs.parent_workflow_execution.CopyFrom(WorkflowExecution(workflow_id="deal-1", run_id="r"))
    return ("WORKFLOW_EXECUTION_STARTED", "workflow_execution_started_event_attributes", attrs)


def task(completed_id_metering: int = 0):
    """A workflow task: scheduled, started, completed (with that many local activity retries metered)."""
    completed = WorkflowTaskCompletedEventAttributes()
    completed.metering_metadata.nonfirst_local_activity_execution_attempts = completed_id_metering
    return [("WORKFLOW_TASK_SCHEDULED", None, None), ("WORKFLOW_TASK_STARTED", None, None),
            ("WORKFLOW_TASK_COMPLETED", "workflow_task_completed_event_attributes", completed)]


def marker(task_completed_id: int, name: str = "core_local_activity"):
    return ("MARKER_RECORDED", "marker_recorded_event_attributes", MarkerRecordedEventAttributes(marker_name=name, workflow_task_completed_event_id=task_completed_id))


def activity(attempt: int = 1):
    return [("ACTIVITY_TASK_SCHEDULED", "activity_task_scheduled_event_attributes", ActivityTaskScheduledEventAttributes()),
            ("ACTIVITY_TASK_STARTED", "activity_task_started_event_attributes", ActivityTaskStartedEventAttributes(attempt=attempt)),
            ("ACTIVITY_TASK_COMPLETED", None, None)]


def upsert(*names: str):
    return ("UPSERT_WORKFLOW_SEARCH_ATTRIBUTES", "upsert_workflow_search_attributes_event_attributes",
            UpsertWorkflowSearchAttributesEventAttributes(search_attributes=SearchAttributes(indexed_fields={n: Payload(data=b'"x"') for n in names})))


def test_a_deal_shaped_history_by_hand():
    # 1 started; 2-4 task (completed = 4); 5, 6 two patch markers of task 4; 7 their TemporalChangeVersion
    # upsert; 8 a timer; 9-11 an activity that ran 3 times; 12 an update accepted; 13-15 task (completed = 15);
    # 16 a local-activity marker of task 15, whose completion metered 2 local retries; 17 a DealStatus upsert;
    # 18 a signal; 19 timer fired; 20 completed.
    h = history(
        started(), *task(), marker(4, "core_patch"), marker(4, "core_patch"), upsert("TemporalChangeVersion"),
        ("TIMER_STARTED", None, None), *activity(attempt=3), ("WORKFLOW_EXECUTION_UPDATE_ACCEPTED", None, None),
        *task(completed_id_metering=2), marker(15), upsert("DealStatus", "TemporalChangeVersion"),
        ("WORKFLOW_EXECUTION_SIGNALED", None, None), ("TIMER_FIRED", None, None), ("WORKFLOW_EXECUTION_COMPLETED", None, None),
    )
    assert h.events[14].event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED  # event 15, as the markers say
    count = count_actions(h)
    # By the definition: start 1; markers: tasks 4 and 15 have markers, 1 each = 2; local retries 2;
    # TemporalChangeVersion-only upsert 0 (exempt), the DealStatus one 1; timer 1; activity scheduled 1 +
    # 2 retries; update 1; signal 1. 1 + 2 + 2 + 1 + 1 + 1 + 2 + 1 + 1 = 12.
    assert dict(count.actions) == {
        "start_workflow": 1, "record_activity_markers": 2, "retry_activity_local": 2, "upsert_workflow_search_attributes": 1,
        "start_timer": 1, "schedule_activity": 1, "retry_activity": 2, "accept_workflow_update": 1, "signal_workflow": 1,
    }
    assert count.total == 12
    assert dict(count.exempt) == {"upsert_change_version": 1}
    assert count.events == 20 and count.bytes == sum(e.ByteSize() for e in h.events)
    assert not count.unknown


def test_children_continue_as_new_signal_with_start_and_reset():
    # A parent that starts a child (2: the intent and the attempt) and signals it (0 here: counted where it lands).
    parent = history(started(), *task(), ("START_CHILD_WORKFLOW_EXECUTION_INITIATED", None, None), ("CHILD_WORKFLOW_EXECUTION_STARTED", None, None),
                     ("SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED", None, None), ("EXTERNAL_WORKFLOW_EXECUTION_SIGNALED", None, None),
                     ("WORKFLOW_EXECUTION_CONTINUED_AS_NEW", None, None))
    assert dict(count_actions(parent).actions) == {"start_workflow": 1, "start_child_workflow": 2}
    # The child: its start is the parent's; the signal it received is 1.
    child = history(started(parent=True), ("WORKFLOW_TASK_SCHEDULED", None, None), ("WORKFLOW_EXECUTION_SIGNALED", None, None))
    assert dict(count_actions(child).actions) == {"signal_workflow": 1}
    # Signal-With-Start: one Action for the start and its signal (the signal is event 2); a later signal is 1 more.
    with_start = history(started(), ("WORKFLOW_EXECUTION_SIGNALED", None, None), *task(), ("WORKFLOW_EXECUTION_SIGNALED", None, None))
    assert count_actions(with_start).total == 2
    # A reset's failed task is 1; a task that failed for another cause is 0.
    reset = WorkflowTaskFailedEventAttributes(cause=WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_WORKFLOW)
    other = WorkflowTaskFailedEventAttributes(cause=WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_NON_DETERMINISTIC_ERROR)
    failed = history(started(), ("WORKFLOW_TASK_FAILED", "workflow_task_failed_event_attributes", reset), ("WORKFLOW_TASK_FAILED", "workflow_task_failed_event_attributes", other))
    assert dict(count_actions(failed).actions) == {"start_workflow": 1, "reset_workflow": 1}


def test_unknown_event_types_are_reported_not_counted_free():
    h = history(started(), ("WORKFLOW_EXECUTION_PAUSED", None, None))
    count = count_actions(h)
    assert count.total == 1 and dict(count.unknown) == {"WORKFLOW_EXECUTION_PAUSED": 1}


def test_json_dicts_and_strings_count_as_the_protobuf_does():
    from google.protobuf import json_format

    h = history(started(), *task(), marker(4), *activity(attempt=2))
    as_dict = json_format.MessageToDict(h)
    assert count_actions(as_dict).actions == count_actions(h).actions == count_actions(json_format.MessageToJson(h)).actions
    assert count_actions(as_dict).total == 4  # start, markers of one task, activity, its retry


RECORDED = sorted((HISTORIES / LATEST).glob("*.json"))


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
def test_every_recorded_1_0_history_is_counted_without_unknown_event_types(path: Path):
    count = count_actions(load_history(path))
    assert not count.unknown, f"{path.name}: event types bench/deal_cost.py does not know: {dict(count.unknown)}"
    assert count.actions["start_workflow"] + count.actions.get("signal_workflow", 0) >= 1 or "pickup" in path.stem
    assert count.events == len(load_history(path)["events"]) and count.bytes > 0


def test_recorded_lifecycle_paths_by_hand():
    # deal_all_returned_early (1.0), every unit back 300 days after booking: start 1; timers 11 (9 monthly
    # looks for a new worker version at days 30..270, the 90-day reminder at day 275, the look due at day
    # 300 when the units came); the receipt's signal 1; three activities (the reminder, which shows itself in
    # the read model; decide_and_close: the store's decision with the close; the release notice): 16.
    early = count_actions(load_history(HISTORIES / LATEST / f"{RECORDED_PATHS['early']}.json"))
    assert early.total == 16 and not early.exempt
    assert dict(early.actions) == {"start_workflow": 1, "start_timer": 11, "signal_workflow": 1, "schedule_activity": 3}