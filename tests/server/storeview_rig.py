"""A ``meshpipe serve`` holding real messages sent by meshpipe's client, for the store view's
tests (tests/server/test_view.py, test_view_browser.py)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshpipe.client import MeshClient
from meshpipe.config import MeshConfig
from meshpipe.headers import SendHeaders
from meshpipe.server.process import server_process
from meshpipe.transfer import receive_message, send_file
from meshpipe.units import MiB

CHUNK = 5 * MiB  # strict rules: every chunk but the last at least 5 MiB
SHARED_KEY = "store-view-shared-key-5b2c0e"
TOKEN = "store-view-admin-token-4f1d9a7c"
PASSWORDS = {m: f"password-of-{m}-9d41e7" for m in ("X26ABC1", "X26ABC2", "X26ABC3")}
HOSTILE_SUBJECT = '<script>alert("subject")</script> & <b>bold</b>'
HOSTILE_FILE = '"><img src=x onerror=alert(1)>.txt'


@dataclass(frozen=True)
class Rig:
    url: str
    store: Path
    source: Path
    chunked: str
    hostile: str
    collected: str


def mailboxes_file(path: Path) -> Path:
    names = {"X26ABC1": "TESTMB1", "X26ABC2": "TESTMB2", "X26ABC3": "TESTMB3"}
    lines = [
        json.dumps(
            {
                "mailbox_id": mailbox,
                "mailbox_name": names[mailbox],
                "ods_code": "X26",
                "org_code": "X26",
                "org_name": "Test Trust",
                "password": password,
            }
        )
        for mailbox, password in PASSWORDS.items()
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def client(url: str, mailbox: str) -> MeshClient:
    return MeshClient(MeshConfig(url, mailbox, PASSWORDS[mailbox], SHARED_KEY))


async def send_all(url: str, source: Path, small: Path, received: Path) -> tuple[str, str, str]:
    async with client(url, "X26ABC1") as sender:
        chunked = await send_file(
            sender,
            source,
            SendHeaders(to="X26ABC2", workflow_id="TEST_WORKFLOW", subject="three chunks"),
            chunk_size=CHUNK,
        )
        hostile = await send_file(
            sender,
            small,
            SendHeaders(
                to="X26ABC2",
                workflow_id="TEST_WORKFLOW",
                subject=HOSTILE_SUBJECT,
                filename=HOSTILE_FILE,
            ),
        )
        collected = await send_file(
            sender, small, SendHeaders(to="X26ABC2", workflow_id="TEST_WORKFLOW", subject="taken")
        )
    async with client(url, "X26ABC2") as receiver:
        result = await receive_message(receiver, collected.message_id, received)
        assert result.acknowledged
    return chunked.message_id, hostile.message_id, collected.message_id


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """``meshpipe serve`` (strict rules, dir store) holding three messages from X26ABC1 to
    X26ABC2: one of three chunks, one with a hostile subject and file name (both waiting), and
    one received and acknowledged."""
    root = tmp_path_factory.mktemp("store-view")
    source = root / "extract.bin"
    source.write_bytes(os.urandom(2 * CHUNK + 12345))
    small = root / "small.txt"
    small.write_bytes(b"a small message\n")
    store = root / "store"
    args = ["--rules", "strict", "--store", "dir", "--data-dir", str(store)]
    args += ["--shared-key", SHARED_KEY, "--mailboxes", str(mailboxes_file(root / "mb.jsonl"))]
    with server_process(*args, "--log-level", "WARNING") as (url, _):
        ids = asyncio.run(send_all(url, source, small, root / "received.txt"))
        yield Rig(url, store, source, *ids)
