"""Store operations behind the activities and the API. Each is idempotent for its key."""

import json
from collections import Counter
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from pydantic import BaseModel
from sqlmodel import Session

from store.once import insert_once
from store import custody, fast_insert, settlement

from domain import rules
from domain.catalog import Catalog, default_catalog
from domain.models import (
    ESCALATED_CARRIER_STATUSES,
    BookingRequest,
    CarrierEvent,
    DealTerms,
    DealView,
    IncentiveMode,
    PickupRequest,
)
from store.tables import (
    AuditEvent,
    Certificate,
    CustodyEvent,
    CommittedLine,
    CommittedSerial,
    Deal,
    DealExtension,
    IncentiveLedger,
    OpenSerialClaim,
    Partner,
    Pickup,
    ShipmentEvent,
    as_utc,
    utcnow,
)

INSERT_CHUNK = 2_000


class UnknownPartner(LookupError):
    pass


class SerialConflict(Exception):
    """Listed serials that another open deal holds. What a caller is told is `count` and the message,
    which names none: the deals holding them may be another partner's, and their serials are not the
    caller's to learn. `serials` is for the store's own callers and tests, never for an answer."""

    def __init__(self, serials: list[str]):
        self.serials = serials
        self.count = len(serials)
        super().__init__(f"{self.count} of the listed serials {'is' if self.count == 1 else 'are'} committed on another open deal")


def _chunks(rows: list[dict], size: int = INSERT_CHUNK):
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def stage_booking(
    session: Session, deal_id: str, request: BookingRequest, terms: DealTerms, view: DealView, *, actor: str | None = None, audit: dict | None = None,
) -> bool:
    """Store the booking with its committed lines and serials, and its first view; False if already staged.

    Listed serials are claimed in OpenSerialClaim, whose primary key refuses a serial that
    another open deal holds. The workflow, started next, keeps the view up to date. Each listed
    serial's custody starts here: `committed`, by `actor` (who booked), at the booking time. With
    `audit` (the call's audit row), it is written in the same transaction and its id set in it.

    Its rows go through store.fast_insert (the tables' SQL on the transaction's own cursor): this is
    the hot path of a booking, and SQLAlchemy's execution machinery was most of its store time.
    """
    serial_rows = [
        {"deal_id": deal_id, "serial": serial, "product_id": line.product_id}
        for line in request.equipment
        for serial in line.serial_numbers or []
    ]
    duplicates = [serial for serial, n in Counter(r["serial"] for r in serial_rows).items() if n > 1]
    if duplicates:
        raise rules.RuleViolation(f"serials listed twice in this booking: {', '.join(duplicates[:10])}")
    now = utcnow()
    refused = fast_insert.integrity_error(session)
    try:
        # The deal's primary key makes a retry of the same booking fail here, answered below.
        fast_insert.insert_rows(session, Deal.__table__, [dict(
            id=deal_id,
            partner_id=request.partner_id,
            customer_name=request.customer.name,
            customer_country=request.customer.country,
            opportunity=request.opportunity.value,
            new_products_value=request.new_products_value,
            incentive_rate=request.incentive_rate,
            incentive_mode=terms.mode.value,
            incentive_amount=view.incentive.amount,
            incentive_status=view.incentive.status.value,
            status=view.status.value,
            booked_at=view.booked_at,
            return_deadline=view.return_deadline,
            view_json=view.model_dump_json(),
            committed_units=view.committed_units,
            required_units=view.required_units,
            serials_listed=bool(serial_rows),
            created_at=now,
            updated_at=now,
        )])
        fast_insert.insert_rows(session, CommittedLine.__table__, [{"deal_id": deal_id, "product_id": line.product_id, "quantity": line.quantity} for line in request.equipment])
        for chunk in _chunks(serial_rows):
            fast_insert.insert_rows(session, CommittedSerial.__table__, chunk)
            fast_insert.insert_rows(session, OpenSerialClaim.__table__, [{"serial": r["serial"], "deal_id": deal_id} for r in chunk])
        for chunk in _chunks(custody.committed_rows(deal_id, serial_rows, view.booked_at, actor or f"partner:{request.partner_id}")):
            fast_insert.insert_rows(session, CustodyEvent.__table__, chunk)
        if terms.mode == IncentiveMode.upfront:  # the discount is granted with the booking, in its transaction
            fast_insert.insert_rows(session, IncentiveLedger.__table__, [{"deal_id": deal_id, "partner_id": request.partner_id, "kind": "applied", "amount": view.incentive.amount, "recorded_at": now}])
        if audit is not None:
            audit["id"] = fast_insert.insert_row(session, AuditEvent.__table__, {"at": now, **{k: v for k, v in audit.items() if k != "id"}, "deal_id": deal_id})
        session.commit()
    except (IntegrityError, refused):
        session.rollback()
        if session.get(Deal, deal_id) is not None:
            return False  # a concurrent retry staged this very deal first
        wanted = [r["serial"] for r in serial_rows]
        held = []
        for start in range(0, len(wanted), INSERT_CHUNK):
            held += session.execute(
                select(OpenSerialClaim.serial).where(OpenSerialClaim.serial.in_(wanted[start : start + INSERT_CHUNK]))
            ).scalars().all()
        raise SerialConflict(sorted(held)) from None
    return True


def staged_booking_time(session: Session, deal_id: str) -> datetime | None:
    """When the deal was booked, as its first staging recorded it (UTC); None for an unknown deal."""
    booked_at = session.execute(select(Deal.__table__.c.booked_at).where(Deal.__table__.c.id == deal_id)).scalar_one_or_none()
    return None if booked_at is None else as_utc(booked_at)


def discard_staged_booking(session: Session, deal_id: str) -> None:
    """Undo a staged booking whose workflow never started (so its serials are free again).

    Only for a deal the engine does not know: any workflow keeps its deal's rows."""
    deal = session.get(Deal, deal_id)
    if deal is None:
        return
    # An upfront booking's "applied" ledger row was written with it: the discount was never granted.
    for table in (OpenSerialClaim, CommittedSerial, CommittedLine, IncentiveLedger):
        session.execute(delete(table).where(table.deal_id == deal_id))
    # The booking never happened: its `committed` events go with it (no other event can exist yet).
    session.execute(delete(CustodyEvent).where(CustodyEvent.deal_id == deal_id, CustodyEvent.kind == "committed"))
    session.delete(deal)
    session.commit()


def deals_booked_between(session: Session, partner_id: str, start: datetime, end: datetime) -> int:
    """A partner's deals booked in [start, end): what its specialization year requires."""
    return session.execute(
        select(func.count()).select_from(Deal).where(Deal.partner_id == partner_id, Deal.booked_at >= start, Deal.booked_at < end)
    ).scalar_one()


def partner_contact(session: Session, partner_id: str) -> str | None:
    partner = session.get(Partner, partner_id)
    return partner.contact_email if partner else None


# --- pickups and shipments ------------------------------------------------------------------


def save_pickup(session: Session, pickup_id: str, deal_id: str, carrier: str, tracking: str, request: PickupRequest) -> Pickup:
    existing = session.get(Pickup, pickup_id)
    if existing is not None:
        return existing
    pickup = Pickup(
        id=pickup_id,
        deal_id=deal_id,
        carrier=carrier,
        tracking_number=tracking,
        address=request.address,
        contact_name=request.contact_name,
        contact_phone=request.contact_phone,
        ready_on=str(request.ready_on),
        expected_units=request.expected_units,
    )
    session.add(pickup)
    session.execute(insert(CustodyEvent), custody.pickup_booked_row(pickup, utcnow()))
    session.commit()
    return pickup


def find_pickup_by_tracking(session: Session, tracking_number: str) -> Pickup | None:
    return session.execute(select(Pickup).where(Pickup.tracking_number == tracking_number)).scalars().first()


class CarrierEventOutcome(BaseModel):
    deal_id: str
    pickup_id: str
    status: str  # the pickup's status after the event
    applied: bool  # the event moved the shipment (when it was first received)
    repeated: bool  # the event id was received before
    escalate: bool  # an escalation status that moved the shipment: the deal tells the partner and ops


def scoped_event_id(tracking_number: str, event_id: str) -> str:
    """A carrier's event ids are unique per tracking number only, so the store keys an event by both:
    `<tracking number>:<event id>` (our tracking numbers hold no `:`)."""
    return f"{tracking_number}:{event_id}"


def _recorded_event(session: Session, event: CarrierEvent) -> ShipmentEvent | None:
    seen = session.get(ShipmentEvent, scoped_event_id(event.tracking_number, event.event_id))
    if seen is None:
        # Recorded before ids were scoped, under the carrier's bare id: the same event if its tracking number matches.
        legacy = session.get(ShipmentEvent, event.event_id)
        if legacy is not None and legacy.tracking_number == event.tracking_number:
            seen = legacy
    return seen


def record_carrier_event(session: Session, event: CarrierEvent) -> CarrierEventOutcome | None:
    """Record a carrier event once by its (tracking number, event id) and move the pickup forward;
    None for an unknown tracking number. The same event id on two tracking numbers is two events.

    The status moves in one guarded UPDATE, so two events racing on one pickup can never move it
    backwards, on SQLite or PostgreSQL.
    """
    pickup = find_pickup_by_tracking(session, event.tracking_number)
    if pickup is None:
        return None
    seen = _recorded_event(session, event)
    if seen is None:
        moved = session.execute(
            update(Pickup).where(Pickup.id == pickup.id, Pickup.status.in_(rules.statuses_moving_forward_to(event.status))).values(status=event.status.value)
        ).rowcount == 1
        key = scoped_event_id(event.tracking_number, event.event_id)
        session.add(ShipmentEvent(event_id=key, tracking_number=event.tracking_number, status=event.status.value, occurred_at=event.occurred_at, applied=moved))
        try:
            session.execute(insert(CustodyEvent), custody.carrier_row(pickup, key, event, moved))  # a milestone of every serial it carries
            session.commit()
        except IntegrityError:  # the same event, delivered twice at once: the other delivery recorded it
            session.rollback()
            seen = session.get(ShipmentEvent, key)
    applied = seen.applied if seen is not None else moved
    status = session.execute(select(Pickup.status).where(Pickup.id == pickup.id)).scalar_one()
    return CarrierEventOutcome(
        deal_id=pickup.deal_id,
        pickup_id=pickup.id,
        status=status,
        applied=applied,
        repeated=seen is not None,
        escalate=applied and event.status in ESCALATED_CARRIER_STATUSES,
    )


def pickup_statuses(session: Session, deal_ids: list[str]) -> dict[str, dict[str, str]]:
    """Deal id -> pickup id -> carrier status: the store, not the workflow, follows the carrier."""
    statuses: dict[str, dict[str, str]] = {}
    if deal_ids:
        for deal_id, pickup_id, status in session.execute(select(Pickup.deal_id, Pickup.id, Pickup.status).where(Pickup.deal_id.in_(deal_ids))):
            statuses.setdefault(deal_id, {})[pickup_id] = status
    return statuses


def with_pickup_statuses(view: DealView, statuses: dict[str, dict[str, str]]) -> DealView:
    statuses = statuses.get(view.id, {})
    if not any(statuses.get(p.id, p.status) != p.status for p in view.pickups):
        return view
    return view.model_copy(update={"pickups": [p.model_copy(update={"status": statuses.get(p.id, p.status)}) for p in view.pickups]})


# --- receipts and money: store.settlement, the one arbiter ----------------------------------------


def record_extension(session: Session, deal_id: str, sequence: int, extend_by_seconds: float, reason: str, new_deadline: datetime) -> None:
    insert_once(session, DealExtension(deal_id=deal_id, sequence=sequence, extend_by_seconds=extend_by_seconds, reason=reason, new_deadline=new_deadline))


# --- read model and closing ------------------------------------------------------------------


def project_deal(session: Session, view: DealView) -> None:
    """Keep the deals read model in step with the workflow (lists and closed deals read it). The counts
    and the incentive status are the store's own (store.settlement): the view is written with them, under
    the deal's lock, so a receipt committing meanwhile is never overwritten by an older count."""
    deal = settlement.lock_for_projection(session, view.id)
    if deal is None:  # no such deal (its lock rolled back): nothing to write
        return
    view = settlement.with_store_counts(view, deal)
    session.execute(
        update(Deal)
        .where(Deal.id == view.id, Deal.revision <= view.revision)  # a late, older projection changes nothing
        .values(
            revision=view.revision,
            status=view.status.value,
            booked_at=view.booked_at,
            return_deadline=view.return_deadline,
            updated_at=utcnow(),
            view_json=view.model_dump_json(),
        )
    )
    session.commit()


def show_reminder(session: Session, deal_id: str, offset: str) -> None:
    """The read model's copy of the deal shows a reminder sent (its offset, "30d"), once: the reminder's
    activity writes it, so the deal itself projects nothing for a reminder."""
    deal = settlement.lock_for_projection(session, deal_id)
    if deal is not None and deal.view_json is not None:
        view = DealView.model_validate_json(deal.view_json)
        if offset not in view.reminders_sent:
            deal.view_json = view.model_copy(update={"reminders_sent": [*view.reminders_sent, offset]}).model_dump_json()
    session.commit()


class StoredDeal(NamedTuple):
    partner_id: str
    status: str
    view_json: str | None


def stored_deal(session: Session, deal_id: str) -> tuple[StoredDeal | None, dict[str, dict[str, str]]]:
    """The columns a read of one deal needs and its pickups' carrier statuses (as `pickup_statuses`), in one query."""
    rows = session.execute(
        select(Deal.partner_id, Deal.status, Deal.view_json, Pickup.id, Pickup.status).outerjoin(Pickup, Pickup.deal_id == Deal.id).where(Deal.id == deal_id)
    ).all()
    if not rows:
        return None, {}
    statuses = {pickup_id: status for *_, pickup_id, status in rows if pickup_id is not None}
    return StoredDeal(*rows[0][:3]), {deal_id: statuses} if statuses else {}


def deal_view_from_store(session: Session, deal_id: str) -> DealView | None:
    deal = session.get(Deal, deal_id)
    if deal is None or deal.view_json is None:
        return None
    return DealView.model_validate_json(deal.view_json)


def close_deal(session: Session, view: DealView, heartbeat=lambda: None, *, catalog: Catalog | None = None) -> str:
    """Free the deal's serial claims and issue its certificate of recycling; returns its hash.

    The certificate is final when every received data-bearing unit has its sanitization verified,
    else provisional, listing what is outstanding; the final one follows (store.custody)."""
    project_deal(session, view)
    session.execute(delete(OpenSerialClaim).where(OpenSerialClaim.deal_id == view.id))
    session.commit()
    heartbeat()
    return custody.issue_at_close(session, view, catalog, heartbeat)


def certificate_content(session: Session, view: DealView, *, catalog: Catalog | None = None) -> dict:
    """The content a certificate of the deal would have now, as a dict (small deals, tests)."""
    body, _digest, _complete = custody.build_certificate(session, view, catalog or default_catalog())
    return json.loads(body)


def get_certificate(session: Session, deal_id: str) -> Certificate | None:
    return session.get(Certificate, deal_id)
