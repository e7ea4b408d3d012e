"""A real browser for the web pages' tests: Debian's Chromium (``/usr/bin/chromium``, from
scripts/bootstrap.sh) driven headless by Playwright, which never downloads a browser here.

Fixtures (import them into a conftest.py: ``from tests.browser import browser, pages``):

- ``browser``: a headless Chromium for one test;
- ``pages``: :class:`Pages`, opening watched pages at a viewport: each records dialogs
  (``alert`` and the like, dismissed), script errors and console errors (a
  Content-Security-Policy violation is one), which the test asserts are empty.

Helpers: :func:`check_html` (parsed by html5lib as a browser would: parse errors, every
``<img>`` has alt text, ids unique, ``aria-labelledby`` names existing ids, the internal
links), :func:`check_links` (every internal link answers 200), :func:`horizontal_overflow`
(pixels the page is wider than its viewport), :func:`screenshot_dir` (``$MESHPIPE_SCREENSHOTS``
or a temporary directory).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urljoin, urlsplit

import aiohttp
import html5lib
import pytest
from playwright.async_api import Browser, ConsoleMessage, Dialog, Page, async_playwright

CHROMIUM: Final = "/usr/bin/chromium"
DESKTOP: Final = (1280, 800)
PHONE: Final = (390, 844)
SCREENSHOTS_VARIABLE: Final = "MESHPIPE_SCREENSHOTS"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless (no sandbox when run as root, as in CI containers)."""
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 (one stat before the browser starts)
        pytest.fail(f"{CHROMIUM} is missing: run scripts/bootstrap.sh (apt chromium)")
    arguments = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=arguments
        )
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Watched:
    """A page and what went wrong in it."""

    page: Page
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.dialogs == [], f"dialogs opened: {self.dialogs}"
        assert self.errors == [], f"script or console errors: {self.errors}"


@dataclass
class Pages:
    browser: Browser

    async def open(self, viewport: tuple[int, int] = DESKTOP) -> Watched:
        """A new page (its own context: no shared cookies) at ``viewport``."""
        context = await self.browser.new_context(
            viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=True
        )
        watched = Watched(await context.new_page())

        async def on_dialog(dialog: Dialog) -> None:
            watched.dialogs.append(f"{dialog.type}: {dialog.message}")
            await dialog.dismiss()

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                watched.errors.append(message.text)

        watched.page.on("dialog", on_dialog)
        watched.page.on("console", on_console)
        watched.page.on("pageerror", lambda error: watched.errors.append(str(error)))
        return watched


@pytest.fixture
def pages(browser: Browser) -> Pages:
    return Pages(browser)


@pytest.fixture
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``$MESHPIPE_SCREENSHOTS`` if set, else a temporary directory."""
    chosen = os.environ.get(SCREENSHOTS_VARIABLE)
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


async def horizontal_overflow(page: Page) -> int:
    """How many CSS pixels the document is wider than the viewport (0: no sideways scroll)."""
    width: int = await page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    return width


@dataclass(frozen=True)
class HtmlCheck:
    problems: list[str]
    links: list[str]


def check_html(html: str, address: str) -> HtmlCheck:
    """Parse ``html`` (the page at ``address``) with html5lib; the problems found and the
    internal links (absolute addresses) it holds."""
    parser = html5lib.HTMLParser(namespaceHTMLElements=False)
    document = parser.parse(html)
    problems = [f"parse error {error[1]} at {error[0]}" for error in parser.errors]
    ids: dict[str, int] = {}
    for element in document.iter():
        if not isinstance(element.tag, str):
            continue
        ident = element.get("id")
        if ident:
            ids[ident] = ids.get(ident, 0) + 1
        if element.tag == "img" and not (element.get("alt") or "").strip():
            problems.append(f"<img src={element.get('src')!r}> has no alt text")
        if element.get("style") is not None:
            problems.append(f"<{element.tag}> has an inline style (the CSP forbids it)")
        if element.tag == "script" and not element.get("src"):
            problems.append("an inline <script> (the CSP forbids it)")
    problems += [f"id {ident!r} is used {count} times" for ident, count in ids.items() if count > 1]
    for element in document.iter():
        if isinstance(element.tag, str) and element.get("aria-labelledby"):
            for ident in element.get("aria-labelledby", "").split():
                if ident not in ids:
                    problems.append(f"aria-labelledby names a missing id {ident!r}")
    origin = urlsplit(address)
    links = []
    for element in document.iter():
        if not isinstance(element.tag, str):
            continue
        target = element.get("href") or (element.get("src") if element.tag != "img" else None)
        if element.tag == "img":
            target = element.get("src")
        if not target or target.startswith(("#", "mailto:")):
            continue
        absolute = urljoin(address, target)
        if urlsplit(absolute).netloc == origin.netloc:
            links.append(absolute.split("#", 1)[0])
    return HtmlCheck(problems, sorted(set(links)))


async def check_links(links: list[str], headers: dict[str, str] | None = None) -> list[str]:
    """The links that do not answer 200 (with their status)."""
    broken = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for link in links:
            async with session.get(link, allow_redirects=False) as answer:
                if answer.status != 200:
                    broken.append(f"{link}: {answer.status}")
    return broken


__all__ = [
    "CHROMIUM",
    "DESKTOP",
    "PHONE",
    "HtmlCheck",
    "Pages",
    "Watched",
    "browser",
    "check_html",
    "check_links",
    "horizontal_overflow",
    "pages",
    "screenshot_dir",
]
