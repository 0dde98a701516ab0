"""The tracking poll: a Temporal Schedule asks the provider about every open tracker, a fallback for
lost webhooks (TAKEBACK_CARRIER=easypost). One schedule for the task queue, not a timer per deal: a
deal's history never grows with tracking news, and the poll's runs are short and independent (a run
still going when the next is due makes that one skip).

`ensure_tracking_poll_schedule` creates it, or brings an existing one to the current interval, when a
worker starts (`takeback worker`, and so `takeback dev`): several workers starting at once agree.
"""

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.tracking_poll import PollSummary, TrackingPollActivities

POLL_TIMEOUT = timedelta(minutes=10)
HEARTBEAT = timedelta(seconds=30)


@workflow.defn
class TrackingPollWorkflow:
    @workflow.run
    async def run(self) -> PollSummary:
        return await workflow.execute_activity_method(
            TrackingPollActivities.poll_open_trackers,
            start_to_close_timeout=POLL_TIMEOUT,
            heartbeat_timeout=HEARTBEAT,
            # The next run polls anyway: a few tries, then this run fails where ops can see it.
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=1), maximum_attempts=3),
            summary="poll the provider's open trackers",
        )


def schedule_id(task_queue: str) -> str:
    return f"tracking-poll-{task_queue}"


async def ensure_tracking_poll_schedule(client, settings):
    """Create the tracking poll's schedule, or update it to the current interval and task queue (idempotent)."""
    from temporalio.client import (
        Schedule,
        ScheduleActionStartWorkflow,
        ScheduleAlreadyRunningError,
        ScheduleIntervalSpec,
        ScheduleOverlapPolicy,
        SchedulePolicy,
        ScheduleSpec,
        ScheduleUpdate,
    )

    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            TrackingPollWorkflow.run, id=f"tracking-poll-run-{settings.task_queue}", task_queue=settings.task_queue, execution_timeout=POLL_TIMEOUT * 4,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=settings.easypost_poll_every_seconds))]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        return await client.create_schedule(schedule_id(settings.task_queue), schedule)
    except ScheduleAlreadyRunningError:
        handle = client.get_schedule_handle(schedule_id(settings.task_queue))
        await handle.update(lambda _current: ScheduleUpdate(schedule=schedule))
        return handle
