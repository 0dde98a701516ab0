"""`/healthz` and `/readyz`: which part is down (the database, the workflow engine), never where it
is; `/livez`: the process answers at all. Orchestrators probe liveness with /livez (restarting an API
process cures no database outage) and readiness with /readyz; /healthz is the v1 contract's name
for the same check as /readyz.

A healthy answer is reused for `TAKEBACK_RESPONSE_CACHE` (1 s): a flood of health checks, or a
load balancer per API process, costs one database query and one engine round trip a second. The
callers that arrive while a check runs share it, healthy or not; an unhealthy answer is not kept,
so a part coming back shows at once.
"""

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import SettingsDep, engine_answers
from api.problems import problem_response
from store.db import session_scope

router = APIRouter(tags=["health"])
DATABASE_TIMEOUT = 3.0  # seconds
ENGINE_TIMEOUT = 2.0


async def check(request: Request, settings) -> tuple[int, dict]:
    """(HTTP status, body): each part "ok" or "down". Errors are not passed on: they name hosts and ports."""

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
        return 200, {"status": "ok", **parts}
    down = [name for name, ok in (("the database", database_ok), ("the workflow engine", engine_ok)) if not ok]
    kind = "database-unavailable" if not database_ok else "temporal-unavailable"
    return 503, {"kind": kind, "detail": f"{' and '.join(down)} {'is' if len(down) == 1 else 'are'} unreachable", **parts}


@router.get("/healthz", summary="200 when the database and Temporal are reachable, else 503 naming the part that is down")
async def healthz(request: Request, settings: SettingsDep):
    return await _checked(request, settings)


@router.get("/readyz", summary="Readiness (send traffic here?): as /healthz, the database and Temporal reachable, else 503")
async def readyz(request: Request, settings: SettingsDep):
    return await _checked(request, settings)


@router.get("/livez", summary="Liveness (restart me?): 200 while the process serves, whatever its dependencies")
async def livez():
    # A database or engine outage must not get every API process restarted: only readiness checks them.
    return JSONResponse({"status": "ok"})


async def _checked(request: Request, settings):
    state = request.app.state
    ttl = settings.response_cache_seconds
    cached = getattr(state, "health_answer", None)
    if ttl > 0 and cached is not None and cached[0] > time.monotonic():
        status, body = cached[1]
    else:
        running = getattr(state, "health_check", None)
        if running is None or running.done():
            running = state.health_check = asyncio.ensure_future(check(request, settings))
        status, body = await asyncio.shield(running)
        if ttl > 0 and status == 200:  # a part that is down is asked again: its return shows at once
            state.health_answer = (time.monotonic() + ttl, (status, body))
    if status == 200:
        return JSONResponse(body)
    body = dict(body)
    kind, detail = body.pop("kind"), body.pop("detail")
    return problem_response(503, detail, kind, headers={"Retry-After": "5"}, **body)
