"""The engine's own unit of work, run on the product's worker: a raw workflow of two activities, and a raw
"mirror" of a deal's path (the same timers, activities, signals and updates, and no product logic)."""

import asyncio
from datetime import timedelta

from pydantic import BaseModel
from temporalio import activity, workflow

STEP_TIMEOUT = timedelta(seconds=10)


@activity.defn
def raw_step(value: int) -> int:
    return value + 1


@workflow.defn
class RawTwoActivityWorkflow:
    @workflow.run
    async def run(self, value: int) -> int:
        first = await workflow.execute_activity(raw_step, value, start_to_close_timeout=STEP_TIMEOUT)
        return await workflow.execute_activity(raw_step, first, start_to_close_timeout=STEP_TIMEOUT)


class MirrorShape(BaseModel):
    """What a deal's history holds on one path (bench/run.py measures it: `history_shape`), as a raw workflow's commands."""

    timers_s: list[float]  # timers, one after another: each one's seconds
    wait_timers: bool = True  # False: the workflow ends once its signals came and its activities ran, its timer still pending (a deal closed early)
    activities: int  # raw_step activities in all, the updates' included
    signals: int  # signals it waits for (`step`, the deal's receipts_counted)
    updates: int  # updates it accepts (`booked`, the deal's request_pickup); each runs one of the activities and answers after it


@workflow.defn
class MirrorWorkflow:
    """A deal's path without the deal: its timers, its activities, its signals and updates, nothing else.

    The activities not run by an update are spread over the workflow's moments (its start, each timer that
    fires and each signal), the first moments taking one more where they do not divide evenly. Each is
    awaited before the next (one workflow task each, as most of a deal's are), with a 1-integer payload.
    Not mirrored: a deal's payloads (its view and terms), its timers cancelled and restarted, its mail's
    own task queue; those are the product's cost, which the ratio deal / mirror measures.
    """

    @workflow.init
    def __init__(self, shape: MirrorShape) -> None:
        self.signals_seen = 0
        self.ran = 0  # activities completed: the run's result

    @workflow.signal
    def step(self) -> None:
        self.signals_seen += 1

    @workflow.update
    async def booked(self) -> int:
        await self._steps(1)
        return self.ran

    async def _steps(self, count: int) -> None:
        for _ in range(count):
            await workflow.execute_activity(raw_step, self.ran, start_to_close_timeout=STEP_TIMEOUT)
            self.ran += 1

    @workflow.run
    async def run(self, shape: MirrorShape) -> int:
        own = max(0, shape.activities - shape.updates)
        moments = 1 + (len(shape.timers_s) if shape.wait_timers else 0) + shape.signals
        shares = [own // moments + (1 if i < own % moments else 0) for i in range(moments)]
        await self._steps(shares.pop(0))
        timers = list(shape.timers_s)
        timer = asyncio.ensure_future(workflow.sleep(timers.pop(0))) if timers else None
        handled = 0
        while True:
            timers_due = shape.wait_timers and (timer is not None)
            if handled == shape.signals and not timers_due:
                break
            await workflow.wait_condition(lambda: self.signals_seen > handled or (timers_due and timer.done()))
            if self.signals_seen > handled:
                handled += 1
            else:
                timer = asyncio.ensure_future(workflow.sleep(timers.pop(0))) if timers else None
            await self._steps(shares.pop(0) if shares else 0)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.ran


def main() -> None:
    """The product worker plus the baseline workflows: same process, same settings."""
    import logging

    from worker import run_worker

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run_worker(extra_workflows=[RawTwoActivityWorkflow, MirrorWorkflow], extra_activities=[raw_step]))


if __name__ == "__main__":
    main()
