"""Carrier webhooks: signed with HMAC-SHA256 over `<t>.<raw body>`, deduplicated by event id."""

import asyncio
import hashlib
import hmac
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from api.deps import ClientDep, SettingsDep, temporal
from api.problems import Problem, not_found
from domain.models import CarrierEvent
from service import deals as service
from store import deals as store
from store.db import session_scope
from store.tables import CarrierWebhookEvent

router = APIRouter(prefix="/v1", tags=["carrier events"])
TOLERANCE_SECONDS = 300
MAX_BODY = 64 * 1024


def verify_signature(header: str | None, body: bytes, secret: str, now: float | None = None) -> None:
    """`Takeback-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`."""
    if not header:
        raise Problem(401, "missing Takeback-Signature header", "signature-missing")
    parts = dict(part.strip().split("=", 1) for part in header.split(",") if "=" in part)
    timestamp, signature = parts.get("t", ""), parts.get("v1", "")
    if not timestamp.isdigit() or not signature:
        raise Problem(401, "malformed Takeback-Signature header", "signature-malformed")
    if abs((now or time.time()) - int(timestamp)) > TOLERANCE_SECONDS:
        raise Problem(401, f"signature timestamp outside the {TOLERANCE_SECONDS} s tolerance", "signature-stale")
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise Problem(401, "signature does not match", "signature-invalid")


@router.post("/carrier-events", status_code=202, summary="A carrier tracking event (signed webhook, no API key)")
async def carrier_event(request: Request, settings: SettingsDep, client: ClientDep):
    body = await request.body()
    if len(body) > MAX_BODY:
        raise Problem(413, f"a carrier event is at most {MAX_BODY} bytes", "payload-too-large")
    verify_signature(request.headers.get("takeback-signature"), body, settings.carrier_webhook_secret)
    try:
        event = CarrierEvent.model_validate_json(body)
    except ValidationError as error:
        raise Problem(422, "the event does not match the schema", "validation-error", errors=[{"loc": list(e["loc"]), "msg": e["msg"]} for e in error.errors()][:20]) from None

    def claim() -> str:
        with session_scope(settings.effective_database_url) as session:
            if store.find_pickup_by_tracking(session, event.tracking_number) is None:
                return "unknown"
            session.add(CarrierWebhookEvent(event_id=event.event_id, tracking_number=event.tracking_number))
            try:
                session.commit()
                return "new"
            except IntegrityError:
                session.rollback()
                return "repeat"

    outcome = await asyncio.to_thread(claim)
    if outcome == "unknown":
        raise not_found(f"tracking number {event.tracking_number}")
    if outcome == "repeat":
        return JSONResponse({"status": "ignored", "reason": "event already received"}, status_code=202)
    try:
        await temporal(service.send_carrier_event(client, event))
    except Exception as error:
        from temporalio.service import RPCError, RPCStatusCode

        if isinstance(error, RPCError) and error.status == RPCStatusCode.NOT_FOUND:
            return JSONResponse({"status": "ignored", "reason": "the shipment is no longer tracked"}, status_code=202)
        await asyncio.to_thread(_forget, settings, event.event_id)  # so the carrier's retry is not dropped
        raise
    return JSONResponse({"status": "accepted"}, status_code=202)


def _forget(settings, event_id: str) -> None:
    with session_scope(settings.effective_database_url) as session:
        row = session.get(CarrierWebhookEvent, event_id)
        if row is not None:
            session.delete(row)
            session.commit()
