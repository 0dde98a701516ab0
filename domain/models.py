"""Pydantic models shared by the API, the workflows and the activities.

Workflow inputs and results carry ids and counts only: serial lists live in the store.
"""

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_SERIALS_PER_BOOKING = 50_000
MAX_RECEIPT_ITEMS = 5_000

ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
ProductId = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]
Serial = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]


class Opportunity(StrEnum):
    refresh = "refresh"
    migration = "migration"


class IncentiveMode(StrEnum):
    rebate = "rebate"
    upfront = "upfront"


class DealStatus(StrEnum):
    awaiting_returns = "awaiting_returns"
    condition_met = "condition_met"
    closed = "closed"
    expired = "expired"
    cancelled = "cancelled"


OPEN_DEAL_STATUSES = (DealStatus.awaiting_returns, DealStatus.condition_met)


class IncentiveStatus(StrEnum):
    held = "held"
    released = "released"
    forfeited = "forfeited"
    applied = "applied"
    clawed_back = "clawed_back"
    cancelled = "cancelled"


class Condition(StrEnum):
    working = "working"
    damaged = "damaged"
    dead = "dead"


class Disposition(StrEnum):
    refresh = "refresh"
    recycle = "recycle"
    other = "other"


class SanitizationMethod(StrEnum):
    clear = "clear"
    purge = "purge"
    destroy = "destroy"


class CarrierStatus(StrEnum):
    pre_transit = "pre_transit"
    in_transit = "in_transit"
    out_for_delivery = "out_for_delivery"
    available_for_pickup = "available_for_pickup"
    delivered = "delivered"
    return_to_sender = "return_to_sender"
    failure = "failure"
    cancelled = "cancelled"


# Progress order: an event may only move a shipment forward (or sideways into a problem state).
CARRIER_PROGRESS = {
    CarrierStatus.pre_transit: 1,
    CarrierStatus.in_transit: 2,
    CarrierStatus.out_for_delivery: 3,
    CarrierStatus.available_for_pickup: 3,
    CarrierStatus.failure: 3,
    CarrierStatus.delivered: 4,
    CarrierStatus.return_to_sender: 4,
    CarrierStatus.cancelled: 4,
}
FINAL_CARRIER_STATUSES = {CarrierStatus.delivered, CarrierStatus.return_to_sender, CarrierStatus.cancelled}
ESCALATED_CARRIER_STATUSES = {CarrierStatus.failure, CarrierStatus.return_to_sender}
SIMULATED_CARRIER_PATH = [
    CarrierStatus.pre_transit,
    CarrierStatus.in_transit,
    CarrierStatus.out_for_delivery,
    CarrierStatus.delivered,
]


# --- booking -----------------------------------------------------------------------------


class Customer(BaseModel):
    name: ShortText
    country: Annotated[str, StringConstraints(min_length=2, max_length=56, strip_whitespace=True)]


class EquipmentLine(BaseModel):
    product_id: ProductId
    quantity: int = Field(ge=1, le=1_000_000)
    serial_numbers: list[Serial] | None = Field(default=None, max_length=MAX_SERIALS_PER_BOOKING)


class BookingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    partner_id: ShortText
    customer: Customer
    opportunity: Opportunity
    new_products_value: Decimal = Field(ge=0, le=Decimal("1e12"), max_digits=16, decimal_places=2)
    incentive_rate: Decimal = Field(max_digits=6, decimal_places=4)
    equipment: list[EquipmentLine] = Field(min_length=1, max_length=1_000)

    @property
    def committed_units(self) -> int:
        return sum(line.quantity for line in self.equipment)


class DealTerms(BaseModel):
    """Everything fixed at booking. A deal keeps the window and offsets it was booked with."""

    deal_id: str
    partner_id: str
    new_products_value: Decimal
    incentive_rate: Decimal
    committed_units: int
    serials_listed: bool
    mode: IncentiveMode
    return_window_seconds: float
    reminder_offsets_seconds: list[float]
    return_threshold: float
    sim_carrier_step_seconds: float
    booked_at: datetime | None = None  # when the API accepted the booking (absent in deals booked before it was kept)
    # Frozen at booking, so a later change of the rules (the cap, rounding, the threshold) never
    # re-prices an open deal. Absent in deals booked before they were kept: computed as then.
    incentive_amount: Decimal | None = None
    required_units: int | None = None


class Incentive(BaseModel):
    mode: IncentiveMode
    rate: Decimal
    amount: Decimal
    status: IncentiveStatus


class PickupRequest(BaseModel):
    address: Annotated[str, StringConstraints(min_length=1, max_length=500, strip_whitespace=True)]
    contact_name: ShortText
    contact_phone: Annotated[str, StringConstraints(min_length=3, max_length=40, strip_whitespace=True)]
    ready_on: datetime | str
    expected_units: int = Field(ge=1, le=1_000_000)


class PickupView(BaseModel):
    id: str
    status: str
    carrier: str
    tracking_number: str


class CarrierEvent(BaseModel):
    event_id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    tracking_number: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    status: CarrierStatus
    occurred_at: datetime


class ReceiptItem(BaseModel):
    product_id: ProductId
    serial_number: Serial
    condition: Condition
    age_years: float = Field(ge=0, le=100)


class ReceiptRequest(BaseModel):
    items: list[ReceiptItem] = Field(min_length=1, max_length=MAX_RECEIPT_ITEMS)


class ReceiptCounts(BaseModel):
    """What a processed receipt batch changed; the item-level result stays in the store."""

    batch_id: str
    accepted: int
    rejected: int
    refresh: int
    recycle: int
    other: int


class ExtendRequest(BaseModel):
    extend_by: Annotated[str, StringConstraints(min_length=2, max_length=20)]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=1000, strip_whitespace=True)]


class CancelRequest(BaseModel):
    reason: Annotated[str, StringConstraints(min_length=1, max_length=1000, strip_whitespace=True)]


class Dispositions(BaseModel):
    refresh: int = 0
    recycle: int = 0
    other: int = 0


class DealView(BaseModel):
    """A deal as the contract shows it (GET /v1/deals/{id})."""

    id: str
    partner_id: str
    status: DealStatus
    booked_at: datetime
    return_deadline: datetime
    committed_units: int
    required_units: int
    received_units: int = 0
    rejected_units: int = 0
    incentive: Incentive
    pickups: list[PickupView] = []
    reminders_sent: list[str] = []
    dispositions: Dispositions = Dispositions()
    extensions: list[str] = []
    closed_reason: str | None = None
    # Counts the workflow's changes: the store keeps the newest projection, never an older one.
    revision: int = 0
