import hashlib
from typing import Annotated

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, model_validator

import asyncio

from api.certificates import actor_of
from api.deps import CallerDep, ClientDep, SettingsDep, owned_deal, require_ops
from api.problems import Problem
from api.idempotency import Action, once
from api.routes.deals import _deal_update
from domain.models import DealId, ReceiptRequest
from domain.reasons import rejection_code
from service import deals as service
from store import deals as store
from store.db import session_scope

router = APIRouter(prefix="/v1/deals", tags=["receipts"])


class Rejected(BaseModel):
    serial_number: str
    reason: str
    reason_code: str | None = None  # domain.reasons.RejectionReason: duplicate_in_receipt | already_returned | not_listed

    @model_validator(mode="after")
    def _code(self) -> "Rejected":
        if self.reason_code is None:
            self.reason_code = rejection_code(self.reason).value
        return self


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
    custody = {"actor": actor_of(caller), "facility": body.facility, "operator": body.operator, "tracking_number": body.tracking_number, "pickup_id": None}
    if body.tracking_number is not None:
        custody["pickup_id"] = await _pickup_of(settings, deal_id, body.tracking_number)

    async def run(batch_id: str | None) -> ReceiptResult:
        # Without a key, the same items posted again are the same batch (the service derives its id).
        result = ReceiptResult.model_validate(await _deal_update(service.record_receipt(client, settings, deal_id, body.items, batch_id=batch_id, custody=custody)))
        action.detail.update(accepted=result.accepted, rejected=len(result.rejected))
        return result

    return await once(
        request, caller, settings, key=idempotency_key, body=body, status_code=200, action=action, run=run,
        derive=lambda: keyed_batch_id(deal_id, caller.key_id, idempotency_key),
    )


async def _pickup_of(settings, deal_id: str, tracking_number: str) -> str:
    """The pickup of this deal with that tracking number (the box the items came in), else 422."""

    def find():
        with session_scope(settings.effective_database_url) as session:
            return store.find_pickup_by_tracking(session, tracking_number)

    pickup = await asyncio.to_thread(find)
    if pickup is None or pickup.deal_id != deal_id:
        raise Problem(422, f"tracking number {tracking_number} is not a pickup of deal {deal_id}", "unknown-tracking-number")
    return pickup.id
