"""Inserts for the booking's hot path, run on the DBAPI cursor of the session's own transaction.

SQLAlchemy's execution machinery (statement cache lookup, execution context, result set-up) cost
about 0.15 ms a statement here, most of a booking's store time: the same rows written through
sqlite3 directly took a sixth of it (bench/RESULTS.md, issue 15). So the few tables a booking
writes are inserted with their own column list and the column types' own bind processors (what
SQLAlchemy would send: the same text for a datetime on SQLite, the same values on PostgreSQL), and
the column defaults the tables declare. Everything else keeps using SQLAlchemy.
"""

from dataclasses import dataclass

from sqlalchemy import Table
from sqlmodel import Session


@dataclass(frozen=True)
class _Compiled:
    sql: str
    columns: tuple[str, ...]
    processors: tuple
    defaults: dict
    returning_id: bool


_compiled: dict[tuple[str, str, frozenset], _Compiled] = {}


def _compile(table: Table, dialect, names: frozenset, want_id: bool) -> _Compiled:
    key = (table.name, dialect.name, names, want_id)
    found = _compiled.get(key)
    if found is not None:
        return found
    # Scalar defaults as they are; callable ones (a timestamp) are SQLAlchemy's wrappers, called per row with no context.
    defaults = {c.name: c.default for c in table.columns if c.name not in names and c.default is not None and (c.default.is_scalar or c.default.is_callable)}
    columns = tuple(c.name for c in table.columns if c.name in names or c.name in defaults)
    unknown = names - {c.name for c in table.columns}
    if unknown:
        raise ValueError(f"{table.name} has no columns {sorted(unknown)}")
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([marker] * len(columns))})"
    if want_id and dialect.name == "postgresql":
        sql += " RETURNING id"
    processors = tuple(table.columns[name].type.bind_processor(dialect) for name in columns)
    found = _compiled[key] = _Compiled(sql, columns, processors, defaults, want_id and dialect.name == "postgresql")
    return found


def _values(compiled: _Compiled, row: dict) -> tuple:
    values = []
    for name, process in zip(compiled.columns, compiled.processors):
        if name in row:
            value = row[name]
        else:
            default = compiled.defaults[name]
            value = default.arg if default.is_scalar else default.arg(None)
        values.append(process(value) if process is not None and value is not None else value)
    return tuple(values)


def insert_rows(session: Session, table: Table, rows: list[dict]) -> None:
    """Insert rows (all with the same keys) in the session's transaction."""
    if not rows:
        return
    connection = session.connection()
    compiled = _compile(table, connection.dialect, frozenset(rows[0]), False)
    cursor = connection.connection.driver_connection.cursor()
    try:
        cursor.executemany(compiled.sql, [_values(compiled, row) for row in rows])
    finally:
        cursor.close()


def insert_row(session: Session, table: Table, row: dict) -> int:
    """Insert one row in the session's transaction; its integer primary key `id`."""
    connection = session.connection()
    compiled = _compile(table, connection.dialect, frozenset(row), True)
    cursor = connection.connection.driver_connection.cursor()
    try:
        cursor.execute(compiled.sql, _values(compiled, row))
        return cursor.fetchone()[0] if compiled.returning_id else cursor.lastrowid
    finally:
        cursor.close()


def integrity_error(session: Session) -> type[Exception]:
    """The DBAPI's IntegrityError (a unique key refused a row): what these inserts raise, unwrapped."""
    return session.connection().dialect.dbapi.IntegrityError
