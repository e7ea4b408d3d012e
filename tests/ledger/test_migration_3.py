"""Migration 3 (the web list's sorts): a version-2 ledger with a transfer climbs to version 3
keeping it and gains the sort indexes, each in its dialect's form (PostgreSQL: nulls first).
On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, inspect

from meshpipe.ledger import Ledger
from meshpipe.ledger.database import parse_location
from meshpipe.ledger.schema import MIGRATIONS, SORT_INDEXES, schema_migrations, transfers
from tests.ledger.helpers import begin_send


def test_a_version_2_ledger_climbs_to_version_3(ledger_location: str, source: Path) -> None:
    parsed = parse_location(ledger_location)
    if parsed.path is not None:
        parsed.path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed.url)
    try:
        with engine.begin() as connection:
            for migration in MIGRATIONS[:2]:
                migration.apply(connection)
                connection.execute(
                    schema_migrations.insert().values(
                        version=migration.version,
                        description=migration.description,
                        applied_at=datetime.now(UTC),
                    )
                )
        with engine.connect() as connection:
            before = {index["name"] for index in inspect(connection).get_indexes(transfers.name)}
        assert before.isdisjoint(SORT_INDEXES)
    finally:
        engine.dispose()
    with Ledger.open(ledger_location) as ledger:
        assert ledger.migrated_from == 2
        record = begin_send(ledger, source)
    with Ledger.open(ledger_location) as ledger:
        assert ledger.migrated_from == 3 and ledger.transfer(record.id).state == "preparing"
    engine = create_engine(parsed.url)
    try:
        with engine.connect() as connection:
            found = {
                index["name"]: index for index in inspect(connection).get_indexes(transfers.name)
            }
    finally:
        engine.dispose()
    assert set(SORT_INDEXES) <= set(found)
    size = found["ix_meshpipe_transfers_sort_size"]
    assert size["column_names"] == ["size", "id"]
    if parsed.path is None:  # PostgreSQL: nulls first, so both directions of the list match
        assert size.get("column_sorting", {}).get("size") == ("nulls_first",)
