"""bench/baseline.py's MirrorWorkflow issues the timers, activities, signals and updates its shape says, so the
lifecycle bench's ratio deal / mirror compares a deal with a raw workflow of the same commands."""

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from temporalio.worker import Worker

from bench.baseline import MirrorShape, MirrorWorkflow, raw_step
from bench.run import MIRRORS, history_shape, shape_key


async def drive(client, shape: MirrorShape, task_queue: str) -> str:
    handle = await client.start_workflow(MirrorWorkflow.run, shape, id=f"mirror-test-{uuid.uuid4().hex}", task_queue=task_queue)
    for _ in range(shape.updates):
        assert await handle.execute_update(MirrorWorkflow.booked) >= 1
    for _ in range(shape.signals):
        await asyncio.sleep(0.05)
        await handle.signal(MirrorWorkflow.step)
    assert await asyncio.wait_for(handle.result(), 30) == shape.activities
    return handle.id


@pytest.mark.parametrize("shape", [
    MirrorShape(timers_s=[0.2] * 4, activities=12, signals=2, updates=1),  # the deal met at its deadline after 3 reminders
    MirrorShape(timers_s=[30 * 86400], wait_timers=False, activities=4, signals=1, updates=1),  # closed early, its timer pending
    MirrorShape(timers_s=[0.1], activities=0, signals=0, updates=0),
], ids=["met3", "early", "bare"])
async def test_a_mirror_runs_its_shape(dev_server_env, shape: MirrorShape):
    client, task_queue = dev_server_env.client, f"mirror-{uuid.uuid4().hex}"
    with ThreadPoolExecutor(max_workers=4) as executor:
        async with Worker(client, task_queue=task_queue, workflows=[MirrorWorkflow], activities=[raw_step], activity_executor=executor):
            workflow_id = await drive(client, shape, task_queue)
    counted = await history_shape(client, workflow_id)
    assert shape_key(counted) == (len(shape.timers_s), shape.activities, shape.signals, shape.updates)


def test_every_lifecycle_path_has_a_mirror():
    from bench.run import LIFECYCLE_PATHS

    assert set(MIRRORS) == set(LIFECYCLE_PATHS)
    for path, spec in LIFECYCLE_PATHS.items():
        assert MIRRORS[path].signals == len(spec.receipts), path  # a receipt is one receipts_counted signal
