"""Tables and operations of the partner's Environmental Sustainability Specialization."""

from datetime import datetime

from sqlalchemy import UniqueConstraint, bindparam, select
from sqlmodel import Field, Session, SQLModel

from store.once import insert_once
from store.tables import Partner, utcnow


class Trainee(SQLModel, table=True):
    """A person of a partner who completed training; counted once, by e-mail."""

    __table_args__ = (UniqueConstraint("partner_id", "person_email"),)
    id: int | None = Field(default=None, primary_key=True)
    partner_id: str = Field(index=True)
    person_email: str
    person_name: str
    first_trained_at: datetime = Field(default_factory=utcnow)


class TrainingSession(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("partner_id", "request_id"),)
    id: int | None = Field(default=None, primary_key=True)
    partner_id: str = Field(index=True)
    request_id: str
    person_email: str
    hours: float
    recorded_at: datetime = Field(default_factory=utcnow)


class TreePlanted(SQLModel, table=True):
    """One tree per new trainee: the unique person makes it one tree, however often they train."""

    __table_args__ = (UniqueConstraint("partner_id", "person_email"),)
    id: int | None = Field(default=None, primary_key=True)
    partner_id: str = Field(index=True)
    person_email: str
    planted_at: datetime = Field(default_factory=utcnow)


class SpecializationEvent(SQLModel, table=True):
    """Certification, lapses, reinstatements and year roll-overs, with reasons, kept for audit."""

    __table_args__ = (UniqueConstraint("partner_id", "event_key"),)
    id: int | None = Field(default=None, primary_key=True)
    partner_id: str = Field(index=True)
    event_key: str
    kind: str
    detail: str = ""
    recorded_at: datetime = Field(default_factory=utcnow)


class SpecializationProjection(SQLModel, table=True):
    """The partner workflow's state, for booking checks, partner lists and closed histories."""

    partner_id: str = Field(primary_key=True)
    status: str
    view_json: str
    updated_at: datetime = Field(default_factory=utcnow)


def record_training(session: Session, partner_id: str, request_id: str, email: str, name: str, hours: float) -> tuple[bool, bool]:
    """Returns (session newly recorded, person new: a tree planted)."""
    email = email.strip().lower()
    new_session = insert_once(session, TrainingSession(partner_id=partner_id, request_id=request_id, person_email=email, hours=hours))
    new_person = insert_once(session, Trainee(partner_id=partner_id, person_email=email, person_name=name))
    if new_person:
        insert_once(session, TreePlanted(partner_id=partner_id, person_email=email))
    else:
        # A retry after the trainee row landed must still plant the tree, once.
        planted = session.execute(select(TreePlanted).where(TreePlanted.partner_id == partner_id, TreePlanted.person_email == email)).first()
        if planted is None:
            new_person = insert_once(session, TreePlanted(partner_id=partner_id, person_email=email))
    return new_session, new_person


def record_event(session: Session, partner_id: str, event_key: str, kind: str, detail: str = "") -> bool:
    return insert_once(session, SpecializationEvent(partner_id=partner_id, event_key=event_key, kind=kind, detail=detail))


def project(session: Session, partner_id: str, status: str, view_json: str) -> None:
    row = session.get(SpecializationProjection, partner_id)
    if row is None:
        row = SpecializationProjection(partner_id=partner_id, status=status, view_json=view_json)
    row.status, row.view_json, row.updated_at = status, view_json, utcnow()
    session.add(row)
    session.commit()


def projection(session: Session, partner_id: str) -> SpecializationProjection | None:
    return session.get(SpecializationProjection, partner_id)


_partner, _projection = Partner.__table__, SpecializationProjection.__table__
# Built once, run on the session's connection (Core, not the ORM's execution path): every booking asks it, and
# building the select and running it through the ORM cost 1 ms of a booking's ~1.5 ms in the store.
_BOOKING_STATUS = (
    select(_partner.c.id, _projection.c.status)
    .outerjoin(_projection, _projection.c.partner_id == _partner.c.id)
    .where(_partner.c.id == bindparam("partner_id"))
)


def booking_status(session: Session, partner_id: str) -> tuple[bool, str | None]:
    """(registered, projected status or None): the booking path asks for every deal, in one query."""
    row = session.connection().execute(_BOOKING_STATUS, {"partner_id": partner_id}).first()
    return (False, None) if row is None else (True, row.status)
