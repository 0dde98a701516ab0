"""Throughput of 1 vs 2 workers, and of 1 vs 2 API processes, on one dev server with a PostgreSQL store.

One file-backed `temporal server start-dev`, one throwaway PostgreSQL cluster (tests/postgres.py)
and, side by side on them, two deployments that differ only in their task queue:

    1 worker, 1 API     API a1 and worker w1 on queue bench-one
    2 workers, 1 API    API b1 and workers w2, w3 on queue bench-two
    2 workers, 2 APIs   APIs b1 and b2 (requests in turn) and workers w2, w3 on queue bench-two

Every process runs for the whole benchmark (an idle worker only long-polls), so a round measures
each configuration in turn on the same server and store, the order rotated each round. Each
configuration runs two phases, each for --seconds of new requests (then the ones in flight finish):

- bookings: --concurrency callers (16) POST /v1/deals (10 units, no serials) back to back;
  bookings/s is the 201s over the phase's time.
- lifecycles: 2x as many callers (32) each book a deal of 10 units, post a receipt of all 10 and
  wait (the bench's own Temporal client, a long poll, no query) for the deal's workflow to
  complete: decided, settled, projected and certified. Lifecycles/s is those completed over the
  phase's time.

After each phase the processes are left to settle (idle for 0.5 s), so the next one starts on a
quiet machine and the CPU of a phase includes the tails it left (projections, mail). CPU per
operation is per process kind (the server, the workers together, the APIs together, PostgreSQL's
processes, the load generator), from /proc. Prints a line per phase, then the median and range
of the rounds.

    .venv/bin/python bench/workers.py             3 rounds, 4 s + 5 s phases (about 3 minutes)
    .venv/bin/python bench/workers.py --quick     1 round, 2 s + 3 s phases (about 40 s)

On 2 cores (shared by the load generator, the server, PostgreSQL and the processes measured) a
second worker or API process adds no capacity; what this shows is the ceiling, and that two of
each cost no throughput.
"""

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.http_load import LoadClient  # noqa: E402
from bench.stack import cpu_seconds, free_port, wait_port  # noqa: E402
from temporal_client import dev_server_file_args  # noqa: E402

BIN = Path(sys.executable).parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PARTNER = "BENCH-WORKERS"
CONFIGS = {
    "1 worker, 1 API": {"queue": "bench-one", "apis": ["a1"], "workers": ["w1"]},
    "2 workers, 1 API": {"queue": "bench-two", "apis": ["b1"], "workers": ["w2", "w3"]},
    "2 workers, 2 APIs": {"queue": "bench-two", "apis": ["b1", "b2"], "workers": ["w2", "w3"]},
}
_STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[workers {time.monotonic() - _STARTED:5.1f}s] {message}", flush=True)


def spread(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]" if values else "-"


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def postgres_pids(port: int) -> list[int]:
    """The cluster's postmaster and its backends (their CPU is PostgreSQL's)."""
    postmaster = None
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"postgres") and f"-p {port}".encode() in b" ".join(argv):
                postmaster = int(proc.name)
                break
    if postmaster is None:
        return []
    pids = [postmaster]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    pids.append(int(proc.name))
            except (OSError, IndexError, ValueError):
                continue
    return pids


MAX_CONNECTIONS = 300


def raise_max_connections(database_url: str) -> None:
    """Six product processes share the cluster: each opens up to store.db's POOL_SIZE + POOL_OVERFLOW
    (36) connections, which outgrows PostgreSQL's default max_connections of 100 (sized there for 2
    APIs and 2 workers). Sized as a server for six such processes would be; restarted to apply."""
    from sqlalchemy import create_engine, text

    from tests.postgres import _as_postgres_user, postgres_bin

    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        data_dir = connection.execute(text("SHOW data_directory")).scalar_one()
        connection.execute(text(f"ALTER SYSTEM SET max_connections = {MAX_CONNECTIONS}"))
    engine.dispose()
    log_file = str(Path(data_dir).parent / "log")
    subprocess.run(_as_postgres_user([str(postgres_bin() / "pg_ctl"), "-D", data_dir, "-l", log_file, "-w", "-m", "fast", "restart"]),
                   check=True, capture_output=True)


class Connections:
    """The most client connections PostgreSQL held during a phase (sampled every 0.25 s)."""

    def __init__(self, database_url: str):
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        self.engine = create_engine(database_url, poolclass=NullPool)
        self.most = 0

    def sample(self) -> int:
        from sqlalchemy import text

        with self.engine.connect() as connection:
            return connection.execute(text("SELECT count(*) - 1 FROM pg_stat_activity WHERE backend_type = 'client backend'")).scalar_one()

    async def watch(self, done: asyncio.Event) -> None:
        self.most = 0
        while not done.is_set():
            self.most = max(self.most, await asyncio.to_thread(self.sample))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), 0.25)


def cpu_of(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except (OSError, IndexError, ValueError):
        return 0.0


class Deployment:
    """The server, the PostgreSQL store, three APIs and three workers (two task queues), as processes."""

    def __init__(self, database_url: str):
        self.data_dir = Path(tempfile.mkdtemp(prefix="takeback-bench-workers-"))
        self.database_url = database_url
        self.pg_port = int(database_url.rsplit(":", 1)[1].split("/")[0])
        self.temporal_port = free_port()
        self.env = dict(
            os.environ, PYTHONPATH=str(ROOT), TEMPORAL_ADDRESS=f"127.0.0.1:{self.temporal_port}", TAKEBACK_DATA_DIR=str(self.data_dir),
            TAKEBACK_DATABASE_URL=database_url, TAKEBACK_ENV="test", TAKEBACK_SIM_CARRIER_STEP="0s",
        )
        for name in ("TAKEBACK_TASK_QUEUE", "TAKEBACK_WORKER_METRICS_ADDRESS", "TAKEBACK_WORKER_HEALTH_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_API_KEY"):
            self.env.pop(name, None)
        self.processes: dict[str, subprocess.Popen] = {}
        self.urls: dict[str, str] = {}

    def _spawn(self, name: str, command: list[str], env: dict | None = None) -> subprocess.Popen:
        log_file = open(self.data_dir / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(command, env=env or self.env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
        return self.processes[name]

    def start(self) -> "Deployment":
        try:
            temporal = str(BIN / "temporal") if (BIN / "temporal").exists() else shutil.which("temporal")
            server = self._spawn("server", [temporal, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(self.temporal_port),
                                            *dev_server_file_args(self.data_dir / "temporal.db"), "--log-level", "error"])
            wait_port(self.temporal_port, server)
            # The first API migrates the store; the others start once it has.
            queues = {name: config["queue"] for config in CONFIGS.values() for name in (*config["apis"], *config["workers"])}
            ports = {}
            for index, name in enumerate(n for n in queues if n[0] in "ab"):
                ports[name] = free_port()
                self._spawn(name, [sys.executable, "-m", "cli", "api", "--port", str(ports[name])], self.env | {"TAKEBACK_TASK_QUEUE": queues[name]})
                if index == 0:
                    wait_port(ports[name], self.processes[name])
            for name in (n for n in queues if n[0] == "w"):
                self._spawn(name, [sys.executable, "-m", "cli", "worker"], self.env | {"TAKEBACK_TASK_QUEUE": queues[name]})
            for name, port in ports.items():
                wait_port(port, self.processes[name])
                self.urls[name] = f"http://127.0.0.1:{port}"
            return self
        except BaseException:
            self.stop()
            raise

    def cpu(self) -> dict[str, float]:
        values = {name: cpu_of(p.pid) for name, p in self.processes.items()}
        values["postgres"] = sum(cpu_of(pid) for pid in postgres_pids(self.pg_port))
        values["loadgen"] = own_cpu()
        return values

    def alive(self) -> None:
        dead = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"processes exited: {dead}; logs in {self.data_dir}")

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def settle(deployment: Deployment, quiet_cores: float = 0.1, quiet_for: float = 0.5, interval: float = 0.25, timeout: float = 20) -> None:
    """Until every process (but the load generator) is under `quiet_cores` for `quiet_for` seconds."""
    began, quiet = time.monotonic(), 0.0
    last = deployment.cpu()
    while time.monotonic() - began < timeout:
        await asyncio.sleep(interval)
        now = deployment.cpu()
        busy = max((now[name] - last[name]) / interval for name in now if name != "loadgen")
        last = now
        quiet = quiet + interval if busy < quiet_cores else 0.0
        if quiet >= quiet_for:
            return
    log(f"  not idle after {timeout:.0f} s; going on")


def booking_body(tag: str) -> dict:
    return {
        "partner_id": PARTNER, "customer": {"name": f"Workers {tag}", "country": "CA"}, "opportunity": "refresh",
        "new_products_value": "100000.00", "incentive_rate": "0.05", "equipment": [{"product_id": "C9300-48P", "quantity": 10}],
    }


async def certify(http: LoadClient) -> None:
    r = await http.post("/v1/partners", json={"id": PARTNER, "name": "Bench workers", "contact_email": "bench@example.com", "country": "CA"})
    assert r.status_code in (201, 409), r.text
    for path, body in (("trainings", {"person_email": "b@example.com", "person_name": "B", "hours": 5}), ("exams", {"exam": 1, "passed": True}),
                       ("exams", {"exam": 2, "passed": True}), ("pledge", None)):
        r = await http.post(f"/v1/partners/{PARTNER}/{path}", json=body)
        assert r.status_code in (200, 201), r.text
    for _ in range(100):
        if (await http.get(f"/v1/partners/{PARTNER}")).json()["specialization"]["status"] == "certified":
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("partner never certified")


class Callers:
    """`concurrency` callers doing `one(http)` back to back for `seconds`, spreading calls over the APIs in turn."""

    def __init__(self, clients: list[LoadClient]):
        self.clients, self.turn = clients, 0

    def next(self) -> LoadClient:
        self.turn += 1
        return self.clients[self.turn % len(self.clients)]

    async def run(self, one, seconds: float, concurrency: int) -> tuple[list[float], float, list[str]]:
        """(the latency of each operation done, the phase's seconds until the last one ended, errors)."""
        stop_at = time.monotonic() + seconds
        began = time.monotonic()
        latencies, errors = [], []

        async def caller() -> None:
            while time.monotonic() < stop_at:
                start = time.monotonic()
                try:
                    await one(self.next())
                    latencies.append(time.monotonic() - start)
                except Exception as error:  # counted, shown; the bench goes on
                    errors.append(repr(error)[:200])
                    await asyncio.sleep(0.2)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return latencies, time.monotonic() - began, errors


async def book(http: LoadClient) -> str:
    r = await http.post("/v1/deals", json=booking_body(uuid.uuid4().hex[:8]))
    if r.status_code != 201:
        raise RuntimeError(f"booking answered {r.status_code}: {r.text[:200]}")
    return r.json()["id"]


def lifecycle(client):
    from service.deals import deal_handle

    async def one(http: LoadClient) -> None:
        deal_id = await book(http)
        items = [{"product_id": "C9300-48P", "serial_number": f"{deal_id}-{n}", "condition": "working", "age_years": 2} for n in range(10)]
        r = await http.post(f"/v1/deals/{deal_id}/receipts", json={"items": items})
        if r.status_code != 200:
            raise RuntimeError(f"receipt answered {r.status_code}: {r.text[:200]}")
        view = await deal_handle(client, deal_id).result()
        status = view["status"] if isinstance(view, dict) else view.status
        if str(getattr(status, "value", status)) != "closed":
            raise RuntimeError(f"deal {deal_id} ended {status}")

    return one


KINDS = ("server", "workers", "apis", "postgres", "loadgen")


def by_kind(config: dict, before: dict, after: dict) -> dict[str, float]:
    """CPU seconds per process kind over a phase: only the configuration's own workers and APIs."""
    delta = {name: after[name] - before[name] for name in after}
    return {"server": delta["server"], "workers": sum(delta[w] for w in config["workers"]), "apis": sum(delta[a] for a in config["apis"]),
            "postgres": delta["postgres"], "loadgen": delta["loadgen"],
            "idle others": sum(v for n, v in delta.items() if n[0] in "abw" and n not in config["workers"] and n not in config["apis"])}


async def main_async(args) -> None:
    from settings import Settings
    from temporal_client import connect
    from tests.postgres import throwaway_postgres

    rounds, book_s, life_s = (1, 2.0, 3.0) if args.quick else (args.rounds, args.seconds, args.seconds * 1.25)
    concurrency = {"bookings": args.concurrency, "lifecycles": args.concurrency * 2}  # a lifecycle waits seconds: more in flight to load the stack
    log(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}; {os.cpu_count()} cores")
    with throwaway_postgres() as database_url:
        await asyncio.to_thread(raise_max_connections, database_url)
        connections = Connections(database_url)
        deployment = Deployment(database_url)
        log("starting the dev server, 3 API processes and 3 workers on a PostgreSQL store")
        await asyncio.to_thread(deployment.start)
        clients: dict[str, LoadClient] = {}
        try:
            key = subprocess.run([sys.executable, "-m", "cli", "apikey", "create", "--role", "ops"], env=deployment.env, cwd=ROOT,
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            clients = {name: LoadClient(url, headers={"Authorization": f"Bearer {key}"}, connections=64) for name, url in deployment.urls.items()}
            await certify(clients["a1"])
            temporal = await connect(Settings(temporal_address=f"127.0.0.1:{deployment.temporal_port}"))
            # Warm-up: every API and worker has served deals before anything is measured.
            await asyncio.gather(*(Callers([clients[a] for a in config["apis"]]).run(lifecycle(temporal), 0.5, 4) for config in CONFIGS.values()))
            await settle(deployment)
            log(f"up in {time.monotonic() - _STARTED:.1f} s; {rounds} round(s) of {len(CONFIGS)} configurations, "
                f"bookings {book_s:g} s ({concurrency['bookings']} callers), lifecycles {life_s:g} s ({concurrency['lifecycles']} callers)")
            results = {name: {"bookings": [], "lifecycles": [], "cpu bookings": [], "cpu lifecycles": [], "p50 bookings": [], "p50 lifecycles": [], "errors": []}
                       for name in CONFIGS}
            order = list(CONFIGS)
            for round_no in range(1, rounds + 1):
                for name in order:
                    config = CONFIGS[name]
                    callers = Callers([clients[a] for a in config["apis"]])
                    for phase, one, seconds in (("bookings", book, book_s), ("lifecycles", lifecycle(temporal), life_s)):
                        before = deployment.cpu()
                        phase_done = asyncio.Event()
                        watching = asyncio.create_task(connections.watch(phase_done))
                        latencies, elapsed, errors = await callers.run(one, seconds, concurrency[phase])
                        phase_done.set()
                        await watching
                        done = len(latencies)
                        await settle(deployment)
                        deployment.alive()
                        cpu = by_kind(config, before, deployment.cpu())
                        rate = done / elapsed
                        results[name][phase].append(rate)
                        results[name][f"cpu {phase}"].append({k: v * 1000 / max(done, 1) for k, v in cpu.items()} | {"cores": {k: v / elapsed for k, v in cpu.items()}})
                        results[name]["errors"] += errors
                        p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
                        results[name][f"p50 {phase}"].append(p50)
                        results[name][f"connections {phase}"] = max(results[name].get(f"connections {phase}", 0), connections.most)
                        log(f"round {round_no} {name:18} {phase:10} {done:4d} in {elapsed:4.1f} s = {rate:5.1f}/s, p50 {p50:5.0f} ms, "
                            f"max {max(latencies, default=0) * 1000:5.0f} ms, PostgreSQL connections up to {connections.most}; CPU ms each: "
                            + ", ".join(f"{k} {v * 1000 / max(done, 1):.1f}" for k, v in cpu.items() if k != "idle others")
                            + (f"; {len(errors)} errors, first: {errors[0]}" if errors else ""))
                order = order[1:] + order[:1]
            print(report(results, rounds))
        finally:
            for client in clients.values():
                await client.__aexit__(None, None, None)
            await asyncio.to_thread(deployment.stop)
            shutil.rmtree(deployment.data_dir, ignore_errors=True)
    log(f"done in {time.monotonic() - _STARTED:.0f} s; uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


def report(results: dict, rounds: int) -> str:
    lines = [f"\nThroughput, median [range] of {rounds} round(s) (one dev server, file-backed; PostgreSQL store; {os.cpu_count()} cores)", ""]
    lines.append(f"| {'configuration':18} | {'bookings/s':18} | {'booking p50 ms':18} | {'lifecycles/s':18} | {'lifecycle p50 ms':18} | errors |")
    lines.append(f"|{'-' * 20}|{'-' * 20}|{'-' * 20}|{'-' * 20}|{'-' * 20}|--------|")
    for name, r in results.items():
        lines.append(f"| {name:18} | {spread(r['bookings']):18} | {spread(r['p50 bookings'], 0):18} | {spread(r['lifecycles']):18} | "
                     f"{spread(r['p50 lifecycles'], 0):18} | {len(r['errors']):6d} |")
    lines.append("PostgreSQL client connections, most at once: " + "; ".join(
        f"{name} {r.get('connections bookings', 0)} booking, {r.get('connections lifecycles', 0)} lifecycles" for name, r in results.items())
        + f" (all six product processes hold theirs throughout; max_connections {MAX_CONNECTIONS})")
    for phase in ("bookings", "lifecycles"):
        lines += ["", f"CPU ms per {phase[:-1]} by process kind (median of rounds), and cores busy during the phase"]
        lines.append(f"| {'configuration':18} | " + " | ".join(f"{k:>14}" for k in KINDS) + " |")
        lines.append(f"|{'-' * 20}|" + "|".join("-" * 16 for _ in KINDS) + "|")
        for name, r in results.items():
            cells = []
            for kind in KINDS:
                ms = statistics.median(c[kind] for c in r[f"cpu {phase}"])
                cores = statistics.median(c["cores"][kind] for c in r[f"cpu {phase}"])
                cells.append(f"{ms:6.1f} ({cores:4.2f})")
            lines.append(f"| {name:18} | " + " | ".join(f"{c:>14}" for c in cells) + " |")
    base = results["1 worker, 1 API"]
    for name in list(results)[1:]:
        r = results[name]
        lines.append(f"\n{name} vs 1 worker, 1 API: bookings x{statistics.median(r['bookings']) / statistics.median(base['bookings']):.2f}, "
                     f"lifecycles x{statistics.median(r['lifecycles']) / statistics.median(base['lifecycles']):.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round of short phases, 1 vs 2 workers behind one API (about 35 s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="of new bookings per phase (lifecycles: 1.25x)")
    parser.add_argument("--concurrency", type=int, default=16, help="booking callers (lifecycles: 2x)")
    args = parser.parse_args()
    if args.quick:  # the smoke run compares 1 and 2 workers only: one API process fewer to start and measure
        del CONFIGS["2 workers, 2 APIs"]
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
