"""The ledger's tables (SQLAlchemy Core, one definition for SQLite and PostgreSQL) and the
ordered forward migrations that build them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime: ``timestamptz`` on PostgreSQL; on SQLite, naive UTC text in one
    fixed format, so that text order is time order."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("ledger times must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Unsigned64(TypeDecorator[int]):
    """An unsigned 64-bit number (an inode or device number) in a signed BIGINT column."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: int | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return value - (1 << 64) if value >= (1 << 63) else value

    def process_result_value(self, value: int | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return value + (1 << 64) if value < 0 else value


#: A 64-bit key on PostgreSQL; SQLite's rowid (an INTEGER PRIMARY KEY) on SQLite.
Key = BigInteger().with_variant(Integer, "sqlite")
Document = JSON().with_variant(JSONB(), "postgresql")

metadata: Final = MetaData()

schema_migrations: Final = Table(
    "meshpipe_schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", Text, nullable=False),
    Column("applied_at", UtcDateTime, nullable=False),
)

transfers: Final = Table(
    "meshpipe_transfers",
    metadata,
    Column("id", Key, primary_key=True, autoincrement=True),
    Column("direction", String(7), nullable=False),
    Column("mailbox", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("local_id", String(255)),
    Column("sequence", Integer),  # sends: 1 for the first send of a local id, 2 for --again...
    Column("message_id", String(64)),
    Column("counterparty", String(64)),  # the recipient of a send, the sender of a receive
    Column("workflow_id", String(255)),
    Column("subject", Text),
    Column("headers", Document, nullable=False),
    Column("path", Text),  # the source of a send, the destination of a receive
    Column("partial_path", Text),
    Column("size", BigInteger),
    Column("mtime_ns", BigInteger),
    Column("inode", Unsigned64),
    Column("device", Unsigned64),
    Column("xxh3_128", String(32)),  # the whole file's
    Column("chunk_size", BigInteger),
    Column("chunk_count", Integer),
    Column("codec", String(8)),
    Column("level", Integer),
    Column("chunks_done", Integer, nullable=False),  # accepted (sends) or written (receives)
    Column("error", Text),
    Column("hook_ok", Boolean),
    Column("hook_detail", Text),
    Column("hook_attempts", Integer, nullable=False),
    Column("owner", String(300)),  # pid@host of the claim holder
    Column("owner_pid", Integer),
    Column("owner_host", String(255)),
    Column("owner_token", String(32)),
    Column("lease_expires_at", UtcDateTime),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime),
    CheckConstraint("direction IN ('send', 'receive')", name="ck_meshpipe_transfers_direction"),
    CheckConstraint(
        "state IN ('preparing', 'uploading', 'completed', 'failed', "
        "'downloading', 'verified', 'delivered', 'acknowledged')",
        name="ck_meshpipe_transfers_state",
    ),
)
Index(
    "ux_meshpipe_transfers_send",
    transfers.c.mailbox,
    transfers.c.local_id,
    transfers.c.sequence,
    unique=True,
    sqlite_where=transfers.c.direction == "send",
    postgresql_where=transfers.c.direction == "send",
)
Index(
    "ux_meshpipe_transfers_receive",
    transfers.c.mailbox,
    transfers.c.message_id,
    unique=True,
    sqlite_where=transfers.c.direction == "receive",
    postgresql_where=transfers.c.direction == "receive",
)
# history(): newest first (id descending) under any one filter, and keyset paging on id.
Index("ix_meshpipe_transfers_message_id", transfers.c.message_id)
Index("ix_meshpipe_transfers_local_id", transfers.c.local_id)
Index("ix_meshpipe_transfers_state", transfers.c.state, transfers.c.id)
Index("ix_meshpipe_transfers_mailbox", transfers.c.mailbox, transfers.c.id)
Index("ix_meshpipe_transfers_workflow", transfers.c.workflow_id, transfers.c.id)
Index("ix_meshpipe_transfers_direction", transfers.c.direction, transfers.c.id)
Index("ix_meshpipe_transfers_created", transfers.c.created_at)
# Version 3: the web list's sorts by size and by finish (meshpipe.web.store orders by the
# column descending with nulls last, or ascending with nulls first, then by id): an index in
# that order, scanned forwards or backwards, serves a page without sorting every row. SQLite
# puts nulls first in ascending order by itself; PostgreSQL must be told (its default puts
# them last, and its planner cannot then use the index for either direction).
SORT_INDEXES: Final = ("ix_meshpipe_transfers_sort_size", "ix_meshpipe_transfers_sort_finished")
for _name, _column in zip(SORT_INDEXES, (transfers.c.size, transfers.c.finished_at), strict=True):
    Index(_name, _column, transfers.c.id).ddl_if(dialect="sqlite")
    Index(_name, _column.nulls_first(), transfers.c.id).ddl_if(dialect="postgresql")

chunks: Final = Table(
    "meshpipe_chunks",
    metadata,
    Column(
        "transfer_id", Key, ForeignKey("meshpipe_transfers.id", ondelete="CASCADE"), nullable=False
    ),
    Column("number", Integer, nullable=False),
    Column("state", String(8), nullable=False),
    Column("xxh3_128", String(32), nullable=False),  # of the uncompressed bytes
    Column("payload_size", BigInteger),  # bytes on the wire (sends)
    Column("length", BigInteger),  # uncompressed bytes (receives)
    Column("sent_at", UtcDateTime),
    Column("done_at", UtcDateTime),  # accepted (sends) or written (receives)
    Column("worker", String(300)),  # version 2: who sent or wrote it (a fleet worker, pid@host)
    PrimaryKeyConstraint("transfer_id", "number", name="pk_meshpipe_chunks"),
    CheckConstraint("state IN ('sent', 'accepted', 'written')", name="ck_meshpipe_chunks_state"),
)

events: Final = Table(
    "meshpipe_events",
    metadata,
    Column("id", Key, primary_key=True, autoincrement=True),
    Column(
        "transfer_id", Key, ForeignKey("meshpipe_transfers.id", ondelete="CASCADE"), nullable=False
    ),
    Column("at", UtcDateTime, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("detail", Document, nullable=False),
)
Index("ix_meshpipe_events_transfer", events.c.transfer_id, events.c.id)

# Version 2: the fleet's pace per mailbox (meshpipe.fleet.limits): the earliest time the next
# request from the mailbox may start, reserved by one UPDATE per request across all workers.
mailbox_pace: Final = Table(
    "meshpipe_mailbox_pace",
    metadata,
    Column("mailbox", String(64), primary_key=True),
    Column("next_at", UtcDateTime, nullable=False),
)

LEDGER_TABLES: Final = (transfers, chunks, events, mailbox_pace)


@dataclass(frozen=True, slots=True)
class Migration:
    """One forward step: ``apply`` runs inside the transaction that records ``version``."""

    version: int
    description: str
    apply: Callable[[Connection], Any]


def _create_version_1(connection: Connection) -> None:
    # The tables above are the schema as of the newest version. When a later version changes
    # one, freeze it here first (this step's own copy of its version-1 definition), so that an
    # empty ledger still climbs through every version. tests/ledger/test_open.py checks that
    # migrating an empty database gives exactly the tables above. Frozen so far:
    # meshpipe_chunks (version 2 added ``worker``); meshpipe_transfers, copied without the
    # indexes of version 3; the other two are unchanged since version 1 and copied as they are.
    version_1 = MetaData()
    frozen = [table.to_metadata(version_1) for table in (schema_migrations, transfers, events)]
    for index in list(frozen[1].indexes):
        if index.name in SORT_INDEXES:
            frozen[1].indexes.discard(index)
    frozen.append(
        Table(
            "meshpipe_chunks",
            version_1,
            Column(
                "transfer_id",
                Key,
                ForeignKey("meshpipe_transfers.id", ondelete="CASCADE"),
                nullable=False,
            ),
            Column("number", Integer, nullable=False),
            Column("state", String(8), nullable=False),
            Column("xxh3_128", String(32), nullable=False),
            Column("payload_size", BigInteger),
            Column("length", BigInteger),
            Column("sent_at", UtcDateTime),
            Column("done_at", UtcDateTime),
            PrimaryKeyConstraint("transfer_id", "number", name="pk_meshpipe_chunks"),
            CheckConstraint(
                "state IN ('sent', 'accepted', 'written')", name="ck_meshpipe_chunks_state"
            ),
        )
    )
    version_1.create_all(connection, tables=frozen)


def _add_fleet_version_2(connection: Connection) -> None:
    # Version 2 (the fleet): which worker sent each chunk, and the pace table. Each column is
    # added with the same type as its definition above.
    worker = chunks.c.worker
    connection.execute(
        text(
            f"ALTER TABLE {chunks.name} ADD COLUMN {worker.name} "
            f"{worker.type.compile(dialect=connection.dialect)}"
        )
    )
    metadata.create_all(connection, tables=[mailbox_pace])


def _add_sort_indexes_version_3(connection: Connection) -> None:
    # Version 3 (the web list's sorts): the indexes of SORT_INDEXES, each in its dialect's form.
    for index in transfers.indexes:
        if index.name in SORT_INDEXES:
            index.create(connection)


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "transfers, chunks and events", _create_version_1),
    Migration(2, "the worker of each chunk; the pace of each mailbox", _add_fleet_version_2),
    Migration(
        3, "indexes for the web list's sorts by size and by finish", _add_sort_indexes_version_3
    ),
)
SCHEMA_VERSION: Final = MIGRATIONS[-1].version

__all__ = [
    "LEDGER_TABLES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SORT_INDEXES",
    "Migration",
    "chunks",
    "events",
    "mailbox_pace",
    "metadata",
    "schema_migrations",
    "transfers",
]
