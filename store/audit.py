"""The audit trail: who (which key, whose account) did what to which deal or partner, and why."""

from sqlalchemy import select
from sqlmodel import Session

from store.tables import ApiKey, AuditEvent


def record(session: Session, event: AuditEvent) -> None:
    """Add an event to the session; the caller commits (with the write it audits, where there is one)."""
    session.add(event)


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
