"""The worker's workflow sandbox: off in service (it costs a module import per workflow loaded),
on for every worker of this suite, where it turns a non-deterministic call into a failure."""

import asyncio
import uuid
from datetime import datetime

from temporalio import workflow
from temporalio.api.enums.v1 import EventType

from settings import Settings
from tests.conftest import make_settings
from worker import build_worker


@workflow.defn
class ReadsTheWallClock:
    @workflow.run
    async def run(self) -> str:
        return datetime.now().isoformat()  # not workflow.now(): differs on replay


async def first_task_failure(handle, seconds: float = 10) -> str | None:
    """The message of the workflow's first failed workflow task, if one fails within `seconds`."""
    for _ in range(int(seconds / 0.1)):
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                return event.workflow_task_failed_event_attributes.failure.message
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
                return None
        await asyncio.sleep(0.1)
    return None


def test_service_runs_without_the_sandbox_and_this_suite_with_it(monkeypatch):
    monkeypatch.delenv("TAKEBACK_WORKFLOW_SANDBOX")
    assert Settings().workflow_sandbox is False
    monkeypatch.setenv("TAKEBACK_WORKFLOW_SANDBOX", "true")
    assert Settings().workflow_sandbox is True


async def test_a_sandboxed_worker_fails_a_workflow_that_reads_the_wall_clock(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    assert settings.workflow_sandbox  # as every worker of this suite
    async with build_worker(env.client, settings, extra_workflows=[ReadsTheWallClock]):
        handle = await env.client.start_workflow(ReadsTheWallClock.run, id=f"clock-{uuid.uuid4().hex}", task_queue=settings.task_queue)
        failure = await first_task_failure(handle)
        await handle.terminate()
    assert failure is not None and "datetime.datetime.now" in failure


async def test_an_unsandboxed_worker_runs_the_same_workflow(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path, workflow_sandbox=False)
    async with build_worker(env.client, settings, extra_workflows=[ReadsTheWallClock]):
        before = datetime.now()
        handle = await env.client.start_workflow(ReadsTheWallClock.run, id=f"clock-{uuid.uuid4().hex}", task_queue=settings.task_queue)
        result = await handle.result()
        after = datetime.now()
        failure = await first_task_failure(handle)
    assert failure is None  # no workflow task failed on the way: the sandbox did not stop it
    assert before <= datetime.fromisoformat(result) <= after  # the wall clock, as read by the workflow
