"""discard mode (check and drop bodies, keep metadata) and synthetic messages."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import xxhash
import zstandard
from mesh_client import MeshClient

from meshpipe.headers import SendHeaders
from meshpipe.server import LocalMeshServer, synthetic_bytes, synthetic_xxh3_128
from meshpipe.server.checker import ChunkChecker, ChunkCheckError
from tests.peers import SANDBOX_SHARED_KEY, auth_headers

Start = Callable[..., LocalMeshServer]


def test_discard_checks_each_chunk_and_keeps_only_metadata(threaded_server: Start) -> None:
    server = threaded_server(store="discard", rules="sandbox")
    data = b"".join(f"{i},SMITH,01/02/1990\n".encode() for i in range(200))
    pieces = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    with MeshClient(
        server.url,
        "X26ABC1",
        "password",
        shared_key=SANDBOX_SHARED_KEY.encode(),
        max_chunk_size=1000,
    ) as mesh:
        message_id = mesh.send_message("X26ABC2", data, workflow_id="TEST_WORKFLOW", compress=True)
    details = requests.get(
        f"{server.url}/messageexchange/admin/message/{message_id}", timeout=10
    ).json()
    assert details["discarded"] is True
    assert [c["size"] for c in details["chunks"]] == [len(p) for p in pieces]
    assert [c["xxh3_128"] for c in details["chunks"]] == [
        xxhash.xxh3_128_hexdigest(p) for p in pieces
    ]
    assert all(c["stored_size"] < c["size"] for c in details["chunks"])  # gzip was decoded
    # the download is synthetic, with the same chunk sizes
    with MeshClient(
        server.url, "X26ABC2", "password", shared_key=SANDBOX_SHARED_KEY.encode()
    ) as mesh:
        message = mesh.retrieve_message(message_id)
        received = message.read()
        message.close()
    assert received == synthetic_bytes(0, 0, len(data))


def test_discard_decodes_zstd_payloads(threaded_server: Start) -> None:
    server = threaded_server(store="discard", rules="sandbox")
    payload = b"zstd payload " * 1000
    frame = zstandard.ZstdCompressor(level=3).compress(payload)
    answer = requests.post(
        f"{server.url}/messageexchange/X26ABC1/outbox",
        headers=auth_headers(
            "X26ABC1", **{"mex-To": "X26ABC2", "mex-WorkflowID": "W", "mex-Content-Compressed": "Y"}
        ),
        data=frame,
        timeout=10,
    )
    assert answer.status_code == 202
    message = server.message(answer.json()["message_id"])
    assert message is not None
    record = message.chunks[1]
    assert record.stored_size == len(frame)
    assert record.size == len(frame)  # HTTP-level size: the server cannot know the payload is zstd
    assert record.xxh3_128 == xxhash.xxh3_128_hexdigest(payload)


def test_checker_refuses_truncated_streams() -> None:
    checker = ChunkChecker("gzip")
    checker.update(gzip.compress(b"abc" * 1000)[:-10])
    with pytest.raises(ChunkCheckError):
        checker.finish()
    checker = ChunkChecker("", payload_compressed=True)
    checker.update(zstandard.ZstdCompressor().compress(b"abc" * 1000)[:-4])
    with pytest.raises(ChunkCheckError):
        checker.finish()
    two_members = ChunkChecker("gzip")
    two_members.update(gzip.compress(b"one") + gzip.compress(b"two"))
    result = two_members.finish()
    assert (result.size, result.xxh3_128) == (6, xxhash.xxh3_128_hexdigest(b"onetwo"))


@pytest.mark.parametrize("store", ["memory", "discard"])
def test_synthetic_messages_download_deterministically(threaded_server: Start, store: str) -> None:
    server = threaded_server(store=store, rules="sandbox")
    size = 3 * 1024 * 1024 + 12345
    message_id = server.add_synthetic_message("X26ABC2", size, chunk_size=1024 * 1024, seed=7)
    over_http = requests.post(
        f"{server.url}/messageexchange/admin/synthetic",
        json={"mailbox_id": "X26ABC2", "size": 1000, "chunk_size": 600, "seed": 7},
        timeout=10,
    ).json()
    assert over_http["total_chunks"] == 2
    statuses = []
    digest = xxhash.xxh3_128()
    for number in range(1, 5):
        answer = requests.get(
            f"{server.url}/messageexchange/X26ABC2/inbox/{message_id}/{number}",
            headers=auth_headers("X26ABC2"),
            timeout=30,
        )
        statuses.append(answer.status_code)
        digest.update(answer.content)
    assert statuses == [206, 206, 206, 200]
    assert digest.hexdigest() == synthetic_xxh3_128(7, size)
    with MeshClient(
        server.url, "X26ABC2", "password", shared_key=SANDBOX_SHARED_KEY.encode()
    ) as mesh:
        small = mesh.retrieve_message(over_http["message_id"])
        assert small.read() == synthetic_bytes(7, 0, 1000)
        small.close()


def test_synthetic_bytes_are_csv_and_seeded() -> None:
    one = synthetic_bytes(1, 0, 4096)
    assert one == synthetic_bytes(1, 0, 4096)
    assert one != synthetic_bytes(2, 0, 4096)
    assert one.count(b"\n") > 50 and b"," in one
    assert synthetic_bytes(1, 100, 50) == one[100:150]


def test_checker_gzip_in_pieces() -> None:
    data = synthetic_bytes(4, 0, 3 * 1024 * 1024)
    packed = gzip.compress(data, 1)
    checker = ChunkChecker("gzip")
    for start in range(0, len(packed), 65536):
        checker.update(packed[start : start + 65536])
    result = checker.finish()
    assert (result.stored_size, result.size) == (len(packed), len(data))
    assert result.xxh3_128 == xxhash.xxh3_128_hexdigest(data)
    broken = ChunkChecker("gzip")
    with pytest.raises(ChunkCheckError):
        broken.update(b"\x1f\x8b\x08\x00" + b"\xff" * 100)
        broken.finish()


async def test_meshpipe_client_verifies_a_synthetic_message(tmp_path: Path) -> None:
    from meshpipe.client import MeshClient as AsyncMeshClient
    from meshpipe.config import MeshConfig
    from meshpipe.transfer import receive_message

    size = 11 * 1024 * 1024 + 7
    async with LocalMeshServer(store="discard", shared_key=SANDBOX_SHARED_KEY) as server:
        message_id = server.add_synthetic_message(
            "X26ABC2", size, chunk_size=5 * 1024 * 1024, seed=3
        )
        checksum = server.message(message_id).checksum  # type: ignore[union-attr]
        assert checksum.startswith("meshpipe/1 xxh3-128:") and f"size:{size}" in checksum
        async with AsyncMeshClient(
            MeshConfig(server.url, "X26ABC2", "password", SANDBOX_SHARED_KEY)
        ) as client:
            result = await receive_message(client, message_id, tmp_path / "synthetic.csv")
        assert result.verified and result.acknowledged
        assert result.size == size


def test_discarded_message_downloads_carry_no_sender_checksum(threaded_server: Start) -> None:
    server = threaded_server(store="discard", rules="sandbox")
    answer = requests.post(
        f"{server.url}/messageexchange/X26ABC1/outbox",
        headers=auth_headers(
            "X26ABC1",
            **{"mex-To": "X26ABC2", "mex-WorkflowID": "W", "mex-Content-Checksum": "md5:abc"},
        ),
        data=b"real data",
        timeout=10,
    )
    message_id = answer.json()["message_id"]
    download = requests.get(
        f"{server.url}/messageexchange/X26ABC2/inbox/{message_id}",
        headers=auth_headers("X26ABC2"),
        timeout=10,
    )
    assert download.content == synthetic_bytes(0, 0, 9)
    assert "mex-Content-Checksum" not in download.headers


@pytest.mark.parametrize("codec", ["none", "gzip", "zstd"])
async def test_discard_checks_meshpipe_client_chunks(tmp_path: Path, codec: str) -> None:
    """meshpipe's client in each codec: the server's per-chunk decoded digests match the source."""
    from meshpipe.client import MeshClient as AsyncMeshClient
    from meshpipe.config import MeshConfig
    from meshpipe.transfer import send_file

    chunk_size = 5 * 1024 * 1024
    data = synthetic_bytes(8, 0, 2 * chunk_size + 4321)
    source = tmp_path / "extract.csv"
    source.write_bytes(data)
    # sandbox rules: a zstd payload is opaque to MESH, so strict rules measure its compressed
    # body against the 5 MiB minimum (see the next test)
    async with LocalMeshServer(
        store="discard", shared_key=SANDBOX_SHARED_KEY, rules="sandbox"
    ) as server:
        async with AsyncMeshClient(
            MeshConfig(server.url, "X26ABC1", "password", SANDBOX_SHARED_KEY)
        ) as client:
            sent = await send_file(
                client,
                source,
                SendHeaders(to="X26ABC2", workflow_id="TEST_WORKFLOW"),
                codec=codec,
                chunk_size=chunk_size,
                min_payload_size=0,
            )
        message = server.message(sent.message_id)
        assert message is not None and message.status == "accepted" and message.discarded
        records = [message.chunks[n] for n in sorted(message.chunks)]
    slices = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    assert [r.xxh3_128 for r in records] == [xxhash.xxh3_128_hexdigest(s) for s in slices]
    if codec == "gzip":
        assert [r.size for r in records] == [len(s) for s in slices]
    else:
        assert all(r.stored_size == r.size for r in records)
    if codec != "none":
        assert all(r.stored_size < len(s) for r, s in zip(records, slices, strict=True))


async def test_strict_rules_measure_an_opaque_zstd_payload_by_its_body(tmp_path: Path) -> None:
    """MESH cannot decode a zstd payload (it travels as opaque bytes flagged
    mex-Content-Compressed), so its "decompressed" size is the body size: under strict rules
    every chunk but the last must carry ≥ 5 MiB of compressed bytes. meshpipe's client refuses
    such a chunk before sending it; sent anyway, the server refuses it as MESH would."""
    from meshpipe.client import MeshClient as AsyncMeshClient
    from meshpipe.config import MeshConfig
    from meshpipe.errors import ChunkSizeError, MeshHTTPError
    from meshpipe.transfer import send_file

    chunk_size = 5 * 1024 * 1024
    source = tmp_path / "extract.csv"
    source.write_bytes(synthetic_bytes(9, 0, 3 * chunk_size))
    async with (
        LocalMeshServer(store="discard", shared_key=SANDBOX_SHARED_KEY, rules="strict") as server,
        AsyncMeshClient(
            MeshConfig(server.url, "X26ABC1", "password", SANDBOX_SHARED_KEY)
        ) as client,
    ):
        with pytest.raises(ChunkSizeError, match="zstd"):
            await send_file(
                client,
                source,
                SendHeaders(to="X26ABC2", workflow_id="TEST_WORKFLOW"),
                codec="zstd",
                chunk_size=chunk_size,
            )
        assert not server.mailroom.all()
        with pytest.raises(MeshHTTPError) as refused:
            await send_file(
                client,
                source,
                SendHeaders(to="X26ABC2", workflow_id="TEST_WORKFLOW"),
                codec="zstd",
                chunk_size=chunk_size,
                min_payload_size=0,
            )
        assert refused.value.status == 417 and "ChunkTooSmall" in str(refused.value)
        assert not [m for m in server.mailroom.all() if m.status == "accepted"]
