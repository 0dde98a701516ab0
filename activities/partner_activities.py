"""Activities of the partner specialization workflow."""

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import func, select
from temporalio import activity

from activities.deal_activities import TakebackActivities
from activities.mailer import Mail
from store import deals as deal_store
from store import specialization as store
from store.db import session_scope


class TrainingInput(BaseModel):
    partner_id: str
    request_id: str
    person_email: str
    person_name: str
    hours: float


class TrainingTotals(BaseModel):
    training_hours: float
    trainees: int
    trees_planted: int


class PartnerMail(BaseModel):
    key: str
    partner_id: str
    subject: str
    body: str
    copy_ops: bool = False


class PartnerActivities:
    def __init__(self, deal_activities: TakebackActivities):
        self.deal_activities = deal_activities  # shares its store, mailer and settings
        self.database_url = deal_activities.database_url

    def all(self) -> list:
        return [self.record_training, self.deals_in_year, self.record_specialization_event, self.mail_partner, self.project_specialization]

    @activity.defn
    def record_training(self, training: TrainingInput) -> TrainingTotals:
        """Record once per request; answer the totals from the store, so a retry counts nothing twice."""
        with session_scope(self.database_url) as session:
            store.record_training(session, training.partner_id, training.request_id, training.person_email, training.person_name, training.hours)
            hours = session.execute(select(func.coalesce(func.sum(store.TrainingSession.hours), 0.0)).where(store.TrainingSession.partner_id == training.partner_id)).scalar_one()
            trainees = session.execute(select(func.count()).select_from(store.Trainee).where(store.Trainee.partner_id == training.partner_id)).scalar_one()
            trees = session.execute(select(func.count()).select_from(store.TreePlanted).where(store.TreePlanted.partner_id == training.partner_id)).scalar_one()
        return TrainingTotals(training_hours=float(hours), trainees=trainees, trees_planted=trees)

    @activity.defn
    def deals_in_year(self, partner_id: str, year_start: datetime, year_end: datetime) -> int:
        """Deals live in the store: the year asks it when it must decide, and no deal signals the year."""
        with session_scope(self.database_url) as session:
            return deal_store.deals_booked_between(session, partner_id, year_start, year_end)

    @activity.defn
    def record_specialization_event(self, partner_id: str, event_key: str, kind: str, detail: str) -> None:
        with session_scope(self.database_url) as session:
            store.record_event(session, partner_id, event_key, kind, detail)

    @activity.defn
    def mail_partner(self, mail: PartnerMail) -> bool:
        settings = self.deal_activities.settings
        with session_scope(self.database_url) as session:
            contact = self.deal_activities._contact(session, mail.partner_id)
        return self.deal_activities._send_once(
            Mail(key=mail.key, partner_id=mail.partner_id, to=contact, cc=settings.ops_email if mail.copy_ops else None, subject=mail.subject, body=mail.body)
        )

    @activity.defn
    def project_specialization(self, partner_id: str, status: str, view_json: str) -> None:
        with session_scope(self.database_url) as session:
            store.project(session, partner_id, status, view_json)
