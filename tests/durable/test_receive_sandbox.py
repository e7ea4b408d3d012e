"""The crash-and-resume receive against NHS's mesh-sandbox, through the counting proxy: the
proxy holds the download of chunk 3 so that the SIGKILL lands there, and counts every
download per chunk."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import Counter
from pathlib import Path

from meshpipe import xxh3_128_file
from meshpipe.client import ClientSettings, MeshClient
from meshpipe.durable import partial_path_for
from meshpipe.headers import SendHeaders
from meshpipe.transfer import send_file
from tests.client.conftest import FAST_RETRY, make_config
from tests.client.proxy import FaultProxy, Rule
from tests.durable.receiving import (
    CHUNK,
    PATIENCE,
    RECIPIENT,
    SENDER,
    mesh_env,
    meshpipe_argv,
    receive_record,
)
from tests.peers import Sandbox

SIZE = 3 * CHUNK + 777  # four chunks


def downloads(proxy: FaultProxy, message_id: str) -> Counter[int]:
    pattern = re.compile(rf"/messageexchange/{RECIPIENT}/inbox/{message_id}(?:/(\d+))?")
    counted: Counter[int] = Counter()
    for event in proxy.events:
        found = pattern.fullmatch(event.path)
        if event.kind == "start" and event.method == "GET" and found:
            counted[int(found.group(1) or 1)] += 1
    return counted


async def receive(proxy: FaultProxy, message_id: str, out: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *meshpipe_argv("receive", message_id, "--out", str(out), "--concurrency", "1"),
        env=mesh_env(proxy.url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_killed_receive_resumes_against_mesh_sandbox(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(SIZE))
    settings = ClientSettings(retry=FAST_RETRY)
    async with MeshClient(make_config(sandbox.url, SENDER), settings) as sender:
        sent = await send_file(
            sender, source, SendHeaders(to=RECIPIENT, workflow_id="DURABLE_TEST"), chunk_size=CHUNK
        )
    message_id = sent.message_id
    out = tmp_path / "received.bin"
    async with FaultProxy(sandbox.url) as proxy:
        proxy.add(
            Rule(
                "GET",
                rf"/messageexchange/{RECIPIENT}/inbox/{message_id}/3",
                "gather",
                gather=10**6,  # never reached: held until the proxy closes
                gather_timeout=PATIENCE,
            )
        )
        first = await receive(proxy, message_id, out)

        async def two_written() -> bool:
            record = await asyncio.to_thread(receive_record, message_id)
            return record is not None and record.chunks_done >= 2

        deadline = time.monotonic() + PATIENCE
        while not (downloads(proxy, message_id)[3] and await two_written()):
            assert first.returncode is None, "meshpipe exited before chunk 3 was held"
            assert time.monotonic() < deadline, "gave up waiting for chunk 3"
            await asyncio.sleep(0.05)
        first.kill()
        await first.communicate()
        assert partial_path_for(out, message_id).exists() and not out.exists()

        second = await receive(proxy, message_id, out)
        stdout, stderr = await second.communicate()
        assert second.returncode == 0, stderr.decode()
        assert stdout.decode().strip() == str(out)
        assert downloads(proxy, message_id) == {1: 1, 2: 1, 3: 2, 4: 1}
        acks = [e for e in proxy.events if e.kind == "start" and e.path.endswith("/acknowledged")]
        assert len([e for e in acks if message_id in e.path]) == 1
    assert xxh3_128_file(out) == xxh3_128_file(source)
    record = receive_record(message_id)
    assert record is not None and record.state == "acknowledged"
