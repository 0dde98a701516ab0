"""Issue 11, Minor: personal data is kept for a configured time, then anonymised.

Pickup addresses and contacts go once their deal has been closed longer than
TAKEBACK_PERSONAL_DATA_RETENTION; trainees' e-mails and names once their last training is that old,
or their partner is gone. Counts, trees, tracking numbers and money stay.
"""

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update

import cli
from domain.deal_progress import deal_view, initial_progress
from domain.models import PickupRequest
from service.deals import deal_terms
from store import deals as store
from store import retention
from store import specialization
from store.db import session_scope
from store.tables import Deal, Partner, Pickup
from tests.conftest import add_partner, booking, make_settings

NOW = datetime.now(timezone.utc)
LONG_AGO = NOW - timedelta(days=400)
LATELY = NOW - timedelta(days=30)


def deal_with_pickup(settings, deal_id: str, status: str, changed_at: datetime) -> None:
    """A deal in `status` whose row last changed at `changed_at` (its closing, for a closed one), with one pickup."""
    request = booking(10)
    terms = deal_terms(deal_id, request, settings, booked_at=changed_at - timedelta(days=365))
    pickup = PickupRequest(address=f"{deal_id} Main St\nToronto", contact_name="Sam Doe", contact_phone="+1 416 555 0100", ready_on="2025-01-10", expected_units=10)
    with session_scope(settings.effective_database_url) as session:
        store.stage_booking(session, deal_id, request, terms, deal_view(terms, initial_progress(terms, terms.booked_at)))
        store.save_pickup(session, f"{deal_id}-p1", deal_id, "Sim", f"SIM{deal_id}", pickup)
        session.execute(update(Deal).where(Deal.id == deal_id).values(status=status, updated_at=changed_at))
        session.commit()


def trainee(settings, partner_id: str, email: str, trained_at: datetime) -> None:
    from store.specialization import Trainee, TrainingSession, TreePlanted

    with session_scope(settings.effective_database_url) as session:
        specialization.record_training(session, partner_id, f"req-{email}", email, email.split("@")[0].title(), 4)
        for table, column in ((Trainee, Trainee.first_trained_at), (TrainingSession, TrainingSession.recorded_at), (TreePlanted, TreePlanted.planted_at)):
            session.execute(update(table).where(table.person_email == email).values({column.key: trained_at}))
        session.commit()


def personal_data(settings) -> dict:
    from store.specialization import Trainee, TrainingSession, TreePlanted

    with session_scope(settings.effective_database_url) as session:
        return {
            "pickups": {p.deal_id: (p.address, p.contact_name, p.contact_phone, p.tracking_number, p.expected_units) for p in session.execute(select(Pickup)).scalars()},
            "trainees": {(t.partner_id, t.person_name): t.person_email for t in session.execute(select(Trainee)).scalars()},
            "sessions": sorted(s.person_email for s in session.execute(select(TrainingSession)).scalars()),
            "trees": sorted(t.person_email for t in session.execute(select(TreePlanted)).scalars()),
        }


def populate(settings) -> None:
    add_partner(settings, "P1")
    deal_with_pickup(settings, "DOLDCLOSED", "closed", LONG_AGO)
    deal_with_pickup(settings, "DOLDCANCEL", "cancelled", LONG_AGO)
    deal_with_pickup(settings, "DRECENT", "expired", LATELY)  # closed a month ago: kept
    deal_with_pickup(settings, "DOPEN", "awaiting_returns", LONG_AGO)  # open, however old: kept
    trainee(settings, "P1", "old@p1.example", LONG_AGO)
    trainee(settings, "P1", "recent@p1.example", LATELY)
    add_partner(settings, "GONE")
    trainee(settings, "GONE", "left@gone.example", LATELY)
    with session_scope(settings.effective_database_url) as session:  # a partner no longer registered
        session.delete(session.get(Partner, "GONE"))
        session.commit()


def test_personal_data_is_anonymised_after_the_retention(database_url, tmp_path):
    settings = make_settings(tmp_path, database_url=database_url)
    populate(settings)
    before = NOW - timedelta(days=365)
    with session_scope(database_url) as session:
        assert retention.purge_personal_data(session, before, dry_run=True) == retention.PurgeCounts(pickups=2, trainees=2)
    assert personal_data(settings)["pickups"]["DOLDCLOSED"][1] == "Sam Doe"  # a dry run erases nothing
    with session_scope(database_url) as session:
        assert retention.purge_personal_data(session, before) == retention.PurgeCounts(pickups=2, trainees=2)
    data = personal_data(settings)
    assert_purged_people(data)
    with session_scope(database_url) as session:  # once: a second run finds nothing
        assert retention.purge_personal_data(session, before) == retention.PurgeCounts(pickups=0, trainees=0)
    assert personal_data(settings) == data


def assert_purged_people(data: dict) -> None:
    erased = ("(erased)", "(erased)", "(erased)")
    assert data["pickups"]["DOLDCLOSED"][:3] == erased and data["pickups"]["DOLDCANCEL"][:3] == erased
    assert data["pickups"]["DOLDCLOSED"][3:] == ("SIMDOLDCLOSED", 10)  # tracking and units stay
    assert data["pickups"]["DRECENT"][:3] == ("DRECENT Main St\nToronto", "Sam Doe", "+1 416 555 0100")  # closed lately
    assert data["pickups"]["DOPEN"][1] == "Sam Doe"  # open
    assert data["trainees"][("P1", "Recent")] == "recent@p1.example"
    erased_people = {partner: email for (partner, name), email in data["trainees"].items() if name == "(erased)"}
    assert set(erased_people) == {"P1", "GONE"} and all(email.endswith("@erased.invalid") for email in erased_people.values())
    assert len(data["trees"]) == len(data["sessions"]) == 3  # trees and hours still add up, linked to the same rows
    assert sorted(e for e in data["trees"] if e.endswith("@erased.invalid")) == sorted(erased_people.values())
    assert sorted(e for e in data["sessions"] if e.endswith("@erased.invalid")) == sorted(erased_people.values())


def test_takeback_purge_personal_data_uses_the_configured_retention(tmp_path, monkeypatch, capsys):
    settings = make_settings(tmp_path)
    populate(settings)
    monkeypatch.setenv("TAKEBACK_PERSONAL_DATA_RETENTION", "3650d")  # ten years: nothing is that old
    assert cli.main(["purge-personal-data", "--data-dir", str(tmp_path)]) == 0
    assert "0 pickup(s)" in capsys.readouterr().out and personal_data(settings)["pickups"]["DOLDCLOSED"][1] == "Sam Doe"
    assert cli.main(["purge-personal-data", "--data-dir", str(tmp_path), "--older-than", "365d", "--dry-run"]) == 0
    assert "would erase" in capsys.readouterr().out and personal_data(settings)["pickups"]["DOLDCLOSED"][1] == "Sam Doe"
    monkeypatch.setenv("TAKEBACK_PERSONAL_DATA_RETENTION", "365d")
    assert cli.main(["purge-personal-data", "--data-dir", str(tmp_path)]) == 0
    assert "2 pickup(s)" in capsys.readouterr().out
    assert_purged_people(personal_data(settings))
    assert cli.main(["purge-personal-data", "--data-dir", str(tmp_path), "--older-than", "soon"]) == 2


@pytest.mark.parametrize("retention", ["30d", "0.5d"])
def test_the_retention_is_a_setting(retention, monkeypatch):
    from settings import Settings

    monkeypatch.setenv("TAKEBACK_PERSONAL_DATA_RETENTION", retention)
    assert Settings().personal_data_retention_seconds == float(retention[:-1]) * 86400
    monkeypatch.setenv("TAKEBACK_PERSONAL_DATA_RETENTION", "a while")
    with pytest.raises(ValueError):
        Settings()


async def test_every_worker_purges_on_its_own_schedule(tmp_path):
    """Nobody has to remember a cron job: the worker runs the purge every TAKEBACK_PURGE_EVERY."""
    import asyncio

    from worker import purge_personal_data_periodically

    settings = make_settings(tmp_path, purge_every="1h", personal_data_retention="365d")
    populate(settings)
    purging = asyncio.create_task(purge_personal_data_periodically(settings))
    try:
        for _ in range(100):
            if personal_data(settings)["pickups"]["DOLDCLOSED"][1] == "(erased)":
                break
            await asyncio.sleep(0.05)
    finally:
        purging.cancel()
    assert_purged_people(personal_data(settings))
    off = make_settings(tmp_path, purge_every="0s")
    await asyncio.wait_for(purge_personal_data_periodically(off), 1)  # 0s: the loop never starts
