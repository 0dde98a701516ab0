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
                engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, hide_parameters=True)
            migrate.upgrade(engine)
            _engines[url] = engine
        return engine


@contextmanager
def session_scope(url: str):
    with Session(get_engine(url), expire_on_commit=False) as session:
        yield session
