"""A deal's serials end to end over HTTP (issue 14): booking -> pickup -> carrier events -> receipt ->
sanitization -> refresh, and -> destroy -> downstream; a refresh refused without a passed sanitization,
a failed verification holding the final certificate back, the verify endpoint, the PDF's text."""

import io
from datetime import datetime, timezone

from pypdf import PdfReader

from service import deals
from tests.api_helpers import PICKUP, WEBHOOK_SECRET, api_client, key, signed
from tests.conftest import add_partner, make_settings, running_worker

ROUTER = "ISR4331/K9"  # data-bearing (domain/catalog.csv)


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


def sanitization(serials: list[str], method: str, verification: str = "passed") -> dict:
    return {
        "serial_numbers": serials, "method": method, "technique": "config erase + NVRAM wipe" if method != "destroy" else "shred",
        "tool": "IOS-XE erase", "tool_version": "17.9", "operator": "Olga Operator", "facility": "Returns Center Toronto",
        "at": now(), "verification": verification, "verified_by": "Victor Verifier",
    }


async def test_a_serials_custody_from_booking_to_refresh_and_to_a_recycler(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = make_settings(tmp_path, carrier_webhook_secret=WEBHOOK_SECRET, temporal_address=env.client.service_client.config.target_host)
    async with running_worker(env.client, settings), api_client(settings) as http:
        add_partner(settings, "P2", email="p2@example.com")
        ops, partner, other = key(settings), key(settings, "partner", "P1"), key(settings, "partner", "P2")
        serials = ["FOC-REF", "FOC-REC", "FOC-FAIL"]
        booked = await http.post("/v1/deals", headers=partner, json={
            "partner_id": "P1", "customer": {"name": "Northwind", "country": "CA"}, "opportunity": "refresh", "new_products_value": "100000.00",
            "incentive_rate": "0.05", "equipment": [{"product_id": ROUTER, "quantity": 3, "serial_numbers": serials}],
        })
        assert booked.status_code == 201, booked.text
        deal_id = booked.json()["id"]
        pickup = await http.post(f"/v1/deals/{deal_id}/pickups", headers=partner, json={**PICKUP, "expected_units": 3})
        assert pickup.status_code == 201, pickup.text
        tracking = pickup.json()["tracking_number"]
        for n, status in enumerate(["pre_transit", "in_transit", "out_for_delivery", "delivered"]):
            raw, headers = signed({"event_id": f"ev-{n}", "tracking_number": tracking, "status": status, "occurred_at": now()})
            assert (await http.post("/v1/carrier-events", content=raw, headers=headers)).status_code == 202
        raw, headers = signed({"event_id": "ev-3", "tracking_number": tracking, "status": "delivered", "occurred_at": now()})
        assert (await http.post("/v1/carrier-events", content=raw, headers=headers)).status_code == 202  # redelivered: recorded once

        wrong = await http.post(f"/v1/deals/{deal_id}/receipts", headers=ops, json={"items": [{"product_id": ROUTER, "serial_number": "FOC-REF", "condition": "working", "age_years": 2}], "tracking_number": "NOPE"})
        assert wrong.status_code == 422 and wrong.json()["type"].endswith("unknown-tracking-number")
        receipt = await http.post(f"/v1/deals/{deal_id}/receipts", headers=ops, json={
            "facility": "Returns Center Toronto", "operator": "Rita Receiver", "tracking_number": tracking,
            "items": [
                {"product_id": ROUTER, "serial_number": "FOC-REF", "condition": "working", "age_years": 2},
                {"product_id": ROUTER, "serial_number": "FOC-REC", "condition": "dead", "age_years": 9},
                {"product_id": ROUTER, "serial_number": "FOC-FAIL", "condition": "working", "age_years": 1},
                {"product_id": ROUTER, "serial_number": "GREY-1", "condition": "working", "age_years": 1},
            ],
        })
        assert receipt.status_code == 200, receipt.text
        assert receipt.json()["rejected"] == [{"serial_number": "GREY-1", "reason": "serial not listed on this deal", "reason_code": "not_listed"}]
        final = await deals.deal_handle(env.client, deal_id).result()  # every committed unit back: it closes
        assert final.status.value == "closed"

        # Closed with three routers unsanitized: the certificate is provisional and lists them.
        first = await http.get(f"/v1/deals/{deal_id}/certificate", headers=partner)
        assert first.status_code == 200 and first.json()["status"] == "provisional"
        assert first.json()["certificate"]["sanitization"] == {"verified": 0, "not_required": 0, "outstanding": 3, "failed": 0, "complete": False}

        # A data-bearing unit goes to refresh only after a passed clear or purge: refused, nothing recorded.
        refused = await http.post(f"/v1/deals/{deal_id}/dispositions", headers=ops, json={"serial_numbers": ["FOC-REF"], "disposition": "refresh"})
        assert refused.status_code == 422 and refused.json()["refused"] == [
            {"serial_number": "FOC-REF", "reason_code": "sanitization_missing", "reason": "data-bearing: needs a passed clear or purge sanitization before refresh"}
        ]
        assert (await http.post(f"/v1/deals/{deal_id}/sanitizations", headers=partner, json=sanitization(["FOC-REF"], "purge"))).status_code == 403  # ops only
        assert (await http.post(f"/v1/deals/{deal_id}/sanitizations", headers=other, json=sanitization(["FOC-REF"], "purge"))).status_code == 404
        r = await http.post(f"/v1/deals/{deal_id}/sanitizations", headers=ops, json=sanitization(["FOC-REF"], "purge"))
        assert r.status_code == 201 and r.json()["recorded"] == 1 and r.json()["certificate_status"] == "provisional", r.text
        record = r.json()["records"][0]  # the record of each serial, as R2v3 Appendix B asks
        assert (record["serial_number"], record["method"], record["operator"], record["verification"], record["verified_by"]) == ("FOC-REF", "purge", "Olga Operator", "passed", "Victor Verifier")
        r = await http.post(f"/v1/deals/{deal_id}/dispositions", headers=ops, json={"serial_numbers": ["FOC-REF"], "disposition": "refresh", "facility": "Returns Center Toronto"})
        assert r.status_code == 201, r.text

        # Destroyed, then shipped to a certified recycler: its custody ends there.
        assert (await http.post(f"/v1/deals/{deal_id}/sanitizations", headers=ops, json=sanitization(["FOC-REC"], "destroy"))).status_code == 201
        shipment = await http.post("/v1/downstream-shipments", headers=ops, json={
            "recycler": {"name": "Metro Metals Recycling", "certification_id": "R2v3-000123"}, "shipped_at": now(), "lot": "LOT-7",
            "serial_numbers": ["FOC-REC"], "materials": [{"material": "circuit_boards", "kg": 1.5}, {"material": "ferrous", "kg": 4.2}],
        })
        assert shipment.status_code == 201, shipment.text
        after = await http.post(f"/v1/deals/{deal_id}/sanitizations", headers=ops, json=sanitization(["FOC-REC"], "destroy"))
        assert after.status_code == 422 and after.json()["refused"][0]["reason_code"] == "custody_ended"

        # A failed verification blocks the unit and the final certificate, until a passed record follows.
        assert (await http.post(f"/v1/deals/{deal_id}/sanitizations", headers=ops, json=sanitization(["FOC-FAIL"], "clear", "failed"))).status_code == 201
        blocked = await http.post(f"/v1/deals/{deal_id}/dispositions", headers=ops, json={"serial_numbers": ["FOC-FAIL"], "disposition": "refresh"})
        assert blocked.status_code == 422 and blocked.json()["refused"][0]["reason_code"] == "sanitization_failed"
        held = await http.get(f"/v1/deals/{deal_id}/certificate", headers=ops)
        assert held.json()["status"] == "provisional" and held.json()["certificate_id"] == first.json()["certificate_id"]
        assert held.json()["content_hash"] == first.json()["content_hash"]  # the provisional document stands as issued at close
        r = await http.post(f"/v1/deals/{deal_id}/sanitizations", headers=ops, json=sanitization(["FOC-FAIL"], "purge"))
        assert r.status_code == 201 and r.json()["certificate_status"] == "final"

        issued = (await http.get(f"/v1/deals/{deal_id}/certificate", headers=partner)).json()
        content = issued["certificate"]
        assert issued["status"] == "final" and issued["certificate_id"] != first.json()["certificate_id"]
        assert content["sanitization"] == {"verified": 3, "not_required": 0, "outstanding": 0, "failed": 0, "complete": True}
        by_serial = {item["serial_number"]: item for item in content["items"]}
        assert set(by_serial) == set(serials)
        assert by_serial["FOC-REF"]["disposition"] == "refresh" and by_serial["FOC-REF"]["sanitization_record"]["method"] == "purge"
        assert by_serial["FOC-FAIL"]["sanitization_record"]["verification"] == "passed"  # the latest record stands
        assert [e["kind"] for e in by_serial["FOC-REC"]["custody"]] == ["committed", "received", "graded", "sanitized", "shipped_downstream"]
        assert content["pickups"][0]["tracking_number"] == tracking and [e["value"] for e in content["pickups"][0]["events"]] == ["pre_transit", "in_transit", "out_for_delivery", "delivered"]

        # Verification without a key: the issued hash is valid, any other is not; nothing personal is told.
        verify = f"/v1/certificates/{issued['certificate_id']}/verify"
        ok = await http.get(verify, params={"hash": issued["content_hash"]})
        assert ok.status_code == 200 and ok.json()["valid"] is True and ok.json()["status"] == "final" and ok.json()["superseded"] is False
        assert set(ok.json()) == {"certificate_id", "valid", "status", "issued_at", "superseded"}
        bad = await http.get(verify, params={"hash": "0" * 64})
        assert bad.json() == {"certificate_id": issued["certificate_id"], "valid": False, "status": None, "issued_at": None, "superseded": None}
        old = await http.get(f"/v1/certificates/{first.json()['certificate_id']}/verify", params={"hash": first.json()["content_hash"]})
        assert old.json()["valid"] is True and old.json()["superseded"] is True and old.json()["status"] == "provisional"
        assert (await http.get(verify, params={"hash": issued["content_hash"][:-1]})).status_code == 422
        assert (await http.get("/v1/certificates/TBC-NOSUCH/verify", params={"hash": issued["content_hash"]})).json()["valid"] is False

        html = await http.get(f"/v1/deals/{deal_id}/certificate?format=html", headers=partner)
        assert html.status_code == 200 and issued["certificate_id"] in html.text and issued["content_hash"] in html.text
        assert issued["verification_url"] in html.text.replace("&amp;", "&") and "<svg" in html.text
        pdf = await http.get(f"/v1/deals/{deal_id}/certificate?format=pdf", headers=partner)
        assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
        text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
        assert all(serial in text for serial in serials) and issued["certificate_id"] in text and issued["content_hash"] in text

        # The timeline of a serial: every step with its actor and time, oldest first.
        timeline = (await http.get("/v1/serials/FOC-REF", headers=ops)).json()
        kinds = [e["kind"] for e in timeline["events"]]
        assert kinds == ["committed", "pickup_booked", "carrier", "carrier", "carrier", "carrier", "received", "graded", "sanitized", "dispositioned"], kinds
        assert all(e["actor"] and e["at"] for e in timeline["events"])
        assert [e["at"] for e in timeline["events"]] == sorted(e["at"] for e in timeline["events"])
        received = timeline["events"][6]
        assert received["actor"].startswith("ops:") and received["detail"]["facility"] == "Returns Center Toronto" and received["detail"]["operator"] == "Rita Receiver"
        assert received["detail"]["tracking_number"] == tracking and received["detail"]["condition"] == "working" and received["detail"]["age_years"] == 2
        assert timeline["events"][0]["actor"] == "partner:P1" and timeline["events"][0]["deal_id"] == deal_id
        assert timeline["events"][2]["actor"].startswith("carrier:") and timeline["events"][7]["detail"]["value"] == "refresh"
        sanitized = timeline["events"][8]["detail"]
        assert (sanitized["value"], sanitized["verification"], sanitized["verified_by"], sanitized["tool_version"]) == ("purge", "passed", "Victor Verifier", "17.9")
        recycled = [e["kind"] for e in (await http.get("/v1/serials/FOC-REC", headers=partner)).json()["events"]]
        assert recycled[-2:] == ["sanitized", "shipped_downstream"]
        assert (await http.get("/v1/serials/FOC-REC", headers=other)).status_code == 404  # another partner's serial
        grey = (await http.get("/v1/serials/GREY-1", headers=ops)).json()["events"]
        # never committed, yet it arrived in that pickup: recorded, rejected with its reason
        assert [e["kind"] for e in grey] == ["pickup_booked", "carrier", "carrier", "carrier", "carrier", "rejected"]
        assert grey[-1]["detail"]["value"] == "not_listed" and grey[-1]["detail"]["reason"] == "serial not listed on this deal" and grey[-1]["actor"].startswith("ops:")
        assert (await http.get("/v1/serials/NEVER-SEEN", headers=ops)).status_code == 404
        assert (await http.get("/v1/serials/FOC-REF")).status_code == 401  # the timeline needs a key; verification does not

        report = (await http.get("/v1/reports/impact", headers=partner)).json()
        assert report["kg_by_material"] == {"circuit_boards": 1.5, "ferrous": 4.2}
        assert report["units_counted"] == {"refurbished": 2, "recycled": 1, "awaiting_sanitization": 0, "other": 0}
