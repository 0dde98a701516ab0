"""What the limits on callers are checked against (README "Data we keep, and limits on what callers send"):
a partner's open deals' value, and the units a deal's pickups are expected to bring."""

from decimal import Decimal

from sqlalchemy import func, select, update
from sqlmodel import Session

from domain.models import OPEN_DEAL_STATUSES
from store.tables import Deal, Partner, Pickup

CENTS = Decimal("0.01")


def lock_partner(session: Session, partner_id: str) -> None:
    """Hold the partner's row until the transaction ends, so that two of its bookings check its open deals one
    after the other (the second sees the first). PostgreSQL: SELECT ... FOR NO KEY UPDATE. SQLite has no row
    locks: a write to the row (unchanged) takes the database's write lock, which its writers wait for."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(Partner).where(Partner.id == partner_id).values(id=Partner.id))
    else:
        session.execute(select(Partner.id).where(Partner.id == partner_id).with_for_update(key_share=True))


def open_exposure(session: Session, partner_id: str) -> Decimal:
    """The new products' value of the partner's open deals (the deals table's status: awaiting returns or condition met)."""
    total = session.execute(
        select(func.sum(Deal.new_products_value)).where(Deal.partner_id == partner_id, Deal.status.in_([status.value for status in OPEN_DEAL_STATUSES]))
    ).scalar_one()
    return Decimal(str(total or 0)).quantize(CENTS)


def pickup_expected_units(session: Session, deal_id: str) -> dict[str, int]:
    """Each booked pickup of the deal: its expected units, by pickup id (which are under way is the deal's view to say)."""
    return dict(session.execute(select(Pickup.id, Pickup.expected_units).where(Pickup.deal_id == deal_id)).all())
