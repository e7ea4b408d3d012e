"""What the web view reads of the fleet's job queue: procrastinate's tables
(``procrastinate_jobs``, ``procrastinate_events``, ``procrastinate_workers``) in the ledger's
PostgreSQL database, beside the ledger's own (see :mod:`meshpipe.fleet`).

Plain read-only SQL through the ledger's engine: the web view needs neither procrastinate nor
:mod:`meshpipe.fleet` (whose package refuses to import without procrastinate), and works on
a SQLite ledger, where there is no queue. The task names below are the fleet's
(``meshpipe.fleet.queue``; a test holds the two lists equal).

Every query is bounded: a page of jobs is a walk of the primary key from a keyset (newest
first), with its events, transfer and chunks looked up per row by their indexes; counts stop
at :data:`COUNT_LIMIT`. Procrastinate has no index on ``(queue_name, status)``: the state
filter uses the queue-name index, or the partial indexes of waiting and running jobs, or walks
the primary key; and the jobs of one transfer are found by a scan of the table (its ``args``
are not indexed), which grows while nothing removes old jobs.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from meshpipe.ledger.database import Location, transaction
from meshpipe.logs import redact
from meshpipe.web.keyset import keyset_page

SEND_FIRST: Final = "meshpipe.fleet.send_first"
SEND_RANGE: Final = "meshpipe.fleet.send_range"
SEND_LAST: Final = "meshpipe.fleet.send_last"
POLL: Final = "meshpipe.fleet.poll"
RECEIVE_RANGE: Final = "meshpipe.fleet.receive_range"
RECEIVE_FINAL: Final = "meshpipe.fleet.receive_final"
TASK_NAMES: Final = (SEND_FIRST, SEND_RANGE, SEND_LAST, POLL, RECEIVE_RANGE, RECEIVE_FINAL)

#: procrastinate's job states, in the order the page shows them.
JOB_STATES: Final = ("todo", "doing", "failed", "succeeded", "cancelled", "aborted")
JOB_PAGE_SIZE: Final = 50
#: Counts of jobs in one state stop here ("more than").
COUNT_LIMIT: Final = 10_000
#: Jobs shown on a transfer's page (the newest).
TRANSFER_JOB_LIMIT: Final = 50
_PRESENT_TTL: Final = 30.0
#: procrastinate's events that end a job.
_ENDING: Final = ("succeeded", "failed", "cancelled", "aborted")


@dataclass(frozen=True, slots=True)
class JobQuery:
    """The jobs page's filters and position: newest first, keyset paging on the job id
    (``before``/``after``: the last or first id of the page shown)."""

    state: str | None = None
    queue: str | None = None
    before: int | None = None
    after: int | None = None
    size: int = JOB_PAGE_SIZE


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One of procrastinate's events of a job (deferred, started, deferred_for_retry, ...)."""

    kind: str
    at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job. ``workers`` are the names the ledger records against the chunks of the job
    (``meshpipe_chunks.worker``: the fleet worker's ``--name``, ``pid@host`` by default);
    ``queue_worker`` is procrastinate's number of the worker running it (kept until that
    worker stops), with its last heartbeat. ``reason``: for a failed job, the error the
    ledger recorded for its transfer (the first failure's reason stands)."""

    id: int
    queue: str
    task_name: str
    task: str
    state: str
    attempts: int
    scheduled_at: dt.datetime | None
    deferred_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    transfer_id: int | None
    transfer_state: str | None
    workers: str | None
    queue_worker: int | None
    heartbeat_at: dt.datetime | None
    reason: str | None
    events: tuple[JobEvent, ...] = ()

    @property
    def mailbox(self) -> str:
        """The mailbox of the queue (``meshpipe-X26ABC1`` → ``X26ABC1``)."""
        return self.queue.removeprefix("meshpipe-")


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of jobs, newest first; ``counts`` of every state (under the queue filter, up
    to COUNT_LIMIT + 1); ``newer``/``older`` the keysets of the neighbouring pages."""

    rows: list[JobRow]
    counts: dict[str, int]
    queues: list[str]
    newer: int | None = None
    older: int | None = None


def task_label(task_name: str, args: dict[str, Any], chunk_count: int | None = None) -> str:
    """What a job does, in words: ``send chunk 1``, ``send chunks 2-5``, ``poll``..."""
    first, last = args.get("first"), args.get("last")
    span = f"chunk {first}" if first == last else f"chunks {first}-{last}"
    if task_name == SEND_FIRST:
        return "send chunk 1"
    if task_name == SEND_RANGE:
        return f"send {span}"
    if task_name == SEND_LAST:
        return f"send last chunk ({chunk_count})" if chunk_count else "send last chunk"
    if task_name == POLL:
        return "poll the mailbox"
    if task_name == RECEIVE_RANGE:
        return f"receive {span}"
    if task_name == RECEIVE_FINAL:
        return "receive final check"
    return task_name


def _number(name: str) -> str:
    """``args->>name`` as a bigint, NULL unless it is a JSON number (another app's jobs may
    share the table)."""
    return (
        f"CASE WHEN jsonb_typeof(j.args -> '{name}') = 'number' "
        f"THEN (j.args ->> '{name}')::numeric::bigint END"
    )


# The chunks a job sends or writes: chunk 1, the last, or its range (none for a poll).
_LOW: Final = (
    f"CASE j.task_name WHEN '{SEND_FIRST}' THEN 1 WHEN '{SEND_LAST}' THEN t.chunk_count "
    f"ELSE {_number('first')} END"
)
_HIGH: Final = (
    f"CASE j.task_name WHEN '{SEND_FIRST}' THEN 1 WHEN '{SEND_LAST}' THEN t.chunk_count "
    f"ELSE {_number('last')} END"
)
_ENDING_SQL: Final = ", ".join(f"'{kind}'" for kind in _ENDING)
_SELECT: Final = f"""
SELECT j.id, j.queue_name, j.task_name, j.status::text AS state, j.args, j.attempts,
       j.scheduled_at, j.worker_id, w.last_heartbeat,
       e.deferred_at, e.started_at, e.finished_at,
       t.id AS transfer_id, t.state AS transfer_state, t.error, t.chunk_count,
       c.workers
FROM procrastinate_jobs j
LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
LEFT JOIN LATERAL (
    SELECT min(ev.at) FILTER (WHERE ev.type = 'deferred') AS deferred_at,
           max(ev.at) FILTER (WHERE ev.type = 'started') AS started_at,
           max(ev.at) FILTER (WHERE ev.type IN ({_ENDING_SQL})) AS finished_at
    FROM procrastinate_events ev WHERE ev.job_id = j.id
) e ON true
LEFT JOIN meshpipe_transfers t ON t.id = {_number("transfer_id")}
LEFT JOIN LATERAL (
    SELECT string_agg(DISTINCT ch.worker, ', ' ORDER BY ch.worker) AS workers
    FROM meshpipe_chunks ch
    WHERE ch.transfer_id = t.id AND ch.worker IS NOT NULL
      AND ch.number BETWEEN {_LOW} AND {_HIGH}
) c ON true
"""
_EVENTS: Final = """
SELECT job_id, type::text AS kind, at FROM procrastinate_events
WHERE job_id = ANY(:ids) ORDER BY job_id, id
"""
_QUEUES: Final = """
WITH RECURSIVE found(queue_name) AS (
    (SELECT queue_name FROM procrastinate_jobs ORDER BY queue_name LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue_name FROM procrastinate_jobs j WHERE j.queue_name > found.queue_name
            ORDER BY j.queue_name LIMIT 1)
    FROM found WHERE found.queue_name IS NOT NULL
)
SELECT queue_name FROM found WHERE queue_name IS NOT NULL LIMIT 200
"""
_PRESENT: Final = """
SELECT to_regclass('procrastinate_jobs') IS NOT NULL
   AND to_regclass('procrastinate_events') IS NOT NULL
   AND to_regclass('procrastinate_workers') IS NOT NULL
"""


def _row(found: Any) -> JobRow:
    args = found.args if isinstance(found.args, dict) else {}
    failed = found.state == "failed"
    return JobRow(
        id=int(found.id),
        queue=found.queue_name,
        task_name=found.task_name,
        task=task_label(found.task_name, args, found.chunk_count),
        state=found.state,
        attempts=int(found.attempts),
        scheduled_at=found.scheduled_at,
        deferred_at=found.deferred_at,
        started_at=found.started_at,
        finished_at=found.finished_at,
        transfer_id=found.transfer_id,
        transfer_state=found.transfer_state,
        workers=found.workers,
        queue_worker=found.worker_id,
        heartbeat_at=found.last_heartbeat,
        reason=redact(found.error) if failed and found.error else None,
    )


class JobReader:
    """Reads the job queue in the ledger's database (``engine``, ``location``)."""

    def __init__(self, engine: Engine, location: Location) -> None:
        self._engine = engine
        self._location = location
        self._present: tuple[float, bool] | None = None
        self._lock = threading.Lock()

    @property
    def is_sqlite(self) -> bool:
        return self._location.is_sqlite

    def available(self) -> bool:
        """Whether the ledger is PostgreSQL and holds procrastinate's tables (looked up at
        most every 30 seconds: the first worker or submit may create them at any time)."""
        if self._location.is_sqlite:
            return False
        with self._lock:
            if self._present is not None and time.monotonic() - self._present[0] < _PRESENT_TTL:
                return self._present[1]
        with self._reading() as connection:
            present = bool(connection.execute(text(_PRESENT)).scalar_one())
        with self._lock:
            self._present = (time.monotonic(), present)
        return present

    def page(self, query: JobQuery) -> JobPage:
        """The page of jobs ``query`` asks for, with the counts by state."""
        where, params = self._where(query)
        walk_newest_first = True
        if query.after is not None:
            where.append("j.id > :after")
            params["after"] = query.after
            walk_newest_first = False
        elif query.before is not None:
            where.append("j.id < :before")
            params["before"] = query.before
        order = "DESC" if walk_newest_first else "ASC"
        sql = _SELECT + _clause(where) + f" ORDER BY j.id {order} LIMIT :limit"
        params["limit"] = query.size + 1
        with self._reading() as connection:
            rows, newer, older = keyset_page(
                [_row(found) for found in connection.execute(text(sql), params)],
                query.size,
                walked_back=not walk_newest_first,
                from_newer=query.before is not None,
                from_older=query.after is not None,
            )
            rows = self._with_events(connection, rows)
            counts = self._counts(connection, query.queue)
            queues = list(connection.execute(text(_QUEUES)).scalars())
        return JobPage(rows=rows, counts=counts, queues=queues, newer=newer, older=older)

    def of_transfer(self, transfer_id: int) -> list[JobRow]:
        """The newest TRANSFER_JOB_LIMIT jobs of one transfer, oldest first."""
        sql = (
            _SELECT
            + f" WHERE {_number('transfer_id')} = :transfer_id"
            + " ORDER BY j.id DESC LIMIT :limit"
        )
        params = {"transfer_id": transfer_id, "limit": TRANSFER_JOB_LIMIT}
        with self._reading() as connection:
            rows = [_row(found) for found in connection.execute(text(sql), params)]
            rows.reverse()
            return self._with_events(connection, rows)

    def _where(self, query: JobQuery) -> tuple[list[str], dict[str, Any]]:
        where: list[str] = []
        params: dict[str, Any] = {}
        if query.state is not None:
            where.append("j.status = CAST(:state AS procrastinate_job_status)")
            params["state"] = query.state
        if query.queue is not None:
            where.append("j.queue_name = :queue")
            params["queue"] = query.queue
        return where, params

    def _counts(self, connection: Connection, queue: str | None) -> dict[str, int]:
        counts = {}
        for state in JOB_STATES:
            where, params = self._where(JobQuery(state=state, queue=queue))
            sql = (
                "SELECT count(*) FROM (SELECT 1 FROM procrastinate_jobs j"
                + _clause(where)
                + " LIMIT :limit) AS matching"
            )
            params["limit"] = COUNT_LIMIT + 1
            counts[state] = int(connection.execute(text(sql), params).scalar_one())
        return counts

    def _with_events(self, connection: Connection, rows: Sequence[JobRow]) -> list[JobRow]:
        """``rows`` with procrastinate's events of each failed or retried one."""
        wanted = [row.id for row in rows if row.state == "failed" or row.attempts > _tries(row)]
        if not wanted:
            return list(rows)
        found: dict[int, list[JobEvent]] = {}
        for event in connection.execute(text(_EVENTS), {"ids": wanted}):
            found.setdefault(int(event.job_id), []).append(JobEvent(event.kind, event.at))
        return [replace(row, events=tuple(found.get(row.id, ()))) for row in rows]

    def _reading(self) -> AbstractContextManager[Connection]:
        return transaction(self._engine, self._location, write=False)


def _tries(row: JobRow) -> int:
    """The attempts of a job not retried: a finished job counts its one run."""
    return 0 if row.state in ("todo", "doing") else 1


def _clause(where: Sequence[str]) -> str:
    return (" WHERE " + " AND ".join(where)) if where else ""


__all__ = [
    "COUNT_LIMIT",
    "JOB_PAGE_SIZE",
    "JOB_STATES",
    "TASK_NAMES",
    "TRANSFER_JOB_LIMIT",
    "JobEvent",
    "JobPage",
    "JobQuery",
    "JobReader",
    "JobRow",
    "task_label",
]
