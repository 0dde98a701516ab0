"""E-mail delivery state: each business message is queued once, claimed before it is sent, and
its outcome (sent, or failed with the provider's reason) and attempts are kept for ops."""

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from store.tables import EmailMessage, utcnow

# An attempt's claim on a message. Longer than a mail activity may run (its start-to-close
# timeout) and than the provider's own deadline, so no retry sends while an attempt still runs.
# A claim older than this belonged to an attempt that never finished (its worker died, perhaps
# after SendGrid took the message): the message is then `failed` as "outcome unknown", not resent.
CLAIM_LEASE = timedelta(minutes=10)
ABANDONED = "outcome unknown: the attempt that was sending it never finished (its worker stopped); not sent again, so it cannot arrive twice"


def queue(session: Session, row: EmailMessage) -> EmailMessage:
    """The message under its key, queued if it is new."""
    existing = session.get(EmailMessage, row.key)
    if existing is not None:
        return existing
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
    return session.get(EmailMessage, row.key)


def claim(session: Session, key: str, now: datetime | None = None) -> bool:
    """Take the message for one attempt: True if this attempt may call the provider.

    A claim left by an attempt that never finished turns the message `failed` (outcome unknown)."""
    now = now or utcnow()
    claimed = session.execute(
        update(EmailMessage).where(EmailMessage.key == key, EmailMessage.state == "queued").values(state="sending", claimed_at=now, attempts=EmailMessage.attempts + 1)
    ).rowcount == 1
    if not claimed:
        session.execute(
            update(EmailMessage)
            .where(EmailMessage.key == key, EmailMessage.state == "sending", EmailMessage.claimed_at < now - CLAIM_LEASE)
            .values(state="failed", last_error=ABANDONED)
        )
    session.commit()
    return claimed


def mark_sent(session: Session, key: str, provider_id: str) -> None:
    session.execute(update(EmailMessage).where(EmailMessage.key == key).values(state="sent", sent_at=utcnow(), provider_id=provider_id, last_error=None))
    session.commit()


def mark_failed(session: Session, key: str, reason: str) -> None:
    """The provider refused the message for good (a bad address): it is not tried again."""
    session.execute(update(EmailMessage).where(EmailMessage.key == key).values(state="failed", last_error=reason[:2000]))
    session.commit()


def release_for_retry(session: Session, key: str, reason: str) -> None:
    """The attempt failed but a later one may succeed: back to the queue, with the reason shown."""
    session.execute(update(EmailMessage).where(EmailMessage.key == key, EmailMessage.state == "sending").values(state="queued", last_error=reason[:2000]))
    session.commit()


def messages(session: Session, deal_id: str | None = None, partner_id: str | None = None) -> list[EmailMessage]:
    query = select(EmailMessage).order_by(EmailMessage.created_at, EmailMessage.key)
    if deal_id is not None:
        query = query.where(EmailMessage.deal_id == deal_id)
    if partner_id is not None:
        query = query.where(EmailMessage.partner_id == partner_id)
    return list(session.execute(query).scalars())
