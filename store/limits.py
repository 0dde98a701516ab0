"""What the limits on callers are checked against (README "Data we keep, and limits on what callers send"):
the units a deal's pickups are expected to bring."""

from sqlalchemy import select
from sqlmodel import Session

from store.tables import Pickup


def pickup_expected_units(session: Session, deal_id: str) -> dict[str, int]:
    """Each booked pickup of the deal: its expected units, by pickup id (which are under way is the deal's view to say)."""
    return dict(session.execute(select(Pickup.id, Pickup.expected_units).where(Pickup.deal_id == deal_id)).all())
