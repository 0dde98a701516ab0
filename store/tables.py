"""SQLModel tables. Business-level exactly-once is enforced here, by unique constraints."""

from datetime import datetime, timezone
from decimal import Decimal

from sqlalchemy import CheckConstraint, Column, Index, Numeric, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(at: datetime) -> datetime:
    """A stored moment as an aware UTC datetime: SQLite gives back naive ones (they were written in UTC)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)


class Partner(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=200)
    name: str
    contact_email: str
    country: str
    created_at: datetime = Field(default_factory=utcnow)


class Deal(SQLModel, table=True):
    """Booking facts plus the read model the workflow keeps current."""

    # A partner's specialization year counts its deals by booking time. The business gauges on
    # /metrics (store/gauges.py) read open deals by deadline, and money by incentive status from the
    # index alone.
    __table_args__ = (
        Index("ix_deal_partner_id_booked_at", "partner_id", "booked_at"),
        Index("ix_deal_status_return_deadline", "status", "return_deadline"),
        Index("ix_deal_incentive_status_amount", "incentive_status", "incentive_amount"),
    )
    id: str = Field(primary_key=True, max_length=64)
    partner_id: str = Field(index=True, max_length=200)
    customer_name: str
    customer_country: str
    opportunity: str
    new_products_value: Decimal = Field(sa_column=Column(Numeric(16, 2), nullable=False))
    incentive_rate: Decimal = Field(sa_column=Column(Numeric(6, 4), nullable=False))
    incentive_mode: str
    incentive_amount: Decimal = Field(sa_column=Column(Numeric(16, 2), nullable=False))
    incentive_status: str
    status: str = Field(index=True)
    committed_units: int
    required_units: int
    received_units: int = 0
    rejected_units: int = 0
    refresh_units: int = 0
    recycle_units: int = 0
    other_units: int = 0
    serials_listed: bool = False
    booked_at: datetime | None = None
    return_deadline: datetime | None = Field(default=None, index=True)  # the console's deadline filters and sort
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)
    view_json: str | None = Field(default=None, sa_column=Column(Text))
    revision: int = 0  # of the projected view: an older projection never overwrites a newer one
    # When the store decided the deal for good (its deadline, a cancel, every unit back): no receipt
    # counts after it (store.settlement). Counts and incentive status above are the store's own.
    decided_at: datetime | None = None


class CommittedLine(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    deal_id: str = Field(index=True)
    product_id: str
    quantity: int


class CommittedSerial(SQLModel, table=True):
    """Serials a deal listed at booking."""

    deal_id: str = Field(primary_key=True)
    serial: str = Field(primary_key=True, index=True)  # the console finds deals by serial; the key leads with the deal
    product_id: str


class OpenSerialClaim(SQLModel, table=True):
    """A listed serial held by an open deal: the primary key forbids two open deals listing it."""

    serial: str = Field(primary_key=True)
    deal_id: str = Field(index=True)


class Pickup(SQLModel, table=True):
    # The silent-pickups gauge (store/gauges.py) reads pickups still under way, oldest first.
    __table_args__ = (Index("ix_pickup_status_created_at", "status", "created_at"),)
    id: str = Field(primary_key=True)  # "<deal id>-p<n>"
    deal_id: str = Field(index=True)
    carrier: str
    tracking_number: str = Field(unique=True)
    status: str = "scheduled"
    address: str
    contact_name: str
    contact_phone: str
    ready_on: str
    expected_units: int
    created_at: datetime = Field(default_factory=utcnow)


class CarrierPickup(SQLModel, table=True):
    """A pickup booked with a shipping provider (TAKEBACK_CARRIER=easypost), step by step: each provider
    object is recorded as soon as it exists, so a retried booking resumes instead of booking twice.
    `state`: booking | booked | failed | cancel_requested | cancelled; `last_error` shows an outage on the deal."""

    __table_args__ = (Index("ix_carrierpickup_state_deal_id", "state", "deal_id"),)
    pickup_id: str = Field(primary_key=True)
    deal_id: str = Field(index=True)
    provider: str
    state: str = "booking"
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    last_attempt_at: datetime | None = None
    parcel_kind: str  # parcel | pallet: the estimate from the committed products' weights
    weight_kg: float
    window_start: str  # the pickup window, business days from ready_on
    window_end: str
    address_id: str | None = None
    shipment_id: str | None = None
    tracker_id: str | None = None
    tracking_code: str | None = None
    carrier: str | None = None
    service: str | None = None
    label_url: str | None = Field(default=None, sa_column=Column(Text))
    label_format: str | None = None
    provider_pickup_id: str | None = None
    confirmation: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    booked_at: datetime | None = None
    cancelled_at: datetime | None = None


class ShipmentEvent(SQLModel, table=True):
    event_id: str = Field(primary_key=True)
    tracking_number: str = Field(index=True)
    status: str
    occurred_at: datetime
    applied: bool
    recorded_at: datetime = Field(default_factory=utcnow)


class ReceiptBatch(SQLModel, table=True):
    """A receipt staged by the caller; the workflow processes it by id, once."""

    id: str = Field(primary_key=True)
    deal_id: str = Field(index=True)
    items_json: str = Field(sa_column=Column(Text, nullable=False))
    item_count: int
    processed_at: datetime | None = None
    # Set when the deal refused the batch (it arrived after the decision): never processed, no serial burnt.
    refused_at: datetime | None = None
    # When the API accepted it (the deal's clock): a batch staged by the deadline counts at the decision.
    created_at: datetime = Field(default_factory=utcnow)


class ReturnedItem(SQLModel, table=True):
    """An accepted item. The unique serial is the grey-market guard across all deals."""

    id: int | None = Field(default=None, primary_key=True)
    serial: str = Field(unique=True)
    deal_id: str = Field(index=True)
    batch_id: str = Field(index=True)
    product_id: str
    condition: str
    age_years: float
    disposition: str
    received_at: datetime = Field(default_factory=utcnow)


class ReceiptRejection(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("batch_id", "position"),)
    id: int | None = Field(default=None, primary_key=True)
    batch_id: str = Field(index=True)
    deal_id: str = Field(index=True)
    position: int
    serial: str
    reason: str
    reason_code: str | None = Field(default=None, max_length=40)  # domain.custody.RejectionReason; rows before codes: derived from `reason`


class SanitizationRecord(SQLModel, table=True):
    serial: str = Field(primary_key=True)
    deal_id: str = Field(index=True)
    method: str
    standard: str = "NIST SP 800-88 Rev. 1"
    recorded_at: datetime = Field(default_factory=utcnow)


class ReminderSent(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("deal_id", "offset_seconds"),)
    id: int | None = Field(default=None, primary_key=True)
    deal_id: str = Field(index=True)
    offset_seconds: float
    deadline: datetime
    sent_at: datetime = Field(default_factory=utcnow)


class EmailMessage(SQLModel, table=True):
    """One row per business e-mail (key: deal id + step), and its delivery state.

    An attempt claims the row (state `sending`, `claimed_at`) before it calls the provider; another
    attempt sends only once that claim is older than the lease, so a timed-out attempt that is
    still running is never doubled.
    """

    # The mail gauges (store/gauges.py): failed messages, and the oldest one not yet sent.
    __table_args__ = (Index("ix_emailmessage_state_created_at", "state", "created_at"),)
    key: str = Field(primary_key=True)
    deal_id: str | None = Field(default=None, index=True)
    partner_id: str | None = Field(default=None, index=True)
    to: str
    cc: str | None = None
    subject: str
    body: str = Field(sa_column=Column(Text, nullable=False))
    state: str = "queued"  # queued | sending | sent | failed
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    claimed_at: datetime | None = None
    sent_at: datetime | None = None
    provider_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class IncentiveLedger(SQLModel, table=True):
    """Money moves: one row per (deal, kind) makes each movement happen at most once."""

    __table_args__ = (UniqueConstraint("deal_id", "kind"),)
    id: int | None = Field(default=None, primary_key=True)
    deal_id: str = Field(index=True)
    partner_id: str = Field(index=True)
    kind: str  # applied | released | forfeited | clawed_back | cancelled
    amount: Decimal = Field(sa_column=Column(Numeric(16, 2), nullable=False))
    recorded_at: datetime = Field(default_factory=utcnow)


class Settlement(SQLModel, table=True):
    """The deal's one terminal money outcome: the primary key refuses a second, contradictory one."""

    deal_id: str = Field(primary_key=True)
    partner_id: str = Field(index=True)
    outcome: str  # released | forfeited | clawed_back | cancelled | applied (upfront, kept)
    amount: Decimal = Field(sa_column=Column(Numeric(16, 2), nullable=False))
    decided_at: datetime = Field(default_factory=utcnow)


class DealExtension(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("deal_id", "sequence"),)
    id: int | None = Field(default=None, primary_key=True)
    deal_id: str = Field(index=True)
    sequence: int
    extend_by_seconds: float
    reason: str
    new_deadline: datetime
    recorded_at: datetime = Field(default_factory=utcnow)


class Certificate(SQLModel, table=True):
    """The deal's current certificate. `provisional` while a received data-bearing unit awaits its
    sanitization (or failed verification); `final` once every one is verified, issued once."""

    __table_args__ = (Index("ix_certificate_certificate_id", "certificate_id", unique=True),)
    deal_id: str = Field(primary_key=True)
    content_json: str = Field(sa_column=Column(Text, nullable=False))
    content_hash: str
    issued_at: datetime = Field(default_factory=utcnow)
    certificate_id: str | None = Field(default=None, max_length=40)  # see CertificateIssue
    status: str = Field(default="final", max_length=20, sa_column_kwargs={"server_default": "final"})  # final | provisional


# A partner key always names its partner and an ops key never does: a partner key without one
# would pass every "is it yours" check that compares partner ids, and list every partner's deals.
APIKEY_ROLE_CHECK = "(role = 'ops' AND partner_id IS NULL) OR (role = 'partner' AND partner_id IS NOT NULL AND partner_id <> '')"


class ApiKey(SQLModel, table=True):
    """A key, stored as its SHA-256. It works while not revoked and not expired; a rotation gives the
    old key an `expires_at` (the overlap) and points it at the key that replaced it."""

    __table_args__ = (CheckConstraint(APIKEY_ROLE_CHECK, name="ck_apikey_role_partner"),)
    id: int | None = Field(default=None, primary_key=True)
    key_hash: str = Field(unique=True)
    prefix: str
    role: str  # ops | partner
    partner_id: str | None = None
    # Whose key it is: "partner:<id>", or "ops:<owner>" (the key's own id when no owner was given).
    # Idempotency keys and the audit trail are scoped by it, so a rotated key's retries stay the same action.
    account: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    last_used_at: datetime | None = None  # written at most about once a minute per key
    revoked_at: datetime | None = None
    replaced_by_id: int | None = None  # the key a rotation made in its place


class IdempotencyRecord(SQLModel, table=True):
    """One `Idempotency-Key` of one account on one route (`scope` is their hash): the request's
    fingerprint, the id the route derived for the action (deal, batch or update id), whether a request
    holds it (`locked_until`) and, once there is one, the answer every retry gets."""

    id: int | None = Field(default=None, primary_key=True)
    scope: str = Field(unique=True, max_length=64)  # sha256 of account, method, path and key
    account: str = Field(max_length=200)
    method: str = Field(max_length=10)
    path: str = Field(sa_column=Column(Text, nullable=False))
    key: str = Field(max_length=200)
    api_key_id: int  # the key that made the first request
    fingerprint: str = Field(max_length=64)
    derived_id: str | None = Field(default=None, max_length=200)
    locked_until: datetime | None = None  # a request is running it until then (a lease: a dead process frees it)
    status_code: int | None = None
    response_json: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)


class AuditEvent(SQLModel, table=True):
    """Who did what, and why: one row per mutating call the API ran (not per replayed retry)."""

    __table_args__ = (Index("ix_auditevent_deal_id_id", "deal_id", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow)
    api_key_id: int = Field(index=True)
    account: str = Field(max_length=200)
    role: str = Field(max_length=20)
    action: str = Field(max_length=40)  # booking | pickup | receipts | extend | cancel | partner | training | exam | pledge | reinstate
    method: str = Field(max_length=10)
    path: str = Field(sa_column=Column(Text, nullable=False))
    deal_id: str | None = Field(default=None, max_length=64)
    partner_id: str | None = Field(default=None, index=True, max_length=200)
    reason: str | None = Field(default=None, sa_column=Column(Text))
    detail_json: str | None = Field(default=None, sa_column=Column(Text))
    idempotency_key: str | None = Field(default=None, max_length=200)
    status_code: int


# --- custody, sanitization, downstream, certificates, reasons (issue 14) --------------------------


class CustodyEvent(SQLModel, table=True):
    """One step of a serial's custody (domain/custody.py), appended and never changed: a correction is
    a new event. Events of a pickup (booked, carrier milestones) have serial '' and the pickup's id:
    every serial received from that pickup shares them. The record that caused an event (a booking,
    a carrier event, a receipt batch, a sanitization run ...) is its `source_id`, and (serial, kind,
    source_id) is unique: a retried activity or request appends nothing twice."""

    __table_args__ = (
        UniqueConstraint("serial", "kind", "source_id", name="uq_custodyevent_source"),
        Index("ix_custodyevent_serial_id", "serial", "id"),  # one serial's timeline
        Index("ix_custodyevent_pickup_id_serial_id", "pickup_id", "serial", "id"),  # the events of its pickup (serial '')
        Index("ix_custodyevent_deal_id_serial_id", "deal_id", "serial", "id"),  # a deal's certificate, serial by serial
        Index("ix_custodyevent_kind_value", "kind", "value"),  # the serials of a downstream shipment
    )
    id: int | None = Field(default=None, primary_key=True)
    serial: str = Field(max_length=64)
    kind: str = Field(max_length=32)
    source_id: str = Field(max_length=200)
    deal_id: str | None = Field(default=None, max_length=64)
    pickup_id: str | None = Field(default=None, max_length=80)
    at: datetime  # when it happened
    actor: str = Field(max_length=200)  # who did it: an API account, the carrier, the rules
    value: str | None = Field(default=None, max_length=200)  # its main fact: product, carrier status, condition, disposition, method, shipment
    detail_json: str | None = Field(default=None, sa_column=Column(Text))
    recorded_at: datetime = Field(default_factory=utcnow)


class ReceiptContext(SQLModel, table=True):
    """Who scanned a receipt batch, where, and from which pickup: the custody of its serials."""

    batch_id: str = Field(primary_key=True)
    actor: str = Field(max_length=200)
    facility: str | None = Field(default=None, max_length=200)
    operator: str | None = Field(default=None, max_length=200)
    tracking_number: str | None = Field(default=None, max_length=100)
    pickup_id: str | None = Field(default=None, max_length=80)
    received_at: datetime = Field(default_factory=utcnow)


class Sanitization(SQLModel, table=True):
    """A sanitization record (NIST SP 800-88, R2v3 Appendix B), appended: a serial's current one is its
    latest. `source_id` is the request that recorded it; (serial, source_id) is unique."""

    __table_args__ = (
        UniqueConstraint("serial", "source_id", name="uq_sanitization_source"),
        Index("ix_sanitization_serial_id", "serial", "id"),
        Index("ix_sanitization_deal_id_serial_id", "deal_id", "serial", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    serial: str = Field(max_length=64)
    deal_id: str = Field(max_length=64)
    source_id: str = Field(max_length=200)
    method: str = Field(max_length=20)  # clear | purge | destroy
    technique: str = Field(max_length=200)
    tool: str = Field(max_length=200)
    tool_version: str = Field(max_length=200)
    operator: str = Field(max_length=200)
    facility: str = Field(max_length=200)
    performed_at: datetime
    verification: str = Field(max_length=20)  # passed | failed
    verified_by: str = Field(max_length=200)
    note: str | None = Field(default=None, sa_column=Column(Text))
    recorded_by: str = Field(max_length=200)
    recorded_at: datetime = Field(default_factory=utcnow)


class DownstreamShipment(SQLModel, table=True):
    """Material or units that left the facility to a downstream vendor: a recycler (its R2v3 or
    e-Stewards certificate named) or, for a resale, the refurbisher or buyer."""

    id: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=20)  # recycling | resale
    recycler_name: str = Field(max_length=200)
    certification_id: str = Field(max_length=200)
    shipped_at: datetime = Field(index=True)
    lot: str | None = Field(default=None, max_length=200)
    serial_count: int = 0
    note: str | None = Field(default=None, sa_column=Column(Text))
    recorded_by: str = Field(max_length=200)
    recorded_at: datetime = Field(default_factory=utcnow)


class DownstreamMaterial(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("shipment_id", "material"),)
    id: int | None = Field(default=None, primary_key=True)
    shipment_id: str = Field(index=True, max_length=64)
    material: str = Field(max_length=40)
    kg: Decimal = Field(sa_column=Column(Numeric(14, 3), nullable=False))


class CertificatePart(SQLModel, table=True):
    """A certificate's canonical JSON in consecutive slices of PART_CHARS characters (the last shorter):
    read a slice at a time, a certificate of 100,000 serials (about 100 MB) renders in flat memory.
    `certificate.content_json` keeps the whole JSON too, for the readers that load it at once."""

    certificate_id: str = Field(primary_key=True, max_length=40)
    seq: int = Field(primary_key=True)
    text: str = Field(sa_column=Column(Text, nullable=False))


class CertificateIssue(SQLModel, table=True):
    """Every certificate document ever issued, by its id: what GET /v1/certificates/{id}/verify checks.
    A deal's provisional certificate is superseded by its final one; both stay verifiable."""

    certificate_id: str = Field(primary_key=True, max_length=40)
    deal_id: str = Field(index=True, max_length=64)
    content_hash: str = Field(max_length=64)
    status: str = Field(max_length=20)  # final | provisional
    issued_at: datetime = Field(default_factory=utcnow)
    superseded_at: datetime | None = None


class ReasonRecord(SQLModel, table=True):
    """The coded reason of a cancellation or an extension (domain/custody.py lists), one per request."""

    __table_args__ = (UniqueConstraint("action", "request_id"), Index("ix_reasonrecord_action_recorded_at", "action", "recorded_at"))
    id: int | None = Field(default=None, primary_key=True)
    deal_id: str = Field(index=True, max_length=64)
    partner_id: str | None = Field(default=None, max_length=200)
    action: str = Field(max_length=20)  # cancel | extend
    code: str = Field(max_length=40)
    text: str = Field(sa_column=Column(Text, nullable=False))
    request_id: str = Field(max_length=200)
    actor: str = Field(max_length=200)
    recorded_at: datetime = Field(default_factory=utcnow)
