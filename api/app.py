"""The FastAPI application: one Temporal client per process, made in the lifespan hook."""

import gc
from contextlib import asynccontextmanager

from fastapi import FastAPI
from temporalio.service import RetryConfig

from api import metrics, problems
from api.limits import HttpEdge, SecurityHeaders, booking_body_limit
from api.ratelimit import RateLimit
from api.request_id import RequestId
from api.routes import carrier_events, carrier_pickups, custody, deals, easypost_webhook, health, partners, pickups, receipts, reports
from api.console import router as console_router
from settings import Settings, get_settings
from store.db import get_engine
from temporal_client import connect

MAX_BODY_BYTES = booking_body_limit(None)  # the largest body a route takes: a booking of the most serials
# Answers any route may give at the edge (api/limits.py, api/ratelimit.py), documented for clients and schema fuzzing.
EDGE_RESPONSES = {
    status: {"model": problems.ProblemDetails, "description": description, "content": {problems.PROBLEM_JSON: {}}}
    for status, description in ((408, "Request timeout: the body did not arrive in time"), (429, "Too many requests: see Retry-After"))
}


# FastAPI traces each request itself once a tracer provider is set (observability/tracing.py, opt-in
# by OTEL_*): one span per request, the Temporal client's spans beneath it. Exporters are ours; no
# spans per dependency (their cost, for little to see); no metrics or logs through OpenTelemetry.
TELEMETRY = {"tracing": True, "operation_spans": False, "metrics": False, "logs": False, "auto_configure": False}


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    get_engine(settings.effective_database_url)  # migrate before the first request
    # Lazy: the API starts while Temporal is down and answers 503 until it is back.
    # Few retries: a caller gets a 503 in seconds rather than a hang.
    app.state.temporal = await connect(settings, lazy=True, retry_config=RetryConfig(max_retries=2, max_elapsed_time_millis=3000))
    if app.state.freeze_gc:
        # Everything loaded so far (FastAPI, SQLAlchemy, pydantic, temporalio: ~140,000 objects) lives as
        # long as the process: out of the collector's sight, a full collection is no longer a pause of
        # tens of ms every few thousand requests (the p99 of a valid caller under a flood of bad keys).
        gc.collect()
        gc.freeze()
    yield


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="takeback API",
        version="1.0",
        description="Partner takeback deals run end to end on durable workflows. Contract: shared/api.md.",
        lifespan=lifespan,
        telemetry=TELEMETRY,
    )
    app.state.settings = settings or get_settings()
    app.state.temporal = None
    app.state.freeze_gc = False
    problems.install(app)

    # Outermost last: security headers on every answer; rate limits before anything is read or
    # looked up; then the key's shape and the body's size and deadline, route by route.
    app.add_middleware(HttpEdge, api=app, settings=app.state.settings)
    app.add_middleware(RateLimit, settings=app.state.settings)
    app.add_middleware(SecurityHeaders)
    # Outermost: every answer, the edge's refusals included, is counted and carries its request id.
    app.add_middleware(metrics.HttpMetrics, api=app)
    app.add_middleware(RequestId)
    metrics.install(app, app.state.settings)
    for module in (health, partners, deals, pickups, carrier_pickups, receipts, carrier_events, easypost_webhook, reports, custody):
        app.include_router(module.router, responses={**problems.COMMON_RESPONSES, **EDGE_RESPONSES})
    app.include_router(console_router)  # the web console at /console: HTML pages, a session instead of a bearer key
    return app


def create_served_app() -> FastAPI:
    """The app `takeback api` serves: one per process, so its start-up objects can be frozen."""
    app = create_app()
    app.state.freeze_gc = True
    return app
