"""meshpipe.web over HTTP (a real aiohttp server on loopback, a real SQLite ledger): the
list filters, sorts and pages by keyset; one transfer shows chunks, checksums, the retry and
the chart; remote text is escaped; the evidence bundle downloads with every checksum and no
secret; wrong input is refused with a message naming it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from meshpipe.models import TrackingInfo
from meshpipe.server.process import server_process
from meshpipe.synthetic import write_csv
from meshpipe.web import LedgerView, MailboxSignals, build_web_app
from meshpipe.web.cli import main as web_main
from meshpipe.web.store import ListQuery
from tests.client.conftest import RECIPIENT, SENDER
from tests.peers import SANDBOX_PASSWORD, SANDBOX_SHARED_KEY, free_port
from tests.web.ledgers import HOSTILE_FILE, HOSTILE_SUBJECT, Sample, bulk_ledger, sample_ledger


@dataclass
class Site:
    base: str
    sample: Sample
    view: LedgerView

    async def get(self, path: str) -> tuple[int, str, aiohttp.typedefs.LooseHeaders]:
        async with aiohttp.ClientSession() as session, session.get(self.base + path) as answer:
            return answer.status, await answer.text(), dict(answer.headers)


async def tracked(message_id: str) -> TrackingInfo:
    return TrackingInfo.from_json(
        {
            "message_id": message_id,
            "status": "Accepted",
            "status_success": True,
            "status_event": "TRANSFER",
            "recipient": "X26ABC002",
            "recipient_org_code": "<b>ORG</b>",
        }
    )


def signals() -> list[MailboxSignals]:
    return [
        MailboxSignals("X26ABC001", last_poll=1.7e9, reports={"14": 2}, ready=True),
        MailboxSignals("X26ABC003", fleet_in_flight=3, fleet_stalled_seconds=412.7),
    ]


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    location = str(tmp_path / "ledger.sqlite3")
    sample = sample_ledger(location, tmp_path)
    view = LedgerView(location)
    app = build_web_app(view, tracker=tracked, signals=signals)
    try:
        async with TestServer(app, host="127.0.0.1") as server:
            yield Site(str(server.make_url("")), sample, view)
    finally:
        view.close()


def row_ids(html: str) -> list[int]:
    return [int(found) for found in re.findall(r'<tr id="transfer-(\d+)">', html)]


async def test_the_list_filters_and_sorts(site: Site) -> None:
    status, html, _ = await site.get("/transfers")
    assert status == 200
    assert row_ids(html) == [4, 3, 2, 1]  # newest first
    assert "4 transfers" in html and "1 running" in html
    _, html, _ = await site.get("/transfers?state=completed")
    assert row_ids(html) == [site.sample.sent.id]
    _, html, _ = await site.get("/transfers?direction=receive")
    assert row_ids(html) == [site.sample.hostile.id]
    _, html, _ = await site.get("/transfers?mailbox=X26ABC009")
    assert row_ids(html) == [site.sample.failed.id]
    _, html, _ = await site.get("/transfers?q=extract-2")
    assert row_ids(html) == [site.sample.running.id]
    _, html, _ = await site.get("/transfers?q=20261204000000000000_AAAAAA")
    assert row_ids(html) == [site.sample.sent.id]
    _, html, _ = await site.get("/transfers?q=%231")
    assert row_ids(html) == [1]
    _, html, _ = await site.get("/transfers?since=2000-01-01&until=2000-01-02")
    assert row_ids(html) == [] and "No transfer matches." in html
    _, html, _ = await site.get("/transfers?sort=created&order=asc")
    assert row_ids(html) == [1, 2, 3, 4]
    # the running send refreshes itself; finished rows are not polled
    assert 'data-refresh="/transfers.json?ids=3"' in html


async def test_wrong_list_parameters_are_refused_by_name(site: Site) -> None:
    for query, named in (
        ("state=lost", "state: &#39;lost&#39; is not a state"),
        ("since=yesterday", "since: &#39;yesterday&#39; is not a date"),
        ("sort=colour", "sort: &#39;colour&#39;"),
        ("before=x", "before: &#39;x&#39; is not a whole number"),
        ("since=2026-02-02&until=2026-01-01", "until is before since"),
    ):
        status, html, _ = await site.get(f"/transfers?{query}")
        assert status == 400, query
        assert named in html, (query, html)


def test_keyset_pages_walk_the_whole_list(ledger_location: str) -> None:
    """On SQLite and PostgreSQL: keyset pages both ways, filters, counts, sorting."""
    location = ledger_location
    bulk_ledger(location, 230)
    view = LedgerView(location)
    try:
        seen: list[int] = []
        page = view.page(ListQuery())
        while True:
            seen.extend(row.id for row in page.rows)
            if page.older is None:
                break
            page = view.page(ListQuery(before=page.older))
        assert seen == list(range(230, 0, -1))
        last = view.page(ListQuery(last=True))
        assert [row.id for row in last.rows] == list(range(50, 0, -1))
        assert last.older is None and last.newer == 50
        newer = view.page(ListQuery(after=last.newer))
        assert [row.id for row in newer.rows] == list(range(100, 50, -1))
        assert view.count(limit=100) == 101 and view.count() == 230
        filtered = view.page(ListQuery(workflow="WF_03", direction="send"))
        assert filtered.total == len([i for i in range(230) if i % 25 == 3 and i % 3 != 0])
        assert all(row.workflow_id == "WF_03" for row in filtered.rows)
        by_size = view.page(ListQuery(sort="size", descending=True))
        sizes = [row.size or 0 for row in by_size.rows]
        assert sizes == sorted(sizes, reverse=True) and by_size.has_next
        failed = view.page(ListQuery(state="failed", workflow="WF_05", mailbox="X26ABC001"))
        expected = [i + 1 for i in range(229, -1, -1) if i % 6 == 5 and i % 25 == 5 and i % 4 == 1]
        assert [row.id for row in failed.rows] == expected and failed.total == len(expected)
        found = view.page(ListQuery(search="local-17", direction="send"))
        assert [row.id for row in found.rows] == [18]
        overview = view.overview()
        assert overview.total == 230 and len(overview.last_per_workflow) == 25
    finally:
        view.close()


async def test_one_transfer_shows_chunks_retry_chart_and_tracking(site: Site) -> None:
    status, html, _ = await site.get(f"/transfers/{site.sample.sent.id}")
    assert status == 200
    for number in range(1, 5):
        assert f"{number:032x}" in html  # every chunk's xxh3-128
    assert html.count('<tr><td class="number">') == 4
    assert "chunk 3 · attempt: 1; error: HTTP 503 from MESH" in html
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img"' in html
    assert "<polyline" in html
    assert "status</dt><dd>Accepted" in html and "event</dt><dd>TRANSFER" in html
    assert "&lt;b&gt;ORG&lt;/b&gt;" in html  # the recipient organisation, escaped
    status, html, _ = await site.get(f"/transfers/{site.sample.hostile.id}")
    assert "MESH tracking" not in html  # receives are not tracked


async def test_remote_text_is_shown_as_text(site: Site) -> None:
    for path in (f"/transfers/{site.sample.hostile.id}", "/transfers", "/"):
        _, html, _ = await site.get(path)
        assert HOSTILE_SUBJECT not in html and HOSTILE_FILE not in html, path
        assert "<script>alert" not in html and "<img src=x" not in html
    _, html, _ = await site.get(f"/transfers/{site.sample.hostile.id}")
    assert '<dd id="subject">&lt;script&gt;alert(&#34;subject&#34;)&lt;/script&gt;</dd>' in html


async def test_progress_json_reloads_on_a_state_change(site: Site) -> None:
    running = site.sample.running
    status, text, _ = await site.get(f"/transfers/{running.id}.json?shown=uploading")
    answer = json.loads(text)
    assert status == 200
    assert answer["fields"]["chunks"] == "1 of 4" and answer["fields"]["percent"] == 25.0
    assert answer["done"] is False and answer["reload"] is False
    site.view.ledger.chunk_sent(running, 2, "f" * 32, 100)
    site.view.ledger.chunk_accepted(running, 2)
    _, text, _ = await site.get(f"/transfers/{running.id}.json?shown=uploading")
    assert json.loads(text)["fields"]["chunks"] == "2 of 4"
    _, text, _ = await site.get(f"/transfers.json?ids={running.id}")
    assert json.loads(text) == {
        "fields": {
            f"{running.id}.state": "uploading",
            f"{running.id}.chunks": "2/4",
            f"{running.id}.percent": 50.0,
        },
        "done": False,
        "reload": False,
        "running": 1,
    }
    site.view.ledger.mark_failed(running, "stopped by the test")
    _, text, _ = await site.get(f"/transfers.json?ids={running.id}")
    assert json.loads(text)["reload"] is True  # the list reloads to show how it ended
    _, text, _ = await site.get(f"/transfers/{running.id}.json?shown=uploading")
    answer = json.loads(text)
    assert answer["done"] is True and answer["reload"] is True
    status, _, _ = await site.get("/transfers/999.json")
    assert status == 404


async def test_the_evidence_bundle(site: Site) -> None:
    status, text, headers = await site.get(f"/transfers/{site.sample.sent.id}/evidence.json")
    assert status == 200
    assert headers["Content-Disposition"] == (
        f'attachment; filename="meshpipe-transfer-{site.sample.sent.id}-evidence.json"'
    )
    bundle = json.loads(text)
    assert bundle["format"] == "meshpipe-evidence/1"
    assert [chunk["xxh3_128"] for chunk in bundle["chunks"]] == [f"{n:032x}" for n in range(1, 5)]
    assert bundle["transfer"]["headers"]["mex-Subject"] == "nightly"
    kinds = [event["kind"] for event in bundle["events"]]
    assert kinds[0] == "created" and "retry" in kinds and kinds[-1] == "completed"
    assert bundle["tracking"]["fields"]["status"] == "Accepted"
    lowered = text.lower()
    assert "authorization" not in lowered and "password" not in lowered
    assert "owner_token" not in lowered


async def test_the_overview(site: Site) -> None:
    status, html, _ = await site.get("/")
    assert status == 200
    assert "WF_NIGHTLY" in html and "WF_OTHER" in html
    assert "MESH refused the recipient (code 12)" in html  # a recent failure
    assert "code 14: 2" in html  # the service's signals
    assert "(3 with the fleet)" in html and "no progress for 412 s" in html
    assert html.count("with the fleet") == 1  # not for a mailbox that has none
    assert '<a href="/transfers?mailbox=X26ABC001&amp;direction=send&amp;state=uploading">' in html


def test_the_command_refuses_a_remote_listen_without_a_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESHPIPE_WEB_TOKEN", raising=False)
    location = tmp_path / "ledger.sqlite3"
    assert web_main(["--ledger", str(location)]) == 2
    assert f"no ledger at {location}" in capsys.readouterr().err
    bulk_ledger(str(location), 1)
    assert web_main(["--ledger", str(location), "--listen", "0.0.0.0:0"]) == 2
    assert "is not a loopback address and no token is set" in capsys.readouterr().err


async def test_watch_serves_the_view_beside_its_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshpipe.watch.health import Health
    from meshpipe.watch.metrics import WatchMetrics
    from meshpipe.watch.ops import start_ops

    location = str(tmp_path / "ledger.sqlite3")
    sample_ledger(location, tmp_path)
    metrics, health = WatchMetrics(), Health(["X26ABC001"])
    metrics.reports.labels("X26ABC001", "WF_A", "14").inc()
    metrics.reports.labels("X26ABC001", "WF_B", "14").inc()  # one line per code, summed
    metrics.inbox_backlog.labels("X26ABC001").set(7)
    health["X26ABC001"].last_poll = 1.7e9
    runner, port = await start_ops(metrics, health, "127.0.0.1", 0, ledger=location)
    try:
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{port}"
            async with session.get(base + "/") as answer:
                html = await answer.text()
                assert answer.status == 200
            assert "code 14: 2" in html and '<td class="number">7</td>' in html
            assert "2023-11-14 22:13:20Z" in html  # the last poll
            async with session.get(base + "/metrics") as answer:
                assert answer.status == 200
                assert "meshpipe_reports_received_total" in await answer.text()
            async with session.get(base + "/transfers/1") as answer:
                assert answer.status == 200
    finally:
        await runner.cleanup()
    # anything but loopback without a token: the metrics, but not the view
    monkeypatch.delenv("MESHPIPE_WEB_TOKEN", raising=False)
    runner, port = await start_ops(
        metrics, health, "0.0.0.0", 0, allow_remote=True, ledger=location
    )
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/transfers") as answer:
                assert answer.status == 404
            async with session.get(f"http://127.0.0.1:{port}/healthz") as answer:
                assert answer.status == 200
    finally:
        await runner.cleanup()
    monkeypatch.setenv("MESHPIPE_WEB_TOKEN", "a-token-for-the-watch-test")
    runner, port = await start_ops(
        metrics, health, "0.0.0.0", 0, allow_remote=True, ledger=location
    )
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/transfers") as answer:
                assert answer.status == 401
            async with session.get(f"http://127.0.0.1:{port}/metrics") as answer:
                assert answer.status == 200
            headers = {"Authorization": "Bearer a-token-for-the-watch-test"}
            async with session.get(f"http://127.0.0.1:{port}/transfers", headers=headers) as answer:
                assert answer.status == 200
    finally:
        await runner.cleanup()


def test_meshpipe_web_tracks_a_real_send(tmp_path: Path) -> None:
    """``meshpipe web`` as a process, with a MESH profile, after a real send through
    ``meshpipe serve``: the send's page shows MESH's tracking of it, fetched live."""
    ledger = str(tmp_path / "ledger.sqlite3")
    source = write_csv(tmp_path / "small.csv", 100_000)
    config = tmp_path / "config.toml"
    with server_process(
        "--rules", "sandbox", "--shared-key", SANDBOX_SHARED_KEY, "--log-level", "WARNING"
    ) as (url, _server):
        config.write_text(
            f'[profiles.a]\nurl = "{url}"\nmailbox = "{SENDER}"\n'
            f'password = "{SANDBOX_PASSWORD}"\nshared_key = "{SANDBOX_SHARED_KEY}"\n'
        )
        environment = {**os.environ, "MESHPIPE_CONFIG": "", "HOME": str(tmp_path)}
        sent = subprocess.run(
            [
                sys.executable,
                "-m",
                "meshpipe",
                "send",
                str(source),
                "--to",
                RECIPIENT,
                "--workflow-id",
                "MPWEB_TRACK",
                "--ledger",
                ledger,
                "--config",
                str(config),
                "--profile",
                "a",
            ],
            capture_output=True,
            text=True,
            env=environment,
            timeout=120,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        port = free_port()
        web = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meshpipe",
                "web",
                "--ledger",
                ledger,
                "--listen",
                f"127.0.0.1:{port}",
                "--config",
                str(config),
                "--profile",
                "a",
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        try:
            assert web.stderr is not None
            line = web.stderr.readline()
            assert f"open http://127.0.0.1:{port}/" in line, line
            assert SANDBOX_PASSWORD not in line
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/transfers/1", timeout=60
            ) as answer:
                html = answer.read().decode()
        finally:
            web.terminate()
            web.wait(timeout=30)
    assert "MESH tracking" in html and "Tracking not configured" not in html
    assert "Tracking unavailable" not in html, html
    assert "recipient</dt><dd>" in html.lower() and RECIPIENT in html
    assert SANDBOX_PASSWORD not in html and SANDBOX_SHARED_KEY not in html
