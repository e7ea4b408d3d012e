"""What the web view reads from the ledger: pages of transfers (keyset paging on the id, so
the list of 100,000 transfers costs the same on its first, middle and last page), counts, the
overview's aggregates, one transfer with its chunks and events, its live progress.

Every method blocks (SQLAlchemy on SQLite or PostgreSQL): the pages call them through
:func:`asyncio.to_thread`. Nothing here writes. The queries use the ledger's indexes for
history (state, mailbox, workflow, direction with id; message id; local id; creation time).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.engine import Engine, Row

from meshpipe.ledger import (
    ChunkRecord,
    Event,
    Ledger,
    LedgerError,
    TransferRecord,
    TransferSummary,
)
from meshpipe.ledger.database import create_ledger_engine, parse_location, transaction
from meshpipe.ledger.schema import events, transfers
from meshpipe.web.jobs import JobReader
from meshpipe.web.keyset import keyset_page

PAGE_SIZE: Final = 50
#: The list counts matching transfers up to this many (a count of every row of a big ledger
#: is a scan of an index: 12-25 ms for 100,000 rows on PostgreSQL) and then says "more than".
COUNT_LIMIT: Final = 10_000
#: States in which a transfer is still moving (its progress changes).
RUNNING_STATES: Final = frozenset({"preparing", "uploading", "downloading", "verified"})
SEND_STATES: Final = ("preparing", "uploading", "completed", "failed")
RECEIVE_STATES: Final = ("downloading", "verified", "delivered", "acknowledged", "failed")
ALL_STATES: Final = tuple(dict.fromkeys(SEND_STATES + RECEIVE_STATES))
#: Finished well: a throughput is shown for these.
DONE_STATES: Final = frozenset({"completed", "verified", "delivered", "acknowledged"})

SortKey = Literal["created", "size", "finished", "state", "mailbox", "workflow"]
SORT_KEYS: Final[tuple[SortKey, ...]] = (
    "created",
    "size",
    "finished",
    "state",
    "mailbox",
    "workflow",
)
_SORT_COLUMNS: Final = {
    "size": transfers.c.size,
    "finished": transfers.c.finished_at,
    "state": transfers.c.state,
    "mailbox": transfers.c.mailbox,
    "workflow": transfers.c.workflow_id,
}
_SUMMARY_COLUMNS: Final = (
    transfers.c.id,
    transfers.c.direction,
    transfers.c.mailbox,
    transfers.c.state,
    transfers.c.local_id,
    transfers.c.message_id,
    transfers.c.counterparty,
    transfers.c.workflow_id,
    transfers.c.subject,
    transfers.c.path,
    transfers.c.size,
    transfers.c.codec,
    transfers.c.chunks_done,
    transfers.c.chunk_count,
    transfers.c.error,
    transfers.c.created_at,
    transfers.c.updated_at,
    transfers.c.finished_at,
)
_CHOICES_TTL: Final = 30.0


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The list page's filters, order and position. ``search`` matches a local id or a
    message id exactly (or ``#123``, a transfer's number); ``since``/``until`` are dates, both
    inclusive. Paging: by id (``created``, either way) with ``before``/``after`` (the keyset:
    the last or first id of the page shown) or ``last``; other orders by ``page``."""

    state: str | None = None
    workflow: str | None = None
    mailbox: str | None = None
    direction: Literal["send", "receive"] | None = None
    search: str | None = None
    since: dt.date | None = None
    until: dt.date | None = None
    sort: SortKey = "created"
    descending: bool = True
    before: int | None = None
    after: int | None = None
    last: bool = False
    page: int = 1
    size: int = PAGE_SIZE

    def conditions(self, *, steer: bool = True) -> list[ColumnElement[bool]]:
        """The WHERE terms. With ``steer`` (SQLite) only the most selective equality filter
        given may use its index (search, then workflow, mailbox, state, direction): the
        others are written so that no index serves them. SQLite, which has no statistics of
        the ledger, may otherwise walk the direction index (two thirds of the rows) to count
        a workflow's failures; PostgreSQL's planner has statistics and combines indexes."""
        found: list[ColumnElement[bool]] = []
        leading = True
        if self.search:
            text = self.search.strip()
            if text.startswith("#") and text[1:].isdigit():
                found.append(transfers.c.id == int(text[1:]))
            else:
                found.append(or_(transfers.c.local_id == text, transfers.c.message_id == text))
            leading = False
        for column, value in (
            (transfers.c.workflow_id, self.workflow),
            (transfers.c.mailbox, self.mailbox),
            (transfers.c.state, self.state),
            (transfers.c.direction, self.direction),
        ):
            if value is None:
                continue
            found.append(column == value if leading or not steer else column.concat("") == value)
            leading = False
        if self.since is not None:
            found.append(transfers.c.created_at >= _midnight(self.since))
        if self.until is not None:
            found.append(transfers.c.created_at < _midnight(self.until + dt.timedelta(days=1)))
        return found


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class TransferPage:
    """One page of the list: its rows in the order asked, the total matching, and where the
    neighbouring pages are (None: there is none)."""

    rows: list[TransferSummary]
    total: int  # at most COUNT_LIMIT + 1: more than COUNT_LIMIT
    running: int
    newer: int | None = None  # keyset: the id for ``after=``
    older: int | None = None  # keyset: the id for ``before=``
    has_next: bool = False  # offset paging
    page: int = 1


@dataclass(frozen=True, slots=True)
class Overview:
    """The ledger's side of the overview page."""

    total: int
    by_state: dict[str, int]
    backlog: list[tuple[str, str, str, int]]  # mailbox, direction, state, count
    last_per_workflow: list[TransferSummary]
    recent_failures: list[TransferSummary]


@dataclass(frozen=True, slots=True)
class TransferDetail:
    """One transfer with its chunks and (the first ``event_limit``) events."""

    record: TransferRecord
    chunks: list[ChunkRecord]
    events: list[Event]
    events_total: int


@dataclass(slots=True)
class _Cached:
    at: float = 0.0
    values: dict[str, list[str]] = field(default_factory=dict)


def sort_order(sort: SortKey, descending: bool) -> list[ColumnElement[Any]]:
    """The ORDER BY of a list sorted by ``sort`` (not ``created``): the column, nulls after
    the largest, then the id; written so that an index serves it (state, mailbox and
    workflow with id; ledger version 3's size and finish with id). A column that cannot be
    null gets no NULLS clause: PostgreSQL would not match it to an index otherwise."""
    column = _SORT_COLUMNS[sort]
    ids = transfers.c.id
    if not column.nullable:
        return [column.desc(), ids.desc()] if descending else [column.asc(), ids.asc()]
    if descending:
        return [column.desc().nulls_last(), ids.desc()]
    return [column.asc().nulls_first(), ids.asc()]


def _summary(row: Row[Any] | Any) -> TransferSummary:
    return TransferSummary(**row._asdict())


def throughput(summary: TransferSummary | TransferRecord) -> float | None:
    """Bytes per second from creation to finish (to the last change if no finish is
    recorded: a receive's delivery), for a transfer that finished well."""
    size = summary.size if isinstance(summary, TransferSummary) else _record_size(summary)
    end = summary.finished_at or summary.updated_at
    if summary.state not in DONE_STATES or not size:
        return None
    seconds = (end - summary.created_at).total_seconds()
    return size / seconds if seconds > 0 else None


def _record_size(record: TransferRecord) -> int | None:
    return record.source.size if record.direction == "send" else record.size


class LedgerView:
    """A reader of the ledger at ``location`` (as :meth:`Ledger.open` takes it)."""

    def __init__(self, location: str) -> None:
        self.ledger = Ledger.open(location)
        self._location = parse_location(location)
        self._engine: Engine = create_ledger_engine(self._location, busy_timeout=10.0)
        self._choices = _Cached()
        self._lock = threading.Lock()
        #: the fleet's job queue in the same database (PostgreSQL only)
        self.jobs = JobReader(self._engine, self._location)

    @property
    def location(self) -> str:
        """The SQLite file, or the PostgreSQL URL with its password hidden."""
        return self.ledger.location

    def close(self) -> None:
        self._engine.dispose()
        self.ledger.close()

    def _rows(self, query: Select[Any]) -> list[TransferSummary]:
        with transaction(self._engine, self._location, write=False) as connection:
            return [_summary(row) for row in connection.execute(query).all()]

    def _scalar(self, query: Select[Any]) -> int:
        with transaction(self._engine, self._location, write=False) as connection:
            return int(connection.execute(query).scalar_one())

    def count(
        self, conditions: Sequence[ColumnElement[bool]] = (), *, limit: int | None = None
    ) -> int:
        """How many transfers match ``conditions`` (with ``limit``: up to ``limit + 1``)."""
        if limit is None:
            return self._scalar(select(func.count()).select_from(transfers).where(*conditions))
        matching = select(transfers.c.id).where(*conditions).limit(limit + 1).subquery()
        return self._scalar(select(func.count()).select_from(matching))

    def running_count(self) -> int:
        return self.count([transfers.c.state.in_(sorted(RUNNING_STATES))])

    def page(self, query: ListQuery) -> TransferPage:
        """The page of transfers ``query`` asks for."""
        conditions = query.conditions(steer=self._location.is_sqlite)
        total = self.count(conditions, limit=COUNT_LIMIT)
        running = self.running_count()
        base = select(*_SUMMARY_COLUMNS).where(*conditions)
        if query.sort != "created":
            return self._offset_page(query, base, total, running)
        ids = transfers.c.id
        # The page is read in "walk" order from the keyset, then shown in display order.
        walk_descending = query.descending
        if query.after is not None:
            base = base.where(ids > query.after if query.descending else ids < query.after)
            walk_descending = not query.descending
        elif query.before is not None:
            base = base.where(ids < query.before if query.descending else ids > query.before)
        elif query.last:
            walk_descending = not query.descending
        order = ids.desc() if walk_descending else ids.asc()
        rows, newer, older = keyset_page(
            self._rows(base.order_by(order).limit(query.size + 1)),
            query.size,
            walked_back=walk_descending != query.descending,
            from_newer=query.before is not None,
            from_older=query.after is not None,
        )
        return TransferPage(rows=rows, total=total, running=running, newer=newer, older=older)

    def _offset_page(
        self, query: ListQuery, base: Select[Any], total: int, running: int
    ) -> TransferPage:
        page = max(1, query.page)
        rows = self._rows(
            base.order_by(*sort_order(query.sort, query.descending))
            .limit(query.size + 1)
            .offset((page - 1) * query.size)
        )
        return TransferPage(
            rows=rows[: query.size],
            total=total,
            running=running,
            has_next=len(rows) > query.size,
            page=page,
        )

    def choices(self) -> dict[str, list[str]]:
        """The mailboxes and workflows in the ledger (for the filter menus), read at most
        every 30 seconds."""
        with self._lock:
            if time.monotonic() - self._choices.at < _CHOICES_TTL and self._choices.values:
                return self._choices.values
        with transaction(self._engine, self._location, write=False) as connection:
            values = {
                "mailbox": sorted(
                    connection.execute(select(transfers.c.mailbox).distinct()).scalars()
                ),
                "workflow": sorted(
                    value
                    for value in connection.execute(
                        select(transfers.c.workflow_id).distinct()
                    ).scalars()
                    if value is not None
                ),
            }
        with self._lock:
            self._choices = _Cached(time.monotonic(), values)
        return values

    def overview(self) -> Overview:
        """Counts by state, the backlog (transfers not finished, by mailbox, direction and
        state), the last transfer of each workflow, the ten latest failures."""
        with transaction(self._engine, self._location, write=False) as connection:
            by_state = {
                row.state: int(row.total)
                for row in connection.execute(
                    select(transfers.c.state, func.count().label("total")).group_by(
                        transfers.c.state
                    )
                )
            }
            backlog = [
                (row.mailbox, row.direction, row.state, int(row.total))
                for row in connection.execute(
                    select(
                        transfers.c.mailbox,
                        transfers.c.direction,
                        transfers.c.state,
                        func.count().label("total"),
                    )
                    .where(transfers.c.state.in_(sorted(RUNNING_STATES)))
                    .group_by(transfers.c.mailbox, transfers.c.direction, transfers.c.state)
                    .order_by(transfers.c.mailbox, transfers.c.direction, transfers.c.state)
                )
            ]
            latest = (  # a scan of the workflow index alone
                select(func.max(transfers.c.id))
                .where(transfers.c.workflow_id.is_not(None))
                .group_by(transfers.c.workflow_id)
            )
            last_per_workflow = [
                _summary(row)
                for row in connection.execute(
                    select(*_SUMMARY_COLUMNS)
                    .where(transfers.c.id.in_(latest))
                    .order_by(transfers.c.workflow_id)
                    .limit(200)
                )
            ]
            recent_failures = [
                _summary(row)
                for row in connection.execute(
                    select(*_SUMMARY_COLUMNS)
                    .where(transfers.c.state == "failed")
                    .order_by(transfers.c.id.desc())
                    .limit(10)
                )
            ]
        return Overview(
            total=sum(by_state.values()),
            by_state=by_state,
            backlog=backlog,
            last_per_workflow=last_per_workflow,
            recent_failures=recent_failures,
        )

    def transfer(self, transfer_id: int) -> TransferRecord | None:
        """The transfer, or None if the ledger has no such id."""
        try:
            return self.ledger.transfer(transfer_id)
        except LedgerError as error:
            if error.code == "not-found":
                return None
            raise

    def detail(self, transfer_id: int, *, event_limit: int | None = 2000) -> TransferDetail | None:
        """The transfer with its chunks and events (the first ``event_limit``), or None."""
        record = self.transfer(transfer_id)
        if record is None:
            return None
        found = self.ledger.events(transfer_id, limit=event_limit)
        total = len(found)
        if event_limit is not None and total >= event_limit:
            total = self._scalar(
                select(func.count()).select_from(events).where(events.c.transfer_id == transfer_id)
            )
        return TransferDetail(record, self.ledger.chunks(transfer_id), found, total)

    def summaries(self, ids: Sequence[int]) -> list[TransferSummary]:
        """The transfers of ``ids`` (those that exist), for the list's live refresh."""
        if not ids:
            return []
        return self._rows(select(*_SUMMARY_COLUMNS).where(transfers.c.id.in_(list(ids))))


__all__ = [
    "ALL_STATES",
    "COUNT_LIMIT",
    "DONE_STATES",
    "PAGE_SIZE",
    "RUNNING_STATES",
    "SORT_KEYS",
    "LedgerView",
    "ListQuery",
    "Overview",
    "SortKey",
    "TransferDetail",
    "TransferPage",
    "sort_order",
    "throughput",
]
