"""Chain of custody at scale (issue 14): a deal of --serials serials (100,000) with custody events for
each (committed, picked up in one of 10 pickups with 4 carrier milestones each, received, graded,
sanitized, then dispositioned refresh or shipped to a recycler), written by the store code the
activities and the API run. Then:

- the timeline of one serial, `GET /v1/serials/{serial}` through the API in-process (ASGI, an ops key:
  the key lookup included), for --reads random serials: p50 / p99 / max ms (goal: p99 < 20 ms);
- the certificate: issued at close (close_deal), then rendered from the store as HTML and as PDF,
  each in a fresh process (goal: under 30 s each), with that process's peak RSS and, in another run,
  its tracemalloc peak. "Memory flat": the renders read the stored JSON a window at a time, so their
  peak should not grow with the deal; --serials 10000 beside 100000 shows whether it does.

SQLite store (the default) in a temporary folder; no Temporal server is needed.

    .venv/bin/python bench/custody.py [--serials 100000] [--reads 2000] [--compare 10000]
"""

import argparse
import asyncio
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import os  # noqa: E402

os.environ.setdefault("TAKEBACK_ENV", "test")

from domain.catalog import default_catalog  # noqa: E402
from domain.custody import DispositionRequest, DownstreamShipmentRequest, SanitizationRequest  # noqa: E402
from domain.deal_progress import deal_view, initial_progress  # noqa: E402
from domain.models import BookingRequest, CarrierEvent, Customer, DealStatus, EquipmentLine, Opportunity, PickupRequest, ReceiptItem  # noqa: E402
from service.deals import deal_terms  # noqa: E402
from settings import Settings  # noqa: E402
from store import custody  # noqa: E402
from store import deals as store  # noqa: E402
from store import settlement  # noqa: E402
from store.db import session_scope  # noqa: E402

DEAL = "DBENCHCUSTODY0001"
PRODUCT = "C9300-48P"  # data-bearing: every unit needs its sanitization
PICKUPS = 10
BATCH = 5_000


def build(url: str, settings: Settings, serials: int) -> dict:
    """The deal, its pickups, receipts, sanitizations, dispositions and shipments; seconds per step."""
    timings = {}
    names = [f"FOC{i:07d}" for i in range(serials)]
    booked_at = datetime.now(timezone.utc) - timedelta(days=30)
    # More than one booking may list (50,000): built without validation, as two bookings' worth.
    line = EquipmentLine.model_construct(product_id=PRODUCT, quantity=serials, serial_numbers=names)
    request = BookingRequest.model_construct(
        partner_id="PBENCH", customer=Customer(name="Bench Corp", country="CA"), opportunity=Opportunity.refresh, new_products_value=Decimal("1000000.00"),
        incentive_rate=Decimal("0.05"), equipment=[line],
    )
    terms = deal_terms(DEAL, request, settings, booked_at=booked_at)
    view = deal_view(terms, initial_progress(terms, booked_at))
    started = time.perf_counter()
    with session_scope(url) as session:
        store.stage_booking(session, DEAL, request, terms, view, actor="partner:PBENCH")
    timings["booking (committed events)"] = time.perf_counter() - started

    started = time.perf_counter()
    per_pickup = serials // PICKUPS
    trackings = []
    with session_scope(url) as session:
        for n in range(PICKUPS):
            pickup = PickupRequest(address="1 Main St", contact_name="Sam", contact_phone="+1 555 0100", ready_on=booked_at.date(), expected_units=per_pickup)
            saved = store.save_pickup(session, f"{DEAL}-p{n + 1}", DEAL, "SimCarrier", f"SIMBENCH{n:04d}", pickup)
            trackings.append((saved.id, saved.tracking_number))
            for step, status in enumerate(["pre_transit", "in_transit", "out_for_delivery", "delivered"]):
                store.record_carrier_event(session, CarrierEvent(event_id=f"e{step}", tracking_number=saved.tracking_number, status=status,
                                                                 occurred_at=booked_at + timedelta(days=1, hours=step)))
    timings["pickups and carrier events"] = time.perf_counter() - started

    started = time.perf_counter()
    catalog = default_catalog()
    with session_scope(url) as session:
        for start in range(0, serials, BATCH):
            pickup_id, tracking = trackings[min(start // per_pickup, PICKUPS - 1)]
            items = [ReceiptItem(product_id=PRODUCT, serial_number=s, condition="working" if i % 4 else "dead", age_years=2)
                     for i, s in enumerate(names[start : start + BATCH], start)]
            batch = f"{DEAL}-b{start // BATCH}"
            settlement.count_receipt(session, DEAL, batch, items, settings.refresh_max_age_years, catalog, received_at=booked_at + timedelta(days=3),
                                     context={"actor": "ops:bench", "facility": "Returns Center", "operator": "Rita", "tracking_number": tracking, "pickup_id": pickup_id})
    timings["receipts (received, graded)"] = time.perf_counter() - started

    refresh = [s for i, s in enumerate(names) if i % 4]
    recycle = [s for i, s in enumerate(names) if not i % 4]
    started = time.perf_counter()
    with session_scope(url) as session:
        for method, group in (("purge", refresh), ("destroy", recycle)):
            for start in range(0, len(group), BATCH):
                chunk = group[start : start + BATCH]
                custody.record_sanitization(session, DEAL, SanitizationRequest(
                    serial_numbers=chunk, method=method, technique="crypto erase" if method == "purge" else "shred", tool="bench", tool_version="1",
                    operator="Olga", facility="Returns Center", at=booked_at + timedelta(days=4), verification="passed", verified_by="Victor",
                ), "ops:bench", f"san-{method}-{start}")
    timings["sanitizations"] = time.perf_counter() - started
    started = time.perf_counter()
    with session_scope(url) as session:
        for start in range(0, len(refresh), BATCH):
            custody.record_dispositions(session, DEAL, DispositionRequest(serial_numbers=refresh[start : start + BATCH], disposition="refresh"),
                                        "ops:bench", f"disp-{start}", catalog)
        for start in range(0, len(recycle), 10_000):
            custody.record_downstream_shipment(session, f"DSBENCH{start}", DownstreamShipmentRequest(
                recycler={"name": "Metro Metals", "certification_id": "R2v3-1"}, shipped_at=booked_at + timedelta(days=6),
                serial_numbers=recycle[start : start + 10_000], materials=[{"material": "ferrous", "kg": 1000.0}],
            ), "ops:bench", catalog)
    timings["dispositions and downstream shipments"] = time.perf_counter() - started

    started = time.perf_counter()
    closed = view.model_copy(update={"status": DealStatus.closed, "received_units": serials, "revision": 1})
    with session_scope(url) as session:
        store.close_deal(session, closed)
    timings["certificate issued (close_deal)"] = time.perf_counter() - started
    return {"timings": timings, "names": names}


async def timeline_reads(settings: Settings, names: list[str], reads: int) -> list[float]:
    import httpx

    from api.app import create_app
    from store.api_keys import create_api_key

    with session_scope(settings.effective_database_url) as session:
        ops = {"Authorization": f"Bearer {create_api_key(session, 'ops')}"}
    app = create_app(settings)
    rng = random.Random(14)
    times = []
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as http:
            for _ in range(50):  # warm-up
                await http.get(f"/v1/serials/{rng.choice(names)}", headers=ops)
            for _ in range(reads):
                serial = rng.choice(names)
                started = time.perf_counter()
                answer = await http.get(f"/v1/serials/{serial}", headers=ops)
                times.append((time.perf_counter() - started) * 1000)
                assert answer.status_code == 200 and len(answer.json()["events"]) >= 10, answer.text
    return times


def high_water_mb() -> float:
    """This process's peak RSS (VmHWM: reset by exec, unlike ru_maxrss, which keeps the forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def store_timeline_reads(url: str, names: list[str], reads: int) -> list[float]:
    """The same reads without HTTP: the store's part of the timeline."""
    rng = random.Random(41)
    times = []
    for _ in range(reads):
        serial = rng.choice(names)
        started = time.perf_counter()
        with session_scope(url) as session:
            custody.timeline(session, serial)
        times.append((time.perf_counter() - started) * 1000)
    return times


def render(url: str, fmt: str, trace: bool) -> dict:
    """One rendering of the stored certificate, in this process: seconds, peak RSS, tracemalloc peak."""
    from domain.certificate import qr_svg, render_html_stream, render_pdf, verification_url

    baseline = high_water_mb()  # the modules loaded, nothing rendered yet
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    with session_scope(url) as session:
        row = custody.stored_certificate(session, DEAL)
    text = custody.certificate_text(url, row.certificate_id, DEAL)
    verify = verification_url("https://takeback.example", row.certificate_id, row.content_hash)
    size = 0
    with tempfile.TemporaryFile() as out:
        if fmt == "pdf":
            render_pdf(text, row.content_hash, row.certificate_id, row.status, verify, out)
            size = out.tell()
        else:
            for piece in render_html_stream(text, row.content_hash, row.certificate_id, row.status, verify, qr_svg(verify)):
                size += out.write(piece.encode())
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20 if trace else None
    return {"format": fmt, "seconds": round(seconds, 2), "bytes": size, "json_chars": text.length, "status": row.status,
            "baseline_rss_mb": round(baseline, 1), "peak_rss_mb": round(high_water_mb(), 1),
            "tracemalloc_peak_mb": None if peak is None else round(peak, 1)}


def render_apart(url: str, fmt: str, trace: bool) -> dict:
    out = subprocess.run([sys.executable, __file__, "render", "--url", url, "--format", fmt] + (["--trace"] if trace else []), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"rendering {fmt} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_size(serials: int, reads: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="bench-custody-"))
    settings = Settings(data_dir=folder, env="test")
    url = settings.effective_database_url
    built = build(url, settings, serials)
    times = asyncio.run(timeline_reads(settings, built["names"], reads)) if reads else []
    store_times = store_timeline_reads(url, built["names"], reads) if reads else []
    renders = {fmt: render_apart(url, fmt, trace=False) for fmt in ("html", "pdf")}
    traced = {fmt: render_apart(url, fmt, trace=True) for fmt in ("html", "pdf")}
    return {"serials": serials, "timings": built["timings"], "timeline_ms": times, "store_timeline_ms": store_times, "load": os.getloadavg(), "renders": renders, "traced": traced,
            "database_mb": round(sum(p.stat().st_size for p in folder.glob("takeback.db*")) / 2**20, 1)}


def report(result: dict) -> None:
    print(f"\n== a deal of {result['serials']:,} serials (SQLite store {result['database_mb']} MB) ==")
    for step, seconds in result["timings"].items():
        print(f"  {step:<42} {seconds:7.1f} s")
    times = result["timeline_ms"]
    if times:
        print(f"  GET /v1/serials/{{serial}} x {len(times)}: p50 {statistics.median(times):.1f} ms, p99 {pct(times, 0.99):.1f} ms, max {max(times):.1f} ms (goal p99 < 20 ms)")
        st = result["store_timeline_ms"]
        print(f"  store.custody.timeline x {len(st)}: p50 {statistics.median(st):.1f} ms, p99 {pct(st, 0.99):.1f} ms, max {max(st):.1f} ms"
              f"   (load average then {result['load'][0]:.1f} on {os.cpu_count()} cores)")
    for fmt in ("html", "pdf"):
        r, t = result["renders"][fmt], result["traced"][fmt]
        print(f"  certificate {fmt.upper():<4} {r['seconds']:6.1f} s (goal < 30 s), {r['bytes'] / 2**20:6.1f} MB out of {r['json_chars'] / 2**20:.1f} MB of JSON ({r['status']}); "
              f"RSS {r['baseline_rss_mb']} MB loaded -> {r['peak_rss_mb']} MB peak, tracemalloc peak {t['tracemalloc_peak_mb']} MB ({t['seconds']} s traced)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    one = sub.add_parser("render")
    one.add_argument("--url", required=True)
    one.add_argument("--format", choices=("html", "pdf"), required=True)
    one.add_argument("--trace", action="store_true")
    parser.add_argument("--serials", type=int, default=100_000)
    parser.add_argument("--reads", type=int, default=2_000)
    parser.add_argument("--compare", type=int, default=10_000, help="a smaller deal rendered too, to see whether memory grows with the deal (0: none)")
    args = parser.parse_args()
    if args.command == "render":
        print(json.dumps(render(args.url, args.format, args.trace)))
        return
    results = [run_size(args.compare, 0)] if args.compare else []
    results.append(run_size(args.serials, args.reads))
    for result in results:
        report(result)


if __name__ == "__main__":
    main()
