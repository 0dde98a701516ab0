"""Deadline storm: N deals whose return deadlines fall within the same second, mail rate-limited by the provider.

A vendor's quarter-end: every deal booked by a partner over the quarter comes due at once, each
short of its units (so each is forfeited, and a notice is due), and each was reminded shortly
before (so mail has piled up when the deadlines strike). The provider (tests/sendgrid_standin.py,
reached through the real SendGrid client) accepts `--mail-rate` messages a minute and answers 429
with `X-RateLimit-Reset` past that.

The stack is bench/stack.py's: a file-backed `temporal server start-dev`, the product worker, the
API (only to certify the partner), the store on SQLite (or `--database-url`, `postgres` for a
throwaway cluster). Deals are real deals run by the real worker: booked through the service layer
(service.deals.book_deal, what the API's route calls) with the acceptance clock fixed at the run's
start (`booking_clock`, as the tests do on the time-skipping server), so that every deadline is
`start + window` (+ the deal's index mod 997 in ms: spread over one second) whatever the order
and pace the bookings reached the engine in.

Measured, per deal, from its deadline to
  - decision: its settlement row in the store (the money decision, recorded once; the ledger and
    the impact report read it), the goal's measure;
  - closed: its certificate (written by the same activity that closes the deal's row in the read
    model: when the console and API show it expired).
And: mail accepted by the provider per minute and the backlog when the last decision landed (the
drain is watched for at most `--drain-watch` s, then its rate and what is left are reported, not
waited for), server/worker/API CPU seconds (reminders due -> deadline, deadline -> last decision),
the worker's peak RSS.

    .venv/bin/python bench/deadline_storm.py [--deals 5000 | --quick] [--database-url postgres]
        [--mail-rate 600] [--worker-env TAKEBACK_MAIL_RATE=0 ...]
"""

import argparse
import asyncio
import contextlib
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.http_load import LoadClient  # noqa: E402
from bench.run import booking_body, certify, ops_key  # noqa: E402
from bench.stack import Stack, rss_mb  # noqa: E402
from tests.sendgrid_standin import SendGridStandIn  # noqa: E402

_STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[storm {time.monotonic() - _STARTED:5.0f}s] {message}", flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def utc(moment: datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


@contextlib.contextmanager
def database(url: str):
    if url == "postgres":
        from tests.postgres import throwaway_postgres

        with throwaway_postgres() as pg_url:
            yield pg_url
    else:
        yield url


class Store:
    """Reads the store the worker writes (the bench's own engine: SQLite or PostgreSQL)."""

    def __init__(self, url: str):
        from store.db import get_engine

        self.engine = get_engine(url)

    def counts(self) -> tuple[int, int]:
        from sqlalchemy import func, select
        from sqlmodel import Session

        from store.tables import Certificate, Settlement

        with Session(self.engine) as session:
            decided = session.execute(select(func.count()).select_from(Settlement)).scalar_one()
            closed = session.execute(select(func.count()).select_from(Certificate)).scalar_one()
        return decided, closed

    def reminded(self, deadline: float) -> int:
        """Storm deals (deadline in [deadline, +1 s)) whose reminder step has run (read model revision >= 1)."""
        from sqlalchemy import func, select
        from sqlmodel import Session

        from store.tables import Deal

        low, high = datetime.fromtimestamp(deadline, timezone.utc), datetime.fromtimestamp(deadline + 1, timezone.utc)
        with Session(self.engine) as session:
            return session.execute(
                select(func.count()).select_from(Deal).where(Deal.return_deadline >= low, Deal.return_deadline < high, Deal.revision >= 1)
            ).scalar_one()

    def latencies(self) -> tuple[list[float], list[float], float]:
        """Seconds from deadline to settlement and to certificate per deal; the last settlement's time."""
        from sqlalchemy import select
        from sqlmodel import Session

        from store.tables import Certificate, Deal, Settlement

        with Session(self.engine) as session:
            decided = session.execute(select(Deal.return_deadline, Settlement.decided_at).join(Settlement, Settlement.deal_id == Deal.id)).all()
            closed = session.execute(select(Deal.return_deadline, Certificate.issued_at).join(Certificate, Certificate.deal_id == Deal.id)).all()
        last = max((utc(b) for _, b in decided), default=float("nan"))
        return [utc(b) - utc(a) for a, b in decided], [utc(b) - utc(a) for a, b in closed], last


def storm_mail(standin: SendGridStandIn) -> list[float]:
    """When each deal's reminder or settlement notice was accepted (partner certification mail left out)."""
    with standin.lock:
        return list(standin.accepted_at_storm)


def watch_storm_mail(standin: SendGridStandIn) -> None:
    """Keep, beside `accepted_at`, the times of the storm's own messages (reminders and settlement notices)."""
    standin.accepted_at_storm = []
    answer = standin._answer

    def counted(to: str, subject: str, key: str):
        status, delay, headers = answer(to, subject, key)
        if status == 202 and (":reminder:" in key or ":settlement:" in key):
            with standin.lock:
                standin.accepted_at_storm.append(time.time())
        return status, delay, headers

    standin._answer = counted


async def book(client, settings, deals: int, concurrency: int, accepted_at) -> float:
    """Book `deals` through the service layer, the i-th accepted at `accepted_at(i)`; seconds taken."""
    import service.deals as service
    from domain.models import BookingRequest

    request = BookingRequest.model_validate(booking_body(10))
    order = iter(range(deals))

    async def clock() -> datetime:
        return datetime.fromtimestamp(accepted_at(next(order)), timezone.utc)

    service.booking_clock = clock
    semaphore = asyncio.Semaphore(concurrency)
    done = 0
    began = time.monotonic()

    async def one(_):
        nonlocal done
        async with semaphore:
            await service.book_deal(client, settings, request)
            done += 1
            if done % max(100, deals // 10) == 0:
                log(f"  booked {done}/{deals} ({done / (time.monotonic() - began):.0f}/s)")

    await asyncio.gather(*(one(i) for i in range(deals)))
    return time.monotonic() - began


async def sample_histories(client, store: Store, n: int) -> tuple[float, float]:
    """Workflow tasks timed out (a sticky task not taken in time, then replayed elsewhere) and events, per deal, over `n` decided deals."""
    from sqlalchemy import select
    from sqlmodel import Session
    from temporalio.api.enums.v1 import EventType

    from store.tables import Settlement
    from workflows.ids import deal_workflow_id

    with Session(store.engine) as session:
        ids = [row[0] for row in session.execute(select(Settlement.deal_id).limit(n)).all()]
    timeouts = events = 0
    for deal_id in ids:
        history = await client.get_workflow_handle(deal_workflow_id(deal_id)).fetch_history()
        events += len(history.events)
        timeouts += sum(1 for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT)
    return timeouts / max(1, len(ids)), events / max(1, len(ids))


def mail_rates(times: list[float], since: float) -> list[int]:
    """Messages accepted in each whole minute from `since`."""
    buckets: list[int] = []
    for moment in times:
        index = int((moment - since) // 60)
        if index < 0:
            continue
        buckets.extend([0] * (index + 1 - len(buckets)))
        buckets[index] += 1
    return buckets


async def run(args) -> dict:
    standin = SendGridStandIn()
    standin.rate_limit, standin.rate_window = args.mail_rate, 60.0
    watch_storm_mail(standin)
    worker_env = dict(item.split("=", 1) for item in args.worker_env)
    with database(args.database_url) as url:
        stack = Stack(file_backed=True, env_overrides={"SENDGRID_API_KEY": "SG.bench", "SENDGRID_HOST": standin.url, **worker_env})
        if url:
            stack.env["TAKEBACK_DATABASE_URL"] = url
        log(f"starting the stack (file-backed dev server, worker, API; store {'PostgreSQL' if url else 'SQLite'}; worker env {worker_env or 'defaults'})")
        stack.start()
        try:
            return await measure(args, stack, standin, url)
        finally:
            stack.stop()
            standin.close()


async def measure(args, stack: Stack, standin: SendGridStandIn, url: str) -> dict:
    from settings import Settings

    key = ops_key(stack)
    async with LoadClient(stack.api_url, headers={"Authorization": f"Bearer {key}"}) as http:
        await certify(http)
    from temporal_client import connect

    def booking_settings(window: float, offsets: str) -> Settings:
        return Settings(
            TEMPORAL_ADDRESS=stack.env["TEMPORAL_ADDRESS"], TAKEBACK_DATA_DIR=str(stack.data_dir), TAKEBACK_DATABASE_URL=url,
            TAKEBACK_RETURN_WINDOW=f"{window}s", TAKEBACK_REMINDER_OFFSETS=offsets, TAKEBACK_ENV="test",
        )

    client = await connect(booking_settings(1, ""))
    # The pace of bookings on this machine now, by deals outside the storm (a year's window: they stay
    # open, parked): the storm's deadline is placed after its bookings from it.
    warmup = max(20, min(200, args.deals // 25))
    warmup_seconds = await book(client, booking_settings(365 * 86400, ""), warmup, args.concurrency, lambda i: time.time())
    await asyncio.sleep(2)  # the warm-up's tasks done: the worker's resident memory with `warmup` deals cached
    rss_warm = rss_mb(stack.processes["worker"].pid, peak=False)
    rate = warmup / warmup_seconds
    start = math.floor(time.time())
    # Every storm deal is accepted at `start` (+ its index mod 997 in ms): its deadline is in [start + window, + 1 s).
    window = math.ceil(args.deals / (rate * args.booking_pace) + args.reminder_lead + args.margin)
    deadline = start + window
    reminders_due = deadline - args.reminder_lead
    settings = booking_settings(window, f"{args.reminder_lead}s")
    store = Store(settings.effective_database_url)
    log(f"{warmup} warm-up bookings at {rate:.0f}/s; booking {args.deals} deals: deadlines in [{window}, {window + 1}) s from now, reminders due {args.reminder_lead} s before")
    booking_seconds = await book(client, settings, args.deals, args.concurrency, lambda i: start + (i % 997) / 1000)
    log(f"booked {args.deals} in {booking_seconds:.1f}s ({args.deals / booking_seconds:.0f}/s); reminders due in {reminders_due - time.time():.0f}s, deadlines in {deadline - time.time():.0f}s")
    await asyncio.sleep(min(2.0, max(0.0, reminders_due - time.time() - 1)))
    # Memory per cached deal: the worker's resident memory grown by the storm's bookings over the deals
    # it caches now (all of them when TAKEBACK_WORKER_CACHE >= deals + warm-up; then this is the cost of one).
    rss_booked = rss_mb(stack.processes["worker"].pid, peak=False)
    if time.time() > reminders_due:
        log("  warning: the bookings outlasted the reminders' due time (raise --margin or lower --booking-pace): reminders overlapped the bookings")
    if time.time() > deadline:
        raise SystemExit("the bookings outlasted the deadline: lower --booking-pace")

    async def until(moment: float) -> None:
        await asyncio.sleep(max(0.0, moment - time.time()))

    await until(reminders_due)
    cpu_reminders = stack.cpu()
    log("reminders due")
    last_line = 0.0
    while time.time() < deadline:
        await asyncio.sleep(1)
        if time.time() - last_line >= 5:
            last_line = time.time()
            log(f"  T{time.time() - deadline:+.0f}s: mail accepted {len(storm_mail(standin))}, 429s {standin.refusals[429]}")
    cpu_deadline = stack.cpu()
    # What a user sees at the deadline: were the deals reminded (the reminder step run, its mail queued)?
    reminded = await asyncio.to_thread(store.reminded, deadline) if args.reminder_lead else 0
    log(f"deadlines struck; {reminded}/{args.deals} deals had run their reminder step by then")
    decided = closed = 0
    give_up = deadline + args.max_wait
    last_line = 0.0
    while time.time() < give_up:
        await asyncio.sleep(0.5)
        decided, closed = await asyncio.to_thread(store.counts)
        if decided >= args.deals and closed >= args.deals:
            break
        if time.time() - last_line >= 5:
            last_line = time.time()
            busy = stack.cpu()
            log(f"  T{time.time() - deadline:+.0f}s: decided {decided}/{args.deals}, closed {closed}, mail accepted {len(storm_mail(standin))}, 429s {standin.refusals[429]}, "
                f"CPU s since deadline: " + ", ".join(f"{n} {busy[n] - cpu_deadline[n]:.0f}" for n in busy))
    decisions, closes, last_decision = await asyncio.to_thread(store.latencies)
    sticky_timeouts, events = await sample_histories(client, store, 20)
    cpu_closed = stack.cpu()
    all_closed_at = time.time()
    mail = storm_mail(standin)
    owed = 2 * args.deals  # a reminder and a forfeit notice a deal
    at_last_decision = sum(1 for t in mail if t <= last_decision)
    log(f"decided {len(decisions)}, closed {len(closes)}; last decision at T+{last_decision - deadline:.1f}s; mail accepted {len(mail)}/{owed}")
    watch_until = time.time() + args.drain_watch
    while time.time() < watch_until and len(storm_mail(standin)) < owed:
        await asyncio.sleep(1)
    mail = storm_mail(standin)
    watched = time.time() - all_closed_at
    drained_in_watch = sum(1 for t in mail if t > all_closed_at)
    return {
        "args": args,
        "reminded_by_deadline": reminded,
        "rss_warm": rss_warm,
        "rss_booked": rss_booked,
        "booking_seconds": booking_seconds,
        "decisions": decisions,
        "closes": closes,
        "last_decision": last_decision - deadline,
        "mail_total": len(mail),
        "owed": owed,
        "backlog_at_last_decision": owed - at_last_decision,
        "per_minute": mail_rates(mail, reminders_due),
        "drain_rate": drained_in_watch / watched * 60 if watched > 1 else float("nan"),
        "left": owed - len(mail),
        "refusals": dict(standin.refusals),
        "requests": standin.requests,
        "cpu_reminders": {n: cpu_deadline[n] - cpu_reminders[n] for n in cpu_deadline},
        "cpu_storm": {n: cpu_closed[n] - cpu_deadline[n] for n in cpu_closed},
        "storm_seconds": all_closed_at - deadline,
        "worker_rss": rss_mb(stack.processes["worker"].pid),
        "sample_timeouts": sticky_timeouts,
        "sample_events": events,
        "server_rss": rss_mb(stack.processes["server"].pid),
    }


def report(r: dict) -> None:
    a = r["args"]
    load = Path("/proc/loadavg").read_text().split()[:3]
    print()
    print(f"deadline storm: {a.deals} deals due in one second, store {'SQLite' if not a.database_url else 'PostgreSQL'}, provider {a.mail_rate} mails/min, "
          f"worker env {' '.join(a.worker_env) or '(defaults)'}; load average {' '.join(load)}")
    print(f"  booked through the service layer in {r['booking_seconds']:.0f}s ({a.deals / r['booking_seconds']:.0f}/s)")
    print(f"  {'deadline ->':<34}{'n':>6}{'p50 s':>9}{'p99 s':>9}{'max s':>9}   goal")
    for label, values, goal in (("decision (settlement row)", r["decisions"], "p99 <= 60 s"), ("closed (read model, certificate)", r["closes"], "")):
        print(f"  {label:<34}{len(values):>6}{pct(values, 0.5):>9.1f}{pct(values, 0.99):>9.1f}{max(values, default=float('nan')):>9.1f}   {goal}")
    p99 = pct(r["decisions"], 0.99)
    met = len(r["decisions"]) == a.deals and p99 <= 60
    print(f"  every deal decided, p99 <= 60 s: {'met' if met else 'NOT met'}")
    print(f"  mail (reminders + notices): {r['mail_total']}/{r['owed']} accepted; per minute from the reminders' due time {r['per_minute']}; "
          f"backlog when the last decision landed {r['backlog_at_last_decision']}; drain rate after it {r['drain_rate']:.0f}/min, {r['left']} left "
          f"(~{r['left'] / (a.mail_rate or 1):.0f} more minutes at the provider's pace)")
    print(f"  reminders ({a.reminder_lead} s before the deadline): {r['reminded_by_deadline']}/{a.deals} deals had run their reminder step by the deadline")
    print(f"  provider: {r['requests']} requests, refused {r['refusals'] or 'none'}")
    for label, cpu in (("reminders due -> deadline", r["cpu_reminders"]), (f"deadline -> all closed ({r['storm_seconds']:.0f} s)", r["cpu_storm"])):
        print(f"  CPU s, {label}: " + ", ".join(f"{n} {v:.1f}" for n, v in cpu.items()))
    print(f"  history of 20 decided deals: {r['sample_events']:.1f} events, {r['sample_timeouts']:.2f} workflow tasks timed out (sticky, replayed elsewhere) per deal")
    print(f"  peak RSS: worker {r['worker_rss']:.0f} MB, dev server {r['server_rss']:.0f} MB; worker RSS {r['rss_warm']:.0f} MB after the warm-up, "
          f"{r['rss_booked']:.0f} MB with the storm booked: {(r['rss_booked'] - r['rss_warm']) * 1024 / a.deals:.1f} KB a deal booked (and cached, when the cache holds them)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=5000)
    parser.add_argument("--quick", action="store_true", help="300 deals, shorter leads and watches (under a minute)")
    parser.add_argument("--database-url", default="", help="a SQLAlchemy URL, or `postgres` for a throwaway cluster; default: SQLite in the stack's data dir")
    parser.add_argument("--mail-rate", type=int, default=600, help="messages a minute the provider accepts (then 429 with X-RateLimit-Reset)")
    parser.add_argument(
        "--reminder-lead", type=int, default=90,
        help="seconds before the deadline each deal's reminder falls due: long enough for the reminder steps to run before it (a real reminder is days ahead), "
        "short enough that their mail (deals / 600 a minute) is still draining when the deadlines strike",
    )
    parser.add_argument("--booking-pace", type=float, default=0.5, help="the storm's bookings are expected at this share of the warm-up's rate (the deadline is placed after them)")
    parser.add_argument("--margin", type=float, default=10, help="seconds between the guessed end of the bookings and the reminders")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-wait", type=float, default=150, help="seconds after the deadline to wait for every deal to close")
    parser.add_argument("--drain-watch", type=float, default=30, help="seconds to watch the mail drain after the last close (never the whole backlog)")
    parser.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE", help="a setting for the worker (and API), e.g. TAKEBACK_MAIL_RATE=0")
    args = parser.parse_args()
    if args.quick:
        args.deals = 300 if args.deals == 5000 else args.deals
        args.reminder_lead, args.margin, args.max_wait, args.drain_watch = 6, 2, 30, 3
    report(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
