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

WORKFLOWS = [TakebackDealWorkflow, PickupWorkflow, PartnerSpecializationWorkflow]
DEFAULT_QUERY = " OR ".join(f"WorkflowType = '{w.__temporal_workflow_definition.name}'" for w in WORKFLOWS)


@dataclass
class ReplayReport:
    replayed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

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


async def replay(histories: AsyncIterator[WorkflowHistory], progress=None, data_converter: DataConverter | None = None) -> ReplayReport:
    """Replay every history; `progress(report)` is called after each one. Histories sealed by the
    payload codec need the converter that holds their keys (`temporal_client.data_converter`)."""
    report = ReplayReport()
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


async def replay_server(client: Client, query: str = DEFAULT_QUERY, progress=None) -> ReplayReport:
    """The workflows the query finds on the server, open ones included, each run by itself."""

    async def histories() -> AsyncIterator[WorkflowHistory]:
        async for execution in client.list_workflows(query):
            yield await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()

    return await replay(histories(), progress, client.data_converter)


def print_progress(report: ReplayReport) -> None:
    if report.replayed % 100 == 0:
        print(f"replayed {report.replayed} histories, {len(report.failures)} failed", file=sys.stderr, flush=True)
