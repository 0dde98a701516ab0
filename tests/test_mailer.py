"""E-mail: the real SendGrid client against a local HTTP server, and the .eml outbox."""

import json
import threading
import time
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import func, select
from temporalio.exceptions import ApplicationError

from activities.deal_activities import TakebackActivities
from activities.mailer import Mail, OutboxMailer, SendGridMailer, mailer_from_settings
from store.db import session_scope
from store.tables import EmailMessage
from tests.conftest import make_settings

MAIL = Mail(key="D1:reminder:7d", to="partner@example.com", cc="ops@example.com", subject="Deal D1: 2 units due", body="Request a pickup.")


class FakeSendGrid:
    """Records v3 requests; answers with the status (and headers) it is told to."""

    def __init__(self):
        self.requests: list[dict] = []
        self.answers: list[tuple[int, dict, float]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "json": json.loads(body)})
                status, headers, delay = outer.answers.pop(0) if outer.answers else (202, {"X-Message-Id": "msg-1"}, 0)
                time.sleep(delay)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                payload = b'{"errors":[{"message":"bad"}]}' if status >= 400 else b""
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def sendgrid():
    fake = FakeSendGrid()
    yield fake
    fake.server.shutdown()


def test_the_real_client_sends_a_v3_payload(sendgrid):
    provider_id = SendGridMailer("SG.test-key", host=sendgrid.url).send(MAIL, "takeback@vendor.example")
    assert provider_id == "msg-1"
    request = sendgrid.requests[0]
    assert request["path"] == "/v3/mail/send" and request["headers"]["Authorization"] == "Bearer SG.test-key"
    payload = request["json"]
    assert payload["from"]["email"] == "takeback@vendor.example" and payload["subject"] == MAIL.subject
    assert payload["personalizations"][0]["to"] == [{"email": "partner@example.com"}]
    assert payload["personalizations"][0]["cc"] == [{"email": "ops@example.com"}]
    assert payload["content"] == [{"type": "text/plain", "value": MAIL.body}]


@pytest.mark.parametrize("status, retryable", [(429, True), (500, True), (503, True), (400, False), (401, False)])
def test_failures_are_retryable_or_not(sendgrid, status, retryable):
    headers = {"X-RateLimit-Reset": str(int(time.time()) + 30)} if status == 429 else {}  # the limit resets in 30 s
    sendgrid.answers.append((status, headers, 0))
    with pytest.raises(ApplicationError) as failure:
        SendGridMailer("SG.k", host=sendgrid.url).send(MAIL, "t@v.example")
    assert failure.value.non_retryable is (not retryable)
    if status == 429:
        assert 20 <= failure.value.next_retry_delay.total_seconds() <= 31  # waits for the rate limit to reset


def test_a_hanging_sendgrid_times_out_and_is_retried(sendgrid):
    sendgrid.answers.append((202, {}, 2))
    started = time.monotonic()
    with pytest.raises(ApplicationError) as failure:
        SendGridMailer("SG.k", host=sendgrid.url, timeout_seconds=0.5).send(MAIL, "t@v.example")
    assert time.monotonic() - started < 2 and not failure.value.non_retryable


def test_settings_choose_sendgrid_when_a_key_is_set(tmp_path, sendgrid):
    assert isinstance(mailer_from_settings(make_settings(tmp_path)), OutboxMailer)
    mailer = mailer_from_settings(make_settings(tmp_path, sendgrid_api_key="SG.x", sendgrid_host=sendgrid.url))
    assert isinstance(mailer, SendGridMailer)
    mailer.send(MAIL, "t@v.example")
    assert sendgrid.requests[0]["headers"]["Authorization"] == "Bearer SG.x"


def test_outbox_writes_one_parseable_eml_per_key(tmp_path):
    outbox = OutboxMailer(tmp_path)
    outbox.send(MAIL, "t@v.example")
    outbox.send(MAIL, "t@v.example")
    files = list(tmp_path.glob("*.eml"))
    assert len(files) == 1
    message = BytesParser(policy=policy.default).parsebytes(files[0].read_bytes())
    assert (message["To"], message["Cc"], message["Subject"]) == (MAIL.to, MAIL.cc, MAIL.subject)
    assert message.get_content().strip() == MAIL.body


def test_a_failed_send_is_retried_and_each_key_is_sent_once(tmp_path, sendgrid):
    settings = make_settings(tmp_path, sendgrid_api_key="SG.k", sendgrid_host=sendgrid.url)
    activities = TakebackActivities(settings)
    sendgrid.answers.append((500, {}, 0))
    with pytest.raises(ApplicationError):
        activities._send_once(MAIL)
    assert activities._send_once(MAIL) is True  # the retry delivers
    assert activities._send_once(MAIL) is False  # and a later repeat does not
    sendgrid.answers.append((400, {}, 0))
    other = MAIL.model_copy(update={"key": "D1:reminder:30d"})
    with pytest.raises(ApplicationError) as refused:
        activities._send_once(other)
    assert refused.value.non_retryable
    assert len(sendgrid.requests) == 3
    with session_scope(settings.effective_database_url) as session:
        rows = dict(session.execute(select(EmailMessage.key, EmailMessage.sent_at)).all())
        assert session.execute(select(func.count()).select_from(EmailMessage)).scalar_one() == 2
    assert rows["D1:reminder:7d"] is not None and rows["D1:reminder:30d"] is None
