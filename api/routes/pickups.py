from typing import Annotated

from fastapi import APIRouter, Header, Request

from api.deps import CallerDep, ClientDep, SettingsDep, owned_deal
from api.idempotency import Action, once
from api.routes.deals import _deal_update
from domain.models import DealId, PickupRequest, PickupView
from service import deals as service

router = APIRouter(prefix="/v1/deals", tags=["pickups"])


@router.post("/{deal_id}/pickups", status_code=201, response_model=PickupView, summary="Ask for a collection: the carrier is booked (ops or owner)")
async def request_pickup(
    deal_id: DealId, body: PickupRequest, caller: CallerDep, settings: SettingsDep, client: ClientDep, request: Request,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
):
    deal = await owned_deal(settings, caller, deal_id)
    # No address or contact in the audit: personal data stays with the pickup.
    action = Action("pickup", deal_id=deal_id, partner_id=deal.partner_id, detail={"expected_units": body.expected_units, "ready_on": str(body.ready_on)})

    async def run(request_id: str | None) -> PickupView:  # a retry with the key books one pickup
        view = await _deal_update(service.request_pickup(client, deal_id, body, request_id=request_id, settings=settings, ops=caller.is_ops))
        action.detail["pickup_id"] = view.id
        return view

    return await once(
        request, caller, settings, key=idempotency_key, body=body, status_code=201, action=action, run=run,
        derive=lambda: f"pickup-{caller.key_id}-{idempotency_key}",
    )
