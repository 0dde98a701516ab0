"""The one arbiter of a deal's money: what came back and what it is paid, decided in the store.

Every receipt and every decision of a deal runs in one transaction with the deal's row locked, so
they happen in one order: a receipt batch counts if and only if it committed before the deal's
decision, and the decision (release, forfeit, claw back, cancel; the amount frozen at booking) counts
exactly the batches committed before it and closes the deal to later ones. The workflow orchestrates
(timers, reminders, pickups, mail) and adopts what this module answers (`DealTotals`): its counts are
a view, never a second opinion.
"""

import json
from datetime import datetime
from typing import Callable, Literal

from pydantic import BaseModel
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session

from domain import rules
from domain.catalog import Catalog
from domain.custody import REJECTION_TEXT, RejectionReason
from domain.deal_progress import SETTLED_INCENTIVE, DealTotals, deadline_outcome
from domain.models import DealView, Disposition, Dispositions, IncentiveMode, IncentiveStatus, ReceiptCounts, ReceiptItem
from store import custody
from store.tables import CommittedSerial, Deal, IncentiveLedger, ReceiptBatch, ReceiptRejection, ReturnedItem, SanitizationRecord, Settlement, utcnow

CHUNK = 2_000
# Outcomes with a ledger row of their own ("applied" is written at booking, when the discount is granted).
LEDGER_OUTCOMES = {"released", "forfeited", "clawed_back", "cancelled"}


# PostgreSQL's "try again" answers: a serialization failure and a deadlock broken by the server (two
# receipts of two deals crossing on each other's serials). The transaction is rolled back and run again.
RETRYABLE_SQLSTATES = {"40001", "40P01"}


def _retryable(error: DBAPIError) -> bool:
    return getattr(error.orig, "sqlstate", None) in RETRYABLE_SQLSTATES


class UnknownDeal(LookupError):
    pass


class UnknownBatch(LookupError):
    pass


class ReceiptOutcome(BaseModel):
    counted: bool  # False: the deal had been decided when the batch came; nothing of it counts, no serial is burnt
    counts: ReceiptCounts
    totals: DealTotals
    fresh: bool = False  # this call committed the batch (a retry answers what an earlier call committed)
    settled: str | None = None  # the settlement this call's transaction recorded (a release), if any


def _lock(session: Session, deal_id: str) -> Deal:
    """Take the deal's row for this transaction: receipts and decisions of one deal run one at a time.

    An UPDATE, not SELECT ... FOR UPDATE: on PostgreSQL it locks the row, and on SQLite it takes the
    database's write lock at once (a deferred transaction upgrading later could deadlock)."""
    if session.execute(update(Deal).where(Deal.id == deal_id).values(decided_at=Deal.decided_at)).rowcount != 1:
        session.rollback()
        raise UnknownDeal(deal_id)
    deal = session.get(Deal, deal_id, populate_existing=True)
    return deal


def with_store_counts(view: DealView, deal: Deal) -> DealView:
    """The view with what came back and the incentive's status as the store holds them: the read model's
    copy of a deal is written from the workflow's view (store.deals.project_deal) and by each receipt
    (count_receipt), and those parts are always the store's own."""
    return view.model_copy(update={
        "received_units": deal.received_units,
        "rejected_units": deal.rejected_units,
        "dispositions": Dispositions(refresh=deal.refresh_units, recycle=deal.recycle_units, other=deal.other_units),
        "incentive": view.incentive.model_copy(update={"status": IncentiveStatus(deal.incentive_status)}),
    })


def lock_for_projection(session: Session, deal_id: str) -> Deal | None:
    """The deal's row, locked for the transaction (as receipts lock it), to write its view; None if unknown."""
    try:
        return _lock(session, deal_id)
    except UnknownDeal:
        return None


def _totals(session: Session, deal: Deal) -> DealTotals:
    held = _held(session, deal.id)
    return DealTotals(
        received_units=deal.received_units,
        rejected_units=deal.rejected_units,
        dispositions=Dispositions(refresh=deal.refresh_units, recycle=deal.recycle_units, other=deal.other_units),
        settlement=held,
        closed=deal.decided_at is not None,
    )


def totals(session: Session, deal_id: str) -> DealTotals:
    deal = session.get(Deal, deal_id, populate_existing=True)
    if deal is None:
        raise UnknownDeal(deal_id)
    return _totals(session, deal)


def _settle(session: Session, deal: Deal, outcome: str, amount) -> None:
    """The deal's one settlement and its ledger row; the settlement's primary key is the deal."""
    session.add(Settlement(deal_id=deal.id, partner_id=deal.partner_id, outcome=outcome, amount=amount))
    if outcome in LEDGER_OUTCOMES:
        session.add(IncentiveLedger(deal_id=deal.id, partner_id=deal.partner_id, kind=outcome, amount=amount))
    deal.incentive_status = SETTLED_INCENTIVE[outcome].value


def _held(session: Session, deal_id: str) -> str | None:
    return session.execute(select(Settlement.outcome).where(Settlement.deal_id == deal_id)).scalar_one_or_none()


def _decide_for_good(session: Session, deal: Deal, outcome: str, amount) -> None:
    """Close the deal to later receipts, with its settlement (unless one was held already: a rebate
    released before its deadline stays released)."""
    if _held(session, deal.id) is None:
        _settle(session, deal, outcome, amount)
    deal.decided_at = utcnow()


# --- receipts -------------------------------------------------------------------------------------


def _existing(session: Session, column, values: list[str], *where) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(values), CHUNK):
        found.update(session.execute(select(column).where(column.in_(values[start : start + CHUNK]), *where)).scalars().all())
    return found


def batch_counts(session: Session, batch_id: str) -> ReceiptCounts:
    by_disposition = dict(
        session.execute(select(ReturnedItem.disposition, func.count()).where(ReturnedItem.batch_id == batch_id).group_by(ReturnedItem.disposition)).all()
    )
    rejected = session.execute(select(func.count()).select_from(ReceiptRejection).where(ReceiptRejection.batch_id == batch_id)).scalar_one()
    return ReceiptCounts(
        batch_id=batch_id,
        accepted=sum(by_disposition.values()),
        rejected=rejected,
        refresh=by_disposition.get(Disposition.refresh.value, 0),
        recycle=by_disposition.get(Disposition.recycle.value, 0),
        other=by_disposition.get(Disposition.other.value, 0),
    )


def _nothing(batch_id: str) -> ReceiptCounts:
    return ReceiptCounts(batch_id=batch_id, accepted=0, rejected=0, refresh=0, recycle=0, other=0)


def _grade(session: Session, deal: Deal, batch_id: str, items: list[ReceiptItem], refresh_max_age_years: float, catalog: Catalog):
    """Each item accepted or rejected (grey-market guard), dispositioned, and sanitized if it holds data."""
    serials = [item.serial_number for item in items]
    already_returned = _existing(session, ReturnedItem.serial, serials)
    listed = _existing(session, CommittedSerial.serial, serials, CommittedSerial.deal_id == deal.id) if deal.serials_listed else None
    seen: set[str] = set()
    now = utcnow()
    accepted, rejections, sanitizations = [], [], []
    for position, item in enumerate(items):
        serial = item.serial_number
        code = None
        if serial in seen:
            code = RejectionReason.duplicate_in_receipt
        elif serial in already_returned:
            code = RejectionReason.already_returned
        elif listed is not None and serial not in listed:
            code = RejectionReason.not_listed
        seen.add(serial)
        if code:
            rejections.append({"batch_id": batch_id, "deal_id": deal.id, "position": position, "serial": serial, "reason": REJECTION_TEXT[code], "reason_code": code.value})
            continue
        disposition = rules.disposition_for(item.condition, item.age_years, refresh_max_age_years)
        accepted.append({
            "serial": serial, "deal_id": deal.id, "batch_id": batch_id, "product_id": item.product_id, "condition": item.condition.value,
            "age_years": item.age_years, "disposition": disposition.value, "received_at": now,
        })
        if catalog.is_data_bearing(item.product_id):
            sanitizations.append({"serial": serial, "deal_id": deal.id, "method": rules.sanitization_for(disposition).value, "recorded_at": now})
    return accepted, rejections, sanitizations


def count_receipt(
    session: Session, deal_id: str, batch_id: str, items: list[ReceiptItem], refresh_max_age_years: float, catalog: Catalog, *,
    received_at: datetime | None = None, context: dict | None = None, heartbeat: Callable[[], None] = lambda: None,
) -> ReceiptOutcome:
    """Count a receipt batch, once, in one transaction with the deal locked; a retry of the batch id is
    answered as the first time (counted, or not counted).

    A deal decided for good refuses it: the batch is kept as refused (its retry is refused the same) and
    nothing of it counts. Otherwise every item is graded, the deal's counts grow, and the store decides
    what the counts decide at once: a rebate is released when the condition is first met, and a deal
    with every committed unit back is decided for good (released, or applied upfront).
    `context` (actor, facility, operator, tracking_number, pickup_id): the custody of its serials.
    """
    received_at = received_at or utcnow()
    for _attempt in range(5):
        known = session.get(ReceiptBatch, batch_id, populate_existing=True)
        if known is not None:
            if known.deal_id != deal_id:
                raise UnknownBatch(batch_id)
            if known.processed_at is not None or known.refused_at is not None:
                counted = known.processed_at is not None
                return ReceiptOutcome(counted=counted, counts=batch_counts(session, batch_id) if counted else _nothing(batch_id), totals=totals(session, deal_id))
        deal = _lock(session, deal_id)
        # Read again under the lock: a concurrent attempt of the same batch may have committed meanwhile.
        if session.get(ReceiptBatch, batch_id, populate_existing=True) is not None:
            session.rollback()
            continue
        payload = json.dumps([item.model_dump(mode="json") for item in items])
        batch = ReceiptBatch(id=batch_id, deal_id=deal_id, items_json=payload, item_count=len(items), created_at=received_at)
        if context is not None:
            custody.stage_receipt_context(session, batch_id, received_at=received_at, **context)
        if deal.decided_at is not None:
            batch.refused_at = utcnow()
            session.add(batch)
            outcome = ReceiptOutcome(counted=False, counts=_nothing(batch_id), totals=_totals(session, deal))
            session.commit()
            return outcome
        batch.processed_at = utcnow()
        session.add(batch)
        accepted, rejections, sanitizations = _grade(session, deal, batch_id, items, refresh_max_age_years, catalog)
        try:
            session.flush()
            for start in range(0, len(accepted), CHUNK):
                heartbeat()
                session.execute(insert(ReturnedItem), accepted[start : start + CHUNK])
            for start in range(0, len(rejections), CHUNK):
                session.execute(insert(ReceiptRejection), rejections[start : start + CHUNK])
            for start in range(0, len(sanitizations), CHUNK):
                session.execute(insert(SanitizationRecord), sanitizations[start : start + CHUNK])
            custody.insert_events(session, custody.receipt_rows(session, deal_id, batch_id, accepted, rejections, received_at), heartbeat)
            counts = batch_counts(session, batch_id)
            held_before = _held(session, deal_id)
            deal.received_units += counts.accepted
            deal.rejected_units += counts.rejected
            deal.refresh_units += counts.refresh
            deal.recycle_units += counts.recycle
            deal.other_units += counts.other
            _decide_on_counts(session, deal)
            if deal.view_json is not None:  # the read model shows the receipt at once: no projection by the deal needed
                deal.view_json = with_store_counts(DealView.model_validate_json(deal.view_json), deal).model_dump_json()
            session.flush()
            totals_now = _totals(session, deal)
            settled = totals_now.settlement if held_before is None else None
            outcome = ReceiptOutcome(counted=True, counts=counts, totals=totals_now, fresh=True, settled=settled)
            session.commit()
        except IntegrityError:
            session.rollback()  # lost a race on a serial (another deal's receipt) or on the batch id: look again
            continue
        except DBAPIError as error:
            if not _retryable(error):
                raise
            session.rollback()
            continue
        return outcome
    raise RuntimeError(f"receipt {batch_id} kept conflicting with concurrent receipts")


def _decide_on_counts(session: Session, deal: Deal) -> None:
    rebate = deal.incentive_mode == IncentiveMode.rebate.value
    if deal.received_units >= deal.committed_units:
        _decide_for_good(session, deal, "released" if rebate else "applied", deal.incentive_amount)
    elif rebate and deal.received_units >= deal.required_units and _held(session, deal.id) is None:
        _settle(session, deal, "released", deal.incentive_amount)


def receipt_result(session: Session, batch_id: str) -> dict:
    """The item-level answer of a counted receipt, as the API returns it."""
    rejected = session.execute(
        select(ReceiptRejection.serial, ReceiptRejection.reason).where(ReceiptRejection.batch_id == batch_id).order_by(ReceiptRejection.position)
    ).all()
    items = session.execute(select(ReturnedItem.serial, ReturnedItem.disposition).where(ReturnedItem.batch_id == batch_id).order_by(ReturnedItem.id)).all()
    return {
        "accepted": len(items),
        "rejected": [{"serial_number": s, "reason": r} for s, r in rejected],  # the API adds each reason's code
        "items": [{"serial_number": s, "disposition": d} for s, d in items],
    }


# --- decisions ------------------------------------------------------------------------------------

DecisionKind = Literal["deadline", "cancel", "close"]


def decide(session: Session, deal_id: str, kind: DecisionKind) -> tuple[DealTotals, bool]:
    """The deal's decision for good, once; a repeat (a retried activity) answers what was decided.
    Returns the store's totals and whether this call decided.

    - `deadline`: the condition decides on the counts committed so far (`deadline_outcome`): released
      or applied when met, else forfeited or clawed back; a rebate released before stays released.
    - `cancel`: nothing paid; refused (the answer is not `cancelled`, not closed) once the incentive
      was released or the deal was decided.
    - `close`: the deal was decided by its counts (every unit back): only answers it.
    """
    deal = _lock(session, deal_id)
    undecided = deal.decided_at is None
    if undecided:
        rebate = deal.incentive_mode == IncentiveMode.rebate.value
        if kind == "cancel" and _held(session, deal_id) is None:
            _decide_for_good(session, deal, "cancelled", 0 if rebate else deal.incentive_amount)
        elif kind == "deadline":
            _decide_for_good(session, deal, deadline_outcome(deal.incentive_mode, deal.received_units, deal.required_units), deal.incentive_amount)
        session.flush()
    answer = _totals(session, deal)
    session.commit()
    return answer, undecided and answer.closed
