"""Ledgers for the web view's tests and benchmark: a few real transfers recorded through the
ledger's own API (hostile subjects among them), or many rows inserted in bulk."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import insert

from meshpipe.headers import SendHeaders
from meshpipe.ledger import Ledger, ReceiveRecord, SendRecord, SourceFile
from meshpipe.ledger.database import create_ledger_engine, parse_location, transaction
from meshpipe.ledger.schema import chunks, events, transfers

MAILBOX = "X26ABC001"
PARTNER = "X26ABC002"
HOSTILE_SUBJECT = '<script>alert("subject")</script>'
HOSTILE_FILE = '"><img src=x onerror=alert(1)>'
MiB = 1 << 20


def checksum(number: int, salt: int = 0) -> str:
    """A distinct 32-hex-digit xxh3-128."""
    return f"{salt:08x}{number:024x}"


@dataclass(frozen=True, slots=True)
class Sample:
    """The transfers of :func:`sample_ledger`."""

    sent: SendRecord
    hostile: ReceiveRecord
    running: SendRecord
    failed: SendRecord


def sample_ledger(location: str, tmp_path: Path) -> Sample:
    """A ledger with a completed 4-chunk send (a retry on chunk 3), a delivered receive with
    hostile subject and file name, a send still uploading and a failed one."""
    source = tmp_path / "extract.csv"
    source.write_bytes(b"x" * (3 * MiB + 12345))
    with Ledger.open(location) as ledger:
        sent = ledger.begin_send(
            MAILBOX,
            SendHeaders(
                to=PARTNER.lower(),
                workflow_id="WF_NIGHTLY",
                local_id="extract-1",
                subject="nightly",
            ),
            SourceFile.stat(source),
            chunk_size=MiB,
            chunk_count=4,
            codec="zstd",
            level=3,
        )
        ledger.chunk_sent(sent, 1, checksum(1), 400_000)
        ledger.set_message_id(sent, "20261204000000000000_AAAAAA")
        for number in range(2, 5):
            ledger.chunk_sent(sent, number, checksum(number), 400_000)
            if number == 3:
                ledger.record_event(sent, "retry", chunk=3, attempt=1, error="HTTP 503 from MESH")
            ledger.chunk_accepted(sent, number)
        sent = ledger.finish_send(sent, "completed")

        hostile = ledger.begin_receive(
            MAILBOX,
            "20261204000000000000_BBBBBB",
            {
                "mex-subject": HOSTILE_SUBJECT,
                "mex-filename": HOSTILE_FILE,
                "mex-from": PARTNER,
                "mex-to": MAILBOX,
                "mex-workflowid": "WF_HOSTILE",
                "mex-localid": HOSTILE_FILE,
            },
            chunk_count=2,
            codec="none",
            destination=tmp_path / "in.dat",
            partial_path=tmp_path / "in.dat.part",
            chunk_size=MiB,
            size=MiB + 10,
        )
        ledger.chunk_written(hostile, 1, checksum(1, 2), MiB)
        ledger.chunk_written(hostile, 2, checksum(2, 2), 10)
        ledger.mark_verified(hostile, checksum(0, 2))
        hostile = ledger.mark_delivered(hostile)

        running = ledger.begin_send(
            MAILBOX,
            SendHeaders(to=PARTNER.lower(), workflow_id="WF_NIGHTLY", local_id="extract-2"),
            SourceFile.stat(source),
            chunk_size=MiB,
            chunk_count=4,
            codec="none",
        )
        ledger.chunk_sent(running, 1, checksum(1, 3), MiB)
        running = ledger.set_message_id(running, "20261204000000000000_CCCCCC")

        failed = ledger.begin_send(
            "X26ABC009",
            SendHeaders(to=PARTNER.lower(), workflow_id="WF_OTHER", local_id="extract-3"),
            SourceFile.stat(source),
            chunk_size=MiB,
            chunk_count=4,
            codec="gzip",
        )
        failed = ledger.mark_failed(failed, "MESH refused the recipient (code 12)")
        return Sample(sent, hostile, running, failed)  # type: ignore[arg-type]


STATES = ("completed", "completed", "completed", "delivered", "acknowledged", "failed")


def bulk_ledger(location: str, count: int, *, chunks_each: int = 2, seed: int = 1) -> None:
    """``count`` finished transfers (with ``chunks_each`` chunks and three events each),
    inserted with SQLAlchemy Core in batches: seconds for 100,000 where the API takes minutes."""
    Ledger.open(location).close()  # creates the schema
    place = parse_location(location)
    engine = create_ledger_engine(place, busy_timeout=30.0)
    rng = random.Random(seed)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    batch = 5000
    try:
        for first in range(0, count, batch):
            rows, chunk_rows, event_rows = [], [], []
            for index in range(first, min(count, first + batch)):
                send = index % 3 != 0
                state = STATES[index % len(STATES)]
                if send and state in ("delivered", "acknowledged"):
                    state = "completed"
                if not send and state == "completed":
                    state = "acknowledged"
                created = start + dt.timedelta(seconds=60 * index)
                size = rng.randrange(1, 200 * MiB)
                rows.append(
                    {
                        "id": index + 1,
                        "direction": "send" if send else "receive",
                        "mailbox": f"X26ABC00{index % 4}",
                        "state": state,
                        "local_id": f"local-{index}",
                        "sequence": 1 if send else None,
                        "message_id": f"2026{index:016d}_BULK{index % 97:02d}",
                        "counterparty": f"X26XYZ{index % 50:03d}",
                        "workflow_id": f"WF_{index % 25:02d}",
                        "subject": f"bulk transfer {index}",
                        "headers": {"mex-subject": f"bulk transfer {index}"},
                        "path": f"/data/file-{index}.csv",
                        "size": size,
                        "chunk_size": 20 * MiB,
                        "chunk_count": chunks_each,
                        "codec": "zstd",
                        "chunks_done": chunks_each,
                        "error": "refused" if state == "failed" else None,
                        "hook_attempts": 0,
                        "created_at": created,
                        "updated_at": created + dt.timedelta(seconds=30),
                        "finished_at": created + dt.timedelta(seconds=30),
                    }
                )
                for number in range(1, chunks_each + 1):
                    chunk_rows.append(
                        {
                            "transfer_id": index + 1,
                            "number": number,
                            "state": "accepted" if send else "written",
                            "xxh3_128": checksum(number, index),
                            "payload_size": 1000 if send else None,
                            "length": None if send else 1000,
                            "sent_at": created,
                            "done_at": created + dt.timedelta(seconds=number),
                        }
                    )
                for kind in ("created", "claimed", state):
                    event_rows.append(
                        {"transfer_id": index + 1, "at": created, "kind": kind, "detail": {}}
                    )
            with transaction(engine, place, write=True) as connection:
                connection.execute(insert(transfers), rows)
                connection.execute(insert(chunks), chunk_rows)
                connection.execute(insert(events), event_rows)
        if not place.is_sqlite:
            # what autovacuum does soon after a bulk load: statistics and the visibility map
            # (index-only scans); ids were given explicitly, so move the sequence past them
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("VACUUM ANALYZE")
                connection.exec_driver_sql(
                    "SELECT setval(pg_get_serial_sequence('meshpipe_transfers', 'id'), "
                    "(SELECT max(id) FROM meshpipe_transfers))"
                )
    finally:
        engine.dispose()
