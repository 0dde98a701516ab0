"""Small helpers shared by the deal tests and tests/record_histories.py."""

from collections import Counter
from datetime import datetime, timedelta, timezone
from email import message_from_bytes, policy

from sqlalchemy import func, select

from domain.models import CarrierEvent, PickupRequest, ReceiptItem
from service import deals
from settings import Settings
from store.db import session_scope
from store.tables import IncentiveLedger, ReminderSent

DAY = timedelta(days=1)
TODAY = datetime.now(timezone.utc).date().isoformat()  # a pickup is ready between today and the deadline
PICKUP = PickupRequest(address="1 Main St, Toronto", contact_name="Sam", contact_phone="+1 555 0100", ready_on=TODAY, expected_units=1)


def items(prefix: str, n: int, product_id: str = "C9300-48P", condition: str = "working", age_years: float = 1, start: int = 0) -> list[ReceiptItem]:
    return [ReceiptItem(product_id=product_id, serial_number=f"{prefix}-{i}", condition=condition, age_years=age_years) for i in range(start, start + n)]


def event(event_id: str, tracking: str, status: str, at: str = "2026-12-01T10:00:00Z") -> CarrierEvent:
    return CarrierEvent(event_id=event_id, tracking_number=tracking, status=status, occurred_at=at)


async def settle(env, settings: Settings, deal_id: str):
    """Let the workflow act on what it was just sent (one second of workflow time), then read it."""
    await env.sleep(timedelta(seconds=1))
    return await deals.get_deal(env.client, settings, deal_id)


def ledger(settings: Settings, deal_id: str) -> Counter:
    with session_scope(settings.effective_database_url) as session:
        return Counter(session.execute(select(IncentiveLedger.kind).where(IncentiveLedger.deal_id == deal_id)).scalars().all())


def ledger_amounts(settings: Settings, deal_id: str) -> dict:
    with session_scope(settings.effective_database_url) as session:
        return dict(session.execute(select(IncentiveLedger.kind, IncentiveLedger.amount).where(IncentiveLedger.deal_id == deal_id)).all())


def reminder_offsets_days(settings: Settings, deal_id: str) -> list[float]:
    with session_scope(settings.effective_database_url) as session:
        rows = session.execute(select(ReminderSent.offset_seconds).where(ReminderSent.deal_id == deal_id)).scalars().all()
    return sorted(offset / 86400 for offset in rows)


def count(settings: Settings, table, **where) -> int:
    with session_scope(settings.effective_database_url) as session:
        query = select(func.count()).select_from(table)
        for column, value in where.items():
            query = query.where(getattr(table, column) == value)
        return session.execute(query).scalar_one()


def outbox(settings: Settings) -> list[str]:
    folder = settings.effective_outbox_dir
    return sorted(path.name for path in folder.glob("*.eml")) if folder.exists() else []


def mail(settings: Settings, name: str):
    return message_from_bytes((settings.effective_outbox_dir / name).read_bytes(), policy=policy.default)


async def skip_time(env, delta: timedelta, attempts: int = 5) -> None:
    """`env.sleep(delta)` on the time-skipping server, resumed where it got to when the call times out:
    the session's server holds every earlier test's deals, and a year's jump over all their timers
    can outlast the call ("Timeout expired"; seen once in a full run)."""
    from temporalio.service import RPCError

    target = await env.get_current_time() + delta
    for _ in range(attempts):
        left = target - await env.get_current_time()
        if left <= timedelta(0):
            return
        try:
            await env.sleep(left)
            return
        except RPCError as error:
            if "timeout expired" not in str(error).lower():
                raise
    raise AssertionError(f"the test server did not reach {target} in {attempts} jumps")
