"""EasyPost's webhook: `tracker.updated` events in EasyPost's own format and signature scheme.

Signature: `X-Hmac-Signature: hmac-sha256-hex=<hex HMAC-SHA256(NFKD(secret), raw body)>`, checked by
the client library's own `easypost.util.validate_webhook` against each EASYPOST_WEBHOOK_SECRET (several
during a rotation). That scheme signs the body only, so freshness is the signed event's own time
(its `updated_at`, else `created_at`): an event signed longer than TAKEBACK_EASYPOST_WEBHOOK_TOLERANCE
ago (or ahead) is refused like a bad signature, a 401: a replayed capture of an old event changes
nothing, and news a late redelivery carried reaches us through the tracking poll instead.

The tracker's details become carrier events (activities/easypost_carrier.tracker_events) recorded by
the same path as our own webhook's: once per event, never backwards, a failure or return escalated
to the deal. Answered 200 (EasyPost's preferred success); a tracker that is not one of our pickups,
or another kind of event, is acknowledged and ignored, so EasyPost does not retry it.
"""

import time
from datetime import datetime, timezone

from easypost.errors import SignatureVerificationError
from easypost.util import validate_webhook
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import ClientDep, SettingsDep, temporal
from api.problems import Problem
from service import deals as service

router = APIRouter(prefix="/v1", tags=["carrier events"])
MAX_BODY = 256 * 1024  # a tracker with its whole history of details; EasyPost's events are a few KiB
ANSWER_WITHIN = 6.0  # seconds: EasyPost counts an answer after 7 s as a failure and retries
TRACKER_EVENTS = ("tracker.updated", "tracker.created")


def verify_signature(body: bytes, header: str | None, secrets: list[str]) -> dict:
    """The event if `header` is EasyPost's signature of `body` with any of `secrets`, else a 401 problem."""
    if not secrets:  # a deployment on the simulated carrier: for it this route does not exist
        raise Problem(404, "EasyPost webhooks are not enabled on this server (EASYPOST_WEBHOOK_SECRET, with TAKEBACK_CARRIER=easypost)", "webhook-not-enabled")
    if not header:
        raise Problem(401, "missing X-Hmac-Signature header", "signature-missing")
    if not header.isascii():  # no signature of ours; compare_digest raises TypeError on such text (was a 500)
        raise Problem(401, "signature does not match", "signature-invalid")
    event = None
    for secret in secrets:  # each secret is tried, so the time taken says nothing about which one matched
        try:
            event = validate_webhook(body, {"X-Hmac-Signature": header}, secret)
        except SignatureVerificationError:
            continue
        except ValueError:  # signed, but not JSON
            raise Problem(422, "the event is not JSON", "validation-error") from None
    if event is None:
        raise Problem(401, "signature does not match", "signature-invalid")
    if not isinstance(event, dict):
        raise Problem(422, "the event is not a JSON object", "validation-error")
    return event


def _signed_at(event: dict) -> datetime | None:
    moments = []
    for name in ("updated_at", "created_at"):
        value = event.get(name)
        if isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            moments.append(moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc))
    return max(moments) if moments else None


def refuse_stale(event: dict, tolerance_seconds: float, now: float | None = None) -> None:
    signed_at = _signed_at(event)
    if signed_at is None:
        raise Problem(401, "the signed event carries no time (created_at, updated_at)", "signature-stale")
    if abs((now or time.time()) - signed_at.timestamp()) > tolerance_seconds:
        raise Problem(401, f"the signed event is from {signed_at.isoformat()}, outside the {tolerance_seconds:g} s tolerance", "signature-stale")


@router.post("/carrier-events/easypost", summary="EasyPost's tracker webhook (signed with X-Hmac-Signature, no API key)")
async def easypost_event(request: Request, settings: SettingsDep, client: ClientDep):
    body = await request.body()
    if len(body) > MAX_BODY:
        raise Problem(413, f"an EasyPost event is at most {MAX_BODY} bytes here", "payload-too-large")
    event = verify_signature(body, request.headers.get("x-hmac-signature"), settings.easypost_webhook_secrets)
    refuse_stale(event, settings.easypost_webhook_tolerance_seconds)
    tracker = event.get("result")
    if event.get("description") not in TRACKER_EVENTS or not isinstance(tracker, dict) or tracker.get("object") != "Tracker":
        return JSONResponse({"status": "ignored", "reason": f"not a tracker event: {str(event.get('description'))[:100]}"})
    from activities.easypost_carrier import tracker_events

    try:
        events = tracker_events(tracker)
    except (ValueError, TypeError, AttributeError) as error:  # a field of the wrong shape (a list, a number for a time: was a 500)
        raise Problem(422, f"the tracker does not match EasyPost's schema: {str(error)[:300]}", "validation-error") from None

    async def record() -> dict:
        counts = {"events": len(events), "applied": 0, "repeated": 0}
        for carrier_event in events:
            try:
                outcome = await service.send_carrier_event(client, settings, carrier_event)
            except service.UnknownTracking:
                return {"status": "ignored", "reason": "not a tracking number of ours"}
            counts["applied"] += outcome.applied and not outcome.repeated
            counts["repeated"] += outcome.repeated
        return {"status": "accepted", **counts}

    return JSONResponse(await temporal(record(), timeout=ANSWER_WITHIN))
