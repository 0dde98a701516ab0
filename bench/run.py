"""`make bench`: the cost of a takeback deal against the engine's own limit, measured side by side.

For an in-memory and a file-backed dev server, each with the product worker (which also runs a
raw two-activity workflow) and the API: booking rate, lifecycle CPU, message round trips, one
deal at scale, parked deals and the read path. Prints one table of ratios; see bench/RESULTS.md.
"""

import argparse
import asyncio
import hashlib
import hmac
import json
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.baseline import RawTwoActivityWorkflow  # noqa: E402
from bench.stack import Stack, free_port, rss_mb, wait_port  # noqa: E402

WEBHOOK_SECRET = "bench-secret"
PARTNER = "BENCH-PARTNER"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000 if ordered else float("nan")


async def gather_limited(n: int, concurrency: int, make):
    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(i):
        async with semaphore:
            started = time.perf_counter()
            result = await make(i)
            latencies.append(time.perf_counter() - started)
            return result

    started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(n)))
    return results, latencies, time.perf_counter() - started


def ops_key(stack: Stack) -> str:
    out = subprocess.run([sys.executable, "-m", "cli", "apikey", "create", "--role", "ops"], env=stack.env, cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def signed(body: dict) -> tuple[bytes, dict]:
    raw = json.dumps(body).encode()
    t = str(int(time.time()))
    signature = hmac.new(WEBHOOK_SECRET.encode(), f"{t}.".encode() + raw, hashlib.sha256).hexdigest()
    return raw, {"Takeback-Signature": f"t={t},v1={signature}", "Content-Type": "application/json"}


def booking_body(units: int = 10) -> dict:
    return {
        "partner_id": PARTNER,
        "customer": {"name": "Bench Customer", "country": "CA"},
        "opportunity": "refresh",
        "new_products_value": "100000.00",
        "incentive_rate": "0.05",
        "equipment": [{"product_id": "C9300-48P", "quantity": units}],
    }


async def certify(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/partners", json={"id": PARTNER, "name": "Bench", "contact_email": "bench@example.com", "country": "CA"})
    assert r.status_code in (201, 409), r.text
    for path, body in (
        ("trainings", {"person_email": "b@example.com", "person_name": "B", "hours": 5}),
        ("exams", {"exam": 1, "passed": True}),
        ("exams", {"exam": 2, "passed": True}),
        ("pledge", None),
    ):
        r = await http.post(f"/v1/partners/{PARTNER}/{path}", json=body)
        assert r.status_code in (200, 201), r.text
    for _ in range(100):
        r = await http.get(f"/v1/partners/{PARTNER}")
        if r.json()["specialization"]["status"] == "certified":
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("partner never certified")


async def complete_deal(http: httpx.AsyncClient, index: int) -> str:
    deal = (await http.post("/v1/deals", json=booking_body(10))).json()
    pickup = (await http.post(f"/v1/deals/{deal['id']}/pickups", json={"address": "1 Bench St", "contact_name": "B", "contact_phone": "+1 555 0100", "ready_on": "2026-12-01", "expected_units": 10})).json()
    for n, status in enumerate(("pre_transit", "in_transit", "out_for_delivery", "delivered")):
        raw, headers = signed({"event_id": f"{deal['id']}-{n}", "tracking_number": pickup["tracking_number"], "status": status, "occurred_at": datetime.now(timezone.utc).isoformat()})
        r = await http.post("/v1/carrier-events", content=raw, headers={**headers, "Authorization": ""})
        assert r.status_code == 202, r.text
    items = [{"product_id": "C9300-48P", "serial_number": f"{deal['id']}-{n}", "condition": "working", "age_years": 2} for n in range(10)]
    r = await http.post(f"/v1/deals/{deal['id']}/receipts", json={"items": items})
    assert r.status_code == 200, r.text
    return deal["id"]


async def wait_closed(client, deal_ids: list[str]) -> None:
    from service.deals import deal_handle

    await asyncio.gather(*(deal_handle(client, d).result() for d in deal_ids))


async def history_stats(client, workflow_id: str) -> tuple[int, int]:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    largest = 0
    for event in history.events:
        largest = max(largest, event.ByteSize())
    return len(history.events), largest


async def bench_backend(file_backed: bool, args) -> dict:
    stack = Stack(file_backed=file_backed, env_overrides={"TAKEBACK_CARRIER_WEBHOOK_SECRET": WEBHOOK_SECRET, "TAKEBACK_SIM_CARRIER_STEP": "0s"}).start()
    trivial_port = free_port()
    trivial = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.trivial_app:app", "--port", str(trivial_port), "--log-level", "warning"], cwd=ROOT)
    wait_port(trivial_port, trivial)
    out: dict = {}
    try:
        from settings import Settings
        from temporal_client import connect

        settings = Settings(temporal_address=f"127.0.0.1:{stack.temporal_port}", data_dir=stack.data_dir, database_url="")
        client = await connect(settings)
        key = ops_key(stack)
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60, limits=limits) as http:
            await certify(http)
            await complete_deal(http, -1)  # warm-up

            # 1. booking rate: API vs raw SDK starts
            _, _, sdk_seconds = await gather_limited(
                args.bookings, 32, lambda i: client.start_workflow(RawTwoActivityWorkflow.run, i, id=f"raw-start-{uuid.uuid4().hex}", task_queue=settings.task_queue)
            )
            _, booking_latencies, api_seconds = await gather_limited(args.bookings, 32, lambda i: http.post("/v1/deals", json=booking_body()))
            out["bookings_per_s"] = args.bookings / api_seconds
            out["sdk_starts_per_s"] = args.bookings / sdk_seconds
            out["booking_p50_ms"], out["booking_p99_ms"] = pct(booking_latencies, 0.5), pct(booking_latencies, 0.99)
            await asyncio.sleep(2)

            # 2. lifecycle cost: server CPU per complete deal vs per raw workflow
            before = stack.cpu()
            handles = await asyncio.gather(*(client.start_workflow(RawTwoActivityWorkflow.run, i, id=f"raw-{uuid.uuid4().hex}", task_queue=settings.task_queue) for i in range(args.lifecycles * 3)))
            await asyncio.gather(*(h.result() for h in handles))
            mid = stack.cpu()
            deal_ids, _, _ = await gather_limited(args.lifecycles, 8, lambda i: complete_deal(http, i))
            await wait_closed(client, deal_ids)
            after = stack.cpu()
            raw_server = (mid["server"] - before["server"]) / (args.lifecycles * 3)
            deal_server = (after["server"] - mid["server"]) / args.lifecycles
            out["raw_server_cpu_ms"], out["deal_server_cpu_ms"] = raw_server * 1000, deal_server * 1000
            out["raw_worker_cpu_ms"] = (mid["worker"] - before["worker"]) / (args.lifecycles * 3) * 1000
            out["deal_worker_cpu_ms"] = (after["worker"] - mid["worker"]) / args.lifecycles * 1000
            out["deal_api_cpu_ms"] = (after["api"] - mid["api"]) / args.lifecycles * 1000
            deal_events, _ = await history_stats(client, f"deal-{deal_ids[0]}")
            view = (await http.get(f"/v1/deals/{deal_ids[0]}")).json()
            pickup_events = sum([(await history_stats(client, f"pickup-{p['tracking_number']}"))[0] for p in view["pickups"]])
            out["history_events_per_deal"] = deal_events + pickup_events

            # 3. round trips: API vs SDK for update, signal and query
            open_deal = (await http.post("/v1/deals", json=booking_body(1000))).json()["id"]
            from service import deals as service
            from domain.models import CarrierEvent, PickupRequest

            pickup_body = {"address": "1 Bench St", "contact_name": "B", "contact_phone": "+1 555 0100", "ready_on": "2026-12-01", "expected_units": 1}
            trips = {}
            _, trips["api_update"], _ = await gather_limited(args.trips, 1, lambda i: http.post(f"/v1/deals/{open_deal}/pickups", json=pickup_body))
            _, trips["sdk_update"], _ = await gather_limited(args.trips, 1, lambda i: service.request_pickup(client, open_deal, PickupRequest(**pickup_body)))
            tracking = (await http.get(f"/v1/deals/{open_deal}")).json()["pickups"][0]["tracking_number"]

            async def api_signal(i):
                raw, headers = signed({"event_id": f"trip-{uuid.uuid4().hex}", "tracking_number": tracking, "status": "in_transit", "occurred_at": datetime.now(timezone.utc).isoformat()})
                return await http.post("/v1/carrier-events", content=raw, headers=headers)

            _, trips["api_signal"], _ = await gather_limited(args.trips, 1, api_signal)
            _, trips["sdk_signal"], _ = await gather_limited(
                args.trips, 1, lambda i: service.send_carrier_event(client, CarrierEvent(event_id=f"sdk-{uuid.uuid4().hex}", tracking_number=tracking, status="in_transit", occurred_at=datetime.now(timezone.utc)))
            )
            _, trips["api_query"], _ = await gather_limited(args.trips, 1, lambda i: http.get(f"/v1/deals/{open_deal}"))
            _, trips["sdk_query"], _ = await gather_limited(args.trips, 1, lambda i: service.deal_handle(client, open_deal).query("view"))
            for name, values in trips.items():
                out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = pct(values, 0.5), pct(values, 0.99)

            # 4. one deal at scale: many committed serials, receipts in batches of 5,000 through the API
            out.update(await scale_of_one_deal(client, settings, http, stack, args.scale_serials))

            # 6. read path with 32 concurrent clients vs a trivial endpoint
            async def rps(url_for, n):
                _, _, seconds = await gather_limited(n, 32, lambda i: http.get(url_for(i)))
                return n / seconds

            out["get_deal_rps"] = await rps(lambda i: f"/v1/deals/{deal_ids[i % len(deal_ids)]}", args.reads)
            out["list_deals_rps"] = await rps(lambda i: "/v1/deals?limit=100", args.reads // 2)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{trivial_port}", limits=limits) as plain:
                _, _, seconds = await gather_limited(args.reads, 32, lambda i: plain.get("/ping"))
            out["trivial_rps"] = args.reads / seconds

            # 5. parked deals: open deals waiting on their windows
            out.update(await parked_deals(client, http, stack, deal_ids[0], args.parked))
    finally:
        trivial.terminate()
        stack.stop()
    return out


async def scale_of_one_deal(client, settings, http, stack, serials: int) -> dict:
    from domain.models import BookingRequest
    from service import deals as service

    body = booking_body(serials)
    per_line = 50_000  # a line lists at most 50,000 serials
    body["equipment"] = [
        {"product_id": "C9300-48P", "quantity": min(per_line, serials - start), "serial_numbers": [f"BIG-{n}" for n in range(start, min(serials, start + per_line))]}
        for start in range(0, serials, per_line)
    ]
    # More serials than one API booking takes: booked through the service layer the API uses.
    view = await service.book_deal(client, settings, BookingRequest.model_validate(body))
    started = time.perf_counter()
    for start in range(0, serials, 5000):
        items = [{"product_id": "C9300-48P", "serial_number": f"BIG-{n}", "condition": "working", "age_years": 2} for n in range(start, min(serials, start + 5000))]
        r = await http.post(f"/v1/deals/{view.id}/receipts", json={"items": items})
        assert r.status_code == 200 and r.json()["accepted"] == len(items), r.text[:300]
    seconds = time.perf_counter() - started
    await service.deal_handle(client, view.id).result()
    events, largest = await history_stats(client, f"deal-{view.id}")
    return {"scale_serials": serials, "scale_history_events": events, "scale_largest_payload_kb": largest / 1024, "scale_items_per_s": serials / seconds, "worker_peak_rss_mb": rss_mb(stack.processes["worker"].pid)}


async def parked_deals(client, http, stack, cached_deal: str, count: int) -> dict:
    from service.deals import deal_handle

    ids, _, seconds = await gather_limited(count, 32, lambda i: http.post("/v1/deals", json=booking_body(5)))
    deal_ids = [r.json()["id"] for r in ids]
    await asyncio.sleep(2)
    # The oldest parked deal has most likely left the worker's cache; the newest is still in it.
    evicted, cached = [], []
    for _ in range(10):
        for target, sink in ((deal_ids[0], evicted), (deal_ids[-1], cached)):
            started = time.perf_counter()
            await deal_handle(client, target).signal("pickup_status", args=["none", "noop"])
            sink.append(time.perf_counter() - started)
    return {"parked_deals": count, "parked_booking_s": seconds, "parked_worker_rss_mb": rss_mb(stack.processes["worker"].pid),
            "parked_db_mb": stack.db_size_mb(), "signal_evicted_p50_ms": pct(evicted, 0.5), "signal_cached_p50_ms": pct(cached, 0.5)}


def table(results: dict[str, dict]) -> str:
    rows = [
        ("booking efficiency (API deals/s / SDK starts/s)", lambda r: r["bookings_per_s"] / r["sdk_starts_per_s"], ">= 0.9"),
        ("  API bookings/s", lambda r: r["bookings_per_s"], ""),
        ("  SDK starts/s", lambda r: r["sdk_starts_per_s"], ""),
        ("  booking p50 / p99 ms", lambda r: f"{r['booking_p50_ms']:.0f} / {r['booking_p99_ms']:.0f}", ""),
        ("lifecycle cost (server CPU deal / raw 2-activity wf)", lambda r: r["deal_server_cpu_ms"] / r["raw_server_cpu_ms"], "<= 3"),
        ("  server CPU ms per deal / per raw wf", lambda r: f"{r['deal_server_cpu_ms']:.0f} / {r['raw_server_cpu_ms']:.0f}", ""),
        ("  worker CPU ms per deal / per raw wf", lambda r: f"{r['deal_worker_cpu_ms']:.0f} / {r['raw_worker_cpu_ms']:.0f}", ""),
        ("  history events per deal (deal + pickup)", lambda r: r["history_events_per_deal"], "<= 60"),
        ("update round trip API / SDK (p50)", lambda r: r["api_update_p50_ms"] / r["sdk_update_p50_ms"], ""),
        ("  update p50/p99 ms API | SDK", lambda r: f"{r['api_update_p50_ms']:.0f}/{r['api_update_p99_ms']:.0f} | {r['sdk_update_p50_ms']:.0f}/{r['sdk_update_p99_ms']:.0f}", ""),
        ("signal round trip API / SDK (p50)", lambda r: r["api_signal_p50_ms"] / r["sdk_signal_p50_ms"], ""),
        ("  signal p50/p99 ms API | SDK", lambda r: f"{r['api_signal_p50_ms']:.1f}/{r['api_signal_p99_ms']:.1f} | {r['sdk_signal_p50_ms']:.1f}/{r['sdk_signal_p99_ms']:.1f}", ""),
        ("query round trip API / SDK (p50)", lambda r: r["api_query_p50_ms"] / r["sdk_query_p50_ms"], ""),
        ("  query p50/p99 ms API | SDK", lambda r: f"{r['api_query_p50_ms']:.1f}/{r['api_query_p99_ms']:.1f} | {r['sdk_query_p50_ms']:.1f}/{r['sdk_query_p99_ms']:.1f}", ""),
        ("one deal: committed serials", lambda r: r["scale_serials"], ""),
        ("  history events", lambda r: r["scale_history_events"], "< 2000"),
        ("  largest history payload KB", lambda r: r["scale_largest_payload_kb"], "< 256"),
        ("  receipt ingestion items/s (API)", lambda r: r["scale_items_per_s"], ">= 5000"),
        ("  worker peak RSS MB", lambda r: r["worker_peak_rss_mb"], ""),
        ("parked open deals", lambda r: r["parked_deals"], ""),
        ("  worker RSS MB / server DB MB", lambda r: f"{r['parked_worker_rss_mb']:.0f} / {r['parked_db_mb']:.1f}", ""),
        ("  signal p50 ms evicted / cached", lambda r: f"{r['signal_evicted_p50_ms']:.1f} / {r['signal_cached_p50_ms']:.1f}", ""),
        ("read path GET deal rps / trivial rps", lambda r: r["get_deal_rps"] / r["trivial_rps"], ""),
        ("read path GET list(100) rps / trivial rps", lambda r: r["list_deals_rps"] / r["trivial_rps"], ""),
        ("  GET deal / list / trivial rps", lambda r: f"{r['get_deal_rps']:.0f} / {r['list_deals_rps']:.0f} / {r['trivial_rps']:.0f}", ""),
    ]
    names = list(results)
    lines = [f"{'measure':<55}" + "".join(f"{n:>22}" for n in names) + f"{'goal':>10}"]
    for label, value, goal in rows:
        cells = []
        for name in names:
            try:
                v = value(results[name])
                cells.append(f"{v:>22.2f}" if isinstance(v, float) else f"{v!s:>22}")
            except (KeyError, ZeroDivisionError):
                cells.append(f"{'n/a':>22}")
        lines.append(f"{label:<55}" + "".join(cells) + f"{goal:>10}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bookings", type=int, default=300)
    parser.add_argument("--lifecycles", type=int, default=30)
    parser.add_argument("--trips", type=int, default=50)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--scale-serials", type=int, default=100_000)
    parser.add_argument("--parked", type=int, default=2000)
    parser.add_argument("--backends", default="memory,file")
    args = parser.parse_args()
    results = {}
    for backend in args.backends.split(","):
        print(f"[bench] {backend} dev server ...", flush=True)
        started = time.monotonic()
        results[f"{backend} dev server"] = asyncio.run(bench_backend(backend == "file", args))
        print(f"[bench] {backend} done in {time.monotonic() - started:.0f}s", flush=True)
    print()
    print(table(results))


if __name__ == "__main__":
    main()
