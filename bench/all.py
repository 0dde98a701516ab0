"""`make bench`: every measure of the system's cost and pace, one after another, each printing its own table.

Each benchmark starts its own stack (file-backed dev server, worker, API; SQLite or a throwaway PostgreSQL), so one
never measures another's leftovers. `--quick` is a smoke run of every one at small sizes (SQLite, except the workers'
bench, which is PostgreSQL's; a deal's cost from the recorded histories only): it shows that each still runs and
roughly where it stands, not numbers to record. The last lines say how long each took.

The measures of earlier issues that are not re-run here (one deal of 50,000 serials and parked deals, deadline to
decision with mail down, receipts while the worker is SIGKILLed, the console's page at 10,000 deals, the cost of metrics
and traces, a deal of 100,000 serials' custody) run with `make bench-more`.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (what it measures, full arguments, quick arguments)
BENCHMARKS = [
    ("booking: API vs raw SDK starts, concurrency 1/8/32, serials or none, SQLite and PostgreSQL",
     ["bench/booking_grid.py"], ["bench/booking_grid.py", "--quick", "--stores", "sqlite", "--rounds", "1", "--concurrencies", "1,32"]),
    ("deadline storm: 5,000 deals due in one second, mail rate-limited",
     ["bench/deadline_storm.py", "--max-wait", "100", "--drain-watch", "10"], ["bench/deadline_storm.py", "--quick", "--deals", "200"]),
    ("lifecycle, round trips and reads, SQLite and PostgreSQL",
     ["bench/run.py", "--phases", "lifecycle,trips,reads"], ["bench/run.py", "--quick", "--backends", "file/sqlite", "--phases", "trips,reads"]),
    ("1 vs 2 workers and API processes, PostgreSQL",
     ["bench/workers.py", "--rounds", "2"], ["bench/workers.py", "--quick", "--rounds", "1", "--seconds", "2"]),
    ("what a deal costs: Actions, history, store rows and bytes, e-mails",
     ["bench/deal_cost.py"], ["bench/deal_cost.py", "--histories-only"]),
]

MORE = [
    ("one deal of 50,000 serials and 1,500 parked deals (SQLite store)", ["bench/run.py", "--backends", "file/sqlite", "--phases", "scale,parked"]),
    ("deadline to decision, mail healthy vs down", ["bench/decision_latency.py", "--window", "10s"]),
    ("receipts while the worker is SIGKILLed", ["bench/worker_kill_latency.py", "--seconds", "30"]),
    ("the console's deals page with 10,000 deals", ["bench/console_page.py"]),
    ("booking with metrics and traces off and on", ["bench/observability_cost.py"]),
    ("custody of a deal of 100,000 serials", ["bench/custody.py"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every benchmark at small sizes, SQLite only (a smoke run, about 2 minutes)")
    parser.add_argument("--more", action="store_true", help="the earlier issues' benchmarks instead (about 12 minutes)")
    parser.add_argument("--only", help="run the benchmarks whose script names contain this")
    args = parser.parse_args()
    plan = [(what, command) for what, command in MORE] if args.more else [(what, quick if args.quick else full) for what, full, quick in BENCHMARKS]
    if args.only:
        plan = [(what, command) for what, command in plan if args.only in command[0]]
    started, spent, failed = time.monotonic(), [], []
    for what, command in plan:
        print(f"\n=== {what}: {' '.join(command)}", flush=True)
        began = time.monotonic()
        code = subprocess.call([sys.executable, *command], cwd=ROOT)
        spent.append((command[0], time.monotonic() - began, code))
        if code:
            failed.append(command[0])
    print("\n=== time per benchmark")
    for script, seconds, code in spent:
        print(f"  {script:<28} {seconds:6.0f} s{'   FAILED (exit %d)' % code if code else ''}")
    print(f"  {'total':<28} {time.monotonic() - started:6.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
