"""From a deal's deadline to its recorded decision, with mail healthy and during a mail outage.

Each mode runs on a stack of its own (in-memory dev server, worker, API; bench/stack.py) whose
mail goes to a SendGrid stand-in (tests/sendgrid_standin.py) through the real client. It books
--deals deals through the API with a --window return window and no reminders, leaves them short
(so each is forfeited at its deadline, and a notice is due), and reads from the store, for every
deal, when its settlement was recorded and when its certificate was issued, against its deadline.
During the outage the stand-in answers every request 503 for the whole run; the decision must not
move. Prints p50/p99/max per mode, the outage/healthy ratios, and what the provider saw.

    .venv/bin/python bench/decision_latency.py [--deals 60] [--window 20s] [--rounds 3]
"""

import argparse
import asyncio
import sqlite3
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.http_load import LoadClient  # noqa: E402
from bench.run import booking_body, certify, ops_key, pct  # noqa: E402
from bench.stack import Stack  # noqa: E402
from domain.durations import parse_duration  # noqa: E402
from tests.sendgrid_standin import SendGridStandIn  # noqa: E402


def _when(value: str) -> float:
    """A stored UTC time (SQLite keeps it without an offset) as unix seconds."""
    moment = datetime.fromisoformat(value)
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def decisions(database: Path) -> list[tuple[float, float, float]]:
    """(deadline, settlement recorded, certificate issued) of each settled deal, unix seconds."""
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT d.return_deadline, s.decided_at, c.issued_at FROM deal d JOIN settlement s ON s.deal_id = d.id "
            "JOIN certificate c ON c.deal_id = d.id"
        ).fetchall()
    return [(_when(a), _when(b), _when(c)) for a, b, c in rows]


async def one_round(mode: str, deals: int, window: str) -> dict:
    standin = SendGridStandIn()
    standin.down = mode == "outage"
    stack = Stack(
        file_backed=False,
        env_overrides={"TAKEBACK_RETURN_WINDOW": window, "TAKEBACK_REMINDER_OFFSETS": "", "SENDGRID_API_KEY": "SG.bench", "SENDGRID_HOST": standin.url},
    ).start()
    try:
        key = ops_key(stack)
        async with LoadClient(stack.api_url, headers={"Authorization": f"Bearer {key}"}) as http:
            standin.down = False  # certification mail may go out either way; the outage is about the deals
            await certify(http)
            standin.down = mode == "outage"
            answers = await asyncio.gather(*(http.post("/v1/deals", json=booking_body()) for _ in range(deals)))
            assert all(a.status_code == 201 for a in answers), [a.text for a in answers if a.status_code != 201][:3]
        waited_until = time.monotonic() + parse_duration(window).total_seconds() + 60
        database = stack.data_dir / "takeback.db"
        while time.monotonic() < waited_until and len(decisions(database)) < deals:
            await asyncio.sleep(0.5)
        found = decisions(database)
        assert len(found) == deals, f"{mode}: {len(found)} of {deals} deals decided"
        return {
            "decision": [decided - deadline for deadline, decided, _ in found],  # seconds (pct answers ms)
            "certificate": [issued - deadline for deadline, _, issued in found],
            "delivered": sum(standin.delivered.values()),
            "refused": dict(standin.refusals),
        }
    finally:
        stack.stop()
        standin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=60)
    parser.add_argument("--window", default="20s")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode, alternating healthy and outage")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"healthy": [], "outage": []}
    for number in range(args.rounds):
        for mode in ("healthy", "outage") if number % 2 == 0 else ("outage", "healthy"):
            print(f"round {number + 1}/{args.rounds}: {mode}, {args.deals} deals, window {args.window} ...", file=sys.stderr, flush=True)
            results[mode].append(asyncio.run(one_round(mode, args.deals, args.window)))
    print(f"{'deadline -> recorded (ms)':<32}{'p50 median [range]':>26}{'p99 median [range]':>26}{'max':>9}")
    summary = {}
    for measure in ("decision", "certificate"):
        for mode in ("healthy", "outage"):
            p50s = [pct(r[measure], 0.5) for r in results[mode]]
            p99s = [pct(r[measure], 0.99) for r in results[mode]]
            worst = max(max(r[measure]) for r in results[mode]) * 1000
            summary[(measure, mode)] = (statistics.median(p50s), statistics.median(p99s))
            print(f"{measure + ' (' + mode + ')':<32}{statistics.median(p50s):>10.0f} [{min(p50s):.0f}-{max(p50s):.0f}]"
                  f"{statistics.median(p99s):>14.0f} [{min(p99s):.0f}-{max(p99s):.0f}]{worst:>9.0f}")
    for measure in ("decision", "certificate"):
        healthy, outage = summary[(measure, "healthy")], summary[(measure, "outage")]
        print(f"{measure}: outage / healthy p50 {outage[0] / healthy[0]:.2f}, p99 {outage[1] / healthy[1]:.2f}")
    for mode in ("healthy", "outage"):
        print(f"provider ({mode}): delivered {[r['delivered'] for r in results[mode]]}, refused {[r['refused'] for r in results[mode]]}")


if __name__ == "__main__":
    main()
