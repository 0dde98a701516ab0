"""Reason codes (issue 14): extensions and cancellations take a code from a list, free text beside,
validated when given and `other` when not; refused receipt lines carry theirs; all are counted."""

from tests.api_helpers import api_client, booking_body, key
from tests.conftest import make_settings, running_worker


async def test_extension_cancellation_and_rejection_reasons_are_codes_that_are_counted(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path, temporal_address=env.client.service_client.config.target_host)
    async with running_worker(env.client, settings), api_client(settings) as http:
        ops = key(settings)
        deals = [(await http.post("/v1/deals", json=booking_body("P1", 5), headers=ops)).json()["id"] for _ in range(2)]
        bad = await http.post(f"/v1/deals/{deals[0]}/extend", json={"extend_by": "30d", "reason": "storm", "reason_code": "weather"}, headers=ops)
        assert bad.status_code == 422  # not a code from the list: nothing reaches the deal
        for body in ({"extend_by": "30d", "reason": "carrier lost the truck", "reason_code": "carrier_delay"},
                     {"extend_by": "7d", "reason": "carrier again", "reason_code": "carrier_delay"},
                     {"extend_by": "1d", "reason": "no code given"}):  # the contract's body: counted as `other`
            r = await http.post(f"/v1/deals/{deals[0]}/extend", json=body, headers={**ops, "Idempotency-Key": body["reason"]})
            assert r.status_code == 200, r.text
        again = await http.post(f"/v1/deals/{deals[0]}/extend", json={"extend_by": "30d", "reason": "carrier lost the truck", "reason_code": "carrier_delay"},
                                headers={**ops, "Idempotency-Key": "carrier lost the truck"})
        assert again.status_code == 200  # a retry: the same extension, counted once
        r = await http.post(f"/v1/deals/{deals[1]}/cancel", json={"reason": "customer kept the gear", "reason_code": "customer_withdrew"}, headers=ops)
        assert r.status_code == 200 and r.json()["closed_reason"] == "cancelled: customer kept the gear"
        items = [{"product_id": "C9300-48P", "serial_number": s, "condition": "working", "age_years": 1} for s in ("S1", "S1", "S2")]
        receipt = (await http.post(f"/v1/deals/{deals[0]}/receipts", json={"items": items}, headers=ops)).json()
        assert receipt["rejected"] == [{"serial_number": "S1", "reason": "serial appears twice in this receipt", "reason_code": "duplicate_in_receipt"}]
        counts = (await http.get("/v1/reports/reasons", headers=ops)).json()
        assert counts == {"cancellation": {"customer_withdrew": 1}, "extension": {"carrier_delay": 2, "other": 1}, "receipt_rejection": {"duplicate_in_receipt": 1}}
        assert (await http.get("/v1/reports/reasons", params={"year": 2001}, headers=ops)).json() == {"cancellation": {}, "extension": {}, "receipt_rejection": {}}
        assert (await http.get("/v1/reports/reasons", headers=key(settings, "partner", "P1"))).status_code == 403
