"""E-mail: the real SendGrid client against a local HTTP server, and the .eml outbox."""

import json
import socket
import threading
import time
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import func, select
from temporalio.exceptions import ApplicationError

from activities.deal_activities import TakebackActivities
from activities.mailer import Mail, Mailer, OutboxMailer, SendGridMailer, mailer_from_settings, retry_delay
from store.db import session_scope
from store.tables import EmailMessage
from tests.conftest import make_settings

MAIL = Mail(key="D1:reminder:7d", to="partner@example.com", cc="ops@example.com", subject="Deal D1: 2 units due", body="Request a pickup.")


class FakeSendGrid:
    """A v3 endpoint on 127.0.0.1: records each request; answers (status, headers, delay) from `answers`, else 202."""

    def __init__(self):
        self.requests: list[dict] = []
        self.answers: list[tuple[int, dict, float]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append({"method": "POST", "path": self.path, "headers": dict(self.headers), "json": json.loads(body)})
                status, headers, delay = outer.answers.pop(0) if outer.answers else (202, {"X-Message-Id": "msg-1"}, 0)
                time.sleep(delay)
                payload = b'{"errors":[{"message":"bad"}]}' if status >= 400 else b""
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up waiting (the timeout test)

            def log_message(self, *_):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sendgrid():
    fake = FakeSendGrid()
    yield fake
    fake.close()


# --- the SendGrid client ---------------------------------------------------------------------


def test_the_real_client_sends_a_v3_payload(sendgrid):
    provider_id = SendGridMailer("SG.test-key", host=sendgrid.url).send(MAIL, "takeback@vendor.example")
    assert provider_id == "msg-1"  # from X-Message-Id
    assert len(sendgrid.requests) == 1
    request = sendgrid.requests[0]
    assert request["path"] == "/v3/mail/send" and request["headers"]["Authorization"] == "Bearer SG.test-key"
    assert request["headers"]["Content-Type"] == "application/json"
    payload = request["json"]
    assert payload["from"]["email"] == "takeback@vendor.example" and payload["subject"] == MAIL.subject
    assert payload["custom_args"] == {"takeback_key": MAIL.key}  # SendGrid's activity feed names our message
    assert payload["personalizations"][0]["to"] == [{"email": "partner@example.com"}]
    assert payload["personalizations"][0]["cc"] == [{"email": "ops@example.com"}]
    assert payload["content"] == [{"type": "text/plain", "value": MAIL.body}]


def test_no_cc_sends_no_cc_and_a_missing_message_id_still_names_the_delivery(sendgrid):
    sendgrid.answers.append((202, {}, 0))
    provider_id = SendGridMailer("SG.k", host=sendgrid.url + "/").send(MAIL.model_copy(update={"cc": None}), "t@v.example")
    assert provider_id == "sendgrid-202"
    assert sendgrid.requests[0]["path"] == "/v3/mail/send"  # a trailing slash on the host does not double up
    assert "cc" not in sendgrid.requests[0]["json"]["personalizations"][0]


@pytest.mark.parametrize(
    "status, kind",
    [(429, "MailTemporarilyUnavailable"), (408, "MailTemporarilyUnavailable"), (500, "MailTemporarilyUnavailable"), (503, "MailTemporarilyUnavailable"),
     (400, "MailRejected"), (413, "MailRejected"), (401, "MailProviderConfiguration"), (403, "MailProviderConfiguration")],
)
def test_failures_are_retryable_or_not(sendgrid, status, kind):
    headers = {"X-RateLimit-Reset": str(int(time.time()) + 30)} if status == 429 else {}  # the limit resets in 30 s
    sendgrid.answers.append((status, headers, 0))
    with pytest.raises(ApplicationError) as failure:
        SendGridMailer("SG.k", host=sendgrid.url).send(MAIL, "t@v.example")
    assert failure.value.type == kind
    assert failure.value.non_retryable is (kind == "MailRejected")  # a refused key is our configuration: retried until fixed
    assert str(status) in str(failure.value)
    if status == 429:
        assert 20 <= failure.value.next_retry_delay.total_seconds() <= 31  # waits for the rate limit to reset
    else:
        assert failure.value.next_retry_delay is None  # the activity's retry policy decides
    assert len(sendgrid.requests) == 1  # the client itself never retries: Temporal does


def test_a_429_without_a_reset_header_and_a_503_with_retry_after(sendgrid):
    sendgrid.answers += [(429, {}, 0), (503, {"Retry-After": "12"}, 0)]
    mailer = SendGridMailer("SG.k", host=sendgrid.url)
    with pytest.raises(ApplicationError) as limited:
        mailer.send(MAIL, "t@v.example")
    assert not limited.value.non_retryable and limited.value.next_retry_delay is None
    with pytest.raises(ApplicationError) as unavailable:
        mailer.send(MAIL, "t@v.example")
    assert not unavailable.value.non_retryable and unavailable.value.next_retry_delay.total_seconds() == 12


def test_retry_delay_from_headers():
    now = 1_700_000_000.0
    assert retry_delay({"X-RateLimit-Reset": "1700000045"}, now).total_seconds() == 45
    assert retry_delay({"X-RateLimit-Reset": "1699999000"}, now).total_seconds() == 1  # already reset: soon, not never
    assert retry_delay({"X-RateLimit-Reset": str(int(now) + 86_400)}, now).total_seconds() == 3600  # capped
    assert retry_delay({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now) is None
    assert retry_delay({"X-RateLimit-Reset": "nan"}, now) is None
    assert retry_delay({}, now) is None and retry_delay(None, now) is None


def test_a_hanging_sendgrid_times_out_and_is_not_sent_again(sendgrid):
    """The request went out, no answer came: SendGrid may have taken it, so no attempt repeats it."""
    sendgrid.answers.append((202, {}, 2))
    started = time.monotonic()
    with pytest.raises(ApplicationError) as failure:
        SendGridMailer("SG.k", host=sendgrid.url, timeout_seconds=0.5).send(MAIL, "t@v.example")
    assert time.monotonic() - started < 1.5
    assert failure.value.non_retryable and failure.value.type == "MailOutcomeUnknown"
    assert isinstance(failure.value.__cause__, TimeoutError)


def test_an_unreachable_sendgrid_is_retried():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ApplicationError) as failure:
        SendGridMailer("SG.k", host=f"http://127.0.0.1:{port}", timeout_seconds=2).send(MAIL, "t@v.example")
    assert not failure.value.non_retryable and failure.value.type == "MailTemporarilyUnavailable"


def test_the_timeout_is_bounded():
    assert SendGridMailer("SG.k").client.client.timeout == 10
    with pytest.raises(ValueError):
        SendGridMailer("SG.k", timeout_seconds=0)


def test_settings_choose_sendgrid_when_a_key_is_set(tmp_path, sendgrid):
    outbox = mailer_from_settings(make_settings(tmp_path))
    assert isinstance(outbox, OutboxMailer) and outbox.folder == tmp_path / "outbox"
    mailer = mailer_from_settings(make_settings(tmp_path, sendgrid_api_key="SG.x", sendgrid_host=sendgrid.url))
    assert isinstance(mailer, SendGridMailer)
    mailer.send(MAIL, "t@v.example")
    assert sendgrid.requests[0]["headers"]["Authorization"] == "Bearer SG.x"


def test_settings_read_sendgrid_from_the_environment(tmp_path, monkeypatch, sendgrid):
    from settings import Settings

    monkeypatch.setenv("SENDGRID_API_KEY", "SG.env")
    monkeypatch.setenv("SENDGRID_HOST", sendgrid.url)
    mailer = mailer_from_settings(Settings(data_dir=tmp_path))
    assert isinstance(mailer, SendGridMailer)
    mailer.send(MAIL, "t@v.example")
    assert sendgrid.requests[0]["headers"]["Authorization"] == "Bearer SG.env"


# --- the outbox ------------------------------------------------------------------------------


def test_outbox_writes_one_parseable_eml_per_key(tmp_path):
    outbox = OutboxMailer(tmp_path)
    assert outbox.send(MAIL, "t@v.example") == outbox.send(MAIL, "t@v.example")
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".eml"  # no .tmp left behind
    message = BytesParser(policy=policy.default).parsebytes(files[0].read_bytes())
    assert (message["From"], message["To"], message["Cc"], message["Subject"]) == ("t@v.example", MAIL.to, MAIL.cc, MAIL.subject)
    assert message["X-Takeback-Key"] == MAIL.key
    assert message.get_content().strip() == MAIL.body


def test_outbox_without_cc_and_with_awkward_keys(tmp_path):
    outbox = OutboxMailer(tmp_path / "new")  # the folder is created on first use
    outbox.send(MAIL.model_copy(update={"cc": None, "key": "D/2:../escalation: lost"}), "t@v.example")
    (path,) = (tmp_path / "new").iterdir()
    assert path.parent == tmp_path / "new" and "/" not in path.name
    message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert message["Cc"] is None and message["To"] == MAIL.to


# --- one delivery per key, through the activities ------------------------------------------


class FlakyMailer(Mailer):
    """Fails the first `failures` sends with a retryable error, then records deliveries."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.attempts = 0
        self.sent: list[str] = []

    def send(self, mail: Mail, sender: str) -> str:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ApplicationError("SendGrid answered 503; will retry", type="MailTemporarilyUnavailable")
        self.sent.append(mail.key)
        return f"id-{len(self.sent)}"


def email_rows(settings) -> dict:
    with session_scope(settings.effective_database_url) as session:
        assert session.execute(select(func.count()).select_from(EmailMessage)).scalar_one() == len(
            rows := {row.key: row for row in session.execute(select(EmailMessage)).scalars()}
        )
        return rows


def test_a_key_is_sent_once_even_when_the_activity_runs_twice(tmp_path):
    settings = make_settings(tmp_path)
    mailer = FlakyMailer()
    activities = TakebackActivities(settings, mailer=mailer)
    assert activities._send_once(MAIL) is True
    assert activities._send_once(MAIL) is False
    assert TakebackActivities(settings, mailer=mailer)._send_once(MAIL) is False  # another worker process
    assert mailer.sent == [MAIL.key]
    rows = email_rows(settings)
    assert list(rows) == [MAIL.key]
    assert rows[MAIL.key].sent_at is not None and rows[MAIL.key].provider_id == "id-1"
    assert (rows[MAIL.key].to, rows[MAIL.key].cc, rows[MAIL.key].subject) == (MAIL.to, MAIL.cc, MAIL.subject)


def test_a_retryable_failure_leaves_the_message_unsent_for_the_retry(tmp_path):
    settings = make_settings(tmp_path)
    mailer = FlakyMailer(failures=2)
    activities = TakebackActivities(settings, mailer=mailer)
    for _ in range(2):
        with pytest.raises(ApplicationError) as failure:
            activities._send_once(MAIL)
        assert not failure.value.non_retryable
        rows = email_rows(settings)
        assert list(rows) == [MAIL.key] and rows[MAIL.key].sent_at is None  # logged, not delivered, no duplicate
    assert activities._send_once(MAIL) is True  # the retry delivers
    assert activities._send_once(MAIL) is False
    assert mailer.sent == [MAIL.key] and mailer.attempts == 3
    rows = email_rows(settings)
    assert list(rows) == [MAIL.key] and rows[MAIL.key].sent_at is not None


def test_through_sendgrid_a_5xx_is_retried_and_a_4xx_is_final(tmp_path, sendgrid):
    settings = make_settings(tmp_path, sendgrid_api_key="SG.k", sendgrid_host=sendgrid.url)
    activities = TakebackActivities(settings)
    sendgrid.answers.append((500, {}, 0))
    with pytest.raises(ApplicationError):
        activities._send_once(MAIL)
    assert activities._send_once(MAIL) is True  # the retry delivers
    assert activities._send_once(MAIL) is False  # and a later repeat does not
    sendgrid.answers.append((400, {}, 0))
    other = MAIL.model_copy(update={"key": "D1:reminder:30d"})
    assert activities._send_once(other) is False  # refused for good: recorded, and the activity ends (no deal fails on it)
    assert activities._send_once(other) is False  # and never tried again
    assert len(sendgrid.requests) == 3
    rows = email_rows(settings)
    assert set(rows) == {"D1:reminder:7d", "D1:reminder:30d"}
    assert rows["D1:reminder:7d"].provider_id == "msg-1" and rows["D1:reminder:7d"].state == "sent" and rows["D1:reminder:7d"].attempts == 2
    refused = rows["D1:reminder:30d"]
    assert refused.sent_at is None and refused.state == "failed" and "400" in refused.last_error and refused.attempts == 1


def test_a_slow_sendgrid_is_never_sent_twice_by_overlapping_attempts(tmp_path, sendgrid):
    """An attempt that outlives its activity timeout still holds its claim: the retry does not send."""
    settings = make_settings(tmp_path, sendgrid_api_key="SG.k", sendgrid_host=sendgrid.url)
    activities = TakebackActivities(settings)
    sendgrid.answers.append((202, {"X-Message-Id": "slow-1"}, 1.0))
    first = threading.Thread(target=activities._send_once, args=(MAIL,))
    first.start()
    time.sleep(0.3)  # the first attempt is waiting on SendGrid
    with pytest.raises(ApplicationError) as second:
        activities._send_once(MAIL)  # Temporal's retry of an attempt it gave up on
    assert second.value.type == "MailInFlight" and not second.value.non_retryable
    first.join(5)
    assert activities._send_once(MAIL) is False  # later attempts find it sent
    assert len(sendgrid.requests) == 1
    row = email_rows(settings)[MAIL.key]
    assert row.state == "sent" and row.provider_id == "slow-1" and row.attempts == 1


def test_a_revoked_key_is_retried_with_its_reason_shown_until_it_is_fixed(tmp_path, sendgrid):
    settings = make_settings(tmp_path, sendgrid_api_key="SG.k", sendgrid_host=sendgrid.url)
    activities = TakebackActivities(settings)
    sendgrid.answers += [(401, {}, 0), (403, {}, 0)]
    for _ in range(2):
        with pytest.raises(ApplicationError) as failure:
            activities._send_once(MAIL)
        assert failure.value.type == "MailProviderConfiguration" and not failure.value.non_retryable
        row = email_rows(settings)[MAIL.key]
        assert row.state == "queued" and "SENDGRID_API_KEY" in row.last_error
    assert activities._send_once(MAIL) is True
    row = email_rows(settings)[MAIL.key]
    assert row.state == "sent" and row.attempts == 3 and row.last_error is None and len(sendgrid.requests) == 3


def test_a_claim_left_by_a_dead_attempt_fails_the_message_instead_of_sending_it_twice(tmp_path, sendgrid):
    """The worker died after claiming (perhaps after SendGrid took it): never sent again."""
    from datetime import timedelta

    from store import mail as mail_store
    from store.tables import utcnow

    settings = make_settings(tmp_path, sendgrid_api_key="SG.k", sendgrid_host=sendgrid.url)
    activities = TakebackActivities(settings)
    with session_scope(settings.effective_database_url) as session:
        mail_store.queue(session, EmailMessage(key=MAIL.key, to=MAIL.to, subject=MAIL.subject, body=MAIL.body))
        assert mail_store.claim(session, MAIL.key, now=utcnow() - mail_store.CLAIM_LEASE - timedelta(seconds=1))  # and then the worker died
    assert activities._send_once(MAIL) is False
    row = email_rows(settings)[MAIL.key]
    assert row.state == "failed" and row.last_error.startswith("outcome unknown") and sendgrid.requests == []
    assert activities._send_once(MAIL) is False and sendgrid.requests == []
