"""The FastAPI application: one Temporal client per process, made in the lifespan hook."""

from contextlib import asynccontextmanager

from fastapi import FastAPI
from temporalio.service import RetryConfig

from api import problems
from api.routes import carrier_events, deals, health, partners, pickups, receipts, reports
from settings import Settings, get_settings
from store.db import get_engine
from temporal_client import connect

MAX_BODY_BYTES = 16 * 1024 * 1024  # 50,000 serials fit with room to spare


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    get_engine(settings.effective_database_url)  # migrate before the first request
    # Lazy: the API starts while Temporal is down and answers 503 until it is back.
    # Few retries: a caller gets a 503 in seconds rather than a hang.
    app.state.temporal = await connect(settings, lazy=True, retry_config=RetryConfig(max_retries=2, max_elapsed_time_millis=3000))
    yield


class BodyLimit:
    """Refuses a declared oversized body before it is read. Plain ASGI: `@app.middleware("http")`
    runs every request through an extra task and stream, a cost the booking path measured."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                response = problems.problem_response(413, f"request bodies are at most {MAX_BODY_BYTES} bytes", "payload-too-large")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="takeback API",
        version="1.0",
        description="Partner takeback deals run end to end on durable workflows. Contract: shared/api.md.",
        lifespan=lifespan,
    )
    app.state.settings = settings or get_settings()
    app.state.temporal = None
    problems.install(app)

    app.add_middleware(BodyLimit)
    for module in (health, partners, deals, pickups, receipts, carrier_events, reports):
        app.include_router(module.router, responses=problems.COMMON_RESPONSES)
    return app
