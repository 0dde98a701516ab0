"""E-mail transports: SendGrid in production, `.eml` files in an outbox folder by default."""

import functools
import http.client
import math
import urllib.error
import re
import time
from datetime import timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from urllib.parse import urlsplit

from pydantic import BaseModel
from temporalio.exceptions import ApplicationError


class Mail(BaseModel):
    key: str  # deal id + step: the business identity of this message
    deal_id: str | None = None  # whose message it is, for ops to see its delivery state
    partner_id: str | None = None
    to: str
    cc: str | None = None
    subject: str
    body: str


class Mailer:
    def send(self, mail: Mail, sender: str) -> str:
        """Deliver and return the provider's message id."""
        raise NotImplementedError


def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)


class OutboxMailer(Mailer):
    """Writes one `.eml` file per message key; writing the same key again overwrites it."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def send(self, mail: Mail, sender: str) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        message = EmailMessage()
        message["From"] = sender
        message["To"] = mail.to
        if mail.cc:
            message["Cc"] = mail.cc
        message["Subject"] = mail.subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(idstring=_safe_name(mail.key)[:60], domain="takeback.local")
        message["X-Takeback-Key"] = mail.key
        message.set_content(mail.body)
        path = self.folder / f"{_safe_name(mail.key)}.eml"
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(bytes(message))
        temporary.replace(path)  # atomic: a reader never sees half a message
        return path.name


# 408 (request timeout), 429 (rate limited) and any 5xx may succeed later; other answers will not.
RETRYABLE_STATUS = {408, 429}
# A refused API key is our configuration, not the message: retried, with the activity's backoff, until ops fix it.
CONFIGURATION_STATUS = {401, 403}
MAX_RETRY_DELAY_SECONDS = 3600


def retry_delay(headers, now: float | None = None) -> timedelta | None:
    """How long SendGrid asks us to wait: `X-RateLimit-Reset` (unix time of the reset) or `Retry-After` (seconds)."""
    if headers is None or not hasattr(headers, "get"):
        return None
    now = time.time() if now is None else now
    for name, absolute in (("X-RateLimit-Reset", True), ("Retry-After", False)):
        value = headers.get(name)
        try:
            seconds = float(str(value).strip())
        except (TypeError, ValueError):
            continue  # absent, or an HTTP date we do not bother to parse: use the retry policy
        if not math.isfinite(seconds):
            continue
        if absolute:
            seconds -= now
        return timedelta(seconds=min(MAX_RETRY_DELAY_SECONDS, max(1.0, seconds)))
    return None


class SendGridMailer(Mailer):
    """The real SendGrid v3 client; `host` points it at another base URL (tests, proxies).

    Errors become Temporal ApplicationErrors: retryable for timeouts, connection failures, 408, 429
    (with `next_retry_delay` from the rate-limit headers) and 5xx; retryable for
    401/403 (`MailProviderConfiguration`: a revoked or wrong key); non-retryable for other 4xx
    (`MailRejected`: the message itself, e.g. a bad address).
    """

    def __init__(self, api_key: str, host: str = "https://api.sendgrid.com", timeout_seconds: float = 10):
        if not timeout_seconds or timeout_seconds <= 0:
            raise ValueError("SendGridMailer needs a positive timeout: an unbounded request would hang the activity")
        self.timeout_seconds = timeout_seconds
        self.host = urlsplit(host).hostname or host
        self._api_key, self._base_url = api_key, host.rstrip("/")

    @functools.cached_property
    def client(self):
        """SendGrid's client, made at the first mail: importing `sendgrid` (~50 ms) is no part of a
        worker's start, which must poll again within a second of a restart (tests/test_worker_imports.py).
        Two threads sending the first mails at once may each make one; either serves."""
        from sendgrid import SendGridAPIClient

        client = SendGridAPIClient(api_key=self._api_key, host=self._base_url)
        # python_http_client copies `timeout` into every Client it builds (client.mail.send...) and
        # hands it to urllib's opener.open(): it bounds the connect and each socket read.
        client.client.timeout = self.timeout_seconds
        return client

    def send(self, mail: Mail, sender: str) -> str:
        from sendgrid.helpers.mail import Cc, CustomArg, Mail as SendGridMail

        message = SendGridMail(from_email=sender, to_emails=mail.to, subject=mail.subject, plain_text_content=mail.body)
        if mail.cc:
            message.add_cc(Cc(mail.cc))
        # Our key travels with the message: SendGrid's activity feed and event webhooks name it,
        # so ops can match a delivery (or an "outcome unknown") to the deal's message.
        message.custom_arg = CustomArg(key="takeback_key", value=mail.key)
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        # The provider call in the deal's trace (observability/tracing.py); a no-op span while traces are off.
        with trace.get_tracer("takeback.mail").start_as_current_span("SendGrid POST /v3/mail/send", kind=SpanKind.CLIENT, attributes={"server.address": self.host, "takeback.mail.key": mail.key}) as span:
            response = self._send(message, span)
        headers = response.headers or {}
        return str(headers.get("X-Message-Id") or "") or f"sendgrid-{response.status_code}"

    def _send(self, message, span):
        from python_http_client.exceptions import HTTPError

        try:
            response = self.client.send(message)
            span.set_attribute("http.response.status_code", response.status_code)
            return response
        except HTTPError as error:  # python_http_client's: status_code, reason, body (bytes), headers (HTTPMessage)
            status = int(getattr(error, "status_code", 0) or 0)
            span.set_attribute("http.response.status_code", status)
            detail = _text(getattr(error, "body", b""))
            if status in RETRYABLE_STATUS or status >= 500:
                raise ApplicationError(
                    f"SendGrid answered {status}; will retry: {detail}",
                    type="MailTemporarilyUnavailable",
                    next_retry_delay=retry_delay(getattr(error, "headers", None)),
                ) from error
            if status in CONFIGURATION_STATUS:
                raise ApplicationError(
                    f"SendGrid refused our API key ({status}): check SENDGRID_API_KEY; will retry: {detail}",
                    type="MailProviderConfiguration",
                ) from error
            raise ApplicationError(f"SendGrid refused the message ({status}): {detail}", type="MailRejected", non_retryable=True) from error
        except urllib.error.URLError as error:
            # urllib raises URLError while connecting and sending (refused, DNS, connect timeout):
            # SendGrid never had the message, so another attempt cannot double it.
            raise ApplicationError(f"SendGrid could not be reached: {error!r}", type="MailTemporarilyUnavailable") from error
        except (OSError, http.client.HTTPException) as error:
            # The request went out and no answer came (a read timeout, a reset, a truncated answer):
            # SendGrid may have taken the message. Not retried, so it is never delivered twice.
            raise ApplicationError(
                f"outcome unknown: SendGrid did not answer after the message was sent ({error!r}); not retried, so it cannot arrive twice",
                type="MailOutcomeUnknown",
                non_retryable=True,
            ) from error


def _text(body, limit: int = 500) -> str:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    return str(body or "")[:limit]


def mailer_from_settings(settings) -> Mailer:
    if settings.sendgrid_api_key:
        return SendGridMailer(settings.sendgrid_api_key, settings.sendgrid_host)
    return OutboxMailer(settings.effective_outbox_dir)
