"""The worker: runs the deal and pickup workflows and their activities until SIGTERM."""

import asyncio
import hashlib
import logging
import os
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import PollerBehaviorSimpleMaximum, UnsandboxedWorkflowRunner, Worker, WorkerDeploymentConfig
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.deal_activities import TakebackActivities
from activities.partner_activities import PartnerActivities
from activities.tracking_poll import TrackingPollActivities
from observability.logs import temporal_core_logging
from observability.worker_metrics import ActivityFailureCounter
from settings import Settings, get_settings
from temporal_client import connect
from service.replay import WORKFLOWS  # what this worker runs is what a deploy's replay checks: one list
from workflows.notices import mail_task_queue
from workflows.tracking_poll import ensure_tracking_poll_schedule

WORKFLOW_TASK_POLLS = 16
SCHEDULE_TO_START_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2.5, 5, 10, 30, 60]
log = logging.getLogger("takeback.worker")


def write_workflow_bytecode(workflows: list) -> None:
    """With the sandbox on, a workflow's module is imported afresh for every workflow run. Without a .pyc
    (PYTHONDONTWRITEBYTECODE, a read-only image) that meant compiling its source each time: a fifth
    of the worker's CPU per booked deal. py_compile writes it regardless; a no-op when up to date."""
    import compileall

    for path in {sys.modules[workflow.__module__].__file__ for workflow in workflows}:
        compileall.compile_file(path, quiet=2)  # a read-only tree: False, and they compile on each import


# This project's modules (py-modules and packages in pyproject.toml): what an unversioned worker's build id hashes.
PROJECT_MODULES = frozenset({"activities", "api", "codec", "domain", "observability", "service", "settings", "store", "temporal_client", "worker", "workflows"})


def code_build_id() -> str:
    """The build id an unversioned worker reports (it is recorded in each workflow task it completes):
    a hash of the source of this project's loaded modules. Given none, the SDK hashed the bytecode of
    every loaded module (~1,000 files read and unmarshalled): 0.15-0.2 s of every worker start, on
    the way to its first poll after a restart."""
    digest = hashlib.md5(usedforsecurity=False)
    for name in sorted(sys.modules):
        path = getattr(sys.modules[name], "__file__", None) if name.split(".")[0] in PROJECT_MODULES else None
        if path and path.endswith(".py"):
            digest.update(name.encode())
            with open(path, "rb") as source:
                digest.update(source.read())
    return f"src-{digest.hexdigest()[:16]}"


def deployment_config(settings: Settings) -> WorkerDeploymentConfig:
    """With TAKEBACK_BUILD_ID: this worker is that version of the deployment TAKEBACK_DEPLOYMENT_NAME, and
    a workflow stays on the version it started on (pinned) until it continues as new (a deal does so
    onto the current version: AUTO_UPGRADE). Without: an unversioned worker, as before, named by
    `code_build_id`. Both queues of a worker (deals, mail) are the same version, so a pinned deal's
    mail goes to its own version's workers."""
    if settings.build_id:
        return WorkerDeploymentConfig(
            version=WorkerDeploymentVersion(settings.deployment_name, settings.build_id),
            use_worker_versioning=True,
            default_versioning_behavior=VersioningBehavior.PINNED,
        )
    return WorkerDeploymentConfig(version=WorkerDeploymentVersion(settings.deployment_name, code_build_id()), use_worker_versioning=False)


def worker_identity(task_queue: str) -> str:
    """Host, process and queue: which worker ran a task, in history and among a queue's pollers."""
    return f"takeback-worker@{socket.gethostname()}:{os.getpid()}:{task_queue}"


# Mail attempts at once on the mail queue: at the provider's pace (10/s), a few calls are in flight.
MAIL_CONCURRENCY = 8


class DealWorker(Worker):
    """The worker of the deals' queue with the worker of their mail queue beside it (`mail`), run and
    stopped together by `async with`: every caller of `build_worker` (the worker process, tests,
    benchmarks) gets mail served without knowing there are two queues."""

    mail: Worker

    async def __aenter__(self) -> "DealWorker":
        await self.mail.__aenter__()
        try:
            await super().__aenter__()
        except BaseException:
            await self.mail.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, exc_type, *args) -> None:
        try:
            await super().__aexit__(exc_type, *args)
        finally:
            await self.mail.__aexit__(exc_type, *args)


def build_mail_worker(
    client: Client, settings: Settings, activities: TakebackActivities, executor: ThreadPoolExecutor | None, interceptors: list, deployment: WorkerDeploymentConfig | None = None
) -> Worker:
    """Deals' mail (workflows.notices.mail_task_queue), handed out by the server at TAKEBACK_MAIL_RATE
    for the whole queue: a storm of reminders and notices drains at the provider's pace, each call
    mostly answered 202 rather than 429, and none of it waits in line before a decision's writes."""
    rate = settings.mail_rate_per_second
    queue = mail_task_queue(settings.task_queue)
    return Worker(
        client,
        task_queue=queue,
        activities=[activities.send_reminder, activities.notify_settlement, activities.escalate_pickup],
        activity_executor=executor or ThreadPoolExecutor(max_workers=MAIL_CONCURRENCY),
        max_concurrent_activities=MAIL_CONCURRENCY,
        max_task_queue_activities_per_second=rate or None,
        identity=worker_identity(queue),
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_drain_seconds),
        interceptors=interceptors,
        deployment_config=deployment or deployment_config(settings),
    )


def build_worker(
    client: Client,
    settings: Settings,
    activities: TakebackActivities | None = None,
    executor: ThreadPoolExecutor | None = None,
    extra_workflows: list | None = None,
    extra_activities: list | None = None,
) -> Worker:
    """`extra_*` let benchmarks run a baseline workflow on the very same worker."""
    activities = activities or TakebackActivities(settings)
    workflows = WORKFLOWS + (extra_workflows or [])
    if settings.workflow_sandbox:
        write_workflow_bytecode(workflows)
    deployment = deployment_config(settings)
    worker = DealWorker(
        client,
        task_queue=settings.task_queue,
        workflows=workflows,
        activities=activities.all() + PartnerActivities(activities).all() + TrackingPollActivities(settings).all() + (extra_activities or []),
        # Store and mail activities are blocking calls: they run on threads.
        activity_executor=executor or ThreadPoolExecutor(max_workers=32),
        max_concurrent_activities=32,
        # New deals arrive on the normal queue, which by default gets one of five pollers: a burst
        # of bookings then waited on one poll round trip per deal (~50 deals/s, the CPU idle).
        workflow_task_poller_behavior=PollerBehaviorSimpleMaximum(maximum=WORKFLOW_TASK_POLLS),
        nonsticky_to_sticky_poll_ratio=0.5,
        workflow_runner=SandboxedWorkflowRunner() if settings.workflow_sandbox else UnsandboxedWorkflowRunner(),
        identity=worker_identity(settings.task_queue),
        # Deals kept in memory (TAKEBACK_WORKER_CACHE): a storm's deals stay cached instead of replaying on each task.
        max_cached_workflows=settings.worker_cache,
        # The cached deals of a worker that died unannounced (SIGKILL, OOM) are stuck on its sticky
        # queue until this passes; then any worker replays them from the normal queue. A worker that
        # stops cleanly tells the server, and its tasks move at once.
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=settings.sticky_schedule_to_start_seconds),
        # SIGTERM: stop polling, let running activities finish for this long, then cancel them.
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_drain_seconds),
        # Failed activity attempts by error type, on the metrics endpoint (observability/worker_metrics.py).
        interceptors=[ActivityFailureCounter()],
        deployment_config=deployment,
    )
    # The deals' queue keeps the mail activities too: deals begun before the mail queue send mail there.
    worker.mail = build_mail_worker(client, settings, activities, executor, [ActivityFailureCounter()], deployment)
    return worker


async def purge_personal_data_periodically(settings: Settings) -> None:
    """Anonymise, every TAKEBACK_PURGE_EVERY, the personal data older than the retention (README,
    Security). Every worker does it: the purge is idempotent, so two at once change nothing twice."""
    from datetime import datetime, timezone

    from store import retention as store
    from store.db import session_scope

    def purge():
        before = datetime.now(timezone.utc) - timedelta(seconds=settings.personal_data_retention_seconds)
        with session_scope(settings.effective_database_url) as session:
            return store.purge_personal_data(session, before)

    while settings.purge_every_seconds > 0:
        try:
            counts = await asyncio.to_thread(purge)
            log.info("personal data purge: %s", counts)
        except Exception:  # a store outage: try again next round
            log.exception("personal data purge failed; will try again")
        await asyncio.sleep(settings.purge_every_seconds)


def worker_runtime(settings: Settings) -> Runtime | None:
    """The SDK's runtime: serving Prometheus on TAKEBACK_WORKER_METRICS_ADDRESS (its own metrics: task
    latencies, slots, pollers, failures; and the project's counters, observability/worker_metrics.py),
    its core's log lines in JSON when asked. None: the default runtime does."""
    if not settings.worker_metrics_address and settings.log_format != "json":
        return None
    prometheus = None
    if settings.worker_metrics_address:
        prometheus = PrometheusConfig(
            bind_address=settings.worker_metrics_address, counters_total_suffix=True, durations_as_seconds=True, unit_suffix=True,
            # A bucket at 200 ms, the schedule-to-start alert's threshold (deploy/prometheus): the SDK's jump from 100 to 500 ms.
            histogram_bucket_overrides={"workflow_task_schedule_to_start_latency": SCHEDULE_TO_START_BUCKETS},
        )
    return Runtime(telemetry=TelemetryConfig(metrics=prometheus, logging=temporal_core_logging(settings.log_format)))


async def run_worker(settings: Settings | None = None, **extras) -> None:
    settings = settings or get_settings()
    settings.require_safe_to_start("takeback worker")  # also when started without the CLI (its own check)
    runtime = worker_runtime(settings)
    client = await connect(settings, **({"runtime": runtime} if runtime else {}))
    with ThreadPoolExecutor(max_workers=32) as executor:
        worker = build_worker(client, settings, executor=executor, **extras)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        version = f"version {settings.deployment_name}.{settings.build_id}" if settings.build_id else "unversioned"
        log.info("worker polling %s on %s (%s), %s", settings.task_queue, settings.temporal_address, settings.temporal_namespace, version)
        purging = asyncio.create_task(purge_personal_data_periodically(settings))
        async with worker:
            # The tracking poll, a fallback for lost webhooks: one schedule, made or updated here, once the
            # worker polls (its round trips are no part of a restarted worker's way back to its deals).
            if settings.carrier == "easypost":
                await ensure_tracking_poll_schedule(client, settings)
            health = None
            if settings.worker_health_address:
                from observability.worker_health import WorkerHealth, serve_health  # Starlette: only when served

                health = await serve_health(WorkerHealth(client, worker, settings, worker_identity(settings.task_queue)), settings.worker_health_address)
            await stop.wait()
            log.info("stopping: finishing in-flight tasks")
            purging.cancel()
            if health is not None:
                await health.stop()
        log.info("worker stopped")


def main() -> None:
    from observability import tracing
    from observability.logs import configure_worker_logging

    settings = get_settings()
    # The worker logs mail failures and activity errors: as the API's, its lines carry no keys or
    # e-mail addresses and cannot be forged (api/logsafe.py); in JSON with the deal's and workflow's ids.
    configure_worker_logging(settings.log_format)
    tracing.configure(settings, "takeback-worker")
    asyncio.run(run_worker(settings))
    tracing.shutdown()  # os._exit below skips the exporter's own exit hook
    # Stopped cleanly, nothing left in flight. Leave without interpreter teardown: the SDK core's
    # runtime threads can outlive it and abort the process (SIGABRT, seen once in a full test
    # run), which a supervisor would count as a crash.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
