"""Booking through the API against raw SDK starts, at the concurrencies partners post at, on each store.

Issue 15's grid: for each store (SQLite, PostgreSQL), one file-backed dev server, the product worker and
one API process; at concurrency 1, 8 and 32, bookings that list no serials and bookings that list 3. Each
cell runs rounds of `n` raw SDK starts (the engine's own pace: `client.start_workflow` of a two-activity
workflow from this process) and `n` API bookings (POST /v1/deals, aiohttp), alternating which goes first,
each batch on a settled stack. Per cell: efficiency (each round's API rate / its SDK rate; median and range
of the rounds), the p50 latency the API adds over an SDK start, and the API process's CPU per booking.
"""

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.baseline import RawTwoActivityWorkflow  # noqa: E402
from bench.http_load import LoadClient  # noqa: E402
from bench.run import booking_body, certify, gather_limited, log, ops_key, own_cpu_seconds, pct, settle, spread  # noqa: E402
from bench.stack import Stack  # noqa: E402

CONCURRENCIES = (1, 8, 32)
SERIALS = (0, 3)
FULL = {"rounds": 2, "calls": {1: 50, 8: 96, 32: 160}}  # 3 rounds of 60/120/192 took 451 s of make bench's 15 minutes
QUICK = {"rounds": 2, "calls": {1: 20, 8: 40, 32: 64}}


def listed_body(serials: int) -> dict:
    body = booking_body(10)
    if serials:
        body["equipment"] = [{"product_id": "C9300-48P", "quantity": serials, "serial_numbers": [f"G-{uuid.uuid4().hex[:20]}" for _ in range(serials)]}]
    return body


async def cell(client, task_queue: str, http: LoadClient, stack: Stack, concurrency: int, serials: int, calls: int, rounds: int) -> dict:
    async def sdk(i):
        return await client.start_workflow(RawTwoActivityWorkflow.run, i, id=f"raw-start-{uuid.uuid4().hex}", task_queue=task_queue)

    async def api(i):
        r = await http.post("/v1/deals", json=listed_body(serials))
        assert r.status_code == 201, r.text[:300]

    sides = {"sdk": sdk, "api": api}
    rates = {name: [] for name in sides}
    latencies = {name: [] for name in sides}
    cpu = {name: {} for name in sides}
    order = list(sides)
    for round_no in range(rounds + 1):  # round 0 warms both sides up and is not counted
        for name in order:
            await settle(stack, quiet_for=0.5, label=f"before {name} c={concurrency}")
            n = calls if round_no else max(concurrency, calls // 4)
            before, own_before = stack.cpu(), own_cpu_seconds()
            results, lat, seconds = await gather_limited(n, concurrency, sides[name])
            after, own_after = stack.cpu(), own_cpu_seconds()
            if name == "sdk":
                await asyncio.gather(*(h.result() for h in results))  # their activities ran before the next batch
            if not round_no:
                continue
            rates[name].append(n / seconds)
            latencies[name] += lat
            spent = {p: after[p] - before[p] for p in after} | {"load": own_after - own_before}
            for process, value in spent.items():
                cpu[name][process] = cpu[name].get(process, 0.0) + value * 1000 / (n * rounds)
        order.reverse()
    ratios = [a / s for a, s in zip(rates["api"], rates["sdk"])]
    out = {
        "efficiency": ratios, "api_rate": rates["api"], "sdk_rate": rates["sdk"],
        "api_p50": pct(latencies["api"], 0.5), "sdk_p50": pct(latencies["sdk"], 0.5),
        "api_p99": pct(latencies["api"], 0.99), "sdk_p99": pct(latencies["sdk"], 0.99),
        "api_cpu": cpu["api"], "sdk_cpu": cpu["sdk"],
    }
    log(
        f"  c={concurrency:<2} serials={serials}: efficiency {spread(ratios)}, API {statistics.median(rates['api']):.0f}/s vs SDK "
        f"{statistics.median(rates['sdk']):.0f}/s, p50 {out['api_p50']:.1f} vs {out['sdk_p50']:.1f} ms, API CPU {cpu['api'].get('api', 0):.2f} ms/booking"
    )
    return out


async def grid_for_store(store: str, database_url: str, args) -> dict:
    from settings import Settings
    from temporal_client import connect

    stack = Stack(file_backed=True, database_url=database_url).start()
    results = {}
    try:
        settings = Settings(temporal_address=f"127.0.0.1:{stack.temporal_port}", data_dir=stack.data_dir, database_url=database_url)
        client = await connect(settings)
        async with LoadClient(stack.api_url, headers={"Authorization": f"Bearer {ops_key(stack)}"}) as http:
            await certify(http)
            for concurrency in args.concurrencies:
                for serials in SERIALS:
                    results[(concurrency, serials)] = await cell(client, settings.task_queue, http, stack, concurrency, serials, args.calls[concurrency], args.rounds)
    finally:
        stack.stop()
    return results


def table(grid: dict[str, dict]) -> str:
    lines = [
        "Booking, API vs raw SDK start, file-backed dev server (x [a-b]: median and range of the rounds)",
        f"{'store':<11}{'conc':>5}{'serials':>8}{'efficiency':>19}{'API/s':>8}{'SDK/s':>8}{'p50 API':>9}{'p50 SDK':>9}{'added':>8}{'p99 API':>9}{'p99 SDK':>9}{'API CPU ms':>11}"
        f"{'server ms API|SDK':>19}{'worker ms API|SDK':>19}{'load ms API|SDK':>17}",
    ]
    for store, cells in grid.items():
        for (concurrency, serials), r in cells.items():
            lines.append(
                f"{store:<11}{concurrency:>5}{serials:>8}{spread(r['efficiency']):>19}{statistics.median(r['api_rate']):>8.0f}{statistics.median(r['sdk_rate']):>8.0f}"
                f"{r['api_p50']:>9.1f}{r['sdk_p50']:>9.1f}{r['api_p50'] - r['sdk_p50']:>8.1f}{r['api_p99']:>9.1f}{r['sdk_p99']:>9.1f}{r['api_cpu'].get('api', 0):>11.2f}"
                + "".join(f"{r['api_cpu'][p]:>{w - 7}.1f} | {r['sdk_cpu'][p]:>4.1f}" for p, w in (("server", 19), ("worker", 19), ("load", 17)))
            )
    worst = min(statistics.median(r["efficiency"]) for cells in grid.values() for r in cells.values())
    added = max(r["api_p50"] - r["sdk_p50"] for cells in grid.values() for r in cells.values())
    cpu = max(r["api_cpu"].get("api", 0) for cells in grid.values() for r in cells.values())
    lines.append("CPU ms per call by process: the API side's server/worker/load against the SDK side's (the load generator is this process)")
    lines.append(f"goals: efficiency >= 0.9 (worst cell {worst:.2f}), p50 added <= 10 ms (worst {added:.1f}), API CPU <= 2 ms a booking (worst {cpu:.2f})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--concurrencies", default=",".join(map(str, CONCURRENCIES)), help="e.g. 32: only those cells")
    args = parser.parse_args()
    args.concurrencies = [int(c) for c in args.concurrencies.split(",")]
    sizes = QUICK if args.quick else FULL
    args.rounds = args.rounds or sizes["rounds"]
    args.calls = sizes["calls"]
    grid = {}
    for store in args.stores.split(","):
        log(f"{store}: booking grid, {args.rounds} rounds per cell, calls per batch {args.calls}")
        if store == "sqlite":
            grid[store] = asyncio.run(grid_for_store(store, "", args))
        else:
            from tests.postgres import throwaway_postgres

            with throwaway_postgres() as url:
                grid[store] = asyncio.run(grid_for_store(store, url, args))
    print()
    print(table(grid), flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
