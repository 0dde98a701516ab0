"""The Environmental Sustainability Specialization of a partner (see shared/domain.md)."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from domain.models import EmailAddress, ShortText

REQUIRED_EXAMS = (1, 2)


class SpecializationStatus(StrEnum):
    not_certified = "not_certified"
    certified = "certified"
    lapsed = "lapsed"


class SpecializationView(BaseModel):
    """`specialization` of GET /v1/partners/{id}."""

    status: SpecializationStatus = SpecializationStatus.not_certified
    training_hours: float = 0
    trainees: int = 0
    trees_planted: int = 0
    exams_passed: list[int] = []
    pledge_signed: bool = False
    year_number: int = 0
    year_start: datetime | None = None
    year_end: datetime | None = None
    deals_this_year: int = 0
    reminders_sent_this_year: list[str] = []
    lapsed_at: datetime | None = None


class TrainingRecord(BaseModel):
    person_email: Annotated[EmailAddress, AfterValidator(str.lower)]
    person_name: ShortText
    hours: float = Field(gt=0, le=40)


class ExamResult(BaseModel):
    exam: Literal[1, 2]
    passed: bool


class ReinstateRequest(BaseModel):
    reason: Annotated[str, StringConstraints(min_length=1, max_length=1000, strip_whitespace=True)]


def certification_complete(view: SpecializationView) -> bool:
    """Both exams passed, the pledge signed and training recorded."""
    return set(REQUIRED_EXAMS) <= set(view.exams_passed) and view.pledge_signed and view.training_hours > 0
