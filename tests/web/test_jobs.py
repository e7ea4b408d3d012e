"""The fleet's jobs in the web view (a real aiohttp server on loopback, a real PostgreSQL
ledger with procrastinate's schema): jobs really deferred by ``submit`` and procrastinate's
App, moved through their states by procrastinate's own job manager, and a poison job failed
by a real worker process; the page lists them by state, filters by state and queue, links
each to its transfer, escapes the ledger's text, and a transfer's page shows its jobs; the
browser sees the page with no script or CSP error. A SQLite ledger, or a PostgreSQL one
without the queue, has no Jobs link, and the page says why."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from markupsafe import escape

pytest.importorskip("procrastinate")

from procrastinate.jobs import Status

from meshpipe.fleet import queue
from meshpipe.fleet.submit import submit
from meshpipe.headers import SendHeaders
from meshpipe.ledger import Ledger
from meshpipe.synthetic import write_csv
from meshpipe.units import MiB
from meshpipe.web import LedgerView, build_web_app
from meshpipe.web import jobs as web_jobs
from tests.browser import DESKTOP, PHONE, Pages, check_html, check_links, horizontal_overflow
from tests.fleet.conftest import (  # noqa: F401 (fixtures of the fleet's tests)
    Fleet,
    fleet,
    fleet_db,
    mesh_url,
    peer_name,
    serve,
    wait_for_send,
    workflow,
)
from tests.ledger.postgres import PostgresServer
from tests.web.ledgers import checksum, sample_ledger

SENDER = "X26ABC1"
OTHER = "X26ABC9"
HOSTILE_REASON = '<script>alert("reason")</script> chunk 1 refused'


async def get(base: str, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(base + path) as answer:
        return answer.status, await answer.text()


def rows_of(page: str, table: str = "jobs") -> dict[int, str]:
    """The rows of the table ``table``: job id -> the row's HTML."""
    body = page.split(f'<table id="{table}">', 1)[1].split("</table>", 1)[0]
    return {
        int(found.group(1)): found.group(2)
        for found in re.finditer(r'<tr id="job-(\d+)">(.*?)</tr>', body, re.S)
    }


def state_of(row: str) -> str:
    found = re.search(r'<span class="state [^"]*">(\w+)</span>', row)
    assert found is not None, row
    return found.group(1)


@dataclass
class Queued:
    """Jobs of four transfers in each state (job ids by what they are)."""

    location: str
    transfers: dict[str, int]
    jobs: dict[str, int]


async def _submit(location: str, mailbox: str, source: Path, local_id: str) -> int:
    submitted = await submit(
        location,
        mailbox,
        source,
        SendHeaders(to="X26ABC2", workflow_id="WF_JOBS", local_id=local_id),
        chunk_size=5 * MiB,
    )
    return submitted.transfer_id


@pytest.fixture
async def queued(postgres_server: PostgresServer, tmp_path: Path) -> Queued:
    """Sends submitted for real (their chunk-1 jobs deferred), a range job deferred through
    procrastinate's App, and the jobs moved by procrastinate's job manager as a worker would:
    one succeeded (its chunk 1 recorded by worker ``w-alpha``), one retried then failed (its
    send failed in the ledger with a hostile reason), one running, one cancelled, one
    waiting."""
    location = postgres_server.create_database("webjobs")
    source = write_csv(tmp_path / "extract.csv", 12 * MiB)
    transfers = {
        name: await _submit(location, mailbox, source, f"jobs-{name}")
        for name, mailbox in (("done", SENDER), ("failed", SENDER), ("running", SENDER))
    }
    transfers["cancelled"] = await _submit(location, OTHER, source, "jobs-cancelled")
    app = queue.make_app(location)
    async with app.open_async():
        await app.configure_task(queue.SEND_RANGE, queue=queue.queue_name(SENDER)).defer_async(
            transfer_id=transfers["done"], first=2, last=2
        )
        manager = app.job_manager
        worker = await manager.register_worker()
        queues = [queue.queue_name(SENDER)]
        jobs: dict[str, int] = {}
        done = await manager.fetch_job(queues, worker)
        assert done is not None and done.task_kwargs["transfer_id"] == transfers["done"]
        await manager.finish_job(done, Status.SUCCEEDED, delete_job=False)
        failed = await manager.fetch_job(queues, worker)
        assert failed is not None and failed.task_kwargs["transfer_id"] == transfers["failed"]
        await manager.retry_job(failed)
        failed = await manager.fetch_job(queues, worker)
        assert failed is not None and failed.task_kwargs["transfer_id"] == transfers["failed"]
        await manager.finish_job(failed, Status.FAILED, delete_job=False)
        running = await manager.fetch_job(queues, worker)
        assert running is not None and running.task_kwargs["transfer_id"] == transfers["running"]
        row = await app.connector.execute_query_one_async(
            "SELECT id FROM procrastinate_jobs WHERE queue_name = %(queue)s",
            queue=queue.queue_name(OTHER),
        )
        await manager.cancel_job_by_id_async(row["id"])
        waiting = await app.connector.execute_query_one_async(
            "SELECT id FROM procrastinate_jobs WHERE task_name = %(task)s",
            task=queue.SEND_RANGE,
        )
        assert done.id and failed.id and running.id
        jobs = {
            "done": done.id,
            "failed": failed.id,
            "running": running.id,
            "cancelled": row["id"],
            "waiting": waiting["id"],
        }
    with Ledger.open(location) as ledger:
        ledger.chunk_sent(transfers["done"], 1, checksum(1), 1000, worker="w-alpha")
        ledger.set_message_id(transfers["done"], "20261204000000000000_JOBS01")
        ledger.mark_failed(transfers["failed"], HOSTILE_REASON)
    return Queued(location, transfers, jobs)


@pytest.fixture
async def jobs_site(queued: Queued) -> AsyncIterator[str]:
    view = LedgerView(queued.location)
    try:
        async with TestServer(build_web_app(view), host="127.0.0.1") as server:
            yield str(server.make_url("")).rstrip("/")
    finally:
        view.close()


def test_the_task_names_are_the_fleets() -> None:
    assert web_jobs.TASK_NAMES == (
        queue.SEND_FIRST,
        queue.SEND_RANGE,
        queue.SEND_LAST,
        queue.POLL,
        queue.RECEIVE_RANGE,
        queue.RECEIVE_FINAL,
    )
    assert queue.queue_name("x26abc1").removeprefix("meshpipe-") == "X26ABC1"


def test_task_labels() -> None:
    label = web_jobs.task_label
    assert label(queue.SEND_FIRST, {"transfer_id": 1}) == "send chunk 1"
    assert label(queue.SEND_RANGE, {"first": 2, "last": 5}) == "send chunks 2-5"
    assert label(queue.SEND_RANGE, {"first": 4, "last": 4}) == "send chunk 4"
    assert label(queue.SEND_LAST, {}, 9) == "send last chunk (9)"
    assert label(queue.POLL, {"timestamp": 1}) == "poll the mailbox"
    assert label(queue.RECEIVE_RANGE, {"first": 2, "last": 3}) == "receive chunks 2-3"
    assert label(queue.RECEIVE_FINAL, {}) == "receive final check"
    assert label("someone.else", {}) == "someone.else"


async def test_the_page_lists_every_job_in_its_state(jobs_site: str, queued: Queued) -> None:
    status, page = await get(jobs_site, "/jobs")
    assert status == 200
    assert '<a href="/jobs">Jobs</a>' in page or 'href="/jobs" aria-current' in page
    rows = rows_of(page)
    jobs = queued.jobs
    assert {job: state_of(rows[job]) for job in rows} == {
        jobs["done"]: "succeeded",
        jobs["failed"]: "failed",
        jobs["running"]: "doing",
        jobs["cancelled"]: "cancelled",
        jobs["waiting"]: "todo",
    }
    assert list(rows) == sorted(rows, reverse=True)  # newest first
    assert "send chunk 1" in rows[jobs["done"]]
    assert "send chunk 2" in rows[jobs["waiting"]]
    assert f'<a href="/transfers/{queued.transfers["done"]}">' in rows[jobs["done"]]
    assert "w-alpha" in rows[jobs["done"]]  # the ledger's worker of chunk 1
    assert "queue worker #" in rows[jobs["running"]]  # procrastinate's worker, still running
    assert OTHER in rows[jobs["cancelled"]]
    failed = rows[jobs["failed"]]
    assert re.search(r'<td class="number">2</td>', failed)  # tried twice
    assert str(escape(HOSTILE_REASON)) in failed
    assert "<script>" not in page
    assert "deferred for retry" in failed  # procrastinate's events of the retried job
    counts = dict(re.findall(r'<span data-state="(\w+)">([^<]+)</span>', page))
    assert counts == {
        "todo": "1",
        "doing": "1",
        "failed": "1",
        "succeeded": "1",
        "cancelled": "1",
        "aborted": "0",
    }


async def test_filters_by_state_and_queue(jobs_site: str, queued: Queued) -> None:
    _, page = await get(jobs_site, "/jobs?state=failed")
    assert list(rows_of(page)) == [queued.jobs["failed"]]
    _, page = await get(jobs_site, f"/jobs?queue={queue.queue_name(OTHER)}")
    assert list(rows_of(page)) == [queued.jobs["cancelled"]]
    counts = dict(re.findall(r'<span data-state="(\w+)">([^<]+)</span>', page))
    assert counts["cancelled"] == "1" and counts["todo"] == "0"  # counts under the queue filter
    _, page = await get(jobs_site, f"/jobs?queue={queue.queue_name(OTHER)}&state=todo")
    assert rows_of(page) == {} and "No job matches." in page
    assert f'<option value="{queue.queue_name(OTHER)}" selected>' in page
    status, page = await get(jobs_site, "/jobs?state=exploded")
    assert status == 400 and "not a job state" in page


async def test_pages_by_keyset(jobs_site: str, queued: Queued) -> None:
    newest = sorted(queued.jobs.values(), reverse=True)
    _, page = await get(jobs_site, f"/jobs?before={newest[1]}")
    assert list(rows_of(page)) == newest[2:]
    assert f'href="/jobs?after={newest[2]}"' in page
    _, page = await get(jobs_site, f"/jobs?after={newest[2]}")
    assert list(rows_of(page)) == newest[:2]


async def test_a_transfers_page_shows_its_jobs(jobs_site: str, queued: Queued) -> None:
    _, page = await get(jobs_site, f"/transfers/{queued.transfers['done']}")
    rows = rows_of(page, "transfer-jobs")
    assert list(rows) == [queued.jobs["done"], queued.jobs["waiting"]]  # oldest first
    assert state_of(rows[queued.jobs["done"]]) == "succeeded"
    _, page = await get(jobs_site, f"/transfers/{queued.transfers['failed']}")
    assert str(escape(HOSTILE_REASON)) in rows_of(page, "transfer-jobs")[queued.jobs["failed"]]


async def without_jobs(location: str, other_page: str) -> tuple[str, int, str]:
    """``other_page`` and ``/jobs`` from a view of a ledger the fleet does not use."""
    view = LedgerView(location)
    try:
        async with TestServer(build_web_app(view), host="127.0.0.1") as server:
            base = str(server.make_url("")).rstrip("/")
            _, other = await get(base, other_page)
            status, page = await get(base, "/jobs")
            return other, status, page
    finally:
        view.close()


async def test_sqlite_ledger_has_no_jobs(tmp_path: Path) -> None:
    location = str(tmp_path / "ledger.sqlite3")
    sample_ledger(location, tmp_path)
    overview, status, page = await without_jobs(location, "/")
    assert 'href="/jobs"' not in overview
    assert status == 404
    assert "The fleet is not in use" in page and "SQLite" in page


async def test_postgresql_without_the_queue_has_no_jobs(postgres_server: PostgresServer) -> None:
    location = postgres_server.create_database("noqueue")
    Ledger.open(location).close()
    transfers, status, page = await without_jobs(location, "/transfers")
    assert 'href="/jobs"' not in transfers
    assert status == 404
    assert "has no job" in page and "meshpipe worker" in page


def test_a_poison_job_shows_failed_with_its_reason(
    fleet: Fleet,  # noqa: F811 (the fleet tests' fixture)
    tmp_path: Path,
    workflow: str,  # noqa: F811
) -> None:
    source = write_csv(tmp_path / "extract.csv", 12 * MiB)
    submitted = fleet.submit(source, workflow, chunks_per_job=2)
    source.unlink()
    fleet.start("w1")
    with Ledger.open(fleet.ledger) as ledger:
        assert wait_for_send(ledger, submitted.transfer_id, fleet).state == "failed"
    view = LedgerView(fleet.ledger)
    try:
        page = view.jobs.page(web_jobs.JobQuery(state="failed"))
        (row,) = page.rows
        assert (row.task, row.state, row.attempts) == ("send chunk 1", "failed", 1)
        assert row.transfer_id == submitted.transfer_id
        assert row.reason is not None and "chunk 1 failed on worker w1 after 1 try" in row.reason
        assert row.finished_at is not None and row.started_at is not None
        assert [event.kind for event in row.events] == ["deferred", "started", "failed"]
        assert page.counts["failed"] == 1
    finally:
        view.close()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280x800", "390x844"])
async def test_the_browser_sees_the_jobs_page(
    jobs_site: str, queued: Queued, pages: Pages, viewport: tuple[int, int]
) -> None:
    watched = await pages.open(viewport)
    page = watched.page
    await page.goto(jobs_site + "/")
    async with page.expect_navigation():
        await page.click("nav >> text=Jobs")
    assert page.url == jobs_site + "/jobs"
    assert await page.locator("#jobs tbody tr").count() == 5
    async with page.expect_navigation():  # the filter form sends itself (script)
        await page.select_option("select[name=state]", "failed")
    assert page.url == jobs_site + "/jobs?state=failed"
    assert HOSTILE_REASON in await page.locator("#jobs").inner_text()
    answer = await page.goto(jobs_site + "/jobs")
    assert answer is not None and answer.status == 200
    assert await horizontal_overflow(page) == 0
    checked = check_html(await answer.text(), jobs_site + "/jobs")
    assert checked.problems == []
    assert await check_links(checked.links) == []
    await page.wait_for_timeout(300)  # give a would-be script its chance to run
    watched.assert_clean()
