"""Migration 0009 (issue 14): certificates issued before it become final, each with its id, and verify."""

from sqlalchemy import create_engine, text

from store import migrate
from store.custody import verify
from store.db import session_scope
from domain.certificate import certificate_id


def test_certificates_issued_before_get_their_id_and_verify(database_url):
    engine = create_engine(database_url)
    migrate.upgrade(engine, "0008")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO certificate (deal_id, content_json, content_hash, issued_at) VALUES ('DOLD', '{}', :h, '2026-01-02 03:04:05')"), {"h": "c" * 64})
    migrate.upgrade(engine)
    with engine.connect() as connection:
        row = connection.execute(text("SELECT certificate_id, status FROM certificate WHERE deal_id = 'DOLD'")).one()
    engine.dispose()
    assert row == (certificate_id("DOLD", "c" * 64), "final")
    with session_scope(database_url) as session:
        assert verify(session, row[0], "c" * 64)["valid"] is True and verify(session, row[0], "d" * 64)["valid"] is False
