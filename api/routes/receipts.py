import hashlib
from typing import Annotated

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel

from api.deps import CallerDep, ClientDep, SettingsDep, owned_deal, require_ops
from api.idempotency import Action, once
from api.routes.deals import _deal_update
from domain.models import DealId, ReceiptRequest
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


def keyed_batch_id(deal_id: str, key_id: int, idempotency_key: str) -> str:
    """The batch a keyed receipt stages: every retry re-drives this one batch (the key's record keeps it)."""
    return f"{deal_id}-k" + hashlib.sha256(f"{key_id}:{idempotency_key}".encode()).hexdigest()[:20]


@router.post("/{deal_id}/receipts", response_model=ReceiptResult, summary="Items scanned at the returns facility (ops)")
async def record_receipt(
    deal_id: DealId, body: ReceiptRequest, caller: CallerDep, settings: SettingsDep, client: ClientDep, request: Request,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
):
    deal = await owned_deal(settings, caller, deal_id)
    require_ops(caller, "recording receipts")
    action = Action("receipts", deal_id=deal_id, partner_id=deal.partner_id, detail={"items": len(body.items)})

    async def run(batch_id: str | None) -> ReceiptResult:
        # Without a key, the same items posted again are the same batch (the service derives its id).
        result = ReceiptResult.model_validate(await _deal_update(service.record_receipt(client, settings, deal_id, body.items, batch_id=batch_id)))
        action.detail.update(accepted=result.accepted, rejected=len(result.rejected))
        return result

    return await once(
        request, caller, settings, key=idempotency_key, body=body, status_code=200, action=action, run=run,
        derive=lambda: keyed_batch_id(deal_id, caller.key_id, idempotency_key),
    )
