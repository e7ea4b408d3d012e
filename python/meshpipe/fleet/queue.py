"""The job queue: procrastinate on the ledger's PostgreSQL database, its tables beside the
ledger's (``procrastinate_*``), the names of meshpipe's jobs, and recovery of jobs whose
worker died.

Jobs go on one queue per sending mailbox (``meshpipe-<MAILBOX>``), since a worker holds one
mailbox's credentials. The schema is applied once per database under an advisory lock (every
worker and ``submit`` call :func:`open_queue`, which applies it if missing).
"""

from __future__ import annotations

import logging
from typing import Any, Final

import psycopg
from procrastinate import App, PsycopgConnector
from procrastinate import exceptions as procrastinate_errors
from procrastinate import sql as procrastinate_sql
from procrastinate.schema import SchemaManager

from meshpipe.errors import ConfigError
from meshpipe.ledger.database import parse_location

log = logging.getLogger("meshpipe.fleet")

SEND_FIRST: Final = "meshpipe.fleet.send_first"
SEND_RANGE: Final = "meshpipe.fleet.send_range"
SEND_LAST: Final = "meshpipe.fleet.send_last"
POLL: Final = "meshpipe.fleet.poll"
RECEIVE_RANGE: Final = "meshpipe.fleet.receive_range"
RECEIVE_FINAL: Final = "meshpipe.fleet.receive_final"
#: The advisory lock (an arbitrary constant) that serialises applying the queue's schema.
SCHEMA_LOCK_KEY: Final = 0x6D657368_666C6574  # "meshflet"
#: The advisory lock that serialises the recovery of stalled jobs across workers.
RECOVERY_LOCK_KEY: Final = 0x6D657368_72656376  # "meshrecv"


def queue_name(mailbox: str) -> str:
    """The queue of the jobs that send from ``mailbox``."""
    return f"meshpipe-{mailbox.strip().upper()}"


def cron_every(seconds: float) -> str:
    """A cron line (procrastinate's, with a 6th field for seconds) firing every ``seconds``:
    a divisor of 60 seconds, or a whole number of minutes dividing 60."""
    whole = int(seconds)
    if whole == seconds and 1 <= whole < 60 and 60 % whole == 0:
        return f"* * * * * */{whole}"
    if whole == seconds and whole % 60 == 0 and 1 <= whole // 60 <= 60 and 60 % (whole // 60) == 0:
        return f"*/{whole // 60} * * * *"
    raise ConfigError(
        f"poll interval {seconds:g} s: give a divisor of 60 seconds (1, 2, 5, 10, 15, 30) or of "
        "60 minutes (60, 120, 300, ... 3600): polls are set on the clock, so that the whole "
        "fleet polls each mailbox once per tick"
    )


def conninfo(location: str) -> str:
    """The libpq URI of a ``postgresql://`` ledger location (password kept: for connecting
    only, never shown). ConfigError for any other location: the fleet needs PostgreSQL."""
    parsed = parse_location(location)
    if parsed.is_sqlite:
        raise ConfigError(
            f"the fleet needs a PostgreSQL ledger shared by every worker, not the SQLite file "
            f"{parsed.display}: give --ledger postgresql://USER@HOST/DATABASE "
            "(or MESHPIPE_LEDGER)"
        )
    return parsed.url.set(drivername="postgresql").render_as_string(hide_password=False)


def make_app(location: str, **connector: Any) -> App:
    """A procrastinate App on the ledger's database (not yet open)."""
    return App(connector=PsycopgConnector(conninfo=conninfo(location), **connector))


async def apply_schema(location: str) -> bool:
    """Create the queue's tables if the database has none yet; True if it did."""
    connect = psycopg.AsyncConnection.connect(conninfo(location))
    async with await connect as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        cursor = await connection.execute("SELECT to_regclass('procrastinate_jobs')")
        row = await cursor.fetchone()
        if row is not None and row[0] is not None:
            return False
        await connection.execute(SchemaManager.get_schema().encode())
    log.info("created the job queue's tables")
    return True


async def retry_stalled_jobs(location: str, seconds_since_heartbeat: float) -> list[int]:
    """Put back on the queue every job in ``doing`` whose worker sent no heartbeat for
    ``seconds_since_heartbeat`` (killed, or cut off from the database): another worker takes
    it. One worker at a time does this (an advisory lock), and it selects and retries in one
    transaction, so a job just taken up again is not retried twice. The ids retried."""
    stalled = procrastinate_sql.queries["select_stalled_jobs_by_heartbeat"]
    arguments = {
        "queue": None,
        "task_name": None,
        "seconds_since_heartbeat": seconds_since_heartbeat,
    }
    connect = psycopg.AsyncConnection.connect(conninfo(location))
    async with await connect as connection, connection.transaction():
        cursor = await connection.execute(
            "SELECT pg_try_advisory_xact_lock(%s)", (RECOVERY_LOCK_KEY,)
        )
        row = await cursor.fetchone()
        if row is None or not row[0]:
            return []
        cursor = await connection.execute(stalled.encode(), arguments)
        ids = [int(found[0]) for found in await cursor.fetchall()]
        for job_id in ids:
            await connection.execute(
                "SELECT procrastinate_retry_job_v2(%s, now(), NULL, NULL, NULL)", (job_id,)
            )
    if ids:
        log.warning("put back %d stalled job(s) whose worker stopped: %s", len(ids), ids)
    return ids


_PENDING_RECEIVE: Final = """
    SELECT count(*) AS pending FROM procrastinate_jobs
    WHERE task_name IN ('meshpipe.fleet.receive_range', 'meshpipe.fleet.receive_final')
      AND status IN ('todo', 'doing') AND (args->>'transfer_id')::bigint = %(transfer_id)s
"""


async def receive_jobs_pending(app: App, transfer_id: int) -> bool:
    """Whether a range or final job of receive ``transfer_id`` is waiting or running (a
    job of a dead worker counts until it is put back on the queue)."""
    row = await app.connector.execute_query_one_async(_PENDING_RECEIVE, transfer_id=transfer_id)
    return int(row["pending"]) > 0


AlreadyEnqueued: Final = procrastinate_errors.AlreadyEnqueued

__all__ = [
    "POLL",
    "RECEIVE_FINAL",
    "RECEIVE_RANGE",
    "SEND_FIRST",
    "SEND_LAST",
    "SEND_RANGE",
    "AlreadyEnqueued",
    "apply_schema",
    "conninfo",
    "cron_every",
    "make_app",
    "queue_name",
    "receive_jobs_pending",
    "retry_stalled_jobs",
]
