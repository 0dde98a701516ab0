"""Prometheus metrics of the API, at `GET /metrics` (its own path, no key: README "Operating it").

- `HttpMetrics` (plain ASGI, outermost but for the request id): requests by route template, method
  and status class, and their latency, the edge's own refusals (401, 413, 429) included. A path that
  matches no route counts as `unmatched`, so random paths cannot grow the series without bound.
- Business counters the API moves (`DEALS_BOOKED`).
- Business gauges computed from the store on scrape (store/gauges.py), at most every
  TAKEBACK_GAUGES_CACHE, so a scrape flood costs the database nothing more.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE

disable_created_metrics()  # a `_created` series beside every counter doubles the scrape for nothing we chart

REQUESTS = Counter(
    "takeback_http_requests_total", "HTTP requests answered, by route template, method and status class", ["route", "method", "status"]
)
LATENCY = Histogram(
    "takeback_http_request_duration_seconds", "Time from a request's arrival to the end of its answer, by route template and method",
    ["route", "method"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20),
)
DEALS_BOOKED = Counter("takeback_deals_booked_total", "Deals booked through the API (a retried booking counts once)")
UNMATCHED = "unmatched"
STATUS_CLASSES = {digit: f"{digit}xx" for digit in range(1, 6)}

router = APIRouter(tags=["operations"])


class _RouteTemplates:
    """Path -> route template (`/v1/deals/{deal_id}`), read once from the app's routes."""

    def __init__(self, routes):
        from fastapi.routing import APIRoute
        from starlette.routing import compile_path

        from api.limits import _api_routes

        self.static: dict[str, str] = {}
        self.dynamic: list[tuple[re.Pattern, str]] = []
        for path, _route in _api_routes(routes, APIRoute):
            if "{" in path:
                self.dynamic.append((compile_path(path)[0], path))
            else:
                self.static[path] = path

    def lookup(self, path: str) -> str:
        template = self.static.get(path)
        if template is not None:
            return template
        for regex, template in self.dynamic:
            if regex.match(path):
                return template
        return UNMATCHED


class HttpMetrics:
    def __init__(self, app, api):
        self.app, self.api = app, api
        self.templates: _RouteTemplates | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # an exception escaping the app is answered 500 outside this layer

        async def send_with_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            if self.templates is None:  # the routes are all there by the first request
                self.templates = _RouteTemplates(self.api.routes)
            route, method = self.templates.lookup(scope["path"]), scope["method"]
            REQUESTS.labels(route, method, STATUS_CLASSES.get(status // 100, "other")).inc()
            LATENCY.labels(route, method).observe(time.perf_counter() - started)


class BusinessGaugeCollector:
    """The gauges of store/gauges.py as Prometheus families, recomputed at most every `ttl` seconds."""

    def __init__(self, settings):
        self.settings = settings
        self.ttl = settings.gauges_cache_seconds
        self.lock = threading.Lock()
        self.cached: tuple[float, list] | None = None

    def collect(self):
        with self.lock:
            if self.cached is None or self.cached[0] <= time.monotonic():
                families = self._families()
                self.cached = (time.monotonic() + self.ttl, families)
            return iter(self.cached[1])

    def _families(self) -> list:
        from datetime import timedelta

        from store.db import session_scope
        from store.gauges import business_gauges

        started = time.perf_counter()
        with session_scope(self.settings.effective_database_url) as session:
            gauges = business_gauges(
                session, timedelta(seconds=self.settings.at_risk_within_seconds), timedelta(seconds=self.settings.pickup_silent_after_seconds)
            )
        deals = GaugeMetricFamily("takeback_deals", "Deals in the store, by status", labels=["status"])
        for status, count in sorted(gauges.deals_by_status.items()):
            deals.add_metric([status], count)
        money = GaugeMetricFamily("takeback_incentive_amount", "Incentive money of all deals, by incentive status", labels=["status"])
        for status, amount in sorted(gauges.incentive_amount_by_status.items()):
            money.add_metric([status], float(amount))
        partners = GaugeMetricFamily("takeback_partners", "Partners, by specialization status", labels=["status"])
        for status, count in sorted(gauges.partners_by_status.items()):
            partners.add_metric([status], count)
        within, silent = self.settings.at_risk_within, self.settings.pickup_silent_after
        return [
            deals,
            money,
            GaugeMetricFamily("takeback_deals_at_risk", f"Open deals short of their condition with their deadline within {within} (or passed, undecided)", value=gauges.deals_at_risk),
            GaugeMetricFamily("takeback_pickups_silent", f"Pickups of open deals still under way with no carrier event for {silent}", value=gauges.pickups_silent),
            GaugeMetricFamily("takeback_emails_failed", "E-mails given up for good (refused, or outcome unknown): see each deal's /emails", value=gauges.emails_failed),
            GaugeMetricFamily("takeback_emails_unsent", "E-mails queued or being sent", value=gauges.emails_unsent),
            GaugeMetricFamily("takeback_email_oldest_unsent_age_seconds", "Age of the oldest e-mail not yet sent (0: none waiting)", value=gauges.oldest_unsent_email_age_seconds),
            partners,
            GaugeMetricFamily("takeback_gauges_query_seconds", "How long the store took to answer these gauges", value=time.perf_counter() - started),
        ]


def install(app, settings) -> None:
    """The /metrics route and its registry of business gauges (one per app: tests make many apps)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BusinessGaugeCollector(settings))
    app.state.business_metrics = registry
    app.include_router(router)


def exposition(business: CollectorRegistry) -> bytes:
    return generate_latest(REGISTRY) + generate_latest(business)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics: HTTP, business counters and gauges (no key; keep it off the public edge)",
            responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(request: Request) -> Response:
    body = await asyncio.to_thread(exposition, request.app.state.business_metrics)  # the gauges query the store
    return Response(body, media_type=CONTENT_TYPE)
