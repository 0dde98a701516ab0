"""Point 4 and a Minor point: API keys are listed, rotated with an overlap, revoked at once in every
API process, expire, record their last use; unknown keys are remembered by hash in a bounded cache;
a store outage is a 503; a partner key without a partner cannot exist, and is refused if found."""

import os
import re
import secrets
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, event, select
from sqlalchemy.exc import IntegrityError

from store.api_keys import hash_key
from store.db import session_scope
from store.tables import ApiKey
from tests.api_helpers import api_client, key
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stack_env(data_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TAKEBACK_DATABASE_URL"}
    # No Temporal (the key routes used here read the store only); a local, safe-to-start configuration.
    env.update(TAKEBACK_DATA_DIR=str(data_dir), TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}", TAKEBACK_ENV="development",
               TAKEBACK_CARRIER_WEBHOOK_SECRET=secrets.token_hex(32))
    return env


def apikey(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "apikey", *args, "--data-dir", str(data_dir)], capture_output=True, text=True, cwd=ROOT, env=stack_env(data_dir), timeout=60)


def made_key(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@contextmanager
def api_process(data_dir: Path):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "cli", "api", "--port", str(port)], cwd=ROOT, env=stack_env(data_dir),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read()
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.1)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield http
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def status(http: httpx.Client, token: str) -> int:
    return http.get("/v1/deals", headers={"Authorization": f"Bearer {token}"}).status_code


def key_id(listing: str, prefix: str) -> int:
    line = next(line for line in listing.splitlines() if prefix in line)
    return int(line.split()[0])


def last_used(data_dir: Path, token: str) -> datetime | None:
    with session_scope(f"sqlite:///{data_dir / 'takeback.db'}") as session:
        return session.execute(select(ApiKey.last_used_at).where(ApiKey.key_hash == hash_key(token))).scalar_one()


def test_keys_are_listed_rotated_expire_and_a_revoked_key_stops_at_once_in_every_api_process(tmp_path):
    data = tmp_path
    doomed = made_key(apikey(data, "create", "--role", "ops"))
    with api_process(data) as one, api_process(data) as two:
        assert status(one, doomed) == status(two, doomed) == 200  # both processes have seen it work
        listing = apikey(data, "list")
        assert listing.returncode == 0, listing.stderr
        assert doomed not in listing.stdout and doomed[:12] in listing.stdout  # a prefix to recognise it, never the key
        revoked = apikey(data, "revoke", str(key_id(listing.stdout, doomed[:12])))
        assert revoked.returncode == 0, revoked.stderr
        assert status(one, doomed) == status(two, doomed) == 401  # at once, in every process: no cache window

        # Rotation: a new key for the same account, the old one keeps working for the overlap.
        old = made_key(apikey(data, "create", "--role", "ops", "--owner", "ana"))
        old_id = key_id(apikey(data, "list").stdout, old[:12])
        new = made_key(apikey(data, "rotate", str(old_id), "--overlap", "1h"))
        assert new != old and status(one, old) == status(two, new) == 200
        listing = apikey(data, "list").stdout
        assert re.search(rf"^{old_id}\s.*ops:ana.*rotating", listing, re.M) and new[:12] in listing
        newest = made_key(apikey(data, "rotate", str(key_id(listing, new[:12])), "--overlap", "0s"))
        assert status(one, new) == status(two, new) == 401 and status(one, newest) == 200  # overlap 0s: the old one stops now
        assert apikey(data, "rotate", str(old_id)).returncode == 2  # rotated already: rotate its successor

        # Expiry.
        brief = made_key(apikey(data, "create", "--role", "ops", "--expires-in", "2s"))
        assert status(one, brief) == 200
        time.sleep(2.5)
        assert status(one, brief) == status(two, brief) == 401
        assert "expired" in apikey(data, "list", "--all").stdout

        # last_used_at: written beside the request, then not again within a minute.
        for _ in range(50):
            first_use = last_used(data, newest)
            if first_use is not None:
                break
            time.sleep(0.1)
        assert first_use is not None and (datetime.now(timezone.utc) - first_use).total_seconds() < 60
        for _ in range(5):
            assert status(one, newest) == status(two, newest) == 200
        time.sleep(0.5)
        assert last_used(data, newest) == first_use  # not one write per request


def count_key_lookups(url: str) -> list[str]:
    from store.db import get_engine

    seen: list[str] = []

    @event.listens_for(get_engine(url), "before_cursor_execute")
    def _count(_conn, _cursor, statement, _params, _context, _many):
        if "FROM apikey" in statement:
            seen.append(statement)

    return seen


async def test_unknown_keys_are_remembered_by_hash_in_a_bounded_cache_and_a_store_outage_is_a_503(tmp_path, monkeypatch):
    from api import deps
    from store import db

    # No rate limit in the way: this test counts database reads.
    settings = make_settings(tmp_path, rate_failed_auth=0, rate_per_address=0, rate_per_key=0)
    url = settings.effective_database_url
    async with api_client(settings) as http:
        ops = key(settings)
        token = ops["Authorization"].split()[1]
        assert (await http.get("/v1/deals", headers=ops)).status_code == 200
        lookups = count_key_lookups(url)

        unknown = "tbk_ops_" + secrets.token_urlsafe(32)
        for _ in range(20):
            assert (await http.get("/v1/deals", headers={"Authorization": f"Bearer {unknown}"})).status_code == 401
        assert len(lookups) == 1, "a repeated unknown key costs one database read, not one per request"
        for _ in range(20):  # not even shaped like a key: refused without a read
            assert (await http.get("/v1/deals", headers={"Authorization": f"Bearer {secrets.token_hex(32)}"})).status_code == 401
        assert len(lookups) == 1

        # Keyed by hash: no cache of the API holds a raw key, valid or not.
        for name, value in vars(deps).items():
            if isinstance(value, dict):
                assert token not in value and unknown not in value, f"deps.{name} holds a raw API key"

        # Bounded, and forgotten after a short while.
        monkeypatch.setattr(deps, "UNKNOWN_KEY_LIMIT", 50)
        for _ in range(120):
            await http.get("/v1/deals", headers={"Authorization": f"Bearer tbk_ptn_{secrets.token_urlsafe(32)}"})
        assert len(deps._unknown_keys) <= 50
        later = time.monotonic() + deps.UNKNOWN_KEY_SECONDS + 1
        monkeypatch.setattr(deps, "_clock", lambda: later)
        before = len(lookups)
        assert (await http.get("/v1/deals", headers={"Authorization": f"Bearer {unknown}"})).status_code == 401
        assert len(lookups) == before + 1

        # The store goes away: a 503 problem the client may retry, not a 500.
        monkeypatch.setitem(db._engines, url, create_engine(f"sqlite:///{tmp_path / 'gone' / 'nothing-here' / 'x.db'}"))
        down = await http.get("/v1/deals", headers=ops)
        assert down.status_code == 503, down.text
        assert down.headers["content-type"].startswith("application/problem+json") and "retry-after" in down.headers
        assert down.json()["type"].endswith("/store-unavailable")


async def test_a_partner_key_without_a_partner_cannot_exist_and_is_refused_if_found(tmp_path):
    settings = make_settings(tmp_path)
    url = settings.effective_database_url
    async with api_client(settings) as http:
        for role, partner_id in (("partner", None), ("partner", ""), ("ops", "P1")):
            with session_scope(url) as session:
                session.add(ApiKey(key_hash=hash_key(secrets.token_hex(8)), prefix="tbk_x", role=role, partner_id=partner_id))
                with pytest.raises(IntegrityError):
                    session.commit()

        # A database restored from before the constraint may still hold one: it is refused, not trusted
        # (its partner id matches no deal's, and it would list every partner's deals).
        stray = "tbk_ptn_" + secrets.token_urlsafe(32)
        engine = create_engine(url)
        with engine.begin() as connection:
            connection.exec_driver_sql("PRAGMA ignore_check_constraints = ON")
            connection.exec_driver_sql(
                "INSERT INTO apikey (key_hash, prefix, role, partner_id, created_at, account) VALUES (?, ?, 'partner', NULL, ?, '')",
                (hash_key(stray), stray[:12], datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")),
            )
        engine.dispose()
        refused = await http.get("/v1/deals", headers={"Authorization": f"Bearer {stray}"})
        assert refused.status_code == 401, refused.text
