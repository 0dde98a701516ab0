"""A deal's state as its workflow carries it, and the view built from it.

Pure and outside the workflow module: the worker's sandbox re-executes a workflow module for
every workflow it starts, and building these pydantic models there each time cost more worker
CPU than the booking itself. The API builds a booked deal's first view with the same functions.
"""

from datetime import datetime, timedelta

from pydantic import BaseModel

from domain.durations import format_duration
from domain.models import DealStatus, DealTerms, DealView, Dispositions, Incentive, IncentiveMode, IncentiveStatus, PickupRequest, PickupView


class ExtendCommand(BaseModel):
    extend_by_seconds: float
    reason: str


class PickupEscalation(BaseModel):
    deal_id: str
    partner_id: str
    pickup_id: str
    status: str


class PendingNotice(BaseModel):
    """A mail activity on its way: its name, its argument as JSON data, its line in the Web UI."""

    key: str  # unique among the deal's notices (activity name and what it is about)
    activity: str
    argument: dict
    summary: str


class DealProgress(BaseModel):
    """The deal's state; carried across continue-as-new."""

    status: DealStatus
    booked_at: datetime
    deadline: datetime
    incentive_status: IncentiveStatus
    received_units: int = 0
    rejected_units: int = 0
    dispositions: Dispositions = Dispositions()
    pickups: list[PickupView] = []
    reminders_sent: list[float] = []
    reminders_skipped: list[float] = []
    extensions: list[str] = []
    cancel_reason: str | None = None
    closed_reason: str | None = None
    # Set the moment the deal starts to close (cancel, deadline, every unit back): from then on it
    # refuses extensions, pickups and cancels, and the store refuses receipts once it has decided.
    closing: bool = False
    settlement: str | None = None  # the money outcome the store holds, once decided
    closed_by_store: bool = False  # the store decided the deal for good (DealTotals.closed)
    settlement_told: str | None = None  # the settlement the partner was told of (a notice on its way or sent)
    revision: int = 0  # of the projection in the store
    # Update ids this deal applied, carried across continue-as-new, so a retry is answered, never applied
    # again (the engine de-duplicates update ids within one run only).
    pickup_requests: dict[str, str] = {}  # update id -> pickup id
    applied_extensions: dict[str, int] = {}  # update id -> the extension's sequence
    cancel_request: str | None = None  # the update id of the cancel that closed the deal
    # Pickups accepted and not yet booked (pickup id -> the request), re-driven by the next run if the
    # deal continues as new meanwhile: a carrier in retries never holds a continue-as-new.
    bookings_in_flight: dict[str, PickupRequest] = {}
    # Mail on its way (activity name -> arguments), sent again by the next run: a mail is claimed in the
    # store before it goes, so the two sends are one mail. A mail outage never holds a continue-as-new.
    notices_in_flight: list[PendingNotice] = []


class DealTotals(BaseModel):
    """What came back and what was decided, as the store holds it (store.settlement): the one source of
    the deal's counts and its money. The deal adopts it whenever the store tells it (receipts, decisions)."""

    received_units: int = 0
    rejected_units: int = 0
    dispositions: Dispositions = Dispositions()
    settlement: str | None = None  # released | forfeited | clawed_back | applied | cancelled
    closed: bool = False  # the store decided the deal for good: it counts no later receipt

    def newer_than(self, progress: "DealProgress") -> bool:
        """Counts and decisions only grow: an older answer arriving late changes nothing."""
        return (self.received_units + self.rejected_units, self.settlement is not None, self.closed) > (
            progress.received_units + progress.rejected_units, progress.settlement is not None, progress.closed_by_store,
        )


class DealWorkflowInput(BaseModel):
    terms: DealTerms
    progress: DealProgress | None = None  # set when continuing as new


def initial_progress(terms: DealTerms, booked_at: datetime) -> DealProgress:
    upfront = terms.mode == IncentiveMode.upfront
    return DealProgress(
        status=DealStatus.awaiting_returns,
        booked_at=booked_at,
        deadline=booked_at + timedelta(seconds=terms.return_window_seconds),
        incentive_status=IncentiveStatus.applied if upfront else IncentiveStatus.held,
        # An offset as long as the window itself has no meaningful moment to fire.
        reminders_skipped=[o for o in terms.reminder_offsets_seconds if o >= terms.return_window_seconds],
    )


def incentive_amount(terms: DealTerms):
    """Frozen in the terms at booking (service.deals.deal_terms)."""
    return terms.incentive_amount


def required_units(terms: DealTerms) -> int:
    return terms.required_units


def deal_view(terms: DealTerms, progress: DealProgress) -> DealView:
    p = progress
    return DealView(
        id=terms.deal_id,
        partner_id=terms.partner_id,
        status=p.status,
        booked_at=p.booked_at,
        return_deadline=p.deadline,
        committed_units=terms.committed_units,
        required_units=required_units(terms),
        received_units=p.received_units,
        rejected_units=p.rejected_units,
        incentive=Incentive(mode=terms.mode, rate=terms.incentive_rate, amount=incentive_amount(terms), status=p.incentive_status),
        pickups=p.pickups,
        reminders_sent=[format_duration(timedelta(seconds=s)) for s in p.reminders_sent],
        dispositions=p.dispositions,
        extensions=p.extensions,
        closed_reason=p.closed_reason,
        revision=p.revision,
    )


# The incentive status each settlement outcome shows, and the deal's status once closed on it.
SETTLED_INCENTIVE = {
    "released": IncentiveStatus.released,
    "forfeited": IncentiveStatus.forfeited,
    "clawed_back": IncentiveStatus.clawed_back,
    "cancelled": IncentiveStatus.cancelled,
    "applied": IncentiveStatus.applied,
}
SETTLED_STATUS = {
    "released": DealStatus.closed,
    "applied": DealStatus.closed,
    "forfeited": DealStatus.expired,
    "clawed_back": DealStatus.expired,
    "cancelled": DealStatus.cancelled,
}


def deadline_outcome(mode: str, received_units: int, required_units: int) -> str:
    """The money decision at a deal's deadline (shared/domain.md): the condition is met when at least
    the required units came back; a rebate is then released and an upfront incentive stays applied,
    else the rebate is forfeited or the upfront incentive clawed back."""
    met = received_units >= required_units
    if mode == IncentiveMode.rebate.value:
        return "released" if met else "forfeited"
    return "applied" if met else "clawed_back"


def adopt_settlement(progress: DealProgress, outcome: str) -> None:
    progress.settlement = outcome
    progress.incentive_status = SETTLED_INCENTIVE[outcome]


def adopt_totals(progress: DealProgress, totals: DealTotals) -> bool:
    """Take in the store's counts and decision; False (nothing changed) for an answer no newer than what the deal holds."""
    if not totals.newer_than(progress):
        return False
    p = progress
    p.received_units, p.rejected_units, p.dispositions = totals.received_units, totals.rejected_units, totals.dispositions
    if totals.settlement is not None and totals.settlement != p.settlement:
        adopt_settlement(p, totals.settlement)
    p.closed_by_store = p.closed_by_store or totals.closed
    return True


def close_on_settlement(terms: DealTerms, progress: DealProgress) -> None:
    """The deal's closed state from its settlement: status, the reason shown, the projection's next revision."""
    p = progress
    p.status = SETTLED_STATUS[p.settlement]
    if p.status == DealStatus.cancelled:
        p.closed_reason = f"cancelled: {p.cancel_reason}"
    elif p.received_units >= terms.committed_units:
        p.closed_reason = "every committed unit returned"
    elif p.received_units >= required_units(terms):
        p.closed_reason = "return window ended with the condition met"
    else:
        p.closed_reason = "return window ended short of the condition"
    p.revision += 1
