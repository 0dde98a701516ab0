"""Environmental accounting (issue 14) against figures computed by hand from domain/catalog.csv:
kg by WEEE category, units counted as refurbished or recycled only once their sanitization allows it,
CO2e avoided, the 99.3% target, kg by material shipped downstream (a partner's share by weight), by
period (year, quarter, from/to), and as CSV."""

from datetime import datetime, timezone

from domain.catalog import default_catalog
from domain.custody import DispositionRequest, DownstreamShipmentRequest, SanitizationRequest
from domain.deal_progress import deal_view, initial_progress
from service.deals import deal_terms
from store import custody
from store import deals as store
from store.db import session_scope
from store.reports import accounting, impact
from store.tables import ReturnedItem
from tests.api_helpers import api_client, key
from tests.conftest import add_partner, booking, make_settings


def at(month: int, day: int, hour: int = 12) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=timezone.utc)


# serial: (deal, product, graded disposition, received)
UNITS = {
    "R1": ("D1", "C9300-48P", "refresh", at(2, 10)),  # 7.9 kg, WEEE 6: purge passed -> refurbished, 197.5 kg CO2e
    "R2": ("D1", "UCSC-C240-M5SX", "recycle", at(2, 10)),  # 24.5 kg, WEEE 4: destroy passed -> recycled, 21.315
    "R3": ("D1", "ISR4331/K9", "refresh", at(2, 10)),  # 6.1 kg, WEEE 6: no sanitization -> awaiting it
    "R4": ("D1", "SFP-10G-SR", "recycle", at(2, 10)),  # 0.02 kg, WEEE 6: carries no data -> recycled, 0.017
    "R5": ("D1", "C9300-48P", "refresh", at(5, 5)),  # clear failed verification -> awaiting
    "R6": ("D1", "ISR4331/K9", "refresh", at(5, 5)),  # destroyed, dispositioned recycle -> recycled, 5.307
    "R7": ("D2", "UCSC-C240-M5SX", "refresh", at(3, 31, 23)),  # P2, purge passed -> refurbished, 612.5
    "R8": ("D2", "WS-C3850-48P", "recycle", at(3, 1)),  # P2, 8.4 kg, WEEE 6: destroy passed -> recycled, 7.308
}


def populate(url: str, settings) -> None:
    add_partner(settings, "P1")
    add_partner(settings, "P2", email="p2@example.com")
    with session_scope(url) as session:
        for deal_id, partner_id in (("D1", "P1"), ("D2", "P2")):
            request = booking(8, partner_id=partner_id)
            terms = deal_terms(deal_id, request, settings, booked_at=at(1, 5))
            store.stage_booking(session, deal_id, request, terms, deal_view(terms, initial_progress(terms, at(1, 5))))
        for serial, (deal_id, product_id, disposition, received_at) in UNITS.items():
            session.add(ReturnedItem(serial=serial, deal_id=deal_id, batch_id=f"{deal_id}-b", product_id=product_id, condition="working", age_years=2,
                                     disposition=disposition, received_at=received_at))
        session.commit()

        def sanitize(deal_id, serials, method, verification="passed"):
            custody.record_sanitization(session, deal_id, SanitizationRequest(
                serial_numbers=serials, method=method, technique="t", tool="tool", tool_version="1", operator="o", facility="f",
                at=at(6, 1), verification=verification, verified_by="v"), "ops:test", f"{deal_id}-{method}-{verification}-{serials[0]}")

        sanitize("D1", ["R1"], "purge")
        sanitize("D1", ["R2", "R6"], "destroy")
        sanitize("D1", ["R5"], "clear", "failed")
        sanitize("D2", ["R7"], "purge")
        sanitize("D2", ["R8"], "destroy")
        custody.record_dispositions(session, "D1", DispositionRequest(serial_numbers=["R6"], disposition="recycle"), "ops:test", "disp-1", default_catalog())
        custody.record_downstream_shipment(session, "DS1", DownstreamShipmentRequest(
            recycler={"name": "Metro Metals", "certification_id": "R2v3-1"}, shipped_at=at(2, 20), serial_numbers=["R2", "R4", "R8"],
            materials=[{"material": "ferrous", "kg": 20.0}, {"material": "circuit_boards", "kg": 4.52}]), "ops:test", default_catalog())
        custody.record_downstream_shipment(session, "DS2", DownstreamShipmentRequest(
            recycler={"name": "Poly Plastics", "certification_id": "eS-9"}, shipped_at=at(6, 1), lot="LOT-PLASTICS",
            materials=[{"material": "plastics", "kg": 10.0}]), "ops:test", default_catalog())


def report(url: str, partner_id=None, start=None, end=None) -> dict:
    with session_scope(url) as session:
        return {**impact(session, default_catalog(), partner_id, start=start, end=end), **accounting(session, default_catalog(), partner_id, start=start, end=end)}


def test_impact_by_weee_category_co2e_and_target_by_period_against_hand_computed_figures(database_url, tmp_path):
    settings = make_settings(tmp_path, database_url=database_url)
    populate(database_url, settings)

    year = report(database_url, start=at(1, 1, 0), end=datetime(2027, 1, 1, tzinfo=timezone.utc))
    assert (year["units_returned"], year["kg_returned"]) == (8, 85.42)  # 2 x 24.5 + 2 x 7.9 + 2 x 6.1 + 0.02 + 8.4
    assert year["kg_by_weee_category"] == [
        {"category": 4, "name": "large equipment", "units": 2, "kg": 49.0},
        {"category": 6, "name": "small IT and telecommunication equipment", "units": 6, "kg": 36.42},
    ]
    assert year["units_counted"] == {"refurbished": 2, "recycled": 4, "awaiting_sanitization": 2, "other": 0}
    # reuse: 197.5 (R1) + 612.5 (R7); recycling: 21.315 (R2) + 0.017 (R4) + 5.307 (R6) + 7.308 (R8)
    assert year["co2e_avoided_kg"] == {"reuse": 810.0, "recycling": 33.947, "total": 843.947}
    assert year["reuse_or_recycle_target"] == {"target": 0.993, "share": 0.75, "met": False}
    assert year["kg_by_material"] == {"circuit_boards": 4.52, "ferrous": 20.0, "plastics": 10.0}
    assert report(database_url) == {**year, "kg_by_material": year["kg_by_material"]}  # everything happened in 2026

    q1 = report(database_url, start=at(1, 1, 0), end=at(4, 1, 0))  # R7 came in at 23:00 on 31 March: Q1
    assert q1["units_returned"] == 6 and q1["units_counted"] == {"refurbished": 2, "recycled": 3, "awaiting_sanitization": 1, "other": 0}
    assert q1["kg_by_weee_category"] == [
        {"category": 4, "name": "large equipment", "units": 2, "kg": 49.0},
        {"category": 6, "name": "small IT and telecommunication equipment", "units": 4, "kg": 22.42},
    ]
    assert q1["co2e_avoided_kg"] == {"reuse": 810.0, "recycling": 28.64, "total": 838.64}
    assert q1["reuse_or_recycle_target"] == {"target": 0.993, "share": 0.8333, "met": False}
    assert q1["kg_by_material"] == {"circuit_boards": 4.52, "ferrous": 20.0}

    # P2 alone in Q1: everything reused or recycled, the target met; its share of DS1 by weight, 8.4 of 32.92 kg.
    p2 = report(database_url, "P2", start=at(1, 1, 0), end=at(4, 1, 0))
    assert (p2["units_returned"], p2["kg_returned"]) == (2, 32.9)
    assert p2["co2e_avoided_kg"] == {"reuse": 612.5, "recycling": 7.308, "total": 619.808}
    assert p2["reuse_or_recycle_target"] == {"target": 0.993, "share": 1.0, "met": True}
    assert p2["kg_by_material"] == {"circuit_boards": 1.153, "ferrous": 5.103}  # 4.52 x 8.4 / 32.92, 20 x 8.4 / 32.92
    p1 = report(database_url, "P1")
    assert p1["kg_by_material"] == {"circuit_boards": 3.367, "ferrous": 14.897}  # the lot without serials is nobody's share

    may = report(database_url, "P1", start=at(5, 1, 0), end=at(6, 1, 0))
    assert may["units_counted"] == {"refurbished": 0, "recycled": 1, "awaiting_sanitization": 1, "other": 0}
    assert may["co2e_avoided_kg"] == {"reuse": 0.0, "recycling": 5.307, "total": 5.307}
    assert may["reuse_or_recycle_target"]["share"] == 0.5 and may["kg_by_material"] == {}
    empty = report(database_url, start=at(7, 1, 0), end=at(8, 1, 0))
    assert empty["units_returned"] == 0 and empty["reuse_or_recycle_target"] == {"target": 0.993, "share": None, "met": None}


async def test_the_impact_report_over_http_by_quarter_year_and_dates_and_as_csv(tmp_path):
    settings = make_settings(tmp_path)
    url = settings.effective_database_url
    async with api_client(settings) as http:
        populate(url, settings)
        ops, partner = key(settings), key(settings, "partner", "P2")
        q1 = (await http.get("/v1/reports/impact", params={"year": 2026, "quarter": 1}, headers=ops)).json()
        assert q1["units_returned"] == 6 and q1["co2e_avoided_kg"]["total"] == 838.64 and q1["period"] == {"from": "2026-01-01T00:00:00+00:00", "to": "2026-04-01T00:00:00+00:00"}
        dates = (await http.get("/v1/reports/impact", params={"from": "2026-01-01", "to": "2026-03-31"}, headers=ops)).json()
        assert {k: v for k, v in dates.items() if k != "period"} == {k: v for k, v in q1.items() if k != "period"}  # `to` is a whole day
        own = (await http.get("/v1/reports/impact", params={"year": 2026}, headers=partner)).json()
        assert own["partner_id"] == "P2" and own["units_returned"] == 2
        assert (await http.get("/v1/reports/impact", params={"quarter": 2}, headers=ops)).status_code == 422  # a quarter of which year?
        csv = await http.get("/v1/reports/impact", params={"year": 2026, "quarter": 1, "format": "csv"}, headers=ops)
        assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
        rows = csv.text.splitlines()
        assert rows[0] == "section,key,value"
        for row in ("weee_category_kg,4 large equipment,49.0", "weee_category_kg,6 small IT and telecommunication equipment,22.42",
                    "co2e_avoided_kg,total,838.64", "reuse_or_recycle_target,met,false", "material_kg,ferrous,20.0", "units_counted,awaiting_sanitization,1"):
            assert row in rows, row
