"""Point 10: every mutating call records the acting key and the reason; ops read a deal's audit trail
(GET /v1/deals/{id}/audit), a partner gets 403 on its own deal and 404 on another's."""

import json
from datetime import date, timedelta

from sqlalchemy import select

from store.api_keys import hash_key
from store.db import session_scope
from store.tables import ApiKey
from tests.api_helpers import api_client, booking_body, certified_partner, key
from tests.conftest import make_settings, running_worker


def key_id(settings, headers: dict) -> int:
    with session_scope(settings.effective_database_url) as session:
        return session.execute(select(ApiKey.id).where(ApiKey.key_hash == hash_key(headers["Authorization"].split()[1]))).scalar_one()


async def test_mutating_calls_are_audited_with_key_and_reason_and_ops_read_a_deals_trail(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path, temporal_address=env.client.service_client.config.target_host)
    async with running_worker(env.client, settings), api_client(settings) as http:
        ops = key(settings)
        for partner in ("AUD", "OTHER"):
            await certified_partner(http, ops, partner)
        mine, theirs = key(settings, "partner", "AUD"), key(settings, "partner", "OTHER")
        ops_id, mine_id = key_id(settings, ops), key_id(settings, mine)

        booked = await http.post("/v1/deals", json=booking_body("AUD", 5), headers={**mine, "Idempotency-Key": "po-7", "Audit-Reason": "PO 7 signed"})
        assert booked.status_code == 201, booked.text
        deal = booked.json()["id"]
        retried = await http.post("/v1/deals", json=booking_body("AUD", 5), headers={**mine, "Idempotency-Key": "po-7", "Audit-Reason": "PO 7 signed"})
        assert retried.status_code == 201  # a replayed answer: no second audit entry
        ready_on = (date.today() + timedelta(days=5)).isoformat()
        pickup = {"address": "1 Main St", "contact_name": "Sam Private", "contact_phone": "+1 555 0100", "ready_on": ready_on, "expected_units": 5}
        picked = await http.post(f"/v1/deals/{deal}/pickups", json=pickup, headers=mine)
        assert picked.status_code == 201, picked.text
        extended = await http.post(f"/v1/deals/{deal}/extend", json={"extend_by": "30d", "reason": "customer asked for time"}, headers=ops)
        assert extended.status_code == 200, extended.text
        items = {"items": [{"product_id": "C9300-48P", "serial_number": "AUD-1", "condition": "working", "age_years": 1}]}
        scanned = await http.post(f"/v1/deals/{deal}/receipts", json=items, headers={**ops, "Audit-Reason": "dock 4 scan"})
        assert scanned.status_code == 200, scanned.text
        cancelled = await http.post(f"/v1/deals/{deal}/cancel", json={"reason": "customer withdrew"}, headers=ops)
        assert cancelled.status_code == 200, cancelled.text

        trail = await http.get(f"/v1/deals/{deal}/audit", headers=ops)
        assert trail.status_code == 200, trail.text
        entries = trail.json()
        assert [e["action"] for e in entries] == ["booking", "pickup", "extend", "receipts", "cancel"]
        by_action = {e["action"]: e for e in entries}
        assert by_action["booking"]["key_id"] == by_action["pickup"]["key_id"] == mine_id
        assert by_action["booking"]["reason"] == "PO 7 signed" and by_action["booking"]["idempotency_key"] == "po-7"
        assert by_action["extend"]["key_id"] == by_action["receipts"]["key_id"] == by_action["cancel"]["key_id"] == ops_id
        assert by_action["extend"]["reason"] == "customer asked for time" and by_action["extend"]["detail"] == {"extend_by": "30d"}
        assert by_action["receipts"]["reason"] == "dock 4 scan" and by_action["receipts"]["detail"]["items"] == 1
        assert by_action["cancel"]["reason"] == "customer withdrew" and by_action["cancel"]["status"] == 200
        assert "Sam Private" not in trail.text  # no personal data in the trail
        assert all(e["key_prefix"] and e["key_prefix"] in (ops["Authorization"] + mine["Authorization"]) for e in entries)

        own = await http.get(f"/v1/deals/{deal}/audit", headers=mine)
        assert own.status_code == 403 and own.headers["content-type"].startswith("application/problem+json")
        assert (await http.get(f"/v1/deals/{deal}/audit", headers=theirs)).status_code == 404

        # Partner actions are audited too, with the acting key and the reason.
        from store.tables import AuditEvent

        await http.post("/v1/partners/AUD/trainings", json={"person_email": "ana@aud.example", "person_name": "Ana", "hours": 2}, headers=ops)
        await http.post("/v1/partners/AUD/exams", json={"exam": 1, "passed": True}, headers=ops)
        await http.post("/v1/partners/AUD/pledge", headers=mine)
        reinstate = await http.post("/v1/partners/AUD/reinstate", json={"reason": "late deal approved"}, headers=ops)
        assert reinstate.status_code == 409  # not lapsed: refused, and still on record
        with session_scope(settings.effective_database_url) as session:
            rows = session.execute(select(AuditEvent).where(AuditEvent.partner_id == "AUD", AuditEvent.deal_id.is_(None)).order_by(AuditEvent.id)).scalars().all()
        audited = [(row.action, row.api_key_id, row.reason, row.status_code) for row in rows]
        assert ("training", ops_id, None, 201) in audited and ("exam", ops_id, None, 201) in audited
        assert ("pledge", mine_id, None, 201) in audited and ("reinstate", ops_id, "late deal approved", 409) in audited
        training = [row for row in rows if row.action == "training"][-1]
        assert json.loads(training.detail_json) == {"hours": 2.0} and "ana@aud.example" not in training.detail_json


async def test_a_booking_writes_one_audit_row_with_its_deal_and_a_failed_start_corrects_it(time_skipping_env, tmp_path, monkeypatch):
    """A booking's audit row is written in its staging transaction, as if the start will succeed: one row
    per booking, and a start the engine refuses leaves the row with the status the caller got, not 201."""
    from temporalio.client import Client
    from temporalio.service import RPCError, RPCStatusCode

    from store.tables import AuditEvent, Deal

    env = time_skipping_env
    settings = make_settings(tmp_path, temporal_address=env.client.service_client.config.target_host)
    async with running_worker(env.client, settings), api_client(settings) as http:
        ops = key(settings)
        await certified_partner(http, ops, "AUD")
        booked = await http.post("/v1/deals", json=booking_body("AUD", 5), headers=ops)
        assert booked.status_code == 201, booked.text

        real_start = Client.start_workflow

        async def engine_refuses(self, workflow, *args, **kwargs):
            if getattr(workflow, "__name__", "") == "run" and kwargs.get("id", "").startswith("deal-"):
                raise RPCError("engine unavailable", RPCStatusCode.UNAVAILABLE, b"")
            return await real_start(self, workflow, *args, **kwargs)

        monkeypatch.setattr(Client, "start_workflow", engine_refuses)
        failed = await http.post("/v1/deals", json=booking_body("AUD", 5), headers={**ops, "Audit-Reason": "second PO"})
        assert failed.status_code == 503, failed.text

        with session_scope(settings.effective_database_url) as session:
            rows = session.execute(select(AuditEvent).where(AuditEvent.action == "booking").order_by(AuditEvent.id)).scalars().all()
            deals = session.execute(select(Deal.id)).scalars().all()
        assert [(row.deal_id, row.status_code) for row in rows][0] == (booked.json()["id"], 201)
        assert len(rows) == 2 and rows[1].status_code == 503 and rows[1].reason == "second PO"
        assert rows[1].deal_id not in deals  # the refused deal's staged rows were discarded; its audit row stays
