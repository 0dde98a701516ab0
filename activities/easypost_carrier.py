"""EasyPost as the carrier (TAKEBACK_CARRIER=easypost), through its maintained client `easypost`.

A pickup is a shipment from the customer's address to the returns address (its label is the
partner's return label, for a self-drop-off too) and a carrier pickup of it in a window of three
business days from `ready_on`. Booking is a journal (store/carrier_pickups.py): each provider object
is recorded as soon as it exists, and an object that may exist without being recorded (the answer
was lost) is looked up by its reference, `takeback-<pickup id>`, before one is made. So a retried
booking resumes where the last attempt stopped and never buys a second label or pickup.

Tracking: EasyPost's `tracker.updated` webhooks (api/routes/easypost_webhook.py) and the tracking
poll (workflows/tracking_poll.py) both turn a Tracker into carrier events with `tracker_events`, one
per tracking detail, with ids derived from the detail: the same news from either is recorded once.
"""

import hashlib
import logging
import re
from datetime import date, datetime, timedelta, timezone

import easypost
from easypost import errors as ep_errors
from pydantic import BaseModel
from temporalio.exceptions import ApplicationError

from activities.carrier import CarrierBooking
from domain.catalog import Catalog, default_catalog
from domain.models import CarrierEvent, CarrierStatus, PickupRequest
from settings import Settings
from store import carrier_pickups as journal
from store import deals as store
from store.db import session_scope
from store.tables import CarrierPickup, as_utc

log = logging.getLogger("takeback.carrier.easypost")

PROVIDER = "easypost"
REQUEST_TIMEOUT = 8  # seconds per call: a booking step fits the activity's 10 s; a slow step resumes on the next attempt
OUNCES_PER_KG = 35.274
PARCEL_MAX_KG = 68.0  # 150 lb, the most UPS and FedEx take as one parcel; above it the gear goes on a pallet
PALLET_TARE_KG = 25.0
PALLET_INCHES = (48, 40, 48)  # a standard 48 x 40 in pallet, stacked to 48 in
BUSINESS_DAYS_TO_COLLECT = 3  # the programme collects within three business days of ready_on
REFUSED_RETRY = timedelta(minutes=5)  # a refusal (a payment, an account, no rate) waits for ops to fix it
# ... for a day at most: then the booking fails for good (the pickup's booking reads `failed`, with the
# reason), so a pickup the provider will never take cannot hold up its deal's close for ever.
REFUSED_GIVE_UP = timedelta(days=1)

# EasyPost's tracker statuses -> ours (domain/models.py CarrierStatus uses EasyPost's vocabulary);
# `unknown` and `error` (EasyPost could not read the carrier) say nothing about the shipment.
TRACKER_STATUSES = {status.value: status for status in CarrierStatus}
TRANSIENT = (
    ep_errors.HttpError, ep_errors.TimeoutError, ep_errors.RateLimitError, ep_errors.InternalServerError,
    ep_errors.ServiceUnavailableError, ep_errors.GatewayTimeoutError, ep_errors.JsonError,
)


class AddressRefused(Exception):
    """The provider cannot deliver to the pickup address: a 422 to the partner, before the deal is asked."""

    def __init__(self, detail: str, errors: list[dict]):
        super().__init__(detail)
        self.errors = errors


class ProviderUnavailable(Exception):
    """The provider could not be asked (an outage, a timeout, a refused key): try again later."""


def client(settings: Settings) -> easypost.EasyPostClient:
    """The real client, pointed at EASYPOST_API_BASE (a local stand-in in the tests)."""
    key = settings.easypost_api_key.get_secret_value() if settings.easypost_api_key is not None else ""
    return easypost.EasyPostClient(key, api_base=settings.easypost_api_base.rstrip("/"), timeout=REQUEST_TIMEOUT)


def _dict(obj) -> dict:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj or {})


def describe(error: Exception) -> str:
    """An error in words for the store and the logs: the provider's status, code and message (never the key)."""
    if isinstance(error, ep_errors.ApiError):
        status = f"HTTP {error.http_status} " if error.http_status else ""
        code = f"{error.code}: " if getattr(error, "code", None) else ""
        return f"EasyPost {status}{code}{error.message}".strip()
    return f"EasyPost: {type(error).__name__}: {error}"


# --- the pickup address -----------------------------------------------------------------------

ADDRESS_FORMAT = "street, [street 2,] city, [state] postal code[, country code]: one per line, or comma-separated"
_LOCALITY = re.compile(r"^(?:(?P<state>[A-Za-z]{2,3})\s+)?(?P<zip>[A-Za-z0-9][A-Za-z0-9 -]{1,9})$")
_COUNTRY = re.compile(r"^[A-Za-z]{2}$")


def parse_address(text: str, default_country: str) -> dict[str, str]:
    """The pickup's free-text address as EasyPost's fields (ValueError naming the expected form).

    `1 Main St, Toronto, ON M5V 2T6, CA`, or the same one part a line; the last part may be a
    two-letter country code, else the deal's customer country is used."""
    parts = [part.strip() for line in text.splitlines() for part in line.split(",") if part.strip()]
    country = default_country.strip()
    if len(parts) >= 4 and _COUNTRY.fullmatch(parts[-1]):
        country = parts.pop()
    if len(parts) < 3:
        raise ValueError(f"the address needs a street, a city and a postal code ({ADDRESS_FORMAT})")
    locality = _LOCALITY.fullmatch(parts[-1])
    if locality is None or not any(c.isdigit() for c in locality["zip"]):
        raise ValueError(f"the address's last part must be '[state] postal code', got {parts[-1]!r} ({ADDRESS_FORMAT})")
    fields = {"street1": parts[0], "city": parts[-2], "zip": locality["zip"].strip(), "country": country.upper() if _COUNTRY.fullmatch(country) else country}
    if locality["state"]:
        fields["state"] = locality["state"].upper()
    if len(parts) > 3:
        fields["street2"] = " ".join(parts[1:-2])
    return fields


def pickup_fields(request: PickupRequest, customer: tuple[str, str] | None) -> dict[str, str]:
    name, country = customer or ("", "")
    fields = parse_address(request.address, country)
    fields.update(name=request.contact_name, phone=request.contact_phone)
    if name:
        fields["company"] = name
    return fields


def _delivery_errors(address: dict) -> list[dict] | None:
    """None if EasyPost verified the address for delivery, else its errors."""
    delivery = (address.get("verifications") or {}).get("delivery") or {}
    if delivery.get("success"):
        return None
    return [{"field": e.get("field"), "code": e.get("code"), "message": e.get("message")} for e in delivery.get("errors") or []] or [
        {"field": "address", "code": None, "message": "not verified for delivery"}
    ]


# --- the parcel and the window ------------------------------------------------------------------


class ParcelEstimate(BaseModel):
    kind: str  # parcel | pallet
    weight_kg: float

    def as_easypost(self) -> dict:
        parcel = {"weight": round(self.weight_kg * OUNCES_PER_KG, 1)}
        if self.kind == "pallet":
            parcel.update(length=PALLET_INCHES[0], width=PALLET_INCHES[1], height=PALLET_INCHES[2])
        return parcel


def estimate_parcel(lines: list[tuple[str, int]], units: int, catalog: Catalog) -> ParcelEstimate:
    """The collection's weight: `units` of the deal's committed mix at the catalog's unit weights
    (a product the catalog does not list counts at its default weight); a pallet above one parcel's limit."""
    committed = sum(quantity for _product, quantity in lines)
    per_unit = sum(catalog.unit_weight_kg(product) * quantity for product, quantity in lines) / committed if committed else catalog.default_weight_kg
    weight = per_unit * units
    if weight <= PARCEL_MAX_KG:
        return ParcelEstimate(kind="parcel", weight_kg=round(max(weight, 0.1), 1))
    return ParcelEstimate(kind="pallet", weight_kg=round(weight + PALLET_TARE_KG, 1))


def pickup_window(ready_on: date) -> tuple[date, date]:
    """The first business day from `ready_on` and the business day that ends three of them."""
    start = ready_on
    while start.weekday() >= 5:
        start += timedelta(days=1)
    end, counted = start, 1
    while counted < BUSINESS_DAYS_TO_COLLECT:
        end += timedelta(days=1)
        if end.weekday() < 5:
            counted += 1
    return start, end


def reference(pickup_id: str) -> str:
    return f"takeback-{pickup_id}"


# --- tracking -----------------------------------------------------------------------------------


def _moment(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def tracker_events(tracker: dict) -> list[CarrierEvent]:
    """A Tracker's news as carrier events, oldest first: one per tracking detail, then the tracker's
    own status if its details have not said it. Ids are made from what they report, so a webhook and
    the poll reporting the same detail make the same event (recorded once)."""
    code = tracker.get("tracking_code")
    if not code:
        return []
    fallback = _moment(tracker.get("updated_at")) or datetime.now(timezone.utc)
    details = []
    for detail in tracker.get("tracking_details") or []:
        status = TRACKER_STATUSES.get(detail.get("status") or "")
        if status is None:
            continue
        at = _moment(detail.get("datetime")) or fallback
        digest = hashlib.sha256(f"{detail.get('status')}|{detail.get('datetime')}|{detail.get('message')}".encode()).hexdigest()[:20]
        details.append(CarrierEvent(event_id=f"ep-{digest}", tracking_number=code, status=status, occurred_at=at))
    details.sort(key=lambda event: event.occurred_at)
    overall = TRACKER_STATUSES.get(tracker.get("status") or "")
    if overall is not None and not any(event.status == overall for event in details):
        details.append(CarrierEvent(event_id=f"ep-status-{overall.value}", tracking_number=code, status=overall, occurred_at=fallback))
    return details


# --- the carrier ----------------------------------------------------------------------------------


class EasyPostCarrier:
    name = "EasyPost"

    def __init__(self, settings: Settings, catalog: Catalog | None = None):
        self.settings = settings
        self.database_url = settings.effective_database_url
        self.catalog = catalog or default_catalog()

    def _client(self) -> easypost.EasyPostClient:
        return client(self.settings)

    # -- before the deal is asked: the address ---------------------------------------------------

    def verify_address(self, deal_id: str, request: PickupRequest) -> None:
        """AddressRefused if the address cannot be read or EasyPost cannot deliver to it;
        ProviderUnavailable if EasyPost cannot be asked now."""
        with session_scope(self.database_url) as session:
            customer = journal.customer(session, deal_id)
        try:
            fields = pickup_fields(request, customer)
        except ValueError as error:
            raise AddressRefused(str(error), [{"field": "address", "code": "unreadable", "message": str(error)}]) from None
        try:
            address = _dict(self._client().address.create(verify=True, **fields))
        except ep_errors.InvalidRequestError as error:  # 422: fields EasyPost refuses outright
            raise AddressRefused(f"the carrier refused the address: {error.message}", [{"field": "address", "code": error.code, "message": error.message}]) from None
        except ep_errors.ApiError as error:
            raise ProviderUnavailable(describe(error)) from None
        problems = _delivery_errors(address)
        if problems is not None:
            said = "; ".join(f"{p['field']}: {p['message']}" if p.get("field") else str(p["message"]) for p in problems)
            raise AddressRefused(f"the carrier cannot deliver to this address ({said})", problems)

    # -- booking ----------------------------------------------------------------------------------

    def book(self, pickup_id: str, deal_id: str = "", request: PickupRequest | None = None) -> CarrierBooking:
        """Book the pickup, resuming a booking an earlier attempt began; each provider error is
        recorded on the pickup and raised for Temporal to retry (never lost, never doubled)."""
        with session_scope(self.database_url) as session:
            lines, customer = journal.committed_lines(session, deal_id), journal.customer(session, deal_id)
            parcel = estimate_parcel(lines, request.expected_units, self.catalog)
            start, end = pickup_window(request.ready_on)
            row = journal.start_attempt(
                session,
                CarrierPickup(pickup_id=pickup_id, deal_id=deal_id, provider=PROVIDER, parcel_kind=parcel.kind, weight_kg=parcel.weight_kg,
                              window_start=start.isoformat(), window_end=end.isoformat()),
            )
            if row.state == journal.FAILED:
                raise ApplicationError(f"booking pickup {pickup_id} failed for good: {row.last_error}", type="CarrierRefused", non_retryable=True)
            if row.state != journal.BOOKING:
                return self._booking(row)
            try:
                address = pickup_fields(request, customer)
            except ValueError as error:  # the API checks it first: only a request that came round it
                journal.record_error(session, pickup_id, f"the address cannot be read: {error}")
                journal.mark_failed(session, pickup_id)
                raise ApplicationError(f"booking pickup {pickup_id}: the address cannot be read: {error}", type="AddressUnreadable", non_retryable=True) from None
            try:
                try:
                    row = self._advance(session, row, request, address, parcel)
                except (KeyError, TypeError, ValueError) as error:  # an answer without the fields EasyPost documents
                    raise ep_errors.JsonError(f"an answer of an unexpected shape ({type(error).__name__}: {error})") from error
            except ep_errors.EasyPostError as error:
                message = describe(error)
                journal.record_error(session, pickup_id, message)
                transient = isinstance(error, TRANSIENT) or (isinstance(error, ep_errors.ApiError) and (error.http_status or 0) >= 500)
                log.warning("pickup %s: booking attempt %s failed: %s", pickup_id, row.attempts, message)
                if not transient and datetime.now(timezone.utc) - as_utc(row.created_at) > REFUSED_GIVE_UP:
                    journal.mark_failed(session, pickup_id)
                    raise ApplicationError(f"booking pickup {pickup_id} refused for {REFUSED_GIVE_UP}: {message}", type="CarrierRefused", non_retryable=True) from None
                # An outage: the deal's retry policy (1 s doubling to a minute, for as long as it lasts).
                raise ApplicationError(
                    f"booking pickup {pickup_id}: {message}", type="CarrierUnavailable" if transient else "CarrierRefused",
                    next_retry_delay=None if transient else REFUSED_RETRY,
                ) from None
            return self._booking(row)

    def _booking(self, row: CarrierPickup) -> CarrierBooking:
        return CarrierBooking(carrier=f"{self.name}/{row.carrier}" if row.carrier else self.name, tracking_number=row.tracking_code)

    def _advance(self, session, row: CarrierPickup, request: PickupRequest, address: dict[str, str], parcel: ParcelEstimate) -> CarrierPickup:
        ep = self._client()
        ref = reference(row.pickup_id)
        if row.address_id is None:
            # Verified again (the API did before asking the deal): the shipment then carries EasyPost's corrected form.
            created = _dict(ep.address.create(verify=True, **address))
            row = journal.record(session, row.pickup_id, address_id=created["id"])
        if row.shipment_id is None:
            shipment = self._find(ep.shipment, ref) or _dict(
                ep.shipment.create(
                    reference=ref,
                    from_address={"id": row.address_id},
                    to_address=dict(self.settings.returns_address or {}),
                    parcel=parcel.as_easypost(),
                    options={"label_format": self.settings.easypost_label_format},
                )
            )
            row = journal.record(session, row.pickup_id, shipment_id=shipment["id"])
        if row.tracking_code is None:
            row = self._buy_label(session, ep, row)
        if row.provider_pickup_id is None:
            start, end = date.fromisoformat(row.window_start), date.fromisoformat(row.window_end)
            pickup = self._find(ep.pickup, ref) or _dict(
                ep.pickup.create(
                    reference=ref,
                    address={"id": row.address_id},
                    shipment={"id": row.shipment_id},
                    min_datetime=f"{start.isoformat()}T09:00:00",
                    max_datetime=f"{end.isoformat()}T17:00:00",
                    is_account_address=False,
                    instructions=f"Takeback collection {row.pickup_id}: {request.expected_units} units of used network gear ({parcel.kind}, about {parcel.weight_kg:g} kg)",
                )
            )
            row = journal.record(session, row.pickup_id, provider_pickup_id=pickup["id"])
        if row.confirmation is None:
            row = self._buy_pickup(session, ep, row)
        return journal.mark_booked(session, row.pickup_id)

    @staticmethod
    def _find(service, ref: str) -> dict | None:
        """The object made under this reference by an attempt whose answer was lost, if any."""
        try:
            return _dict(service.retrieve(ref))
        except ep_errors.NotFoundError:
            return None

    def _buy_label(self, session, ep, row: CarrierPickup) -> CarrierPickup:
        shipment = _dict(ep.shipment.retrieve(row.shipment_id))
        if not shipment.get("tracking_code"):
            rates = shipment.get("rates") or []
            if not rates:
                raise ep_errors.FilteringError(f"no carrier offered a rate for this {row.parcel_kind} of {row.weight_kg:g} kg: {shipment.get('messages') or []}")
            cheapest = min(rates, key=lambda rate: float(rate["rate"]))
            try:
                shipment = _dict(ep.shipment.buy(row.shipment_id, rate={"id": cheapest["id"]}))
            except ep_errors.ApiError:
                shipment = _dict(ep.shipment.retrieve(row.shipment_id))  # bought by an attempt running beside this one?
                if not shipment.get("tracking_code"):
                    raise
        label = shipment.get("postage_label") or {}
        wanted = {"PDF": "label_pdf_url", "ZPL": "label_zpl_url"}[self.settings.easypost_label_format]
        label_url = label.get(wanted) or label.get("label_url")
        selected = shipment.get("selected_rate") or {}
        tracker = shipment.get("tracker") or {}
        return journal.record(
            session, row.pickup_id, tracking_code=shipment["tracking_code"], tracker_id=tracker.get("id"), carrier=selected.get("carrier"),
            service=selected.get("service"), label_url=label_url, label_format=self.settings.easypost_label_format if label.get(wanted) else label.get("label_file_type"),
        )

    def _buy_pickup(self, session, ep, row: CarrierPickup) -> CarrierPickup:
        pickup = _dict(ep.pickup.retrieve(row.provider_pickup_id))
        if not pickup.get("confirmation"):
            rates = pickup.get("pickup_rates") or []
            same_carrier = [rate for rate in rates if rate.get("carrier") == row.carrier] or rates
            if not same_carrier:
                raise ep_errors.FilteringError(f"no pickup rate offered for {row.carrier or 'this shipment'}: {pickup.get('messages') or []}")
            cheapest = min(same_carrier, key=lambda rate: float(rate["rate"]))
            try:
                pickup = _dict(ep.pickup.buy(row.provider_pickup_id, carrier=cheapest["carrier"], service=cheapest["service"]))
            except ep_errors.ApiError:
                pickup = _dict(ep.pickup.retrieve(row.provider_pickup_id))
                if not pickup.get("confirmation"):
                    raise
        return journal.record(session, row.pickup_id, confirmation=pickup["confirmation"])

    # -- cancelling -------------------------------------------------------------------------------

    def cancel_open_pickups(self, deal_id: str, heartbeat=lambda: None) -> list[str]:
        """A cancelled deal: its pickups not yet collected are marked for cancellation (durably), then
        cancelled with the provider. One the provider cannot cancel now stays marked, and the tracking
        poll tries it again; nothing here holds up the deal's close. The ids cancelled now."""
        with session_scope(self.database_url) as session:
            waiting = journal.request_cancel(session, deal_id)
        done = []
        for pickup_id in waiting:
            heartbeat()
            if self.cancel(pickup_id):
                done.append(pickup_id)
        return done

    def cancel(self, pickup_id: str) -> bool:
        """Cancel one pickup marked for it; True once done (its status then reads `cancelled`)."""
        with session_scope(self.database_url) as session:
            row = journal.get(session, pickup_id)
            if row is None or row.state != journal.CANCEL_REQUESTED:
                return row is not None and row.state == journal.CANCELLED
            try:
                if row.provider_pickup_id and row.confirmation:
                    ep = self._client()
                    try:
                        ep.pickup.cancel(row.provider_pickup_id)
                    except ep_errors.ApiError:
                        if _dict(ep.pickup.retrieve(row.provider_pickup_id)).get("status") not in ("canceled", "cancelled"):
                            raise
            except ep_errors.EasyPostError as error:
                journal.record_error(session, pickup_id, f"cancelling: {describe(error)}")
                log.warning("pickup %s: cancelling with the provider failed, the tracking poll tries again: %s", pickup_id, describe(error))
                return False
            journal.mark_cancelled(session, pickup_id)
            if row.tracking_code:
                cancelled = CarrierEvent(event_id="takeback-cancelled", tracking_number=row.tracking_code, status=CarrierStatus.cancelled, occurred_at=datetime.now(timezone.utc))
                store.record_carrier_event(session, cancelled)
        return True

    # -- the tracking poll ------------------------------------------------------------------------

    def poll_trackers(self, rows: list[CarrierPickup], heartbeat=lambda: None) -> tuple[list[CarrierEvent], list[str]]:
        """The open trackers' news as carrier events, and the errors met (the poll moves on past them)."""
        ep = self._client()
        events, problems = [], []
        for row in rows:
            heartbeat()
            try:
                events += tracker_events(_dict(ep.tracker.retrieve(row.tracker_id)))
            except ep_errors.EasyPostError as error:
                problems.append(f"{row.pickup_id}: {describe(error)}")
        return events, problems
