from typing import Annotated

from fastapi import APIRouter, Header

from api.deps import CallerDep, ClientDep, SettingsDep, owned_deal
from api.routes.deals import _deal_update
from domain.models import PickupRequest, PickupView
from service import deals as service

router = APIRouter(prefix="/v1/deals", tags=["pickups"])


@router.post("/{deal_id}/pickups", status_code=201, response_model=PickupView, summary="Ask for a collection: the carrier is booked (ops or owner)")
async def request_pickup(
    deal_id: str, body: PickupRequest, caller: CallerDep, settings: SettingsDep, client: ClientDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> PickupView:
    await owned_deal(settings, caller, deal_id)
    request_id = f"pickup-{caller.key_id}-{idempotency_key}" if idempotency_key else None  # a retry books one pickup
    return await _deal_update(service.request_pickup(client, deal_id, body, request_id=request_id))
