"""The business gauges (store/gauges.py, on the API's /metrics) on SQLite and PostgreSQL: every case
at the edge of each definition, seeded straight into the store, counted as an operator means it."""

import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from prometheus_client import CollectorRegistry, generate_latest

from store.db import session_scope
from store.gauges import business_gauges
from store.specialization import SpecializationProjection
from store.tables import Deal, EmailMessage, Partner, Pickup, ShipmentEvent

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)


def deal(id: str, status: str, incentive_status: str, amount: str, deadline: datetime, received: int = 0) -> Deal:
    return Deal(
        id=id, partner_id="P-CERT", customer_name="c", customer_country="CA", opportunity="refresh", new_products_value=Decimal("100000"),
        incentive_rate=Decimal("0.05"), incentive_mode="rebate", incentive_amount=Decimal(amount), incentive_status=incentive_status,
        status=status, committed_units=10, required_units=8, received_units=received, booked_at=NOW - 300 * DAY, return_deadline=deadline,
    )


def pickup(id: str, deal_id: str, status: str, age: timedelta) -> Pickup:
    return Pickup(id=id, deal_id=deal_id, carrier="sim", tracking_number=f"T-{id}", status=status, address="a", contact_name="c", contact_phone="p",
                  ready_on="2026-11-01", expected_units=1, created_at=NOW - age)


def seed(url: str) -> None:
    with session_scope(url) as session:
        for partner in ("P-CERT", "P-LAPSED", "P-NEW"):
            session.add(Partner(id=partner, name=partner, contact_email=f"{partner.lower()}@p.example", country="CA"))
        session.add(SpecializationProjection(partner_id="P-CERT", status="certified", view_json="{}"))
        session.add(SpecializationProjection(partner_id="P-LAPSED", status="lapsed", view_json="{}"))  # P-NEW has none: not certified
        session.add_all([
            deal("D-RISK", "awaiting_returns", "held", "100.00", NOW + 10 * DAY, received=2),  # short, deadline near: at risk
            deal("D-LATER", "awaiting_returns", "held", "200.00", NOW + 100 * DAY),  # short, deadline far: not yet
            deal("D-PASSED", "awaiting_returns", "held", "50.00", NOW - DAY),  # deadline passed, not yet decided: at risk
            deal("D-MET", "condition_met", "released", "300.00", NOW + 5 * DAY, received=8),
            deal("D-CLOSED", "closed", "released", "400.00", NOW - 10 * DAY, received=10),
            deal("D-EXPIRED", "expired", "forfeited", "500.00", NOW - 20 * DAY, received=1),
            deal("D-CANCELLED", "cancelled", "cancelled", "0.00", NOW + 30 * DAY),
        ])
        session.add_all([
            pickup("K-SILENT", "D-RISK", "scheduled", 10 * DAY),  # booked ten days ago, never a carrier event
            pickup("K-HEARD", "D-RISK", "in_transit", 10 * DAY),  # an event yesterday
            pickup("K-FAILED", "D-LATER", "failure", 10 * DAY),  # its last event ten days old: silent too
            pickup("K-DELIVERED", "D-LATER", "delivered", 10 * DAY),  # done: never silent
            pickup("K-CLOSED-DEAL", "D-CLOSED", "scheduled", 10 * DAY),  # its deal closed: not ours to chase
            pickup("K-NEW", "D-LATER", "scheduled", DAY),  # booked yesterday: not yet silent
        ])
        session.add(ShipmentEvent(event_id="E1", tracking_number="T-K-HEARD", status="in_transit", occurred_at=NOW - DAY, applied=True, recorded_at=NOW - DAY))
        session.add(ShipmentEvent(event_id="E2", tracking_number="T-K-FAILED", status="failure", occurred_at=NOW - 10 * DAY, applied=True, recorded_at=NOW - 10 * DAY))
        for key, state, age in (("m1", "failed", DAY), ("m2", "failed", DAY), ("m3", "sent", DAY), ("m4", "queued", timedelta(hours=2)), ("m5", "sending", timedelta(minutes=30))):
            session.add(EmailMessage(key=key, deal_id="D-RISK", to="p@p.example", subject="s", body="b", state=state, created_at=NOW - age))
        session.commit()


def test_the_business_gauges_count_what_an_operator_means(database_url):
    seed(database_url)
    with session_scope(database_url) as session:
        gauges = business_gauges(session, at_risk_within=30 * DAY, pickup_silent_after=7 * DAY, now=NOW)
    assert gauges.deals_by_status == {"awaiting_returns": 3, "condition_met": 1, "closed": 1, "expired": 1, "cancelled": 1}
    assert gauges.incentive_amount_by_status == {
        "held": Decimal("350.00"), "released": Decimal("700.00"), "forfeited": Decimal("500.00"), "cancelled": Decimal("0.00"),
        "applied": Decimal("0"), "clawed_back": Decimal("0"),
    }
    assert gauges.deals_at_risk == 2  # D-RISK and D-PASSED
    assert gauges.pickups_silent == 2  # K-SILENT and K-FAILED
    assert (gauges.emails_failed, gauges.emails_unsent) == (2, 2)
    assert gauges.oldest_unsent_email_age_seconds == 2 * 3600
    assert gauges.partners_by_status == {"certified": 1, "lapsed": 1, "not_certified": 1}
    # A wider window takes in D-LATER too.
    with session_scope(database_url) as session:
        assert business_gauges(session, at_risk_within=200 * DAY, pickup_silent_after=7 * DAY, now=NOW).deals_at_risk == 3


def test_the_gauges_are_computed_at_most_once_per_cache_period(tmp_path):
    from api.metrics import BusinessGaugeCollector
    from settings import Settings

    settings = Settings(data_dir=tmp_path, gauges_cache="1s")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BusinessGaugeCollector(settings))

    def at_risk() -> float:
        line = next(line for line in generate_latest(registry).decode().splitlines() if line.startswith("takeback_deals_at_risk "))
        return float(line.split()[1])

    assert at_risk() == 0
    with session_scope(settings.effective_database_url) as session:
        session.add(deal("D-NEW-RISK", "awaiting_returns", "held", "1.00", datetime.now(timezone.utc) + DAY))
        session.commit()
    assert at_risk() == 0  # a scrape within the period: the same figures, no query
    time.sleep(1.1)
    assert at_risk() == 1
