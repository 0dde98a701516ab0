"""The deals table: filters, counts, sorting, pages, CSV, and what a partner may see (no browser)."""

import csv
import io
import re
from datetime import timedelta

from tests.api_helpers import api_client
from tests.conftest import make_settings
from tests.console.seed import NOW, api_key, deal, deal_ids, sign_in
from store.db import session_scope
from store.tables import ReturnedItem


def seed_mix(settings) -> None:
    """Five deals of two partners, each told apart by one filter."""
    deal(settings, "DRISK", "P1", deadline=NOW + timedelta(days=10), received=2, serials=["SER-LISTED-1"])  # open, short, soon: at risk
    deal(settings, "DSAFE", "P1", status="condition_met", deadline=NOW + timedelta(days=10), received=8)  # soon, but the threshold is met
    deal(settings, "DLATER", "P2", deadline=NOW + timedelta(days=200), received=0)  # short but far off
    deal(settings, "DCLOSED", "P2", status="closed", deadline=NOW - timedelta(days=5), received=9, customer="=HYPERLINK(\"http://x\")")
    deal(settings, "DCANCEL", "P1", status="cancelled", deadline=NOW + timedelta(days=3), received=0, incentive_status="cancelled")
    with session_scope(settings.effective_database_url) as session:
        session.add(ReturnedItem(serial="SER-RETURNED-9", deal_id="DCLOSED", batch_id="b1", product_id="C9300-48P", condition="working", age_years=2, disposition="refresh"))
        session.commit()


async def test_filters_and_counts_per_status_select_by_what_the_url_says(tmp_path):
    settings = make_settings(tmp_path)
    seed_mix(settings)
    key = api_key(settings)
    async with api_client(settings) as http:
        await sign_in(http, key)

        async def ids(query: str) -> list[str]:
            page = await http.get(f"/console/deals?{query}", follow_redirects=True)
            assert page.status_code == 200, page.text
            return sorted(deal_ids(page.text))

        assert await ids("") == ["DCANCEL", "DCLOSED", "DLATER", "DRISK", "DSAFE"]
        assert await ids("at_risk=1") == ["DRISK"]  # open, below the threshold, deadline within 30 days
        assert await ids("at_risk=1&risk_days=365") == ["DLATER", "DRISK"]
        assert await ids("deadline_days=30") == ["DRISK", "DSAFE"]  # open deals only: a cancelled one has no deadline to meet
        assert await ids("status=closed") == ["DCLOSED"]
        assert await ids("partner=P2") == ["DCLOSED", "DLATER"]
        assert await ids("q=drisk") == ["DRISK"]  # a deal id, whatever its case
        assert await ids("q=SER-LISTED-1") == ["DRISK"]  # a serial the deal listed
        assert await ids("q=SER-RETURNED-9") == ["DCLOSED"]  # a serial it received
        assert await ids("q=SER-NOWHERE") == []
        redirected = await http.get("/console/deals?status=awaiting_returns&partner=P1&q=&deadline_days=&risk_days=30")
        assert redirected.status_code == 303 and redirected.headers["location"] == "/console/deals?status=awaiting_returns&partner=P1"  # the short link
        page = await http.get(redirected.headers["location"])
        # counts per status under the other filters: what choosing each status would show
        shown = {status: int(count) for status, count in re.findall(r'class="badge-(\w+)"[^>]*>[^<]*<b>(\d+)</b>', page.text)}
        assert shown == {"awaiting_returns": 1, "condition_met": 1, "closed": 0, "expired": 0, "cancelled": 1}
        assert 'href="/console/deals.csv?status=awaiting_returns&amp;partner=P1"' in page.text  # the CSV of exactly this table
        bad = await http.get("/console/deals?status=lost")
        assert bad.status_code == 422 and "Status is one of" in bad.text and bad.headers["content-type"].startswith("text/html")


async def test_sorting_and_pages_keep_the_filter_and_never_repeat_a_deal(tmp_path):
    settings = make_settings(tmp_path)
    for n in range(57):
        deal(settings, f"D{n:03d}", "P1", deadline=NOW + timedelta(days=n + 1), booked=NOW - timedelta(hours=n))
    deal(settings, "DOTHER", "P2")
    key = api_key(settings)
    async with api_client(settings) as http:
        await sign_in(http, key)
        first = await http.get("/console/deals?partner=P1&sort=deadline&order=asc")
        second = await http.get("/console/deals?partner=P1&sort=deadline&order=asc&page=2")
        assert deal_ids(first.text) == [f"D{n:03d}" for n in range(50)] and deal_ids(second.text) == [f"D{n:03d}" for n in range(50, 57)]
        assert 'href="?partner=P1&amp;sort=deadline&amp;order=asc&amp;page=2" rel="next"' in first.text
        assert "57 deals" in first.text and "page 1 of 2" in first.text
        newest = await http.get("/console/deals?partner=P1")  # booked, newest first
        assert deal_ids(newest.text)[:3] == ["D000", "D001", "D002"]
        flipped = await http.get("/console/deals?partner=P1&sort=deadline&order=desc", follow_redirects=True)
        assert deal_ids(flipped.text)[:2] == ["D056", "D055"]


async def test_the_csv_is_exactly_the_filtered_table_and_quotes_formulas(tmp_path):
    settings = make_settings(tmp_path)
    seed_mix(settings)
    for n in range(60):  # more than a page: the CSV holds every deal the filter selects, not one page
        deal(settings, f"DBULK{n:02d}", "P2", deadline=NOW + timedelta(days=100))
    key = api_key(settings)
    async with api_client(settings) as http:
        await sign_in(http, key)
        answer = await http.get("/console/deals.csv?partner=P2&sort=id&order=asc")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
        assert answer.headers["content-disposition"].startswith('attachment; filename="deals-')
        rows = list(csv.DictReader(io.StringIO(answer.text)))
        assert [row["deal_id"] for row in rows] == sorted(["DCLOSED", "DLATER", *(f"DBULK{n:02d}" for n in range(60))])
        closed = next(row for row in rows if row["deal_id"] == "DCLOSED")
        assert closed["customer"].startswith("'=HYPERLINK")  # a spreadsheet shows it as text, never runs it
        assert (closed["status"], closed["received_units"], closed["required_units"], closed["incentive_amount"]) == ("closed", "9", "8", "5000.00")
        at_risk = list(csv.DictReader(io.StringIO((await http.get("/console/deals.csv?at_risk=1")).text)))
        assert [row["deal_id"] for row in at_risk] == ["DRISK"]


async def test_a_partner_sees_its_own_deals_only_and_another_partners_deal_is_404(tmp_path):
    settings = make_settings(tmp_path)
    seed_mix(settings)
    key = api_key(settings, "partner", "P2")
    async with api_client(settings) as http:
        await sign_in(http, key)
        own = await http.get("/console/deals?partner=P1")  # the URL asks for P1: the table is still P2's
        assert own.status_code == 200
        assert sorted(deal_ids(own.text)) == ["DCLOSED", "DLATER"] and 'id="f-partner"' not in own.text
        rows = list(csv.DictReader(io.StringIO((await http.get("/console/deals.csv?partner=P1")).text)))
        assert sorted(row["deal_id"] for row in rows) == ["DCLOSED", "DLATER"]
        for path in ("/console/deals/DRISK", "/console/deals/DRISK/certificate", "/console/partners/P1", "/console/impact?partner=P1"):
            other = await http.get(path)
            assert other.status_code == 404 and "not found" in other.text, path
        refused = await http.post("/console/deals/DRISK/cancel", data={"csrf": "x", "reason": "no"})
        assert refused.status_code == 403  # no token: refused before anything else


async def test_everything_a_partner_typed_is_escaped(tmp_path):
    settings = make_settings(tmp_path)
    deal(settings, "DXSS", "P1", customer='<script>alert("x")</script>')
    key = api_key(settings)
    async with api_client(settings) as http:
        await sign_in(http, key)
        page = await http.get("/console/deals")
        assert "<script>alert" not in page.text and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text
        search = await http.get('/console/deals?q="><img src=x onerror=alert(1)>')
        assert "<img src=x" not in search.text
