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
import resource
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.baseline import RawTwoActivityWorkflow  # noqa: E402
from bench.http_load import LoadClient  # noqa: E402
from bench.stack import Stack, free_port, rss_mb, wait_port  # noqa: E402

WEBHOOK_SECRET = "bench-secret"
PARTNER = "BENCH-PARTNER"
WORKFLOW_CACHE = 1000  # the worker's max_cached_workflows (the SDK default): older open deals are evicted
BOOKING_ROUNDS = 3
_STARTED = time.monotonic()

# Parked deals: 10,000 on the file-backed server, whose database size they show; 2,000 in memory (twice the
# worker's cache, so the evicted/cached latencies still mean something), which keeps `make bench` under 10 minutes.
FULL = {"bookings": 250, "lifecycles": 30, "trips": 50, "reads": 2000, "scale_serials": 100_000, "parked": 10_000, "parked_memory": 2_000}
QUICK = {"bookings": 60, "lifecycles": 5, "trips": 20, "reads": 300, "scale_serials": 10_000, "parked": 500, "parked_memory": 500}


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - _STARTED:5.0f}s] {message}", flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000 if ordered else float("nan")


async def gather_limited(n: int, concurrency: int, make, progress: str | None = None, every: int = 1000):
    """Run make(0..n-1), at most `concurrency` at once: (results, latencies, seconds). With `progress`, a line every `every` done."""
    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    started = time.perf_counter()

    async def one(i):
        async with semaphore:
            began = time.perf_counter()
            result = await make(i)
            latencies.append(time.perf_counter() - began)
            if progress and len(latencies) % every == 0:
                elapsed = time.perf_counter() - started
                log(f"  {progress}: {len(latencies)}/{n} in {elapsed:.0f}s ({len(latencies) / elapsed:.1f}/s)")
            return result

    results = await asyncio.gather(*(one(i) for i in range(n)))
    return results, latencies, time.perf_counter() - started


async def settle(stack: Stack, quiet_cores: float = 0.1, quiet_for: float = 1.0, interval: float = 0.25, timeout: float = 60, label: str = "") -> float:
    """Wait until server, worker and API are idle (each under `quiet_cores` of CPU for `quiet_for` s); the seconds waited.

    Booking answers before a worker has run the deal's first task, so after many bookings this is the worker draining
    its backlog. With a `label`, a line every 30 s while it waits.
    """
    started = time.monotonic()
    last, quiet, next_line = stack.cpu(), 0.0, 30.0
    while time.monotonic() - started < timeout:
        await asyncio.sleep(interval)
        now = stack.cpu()
        busy = {name: (now[name] - last[name]) / interval for name in now}
        last = now
        quiet = quiet + interval if max(busy.values()) < quiet_cores else 0.0
        if quiet >= quiet_for:
            return time.monotonic() - started
        if label and time.monotonic() - started >= next_line:
            log(f"  {label}: still busy after {next_line:.0f}s (" + ", ".join(f"{n} {b:.1f}" for n, b in busy.items()) + " cores)")
            next_line += 30
    log(f"  warning: not idle after {timeout:.0f}s{f' ({label})' if label else ''}; going on")
    return time.monotonic() - started


def own_cpu_seconds() -> float:
    """This process's CPU: the load generator's, charged to the path it drives."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def unique_serial(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


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


async def certify(http: LoadClient) -> None:
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


async def complete_deal(http: LoadClient, index: int) -> str:
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


async def history_stats(client, workflow_id: str, missing_ok: bool = False) -> tuple[int, int]:
    """(events, largest event in bytes) of a workflow's history; (0, 0) for a missing one if `missing_ok`."""
    from temporalio.service import RPCError, RPCStatusCode

    try:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
    except RPCError as error:
        if missing_ok and error.status == RPCStatusCode.NOT_FOUND:
            return 0, 0
        raise
    largest = 0
    for event in history.events:
        largest = max(largest, event.ByteSize())
    return len(history.events), largest


async def booking_rounds(client, settings, http, stack, n: int) -> dict:
    """(1) Raw SDK starts, API bookings and service-layer bookings, side by side on equal terms.

    Each batch is `n` calls with concurrency 32 and starts on an idle stack: after the SDK starts the
    raw workflows are awaited to completion, and after every batch server, worker and API settle.
    A warm-up round, then BOOKING_ROUNDS rounds, the order rotated each round. Efficiency: the median
    over rounds of that round's API rate / SDK rate. Rates: medians. Latencies: p50 / p99 over the
    counted rounds. CPU per call, by process (this process is the load generator), their mean.
    """
    from domain.models import BookingRequest
    from service import deals as service

    async def sdk(i):
        return await client.start_workflow(RawTwoActivityWorkflow.run, i, id=f"raw-start-{uuid.uuid4().hex}", task_queue=settings.task_queue)

    async def api(i):
        r = await http.post("/v1/deals", json=booking_body())
        assert r.status_code == 201, r.text[:300]

    async def direct(i):
        await service.book_deal(client, settings, BookingRequest.model_validate(booking_body()))

    paths = {"sdk": sdk, "api": api, "service": direct}
    rates: dict[str, list[float]] = {name: [] for name in paths}
    latencies: dict[str, list[float]] = {name: [] for name in paths}
    cpu_ms: dict[str, dict[str, float]] = {name: {} for name in paths}
    order = list(paths)
    for round_no in range(BOOKING_ROUNDS + 1):  # round 0 warms every path up (a fresh server is the fastest) and is not counted
        for name in order:
            await settle(stack, label=f"before {name} round {round_no}")
            calls = n if round_no else max(1, n // 3)
            before, own_before = stack.cpu(), own_cpu_seconds()
            results, lat, seconds = await gather_limited(calls, 32, paths[name])
            after, own_after = stack.cpu(), own_cpu_seconds()
            if name == "sdk":
                await asyncio.gather(*(h.result() for h in results))  # the raw workflows' tasks and activities are done
            spent = {process: after[process] - before[process] for process in after} | {"load": own_after - own_before}
            log(f"  round {round_no or 'warm-up'} {name}: {calls / seconds:.1f}/s, CPU ms per call " + ", ".join(f"{p} {c * 1000 / calls:.1f}" for p, c in spent.items()))
            if round_no == 0:
                continue
            rates[name].append(n / seconds)
            latencies[name] += lat
            for process, cpu in spent.items():
                cpu_ms[name][process] = cpu_ms[name].get(process, 0.0) + cpu * 1000 / (n * BOOKING_ROUNDS)
        order = order[1:] + order[:1]  # each path takes each place in the order once: none always follows the heaviest
    out = {}
    for name, key in (("sdk", "sdk_starts"), ("api", "bookings"), ("service", "service_bookings")):
        out[f"{key}_per_s"] = statistics.median(rates[name])
        out[f"{key}_p50_ms"], out[f"{key}_p99_ms"] = pct(latencies[name], 0.5), pct(latencies[name], 0.99)
        out[f"{key}_cpu_ms"] = cpu_ms[name]
    # Each round's paths run back to back on the same server state: the ratio is taken per round, then the median.
    out["booking_efficiency"] = statistics.median(a / s for a, s in zip(rates["api"], rates["sdk"]))
    out["service_efficiency"] = statistics.median(a / s for a, s in zip(rates["service"], rates["sdk"]))
    return out


async def round_trips(client, settings, http, n: int) -> dict:
    """(3) API vs SDK round trips on open deals, interleaved (API, SDK, API, ...) so both see the same history length."""
    from domain.models import PickupRequest, ReceiptItem
    from service import deals as service

    # 1,000 committed units: the pickups and 2n one-item receipts below do not close these deals.
    open_deal = (await http.post("/v1/deals", json=booking_body(1000))).json()["id"]
    receipt_deal = (await http.post("/v1/deals", json=booking_body(1000))).json()["id"]
    pickup_body = {"address": "1 Bench St", "contact_name": "B", "contact_phone": "+1 555 0100", "ready_on": "2026-12-01", "expected_units": 1}
    r = await http.post(f"/v1/deals/{open_deal}/pickups", json=pickup_body)
    assert r.status_code == 201, r.text[:300]
    tracking = r.json()["tracking_number"]

    async def api_update():
        r = await http.post(f"/v1/deals/{open_deal}/pickups", json=pickup_body)
        assert r.status_code == 201, r.text[:300]

    async def sdk_update():
        await service.request_pickup(client, open_deal, PickupRequest(**pickup_body))

    async def api_signal():
        raw, headers = signed({"event_id": f"trip-{uuid.uuid4().hex}", "tracking_number": tracking, "status": "in_transit", "occurred_at": datetime.now(timezone.utc).isoformat()})
        r = await http.post("/v1/carrier-events", content=raw, headers=headers)
        assert r.status_code == 202, r.text[:300]

    async def sdk_signal():
        await service.deal_handle(client, open_deal).signal("pickup_status", args=["none", "noop"])

    def receipt_item() -> dict:
        return {"product_id": "C9300-48P", "serial_number": unique_serial("RT"), "condition": "working", "age_years": 2}

    async def api_receipt():
        r = await http.post(f"/v1/deals/{receipt_deal}/receipts", json={"items": [receipt_item()]})
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text[:300]

    async def sdk_receipt():
        result = await service.record_receipt(client, settings, receipt_deal, [ReceiptItem(**receipt_item())])
        assert result["accepted"] == 1, result

    async def api_query():
        r = await http.get(f"/v1/deals/{open_deal}")
        assert r.status_code == 200, r.text[:300]

    async def sdk_query():
        await service.deal_handle(client, open_deal).query("view")

    out = {}
    for name, api_call, sdk_call in (
        ("update", api_update, sdk_update),
        ("signal", api_signal, sdk_signal),
        ("receipt", api_receipt, sdk_receipt),
        ("query", api_query, sdk_query),
    ):
        await api_call()  # warm-up, not timed
        await sdk_call()
        times: dict[str, list[float]] = {"api": [], "sdk": []}
        for _ in range(n):
            for side, call in (("api", api_call), ("sdk", sdk_call)):
                started = time.perf_counter()
                await call()
                times[side].append(time.perf_counter() - started)
        for side, values in times.items():
            out[f"{side}_{name}_p50_ms"], out[f"{side}_{name}_p99_ms"] = pct(values, 0.5), pct(values, 0.99)
    return out


async def bench_backend(file_backed: bool, args, backend: str) -> dict:
    log(f"{backend}: starting dev server, worker and API")
    started = time.monotonic()
    stack = Stack(file_backed=file_backed, env_overrides={"TAKEBACK_CARRIER_WEBHOOK_SECRET": WEBHOOK_SECRET, "TAKEBACK_SIM_CARRIER_STEP": "0s"}).start()
    trivial = None
    out: dict = {}
    try:
        trivial_port = free_port()
        trivial = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.trivial_app:app", "--port", str(trivial_port), "--log-level", "warning"], cwd=ROOT)
        wait_port(trivial_port, trivial)
        from settings import Settings
        from temporal_client import connect

        # The stack's SQLite file, the API's settings: service-layer calls from here see what the API sees.
        settings = Settings(temporal_address=f"127.0.0.1:{stack.temporal_port}", data_dir=stack.data_dir, database_url="", carrier_webhook_secret=WEBHOOK_SECRET, sim_carrier_step="0s")
        client = await connect(settings)
        key = ops_key(stack)
        async with LoadClient(stack.api_url, headers={"Authorization": f"Bearer {key}"}) as http:
            await certify(http)
            await complete_deal(http, -1)  # warm-up

            log(f"{backend}: (1) booking, {BOOKING_ROUNDS} rounds of {args.bookings} SDK starts / API bookings / service bookings")
            out.update(await booking_rounds(client, settings, http, stack, args.bookings))

            log(f"{backend}: (2) lifecycle cost, {args.lifecycles * 3} raw workflows then {args.lifecycles} complete deals")
            await settle(stack)
            before = stack.cpu()
            handles = await asyncio.gather(*(client.start_workflow(RawTwoActivityWorkflow.run, i, id=f"raw-{uuid.uuid4().hex}", task_queue=settings.task_queue) for i in range(args.lifecycles * 3)))
            await asyncio.gather(*(h.result() for h in handles))
            await settle(stack)
            mid = stack.cpu()
            deal_ids, _, _ = await gather_limited(args.lifecycles, 8, lambda i: complete_deal(http, i))
            await wait_closed(client, deal_ids)
            await settle(stack)
            after = stack.cpu()
            raw_server = (mid["server"] - before["server"]) / (args.lifecycles * 3)
            deal_server = (after["server"] - mid["server"]) / args.lifecycles
            out["raw_server_cpu_ms"], out["deal_server_cpu_ms"] = raw_server * 1000, deal_server * 1000
            out["raw_worker_cpu_ms"] = (mid["worker"] - before["worker"]) / (args.lifecycles * 3) * 1000
            out["deal_worker_cpu_ms"] = (after["worker"] - mid["worker"]) / args.lifecycles * 1000
            out["deal_api_cpu_ms"] = (after["api"] - mid["api"]) / args.lifecycles * 1000
            deal_events, _ = await history_stats(client, f"deal-{deal_ids[0]}")
            view = (await http.get(f"/v1/deals/{deal_ids[0]}")).json()
            # A pickup has a workflow of its own only when the simulated carrier runs: count it if it exists.
            pickup_events = sum([(await history_stats(client, f"pickup-{p['tracking_number']}", missing_ok=True))[0] for p in view["pickups"]])
            out["deal_history_events"], out["pickup_history_events"] = deal_events, pickup_events
            out["history_events_per_deal"] = deal_events + pickup_events

            log(f"{backend}: (3) round trips, {args.trips} each API and SDK")
            await settle(stack)
            out.update(await round_trips(client, settings, http, args.trips))

            log(f"{backend}: (4) one deal with {args.scale_serials:,} committed serials")
            await settle(stack)
            out.update(await scale_of_one_deal(client, settings, http, stack, args.scale_serials))

            log(f"{backend}: (6) read path, {args.reads} reads with 32 clients")
            await settle(stack)

            async def rps(url_for, n):
                _, _, seconds = await gather_limited(n, 32, lambda i: http.get(url_for(i)))
                return n / seconds

            out["get_deal_rps"] = await rps(lambda i: f"/v1/deals/{deal_ids[i % len(deal_ids)]}", args.reads)
            out["list_deals_rps"] = await rps(lambda i: "/v1/deals?limit=100", args.reads // 2)
            async with LoadClient(f"http://127.0.0.1:{trivial_port}") as plain:
                _, _, seconds = await gather_limited(args.reads, 32, lambda i: plain.get("/ping"))
            out["trivial_rps"] = args.reads / seconds

            parked = args.parked if file_backed else args.parked_memory
            log(f"{backend}: (5) {parked:,} parked deals through the API, concurrency 32")
            await settle(stack)
            out.update(await parked_deals(client, http, stack, parked))
    except Exception as error:  # keep what was measured: the table shows n/a for the rest, and the run exits 1
        import traceback

        traceback.print_exc()
        out["error"] = f"{type(error).__name__}: {str(error)[:200]}"
        log(f"{backend}: FAILED: {out['error']}")
    finally:
        if trivial is not None:
            trivial.terminate()
            trivial.wait(timeout=15)
        stack.stop()
    out["wall_s"] = time.monotonic() - started
    log(f"{backend}: done in {out['wall_s']:.0f}s")
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


async def parked_deals(client, http, stack, count: int, samples: int = 10) -> dict:
    """(5) `count` open deals waiting on their windows; a signal to the oldest (evicted) vs the newest (cached)."""
    from temporalio.service import RPCError

    from service.deals import deal_handle

    async def book(i):
        r = await http.post("/v1/deals", json=booking_body(5))
        assert r.status_code == 201, r.text[:300]
        return r.json()["id"]

    deal_ids, _, seconds = await gather_limited(count, 32, book, progress="parked deals booked", every=1000 if count >= 2000 else 100)
    # Booking does not wait for the worker: let it run every parked deal's first task before measuring anything.
    drain = await settle(stack, timeout=900, label="worker running the parked deals' first tasks")
    log(f"  idle {drain:.0f}s after the last booking")
    if count <= WORKFLOW_CACHE:
        log(f"  note: {count} parked deals do not exceed the worker's {WORKFLOW_CACHE}-entry cache: the oldest may still be cached")
    # The cache is LRU: the `samples` oldest parked deals have left it, the `samples` newest are in it. Each deal is
    # signalled once (a signal to an evicted deal brings it back), old and new interleaved. "ack" is the signal RPC
    # (the server stored it); "processed" is the signal then a query, which the server answers only after the worker
    # has handled the signal's workflow task: for an evicted deal that includes fetching and replaying its history.
    samples = max(1, min(samples, count // 2))
    timings = {"evicted_ack": [], "evicted_processed": [], "cached_ack": [], "cached_processed": []}
    failures = []
    for old, new in zip(deal_ids[:samples], deal_ids[-samples:]):
        for target, kind in ((old, "evicted"), (new, "cached")):
            handle = deal_handle(client, target)
            began = time.perf_counter()
            try:
                await handle.signal("pickup_status", args=["none", "noop"])
                acked = time.perf_counter()
                await handle.query("view")
            except RPCError as error:  # counted and shown, not fatal: the rest of the table still prints
                failures.append(f"{kind} {target}: {error}")
                continue
            timings[f"{kind}_ack"].append(acked - began)
            timings[f"{kind}_processed"].append(time.perf_counter() - began)
    for failure in failures:
        log(f"  signal/query failed: {failure}")
    out = {
        "parked_deals": count, "parked_bookings_per_s": count / seconds, "parked_drain_s": drain, "parked_end_to_end_per_s": count / (seconds + drain), "parked_signal_failures": len(failures),
        "parked_worker_rss_mb": rss_mb(stack.processes["worker"].pid, peak=False), "parked_db_mb": stack.db_size_mb(),
    }
    for name, values in timings.items():
        out[f"signal_{name}_p50_ms"] = pct(values, 0.5)
    return out


def table(results: dict[str, dict]) -> str:
    def trip(name: str, digits: int = 1):
        return lambda r: f"{r[f'api_{name}_p50_ms']:.{digits}f}/{r[f'api_{name}_p99_ms']:.{digits}f} | {r[f'sdk_{name}_p50_ms']:.{digits}f}/{r[f'sdk_{name}_p99_ms']:.{digits}f}"

    def cpu_split(key: str):
        def cell(r):
            cpu = r[f"{key}_cpu_ms"]
            return "/".join(f"{cpu[p]:.1f}" for p in ("server", "worker", "api", "load") if p != "api" or key == "bookings")
        return cell

    rows = [
        (f"booking efficiency (API / SDK, median of {BOOKING_ROUNDS} rounds)", lambda r: r["booking_efficiency"], ">= 0.9"),
        ("  service layer, no HTTP (deals/s / SDK starts/s)", lambda r: r["service_efficiency"], ""),
        ("  deals/s API / service / SDK starts/s (median)", lambda r: f"{r['bookings_per_s']:.0f} / {r['service_bookings_per_s']:.0f} / {r['sdk_starts_per_s']:.0f}", ""),
        ("  booking p50 / p99 ms API", lambda r: f"{r['bookings_p50_ms']:.0f} / {r['bookings_p99_ms']:.0f}", ""),
        ("  booking p50 / p99 ms service layer", lambda r: f"{r['service_bookings_p50_ms']:.0f} / {r['service_bookings_p99_ms']:.0f}", ""),
        ("  SDK start p50 / p99 ms", lambda r: f"{r['sdk_starts_p50_ms']:.0f} / {r['sdk_starts_p99_ms']:.0f}", ""),
        ("  CPU ms per API booking: server/worker/API/load", cpu_split("bookings"), ""),
        ("  CPU ms per SDK start: server/worker/load", cpu_split("sdk_starts"), ""),
        ("lifecycle cost (server CPU deal / raw 2-activity wf)", lambda r: r["deal_server_cpu_ms"] / r["raw_server_cpu_ms"], "<= 3"),
        ("  server CPU ms per deal / per raw wf", lambda r: f"{r['deal_server_cpu_ms']:.0f} / {r['raw_server_cpu_ms']:.0f}", ""),
        ("  worker CPU ms per deal / per raw wf", lambda r: f"{r['deal_worker_cpu_ms']:.0f} / {r['raw_worker_cpu_ms']:.0f}", ""),
        ("  API CPU ms per deal", lambda r: r["deal_api_cpu_ms"], ""),
        ("  history events per deal (deal + pickup)", lambda r: r["history_events_per_deal"], "<= 60"),
        ("  history events deal / pickup workflow", lambda r: f"{r['deal_history_events']} / {r['pickup_history_events']}", ""),
        ("update (pickup) round trip API / SDK (p50)", lambda r: r["api_update_p50_ms"] / r["sdk_update_p50_ms"], ""),
        ("  update p50/p99 ms API | SDK", trip("update", 0), ""),
        ("receipt (1 item) round trip API / SDK (p50)", lambda r: r["api_receipt_p50_ms"] / r["sdk_receipt_p50_ms"], ""),
        ("  receipt p50/p99 ms API | SDK", trip("receipt", 0), ""),
        ("carrier event API / deal signal SDK (p50)", lambda r: r["api_signal_p50_ms"] / r["sdk_signal_p50_ms"], ""),
        ("  carrier event | deal signal p50/p99 ms", trip("signal"), ""),
        ("query round trip API / SDK (p50)", lambda r: r["api_query_p50_ms"] / r["sdk_query_p50_ms"], ""),
        ("  query p50/p99 ms API | SDK", trip("query"), ""),
        ("one deal: committed serials", lambda r: r["scale_serials"], ""),
        ("  history events", lambda r: r["scale_history_events"], "< 2000"),
        ("  largest history payload KB", lambda r: r["scale_largest_payload_kb"], "< 256"),
        ("  receipt ingestion items/s (API)", lambda r: r["scale_items_per_s"], ">= 5000"),
        ("  worker peak RSS MB", lambda r: r["worker_peak_rss_mb"], ""),
        ("parked open deals", lambda r: r["parked_deals"], ""),
        ("  booked deals/s (API, concurrency 32)", lambda r: r["parked_bookings_per_s"], ""),
        ("  s until idle after the last booking", lambda r: r["parked_drain_s"], ""),
        ("  end to end deals/s (booked and first task run)", lambda r: r["parked_end_to_end_per_s"], ""),
        ("  worker RSS MB / server DB MB", lambda r: f"{r['parked_worker_rss_mb']:.0f} / {r['parked_db_mb']:.1f}", ""),
        ("  signal ack p50 ms evicted / cached", lambda r: f"{r['signal_evicted_ack_p50_ms']:.1f} / {r['signal_cached_ack_p50_ms']:.1f}", ""),
        ("  signal processed p50 ms evicted / cached", lambda r: f"{r['signal_evicted_processed_p50_ms']:.1f} / {r['signal_cached_processed_p50_ms']:.1f}", ""),
        ("  signal + query failures", lambda r: r["parked_signal_failures"], "0"),
        ("read path GET deal rps / trivial rps", lambda r: r["get_deal_rps"] / r["trivial_rps"], ""),
        ("read path GET list(100) rps / trivial rps", lambda r: r["list_deals_rps"] / r["trivial_rps"], ""),
        ("  GET deal / list / trivial rps", lambda r: f"{r['get_deal_rps']:.0f} / {r['list_deals_rps']:.0f} / {r['trivial_rps']:.0f}", ""),
        ("wall time s", lambda r: f"{r['wall_s']:.0f}", ""),
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
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--bookings", type=int, help=f"per round and path (default {FULL['bookings']})")
    parser.add_argument("--lifecycles", type=int, help=f"complete deals (default {FULL['lifecycles']})")
    parser.add_argument("--trips", type=int, help=f"round trips per operation and side (default {FULL['trips']})")
    parser.add_argument("--reads", type=int, help=f"GET requests (default {FULL['reads']})")
    parser.add_argument("--scale-serials", type=int, help=f"committed serials of the one big deal (default {FULL['scale_serials']})")
    parser.add_argument("--parked", type=int, help=f"open deals left waiting on the file-backed server (default {FULL['parked']})")
    parser.add_argument("--parked-memory", type=int, help=f"open deals left waiting on the in-memory server (default {FULL['parked_memory']})")
    parser.add_argument("--backends", default="memory,file")
    args = parser.parse_args()
    for name, value in (QUICK if args.quick else FULL).items():  # explicit flags win over --quick
        if getattr(args, name) is None:
            setattr(args, name, value)
    log("sizes: " + ", ".join(f"{name}={getattr(args, name)}" for name in FULL) + f", backends={args.backends}")
    results = {}
    for backend in args.backends.split(","):
        results[f"{backend} dev server"] = asyncio.run(bench_backend(backend == "file", args, backend))
    print()
    print(table(results))
    print(f"\ntotal {time.monotonic() - _STARTED:.0f}s", flush=True)
    failed = {name: r["error"] for name, r in results.items() if "error" in r}
    for name, error in failed.items():
        print(f"{name} FAILED: {error}", file=sys.stderr)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
