"""Deals' mail on its own queue, served at the provider's pace (TAKEBACK_MAIL_RATE), and decisions first.

The provider is tests/sendgrid_standin.py through the real SendGrid client. On the time-skipping
server: where each task goes (mail on the mail queue, a decision's writes first) and a decision
recorded at its deadline while the provider is down. On a dev server (wall clock): the queue's
rate spreads the mail out, and a provider's 429s with X-RateLimit-Reset are waited out, every
message delivered once.
"""

import asyncio
import math
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from temporalio.api.enums.v1 import EventType

from activities.mailer import SendGridMailer
from activities.deal_activities import TakebackActivities
from domain.models import DealStatus
from service import deals
from settings import Settings, parse_rate
from store.db import session_scope
from store.tables import Settlement
from tests.conftest import add_partner, booking, make_settings
from tests.sendgrid_standin import SendGridStandIn
from tests.deal_helpers import skip_time
from worker import build_worker
from workflows.deal import TakebackDealWorkflow
from workflows.notices import mail_task_queue


@pytest.fixture
def standin():
    server = SendGridStandIn()
    yield server
    server.close()


def sendgrid_settings(tmp_path, standin: SendGridStandIn, **overrides) -> Settings:
    return make_settings(tmp_path, sendgrid_api_key="SG.test", sendgrid_host=standin.url, **overrides)


def test_mail_rate_parses_per_minute_second_and_hour_and_refuses_the_rest():
    assert parse_rate("600/min") == 10 and parse_rate("10/s") == 10 and parse_rate("3600/h") == 1 and parse_rate("0") == 0
    assert Settings().mail_rate_per_second == 10  # the default: the provider's 600 a minute
    for bad in ("600", "10/d", "-1/s", "nan/s", "inf/s", "fast"):
        with pytest.raises(ValueError):
            parse_rate(bad)
        with pytest.raises(ValueError):
            Settings(TAKEBACK_MAIL_RATE=bad)


def test_the_standin_rate_limits_with_a_reset_the_client_waits_for(standin):
    standin.rate_limit, standin.rate_window = 2, 30.0
    mailer = SendGridMailer("SG.test", standin.url)
    from activities.mailer import Mail
    from temporalio.exceptions import ApplicationError

    for n in range(2):
        mailer.send(Mail(key=f"k{n}", to="p@example.com", subject="s", body="b"), "from@example.com")
    with pytest.raises(ApplicationError) as refused:
        mailer.send(Mail(key="k2", to="p@example.com", subject="s", body="b"), "from@example.com")
    assert refused.value.type == "MailTemporarilyUnavailable" and not refused.value.non_retryable
    # X-RateLimit-Reset is the window's end (unix seconds, rounded up): the retry waits about that long.
    assert timedelta(seconds=25) <= refused.value.next_retry_delay <= timedelta(seconds=31)
    assert standin.refusals[429] == 1 and len(standin.accepted_at) == 2


async def _history(client, deal_id: str):
    return await deals.deal_handle(client, deal_id).fetch_history()


async def test_a_decision_is_recorded_at_its_deadline_while_the_provider_is_down_and_mail_goes_on_its_queue(time_skipping_env, tmp_path, standin):
    env = time_skipping_env
    settings = sendgrid_settings(tmp_path, standin, return_window="30d", reminder_offsets="7d")
    add_partner(settings)
    standin.down = True  # every mail attempt: 503, retried for as long as it takes
    async with build_worker(env.client, settings, activities=TakebackActivities(settings)):
        view = await deals.book_deal(env.client, settings, booking(10))
        await skip_time(env, timedelta(days=30, seconds=5))  # past the reminder and the deadline
        with session_scope(settings.effective_database_url) as session:
            decided = session.execute(select(Settlement.outcome, Settlement.decided_at).where(Settlement.deal_id == view.id)).one()
        assert decided.outcome == "forfeited"  # decided and recorded although no mail got out
        assert (await deals.deal_handle(env.client, view.id).query(TakebackDealWorkflow.view)).status == DealStatus.expired
        assert sum(standin.delivered.values()) == 0 and standin.refusals[503] >= 2

        history = await _history(env.client, view.id)
        scheduled = {
            e.activity_task_scheduled_event_attributes.activity_type.name: e.activity_task_scheduled_event_attributes
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        }
        for mail in ("send_reminder", "notify_settlement"):
            assert scheduled[mail].task_queue.name == mail_task_queue(settings.task_queue)
        for decision in ("decide_and_close",):  # the sweep, the settlement and the close in one activity (decide-and-close)
            assert scheduled[decision].task_queue.name == settings.task_queue and scheduled[decision].priority.priority_key == 1
        for later in set(scheduled) - {"send_reminder", "notify_settlement", "decide_and_close"}:  # the deal's other writes, if any
            assert scheduled[later].task_queue.name == settings.task_queue and scheduled[later].priority.priority_key == 0  # unset: 3

        standin.down = False  # the provider is back: both messages go out (retries wait at most 10 minutes), once, and the deal finishes
        await skip_time(env, timedelta(minutes=11))
        final = await deals.deal_handle(env.client, view.id).result()
    assert final.status == DealStatus.expired
    assert standin.delivered_to("partner@example.com", "more units due") == 1
    assert standin.delivered_to("partner@example.com", "forfeited") == 1
    assert standin.delivered_twice() == []


async def _storm(env, settings: Settings, standin: SendGridStandIn, n: int) -> tuple[list[float], list[float]]:
    """`n` deals due together, short (each forfeited, a notice each, no reminders): (decided_at, mail accepted at) in unix seconds."""
    add_partner(settings)
    async with build_worker(env.client, settings, activities=TakebackActivities(settings)):
        views = await asyncio.gather(*(deals.book_deal(env.client, settings, booking(10)) for _ in range(n)))
        handles = [deals.deal_handle(env.client, v.id) for v in views]
        finals = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), timeout=90)
    assert all(f.status == DealStatus.expired for f in finals)
    with session_scope(settings.effective_database_url) as session:
        decided = [d.replace(tzinfo=timezone.utc).timestamp() if d.tzinfo is None else d.timestamp() for (d,) in session.execute(select(Settlement.decided_at)).all()]
    return decided, sorted(standin.accepted_at)


# What the server's limiter of a queue's dispatch rate promises (matching's rate limiter): the rate is
# split evenly over the queue's read partitions (`matching.numTaskqueueReadPartitions`, 4 by default),
# each a token bucket that starts full and holds max(ceil(rate / partitions),
# `matching.minTaskThrottlingBurstSize`, 1 by default) tokens. So up to `burst` (all the buckets' tokens)
# go out at once, and the rest at `rate` at most: n messages span at least (n - burst) / rate seconds.
# At 2/s that is 4 at once (seen: 10 messages in 3.2 s, against a bound of 3.5 s that assumed 2 at once).
READ_PARTITIONS = 4
MIN_TASK_THROTTLING_BURST = 1


def limiter_burst(rate: float) -> int:
    return READ_PARTITIONS * max(math.ceil(rate / READ_PARTITIONS), MIN_TASK_THROTTLING_BURST)


def shortest_span(messages: int, rate: float) -> float:
    """The least time from the first message handed out to the last: the burst at once, the rest at `rate`."""
    return max(0, messages - limiter_burst(rate)) / rate


def test_the_limiters_promise_at_two_a_second():
    assert limiter_burst(2) == 4 and shortest_span(10, 2) == 3.0
    assert limiter_burst(10) == 12 and shortest_span(10, 10) == 0  # the default 600/min: a storm's first dozen at once


async def test_the_mail_queue_hands_out_mail_at_the_configured_rate_after_the_decisions(dev_server_env, tmp_path, standin):
    settings = sendgrid_settings(tmp_path, standin, return_window="3s", reminder_offsets="", mail_rate="2/s")
    decided, accepted = await _storm(dev_server_env, settings, standin, 10)
    assert len(accepted) == 10 and standin.delivered_twice() == [] and standin.refusals == {}
    # 10 messages at 2 a second: 4 at once, then 6 more at 2/s, so at least 3 s from the first to the
    # last; unlimited, they go out within a fraction of a second (the next test).
    span = accepted[-1] - accepted[0]
    assert span >= shortest_span(len(accepted), settings.mail_rate_per_second), (span, accepted)
    # Every deal was decided before the mail queue had handed out half of the notices.
    assert max(decided) <= accepted[len(accepted) // 2], (max(decided), accepted)


async def test_a_provider_rate_limit_is_waited_out_every_message_delivered_once(dev_server_env, tmp_path, standin):
    standin.rate_limit, standin.rate_window = 4, 2.0  # 4 messages every 2 s, then 429 with X-RateLimit-Reset
    settings = sendgrid_settings(tmp_path, standin, return_window="3s", reminder_offsets="", mail_rate="0")
    started = time.time()
    decided, accepted = await _storm(dev_server_env, settings, standin, 10)
    assert len(accepted) == 10 and standin.delivered_twice() == []
    assert standin.refusals[429] >= 1  # unlimited, the queue ran into the provider's limit ...
    assert accepted[-1] - accepted[0] >= 2.0  # ... and waited for its windows to reset
    assert max(decided) - started < 30
