"""The server's own store view (``/view/``): real messages sent by meshpipe's client through
``meshpipe serve`` (a chunked one among them), read back page by page: counts, rows,
checksums against the stored chunk files, escaping, headers, and that looking changes nothing.
Access: free on loopback, the admin token otherwise, refused off loopback without one."""

from __future__ import annotations

import asyncio
import gzip
import re
from datetime import timedelta
from typing import Any
from xml.etree.ElementTree import Element

import html5lib
import requests
import xxhash

from meshpipe.pages import CONTENT_SECURITY_POLICY
from meshpipe.server import Fault, FaultPlan, LocalMeshServer, ServerConfig
from meshpipe.server.config import ADMIN_TOKEN_ENV
from meshpipe.server.process import server_process
from meshpipe.server.storeview import view_access
from meshpipe.server.storeview.model import MAX_CHUNK_ROWS, PAGE_SIZE
from tests.peers import SANDBOX_SHARED_KEY, auth_headers
from tests.server.storeview_rig import (
    HOSTILE_FILE,
    HOSTILE_SUBJECT,
    PASSWORDS,
    SHARED_KEY,
    TOKEN,
    Rig,
    client,
    rig,
)

__all__ = ["rig"]  # the fixture


def _get(url: str, **options: Any) -> requests.Response:
    return requests.get(url, timeout=10, **options)


def _document(html: str) -> Element:
    document: Element = html5lib.parse(html, namespaceHTMLElements=False)
    return document


def _text(element: Element) -> str:
    """The element's text, each piece's white space collapsed, pieces joined by a space."""
    return " ".join(" ".join(piece.split()) for piece in element.itertext() if piece.strip())


def _by_id(document: Element, ident: str) -> Element:
    found = [e for e in document.iter() if e.get("id") == ident]
    assert len(found) == 1, f"{len(found)} elements with id {ident!r}"
    return found[0]


def _rows(document: Element, attribute: str) -> dict[str, Element]:
    return {row.get(attribute, ""): row for row in document.iter("tr") if row.get(attribute)}


def _field(row: Element, name: str) -> Element:
    return next(cell for cell in row.iter("td") if cell.get("data-field") == name)


def _page(rig: Rig, path: str) -> tuple[requests.Response, Element]:
    answer = _get(f"{rig.url}{path}")
    assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"].startswith("text/html")
    return answer, _document(answer.text)


def _view_paths(rig: Rig) -> list[str]:
    messages = (rig.chunked, rig.hostile, rig.collected)
    return [
        "/view/",
        *(f"/view/mailboxes/{m}" for m in PASSWORDS),
        "/view/mailboxes/X26ABC2?status=acknowledged&box=inbox",
        *(f"/view/messages/{m}" for m in messages),
        *(f"/view/messages/{m}/evidence.json" for m in messages),
    ]


def test_the_mailboxes_page_counts_each_mailbox(rig: Rig) -> None:
    _, document = _page(rig, "/view/")
    rows = _rows(document, "data-mailbox")
    assert sorted(rows) == sorted(PASSWORDS)
    assert "TESTMB2" in _text(rows["X26ABC2"]) and "Test Trust" in _text(rows["X26ABC2"])
    # The acknowledged message has left the inbox; the outbox keeps every status.
    counts = {m: (_text(_field(r, "inbox")), _text(_field(r, "outbox"))) for m, r in rows.items()}
    assert counts == {"X26ABC1": ("0", "3"), "X26ABC2": ("2", "0"), "X26ABC3": ("0", "0")}
    assert "since" in _text(_field(rows["X26ABC2"], "waiting"))
    assert _text(_field(rows["X26ABC1"], "waiting")) == "–"


def test_a_mailbox_page_lists_its_messages_and_filters_them(rig: Rig) -> None:
    _, document = _page(rig, "/view/mailboxes/X26ABC2")
    rows = _rows(document, "data-message")
    assert set(rows) == {rig.chunked, rig.hostile, rig.collected}
    chunked = _text(rows[rig.chunked])
    for shown in ("inbox", "X26ABC1", "TEST_WORKFLOW", "three chunks", "accepted", "3 / 3"):
        assert shown in chunked
    assert "10.0 MiB" in chunked  # 2 × 5 MiB + 12,345 bytes as stored
    assert "acknowledged" in _text(rows[rig.collected])

    _, filtered = _page(rig, "/view/mailboxes/X26ABC2?status=acknowledged")
    assert set(_rows(filtered, "data-message")) == {rig.collected}
    _, sent = _page(rig, "/view/mailboxes/X26ABC1?box=outbox&status=accepted")
    assert set(_rows(sent, "data-message")) == {rig.chunked, rig.hostile}
    assert {row.get("data-box") for row in _rows(sent, "data-message").values()} == {"outbox"}
    _, none = _page(rig, "/view/mailboxes/X26ABC1?box=inbox")
    assert _rows(none, "data-message") == {}


def test_a_message_page_shows_each_chunk_with_the_checksum_of_its_stored_bytes(rig: Rig) -> None:
    _, document = _page(rig, f"/view/messages/{rig.chunked}")
    rows = _rows(document, "data-chunk")
    assert sorted(rows) == ["1", "2", "3"]
    stored = b""
    for number, row in rows.items():
        data = (rig.store / "X26ABC2" / "in" / rig.chunked / number).read_bytes()
        stored += data
        assert _text(_field(row, "xxh3_128")) == xxhash.xxh3_128_hexdigest(data)
        assert _field(row, "stored_size").get("data-bytes") == str(len(data))
        assert _field(row, "size").get("data-bytes") == str(len(data))  # no Content-Encoding
        assert "on disk" in _text(row)
    assert stored == rig.source.read_bytes()
    assert _text(_by_id(document, "status")) == "accepted"
    events = _text(_by_id(document, "events"))
    assert events.index("uploading") < events.index("accepted")
    tracking = _text(_by_id(document, "tracking"))
    assert "recipient_name TESTMB2" in tracking and "status accepted" in tracking
    headers = _text(_by_id(document, "headers"))
    assert f"mex-MessageID {rig.chunked}" in headers and "mex-Total-Chunks 3" in headers
    assert re.search(r"\(in 1(19|20) h \d\d min\)", _text(_by_id(document, "expiry")))  # 5 days


def test_a_hostile_subject_and_file_name_are_shown_as_text(rig: Rig) -> None:
    for path in (f"/view/messages/{rig.hostile}", "/view/mailboxes/X26ABC2"):
        answer, document = _page(rig, path)
        assert HOSTILE_SUBJECT not in answer.text and "<script>alert" not in answer.text
        assert "<img" not in answer.text
        assert list(document.iter("img")) == [] and list(document.iter("b")) == []
        assert all(script.get("src") for script in document.iter("script"))
        assert HOSTILE_SUBJECT in _text(document) and HOSTILE_FILE in _text(document)
    _, document = _page(rig, f"/view/messages/{rig.hostile}")
    assert _text(_by_id(document, "subject")) == " ".join(HOSTILE_SUBJECT.split())
    assert _text(_by_id(document, "file-name")) == HOSTILE_FILE


def test_the_evidence_bundle_downloads_with_everything_stored(rig: Rig) -> None:
    answer = _get(f"{rig.url}/view/messages/{rig.chunked}/evidence.json")
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith(
        "application/json"
    )
    assert answer.headers["Content-Disposition"].startswith("attachment; filename=")
    bundle = answer.json()
    assert bundle["message"]["message_id"] == rig.chunked and bundle["status"] == "accepted"
    assert bundle["message"]["subject"] == "three chunks"
    assert [e["status"] for e in bundle["message"]["events"]] == ["uploading", "accepted"]
    for chunk in bundle["chunks"]:
        data = (rig.store / "X26ABC2" / "in" / rig.chunked / str(chunk["number"])).read_bytes()
        assert chunk["xxh3_128"] == xxhash.xxh3_128_hexdigest(data)
        assert chunk["stored_size"] == len(data) and chunk["where"] == "on disk"
    assert bundle["download_headers"]["mex-Total-Chunks"] == "3"
    assert bundle["tracking"]["status"] == "accepted"
    assert bundle["server"] == {"store": "dir", "rules": "strict", "build": "meshpipe"}


def test_every_answer_carries_the_content_security_policy(rig: Rig) -> None:
    paths = [*_view_paths(rig), "/view/static/pages.css", "/view/static/pages.js"]
    paths += [
        "/view/messages/NOSUCHMESSAGE",
        "/view/mailboxes/X99",
        "/view/mailboxes/X26ABC1?page=0",
    ]
    for path in paths:
        answer = _get(f"{rig.url}{path}")
        assert answer.headers.get("Content-Security-Policy") == CONTENT_SECURITY_POLICY, path
        assert answer.headers.get("X-Content-Type-Options") == "nosniff", path
    assert _get(f"{rig.url}/view/messages/NOSUCHMESSAGE").status_code == 404
    probe = _get(f"{rig.url}/view/messages/%3Cimg%20src=x%20onerror=alert(1)%3E")
    assert probe.status_code == 404 and "<img" not in probe.text and "&lt;img" in probe.text
    bad = _get(f"{rig.url}/view/mailboxes/X26ABC1?status=lost")
    assert bad.status_code == 400 and "choose one of uploading, accepted" in bad.text
    assert "Content-Security-Policy" not in _get(f"{rig.url}/messageexchange/_ping").headers


def _state(rig: Rig) -> list[Any]:
    """What the server holds of each message, with the view's own time stamp left out."""
    found = []
    for message in (rig.chunked, rig.hostile, rig.collected):
        bundle = _get(f"{rig.url}/view/messages/{message}/evidence.json").json()
        del bundle["generated_at"]
        admin = _get(f"{rig.url}/messageexchange/admin/message/{message}").json()
        found.append((bundle, admin))
    return found


def test_looking_changes_nothing(rig: Rig) -> None:
    before = _state(rig)
    for path in _view_paths(rig):
        assert _get(f"{rig.url}{path}").status_code == 200
        assert requests.head(f"{rig.url}{path}", timeout=10).status_code == 200
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert requests.request(method, f"{rig.url}{path}", timeout=10).status_code == 405
    assert _state(rig) == before

    async def inbox() -> tuple[list[str], str]:
        async with client(rig.url, "X26ABC2") as receiver:
            ids = await receiver.list_inbox()
        async with client(rig.url, "X26ABC1") as sender:
            tracked = await sender.track(rig.chunked)
        return ids, tracked.status

    ids, status = asyncio.run(inbox())
    assert sorted(ids) == sorted([rig.chunked, rig.hostile]) and status.lower() == "accepted"


def test_no_page_shows_a_password_the_shared_key_or_a_token(rig: Rig) -> None:
    shown = "".join(_get(f"{rig.url}{path}").text for path in _view_paths(rig))
    for secret in (SHARED_KEY, *PASSWORDS.values()):
        assert secret not in shown


async def test_a_mailbox_page_comes_in_pages_of_fifty() -> None:
    async with LocalMeshServer() as server:
        for number in range(PAGE_SIZE + 5):
            server.add_synthetic_message("X26ABC3", 10, subject=f"n{number}", checksum=False)
        first = await asyncio.to_thread(_get, f"{server.url}/view/mailboxes/X26ABC3")
        document = _document(first.text)
        assert len(_rows(document, "data-message")) == PAGE_SIZE
        assert "55 messages, page 1 of 2" in _text(_by_id(document, "count"))
        older = [a.get("href") for a in document.iter("a") if a.get("rel") == "next"]
        assert older == ["/view/mailboxes/X26ABC3?page=2"]
        second = await asyncio.to_thread(_get, f"{server.url}{older[0]}")
        rows = _rows(_document(second.text), "data-message")
        assert len(rows) == 5 and "n0" in " ".join(_text(r) for r in rows.values())
        zero = await asyncio.to_thread(_get, f"{server.url}/view/mailboxes/X26ABC3?page=0")
        assert zero.status_code == 400 and "page" in zero.text


async def test_the_fault_plan_neither_fires_on_nor_counts_the_view() -> None:
    plan = FaultPlan((Fault("status", route="any", status=503),))
    async with LocalMeshServer(faults=plan) as server:
        for path in ("/view/", "/view/static/pages.css", "/view/mailboxes/X26ABC1"):
            answer = await asyncio.to_thread(_get, f"{server.url}{path}")
            assert answer.status_code == 200, path
        assert server.fault_log == []
        ping = await asyncio.to_thread(_get, f"{server.url}/messageexchange/_ping")
        assert ping.status_code == 503  # the plan's first request is the first MESH one
        assert len(server.fault_log) == 1


def test_the_access_rule() -> None:
    for loopback in (ServerConfig(), ServerConfig(admin_token=TOKEN)):
        assert view_access(loopback).token is None and view_access(loopback).refusal is None
    refused = view_access(ServerConfig(host="0.0.0.0"))
    assert refused.refusal is not None and ADMIN_TOKEN_ENV in refused.refusal
    guarded = view_access(ServerConfig(host="0.0.0.0", admin_token=TOKEN))
    assert guarded.token == TOKEN and guarded.refusal is None and TOKEN not in repr(guarded)


def test_off_loopback_without_an_admin_token_the_view_is_refused() -> None:
    with server_process("--host", "0.0.0.0", "--log-level", "WARNING") as (url, _):
        for path in ("/view/", "/view/mailboxes/X26ABC1", "/view/static/pages.css"):
            answer = _get(f"{url}{path}")
            assert answer.status_code == 403, path
            assert ADMIN_TOKEN_ENV in answer.text and "127.0.0.1" in answer.text
        assert _get(f"{url}/messageexchange/_ping").status_code == 200


def test_off_loopback_the_view_needs_the_admin_token() -> None:
    env = {ADMIN_TOKEN_ENV: TOKEN}
    with server_process("--host", "0.0.0.0", "--log-level", "WARNING", env=env) as (url, _):
        assert _get(f"{url}/view/").status_code == 401
        wrong = _get(f"{url}/view/", headers={"Authorization": f"Bearer {TOKEN}x"})
        assert wrong.status_code == 401 and TOKEN not in wrong.text
        right = _get(f"{url}/view/", headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200 and TOKEN not in right.text
        with requests.Session() as browser:
            once = browser.get(f"{url}/view/?token={TOKEN}", timeout=10, allow_redirects=False)
            assert once.status_code == 303 and once.headers["Location"] == "/view/"
            assert (
                "HttpOnly" in once.headers["Set-Cookie"] and TOKEN not in once.headers["Set-Cookie"]
            )
            later = browser.get(f"{url}/view/mailboxes/X26ABC1", timeout=10)
            assert later.status_code == 200 and TOKEN not in later.text


async def test_on_loopback_the_view_is_open_even_with_an_admin_token() -> None:
    async with LocalMeshServer(admin_token=TOKEN) as server:
        answer = await asyncio.to_thread(_get, f"{server.url}/view/")
        assert answer.status_code == 200 and TOKEN not in answer.text
        admin = await asyncio.to_thread(_get, f"{server.url}/messageexchange/admin/faults")
        assert admin.status_code == 403  # the admin API itself still needs the token


async def test_an_expired_message_and_its_non_delivery_report() -> None:
    async with LocalMeshServer() as server:
        sent = server.add_synthetic_message("X26ABC2", 100, sender="X26ABC1", checksum=False)
        [report] = server.advance_clock(timedelta(days=6))
        expired = await asyncio.to_thread(_get, f"{server.url}/view/messages/{sent}")
        document = _document(expired.text)
        assert _text(_by_id(document, "status")) == "undeliverable"
        assert "code 14" in _text(_by_id(document, "events"))
        assert "generated" in _text(_rows(document, "data-chunk")["1"])
        ndr = await asyncio.to_thread(_get, f"{server.url}/view/messages/{report}")
        document = _document(ndr.text)
        assert "the central system" in _text(_by_id(document, "facts"))
        links = [a.get("href") for a in _by_id(document, "events").iter("a")]
        assert links == [f"/view/messages/{sent}"]
        assert _rows(document, "data-chunk") == {}
        mailboxes = _document((await asyncio.to_thread(_get, f"{server.url}/view/")).text)
        counts = _rows(mailboxes, "data-mailbox")
        assert _text(_field(counts["X26ABC1"], "inbox")) == "1"  # the report
        assert _text(_field(counts["X26ABC2"], "inbox")) == "0"  # expired: no longer waiting


async def test_a_message_page_lists_its_first_chunks_and_the_evidence_all() -> None:
    async with LocalMeshServer() as server:
        total = MAX_CHUNK_ROWS + 3
        sent = server.add_synthetic_message("X26ABC2", total, chunk_size=1, checksum=False)
        page = await asyncio.to_thread(_get, f"{server.url}/view/messages/{sent}")
        document = _document(page.text)
        assert len(_rows(document, "data-chunk")) == MAX_CHUNK_ROWS
        assert f"of {total} chunks" in _text(_by_id(document, "chunks-more"))
        bundle = await asyncio.to_thread(_get, f"{server.url}/view/messages/{sent}/evidence.json")
        assert [c["number"] for c in bundle.json()["chunks"]] == list(range(1, total + 1))


def _first_of_three_chunks_gzip(url: str, body: bytes) -> str:
    answer = requests.post(
        f"{url}/messageexchange/X26ABC1/outbox",
        headers=auth_headers(
            "X26ABC1",
            **{
                "mex-To": "X26ABC2",
                "mex-WorkflowID": "TEST_WORKFLOW",
                "mex-Chunk-Range": "1:3",
                "Content-Encoding": "gzip",
            },
        ),
        data=gzip.compress(body),
        timeout=10,
    )
    assert answer.status_code == 202, answer.text
    message_id: str = answer.json()["message_id"]
    return message_id


async def test_an_upload_under_way_with_a_gzip_chunk() -> None:
    body = b"one line of an extract\n" * 1000
    async with LocalMeshServer(rules="sandbox", shared_key=SANDBOX_SHARED_KEY) as server:
        sent = await asyncio.to_thread(_first_of_three_chunks_gzip, server.url, body)
        page = await asyncio.to_thread(_get, f"{server.url}/view/messages/{sent}")
        document = _document(page.text)
        assert _text(_by_id(document, "status")) == "uploading"
        rows = _rows(document, "data-chunk")
        assert _field(rows["1"], "stored_size").get("data-bytes") == str(len(gzip.compress(body)))
        assert _field(rows["1"], "size").get("data-bytes") == str(len(body))
        assert _text(_field(rows["1"], "xxh3_128")) == xxhash.xxh3_128_hexdigest(body)
        assert "gzip" in _text(rows["1"]) and "on disk" in _text(rows["1"])
        assert all("not received" in _text(rows[n]) for n in ("2", "3"))
        listed = await asyncio.to_thread(_get, f"{server.url}/view/mailboxes/X26ABC2")
        assert _rows(_document(listed.text), "data-message")[sent].get("data-box") == "inbox"
        counts = _rows(
            _document((await asyncio.to_thread(_get, f"{server.url}/view/")).text), "data-mailbox"
        )
        assert _text(_field(counts["X26ABC2"], "inbox")) == "0"  # not yet in the inbox list
        assert _text(_field(counts["X26ABC1"], "outbox")) == "1"


async def test_a_routing_error_is_shown() -> None:
    async with LocalMeshServer() as server:
        sent = server.add_synthetic_message("X26ABC2", 10, checksum=False)
        message = server.message(sent)
        assert message is not None
        message.routing_error = "EPL-153 <b>"  # as GP routing leaves it (issue 13)
        page = await asyncio.to_thread(_get, f"{server.url}/view/messages/{sent}")
        assert _text(_by_id(_document(page.text), "routing-error")) == "EPL-153 <b>"
