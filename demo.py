"""A demo deal on a running stack: short window, simulated carrier, receipts, release, close."""

import asyncio
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from domain.models import BookingRequest, DealStatus, PickupRequest, ReceiptItem
from domain.specialization import ExamResult, TrainingRecord
from service import deals, partners
from settings import get_settings
from temporal_client import connect

DEMO_PARTNER = "DEMO-PARTNER"


def _line(view) -> str:
    pickups = ", ".join(f"{p.id}:{p.status}" for p in view.pickups) or "none"
    return (
        f"  {view.status.value:<16} received {view.received_units}/{view.required_units} of {view.committed_units} committed"
        f" | incentive {view.incentive.amount} {view.incentive.status.value} | pickups {pickups}"
        f" | reminders {','.join(view.reminders_sent) or '-'}"
    )


async def run(args) -> int:
    settings = get_settings().model_copy(
        update={"return_window": args.window, "reminder_offsets": "40s,20s", "sim_carrier_step": "2s"}
    )
    client = await connect(settings)
    try:
        await partners.create_partner(client, settings, DEMO_PARTNER, "Demo Partner Ltd", "demo-partner@example.com", "CA")
        print(f"[demo] partner {DEMO_PARTNER} created; certifying: training, two exams, the pledge", flush=True)
        await partners.record_training(client, DEMO_PARTNER, TrainingRecord(person_email="ana@demo-partner.example", person_name="Ana", hours=6))
        await partners.record_exam(client, DEMO_PARTNER, ExamResult(exam=1, passed=True))
        await partners.record_exam(client, DEMO_PARTNER, ExamResult(exam=2, passed=True))
        await partners.sign_pledge(client, DEMO_PARTNER)
    except partners.PartnerExists:
        pass
    for _ in range(50):  # certification reaches the store projection a moment later
        try:
            partners.ensure_may_book(settings, DEMO_PARTNER)
            break
        except partners.PartnerNotCertified:
            await asyncio.sleep(0.1)
    view = await partners.specialization(client, settings, DEMO_PARTNER)
    print(f"[demo] partner {DEMO_PARTNER}: {view.status.value}, {view.trees_planted} tree(s) planted, year ends {view.year_end:%Y-%m-%d}", flush=True)
    request = BookingRequest.model_validate(
        {
            "partner_id": DEMO_PARTNER,
            "customer": {"name": "Northwind Traders", "country": "CA"},
            "opportunity": "refresh",
            "new_products_value": Decimal("250000.00"),
            "incentive_rate": Decimal("0.07"),
            "equipment": [{"product_id": "WS-C3850-48P", "quantity": 10}],
        }
    )
    view = await deals.book_deal(client, settings, request)
    print(f"[demo] booked deal {view.id}: window {args.window}, deadline {view.return_deadline:%H:%M:%S} UTC", flush=True)
    print(_line(view), flush=True)
    pickup = await deals.request_pickup(
        client, view.id, PickupRequest(address="1 Main St, Toronto", contact_name="Sam", contact_phone="+1 416 555 0100", ready_on=datetime.now(timezone.utc).date().isoformat(), expected_units=10)
    )
    print(f"[demo] pickup {pickup.id} booked with {pickup.carrier}, tracking {pickup.tracking_number}", flush=True)
    received = False
    last = None
    while True:
        view = await deals.get_deal(client, settings, view.id)
        line = _line(view)
        if line != last:
            print(line, flush=True)
            last = line
        if not received and view.pickups and view.pickups[0].status == "delivered":
            items = [ReceiptItem(product_id="WS-C3850-48P", serial_number=f"{view.id}-SN{i:03d}", condition="working" if i % 3 else "damaged", age_years=3 + i % 4) for i in range(9)]
            result = await deals.record_receipt(client, settings, view.id, items)
            print(f"[demo] receipt: {result['accepted']} accepted, {len(result['rejected'])} rejected", flush=True)
            received = True
        if view.status not in (DealStatus.awaiting_returns, DealStatus.condition_met):
            break
        await asyncio.sleep(1)
    print(f"[demo] deal {view.id} ended {view.status.value}: {view.closed_reason}; outbox: {settings.effective_outbox_dir}", flush=True)
    return 0
