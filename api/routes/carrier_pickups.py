"""A pickup as booked with the carrier: its booking (attempts and last error while a provider outage
lasts, the window, the parcel estimate, the confirmation) and its return label (TAKEBACK_CARRIER=easypost)."""

import asyncio
from datetime import date, datetime

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import CallerDep, SettingsDep, owned_deal
from api.problems import Problem, not_found
from domain.models import DealId
from service.pickup_address import provider_words
from store.db import session_scope
from store.tables import CarrierPickup, Pickup

router = APIRouter(prefix="/v1/deals", tags=["pickups"])
STILL_BOOKING = "the carrier could not book this pickup yet; it is being retried, and ops can see why"


class PickupBooking(BaseModel):
    id: str
    deal_id: str
    status: str  # the carrier's latest status (as on the deal), or `booking` until the carrier is booked
    provider: str  # sim | easypost
    booking_state: str  # booking | booked | cancel_requested | cancelled
    carrier: str | None
    tracking_number: str | None
    attempts: int  # booking attempts so far (an outage: several, with the last one's error)
    last_error: str | None  # the provider's words for ops; a partner is told that the booking is being retried
    last_attempt_at: datetime | None
    window_start: date | None  # the carrier collects between these business days
    window_end: date | None
    parcel_kind: str | None  # parcel | pallet, estimated from the committed products' weights
    weight_kg: float | None
    confirmation: str | None  # the carrier's pickup confirmation
    label_url: str | None


class ReturnLabel(BaseModel):
    pickup_id: str
    carrier: str
    tracking_number: str
    label_url: str  # the provider's file (PDF or ZPL): print it, stick it on the box; also for a drop-off
    label_format: str | None


def _load(settings, deal_id: str, pickup_id: str) -> tuple[Pickup | None, CarrierPickup | None]:
    with session_scope(settings.effective_database_url) as session:
        pickup, booking = session.get(Pickup, pickup_id), session.get(CarrierPickup, pickup_id)
    if pickup is not None and pickup.deal_id != deal_id:
        pickup = None
    if booking is not None and booking.deal_id != deal_id:
        booking = None
    return pickup, booking


async def _found(settings, caller, deal_id: str, pickup_id: str) -> tuple[Pickup | None, CarrierPickup | None]:
    await owned_deal(settings, caller, deal_id)
    pickup, booking = await asyncio.to_thread(_load, settings, deal_id, pickup_id)
    if pickup is None and booking is None:
        raise not_found(f"pickup {pickup_id} of deal {deal_id}")
    return pickup, booking


@router.get("/{deal_id}/pickups/{pickup_id}", response_model=PickupBooking, summary="A pickup's booking with the carrier (ops or owner)")
async def pickup_booking(deal_id: DealId, pickup_id: DealId, caller: CallerDep, settings: SettingsDep):
    pickup, booking = await _found(settings, caller, deal_id, pickup_id)
    if booking is None:  # the simulated carrier books at once
        return PickupBooking(
            id=pickup.id, deal_id=deal_id, status=pickup.status, provider="sim", booking_state="booked", carrier=pickup.carrier, tracking_number=pickup.tracking_number,
            attempts=1, last_error=None, last_attempt_at=pickup.created_at, window_start=None, window_end=None, parcel_kind=None, weight_kg=None,
            confirmation=None, label_url=None,
        )
    return PickupBooking(
        id=booking.pickup_id, deal_id=deal_id, status=pickup.status if pickup is not None else "booking", provider=booking.provider, booking_state=booking.state,
        carrier=pickup.carrier if pickup is not None else booking.carrier, tracking_number=booking.tracking_code, attempts=booking.attempts,
        last_error=provider_words(booking.last_error, ops=caller.is_ops, otherwise=STILL_BOOKING), last_attempt_at=booking.last_attempt_at, window_start=date.fromisoformat(booking.window_start),
        window_end=date.fromisoformat(booking.window_end), parcel_kind=booking.parcel_kind, weight_kg=booking.weight_kg, confirmation=booking.confirmation,
        label_url=booking.label_url,
    )


@router.get("/{deal_id}/pickups/{pickup_id}/label", response_model=ReturnLabel, summary="A pickup's return label, for a self-drop-off too (ops or owner)")
async def return_label(deal_id: DealId, pickup_id: DealId, caller: CallerDep, settings: SettingsDep):
    pickup, booking = await _found(settings, caller, deal_id, pickup_id)
    if booking is None or not booking.label_url or not booking.tracking_code:
        raise Problem(404, f"pickup {pickup_id} has no return label" + (" yet: its booking is under way" if booking is not None else " (the simulated carrier prints none)"), "label-not-available")
    return ReturnLabel(pickup_id=pickup_id, carrier=pickup.carrier if pickup is not None else f"EasyPost/{booking.carrier}", tracking_number=booking.tracking_code,
                       label_url=booking.label_url, label_format=booking.label_format)
