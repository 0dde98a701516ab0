"""Pickups booked with a shipping provider (store/tables.py CarrierPickup): the booking's journal.

Each provider object is recorded the moment it exists, by a guarded UPDATE (`... WHERE column IS
NULL`): two attempts of one booking running at once (a timed-out attempt still running beside its
retry) both adopt whichever object was recorded first.
"""

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from domain.models import FINAL_CARRIER_STATUSES
from store.tables import CarrierPickup, Deal, Pickup, utcnow

BOOKING, BOOKED, FAILED, CANCEL_REQUESTED, CANCELLED = "booking", "booked", "failed", "cancel_requested", "cancelled"
# A pickup the carrier has not collected yet: cancelling its deal cancels it with the provider.
NOT_COLLECTED = ("scheduled", "pre_transit")
MAX_ERROR = 2_000


def start_attempt(session: Session, row: CarrierPickup) -> CarrierPickup:
    """The journal row of this pickup (made by the first attempt), with this attempt counted."""
    try:
        session.add(row)
        session.commit()
    except IntegrityError:
        session.rollback()
    session.execute(
        update(CarrierPickup).where(CarrierPickup.pickup_id == row.pickup_id).values(attempts=CarrierPickup.attempts + 1, last_attempt_at=utcnow())
    )
    session.commit()
    return get(session, row.pickup_id)


def get(session: Session, pickup_id: str) -> CarrierPickup | None:
    session.expire_all()
    return session.get(CarrierPickup, pickup_id)


def record(session: Session, pickup_id: str, **values) -> CarrierPickup:
    """Record provider objects: each column only while it is empty (the first one recorded stands)."""
    for column, value in values.items():
        if value is None:
            continue
        attribute = getattr(CarrierPickup, column)
        session.execute(update(CarrierPickup).where(CarrierPickup.pickup_id == pickup_id, attribute.is_(None)).values({column: value}))
    session.commit()
    return get(session, pickup_id)


def mark_booked(session: Session, pickup_id: str) -> CarrierPickup:
    session.execute(
        update(CarrierPickup)
        .where(CarrierPickup.pickup_id == pickup_id, CarrierPickup.state == BOOKING)
        .values(state=BOOKED, booked_at=utcnow(), last_error=None)
    )
    session.commit()
    return get(session, pickup_id)


def mark_failed(session: Session, pickup_id: str) -> None:
    session.execute(update(CarrierPickup).where(CarrierPickup.pickup_id == pickup_id, CarrierPickup.state == BOOKING).values(state=FAILED))
    session.commit()


def record_error(session: Session, pickup_id: str, message: str) -> None:
    """What the last attempt met (an outage, a refusal): shown on the pickup until a later attempt succeeds."""
    session.execute(update(CarrierPickup).where(CarrierPickup.pickup_id == pickup_id).values(last_error=message[:MAX_ERROR]))
    session.commit()


def request_cancel(session: Session, deal_id: str) -> list[str]:
    """Mark the deal's booked pickups the carrier has not collected yet for cancellation (durably:
    the tracking poll finishes what the close could not); the ids of all its pickups awaiting it."""
    collected_or_final = select(Pickup.id).where(Pickup.deal_id == deal_id, Pickup.status.not_in(NOT_COLLECTED))
    session.execute(
        update(CarrierPickup)
        .where(CarrierPickup.deal_id == deal_id, CarrierPickup.state == BOOKED, CarrierPickup.pickup_id.not_in(collected_or_final))
        .values(state=CANCEL_REQUESTED)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return list(
        session.execute(select(CarrierPickup.pickup_id).where(CarrierPickup.deal_id == deal_id, CarrierPickup.state == CANCEL_REQUESTED)).scalars()
    )


def mark_cancelled(session: Session, pickup_id: str) -> None:
    session.execute(
        update(CarrierPickup)
        .where(CarrierPickup.pickup_id == pickup_id, CarrierPickup.state == CANCEL_REQUESTED)
        .values(state=CANCELLED, cancelled_at=utcnow(), last_error=None)
    )
    session.commit()


def awaiting_cancel(session: Session, limit: int = 500) -> list[CarrierPickup]:
    return list(session.execute(select(CarrierPickup).where(CarrierPickup.state == CANCEL_REQUESTED).order_by(CarrierPickup.created_at).limit(limit)).scalars())


def open_trackers(session: Session, limit: int = 5_000) -> list[CarrierPickup]:
    """Booked pickups whose shipment has not reached a final status: what the tracking poll asks about."""
    final = [status.value for status in FINAL_CARRIER_STATUSES]
    return list(
        session.execute(
            select(CarrierPickup)
            .join(Pickup, Pickup.id == CarrierPickup.pickup_id)
            .where(CarrierPickup.state.in_((BOOKED, CANCEL_REQUESTED)), CarrierPickup.tracker_id.is_not(None), Pickup.status.not_in(final))
            .order_by(CarrierPickup.created_at)
            .limit(limit)
        ).scalars()
    )


def committed_lines(session: Session, deal_id: str) -> list[tuple[str, int]]:
    from store.tables import CommittedLine

    return [(product, quantity) for product, quantity in session.execute(select(CommittedLine.product_id, CommittedLine.quantity).where(CommittedLine.deal_id == deal_id))]


def customer(session: Session, deal_id: str) -> tuple[str, str] | None:
    """(customer name, customer country) of a deal."""
    row = session.execute(select(Deal.customer_name, Deal.customer_country).where(Deal.id == deal_id)).first()
    return (row[0], row[1]) if row is not None else None
