"""Deal operations for callers. Serial lists go to the store; workflows get ids and counts."""

import asyncio
import hashlib
import json
import logging
import uuid
from datetime import datetime, timedelta, timezone

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.problems import Problem
from domain import rules
from domain.deal_progress import deal_view, initial_progress
from domain.models import BOOKING_FAILED, OPEN_DEAL_STATUSES, BookingRequest, CarrierEvent, DealStatus, DealTerms, DealView, PickupRequest, PickupView, ReceiptItem, extension_duration
from service.partners import ensure_may_book
from service.pickup_address import check_pickup_address
from settings import DEFAULT_MAX_LABELS_PER_DEAL, DEFAULT_MAX_OPEN_PICKUPS, Settings
from domain.catalog import default_catalog
from observability import worker_metrics as metrics
from store import deals as store
from store import limits
from store import settlement
from store.db import session_scope
from temporal_client import call_timed_out
from workflows import story
from workflows.deal import DealWorkflowInput, ExtendCommand, TakebackDealWorkflow
from workflows.ids import deal_workflow_id
from workflows.search_attributes import DEAL_STATUS, PARTNER_ID


log = logging.getLogger("takeback.service")

# Twice this stays within the 4 s the API gives a call to the engine (api.deps.temporal).
QUERY_TIMEOUT = timedelta(seconds=1.9)


async def ask(handle: WorkflowHandle, query, *args):
    """A query, asked twice at most: one sent while the deal continues as new can go unanswered
    until its deadline (the run it reached closed), and the same question reaches the new run."""
    try:
        return await handle.query(query, *args, rpc_timeout=QUERY_TIMEOUT)
    except RPCError as error:
        if not call_timed_out(error):
            raise
        log.info("query %s of %s unanswered in %s; asked again", getattr(query, "__name__", query), handle.id, QUERY_TIMEOUT)
        return await handle.query(query, *args, rpc_timeout=QUERY_TIMEOUT)


class DealNotOpen(Exception):
    """The deal is closed, expired or cancelled (or paid, for a cancel): HTTP 409."""


class PickupBookingFailed(Exception):
    """The carrier refused to book a pickup for good (payment, no rate, an address it cannot serve): HTTP 502."""


class DealNotFound(LookupError):
    pass


# Refusals that are also problem details, so that the API answers them as such whichever route
# (or idempotency layer) the call came through, instead of a 500.


class PickupRefused(rules.RuleViolation, Problem):
    """The pickup does not fit the deal as it is now (its dates, the units it awaits, the pickups under way): 422."""

    def __init__(self, detail: str):
        Problem.__init__(self, 422, detail, "pickup-refused")


class NeedsOpsApproval(Problem):
    """A partner key booking above TAKEBACK_PARTNER_BOOKING_LIMIT, or taking the partner's open deals above
    TAKEBACK_PARTNER_OPEN_EXPOSURE_LIMIT (`open_exposure`: their value before it): 403, and ops book the deal.
    Nothing is staged and no serial is claimed, so the same request by ops books it as it is.
    (Not a RuleViolation: a route mapping those to 422 lets this one through as the 403 it is.)"""

    def __init__(self, new_products_value, limit, open_exposure=None):
        above = (
            f"new_products_value {new_products_value} is above {limit}, the most a partner books alone" if open_exposure is None else
            f"new_products_value {new_products_value} would take the partner's open deals from {open_exposure} to "
            f"{open_exposure + new_products_value}, above {limit}, the most a partner has open on its own bookings"
        )
        Problem.__init__(
            self, 403,
            f"{above}: ops review the deal and book it (POST /v1/deals with an ops key, the same body)",
            "needs-ops-approval",
            limit=str(limit),
            new_products_value=str(new_products_value),
            **({} if open_exposure is None else {"open_exposure": str(open_exposure)}),
        )


async def _update(handle: WorkflowHandle, update, *args, retried: bool = False, **kwargs):
    """Run a workflow update, turning 'the deal has closed' into DealNotOpen however it shows."""
    from temporalio.client import WorkflowUpdateFailedError
    from temporalio.exceptions import ApplicationError

    try:
        return await handle.execute_update(update, *args, **kwargs)
    except WorkflowUpdateFailedError as error:
        if isinstance(error.cause, ApplicationError) and error.cause.type == "AcceptedUpdateCompletedWorkflow" and not retried:
            # The run that accepted it continued as new (a server of 1.32 says so; others answer NOT_FOUND, below):
            # the next run carries every applied update id and answers the same id, never applying it twice.
            if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                return await _update(handle, update, *args, retried=True, **kwargs)
        if isinstance(error.cause, ApplicationError) and error.cause.type == "DealNotOpen":
            raise DealNotOpen(error.cause.message) from error
        if isinstance(error.cause, ApplicationError) and error.cause.type == "PickupBookingFailed":
            raise PickupBookingFailed(error.cause.message) from error
        raise
    except RPCError as error:
        if error.status != RPCStatusCode.NOT_FOUND:
            raise
        # A closed run answers NOT_FOUND for new updates, and so does a missing deal, and a run that
        # continued as new while the update was on its way. The latest run says which.
        try:
            described = await handle.describe()
        except RPCError as missing:
            if missing.status == RPCStatusCode.NOT_FOUND:
                raise DealNotFound(handle.id) from error
            raise
        if described.status == WorkflowExecutionStatus.RUNNING and not retried:
            # The next run carries every applied update id: the same id is answered, never applied twice.
            return await _update(handle, update, *args, retried=True, **kwargs)
        if described.status == WorkflowExecutionStatus.RUNNING:
            raise
        raise DealNotOpen(f"{handle.id} has closed") from error


async def wall_clock() -> datetime:
    return datetime.now(timezone.utc)


# When a booking is accepted. Its deadline is promised from this moment, so the workflow keeps it
# rather than the time its first task runs. Tests on the time-skipping server use that server's clock.
booking_clock = wall_clock


def new_deal_id() -> str:
    return f"D{uuid.uuid4().hex[:16].upper()}"


def deal_terms(deal_id: str, request: BookingRequest, settings: Settings, booked_at: datetime | None = None) -> DealTerms:
    """Freeze today's settings into the deal: it keeps the window and offsets it was booked with."""
    return DealTerms(
        deal_id=deal_id,
        partner_id=request.partner_id,
        new_products_value=request.new_products_value,
        incentive_rate=request.incentive_rate,
        committed_units=request.committed_units,
        serials_listed=any(line.serial_numbers for line in request.equipment),
        mode=settings.incentive_mode,
        incentive_amount=rules.incentive_amount(request.new_products_value, request.incentive_rate),
        required_units=rules.required_units(request.committed_units, settings.return_threshold),
        return_window_seconds=settings.return_window_seconds,
        reminder_offsets_seconds=settings.reminder_offsets_seconds,
        return_threshold=settings.return_threshold,
        sim_carrier_step_seconds=settings.sim_carrier_step_seconds,
        version_look_seconds=settings.version_look_seconds,
        booked_at=booked_at or datetime.now(timezone.utc),
    )


def deal_handle(client: Client, deal_id: str) -> WorkflowHandle:
    return client.get_workflow_handle_for(TakebackDealWorkflow.run, deal_workflow_id(deal_id))


async def book_deal(
    client: Client, settings: Settings, request: BookingRequest, deal_id: str | None = None, *, by_partner: bool = False, actor: str | None = None,
    audit: dict | None = None,
) -> DealView:
    """Validate, stage the booking with its first view (claiming listed serials), start the workflow.

    A deal is durable once its workflow has started, so the answer does not wait for a worker: it
    is the view the workflow holds after its first task, built by the same function from the same
    terms. Bookings are thus accepted at the engine's own pace, and while workers restart.
    A retry with the same deal id starts nothing new and answers with the deal as it is.

    `by_partner`: a partner key books it, alone up to TAKEBACK_PARTNER_BOOKING_LIMIT, and while its open
    deals with this one stay within TAKEBACK_PARTNER_OPEN_EXPOSURE_LIMIT (else NeedsOpsApproval, and
    nothing is staged). That sum is checked in the staging transaction, the partner's row locked: two
    bookings at once cannot both pass it. `actor`: who books it (an API account), the actor
    of its listed serials' `committed` custody events (default: the partner).

    Raises RuleViolation (422), NeedsOpsApproval (403), PartnerNotCertified, store.UnknownPartner,
    store.SerialConflict (409).

    `audit`: the call's audit row (store.audit.record's values), written in the staging transaction
    with the deal's id; its id is then set in it as "id". One transaction a booking, not two.
    """
    rules.validate_incentive_rate(request.incentive_rate)
    rules.validate_serial_total(request.listed_serials, settings.max_serials_per_booking)
    if by_partner and rules.needs_ops_approval(request.new_products_value, settings.partner_booking_limit):
        raise NeedsOpsApproval(request.new_products_value, settings.partner_booking_limit)
    deal_id = deal_id or new_deal_id()
    terms = deal_terms(deal_id, request, settings, booked_at=await booking_clock())
    view = deal_view(terms, initial_progress(terms, terms.booked_at))

    def stage() -> datetime | None:
        """None once staged now; else the booking time of the attempt that staged this deal first."""
        with session_scope(settings.effective_database_url) as session:
            ensure_may_book(settings, request.partner_id, session)
            if by_partner:
                limits.lock_partner(session, request.partner_id)  # until staged (or refused): its bookings queue here
                if store.staged_booking_time(session, deal_id) is None:  # a retry of a staged deal is answered with it
                    exposure = limits.open_exposure(session, request.partner_id)
                    if rules.exceeds_open_exposure(exposure, request.new_products_value, settings.partner_open_exposure_limit):
                        raise NeedsOpsApproval(request.new_products_value, settings.partner_open_exposure_limit, exposure)
            if store.stage_booking(session, deal_id, request, terms, view, actor=actor, audit=audit):
                return None
            return store.staged_booking_time(session, deal_id)

    earlier = await asyncio.to_thread(stage)
    staged = earlier is None
    if not staged:
        # A retry (or a concurrent twin) of a staged booking starts the workflow, if no attempt did yet, with the
        # terms that were staged: its own clock would give the workflow another booking time and deadline than
        # the store's (two bookings of one Idempotency-Key at once did; tests/test_deal_lifecycle.py).
        terms = deal_terms(deal_id, request, settings, booked_at=earlier)
    try:
        await client.start_workflow(
            TakebackDealWorkflow.run,
            DealWorkflowInput(terms=terms),
            id=deal_workflow_id(deal_id),
            task_queue=settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,  # a concurrent retry joins the first
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,  # a late retry never books a closed deal again
            # What the Temporal Web UI shows of the deal (workflows/story.py); filters where the namespace has them.
            static_summary=story.deal_summary(terms),
            static_details=story.deal_details(terms),
            search_attributes=deal_search_attributes(settings, terms),
        )
    except WorkflowAlreadyStartedError:
        pass  # the deal ran and closed: answered below as it is
    except RPCError:
        if staged and await _never_started(client, deal_id):
            await asyncio.to_thread(_discard, settings, deal_id)  # frees its serials for another try
        raise
    if staged:
        return view
    return await get_deal(client, settings, deal_id) or view


def deal_search_attributes(settings: Settings, terms: DealTerms) -> TypedSearchAttributes | None:
    """DealStatus and PartnerId, when the namespace has them (TAKEBACK_SEARCH_ATTRIBUTES): the deal then keeps DealStatus current."""
    if not settings.search_attributes:
        return None
    return TypedSearchAttributes([SearchAttributePair(DEAL_STATUS, DealStatus.awaiting_returns.value), SearchAttributePair(PARTNER_ID, terms.partner_id)])


async def _never_started(client: Client, deal_id: str) -> bool:
    """True only when the engine says so: a deal it may have started keeps its staged rows."""
    try:
        await deal_handle(client, deal_id).describe()
    except RPCError as error:
        return error.status == RPCStatusCode.NOT_FOUND
    return False


def _discard(settings: Settings, deal_id: str) -> None:
    with session_scope(settings.effective_database_url) as session:
        store.discard_staged_booking(session, deal_id)


async def get_deal(client: Client, settings: Settings, deal_id: str) -> DealView | None:
    """The deal as `get_deal_json` answers it, parsed."""
    answer = await get_deal_json(client, settings, deal_id)
    return DealView.model_validate_json(answer) if answer is not None else None


async def get_deal_json(client: Client, settings: Settings, deal_id: str, visible=lambda partner_id: True) -> str | None:
    """A closed deal from the store (it no longer changes); an open one live from its workflow.
    As JSON: a closed deal's stored view is the answer as it is, parsed only if a pickup moved since.
    None for an unknown deal, and for one whose partner is not `visible` to the caller.

    If the query cannot be answered (no worker, engine down) the store's copy, a moment old,
    answers instead; with neither, the engine's error stands.
    """
    def read() -> tuple[store.StoredDeal | None, dict[str, dict[str, str]]]:
        with session_scope(settings.effective_database_url) as session:
            return store.stored_deal(session, deal_id)

    def from_view(view: DealView) -> str:
        return store.with_pickup_statuses(view, statuses).model_dump_json()

    def from_json(view_json: str) -> str:
        return view_json if deal_id not in statuses else from_view(DealView.model_validate_json(view_json))

    stored, statuses = await asyncio.to_thread(read)
    if stored is None or not visible(stored.partner_id):
        return None
    if stored.view_json is not None and stored.status not in OPEN_DEAL_STATUSES:
        return from_json(stored.view_json)
    try:
        return from_view(await ask(deal_handle(client, deal_id), TakebackDealWorkflow.view))
    except Exception as error:
        # Only a deal that closed meanwhile, or whose workflow is gone, is answered from the store;
        # an open deal that cannot be asked is an error the caller sees (503 or 500), never a stale copy.
        stored, statuses = await asyncio.to_thread(read)
        gone = isinstance(error, RPCError) and error.status == RPCStatusCode.NOT_FOUND
        if stored is not None and stored.view_json is not None and (gone or stored.status not in OPEN_DEAL_STATUSES):
            log.info("deal %s answered from the store: its workflow %s", deal_id, "is gone" if gone else "closed meanwhile")
            return from_json(stored.view_json)
        raise


async def request_pickup(
    client: Client, deal_id: str, request: PickupRequest, request_id: str | None = None, *, settings: Settings | None = None, ops: bool = False,
) -> PickupView:
    """Check the pickup against the deal as it is now (`rules.validate_pickup`: ready between today
    and the deadline, a bounded number under way and over the deal's life, no more units than it awaits
    beyond those its pickups under way bring), then book it.
    `request_id` makes a retried request book one pickup: the deal remembers the ids it took.

    With `settings` the deal is read as `get_deal` reads it (pickups with the carrier's latest status
    from the store, and the units its pickups under way bring); without, from its workflow (pickups the
    carrier finished may still count as under way, and their units are not known). A deal that cannot
    be read refuses the pickup with the read's error (a 503), never unchecked.
    A retry of a request the deal already took is answered with that pickup, unchecked.
    `ops`: an ops caller, who reads the carrier provider's own words when it cannot check the address.
    """
    def expected_units() -> dict[str, int]:
        with session_scope(settings.effective_database_url) as session:
            return limits.pickup_expected_units(session, deal_id)

    handle = deal_handle(client, deal_id)
    if settings is not None:
        view = await get_deal(client, settings, deal_id)
        if view is None:
            raise DealNotFound(deal_id)
    else:
        try:
            view = await ask(handle, TakebackDealWorkflow.view)
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                raise DealNotFound(deal_id) from error
            raise
    booked = None
    if view.status in OPEN_DEAL_STATUSES and request_id is not None:
        # A retry of a request the deal took is the same request: answered with its pickup, not
        # checked again against a deal that has moved on since (units received meanwhile, or this
        # very pickup, still being booked, counted among those under way).
        booked = await ask(handle, TakebackDealWorkflow.pickup_for_request, request_id)
        if booked is not None and booked.status == BOOKING_FAILED:
            raise PickupBookingFailed(f"the carrier could not book pickup {booked.id}")
        if booked is not None and booked.status != "booking":
            return booked
    if view.status in OPEN_DEAL_STATUSES and booked is None:  # a closed deal's refusal (409) comes from the deal itself
        max_open = settings.max_open_pickups if settings is not None else DEFAULT_MAX_OPEN_PICKUPS
        max_labels = settings.max_labels_per_deal if settings is not None else DEFAULT_MAX_LABELS_PER_DEAL
        expected = await asyncio.to_thread(expected_units) if settings is not None else {}
        try:
            rules.validate_pickup(request, view, await booking_clock(), max_open, max_labels, expected)
        except rules.RuleViolation as error:
            raise PickupRefused(str(error)) from None
        if settings is not None:  # a real carrier checks the address first: refused here (422), never inside the deal
            await check_pickup_address(settings, deal_id, request, ops=ops)
    return await _update(handle, TakebackDealWorkflow.request_pickup, request, id=request_id or uuid.uuid4().hex)


def receipt_batch_id(deal_id: str, items: list[ReceiptItem]) -> str:
    """The same items posted again are the same batch: a retry is answered as the first time
    instead of finding its own serials 'already returned'."""
    digest = hashlib.sha256(json.dumps([item.model_dump(mode="json") for item in items], sort_keys=True).encode()).hexdigest()[:24]
    return f"{deal_id}-r{digest}"


class ReceiptNotCounted(DealNotOpen):
    """The deal had been decided when the receipt came: nothing of it counts, no serial is burnt (HTTP 409)."""


class ReceiptCountedDealNotTold(Exception):
    """The receipt is counted in the store, but its deal could not be told yet (the engine unreachable):
    the deal's decision counts it anyway; a retry of the same receipt answers it and tells the deal (HTTP 503)."""


async def record_receipt(client: Client, settings: Settings, deal_id: str, items: list[ReceiptItem], batch_id: str | None = None, *, custody: dict | None = None) -> dict:
    """Count the items in the store (store.settlement: one transaction with the deal locked), then tell
    the deal what the store now holds; answer item by item from the store.

    Counted in the store is counted: the deal's decision counts every batch committed before it. A
    batch that comes after the decision is refused (ReceiptNotCounted), and so is its retry. A retry of
    a counted batch answers as the first time and tells the deal again. `custody` (actor, facility,
    operator, tracking_number, pickup_id) is kept with the batch for its serials' custody events.
    """
    batch_id = batch_id or receipt_batch_id(deal_id, items)
    received_at = await booking_clock()

    def count() -> tuple[settlement.ReceiptOutcome, dict]:
        with session_scope(settings.effective_database_url) as session:
            outcome = settlement.count_receipt(
                session, deal_id, batch_id, items, settings.refresh_max_age_years, default_catalog(), received_at=received_at, context=custody,
            )
            return outcome, settlement.receipt_result(session, batch_id)

    outcome, result = await asyncio.to_thread(count)
    if outcome.fresh:
        metrics.receipt_processed(outcome.counts.accepted, outcome.counts.rejected)
    if outcome.settled:
        metrics.decided(outcome.settled)
    if not outcome.counted:
        raise ReceiptNotCounted(f"deal {deal_id} was decided before receipt {batch_id} came: it was not counted")
    try:
        await deal_handle(client, deal_id).signal(TakebackDealWorkflow.receipts_counted, outcome.totals)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:  # the deal's run has ended: it was decided, and this receipt counted before
            return result
        log.warning("receipt %s of deal %s is counted; the deal was not told: %s", batch_id, deal_id, error)
        raise ReceiptCountedDealNotTold(f"receipt {batch_id} is counted; its deal was not told yet") from error
    return result


def parse_extension(extend_by: str) -> str:
    """Check an `extend_by` duration before any workflow sees it: ValueError if it is none, or
    longer than MAX_EXTENSION (a huge one would overflow the deal's deadline and stall it)."""
    extension_duration(extend_by)
    return extend_by


async def extend_deal(
    client: Client, deal_id: str, extend_by: str, reason: str, request_id: str | None = None, *,
    reason_code: str | None = None, settings: Settings | None = None, actor: str | None = None,
) -> DealView:
    """`request_id` (from an Idempotency-Key) makes a retry the same extension. ValueError for an
    `extend_by` that `parse_extension` refuses: nothing reaches the deal. With `settings`, the
    extension's reason code (domain.custody.ExtensionReason, default `other`) is kept to be counted."""
    seconds = extension_duration(extend_by).total_seconds()
    request_id = request_id or uuid.uuid4().hex
    view = await _update(deal_handle(client, deal_id), TakebackDealWorkflow.extend, ExtendCommand(extend_by_seconds=seconds, reason=reason), id=request_id)
    await _keep_reason(settings, view, "extend", reason_code, reason, request_id, actor)
    return view


async def cancel_deal(
    client: Client, deal_id: str, reason: str, request_id: str | None = None, *,
    reason_code: str | None = None, settings: Settings | None = None, actor: str | None = None,
) -> DealView:
    """With `settings`, the cancellation's reason code (domain.custody.CancellationReason, default `other`) is kept to be counted."""
    request_id = request_id or uuid.uuid4().hex
    view = await _update(deal_handle(client, deal_id), TakebackDealWorkflow.cancel, reason, id=request_id)
    await _keep_reason(settings, view, "cancel", reason_code, reason, request_id, actor)
    return view


async def _keep_reason(settings: Settings | None, view: DealView, action: str, code: str | None, text: str, request_id: str, actor: str | None) -> None:
    """The coded reason of an extension or cancellation the deal took, once per request (a retry adds none)."""
    if settings is None:
        return
    from store import custody

    def keep() -> None:
        with session_scope(settings.effective_database_url) as session:
            custody.record_reason(session, view.id, view.partner_id, action, code or "other", text, request_id, actor or "unknown")

    await asyncio.to_thread(keep)


class UnknownTracking(LookupError):
    pass


async def send_carrier_event(client: Client, settings: Settings, event: CarrierEvent) -> store.CarrierEventOutcome:
    """Record a carrier event in the store (once per event id, never backwards); tell the deal
    only what it must act on. A failed signal raises, so the carrier's retry tells it again."""

    def record() -> store.CarrierEventOutcome | None:
        with session_scope(settings.effective_database_url) as session:
            return store.record_carrier_event(session, event)

    outcome = await asyncio.to_thread(record)
    if outcome is None:
        raise UnknownTracking(event.tracking_number)
    if outcome.escalate:
        try:
            # The event's own status: a redelivered failure must escalate even if the pickup moved on since.
            await deal_handle(client, outcome.deal_id).signal(TakebackDealWorkflow.pickup_status, args=[outcome.pickup_id, event.status.value])
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:  # NOT_FOUND: the deal closed, the pickup no longer matters
                raise
    return outcome
