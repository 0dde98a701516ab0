"""Pydantic models shared by the API, the workflows and the activities.

Workflow inputs and results carry ids and counts only: serial lists live in the store.
"""

import re
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

from domain.durations import parse_duration
from domain.reasons import CancellationReason, ExtensionReason

MAX_SERIALS_PER_BOOKING = 50_000  # listed serials in one booking, all lines together
MAX_RECEIPT_ITEMS = 5_000
MAX_EXTENSION = timedelta(days=365)  # one `extend_by`; a longer one is a 422, never an overflow in the deal

# --- text that is safe to store, log and mail ---------------------------------------------------
# Control characters (C0, DEL, C1), NUL above all (PostgreSQL refuses it in text: a 500), the
# Unicode line and paragraph separators (they forge log lines and mail headers), and the bidi
# embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069: they make a name or a reason
# read otherwise than it is written, in the console, a mail or a CSV). Lone surrogates never get
# this far (pydantic refuses them). Free text (addresses, reasons) may keep line breaks and tabs.
_BIDI_CONTROLS = "\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(f"[\x00-\x1f\x7f-\x9f\u2028\u2029{_BIDI_CONTROLS}]")
_CONTROL_BUT_LINE_BREAKS = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029{_BIDI_CONTROLS}]")


def _refuse(pattern: re.Pattern, value: str) -> str:
    found = pattern.search(value)
    if found:
        raise ValueError(f"control character U+{ord(found.group()):04X} is not allowed here")
    return value


def single_line(value: str) -> str:
    """Names, ids, phone numbers, serials: printable text on one line."""
    return _refuse(_CONTROL, value)


def free_text(value: str) -> str:
    """Addresses and reasons: may span lines, but hold no other control character."""
    return _refuse(_CONTROL_BUT_LINE_BREAKS, value)


ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True), AfterValidator(single_line)]
ProductId = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True), AfterValidator(single_line)]
Serial = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True), AfterValidator(single_line)]
FreeText = Annotated[str, StringConstraints(min_length=1, max_length=1000, strip_whitespace=True), AfterValidator(free_text)]
Country = Annotated[str, StringConstraints(min_length=2, max_length=56, strip_whitespace=True), AfterValidator(single_line)]

# Ids in paths: bounded, and of the characters ids are made of (deal ids are `D` + 16 hex digits;
# partner ids follow the pattern of registration). For `{deal_id}` and `{partner_id}` route parameters.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
DealId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=ID_PATTERN)]
PartnerId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=ID_PATTERN)]

# One mailbox: `local@domain`, no display name, no list. A comma or semicolon would make one field
# several recipients; quotes, angle brackets and whitespace a display name or a header of its own.
_EMAIL = re.compile(r"^[^\s@,;:<>()\[\]\\\"]{1,64}@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,63}$")


def one_mailbox(value: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise ValueError("one e-mail address, local@domain (no list, no display name)")
    return single_line(value)


EmailAddress = Annotated[str, StringConstraints(min_length=3, max_length=254, strip_whitespace=True), AfterValidator(one_mailbox)]


def not_negative_zero(value: Decimal) -> Decimal:
    """`-0.00` passes `>= 0` and would be stored, summed and shown as "-0.00"."""
    if value.is_zero() and value.is_signed():
        raise ValueError("negative zero is not an amount")
    return value


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def calendar_date(value: object) -> object:
    """A calendar date, `YYYY-MM-DD` (or a `date`): not a time, a timestamp or free text."""
    if isinstance(value, datetime) or not isinstance(value, (date, str)) or (isinstance(value, str) and not _ISO_DATE.fullmatch(value)):
        raise ValueError("a date, YYYY-MM-DD")
    return value


def extension_duration(text: str) -> timedelta:
    """An `extend_by` as a duration: positive, at least a second and at most MAX_EXTENSION (ValueError)."""
    try:
        duration = parse_duration(text)
    except OverflowError:  # `99999999999d` is more days than a timedelta holds
        raise ValueError(f"extend_by is at most {MAX_EXTENSION.days}d") from None
    if duration > MAX_EXTENSION:
        raise ValueError(f"extend_by is at most {MAX_EXTENSION.days}d, got {text!r}")
    if duration < timedelta(seconds=1):
        raise ValueError(f"extend_by is at least 1s, got {text!r}")
    return duration


def _extension(text: str) -> str:
    extension_duration(text)
    return text


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

# A pickup the carrier refused to book for good (a real provider's refusal after a day of retries):
# shown on the deal, never under way, and what a retry of its request is answered with.
BOOKING_FAILED = "booking_failed"


# --- booking -----------------------------------------------------------------------------


class Customer(BaseModel):
    name: ShortText
    country: Country


class EquipmentLine(BaseModel):
    product_id: ProductId
    quantity: int = Field(ge=1, le=1_000_000)
    # Listed serials number exactly `quantity` (an empty list lists none).
    serial_numbers: list[Serial] | None = Field(default=None, max_length=MAX_SERIALS_PER_BOOKING)

    @model_validator(mode="after")
    def _serials_match_quantity(self) -> "EquipmentLine":
        if self.serial_numbers and len(self.serial_numbers) != self.quantity:
            raise ValueError(f"{len(self.serial_numbers)} serial_numbers listed for quantity {self.quantity}: list exactly one per unit, or none")
        return self


class BookingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    partner_id: ShortText
    customer: Customer
    opportunity: Opportunity
    new_products_value: Annotated[Decimal, AfterValidator(not_negative_zero)] = Field(ge=0, le=Decimal("1e12"), max_digits=16, decimal_places=2)
    incentive_rate: Annotated[Decimal, AfterValidator(not_negative_zero)] = Field(max_digits=6, decimal_places=4)
    equipment: list[EquipmentLine] = Field(min_length=1, max_length=1_000)

    @model_validator(mode="after")
    def _serials_in_total(self) -> "BookingRequest":
        if self.listed_serials > MAX_SERIALS_PER_BOOKING:
            raise ValueError(f"a booking lists at most {MAX_SERIALS_PER_BOOKING} serial numbers in total, got {self.listed_serials}")
        return self

    @property
    def committed_units(self) -> int:
        return sum(line.quantity for line in self.equipment)

    @property
    def listed_serials(self) -> int:
        return sum(len(line.serial_numbers or ()) for line in self.equipment)


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
    booked_at: datetime  # when the API accepted the booking: the deadline counts from it
    # Frozen at booking, so a later change of the rules (the cap, rounding, the threshold) never
    # re-prices an open deal, and no rule of today's code changes a running deal's decision.
    incentive_amount: Decimal
    required_units: int
    version_look_seconds: float = 30 * 86400  # TAKEBACK_VERSION_LOOK: how often the deal looks for a new worker version


class Incentive(BaseModel):
    mode: IncentiveMode
    rate: Decimal
    amount: Decimal
    status: IncentiveStatus


class PickupRequest(BaseModel):
    """Its shape; against the deal (ready_on up to the deadline, expected_units at most the units
    outstanding, open pickups per deal) it is checked by `rules.validate_pickup`."""

    address: Annotated[str, StringConstraints(min_length=1, max_length=500, strip_whitespace=True), AfterValidator(free_text)]
    contact_name: ShortText
    contact_phone: Annotated[str, StringConstraints(min_length=3, max_length=40, strip_whitespace=True), AfterValidator(single_line)]
    ready_on: Annotated[date, BeforeValidator(calendar_date)]
    expected_units: int = Field(ge=1, le=1_000_000)


class PickupView(BaseModel):
    id: str
    status: str
    carrier: str
    tracking_number: str


class CarrierEvent(BaseModel):
    event_id: Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(single_line)]
    tracking_number: Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(single_line)]
    status: CarrierStatus
    occurred_at: AwareDatetime  # with its offset: a naive time is ambiguous by up to a day


class ReceiptItem(BaseModel):
    product_id: ProductId
    serial_number: Serial
    condition: Condition
    age_years: float = Field(ge=0, le=100)


class ReceiptRequest(BaseModel):
    items: list[ReceiptItem] = Field(min_length=1, max_length=MAX_RECEIPT_ITEMS)
    # Custody (issue 14), all optional: where and by whom the items were scanned, and the pickup
    # (tracking number) they came in, which links each serial's timeline to that shipment's events.
    facility: ShortText | None = None
    operator: ShortText | None = None
    tracking_number: Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(single_line)] | None = None


class ReceiptCounts(BaseModel):
    """What a processed receipt batch changed; the item-level result stays in the store."""

    batch_id: str
    accepted: int
    rejected: int
    refresh: int
    recycle: int
    other: int


class ExtendRequest(BaseModel):
    extend_by: Annotated[str, StringConstraints(min_length=2, max_length=20), AfterValidator(_extension)]  # at most MAX_EXTENSION
    reason: FreeText
    reason_code: ExtensionReason = Field(ExtensionReason.other, description="a code from the list (domain/custody.py), counted by GET /v1/reports/reasons")


class CancelRequest(BaseModel):
    reason: FreeText
    reason_code: CancellationReason = Field(CancellationReason.other, description="a code from the list (domain/custody.py), counted by GET /v1/reports/reasons")


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
