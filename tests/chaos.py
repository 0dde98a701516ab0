"""Chaos run: deals driven by concurrent clients while the worker is SIGKILLed and the server restarted.

    python -m tests.chaos --deals 200 --kill-every 4     (full form; prints the figures)

Every step is retried until it succeeds, with ids that make retries harmless. At the end the
store must show each deal's expected outcome exactly once: one ledger row per deal and kind,
no reminder twice, no serial counted twice, and each workflow's count equal to the store's.
"""

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import func, select

from domain.models import BookingRequest, CarrierEvent, DealStatus, IncentiveStatus, PickupRequest, ReceiptItem
from service import deals
from settings import Settings
from store.db import session_scope
from store.tables import EmailMessage, IncentiveLedger, ReminderSent, ReturnedItem
from temporal_client import connect
from tests.conftest import add_partner

BIN = Path(sys.executable).parent
PARTNER = "CHAOS-PARTNER"
UNITS = 10
PLANS = ("met", "short", "cancel")
EXPECTED = {
    "met": (DealStatus.closed, IncentiveStatus.released, {"released"}),
    "short": (DealStatus.expired, IncentiveStatus.forfeited, {"forfeited"}),
    "cancel": (DealStatus.cancelled, IncentiveStatus.cancelled, {"cancelled"}),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Stack:
    data_dir: Path
    port: int
    env: dict
    server: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None
    kills: int = 0
    server_restarts: int = 0
    log: list[str] = field(default_factory=list)

    def start_server(self) -> None:
        temporal = str(BIN / "temporal") if (BIN / "temporal").exists() else shutil.which("temporal")
        self.server = subprocess.Popen(
            [temporal, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(self.port),
             "--db-filename", str(self.data_dir / "temporal.db"), "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError("temporal dev server did not start")

    def start_worker(self) -> None:
        self.worker = subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill_worker(self) -> None:
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait()
        self.kills += 1

    def restart_server(self) -> None:
        self.server.send_signal(signal.SIGKILL)
        self.server.wait()
        self.start_server()
        self.server_restarts += 1

    def stop(self) -> None:
        for process in (self.worker, self.server):
            if process and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()


async def retry(what, attempt, give_up_after: float = 120):
    """Retry a step through worker kills and server restarts; its ids make repeats harmless."""
    deadline = time.monotonic() + give_up_after
    delay = 0.2
    while True:
        try:
            return await asyncio.wait_for(attempt(), timeout=15)
        except Exception as error:  # noqa: BLE001 - any failure of a step is retried until the deadline
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} kept failing: {error!r}") from error
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2)


def booking_for(index: int) -> BookingRequest:
    return BookingRequest.model_validate(
        {
            "partner_id": PARTNER,
            "customer": {"name": f"Customer {index}", "country": "DE"},
            "opportunity": "migration",
            "new_products_value": "10000.00",
            "incentive_rate": "0.05",
            "equipment": [{"product_id": "C9300-48P", "quantity": UNITS}],
        }
    )


async def drive_deal(stack: Stack, settings: Settings, client_holder: dict, index: int, plan: str) -> str:
    deal_id = f"CHAOS{index:05d}"

    async def client():
        if client_holder.get("client") is None:
            client_holder["client"] = await connect(settings)
        return client_holder["client"]

    async def book():
        return await deals.book_deal(await client(), settings, booking_for(index), deal_id=deal_id)

    await retry(f"book {deal_id}", book)
    if plan == "cancel":
        await retry(f"cancel {deal_id}", lambda: cancel(client, deal_id))
        return deal_id
    pickup = await retry(
        f"pickup {deal_id}",
        lambda: _pickup(client, deal_id),
    )
    statuses = ["pre_transit", "in_transit", "in_transit", "out_for_delivery", "delivered"]
    for number, status in enumerate(statuses):
        event = CarrierEvent(event_id=f"{deal_id}-e{number}", tracking_number=pickup.tracking_number, status=status, occurred_at=datetime.now(timezone.utc))
        await retry(f"event {event.event_id}", lambda event=event: _carrier_event(client, settings, event))
        if random.random() < 0.3:  # carriers redeliver webhooks
            await retry(f"event {event.event_id} again", lambda event=event: _carrier_event(client, settings, event))
    count = 9 if plan == "met" else 5
    items = [ReceiptItem(product_id="C9300-48P", serial_number=f"{deal_id}-S{n}", condition="working", age_years=n % 8) for n in range(count)]
    for batch_number, batch in enumerate((items[: count // 2], items[count // 2 :])):
        batch_id = f"{deal_id}-r{batch_number}"
        await retry(f"receipt {batch_id}", lambda batch=batch, batch_id=batch_id: _receipt(client, settings, deal_id, batch, batch_id))
    if plan == "met":  # the same receipt delivered twice must count once
        await retry("receipt again", lambda: _receipt(client, settings, deal_id, items[: count // 2], f"{deal_id}-r0"))
    return deal_id


async def cancel(client, deal_id):
    try:
        return await deals.cancel_deal(await client(), deal_id, "chaos: customer withdrew")
    except Exception as error:
        # A retry after the cancel landed finds the deal closed: that is success.
        if "cancelled" in str(getattr(error, "cause", "") or error):
            return None
        raise


async def _pickup(client, deal_id):
    request = PickupRequest(address="Chaos Way 1", contact_name="Kim", contact_phone="+49 30 1234", ready_on="2026-12-01", expected_units=UNITS)
    return await deals.request_pickup(await client(), deal_id, request, request_id=f"{deal_id}-pickup")


async def _carrier_event(client, settings, event):
    await deals.send_carrier_event(await client(), settings, event)


async def _receipt(client, settings, deal_id, batch, batch_id):
    return await deals.record_receipt(await client(), settings, deal_id, batch, batch_id=batch_id)


async def chaos_loop(stack: Stack, done: asyncio.Event, kill_every: float, max_kills: int, restart_server_after: int) -> None:
    while not done.is_set() and stack.kills < max_kills:
        try:
            await asyncio.wait_for(done.wait(), timeout=kill_every * random.uniform(0.7, 1.3))
            return
        except asyncio.TimeoutError:
            pass
        stack.kill_worker()
        if stack.kills == restart_server_after and stack.server_restarts == 0:
            await asyncio.to_thread(stack.restart_server)
        stack.start_worker()


async def wait_final(settings: Settings, client_holder: dict, deal_id: str):
    async def final():
        client = client_holder.get("client") or await connect(settings)
        client_holder["client"] = client
        return await deals.deal_handle(client, deal_id).result()

    return await retry(f"result of {deal_id}", final, give_up_after=600)


async def run(deals_count: int, kill_every: float, max_kills: int, concurrency: int, window: str, seed: int) -> dict:
    random.seed(seed)
    data_dir = Path(tempfile.mkdtemp(prefix="takeback-chaos-"))
    port = free_port()
    env = dict(os.environ, TEMPORAL_ADDRESS=f"127.0.0.1:{port}", TAKEBACK_DATA_DIR=str(data_dir), TAKEBACK_SIM_CARRIER_STEP="0s")
    env.pop("TAKEBACK_DATABASE_URL", None)
    settings = Settings(
        data_dir=data_dir, database_url="", temporal_address=f"127.0.0.1:{port}", return_window=window, reminder_offsets=_offsets(window), sim_carrier_step="0s"
    )
    add_partner(settings, PARTNER, "chaos@example.com")
    stack = Stack(data_dir=data_dir, port=port, env=env)
    started = time.monotonic()
    try:
        stack.start_server()
        stack.start_worker()
        plans = [PLANS[i % len(PLANS)] for i in range(deals_count)]
        holders = [{} for _ in range(concurrency)]  # several clients, each its own connection
        done = asyncio.Event()
        chaos = asyncio.create_task(chaos_loop(stack, done, kill_every, max_kills, restart_server_after=max(1, max_kills // 2)))
        semaphore = asyncio.Semaphore(concurrency)

        async def one(index: int):
            async with semaphore:
                return await drive_deal(stack, settings, holders[index % concurrency], index, plans[index])

        deal_ids = await asyncio.gather(*(one(i) for i in range(deals_count)))
        while stack.kills < max_kills:  # make sure the promised kills happen even on a fast run
            await asyncio.sleep(0.2)
        done.set()
        await chaos
        finals = await asyncio.gather(*(wait_final(settings, holders[i % concurrency], deal_id) for i, deal_id in enumerate(deal_ids)))
        return {**verify(settings, deal_ids, plans, finals), "kills": stack.kills, "server_restarts": stack.server_restarts, "seconds": round(time.monotonic() - started, 1)}
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _offsets(window: str) -> str:
    from domain.durations import parse_duration

    seconds = parse_duration(window).total_seconds()
    return f"{int(seconds * 0.4)}s,{int(seconds * 0.2)}s"


def verify(settings: Settings, deal_ids: list[str], plans: list[str], finals) -> dict:
    lost = []
    with session_scope(settings.effective_database_url) as session:
        ledger = Counter(session.execute(select(IncentiveLedger.deal_id, IncentiveLedger.kind)).all())
        reminders = Counter(session.execute(select(ReminderSent.deal_id, ReminderSent.offset_seconds)).all())
        emails = Counter(session.execute(select(EmailMessage.key)).scalars().all())
        returned = dict(session.execute(select(ReturnedItem.deal_id, func.count()).group_by(ReturnedItem.deal_id)).all())
        serials = Counter(session.execute(select(ReturnedItem.serial)).scalars().all())
    duplicates = sum(n - 1 for n in ledger.values() if n > 1) + sum(n - 1 for n in reminders.values() if n > 1)
    duplicates += sum(n - 1 for n in emails.values() if n > 1) + sum(n - 1 for n in serials.values() if n > 1)
    for deal_id, plan, final in zip(deal_ids, plans, finals):
        status, incentive, kinds = EXPECTED[plan]
        ledger_kinds = {kind for (d, kind) in ledger if d == deal_id}
        counted_twice = final.received_units != returned.get(deal_id, 0)
        if final.status != status or final.incentive.status != incentive or ledger_kinds != kinds or counted_twice:
            lost.append((deal_id, plan, final.status.value, final.incentive.status.value, sorted(ledger_kinds), final.received_units, returned.get(deal_id, 0)))
    return {"deals": len(deal_ids), "lost": len(lost), "duplicates": duplicates, "lost_detail": lost[:10], "ledger_rows": sum(ledger.values()), "reminders": sum(reminders.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deals", type=int, default=200)
    parser.add_argument("--kill-every", type=float, default=4.0, help="seconds between worker SIGKILLs")
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--window", default="120s")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    result = asyncio.run(run(args.deals, args.kill_every, args.kills, args.concurrency, args.window, args.seed))
    print(f"deals={result['deals']} kills={result['kills']} server_restarts={result['server_restarts']} "
          f"lost={result['lost']} duplicates={result['duplicates']} ledger_rows={result['ledger_rows']} "
          f"reminders={result['reminders']} seconds={result['seconds']}")
    if result["lost_detail"]:
        print("lost:", result["lost_detail"])
    sys.exit(0 if result["lost"] == 0 and result["duplicates"] == 0 else 1)


if __name__ == "__main__":
    main()
