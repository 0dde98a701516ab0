"""A SIGKILLed worker strands the deals it had cached only for TAKEBACK_STICKY_SCHEDULE_TO_START.

Their next task waits on the dead worker's sticky queue until that timeout, then any worker
replays the deal from the normal queue. Measured on the real dev server: a worker process runs a
deal, is SIGKILLed right after, a second one is started, and an extension (a workflow update; a
receipt needs no worker since the store counts it) is timed from the kill to its acceptance. With the 1s default it answers in under 3 s (the second
worker's start-up, ~1.2 s here, is most of it); at 5s it takes about 5 s.
"""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from domain.models import ReceiptItem
from temporalio.client import WorkflowUpdateStage

from service import deals
from workflows.deal import ExtendCommand, TakebackDealWorkflow
from settings import Settings
from tests.conftest import add_partner, booking, make_settings
from worker import build_worker

ROOT = Path(__file__).resolve().parent.parent


def spawn_worker(env: dict, log: Path) -> subprocess.Popen:
    """`python -m cli worker`, its log in `log` (kept in the test's tmp_path)."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def stop_worker(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def polling(client, settings: Settings, pid: int, timeout: float = 30) -> float:
    """Wait until the worker process `pid` polls the deal queue (by its identity); the seconds waited."""
    started = time.monotonic()
    request = DescribeTaskQueueRequest(
        namespace=client.namespace, task_queue=TaskQueue(name=settings.task_queue), task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW
    )
    while time.monotonic() - started < timeout:
        answer = await client.workflow_service.describe_task_queue(request)
        if any(f":{pid}:{settings.task_queue}" in poller.identity for poller in answer.pollers):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker {pid} did not poll {settings.task_queue} within {timeout}s")


async def quiet(handle, timeout: float = 15) -> None:
    """No workflow task or activity in flight: a kill now strands the deal only in the worker's cache
    (killing a worker mid-task would add the task's own 10 s timeout, which is not measured here)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = (await handle.describe()).raw_description
        if not raw.HasField("pending_workflow_task") and not raw.pending_activities:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{handle.id} still busy after {timeout}s")


async def task_identities(handle) -> list[str]:
    return [
        event.workflow_task_completed_event_attributes.identity
        async for event in handle.fetch_history_events()
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    ]


def receipt(serial: str) -> list[ReceiptItem]:
    return [ReceiptItem(product_id="C9300-48P", serial_number=serial, condition="working", age_years=1)]


async def seconds_to_answer_after_a_kill(client, tmp_path, sticky: str) -> tuple[float, float]:
    """(seconds from the SIGKILL to the answer, seconds until the second worker polled)."""
    settings = make_settings(tmp_path / sticky, sticky_schedule_to_start=sticky)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    add_partner(settings)
    env = dict(
        os.environ,
        TEMPORAL_ADDRESS=client.service_client.config.target_host,
        TEMPORAL_NAMESPACE=client.namespace,
        TAKEBACK_DATA_DIR=str(settings.data_dir),
        TAKEBACK_TASK_QUEUE=settings.task_queue,
        TAKEBACK_STICKY_SCHEDULE_TO_START=sticky,
    )
    env.pop("TAKEBACK_DATABASE_URL", None)
    first = spawn_worker(env, settings.data_dir / "first-worker.log")
    second = None
    try:
        await polling(client, settings, first.pid)
        deal = await deals.book_deal(client, settings, booking(10))
        assert (await deals.record_receipt(client, settings, deal.id, receipt(f"{sticky}-1")))["accepted"] == 1
        handle = deals.deal_handle(client, deal.id)
        await quiet(handle)
        assert all(f":{first.pid}:" in identity for identity in await task_identities(handle))  # cached on the first worker

        first.send_signal(signal.SIGKILL)
        first.wait()
        killed = time.monotonic()
        second = spawn_worker(env, settings.data_dir / "second-worker.log")
        second_up = asyncio.create_task(polling(client, settings, second.pid))
        # Timed to the update's acceptance, which the deal's next workflow task gives: what the sticky timeout
        # delays. The extension's store write that follows is an activity, whose dispatch is not measured here.
        update = await asyncio.wait_for(
            handle.start_update(TakebackDealWorkflow.extend, ExtendCommand(extend_by_seconds=86400, reason=f"{sticky}-2"), id=f"{sticky}-2", wait_for_stage=WorkflowUpdateStage.ACCEPTED),
            timeout=30,
        )
        seconds = time.monotonic() - killed
        up = await second_up
        answer = await asyncio.wait_for(update.result(), timeout=30)
        assert answer.return_deadline == deal.return_deadline + timedelta(days=1)
        assert f":{second.pid}:" in (await task_identities(handle))[-1]  # the second worker answered it
        print(f"\nsticky {sticky}: update answered {seconds:.2f} s after the SIGKILL (second worker polling after {up:.2f} s)")
        return seconds, up
    finally:
        for process in (first, second):
            if process is not None:
                stop_worker(process)


@pytest.mark.parametrize(("sticky", "low", "high"), [("1s", 0.0, 3.0), ("5s", 4.0, 9.0)])
async def test_a_killed_workers_deal_answers_once_its_sticky_queue_times_out(dev_server_env, tmp_path, sticky, low, high):
    seconds, second_worker_up = await seconds_to_answer_after_a_kill(dev_server_env.client, tmp_path, sticky)
    # The answer comes once the sticky queue gave the deal up *and* the second worker polls: on a
    # loaded machine a start-up slower than ~2 s (1.0-1.8 s seen here) would be measured, not the setting.
    high = max(high, second_worker_up + 1.0)
    assert low <= seconds < high, f"sticky {sticky}: {seconds:.2f} s (second worker up after {second_worker_up:.2f} s)"


def test_worker_settings_default_to_fast_recovery_and_a_graceful_drain(monkeypatch):
    for name in ("TAKEBACK_STICKY_SCHEDULE_TO_START", "TAKEBACK_WORKER_DRAIN"):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings()
    assert (defaults.sticky_schedule_to_start_seconds, defaults.worker_drain_seconds) == (1.0, 10.0)
    monkeypatch.setenv("TAKEBACK_STICKY_SCHEDULE_TO_START", "0.5s")
    monkeypatch.setenv("TAKEBACK_WORKER_DRAIN", "0s")
    assert (Settings().sticky_schedule_to_start_seconds, Settings().worker_drain_seconds) == (0.5, 0.0)
    for bad in ("0s", "soon", ""):
        monkeypatch.setenv("TAKEBACK_STICKY_SCHEDULE_TO_START", bad)
        with pytest.raises(ValueError):
            Settings()


async def test_the_worker_is_built_with_them(dev_server_env, tmp_path):
    settings = make_settings(tmp_path, sticky_schedule_to_start="2s", worker_drain="7s")
    config = build_worker(dev_server_env.client, settings).config()
    assert config["sticky_queue_schedule_to_start_timeout"] == timedelta(seconds=2)
    assert config["graceful_shutdown_timeout"] == timedelta(seconds=7)
    assert config["identity"] == f"takeback-worker@{socket.gethostname()}:{os.getpid()}:{settings.task_queue}"
