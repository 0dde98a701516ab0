import asyncio
from datetime import timedelta

from fastapi import APIRouter, Request
from sqlalchemy import text

from api.deps import SettingsDep, temporal
from api.problems import Problem
from store.db import session_scope

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="200 when the database and Temporal are reachable, else 503")
async def healthz(request: Request, settings: SettingsDep) -> dict:
    def database() -> None:
        with session_scope(settings.effective_database_url) as session:
            session.execute(text("SELECT 1"))

    try:
        await asyncio.to_thread(database)
    except Exception as error:
        raise Problem(503, f"database unreachable: {error.__class__.__name__}", "database-unavailable") from None
    client = request.app.state.temporal
    try:
        await temporal(client.service_client.check_health(timeout=timedelta(seconds=2)), timeout=3)
    except Problem:
        raise
    except Exception as error:
        raise Problem(503, f"temporal unreachable: {error}", "temporal-unavailable", headers={"Retry-After": "5"}) from None
    return {"status": "ok", "database": "ok", "temporal": "ok"}
