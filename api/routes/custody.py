"""Chain of custody (issue 14): a serial's timeline, sanitization records, dispositions, downstream
shipments, certificate verification and counted reasons. Rules: domain/custody.py."""

import asyncio
import hashlib
from datetime import date, datetime, time, timedelta, timezone
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from api.certificates import actor_of
from api.deps import CallerDep, SettingsDep, owned_deal, require_ops
from api.idempotency import Action, once
from api.problems import Problem, not_found
from domain.catalog import default_catalog
from domain.custody import DispositionRequest, DownstreamShipmentRequest, SanitizationRequest, SerialTimeline
from domain.models import DealId, Serial
from store import custody
from store.db import session_scope

router = APIRouter(tags=["custody"])


class Refused(BaseModel):
    serial_number: str
    reason_code: str
    reason: str


class SanitizationRecordView(BaseModel):
    serial_number: str
    method: str
    technique: str
    tool: str
    tool_version: str
    operator: str
    facility: str
    at: datetime
    verification: str
    verified_by: str


class Recorded(BaseModel):
    deal_id: str
    recorded: int
    source_id: str
    method: str | None = None
    verification: str | None = None
    disposition: str | None = None
    certificate_status: str | None = None  # the deal's certificate after this record, once it has closed
    records: list[SanitizationRecordView] | None = None  # a sanitization: the record of each serial


def _refused(error: custody.RecordRefused) -> Problem:
    return Problem(422, str(error), "custody-refused", refused=[r._asdict() for r in error.refusals[:5000]])


def _derived(prefix: str, caller, scope: str, key: str | None) -> str:
    return prefix + hashlib.sha256(f"{caller.key_id}:{scope}:{key}".encode()).hexdigest()[:20]


@router.get("/v1/serials/{serial}", response_model=SerialTimeline, summary="A serial's chain of custody, oldest first (ops; a partner for its own deals)")
async def serial_timeline(serial: Annotated[Serial, Path()], caller: CallerDep, settings: SettingsDep):
    def load():
        with session_scope(settings.effective_database_url) as session:
            return custody.timeline(session, serial, None if caller.is_ops else caller.partner_id)

    found = await asyncio.to_thread(load)
    if found is None:
        raise not_found(f"serial {serial}")
    return Response(found.model_dump_json(), media_type="application/json")  # built by the store as the model: not validated again


async def _record(request: Request, caller, settings, deal_id: str, name: str, body: BaseModel, key: str | None, write) -> Recorded:
    deal = await owned_deal(settings, caller, deal_id)
    require_ops(caller, f"recording {name}")
    url = settings.effective_database_url
    action = Action(name, deal_id=deal_id, partner_id=deal.partner_id, detail={"serials": len(body.serial_numbers)})

    async def run(source_id: str | None) -> Recorded:
        source_id = source_id or custody.new_id("R")

        def go() -> Recorded:
            with session_scope(url) as session:
                try:
                    result = write(session, source_id)
                except custody.RecordRefused as error:
                    raise _refused(error) from None
                custody.certify_if_complete(session, deal_id, default_catalog())
                stored = custody.stored_certificate(session, deal_id)
            return Recorded(deal_id=deal_id, certificate_status=stored.status if stored else None, **result)

        return await asyncio.to_thread(go)

    return await once(request, caller, settings, key=key, body=body, status_code=201, action=action, run=run,
                      derive=lambda: _derived("R", caller, f"{name}:{deal_id}", key))


@router.post("/v1/deals/{deal_id}/sanitizations", status_code=201, response_model=Recorded,
             summary="Sanitization records (NIST SP 800-88) of received serials, one or a batch (ops)")
async def sanitizations(
    deal_id: DealId, body: SanitizationRequest, caller: CallerDep, settings: SettingsDep, request: Request,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
):
    """Every serial must have been received on the deal and still be in custody, else 422 and nothing is
    recorded. A failed verification is recorded too: it blocks the unit until a passed record follows."""
    return await _record(request, caller, settings, deal_id, "sanitization", body, idempotency_key,
                         lambda session, source_id: custody.record_sanitization(session, deal_id, body, actor_of(caller), source_id))


@router.post("/v1/deals/{deal_id}/dispositions", status_code=201, response_model=Recorded,
             summary="Send received units to refresh, recycle or another end, as their sanitization allows (ops)")
async def dispositions(
    deal_id: DealId, body: DispositionRequest, caller: CallerDep, settings: SettingsDep, request: Request,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
):
    """A data-bearing unit goes to refresh only after a passed clear or purge, to recycle only after a
    passed purge or destroy; a failed verification blocks it. Any refusal: 422, nothing recorded."""
    return await _record(request, caller, settings, deal_id, "disposition", body, idempotency_key,
                         lambda session, source_id: custody.record_dispositions(session, deal_id, body, actor_of(caller), source_id, default_catalog()))


class MaterialKg(BaseModel):
    material: str
    kg: float


class RecyclerView(BaseModel):
    name: str
    certification_id: str


class ShipmentView(BaseModel):
    id: str
    kind: str
    recycler: RecyclerView
    shipped_at: datetime
    lot: str | None
    serials: int
    materials: list[MaterialKg]
    recorded_by: str


@router.post("/v1/downstream-shipments", status_code=201, response_model=ShipmentView,
             summary="Material and units shipped to a downstream recycler (or sold on): their custody ends (ops)")
async def downstream_shipment(
    body: DownstreamShipmentRequest, caller: CallerDep, settings: SettingsDep, request: Request,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
):
    require_ops(caller, "recording a downstream shipment")
    url = settings.effective_database_url
    action = Action("downstream", detail={"serials": len(body.serial_numbers), "kind": body.kind.value})

    async def run(shipment_id: str | None) -> ShipmentView:
        shipment_id = shipment_id or custody.new_id("DS")

        def go() -> ShipmentView:
            with session_scope(url) as session:
                try:
                    return ShipmentView.model_validate(custody.record_downstream_shipment(session, shipment_id, body, actor_of(caller), default_catalog()))
                except custody.RecordRefused as error:
                    raise _refused(error) from None

        return await asyncio.to_thread(go)

    return await once(request, caller, settings, key=idempotency_key, body=body, status_code=201, action=action, run=run,
                      derive=lambda: _derived("DS", caller, "downstream", idempotency_key))


class Verified(BaseModel):
    certificate_id: str
    valid: bool
    status: str | None = None  # final | provisional, when valid
    issued_at: datetime | None = None
    superseded: bool | None = None  # a provisional certificate replaced by the final one


CertificateIdParam = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9-]+$")]


@router.get("/v1/certificates/{certificate_id}/verify", response_model=Verified, summary="Is this the hash of the certificate issued with this id? (no key)")
async def verify_certificate(certificate_id: CertificateIdParam, settings: SettingsDep, hash: Annotated[str, Query(pattern=r"^[0-9a-fA-F]{64}$")]):
    """Answers whether the hash is the one issued, and nothing personal: no deal, partner, customer or serial."""

    def check():
        with session_scope(settings.effective_database_url) as session:
            return custody.verify(session, certificate_id, hash)

    return await asyncio.to_thread(check)


def period(from_: date | None, to: date | None, year: int | None, quarter: int | None) -> tuple[datetime | None, datetime | None]:
    """[start, end) in UTC: `from`..`to` (days, both included), a `year`, or a `quarter` (1-4) of a year."""
    if quarter is not None and year is None:
        raise Problem(422, "quarter needs a year", "invalid-period")
    if year is not None and (from_ is not None or to is not None):
        raise Problem(422, "give from/to, or year (and quarter), not both", "invalid-period")
    if year is not None:
        if quarter is not None:
            start = datetime(year, 3 * (quarter - 1) + 1, 1, tzinfo=timezone.utc)
            end = datetime(year + (quarter == 4), 1 if quarter == 4 else 3 * quarter + 1, 1, tzinfo=timezone.utc)
        else:
            start, end = datetime(year, 1, 1, tzinfo=timezone.utc), datetime(year + 1, 1, 1, tzinfo=timezone.utc)
        return start, end
    start = datetime.combine(from_, time(), tzinfo=timezone.utc) if from_ else None
    try:
        end = datetime.combine(to, time(), tzinfo=timezone.utc) + timedelta(days=1) if to else None  # `to` is a whole day
    except OverflowError:
        end = None  # to 9999-12-31: no end
    if start and end and end <= start:
        raise Problem(422, "`to` is before `from`", "invalid-period")
    return start, end


@router.get("/v1/reports/reasons", summary="Cancellations, extensions and refused receipt lines counted by reason code (ops)")
async def reasons_report(
    caller: CallerDep, settings: SettingsDep,
    from_: Annotated[date | None, Query(alias="from")] = None, to: date | None = None,
    year: Annotated[int | None, Query(ge=2000, le=2200)] = None, quarter: Annotated[int | None, Query(ge=1, le=4)] = None,
) -> dict:
    require_ops(caller, "counting reasons")
    start, end = period(from_, to, year, quarter)

    def count():
        from store.reports import reason_counts

        with session_scope(settings.effective_database_url) as session:
            return reason_counts(session, start, end)

    return await asyncio.to_thread(count)
