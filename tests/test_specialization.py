"""The partner's specialization year on the time-skipping server."""

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from temporalio.client import WorkflowUpdateFailedError

from domain.specialization import ExamResult, SpecializationStatus, TrainingRecord
from service import partners
from store.db import session_scope
from store.deals import UnknownPartner
from service import deals
from store.specialization import SpecializationEvent, TreePlanted
from tests.conftest import add_partner, booking, make_settings, running_worker

YEAR = timedelta(days=365)


@pytest.fixture
def pid() -> str:
    """Workflow ids outlive a test on the shared server: every test gets its own partner."""
    return f"P-{uuid.uuid4().hex[:8]}"


def training(email: str, hours: float = 4) -> TrainingRecord:
    return TrainingRecord(person_email=email, person_name=email.split("@")[0], hours=hours)


async def certify(client, partner_id: str) -> None:
    await partners.record_training(client, partner_id, training("ana@partner.example", 6))
    await partners.record_exam(client, partner_id, ExamResult(exam=1, passed=True))
    await partners.record_exam(client, partner_id, ExamResult(exam=2, passed=True))
    view = await partners.sign_pledge(client, partner_id)
    assert view.pledge_signed


async def settle(env, settings, partner_id: str):
    """Let the workflow act on what it was just sent, and return its view."""
    await env.sleep(timedelta(seconds=1))
    return await partners.specialization(env.client, settings, partner_id)


async def book(env, settings, partner_id: str, deal_id: str):
    """A real booking: the year counts the deals in the store, nothing signals it."""
    return await deals.book_deal(env.client, settings, booking(4, partner_id=partner_id), deal_id=deal_id)


def outbox(settings) -> list[str]:
    return sorted(path.name for path in settings.effective_outbox_dir.glob("*.eml"))


async def test_certification_needs_training_both_exams_and_the_pledge(time_skipping_env, tmp_path, pid):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        with pytest.raises(UnknownPartner):  # not registered: no deal, certified or not
            partners.ensure_may_book(settings, pid)
        add_partner(settings, pid, certified=False)
        await partners.start_specialization(env.client, settings, pid)
        await partners.start_specialization(env.client, settings, pid)  # a second start is harmless
        await partners.record_exam(env.client, pid, ExamResult(exam=1, passed=True))
        await partners.record_exam(env.client, pid, ExamResult(exam=2, passed=False))
        view = await partners.sign_pledge(env.client, pid)
        assert view.status == SpecializationStatus.not_certified and view.exams_passed == [1]
        with pytest.raises(partners.PartnerNotCertified):
            partners.ensure_may_book(settings, pid)
        await partners.record_exam(env.client, pid, ExamResult(exam=2, passed=True))
        assert (await settle(env, settings, pid)).status == SpecializationStatus.not_certified  # no training yet
        await partners.record_training(env.client, pid, training("bo@partner.example", 3))
        view = await settle(env, settings, pid)
        assert view.status == SpecializationStatus.certified
        assert view.year_end - view.year_start == YEAR and view.training_hours == 3
        partners.ensure_may_book(settings, pid)  # the store projection says certified


async def test_each_new_person_plants_one_tree(time_skipping_env, tmp_path, pid):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        await partners.start_specialization(env.client, settings, pid)
        for email in ["a@p.example", "b@p.example", "A@P.example", "a@p.example", "c@p.example"]:
            view = await partners.record_training(env.client, pid, training(email, 2))
        # the same request id delivered twice (a client retry) counts once
        await partners.record_training(env.client, pid, training("d@p.example", 1), request_id="retry-1")
        view = await partners.record_training(env.client, pid, training("d@p.example", 1), request_id="retry-1")
    assert (view.trainees, view.trees_planted, view.training_hours) == (4, 4, 11)
    with session_scope(settings.effective_database_url) as session:
        assert session.execute(select(func.count()).select_from(TreePlanted)).scalar_one() == 4


async def test_a_year_with_a_deal_rolls_over_and_one_without_reminds_then_lapses(time_skipping_env, tmp_path, pid):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        add_partner(settings, pid, certified=False)
        await partners.start_specialization(env.client, settings, pid)
        await certify(env.client, pid)
        first = await settle(env, settings, pid)
        await env.sleep(timedelta(days=100))
        await book(env, settings, pid, f"{pid}-D1")
        await book(env, settings, pid, f"{pid}-D1")  # a retried booking: counted once
        assert (await settle(env, settings, pid)).deals_this_year == 1
        await env.sleep(YEAR - timedelta(days=100))
        second = await settle(env, settings, pid)
        assert second.status == SpecializationStatus.certified and second.year_number == 2
        assert second.year_start == first.year_end and second.deals_this_year == 0
        assert not [name for name in outbox(settings) if "reminder" in name]  # year 1 had its deal

        await env.sleep(YEAR - timedelta(days=45))  # 45 days left: the 60-day reminder is out
        view = await settle(env, settings, pid)
        assert view.reminders_sent_this_year == ["60d"] and view.status == SpecializationStatus.certified
        await env.sleep(timedelta(days=46))
        view = await settle(env, settings, pid)
        assert view.status == SpecializationStatus.lapsed
        assert view.reminders_sent_this_year == ["60d", "30d"]
        with pytest.raises(partners.PartnerNotCertified):
            partners.ensure_may_book(settings, pid)

        reinstated = await partners.reinstate(env.client, pid, "deal booked late, approved by ops")
        assert reinstated.status == SpecializationStatus.certified and reinstated.year_number == 3
        with pytest.raises(WorkflowUpdateFailedError):
            await partners.reinstate(env.client, pid, "twice")
    mails = outbox(settings)
    assert f"{pid}_year-2_reminder_60d.eml" in mails and f"{pid}_year-2_reminder_30d.eml" in mails
    assert f"{pid}_year-2_lapsed.eml" in mails
    with session_scope(settings.effective_database_url) as session:
        kinds = session.execute(select(SpecializationEvent.kind).order_by(SpecializationEvent.id)).scalars().all()
        year_completed = session.execute(select(SpecializationEvent.detail).where(SpecializationEvent.kind == "year_completed")).scalars().all()
    assert [k for k in kinds if k != "exam"] == ["certified", "year_completed", "lapsed", "reinstated"]
    assert year_completed == ["1 deals"]


async def test_continue_as_new_across_three_years_keeps_state(time_skipping_env, tmp_path, pid):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        add_partner(settings, pid, certified=False)
        await partners.start_specialization(env.client, settings, pid)
        await certify(env.client, pid)
        await partners.record_training(env.client, pid, training("second@partner.example", 2))
        handle = partners.partner_handle(env.client, pid)
        runs = set()
        for year in range(1, 4):
            await env.sleep(timedelta(days=10))
            await book(env, settings, pid, f"{pid}-D{year}")
            await env.sleep(YEAR - timedelta(days=10))
            view = await settle(env, settings, pid)
            description = await handle.describe()
            runs.add(description.run_id)
            assert view.year_number == year + 1 and view.status == SpecializationStatus.certified
    assert len(runs) == 3  # a new run every year: history stays bounded
    assert (view.trainees, view.trees_planted, view.training_hours, view.exams_passed, view.pledge_signed) == (2, 2, 8, [1, 2], True)


async def test_booking_needs_a_certified_partner_and_counts_in_its_year(time_skipping_env, tmp_path, pid):
    env = time_skipping_env
    settings = make_settings(tmp_path)
    async with running_worker(env.client, settings):
        await partners.create_partner(env.client, settings, pid, "Partner", "contact@partner.example", "CA")
        with pytest.raises(partners.PartnerExists):
            await partners.create_partner(env.client, settings, pid, "Partner", "contact@partner.example", "CA")
        with pytest.raises(partners.PartnerNotCertified):
            await deals.book_deal(env.client, settings, booking(4, partner_id=pid))
        await certify(env.client, pid)
        await settle(env, settings, pid)
        deal = await deals.book_deal(env.client, settings, booking(4, partner_id=pid))
        view = await settle(env, settings, pid)
    assert view.deals_this_year == 1 and deal.partner_id == pid


async def test_a_partner_lapses_on_time_while_its_mail_bounces_or_sendgrid_is_down(time_skipping_env, tmp_path):
    """The booking gate closes at the year's end whatever mail does: the status is projected first."""
    from store.tables import EmailMessage
    from temporalio.client import WorkflowExecutionStatus

    from tests.sendgrid_standin import SendGridStandIn
    from workflows.ids import partner_workflow_id

    env = time_skipping_env
    standin = SendGridStandIn()
    settings = make_settings(tmp_path, sendgrid_api_key="SG.test", sendgrid_host=standin.url)
    standin.rejected_addresses.add("bounces@bounced.example")
    try:
        async with running_worker(env.client, settings):
            for partner_id, email in (("BOUNCED", "bounces@bounced.example"), ("UNLUCKY", "ops@unlucky.example")):
                add_partner(settings, partner_id, email=email, certified=False)
                await partners.start_specialization(env.client, settings, partner_id)
                await certify(env.client, partner_id)
            await env.sleep(YEAR - timedelta(hours=1))
            standin.down = True  # SendGrid goes down as the years end
            await env.sleep(timedelta(hours=2))
            for partner_id in ("BOUNCED", "UNLUCKY"):
                assert (await partners.specialization(env.client, settings, partner_id)).status == SpecializationStatus.lapsed
                with pytest.raises(partners.PartnerNotCertified):
                    partners.ensure_may_book(settings, partner_id)  # the gate reads the store's projection
            assert standin.refusals[503] >= 1 and standin.delivered_to("ops@unlucky.example", "lapsed") == 0
            standin.down = False
            await env.sleep(timedelta(hours=1))
            for partner_id in ("BOUNCED", "UNLUCKY"):
                description = await env.client.get_workflow_handle(partner_workflow_id(partner_id)).describe()
                assert description.status == WorkflowExecutionStatus.RUNNING  # not failed by its mail
        assert standin.delivered_to("ops@unlucky.example", "lapsed") == 1 and standin.delivered_to("bounces@bounced.example") == 0
        with session_scope(settings.effective_database_url) as session:
            bounced = session.execute(select(EmailMessage.state).where(EmailMessage.partner_id == "BOUNCED")).scalars().all()
        assert bounced and set(bounced) == {"failed"}
        assert standin.delivered_twice() == []
    finally:
        standin.close()
