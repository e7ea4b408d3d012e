"""Large transfers (opt-in: ``-m slow``): server memory stays flat in message size."""

from __future__ import annotations

import os
import socket

import pytest
import xxhash

from meshpipe.memory import peak_rss
from meshpipe.server import synthetic_xxh3_128
from meshpipe.units import MiB
from tests.peers import token
from tests.server.processes import serve_with


def peak_rss_mib(pid: int) -> float:
    return peak_rss(pid) / MiB


def post(port: int, path: str, headers: dict[str, str], body: memoryview) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        lines = [
            f"POST {path} HTTP/1.1",
            "Host: t",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sock.sendall(body)
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
    assert answer.split(b" ")[1] == b"202", answer[:300]
    return answer.partition(b"\r\n\r\n")[2]


@pytest.mark.slow
def test_discard_and_synthetic_memory_is_flat_in_message_size() -> None:
    import json

    chunk = memoryview(os.urandom(64 * MiB))
    chunks = 48  # 3 GiB
    with serve_with("--store", "discard") as (url, process):
        port = int(url.rsplit(":", 1)[1])
        first = {
            "Authorization": token("X26ABC1", nonce=os.urandom(8).hex()),
            "mex-To": "X26ABC2",
            "mex-WorkflowID": "W",
            "mex-Chunk-Range": f"1:{chunks}",
        }
        message_id = json.loads(post(port, "/messageexchange/X26ABC1/outbox", first, chunk))[
            "messageID"
        ]
        for number in range(2, chunks + 1):
            headers = {
                "Authorization": token("X26ABC1", nonce=os.urandom(8).hex()),
                "mex-Chunk-Range": f"{number}:{chunks}",
            }
            post(port, f"/messageexchange/X26ABC1/outbox/{message_id}/{number}", headers, chunk)
        after_upload = peak_rss_mib(process.pid)
        digest = xxhash.xxh3_128()
        buffer = bytearray(MiB)
        for number in range(1, chunks + 1):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                auth = token("X26ABC2", nonce=os.urandom(8).hex())
                path = f"/messageexchange/X26ABC2/inbox/{message_id}/{number}"
                request = f"GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\n"
                sock.sendall(f"{request}Connection: close\r\n\r\n".encode())
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(4096)
                digest.update(head.partition(b"\r\n\r\n")[2])
                while got := sock.recv_into(buffer):
                    digest.update(buffer[:got])
        assert digest.hexdigest() == synthetic_xxh3_128(0, chunks * len(chunk))
        after_download = peak_rss_mib(process.pid)
    assert after_upload < 200, f"server peak RSS {after_upload:.0f} MiB after a 3 GiB upload"
    assert after_download < 200, f"server peak RSS {after_download:.0f} MiB after a 3 GiB download"
