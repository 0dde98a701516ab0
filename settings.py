"""All configuration in one place, read from the environment (see shared/api.md)."""

import base64
import binascii
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.durations import parse_duration, parse_duration_list
from domain.models import MAX_SERIALS_PER_BOOKING, IncentiveMode

TASK_QUEUE = "takeback"
DEFAULT_MAX_OPEN_PICKUPS = 20
DEFAULT_MAX_LABELS_PER_DEAL = 50  # pickups over a deal's life: each buys a carrier label

# Webhook secrets that have been shipped or printed somewhere (code, compose, README, tests, bench):
# a production process refuses them whatever their length.
KNOWN_WEBHOOK_SECRETS = frozenset(
    {"dev-carrier-secret", "change-me", "changeme", "secret", "test-webhook-secret", "walkthrough-secret", "chaos-webhook-secret", "bench-secret"}
)
MIN_WEBHOOK_SECRET_BYTES = 32
PAYLOAD_KEY_BYTES = (16, 24, 32)  # AES-128/192/256


class UnsafeSettings(ValueError):
    """The settings would run a production process on a known or missing secret: it must not start."""


def parse_payload_keys(value: str) -> dict[str, bytes]:
    """`kid1:<base64 key>,kid2:<base64 key>` -> {kid: key}; keys of 16, 24 or 32 bytes."""
    keys: dict[str, bytes] = {}
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        key_id, sep, encoded = item.partition(":")
        key_id = key_id.strip()
        if not sep or not key_id:
            raise ValueError("TAKEBACK_PAYLOAD_KEYS is `kid:<base64 key>[,kid:<base64 key>...]`")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"payload key {key_id!r} is not base64") from None
        if len(key) not in PAYLOAD_KEY_BYTES:
            raise ValueError(f"payload key {key_id!r} has {len(key)} bytes; AES-GCM takes 16, 24 or 32")
        if key_id in keys:
            raise ValueError(f"payload key id {key_id!r} is listed twice")
        keys[key_id] = key
    return keys


TRACE_EXPORTERS = frozenset({"otlp", "console", "none"})


def parse_host_port(value: str) -> tuple[str, int]:
    """`host:port` (IPv6 hosts in brackets) -> (host, port)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return host.strip("[]"), int(port)


def _seconds_or_zero(value: str) -> float:
    """A duration that may also be `0`/`0s` (off); a bare number counts as seconds."""
    value = value.strip()
    if value in ("0", "0s"):
        return 0.0
    return parse_duration(value if value[-1:].isalpha() else f"{value}s").total_seconds()


RATE_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_rate(value: str) -> float:
    """`600/min`, `10/s`, `3600/h` -> per second; `0` -> 0 (no limit)."""
    text = str(value).strip().replace(" ", "")
    if text in ("0", "0/s", "0/min", "0/h"):
        return 0.0
    count, sep, unit = text.partition("/")
    try:
        number = float(count)
    except ValueError:
        number = -1.0
    if not sep or unit not in RATE_UNITS or not number > 0 or number == float("inf"):
        raise ValueError(f"{value!r} is not a rate: use e.g. 600/min, 10/s or 0 (no limit)")
    return number / RATE_UNITS[unit]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True)

    data_dir: Path = Field(Path(".data"), alias="TAKEBACK_DATA_DIR")
    database_url: str = Field("", alias="TAKEBACK_DATABASE_URL")
    outbox_dir: Path | None = Field(None, alias="TAKEBACK_OUTBOX_DIR")

    temporal_address: str = Field("localhost:7233", alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field("default", alias="TEMPORAL_NAMESPACE")
    temporal_api_key: SecretStr | None = Field(None, alias="TEMPORAL_API_KEY")
    temporal_tls_cert: Path | None = Field(None, alias="TEMPORAL_TLS_CLIENT_CERT_PATH")
    temporal_tls_key: Path | None = Field(None, alias="TEMPORAL_TLS_CLIENT_KEY_PATH")
    # A private CA (PEM) to verify the server with, and the name its certificate carries (also the SNI).
    temporal_tls_ca: Path | None = Field(None, alias="TEMPORAL_TLS_CA_PATH")
    temporal_tls_server_name: str | None = Field(None, alias="TEMPORAL_TLS_SERVER_NAME")
    temporal_tls: bool = Field(False, alias="TEMPORAL_TLS")
    # Optional end-to-end encryption of workflow payloads (AES-GCM): `kid:<base64 key>,...`; new
    # payloads use TAKEBACK_PAYLOAD_KEY_ID, any listed key decrypts (rotation). Unset: off.
    payload_keys: SecretStr | None = Field(None, alias="TAKEBACK_PAYLOAD_KEYS")
    payload_key_id: str | None = Field(None, alias="TAKEBACK_PAYLOAD_KEY_ID")
    # Once every history is sealed: a payload that is not is refused (its decode fails, saying so), and
    # a process without payload keys refuses to start. Off: unsealed payloads (older histories) pass.
    payload_require_encryption: bool = Field(False, alias="TAKEBACK_PAYLOAD_REQUIRE_ENCRYPTION")
    # `takeback codec-server`: the bearer token callers must send (the Web UI passes the user's), and
    # the browser origins (the Web UI's) allowed to call it.
    codec_server_token: SecretStr | None = Field(None, alias="TAKEBACK_CODEC_SERVER_TOKEN")
    codec_server_origins: str = Field("http://localhost:8080,http://127.0.0.1:8080", alias="TAKEBACK_CODEC_SERVER_ORIGINS")
    task_queue: str = Field(TASK_QUEUE, alias="TAKEBACK_TASK_QUEUE")
    # Worker Versioning (README "Changing workflow code"). With TAKEBACK_BUILD_ID set, a worker runs as
    # that version of the Worker Deployment TAKEBACK_DEPLOYMENT_NAME: the workflows it starts stay on it
    # (pinned) until they continue as new onto the current version, which `takeback deploy promote`
    # sets. Unset: no versioning, workflows go to any worker of the queue (tests, `takeback dev`).
    deployment_name: str = Field("takeback", alias="TAKEBACK_DEPLOYMENT_NAME", min_length=1)
    build_id: str | None = Field(None, alias="TAKEBACK_BUILD_ID")
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
    # How many deals a worker keeps in memory (temporalio's max_cached_workflows; the SDK's default is
    # 1,000). A deal evicted from the cache replays its whole history on its next task: in a deadline
    # storm (thousands of deals due in one second) deals beyond the cache replayed on every step.
    # Measured (bench/STORM-NOTES.md): about 40 KB a cached deal at rest (33-41 KB in three runs), a
    # worker's peak ~800-870 MB with 5,200 deals cached through a 5,000-deal storm (~140 KB a deal,
    # in-flight work included): 10,000 holds a quarter-end's storm in 0.4-1.4 GB. Lower it on small
    # hosts; 0 caches none.
    worker_cache: int = Field(10000, alias="TAKEBACK_WORKER_CACHE", ge=0)
    # On SIGTERM the worker stops polling and gives running activities this long to finish before
    # they are cancelled (to be retried elsewhere). Keep it below the supervisor's kill timeout.
    worker_drain: str = Field("10s", alias="TAKEBACK_WORKER_DRAIN")

    return_window: str = Field("365d", alias="TAKEBACK_RETURN_WINDOW")
    reminder_offsets: str = Field("90d,30d,7d", alias="TAKEBACK_REMINDER_OFFSETS")
    # How often an open deal wakes to look for a new current worker version, which it then moves to by
    # continuing as new (Worker Versioning): an old version drains within this. Each look is a timer
    # (one billable Action on Temporal Cloud); 0 = never look (a deal moves only at its own messages).
    version_look: str = Field("30d", alias="TAKEBACK_VERSION_LOOK")
    return_threshold: float = Field(0.8, gt=0, le=1, alias="TAKEBACK_RETURN_THRESHOLD")
    incentive_mode: IncentiveMode = Field(IncentiveMode.rebate, alias="TAKEBACK_INCENTIVE_MODE")
    refresh_max_age_years: float = Field(5.0, ge=0, alias="TAKEBACK_REFRESH_MAX_AGE_YEARS")
    # Limits on what callers send (see README "Security"). A partner key books a deal of at most this
    # much new products' value; above it ops book it (403 needs-ops-approval for the partner).
    partner_booking_limit: Decimal = Field(Decimal("1000000.00"), ge=0, alias="TAKEBACK_PARTNER_BOOKING_LIMIT")
    # ... and its open deals (awaiting returns or condition met) together, with the new one, of at most this much
    # new products' value (the measure of the limit above: ten bookings just under it are not one ops never saw).
    partner_open_exposure_limit: Decimal = Field(Decimal("5000000.00"), ge=0, alias="TAKEBACK_PARTNER_OPEN_EXPOSURE_LIMIT")
    max_serials_per_booking: int = Field(MAX_SERIALS_PER_BOOKING, ge=1, le=MAX_SERIALS_PER_BOOKING, alias="TAKEBACK_MAX_SERIALS_PER_BOOKING")
    max_open_pickups: int = Field(DEFAULT_MAX_OPEN_PICKUPS, ge=1, le=1000, alias="TAKEBACK_MAX_OPEN_PICKUPS")
    # Pickups one deal may have over its life (each buys a carrier label, at the vendor's cost): 422 past it.
    max_labels_per_deal: int = Field(DEFAULT_MAX_LABELS_PER_DEAL, ge=1, le=10000, alias="TAKEBACK_MAX_LABELS_PER_DEAL")
    # Pickup contacts and addresses, trainees' e-mails and names: anonymised this long after their
    # deal closed or the person's last training (`takeback purge-personal-data`).
    personal_data_retention: str = Field("365d", alias="TAKEBACK_PERSONAL_DATA_RETENTION")
    # How often each worker anonymises what outlived the retention (0s: never; then run
    # `takeback purge-personal-data` from a scheduler of your own).
    purge_every: str = Field("1d", alias="TAKEBACK_PURGE_EVERY")
    sim_carrier_step: str = Field("0s", alias="TAKEBACK_SIM_CARRIER_STEP")
    # The API's public address, for the verification URL (and QR code) printed on certificates; empty:
    # the address the request reached (fine unless a proxy rewrites it).
    public_url: str = Field("", alias="TAKEBACK_PUBLIC_URL")
    specialization_year: str = Field("365d", alias="TAKEBACK_SPECIALIZATION_YEAR")
    specialization_reminder_offsets: str = Field("60d,30d", alias="TAKEBACK_SPECIALIZATION_REMINDER_OFFSETS")
    # `production` (the default) refuses to start the API or a worker on a missing, short or known
    # webhook secret, or without a mail provider; `development` (`takeback dev`) and `test` do not.
    env: Literal["production", "development", "test"] = Field("production", alias="TAKEBACK_ENV")
    # One secret, or several comma-separated during a rotation (any of them verifies a signature).
    carrier_webhook_secret: SecretStr | None = Field(None, alias="TAKEBACK_CARRIER_WEBHOOK_SECRET")
    # Signs the console's session cookies (api/console/session.py). Unset outside production: each API
    # process makes a random one, so a restart signs everyone out; production needs one shared by all.
    console_secret: SecretStr | None = Field(None, alias="TAKEBACK_CONSOLE_SECRET")
    # Where the console links a deal's workflow (the Temporal Web UI as the ops' browser reaches it).
    temporal_ui_url: str = Field("http://localhost:8233", alias="TAKEBACK_TEMPORAL_UI_URL")

    # The carrier pickups are booked with (README "A real carrier: EasyPost"): `sim`, the embedded
    # simulated carrier, or `easypost`, which needs its API key, webhook secret and the returns address.
    carrier: Literal["sim", "easypost"] = Field("sim", alias="TAKEBACK_CARRIER")
    easypost_api_key: SecretStr | None = Field(None, alias="EASYPOST_API_KEY")
    # The webhook's secret as registered with EasyPost; several comma-separated during a rotation.
    easypost_webhook_secret: SecretStr | None = Field(None, alias="EASYPOST_WEBHOOK_SECRET")
    easypost_api_base: str = Field("https://api.easypost.com/v2", alias="EASYPOST_API_BASE")
    # Where collected gear goes (the shipments' destination), JSON: {"company", "street1", "city", "state", "zip", "country", "phone", ...}.
    returns_address: dict[str, str] | None = Field(None, alias="TAKEBACK_RETURNS_ADDRESS")
    easypost_label_format: Literal["PDF", "ZPL"] = Field("PDF", alias="TAKEBACK_EASYPOST_LABEL_FORMAT")
    # The Temporal Schedule that polls open trackers, in case webhooks were lost; an event signed longer
    # ago than the tolerance is refused (the poll brings its news instead).
    easypost_poll_every: str = Field("1h", alias="TAKEBACK_EASYPOST_POLL_EVERY")
    easypost_webhook_tolerance: str = Field("1d", alias="TAKEBACK_EASYPOST_WEBHOOK_TOLERANCE")

    ops_email: str = Field("ops@takeback.example", alias="TAKEBACK_OPS_EMAIL")
    mail_from: str = Field("takeback@takeback.example", alias="TAKEBACK_MAIL_FROM")
    # Unset or empty: mail is written as .eml files to the outbox, which production allows only when
    # TAKEBACK_MAIL_OUTBOX=true says so; otherwise it refuses to start (set but empty is a lost key).
    sendgrid_key: SecretStr | None = Field(None, validation_alias=AliasChoices("SENDGRID_API_KEY", "sendgrid_api_key"))
    sendgrid_host: str = Field("https://api.sendgrid.com", alias="SENDGRID_HOST")
    mail_outbox: bool = Field(False, alias="TAKEBACK_MAIL_OUTBOX")
    # Messages a deal's mail queue hands out, all workers together (a limit the Temporal server keeps
    # for the queue): the provider's own limit, so a pile of reminders and notices drains at its pace
    # instead of drawing 429s. `N/min`, `N/s` or `N/h`; `0`: no limit (429s are still honoured).
    mail_rate: str = Field("600/min", alias="TAKEBACK_MAIL_RATE")

    # The HTTP edge (api/limits.py, api/ratelimit.py, `takeback api`), per API process. A rate is
    # requests per second refilling a bucket of `_BURST` requests; 0 turns that limit off. The defaults
    # sit above one key's load in `make bench` (about 800 GET/s from one ops key and one address).
    rate_per_key: float = Field(1000, ge=0, alias="TAKEBACK_RATE_PER_KEY")
    rate_per_key_burst: int = Field(2000, ge=0, alias="TAKEBACK_RATE_PER_KEY_BURST")
    rate_per_address: float = Field(2000, ge=0, alias="TAKEBACK_RATE_PER_ADDRESS")
    rate_per_address_burst: int = Field(4000, ge=0, alias="TAKEBACK_RATE_PER_ADDRESS_BURST")
    # Failed authentications (an unknown key, a bad webhook signature) per client address: once they
    # are spent, that address's requests carrying a key not seen to work are refused before any lookup.
    rate_failed_auth: float = Field(2, ge=0, alias="TAKEBACK_RATE_FAILED_AUTH")
    rate_failed_auth_burst: int = Field(50, ge=0, alias="TAKEBACK_RATE_FAILED_AUTH_BURST")
    # How long the impact report (per key and query) and /healthz answers are reused; 0: not at all.
    response_cache: str = Field("1s", alias="TAKEBACK_RESPONSE_CACHE")
    # A request's headers must arrive within this long of its first byte (of the connection, for
    # the first request); its body within `_BODY_TIMEOUT` of its headers. 0: no limit.
    http_header_timeout: str = Field("10s", alias="TAKEBACK_HTTP_HEADER_TIMEOUT")
    http_body_timeout: str = Field("30s", alias="TAKEBACK_HTTP_BODY_TIMEOUT")
    http_keep_alive: str = Field("5s", alias="TAKEBACK_HTTP_KEEP_ALIVE")  # an idle connection is closed after it
    http_max_header_bytes: int = Field(64 * 1024, ge=4096, alias="TAKEBACK_HTTP_MAX_HEADER_BYTES")
    # Connections plus requests in progress (uvicorn's limit_concurrency): past it, new requests get a 503.
    http_max_connections: int = Field(1000, ge=1, alias="TAKEBACK_HTTP_MAX_CONNECTIONS")
    # Proxies whose X-Forwarded-For names the caller (uvicorn's setting): the proxy's address alone
    # (compose: Caddy's fixed TAKEBACK_PROXY_ADDRESS), never "*", which lets anyone reaching the API claim
    # any address; unset behind a proxy, every caller would count as the proxy in the rate limits.
    forwarded_allow_ips: str = Field("127.0.0.1", alias="FORWARDED_ALLOW_IPS")

    # Operating it (README "Operating it"). `json`: one JSON object a line, ids as fields, for a log
    # pipeline; `text`: for a terminal.
    log_format: Literal["text", "json"] = Field("text", alias="TAKEBACK_LOG_FORMAT")
    # host:port of the worker's Prometheus endpoint (the SDK's metrics and the project's counters),
    # and of its /healthz and /readyz (a server of ours: the SDK owns the metrics one). Unset: none.
    worker_metrics_address: str | None = Field(None, alias="TAKEBACK_WORKER_METRICS_ADDRESS")
    worker_health_address: str | None = Field(None, alias="TAKEBACK_WORKER_HEALTH_ADDRESS")
    # The namespace has the Keyword search attributes DealStatus and PartnerId registered: workflows
    # start with them and deals keep DealStatus current, so ops filter in the Web UI. Without them
    # registered the server refuses such starts: leave it false.
    search_attributes: bool = Field(False, alias="TAKEBACK_SEARCH_ATTRIBUTES")
    # Business gauges on the API's /metrics are computed from the store at most this often (a scrape
    # flood costs the database nothing more); at risk: short of the condition, deadline this close;
    # a pickup is silent when the carrier has said nothing about it for this long.
    gauges_cache: str = Field("10s", alias="TAKEBACK_GAUGES_CACHE")
    at_risk_within: str = Field("30d", alias="TAKEBACK_AT_RISK_WITHIN")
    pickup_silent_after: str = Field("7d", alias="TAKEBACK_PICKUP_SILENT_AFTER")
    # Traces are opt-in by the standard variables: OTEL_TRACES_EXPORTER=otlp|console, or an OTLP
    # endpoint set (otlp). The SDK reads the rest itself: OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER(_ARG),
    # OTEL_EXPORTER_OTLP_* (endpoint, headers, protocol).
    otel_traces_exporter: str | None = Field(None, alias="OTEL_TRACES_EXPORTER")
    otel_exporter_otlp_endpoint: str | None = Field(None, alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    otel_exporter_otlp_traces_endpoint: str | None = Field(None, alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    otel_sdk_disabled: bool = Field(False, alias="OTEL_SDK_DISABLED")
    otel_service_name: str | None = Field(None, alias="OTEL_SERVICE_NAME")  # default: takeback-api, takeback-worker

    @field_validator("return_window", "specialization_year", "personal_data_retention", "version_look")
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

    @field_validator("sim_carrier_step", "worker_drain", "purge_every", "response_cache", "http_header_timeout", "http_body_timeout", "http_keep_alive")
    @classmethod
    def _step_is_a_duration_or_zero(cls, value: str) -> str:
        _seconds_or_zero(value)
        return value

    @field_validator("mail_rate")
    @classmethod
    def _mail_rate_parses(cls, value: str) -> str:
        parse_rate(value)
        return value

    @field_validator("gauges_cache", "at_risk_within", "pickup_silent_after")
    @classmethod
    def _observability_durations(cls, value: str) -> str:
        _seconds_or_zero(value)
        return value

    @field_validator("easypost_poll_every", "easypost_webhook_tolerance")
    @classmethod
    def _easypost_durations(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("deployment_name")
    @classmethod
    def _deployment_name(cls, value: str) -> str:
        if "." in value or value != value.strip():
            raise ValueError("TAKEBACK_DEPLOYMENT_NAME takes no '.' and no surrounding spaces (a version is '<name>.<build id>')")
        return value

    @field_validator("build_id")
    @classmethod
    def _build_id(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("worker_metrics_address", "worker_health_address")
    @classmethod
    def _host_and_port(cls, value: str | None) -> str | None:
        if value:
            parse_host_port(value)
        return value or None

    @field_validator("otel_traces_exporter")
    @classmethod
    def _known_exporter(cls, value: str | None) -> str | None:
        if value is not None and value.strip().lower() not in TRACE_EXPORTERS:
            raise ValueError(f"OTEL_TRACES_EXPORTER takes one of {', '.join(sorted(TRACE_EXPORTERS))}")
        return value.strip().lower() if value is not None else None

    @field_validator("payload_keys")
    @classmethod
    def _payload_keys_parse(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_payload_keys(value.get_secret_value())
        return value

    @property
    def sendgrid_api_key(self) -> str | None:
        """The SendGrid key in clear, for the mailer only (empty or unset: the outbox)."""
        return self.sendgrid_key.get_secret_value() if self.sendgrid_key is not None else None

    @property
    def carrier_webhook_secrets(self) -> list[bytes]:
        """Every secret a carrier signature may be made with (several during a rotation)."""
        if self.carrier_webhook_secret is None:
            return []
        return [part.strip().encode() for part in self.carrier_webhook_secret.get_secret_value().split(",") if part.strip()]

    @property
    def payload_keyring(self) -> dict[str, bytes]:
        return parse_payload_keys(self.payload_keys.get_secret_value()) if self.payload_keys is not None else {}

    def startup_problems(self) -> list[str]:
        """What makes these settings unsafe to serve with: always a broken codec or TLS set-up; in
        production also a missing, short or known webhook secret and a mail provider left empty."""
        problems = []
        keys = self.payload_keyring
        if keys and not self.payload_key_id:
            problems.append("TAKEBACK_PAYLOAD_KEYS is set without TAKEBACK_PAYLOAD_KEY_ID (the key new payloads are encrypted with)")
        if self.payload_key_id and self.payload_key_id not in keys:
            problems.append(f"TAKEBACK_PAYLOAD_KEY_ID {self.payload_key_id!r} is not among TAKEBACK_PAYLOAD_KEYS")
        if self.payload_require_encryption and not keys:
            problems.append("TAKEBACK_PAYLOAD_REQUIRE_ENCRYPTION is set without TAKEBACK_PAYLOAD_KEYS: no payload could be sealed or opened")
        if bool(self.temporal_tls_cert) != bool(self.temporal_tls_key):
            problems.append("TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH go together")
        for name, path in (("TEMPORAL_TLS_CA_PATH", self.temporal_tls_ca), ("TEMPORAL_TLS_CLIENT_CERT_PATH", self.temporal_tls_cert), ("TEMPORAL_TLS_CLIENT_KEY_PATH", self.temporal_tls_key)):
            if path is not None and not path.is_file():
                problems.append(f"{name} {path} is not a readable file")
        problems += self.carrier_problems()
        if self.env != "production":
            return problems
        secrets = self.carrier_webhook_secrets
        if not secrets:
            problems.append("TAKEBACK_CARRIER_WEBHOOK_SECRET is not set (anyone could forge carrier events)")
        for number, secret in enumerate(secrets, 1):
            if secret.decode() in KNOWN_WEBHOOK_SECRETS:
                problems.append(f"TAKEBACK_CARRIER_WEBHOOK_SECRET #{number} is a published default")
            elif len(secret) < MIN_WEBHOOK_SECRET_BYTES:
                problems.append(f"TAKEBACK_CARRIER_WEBHOOK_SECRET #{number} has {len(secret)} bytes; at least {MIN_WEBHOOK_SECRET_BYTES} random bytes are needed")
            elif len(set(secret)) < 8:
                problems.append(f"TAKEBACK_CARRIER_WEBHOOK_SECRET #{number} is not random (too few distinct characters)")
        # Unset, the console answers 503 and the API serves on: a worker needs no console secret.
        console_secret = self.console_secret.get_secret_value().encode() if self.console_secret is not None else None
        if console_secret is not None and (len(console_secret) < MIN_WEBHOOK_SECRET_BYTES or len(set(console_secret)) < 8):
            problems.append(f"TAKEBACK_CONSOLE_SECRET must be at least {MIN_WEBHOOK_SECRET_BYTES} random bytes (it signs console sessions): openssl rand -hex 32")
        if not self.sendgrid_api_key and not self.mail_outbox:
            if self.sendgrid_key is not None:
                problems.append("SENDGRID_API_KEY is set but empty: mail would silently be written to files, not sent (TAKEBACK_MAIL_OUTBOX=true if that is meant)")
            else:
                problems.append("no mail provider: set SENDGRID_API_KEY, or TAKEBACK_MAIL_OUTBOX=true to write mail to files on purpose")
        return problems

    def carrier_problems(self) -> list[str]:
        """TAKEBACK_CARRIER=easypost without what it needs (in every mode: nothing could be booked or tracked)."""
        if self.carrier != "easypost":
            return []
        problems = []
        if not self.easypost_api_key or not self.easypost_api_key.get_secret_value().strip():
            problems.append("TAKEBACK_CARRIER=easypost needs EASYPOST_API_KEY")
        secrets = self.easypost_webhook_secrets
        if not secrets:
            problems.append("TAKEBACK_CARRIER=easypost needs EASYPOST_WEBHOOK_SECRET (the secret its webhook is registered with)")
        elif self.env == "production" and any(len(s.encode()) < MIN_WEBHOOK_SECRET_BYTES or len(set(s)) < 8 for s in secrets):
            problems.append(f"EASYPOST_WEBHOOK_SECRET must be at least {MIN_WEBHOOK_SECRET_BYTES} random bytes: openssl rand -hex 32")
        missing = [name for name in ("street1", "city", "zip", "country") if not (self.returns_address or {}).get(name)]
        if missing:
            problems.append(f"TAKEBACK_CARRIER=easypost needs TAKEBACK_RETURNS_ADDRESS (JSON) with {', '.join(missing)}")
        if self.sim_carrier_step_seconds > 0:
            problems.append("TAKEBACK_SIM_CARRIER_STEP must be 0s with TAKEBACK_CARRIER=easypost (it would invent events for real shipments)")
        return problems

    @property
    def easypost_webhook_secrets(self) -> list[str]:
        if self.easypost_webhook_secret is None:
            return []
        return [part.strip() for part in self.easypost_webhook_secret.get_secret_value().split(",") if part.strip()]

    @property
    def easypost_poll_every_seconds(self) -> float:
        return parse_duration(self.easypost_poll_every).total_seconds()

    @property
    def easypost_webhook_tolerance_seconds(self) -> float:
        return parse_duration(self.easypost_webhook_tolerance).total_seconds()

    def require_safe_to_start(self, what: str = "takeback") -> None:
        problems = self.startup_problems()
        if problems:
            raise UnsafeSettings(
                f"{what} refuses to start (TAKEBACK_ENV={self.env}):\n" + "\n".join(f"  - {problem}" for problem in problems)
                + "\n(for a local trial, `takeback dev` generates its own secret; tests set TAKEBACK_ENV=test)"
            )

    @property
    def return_window_seconds(self) -> float:
        return parse_duration(self.return_window).total_seconds()

    @property
    def version_look_seconds(self) -> float:
        return parse_duration(self.version_look).total_seconds()

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
    def purge_every_seconds(self) -> float:
        return _seconds_or_zero(self.purge_every)

    @property
    def personal_data_retention_seconds(self) -> float:
        return parse_duration(self.personal_data_retention).total_seconds()

    @property
    def response_cache_seconds(self) -> float:
        return _seconds_or_zero(self.response_cache)

    @property
    def http_header_timeout_seconds(self) -> float:
        return _seconds_or_zero(self.http_header_timeout)

    @property
    def http_body_timeout_seconds(self) -> float:
        return _seconds_or_zero(self.http_body_timeout)

    @property
    def http_keep_alive_seconds(self) -> float:
        return _seconds_or_zero(self.http_keep_alive)

    @property
    def trace_exporter(self) -> str | None:
        """`otlp` or `console` when traces are asked for, else None (then tracing costs nothing)."""
        if self.otel_sdk_disabled:
            return None
        exporter = self.otel_traces_exporter
        if exporter is None and (self.otel_exporter_otlp_endpoint or self.otel_exporter_otlp_traces_endpoint):
            exporter = "otlp"
        return exporter if exporter in ("otlp", "console") else None

    @property
    def gauges_cache_seconds(self) -> float:
        return _seconds_or_zero(self.gauges_cache)

    @property
    def at_risk_within_seconds(self) -> float:
        return _seconds_or_zero(self.at_risk_within)

    @property
    def pickup_silent_after_seconds(self) -> float:
        return _seconds_or_zero(self.pickup_silent_after)

    @property
    def mail_rate_per_second(self) -> float:
        return parse_rate(self.mail_rate)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'takeback.db'}"

    @property
    def effective_outbox_dir(self) -> Path:
        return self.outbox_dir or self.data_dir / "outbox"


@lru_cache
def get_settings() -> Settings:
    return Settings()
