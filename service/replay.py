"""Replay workflow histories against today's code: recorded files, or the workflows on a live server.

A deploy that would break running deals shows here first: every history is replayed with the
workflows this worker registers, and any non-determinism is reported and fails the run.
"""

import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.worker import Replayer

from workflows.deal import TakebackDealWorkflow
from workflows.pickup import PickupWorkflow
from workflows.specialization import PartnerSpecializationWorkflow
from workflows.tracking_poll import TrackingPollWorkflow

# Every workflow a worker runs (worker.py registers this list): what a replay checks the histories against.
WORKFLOWS = [TakebackDealWorkflow, PickupWorkflow, PartnerSpecializationWorkflow, TrackingPollWorkflow]
DEFAULT_QUERY = " OR ".join(f"WorkflowType = '{w.__temporal_workflow_definition.name}'" for w in WORKFLOWS)


@dataclass
class ReplayReport:
    replayed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    total: int | None = None  # known beforehand: a deploy check counts the open workflows first

    @property
    def ok(self) -> bool:
        return not self.failures


def history_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files += sorted(path.rglob("*.json")) if path.is_dir() else [path]
    return files


async def _from_files(files: list[Path]) -> AsyncIterator[WorkflowHistory]:
    for path in files:
        events = json.loads(path.read_text())
        yield WorkflowHistory.from_json(str(path), events)


async def replay(histories: AsyncIterator[WorkflowHistory], progress=None, data_converter: DataConverter | None = None, report: ReplayReport | None = None) -> ReplayReport:
    """Replay every history; `progress(report)` is called after each one. Histories sealed by the
    payload codec need the converter that holds their keys (`temporal_client.data_converter`)."""
    report = report or ReplayReport()
    replayer = Replayer(workflows=WORKFLOWS, data_converter=data_converter or pydantic_data_converter)
    async with replayer.workflow_replay_iterator(histories) as results:
        async for result in results:
            report.replayed += 1
            if result.replay_failure is not None:
                report.failures.append((result.history.workflow_id, repr(result.replay_failure)))
            if progress:
                progress(report)
    return report


async def replay_files(paths: list[Path], progress=None, data_converter: DataConverter | None = None) -> ReplayReport:
    return await replay(_from_files(history_files(paths)), progress, data_converter)


async def _histories(client: Client, executions) -> AsyncIterator[WorkflowHistory]:
    async for execution in executions:
        yield await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()


async def replay_server(client: Client, query: str = DEFAULT_QUERY, progress=None) -> ReplayReport:
    """The workflows the query finds on the server, open ones included, each run by itself."""
    return await replay(_histories(client, client.list_workflows(query)), progress, client.data_converter)


def open_on_queue(task_queue: str) -> str:
    """Every open workflow of the queue, whatever its type: one this code no longer has fails the check."""
    return f"ExecutionStatus = 'Running' AND TaskQueue = '{task_queue}'"


def version_of(execution) -> str:
    """Where an open workflow runs: pinned to a Worker Deployment version, auto-upgrade, or unversioned."""
    from temporalio.api.enums.v1 import VersioningBehavior

    info = execution.raw_info.versioning_info
    version = info.deployment_version
    if info.behavior == VersioningBehavior.VERSIONING_BEHAVIOR_PINNED and version.build_id:
        return f"pinned to {version.deployment_name}.{version.build_id}"
    if info.behavior == VersioningBehavior.VERSIONING_BEHAVIOR_AUTO_UPGRADE:
        return "auto-upgrade"
    return "unversioned"


async def check_open_workflows(client: Client, task_queue: str, progress=None) -> ReplayReport:
    """A deploy's check (`takeback deploy check`): the current run of every open workflow of the queue
    (deals, partner years, pickups, a tracking poll) replayed against this code, with the client's
    converter (the payload codec, when keys are set). A failure names the workflow, its type and
    where it runs now."""
    executions = [execution async for execution in client.list_workflows(open_on_queue(task_queue))]
    where = {execution.id: f"{execution.workflow_type}, {version_of(execution)}" for execution in executions}

    async def listed():
        for execution in executions:
            yield execution

    report = await replay(_histories(client, listed()), progress, client.data_converter, ReplayReport(total=len(executions)))
    report.failures = [(f"{workflow_id} ({where.get(workflow_id, '?')})", failure) for workflow_id, failure in report.failures]
    return report


def print_progress(report: ReplayReport) -> None:
    if report.total is not None:  # n of N, about twenty lines however many
        if report.replayed == report.total or report.replayed % max(1, report.total // 20) == 0:
            print(f"replayed {report.replayed} of {report.total}, {len(report.failures)} failed", file=sys.stderr, flush=True)
    elif report.replayed % 100 == 0:
        print(f"replayed {report.replayed} histories, {len(report.failures)} failed", file=sys.stderr, flush=True)
