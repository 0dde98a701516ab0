"""Business rules of the takeback program (see shared/domain.md)."""

import math
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

from domain.models import (
    BOOKING_FAILED,
    CARRIER_PROGRESS,
    ESCALATED_CARRIER_STATUSES,
    FINAL_CARRIER_STATUSES,
    CarrierStatus,
    Condition,
    DealView,
    Disposition,
    PickupRequest,
    SanitizationMethod,
)

MAX_INCENTIVE_RATE = Decimal("0.07")
CENTS = Decimal("0.01")


class RuleViolation(ValueError):
    """Input that breaks a business rule; never worth retrying."""


def validate_incentive_rate(rate: Decimal) -> Decimal:
    if not (Decimal(0) < rate <= MAX_INCENTIVE_RATE):
        raise RuleViolation(f"incentive_rate must be in (0, {MAX_INCENTIVE_RATE}], got {rate}")
    return rate


def incentive_amount(new_products_value: Decimal, rate: Decimal) -> Decimal:
    """Money in decimal, rounded half-up to cents."""
    validate_incentive_rate(rate)
    if new_products_value < 0:
        raise RuleViolation("new_products_value must not be negative")
    return (new_products_value * rate).quantize(CENTS, rounding=ROUND_HALF_UP)


def required_units(committed_units: int, threshold: float) -> int:
    """ceil(threshold x committed), computed in decimal so 0.8 x 10 is 8, not 9."""
    if committed_units <= 0:
        raise RuleViolation("a deal commits at least one unit")
    if not (0 < threshold <= 1):
        raise RuleViolation(f"return threshold must be in (0, 1], got {threshold}")
    return math.ceil(Decimal(str(threshold)) * committed_units)


def disposition_for(condition: Condition, age_years: float, refresh_max_age_years: float) -> Disposition:
    """Working gear young enough is remanufactured (Refresh); everything else is recycled."""
    if condition == Condition.working and age_years <= refresh_max_age_years:
        return Disposition.refresh
    return Disposition.recycle


def sanitization_for(disposition: Disposition) -> SanitizationMethod:
    """NIST SP 800-88: resold media are purged (reusable), recycled media are destroyed."""
    return SanitizationMethod.purge if disposition == Disposition.refresh else SanitizationMethod.destroy


def moves_forward(current: str, new: CarrierStatus) -> bool:
    """Never move a shipment backwards; a problem status may follow one of the same rank."""
    if current in FINAL_CARRIER_STATUSES:
        return False
    if current == "scheduled":
        return True
    current_rank = CARRIER_PROGRESS[CarrierStatus(current)]
    new_rank = CARRIER_PROGRESS[new]
    return new_rank > current_rank or (new_rank == current_rank and new in ESCALATED_CARRIER_STATUSES and new.value != current)


def statuses_moving_forward_to(new: CarrierStatus) -> list[str]:
    """The pickup statuses from which `new` is a step forward: the guard of an atomic status update."""
    return [status for status in ["scheduled", *(s.value for s in CarrierStatus)] if moves_forward(status, new)]


# --- limits on what a caller may ask of a deal -------------------------------------------------

# A date is "today" somewhere on Earth from UTC-12 to UTC+14: a partner's own today is never refused.
EARLIEST_UTC_OFFSET = timedelta(hours=-12)
LATEST_UTC_OFFSET = timedelta(hours=14)


def pickup_dates(now: datetime, deadline: datetime) -> tuple[date, date]:
    """The first and last day a pickup may be ready on: today (anywhere) to the deal's deadline (anywhere)."""
    return (now.astimezone(timezone.utc) + EARLIEST_UTC_OFFSET).date(), (deadline.astimezone(timezone.utc) + LATEST_UTC_OFFSET).date()


def pickup_under_way(status: str) -> bool:
    """An open pickup: not delivered, returned or cancelled, and not failed (the carrier's `failure`, or a
    booking the carrier refused for good). One still being booked is under way."""
    return status not in FINAL_CARRIER_STATUSES and status not in (CarrierStatus.failure, BOOKING_FAILED)


def open_pickups(view: DealView) -> int:
    """Pickups under way (`pickup_under_way`)."""
    return sum(1 for pickup in view.pickups if pickup_under_way(pickup.status))


def units_under_way(view: DealView, expected_units: dict[str, int]) -> int:
    """The units the deal's pickups under way are expected to bring (`expected_units` by pickup id, as
    the store holds them: a pickup the carrier has not booked yet has none there)."""
    return sum(expected_units.get(pickup.id, 0) for pickup in view.pickups if pickup_under_way(pickup.status))


def validate_pickup(
    request: PickupRequest, view: DealView, now: datetime, max_open_pickups: int, max_labels: int, expected_units: dict[str, int] | None = None,
) -> None:
    """A pickup the deal can use: ready between today and its deadline, no more than `max_open_pickups`
    under way at once, no more than `max_labels` over the deal's life (each buys a carrier label, a failed
    booking's too), and no more units than it still awaits (committed - received) beyond those its pickups
    under way are expected to bring (`expected_units` by pickup id)."""
    first, last = pickup_dates(now, view.return_deadline)
    if not first <= request.ready_on <= last:
        raise RuleViolation(f"ready_on {request.ready_on.isoformat()} is outside {first.isoformat()} (today) to {last.isoformat()} (the deal's deadline)")
    if open_pickups(view) >= max_open_pickups:
        raise RuleViolation(f"deal {view.id} has {max_open_pickups} pickups under way already, the most it may have at once")
    if len(view.pickups) >= max_labels:
        raise RuleViolation(f"deal {view.id} has had {len(view.pickups)} pickups, the most one deal may have over its life (each buys a carrier label)")
    outstanding = max(view.committed_units - view.received_units, 0)
    under_way = units_under_way(view, expected_units or {})
    if request.expected_units > outstanding - under_way:
        raise RuleViolation(
            f"expected_units {request.expected_units} is more than the {max(outstanding - under_way, 0)} units deal {view.id} still awaits "
            f"beyond its pickups under way ({outstanding} outstanding, {under_way} expected by those pickups)"
        )


def needs_ops_approval(new_products_value: Decimal, partner_limit: Decimal) -> bool:
    """A partner books alone up to `partner_limit` of new products; above it only ops book the deal
    (7% of any value a partner declares is money the programme would owe)."""
    return new_products_value > partner_limit


def exceeds_open_exposure(open_deals_value: Decimal, new_products_value: Decimal, limit: Decimal) -> bool:
    """A partner's open deals' new products' value with this booking's above `limit`: only ops book it, as above
    the single-booking limit (bookings just under that one add up; upfront, each is a discount granted at once)."""
    return open_deals_value + new_products_value > limit


def validate_serial_total(listed: int, limit: int) -> None:
    if listed > limit:
        raise RuleViolation(f"a booking lists at most {limit} serial numbers in total, got {listed}")
