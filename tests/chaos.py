"""Chaos run, black box: deals driven over HTTP against separate processes while the worker is
SIGKILLed every few seconds and the Temporal server is restarted once; money and mail are then
checked as users see them (the API's answers and the mail provider's inbox).

    python -m tests.chaos                             full form: 200 deals, 120 s window, SQLite
    python -m tests.chaos --fast                      the form `make test` runs (24 deals, 40 s window)
    python -m tests.chaos --database postgresql       on a throwaway PostgreSQL cluster instead
    python -m tests.chaos --workers 2 --apis 2        several processes (Topology): 2 workers on the task
                                                      queue, 2 APIs taking the requests in turn
    python -m tests.chaos --races                     the race stress run (RACES, RACE_PLANS) instead

Processes: `temporal server start-dev` (file-backed, so it survives its restart), `python -m cli
worker` and `python -m cli api`, configured by the environment only. Mail goes to the real
SendGrid client, pointed at tests/sendgrid_standin.py, which refuses one partner's address (400),
fails one request in 7 (503) and answers one in 11 after the client's 10 s timeout.

Two partners are registered and certified through the API (trainings and exams with an
Idempotency-Key, the pledge). Each deal follows a plan: `met` (>= 80% back, the first receipt
posted again), `short` (a pickup that fails: escalation mail; a serial another deal returns),
`cancel`, `cancel_race` (a cancel and the receipt that would meet the condition sent at once),
`extended` (two concurrent extends, then a receipt after the original deadline) and `late`
(receipts just before and just after the deadline). Every request is retried on 503 (Retry-After
honoured, capped) and on connection errors with the same Idempotency-Key and body; every final
answer is recorded and, once every deal has closed, held against the deals, certificates, the
impact report, the e-mail states, the provider's inbox and the Temporal server: `verify`. Then
the store is held against the answers (`store_checks`: every booked deal there once, its row as
GET shows it, its returned items, one settlement and one terminal ledger row of the amount shown)
and every history against the engine and today's code (`engine_checks`: no workflow task failed,
every history replays).

With several workers (tests/test_topology.py) the kills take them in turn, so a killed worker's
deals move to the other; with several APIs each request goes to the next one, a retry to the one
after, and the race plans send their conflicting calls to different ones on purpose (`via`).
"""

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from temporal_client import dev_server_file_args  # noqa: E402

PRODUCT = "C9300-48P"
UNITS = 10  # committed per deal; 8 required (80%)
PLANS = ("met", "short", "cancel", "cancel_race", "extended", "late")
FINAL = {"closed", "expired", "cancelled"}
GOOD, BOUNCE = "CHAOS-GOOD", "CHAOS-BOUNCE"
CONTACT = {GOOD: "deals@good-partner.example", BOUNCE: "nobody@bounced-partner.example"}
TRAININGS = ({"person_email": "ana@partner.example", "person_name": "Ana", "hours": 6}, {"person_email": "ben@partner.example", "person_name": "Ben", "hours": 5})
CONDITIONS = ("working", "working", "damaged", "dead")

# The provider: one request in 7 answered 503, one in 11 accepted but answered after the client has
# given up (SendGridMailer's socket timeout is 10 s and no setting shortens it), so that message is
# marked failed "outcome unknown" and must never be sent again.
MAIL_FAIL_EVERY, MAIL_SLOW_EVERY, MAIL_SLOW_SECONDS = 7, 11, 11.0

RETRY_AFTER_CAP = 2.0  # seconds: Retry-After is honoured up to this
REQUEST_BUDGET = 120.0  # seconds a request is retried (503, connection errors) before it counts as unanswered
SERVER_ERROR_RETRIES = 2  # a 5xx other than 503 is a failure, counted, and retried this often to go on
STAGED_MARGIN = 1.0  # seconds: a receipt that reached the API this long before the deadline was staged by it
# A message `sending` this long is held by the claim of an attempt whose worker was killed (the claim
# lasts 10 minutes); a live attempt ends within SendGrid's 10 s socket timeout.
STUCK_SENDING = 15.0


@dataclass(frozen=True)
class Form:
    deals: int
    window: int  # seconds: TAKEBACK_RETURN_WINDOW
    kills: int  # worker SIGKILLs
    kill_every: float  # seconds between them (x 0.7-1.3)
    concurrency: int  # requests in flight per partner
    booking_spread: float  # seconds over which the deals are booked
    seed: int = 7
    pause: tuple[float, float] = (0.3, 2.0)  # seconds between a deal's steps, so that traffic goes on through the kills
    close_wait: float = 90.0  # seconds after the last deadline for every deal to close
    mail_wait: float = 75.0  # seconds after that for every e-mail to reach a final state (a killed attempt's 60 s timeout)
    close_slack: float = 45.0  # seconds after its deadline a deal must have decided by (certificate issued_at)
    plans: tuple[str, ...] = PLANS  # the deals take these plans in turn

    @property
    def restart_server_at(self) -> int:
        return max(1, (self.kills + 1) // 2)

    @property
    def extensions(self) -> tuple[int, int]:
        return max(2, round(self.window * 0.1)), max(3, round(self.window * 0.15))


FAST = Form(deals=24, window=40, kills=6, kill_every=7.0, concurrency=4, booking_spread=12.0, seed=1)
FULL = Form(deals=200, window=120, kills=12, kill_every=10.0, concurrency=6, booking_spread=60.0, seed=7, close_wait=150.0)

# The race stress run: no kills, every deal's conflicting calls sent at once, spread over the API
# processes (`via`), many at the deadline. Each plan books its deal twice at once (one
# Idempotency-Key, both APIs): one deal. `race_fill`: overlapping receipts, one posted twice, and
# the same pickup asked of both APIs, filling the deal (it closes early). `race_cancel`: the receipt
# that meets the condition and two cancels (one key) at once. `race_release_at_deadline`: the
# receipt that meets the condition, posted to both APIs within a second of the deadline, beside an
# extend. `race_cancel_at_deadline`: a cancel, that receipt and an extend, within a second of the
# deadline. `race_extends`: two extends and the first's retry at once, beside a receipt, then a
# receipt after the booked deadline. `race_serial`: two deals receive the same four serials at the
# same moment through different APIs: each serial counts for one of them.
RACE_PLANS = ("race_fill", "race_cancel", "race_release_at_deadline", "race_cancel_at_deadline", "race_extends", "race_serial")
RACES = Form(deals=48, window=30, kills=0, kill_every=0.0, concurrency=12, booking_spread=8.0, seed=11, pause=(0.2, 1.0),
             close_wait=60.0, plans=RACE_PLANS)
# The chaos run on several processes (tests/test_topology.py): a little more traffic than FAST, the
# kills taking the workers in turn.
TOPOLOGY_CHAOS = Form(deals=36, window=40, kills=8, kill_every=6.0, concurrency=6, booking_spread=15.0, seed=3)


# --- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} before opening port {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not open port {port} within {timeout:.0f}s")


@dataclass(frozen=True)
class Topology:
    """How many worker and API processes run beside the one Temporal server (all on one machine,
    every worker on the same task queue, every API on the same store)."""

    workers: int = 1
    apis: int = 1

    def __str__(self) -> str:
        return f"{self.apis} API{'s' if self.apis > 1 else ''}, {self.workers} worker{'s' if self.workers > 1 else ''}"


@dataclass
class Stack:
    """The Temporal dev server, the workers and the APIs, each a process; logs in data_dir/logs."""

    data_dir: Path
    env: dict
    temporal_port: int
    api_port: int  # the first API's; the others get ports of their own
    topology: Topology = Topology()
    server: subprocess.Popen | None = None
    workers: list = field(default_factory=list)  # one Popen (or None) per worker slot
    apis: list = field(default_factory=list)
    api_ports: list = field(default_factory=list)
    kills: int = 0
    server_restarts: int = 0
    cpu: Counter = field(default_factory=Counter)  # process name -> CPU seconds of its ended processes (killed ones too)

    def __post_init__(self):
        self.workers = [None] * self.topology.workers
        self.apis = [None] * self.topology.apis
        self.api_ports = [self.api_port] + [free_port() for _ in range(self.topology.apis - 1)]

    @property
    def worker(self) -> subprocess.Popen | None:
        return self.workers[0]

    @property
    def api(self) -> subprocess.Popen | None:
        return self.apis[0]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def api_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.api_ports]

    def _log(self, name: str):
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        return open(self.data_dir / "logs" / name, "ab")

    def _name(self, what: str, index: int) -> str:
        return what if len(self.workers if what == "worker" else self.apis) == 1 else f"{what}{index + 1}"

    def start(self) -> "Stack":
        self.start_server()
        for index in range(len(self.workers)):
            self.start_worker(index)
        for index in range(len(self.apis)):
            self.start_api(index)
        return self

    def start_server(self) -> None:
        temporal = str(BIN / "temporal") if (BIN / "temporal").exists() else shutil.which("temporal")
        for attempt in range(3):
            with self._log("temporal.log") as log:
                self.server = subprocess.Popen(
                    [temporal, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(self.temporal_port),
                     *dev_server_file_args(self.data_dir / "temporal.db"), "--log-level", "error"],
                    stdout=log, stderr=subprocess.STDOUT,
                )
            wait_port(self.temporal_port, self.server, "temporal dev server")
            time.sleep(0.5)  # a server that lost its port to another process exits at once, yet the port answers
            if self.server.poll() is None:
                return
            if self.server_restarts:  # a restart keeps its port: the worker and API know no other
                raise RuntimeError(f"temporal dev server could not take port {self.temporal_port} again")
            self.temporal_port = free_port()  # taken by another process between free_port() and the bind
            self.env["TEMPORAL_ADDRESS"] = f"127.0.0.1:{self.temporal_port}"
        raise RuntimeError("temporal dev server could not take a port")

    def start_worker(self, index: int = 0) -> None:
        with self._log(f"{self._name('worker', index)}.log") as log:
            self.workers[index] = subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def start_api(self, index: int = 0) -> None:
        with self._log(f"{self._name('api', index)}.log") as log:
            self.apis[index] = subprocess.Popen(
                [sys.executable, "-m", "cli", "api", "--port", str(self.api_ports[index])], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        wait_port(self.api_ports[index], self.apis[index], f"api {index + 1}")

    def _count_cpu(self, name: str, process: subprocess.Popen) -> None:
        try:
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            self.cpu[name] += sum(int(v) for v in fields[11:13]) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass

    def kill_worker(self, index: int = 0) -> None:
        self._count_cpu(self._name("worker", index), self.workers[index])
        self.workers[index].send_signal(signal.SIGKILL)
        self.workers[index].wait()
        self.kills += 1

    def restart_server(self) -> None:
        self.server.send_signal(signal.SIGKILL)
        self.server.wait()
        self.start_server()
        self.server_restarts += 1

    def stop(self) -> None:
        named = [*((self._name("api", i), p) for i, p in enumerate(self.apis)), *((self._name("worker", i), p) for i, p in enumerate(self.workers))]
        for name, process in [*named, ("temporal", self.server)]:
            if process is not None and process.poll() is None:
                self._count_cpu(name, process)
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


# --- HTTP -------------------------------------------------------------------------------------


@dataclass
class Answer:
    """The final answer to one request, however many attempts it took."""

    kind: str
    method: str
    path: str
    status: int  # 0: no answer (connection errors until the budget ran out)
    body: object
    attempts: int
    retried_503: int
    started: float  # wall clock of the first attempt
    reached: float | None  # wall clock of the first attempt the API answered (it had the request from then)
    answered: float
    idempotency_key: str | None = None
    request: object = None
    label: str = ""  # which step of its deal's plan
    api: int = 0  # which API process gave the final answer

    @property
    def problem(self) -> str:
        return str(self.body.get("type", "")).rsplit("/", 1)[-1] if isinstance(self.body, dict) else ""

    def brief(self) -> str:
        body = json.dumps(self.body)[:300] if not isinstance(self.body, str) else self.body[:300]
        return f"{self.method} {self.path} -> {self.status} after {self.attempts} attempt(s): {body}"


@dataclass
class Stats:
    http_requests: int = 0
    answers: list = field(default_factory=list)
    status_503: Counter = field(default_factory=Counter)  # problem type -> attempts answered 503
    server_errors: list = field(default_factory=list)  # every 5xx other than 503, with its request
    transport_errors: Counter = field(default_factory=Counter)
    counts: Counter = field(default_factory=Counter)


def signature(raw: bytes, secret: str, at: float | None = None) -> str:
    t = str(int(at if at is not None else time.time()))
    return f"t={t},v1={hmac.new(secret.encode(), t.encode() + b'.' + raw, hashlib.sha256).hexdigest()}"


class Api:
    """Every request retried on 503, on 409 idempotency-in-progress and on connection errors with the
    same body and headers. With several API processes, requests take them in turn (as a load
    balancer would), a retry goes to the next one, and `via` sends a request to a given one."""

    def __init__(self, urls: str | list[str], stats: Stats, webhook_secret: str):
        self.webhook_secret = webhook_secret
        urls = [urls] if isinstance(urls, str) else list(urls)
        self.clients = [httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(45.0, connect=5.0), limits=httpx.Limits(max_connections=64)) for url in urls]
        self.turn = 0
        self.stats = stats
        self.in_flight = 0  # requests sent and not yet answered

    @property
    def http(self) -> httpx.AsyncClient:
        return self.clients[0]

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()

    async def call(self, kind: str, method: str, path: str, *, key: str | None = None, body=None, idempotency_key: str | None = None,
                   signed: bool = False, slot: asyncio.Semaphore | None = None, budget: float = REQUEST_BUDGET, via: int | None = None) -> Answer:
        raw = json.dumps(body).encode() if body is not None else None
        if via is None:
            via, self.turn = self.turn, self.turn + 1
        target = via % len(self.clients)
        started, give_up = time.time(), time.monotonic() + budget
        attempts = retried_503 = server_errors = 0
        reached = None
        while True:
            headers = {}
            if key:
                headers["Authorization"] = f"Bearer {key}"
            if idempotency_key:
                headers["Idempotency-Key"] = idempotency_key
            if raw is not None:
                headers["Content-Type"] = "application/json"
            if signed:
                headers["Takeback-Signature"] = signature(raw, self.webhook_secret)  # signed afresh: the body is the same
            attempts += 1
            self.stats.http_requests += 1
            sent = time.time()
            try:
                async with slot or contextlib.nullcontext():
                    self.in_flight += 1
                    try:
                        response = await self.clients[target].request(method, path, headers=headers, content=raw)
                    finally:
                        self.in_flight -= 1
            except httpx.TransportError as error:
                self.stats.transport_errors[type(error).__name__] += 1
                target = (target + 1) % len(self.clients)
                if time.monotonic() < give_up:
                    await asyncio.sleep(0.5)
                    continue
                return self._answer(kind, method, path, 0, repr(error), attempts, retried_503, started, reached, idempotency_key, body, target)
            reached = reached or sent
            try:
                parsed = response.json()
            except ValueError:
                parsed = response.text
            status = response.status_code
            problem = str(parsed.get("type", "")).rsplit("/", 1)[-1] if isinstance(parsed, dict) else "?"
            if status == 409 and problem == "idempotency-in-progress":  # the same key still running (on this API or another): retry
                self.stats.counts["409 idempotency-in-progress retried"] += 1
            if status == 503 or (status == 409 and problem == "idempotency-in-progress"):
                if status == 503:
                    self.stats.status_503[problem or "?"] += 1
                if time.monotonic() < give_up:
                    retried_503 += 1
                    target = (target + 1) % len(self.clients)
                    try:
                        retry_after = float(response.headers.get("Retry-After", "1"))
                    except ValueError:
                        retry_after = 1.0
                    await asyncio.sleep(min(max(retry_after, 0.2), RETRY_AFTER_CAP) * random.uniform(0.8, 1.2))
                    continue
            elif status >= 500:
                self.stats.server_errors.append({"kind": kind, "request": f"{method} {path}", "idempotency_key": idempotency_key, "body": body,
                                                 "status": status, "answer": parsed, "at": datetime.now().astimezone().isoformat()})
                if server_errors < SERVER_ERROR_RETRIES and time.monotonic() < give_up:
                    server_errors += 1
                    await asyncio.sleep(1.0)
                    continue
            return self._answer(kind, method, path, status, parsed, attempts, retried_503, started, reached, idempotency_key, body, target)

    def _answer(self, kind, method, path, status, body, attempts, retried_503, started, reached, key, request, api=0) -> Answer:
        answer = Answer(kind, method, path, status, body, attempts, retried_503, started, reached, time.time(), key, request, api=api)
        self.stats.answers.append(answer)
        return answer


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Deal:
    index: int
    plan: str
    partner: str
    rate: str
    start_after: float
    id: str | None = None
    booked_ids: set = field(default_factory=set)  # the deal ids of every 201 its booking got (one, however often it was sent)
    answers: list = field(default_factory=list)  # every request about this deal
    pickups: dict = field(default_factory=dict)  # pickup id -> its 201 answer's body
    events: list = field(default_factory=list)  # (pickup id, event, answer)
    final: dict | None = None  # GET /v1/deals/{id} once closed
    certificate: dict | None = None
    emails: list | None = None

    @property
    def tag(self) -> str:
        return f"C{self.index:04d}"

    def of(self, kind: str) -> list[Answer]:
        return [a for a in self.answers if a.kind == kind]

    def items(self, start: int, stop: int, tag: str | None = None) -> list[dict]:
        return [
            {"product_id": PRODUCT, "serial_number": f"{tag or self.tag}-S{n:02d}", "condition": CONDITIONS[n % len(CONDITIONS)], "age_years": n % 8}
            for n in range(start, stop)
        ]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def log(message: str) -> None:
    print(f"[chaos {datetime.now().astimezone().isoformat(timespec='milliseconds')}] {message}", flush=True)


class Run:
    def __init__(self, form: Form, stack: Stack, api: Api, stats: Stats, standin, database_url: str):
        self.form, self.stack, self.api, self.stats, self.standin, self.database_url = form, stack, api, stats, standin, database_url
        self.keys: dict[str, str] = {}
        self.slots = {GOOD: asyncio.Semaphore(form.concurrency), BOUNCE: asyncio.Semaphore(form.concurrency)}
        self.reads = asyncio.Semaphore(8)
        self.partner_views: dict[str, dict] = {}
        self.impact: dict[str, dict] = {}
        self.deals: list[Deal] = []
        self.started = time.time()  # when the deals start to be driven

    # keys are made in the store, as `takeback apikey create` does
    def make_key(self, role: str, partner_id: str | None = None) -> str:
        from store.api_keys import create_api_key
        from store.db import session_scope

        with session_scope(self.database_url) as session:
            return create_api_key(session, role, partner_id)

    async def partner_call(self, partner: str, kind: str, method: str, path: str, **options) -> Answer:
        return await self.api.call(kind, method, path, slot=self.slots[partner], **options)

    async def deal_call(self, deal: Deal, kind: str, method: str, path: str, **options) -> Answer:
        """`via` (in options) sends it to that API process; otherwise they take turns."""
        answer = await self.api.call(kind, method, path, slot=self.slots[deal.partner], **options)
        deal.answers.append(answer)
        return answer

    # --- partners ---------------------------------------------------------------------------

    async def certify(self, partner: str) -> None:
        ops = self.keys["ops"]
        body = {"id": partner, "name": f"Partner {partner}", "contact_email": CONTACT[partner], "country": "DE"}
        await self.partner_call(partner, "partner", "POST", "/v1/partners", key=ops, body=body)
        self.keys[partner] = await asyncio.to_thread(self.make_key, "partner", partner)
        for number, training in enumerate(TRAININGS):
            await self.partner_call(partner, "training", "POST", f"/v1/partners/{partner}/trainings", key=ops, body=training, idempotency_key=f"{partner}-training-{number}")
        # the first training posted again with its key: a retry, recorded once
        await self.partner_call(partner, "training", "POST", f"/v1/partners/{partner}/trainings", key=ops, body=TRAININGS[0], idempotency_key=f"{partner}-training-0")
        for exam in (1, 2):
            await self.partner_call(partner, "exam", "POST", f"/v1/partners/{partner}/exams", key=ops, body={"exam": exam, "passed": True}, idempotency_key=f"{partner}-exam-{exam}")
        await self.partner_call(partner, "pledge", "POST", f"/v1/partners/{partner}/pledge", key=self.keys[partner])  # the partner signs it

    # --- one deal ---------------------------------------------------------------------------

    async def book(self, deal: Deal, twice: bool = False) -> bool:
        """Book the deal; `twice`: the same request (key and body) sent to two API processes at once."""
        body = {
            "partner_id": deal.partner,
            "customer": {"name": f"Customer {deal.tag}", "country": "DE"},
            "opportunity": "refresh" if deal.index % 2 else "migration",
            "new_products_value": "100000.00",
            "incentive_rate": deal.rate,
            "equipment": [{"product_id": PRODUCT, "quantity": UNITS}],
        }
        give_up = time.monotonic() + 30

        async def send(via: int | None) -> None:
            while True:
                answer = await self.deal_call(deal, "book", "POST", "/v1/deals", key=self.keys[deal.partner], body=body, idempotency_key=f"{deal.tag}-book", via=via)
                # The certification is read from a projection written as it completes: a booking racing it may be early.
                if answer.status == 409 and answer.problem == "partner-not-certified" and time.monotonic() < give_up:
                    answer.kind = "book-before-certified"
                    self.stats.counts["bookings retried: partner not yet certified"] += 1
                    await asyncio.sleep(0.5)
                    continue
                break
            if answer.status == 201:
                deal.booked_ids.add(answer.body["id"])
                deal.id = deal.id or answer.body["id"]

        await asyncio.gather(*((send(0), send(1)) if twice else (send(None),)))
        return deal.id is not None

    async def pickup(self, deal: Deal, number: int, via: int | None = None) -> dict | None:
        body = {"address": f"{number} Chaos Way, Berlin", "contact_name": "Kim", "contact_phone": "+49 30 1234", "ready_on": datetime.now(timezone.utc).date().isoformat(), "expected_units": UNITS}
        answer = await self.deal_call(deal, "pickup", "POST", f"/v1/deals/{deal.id}/pickups", key=self.keys[deal.partner], body=body, idempotency_key=f"{deal.tag}-pickup-{number}", via=via)
        if answer.status != 201:
            return None
        deal.pickups.setdefault(answer.body["id"], answer.body)
        return answer.body

    async def carrier(self, deal: Deal, pickup: dict, statuses: list[str], rng: random.Random, stale: str | None = None) -> None:
        """Signed webhooks along `statuses`; some redelivered (same event id), `stale` an old status arriving last."""
        tracking = pickup["tracking_number"]
        for number, status in enumerate([*statuses, *([stale] if stale else [])]):
            event = {"event_id": f"{tracking}-e{number}", "tracking_number": tracking, "status": status, "occurred_at": datetime.now().astimezone().isoformat()}
            for _ in range(2 if rng.random() < 0.3 else 1):
                answer = await self.deal_call(deal, "event", "POST", "/v1/carrier-events", body=event, signed=True)
                deal.events.append((pickup["id"], event, answer))

    async def receipt(self, deal: Deal, items: list[dict], name: str, via: int | None = None) -> Answer:
        # Odd deals name their receipts with an Idempotency-Key; even ones rely on "the same items are the same batch".
        key = f"{deal.tag}-{name}" if deal.index % 2 else None
        answer = await self.deal_call(deal, "receipt", "POST", f"/v1/deals/{deal.id}/receipts", key=self.keys["ops"], body={"items": items}, idempotency_key=key, via=via)
        answer.label = name
        return answer

    async def extend(self, deal: Deal, seconds: int, name: str, via: int | None = None) -> Answer:
        body = {"extend_by": f"{seconds}s", "reason": f"chaos: the customer asked ({name})"}
        return await self.deal_call(deal, "extend", "POST", f"/v1/deals/{deal.id}/extend", key=self.keys["ops"], body=body, idempotency_key=f"{deal.tag}-{name}", via=via)

    async def cancel(self, deal: Deal, name: str = "cancel", via: int | None = None) -> Answer:
        body = {"reason": "chaos: the customer withdrew"}
        return await self.deal_call(deal, "cancel", "POST", f"/v1/deals/{deal.id}/cancel", key=self.keys["ops"], body=body, idempotency_key=f"{deal.tag}-{name}", via=via)

    async def drive(self, deal: Deal) -> None:
        rng = random.Random(self.form.seed * 100_000 + deal.index)
        await asyncio.sleep(deal.start_after)
        if not await self.book(deal, twice=deal.plan.startswith("race_")):
            return

        async def pause():
            await asyncio.sleep(rng.uniform(*self.form.pause))

        booked = self.deal_answer(deal, "book")
        deadline = at(booked["return_deadline"]).timestamp()
        plan = deal.plan
        if plan == "met":
            await pause()
            pickup = await self.pickup(deal, 1)
            await self.pickup(deal, 1)  # the same request again (same key): the same pickup
            events = asyncio.create_task(self.carrier(deal, pickup, ["pre_transit", "in_transit", "out_for_delivery", "delivered"], rng)) if pickup else None
            await self.receipt(deal, deal.items(0, 5), "r1")
            await pause()
            await self.receipt(deal, deal.items(5, 10 if deal.index % 4 == 0 else 9), "r2")  # 10: every unit back, the deal closes at once
            await pause()
            await self.receipt(deal, deal.items(0, 5), "r1")  # the first receipt again: the same batch, its answer
            if events:
                await events
        elif plan == "short":
            await pause()
            first = await self.pickup(deal, 1)
            if first:
                await self.carrier(deal, first, ["pre_transit", "in_transit", "failure"], rng)  # escalated by mail
            await pause()
            second = await self.pickup(deal, 2)
            events = asyncio.create_task(self.carrier(deal, second, ["pre_transit", "in_transit", "delivered"], rng, stale="in_transit")) if second else None
            # 4 of its own and a serial the `met` deal before it returns too: one of the two receipts is refused it
            await self.receipt(deal, deal.items(0, 4) + deal.items(0, 1, tag=f"C{deal.index - 1:04d}"), "r1")
            if events:
                await events
        elif plan == "cancel":
            await self.pickup(deal, 1)
            await pause()
            await self.receipt(deal, deal.items(0, 3), "r1")
            await pause()
            await self.cancel(deal)
            await self.cancel(deal)  # a retry with the same key: the first answer
            await pause()
            await self.receipt(deal, deal.items(3, 6), "r2")  # after the cancel: refused, burns nothing
        elif plan == "cancel_race":
            await self.receipt(deal, deal.items(0, 4), "r1")
            await pause()
            # 9 back would release the incentive; which of the two is sent first, and by how much, varies
            lead = rng.uniform(0, 0.3)
            cancel_after, receipt_after = (lead, 0.0) if rng.random() < 0.5 else (0.0, lead)
            await asyncio.gather(self.after(cancel_after, self.cancel(deal)), self.after(receipt_after, self.receipt(deal, deal.items(4, 9), "r2")))
        elif plan == "extended":
            await self.receipt(deal, deal.items(0, 4), "r1")
            first, second = self.form.extensions
            await pause()
            await asyncio.gather(self.extend(deal, first, "extend-a"), self.extend(deal, second, "extend-b"))
            await self.extend(deal, first, "extend-a")  # a retry of the first: the same extension, applied once
            await asyncio.sleep(max(0.0, deadline + self.form.window * 0.05 - time.time()))
            await self.receipt(deal, deal.items(4, 8), "r2")  # after the booked deadline, within the extended one
        elif plan == "late":
            await self.receipt(deal, deal.items(0, 6), "r1")
            await asyncio.sleep(max(0.0, deadline - 2.5 - time.time()))
            await self.receipt(deal, deal.items(6, 8), "r2")  # just before the deadline: 8, the condition
            await asyncio.sleep(max(0.0, deadline + 2.0 - time.time()))
            await self.receipt(deal, deal.items(8, 10), "r3")  # just after it
        elif plan.startswith("race_"):
            await self.race(deal, rng, deadline, pause)

    async def race(self, deal: Deal, rng: random.Random, deadline: float, pause) -> None:
        """The race plans (RACE_PLANS): conflicting calls at once, `via` API 0 (A) and API 1 (B)."""
        A, B = 0, 1
        plan = deal.plan
        near_deadline = lambda: asyncio.sleep(max(0.0, deadline + rng.uniform(-0.8, 0.8) - time.time()))  # noqa: E731
        if plan == "race_fill":
            await pause()
            await asyncio.gather(
                self.pickup(deal, 1, via=A), self.pickup(deal, 1, via=B),  # one request, both APIs: one pickup
                self.receipt(deal, deal.items(0, 5), "r1", via=A),
                self.receipt(deal, deal.items(3, 8), "r2", via=B),  # overlaps r1 by two serials
                self.receipt(deal, deal.items(0, 5), "r1", via=B),  # r1 again: the same batch
                self.receipt(deal, deal.items(8, 10), "r3", via=A),
            )
            await pause()
            await self.receipt(deal, deal.items(0, 2), "r4")  # every unit is back: the deal has closed
        elif plan == "race_cancel":
            await self.receipt(deal, deal.items(0, 2), "r1")
            await pause()
            await asyncio.gather(self.receipt(deal, deal.items(2, 9), "r2", via=A), self.cancel(deal, via=B), self.cancel(deal, via=A))
        elif plan == "race_release_at_deadline":
            await self.receipt(deal, deal.items(0, 6), "r1")
            await near_deadline()
            await asyncio.gather(self.receipt(deal, deal.items(6, 8), "r2", via=A), self.receipt(deal, deal.items(6, 8), "r2", via=B),
                                 self.extend(deal, self.form.extensions[0], "extend-a", via=B))
        elif plan == "race_cancel_at_deadline":
            await self.receipt(deal, deal.items(0, 5), "r1")
            await near_deadline()
            await asyncio.gather(self.cancel(deal, via=A), self.receipt(deal, deal.items(5, 9), "r2", via=B),
                                 self.extend(deal, self.form.extensions[0], "extend-a", via=A))
        elif plan == "race_extends":
            await self.receipt(deal, deal.items(0, 4), "r1")
            await pause()
            first, second = self.form.extensions
            await asyncio.gather(self.extend(deal, first, "extend-a", via=A), self.extend(deal, second, "extend-b", via=B),
                                 self.extend(deal, first, "extend-a", via=B), self.receipt(deal, deal.items(4, 6), "r2", via=A))
            await asyncio.sleep(max(0.0, deadline + self.form.window * 0.05 - time.time()))
            await self.receipt(deal, deal.items(6, 8), "r3")  # after the booked deadline, within the extended one
        elif plan == "race_serial":
            # the two deals of a pair post the pool's serials at the same moment, through different APIs
            occurrence = deal.index // len(self.form.plans)
            pool = f"POOL{occurrence // 2:03d}"
            await asyncio.sleep(max(0.0, self.started + self.form.booking_spread + 3.0 - time.time()))
            await self.receipt(deal, deal.items(0, 6) + deal.items(0, 4, tag=pool), "r1", via=occurrence % 2)

    @staticmethod
    async def after(seconds: float, step):
        await asyncio.sleep(seconds)
        return await step

    @staticmethod
    def deal_answer(deal: Deal, kind: str) -> dict:
        return next(a.body for a in deal.answers if a.kind == kind and a.status in (200, 201))

    async def watch(self, partner: str, done: asyncio.Event) -> None:
        """The partner looks at its deals now and then (GET with its own key), so requests are in flight
        through every kill and the server's restart."""
        rng = random.Random(self.form.seed + len(partner))
        while not done.is_set():
            mine = [d for d in self.deals if d.partner == partner and d.id]
            if mine:
                deal = rng.choice(mine)
                await self.api.call("watch", "GET", f"/v1/deals/{deal.id}", key=self.keys[partner], budget=10)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), rng.uniform(0.2, 0.8))

    async def chaos(self) -> None:
        rng = random.Random(self.form.seed)
        while self.stack.kills < self.form.kills:
            await asyncio.sleep(self.form.kill_every * rng.uniform(0.7, 1.3))
            victim = self.stack.kills % len(self.stack.workers)  # the workers in turn; the others carry on
            await asyncio.to_thread(self.stack.kill_worker, victim)
            if self.stack.kills == self.form.restart_server_at and self.stack.server_restarts == 0:
                # The server goes down under load: with no worker, the requests arriving now wait in the
                # engine for their deals, and the SIGKILL cuts them off mid-call.
                killed, in_flight = time.monotonic(), 0
                while time.monotonic() < killed + 1.0 or (in_flight < 2 and time.monotonic() < killed + 8.0):
                    await asyncio.sleep(0.05)
                    in_flight = max(in_flight, self.api.in_flight)
                self.stats.counts["requests in flight at the server restart"] = self.api.in_flight
                await asyncio.to_thread(self.stack.restart_server)
                log(f"kill {self.stack.kills}: worker {victim + 1} SIGKILLed, temporal server SIGKILLed with {self.stats.counts['requests in flight at the server restart']} requests in flight, restarted")
            else:
                log(f"kill {self.stack.kills}: worker {victim + 1} SIGKILLed")
            await asyncio.to_thread(self.stack.start_worker, victim)

    # --- after the traffic ------------------------------------------------------------------

    async def read(self, kind: str, path: str, key: str | None = None, budget: float = 30) -> Answer:
        async with self.reads:
            return await self.api.call(kind, "GET", path, key=key or self.keys["ops"], budget=budget)

    async def wait_closed(self, until: float) -> None:
        pending = [d for d in self.deals if d.id]
        while pending and time.time() < until:
            answers = await asyncio.gather(*(self.read("poll", f"/v1/deals/{d.id}", budget=10) for d in pending))
            for deal, answer in zip(pending, answers):
                if answer.status == 200 and answer.body.get("status") in FINAL:
                    deal.final = answer.body
            pending = [d for d in pending if d.final is None]
            if pending:
                await asyncio.sleep(1.0)

    async def emails_of(self, deal: Deal) -> list | None:
        answer = await self.read("emails", f"/v1/deals/{deal.id}/emails")
        return answer.body if answer.status == 200 else None

    @staticmethod
    def expected_mail(deal: Deal) -> set[str]:
        """Keys of the messages a closed deal must have queued: its settlement notice, an escalation per
        carrier failure it accepted."""
        keys = {f"{deal.id}:{pickup_id}:escalation:failure" for pickup_id, event, answer in deal.events if event["status"] == "failure" and answer.status == 202}
        if deal.final["incentive"]["status"] in ("released", "forfeited"):
            keys.add(f"{deal.id}:settlement:{deal.final['incentive']['status']}")
        return keys

    async def wait_mail(self, until: float) -> None:
        """Until each deal's messages are final and the expected ones are there. A notice whose attempt
        went down with a killed worker is tried again after that attempt's 60 s timeout; one claimed by
        such an attempt stays `sending` for the claim's 10 minutes: not waited for once the provider has
        it, or once it has been `sending` longer than any live attempt takes."""
        deals = [d for d in self.deals if d.final is not None]
        sending_since: dict[str, float] = {}
        pending = deals
        while True:
            for deal, emails in zip(pending, await asyncio.gather(*(self.emails_of(d) for d in pending))):
                deal.emails = emails
            now = time.time()

            def settled(deal: Deal) -> bool:
                if deal.emails is None or self.expected_mail(deal) - {m["key"] for m in deal.emails}:
                    return False
                for message in deal.emails:
                    if message["state"] != "sending" or self.standin.delivered_to(message["to"], message["subject"]):
                        sending_since.pop(message["key"], None)  # final, or the provider has it: it cannot arrive twice in this run
                    elif now - sending_since.setdefault(message["key"], now) < STUCK_SENDING:
                        return False
                return all(m["state"] != "queued" for m in deal.emails)

            pending = [d for d in pending if not settled(d)]
            if not pending or now >= until:
                self.stats.counts["seconds waited for mail"] = round(now - (until - self.form.mail_wait), 1)
                return
            await asyncio.sleep(1.0)

    async def collect(self) -> None:
        """The final reads every check works from."""
        closed = [d for d in self.deals if d.final is not None]
        views = await asyncio.gather(*(self.read("get", f"/v1/deals/{d.id}") for d in closed))
        certificates = await asyncio.gather(*(self.read("certificate", f"/v1/deals/{d.id}/certificate") for d in closed))
        for deal, view, certificate in zip(closed, views, certificates):
            if view.status == 200:
                deal.final = view.body
            deal.certificate = certificate.body if certificate.status == 200 else None
        for partner in (GOOD, BOUNCE):
            answer = await self.read("partner-get", f"/v1/partners/{partner}")
            self.partner_views[partner] = answer.body if answer.status == 200 else {}
            answer = await self.read("impact", f"/v1/reports/impact?partner_id={partner}")
            self.impact[partner] = answer.body if answer.status == 200 else {}
        answer = await self.read("impact", "/v1/reports/impact")
        self.impact["all"] = answer.body if answer.status == 200 else {}


async def failed_workflows(address: str) -> list[str]:
    from settings import Settings
    from temporal_client import connect

    client = await connect(Settings(temporal_address=address))
    return [execution.id async for execution in client.list_workflows("ExecutionStatus='Failed'")]


async def engine_checks(address: str) -> tuple[list[str], dict]:
    """Every workflow's history from the server: workflow tasks that failed (by cause) and whether
    each history replays against today's workflow code. Tasks that timed out (a SIGKILLed worker's)
    are counted, not failures; so are those the server refused because new events (a signal, an
    update) arrived while the worker completed the task (UNHANDLED_COMMAND: the worker runs the task
    again with them, by design) or because it reset the worker's sticky queue."""
    from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.worker import Replayer

    from settings import Settings
    from temporal_client import connect
    from workflows.deal import TakebackDealWorkflow
    from workflows.pickup import PickupWorkflow
    from workflows.specialization import PartnerSpecializationWorkflow

    BY_DESIGN = {WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND, WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_STICKY_TASK_QUEUE}
    client = await connect(Settings(temporal_address=address))
    executions = [execution async for execution in client.list_workflows()]
    reads = asyncio.Semaphore(8)

    async def history(execution):
        async with reads:
            return await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()

    histories = await asyncio.gather(*(history(e) for e in executions))
    violations: list[str] = []
    counts: Counter = Counter({"workflow histories": len(histories), "history events": sum(len(h.events) for h in histories)})
    for execution, one in zip(executions, histories):
        counts[f"workflows {execution.workflow_type} {execution.status.name if execution.status else '?'}"] += 1
        for event in one.events:
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                counts["workflow tasks timed out"] += 1
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                attributes = event.workflow_task_failed_event_attributes
                cause = WorkflowTaskFailedCause.Name(attributes.cause)
                if attributes.cause in BY_DESIGN:
                    counts[f"workflow tasks refused by the server {cause}"] += 1
                    continue
                counts[f"workflow tasks failed {cause}"] += 1
                violations.append(f"workflow {execution.id} ({execution.workflow_type}): workflow task failed at event {event.event_id}, "
                                  f"{cause}: {attributes.failure.message[:300]}")
    replayer = Replayer(workflows=[TakebackDealWorkflow, PickupWorkflow, PartnerSpecializationWorkflow], data_converter=pydantic_data_converter)
    async def each():
        for one in histories:
            yield one

    results = await replayer.replay_workflows(each(), raise_on_replay_failure=False)
    counts["histories replayed"] = len(histories) - len(results.replay_failures)
    for run_id, error in results.replay_failures.items():
        workflow_id = next((e.id for e in executions if e.run_id == run_id), run_id)
        violations.append(f"workflow {workflow_id} (run {run_id}) does not replay: {error!r}"[:500])
    return violations, counts


def store_checks(run: "Run") -> tuple[list[str], dict]:
    """What the store holds against what the API answered: every booked deal is there once (a
    booking sent twice made one deal), its row shows what GET shows, its accepted serials are its
    returned items, and its money moved once: one settlement row and one terminal ledger row,
    of the outcome and amount its view shows (rows and amounts counted, not left to a unique key)."""
    from sqlalchemy import func, select

    from store.db import session_scope
    from store.tables import Certificate, Deal as DealRow, DealExtension, IncentiveLedger, ReturnedItem, Settlement

    terminal = {"released", "forfeited", "cancelled", "clawed_back"}
    violations: list[str] = []
    counts: Counter = Counter()
    booked = [d for d in run.deals if d.id]
    with session_scope(run.database_url) as session:
        rows = {row.id: row for row in session.execute(select(DealRow).where(DealRow.partner_id.in_([GOOD, BOUNCE]))).scalars()}
        ledger = defaultdict(list)
        for row in session.execute(select(IncentiveLedger)).scalars():
            ledger[row.deal_id].append(row)
        settlements = defaultdict(list)
        for row in session.execute(select(Settlement)).scalars():
            settlements[row.deal_id].append(row)
        items = defaultdict(set)
        item_rows = Counter()
        for deal_id, serial in session.execute(select(ReturnedItem.deal_id, ReturnedItem.serial)):
            items[deal_id].add(serial)
            item_rows[deal_id] += 1
        extensions = Counter(dict(session.execute(select(DealExtension.deal_id, func.count()).group_by(DealExtension.deal_id)).all()))
        certificates = set(session.execute(select(Certificate.deal_id)).scalars())
    counts["store deals"] = len(rows)
    counts["store ledger rows"] = sum(len(v) for v in ledger.values())
    counts["store settlements"] = sum(len(v) for v in settlements.values())
    ids = {d.id for d in booked}
    if len(rows) != len(ids) or set(rows) != ids:
        violations.append(f"store: {len(rows)} deals of the run's partners, {len(ids)} booked over HTTP "
                          f"(in the store only: {sorted(set(rows) - ids)[:5]}, booked only: {sorted(ids - set(rows))[:5]})")
    for deal_id in set(ledger) - ids:
        violations.append(f"store: ledger rows for {deal_id}, a deal nobody booked: {[(r.kind, str(r.amount)) for r in ledger[deal_id]]}")
    money = Counter()
    for deal in booked:
        name = f"deal {deal.id} ({deal.plan}, {deal.partner})"
        row = rows.get(deal.id)
        if row is None:
            violations.append(f"{name}: answered 201 but not in the store")
            continue
        final = deal.final
        if final is None:
            continue  # verify() says it never closed
        shown = (final["status"], final["incentive"]["status"], Decimal(final["incentive"]["amount"]), final["received_units"], at(final["return_deadline"]))
        deadline = row.return_deadline if row.return_deadline.tzinfo else row.return_deadline.replace(tzinfo=timezone.utc)
        stored = (row.status, row.incentive_status, row.incentive_amount, row.received_units, deadline)
        if shown != stored:
            violations.append(f"{name}: GET shows (status, incentive, amount, received, deadline) {shown}, its store row {stored}")
        if item_rows[deal.id] != final["received_units"]:
            violations.append(f"{name}: received_units {final['received_units']}, {item_rows[deal.id]} returned-item rows in the store")
        certified = {i["serial_number"] for i in (deal.certificate or {}).get("certificate", {}).get("items", [])}
        if deal.certificate and certified != items[deal.id]:
            violations.append(f"{name}: the certificate lists {len(certified)} serials, the store holds {len(items[deal.id])} returned items for the deal")
        if deal.id not in certificates:
            violations.append(f"{name}: closed without a certificate row in the store")
        if extensions[deal.id] != len(final.get("extensions", [])):
            violations.append(f"{name}: {len(final.get('extensions', []))} extensions shown, {extensions[deal.id]} in the store")
        moves = [r for r in ledger[deal.id] if r.kind in terminal]
        outcome = final["incentive"]["status"]
        if len(settlements[deal.id]) != 1 or len(moves) != 1:
            violations.append(f"{name}: settled {len(settlements[deal.id])} times, {len(moves)} terminal ledger rows: "
                              f"{[(r.kind, str(r.amount)) for r in ledger[deal.id]]} (want one, {outcome})")
            continue
        settlement, move = settlements[deal.id][0], moves[0]
        want_amount = Decimal(final["incentive"]["amount"]) if outcome in ("released", "forfeited") else Decimal("0.00")
        if (settlement.outcome, move.kind) != (outcome, outcome) or move.amount != settlement.amount or (outcome != "cancelled" and move.amount != want_amount):
            violations.append(f"{name}: incentive {outcome} {final['incentive']['amount']} shown; settlement {settlement.outcome} {settlement.amount}, "
                              f"ledger {move.kind} {move.amount}")
        money[move.kind] += move.amount
    for kind, amount in sorted(money.items()):
        counts[f"store ledger {kind}"] = str(amount)
    return violations, counts


# --- the checks -------------------------------------------------------------------------------

EXPECTED_STATUS = {
    "partner": {201}, "training": {201}, "exam": {201}, "pledge": {201}, "book": {201}, "pickup": {201, 409}, "event": {202},
    "receipt": {200, 409}, "extend": {200, 409}, "cancel": {200, 409},
    "poll": {200}, "watch": {200, 503}, "get": {200}, "certificate": {200}, "emails": {200}, "partner-get": {200}, "impact": {200},
}


def verify(run: Run, failed: list[str]) -> tuple[list[str], dict]:
    """Every failure as a sentence, and the counts of the run."""
    form, stats, standin = run.form, run.stats, run.standin
    violations: list[str] = []
    counts: Counter = Counter()

    # -- HTTP: no 5xx but 503, every request answered, every answer one its request may get
    for error in stats.server_errors:
        violations.append(f"5xx other than 503 at {error['at']}: {error['request']} (Idempotency-Key {error['idempotency_key']}) answered {error['status']}: "
                          f"{json.dumps(error['answer'])[:300]}; body {json.dumps(error['body'])[:300]}")
    for answer in stats.answers:
        counts[f"answers {answer.kind} {answer.status}"] += 1
        if answer.status in (0, 503) and answer.kind not in ("poll", "watch"):  # a look that gives up is taken again
            violations.append(f"never answered after {REQUEST_BUDGET:.0f} s of retries: {answer.brief()}")
        elif answer.kind in EXPECTED_STATUS and answer.status not in EXPECTED_STATUS[answer.kind]:
            violations.append(f"unexpected answer to a {answer.kind}: {answer.brief()}")
        elif answer.status == 409 and answer.kind in ("receipt", "extend", "cancel", "pickup") and answer.problem != "deal-not-open":
            violations.append(f"409 of another kind than deal-not-open: {answer.brief()}")

    # -- partners: what was recorded shows
    for partner in (GOOD, BOUNCE):
        view = run.partner_views.get(partner, {}).get("specialization", {})
        booked = sum(1 for d in run.deals if d.partner == partner and d.id)
        want = {"status": "certified", "training_hours": float(sum(t["hours"] for t in TRAININGS)), "trainees": len(TRAININGS),
                "trees_planted": len(TRAININGS), "exams_passed": [1, 2], "pledge_signed": True, "deals_this_year": booked}
        got = {name: (float(view.get(name, -1)) if name == "training_hours" else view.get(name)) for name in want}
        if got != want:
            violations.append(f"partner {partner}: GET shows {got}, the recorded trainings, exams, pledge and bookings make {want}")

    # -- deals
    accepted_by: dict[str, str] = {}  # serial -> deal whose 200 receipt accepted it
    certified_in: dict[str, str] = {}  # serial -> deal whose certificate lists it
    refused_serials: list[tuple[str, str]] = []
    released = forfeited = Decimal(0)
    released_by = defaultdict(Decimal)
    forfeited_by = defaultdict(Decimal)
    units_by = Counter()
    lags: dict[str, list[float]] = defaultdict(list)
    outcomes = Counter()
    window = timedelta(seconds=form.window)
    for deal in run.deals:
        counts[f"plan {deal.plan}"] += 1
        if deal.id is None:
            violations.append(f"deal {deal.tag} ({deal.plan}) was never booked: {[a.brief() for a in deal.of('book')]}")
            continue
        name = f"deal {deal.id} ({deal.plan}, {deal.partner})"
        if len(deal.booked_ids) > 1:
            violations.append(f"{name}: one booking (one Idempotency-Key) sent to two APIs at once made {len(deal.booked_ids)} deals: {sorted(deal.booked_ids)}")
        final = deal.final
        if final is None or final.get("status") not in FINAL:
            violations.append(f"{name} did not close within {form.close_wait:.0f} s of the last deadline: last seen {json.dumps(final)[:300]}")
            continue
        status, incentive, received = final["status"], final["incentive"], final["received_units"]
        outcomes[f"{status}/{incentive['status']}"] += 1
        counts[f"plan {deal.plan}: {status}/{incentive['status']}"] += 1
        for answer in deal.answers:
            if answer.kind in ("receipt", "cancel", "extend"):
                counts[f"plan {deal.plan}: {answer.kind} {answer.label} {answer.status}".replace("  ", " ")] += 1
        deadline, booked_at = at(final["return_deadline"]), at(final["booked_at"])

        # receipts: 200 counted, 409 burnt nothing; the deal and its certificate hold exactly the 200s
        accepted: set[str] = set()
        for answer in deal.of("receipt"):
            serials = [item["serial_number"] for item in answer.request["items"]]
            if answer.status == 200:
                counts["receipts 200"] += 1
                taken = {item["serial_number"] for item in answer.body.get("items", [])}
                accepted |= taken
                for serial in taken:
                    if accepted_by.setdefault(serial, deal.id) != deal.id:
                        violations.append(f"serial {serial} accepted by 200 receipts on two deals: {accepted_by[serial]} and {deal.id}")
                counts["receipt items rejected"] += len(answer.body.get("rejected", []))
                if answer.reached and answer.reached > deadline.timestamp() + STAGED_MARGIN:
                    counts["receipts after the deadline counted (the deal had not decided yet)"] += 1
            elif answer.status == 409:
                counts["receipts 409"] += 1
                if answer.reached and answer.reached > deadline.timestamp() + STAGED_MARGIN:
                    counts["receipts after the deadline refused"] += 1
                refused_serials += [(serial, deal.id) for serial in serials]
                closed_early = status == "cancelled" or final.get("closed_reason") == "every committed unit returned"
                if not closed_early and answer.reached and answer.reached < deadline.timestamp() - STAGED_MARGIN:
                    violations.append(f"{name}: a receipt that reached the API {deadline.timestamp() - answer.reached:.1f} s before the deadline "
                                      f"{final['return_deadline']} was refused (staged by the deadline, it must count): {answer.brief()}")
        certificate = deal.certificate or {}
        items = {item["serial_number"] for item in certificate.get("certificate", {}).get("items", [])}
        if not deal.certificate:
            violations.append(f"{name} closed without a certificate")
        for serial in items:
            if certified_in.setdefault(serial, deal.id) != deal.id:
                violations.append(f"serial {serial} counted twice: in the certificates of {certified_in[serial]} and {deal.id}")
        if not (received == len(items) == len(accepted) and items == accepted):
            violations.append(f"{name}: received_units {received}, certificate items {len(items)}, serials accepted by 200 receipts {len(accepted)}"
                              f" (in the certificate only: {sorted(items - accepted)[:5]}, answered 200 only: {sorted(accepted - items)[:5]})")
        units_by[deal.partner] += received

        # money: released exactly when the condition is met; cancelled deals never paid
        amount = Decimal(incentive["amount"])
        cancels = deal.of("cancel")
        if status == "cancelled":
            if incentive["status"] != "cancelled":
                violations.append(f"{name} is cancelled but its incentive is {incentive['status']}")
            if not any(a.status == 200 for a in cancels):
                violations.append(f"{name} is cancelled but no cancel was answered 200: {[a.brief() for a in cancels]}")
            if standin.delivered_to(CONTACT[deal.partner], f"Takeback deal {deal.id}: incentive released"):
                violations.append(f"{name} is cancelled but the partner was mailed that its incentive was released")
        else:
            if any(a.status == 200 for a in cancels):
                violations.append(f"{name}: a cancel was answered 200 but the deal is {status}")
            want = ("closed", "released") if received >= final["required_units"] else ("expired", "forfeited")
            if (status, incentive["status"]) != want:
                violations.append(f"{name}: {received} of {final['required_units']} required received, but the deal is {status} with its incentive "
                                  f"{incentive['status']} (want {want[0]}, {want[1]})")
        if incentive["status"] == "released":
            released += amount
            released_by[deal.partner] += amount
        elif incentive["status"] == "forfeited":
            forfeited += amount
            forfeited_by[deal.partner] += amount

        # extensions: each one answered 200 moved the deadline, once
        extended = {a.idempotency_key: int(a.request["extend_by"].rstrip("s")) for a in deal.of("extend") if a.status == 200}
        counts["extends 200"] += sum(1 for a in deal.of("extend") if a.status == 200)
        counts["extends 409"] += sum(1 for a in deal.of("extend") if a.status == 409)
        want_deadline = booked_at + window + timedelta(seconds=sum(extended.values()))
        if abs((deadline - want_deadline).total_seconds()) > 0.001 or len(final.get("extensions", [])) != len(extended):
            violations.append(f"{name}: return_deadline {final['return_deadline']} with {len(final.get('extensions', []))} extensions; booked "
                              f"{final['booked_at']} + {form.window} s + extends answered 200 {sorted(extended.values())} make {want_deadline.isoformat()}")

        # pickups: every one answered 201 is the deal's, once; refused only once the deal was closing;
        # a carrier's status never moves back
        shown = {p["id"]: p for p in final.get("pickups", [])}
        closed_early = status == "cancelled" or final.get("closed_reason") == "every committed unit returned"
        for answer in deal.of("pickup"):
            if answer.status == 409 and not closed_early and answer.reached and answer.reached < deadline.timestamp() - STAGED_MARGIN:
                violations.append(f"{name}: a pickup requested {deadline.timestamp() - answer.reached:.1f} s before the deadline of a deal that "
                                  f"closed at it was refused: {answer.brief()}")
        for answer in deal.of("pickup"):
            if answer.status == 201:
                counts["pickups 201"] += 1
                mine = shown.get(answer.body["id"])
                if mine is None or mine["tracking_number"] != answer.body["tracking_number"]:
                    violations.append(f"{name}: pickup answered 201 {answer.body} is not on the deal: {list(shown.values())}")
        if len(shown) != len(deal.pickups):
            violations.append(f"{name}: {len(deal.pickups)} distinct pickups answered 201, the deal shows {len(shown)}: {list(shown.values())}")
        if len({a.body["id"] for a in deal.of("pickup") if a.status == 201 and a.idempotency_key == f"{deal.tag}-pickup-1"}) > 1:
            violations.append(f"{name}: a pickup request retried with its Idempotency-Key booked a second pickup")
        by_pickup = defaultdict(list)
        for pickup_id, event, answer in deal.events:
            counts[f"carrier events {answer.status}" + (f" {answer.body.get('status')}" if isinstance(answer.body, dict) else "")] += 1
            if answer.status == 202:
                by_pickup[pickup_id].append(event["status"])
        for pickup_id, statuses in by_pickup.items():
            want_status = max(statuses, key=lambda s: ["scheduled", "pre_transit", "in_transit", "out_for_delivery", "failure", "delivered"].index(s))
            if pickup_id in shown and shown[pickup_id]["status"] != want_status:
                violations.append(f"{name}: pickup {pickup_id} shows {shown[pickup_id]['status']}, its carrier's latest status was {want_status}")

        # deals decide on time, whatever their partner's mail does
        if final.get("closed_reason", "").startswith("return window ended") and deal.certificate:
            lag = (at(deal.certificate["issued_at"]) - deadline).total_seconds()
            lags[deal.partner].append(lag)
            if lag > form.close_slack:
                violations.append(f"{name} decided {lag:.1f} s after its deadline (certificate issued {deal.certificate['issued_at']})")

    for serial, deal_id in refused_serials:  # a refused receipt burnt nothing
        if serial in certified_in and accepted_by.get(serial) != certified_in[serial]:
            violations.append(f"serial {serial} of a receipt answered 409 on {deal_id} is in the certificate of {certified_in[serial]}")

    # -- the impact report is the sum of the deals' views
    for scope, want_released, want_forfeited, want_units in (
        ("all", released, forfeited, sum(units_by.values())),
        (GOOD, released_by[GOOD], forfeited_by[GOOD], units_by[GOOD]),
        (BOUNCE, released_by[BOUNCE], forfeited_by[BOUNCE], units_by[BOUNCE]),
    ):
        report = run.impact.get(scope, {})
        got = (Decimal(report.get("incentives_released", "-1")), Decimal(report.get("incentives_forfeited", "-1")), report.get("units_returned"))
        if got != (want_released, want_forfeited, want_units):
            violations.append(f"impact report ({scope}): released {got[0]}, forfeited {got[1]}, units {got[2]}; "
                              f"the deals show {want_released}, {want_forfeited}, {want_units}")

    # -- the engine: no workflow failed
    for workflow_id in failed:
        violations.append(f"workflow {workflow_id} is in state Failed")

    # -- mail, at the provider and in the store
    for message in standin.delivered_twice():
        violations.append(f"delivered twice by the provider: {message}")
    for deal in run.deals:
        if deal.final is None or deal.final.get("status") not in FINAL:
            continue
        name = f"deal {deal.id} ({deal.plan}, {deal.partner})"
        emails = deal.emails
        if emails is None:
            violations.append(f"{name}: GET /v1/deals/{deal.id}/emails never answered")
            continue
        by_key = {m["key"]: m for m in emails}
        for message in emails:
            state, error = message["state"], message.get("last_error") or ""
            delivered = standin.delivered_to(message["to"], message["subject"])
            kind = message["key"].split(":")[-2] if message["key"].count(":") >= 2 else message["key"]
            counts[f"mail {deal.partner} {kind} {state}" + (" (outcome unknown)" if "outcome unknown" in error else "")] += 1
            if delivered > 1:
                violations.append(f"{name}: {message['key']} reached the provider {delivered} times")
            if deal.partner == BOUNCE:
                if state == "sending" or (state == "failed" and "400" in error):
                    if state == "sending":
                        counts["mail in doubt (claimed by a killed worker's attempt)"] += 1
                    continue
                violations.append(f"{name}: {message['key']} to the refused address is {state} ({error[:200]}), want failed with SendGrid's 400")
            elif state == "sent" or (state == "failed" and "outcome unknown" in error):
                if delivered != 1:
                    violations.append(f"{name}: {message['key']} is {state} in the store, the provider has it {delivered} times")
            elif state == "sending" and delivered == 1:
                counts["mail in doubt (claimed by a killed worker's attempt)"] += 1
            elif state == "sending":
                violations.append(f"{name}: {message['key']} is held `sending` by the claim of an attempt whose worker died before the "
                                  f"provider had it: it goes out when the claim expires (10 minutes), not in this run")
            else:
                violations.append(f"{name}: {message['key']} is {state} ({error[:200]}), the provider has it {delivered} times")
        settlement = {"released": "released", "forfeited": "forfeited"}.get(deal.final["incentive"]["status"])
        settlement_keys = [k for k in by_key if ":settlement:" in k]
        if settlement and settlement_keys != [f"{deal.id}:settlement:{settlement}"]:
            violations.append(f"{name}: incentive {settlement}, settlement notices in the store {settlement_keys}")
        if not settlement and settlement_keys:
            violations.append(f"{name}: incentive {deal.final['incentive']['status']}, yet settlement notices {settlement_keys}")
        for pickup_id, event, answer in deal.events:
            if event["status"] == "failure" and answer.status == 202 and f"{deal.id}:{pickup_id}:escalation:failure" not in by_key:
                violations.append(f"{name}: the carrier's failure of {pickup_id} was accepted but no escalation was mailed: {sorted(by_key)}")

    counts = dict(counts)
    counts.update({
        "deals": len(run.deals),
        "deals booked": sum(1 for d in run.deals if d.id),
        "kills": run.stack.kills,
        "server restarts": run.stack.server_restarts,
        "http requests": stats.http_requests,
        "answers": len(stats.answers),
        "503s": sum(stats.status_503.values()),
        "5xx other than 503": len(stats.server_errors),
        "connection errors": sum(stats.transport_errors.values()),
        "mail requests at the provider": standin.requests,
        "mail delivered": sum(standin.delivered.values()),
        "mail refused 400": standin.refusals[400],
        "mail refused 503": standin.refusals[503],
        "incentives released": str(released),
        "incentives forfeited": str(forfeited),
        "failed workflows": len(failed),
    })
    counts.update({f"503 {kind}": n for kind, n in stats.status_503.items()})
    counts.update({f"connection error {kind}": n for kind, n in stats.transport_errors.items()})
    counts.update({f"outcome {outcome}": n for outcome, n in outcomes.items()})
    counts.update(stats.counts)
    for partner, values in lags.items():
        counts[f"decision lag after deadline {partner} max s"] = round(max(values), 1)
        counts[f"decision lag after deadline {partner} mean s"] = round(sum(values) / len(values), 1)
    return violations, counts


# --- the whole run ----------------------------------------------------------------------------


def plan_deals(form: Form) -> list[Deal]:
    rng = random.Random(form.seed)
    deals = []
    for index in range(form.deals):
        partner = GOOD if (index // len(form.plans)) % 2 == 0 else BOUNCE  # each plan for both partners
        rate = f"0.0{1 + index % 7}"
        deals.append(Deal(index=index, plan=form.plans[index % len(form.plans)], partner=partner, rate=rate, start_after=rng.uniform(0, form.booking_spread)))
    return deals


def new_postgres_database(base_url: str) -> str:
    """A database of its own on a running cluster (tests/postgres.py's URL)."""
    import uuid

    from sqlalchemy import create_engine, text

    name = f"chaos_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return base_url.rsplit("/", 1)[0] + f"/{name}"


async def run(form: Form, database_url: str | None = None, keep: bool = False, topology: Topology = Topology()) -> dict:
    """One chaos run; `database_url` a PostgreSQL URL, or None for SQLite in the run's folder;
    `topology` how many workers and APIs serve it (requests take the APIs in turn).

    Returns the counts, the violations (sentences; empty when every check held), the seconds it
    took and, when something failed or `keep`, the folder with the processes' logs."""
    from tests.sendgrid_standin import SendGridStandIn

    started = time.monotonic()
    data_dir = Path(tempfile.mkdtemp(prefix="takeback-chaos-"))
    temporal_port, api_port = free_port(), free_port()
    store_url = database_url or f"sqlite:///{data_dir / 'takeback.db'}"
    webhook_secret = secrets.token_urlsafe(32)  # a production process refuses a short or published one
    standin = SendGridStandIn()
    standin.rejected_addresses = {CONTACT[BOUNCE]}
    standin.fail_every, standin.slow_every, standin.slow_seconds = MAIL_FAIL_EVERY, MAIL_SLOW_EVERY, MAIL_SLOW_SECONDS
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        TEMPORAL_ADDRESS=f"127.0.0.1:{temporal_port}",
        TAKEBACK_DATA_DIR=str(data_dir),
        TAKEBACK_RETURN_WINDOW=f"{form.window}s",
        # One reminder per deal: two of a deal with no receipt between them carry the same subject, and the
        # provider's count of (to, subject) could not tell them from one message delivered twice.
        TAKEBACK_REMINDER_OFFSETS=f"{form.window // 2}s",
        TAKEBACK_SIM_CARRIER_STEP="0s",
        TAKEBACK_CARRIER_WEBHOOK_SECRET=webhook_secret,
        SENDGRID_API_KEY="SG.chaos-standin",
        SENDGRID_HOST=standin.url,
        TAKEBACK_WORKFLOW_SANDBOX="true",  # as every worker of the suite: non-determinism fails here
        # The full run books ~200 deals of 100,000.00 on one partner key within a minute: above the default
        # cap on a partner's open exposure, which is not what it tests.
        TAKEBACK_PARTNER_OPEN_EXPOSURE_LIMIT="100000000.00",
    )
    # The processes run as in production (the default TAKEBACK_ENV), whatever the suite's own mode.
    for name in ("TAKEBACK_ENV", "TAKEBACK_DATABASE_URL", "TAKEBACK_TASK_QUEUE", "TAKEBACK_OUTBOX_DIR", "TEMPORAL_NAMESPACE", "TEMPORAL_API_KEY"):
        env.pop(name, None)
    if database_url:
        env["TAKEBACK_DATABASE_URL"] = database_url
    stack = Stack(data_dir=data_dir, env=env, temporal_port=temporal_port, api_port=api_port, topology=topology)
    stats = Stats()
    api = Api(stack.api_urls, stats, webhook_secret)
    chaos_task = None
    result: dict = {}
    try:
        await asyncio.to_thread(stack.start)
        chaos_run = Run(form, stack, api, stats, standin, store_url)
        chaos_run.keys["ops"] = await asyncio.to_thread(chaos_run.make_key, "ops")
        log(f"stack up in {time.monotonic() - started:.1f} s ({'PostgreSQL' if database_url else 'SQLite'}, {topology}); certifying two partners")
        await asyncio.gather(chaos_run.certify(GOOD), chaos_run.certify(BOUNCE))
        chaos_run.deals = plan_deals(form)
        if form.kills:
            log(f"driving {form.deals} deals; {form.kills} worker SIGKILLs every ~{form.kill_every:g} s, a server restart at kill {form.restart_server_at}")
        else:
            log(f"driving {form.deals} deals ({', '.join(form.plans)}); no kills")
        chaos_run.started = time.time()
        chaos_task = asyncio.create_task(chaos_run.chaos())
        driven = asyncio.Event()
        watchers = [asyncio.create_task(chaos_run.watch(partner, driven)) for partner in (GOOD, BOUNCE)]
        await asyncio.gather(*(chaos_run.drive(deal) for deal in chaos_run.deals))
        await chaos_task  # the promised kills, even on a fast run
        driven.set()
        await asyncio.gather(*watchers)
        booked = [at(Run.deal_answer(d, "book")["return_deadline"]).timestamp() for d in chaos_run.deals if d.id]
        last_deadline = max(booked, default=time.time()) + sum(form.extensions)
        log("traffic done; waiting for every deal to close")
        await chaos_run.wait_closed(until=last_deadline + form.close_wait)
        log("deals closed; waiting for their mail")
        await chaos_run.wait_mail(until=time.time() + form.mail_wait)
        await chaos_run.collect()
        failed = await failed_workflows(f"127.0.0.1:{stack.temporal_port}")
        violations, counts = verify(chaos_run, failed)
        log("checking the store, and every history: failed workflow tasks, replay")
        for check in (asyncio.to_thread(store_checks, chaos_run), engine_checks(f"127.0.0.1:{stack.temporal_port}")):
            more, more_counts = await check
            violations += more
            counts.update(more_counts)
        counts["topology"] = str(topology)
        counts.update({f"answers from API {n + 1}": c for n, c in sorted(Counter(a.api for a in stats.answers).items())})
        result = {"counts": counts, "violations": violations, "server_errors": stats.server_errors}
    finally:
        if chaos_task is not None and not chaos_task.done():
            chaos_task.cancel()
            with contextlib.suppress(BaseException):
                await chaos_task
        await api.close()
        await asyncio.to_thread(stack.stop)
        if result:
            result["counts"].update({f"cpu {name} s": round(seconds, 1) for name, seconds in sorted(stack.cpu.items())})
        standin.close()
        from store import db

        if store_url in db._engines:  # noqa: SLF001 - this process's connections, before the database goes
            db._engines.pop(store_url).dispose()  # noqa: SLF001
        if result and not result["violations"] and not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            result["logs"] = str(data_dir / "logs")
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def report(result: dict) -> str:
    counts = result.get("counts", {})
    lines = [f"chaos run: {result.get('seconds')} s, {len(result.get('violations', []))} violations"]
    lines += [f"  {name}: {counts[name]}" for name in sorted(counts)]
    lines += [f"  VIOLATION {v}" for v in result.get("violations", [])]
    if result.get("logs"):
        lines.append(f"  logs: {result['logs']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="the form make test runs")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--deals", type=int)
    parser.add_argument("--window", type=int, help="seconds")
    parser.add_argument("--kills", type=int)
    parser.add_argument("--kill-every", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs, databases)")
    parser.add_argument("--races", action="store_true", help="the race stress run (RACES) instead of the chaos plans")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--apis", type=int, default=1, help="API processes")
    args = parser.parse_args()
    form = RACES if args.races else FAST if args.fast else FULL
    overrides = {name: value for name, value in (("deals", args.deals), ("window", args.window), ("kills", args.kills), ("kill_every", args.kill_every), ("seed", args.seed)) if value is not None}
    form = Form(**{**form.__dict__, **overrides})
    topology = Topology(workers=args.workers, apis=args.apis)

    async def go() -> dict:
        if args.database == "postgresql":
            from tests.postgres import throwaway_postgres

            with throwaway_postgres() as url:
                return await run(form, url, keep=args.keep, topology=topology)
        return await run(form, keep=args.keep, topology=topology)

    result = asyncio.run(go())
    print(report(result))
    sys.exit(0 if not result["violations"] else 1)


if __name__ == "__main__":
    main()
