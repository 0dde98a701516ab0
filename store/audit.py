"""The audit trail: who (which key, whose account) did what to which deal or partner, and why."""

from sqlalchemy import insert, select, update
from sqlmodel import Session

from store.tables import ApiKey, AuditEvent, utcnow


def record(session: Session, event: dict) -> int:
    """Insert an event (AuditEvent's columns); the caller commits, with the write it audits where there
    is one. Its id. A Core insert of the table: the hot paths (a booking) write one per call."""
    return session.execute(insert(AuditEvent.__table__), {"at": utcnow(), **event}).inserted_primary_key[0]


def correct_status(session: Session, event_id: int, status_code: int) -> None:
    """An event recorded with the write it audits, before the call's answer was known: its real status."""
    session.execute(update(AuditEvent.__table__).where(AuditEvent.__table__.c.id == event_id).values(status_code=status_code))


def deal_trail(session: Session, deal_id: str, after: int | None = None, limit: int = 500) -> list[tuple[AuditEvent, str | None]]:
    """A deal's events, oldest first, each with the prefix of the key that acted."""
    query = (
        select(AuditEvent, ApiKey.prefix)
        .join(ApiKey, ApiKey.id == AuditEvent.api_key_id, isouter=True)
        .where(AuditEvent.deal_id == deal_id)
        .order_by(AuditEvent.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(AuditEvent.id > after)
    return [(event, prefix) for event, prefix in session.execute(query).all()]
