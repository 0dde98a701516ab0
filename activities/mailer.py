"""E-mail transports: SendGrid in production, `.eml` files in an outbox folder by default."""

import re
import time
from datetime import timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from pydantic import BaseModel
from temporalio.exceptions import ApplicationError


class Mail(BaseModel):
    key: str  # deal id + step: the business identity of this message
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


class SendGridMailer(Mailer):
    """The real SendGrid v3 client; `host` points it at another base URL (tests, proxies)."""

    def __init__(self, api_key: str, host: str = "https://api.sendgrid.com", timeout_seconds: float = 10):
        from sendgrid import SendGridAPIClient

        self.client = SendGridAPIClient(api_key=api_key, host=host)
        self.client.client.timeout = timeout_seconds  # copied into every request the client builds

    def send(self, mail: Mail, sender: str) -> str:
        from python_http_client.exceptions import HTTPError
        from sendgrid.helpers.mail import Cc, Mail as SendGridMail

        message = SendGridMail(from_email=sender, to_emails=mail.to, subject=mail.subject, plain_text_content=mail.body)
        if mail.cc:
            message.add_cc(Cc(mail.cc))
        try:
            response = self.client.send(message)
        except (TimeoutError, OSError) as error:
            raise ApplicationError(f"SendGrid did not answer: {error}", type="MailTemporarilyUnavailable") from error
        except HTTPError as error:
            status = getattr(error, "status_code", 0)
            detail = getattr(error, "body", b"")
            if status == 429 or status >= 500:
                retry_after = None
                headers = getattr(error, "headers", None) or {}
                reset = headers.get("X-RateLimit-Reset") if hasattr(headers, "get") else None
                if reset and str(reset).isdigit():  # unix time when the rate limit resets
                    retry_after = timedelta(seconds=min(3600, max(1, int(reset) - int(time.time()))))
                raise ApplicationError(f"SendGrid answered {status}; will retry", type="MailTemporarilyUnavailable", next_retry_delay=retry_after) from error
            raise ApplicationError(f"SendGrid refused the message ({status}): {detail!r}", type="MailRejected", non_retryable=True) from error
        headers = response.headers or {}
        return str(headers.get("X-Message-Id", "")) or f"sendgrid-{response.status_code}"


def mailer_from_settings(settings) -> Mailer:
    if settings.sendgrid_api_key:
        return SendGridMailer(settings.sendgrid_api_key, settings.sendgrid_host)
    return OutboxMailer(settings.effective_outbox_dir)
