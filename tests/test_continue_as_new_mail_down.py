"""Continue-as-new forced early and the mail provider down, on a real dev server: the case in which deals
used to miss their deadlines (the run waited for mail before continuing as new, and mail is retried for
as long as it fails). Every deal decides within seconds of its deadline, a receipt after the decision is a
409 that changes nothing, and a keyed extension retried after a continue-as-new applies once."""

import asyncio
from datetime import timedelta

from sqlalchemy import select
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from domain.models import DealStatus, IncentiveStatus
from service import deals
from store.db import session_scope
from store.tables import DealExtension, EmailMessage, Settlement, as_utc
from tests.conftest import add_partner, binary, booking, make_settings
from tests.deal_helpers import PICKUP, count, items, ledger
from tests.sendgrid_standin import SendGridStandIn
from worker import build_worker

DEALS = 6
# The history length at which the server suggests continue-as-new (production: thousands of events).
EARLY_CONTINUE_AS_NEW = ["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=30"]


async def test_with_continue_as_new_early_and_mail_down_every_deal_decides_on_time(tmp_path):
    standin = SendGridStandIn()
    standin.down = True  # every send: 503, retried for as long as it fails
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter, dev_server_existing_path=binary("temporal"), dev_server_log_level="error", dev_server_extra_args=EARLY_CONTINUE_AS_NEW,
    )
    settings = make_settings(tmp_path, sendgrid_api_key="SG.test", sendgrid_host=standin.url, return_window="30s", reminder_offsets="24s,18s,12s")
    add_partner(settings)
    try:
        async with build_worker(env.client, settings):
            views = await asyncio.gather(*(deals.book_deal(env.client, settings, booking(4)) for _ in range(DEALS)))
            first_runs = {v.id: (await deals.deal_handle(env.client, v.id).describe()).run_id for v in views}
            for view in views:  # a pickup, an extension and three receipts, one unit each: short at 3 of 4
                await deals.request_pickup(env.client, view.id, PICKUP, request_id=f"{view.id}-pickup")
                await deals.extend_deal(env.client, view.id, "5s", "customer asked", request_id=f"{view.id}-extend")
                for n in range(3):
                    await deals.record_receipt(env.client, settings, view.id, items(f"{view.id}-", 1, start=n))
            await asyncio.sleep(14)  # reminders go out (and fail): the histories grow past the suggestion
            continued = [v.id for v in views if (await deals.deal_handle(env.client, v.id).describe()).run_id != first_runs[v.id]]
            for view in views:  # the extension's caller retries after the continue-as-new: the same extension
                again = await deals.extend_deal(env.client, view.id, "5s", "customer asked", request_id=f"{view.id}-extend")
                assert again.return_deadline == view.return_deadline + timedelta(seconds=5)
            deadline = max(v.return_deadline for v in views) + timedelta(seconds=5)
            while (await env.get_current_time()) < deadline + timedelta(seconds=8):
                await asyncio.sleep(0.5)
            late = []
            for view in views:  # after the decision: refused, nothing counted
                try:
                    await deals.record_receipt(env.client, settings, view.id, items(f"{view.id}-late-", 1))
                    late.append("counted")
                except deals.DealNotOpen:
                    late.append("refused")
            finals = [await deals.get_deal(env.client, settings, v.id) for v in views]
    finally:
        await env.shutdown()
        standin.close()
    assert continued, "no deal continued as new: the test did not make the case it is about"
    with session_scope(settings.effective_database_url) as session:
        decided = {row.deal_id: row.decided_at for row in session.execute(select(Settlement)).scalars()}
        mail_states = {row.state for row in session.execute(select(EmailMessage)).scalars()}
    for view, final in zip(views, finals):
        due = view.return_deadline + timedelta(seconds=5)
        assert final.status == DealStatus.expired and final.incentive.status == IncentiveStatus.forfeited and final.received_units == 3, final
        assert as_utc(decided[view.id]) - due < timedelta(seconds=5), f"{view.id} decided {decided[view.id]} for a deadline {due}"
        assert ledger(settings, view.id) == {"forfeited": 1}
        assert count(settings, DealExtension, deal_id=view.id) == 1  # the retried extension applied once
    assert late == ["refused"] * DEALS
    assert "sent" not in mail_states  # the provider never took a mail: nothing above waited for it
