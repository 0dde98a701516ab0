import asyncio
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CallerDep, SettingsDep, require_partner_access
from domain.catalog import default_catalog
from store.db import session_scope
from store.reports import impact

router = APIRouter(prefix="/v1/reports", tags=["reports"])


@router.get("/impact", summary="Units and kg returned, dispositions, trees, incentives (a partner sees its own)")
async def impact_report(caller: CallerDep, settings: SettingsDep, partner_id: Annotated[str | None, Query(max_length=64)] = None) -> dict:
    if not caller.is_ops:
        if partner_id is not None:
            require_partner_access(caller, partner_id)
        partner_id = caller.partner_id

    def build():
        with session_scope(settings.effective_database_url) as session:
            return impact(session, default_catalog(), partner_id)

    return await asyncio.to_thread(build)
