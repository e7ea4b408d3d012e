"""Opening a ledger database: the location (path or URL) to an SQLAlchemy engine, the SQLite
file checks and settings, driver errors as LedgerError, and the forward migrations."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import struct
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, NoReturn

from sqlalchemy import Connection, Engine, create_engine, event, func, inspect, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError

from meshpipe.ledger.errors import LedgerError
from meshpipe.ledger.schema import LEDGER_TABLES, MIGRATIONS, SCHEMA_VERSION, schema_migrations

SQLITE_HEADER: Final = b"SQLite format 3\x00"
#: How long a SQLite writer waits for another process's write to finish.
DEFAULT_BUSY_TIMEOUT: Final = 30.0
#: The PostgreSQL advisory lock (an arbitrary constant) that serialises migrations.
MIGRATION_LOCK_KEY: Final = 0x6D657368_6C656467  # "meshledg"
_WRITE: Final = "meshpipe_ledger_write"


@dataclass(frozen=True, slots=True)
class Location:
    """A parsed ledger location: ``url`` for SQLAlchemy, ``display`` (the file, or the URL
    with its password hidden) for messages, and ``path`` for a SQLite file."""

    url: URL
    display: str
    path: Path | None

    @property
    def is_sqlite(self) -> bool:
        return self.path is not None


def parse_location(location: str | os.PathLike[str]) -> Location:
    """A plain path or ``sqlite:///PATH`` is a SQLite file; ``postgresql://...`` (or
    ``postgres://``, ``postgresql+psycopg://``) a PostgreSQL database through psycopg 3."""
    text = os.fspath(location)
    if "://" not in text:
        path = Path(text).expanduser().absolute()
        return Location(URL.create("sqlite+pysqlite", database=str(path)), str(path), path)
    try:
        url = make_url(text)
    except ArgumentError:
        _refuse_location(text)
    backend, _, driver = url.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        if not url.database or url.database == ":memory:":
            raise LedgerError(
                f"ledger location {text!r} names no file: give sqlite:///PATH or a plain path "
                "(an in-memory ledger would not survive the process)",
                code="unsupported-location",
                location=text,
            )
        path = Path(url.database).expanduser().absolute()
        return Location(URL.create("sqlite+pysqlite", database=str(path)), str(path), path)
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        url = url.set(drivername="postgresql+psycopg")
        display = url.render_as_string(hide_password=True)
        if importlib.util.find_spec("psycopg") is None:
            raise LedgerError(
                f"ledger {display} is on PostgreSQL, which needs psycopg 3: "
                "install meshpipe[postgres] (pip install 'psycopg[binary]')",
                code="driver-missing",
                location=display,
            )
        return Location(url, display, None)
    _refuse_location(url.render_as_string(hide_password=True))


def _refuse_location(shown: str) -> NoReturn:
    raise LedgerError(
        f"ledger location {shown!r} is not supported: give a file path, sqlite:///PATH or "
        "postgresql://USER@HOST/DATABASE",
        code="unsupported-location",
        location=shown,
    )


def check_sqlite_file(location: Location) -> None:
    """Refuse, touching nothing, a file that is not an intact SQLite database holding a
    meshpipe ledger (read through a read-only connection: even switching another program's
    database to WAL would change it). A missing or empty file is a new ledger, unless a
    write-ahead log beside it holds data (then the database file was truncated or deleted)."""
    assert location.path is not None
    path = location.path
    shown = str(path)
    wal = Path(f"{path}-wal")
    wal_holds_data = wal.exists() and wal.stat().st_size > 0
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        if wal_holds_data:
            raise LedgerError(
                f"ledger {shown} is {'empty' if path.exists() else 'missing'} but its "
                f"write-ahead log {wal} holds data: the ledger was truncated or deleted. "
                "Restore it from a backup, or move both files aside to start a new ledger",
                code="truncated",
                location=shown,
            )
        return
    with path.open("rb") as file:
        header = file.read(100)
    if not header.startswith(SQLITE_HEADER[: len(header)]) or len(header) < len(SQLITE_HEADER):
        raise LedgerError(
            f"ledger {shown} is not a SQLite database (it holds something else). Nothing was "
            "changed: point --state-dir or --ledger at the right file, or move this one aside "
            "to start a new ledger",
            code="not-a-database",
            location=shown,
        )
    truncated = len(header) < 100
    if not truncated:
        (page_size,) = struct.unpack(">H", header[16:18])
        page_size = 65536 if page_size == 1 else page_size
        change_counter, page_count = struct.unpack(">II", header[24:32])
        (valid_for,) = struct.unpack(">I", header[92:96])
        truncated = size % page_size != 0 or (
            valid_for == change_counter and size < page_count * page_size
        )
    if truncated:
        raise LedgerError(
            f"ledger {shown} is truncated ({size} bytes, shorter than its own header says). "
            "Nothing was changed: restore it from a backup, or move it aside to start a new "
            "ledger (its records would be lost)",
            code="truncated",
            location=shown,
        )
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as connection:
            names = {
                name
                for (name,) in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                )
            }
    except sqlite3.Error as error:
        raise translate(error, location) from error
    if names and schema_migrations.name not in names:
        _refuse_foreign(location, names)


def _refuse_foreign(location: Location, names: set[str]) -> NoReturn:
    raise LedgerError(
        f"{location.display} holds tables that are not a meshpipe ledger "
        f"({', '.join(sorted(names))} without {schema_migrations.name}); nothing was changed: "
        "point --state-dir or --ledger elsewhere",
        code="not-a-ledger",
        location=location.display,
    )


def translate(error: BaseException, location: Location) -> LedgerError:
    """A driver error as a LedgerError saying what to do."""
    shown = location.display
    if isinstance(error, IntegrityError):
        return LedgerError(
            f"ledger {shown}: another process recorded the same transfer at the same moment "
            f"({error.orig}); look it up again and resume it instead",
            code="exists",
            location=shown,
        )
    original = getattr(error, "orig", None) or error
    text = str(original)
    low = text.lower()
    if location.is_sqlite:
        if "file is not a database" in low:
            return LedgerError(
                f"ledger {shown} is not a SQLite database (SQLite: {text}). Nothing was "
                "changed: restore it from a backup, or move it aside to start a new ledger",
                code="not-a-database",
                location=shown,
            )
        if "malformed" in low or (isinstance(original, sqlite3.DatabaseError) and "corrupt" in low):
            return LedgerError(
                f"ledger {shown} is corrupt (SQLite: {text}). Nothing was changed: restore it "
                "from a backup, or move it aside to start a new ledger",
                code="corrupt",
                location=shown,
            )
        if "database is locked" in low or "database is busy" in low:
            return LedgerError(
                f"ledger {shown} stayed locked by another process for longer than the busy "
                "timeout; try again when the other meshpipe has finished its write",
                code="locked",
                location=shown,
            )
    return LedgerError(
        f"ledger {shown} could not be used ({type(original).__name__}: {text.strip()}); "
        "check that it exists and is reachable with these credentials",
        code="unreachable",
        location=shown,
    )


def create_ledger_engine(location: Location, *, busy_timeout: float) -> Engine:
    """The engine for ``location``. SQLite: WAL, synchronous=FULL, foreign keys, the busy
    timeout, and BEGIN IMMEDIATE for write transactions (so a writer waits for the lock up
    front instead of failing when it upgrades from reading)."""
    if location.path is None:
        return create_engine(location.url, pool_pre_ping=True)
    location.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = create_engine(location.url, connect_args={"timeout": busy_timeout})

    @event.listens_for(engine, "connect")
    def _configure(connection: sqlite3.Connection, _record: Any) -> None:
        connection.isolation_level = None  # meshpipe issues BEGIN itself (below)
        cursor = connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


@contextmanager
def transaction(engine: Engine, location: Location, *, write: bool) -> Iterator[Connection]:
    """One transaction, committed when the block ends without an error; driver errors come
    out as LedgerError."""
    try:
        with engine.connect() as connection:
            if write:
                connection.execution_options(**{_WRITE: True})
            with connection.begin():
                yield connection
    except DBAPIError as error:  # the database's own errors; others are meshpipe's bugs
        raise translate(error, location) from error


def _schema_version(connection: Connection, location: Location) -> int:
    names = set(inspect(connection).get_table_names())
    if schema_migrations.name in names:
        found = connection.execute(select(func.max(schema_migrations.c.version))).scalar()
        return int(found or 0)
    ours = {table.name for table in LEDGER_TABLES} & names
    if ours or (location.is_sqlite and names):
        _refuse_foreign(location, ours or names)
    return 0


def migrate(engine: Engine, location: Location) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`, one migration per transaction; refuse a
    ledger written by a newer meshpipe. Returns the version found before migrating."""
    with transaction(engine, location, write=False) as connection:
        found = _schema_version(connection, location)
    if found > SCHEMA_VERSION:
        raise LedgerError(
            f"ledger {location.display} has schema version {found}, newer than this meshpipe "
            f"understands (up to {SCHEMA_VERSION}): upgrade meshpipe, or point --state-dir or "
            "--ledger at another ledger. Nothing was changed",
            code="newer-schema",
            location=location.display,
        )
    for migration in MIGRATIONS:
        if migration.version <= found:
            continue
        with transaction(engine, location, write=True) as connection:
            if not location.is_sqlite:
                connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
            if _schema_version(connection, location) >= migration.version:
                continue  # another process applied it while this one waited for the lock
            migration.apply(connection)
            connection.execute(
                schema_migrations.insert().values(
                    version=migration.version,
                    description=migration.description,
                    applied_at=datetime.now(UTC),
                )
            )
    return found


__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "Location",
    "check_sqlite_file",
    "create_ledger_engine",
    "migrate",
    "parse_location",
    "transaction",
    "translate",
]
