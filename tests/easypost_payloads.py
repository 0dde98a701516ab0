"""EasyPost's own example payloads, as its public documentation shows them, and events built in their shape.

- `DOCS_TRACKER_UPDATED`: the sample webhook of https://www.easypost.com/tracking-webhooks ("Sample
  Webhook JSON", a `tracker.updated` Event). Our stored copy of the page ends inside its second
  tracking detail; the third (`delivered`, matching the tracker's status) is added in the same shape.
- `DOCS_TRACKER`: the Tracker of EasyPost's official response examples
  (github.com/EasyPost/examples, official/responses/trackers/tracker_retrieve.json), abridged.
"""

import copy
import hashlib
import hmac
import json
import unicodedata
import uuid
from datetime import datetime, timezone

DOCS_TRACKER_UPDATED = {
    "id": "evt_qatAiJDM",
    "object": "Event",
    "created_at": "2014-11-19T10:51:54Z",
    "updated_at": "2014-11-19T10:51:54Z",
    "description": "tracker.updated",
    "mode": "test",
    "previous_attributes": {"status": "unknown"},
    "pending_urls": [],
    "completed_urls": [],
    "result": {
        "id": "trk_Txyy1vaM",
        "object": "Tracker",
        "mode": "test",
        "tracking_code": "EZ4000000004",
        "status": "delivered",
        "created_at": "2014-11-18T10:51:54Z",
        "updated_at": "2014-11-18T10:51:54Z",
        "signed_by": "John Tester",
        "weight": 17.6,
        "est_delivery_date": "2014-08-27T00:00:00Z",
        "shipment_id": None,
        "carrier": "UPS",
        "public_url": "https://track.easypost.com/djE7...",
        "tracking_details": [
            {
                "object": "TrackingDetail",
                "message": "BILLING INFORMATION RECEIVED",
                "status": "pre_transit",
                "datetime": "2014-08-21T14:24:00Z",
                "tracking_location": {"object": "TrackingLocation", "city": None, "state": None, "country": None, "zip": None},
            },
            {
                "object": "TrackingDetail",
                "message": "ORIGIN SCAN",
                "status": "in_transit",
                "datetime": "2014-08-21T14:48:00Z",
                "tracking_location": {"object": "TrackingLocation", "city": None, "state": None, "country": None, "zip": None},
            },
            {
                "object": "TrackingDetail",
                "message": "DELIVERED",
                "status": "delivered",
                "datetime": "2014-08-24T15:33:00Z",
                "tracking_location": {"object": "TrackingLocation", "city": None, "state": None, "country": None, "zip": None},
            },
        ],
    },
}

DOCS_TRACKER = {
    "id": "trk_f7ed99b497a944fb84f99bf6a9a5f8ea",
    "object": "Tracker",
    "mode": "test",
    "tracking_code": "9461200106068143633117",
    "status": "pre_transit",
    "status_detail": "status_update",
    "created_at": "2022-10-17T17:18:08Z",
    "updated_at": "2022-10-17T17:18:08Z",
    "signed_by": None,
    "weight": None,
    "est_delivery_date": "2022-10-17T17:18:08Z",
    "shipment_id": "shp_b3b2b84b0ad14a2ca926ab8fddd02ef2",
    "carrier": "USPS",
    "tracking_details": [
        {
            "object": "TrackingDetail", "message": "Pre-Shipment Info Sent to USPS", "description": None, "status": "pre_transit",
            "status_detail": "status_update", "datetime": "2022-09-17T17:18:08Z", "source": "USPS", "carrier_code": None,
            "tracking_location": {"object": "TrackingLocation", "city": None, "state": None, "country": None, "zip": None},
        },
    ],
    "fees": [],
    "public_url": "https://track.easypost.com/djE6dHJrX2Y3ZWQ5OWI0OTdhOTQ0ZmI4NGY5OWJmNmE5YTVmOGVh",
}


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def tracker_updated(tracker: dict, previous_status: str | None = None, at: str | None = None) -> dict:
    """A `tracker.updated` Event carrying `tracker`, shaped as the documented sample (fresh id and times)."""
    event = copy.deepcopy(DOCS_TRACKER_UPDATED)
    event.update(id=f"evt_{uuid.uuid4().hex}", created_at=at or now_iso(), updated_at=at or now_iso(), previous_attributes={"status": previous_status or "unknown"})
    event["result"] = copy.deepcopy(tracker)
    return event


def sign(body: bytes, secret: str) -> dict:
    """Headers as EasyPost sends them: `X-Hmac-Signature: hmac-sha256-hex=<hex>` over the raw body,
    keyed with the NFKD form of the secret (the scheme of easypost.util.validate_webhook)."""
    digest = hmac.new(unicodedata.normalize("NFKD", secret).encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hmac-Signature": f"hmac-sha256-hex={digest}", "Content-Type": "application/json"}


def signed(event: dict, secret: str) -> tuple[bytes, dict]:
    body = json.dumps(event).encode()
    return body, sign(body, secret)
