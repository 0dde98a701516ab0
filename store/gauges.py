"""Business gauges, computed from the store when Prometheus scrapes the API (api/metrics.py).

Each is one query over an index range (migration 0007), never a read of every deal: deals and
incentive money by status, deals at risk, pickups the carrier has gone silent on, failed mail and
the age of the oldest message not yet sent, partners by specialization status.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from sqlalchemy import exists, func, select
from sqlmodel import Session

from domain.models import FINAL_CARRIER_STATUSES, CarrierStatus, DealStatus, IncentiveStatus
from domain.specialization import SpecializationStatus
from store.specialization import SpecializationProjection
from store.tables import Deal, EmailMessage, Partner, Pickup, ShipmentEvent, as_utc

OPEN = (DealStatus.awaiting_returns.value, DealStatus.condition_met.value)
# A pickup is under way until the carrier reports it delivered, returned or cancelled.
UNDER_WAY = ("scheduled", *sorted(status.value for status in CarrierStatus if status not in FINAL_CARRIER_STATUSES))
UNSENT = ("queued", "sending")


@dataclass
class BusinessGauges:
    deals_by_status: dict[str, int] = field(default_factory=dict)
    incentive_amount_by_status: dict[str, Decimal] = field(default_factory=dict)
    deals_at_risk: int = 0
    pickups_silent: int = 0
    emails_failed: int = 0
    emails_unsent: int = 0
    oldest_unsent_email_age_seconds: float = 0.0
    partners_by_status: dict[str, int] = field(default_factory=dict)


def business_gauges(session: Session, at_risk_within: timedelta, pickup_silent_after: timedelta, now: datetime | None = None) -> BusinessGauges:
    now = now or datetime.now(timezone.utc)
    gauges = BusinessGauges()
    # Every status shows, at 0 when no deal has it: a series that vanishes cannot be alerted on.
    gauges.deals_by_status = {status.value: 0 for status in DealStatus}
    for status, count in session.execute(select(Deal.status, func.count()).group_by(Deal.status)):
        gauges.deals_by_status[status] = count
    gauges.incentive_amount_by_status = {status.value: Decimal(0) for status in IncentiveStatus}
    for status, amount in session.execute(select(Deal.incentive_status, func.coalesce(func.sum(Deal.incentive_amount), 0)).group_by(Deal.incentive_status)):
        gauges.incentive_amount_by_status[status] = Decimal(amount)
    # At risk: still short of the condition, with its deadline near (or passed, and not yet decided).
    gauges.deals_at_risk = session.execute(
        select(func.count()).select_from(Deal).where(
            Deal.status == DealStatus.awaiting_returns.value,
            Deal.return_deadline < now + at_risk_within,
            Deal.received_units < Deal.required_units,
        )
    ).scalar_one()
    # Silent: a pickup of an open deal, under way, booked before the cut-off and with no carrier event since.
    cutoff = now - pickup_silent_after
    heard_since = exists().where(ShipmentEvent.tracking_number == Pickup.tracking_number, ShipmentEvent.recorded_at >= cutoff)
    gauges.pickups_silent = session.execute(
        select(func.count()).select_from(Pickup).join(Deal, Deal.id == Pickup.deal_id).where(
            Pickup.status.in_(UNDER_WAY), Pickup.created_at < cutoff, Deal.status.in_(OPEN), ~heard_since
        )
    ).scalar_one()
    gauges.emails_failed = session.execute(select(func.count()).select_from(EmailMessage).where(EmailMessage.state == "failed")).scalar_one()
    unsent, oldest = session.execute(select(func.count(), func.min(EmailMessage.created_at)).where(EmailMessage.state.in_(UNSENT))).one()
    gauges.emails_unsent = unsent
    if oldest is not None:
        oldest = as_utc(oldest)
        gauges.oldest_unsent_email_age_seconds = max(0.0, (now - oldest).total_seconds())
    # A partner without a projection (NULL here) has not been certified yet.
    gauges.partners_by_status = {status.value: 0 for status in SpecializationStatus}
    rows = session.execute(
        select(SpecializationProjection.status, func.count())
        .select_from(Partner)
        .outerjoin(SpecializationProjection, SpecializationProjection.partner_id == Partner.id)
        .group_by(SpecializationProjection.status)
    )
    for status, count in rows:
        status = status or SpecializationStatus.not_certified.value
        gauges.partners_by_status[status] = gauges.partners_by_status.get(status, 0) + count
    return gauges
