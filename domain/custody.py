"""Chain of custody of each serial, sanitization evidence, downstream shipments and reason codes.

Rules (README, "Custody, sanitization and certificates"; they extend shared/domain.md):

- A serial's custody is a list of events, appended and never changed: a correction is a new event.
  Each names its kind, when it happened (`at`), who did it (`actor`) and what it concerned.
- Sanitization follows NIST SP 800-88 Rev. 1: `clear`, `purge` or `destroy`, with technique, tool and
  version, operator, facility, time and a verification (`passed` | `failed`) by a named verifier
  (R2v3 Appendix B). A serial's *current* sanitization is its latest record: a failed verification
  recorded after a passed one stands until a new passed record follows.
- A data-bearing unit (catalog) goes to Refresh (reuse) only with a current, passed `clear` or `purge`;
  it counts as recycled (and goes to a recycler) only with a current, passed `purge` or `destroy`.
  A failed verification blocks both. A unit that carries no data needs no sanitization.
- A unit's disposition is the latest `dispositioned` event, else the grade its receipt gave it.
- Custody ends with a downstream shipment (to a recycler) or a resale: nothing is recorded after it.
- Reasons for a cancellation, an extension and a refused receipt line are codes from the lists below
  (free text beside), so that they can be counted.
"""

from datetime import datetime, timezone
from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, AfterValidator, model_validator

from domain.models import Disposition, SanitizationMethod, Serial, ShortText, FreeText, single_line


class CustodyKind(StrEnum):
    committed = "committed"  # listed on a deal at booking
    pickup_booked = "pickup_booked"  # the carrier booked for a pickup (an event of the shipment)
    carrier = "carrier"  # a carrier milestone of the shipment (pre_transit ... delivered)
    received = "received"  # scanned at the returns facility
    rejected = "rejected"  # arrived but refused (never committed, returned before, scanned twice)
    graded = "graded"  # the disposition the receipt's rules gave it (age, condition)
    sanitized = "sanitized"  # a sanitization record (NIST SP 800-88)
    dispositioned = "dispositioned"  # sent to refresh, recycle or another end
    shipped_downstream = "shipped_downstream"  # to a certified recycler: custody ends
    resold = "resold"  # sold on after refurbishment: custody ends


CUSTODY_ENDS = (CustodyKind.shipped_downstream, CustodyKind.resold)
SHIPMENT_KINDS = (CustodyKind.pickup_booked, CustodyKind.carrier)  # events of a pickup, shared by the serials it carried


class Verification(StrEnum):
    passed = "passed"
    failed = "failed"


# --- reason codes (domain/reasons.py) ------------------------------------------------------------

from domain.reasons import REJECTION_CODE, REJECTION_TEXT, CancellationReason, ExtensionReason, RejectionReason, rejection_code  # noqa: E402,F401


# --- sanitization rules -----------------------------------------------------------------------

# Which methods let a data-bearing unit go where (NIST SP 800-88 Rev. 1, section 4 and table A-1: clear
# protects against simple recovery and suits reuse inside a controlled programme; purge defeats
# laboratory recovery and suits reuse and recycling; destroy makes the media unusable).
METHODS_FOR = {
    Disposition.refresh: frozenset({SanitizationMethod.clear, SanitizationMethod.purge}),
    Disposition.recycle: frozenset({SanitizationMethod.purge, SanitizationMethod.destroy}),
}


class SanitizationStatus(StrEnum):
    not_required = "not_required"  # the unit carries no data
    verified = "verified"  # a current, passed record whose method fits the disposition
    outstanding = "outstanding"  # no record yet, or one whose method does not fit the disposition
    failed = "failed"  # the current record's verification failed: blocks the unit


class CurrentSanitization(BaseModel):
    method: SanitizationMethod
    verification: Verification


def sanitization_status(data_bearing: bool, disposition: str, current: CurrentSanitization | None) -> SanitizationStatus:
    """Where a unit stands for its disposition: the rule every check below reads."""
    if not data_bearing:
        return SanitizationStatus.not_required
    if current is None:
        return SanitizationStatus.outstanding
    if current.verification == Verification.failed:
        return SanitizationStatus.failed
    allowed = METHODS_FOR.get(Disposition(disposition)) if disposition in {d.value for d in Disposition} else None
    if allowed is None:  # `other`: any passed record is evidence enough
        return SanitizationStatus.verified
    return SanitizationStatus.verified if current.method in allowed else SanitizationStatus.outstanding


class RefusalCode(StrEnum):
    """Why a custody record was refused for a serial."""

    not_received = "not_received"  # not received (on this deal)
    custody_ended = "custody_ended"  # shipped downstream or resold already
    sanitization_missing = "sanitization_missing"
    sanitization_failed = "sanitization_failed"
    sanitization_method = "sanitization_method"  # its method does not allow this end
    disposition_mismatch = "disposition_mismatch"  # a resale of a unit for recycling, or the reverse


def disposition_refusal(data_bearing: bool, disposition: Disposition, current: CurrentSanitization | None) -> tuple[RefusalCode, str] | None:
    """Why a unit may not be sent to `disposition` now (None: it may)."""
    if not data_bearing or disposition == Disposition.other:
        return None
    needed = " or ".join(sorted(m.value for m in METHODS_FOR[disposition]))
    if current is None:
        return RefusalCode.sanitization_missing, f"data-bearing: needs a passed {needed} sanitization before {disposition.value}"
    if current.verification == Verification.failed:
        return RefusalCode.sanitization_failed, f"data-bearing: its latest sanitization ({current.method.value}) failed verification"
    if current.method not in METHODS_FOR[disposition]:
        return RefusalCode.sanitization_method, f"data-bearing: {current.method.value} does not allow {disposition.value} (needs {needed})"
    return None


def counted_as(data_bearing: bool, disposition: str, current: CurrentSanitization | None) -> str:
    """How a returned unit counts in the impact report: `refresh` (reused), `recycle`, `other`, or
    `pending` (data-bearing and not yet sanitized as its disposition needs: neither reused nor recycled yet)."""
    if disposition not in (Disposition.refresh.value, Disposition.recycle.value):
        return Disposition.other.value
    status = sanitization_status(data_bearing, disposition, current)
    return disposition if status in (SanitizationStatus.not_required, SanitizationStatus.verified) else "pending"


# The programme's target (seed): at least 99.3% of returned hardware refurbished or recycled.
REUSE_OR_RECYCLE_TARGET = 0.993


# --- requests ---------------------------------------------------------------------------------

MAX_SERIALS_PER_RECORD = 5_000  # a sanitization or disposition batch
MAX_SERIALS_PER_SHIPMENT = 10_000
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True), AfterValidator(single_line)]


def _plausible(at: datetime) -> datetime:
    """A time of this programme (years 2000 to 2199, in UTC): not one that overflows on its way to UTC."""
    try:
        utc = at.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("a time between the years 2000 and 2199") from None
    if not 2000 <= utc.year < 2200:
        raise ValueError("a time between the years 2000 and 2199")
    return at


When = Annotated[AwareDatetime, AfterValidator(_plausible)]


class SanitizationRequest(BaseModel):
    """One sanitization run: the same method, technique, tool, operator and verification for the
    listed serials (one serial or a batch)."""

    model_config = ConfigDict(extra="forbid")

    serial_numbers: list[Serial] = Field(min_length=1, max_length=MAX_SERIALS_PER_RECORD)
    method: SanitizationMethod
    technique: ShortText  # config erase + NVRAM wipe, crypto erase, ATA secure erase, shred ...
    tool: ShortText
    tool_version: ShortText
    operator: Name
    facility: Name
    at: When  # when it was done
    verification: Verification
    verified_by: Name
    note: FreeText | None = None

    @model_validator(mode="after")
    def _distinct(self) -> "SanitizationRequest":
        if len(set(self.serial_numbers)) != len(self.serial_numbers):
            raise ValueError("serial_numbers lists a serial twice")
        return self


class DispositionRequest(BaseModel):
    """Units sent to their end: `refresh` (remanufactured resale), `recycle` or `other`."""

    model_config = ConfigDict(extra="forbid")

    serial_numbers: list[Serial] = Field(min_length=1, max_length=MAX_SERIALS_PER_RECORD)
    disposition: Disposition
    facility: Name | None = None
    at: When | None = None  # defaults to the time it is recorded
    note: FreeText | None = None

    @model_validator(mode="after")
    def _distinct(self) -> "DispositionRequest":
        if len(set(self.serial_numbers)) != len(self.serial_numbers):
            raise ValueError("serial_numbers lists a serial twice")
        return self


class Material(StrEnum):
    ferrous = "ferrous"
    aluminium = "aluminium"
    copper = "copper"
    precious_metals = "precious_metals"
    circuit_boards = "circuit_boards"
    plastics = "plastics"
    cables = "cables"
    batteries = "batteries"
    glass = "glass"
    other = "other"


class MaterialWeight(BaseModel):
    material: Material
    kg: float = Field(gt=0, le=1_000_000)


class Recycler(BaseModel):
    name: Name
    certification_id: Name  # its R2v3 or e-Stewards certificate


class ShipmentKind(StrEnum):
    recycling = "recycling"  # to a certified recycler: units of disposition recycle
    resale = "resale"  # refurbished units sold on: units of disposition refresh


class DownstreamShipmentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: ShipmentKind = ShipmentKind.recycling
    recycler: Recycler  # the downstream vendor: a recycler, or the refurbisher or buyer of a resale
    shipped_at: When
    materials: list[MaterialWeight] = Field(default_factory=list, max_length=20)
    serial_numbers: list[Serial] = Field(default_factory=list, max_length=MAX_SERIALS_PER_SHIPMENT)
    lot: ShortText | None = None  # the facility's lot (commingled material, or the serials' lot)
    note: FreeText | None = None

    @model_validator(mode="after")
    def _what_went(self) -> "DownstreamShipmentRequest":
        if not self.serial_numbers and self.lot is None:
            raise ValueError("a shipment names its serial_numbers, its lot, or both")
        if self.kind == ShipmentKind.recycling and not self.materials:
            raise ValueError("a recycling shipment states its weight by material")
        if len({m.material for m in self.materials}) != len(self.materials):
            raise ValueError("materials lists a material twice")
        if len(set(self.serial_numbers)) != len(self.serial_numbers):
            raise ValueError("serial_numbers lists a serial twice")
        return self


class CustodyEventView(BaseModel):
    kind: CustodyKind
    at: datetime
    actor: str
    deal_id: str | None = None
    recorded_at: datetime
    detail: dict = {}


class SerialTimeline(BaseModel):
    serial_number: str
    events: list[CustodyEventView]
