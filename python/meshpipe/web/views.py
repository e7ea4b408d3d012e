"""The pages and JSON answers of the tracking web view (handlers; see :mod:`meshpipe.web`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiMapping

from meshpipe.logs import redact
from meshpipe.models import TrackingInfo
from meshpipe.pages import render
from meshpipe.pages.charts import throughput_chart
from meshpipe.web.detail import (
    TROUBLE_KINDS,
    chunk_rows,
    duration_of,
    evidence,
    progress,
    safe_headers,
    throughput_points,
    timeline,
)
from meshpipe.web.jobs import COUNT_LIMIT as JOB_COUNT_LIMIT
from meshpipe.web.jobs import JOB_STATES, JobQuery
from meshpipe.web.store import (
    ALL_STATES,
    COUNT_LIMIT,
    PAGE_SIZE,
    RUNNING_STATES,
    SORT_KEYS,
    LedgerView,
    ListQuery,
    SortKey,
    throughput,
)

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

Tracker = Callable[[str], Awaitable[TrackingInfo]]
"""Asks MESH for the tracking of a sent message (e.g. ``RetryingClient(client).track``)."""

TRACKING_TIMEOUT: Final = 10.0
MAX_CHUNK_ROWS: Final = 2000


@dataclass(frozen=True, slots=True)
class MailboxSignals:
    """What a running service knows of one mailbox and the ledger does not (times in Unix
    seconds, None when not known)."""

    mailbox: str
    last_poll: float | None = None
    last_handshake: float | None = None
    handshake_ok: bool | None = None
    handshake_error: str | None = None
    certificate_expires: float | None = None
    inbox_backlog: int | None = None
    outbox_backlog: int | None = None
    #: With the fleet: sends handed to its workers and not yet ended, and (only once past
    #: watch's warning threshold) the seconds the longest-stalled of them has not moved.
    fleet_in_flight: int | None = None
    fleet_stalled_seconds: float | None = None
    reports: Mapping[str, int] | None = None  # non-delivery and error reports by MESH code
    ready: bool | None = None


SignalSource = Callable[[], Sequence[MailboxSignals]]
"""Gives the service's signals for the overview (``meshpipe watch`` passes one)."""


@dataclass(frozen=True, slots=True)
class WebContext:
    """What the pages read: the ledger, and what the caller may add."""

    view: LedgerView
    tracker: Tracker | None = None
    signals: SignalSource | None = None


CONTEXT: Final = web.AppKey("web_context", WebContext)

NAV: Final = (("Overview", "/"), ("Transfers", "/transfers"))
#: Shown in the navigation only when the ledger's database holds the fleet's job queue.
JOBS_NAV: Final = ("Jobs", "/jobs")

_COLUMNS: Final[tuple[tuple[str, SortKey | None], ...]] = (
    ("#", "created"),
    ("Dir.", None),
    ("Local id", None),
    ("Message id", None),
    ("Mailbox", "mailbox"),
    ("Counterparty", None),
    ("Workflow", "workflow"),
    ("Subject", None),
    ("Size", "size"),
    ("Codec", None),
    ("State", "state"),
    ("Progress", None),
    ("Started", "created"),
    ("Finished", "finished"),
    ("Throughput", None),
)
_FILTER_KEYS: Final = ("state", "workflow", "mailbox", "direction", "q", "since", "until")


class BadQuery(ValueError):
    """A query parameter the list cannot use (shown as a 400 page naming it)."""


def _date(params: MultiMapping[str], name: str) -> dt.date | None:
    text = params.get(name, "").strip()
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise BadQuery(f"{name}: {text!r} is not a date; give YYYY-MM-DD") from None


def _number(params: MultiMapping[str], name: str) -> int | None:
    text = params.get(name, "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise BadQuery(f"{name}: {text!r} is not a whole number")
    return int(text)


def parse_list_query(params: MultiMapping[str]) -> ListQuery:
    """The list's query from the address's parameters; BadQuery names a wrong one."""
    state = params.get("state") or None
    if state is not None and state not in ALL_STATES:
        raise BadQuery(f"state: {state!r} is not a state; choose one of {', '.join(ALL_STATES)}")
    direction = params.get("direction") or None
    if direction not in (None, "send", "receive"):
        raise BadQuery(f"direction: {direction!r}: choose send or receive")
    sort = params.get("sort") or "created"
    if sort not in SORT_KEYS:
        raise BadQuery(f"sort: {sort!r}: choose one of {', '.join(SORT_KEYS)}")
    order = params.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise BadQuery(f"order: {order!r}: choose asc or desc")
    since, until = _date(params, "since"), _date(params, "until")
    if since and until and until < since:
        raise BadQuery("until is before since: give a date range that runs forwards")
    return ListQuery(
        state=state,
        workflow=params.get("workflow") or None,
        mailbox=params.get("mailbox") or None,
        direction=direction,  # type: ignore[arg-type]
        search=(params.get("q") or "").strip() or None,
        since=since,
        until=until,
        sort=sort,
        descending=order == "desc",
        before=_number(params, "before"),
        after=_number(params, "after"),
        last=params.get("last") == "1",
        page=_number(params, "page") or 1,
        size=PAGE_SIZE,
    )


def _filters(query: ListQuery) -> dict[str, str]:
    values = {
        "state": query.state,
        "workflow": query.workflow,
        "mailbox": query.mailbox,
        "direction": query.direction,
        "q": query.search,
        "since": query.since.isoformat() if query.since else None,
        "until": query.until.isoformat() if query.until else None,
    }
    return {key: value for key, value in values.items() if value}


def _list_url(filters: Mapping[str, str], **extra: str | int) -> str:
    params = {**filters, **{key: str(value) for key, value in extra.items()}}
    return "/transfers" + (f"?{urlencode(params)}" if params else "")


async def _call(function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    return await asyncio.to_thread(function, *args, **kwargs)


def _view(request: web.Request) -> LedgerView:
    return request.app[CONTEXT].view


async def _render(
    template: str, request: web.Request, context: dict[str, Any], *, status: int = 200
) -> web.Response:
    """The page, with the Jobs link in the navigation when the fleet's queue is there."""
    jobs = await _call(_view(request).jobs.available)
    nav = [*NAV, JOBS_NAV] if jobs else list(NAV)
    return render(template, request, {**context, "nav": nav, "jobs_in_use": jobs}, status=status)


async def _bad_request(request: web.Request, message: str) -> web.Response:
    context = {"title": "Bad request", "message": message}
    return await _render("web/error.html", request, context, status=400)


async def _not_found(request: web.Request, transfer_id: int) -> web.Response:
    message = f"The ledger has no transfer #{transfer_id}; find it in the list of transfers."
    context = {"title": "Not found", "message": message}
    return await _render("web/error.html", request, context, status=404)


async def overview_page(request: web.Request) -> web.Response:
    """The overview: backlog, last message per workflow, failures, and the service's signals."""
    view = _view(request)
    overview = await _call(view.overview)
    source = request.app[CONTEXT].signals
    signals = list(source()) if source is not None else []
    now = dt.datetime.now(dt.UTC).timestamp()
    return await _render(
        "web/overview.html",
        request,
        {
            "overview": overview,
            "signals": signals,
            "now": now,
            "ledger": view.location,
            "throughput": throughput,
        },
    )


async def transfers_page(request: web.Request) -> web.Response:
    """The list of transfers: filters, sortable columns, keyset pages, live refresh."""
    try:
        query = parse_list_query(request.query)
    except BadQuery as error:
        return await _bad_request(request, str(error))
    view = _view(request)
    page, choices = await asyncio.gather(_call(view.page, query), _call(view.choices))
    filters = _filters(query)
    order = "desc" if query.descending else "asc"
    sorted_by: dict[str, str] = {}
    if query.sort != "created" or not query.descending:
        sorted_by = {"sort": query.sort, "order": order}
    headings: list[tuple[str, str | None, str | None]] = []
    for label, key in _COLUMNS:
        if key is None:
            headings.append((label, None, None))
            continue
        current = query.sort == key and label != "Started"
        flip = "asc" if current and query.descending else "desc"
        aria = ("descending" if query.descending else "ascending") if current else None
        headings.append((label, _list_url(filters, sort=key, order=flip), aria))
    pager: dict[str, str | None]
    if query.sort == "created":
        pager = {
            "first": _list_url(filters, **sorted_by) if page.newer is not None else None,
            "newer": _list_url(filters, **sorted_by, after=page.newer)
            if page.newer is not None
            else None,
            "older": _list_url(filters, **sorted_by, before=page.older)
            if page.older is not None
            else None,
            "last": _list_url(filters, **sorted_by, last=1) if page.older is not None else None,
        }
    else:
        pager = {
            "first": _list_url(filters, **sorted_by) if page.page > 1 else None,
            "newer": _list_url(filters, **sorted_by, page=page.page - 1) if page.page > 1 else None,
            "older": _list_url(filters, **sorted_by, page=page.page + 1) if page.has_next else None,
            "last": None,
        }
    running_ids = [row.id for row in page.rows if row.state in RUNNING_STATES]
    refresh = (
        "/transfers.json?" + urlencode({"ids": ",".join(map(str, running_ids))})
        if running_ids
        else None
    )
    return await _render(
        "web/transfers.html",
        request,
        {
            "page": page,
            "query": query,
            "filters": filters,
            "choices": choices,
            "states": ALL_STATES,
            "headings": headings,
            "pager": pager,
            "refresh": refresh,
            "running_states": RUNNING_STATES,
            "count_limit": COUNT_LIMIT,
            "throughput": throughput,
        },
    )


async def transfers_json(request: web.Request) -> web.Response:
    """Live refresh of the list: state and progress of the running transfers ``ids``; a
    reload once one of them has finished."""
    text = request.query.get("ids", "")
    ids = [int(item) for item in text.split(",") if item.isdigit()][:PAGE_SIZE]
    rows = await _call(_view(request).summaries, ids)
    fields: dict[str, Any] = {}
    running = 0
    for row in rows:
        running += row.state in RUNNING_STATES
        total = row.chunk_count or 0
        fields[f"{row.id}.state"] = row.state
        fields[f"{row.id}.chunks"] = f"{row.chunks_done}/{total}" if total else str(row.chunks_done)
        fields[f"{row.id}.percent"] = round(100.0 * row.chunks_done / total, 1) if total else 0
    # once one of them has finished, reload: its finish, throughput and newer transfers show
    finished = running < len(rows)
    return web.json_response(
        {"fields": fields, "done": running == 0, "reload": finished, "running": running}
    )


def _transfer_id(request: web.Request) -> int:
    return int(request.match_info["id"])


async def _tracking(request: web.Request, message_id: str | None) -> dict[str, Any]:
    tracker = request.app[CONTEXT].tracker
    if tracker is None:
        return {"configured": False, "error": None, "fields": {}}
    if message_id is None:
        return _tracking_error("no message id yet: MESH has not accepted chunk 1")
    try:
        async with asyncio.timeout(TRACKING_TIMEOUT):
            info: TrackingInfo = await tracker(message_id)
    except TimeoutError:
        return _tracking_error(f"MESH did not answer within {TRACKING_TIMEOUT:g} s")
    except Exception as error:  # shown as text; the page still renders
        logger.info("tracking %s failed: %s", message_id, redact(str(error)))
        return _tracking_error(redact(str(error)))
    fields = {
        "status": info.status,
        "success": {True: "yes", False: "no", None: None}[info.status_success],
        "status code": info.status_code,
        "event": info.status_event,
        "description": info.status_description,
        "status time": info.status_timestamp,
        "uploaded": info.upload_timestamp,
        "expires": info.expiry_time,
        "recipient": info.recipient,
    }
    for key, value in info.raw.items():
        if "org" in key.lower() and value not in (None, ""):
            fields[key.replace("_", " ")] = str(value)
    shown = {key: redact(str(value)) for key, value in fields.items() if value not in (None, "")}
    return {"configured": True, "error": None, "fields": shown, "raw": dict(info.raw)}


def _tracking_error(message: str) -> dict[str, Any]:
    return {"configured": True, "error": message, "fields": {}}


async def transfer_page(request: web.Request) -> web.Response:
    """One transfer: facts, progress, chunks, timeline, retries, chart, MESH tracking."""
    transfer_id = _transfer_id(request)
    detail = await _call(_view(request).detail, transfer_id)
    if detail is None:
        return await _not_found(request, transfer_id)
    record = detail.record
    rows = chunk_rows(record, detail.chunks)
    entries = timeline(detail.events, rows)
    tracking = await _tracking(request, record.message_id) if record.direction == "send" else None
    chart = throughput_chart(
        throughput_points(record, rows),
        chart_id="throughput",
        title=f"Throughput of transfer #{record.id} over time",
    )
    running = record.state in RUNNING_STATES
    view = _view(request)
    jobs = await _call(view.jobs.of_transfer, record.id) if await _call(view.jobs.available) else []
    return await _render(
        "web/transfer.html",
        request,
        {
            "record": record,
            "headers": safe_headers(record.headers),
            "rows": rows[:MAX_CHUNK_ROWS],
            "rows_total": len(rows),
            "entries": entries,
            "events_total": detail.events_total,
            "trouble": [entry for entry in entries if entry.kind in TROUBLE_KINDS],
            "chart": chart,
            "tracking": tracking,
            "progress": progress(record)["fields"],
            "running": running,
            "refresh": f"/transfers/{record.id}.json?shown={record.state}" if running else None,
            "duration": duration_of(record),
            "throughput": throughput(record),
            "jobs": jobs,
        },
    )


async def transfer_json(request: web.Request) -> web.Response:
    """Live progress of one transfer; ``reload`` once its state differs from ``shown``."""
    transfer_id = _transfer_id(request)
    record = await _call(_view(request).transfer, transfer_id)
    if record is None:
        raise web.HTTPNotFound(text=f"no transfer #{transfer_id}\n")
    answer = progress(record)
    shown = request.query.get("shown")
    answer["done"] = not answer["running"]
    answer["reload"] = shown is not None and shown != record.state
    return web.json_response(answer)


async def evidence_json(request: web.Request) -> web.Response:
    """The evidence bundle of one transfer, as a download."""
    transfer_id = _transfer_id(request)
    view = _view(request)
    detail = await _call(view.detail, transfer_id, event_limit=None)
    if detail is None:
        return await _not_found(request, transfer_id)
    record = detail.record
    tracking = None
    if record.direction == "send":
        found = await _tracking(request, record.message_id)
        tracking = found if found.get("configured") else None
        if tracking is not None:
            tracking = {key: value for key, value in tracking.items() if key != "configured"}
    bundle = evidence(
        record,
        detail.chunks,
        detail.events,
        ledger=view.location,
        generated_at=dt.datetime.now(dt.UTC),
        tracking=tracking,
    )
    name = f"meshpipe-transfer-{record.id}-evidence.json"
    return web.Response(
        text=json.dumps(bundle, indent=2, ensure_ascii=False) + "\n",
        content_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def parse_job_query(params: MultiMapping[str]) -> JobQuery:
    """The jobs page's query from the address's parameters; BadQuery names a wrong one."""
    state = params.get("state") or None
    if state is not None and state not in JOB_STATES:
        raise BadQuery(
            f"state: {state!r} is not a job state; choose one of {', '.join(JOB_STATES)}"
        )
    queue = (params.get("queue") or "").strip() or None
    if queue is not None and len(queue) > 128:
        raise BadQuery("queue: a queue's name has at most 128 characters")
    return JobQuery(
        state=state, queue=queue, before=_number(params, "before"), after=_number(params, "after")
    )


def _jobs_url(query: JobQuery, **extra: int) -> str:
    values = {"state": query.state, "queue": query.queue, **extra}
    params = {key: str(value) for key, value in values.items() if value is not None}
    return "/jobs" + (f"?{urlencode(params)}" if params else "")


def _no_jobs_message(view: LedgerView) -> str:
    if view.jobs.is_sqlite:
        return (
            f"The fleet is not in use: the ledger {view.location} is a SQLite file, and the "
            "fleet (meshpipe worker, meshpipe submit) keeps its job queue in a PostgreSQL "
            "ledger. There are no jobs to show."
        )
    return (
        f"The fleet is not in use on this ledger ({view.location}): its database has no job "
        "queue yet. The first meshpipe worker or meshpipe submit on it creates the queue's "
        "tables; this page shows their jobs from then on."
    )


async def jobs_page(request: web.Request) -> web.Response:
    """The fleet's jobs, newest first: counts by state, filters by state and mailbox's
    queue, each job's task, transfer, attempts, worker, times, and a failed job's reason."""
    view = _view(request)
    if not await _call(view.jobs.available):
        context = {"title": "No jobs", "message": _no_jobs_message(view)}
        return await _render("web/error.html", request, context, status=404)
    try:
        query = parse_job_query(request.query)
    except BadQuery as error:
        return await _bad_request(request, str(error))
    page = await _call(view.jobs.page, query)
    filtered = JobQuery(state=query.state, queue=query.queue)
    pager = {
        "first": _jobs_url(filtered) if page.newer is not None else None,
        "newer": _jobs_url(filtered, after=page.newer) if page.newer is not None else None,
        "older": _jobs_url(filtered, before=page.older) if page.older is not None else None,
    }
    states = [
        (state, page.counts.get(state, 0), _jobs_url(JobQuery(state=state, queue=query.queue)))
        for state in JOB_STATES
    ]
    return await _render(
        "web/jobs.html",
        request,
        {
            "page": page,
            "query": query,
            "states": states,
            "job_states": JOB_STATES,
            "filtered": query.state is not None or query.queue is not None,
            "pager": pager,
            "count_limit": JOB_COUNT_LIMIT,
            "now": dt.datetime.now(dt.UTC),
        },
    )


def routes() -> list[web.RouteDef]:
    """Every page of the web view (GET only)."""
    return [
        web.get("/", overview_page, name="overview"),
        web.get("/transfers", transfers_page, name="transfers"),
        web.get("/transfers.json", transfers_json),
        web.get(r"/transfers/{id:\d+}", transfer_page, name="transfer"),
        web.get(r"/transfers/{id:\d+}.json", transfer_json),
        web.get(r"/transfers/{id:\d+}/evidence.json", evidence_json),
        web.get("/jobs", jobs_page, name="jobs"),
    ]


__all__ = [
    "CONTEXT",
    "JOBS_NAV",
    "NAV",
    "BadQuery",
    "MailboxSignals",
    "SignalSource",
    "Tracker",
    "WebContext",
    "parse_job_query",
    "parse_list_query",
    "routes",
]
