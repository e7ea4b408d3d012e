"""Opening ledgers: migrations, refusals that leave the file untouched, SQLite settings,
and where the ledger lives."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from meshpipe.ledger import (
    LEDGER_FILE_NAME,
    Ledger,
    LedgerError,
    resolve_ledger_location,
    resolve_state_dir,
)
from meshpipe.ledger.database import parse_location
from meshpipe.ledger.schema import SCHEMA_VERSION, metadata
from tests.ledger.helpers import begin_send


def _engine_url(location: str) -> str:
    return parse_location(location).url.render_as_string(hide_password=False)


def test_an_empty_location_is_migrated_and_reopened(ledger_location: str, source: Path) -> None:
    with Ledger.open(ledger_location) as ledger:
        assert ledger.migrated_from == 0 and ledger.schema_version == SCHEMA_VERSION
        record = begin_send(ledger, source)
    with Ledger.open(ledger_location) as again:
        assert again.migrated_from == SCHEMA_VERSION
        assert again.transfer(record.id) == record
    engine = create_engine(_engine_url(ledger_location))
    try:
        with engine.connect() as connection:
            found = inspect(connection)
            for table in metadata.sorted_tables:
                columns = {column["name"] for column in found.get_columns(table.name)}
                assert columns == {column.name for column in table.columns}, table.name
                indexes = {index["name"] for index in found.get_indexes(table.name)}
                assert indexes == {index.name for index in table.indexes}, table.name
            versions = connection.execute(
                text("SELECT version FROM meshpipe_schema_migrations ORDER BY version")
            ).scalars()
            assert list(versions) == list(range(1, SCHEMA_VERSION + 1))
    finally:
        engine.dispose()


def test_a_newer_schema_is_refused(ledger_location: str, source: Path) -> None:
    with Ledger.open(ledger_location) as ledger:
        begin_send(ledger, source)
    engine = create_engine(_engine_url(ledger_location))
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO meshpipe_schema_migrations (version, description, applied_at) "
                    "VALUES (:version, 'from the future', CURRENT_TIMESTAMP)"
                ),
                {"version": SCHEMA_VERSION + 1},
            )
    finally:
        engine.dispose()
    with pytest.raises(LedgerError) as refused:
        Ledger.open(ledger_location)
    error = refused.value
    assert error.code == "newer-schema"
    assert f"schema version {SCHEMA_VERSION + 1}" in str(error)
    assert "upgrade meshpipe" in str(error)
    assert error.location is not None and error.location in str(error)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _real_ledger(tmp_path: Path, source: Path) -> Path:
    path = tmp_path / "ledger.sqlite3"
    with Ledger.open(path) as ledger:
        for number in range(40):  # enough rows for several pages
            begin_send(ledger, source, local_id=f"extract-{number}")
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    return path


@pytest.mark.parametrize(
    ("damage", "code"),
    [
        ("garbage", "not-a-database"),
        ("zeroed header", "not-a-database"),
        ("truncated", "truncated"),
        ("truncated mid-page", "truncated"),
        ("header only", "truncated"),
    ],
)
def test_a_damaged_file_is_refused_and_left_untouched(
    tmp_path: Path, source: Path, damage: str, code: str
) -> None:
    path = _real_ledger(tmp_path, source)
    data = path.read_bytes()
    page_size = int.from_bytes(data[16:18], "big")
    damaged = {
        "garbage": b"this is not a database at all\n" * 200,
        "zeroed header": bytes(100) + data[100:],
        "truncated": data[: 2 * page_size],
        "truncated mid-page": data[: page_size + 100],
        "header only": data[:60],
    }[damage]
    path.write_bytes(damaged)
    before = _digest(path)
    with pytest.raises(LedgerError) as refused:
        Ledger.open(path)
    assert refused.value.code == code
    assert str(path) in str(refused.value) and "Nothing was changed" in str(refused.value)
    assert _digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ledger")) == [
        "ledger.sqlite3"
    ]


def test_a_corrupt_page_is_reported_as_corrupt(tmp_path: Path, source: Path) -> None:
    path = _real_ledger(tmp_path, source)
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    for page in range(1, len(data) // page_size):  # every page but the header page
        data[page * page_size : (page + 1) * page_size] = b"\xa5" * page_size
    path.write_bytes(bytes(data))
    before = _digest(path)
    with pytest.raises(LedgerError) as refused, Ledger.open(path) as ledger:
        ledger.history()
    assert refused.value.code in ("corrupt", "not-a-database")
    assert str(path) in str(refused.value)
    assert _digest(path) == before


def test_an_empty_file_beside_a_write_ahead_log_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"")
    Path(f"{path}-wal").write_bytes(b"\x37\x7f\x06\x82" + bytes(60))
    with pytest.raises(LedgerError) as refused:
        Ledger.open(path)
    assert refused.value.code == "truncated" and "write-ahead log" in str(refused.value)
    assert path.read_bytes() == b""


def test_an_empty_file_is_a_new_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"")
    with Ledger.open(path) as ledger:
        assert ledger.migrated_from == 0 and ledger.count() == 0


def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE patients (id INTEGER PRIMARY KEY)")
    connection.close()
    before = _digest(path)
    with pytest.raises(LedgerError) as refused:
        Ledger.open(path)
    assert refused.value.code == "not-a-ledger" and "patients" in str(refused.value)
    assert _digest(path) == before


def test_sqlite_settings(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state" / LEDGER_FILE_NAME
    with Ledger.open(f"sqlite:///{path}", busy_timeout=7.5) as ledger:
        assert ledger.location == str(path)
        with ledger._engine.connect() as connection:
            pragma = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
    assert pragma == {
        "journal_mode": "wal",
        "synchronous": 2,  # FULL
        "foreign_keys": 1,
        "busy_timeout": 7500,
    }


def test_closed_ledger_refuses(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / LEDGER_FILE_NAME)
    ledger.close()
    ledger.close()
    with pytest.raises(LedgerError) as closed:
        ledger.history()
    assert closed.value.code == "closed"


@pytest.mark.parametrize(
    "location",
    ["mysql://user@host/db", "sqlite://", "sqlite:///:memory:", "postgresql+asyncpg://h/db"],
)
def test_unsupported_locations(location: str) -> None:
    with pytest.raises(LedgerError) as refused:
        Ledger.open(location)
    assert refused.value.code == "unsupported-location"


def test_a_postgresql_password_never_shows() -> None:
    location = parse_location("postgresql://meshpipe:s3cret-pass@127.0.0.1:1/ledger")
    assert "s3cret-pass" not in location.display and "***" in location.display
    with pytest.raises(LedgerError) as unreachable:
        Ledger.open("postgresql://meshpipe:s3cret-pass@127.0.0.1:1/ledger?connect_timeout=2")
    assert unreachable.value.code == "unreachable"
    assert "s3cret-pass" not in str(unreachable.value)
    assert "s3cret-pass" not in repr(unreachable.value.location)


def test_state_dir_and_ledger_resolution(tmp_path: Path) -> None:
    home = {"HOME": str(tmp_path / "home")}
    default = tmp_path / "home" / ".local" / "share" / "meshpipe"
    assert resolve_state_dir(None, home) == default
    assert resolve_ledger_location(None, None, home) == str(default / LEDGER_FILE_NAME)
    xdg = {**home, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    assert resolve_state_dir(None, xdg) == tmp_path / "xdg" / "meshpipe"
    assert resolve_state_dir(None, {**home, "XDG_DATA_HOME": "relative"}) == default
    env = {**xdg, "MESHPIPE_STATE_DIR": str(tmp_path / "env-state")}
    assert resolve_state_dir(None, env) == tmp_path / "env-state"
    assert resolve_ledger_location(None, None, env) == str(
        tmp_path / "env-state" / LEDGER_FILE_NAME
    )
    assert resolve_state_dir(tmp_path / "flag", env) == tmp_path / "flag"
    with_url = {**env, "MESHPIPE_LEDGER": "postgresql://db/ledger"}
    assert resolve_ledger_location(None, None, with_url) == "postgresql://db/ledger"
    # flags beat the environment
    assert resolve_ledger_location(None, tmp_path / "flag", with_url) == str(
        tmp_path / "flag" / LEDGER_FILE_NAME
    )
    assert resolve_ledger_location("sqlite:///x.db", tmp_path / "flag", with_url) == (
        "sqlite:///x.db"
    )
