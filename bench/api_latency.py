"""API latency: booking and GET /v1/deals/{id}, over HTTP, on a stack of its own.

Starts an in-memory Temporal dev server, a worker (`python -m cli worker`) and the API
(`python -m cli api`, uvicorn) on free ports with a throwaway data directory, registers and
certifies a partner through the API, then books N deals (with C in flight at once) and GETs
each of them R times. Prints p50/p99/max per operation. Everything it started is stopped.

    .venv/bin/python bench/api_latency.py [--deals 200] [--concurrency 8] [--gets 5]
"""

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PARTNER = "LATENCY-PARTNER"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with {process.returncode} before opening port {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"{name} did not open port {port} within {timeout:.0f}s")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))  # ceil(q * n)
    return ordered[rank - 1] * 1000


class Stack:
    def __init__(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="takeback-latency-"))
        self.temporal_port, self.api_port = free_port(), free_port()
        self.env = dict(os.environ, TAKEBACK_DATA_DIR=str(self.data_dir), TEMPORAL_ADDRESS=f"127.0.0.1:{self.temporal_port}",
                        TAKEBACK_TASK_QUEUE="latency", PYTHONPATH=str(ROOT), TAKEBACK_ENV="test")
        self.env.pop("TAKEBACK_DATABASE_URL", None)
        self.processes: list[tuple[str, subprocess.Popen]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> "Stack":
        temporal = str(BIN / "temporal") if (BIN / "temporal").exists() else shutil.which("temporal")
        if not temporal:
            raise SystemExit("the `temporal` CLI is missing (make install puts it in .venv/bin)")
        server = subprocess.Popen([temporal, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(self.temporal_port), "--log-level", "error"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(("temporal dev server", server))
        wait_port(self.temporal_port, server, "temporal dev server")
        self.processes.append(("worker", subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=self.env, cwd=ROOT)))
        api = subprocess.Popen([sys.executable, "-m", "cli", "api", "--port", str(self.api_port)], env=self.env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(("api", api))
        wait_port(self.api_port, api, "api")
        return self

    def ops_key(self) -> str:
        out = subprocess.run([sys.executable, "-m", "cli", "apikey", "create", "--role", "ops", "--data-dir", str(self.data_dir)],
                             env=self.env, cwd=ROOT, capture_output=True, text=True, check=True)
        return out.stdout.strip().splitlines()[-1]

    def stop(self) -> None:
        for name, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    print(f"{name} did not stop in 20 s; killing it", file=sys.stderr)
                    process.kill()
                    process.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def booking(n: int) -> dict:
    return {
        "partner_id": PARTNER,
        "customer": {"name": f"Customer {n}", "country": "CA"},
        "opportunity": "refresh",
        "new_products_value": "100000.00",
        "incentive_rate": "0.05",
        "equipment": [{"product_id": "C9300-48P", "quantity": 10, "serial_numbers": [f"LAT-{n}-{i}" for i in range(10)]}],
    }


async def certify(http: httpx.AsyncClient, ops: dict) -> None:
    r = await http.post("/v1/partners", json={"id": PARTNER, "name": "Latency Partner", "contact_email": "lat@partner.example", "country": "CA"}, headers=ops)
    r.raise_for_status()
    for path, body in (("trainings", {"person_email": "ana@p.example", "person_name": "Ana", "hours": 6}), ("exams", {"exam": 1, "passed": True}),
                       ("exams", {"exam": 2, "passed": True}), ("pledge", None)):
        (await http.post(f"/v1/partners/{PARTNER}/{path}", json=body, headers=ops)).raise_for_status()
    for _ in range(100):  # booking reads the certification from the store projection
        probe = await http.post("/v1/deals", json={**booking(-1), "equipment": [{"product_id": "C9300-48P", "quantity": 1}]}, headers=ops)
        if probe.status_code == 201:
            return
        await asyncio.sleep(0.1)
    raise SystemExit(f"partner never became bookable: {probe.text}")


async def timed_all(jobs, concurrency: int) -> tuple[list[float], list[httpx.Response]]:
    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(job):
        async with semaphore:
            started = time.perf_counter()
            response = await job()
            latencies.append(time.perf_counter() - started)
            if response.status_code >= 400:
                raise SystemExit(f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}")
            return response

    return latencies, await asyncio.gather(*(one(job) for job in jobs))


def report(name: str, latencies: list[float], wall: float) -> None:
    print(f"{name:<24} n={len(latencies):<5} p50 {percentile(latencies, 0.50):7.1f} ms   p99 {percentile(latencies, 0.99):7.1f} ms"
          f"   max {max(latencies) * 1000:7.1f} ms   mean {statistics.fmean(latencies) * 1000:6.1f} ms   {len(latencies) / wall:6.1f}/s")


async def measure(stack: Stack, deals: int, concurrency: int, gets: int) -> None:
    ops = {"Authorization": f"Bearer {stack.ops_key()}"}
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=stack.url, timeout=60, limits=limits) as http:
        await certify(http, ops)
        for n in range(5):  # warm-up: connections, caches, first workflow tasks
            (await http.get("/healthz")).raise_for_status()
        started = time.perf_counter()
        book_latencies, responses = await timed_all([lambda n=n: http.post("/v1/deals", json=booking(n), headers=ops) for n in range(deals)], concurrency)
        book_wall = time.perf_counter() - started
        ids = [r.json()["id"] for r in responses]
        started = time.perf_counter()
        get_latencies, _ = await timed_all([lambda deal_id=deal_id: http.get(f"/v1/deals/{deal_id}", headers=ops) for _ in range(gets) for deal_id in ids], concurrency)
        get_wall = time.perf_counter() - started
        started = time.perf_counter()
        list_latencies, _ = await timed_all([lambda: http.get("/v1/deals?limit=50", headers=ops) for _ in range(max(20, deals // 5))], concurrency)
        list_wall = time.perf_counter() - started
    print(f"\ntakeback API latency: {deals} deals booked, {concurrency} requests in flight, {gets} GETs per deal (SQLite, in-memory dev server)")
    report("POST /v1/deals", book_latencies, book_wall)
    report("GET /v1/deals/{id}", get_latencies, get_wall)
    report("GET /v1/deals?limit=50", list_latencies, list_wall)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deals", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--gets", type=int, default=5, help="GETs of each booked deal")
    args = parser.parse_args()
    stack = Stack()
    try:
        stack.start()
        asyncio.run(measure(stack, args.deals, args.concurrency, args.gets))
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
