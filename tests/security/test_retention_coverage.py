"""Every column that can hold personal data is purged, or kept on purpose, by name (store/retention.py).

The registry is compared with the tables' own metadata: a text column added to any table without a
classification (erased by the purge, kept with a reason, or not personal) fails here. Then a deal
closed long ago with a person's traces everywhere the API lets them in (pickup address and contact, the
carrier's error quoting the address, the label link, receiving and sanitizing staff, notes, the
certificate, a trainee) is purged, and no column of any table may still hold a trace of that person."""

import importlib
import pkgutil
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy import select, update
from sqlmodel import SQLModel

import store
from domain.catalog import default_catalog
from domain.custody import DispositionRequest, SanitizationRequest
from domain.deal_progress import deal_view, initial_progress
from domain.models import DealView, Dispositions, Incentive, PickupRequest, ReceiptItem
from service.deals import deal_terms
from store import custody, retention
from store import deals as store_deals
from store import settlement, specialization
from store.db import session_scope
from store.tables import CarrierPickup, Deal
from tests.conftest import add_partner, booking, make_settings

NOW = datetime.now(timezone.utc).replace(microsecond=0)
ROUTER = "ISR4331/K9"  # data-bearing: it needs a sanitization record


def text_columns() -> set[str]:
    """`table.column` of every String, Text or JSON column of every table the store defines."""
    for module in pkgutil.iter_modules(store.__path__):
        importlib.import_module(f"store.{module.name}")  # every module's tables in the metadata
    found = set()
    for table in SQLModel.metadata.sorted_tables:
        for column in table.columns:
            kind = column.type.impl if isinstance(column.type, sa.types.TypeDecorator) else column.type
            if isinstance(kind, (sa.String, sa.Text, sa.JSON)):
                found.add(f"{table.name}.{column.name}")
    return found


def test_every_text_column_of_every_table_is_classified():
    columns, registry = text_columns(), set(retention.COLUMNS)
    missing, stale = sorted(columns - registry), sorted(registry - columns)
    assert not missing, f"columns that may hold personal data with no rule: {missing}. Classify each in store/retention.py COLUMNS (erased by the purge, kept with a reason, or not personal)"
    assert not stale, f"store/retention.py classifies columns that no longer exist: {stale}"
    assert all(c.kind in (retention.ERASED_KIND, retention.KEPT_KIND, retention.NOT_PERSONAL_KIND) and c.why for c in retention.COLUMNS.values())


# Everything a person left, marked by who they are: the deal closed long ago and its trainee ("Oldperson",
# a phone ending 0111), the deal closed lately ("Newperson", 0222), which keeps its data.
OLD, NEW = ("Oldperson", "0111"), ("Newperson", "0222")


def closed_view(deal_id: str, units: int) -> DealView:
    return DealView(id=deal_id, partner_id="P1", status="closed", booked_at=NOW, return_deadline=NOW + timedelta(days=365), committed_units=units,
                    required_units=units, received_units=units, incentive=Incentive(mode="rebate", rate=Decimal("0.05"), amount=Decimal("5000.00"), status="released"),
                    dispositions=Dispositions(refresh=units))


def a_deal_with_a_persons_traces(settings, deal_id: str, closed_at: datetime, who: tuple[str, str]) -> None:
    name, phone = who
    serials = [f"{deal_id}-A", f"{deal_id}-B"]
    request = booking(2, serials=serials, product_id=ROUTER)
    terms = deal_terms(deal_id, request, settings, booked_at=NOW)
    pickup = PickupRequest(address=f"1 {name} Lane\nToronto", contact_name=f"Jane {name}", contact_phone=f"+1 416 555 {phone}", ready_on=NOW.date(), expected_units=2)
    url = settings.effective_database_url
    with session_scope(url) as session:
        store_deals.stage_booking(session, deal_id, request, terms, deal_view(terms, initial_progress(terms, NOW)), actor="partner:P1")
        store_deals.save_pickup(session, f"{deal_id}-p1", deal_id, "EasyPost/UPS", f"TRK{deal_id}", pickup)
        session.add(CarrierPickup(pickup_id=f"{deal_id}-p1", deal_id=deal_id, provider="easypost", state="booked", parcel_kind="parcel", weight_kg=9.0,
                                  window_start="2026-01-05", window_end="2026-01-07", last_error=f"address 1 {name} Lane: suite missing (retried)",
                                  label_url=f"https://easypost-files.example/labels/{name.lower()}-{deal_id}.pdf", tracking_code=f"TRK{deal_id}"))
        session.commit()
        items = [ReceiptItem(product_id=ROUTER, serial_number=s, condition="working", age_years=2) for s in serials]
        context = {"actor": "ops:dock", "facility": "Toronto", "operator": f"Rita {name}", "tracking_number": f"TRK{deal_id}", "pickup_id": f"{deal_id}-p1"}
        settlement.count_receipt(session, deal_id, f"{deal_id}-b1", items, 5, default_catalog(), received_at=NOW, context=context)
        wiped = SanitizationRequest(serial_numbers=serials[:1], method="purge", technique="crypto erase", tool="t", tool_version="1", operator=f"Omar {name}",
                                    facility="Toronto", at=NOW, verification="passed", verified_by=f"Vera {name}", note=f"Omar {name} wiped it twice")
        custody.record_sanitization(session, deal_id, wiped, "ops:dock", f"{deal_id}-s1")
        store_deals.close_deal(session, closed_view(deal_id, 2))  # provisional: B awaits its sanitization
        later = wiped.model_copy(update={"serial_numbers": serials[1:], "note": None})
        custody.record_sanitization(session, deal_id, later, "ops:dock", f"{deal_id}-s2")
        assert custody.certify_if_complete(session, deal_id, default_catalog())  # the final one supersedes it
        custody.record_dispositions(session, deal_id, DispositionRequest(serial_numbers=serials, disposition="refresh", note=f"checked by Rita {name}"),
                                    "ops:dock", f"{deal_id}-d1", default_catalog())
        session.execute(update(Deal).where(Deal.id == deal_id).values(status="closed", updated_at=closed_at))
        specialization.record_training(session, "P1", f"training-{deal_id}", f"tom.{name.lower()}@p1.example", f"Tom {name}", 4)
        for table, column in ((specialization.Trainee, "first_trained_at"), (specialization.TrainingSession, "recorded_at")):
            session.execute(update(table).where(table.person_email == f"tom.{name.lower()}@p1.example").values({column: closed_at}))
        session.commit()


def traces(url: str, who: tuple[str, str]) -> dict[str, int]:
    """`table.column` -> how many of its values hold a trace of the person, over every text column."""
    found = {}
    with session_scope(url) as session:
        for table in SQLModel.metadata.sorted_tables:
            for column in table.columns:
                if f"{table.name}.{column.name}" not in retention.COLUMNS:
                    continue
                values = session.execute(select(column)).scalars().all()
                hits = sum(1 for value in values if value is not None and any(mark.lower() in str(value).lower() for mark in who))
                if hits:
                    found[f"{table.name}.{column.name}"] = hits
    return found


def test_after_the_purge_no_column_holds_a_trace_of_the_person(database_url, tmp_path):
    settings = make_settings(tmp_path, database_url=database_url)
    add_partner(settings)
    a_deal_with_a_persons_traces(settings, "DOLD", NOW - timedelta(days=400), OLD)
    a_deal_with_a_persons_traces(settings, "DNEW", NOW - timedelta(days=30), NEW)
    before = traces(database_url, OLD)
    # What the person left before the purge: in every column the purge covers, and nowhere it keeps.
    assert set(before) == {name for name, c in retention.COLUMNS.items() if c.kind == retention.ERASED_KIND}, before
    with session_scope(database_url) as session:
        counted = retention.purge_personal_data(session, NOW - timedelta(days=365), dry_run=True)
    assert counted == retention.PurgeCounts(pickups=1, trainees=1, carrier_pickups=1, sanitizations=2, receipts=1, custody_events=6, certificates=2)
    assert traces(database_url, OLD) == before  # a dry run erases nothing
    with session_scope(database_url) as session:
        assert retention.purge_personal_data(session, NOW - timedelta(days=365)) == counted
    assert traces(database_url, OLD) == {}, "the purge left a trace of the person"
    assert set(traces(database_url, NEW)) == set(before)  # the deal closed lately keeps everything
    with session_scope(database_url) as session:  # once: a second run finds nothing
        assert retention.purge_personal_data(session, NOW - timedelta(days=365)) == retention.PurgeCounts(pickups=0, trainees=0)
        # The certificate still verifies with the hash it was issued with; the label is gone with the address.
        final = session.get(custody.Certificate, "DOLD")
        assert custody.verify(session, final.certificate_id, final.content_hash)["valid"] is True
        assert session.get(CarrierPickup, "DOLD-p1").label_url is None and session.get(CarrierPickup, "DNEW-p1").label_url
    text = custody.certificate_text(database_url, final.certificate_id, "DOLD")
    records = [item["sanitization_record"] for item in text.items()]
    assert [(r["operator"], r["verified_by"], r["tool"]) for r in records] == [("(erased)", "(erased)", "t")] * 2  # the record stands, nameless
