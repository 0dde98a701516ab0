"""Record the replay histories of tests/test_replay.py: `python -m tests.record_histories` (make histories).

Runs each scenario on a fresh time-skipping server and saves the finished workflows'
histories as tests/histories/<name>.json. Re-record only after an intended workflow change
that is made safe for running deals (e.g. with workflow.patched); test_replay.py then checks
that every later change still replays them.
"""

import argparse
import asyncio
import tempfile
from datetime import timedelta
from pathlib import Path

from service import deals
from tests.conftest import booking, make_settings, running_worker, time_skipping_server
from tests.deal_helpers import PICKUP, event, items
from workflows.ids import pickup_workflow_id

HISTORIES = Path(__file__).with_name("histories")
YEAR = timedelta(days=365)


async def rebate_released(env, settings) -> dict:
    """Carrier events (store only: the deal's history does not see them); release at 8/10; returns after release; closed at the deadline."""
    deal = await deals.book_deal(env.client, settings, booking(10), deal_id="H-REBATE")
    pickup = await deals.request_pickup(env.client, deal.id, PICKUP, request_id="pickup-1")
    t = pickup.tracking_number
    for e in [event("e1", t, "pre_transit"), event("e2", t, "in_transit"), event("e2", t, "in_transit"), event("e0", t, "pre_transit"), event("e3", t, "delivered")]:
        await deals.send_carrier_event(env.client, settings, e)
    await env.sleep(timedelta(days=30))
    await deals.record_receipt(env.client, settings, deal.id, items("H", 8), batch_id="H-REBATE-r1")
    await env.sleep(timedelta(days=30))
    await deals.record_receipt(env.client, settings, deal.id, items("H", 1, start=8), batch_id="H-REBATE-r2")
    await env.sleep(YEAR)
    await deals.deal_handle(env.client, deal.id).result()
    return {"deal_rebate_released": f"deal-{deal.id}"}


async def shortfall_forfeited(env, settings) -> dict:
    """Three reminders, an extension, failure and return-to-sender escalated by the deal, then forfeited at the deadline."""
    deal = await deals.book_deal(env.client, settings, booking(10), deal_id="H-SHORT")
    pickup = await deals.request_pickup(env.client, deal.id, PICKUP, request_id="pickup-1")
    t = pickup.tracking_number
    for e in [event("f1", t, "in_transit"), event("f2", t, "failure"), event("f3", t, "return_to_sender")]:
        await deals.send_carrier_event(env.client, settings, e)
    await deals.record_receipt(env.client, settings, deal.id, items("S", 3), batch_id="H-SHORT-r1")
    await env.sleep(timedelta(days=100))
    await deals.extend_deal(env.client, deal.id, "30d", "customer asked for more time")
    await env.sleep(YEAR)
    await deals.deal_handle(env.client, deal.id).result()
    return {"deal_shortfall_forfeited": f"deal-{deal.id}"}


async def upfront_clawed_back(env, settings) -> dict:
    deal = await deals.book_deal(env.client, settings, booking(10), deal_id="H-UPFRONT")
    await deals.record_receipt(env.client, settings, deal.id, items("U", 2), batch_id="H-UPFRONT-r1")
    await env.sleep(YEAR + timedelta(days=1))
    await deals.deal_handle(env.client, deal.id).result()
    return {"deal_upfront_clawed_back": f"deal-{deal.id}"}


async def cancelled_in_transit(env, settings) -> dict:
    """Cancel while a simulated-carrier pickup is on its way: the deal stops the pickup."""
    deal = await deals.book_deal(env.client, settings, booking(10), deal_id="H-CANCEL")
    pickup = await deals.request_pickup(env.client, deal.id, PICKUP, request_id="pickup-1")
    await env.sleep(timedelta(hours=2, minutes=30))  # two simulated steps
    await deals.cancel_deal(env.client, deal.id, "customer withdrew")
    await deals.deal_handle(env.client, deal.id).result()
    await env.client.get_workflow_handle(pickup_workflow_id(pickup.tracking_number)).result()
    return {"deal_cancelled": f"deal-{deal.id}", "pickup_simulated_then_stopped": pickup_workflow_id(pickup.tracking_number)}


async def all_returned_early(env, settings) -> dict:
    deal = await deals.book_deal(env.client, settings, booking(4, serials=[f"E-{i}" for i in range(4)]), deal_id="H-EARLY")
    await env.sleep(timedelta(days=300))  # past the 90-day reminder
    await deals.record_receipt(env.client, settings, deal.id, items("E", 4) + items("GREY", 1), batch_id="H-EARLY-r1")
    await deals.deal_handle(env.client, deal.id).result()
    return {"deal_all_returned_early": f"deal-{deal.id}"}


async def partner_years(env, settings) -> dict:
    """Certified; year 1 with a deal rolls over; year 2 without one reminds, lapses and is reinstated."""
    from domain.specialization import ExamResult, TrainingRecord
    from service import partners
    from workflows.ids import partner_workflow_id

    await partners.create_partner(env.client, settings, "H-PARTNER", "History Partner", "h@partner.example", "CA")
    await partners.record_training(env.client, "H-PARTNER", TrainingRecord(person_email="a@h.example", person_name="A", hours=5), request_id="t1")
    await partners.record_training(env.client, "H-PARTNER", TrainingRecord(person_email="a@h.example", person_name="A", hours=2), request_id="t2")
    await partners.record_exam(env.client, "H-PARTNER", ExamResult(exam=1, passed=True))
    await partners.record_exam(env.client, "H-PARTNER", ExamResult(exam=2, passed=False))
    await partners.record_exam(env.client, "H-PARTNER", ExamResult(exam=2, passed=True))
    await partners.sign_pledge(env.client, "H-PARTNER")
    await env.sleep(timedelta(days=10))
    handle = env.client.get_workflow_handle(partner_workflow_id("H-PARTNER"))
    first_run = (await handle.describe()).run_id
    await deals.book_deal(env.client, settings, booking(4, partner_id="H-PARTNER"), deal_id="H-DEAL-1")
    await env.sleep(YEAR)  # rolls over: continue-as-new
    second_run = (await handle.describe()).run_id
    await env.sleep(YEAR)  # no deal: reminders, then lapsed
    await partners.reinstate(env.client, "H-PARTNER", "late deal approved by ops")
    await deals.book_deal(env.client, settings, booking(4, partner_id="H-PARTNER"), deal_id="H-DEAL-2")
    await env.sleep(YEAR)  # the reinstated year had its deal: continue-as-new
    from temporalio.client import WorkflowExecutionStatus

    while (await env.client.get_workflow_handle(partner_workflow_id("H-PARTNER"), run_id=second_run).describe()).status == WorkflowExecutionStatus.RUNNING:
        await asyncio.sleep(0.05)
    return {"partner_certified_year_rolled_over": (partner_workflow_id("H-PARTNER"), first_run),
            "partner_reminded_lapsed_reinstated": (partner_workflow_id("H-PARTNER"), second_run)}


SCENARIOS = [
    (rebate_released, {}),
    (shortfall_forfeited, {}),
    (upfront_clawed_back, {"incentive_mode": "upfront"}),
    (cancelled_in_transit, {"sim_carrier_step": "1h"}),
    (all_returned_early, {}),
    (partner_years, {}),
]


async def record(out_dir: Path = HISTORIES) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for scenario, overrides in SCENARIOS:
        async with time_skipping_server() as env:
            with tempfile.TemporaryDirectory() as tmp:
                settings = make_settings(Path(tmp), **overrides)
                async with running_worker(env.client, settings):
                    workflows = await scenario(env, settings)
                    for name, workflow_id in workflows.items():
                        workflow_id, run_id = workflow_id if isinstance(workflow_id, tuple) else (workflow_id, None)
                        history = await env.client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
                        path = out_dir / f"{name}.json"
                        path.write_text(history.to_json())
                        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HISTORIES)
    args = parser.parse_args()
    for path in asyncio.run(record(args.out)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
