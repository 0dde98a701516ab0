"""Receipt round trips while the worker is SIGKILLed and restarted: sticky timeout 5s (before) vs 1s (after).

For each TAKEBACK_STICKY_SCHEDULE_TO_START value, on a stack of its own (in-memory dev server,
API, worker; bench/stack.py): books --deals deals through the API, then for --seconds each deal
gets a one-item receipt (POST /v1/deals/{id}/receipts, a workflow update) every --pause seconds
after the last was answered, while the worker process is SIGKILLed and started again every
--kill-every seconds. A receipt that fails (the API's 30 s deadline, a 5xx) is retried with the
same Idempotency-Key; its time runs from the first attempt to the 200. Prints mean and
p50/p90/p99/max per setting, how the times spread, and the before/after ratios. A third or more
of the receipts come right after a kill, so p50 sits near the edge of the stalls and swings
between runs, and p99 is the third-worst of ~300 receipts: read p90, the mean and the spread.

Open deals are mostly idle, so the deals a killed worker had cached are mostly idle too: their
next update waits on its sticky queue for the setting, then the restarted worker replays them
(the `0.5-3 s` and `3-8 s` columns). A deal whose workflow task or activity the worker held at
the kill waits for that task's own timeout instead (10 s, whatever this setting; `>= 8 s`).
With no pause (every deal always busy) nearly every kill lands on held tasks and both settings
measure the same 10-17 s stalls.

    .venv/bin/python bench/worker_kill_latency.py [--seconds 40] [--kill-every 4] [--deals 16] [--pause 1]

`--first-poll N` measures instead how soon a restarted worker polls: N times, a `takeback worker`
process is started (on a stack of its own, no API) and SIGKILLed once the server lists a poller of
that process on the deals' queue; prints the time from process start to that poll (min, median,
max), with the default settings (simulated carrier, mail to files) and with SendGrid and EasyPost
configured as in production, and `import worker`'s own time (python -X importtime, N times).
"""

import argparse
import asyncio
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.http_load import LoadClient  # noqa: E402
from bench.run import booking_body, certify, ops_key, pct, unique_serial  # noqa: E402
from bench.stack import Stack  # noqa: E402

SETTINGS = (("before", "5s"), ("after", "1s"))
BUCKETS = ((0.0, 0.5, "< 0.5 s"), (0.5, 3.0, "0.5-3 s"), (3.0, 8.0, "3-8 s"), (8.0, float("inf"), ">= 8 s"))
_STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[kill-latency {time.monotonic() - _STARTED:5.0f}s] {message}", flush=True)


class Workers:
    """The stack's worker, replaced by `python -m cli worker` processes that get SIGKILLed."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.kills = 0
        self.log = open(stack.data_dir.parent / f"{stack.data_dir.name}-workers.log", "w")

    def start(self) -> None:
        self.stack.processes["worker"] = subprocess.Popen(
            [sys.executable, "-m", "cli", "worker"], env=self.stack.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log
        )

    def kill(self) -> None:
        worker = self.stack.processes["worker"]
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        self.kills += 1

    async def chaos(self, until: float, every: float) -> None:
        while time.monotonic() + every < until:
            await asyncio.sleep(every)
            self.kill()
            self.start()


async def one_receipt(http: LoadClient, deal_id: str, counts: dict) -> float:
    """A one-item receipt, retried with the same Idempotency-Key until answered; seconds from the first attempt."""
    body = {"items": [{"product_id": "C9300-48P", "serial_number": unique_serial("KL"), "condition": "working", "age_years": 2}]}
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    began = time.monotonic()
    while True:
        try:
            r = await http.post(f"/v1/deals/{deal_id}/receipts", json=body, headers=headers)
            if r.status_code == 200 and r.json()["accepted"] == 1:
                return time.monotonic() - began
            if r.status_code < 500:
                raise RuntimeError(f"receipt answered {r.status_code}: {r.text[:300]}")
            counts[str(r.status_code)] = counts.get(str(r.status_code), 0) + 1
        except (asyncio.TimeoutError, OSError) as error:
            counts[type(error).__name__] = counts.get(type(error).__name__, 0) + 1
        await asyncio.sleep(0.1)


async def receipts(http: LoadClient, deal_id: str, until: float, latencies: list[float], counts: dict, pause: float) -> None:
    """A receipt on one deal every `pause` seconds after the last answer, until `until`."""
    while time.monotonic() < until:
        latencies.append(await one_receipt(http, deal_id, counts))
        await asyncio.sleep(pause)


async def measure(name: str, sticky: str, args) -> dict:
    log(f"{name}: TAKEBACK_STICKY_SCHEDULE_TO_START={sticky}: starting dev server, worker and API")
    stack = Stack(file_backed=False, env_overrides={"TAKEBACK_STICKY_SCHEDULE_TO_START": sticky, "TAKEBACK_SIM_CARRIER_STEP": "0s"}).start()
    workers = Workers(stack)
    try:
        # The stack's first worker is bench.baseline (the product worker): from here on, plain `cli worker`s.
        stack.processes["worker"].terminate()
        stack.processes["worker"].wait()
        workers.start()
        key = ops_key(stack)
        async with LoadClient(stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=35) as http:
            await certify(http)
            deal_ids = []
            for _ in range(args.deals):  # enough units that the receipts below never close a deal
                r = await http.post("/v1/deals", json=booking_body(5000))
                assert r.status_code == 201, r.text[:300]
                deal_ids.append(r.json()["id"])
            await asyncio.gather(*(one_receipt(http, deal_id, {}) for deal_id in deal_ids))  # all cached on the worker
            log(f"{name}: {args.deals} deals cached on the worker; {args.seconds:.0f} s of receipts (one per deal every {args.pause:g} s), a SIGKILL every {args.kill_every:g} s")
            latencies: list[float] = []
            counts: dict[str, int] = {}  # retried attempts by cause
            began = time.monotonic()
            until = began + args.seconds
            await asyncio.gather(workers.chaos(until, args.kill_every), *(receipts(http, deal_id, until, latencies, counts, args.pause) for deal_id in deal_ids))
            elapsed = time.monotonic() - began
    finally:
        stack.stop()
        workers.log.close()
    out = {
        "sticky": sticky,
        "kills": workers.kills,
        "receipts": len(latencies),
        "per_s": len(latencies) / elapsed,
        "retries": sum(counts.values()),
        "retry_causes": counts,
        "mean": sum(latencies) / len(latencies) * 1000,
        "p50": pct(latencies, 0.5),
        "p90": pct(latencies, 0.9),
        "p99": pct(latencies, 0.99),
        "max": max(latencies) * 1000,
        "buckets": [sum(low <= v < high for v in latencies) for low, high, _ in BUCKETS],
    }
    log(f"{name}: {out['receipts']} receipts, {out['kills']} kills, p50 {out['p50']:.0f} ms, p99 {out['p99']:.0f} ms, max {out['max']:.0f} ms, retried {counts or 'none'}")
    return out


def table(results: dict[str, dict]) -> str:
    before, after = results["before"], results["after"]
    rows = [
        ("TAKEBACK_STICKY_SCHEDULE_TO_START", before["sticky"], after["sticky"], ""),
        ("worker SIGKILLs", before["kills"], after["kills"], ""),
        ("receipts answered (receipts/s)", f"{before['receipts']} ({before['per_s']:.1f})", f"{after['receipts']} ({after['per_s']:.1f})",
         f"{after['per_s'] / before['per_s']:.2f}x"),
        ("attempts retried (API error or timeout)", before["retries"], after["retries"], ""),
    ]
    for key in ("mean", "p50", "p90", "p99", "max"):
        rows.append((f"receipt round trip {key} ms", f"{before[key]:.0f}", f"{after[key]:.0f}", f"{before[key] / after[key]:.2f}"))
    for index, (_, _, label) in enumerate(BUCKETS):
        rows.append((f"  receipts answered in {label}", before["buckets"][index], after["buckets"][index], ""))
    lines = [f"{'measure':<44}{'before (5s)':>16}{'after (1s)':>16}{'before/after':>14}"]
    lines += [f"{label:<44}{b!s:>16}{a!s:>16}{ratio:>14}" for label, b, a, ratio in rows]
    return "\n".join(lines)


# A production worker's providers (never called here: nothing is mailed or booked).
WITH_PROVIDERS = {
    "SENDGRID_API_KEY": "SG.bench-never-sent",
    "TAKEBACK_CARRIER": "easypost",
    "EASYPOST_API_KEY": "EZTK-bench-never-called",
    "EASYPOST_WEBHOOK_SECRET": "bench-easypost-webhook-secret-0123456789",
    "TAKEBACK_RETURNS_ADDRESS": '{"street1": "1 Dock St", "city": "Ottawa", "zip": "K1A0B1", "country": "CA"}',
}


async def first_polls(restarts: int, env: dict | None = None) -> list[float]:
    """Seconds from starting a worker process to the server's first sight of its poller, `restarts` times."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
    from temporalio.client import Client

    stack = Stack(file_backed=False, env_overrides={"TAKEBACK_SIM_CARRIER_STEP": "0s", **(env or {})}).start(api=False)
    workers = Workers(stack)
    times = []
    try:
        stack.processes["worker"].terminate()
        stack.processes["worker"].wait()
        client = await Client.connect(stack.env["TEMPORAL_ADDRESS"])
        request = DescribeTaskQueueRequest(namespace="default", task_queue=TaskQueue(name="takeback"), task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW)
        for _ in range(restarts):
            began = time.monotonic()
            workers.start()
            marker = f":{stack.processes['worker'].pid}:"
            while not any(marker in poller.identity for poller in (await client.workflow_service.describe_task_queue(request)).pollers):
                if time.monotonic() - began > 30:
                    raise RuntimeError("the worker did not poll within 30 s")
                await asyncio.sleep(0.01)
            times.append(time.monotonic() - began)
            workers.kill()
            log(f"first poll {times[-1]:.2f} s after the process started")
    finally:
        stack.stop()
        workers.log.close()
    return times


def import_times(count: int) -> list[float]:
    """`import worker`'s cumulative time in seconds, as python -X importtime reports it."""
    found = []
    for _ in range(count):
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import worker"], cwd=ROOT, capture_output=True, text=True, check=True)
        line = next(line for line in done.stderr.splitlines() if line.rstrip().endswith("| worker"))
        found.append(int(line.split("|")[1]) / 1e6)
    return found


def spread(values: list[float]) -> str:
    ordered = sorted(values)
    return f"min {ordered[0]:.2f} s, median {ordered[len(ordered) // 2]:.2f} s, max {ordered[-1]:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40, help="receipts under kills, per setting (default 40)")
    parser.add_argument("--kill-every", type=float, default=4, help="seconds between worker SIGKILLs (default 4)")
    parser.add_argument("--deals", type=int, default=16, help="deals receiving receipts, one client each (default 16)")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds a deal's client waits between receipts (default 1)")
    parser.add_argument("--first-poll", type=int, metavar="N", help="measure N worker starts: process start to first poll, and `import worker`")
    args = parser.parse_args()
    if args.first_poll:
        plain = asyncio.run(first_polls(args.first_poll))
        providers = asyncio.run(first_polls(args.first_poll, WITH_PROVIDERS))
        print(f"\nprocess start to first poll, {len(plain)} starts each:")
        print(f"  default settings (simulated carrier, mail to files): {spread(plain)}")
        print(f"  SendGrid and EasyPost configured:                    {spread(providers)}")
        print(f"import worker ({args.first_poll} runs): {spread(import_times(args.first_poll))}", flush=True)
        return
    results = {name: asyncio.run(measure(name, sticky, args)) for name, sticky in SETTINGS}
    print()
    print(table(results))
    print(f"\ntotal {time.monotonic() - _STARTED:.0f}s", flush=True)


if __name__ == "__main__":
    main()
