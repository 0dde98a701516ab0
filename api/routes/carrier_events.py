"""Carrier webhooks: signed with HMAC-SHA256 over `<t>.<raw body>`, deduplicated by (tracking number, event id)."""

import hashlib
import hmac
import re
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
TIMESTAMP = re.compile(r"[0-9]{1,12}")  # ASCII only; 12 digits reach the year 33658
SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")
MAX_SIGNATURES = 4


def parse_signature_header(header: str) -> tuple[str, list[str]]:
    """`t=<unix seconds>,v1=<hex>[,v1=<hex>...]` -> (t, [v1, ...]); anything else is a 401, never a 500.

    `t` is 1 to 12 ASCII digits (not `int()`'s idea of a digit: `²`, `١`, or 5,000 of them), each
    `v1` is 64 hex digits. Several `v1` let a carrier sign with an old and a new secret
    during a rotation; other schemes (`v0`, ...) are ignored."""
    timestamps, signatures = [], []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            timestamps.append(value)
        elif name == "v1":
            signatures.append(value)
    if len(timestamps) != 1 or not TIMESTAMP.fullmatch(timestamps[0]) or not signatures or len(signatures) > MAX_SIGNATURES:
        raise Problem(401, "malformed Takeback-Signature header: t=<unix seconds>,v1=<hex HMAC-SHA256>", "signature-malformed")
    if not all(SIGNATURE.fullmatch(signature) for signature in signatures):
        raise Problem(401, "malformed Takeback-Signature header: v1 is 64 hex digits", "signature-malformed")
    return timestamps[0], signatures


def verify_signature(header: str | None, body: bytes, secrets: list[bytes], now: float | None = None) -> None:
    """`Takeback-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`; any
    `v1` made with any of `secrets` (several during a rotation) passes."""
    if not secrets:
        raise Problem(503, "carrier webhooks are not configured on this server (TAKEBACK_CARRIER_WEBHOOK_SECRET)", "webhook-not-configured")
    if not header:
        raise Problem(401, "missing Takeback-Signature header", "signature-missing")
    timestamp, signatures = parse_signature_header(header)
    if abs((now or time.time()) - int(timestamp)) > TOLERANCE_SECONDS:
        raise Problem(401, f"signature timestamp outside the {TOLERANCE_SECONDS} s tolerance", "signature-stale")
    signed = timestamp.encode() + b"." + body
    expected = [hmac.new(secret, signed, hashlib.sha256).hexdigest().encode() for secret in secrets]
    # Every pair is compared, so the time taken says nothing about which secret or signature matched.
    matched = False
    for candidate in signatures:
        for digest in expected:
            matched |= hmac.compare_digest(digest, candidate.lower().encode())
    if not matched:
        raise Problem(401, "signature does not match", "signature-invalid")


@router.post("/carrier-events", status_code=202, summary="A carrier tracking event (signed webhook, no API key)")
async def carrier_event(request: Request, settings: SettingsDep, client: ClientDep):
    body = await request.body()
    if len(body) > MAX_BODY:
        raise Problem(413, f"a carrier event is at most {MAX_BODY} bytes", "payload-too-large")
    verify_signature(request.headers.get("takeback-signature"), body, settings.carrier_webhook_secrets)
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
