"""All configuration in one place, read from the environment (see shared/api.md)."""

from decimal import Decimal
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.durations import parse_duration, parse_duration_list
from domain.models import MAX_SERIALS_PER_BOOKING, IncentiveMode

TASK_QUEUE = "takeback"
DEFAULT_MAX_OPEN_PICKUPS = 20


def _seconds_or_zero(value: str) -> float:
    """A duration that may also be `0`/`0s` (off); a bare number counts as seconds."""
    value = value.strip()
    if value in ("0", "0s"):
        return 0.0
    return parse_duration(value if value[-1:].isalpha() else f"{value}s").total_seconds()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True)

    data_dir: Path = Field(Path(".data"), alias="TAKEBACK_DATA_DIR")
    database_url: str = Field("", alias="TAKEBACK_DATABASE_URL")
    outbox_dir: Path | None = Field(None, alias="TAKEBACK_OUTBOX_DIR")

    temporal_address: str = Field("localhost:7233", alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field("default", alias="TEMPORAL_NAMESPACE")
    temporal_api_key: str | None = Field(None, alias="TEMPORAL_API_KEY")
    temporal_tls_cert: Path | None = Field(None, alias="TEMPORAL_TLS_CLIENT_CERT_PATH")
    temporal_tls_key: Path | None = Field(None, alias="TEMPORAL_TLS_CLIENT_KEY_PATH")
    temporal_tls: bool = Field(False, alias="TEMPORAL_TLS")
    task_queue: str = Field(TASK_QUEUE, alias="TAKEBACK_TASK_QUEUE")
    # The sandbox re-imports a workflow's module for every workflow loaded into the worker (each new
    # deal, each one back from eviction): with 10,000 open deals that was 70% of the worker's CPU.
    # Off in service; the test suite turns it on for every worker, so a non-deterministic call in
    # workflow code fails CI (tests/conftest.py).
    workflow_sandbox: bool = Field(False, alias="TAKEBACK_WORKFLOW_SANDBOX")
    # A worker keeps the workflows it ran in memory and their next tasks go to its own (sticky)
    # queue. If it dies without saying goodbye (SIGKILL, OOM, a lost host), those tasks wait this
    # long before the server moves them to the shared queue, where another worker replays them:
    # the SDK default (10s) stalled every update to those deals while a worker restarted.
    sticky_schedule_to_start: str = Field("1s", alias="TAKEBACK_STICKY_SCHEDULE_TO_START")
    # On SIGTERM the worker stops polling and gives running activities this long to finish before
    # they are cancelled (to be retried elsewhere). Keep it below the supervisor's kill timeout.
    worker_drain: str = Field("10s", alias="TAKEBACK_WORKER_DRAIN")

    return_window: str = Field("365d", alias="TAKEBACK_RETURN_WINDOW")
    reminder_offsets: str = Field("90d,30d,7d", alias="TAKEBACK_REMINDER_OFFSETS")
    return_threshold: float = Field(0.8, gt=0, le=1, alias="TAKEBACK_RETURN_THRESHOLD")
    incentive_mode: IncentiveMode = Field(IncentiveMode.rebate, alias="TAKEBACK_INCENTIVE_MODE")
    refresh_max_age_years: float = Field(5.0, ge=0, alias="TAKEBACK_REFRESH_MAX_AGE_YEARS")
    # Limits on what callers send (see README "Security"). A partner key books a deal of at most this
    # much new products' value; above it ops book it (403 needs-ops-approval for the partner).
    partner_booking_limit: Decimal = Field(Decimal("1000000.00"), ge=0, alias="TAKEBACK_PARTNER_BOOKING_LIMIT")
    max_serials_per_booking: int = Field(MAX_SERIALS_PER_BOOKING, ge=1, le=MAX_SERIALS_PER_BOOKING, alias="TAKEBACK_MAX_SERIALS_PER_BOOKING")
    max_open_pickups: int = Field(DEFAULT_MAX_OPEN_PICKUPS, ge=1, le=1000, alias="TAKEBACK_MAX_OPEN_PICKUPS")
    # Pickup contacts and addresses, trainees' e-mails and names: anonymised this long after their
    # deal closed or the person's last training (`takeback purge-personal-data`).
    personal_data_retention: str = Field("365d", alias="TAKEBACK_PERSONAL_DATA_RETENTION")
    sim_carrier_step: str = Field("0s", alias="TAKEBACK_SIM_CARRIER_STEP")
    specialization_year: str = Field("365d", alias="TAKEBACK_SPECIALIZATION_YEAR")
    specialization_reminder_offsets: str = Field("60d,30d", alias="TAKEBACK_SPECIALIZATION_REMINDER_OFFSETS")
    carrier_webhook_secret: str = Field("dev-carrier-secret", alias="TAKEBACK_CARRIER_WEBHOOK_SECRET")

    ops_email: str = Field("ops@takeback.example", alias="TAKEBACK_OPS_EMAIL")
    mail_from: str = Field("takeback@takeback.example", alias="TAKEBACK_MAIL_FROM")
    sendgrid_api_key: str | None = Field(None, alias="SENDGRID_API_KEY")
    sendgrid_host: str = Field("https://api.sendgrid.com", alias="SENDGRID_HOST")

    @field_validator("return_window", "specialization_year", "personal_data_retention")
    @classmethod
    def _window_is_a_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("reminder_offsets", "specialization_reminder_offsets")
    @classmethod
    def _offsets_are_durations(cls, value: str) -> str:
        parse_duration_list(value)
        return value

    @field_validator("sticky_schedule_to_start")
    @classmethod
    def _sticky_is_a_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("sim_carrier_step", "worker_drain")
    @classmethod
    def _step_is_a_duration_or_zero(cls, value: str) -> str:
        _seconds_or_zero(value)
        return value

    @property
    def return_window_seconds(self) -> float:
        return parse_duration(self.return_window).total_seconds()

    @property
    def reminder_offsets_seconds(self) -> list[float]:
        return [offset.total_seconds() for offset in parse_duration_list(self.reminder_offsets)]

    @property
    def specialization_year_seconds(self) -> float:
        return parse_duration(self.specialization_year).total_seconds()

    @property
    def specialization_reminder_offsets_seconds(self) -> list[float]:
        return [offset.total_seconds() for offset in parse_duration_list(self.specialization_reminder_offsets)]

    @property
    def sim_carrier_step_seconds(self) -> float:
        return _seconds_or_zero(self.sim_carrier_step)

    @property
    def sticky_schedule_to_start_seconds(self) -> float:
        return parse_duration(self.sticky_schedule_to_start).total_seconds()

    @property
    def worker_drain_seconds(self) -> float:
        return _seconds_or_zero(self.worker_drain)

    @property
    def personal_data_retention_seconds(self) -> float:
        return parse_duration(self.personal_data_retention).total_seconds()

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'takeback.db'}"

    @property
    def effective_outbox_dir(self) -> Path:
        return self.outbox_dir or self.data_dir / "outbox"


@lru_cache
def get_settings() -> Settings:
    return Settings()
