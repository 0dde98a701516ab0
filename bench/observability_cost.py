"""What operating it costs (issue 13): booking throughput and p99 with metrics and tracing off and on.

One Temporal dev server; three API + worker pairs beside it, each on its own task queue and store,
all started at once and loaded in turn, round after round (the order rotating), so the three are
measured side by side on the same machine state:

- `off`: the API without its HTTP metrics layer, the worker without a Prometheus endpoint, no traces.
- `metrics`: as shipped: the API's /metrics layer, the worker's SDK endpoint and counters, both
  scraped every 2 s (seven times Prometheus's usual 15 s; the business gauges on every scrape).
- `metrics+traces`: the same, plus OpenTelemetry at 10% (parentbased_traceidratio 0.1), exported
  over OTLP/HTTP to a stand-in collector in this process that counts the spans it receives.

Each round books N deals per pair through its API (C at once), then waits for every process to go
idle: the pair's CPU (API and worker, the deals' first workflow tasks included) per booking is the
steadier measure on a shared machine, throughput and p99 the ones the goals name. Goals: metrics
cost at most 5% of booking throughput, traces at 10% at most 10% (issue 13).

    .venv/bin/python bench/observability_cost.py [--bookings 150] [--rounds 6] [--concurrency 16]
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.http_load import LoadClient  # noqa: E402
from bench.stack import BIN, cpu_seconds, free_port, wait_port  # noqa: E402

PARTNER = "OBS-BENCH"
VARIANTS = ("off", "metrics", "metrics+traces")
SCRAPE_EVERY = 2.0  # seconds


def api_without_http_metrics():
    """The served app with its HTTP metrics layer taken out: the `off` side of the comparison."""
    from api.app import create_served_app
    from api.metrics import HttpMetrics

    app = create_served_app()
    app.user_middleware = [layer for layer in app.user_middleware if layer.cls is not HttpMetrics]
    return app


def serve_api(variant: str, port: int) -> None:
    """`takeback api` as the CLI runs it (limits, log config, traces when OTEL_* asks), with the app of `variant`."""
    import uvicorn

    from api.limits import uvicorn_options
    from observability import tracing
    from observability.logs import api_log_config
    from settings import get_settings

    settings = get_settings()
    tracing.configure(settings, "takeback-api")
    factory = "bench.observability_cost:api_without_http_metrics" if variant == "off" else "api.app:create_served_app"
    uvicorn.run(factory, factory=True, host="127.0.0.1", port=port, log_level="warning", log_config=api_log_config("text"), **uvicorn_options(settings))


class Collector:
    """An OTLP/HTTP trace receiver that counts spans and answers 200."""

    def __init__(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.spans = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.spans += sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Pair:
    """One API and one worker process on a store and task queue of their own."""

    def __init__(self, variant: str, temporal_port: int, data: Path, collector: Collector):
        self.variant = variant
        self.data = data / variant.replace("+", "-")
        self.data.mkdir(parents=True)
        self.api_port, self.metrics_port = free_port(), free_port()
        self.env = dict(
            os.environ, TAKEBACK_ENV="test", TAKEBACK_DATA_DIR=str(self.data), TEMPORAL_ADDRESS=f"127.0.0.1:{temporal_port}",
            TAKEBACK_TASK_QUEUE=f"obs-bench-{self.variant}", PYTHONPATH=str(ROOT), TAKEBACK_CARRIER_WEBHOOK_SECRET="bench-secret",
        )
        for name in ("TAKEBACK_DATABASE_URL", "TAKEBACK_WORKER_METRICS_ADDRESS", "TAKEBACK_WORKER_HEALTH_ADDRESS", "TAKEBACK_LOG_FORMAT"):
            self.env.pop(name, None)
        for name in [name for name in self.env if name.startswith("OTEL_")]:
            self.env.pop(name)
        if variant != "off":
            self.env["TAKEBACK_WORKER_METRICS_ADDRESS"] = f"127.0.0.1:{self.metrics_port}"
        if variant == "metrics+traces":
            self.env.update(OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=collector.url,
                            OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0.1")
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self) -> "Pair":
        self._seed()
        self.processes["worker"] = subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(self.data / "worker.log", "w"))
        self.processes["api"] = subprocess.Popen(
            [sys.executable, "-m", "bench.observability_cost", "--serve-api", self.variant, "--port", str(self.api_port)],
            env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(self.data / "api.log", "w"),
        )
        wait_port(self.api_port, self.processes["api"])
        if self.variant != "off":
            wait_port(self.metrics_port, self.processes["worker"])
        return self

    def _seed(self) -> None:
        """A certified partner and an ops key, straight into this pair's store."""
        from domain.specialization import SpecializationStatus, SpecializationView
        from settings import Settings
        from store import specialization
        from store.api_keys import create_api_key
        from store.db import session_scope
        from store.tables import Partner

        url = Settings(data_dir=self.data, database_url="").effective_database_url
        with session_scope(url) as session:
            session.add(Partner(id=PARTNER, name="Bench", contact_email="bench@example.com", country="CA"))
            session.commit()
            view = SpecializationView(status=SpecializationStatus.certified, training_hours=4, exams_passed=[1, 2], pledge_signed=True)
            specialization.project(session, PARTNER, view.status.value, view.model_dump_json())
            self.key = create_api_key(session, "ops", None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def cpu(self) -> float:
        return sum(cpu_seconds(process.pid) for process in self.processes.values())

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def booking_body() -> dict:
    return {
        "partner_id": PARTNER, "customer": {"name": "Bench Customer", "country": "CA"}, "opportunity": "refresh",
        "new_products_value": "100000.00", "incentive_rate": "0.05", "equipment": [{"product_id": "C9300-48P", "quantity": 10}],
    }


def p99_ms(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[max(0, -(-99 * len(ordered) // 100) - 1)] * 1000


async def scrape_forever(pairs: list[Pair], stop: asyncio.Event) -> int:
    """Prometheus's part: every SCRAPE_EVERY s, each scraped pair's API and worker endpoints."""
    scrapes = 0
    async with LoadClient("http://127.0.0.1") as http:
        while not stop.is_set():
            for pair in pairs:
                for url in (f"{pair.url}/metrics", f"http://127.0.0.1:{pair.metrics_port}/metrics"):
                    reply = await http.get(url)
                    assert reply.status_code == 200, (url, reply.status_code)
                    scrapes += 1
            try:
                await asyncio.wait_for(stop.wait(), SCRAPE_EVERY)
            except TimeoutError:
                pass
    return scrapes


async def book_round(pair: Pair, n: int, concurrency: int) -> tuple[float, list[float]]:
    """(bookings per second, latencies) of n bookings, `concurrency` at once."""
    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    async with LoadClient(pair.url, headers={"Authorization": f"Bearer {pair.key}"}, connections=concurrency) as http:

        async def one():
            async with semaphore:
                began = time.perf_counter()
                reply = await http.post("/v1/deals", json=booking_body())
                latencies.append(time.perf_counter() - began)
                assert reply.status_code == 201, reply.text

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - started), latencies


async def drained(pairs: list[Pair], quiet_cores: float = 0.1, quiet_for: float = 1.0, timeout: float = 60) -> None:
    """Until every process of every pair is idle: a round's worker backlog never meets the next round."""
    started, last, quiet = time.monotonic(), [pair.cpu() for pair in pairs], 0.0
    while time.monotonic() - started < timeout:
        await asyncio.sleep(0.25)
        now = [pair.cpu() for pair in pairs]
        busy = max((b - a) / 0.25 for a, b in zip(last, now))
        last = now
        quiet = quiet + 0.25 if busy < quiet_cores else 0.0
        if quiet >= quiet_for:
            return


async def layer_cost(blocks: int = 7, per_block: int = 3000) -> dict[str, float]:
    """The HTTP layers alone, in this process: microseconds per `GET /livez` through the app (ASGI, no
    socket) without the metrics layer, as shipped, and with a request span sampled at 10% and exported
    in batches. Blocks alternate, so the machine's other load falls on all three alike."""
    import tempfile

    import api.app
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

    from api.metrics import HttpMetrics
    from settings import Settings

    collector = Collector()
    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="takeback-obs-layers-")), rate_per_key=0, rate_per_address=0)
    provider = TracerProvider(sampler=ParentBasedTraceIdRatio(0.1))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=collector.url)))
    apps = {"off": api.app.create_app(settings), "metrics": api.app.create_app(settings)}
    apps["off"].user_middleware = [layer for layer in apps["off"].user_middleware if layer.cls is not HttpMetrics]
    shipped = api.app.TELEMETRY
    api.app.TELEMETRY = {**shipped, "tracer_provider": provider}  # this app alone traces (no global provider)
    try:
        apps["metrics+traces"] = api.app.create_app(settings)
    finally:
        api.app.TELEMETRY = shipped
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http", "path": "/livez", "raw_path": b"/livez",
             "query_string": b"", "root_path": "", "headers": [(b"host", b"bench")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message

    timings: dict[str, list[float]] = {name: [] for name in apps}
    for app in apps.values():
        for _ in range(200):  # warm-up: the middleware stack is built on the first call
            await app(dict(scope), receive, send)
    for _ in range(blocks):
        for name, app in apps.items():
            began = time.perf_counter()
            for _ in range(per_block):
                await app(dict(scope), receive, send)
            timings[name].append((time.perf_counter() - began) / per_block * 1e6)
    provider.shutdown()
    collector.server.shutdown()
    return {name: statistics.median(values) for name, values in timings.items()}


async def run(args) -> None:
    import shutil
    import tempfile

    data = Path(tempfile.mkdtemp(prefix="takeback-obs-bench-"))
    collector = Collector()
    temporal_port = free_port()
    temporal = str(BIN / "temporal") if (BIN / "temporal").exists() else shutil.which("temporal")
    server = subprocess.Popen([temporal, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(temporal_port), "--log-level", "error"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pairs = [Pair(variant, temporal_port, data, collector) for variant in VARIANTS]
    stop = asyncio.Event()
    try:
        wait_port(temporal_port, server)
        for pair in pairs:
            pair.start()
        await asyncio.sleep(1.0)  # the workers start polling
        scraping = asyncio.create_task(scrape_forever([pair for pair in pairs if pair.variant != "off"], stop))
        for pair in pairs:  # warm-up: imports, connections, the first workflow tasks
            await book_round(pair, 30, args.concurrency)
        await drained(pairs)
        rates: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        latencies: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        cpu: dict[str, list[float]] = {variant: [] for variant in VARIANTS}  # API + worker CPU ms per booking, its drain included
        for number in range(args.rounds):
            order = pairs[number % len(pairs):] + pairs[: number % len(pairs)]  # who goes first rotates
            for pair in order:
                before = pair.cpu()
                rate, round_latencies = await book_round(pair, args.bookings, args.concurrency)
                await drained(pairs)
                cpu[pair.variant].append((pair.cpu() - before) * 1000 / args.bookings)
                rates[pair.variant].append(rate)
                latencies[pair.variant] += round_latencies
            print(f"round {number + 1}/{args.rounds}: " + ", ".join(f"{variant} {rates[variant][-1]:.1f}/s" for variant in VARIANTS), flush=True)
        stop.set()
        scrapes = await scraping
    finally:
        stop.set()
        for pair in pairs:
            pair.stop()
        server.terminate()
        server.wait()
        shutil.rmtree(data, ignore_errors=True)

    base_rate, base_p99 = statistics.median(rates["off"]), p99_ms(latencies["off"])
    print(f"\nBooking through the API: {args.rounds} rounds x {args.bookings} bookings per side, {args.concurrency} at once, 2 cores")
    base_cpu = statistics.median(cpu["off"])
    print(f"{'side':<16}{'bookings/s (median [range])':>30}{'cost':>8}{'p99 ms':>9}{'vs off':>8}{'CPU ms/booking':>16}{'cost':>8}")
    for variant in VARIANTS:
        rate, p99, cpu_ms = statistics.median(rates[variant]), p99_ms(latencies[variant]), statistics.median(cpu[variant])
        spread = f"{rate:.1f} [{min(rates[variant]):.1f}-{max(rates[variant]):.1f}]"
        print(f"{variant:<16}{spread:>30}{1 - rate / base_rate:>8.1%}{p99:>9.1f}{p99 / base_p99:>7.2f}x{cpu_ms:>16.1f}{cpu_ms / base_cpu - 1:>8.1%}")
    metrics_cost = 1 - statistics.median(rates["metrics"]) / base_rate
    traces_cost = 1 - statistics.median(rates["metrics+traces"]) / base_rate
    noise = max(max(rates["off"]) / base_rate - 1, 1 - min(rates["off"]) / base_rate)
    print(f"noise: the off side's own rounds lie within {noise:.0%} of its median; smaller differences in throughput are not resolved here")
    print(f"\nscrapes: {scrapes} (every {SCRAPE_EVERY:g} s, API and worker of the two measured sides); spans received by the collector: {collector.spans}")
    print(f"goal: metrics cost at most 5%: {'met' if metrics_cost <= 0.05 else 'MISSED'} ({metrics_cost:.1%}); "
          f"metrics + traces at 10% at most 10%: {'met' if traces_cost <= 0.10 else 'MISSED'} ({traces_cost:.1%})")
    collector.server.shutdown()

    layers = await layer_cost()
    print("\nThe API's HTTP layers alone (GET /livez through the app in-process, median of 7 alternating blocks of 3,000)")
    for variant in VARIANTS:
        extra = layers[variant] - layers["off"]
        print(f"{variant:<16}{layers[variant]:>8.1f} us/request   {extra:>+6.1f} us, {extra / (statistics.median(cpu['off']) * 1000):>6.2%} of a booking's CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bookings", type=int, default=150, help="bookings per side and round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--serve-api", choices=VARIANTS, help=argparse.SUPPRESS)  # a pair's API process
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_api:
        serve_api(args.serve_api, args.port)
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
