"""The web view in a real browser (Debian's Chromium, headless, through Playwright): load the
list, filter it, open a transfer, see its chunks and chart, download the evidence bundle,
see a hostile subject as text with no dialog, watch a real send's progress advance, and the
three pages at 1280x800 and 390x844 without sideways scrolling, valid, with working links."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from meshpipe.ledger import Ledger
from meshpipe.server.process import server_process
from meshpipe.synthetic import write_csv
from meshpipe.units import MiB
from meshpipe.web import LedgerView, build_web_app
from tests.browser import DESKTOP, PHONE, Pages, check_html, check_links, horizontal_overflow
from tests.client.conftest import RECIPIENT, SENDER
from tests.peers import SANDBOX_PASSWORD, SANDBOX_SHARED_KEY
from tests.web.ledgers import HOSTILE_FILE, HOSTILE_SUBJECT, Sample, sample_ledger

#: A failure guard for waits on the browser (never a measure).
WAIT_MS = 60_000


@dataclass
class Site:
    base: str
    sample: Sample
    location: str


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    location = str(tmp_path / "ledger.sqlite3")
    sample = sample_ledger(location, tmp_path)
    view = LedgerView(location)
    try:
        async with TestServer(build_web_app(view), host="127.0.0.1") as server:
            yield Site(str(server.make_url("")).rstrip("/"), sample, location)
    finally:
        view.close()


async def test_list_filter_open_chunks_chart_and_evidence(site: Site, pages: Pages) -> None:
    watched = await pages.open()
    page = watched.page
    await page.goto(site.base + "/transfers")
    assert await page.locator("#transfers tbody tr").count() == 4
    # the filter form sends itself when a menu changes (script), to a plain GET address
    async with page.expect_navigation():
        await page.select_option("select[name=state]", "completed")
    assert page.url == site.base + "/transfers?state=completed"
    assert await page.locator("#transfers tbody tr").count() == 1
    async with page.expect_navigation():
        await page.click(f"#transfer-{site.sample.sent.id} a")
    assert page.url == f"{site.base}/transfers/{site.sample.sent.id}"
    assert await page.locator("#chunks tbody tr").count() == 4
    assert f"{4:032x}" in await page.locator("#chunks").inner_text()
    chart = page.locator("svg.chart")
    assert await chart.is_visible()
    assert await chart.locator("polyline").count() == 1
    assert await chart.locator("title").first.text_content() == (
        f"Throughput of transfer #{site.sample.sent.id} over time"
    )
    box = await chart.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 100
    assert "HTTP 503 from MESH" in await page.locator("#timeline").inner_text()
    async with page.expect_download() as waiting:
        await page.click("#evidence")
    download = await waiting.value
    assert download.suggested_filename == f"meshpipe-transfer-{site.sample.sent.id}-evidence.json"
    saved = await download.path()
    bundle = json.loads(await asyncio.to_thread(Path(saved).read_text))
    assert [chunk["xxh3_128"] for chunk in bundle["chunks"]] == [f"{n:032x}" for n in range(1, 5)]
    watched.assert_clean()


async def test_a_hostile_subject_is_shown_as_text(site: Site, pages: Pages) -> None:
    watched = await pages.open()
    page = watched.page
    await page.goto(f"{site.base}/transfers/{site.sample.hostile.id}")
    assert await page.locator("#subject").inner_text() == HOSTILE_SUBJECT
    assert HOSTILE_SUBJECT in await page.locator("h1").inner_text()
    assert HOSTILE_FILE in await page.locator("main").inner_text()
    assert await page.locator("img").count() == 0  # the injected <img> is text, not an element
    assert await page.locator("main script").count() == 0
    await page.goto(site.base + "/transfers")
    assert HOSTILE_SUBJECT in await page.locator("#transfers").inner_text()
    await page.wait_for_timeout(300)  # give a would-be onerror handler its chance to fire
    watched.assert_clean()
    assert await page.evaluate("() => document.title") == "Transfers · meshpipe transfers"


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280x800", "390x844"])
async def test_the_pages_fit_validate_and_link(
    site: Site, pages: Pages, viewport: tuple[int, int], screenshot_dir: Path
) -> None:
    watched = await pages.open(viewport)
    page = watched.page
    named = {
        "overview": "/",
        "transfers": "/transfers",
        "transfer": f"/transfers/{site.sample.sent.id}",
    }
    for name, path in named.items():
        answer = await page.goto(site.base + path)
        assert answer is not None and answer.status == 200
        assert await horizontal_overflow(page) == 0, f"{path} scrolls sideways at {viewport}"
        html = await answer.text()
        checked = check_html(html, site.base + path)
        assert checked.problems == [], (path, checked.problems)
        assert await check_links(checked.links) == [], path
        await page.screenshot(
            path=str(screenshot_dir / f"{name}-{viewport[0]}x{viewport[1]}.png"), full_page=True
        )
    watched.assert_clean()


def _send_argv(url: str, source: Path, ledger: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "meshpipe",
        "send",
        str(source),
        "--url",
        url,
        "--mailbox",
        SENDER,
        "--password",
        SANDBOX_PASSWORD,
        "--shared-key",
        SANDBOX_SHARED_KEY,
        "--to",
        RECIPIENT,
        "--workflow-id",
        "MPWEB_PROGRESS",
        "--subject",
        "progress <b>watched</b>",
        "--chunk-size",
        "5MiB",
        "--order",
        "sequential",
        "--ledger",
        ledger,
    ]


async def test_a_running_send_advances_in_the_page(
    tmp_path: Path, pages: Pages, screenshot_dir: Path
) -> None:
    """A real send through ``meshpipe serve``, each chunk upload stalled by its fault
    injection, with the ledger shared: the open page's progress moves without a reload,
    then the page reloads itself when the send completes."""
    location = str(tmp_path / "ledger.sqlite3")
    Ledger.open(location).close()
    source = write_csv(tmp_path / "big.csv", 8 * 5 * MiB)  # eight chunks of 5 MiB
    plan = tmp_path / "faults.json"
    plan.write_text(
        json.dumps(
            {
                "faults": [
                    {"kind": "stall", "route": "send_chunk", "nth": 1, "times": 0, "seconds": 0.6}
                ]
            }
        )
    )
    with server_process(
        "--rules",
        "sandbox",
        "--shared-key",
        SANDBOX_SHARED_KEY,
        "--faults",
        str(plan),
        "--log-level",
        "WARNING",
    ) as (url, _process):
        sender = await asyncio.create_subprocess_exec(
            *_send_argv(url, source, location),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "MESHPIPE_CONFIG": "", "HOME": "/nonexistent-home-for-tests"},
        )
        view = LedgerView(location)
        try:
            async with TestServer(build_web_app(view), host="127.0.0.1") as server:
                base = str(server.make_url("")).rstrip("/")
                watched = await pages.open()
                page = watched.page
                # the send appears in the list (which refreshes only running rows: reload)
                for _ in range(600):
                    await page.goto(base + "/transfers")
                    if await page.locator("#transfers tbody a").count():
                        break
                    await page.wait_for_timeout(100)
                link = page.locator("#transfers tbody a").first
                async with page.expect_navigation():
                    await link.click()
                first = await page.locator("[data-field=chunks]").inner_text()
                await page.wait_for_function(
                    """(first) => {
                        const shown = document.querySelector('[data-field=chunks]');
                        return shown && shown.textContent !== first;
                    }""",
                    arg=first,
                    timeout=WAIT_MS,
                )
                await page.screenshot(path=str(screenshot_dir / "transfer-running.png"))
                # when the state changes the page reloads itself and the refresh stops
                await page.wait_for_function(
                    "() => document.querySelector('[data-field=state]').textContent"
                    " === 'completed'",
                    timeout=WAIT_MS,
                )
                await page.wait_for_selector("#chunks tbody tr:nth-child(8)", timeout=WAIT_MS)
                assert await page.locator("#progress[data-refresh]").count() == 0
                assert await page.locator("#subject").inner_text() == "progress <b>watched</b>"
                await page.screenshot(
                    path=str(screenshot_dir / "transfer-sent.png"),
                    clip={"x": 0, "y": 0, "width": 1280, "height": 1080},
                    full_page=True,
                )
                watched.assert_clean()
        finally:
            view.close()
            _, err = await asyncio.wait_for(sender.communicate(), 120)
        assert sender.returncode == 0, err.decode()[-2000:]
