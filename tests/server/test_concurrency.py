"""Many messages and chunks in flight at once: no cross-talk, nothing lost, nothing partial."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp

from meshpipe.server import LocalMeshServer
from tests.peers import SANDBOX_SHARED_KEY, auth_headers


async def send_message(session: aiohttp.ClientSession, url: str, parts: list[bytes]) -> str:
    total = len(parts)
    send = {"mex-To": "X26ABC2", "mex-WorkflowID": "TEST_WORKFLOW", "mex-Chunk-Range": f"1:{total}"}
    async with session.post(
        f"{url}/messageexchange/X26ABC1/outbox",
        headers=auth_headers("X26ABC1", **send),
        data=parts[0],
    ) as r:
        assert r.status == 202, await r.text()
        message_id = str((await r.json())["message_id"])

    async def chunk(number: int) -> None:
        path = f"{url}/messageexchange/X26ABC1/outbox/{message_id}/{number}"
        headers = auth_headers("X26ABC1", **{"mex-Chunk-Range": f"{number}:{total}"})
        async with session.post(path, headers=headers, data=parts[number - 1]) as r:
            assert r.status == 202, await r.text()

    await asyncio.gather(*(chunk(n) for n in range(2, total)))
    if total > 1:
        await chunk(total)
    return message_id


async def test_concurrent_messages_and_chunks(tmp_path: Path) -> None:
    async with LocalMeshServer(
        rules="sandbox", store="dir", data_dir=tmp_path, shared_key=SANDBOX_SHARED_KEY
    ) as server:
        messages = [[os.urandom(50_000 + 1000 * i) for _ in range(1 + i % 4)] for i in range(40)]
        connector = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(connector=connector) as session:
            ids = await asyncio.gather(
                *(send_message(session, server.url, parts) for parts in messages)
            )
            assert len(set(ids)) == len(ids)
            async with session.get(
                f"{server.url}/messageexchange/X26ABC2/inbox", headers=auth_headers("X26ABC2")
            ) as r:
                assert sorted((await r.json())["messages"]) == sorted(ids)

            async def download(message_id: str, total: int) -> list[bytes]:
                async def one(number: int) -> bytes:
                    path = f"{server.url}/messageexchange/X26ABC2/inbox/{message_id}/{number}"
                    async with session.get(path, headers=auth_headers("X26ABC2")) as r:
                        assert r.status == (200 if number == total else 206)
                        return await r.read()

                return list(await asyncio.gather(*(one(n) for n in range(1, total + 1))))

            received = await asyncio.gather(
                *(
                    download(message_id, len(parts))
                    for message_id, parts in zip(ids, messages, strict=True)
                )
            )
        assert received == messages
