"""`/livez`, `/readyz` and `/healthz`: which part is down, never where it is.

- `/livez` (the supervisor's probe: restart me?): the process answers at all. A database or engine
  outage is no reason to restart an API process, so nothing else is checked.
- `/readyz` (the load balancer's probe: send me traffic?): the database and the workflow engine
  answer, and a worker polls the deals' task queue (describe_task_queue: Temporal saw one poll for
  workflow and for activity tasks lately). Without a worker every booking, pickup and receipt would
  wait and end in a 503, so an API process is not ready either.
- `/healthz`: the v1 contract's check (the database and Temporal reachable), as before.

A healthy answer is reused for `TAKEBACK_RESPONSE_CACHE` (1 s): a flood of health checks, or a
load balancer per API process, costs one database query and one engine round trip a second. The
callers that arrive while a check runs share it, healthy or not; an unhealthy answer is not kept,
so a part coming back shows at once. What Temporal says about the queue's pollers, present or not,
is kept for POLLERS_CACHE, so probes while no worker runs cost the engine two describes per period.
"""

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import SettingsDep, engine_answers
from api.problems import problem_response
from observability.worker_health import queue_polled
from store.db import session_scope

router = APIRouter(tags=["health"])
DATABASE_TIMEOUT = 3.0  # seconds
ENGINE_TIMEOUT = 2.0
POLLERS_CACHE = 5.0  # seconds an answer about the deals' queue's pollers is reused, whatever it was


async def workers_poll(request: Request, settings) -> bool:
    """A worker polls the deals' task queue, as Temporal saw it at most POLLERS_CACHE ago. A server
    that cannot say (the time-skipping test server) counts as yes: readiness fails on evidence only."""
    state = request.app.state
    cached = getattr(state, "pollers_answer", None)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    polled = await queue_polled(state.temporal, settings.task_queue) is not False
    state.pollers_answer = (time.monotonic() + POLLERS_CACHE, polled)
    return polled


async def check(request: Request, settings, workers: bool = False) -> tuple[int, dict]:
    """(HTTP status, body): each part "ok" or "down" (with `workers`, also whether a worker polls the
    deals' queue). Errors are not passed on: they name hosts and ports."""

    def query() -> None:
        with session_scope(settings.effective_database_url) as session:
            session.execute(text("SELECT 1"))

    async def database() -> bool:
        try:
            await asyncio.wait_for(asyncio.to_thread(query), DATABASE_TIMEOUT)
            return True
        except Exception:
            return False

    database_ok, engine_ok = await asyncio.gather(database(), engine_answers(request.app.state.temporal, ENGINE_TIMEOUT))
    parts = {"database": "ok" if database_ok else "down", "temporal": "ok" if engine_ok else "down"}
    if database_ok and engine_ok:
        if workers and not await workers_poll(request, settings):
            return 503, {"kind": "worker-unavailable", "detail": "no worker polls the deals' task queue: deals would not move", **parts, "workers": "down"}
        return 200, {"status": "ok", **parts}
    down = [name for name, ok in (("the database", database_ok), ("the workflow engine", engine_ok)) if not ok]
    kind = "database-unavailable" if not database_ok else "temporal-unavailable"
    return 503, {"kind": kind, "detail": f"{' and '.join(down)} {'is' if len(down) == 1 else 'are'} unreachable", **parts}


@router.get("/healthz", summary="200 when the database and Temporal are reachable, else 503 naming the part that is down")
async def healthz(request: Request, settings: SettingsDep):
    return await _checked(request, settings, "healthz")


@router.get("/readyz", summary="Readiness, a load balancer's probe: the database and Temporal reachable and a worker polling the deals' queue, else 503")
async def readyz(request: Request, settings: SettingsDep):
    return await _checked(request, settings, "readyz")


@router.get("/livez", summary="Liveness (restart me?): 200 while the process serves, whatever its dependencies")
async def livez():
    # A database or engine outage must not get every API process restarted: only readiness checks them.
    return JSONResponse({"status": "ok"})


async def _checked(request: Request, settings, probe: str):
    state = request.app.state
    ttl = settings.response_cache_seconds
    answers, checks = _per_probe(state, "health_answers"), _per_probe(state, "health_checks")
    cached = answers.get(probe)
    if ttl > 0 and cached is not None and cached[0] > time.monotonic():
        status, body = cached[1]
    else:
        running = checks.get(probe)
        if running is None or running.done():
            running = checks[probe] = asyncio.ensure_future(check(request, settings, workers=probe == "readyz"))
        status, body = await asyncio.shield(running)
        if ttl > 0 and status == 200:  # a part that is down is asked again: its return shows at once
            answers[probe] = (time.monotonic() + ttl, (status, body))
    if status == 200:
        return JSONResponse(body)
    body = dict(body)
    kind, detail = body.pop("kind"), body.pop("detail")
    return problem_response(503, detail, kind, headers={"Retry-After": "5"}, **body)


def _per_probe(state, name: str) -> dict:
    if getattr(state, name, None) is None:
        setattr(state, name, {})
    return getattr(state, name)
