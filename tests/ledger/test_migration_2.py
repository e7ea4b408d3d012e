"""Migration 2 (the fleet): a version-1 ledger with records climbs to version 2 keeping them,
and chunks then record their worker. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, inspect

from meshpipe.ledger import Ledger
from meshpipe.ledger.database import parse_location
from meshpipe.ledger.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    chunks,
    schema_migrations,
    transfers,
)
from tests.ledger.helpers import begin_send, checksum


def _version_1(location: str) -> int:
    """Build the version-1 schema alone with one send and its chunk 1, as a meshpipe of
    version 1 left it; the send's id."""
    parsed = parse_location(location)
    if parsed.path is not None:
        parsed.path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed.url)
    try:
        with engine.begin() as connection:
            MIGRATIONS[0].apply(connection)
            connection.execute(
                schema_migrations.insert().values(
                    version=1, description=MIGRATIONS[0].description, applied_at=datetime.now(UTC)
                )
            )
            now = datetime.now(UTC)
            transfer_id = connection.execute(
                transfers.insert()
                .values(
                    direction="send",
                    mailbox="X26ABC001",
                    state="uploading",
                    local_id="old-1",
                    sequence=1,
                    message_id="MSG-OLD",
                    headers={},
                    chunk_count=2,
                    chunks_done=1,
                    hook_attempts=0,
                    created_at=now,
                    updated_at=now,
                )
                .returning(transfers.c.id)
            ).scalar_one()
            connection.execute(
                chunks.insert().values(
                    transfer_id=transfer_id, number=1, state="accepted", xxh3_128=checksum(1)
                )
            )
        with engine.connect() as connection:
            names = {column["name"] for column in inspect(connection).get_columns(chunks.name)}
            tables = set(inspect(connection).get_table_names())
        assert "worker" not in names and "meshpipe_mailbox_pace" not in tables
    finally:
        engine.dispose()
    return int(transfer_id)


def test_a_version_1_ledger_climbs_to_version_2(ledger_location: str, source: Path) -> None:
    assert SCHEMA_VERSION >= 2
    old = _version_1(ledger_location)
    with Ledger.open(ledger_location) as ledger:
        assert ledger.migrated_from == 1
        assert [(c.number, c.state, c.worker) for c in ledger.chunks(old)] == [
            (1, "accepted", None)
        ]
        assert ledger.transfer(old).message_id == "MSG-OLD"
        record = begin_send(ledger, source)
        ledger.chunk_sent(record, 1, checksum(1), 100)
        ledger.set_message_id(record, "MSG-1")
        ledger.chunk_sent(record, 2, checksum(2), 100, worker="w2@host")
        assert ledger.chunk_accepted(record, 2, worker="w3@host")
        assert not ledger.chunk_accepted(record, 2, worker="w3@host")  # counted once
        found = {chunk.number: chunk.worker for chunk in ledger.chunks(record)}
        assert found == {1: None, 2: "w3@host"}
        assert ledger.transfer(record).chunks_done == 2
    with Ledger.open(ledger_location) as again:
        assert again.migrated_from == SCHEMA_VERSION


def test_accepted_chunks_of_a_range(ledger: Ledger, source: Path) -> None:
    record = begin_send(ledger, source, chunk_count=6)
    ledger.chunk_sent(record, 1, checksum(1), 100)
    ledger.set_message_id(record, "MSG-1")
    for number in (2, 3, 5):
        ledger.chunk_sent(record, number, checksum(number), 100, worker="w1")
        ledger.chunk_accepted(record, number, worker="w1")
    ledger.chunk_sent(record, 4, checksum(4), 100, worker="w2")  # sent, not accepted
    assert list(ledger.accepted_chunks(record, range(3, 6))) == [3, 5]
    assert list(ledger.accepted_chunks(record)) == [1, 2, 3, 5]
