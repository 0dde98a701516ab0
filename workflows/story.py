"""What the Temporal Web UI and `temporal workflow describe` tell about a deal or a partner.

A workflow's static summary and details are set by the caller that starts it (service/), its
current details by the workflow itself as it moves; activities and timers carry short summaries
("reminder 30d", "deadline", "release notice"). Business facts only: ids, units, money, dates,
never a person's name or address. None of this is a workflow command: it changes no history
that replays.
"""

from datetime import datetime, timedelta

from domain.durations import format_duration
from domain.models import DealTerms, DealView
from domain.specialization import SpecializationView

# The settlement notice each outcome sends, as its activity's summary.
NOTICE_SUMMARY = {"released": "release notice", "forfeited": "forfeit notice", "clawed_back": "claw-back notice"}


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "-"


def _span(seconds: float) -> str:
    return format_duration(timedelta(seconds=seconds))


def deal_summary(terms: DealTerms) -> str:
    """One line for the workflow list."""
    return (
        f"Deal {terms.deal_id} · partner {terms.partner_id} · {terms.committed_units} units ({terms.required_units} required) · "
        f"incentive {terms.incentive_amount} {terms.mode.value}"
    )


def deal_details(terms: DealTerms) -> str:
    """The booking's terms, as Markdown."""
    rate = f"{terms.incentive_rate * 100:g}%"
    reminders = ", ".join(_span(offset) for offset in terms.reminder_offsets_seconds) or "none"
    return "\n".join(
        [
            f"**Takeback deal {terms.deal_id}** of partner **{terms.partner_id}**",
            f"- units committed: {terms.committed_units}; required back: {terms.required_units} ({terms.return_threshold:.0%})",
            f"- incentive: {terms.incentive_amount} ({rate} of {terms.new_products_value}), {terms.mode.value}",
            f"- booked {_when(terms.booked_at)}; return window {_span(terms.return_window_seconds)}; reminders {reminders} before the deadline",
        ]
    )


def deal_current_details(view: DealView) -> str:
    """Where the deal stands now, as Markdown: status, units, deadline, money, pickups, reminders."""
    lines = [
        f"**{view.status.value}**: {view.received_units} of {view.required_units} required units received "
        f"({view.committed_units} committed, {view.rejected_units} rejected)",
        f"- deadline {_when(view.return_deadline)}; incentive {view.incentive.amount} {view.incentive.status.value}",
    ]
    if view.pickups:
        lines.append("- pickups: " + ", ".join(f"{pickup.id} {pickup.status}" for pickup in view.pickups))
    if view.reminders_sent:
        lines.append("- reminders sent: " + ", ".join(view.reminders_sent))
    if view.extensions:  # "+30d: <reason>": the reason is ops' free text, kept to the deal's own view
        lines.append("- extensions: " + ", ".join(extension.split(":", 1)[0] for extension in view.extensions))
    if view.closed_reason:
        lines.append(f"- closed: {view.closed_reason}")
    return "\n".join(lines)


def wake_summary(offset_seconds: float | None) -> str:
    """The deal's timer: its deadline, or the reminder due `offset` before it."""
    return "deadline" if offset_seconds is None else f"reminder {_span(offset_seconds)}"


def partner_summary(partner_id: str) -> str:
    return f"Partner {partner_id} · Environmental Sustainability Specialization"


def partner_current_details(view: SpecializationView) -> str:
    """Where the partner's specialization stands, as Markdown."""
    exams = ", ".join(str(exam) for exam in view.exams_passed) or "none"
    lines = [
        f"**{view.status.value}**: {view.training_hours:g} training hours, {view.trainees} trainees, exams passed: {exams}, "
        f"pledge {'signed' if view.pledge_signed else 'not signed'}",
    ]
    if view.year_number:
        lines.append(f"- specialization year {view.year_number} ends {_when(view.year_end)}; deals this year (last counted): {view.deals_this_year}")
    if view.lapsed_at:
        lines.append(f"- lapsed {_when(view.lapsed_at)}")
    return "\n".join(lines)


def year_wake_summary(year_end: datetime | None, wake: datetime | None) -> str | None:
    """The partner's timer: its year's end, or a reminder before it."""
    if wake is None or year_end is None:
        return None
    return "year end" if wake >= year_end else f"reminder {_span((year_end - wake).total_seconds())}"
