"""End to end over HTTP on the real dev server, with seconds-long settings."""

from tests.api_helpers import PICKUP, WEBHOOK_SECRET, api_client, booking_body, certified_partner, eventually, key, signed
from tests.conftest import make_settings, running_worker


async def test_book_pickup_track_receive_release_and_a_second_deal_forfeited(dev_server_env, tmp_path):
    settings = make_settings(tmp_path, return_window="14s", reminder_offsets="6s,3s", carrier_webhook_secret=WEBHOOK_SECRET, temporal_address=dev_server_env.client.service_client.config.target_host)
    async with running_worker(dev_server_env.client, settings), api_client(settings) as http:
        ops = key(settings)
        await certified_partner(http, ops, "ACME")
        partner = key(settings, "partner", "ACME")
        r = await http.post("/v1/deals", json=booking_body("ACME", 10), headers=partner)
        assert r.status_code == 201, r.text
        deal = r.json()
        assert deal["status"] == "awaiting_returns" and deal["required_units"] == 8
        assert deal["incentive"] == {"mode": "rebate", "rate": "0.05", "amount": "5000.00", "status": "held"}
        short = (await http.post("/v1/deals", json=booking_body("ACME", 5), headers=partner)).json()

        r = await http.post(f"/v1/deals/{deal['id']}/pickups", json=PICKUP, headers=partner)
        assert r.status_code == 201, r.text
        pickup = r.json()
        assert pickup["status"] == "scheduled" and pickup["tracking_number"]
        for n, status in enumerate(["pre_transit", "in_transit", "out_for_delivery", "delivered"]):
            raw, headers = signed({"event_id": f"ev-{n}", "tracking_number": pickup["tracking_number"], "status": status, "occurred_at": "2026-12-02T10:00:00Z"})
            r = await http.post("/v1/carrier-events", content=raw, headers=headers)
            assert r.status_code == 202, r.text

        async def delivered():
            view = (await http.get(f"/v1/deals/{deal['id']}", headers=partner)).json()
            return view["pickups"][0]["status"] == "delivered"

        await eventually(delivered, what="the delivered status")
        listed = {d["id"]: d for d in (await http.get("/v1/deals", headers=partner)).json()["items"]}
        assert [p["status"] for p in listed[deal["id"]]["pickups"]] == ["delivered"]  # the list shows the carrier's news too
        assert listed[short["id"]]["pickups"] == []
        items = [{"product_id": "C9300-48P", "serial_number": f"SN-{n}", "condition": "working" if n < 6 else "dead", "age_years": 3} for n in range(9)]
        items.append(items[0])  # a line scanned twice
        r = await http.post(f"/v1/deals/{deal['id']}/receipts", json={"items": items}, headers=ops)
        assert r.status_code == 200, r.text
        receipt = r.json()
        assert receipt["accepted"] == 9 and [x["serial_number"] for x in receipt["rejected"]] == ["SN-0"]
        assert {x["disposition"] for x in receipt["items"]} == {"refresh", "recycle"}

        async def released():
            view = (await http.get(f"/v1/deals/{deal['id']}", headers=partner)).json()
            return view if view["incentive"]["status"] == "released" else None

        view = await released() or await eventually(released, what="the release")
        assert view["status"] == "condition_met" and view["received_units"] == 9
        assert view["dispositions"] == {"refresh": 6, "recycle": 3, "other": 0}

        async def expired():
            view = (await http.get(f"/v1/deals/{short['id']}", headers=ops)).json()
            return view if view["status"] == "expired" else None

        final_short = await eventually(expired, timeout=25, what="the short deal to expire")
        assert final_short["incentive"]["status"] == "forfeited" and final_short["reminders_sent"] == ["6s", "3s"]

        async def closed():
            view = (await http.get(f"/v1/deals/{deal['id']}", headers=ops)).json()
            return view if view["status"] == "closed" else None

        await eventually(closed, timeout=25, what="the first deal to close")
        r = await http.get(f"/v1/deals/{deal['id']}/certificate", headers=partner)
        assert r.status_code == 200 and len(r.json()["certificate"]["items"]) == 9
        html = await http.get(f"/v1/deals/{deal['id']}/certificate?format=html", headers=partner)
        assert r.json()["content_hash"] in html.text
        listed = (await http.get("/v1/deals?status=expired", headers=partner)).json()
        assert [d["id"] for d in listed["items"]] == [short["id"]]
        report = (await http.get("/v1/reports/impact", headers=partner)).json()
        assert report["units_returned"] == 9 and report["incentives_released"] == "5000.00" and report["incentives_forfeited"] == "5000.00"
        assert report["trees_planted"] == 1
        # by hand: 9 Catalyst 9300 at 7.9 kg; 6 working and young -> refresh, 3 dead -> recycle
        assert (report["kg_returned"], report["refresh_share"], report["recycle_share"], report["other_share"]) == (71.1, 0.6667, 0.3333, 0.0)

    outbox = sorted(p.name for p in settings.effective_outbox_dir.glob("*.eml"))
    assert f"{short['id']}_reminder_6s.eml" in outbox and f"{short['id']}_reminder_3s.eml" in outbox
