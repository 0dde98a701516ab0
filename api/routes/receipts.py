import hashlib
from typing import Annotated

from fastapi import APIRouter, Header
from pydantic import BaseModel

from api.deps import CallerDep, ClientDep, SettingsDep, owned_deal, require_ops
from api.routes.deals import _deal_update
from domain.models import ReceiptRequest
from service import deals as service

router = APIRouter(prefix="/v1/deals", tags=["receipts"])


class Rejected(BaseModel):
    serial_number: str
    reason: str


class Accepted(BaseModel):
    serial_number: str
    disposition: str


class ReceiptResult(BaseModel):
    accepted: int
    rejected: list[Rejected]
    items: list[Accepted]


@router.post("/{deal_id}/receipts", response_model=ReceiptResult, summary="Items scanned at the returns facility (ops)")
async def record_receipt(
    deal_id: str, body: ReceiptRequest, caller: CallerDep, settings: SettingsDep, client: ClientDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> ReceiptResult:
    await owned_deal(settings, caller, deal_id)
    require_ops(caller, "recording receipts")
    batch_id = None
    if idempotency_key:  # the same receipt posted twice is processed once
        batch_id = f"{deal_id}-k" + hashlib.sha256(f"{caller.key_id}:{idempotency_key}".encode()).hexdigest()[:20]
    return await _deal_update(service.record_receipt(client, settings, deal_id, body.items, batch_id=batch_id))
