"""Custody events, sanitization records, dispositions, downstream shipments, certificates and reason
codes in the store (rules: domain/custody.py). Events are appended, never changed, and each is unique
per (serial, kind, source): the store functions the activities and the API already call write them in
the same transaction as the fact they record, so a retried activity appends nothing twice."""

import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from domain import rules
from domain.catalog import Catalog, default_catalog
from domain.certificate import STANDARD, CertificateText, Later, Streamed, certificate_id, stream_canonical
from domain.custody import (
    CUSTODY_ENDS,
    CurrentSanitization,
    CustodyEventView,
    CustodyKind,
    DispositionRequest,
    DownstreamShipmentRequest,
    RefusalCode,
    SanitizationRequest,
    SanitizationStatus,
    SerialTimeline,
    ShipmentKind,
    disposition_refusal,
    sanitization_status,
)
from domain.models import CarrierEvent, DealView, Disposition
from store.tables import (
    Certificate,
    CertificateIssue,
    CertificatePart,
    CustodyEvent,
    Deal,
    DownstreamMaterial,
    DownstreamShipment,
    Pickup,
    ReasonRecord,
    ReceiptContext,
    ReturnedItem,
    Sanitization,
    as_utc,
    utcnow,
)

CHUNK = 2_000
RULES_ACTOR = "takeback rules"  # the receipt's grading: age and condition (domain/rules.py)



def event_row(serial: str, kind: CustodyKind, source_id: str, at: datetime, actor: str, *, deal_id: str | None = None,
              pickup_id: str | None = None, value: str | None = None, detail: dict | None = None, recorded_at: datetime | None = None) -> dict:
    return {
        "serial": serial, "kind": kind.value, "source_id": source_id, "deal_id": deal_id, "pickup_id": pickup_id, "at": at, "actor": actor[:200],
        "value": value, "detail_json": json.dumps(detail, sort_keys=True) if detail else None, "recorded_at": recorded_at or utcnow(),
    }


def insert_events(session: Session, rows: list[dict], heartbeat=lambda: None) -> None:
    """Core inserts in chunks, inside the caller's transaction (committed with the fact they record)."""
    for start in range(0, len(rows), CHUNK):
        heartbeat()
        session.execute(insert(CustodyEvent.__table__), rows[start : start + CHUNK])


# --- events written beside existing facts ---------------------------------------------------------


def committed_rows(deal_id: str, serial_rows: list[dict], at: datetime, actor: str) -> list[dict]:
    """A booking's listed serials: committed on the deal, by whoever booked it."""
    return [event_row(r["serial"], CustodyKind.committed, deal_id, at, actor, deal_id=deal_id, value=r["product_id"]) for r in serial_rows]


def pickup_booked_row(pickup: Pickup, at: datetime) -> dict:
    return event_row(
        "", CustodyKind.pickup_booked, pickup.id, at, f"carrier booking ({pickup.carrier})", deal_id=pickup.deal_id, pickup_id=pickup.id,
        value=pickup.tracking_number, detail={"carrier": pickup.carrier, "tracking_number": pickup.tracking_number, "ready_on": pickup.ready_on, "expected_units": pickup.expected_units},
    )


def carrier_row(pickup: Pickup, event_key: str, event: CarrierEvent, applied: bool) -> dict:
    return event_row(
        "", CustodyKind.carrier, event_key, event.occurred_at, f"carrier:{pickup.carrier}", deal_id=pickup.deal_id, pickup_id=pickup.id,
        value=event.status.value, detail={"event_id": event.event_id, "tracking_number": event.tracking_number, "applied": applied},
    )


def receipt_rows(session: Session, deal_id: str, batch_id: str, accepted: list[dict], rejections: list[dict], staged_at: datetime) -> list[dict]:
    """Received and graded events of a batch's accepted items, rejected events of the others."""
    context = session.get(ReceiptContext, batch_id)
    actor = context.actor if context is not None else "returns facility"
    at = as_utc(context.received_at) if context is not None else as_utc(staged_at)
    where = {"facility": context.facility, "operator": context.operator, "tracking_number": context.tracking_number} if context is not None else {}
    where = {k: v for k, v in where.items() if v}
    pickup_id = context.pickup_id if context is not None else None
    rows = []
    for item in accepted:
        rows.append(event_row(
            item["serial"], CustodyKind.received, batch_id, at, actor, deal_id=deal_id, pickup_id=pickup_id, value=item["product_id"],
            detail={**where, "condition": item["condition"], "age_years": item["age_years"], "batch_id": batch_id},
        ))
        rows.append(event_row(item["serial"], CustodyKind.graded, batch_id, at, RULES_ACTOR, deal_id=deal_id, value=item["disposition"],
                              detail={"condition": item["condition"], "age_years": item["age_years"]}))
    for rejection in rejections:
        rows.append(event_row(
            rejection["serial"], CustodyKind.rejected, f"{batch_id}:{rejection['position']}", at, actor, deal_id=deal_id, pickup_id=pickup_id,
            value=rejection["reason_code"], detail={**where, "reason": rejection["reason"], "batch_id": batch_id},
        ))
    return rows


def stage_receipt_context(session: Session, batch_id: str, actor: str, facility: str | None, operator: str | None,
                          tracking_number: str | None, pickup_id: str | None, received_at: datetime) -> None:
    """Who scanned the batch, where, from which pickup (committed with the batch by the caller, whose
    primary key makes a second staging of the batch fail with it)."""
    session.add(ReceiptContext(batch_id=batch_id, actor=actor, facility=facility, operator=operator, tracking_number=tracking_number,
                                   pickup_id=pickup_id, received_at=received_at))


# --- reading a unit's state ---------------------------------------------------------------------


def _chunked(values: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def current_sanitizations(session: Session, serials: list[str]) -> dict[str, CurrentSanitization]:
    """Each serial's latest sanitization record (the current one)."""
    current: dict[str, CurrentSanitization] = {}
    for chunk in _chunked(serials):
        for serial, method, verification in session.execute(
            select(Sanitization.serial, Sanitization.method, Sanitization.verification).where(Sanitization.serial.in_(chunk)).order_by(Sanitization.id)
        ):
            current[serial] = CurrentSanitization(method=method, verification=verification)
    return current


def current_dispositions(session: Session, serials: list[str]) -> dict[str, str]:
    """Each serial's latest `dispositioned` event, where it has one."""
    found: dict[str, str] = {}
    for chunk in _chunked(serials):
        for serial, value in session.execute(
            select(CustodyEvent.serial, CustodyEvent.value).where(CustodyEvent.serial.in_(chunk), CustodyEvent.kind == CustodyKind.dispositioned.value).order_by(CustodyEvent.id)
        ):
            found[serial] = value
    return found


def custody_ended(session: Session, serials: list[str]) -> dict[str, str]:
    """Serials whose custody ended, and how (shipped downstream or resold)."""
    ended: dict[str, str] = {}
    for chunk in _chunked(serials):
        for serial, kind in session.execute(
            select(CustodyEvent.serial, CustodyEvent.kind).where(CustodyEvent.serial.in_(chunk), CustodyEvent.kind.in_([k.value for k in CUSTODY_ENDS]))
        ):
            ended[serial] = kind
    return ended


class Unit(NamedTuple):
    serial: str
    deal_id: str
    product_id: str
    graded: str


def received_units(session: Session, serials: list[str], deal_id: str | None = None) -> dict[str, Unit]:
    units: dict[str, Unit] = {}
    for chunk in _chunked(serials):
        query = select(ReturnedItem.serial, ReturnedItem.deal_id, ReturnedItem.product_id, ReturnedItem.disposition).where(ReturnedItem.serial.in_(chunk))
        if deal_id is not None:
            query = query.where(ReturnedItem.deal_id == deal_id)
        units.update({row.serial: Unit(*row) for row in session.execute(query)})
    return units


class Refusal(NamedTuple):
    serial_number: str
    reason_code: str
    reason: str


class RecordRefused(Exception):
    """Some serials may not take this record: nothing was recorded (422, every refusal listed)."""

    def __init__(self, refusals: list[Refusal]):
        self.refusals = refusals
        super().__init__(f"{len(refusals)} of the serials cannot take this record; nothing was recorded")


def _refuse_unknown_and_ended(session: Session, serials: list[str], units: dict[str, Unit], where: str) -> tuple[list[Refusal], dict[str, str]]:
    refusals = [Refusal(s, RefusalCode.not_received.value, f"not received {where}") for s in serials if s not in units]
    ended = custody_ended(session, [s for s in serials if s in units])
    refusals += [Refusal(s, RefusalCode.custody_ended.value, f"custody ended: {kind.replace('_', ' ')}") for s, kind in ended.items()]
    return refusals, ended


# --- ops records ----------------------------------------------------------------------------------


def record_sanitization(session: Session, deal_id: str, request: SanitizationRequest, actor: str, source_id: str) -> dict:
    """A sanitization run over serials received on the deal: a record and a custody event each."""
    serials = request.serial_numbers
    units = received_units(session, serials, deal_id)
    refusals, _ = _refuse_unknown_and_ended(session, serials, units, f"on deal {deal_id}")
    if refusals:
        raise RecordRefused(refusals)
    now = utcnow()
    detail = {
        "technique": request.technique, "tool": request.tool, "tool_version": request.tool_version, "operator": request.operator,
        "facility": request.facility, "verification": request.verification.value, "verified_by": request.verified_by, "standard": STANDARD,
    }
    if request.note:
        detail["note"] = request.note
    records = [
        dict(serial=s, deal_id=deal_id, source_id=source_id, method=request.method.value, technique=request.technique, tool=request.tool,
             tool_version=request.tool_version, operator=request.operator, facility=request.facility, performed_at=request.at,
             verification=request.verification.value, verified_by=request.verified_by, note=request.note, recorded_by=actor, recorded_at=now)
        for s in serials
    ]
    events = [event_row(s, CustodyKind.sanitized, source_id, request.at, actor, deal_id=deal_id, value=request.method.value, detail=detail, recorded_at=now)
              for s in serials]
    try:
        for start in range(0, len(records), CHUNK):
            session.execute(insert(Sanitization), records[start : start + CHUNK])
        insert_events(session, events)
        session.commit()
    except IntegrityError:  # the same request, recorded by a concurrent retry: it stands once
        session.rollback()
    record = {k: v for k, v in detail.items() if k not in ("standard", "note")}
    return {
        "recorded": len(serials), "method": request.method.value, "verification": request.verification.value, "source_id": source_id,
        "records": [{"serial_number": s, "method": request.method.value, "at": request.at.isoformat(), **record} for s in serials],
    }


def record_dispositions(session: Session, deal_id: str, request: DispositionRequest, actor: str, source_id: str, catalog: Catalog) -> dict:
    """Units sent to their end, each checked against the sanitization rules (all or none)."""
    serials = request.serial_numbers
    units = received_units(session, serials, deal_id)
    refusals, _ = _refuse_unknown_and_ended(session, serials, units, f"on deal {deal_id}")
    current = current_sanitizations(session, [s for s in serials if s in units])
    for serial in serials:
        unit = units.get(serial)
        if unit is None:
            continue
        refused = disposition_refusal(catalog.is_data_bearing(unit.product_id), request.disposition, current.get(serial))
        if refused is not None:
            refusals.append(Refusal(serial, refused[0].value, refused[1]))
    if refusals:
        raise RecordRefused(refusals)
    now = utcnow()
    at = request.at or now
    detail = {k: v for k, v in {"facility": request.facility, "note": request.note}.items() if v}
    try:
        insert_events(session, [event_row(s, CustodyKind.dispositioned, source_id, at, actor, deal_id=deal_id, value=request.disposition.value, detail=detail, recorded_at=now)
                                for s in serials])
        session.commit()
    except IntegrityError:
        session.rollback()
    return {"recorded": len(serials), "disposition": request.disposition.value, "source_id": source_id}


def record_downstream_shipment(session: Session, shipment_id: str, request: DownstreamShipmentRequest, actor: str, catalog: Catalog) -> dict:
    """A shipment to a downstream vendor: its materials by weight and, for each serial it carried, the
    end of its custody. A unit for recycling goes to a recycler, a refreshed one to a resale, each only
    as its sanitization allows (all or none)."""
    existing = session.get(DownstreamShipment, shipment_id)
    if existing is not None:
        return shipment_view(session, existing)
    serials = request.serial_numbers
    units = received_units(session, serials)
    refusals, _ = _refuse_unknown_and_ended(session, serials, units, "by the returns facility")
    wanted = Disposition.recycle if request.kind == ShipmentKind.recycling else Disposition.refresh
    known = [s for s in serials if s in units]
    dispositioned = current_dispositions(session, known)
    current = current_sanitizations(session, known)
    for serial in known:
        unit = units[serial]
        disposition = dispositioned.get(serial, unit.graded)
        if disposition != wanted.value:
            refusals.append(Refusal(serial, RefusalCode.disposition_mismatch.value, f"its disposition is {disposition}: a {request.kind.value} shipment takes units of disposition {wanted.value}"))
            continue
        refused = disposition_refusal(catalog.is_data_bearing(unit.product_id), wanted, current.get(serial))
        if refused is not None:
            refusals.append(Refusal(serial, refused[0].value, refused[1]))
    if refusals:
        raise RecordRefused(sorted(set(refusals)))
    now = utcnow()
    kind = CustodyKind.shipped_downstream if request.kind == ShipmentKind.recycling else CustodyKind.resold
    detail = {"shipment_id": shipment_id, "recycler": request.recycler.name, "certification_id": request.recycler.certification_id}
    if request.lot:
        detail["lot"] = request.lot
    shipment = DownstreamShipment(
        id=shipment_id, kind=request.kind.value, recycler_name=request.recycler.name, certification_id=request.recycler.certification_id,
        shipped_at=request.shipped_at, lot=request.lot, serial_count=len(serials), note=request.note, recorded_by=actor, recorded_at=now,
    )
    try:
        session.add(shipment)
        session.flush()
        for material in request.materials:
            session.add(DownstreamMaterial(shipment_id=shipment_id, material=material.material.value, kg=Decimal(str(material.kg)).quantize(Decimal("0.001"))))
        insert_events(session, [event_row(s, kind, shipment_id, request.shipped_at, actor, deal_id=units[s].deal_id, value=shipment_id, detail=detail, recorded_at=now)
                                for s in serials])
        session.commit()
    except IntegrityError:  # the same shipment id, recorded by a concurrent retry
        session.rollback()
    return shipment_view(session, session.get(DownstreamShipment, shipment_id))


def shipment_view(session: Session, shipment: DownstreamShipment) -> dict:
    materials = session.execute(select(DownstreamMaterial.material, DownstreamMaterial.kg).where(DownstreamMaterial.shipment_id == shipment.id).order_by(DownstreamMaterial.material)).all()
    return {
        "id": shipment.id, "kind": shipment.kind, "recycler": {"name": shipment.recycler_name, "certification_id": shipment.certification_id},
        "shipped_at": as_utc(shipment.shipped_at).isoformat(), "lot": shipment.lot, "serials": shipment.serial_count,
        "materials": [{"material": m, "kg": float(kg)} for m, kg in materials], "recorded_by": shipment.recorded_by,
    }


def record_reason(session: Session, deal_id: str, partner_id: str | None, action: str, code: str, text: str, request_id: str, actor: str) -> None:
    session.add(ReasonRecord(deal_id=deal_id, partner_id=partner_id, action=action, code=code, text=text, request_id=request_id, actor=actor))
    try:
        session.commit()
    except IntegrityError:  # the same request, recorded before
        session.rollback()


# --- a serial's timeline ---------------------------------------------------------------------------


def timeline(session: Session, serial: str, partner_id: str | None = None) -> SerialTimeline | None:
    """A serial's custody, oldest first: its own events and those of the pickups it came in. A partner
    sees the events of its own deals only; None when there are none to show. Two or three index reads."""
    columns = (CustodyEvent.id, CustodyEvent.kind, CustodyEvent.at, CustodyEvent.actor, CustodyEvent.deal_id, CustodyEvent.pickup_id,
               CustodyEvent.value, CustodyEvent.detail_json, CustodyEvent.recorded_at)
    events = session.execute(select(*columns).where(CustodyEvent.serial == serial).order_by(CustodyEvent.id)).all()
    if not events:
        return None
    pickups = sorted({e.pickup_id for e in events if e.pickup_id})
    if pickups:
        events += session.execute(select(*columns).where(CustodyEvent.pickup_id.in_(pickups), CustodyEvent.serial == "").order_by(CustodyEvent.id)).all()
    if partner_id is not None:
        deal_ids = {e.deal_id for e in events if e.deal_id}
        mine = set(session.execute(select(Deal.id).where(Deal.id.in_(deal_ids), Deal.partner_id == partner_id)).scalars()) if deal_ids else set()
        events = [e for e in events if e.deal_id in mine]
        if not events:
            return None
    events.sort(key=lambda e: (as_utc(e.at), e.id))
    return SerialTimeline.model_construct(
        serial_number=serial,
        events=[
            CustodyEventView.model_construct(
                kind=CustodyKind(e.kind), at=as_utc(e.at), actor=e.actor, deal_id=e.deal_id, recorded_at=as_utc(e.recorded_at),
                detail={**({"value": e.value} if e.value is not None else {}), **({"pickup_id": e.pickup_id} if e.pickup_id else {}), **(json.loads(e.detail_json) if e.detail_json else {})},
            )
            for e in events
        ],
    )


# --- certificates -----------------------------------------------------------------------------------


def _iso(at: datetime | None) -> str | None:
    return as_utc(at).isoformat() if at is not None else None


class _Tally:
    def __init__(self):
        self.counts = {status.value: 0 for status in SanitizationStatus}

    def summary(self) -> dict:
        c = self.counts
        return {**c, "complete": c[SanitizationStatus.outstanding.value] == 0 and c[SanitizationStatus.failed.value] == 0}


def _items(session: Session, deal_id: str, catalog: Catalog, tally: _Tally, heartbeat) -> Iterator[dict]:
    """The deal's received units in serial order, each with its custody and sanitization, read a chunk
    of serials at a time."""
    last = None
    while True:
        heartbeat()
        query = select(ReturnedItem.serial, ReturnedItem.product_id, ReturnedItem.condition, ReturnedItem.age_years, ReturnedItem.disposition).where(ReturnedItem.deal_id == deal_id)
        if last is not None:
            query = query.where(ReturnedItem.serial > last)
        rows = session.execute(query.order_by(ReturnedItem.serial).limit(CHUNK)).all()
        if not rows:
            return
        first, last = rows[0].serial, rows[-1].serial
        custody: dict[str, list] = defaultdict(list)
        for e in session.execute(
            select(CustodyEvent.serial, CustodyEvent.kind, CustodyEvent.at, CustodyEvent.actor, CustodyEvent.value, CustodyEvent.pickup_id, CustodyEvent.detail_json)
            .where(CustodyEvent.deal_id == deal_id, CustodyEvent.serial >= first, CustodyEvent.serial <= last)
            .order_by(CustodyEvent.serial, CustodyEvent.id)
        ):
            custody[e.serial].append(e)
        records: dict[str, Sanitization] = {}
        for record in session.execute(
            select(Sanitization).where(Sanitization.deal_id == deal_id, Sanitization.serial >= first, Sanitization.serial <= last).order_by(Sanitization.serial, Sanitization.id)
        ).scalars():
            records[record.serial] = record
        for serial, product_id, condition, age, graded in rows:
            events = custody.get(serial, [])
            disposition = graded
            pickup_id = tracking = None
            for e in events:
                if e.kind == CustodyKind.dispositioned.value:
                    disposition = e.value
                elif e.kind == CustodyKind.received.value and e.pickup_id:
                    pickup_id = e.pickup_id
                    tracking = json.loads(e.detail_json).get("tracking_number") if e.detail_json else None
            data_bearing = catalog.is_data_bearing(product_id)
            record = records.get(serial)
            current = CurrentSanitization(method=record.method, verification=record.verification) if record is not None else None
            status = sanitization_status(data_bearing, disposition, current)
            tally.counts[status.value] += 1
            planned = rules.sanitization_for(Disposition(disposition)) if disposition in ("refresh", "recycle", "other") else None
            yield {
                "serial_number": serial,
                "product_id": product_id,
                "condition": condition,
                "age_years": age,
                "disposition": disposition,
                "weee_category": catalog.weee_category(product_id),
                "data_bearing": data_bearing,
                "pickup_id": pickup_id,
                "tracking_number": tracking,
                # The method its disposition calls for (kept as before: method and standard)...
                "sanitization": {"method": planned.value, "standard": STANDARD} if data_bearing and planned is not None else None,
                # ... the record that stands (the latest), and where the unit stands.
                "sanitization_record": None if record is None else {
                    "method": record.method, "technique": record.technique, "tool": record.tool, "tool_version": record.tool_version,
                    "operator": record.operator, "facility": record.facility, "at": _iso(record.performed_at),
                    "verification": record.verification, "verified_by": record.verified_by, "standard": STANDARD,
                },
                "sanitization_status": status.value,
                "custody": [{"kind": e.kind, "at": _iso(e.at), "actor": e.actor, "value": e.value} for e in events],
            }
        if len(rows) < CHUNK:
            return


def _pickups(session: Session, deal_id: str) -> list[dict]:
    pickups = {p.id: p for p in session.execute(select(Pickup).where(Pickup.deal_id == deal_id)).scalars()}
    events: dict[str, list] = defaultdict(list)
    for e in session.execute(
        select(CustodyEvent.pickup_id, CustodyEvent.kind, CustodyEvent.at, CustodyEvent.value)
        .where(CustodyEvent.deal_id == deal_id, CustodyEvent.serial == "", CustodyEvent.kind == CustodyKind.carrier.value)
        .order_by(CustodyEvent.pickup_id, CustodyEvent.at, CustodyEvent.id)
    ):
        events[e.pickup_id].append({"at": _iso(e.at), "value": e.value})
    return [
        {"pickup_id": pickup_id, "carrier": p.carrier, "tracking_number": p.tracking_number, "events": events.get(pickup_id, [])}
        for pickup_id, p in sorted(pickups.items())
    ]


def build_certificate(session: Session, view: DealView, catalog: Catalog, heartbeat=lambda: None) -> tuple[str, str, bool]:
    """(canonical JSON, its SHA-256, whether every unit's sanitization is complete), built item by item."""
    tally = _Tally()
    units = session.execute(select(func.count()).select_from(ReturnedItem).where(ReturnedItem.deal_id == view.id)).scalar_one()
    fields = {
        "deal_id": view.id,
        "partner_id": view.partner_id,
        "status": view.status.value,
        "booked_at": view.booked_at.isoformat(),
        "return_deadline": view.return_deadline.isoformat(),
        "units_received": units,
        "dispositions": view.dispositions.model_dump(),
        "items": Streamed(_items(session, view.id, catalog, tally, heartbeat)),
        "pickups": _pickups(session, view.id),
        "sanitization": Later(tally.summary),
    }
    digest = hashlib.sha256()
    pieces = []
    for piece in stream_canonical(fields):
        pieces.append(piece)
        digest.update(piece.encode())
    return "".join(pieces), digest.hexdigest(), tally.summary()["complete"]


def issue_at_close(session: Session, view: DealView, catalog: Catalog | None = None, heartbeat=lambda: None) -> str:
    """The deal's certificate, issued once at its close: final when every unit's sanitization is
    complete, else provisional (listing what is outstanding). Returns its hash."""
    catalog = catalog or default_catalog()
    existing = session.get(Certificate, view.id)
    if existing is not None:
        return existing.content_hash
    body, digest, complete = build_certificate(session, view, catalog, heartbeat)
    status = "final" if complete else "provisional"
    cid = certificate_id(view.id, digest)
    session.add(Certificate(deal_id=view.id, content_json=body, content_hash=digest, certificate_id=cid, status=status))
    _add_parts(session, cid, body)
    session.add(CertificateIssue(certificate_id=cid, deal_id=view.id, content_hash=digest, status=status))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return session.get(Certificate, view.id).content_hash
    if not complete:
        # Sanitizations recorded while this one was built were checked against no certificate: look again.
        certify_if_complete(session, view.id, catalog, heartbeat)
    return digest


def outstanding(session: Session, deal_id: str, catalog: Catalog) -> int:
    """Received units of the deal whose sanitization is outstanding or failed (0: a final certificate may be issued)."""
    count = 0
    last = None
    while True:
        query = select(ReturnedItem.serial, ReturnedItem.product_id, ReturnedItem.disposition).where(ReturnedItem.deal_id == deal_id)
        if last is not None:
            query = query.where(ReturnedItem.serial > last)
        rows = session.execute(query.order_by(ReturnedItem.serial).limit(CHUNK)).all()
        if not rows:
            return count
        last = rows[-1].serial
        bearing = [r for r in rows if catalog.is_data_bearing(r.product_id)]
        serials = [r.serial for r in bearing]
        current = current_sanitizations(session, serials)
        dispositions = current_dispositions(session, serials)
        count += sum(
            1 for r in bearing
            if sanitization_status(True, dispositions.get(r.serial, r.disposition), current.get(r.serial)) != SanitizationStatus.verified
        )
        if len(rows) < CHUNK:
            return count


def certify_if_complete(session: Session, deal_id: str, catalog: Catalog | None = None, heartbeat=lambda: None) -> bool:
    """Issue the final certificate of a closed deal whose provisional one awaited sanitizations, once
    none is outstanding. True if it was issued now."""
    catalog = catalog or default_catalog()
    current = session.get(Certificate, deal_id)
    if current is None or current.status != "provisional" or outstanding(session, deal_id, catalog) > 0:
        return False
    deal = session.get(Deal, deal_id)
    view = DealView.model_validate_json(deal.view_json)
    body, digest, complete = build_certificate(session, view, catalog, heartbeat)
    if not complete:
        return False
    cid = certificate_id(deal_id, digest)
    now = utcnow()
    replaced = session.execute(
        update(Certificate).where(Certificate.deal_id == deal_id, Certificate.status == "provisional")
        .values(content_json=body, content_hash=digest, certificate_id=cid, status="final", issued_at=now)
    ).rowcount == 1
    if not replaced:
        session.rollback()
        return False
    _add_parts(session, cid, body)
    session.execute(update(CertificateIssue).where(CertificateIssue.deal_id == deal_id, CertificateIssue.superseded_at.is_(None)).values(superseded_at=now))
    session.add(CertificateIssue(certificate_id=cid, deal_id=deal_id, content_hash=digest, status="final", issued_at=now))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return False
    return True


def verify(session: Session, cert_id: str, digest: str) -> dict:
    """Whether `digest` is the hash of the certificate issued as `cert_id`: nothing else is told, so
    nothing personal (no deal, partner, customer or serial) is revealed."""
    issue = session.get(CertificateIssue, cert_id)
    valid = issue is not None and issue.content_hash == digest.lower()
    answer = {"certificate_id": cert_id, "valid": valid}
    if valid:
        answer.update(status=issue.status, issued_at=_iso(issue.issued_at), superseded=issue.superseded_at is not None)
    return answer


class StoredCertificate(NamedTuple):
    deal_id: str
    certificate_id: str | None
    content_hash: str
    status: str
    issued_at: datetime


def stored_certificate(session: Session, deal_id: str) -> StoredCertificate | None:
    """The deal's current certificate, without its content."""
    row = session.execute(
        select(Certificate.deal_id, Certificate.certificate_id, Certificate.content_hash, Certificate.status, Certificate.issued_at).where(Certificate.deal_id == deal_id)
    ).first()
    return StoredCertificate(*row) if row is not None else None


PART_CHARS = 1 << 20


def _add_parts(session: Session, cid: str, body: str) -> None:
    rows = [{"certificate_id": cid, "seq": n, "text": body[start : start + PART_CHARS]} for n, start in enumerate(range(0, len(body), PART_CHARS))]
    for start in range(0, len(rows), 16):  # 16 MB a statement
        session.execute(insert(CertificatePart), rows[start : start + 16])


def certificate_text(url: str, cid: str | None, deal_id: str) -> CertificateText:
    """The stored JSON, read a slice at a time (one query each) from its parts; a certificate issued
    before parts were kept (small) is read whole."""
    from store.db import session_scope

    with session_scope(url) as session:
        last = session.execute(select(func.max(CertificatePart.seq)).where(CertificatePart.certificate_id == cid)).scalar_one() if cid is not None else None
        if last is None:
            text = session.execute(select(Certificate.content_json).where(Certificate.deal_id == deal_id)).scalar_one()
            return CertificateText.of(text)
        tail = session.execute(select(func.length(CertificatePart.text)).where(CertificatePart.certificate_id == cid, CertificatePart.seq == last)).scalar_one()
    length = last * PART_CHARS + tail

    def read(start: int, size: int) -> str:
        first, last = start // PART_CHARS, (start + size - 1) // PART_CHARS
        with session_scope(url) as session:
            parts = session.execute(
                select(CertificatePart.text).where(CertificatePart.certificate_id == cid, CertificatePart.seq >= first, CertificatePart.seq <= last).order_by(CertificatePart.seq)
            ).scalars().all()
        joined = "".join(parts)
        offset = start - first * PART_CHARS
        return joined[offset : offset + size]

    return CertificateText(length, read, window=PART_CHARS)


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:16].upper()
