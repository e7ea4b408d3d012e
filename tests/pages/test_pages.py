"""meshpipe.pages: every response carries the security headers, remote text is escaped, a
token guards the pages (Bearer, or ?token= once then a cookie) without ever showing it, and
the SVG chart is labelled and escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jinja2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from meshpipe.errors import ConfigError
from meshpipe.pages import SECURITY_HEADERS, render, setup_pages
from meshpipe.pages.access import COOKIE, ENV_TOKEN, load_token, require_token
from meshpipe.pages.charts import nice_step, throughput_chart
from meshpipe.pages.format import duration_text, size_text

HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(1)>'
TOKEN = "a-long-enough-test-token-1234"
PAGE = """{% extends "pages/base.html" %}{% block title %}{{ subject }}{% endblock %}
{% block content %}<p id="subject">{{ subject }}</p>{{ chart }}{% endblock %}"""


async def page(request: web.Request) -> web.Response:
    chart = throughput_chart([(0.5, 2e6), (1.0, 4e6)], chart_id="c1", title=HOSTILE)
    return render("test/page.html", request, {"subject": HOSTILE, "chart": chart})


async def open_page(request: web.Request) -> web.Response:
    return web.json_response({"open": True})


def make_app(token: str | None = None) -> web.Application:
    app = web.Application()
    environment = setup_pages(
        app,
        [],
        site_name="test <site>",
        nav=[("Page", "/page")],
        token=token,
        open_paths={"/healthz"},
    )
    assert isinstance(environment.loader, jinja2.PrefixLoader)
    environment.loader.mapping["test"] = jinja2.DictLoader({"page.html": PAGE})
    app.add_routes([web.get("/page", page), web.get("/healthz", open_page)])
    return app


@pytest.fixture
async def base() -> AsyncIterator[str]:
    async with TestServer(make_app(), host="127.0.0.1") as server:
        yield str(server.make_url(""))


@pytest.fixture
async def guarded() -> AsyncIterator[str]:
    async with TestServer(make_app(TOKEN), host="127.0.0.1") as server:
        yield str(server.make_url(""))


async def test_every_response_has_the_security_headers(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/page", "/static/pages.css", "/static/pages.js", "/missing"):
            async with session.get(base + path) as answer:
                assert answer.status == (404 if path == "/missing" else 200), path
                for name, value in SECURITY_HEADERS.items():
                    assert answer.headers[name] == value, (path, name)
    assert "script-src 'self'" in SECURITY_HEADERS["Content-Security-Policy"]
    assert "unsafe-inline" not in SECURITY_HEADERS["Content-Security-Policy"]


async def test_remote_text_is_escaped_and_no_inline_script_or_style(base: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(base + "/page") as answer:
        html = await answer.text()
    assert HOSTILE not in html
    assert "<script>alert" not in html and "<img src=x" not in html
    assert (
        "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    )
    assert "test &lt;site&gt;" in html
    assert " style=" not in html and "<style" not in html
    assert html.count("<script") == 1 and '<script src="/static/pages.js" defer>' in html
    assert 'aria-current="page"' in html


async def test_the_token_is_needed_and_never_shown(guarded: str) -> None:
    # unsafe: the jar keeps cookies of an IP address host (127.0.0.1)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(guarded + "/page") as answer:
            assert answer.status == 401
            assert TOKEN not in await answer.text()
        async with session.get(guarded + "/page?token=wrong-token-of-the-same-size") as answer:
            assert answer.status == 401
        async with session.get(guarded + "/healthz") as answer:
            assert answer.status == 200
        for scheme in ("Bearer", "bearer"):  # HTTP's schemes are case-insensitive
            headers = {"Authorization": f"{scheme} {TOKEN}"}
            async with session.get(guarded + "/page", headers=headers) as answer:
                assert answer.status == 200
                assert TOKEN not in await answer.text()
        async with session.get(
            guarded + f"/page?token={TOKEN}&a=1", allow_redirects=False
        ) as answer:
            assert answer.status == 303
            assert answer.headers["Location"] == "/page?a=1"
            cookie = answer.headers["Set-Cookie"]
            assert TOKEN not in cookie
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        # the session's cookie jar now holds the cookie: the page opens without the token
        assert any(item.key == COOKIE for item in session.cookie_jar)
        async with session.get(guarded + "/page") as answer:
            assert answer.status == 200
    async with (
        aiohttp.ClientSession() as session,
        session.get(guarded + f"//example.org/page?token={TOKEN}", allow_redirects=False) as answer,
    ):
        assert answer.headers["Location"] == "/example.org/page"  # never off the site


def test_a_remote_listen_needs_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_token("127.0.0.1", None)
    require_token("::1", None)
    require_token("localhost", None)
    for host in ("0.0.0.0", "", "192.0.2.1", "example.org"):
        with pytest.raises(ConfigError, match="not a loopback address"):
            require_token(host, None)
        require_token(host, TOKEN)
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    assert load_token(None) is None
    monkeypatch.setenv(ENV_TOKEN, TOKEN)
    assert load_token(None) == TOKEN
    monkeypatch.setenv(ENV_TOKEN, "short")
    with pytest.raises(ConfigError, match="shorter than 16") as caught:
        load_token(None)
    assert "short" not in str(caught.value).replace("shorter", "")
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    assert load_token(token_file) == TOKEN
    with pytest.raises(ConfigError, match="cannot read --token-file"):
        load_token(tmp_path / "missing")


def test_the_chart_is_labelled_escaped_svg() -> None:
    svg = str(throughput_chart([(0.0, 1e6), (1.5, 3e6), (3.0, 2e6)], chart_id="x", title=HOSTILE))
    root = ElementTree.fromstring(svg)  # well-formed XML: the hostile title is escaped
    namespace = "{http://www.w3.org/2000/svg}"
    assert root.get("role") == "img" and root.get("aria-labelledby") == "x-title x-desc"
    assert root.find(f"{namespace}title").text == HOSTILE  # type: ignore[union-attr]
    desc = root.find(f"{namespace}desc").text  # type: ignore[union-attr]
    assert desc == "3 points over 3.0 s; peak 3.0 MB/s, mean 2.0 MB/s"
    line = root.find(f"{namespace}polyline")
    assert line is not None and len(line.get("points", "").split()) == 3
    empty = ElementTree.fromstring(str(throughput_chart([], chart_id="y", title="t")))
    assert empty.find(f"{namespace}polyline") is None


def test_the_formats() -> None:
    assert [nice_step(span) for span in (10, 7, 0.3, 1234)] == [2.0, 2.0, 0.1, 500.0]
    assert [size_text(n) for n in (0, 1023, 1536, 20 * 2**20)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "20.0 MiB",
    ]
    assert [duration_text(s) for s in (0.85, 12.34, 245, 7380)] == [
        "850 ms",
        "12.3 s",
        "4 min 05 s",
        "2 h 03 min",
    ]
