"""A deal's state as its workflow carries it, and the view built from it.

Pure and outside the workflow module: the worker's sandbox re-executes a workflow module for
every workflow it starts, and building these pydantic models there each time cost more worker
CPU than the booking itself. The API builds a booked deal's first view with the same functions.
"""

from datetime import datetime, timedelta

from pydantic import BaseModel

from domain import rules
from domain.durations import format_duration
from domain.models import DealStatus, DealTerms, DealView, Dispositions, Incentive, IncentiveMode, IncentiveStatus, PickupView, ReceiptCounts


class ExtendCommand(BaseModel):
    extend_by_seconds: float
    reason: str


class PickupEscalation(BaseModel):
    deal_id: str
    partner_id: str
    pickup_id: str
    status: str


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
    processed_batches: list[str] = []
    pending_escalations: list[PickupEscalation] = []
    extensions: list[str] = []
    cancel_reason: str | None = None
    closed_reason: str | None = None
    # Set the moment the deal starts to close (cancel, deadline, every unit back): from then on it
    # refuses receipts, extensions, pickups and cancels, so what it decides on cannot change.
    closing: bool = False
    settlement: str | None = None  # the one terminal money outcome, once decided
    revision: int = 0  # of the projection in the store
    pickup_requests: dict[str, str] = {}  # update id -> pickup id: a retried request books one pickup, across continue-as-new


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
    """Frozen in the terms at booking; computed as then for deals booked before it was kept."""
    return terms.incentive_amount if terms.incentive_amount is not None else rules.incentive_amount(terms.new_products_value, terms.incentive_rate)


def required_units(terms: DealTerms) -> int:
    return terms.required_units if terms.required_units is not None else rules.required_units(terms.committed_units, terms.return_threshold)


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


def count_receipt(progress: DealProgress, counts: ReceiptCounts) -> bool:
    """Add a processed batch to the deal's counts; False (and nothing changed) for one counted already."""
    p = progress
    if counts.batch_id in p.processed_batches:
        return False
    p.processed_batches.append(counts.batch_id)
    p.received_units += counts.accepted
    p.rejected_units += counts.rejected
    p.dispositions = Dispositions(
        refresh=p.dispositions.refresh + counts.refresh,
        recycle=p.dispositions.recycle + counts.recycle,
        other=p.dispositions.other + counts.other,
    )
    return True


def adopt_settlement(progress: DealProgress, outcome: str) -> None:
    progress.settlement = outcome
    progress.incentive_status = SETTLED_INCENTIVE[outcome]


def take_in_deadline_decision(progress: DealProgress, swept: list[ReceiptCounts], held_outcome: str) -> None:
    """The deadline's decision as the store returned it: the batches it swept are counted, and the
    settlement it holds is adopted unless the deal had one already (a rebate released before its deadline)."""
    for counts in swept:
        count_receipt(progress, counts)
    if progress.settlement is None:
        adopt_settlement(progress, held_outcome)


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
