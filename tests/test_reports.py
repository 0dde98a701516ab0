"""The impact report from a scripted store, against figures computed by hand."""

from datetime import datetime, timezone
from decimal import Decimal

from domain.catalog import default_catalog
from store.db import session_scope
from store.reports import impact
from store.specialization import TreePlanted
from store.tables import Deal, ReturnedItem, Settlement

NOW = datetime(2026, 11, 24, tzinfo=timezone.utc)


def deal(deal_id: str, partner_id: str) -> Deal:
    return Deal(id=deal_id, partner_id=partner_id, customer_name="C", customer_country="CA", opportunity="refresh", new_products_value=Decimal("1000.00"),
                incentive_rate=Decimal("0.05"), incentive_mode="rebate", incentive_amount=Decimal("50.00"), incentive_status="held", status="closed",
                committed_units=4, required_units=4)


def item(serial: str, deal_id: str, product_id: str, disposition: str) -> ReturnedItem:
    return ReturnedItem(serial=serial, deal_id=deal_id, batch_id="b", product_id=product_id, condition="working", age_years=1, disposition=disposition)


def test_impact_by_hand(database_url):
    with session_scope(database_url) as session:
        session.add_all([deal("D1", "P1"), deal("D2", "P2")])
        session.add_all([
            item("a", "D1", "UCSC-C240-M5SX", "refresh"),   # 24.5 kg
            item("b", "D1", "UCSC-C240-M5SX", "recycle"),   # 24.5 kg
            item("c", "D1", "CP-8845-K9", "refresh"),       # 1.2 kg
            item("d", "D2", "MYSTERY-BOX", "recycle"),      # unknown: 5.0 kg default
            item("e", "D2", "MYSTERY-BOX", "other"),        # unknown: 5.0 kg default
        ])
        session.add_all([
            # money by each deal's one settlement (an upfront deal that kept its discount counts in neither)
            Settlement(deal_id="D1", partner_id="P1", outcome="released", amount=Decimal("700.00")),
            Settlement(deal_id="D2", partner_id="P2", outcome="forfeited", amount=Decimal("125.50")),
            Settlement(deal_id="D3", partner_id="P2", outcome="clawed_back", amount=Decimal("10.25")),
            Settlement(deal_id="D4", partner_id="P2", outcome="applied", amount=Decimal("99.00")),
            Settlement(deal_id="D5", partner_id="P1", outcome="cancelled", amount=Decimal("0.00")),
            TreePlanted(partner_id="P1", person_email="x@p1"), TreePlanted(partner_id="P1", person_email="y@p1"), TreePlanted(partner_id="P2", person_email="z@p2"),
        ])
        session.commit()
        everything = impact(session, default_catalog())
        p1 = impact(session, default_catalog(), "P1")
        p2 = impact(session, default_catalog(), "P2")
    assert everything["units_returned"] == 5 and everything["kg_returned"] == 60.2
    assert (everything["refresh_share"], everything["recycle_share"], everything["other_share"]) == (0.4, 0.4, 0.2)
    assert everything["trees_planted"] == 3
    assert everything["incentives_released"] == "700.00" and everything["incentives_forfeited"] == "135.75"
    assert everything["unknown_products"] == [{"product_id": "MYSTERY-BOX", "units": 2, "assumed_unit_weight_kg": 5.0}]
    assert (p1["units_returned"], p1["kg_returned"], p1["trees_planted"], p1["incentives_forfeited"]) == (3, 50.2, 2, "0.00")
    assert (p2["units_returned"], p2["kg_returned"], p2["incentives_released"], p2["unknown_products"][0]["units"]) == (2, 10.0, "0.00", 2)
