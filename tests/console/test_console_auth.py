"""Console sign-in, session cookie, CSRF and sign-out, over HTTP against the app (no browser)."""

import base64
import json
import re

import httpx
from sqlalchemy import select

from settings import Settings
from store.api_keys import revoke_api_key
from store.db import session_scope
from store.tables import ApiKey
from tests.api_helpers import api_client
from tests.conftest import make_settings
from tests.console.seed import api_key, csrf_of, deal, sign_in

STRONG = "9f8e7d6c5b4a39281706f5e4d3c2b1a0aa55bb66cc77dd88ee99ff0011223344"


def https_client(settings):
    return api_client(settings, base_url="https://takeback.test", timeout=30)


def session_cookie(response: httpx.Response) -> str:
    cookies = [value for name, value in response.headers.multi_items() if name == "set-cookie" and value.startswith("takeback_console=")]
    assert cookies, "no session cookie was set"
    return cookies[-1]


async def test_an_ops_key_signs_in_to_a_session_cookie_that_holds_who_not_the_key(tmp_path):
    settings = make_settings(tmp_path)
    key = api_key(settings)
    deal(settings, "D1")
    async with api_client(settings) as http:
        form = await http.get("/console/sign-in")
        assert form.status_code == 200 and 'type="password"' in form.text and 'method="post"' in form.text
        answer = await http.post("/console/sign-in", data={"csrf": csrf_of(form.text), "api_key": key, "next": "/console/deals/D1"})
        assert answer.status_code == 303 and answer.headers["location"] == "/console/deals/D1"
        cookie = session_cookie(answer)
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/console"} <= flags and "secure" not in flags  # plain http: a Secure cookie would never come back
        payload = json.loads(base64.urlsafe_b64decode(cookie.split("=", 1)[1].split(";")[0].split(".")[0] + "=="))
        assert payload["role"] == "ops" and payload["key_id"] and key not in cookie and key[:12] not in cookie
        table = await http.get("/console/deals")
        assert table.status_code == 200 and "/console/deals/D1" in table.text
        assert table.headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'")
        assert not re.search(r"<script(?![^>]*\bsrc=)", table.text), "an inline script: the CSP would block it"
        assert key not in table.text


async def test_over_tls_the_cookie_is_secure(tmp_path):
    settings = make_settings(tmp_path)
    key = api_key(settings)
    async with https_client(settings) as http:
        form = await http.get("/console/sign-in")
        answer = await http.post("/console/sign-in", data={"csrf": csrf_of(form.text), "api_key": key})
        assert "secure" in {part.strip().lower() for part in session_cookie(answer).split(";")}


async def test_a_wrong_key_is_refused_in_words_and_opens_no_session(tmp_path):
    settings = make_settings(tmp_path)
    async with api_client(settings) as http:
        form = await http.get("/console/sign-in")
        wrong = "tbk_ops_" + "A" * 43
        answer = await http.post("/console/sign-in", data={"csrf": csrf_of(form.text), "api_key": wrong})
        assert answer.status_code == 401 and "unknown, expired or revoked" in answer.text and wrong not in answer.text
        assert (await http.get("/console/deals")).status_code == 303


async def test_forms_without_the_csrf_token_are_refused(tmp_path):
    settings = make_settings(tmp_path)
    key = api_key(settings)
    deal(settings, "D1")
    async with api_client(settings) as http:
        await http.get("/console/sign-in")
        refused = await http.post("/console/sign-in", data={"api_key": key})
        assert refused.status_code == 403 and "security token" in refused.text
        csrf = await sign_in(http, key)
        for path, data in (("/console/deals/D1/cancel", {"reason": "dup", "step": "review"}), ("/console/sign-out", {})):
            assert (await http.post(path, data=data)).status_code == 403
            assert (await http.post(path, data={**data, "csrf": "not-the-token"})).status_code == 403
        assert (await http.get("/console/deals")).status_code == 200  # still signed in
        out = await http.post("/console/sign-out", data={"csrf": csrf})
        assert out.status_code == 303
        assert (await http.get("/console/deals")).status_code == 303


async def test_a_revoked_key_ends_its_session_at_the_next_request(tmp_path):
    settings = make_settings(tmp_path)
    key = api_key(settings)
    async with api_client(settings) as http:
        await sign_in(http, key)
        with session_scope(settings.effective_database_url) as session:
            key_id = session.execute(select(ApiKey.id)).scalar_one()
            revoke_api_key(session, key_id)
        ended = await http.get("/console/deals")
        assert ended.status_code == 303 and ended.headers["location"].startswith("/console/sign-in?") and "ended=1" in ended.headers["location"]
        poll = await http.get("/console/deals", headers={"HX-Request": "true", "HX-Current-URL": "http://takeback.test/console/deals?status=closed"})
        assert poll.status_code in (303, 401)


async def test_a_forged_or_expired_session_is_not_a_session(tmp_path):
    from api.console.session import COOKIE, ConsoleSession, seal

    settings = make_settings(tmp_path, console_secret=STRONG)
    key = api_key(settings)
    async with api_client(settings) as http:
        await sign_in(http, key)
        with session_scope(settings.effective_database_url) as session:
            key_id = session.execute(select(ApiKey.id)).scalar_one()
        expired = seal(ConsoleSession(csrf="x", expires=1, key_id=key_id, role="ops"), STRONG.encode())
        forged = seal(ConsoleSession(csrf="x", expires=2**40, key_id=key_id, role="ops"), b"another secret of thirty-two bytes!!")
        for value in (expired, forged, "garbage"):
            http.cookies.clear()
            http.cookies.set(COOKIE, value, domain="takeback.test", path="/console")
            answer = await http.get("/console/deals")
            assert answer.status_code == 303 and answer.headers["location"].startswith("/console/sign-in"), value


async def test_a_partner_session_cannot_become_another_partner_by_its_cookie(tmp_path):
    """The cookie's role and partner must match its key's: a key id taken from another session is not enough."""
    from api.console.session import COOKIE, ConsoleSession, seal

    settings = make_settings(tmp_path, console_secret=STRONG)
    api_key(settings, "partner", "P1")
    with session_scope(settings.effective_database_url) as session:
        key_id = session.execute(select(ApiKey.id)).scalar_one()
    async with api_client(settings) as http:
        http.cookies.set(COOKIE, seal(ConsoleSession(csrf="x", expires=2**40, key_id=key_id, role="ops"), STRONG.encode()), domain="takeback.test", path="/console")
        assert (await http.get("/console/deals")).status_code == 303


async def test_production_without_a_console_secret_answers_503_and_a_weak_one_stops_the_start(tmp_path):
    settings = make_settings(tmp_path, env="production")
    async with api_client(settings) as http:
        answer = await http.get("/console/sign-in")
        assert answer.status_code == 503 and "TAKEBACK_CONSOLE_SECRET" in answer.text and answer.headers["content-type"].startswith("text/html")
    assert not any("CONSOLE" in problem for problem in settings.startup_problems())  # the API serves on; the console waits for its secret
    weak = Settings(env="production", console_secret="short", carrier_webhook_secret=STRONG, mail_outbox=True)
    assert any("TAKEBACK_CONSOLE_SECRET" in problem for problem in weak.startup_problems())
    assert Settings(env="production", console_secret=STRONG, carrier_webhook_secret=STRONG, mail_outbox=True).startup_problems() == []


async def test_console_errors_are_html_pages_and_stay_out_of_the_api_schema(tmp_path):
    settings = make_settings(tmp_path)
    key = api_key(settings)
    async with api_client(settings) as http:
        await sign_in(http, key)
        missing = await http.get("/console/no-such-page")
        assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html") and "no console page" in missing.text
        deal_missing = await http.get("/console/deals/NOPE")
        assert deal_missing.status_code == 404 and "Deal NOPE not found." in deal_missing.text
        schema = (await http.get("/openapi.json")).json()
        assert not [path for path in schema["paths"] if path.startswith("/console")]
        assert (await http.get("/v1/deals/NOPE")).headers["content-type"] == "application/problem+json"  # the API is unchanged


async def test_failed_sign_ins_spend_the_apis_failed_authentication_budget(tmp_path):
    """Guessing keys through the sign-in form costs what guessing them as bearer keys costs: once an
    address's failed attempts are spent, it gets a 429 before any key is looked up."""
    settings = make_settings(tmp_path, rate_failed_auth=0.01, rate_failed_auth_burst=3)
    key = api_key(settings)
    async with api_client(settings) as http:
        for attempt in range(3):
            form = await http.get("/console/sign-in")
            wrong = await http.post("/console/sign-in", data={"csrf": csrf_of(form.text), "api_key": f"tbk_ops_{attempt}" + "B" * 42})
            assert wrong.status_code == 401
        form = await http.get("/console/sign-in")
        refused = await http.post("/console/sign-in", data={"csrf": csrf_of(form.text), "api_key": key})
        assert refused.status_code == 429 and "Too many failed authentications from this address" in refused.text and refused.headers["retry-after"]
