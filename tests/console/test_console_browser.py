"""The console in a real browser (Debian's Chromium, driven by Playwright) against a real stack: the
dev server, a worker, and the app served by uvicorn on a free port. One stack and one browser for the
module. Screenshots of each page go to test-output/console/ (ignored by git)."""

import csv
import os
import shutil
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from store.api_keys import create_api_key
from store.db import session_scope
from tests.api_helpers import PICKUP, WEBHOOK_SECRET, booking_body, signed
from tests.conftest import add_partner, in_ci, make_settings, running_worker
from tests.postgres import _free_port

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-output" / "console"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str:
    """Debian's Chromium (`apt-get install chromium`; `make test` installs it): no browser is ever downloaded."""
    path = os.environ.get("TAKEBACK_CHROMIUM") or shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        reason = "Chromium is not installed (apt-get install chromium): the console's browser tests need it"
        if in_ci():
            pytest.fail(f"{reason}; in CI they must run (.ci/run installs it)", pytrace=False)
        pytest.skip(reason)
    return path


class Served:
    """The app under uvicorn in a thread of its own, as `takeback api` serves it."""

    def __init__(self, settings):
        import uvicorn

        from api.app import create_app

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="console-uvicorn", daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *_):
        self.server.should_exit = True
        self.thread.join(15)


class Stack:
    def __init__(self, settings, url: str, http: httpx.AsyncClient):
        self.settings, self.url, self.http = settings, url, http
        self.deals: dict[str, str] = {}

    def key(self, role: str = "ops", partner_id: str | None = None) -> str:
        with session_scope(self.settings.effective_database_url) as session:
            return create_api_key(session, role, partner_id)


@pytest_asyncio.fixture(scope="module")
async def stack(dev_server_env, tmp_path_factory):
    chromium_path()  # before minutes of set-up: a missing browser says so at once
    settings = make_settings(
        tmp_path_factory.mktemp("console"), return_window="20d", carrier_webhook_secret=WEBHOOK_SECRET,
        temporal_address=dev_server_env.client.service_client.config.target_host,
    )
    async with running_worker(dev_server_env.client, settings):
        add_partner(settings, "P2", email="p2@partner.example")
        with Served(settings) as served:
            async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
                stack = Stack(settings, served.url, http)
                ops = {"Authorization": f"Bearer {stack.key()}"}
                for name in ("risk", "safe", "cancel"):  # P1's deals, 20-day windows: at risk until 8 of 10 units are back
                    answer = await http.post("/v1/deals", json=booking_body("P1", 10), headers=ops)
                    assert answer.status_code == 201, answer.text
                    stack.deals[name] = answer.json()["id"]
                items = [{"product_id": "C9300-48P", "serial_number": f"SAFE-{n}", "condition": "working", "age_years": 2} for n in range(8)]
                answer = await http.post(f"/v1/deals/{stack.deals['safe']}/receipts", json={"items": items}, headers=ops)
                assert answer.status_code == 200, answer.text
                answer = await http.post(f"/v1/deals/{stack.deals['risk']}/pickups", json=PICKUP, headers=ops)
                assert answer.status_code == 201, answer.text
                stack.tracking = answer.json()["tracking_number"]
                yield stack


@pytest_asyncio.fixture(scope="module")
async def browser():
    from playwright.async_api import async_playwright

    executable = chromium_path()
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


async def signed_in_page(browser, stack: Stack, key: str, viewport=DESKTOP):
    """A fresh browser context signed in through the form, with the keyboard only."""
    context = await browser.new_context(base_url=stack.url, viewport=viewport, accept_downloads=True)
    page = await context.new_page()
    await page.goto("/console/sign-in")
    await page.keyboard.press("Tab")  # the skip link, then the key field (autofocused already)
    await page.locator("#api-key").focus()
    await page.keyboard.type(key)
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/console/deals")
    return page


async def shot(page, name: str) -> None:
    await page.screenshot(path=str(SHOTS / f"{name}.png"))


async def fits(page) -> bool:
    """No sideways scroll at the page's current width."""
    return await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


async def fits_a_phone(page, name: str, what: str) -> None:
    await page.set_viewport_size(PHONE)
    assert await fits(page), f"{what} scrolls sideways on a phone"
    await shot(page, f"{name}-phone")


async def test_ops_filters_to_at_risk_and_downloads_exactly_that_as_csv(stack, browser):
    from playwright.async_api import expect

    context = await browser.new_context(base_url=stack.url, viewport=DESKTOP)
    page = await context.new_page()
    await page.goto("/console/deals")
    await expect(page).to_have_url(f"{stack.url}/console/sign-in?next=%2Fconsole%2Fdeals")  # no session: sign in first
    await shot(page, "sign-in")
    await context.close()

    page = await signed_in_page(browser, stack, stack.key())
    await expect(page.locator("table.deals tbody tr")).to_have_count(3)
    await page.get_by_label("At risk: below the threshold, deadline within").check()
    await page.get_by_role("button", name="Filter").click()
    await page.wait_for_url("**/console/deals?at_risk=1")  # the filter is in the URL: the link can be shared
    at_risk = sorted([stack.deals["risk"], stack.deals["cancel"]])
    rows = page.locator("table.deals tbody tr td:first-child a")
    await expect(rows).to_have_count(2)
    assert sorted(await rows.all_inner_texts()) == at_risk  # the deal with 8 of 10 back is not at risk
    await shot(page, "deals")
    async with page.expect_download() as download_info:
        await page.get_by_role("link", name="Download these 2 as CSV").click()
    download = await download_info.value
    with open(await download.path(), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["deal_id"] for row in rows) == at_risk and {row["status"] for row in rows} == {"awaiting_returns"}
    await fits_a_phone(page, "deals", "the deals page")
    await page.context.close()


async def test_a_carrier_event_appears_without_a_reload_and_an_extension_moves_the_deadline(stack, browser):
    from playwright.async_api import expect

    deal_id = stack.deals["risk"]
    page = await signed_in_page(browser, stack, stack.key())
    await page.get_by_role("link", name=deal_id).click()
    await page.wait_for_url(f"**/console/deals/{deal_id}")
    await expect(page.locator("#deal-status")).to_have_text("awaiting returns")
    await page.evaluate("window.sameDocument = true")  # gone if the page reloads
    raw, headers = signed({"event_id": "ev-console-1", "tracking_number": stack.tracking, "status": "in_transit", "occurred_at": "2026-12-02T10:00:00Z"})
    answer = await stack.http.post("/v1/carrier-events", content=raw, headers=headers)
    assert answer.status_code == 202, answer.text
    await expect(page.locator("#timeline")).to_contain_text("Carrier: in transit", timeout=15_000)
    await expect(page.locator("#deal-header")).to_contain_text("in transit")
    assert await page.evaluate("window.sameDocument === true"), "the page reloaded to show the event"
    await shot(page, "deal")

    before = datetime.fromisoformat(await page.locator("#deadline").get_attribute("datetime"))
    await page.get_by_label("Extend by").fill("7d")
    await page.locator("#extend-reason").fill("the customer's site is closed for a week")
    await page.get_by_role("button", name="Review the extension").click()
    await expect(page.locator("#actions")).to_contain_text("Confirm the extension")
    await shot(page, "deal-extend-confirm")
    await page.get_by_role("button", name="Extend by 7d").click()
    await expect(page.locator("#action-result")).to_contain_text("Extended by 7d")
    expected = (before + timedelta(days=7)).isoformat()
    await expect(page.locator("#deadline")).to_have_attribute("datetime", expected, timeout=15_000)
    await expect(page.locator("#timeline")).to_contain_text("Window extended by 7d")
    await expect(page.locator("#timeline")).to_contain_text("reason: the customer's site is closed for a week")
    await expect(page.locator("#timeline")).to_contain_text("by ops:")
    assert await page.evaluate("window.sameDocument === true")
    await page.screenshot(path=str(SHOTS / "deal-full.png"), full_page=True)
    await fits_a_phone(page, "deal", "the deal page")
    await page.context.close()


async def test_cancelling_a_deal_shows_who_and_why_in_its_timeline(stack, browser):
    from playwright.async_api import expect

    deal_id = stack.deals["cancel"]
    page = await signed_in_page(browser, stack, stack.key())
    await page.goto(f"/console/deals/{deal_id}")
    await page.locator("#cancel-reason").fill("booked twice by the partner")
    await page.get_by_role("button", name="Review the cancellation").click()
    await expect(page.locator("#actions")).to_contain_text("no incentive is paid")
    await page.get_by_role("button", name="Cancel the deal").click()
    await expect(page.locator("#action-result")).to_contain_text("Cancelled")
    await expect(page.locator("#deal-status")).to_have_text("cancelled", timeout=15_000)
    cancellation = page.locator("#timeline li.entry-cancellation")
    await expect(cancellation).to_contain_text("reason: booked twice by the partner", timeout=15_000)
    await expect(cancellation).to_contain_text("by ops:key-")
    await shot(page, "deal-cancelled")
    await page.context.close()


async def test_a_partner_sees_its_own_pages_and_gets_404_for_another_partners_deal(stack, browser):
    from playwright.async_api import expect

    page = await signed_in_page(browser, stack, stack.key("partner", "P2"))
    await expect(page.locator("table.deals tbody")).to_contain_text("No deal matches these filters.")  # P1's deals are not P2's
    answer = await page.goto(f"/console/deals/{stack.deals['risk']}")
    assert answer.status == 404
    await expect(page.locator("h1")).to_contain_text("Not found")
    await shot(page, "partner-404")
    await page.get_by_role("link", name="My partner").click()
    await expect(page.locator("#specialization-status")).to_have_text("certified")
    await shot(page, "partner")
    await page.context.close()


async def test_a_form_posted_without_its_csrf_token_is_refused(stack, browser):
    from playwright.async_api import expect

    deal_id = stack.deals["risk"]
    page = await signed_in_page(browser, stack, stack.key())
    await page.goto(f"/console/deals/{deal_id}")
    await page.evaluate("document.querySelectorAll('form.action-cancel input[name=csrf]').forEach(input => input.remove())")
    await page.locator("#cancel-reason").fill("forged")
    await page.get_by_role("button", name="Review the cancellation").click()
    await expect(page.locator("#actions")).to_contain_text("security token is missing or out of date")
    await page.goto(f"/console/deals/{deal_id}")
    await expect(page.locator("#deal-status")).to_have_text("awaiting returns")  # nothing happened to the deal
    await page.context.close()


async def test_partners_and_impact_pages_read_at_1280_and_on_a_phone(stack, browser):
    from playwright.async_api import expect

    page = await signed_in_page(browser, stack, stack.key())
    for path, name, heading in (("/console/partners", "partners", "Partners"), ("/console/partners/P1", "partner-ops", "Partner P1"), ("/console/impact", "impact", "Impact")):
        for viewport, suffix in ((DESKTOP, ""), (PHONE, "-phone")):
            await page.set_viewport_size(viewport)
            answer = await page.goto(path)
            assert answer.status == 200, path
            await expect(page.locator("h1")).to_contain_text(heading)
            assert await fits(page), f"{path} scrolls sideways at {viewport['width']} px"
            await shot(page, name + suffix)
    await page.goto("/console/impact")
    await expect(page.locator("#units-returned")).to_have_text("8")

    # Reinstating goes through the API's route and its workflow: a partner that has not lapsed is refused, in words.
    await page.goto("/console/partners/P1")
    csrf = await page.locator("form.who input[name=csrf]").get_attribute("value")
    answer = await page.request.post("/console/partners/P1/reinstate", form={"csrf": csrf, "reason": "papers arrived late", "step": "confirm", "idempotency_key": "r-1"})
    assert answer.status == 409 and "not lapsed" in await answer.text()
    await page.context.close()
