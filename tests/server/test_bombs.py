"""Decompression bombs: uploads decode in bounded pieces, off the event loop, and stop at their
cap; a stored bomb downloads in bounded pieces. Memory is read from the OS (VmHWM) of a server
in its own process."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import requests

from meshpipe.memory import peak_rss
from meshpipe.server import LocalMeshServer
from meshpipe.server.checker import ChunkChecker, ChunkCheckError, DecodedTooLarge
from meshpipe.server.process import server_process
from meshpipe.server.rules import SANDBOX_MAX_DECODED_CHUNK_SIZE, RuleSet
from meshpipe.units import GiB, MiB
from tests.peers import SANDBOX_SHARED_KEY, token
from tests.server.processes import serve_with

Start = Callable[..., LocalMeshServer]

#: The most a server's peak RSS may grow by while it handles any upload or download.
MEMORY_BUDGET = 64 * MiB


def zstd_bomb(size: int) -> bytes:
    """A zstd frame of ``size`` zero bytes (a multiple of 128 KiB) written by hand: RLE blocks
    of 128 KiB, 4 bytes each (1 GiB in 32 KiB)."""
    block = 128 * 1024
    assert size % block == 0
    header = b"\x28\xb5\x2f\xfd" + bytes([0x00, 0x38])  # no content size; a 128 KiB window
    blocks = []
    for index in range(size // block):
        last = index == size // block - 1
        blocks.append((int(last) | 1 << 1 | block << 3).to_bytes(3, "little") + b"\x00")
    return header + b"".join(blocks)


def gzip_bomb(size: int) -> bytes:
    """gzip members of 64 MiB of zeros each (about 64 KiB a member), ``size`` bytes in all."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    member = compressor.compress(bytes(64 * MiB)) + compressor.flush()
    return member * (size // (64 * MiB))


def post(port: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
    """One upload over a raw socket; the status and JSON body of the answer (which may come
    before the whole body is sent, when the server refuses it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        lines = [
            "POST /messageexchange/X26ABC1/outbox HTTP/1.1",
            "Host: t",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(body)
        answer = b""
        try:
            while piece := sock.recv(65536):
                answer += piece
        except ConnectionResetError:
            pass
    head, _, content = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(content or b"{}")


def send_headers(key: str, **extra: str) -> dict[str, str]:
    return {
        "Authorization": token("X26ABC1", shared_key=key, nonce=os.urandom(8).hex()),
        "mex-To": "X26ABC2",
        "mex-WorkflowID": "TEST_WORKFLOW",
        "mex-Chunk-Range": "1:1",
        **extra,
    }


GZIP = {"Content-Encoding": "gzip"}
ZSTD = {"mex-Content-Compressed": "Y"}


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {"zstd 1 GiB": zstd_bomb(1 * GiB), "gzip 1 GiB": gzip_bomb(1 * GiB)}


def warm_up(port: int, key: str) -> None:
    """A small gzip and a small zstd upload, so the decoders' modules are loaded before the
    baseline is read."""
    for extra, body in ((GZIP, zlib.compress(b"warm" * 1000, wbits=31)), (ZSTD, zstd_bomb(2**17))):
        status, answer = post(port, send_headers(key, **extra), body)
        assert status == 202, answer


def test_upload_bombs_are_refused_at_their_cap_with_memory_flat(bombs: dict[str, bytes]) -> None:
    """Strict rules with a 512 MiB decoded chunk cap: 1 GiB bombs (32 KiB of zstd, 1 MiB of
    gzip) are refused with 413, a 256 MiB one is accepted, and the server's peak RSS grows by
    less than 64 MiB through all of them."""
    key = "BombKey"
    args = ["--shared-key", key, "--log-level", "WARNING", "--max-decoded-chunk-size", "512MiB"]
    with server_process(*args) as (url, process):
        port = int(url.rsplit(":", 1)[1])
        warm_up(port, key)
        baseline = peak_rss(process.pid)
        for name, extra in (("zstd 1 GiB", ZSTD), ("gzip 1 GiB", GZIP)):
            status, answer = post(port, send_headers(key, **extra), bombs[name])
            assert status == 413, (name, answer)
            assert answer["errorCode"] == "ChunkDecodesTooLarge", answer
            assert str(512 * MiB) in answer["errorDescription"]
        status, answer = post(port, send_headers(key, **GZIP), gzip_bomb(256 * MiB))
        assert status == 202, answer
        status, answer = post(port, send_headers(key, **ZSTD), zstd_bomb(256 * MiB))
        assert status == 202, answer
        growth = peak_rss(process.pid) - baseline
    assert growth < MEMORY_BUDGET, f"peak RSS grew by {growth / MiB:.0f} MiB"


def test_a_stored_bomb_downloads_in_bounded_pieces() -> None:
    """A 512 MiB gzip bomb accepted under sandbox rules, downloaded by a client that does not
    accept gzip: the server streams it decoded, its peak RSS growing by less than 64 MiB."""
    with serve_with() as (url, process):
        port = int(url.rsplit(":", 1)[1])
        warm_up(port, SANDBOX_SHARED_KEY)
        baseline = peak_rss(process.pid)
        status, answer = post(port, send_headers(SANDBOX_SHARED_KEY, **GZIP), gzip_bomb(512 * MiB))
        assert status == 202, answer
        message_id = answer["messageID"]
        auth = token("X26ABC2", nonce=os.urandom(8).hex())
        path = f"/messageexchange/X26ABC2/inbox/{message_id}"
        received = 0
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            request = f"GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\n"
            sock.sendall(f"{request}Connection: close\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(65536)
            head, _, start = head.partition(b"\r\n\r\n")
            received = len(start)
            buffer = bytearray(MiB)
            while got := sock.recv_into(buffer):
                received += got
        growth = peak_rss(process.pid) - baseline
    assert head.split(b" ")[1] == b"200", head
    assert b"content-encoding" not in head.lower()
    assert received == 512 * MiB
    assert growth < MEMORY_BUDGET, f"peak RSS grew by {growth / MiB:.0f} MiB"


def test_a_ping_is_answered_while_a_bomb_decodes(
    threaded_server: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bomb's first piece is held in the decoder until the ping has been answered: the ping
    can only be answered then if decoding runs off the event loop."""
    decoding = threading.Event()
    answered = threading.Event()
    update_all = ChunkChecker.update_all

    def held(self: ChunkChecker, pieces: Iterable[bytes]) -> None:
        if self.decodes and not decoding.is_set():
            decoding.set()
            answered.wait(30)
        update_all(self, pieces)

    monkeypatch.setattr(ChunkChecker, "update_all", held)
    server = threaded_server(rules="sandbox", max_decoded_chunk_size=64 * MiB)
    port = server.port
    outcome: list[tuple[int, dict[str, Any]]] = []
    upload = threading.Thread(
        target=lambda: outcome.append(
            post(port, send_headers(SANDBOX_SHARED_KEY, **ZSTD), zstd_bomb(1 * GiB))
        )
    )
    upload.start()
    try:
        assert decoding.wait(30), "the bomb never reached the decoder"
        ping = requests.get(f"{server.url}/_ping", timeout=10)
        assert ping.status_code == 200
        assert upload.is_alive() and not outcome  # the bomb is still being decoded
    finally:
        answered.set()
        upload.join(60)
    assert outcome[0][0] == 413, outcome


def test_checker_stops_at_its_limit_without_expanding_the_rest() -> None:
    # A 1 GiB zstd bomb against a 3 MiB cap: refused, and the checker's decoded count never
    # went past one output buffer beyond the cap (the engine's own test pins that bound).
    checker = ChunkChecker("", payload_compressed=True, decoded_limit=3 * MiB)
    with pytest.raises(DecodedTooLarge) as refused:
        checker.update(zstd_bomb(1 * GiB))
    assert refused.value.limit == 3 * MiB


def test_a_zstd_frame_asking_for_a_huge_window_is_refused() -> None:
    # Window descriptor exponent 27 - 10 = 17 -> 2^27 = 128 MiB, above the 8 MiB the server allows.
    frame = b"\x28\xb5\x2f\xfd" + bytes([0x00, 17 << 3]) + b"\x00" * 16
    checker = ChunkChecker("", payload_compressed=True)
    with pytest.raises(ChunkCheckError):
        checker.update(frame)
        checker.finish()


def test_every_rule_set_caps_decoded_chunks() -> None:
    assert RuleSet.sandbox().max_decoded_chunk_size == SANDBOX_MAX_DECODED_CHUNK_SIZE
    assert RuleSet.strict().max_decoded_chunk_size == RuleSet.strict().max_message_size
    assert RuleSet.strict(max_decoded_chunk_size=GiB).max_decoded_chunk_size == GiB
