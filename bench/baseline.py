"""The engine's own unit of work: a raw workflow of two activities, run on the product's worker."""

import asyncio
from datetime import timedelta

from temporalio import activity, workflow


@activity.defn
def raw_step(value: int) -> int:
    return value + 1


@workflow.defn
class RawTwoActivityWorkflow:
    @workflow.run
    async def run(self, value: int) -> int:
        first = await workflow.execute_activity(raw_step, value, start_to_close_timeout=timedelta(seconds=10))
        return await workflow.execute_activity(raw_step, first, start_to_close_timeout=timedelta(seconds=10))


def main() -> None:
    """The product worker plus the baseline workflow: same process, same settings."""
    import logging

    from worker import run_worker

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run_worker(extra_workflows=[RawTwoActivityWorkflow], extra_activities=[raw_step]))


if __name__ == "__main__":
    main()
