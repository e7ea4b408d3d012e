"""The store view in a real browser (Debian's Chromium, headless, through Playwright; the
fixtures of tests/browser.py): from the mailboxes to a mailbox, filtered, to the chunked
message, its chunks' checksums against the stored files, the evidence download, a hostile
subject as text with no dialog, and the three pages at 1280x800 and 390x844 without sideways
scrolling (nor, at 1280x800, any table), valid, with working links; screenshots saved (not
committed)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import xxhash

from tests.browser import (
    DESKTOP,
    PHONE,
    Pages,
    browser,
    check_html,
    check_links,
    horizontal_overflow,
    pages,
    screenshot_dir,
)
from tests.server.storeview_rig import HOSTILE_FILE, HOSTILE_SUBJECT, Rig, rig

__all__ = ["browser", "pages", "rig", "screenshot_dir"]  # the fixtures


def _stored_checksums(rig: Rig) -> list[str]:
    folder = rig.store / "X26ABC2" / "in" / rig.chunked
    return [xxhash.xxh3_128_hexdigest((folder / str(n)).read_bytes()) for n in (1, 2, 3)]


async def test_mailboxes_to_a_message_its_chunks_and_evidence(rig: Rig, pages: Pages) -> None:
    watched = await pages.open()
    page = watched.page
    await page.goto(f"{rig.url}/view/")
    assert await page.locator("#mailboxes tbody tr").count() == 3
    async with page.expect_navigation():
        await page.click("tr[data-mailbox=X26ABC2] a")
    assert page.url == f"{rig.url}/view/mailboxes/X26ABC2"
    assert await page.locator("#messages tbody tr").count() == 3
    # the filter form sends itself when a menu changes (the pages' script), as a GET address
    async with page.expect_navigation():
        await page.select_option("select[name=status]", "acknowledged")
    assert page.url == f"{rig.url}/view/mailboxes/X26ABC2?box=all&status=acknowledged"
    assert await page.locator("#messages tbody tr").count() == 1
    await page.go_back()
    async with page.expect_navigation():
        await page.click(f'tr[data-message="{rig.chunked}"] a')
    assert page.url == f"{rig.url}/view/messages/{rig.chunked}"
    shown = await page.locator("#chunks td[data-field=xxh3_128]").all_inner_texts()
    expected = await asyncio.to_thread(_stored_checksums, rig)
    assert shown == expected
    assert await page.locator("#status").inner_text() == "accepted"
    async with page.expect_download() as waiting:
        await page.click("#evidence")
    download = await waiting.value
    assert download.suggested_filename == f"meshpipe-serve-{rig.chunked}-evidence.json"
    saved = await download.path()
    bundle = json.loads(await asyncio.to_thread(Path(saved).read_text))
    assert [chunk["xxh3_128"] for chunk in bundle["chunks"]] == expected
    watched.assert_clean()


async def test_a_hostile_subject_is_shown_as_text(rig: Rig, pages: Pages) -> None:
    watched = await pages.open()
    page = watched.page
    await page.goto(f"{rig.url}/view/messages/{rig.hostile}")
    assert await page.locator("#subject").inner_text() == HOSTILE_SUBJECT
    assert await page.locator("#file-name").inner_text() == HOSTILE_FILE
    assert await page.locator("img").count() == 0  # the injected <img> is text, not an element
    assert await page.locator("main script").count() == 0
    await page.goto(f"{rig.url}/view/mailboxes/X26ABC2")
    assert HOSTILE_SUBJECT in await page.locator("#messages").inner_text()
    await page.wait_for_timeout(300)  # give a would-be onerror handler its chance to fire
    watched.assert_clean()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280x800", "390x844"])
async def test_the_pages_fit_validate_and_link(
    rig: Rig, pages: Pages, viewport: tuple[int, int], screenshot_dir: Path
) -> None:
    watched = await pages.open(viewport)
    page = watched.page
    named = {
        "mailboxes": "/view/",
        "mailbox": "/view/mailboxes/X26ABC2",
        "message": f"/view/messages/{rig.chunked}",
    }
    for name, path in named.items():
        answer = await page.goto(rig.url + path)
        assert answer is not None and answer.status == 200
        assert await horizontal_overflow(page) == 0, f"{path} scrolls sideways at {viewport}"
        if viewport == DESKTOP:  # on a desktop, no table needs scrolling either
            hidden = await page.evaluate(
                "() => Array.from(document.querySelectorAll('.table-scroll'),"
                " e => e.scrollWidth - e.clientWidth)"
            )
            assert set(hidden) <= {0}, f"a table of {path} scrolls sideways: {hidden}"
        checked = check_html(await answer.text(), rig.url + path)
        assert checked.problems == [], (path, checked.problems)
        assert await check_links(checked.links) == [], path
        width, height = viewport
        shot = screenshot_dir / f"store-view-{name}-{width}x{height}.png"
        await page.screenshot(path=str(shot), full_page=True)
    watched.assert_clean()
