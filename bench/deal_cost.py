"""What a deal costs: Temporal Cloud billable Actions, history events and bytes, store rows and bytes, e-mails.

    .venv/bin/python bench/deal_cost.py            # recorded 1.0 histories, then 20 real deals per path (~75 s)
    .venv/bin/python bench/deal_cost.py --quick    # 3 deals per path (42 s at load 2.4, 48 s at load 6)
    .venv/bin/python bench/deal_cost.py --database-url postgresql+psycopg://...   # the store on PostgreSQL
    .venv/bin/python bench/deal_cost.py --postgres # a throwaway PostgreSQL cluster (tests/postgres.py)
    .venv/bin/python bench/deal_cost.py --histories-only

Actions are counted by Temporal's published definition, https://docs.temporal.io/cloud/actions
(docs/evaluate/cloud/actions.mdx in temporalio/documentation, read 2026-11-26): `count_actions` maps each
history event to the Actions it stands for. What a history cannot show (queries, activity heartbeats,
rejected updates) is read from the dev server's own `action` counter (its /metrics endpoint, the metric
https://docs.temporal.io/cloud/migrate/estimate-actions names for estimating Cloud Actions from a
self-hosted server), which also cross-checks the history count. See bench/RESULTS.md (what a deal costs, and the capacity model).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sqlite3
import statistics
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HISTORIES = ROOT / "tests" / "histories"
LATEST = "1.0"

# The recorded 1.0 histories that are complete deals on lifecycle paths of bench/run.py's LIFECYCLE_PATHS (met3, issue 23's
# three reminders and two receipts, has no recorded history: its Actions come from the live run).
RECORDED_PATHS = {
    "early": "deal_all_returned_early",
    "met": "deal_rebate_released",
    "forfeit": "deal_shortfall_forfeited",
    "clawback": "deal_upfront_clawed_back",
}

# --------------------------------------------------------------------------------------------------
# Counting billable Actions in a history (pure: no I/O)
# --------------------------------------------------------------------------------------------------

# The search attribute the SDKs upsert for workflow.patched(); exempt from Action counting.
CHANGE_VERSION = "TemporalChangeVersion"

# Event types that are no Action of their own. Anything not here and not handled in count_actions is
# reported as unknown, so a new event type is looked at rather than silently counted as free.
FREE_EVENTS = {
    "WORKFLOW_EXECUTION_COMPLETED", "WORKFLOW_EXECUTION_FAILED", "WORKFLOW_EXECUTION_TIMED_OUT",
    "WORKFLOW_EXECUTION_TERMINATED", "WORKFLOW_EXECUTION_CANCEL_REQUESTED", "WORKFLOW_EXECUTION_CANCELED",
    "WORKFLOW_TASK_SCHEDULED", "WORKFLOW_TASK_STARTED", "WORKFLOW_TASK_TIMED_OUT",
    "ACTIVITY_TASK_COMPLETED", "ACTIVITY_TASK_FAILED", "ACTIVITY_TASK_TIMED_OUT",
    "ACTIVITY_TASK_CANCEL_REQUESTED", "ACTIVITY_TASK_CANCELED",
    "TIMER_FIRED", "TIMER_CANCELED",
    # Counted once, in the history of the workflow signalled (its WORKFLOW_EXECUTION_SIGNALED).
    "SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED", "SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_FAILED", "EXTERNAL_WORKFLOW_EXECUTION_SIGNALED",
    "REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED", "REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_FAILED",
    "EXTERNAL_WORKFLOW_EXECUTION_CANCEL_REQUESTED",
    # The start is counted on the new run's WORKFLOW_EXECUTION_STARTED (as Temporal's UI shows it).
    "WORKFLOW_EXECUTION_CONTINUED_AS_NEW",
    # The parent's START_CHILD_..._INITIATED carries the child's two Actions.
    "START_CHILD_WORKFLOW_EXECUTION_FAILED", "CHILD_WORKFLOW_EXECUTION_STARTED", "CHILD_WORKFLOW_EXECUTION_COMPLETED",
    "CHILD_WORKFLOW_EXECUTION_FAILED", "CHILD_WORKFLOW_EXECUTION_CANCELED", "CHILD_WORKFLOW_EXECUTION_TIMED_OUT",
    "CHILD_WORKFLOW_EXECUTION_TERMINATED",
    # The update's Action is its acceptance.
    "WORKFLOW_EXECUTION_UPDATE_ADMITTED", "WORKFLOW_EXECUTION_UPDATE_COMPLETED",
    "WORKFLOW_PROPERTIES_MODIFIED", "WORKFLOW_PROPERTIES_MODIFIED_EXTERNALLY", "ACTIVITY_PROPERTIES_MODIFIED_EXTERNALLY",
    "NEXUS_OPERATION_STARTED", "NEXUS_OPERATION_COMPLETED", "NEXUS_OPERATION_FAILED", "NEXUS_OPERATION_CANCELED",
    "NEXUS_OPERATION_TIMED_OUT", "NEXUS_OPERATION_CANCEL_REQUEST_COMPLETED", "NEXUS_OPERATION_CANCEL_REQUEST_FAILED",
}


@dataclass
class ActionCount:
    """Billable Actions of one or more histories, by Temporal's usage name (metric name), and their size."""

    actions: Counter = field(default_factory=Counter)
    exempt: Counter = field(default_factory=Counter)  # commands the definition exempts (TemporalChangeVersion upserts)
    events: int = 0
    bytes: int = 0  # the events' protobuf encoding, as the server keeps and pages them
    unknown: Counter = field(default_factory=Counter)  # event types this module does not know
    activity_types: Counter = field(default_factory=Counter)  # activities scheduled, by type (where the Actions go)

    @property
    def total(self) -> int:
        return sum(self.actions.values())

    def __add__(self, other: "ActionCount") -> "ActionCount":
        return ActionCount(self.actions + other.actions, self.exempt + other.exempt, self.events + other.events, self.bytes + other.bytes,
                           self.unknown + other.unknown, self.activity_types + other.activity_types)


def as_events(history) -> list:
    """The protobuf events of a temporalio WorkflowHistory, an api History, its JSON (str or dict), or a list of events."""
    from google.protobuf import json_format
    from temporalio.api.history.v1 import History

    if isinstance(history, (str, bytes)):
        return list(json_format.Parse(history, History()).events)
    if isinstance(history, dict):
        return list(json_format.ParseDict(history, History()).events)
    if hasattr(history, "events"):
        return list(history.events)
    return list(history)


def event_type_name(event) -> str:
    from temporalio.api.enums.v1 import EventType

    return EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")


def count_actions(history) -> ActionCount:
    """Temporal Cloud billable Actions that one workflow run's history shows, by https://docs.temporal.io/cloud/actions.

    - Workflow started: 1 (client start, and a continue-as-new's new run: its STARTED event; the old
      run's CONTINUED_AS_NEW is 0, as the Cloud UI shows it). A child's own STARTED is 0: the parent's
      START_CHILD_WORKFLOW_EXECUTION_INITIATED is 2 (the intent and the attempt to start it).
      Signal-With-Start is one Action: a SIGNALED right after STARTED (event 2) is part of it.
    - Activity: SCHEDULED 1; each retry 1 (ACTIVITY_TASK_STARTED's attempt - 1; a retry still running
      when the history was read is not visible).
    - Local activities and other markers: all MARKER_RECORDED events of one workflow task are 1 Action
      (this includes workflow.patched()'s version markers); each local activity retry after the first
      attempt is 1 more (WORKFLOW_TASK_COMPLETED's metering_metadata.nonfirst_local_activity_execution_attempts).
    - Timer started 1. Search attribute upsert 1 per command, 0 if it sets only TemporalChangeVersion.
    - Signal received (WORKFLOW_EXECUTION_SIGNALED) 1, whether from a client or a workflow; the sender's
      SIGNAL_EXTERNAL_..._INITIATED is 0 so a signal between two counted workflows is counted once.
    - Update accepted 1 (a rejected update is never written to history: not counted here).
    - Reset (WORKFLOW_TASK_FAILED with cause RESET_WORKFLOW) 1; Workflow Execution Options updated 1;
      Nexus operation scheduled 1, its cancel requested 1.
    Not in any history, so not counted here: queries, activity heartbeats, rejected updates, schedules, export.
    """
    from temporalio.api.enums.v1 import WorkflowTaskFailedCause

    out = ActionCount()
    events = as_events(history)
    out.events = len(events)
    tasks_with_markers: set[int] = set()
    previous = None
    for event in events:
        out.bytes += event.ByteSize()
        kind = event_type_name(event)
        if kind == "WORKFLOW_EXECUTION_STARTED":
            attrs = event.workflow_execution_started_event_attributes
            if not attrs.HasField("parent_workflow_execution"):
                out.actions["start_workflow"] += 1
        elif kind == "ACTIVITY_TASK_SCHEDULED":
            out.actions["schedule_activity"] += 1
            out.activity_types[event.activity_task_scheduled_event_attributes.activity_type.name] += 1
        elif kind == "ACTIVITY_TASK_STARTED":
            retries = max(0, event.activity_task_started_event_attributes.attempt - 1)
            if retries:
                out.actions["retry_activity"] += retries
        elif kind == "MARKER_RECORDED":
            tasks_with_markers.add(event.marker_recorded_event_attributes.workflow_task_completed_event_id)
        elif kind == "WORKFLOW_TASK_COMPLETED":
            retries = event.workflow_task_completed_event_attributes.metering_metadata.nonfirst_local_activity_execution_attempts
            if retries:
                out.actions["retry_activity_local"] += retries
        elif kind == "TIMER_STARTED":
            out.actions["start_timer"] += 1
        elif kind == "UPSERT_WORKFLOW_SEARCH_ATTRIBUTES":
            fields = set(event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields)
            if fields and fields <= {CHANGE_VERSION}:
                out.exempt["upsert_change_version"] += 1
            else:
                out.actions["upsert_workflow_search_attributes"] += 1
        elif kind == "WORKFLOW_EXECUTION_SIGNALED":
            if not (event.event_id == 2 and previous is not None and event_type_name(previous) == "WORKFLOW_EXECUTION_STARTED"):
                out.actions["signal_workflow"] += 1
        elif kind == "WORKFLOW_EXECUTION_UPDATE_ACCEPTED":
            out.actions["accept_workflow_update"] += 1
        elif kind == "WORKFLOW_EXECUTION_UPDATE_REJECTED":
            out.actions["reject_workflow_update"] += 1
        elif kind == "START_CHILD_WORKFLOW_EXECUTION_INITIATED":
            out.actions["start_child_workflow"] += 2
        elif kind == "WORKFLOW_TASK_FAILED":
            if event.workflow_task_failed_event_attributes.cause == WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_WORKFLOW:
                out.actions["reset_workflow"] += 1
        elif kind == "WORKFLOW_EXECUTION_OPTIONS_UPDATED":
            out.actions["update_workflow_options"] += 1
        elif kind == "NEXUS_OPERATION_SCHEDULED":
            out.actions["schedule_nexus_operation"] += 1
        elif kind == "NEXUS_OPERATION_CANCEL_REQUESTED":
            out.actions["request_nexus_operation_cancellation"] += 1
        elif kind not in FREE_EVENTS:
            out.unknown[kind] += 1
        previous = event
    if tasks_with_markers:
        out.actions["record_activity_markers"] += len(tasks_with_markers)
    return out


def load_history(path: Path):
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------------------------------
# (a) The recorded histories
# --------------------------------------------------------------------------------------------------

SHORT = {
    "start_workflow": "start", "schedule_activity": "activity", "retry_activity": "act.retry", "record_activity_markers": "markers",
    "retry_activity_local": "LA retry", "start_timer": "timer", "upsert_workflow_search_attributes": "upsert",
    "signal_workflow": "signal", "accept_workflow_update": "update", "start_child_workflow": "child",
}


def breakdown(count: ActionCount) -> str:
    return ", ".join(f"{SHORT.get(k, k)} {v}" for k, v in sorted(count.actions.items(), key=lambda kv: -kv[1]))


def recorded_report(version: str = LATEST) -> dict:
    folder = HISTORIES / version
    counts = {path.stem: count_actions(load_history(path)) for path in sorted(folder.glob("*.json"))}
    print(f"\n== Recorded histories, tests/histories/{version} (Actions by the published definition; queries, heartbeats not in history) ==")
    print(f"{'history':50} {'actions':>7} {'events':>6} {'KB':>6}  breakdown (TemporalChangeVersion upserts exempt)")
    path_of = {stem: path for path, stem in RECORDED_PATHS.items()}
    for stem, c in counts.items():
        label = f"{stem} [{path_of[stem]}]" if stem in path_of else stem
        print(f"{label:50} {c.total:7d} {c.events:6d} {c.bytes / 1000:6.1f}  {breakdown(c)}; exempt {sum(c.exempt.values())}"
              + (f"; UNKNOWN {dict(c.unknown)}" if c.unknown else ""))
    unknown = sum((c.unknown for c in counts.values()), Counter())
    print(f"unknown event types: {dict(unknown) if unknown else 'none'}")
    return {stem: {"actions": c.total, "by_type": dict(c.actions), "exempt": dict(c.exempt), "events": c.events, "bytes": c.bytes, "activities": dict(c.activity_types)} for stem, c in counts.items()}


# --------------------------------------------------------------------------------------------------
# (b) Real deals on a real stack
# --------------------------------------------------------------------------------------------------

_STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[deal_cost {time.monotonic() - _STARTED:5.0f}s] {message}", flush=True)


def listening_ports(pid: int) -> list[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            match = re.match(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
            if match:
                inodes.add(match.group(1))
    ports = []
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                    ports.append(int(cols[1].split(":")[1], 16))
    return ports


def find_metrics_url(server_pid: int, timeout: float = 20) -> str | None:
    """The dev server's /metrics (`temporal server start-dev` opens it on a random free port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for port in listening_ports(server_pid):
            url = f"http://127.0.0.1:{port}/metrics"
            with contextlib.suppress(Exception):
                if "action{" in urllib.request.urlopen(url, timeout=1).read().decode():
                    return url
        time.sleep(0.5)
    return None


def server_actions(url: str | None, namespace: str = "default") -> Counter:
    """The server's `action` counter by action_type, for one namespace."""
    out: Counter = Counter()
    if url is None:
        return out
    for line in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
        if line.startswith("action{") and f'namespace="{namespace}"' in line:
            kind = re.search(r'action_type="([^"]+)"', line).group(1)
            out[kind] += float(line.rsplit(" ", 1)[1])
    return out


# The server's action types that a history does not show.
NOT_IN_HISTORY = {"grpc_QueryWorkflow": "queries", "grpc_RecordActivityTaskHeartbeat": "heartbeats", "grpc_RecordActivityTaskHeartbeatById": "heartbeats",
                  "message_UpdateWorkflowExecution_Rejection": "rejected updates"}


class StoreMeter:
    """Rows and bytes per table of the store, SQLite (dbstat: payload bytes of the table and its indexes) or PostgreSQL
    (pg_total_relation_size: table, indexes and TOAST; and the rows' own bytes, sum(pg_column_size(row)))."""

    def __init__(self, url: str):
        self.url = url
        self.sqlite_path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
        if self.sqlite_path is None:
            from sqlalchemy import create_engine

            self.engine = create_engine(url)

    def snapshot(self) -> dict[str, tuple[int, int, int]]:
        """{table: (rows, data bytes, allocated bytes)}"""
        return self._sqlite() if self.sqlite_path else self._postgres()

    def _sqlite(self) -> dict:
        con = sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=30)
        try:
            owner = dict(con.execute("SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')"))
            tables = [t for t, kind in con.execute("SELECT name, type FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
            data, allocated = Counter(), Counter()
            for name, payload, size in con.execute("SELECT name, sum(payload), sum(pgsize) FROM dbstat GROUP BY name"):
                data[owner.get(name, name)] += payload or 0
                allocated[owner.get(name, name)] += size or 0
            return {t: (con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0], data[t], allocated[t]) for t in tables}
        finally:
            con.close()

    def _postgres(self) -> dict:
        from sqlalchemy import text

        with self.engine.connect() as con:
            tables = [r[0] for r in con.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))]
            out = {}
            for t in tables:
                rows, data = con.execute(text(f'SELECT count(*), coalesce(sum(pg_column_size(x.*)), 0) FROM "{t}" x')).one()
                out[t] = (rows, int(data), con.execute(text("SELECT pg_total_relation_size(:t)"), {"t": f'"{t}"'}).scalar())
            return out

    def file_bytes(self) -> int:
        if self.sqlite_path:
            return sum(p.stat().st_size for p in self.sqlite_path.parent.glob(self.sqlite_path.name + "*"))
        from sqlalchemy import text

        with self.engine.connect() as con:
            return con.execute(text("SELECT pg_database_size(current_database())")).scalar()


def outbox_count(outbox: Path) -> int:
    return sum(1 for _ in outbox.rglob("*.eml")) if outbox.exists() else 0


async def deal_histories(client, deal_id: str, tracking_numbers: list[str]) -> tuple[ActionCount, int]:
    """The deal's runs (following continue-as-new back), its children and its pickups' workflows: (their count, workflows)."""
    from temporalio.service import RPCError, RPCStatusCode

    total, seen, todo = ActionCount(), 0, [(f"deal-{deal_id}", None, False)] + [(f"pickup-{t}", None, True) for t in tracking_numbers]
    while todo:
        workflow_id, run_id, missing_ok = todo.pop()
        try:
            history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        except RPCError as error:
            if missing_ok and error.status == RPCStatusCode.NOT_FOUND:
                continue
            raise
        seen += 1
        total += count_actions(history)
        for event in history.events:
            kind = event_type_name(event)
            if kind == "WORKFLOW_EXECUTION_STARTED" and event.workflow_execution_started_event_attributes.continued_execution_run_id:
                todo.append((workflow_id, event.workflow_execution_started_event_attributes.continued_execution_run_id, False))
            elif kind == "CHILD_WORKFLOW_EXECUTION_STARTED":
                child = event.child_workflow_execution_started_event_attributes.workflow_execution
                if not child.workflow_id.startswith("pickup-") or child.workflow_id.removeprefix("pickup-") not in tracking_numbers:
                    todo.append((child.workflow_id, child.run_id, True))
    return total, seen


def per_deal(values: list[float]) -> str:
    return f"{statistics.median(values):.1f}" if len(set(values)) <= 1 else f"{statistics.median(values):.1f} [{min(values):.0f}-{max(values):.0f}]"


async def live_report(args) -> dict:
    from bench.http_load import LoadClient
    from bench.run import LIFECYCLE_PATHS, WEBHOOK_SECRET, WINDOW_APIS, book_and_ship, certify, complete_deal, drive_deal, ops_key, receive, settle, start_apis
    from bench.stack import Stack
    from settings import Settings
    from temporal_client import connect

    stack = Stack(file_backed=True, env_overrides={"TAKEBACK_CARRIER_WEBHOOK_SECRET": WEBHOOK_SECRET, "TAKEBACK_SIM_CARRIER_STEP": "0s"})
    if args.database_url:
        stack.env["TAKEBACK_DATABASE_URL"] = args.database_url
    backend = "PostgreSQL" if args.database_url else "SQLite"
    log(f"starting dev server (file-backed), worker and API; store on {backend}; load average {os.getloadavg()[0]:.2f}")
    stack.start()
    results: dict = {"backend": backend, "paths": {}}
    try:
        metrics_url = find_metrics_url(stack.processes["server"].pid)
        log(f"server metrics: {metrics_url or 'not found (queries and heartbeats will be missing)'}")
        settings = Settings(temporal_address=f"127.0.0.1:{stack.temporal_port}", data_dir=stack.data_dir, database_url=args.database_url or "",
                            carrier_webhook_secret=WEBHOOK_SECRET, sim_carrier_step="0s")
        client = await connect(settings)
        meter = StoreMeter(settings.effective_database_url)
        outbox = settings.effective_outbox_dir
        headers = {"Authorization": f"Bearer {ops_key(stack)}"}
        async with LoadClient(stack.api_url, headers=headers) as http, contextlib.AsyncExitStack() as clients:
            await certify(http)
            await complete_deal(http, -1)  # warm-up
            apis = {"main": http}
            for name, url in start_apis(stack, WINDOW_APIS).items():
                apis[name] = await clients.enter_async_context(LoadClient(url, headers=headers))

            async def warm(api) -> None:  # each API process warmed up on every call the paths make; the cancel leaves no timer
                deal_id = await book_and_ship(api)
                await receive(api, deal_id, 1)
                r = await api.post(f"/v1/deals/{deal_id}/cancel", json={"reason": "bench warm-up"})
                assert r.status_code == 200, r.text[:300]
                await client.get_workflow_handle(f"deal-{deal_id}").result()

            await asyncio.gather(*(warm(apis[name]) for name in WINDOW_APIS))
            api_process = {"main": "api", **{name: f"api_{name}" for name in WINDOW_APIS}}
            for path, spec in LIFECYCLE_PATHS.items():
                label, api, expected = spec.label, spec.api, spec.expected
                n = args.deals
                await settle(stack, quiet_for=args.quiet_for, label=f"before {path}")
                cpu0, actions0, store0, file0, mail0 = stack.cpu(), server_actions(metrics_url), meter.snapshot(), meter.file_bytes(), outbox_count(outbox)
                began = time.monotonic()
                semaphore = asyncio.Semaphore(12)
                requests = Counter()

                async def one() -> str:
                    deal_id = await drive_deal(apis[api], spec, semaphore)
                    requests["booking + pickup + 4 carrier events"] += 6
                    requests["receipt"] += len(spec.receipts)
                    return deal_id

                deal_ids = await asyncio.gather(*(one() for _ in range(n)))
                views = await asyncio.gather(*(client.get_workflow_handle(f"deal-{d}").result() for d in deal_ids))
                await settle(stack, quiet_for=args.quiet_for, label=f"after {path}")
                seconds = time.monotonic() - began
                cpu1, actions1, store1, file1, mail1 = stack.cpu(), server_actions(metrics_url), meter.snapshot(), meter.file_bytes(), outbox_count(outbox)
                off_path = []
                for view in views:
                    view = view if isinstance(view, dict) else view.model_dump(mode="json")
                    got = (view["status"], view["incentive"]["status"], len(view["reminders_sent"]))
                    if got != expected:
                        off_path.append(f"{view['id']}: {got}")
                counts = []
                for deal_id, view in zip(deal_ids, views):
                    view = view if isinstance(view, dict) else view.model_dump(mode="json")
                    counts.append(await deal_histories(client, deal_id, [p["tracking_number"] for p in view.get("pickups", []) if p.get("tracking_number")]))
                total = sum((c for c, _ in counts), ActionCount())
                server = actions1 - actions0
                not_in_history = Counter()
                for kind, value in server.items():
                    if kind in NOT_IN_HISTORY:
                        not_in_history[NOT_IN_HISTORY[kind]] += value
                server_total = sum(server.values())
                # The server's counter knows nothing of the TemporalChangeVersion exemption: take those off to compare.
                server_cloud = server_total - sum(total.exempt.values())
                history_plus = total.total + sum(not_in_history.values())
                per_table = {t: tuple(b - a for a, b in zip(store0.get(t, (0, 0, 0)), v)) for t, v in store1.items()}
                per_table = {t: v for t, v in per_table.items() if any(v)}
                row = results["paths"][path] = {
                    "label": label, "deals": n, "seconds": seconds, "off_path": off_path,
                    "actions_history": total.total / n, "by_type": {k: v / n for k, v in total.actions.items()},
                    "activities": {k: v / n for k, v in sorted(total.activity_types.items())},
                    "not_in_history": {k: v / n for k, v in not_in_history.items()},
                    "actions_cloud": history_plus / n, "server_action_metric": server_total / n, "server_action_metric_less_exempt": server_cloud / n,
                    "server_by_type": {k: v / n for k, v in server.items()},
                    "events": total.events / n, "events_each": [c.events for c, _ in counts], "history_bytes": total.bytes / n,
                    "workflows_per_deal": sum(w for _, w in counts) / n,
                    "store_rows": sum(v[0] for v in per_table.values()) / n, "store_data_bytes": sum(v[1] for v in per_table.values()) / n,
                    "store_allocated_bytes": sum(v[2] for v in per_table.values()) / n, "store_file_bytes": (file1 - file0) / n,
                    "per_table": {t: [x / n for x in v] for t, v in sorted(per_table.items())},
                    "emails_outbox": (mail1 - mail0) / n,
                    "emails_rows": (store1.get("emailmessage", (0,))[0] - store0.get("emailmessage", (0,))[0]) / n,
                    "http_requests": sum(requests.values()) / n,
                    "cpu_ms": {"server": (cpu1["server"] - cpu0["server"]) * 1000 / n, "worker": (cpu1["worker"] - cpu0["worker"]) * 1000 / n,
                               "api": (cpu1[api_process[api]] - cpu0[api_process[api]]) * 1000 / n},
                    "unknown": dict(total.unknown),
                }
                log(f"{path}: {n} deals in {seconds:.1f}s: {row['actions_cloud']:.1f} actions/deal ({row['actions_history']:.1f} in history + "
                    f"{sum(row['not_in_history'].values()):.1f} {'/'.join(row['not_in_history']) or 'none'}; server counter {row['server_action_metric']:.1f}, "
                    f"{row['server_action_metric_less_exempt']:.1f} less exempt), {row['events']:.1f} events, {row['history_bytes'] / 1000:.1f} KB history, "
                    f"{row['store_rows']:.1f} rows / {row['store_data_bytes'] / 1000:.1f} KB in the store, {row['emails_outbox']:.1f} e-mails"
                    + (f"; OFF PATH: {off_path[:3]}" if off_path else ""))
    finally:
        stack.stop()
    return results


def print_live(results: dict) -> None:
    print(f"\n== Real deals, file-backed dev server, store on {results['backend']} (per complete deal; load average now {os.getloadavg()[0]:.2f}) ==")
    head = f"{'path':44} {'actions':>7} {'in hist':>7} {'+q/hb':>5} {'server':>6} {'events':>6} {'hist KB':>7} {'rows':>5} {'data KB':>7} {'alloc KB':>8} {'mails':>5} {'CPU ms srv/wkr/API':>19}"
    print(head)
    for path, r in results["paths"].items():
        cpu = r["cpu_ms"]
        print(f"{path + ': ' + r['label']:44} {r['actions_cloud']:7.1f} {r['actions_history']:7.1f} {sum(r['not_in_history'].values()):5.1f} "
              f"{r['server_action_metric_less_exempt']:6.1f} {r['events']:6.1f} {r['history_bytes'] / 1000:7.1f} {r['store_rows']:5.1f} "
              f"{r['store_data_bytes'] / 1000:7.1f} {r['store_allocated_bytes'] / 1000:8.1f} {r['emails_outbox']:5.1f} "
              f"{cpu['server']:6.0f}/{cpu['worker']:4.0f}/{cpu['api']:4.0f}" + (f"  {len(r['off_path'])} OFF PATH" if r["off_path"] else ""))
    print("actions = in history (count_actions) + queries and heartbeats (server counter); server = the dev server's `action` counter less the exempt")
    print("TemporalChangeVersion upserts. Data KB: row payload bytes (SQLite dbstat / PostgreSQL pg_column_size); alloc KB: pages (pg_total_relation_size).")
    for path, r in results["paths"].items():
        by = ", ".join(f"{SHORT.get(k, k)} {v:g}" for k, v in sorted(r["by_type"].items(), key=lambda kv: -kv[1]))
        extra = ", ".join(f"{k} {v:g}" for k, v in r["not_in_history"].items())
        tables = ", ".join(f"{t} {v[0]:g}/{v[1] / 1000:.1f}KB" for t, v in sorted(r["per_table"].items(), key=lambda kv: -kv[1][1]) if v[0] or v[1] > 0)
        acts = ", ".join(f"{k} {v:g}" for k, v in r["activities"].items())
        print(f"  {path}: {by}; {extra}\n    activities: {acts}\n    store rows/data per table: {tables}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 deals per path (about 40 s)")
    parser.add_argument("--deals", type=int, help="deals per path (default 20, 3 with --quick)")
    parser.add_argument("--database-url", default="", help="the store on this database (PostgreSQL) instead of SQLite")
    parser.add_argument("--postgres", action="store_true", help="the store on a throwaway PostgreSQL cluster (tests/postgres.py)")
    parser.add_argument("--histories-only", action="store_true", help="only count the recorded histories")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    args.deals = args.deals or (3 if args.quick else 20)
    args.quiet_for = 1.0  # how long server, worker and API stay idle before and after each path (0.5 s let a warm-up deal's tail into the first path)
    out = {"recorded": recorded_report(), "load_average_start": os.getloadavg()}
    if not args.histories_only:
        if args.postgres:
            from tests.postgres import throwaway_postgres

            with throwaway_postgres() as url:
                args.database_url = url
                out["live"] = asyncio.run(live_report(args))
        else:
            out["live"] = asyncio.run(live_report(args))
        print_live(out["live"])
    out["load_average_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    log(f"done; load average {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
