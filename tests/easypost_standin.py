"""An EasyPost v2 stand-in on 127.0.0.1: the part of the API a takeback pickup uses, answering in
EasyPost's shapes (github.com/EasyPost/examples, official/responses), misbehaving as a provider does.

The real `easypost` client talks to it (EASYPOST_API_BASE), as in production: addresses with
delivery verification, shipments with rates, bought labels with a tracker, pickups with pickup
rates, bought and cancelled, trackers, and objects retrieved by id or by their `reference`.

Faults: `down` (every request a 503), `fail_next` (the next n requests 503), `failing` (these
routes 503, the rest answer: a partial outage), `lose_answer` (the
request is carried out, then the connection closes without an answer: the client cannot tell
whether it happened). It counts what was really done, by reference: a label bought twice or a
pickup booked twice for one takeback pickup shows there, whatever the client saw.
"""

import json
import re
import threading
import uuid
from collections import Counter
from copy import deepcopy
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

UNDELIVERABLE_ZIP = "00000"  # an address the carrier cannot find


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, errors: list | None = None):
        super().__init__(message)
        self.status, self.body = status, {"error": {"code": code, "message": message, "errors": errors or []}}


class EasyPostStandIn:
    def __init__(self, api_key: str = "EZTK-standin-key"):
        self.api_key = api_key
        self.down = False
        self.fail_next = 0
        self.failing: set[str] = set()  # routes (by name, e.g. "shipment_create") answering 503: a partial outage
        self.lose_answer: Counter = Counter()  # (method, route) -> how many answers to lose
        self.addresses: dict[str, dict] = {}
        self.shipments: dict[str, dict] = {}
        self.pickups: dict[str, dict] = {}
        self.trackers: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []  # (method, route) of every request that reached an object
        self.done: Counter = Counter()  # (what, reference) -> times done: shipment, label, pickup, pickup_bought, pickup_cancelled
        self.lock = threading.Lock()
        self._codes = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    status, answer, lose = outer._handle(method, urlparse(self.path).path, raw, self.headers.get("Authorization", ""))
                except ApiError as error:
                    status, answer, lose = error.status, error.body, False
                if lose:
                    self.close_connection = True  # done, but nobody hears of it
                    return
                body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def log_message(self, *_):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v2"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    # --- the API ------------------------------------------------------------------------------------

    ROUTES = [
        ("POST", r"/v2/addresses", "address_create"),
        ("POST", r"/v2/shipments", "shipment_create"),
        ("GET", r"/v2/shipments/(?P<key>[^/]+)", "shipment_retrieve"),
        ("POST", r"/v2/shipments/(?P<key>[^/]+)/buy", "shipment_buy"),
        ("POST", r"/v2/pickups", "pickup_create"),
        ("GET", r"/v2/pickups/(?P<key>[^/]+)", "pickup_retrieve"),
        ("POST", r"/v2/pickups/(?P<key>[^/]+)/buy", "pickup_buy"),
        ("POST", r"/v2/pickups/(?P<key>[^/]+)/cancel", "pickup_cancel"),
        ("GET", r"/v2/trackers/(?P<key>[^/]+)", "tracker_retrieve"),
    ]

    def _handle(self, method: str, path: str, raw: bytes, authorization: str) -> tuple[int, dict, bool]:
        with self.lock:
            if authorization != f"Bearer {self.api_key}":
                raise ApiError(401, "APIKEY.INACTIVE", "This api key is no longer active. Please use a different api key or reactivate this key.")
            if self.down or self.fail_next > 0:
                self.fail_next = max(0, self.fail_next - 1)
                raise ApiError(503, "SERVICE.UNAVAILABLE", "The service is temporarily unavailable: please try again later.")
            for route_method, pattern, name in self.ROUTES:
                match = re.fullmatch(pattern, path)
                if route_method == method and match:
                    self.requests.append((method, name))
                    if name in self.failing:
                        raise ApiError(503, "SERVICE.UNAVAILABLE", "The service is temporarily unavailable: please try again later.")
                    params = json.loads(raw) if raw else {}
                    status, answer = getattr(self, name)(params, **match.groupdict())
                    lose = self.lose_answer[(method, name)] > 0
                    if lose:
                        self.lose_answer[(method, name)] -= 1
                    return status, answer, lose
            raise ApiError(404, "NOT_FOUND", "The requested resource could not be found.")

    @staticmethod
    def _find(objects: dict[str, dict], key: str) -> dict:
        found = objects.get(key) or next((o for o in objects.values() if o.get("reference") == key), None)
        if found is None:
            raise ApiError(404, "NOT_FOUND", "The requested resource could not be found.")
        return found

    def address_create(self, params: dict) -> tuple[int, dict]:
        fields = params.get("address") or {}
        for required in ("street1", "city", "zip", "country"):
            if not fields.get(required):
                raise ApiError(422, "ADDRESS.VERIFY.MISSING_FIELD", f"Missing required field: {required}")
        address = {"id": _id("adr"), "object": "Address", "mode": "test", "created_at": _now(), "updated_at": _now(), **fields, "verifications": {}}
        if params.get("verify"):
            if fields["zip"] == UNDELIVERABLE_ZIP:
                errors = [{"code": "E.ADDRESS.NOT_FOUND", "field": "address", "message": "Address not found", "suggestion": None}]
                address["verifications"] = {"delivery": {"success": False, "errors": errors, "details": {}}}
            else:
                address["street1"] = fields["street1"].upper()  # EasyPost answers with the corrected, standard form
                address["verifications"] = {"delivery": {"success": True, "errors": [], "details": {"time_zone": "America/Toronto"}}}
        self.addresses[address["id"]] = address
        return 201, address

    def shipment_create(self, params: dict) -> tuple[int, dict]:
        fields = params.get("shipment") or {}
        from_address = self.addresses.get((fields.get("from_address") or {}).get("id")) or fields.get("from_address")
        weight = float((fields.get("parcel") or {}).get("weight") or 0)
        shipment_id = _id("shp")
        rates = [] if weight > 2400 else [  # a parcel carrier takes up to 150 lb; a pallet gets no parcel rate
            {"id": _id("rate"), "object": "Rate", "carrier": "UPS", "service": "Ground", "rate": "14.52", "currency": "USD", "shipment_id": shipment_id},
            {"id": _id("rate"), "object": "Rate", "carrier": "UPS", "service": "NextDayAir", "rate": "61.07", "currency": "USD", "shipment_id": shipment_id},
            {"id": _id("rate"), "object": "Rate", "carrier": "FedEx", "service": "FEDEX_GROUND", "rate": "15.10", "currency": "USD", "shipment_id": shipment_id},
        ]
        shipment = {
            "id": shipment_id, "object": "Shipment", "mode": "test", "reference": fields.get("reference"), "status": "unknown", "created_at": _now(),
            "from_address": from_address, "to_address": fields.get("to_address"), "parcel": {"id": _id("prcl"), "object": "Parcel", **(fields.get("parcel") or {})},
            "options": fields.get("options") or {}, "rates": rates, "selected_rate": None, "postage_label": None, "tracking_code": None, "tracker": None,
            "messages": [] if rates else [{"carrier": "UPS", "type": "rate_error", "message": "Package exceeds maximum allowable weight."}],
        }
        self.shipments[shipment_id] = shipment
        self.done[("shipment", fields.get("reference"))] += 1
        return 201, shipment

    def shipment_retrieve(self, params: dict, key: str) -> tuple[int, dict]:
        return 200, self._find(self.shipments, key)

    def shipment_buy(self, params: dict, key: str) -> tuple[int, dict]:
        shipment = self._find(self.shipments, key)
        if shipment["tracking_code"]:
            raise ApiError(422, "SHIPMENT.POSTAGE.EXISTS", "Postage already exists for this shipment.")
        rate = next((r for r in shipment["rates"] if r["id"] == (params.get("rate") or {}).get("id")), None)
        if rate is None:
            raise ApiError(422, "SHIPMENT.RATE.INVALID", "The rate is not one of this shipment's.")
        self._codes += 1
        code = f"1Z{uuid.uuid4().hex[:6].upper()}{self._codes:08d}"
        files = f"https://easypost-files.standin.test/files/postage_label/{shipment['id']}"
        shipment.update(
            selected_rate=rate, tracking_code=code, status="unknown",
            postage_label={"object": "PostageLabel", "id": _id("pl"), "label_url": f"{files}.png", "label_pdf_url": f"{files}.pdf", "label_zpl_url": f"{files}.zpl",
                           "label_file_type": "image/png", "label_size": "4x6"},
        )
        tracker = {
            "id": _id("trk"), "object": "Tracker", "mode": "test", "tracking_code": code, "status": "pre_transit", "status_detail": "label_created",
            "created_at": _now(), "updated_at": _now(), "shipment_id": shipment["id"], "carrier": rate["carrier"], "public_url": f"https://track.easypost.com/{code}",
            "tracking_details": [{"object": "TrackingDetail", "message": "Shipping Label Created", "status": "pre_transit", "status_detail": "label_created",
                                  "datetime": _now(), "source": rate["carrier"], "tracking_location": {"object": "TrackingLocation", "city": None, "state": None, "country": None, "zip": None}}],
        }
        self.trackers[tracker["id"]] = tracker
        shipment["tracker"] = tracker
        self.done[("label", shipment["reference"])] += 1
        return 200, shipment

    def pickup_create(self, params: dict) -> tuple[int, dict]:
        fields = params.get("pickup") or {}
        shipment = self._find(self.shipments, (fields.get("shipment") or {}).get("id", ""))
        if not fields.get("min_datetime") or not fields.get("max_datetime"):
            raise ApiError(422, "PICKUP.MISSING_FIELD", "min_datetime and max_datetime are required")
        pickup_id = _id("pickup")
        pickup = {
            "id": pickup_id, "object": "Pickup", "mode": "test", "status": "unknown", "reference": fields.get("reference"), "created_at": _now(),
            "min_datetime": fields["min_datetime"], "max_datetime": fields["max_datetime"], "is_account_address": fields.get("is_account_address", False),
            "instructions": fields.get("instructions"), "messages": [], "confirmation": None, "shipment_id": shipment["id"],
            "address": self.addresses.get((fields.get("address") or {}).get("id")), "carrier_accounts": [],
            "pickup_rates": [
                {"id": _id("pickuprate"), "object": "PickupRate", "carrier": "UPS", "service": "Future-day Pickup", "rate": "4.50", "currency": "USD", "pickup_id": pickup_id},
                {"id": _id("pickuprate"), "object": "PickupRate", "carrier": "UPS", "service": "Same-day Pickup", "rate": "6.00", "currency": "USD", "pickup_id": pickup_id},
                {"id": _id("pickuprate"), "object": "PickupRate", "carrier": "FedEx", "service": "FDXG", "rate": "0.00", "currency": "USD", "pickup_id": pickup_id},
            ],
        }
        self.pickups[pickup_id] = pickup
        self.done[("pickup", fields.get("reference"))] += 1
        return 201, pickup

    def pickup_retrieve(self, params: dict, key: str) -> tuple[int, dict]:
        return 200, self._find(self.pickups, key)

    def pickup_buy(self, params: dict, key: str) -> tuple[int, dict]:
        pickup = self._find(self.pickups, key)
        if pickup["status"] != "unknown":
            raise ApiError(422, "PICKUP.ALREADY_SCHEDULED", f"This pickup is {pickup['status']}.")
        if not any(r["carrier"] == params.get("carrier") and r["service"] == params.get("service") for r in pickup["pickup_rates"]):
            raise ApiError(422, "PICKUP.RATE.INVALID", "No pickup rate for that carrier and service.")
        pickup.update(status="scheduled", confirmation=f"WTC{uuid.uuid4().hex[:8].upper()}", carrier=params["carrier"], service=params["service"])
        self.done[("pickup_bought", pickup["reference"])] += 1
        return 200, pickup

    def pickup_cancel(self, params: dict, key: str) -> tuple[int, dict]:
        pickup = self._find(self.pickups, key)
        if pickup["status"] != "scheduled":
            raise ApiError(422, "PICKUP.CANNOT_CANCEL", f"A pickup that is {pickup['status']} cannot be cancelled.")
        pickup["status"] = "canceled"
        self.done[("pickup_cancelled", pickup["reference"])] += 1
        return 200, pickup

    def tracker_retrieve(self, params: dict, key: str) -> tuple[int, dict]:
        return 200, self._find(self.trackers, key)

    # --- for the tests -------------------------------------------------------------------------------

    def tracker(self, tracking_code: str) -> dict:
        with self.lock:
            return deepcopy(next(t for t in self.trackers.values() if t["tracking_code"] == tracking_code))

    def advance(self, tracking_code: str, status: str, message: str, at: str | None = None) -> dict:
        """The carrier scanned the parcel: a tracking detail, and the tracker's status and time move on."""
        with self.lock:
            tracker = next(t for t in self.trackers.values() if t["tracking_code"] == tracking_code)
            tracker["tracking_details"].append(
                {"object": "TrackingDetail", "message": message, "status": status, "datetime": at or _now(), "source": tracker["carrier"],
                 "tracking_location": {"object": "TrackingLocation", "city": "MISSISSAUGA", "state": "ON", "country": "CA", "zip": None}}
            )
            tracker.update(status=status, updated_at=_now())
            return deepcopy(tracker)

    def pickup_by_reference(self, reference: str) -> dict:
        with self.lock:
            return deepcopy(self._find(self.pickups, reference))

    def count(self, method: str, route: str) -> int:
        with self.lock:
            return sum(1 for request in self.requests if request == (method, route))
