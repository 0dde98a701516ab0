"""The worker's /healthz, /livez and /readyz (TAKEBACK_WORKER_HEALTH_ADDRESS), beside the SDK's
Prometheus endpoint (which the SDK's runtime owns and which serves /metrics alone).

- `/livez`, `/healthz`: the process runs and its worker has not shut down (a fatal poll error stops
  it): restart it otherwise.
- `/readyz`: the database answers, Temporal answers, and Temporal sees this worker's pollers on its
  workflow and activity queues (describe_task_queue, by this worker's identity). A healthy answer
  is reused for TAKEBACK_RESPONSE_CACHE, like the API's; an unhealthy one is asked again at once.
  Parts are "ok" or "down", never an address or an error text.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timedelta, timezone

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

PROBE_TIMEOUT = 2.0  # seconds, each part
# A poller waits up to a minute in a long poll; the server dates it from the poll's start.
POLLER_SEEN_WITHIN = timedelta(seconds=90)


class WorkerHealth:
    def __init__(self, client, worker, settings, identity: str):
        self.client, self.worker, self.settings, self.identity = client, worker, settings, identity
        self.cached: tuple[float, tuple[int, dict]] | None = None
        self.running: asyncio.Future | None = None

    def alive(self) -> bool:
        return not self.worker.is_shutdown

    async def ready(self) -> tuple[int, dict]:
        ttl = self.settings.response_cache_seconds
        if ttl > 0 and self.cached is not None and self.cached[0] > time.monotonic():
            return self.cached[1]
        if self.running is None or self.running.done():  # callers meanwhile share one check
            self.running = asyncio.ensure_future(self._check())
        answer = await asyncio.shield(self.running)
        if ttl > 0 and answer[0] == 200:
            self.cached = (time.monotonic() + ttl, answer)
        return answer

    async def _check(self) -> tuple[int, dict]:
        database, engine = await asyncio.gather(self._database(), self._engine())
        pollers = await self._pollers() if engine and self.worker.is_running else False
        parts = {"database": _ok(database), "temporal": _ok(engine), "pollers": _ok(pollers)}
        return (200 if database and engine and pollers else 503), {"status": "ok" if database and engine and pollers else "unavailable", **parts}

    async def _database(self) -> bool:
        from sqlalchemy import text

        from store.db import session_scope

        def query() -> None:
            with session_scope(self.settings.effective_database_url) as session:
                session.execute(text("SELECT 1"))

        try:
            await asyncio.wait_for(asyncio.to_thread(query), PROBE_TIMEOUT)
            return True
        except Exception:
            return False

    async def _engine(self) -> bool:
        try:
            await asyncio.wait_for(self.client.service_client.check_health(timeout=timedelta(seconds=PROBE_TIMEOUT)), PROBE_TIMEOUT)
            return True
        except Exception:
            return False

    async def _pollers(self) -> bool:
        """Temporal saw this worker poll both its queues lately."""
        return await queue_polled(self.client, self.settings.task_queue, self.identity) is True

    def app(self) -> Starlette:
        async def live(_request):
            alive = self.alive()
            return JSONResponse({"status": "ok" if alive else "stopped"}, status_code=200 if alive else 503)

        async def ready(_request):
            status, body = await self.ready()
            return JSONResponse(body, status_code=status, headers={} if status == 200 else {"Retry-After": "5"})

        return Starlette(routes=[Route("/livez", live), Route("/healthz", live), Route("/readyz", ready)])


async def queue_polled(client, task_queue: str, identity: str | None = None, timeout: float = PROBE_TIMEOUT) -> bool | None:
    """Whether Temporal saw a worker (the one of `identity`, else any) poll `task_queue` for workflow and
    for activity tasks within POLLER_SEEN_WITHIN (describe_task_queue); False when it cannot be asked,
    None when the server does not implement the call (the time-skipping test server): it cannot say."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
    from temporalio.service import RPCError, RPCStatusCode

    async def seen(kind) -> bool:
        request = DescribeTaskQueueRequest(namespace=client.namespace, task_queue=TaskQueue(name=task_queue), task_queue_type=kind)
        answer = await client.workflow_service.describe_task_queue(request, timeout=timedelta(seconds=timeout))
        since = datetime.now(timezone.utc) - POLLER_SEEN_WITHIN
        return any((identity is None or poller.identity == identity) and poller.last_access_time.ToDatetime(timezone.utc) >= since for poller in answer.pollers)

    try:
        return all(await asyncio.gather(seen(TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW), seen(TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)))
    except RPCError as error:
        return None if error.status == RPCStatusCode.UNIMPLEMENTED else False
    except Exception:
        return False


def _ok(value: bool) -> str:
    return "ok" if value else "down"


class _EmbeddedServer:
    """uvicorn serving in the worker's own event loop, leaving its signal handlers to the worker."""

    def __init__(self, app, host: str, port: int):
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):  # the worker's SIGTERM handler drains it; uvicorn must not take it over
                yield

        self.server = Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", access_log=False))
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()  # the port is taken: say so
                raise RuntimeError("the health server stopped while starting")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await self.task


async def serve_health(health: WorkerHealth, address: str) -> _EmbeddedServer:
    from settings import parse_host_port

    host, port = parse_host_port(address)
    server = _EmbeddedServer(health.app(), host, port)
    await server.start()
    return server
