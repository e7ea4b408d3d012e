"""``meshpipe send`` SIGKILLed at a known point (a chunk request held at the proxy), then the
same command again: the recipient gets exactly one complete message with the file's bytes, no
chunk the ledger recorded accepted before the crash is uploaded again, and no second message
exists, against meshpipe serve (dir store) and NHS's mesh-sandbox."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshpipe._meshpipe import xxh3_128_file
from tests.durable.send_helpers import (
    HoldingProxy,
    SendCommand,
    accepted_chunks,
    kill_when_held,
    ledger_send,
    received_digest,
    sent_messages,
)

CHUNKS = set(range(1, 7))


@dataclass(frozen=True)
class KillPoint:
    """Hold chunk ``chunk`` (before the server sees it, or with ``after_forward`` once the
    server answered, the answer lost) and kill when MESH has answered ``answered``."""

    chunk: int
    after_forward: bool = False
    answered: tuple[int, ...] = ()


POINTS = {
    "chunk1-not-sent": KillPoint(1),
    "chunk1-answer-lost": KillPoint(1, after_forward=True),
    "after-chunk1": KillPoint(2),
    "midway": KillPoint(4, answered=(2, 3)),
    "last-in-flight": KillPoint(6),
    "last-answer-lost": KillPoint(6, after_forward=True),
}
MATRIX = [("serve", name) for name in POINTS] + [
    ("sandbox", "chunk1-answer-lost"),
    ("sandbox", "midway"),
    ("sandbox", "last-in-flight"),
]


@pytest.mark.parametrize(("peer_name", "point"), MATRIX)
async def test_a_killed_send_resumes_into_one_complete_message(
    proxy: HoldingProxy,
    upstream: str,
    source: Path,
    workflow: str,
    point: str,
    tmp_path: Path,
) -> None:
    kill = POINTS[point]
    command = SendCommand(proxy.url, source, workflow)
    proxy.hold(kill.chunk, after_forward=kill.after_forward)
    await kill_when_held(await command.start(), proxy, kill.answered)
    await proxy.drop_held_and_settle()
    crashed = ledger_send()
    before = accepted_chunks(crashed)
    mark = len(proxy.uploads)

    finished = await command.run()

    assert finished.status == 0, finished.err
    message_id = finished.out.strip()
    resent = proxy.uploads_since(mark)
    assert not set(resent) & before, f"chunks {set(resent) & before} were accepted before"
    on_mesh_unrecorded = {kill.chunk} if kill.after_forward else set()
    assert resent == sorted(CHUNKS - before - on_mesh_unrecorded)
    if kill.chunk >= 2:
        assert 1 in before and crashed.message_id == message_id
    if kill.chunk == 6:
        assert before == CHUNKS - {6}
    if kill.chunk == 1 and kill.after_forward:
        assert "created before the interruption" in finished.err
    if kill.chunk == 6 and kill.after_forward:
        assert resent == [] and "completed on MESH before the interruption" in finished.err
    elif kill.chunk >= 2:
        assert "resuming message" in finished.err
    assert [item[0] for item in await sent_messages(upstream, workflow)] == [message_id]
    digest = await asyncio.to_thread(received_digest, upstream, message_id, source, tmp_path)
    assert digest == ledger_send().source.xxh3_128 == xxh3_128_file(source)
    assert ledger_send().state == "completed"
