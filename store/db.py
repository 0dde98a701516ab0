"""One engine per process and per database URL."""

import threading
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

import store.specialization  # noqa: F401  (registers its tables)
import store.tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from store import migrate

_engines: dict[str, Engine] = {}

# PostgreSQL connections a process keeps, and the most it opens at once. A connection is held by one thread at a
# time, and only threads touch the store: an API process's are the event loop's default executor (min(32, cores + 4):
# 6 on 2 cores; 12 on 8) and Starlette's for sync generators; a worker's are its 32 activity threads (worker.py). So
# POOL_SIZE covers an API process's steady state and a worker's usual load without reconnecting, and the overflow
# reaches the worker's 32 threads plus a few, so no activity ever waits on the pool. Two APIs and two workers (the
# topology `make test-slow` runs) hold at most 2 x 12 + 2 x 36 = 96 connections, under PostgreSQL's default
# max_connections of 100; more processes need a larger max_connections or PgBouncer.
POOL_SIZE = 12
POOL_OVERFLOW = 24
_lock = threading.Lock()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets the API read while activities write; busy_timeout waits instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def get_engine(url: str) -> Engine:
    """hide_parameters: a statement's error (in a log, a traceback, a 500's cause) names its SQL, never
    the values bound to it (e-mail addresses, contact names and phones, key hashes)."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                path = url.split("///", 1)[-1]
                if path and path != ":memory:":
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True)
                event.listen(engine, "connect", _sqlite_pragmas)
            else:
                engine = create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW, hide_parameters=True)
            migrate.upgrade(engine)
            _engines[url] = engine
        return engine


def dispose_engine(url: str) -> None:
    """Close the process's connections to `url` (a database that is going away, as a test's is)."""
    with _lock:
        engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()


@contextmanager
def session_scope(url: str):
    with Session(get_engine(url), expire_on_commit=False) as session:
        yield session
