"""Point 8: one idempotency layer for every POST. Keys are scoped by account (a rotated key's retry
is the same action), method and route; the fingerprint is stored (another body: 422); a retry
while the first request runs is a 409 `idempotency-in-progress`; a refused or invalid request
stores nothing; concurrent retries of receipts never 500; records expire after 24 h and are swept."""

import asyncio
from datetime import timedelta

from sqlalchemy import func, select, update

from store.db import session_scope
from store.tables import ApiKey, Deal, IdempotencyRecord, utcnow
from tests.api_helpers import booking_body, certified_partner, key
from tests.conftest import make_settings, running_worker
from tests.api_helpers import api_client

PROBLEMS = "https://takeback.example/problems/"


def key_id(settings, headers: dict) -> int:
    from store.api_keys import hash_key

    with session_scope(settings.effective_database_url) as session:
        return session.execute(select(ApiKey.id).where(ApiKey.key_hash == hash_key(headers["Authorization"].split()[1]))).scalar_one()


def records(settings) -> int:
    with session_scope(settings.effective_database_url) as session:
        return session.execute(select(func.count()).select_from(IdempotencyRecord)).scalar_one()


async def test_every_post_goes_through_one_idempotency_layer(time_skipping_env, tmp_path, monkeypatch):
    from service import deals as service_deals

    env = time_skipping_env
    settings = make_settings(tmp_path, temporal_address=env.client.service_client.config.target_host, rate_failed_auth=0, rate_per_address=0, rate_per_key=0)
    url = settings.effective_database_url
    async with running_worker(env.client, settings), api_client(settings) as http:
        ops = key(settings)
        await certified_partner(http, ops, "IDEM")
        partner = key(settings, "partner", "IDEM")

        # A request the route refuses stores nothing: the corrected request may use the same key.
        order = {**partner, "Idempotency-Key": "order-1"}
        assert (await http.post("/v1/deals", json=booking_body("IDEM", 3, rate="0.08"), headers=order)).status_code == 422
        first = await http.post("/v1/deals", json=booking_body("IDEM", 3), headers=order)
        assert first.status_code == 201, first.text
        deal = first.json()["id"]
        reused = await http.post("/v1/deals", json=booking_body("IDEM", 4), headers=order)
        assert reused.status_code == 422 and reused.json()["type"] == PROBLEMS + "idempotency-key-reused"
        # Neither does a request that fails validation.
        before = records(settings)
        assert (await http.post("/v1/deals", json={"partner_id": "IDEM"}, headers={**partner, "Idempotency-Key": "order-2"})).status_code == 422
        assert records(settings) == before

        # Scoped by account: the partner rotates its key; the retry sent with the new key books nothing new.
        from store.api_keys import rotate_api_key

        with session_scope(url) as session:
            new_key, _ = rotate_api_key(session, key_id(settings, partner), timedelta(hours=1))
        retry = await http.post("/v1/deals", json=booking_body("IDEM", 3), headers={"Authorization": f"Bearer {new_key}", "Idempotency-Key": "order-1"})
        assert retry.status_code == 201 and retry.json()["id"] == deal, retry.text
        with session_scope(url) as session:
            assert session.execute(select(func.count()).select_from(Deal).where(Deal.partner_id == "IDEM")).scalar_one() == 1

        # A retry while the first request is still running: 409 idempotency-in-progress, then the answer.
        from api import idempotency

        monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.5)  # how long a retry waits for the first answer before the 409
        gate = asyncio.Event()
        real_extend = service_deals.extend_deal

        async def held_extend(*args, **kwargs):
            await gate.wait()
            return await real_extend(*args, **kwargs)

        monkeypatch.setattr(service_deals, "extend_deal", held_extend)
        extension, ext = {"extend_by": "30d", "reason": "customer asked"}, {**ops, "Idempotency-Key": "ops-1"}
        running = asyncio.create_task(http.post(f"/v1/deals/{deal}/extend", json=extension, headers=ext))
        for _ in range(200):
            if records(settings) > before:  # the extension has claimed its key
                break
            await asyncio.sleep(0.02)
        busy = await http.post(f"/v1/deals/{deal}/extend", json=extension, headers=ext)
        assert busy.status_code == 409 and busy.json()["type"] == PROBLEMS + "idempotency-in-progress", busy.text
        assert busy.headers["content-type"].startswith("application/problem+json") and "retry-after" in busy.headers
        other = await http.post(f"/v1/deals/{deal}/extend", json={**extension, "extend_by": "60d"}, headers=ext)
        assert other.status_code == 422 and other.json()["type"] == PROBLEMS + "idempotency-key-reused"
        gate.set()
        done = await running
        assert done.status_code == 200 and done.json()["extensions"] == ["+30d: customer asked"], done.text
        again = await http.post(f"/v1/deals/{deal}/extend", json=extension, headers=ext)
        assert again.status_code == 200 and again.json() == done.json()

        # Scoped by route: the same key on another route is another action, not a reuse.
        items = {"items": [{"product_id": "C9300-48P", "serial_number": f"IDEM-{n}", "condition": "working", "age_years": 1} for n in range(2)]}
        scan = await http.post(f"/v1/deals/{deal}/receipts", json=items, headers=ext)
        assert scan.status_code == 200 and scan.json()["accepted"] == 2, scan.text

        # Concurrent retries of one receipt: never a 500, one batch.
        more = {"items": [{"product_id": "C9300-48P", "serial_number": "IDEM-9", "condition": "working", "age_years": 1}]}
        burst = {**ops, "Idempotency-Key": "scan-2"}
        answers = await asyncio.gather(*(http.post(f"/v1/deals/{deal}/receipts", json=more, headers=burst) for _ in range(4)))
        assert all(a.status_code in (200, 409) for a in answers), [a.text for a in answers]
        settled = await http.post(f"/v1/deals/{deal}/receipts", json=more, headers=burst)
        assert settled.status_code == 200 and settled.json()["accepted"] == 1 and settled.json()["rejected"] == [], settled.text
        assert (await http.get(f"/v1/deals/{deal}", headers=ops)).json()["received_units"] == 3

        # Records live 24 h, then are swept.
        with session_scope(url) as session:
            for record in session.execute(select(IdempotencyRecord)).scalars():
                assert abs(record.expires_at - record.created_at - timedelta(hours=24)) < timedelta(minutes=1)
            session.execute(update(IdempotencyRecord).values(expires_at=utcnow() - timedelta(seconds=1)))
            session.commit()
        monkeypatch.setattr(idempotency, "_last_sweep", float("-inf"))
        pledge = await http.post("/v1/partners/IDEM/pledge", headers={**ops, "Idempotency-Key": "pledge-1"})
        assert pledge.status_code == 201, pledge.text
        assert records(settings) == 1  # the expired ones are gone; the pledge's is new
