"""Carrier webhooks: signed with HMAC-SHA256 over `<t>.<raw body>`, deduplicated by event id."""

import hashlib
import hmac
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from api.deps import ClientDep, SettingsDep, temporal
from api.problems import Problem, not_found
from domain.models import CarrierEvent
from service import deals as service

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

    try:
        outcome = await temporal(service.send_carrier_event(client, settings, event))
    except service.UnknownTracking:
        raise not_found(f"tracking number {event.tracking_number}") from None
    if outcome.repeated:
        return JSONResponse({"status": "ignored", "reason": "event already received"}, status_code=202)
    return JSONResponse({"status": "accepted"}, status_code=202)
