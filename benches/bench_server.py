"""Local MESH server benchmarks (measure, never gate).

* discard-mode upload: a raw-socket sender (the cheapest possible client) streams chunks to
  ``meshpipe serve --store discard`` in another process; compared with the same sender into a
  bare TCP sink measured in the same run. Reports MB/s, server CPU seconds per GB, peak RSS.
* synthetic download from the same server.
* NHS's mesh-client sending and receiving one CSV extract through mesh-sandbox and through
  ``meshpipe serve --rules sandbox`` (issue 7): MB/s both ways and server peak RSS.

Sizes: MESHPIPE_BENCH_MIB for the socket runs (default 1024) and MESHPIPE_BENCH_SANDBOX_MIB for
the mesh-client comparison (default 256: the sandbox holds bodies in memory and gzips downloads
at level 9, about 6 MB/s here; set 1024 for issue 7's 1 GiB figure).

Run: ``.venv/bin/python -m pytest benches/bench_server.py -s``
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from meshpipe.auth import make_token
from meshpipe.memory import peak_rss
from meshpipe.server.process import server_process

MiB = 1024 * 1024
KEY = "BenchKey"
TOTAL_MIB = int(os.environ.get("MESHPIPE_BENCH_MIB", "1024"))
CHUNK_MIB = 64


def process_figures(pid: int) -> dict[str, float]:
    """CPU seconds (user+system) and peak RSS (MiB) of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    return {"cpu_seconds": cpu, "peak_rss_mib": peak_rss(pid) / MiB}


@contextmanager
def meshpipe_serve(*args: str) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    common = ["--shared-key", KEY, "--log-level", "WARNING"]
    with server_process(*common, *args) as (url, process):
        port = urlparse(url).port
        assert port is not None
        yield port, process


SINK = """
import socket, sys
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(8)
print(server.getsockname()[1], flush=True)
buffer = bytearray(1 << 20)
while True:
    conn, _ = server.accept()
    with conn:
        remaining = int(conn.recv(64).decode().strip())
        while remaining > 0:
            got = conn.recv_into(buffer)
            if not got:
                break
            remaining -= got
        conn.sendall(b"ok")
"""


def _post(port: int, path: str, headers: dict[str, str], body: memoryview) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        lines = [f"POST {path} HTTP/1.1", "Host: bench", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sock.sendall(body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        head, _, rest = answer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(rest) < length:
            rest += sock.recv(65536)
        return int(head.split(b" ")[1]), rest


def upload_raw(port: int, total_mib: int, body: memoryview) -> str:
    chunks = total_mib // CHUNK_MIB
    token = lambda: make_token("X26ABC1", "password", KEY, nonce=os.urandom(8).hex())  # noqa: E731
    first = {
        "Authorization": token(),
        "mex-To": "X26ABC2",
        "mex-WorkflowID": "BENCH",
        "mex-Chunk-Range": f"1:{chunks}",
    }
    status, answer = _post(port, "/messageexchange/X26ABC1/outbox", first, body)
    assert status == 202, answer
    message_id = str(json.loads(answer)["messageID"])
    for number in range(2, chunks + 1):
        headers = {"Authorization": token(), "mex-Chunk-Range": f"{number}:{chunks}"}
        status, answer = _post(
            port, f"/messageexchange/X26ABC1/outbox/{message_id}/{number}", headers, body
        )
        assert status == 202, answer
    return message_id


def sink_raw(port: int, total_mib: int, body: memoryview) -> None:
    for _ in range(total_mib // CHUNK_MIB):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(f"{len(body):<63}\n".encode()[:64])
            sock.sendall(body)
            assert sock.recv(2) == b"ok"


def report(name: str, figures: dict[str, Any]) -> None:
    print(
        f"\n{name}: "
        + ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
        )
    )


@pytest.mark.benchmark(group="server")
def test_discard_upload_and_synthetic_download(benchmark: Any) -> None:
    body = memoryview(random.Random(1).randbytes(CHUNK_MIB * MiB))
    total = TOTAL_MIB * MiB
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        sink_port = int(sink.stdout.readline())
        started = time.perf_counter()
        sink_raw(sink_port, TOTAL_MIB, body)
        ceiling = total / (time.perf_counter() - started) / 1e6
    finally:
        sink.kill()
        sink.wait()
    with meshpipe_serve("--store", "discard", "--rules", "sandbox") as (port, process):
        before = process_figures(process.pid)
        started = time.perf_counter()
        message_id = benchmark.pedantic(
            upload_raw, args=(port, TOTAL_MIB, body), rounds=1, iterations=1
        )
        upload = total / (time.perf_counter() - started) / 1e6
        after = process_figures(process.pid)
        download_started = time.perf_counter()
        received = download_raw(port, message_id, TOTAL_MIB // CHUNK_MIB)
        download = received / (time.perf_counter() - download_started) / 1e6
        final = process_figures(process.pid)
    figures = {
        "upload_MBps": upload,
        "tcp_sink_ceiling_MBps": ceiling,
        "upload_vs_ceiling": upload / ceiling,
        "server_cpu_s_per_GB": (after["cpu_seconds"] - before["cpu_seconds"]) / (total / 1e9),
        "synthetic_download_MBps": download,
        "server_peak_rss_MiB": final["peak_rss_mib"],
    }
    benchmark.extra_info.update(figures)
    report(f"discard upload {TOTAL_MIB} MiB in {CHUNK_MIB} MiB chunks", figures)


def download_raw(port: int, message_id: str, chunks: int) -> int:
    received = 0
    buffer = bytearray(MiB)
    for number in range(1, chunks + 1):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            token = make_token("X26ABC2", "password", KEY, nonce=os.urandom(8).hex())
            path = f"/messageexchange/X26ABC2/inbox/{message_id}/{number}"
            request = f"GET {path} HTTP/1.1\r\nHost: b\r\nAuthorization: {token}\r\n"
            sock.sendall(f"{request}Connection: close\r\n\r\n".encode())
            while got := sock.recv_into(buffer):
                received += got
    return received


def write_extract(path: Path, size: int) -> None:
    rng = random.Random(5)
    lines = [
        f"{rng.randrange(10**9, 10**10)},{rng.choice(['SMITH', 'JONES', 'TAYLOR'])},"
        f"{rng.randrange(1, 29):02d}/{rng.randrange(1, 13):02d}/{rng.randrange(1930, 2024)}\n"
        for _ in range(20000)
    ]
    block = "".join(lines).encode()
    with open(path, "wb") as handle:
        written = 0
        while written < size:
            piece = block[: size - written]
            handle.write(piece)
            written += len(piece)


@contextmanager
def sandbox_process(data_dir: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    from tests.peers import run_sandbox

    with run_sandbox(data_dir, shared_key=KEY) as sandbox:
        yield int(sandbox.url.rsplit(":", 1)[1]), sandbox.process


def mesh_client_round_trip(port: int, source: Path) -> tuple[float, float]:
    from mesh_client import MeshClient

    url = f"http://127.0.0.1:{port}"
    size = source.stat().st_size
    with (
        MeshClient(url, "X26ABC1", "password", shared_key=KEY.encode()) as sender,
        open(source, "rb") as data,
    ):
        started = time.perf_counter()
        message_id = sender.send_message("X26ABC2", data, workflow_id="TEST_WORKFLOW")
        send = size / (time.perf_counter() - started) / 1e6
    with MeshClient(url, "X26ABC2", "password", shared_key=KEY.encode()) as receiver:
        started = time.perf_counter()
        message = receiver.retrieve_message(message_id)
        received = 0
        while piece := message.read(MiB):
            received += len(piece)
        receive = received / (time.perf_counter() - started) / 1e6
        message.close()
        receiver.acknowledge_message(message_id)
    assert received == size
    return send, receive


@pytest.mark.benchmark(group="server")
def test_mesh_client_through_sandbox_and_meshpipe(benchmark: Any) -> None:
    size = int(os.environ.get("MESHPIPE_BENCH_SANDBOX_MIB", "256")) * MiB
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "extract.csv"
        write_extract(source, size)
        with sandbox_process(Path(folder) / "sandbox") as (port, process):
            sandbox_send, sandbox_receive = mesh_client_round_trip(port, source)
            sandbox_rss = process_figures(process.pid)["peak_rss_mib"]
        with meshpipe_serve(
            "--store", "dir", "--data-dir", str(Path(folder) / "mp"), "--rules", "sandbox"
        ) as (
            port,
            process,
        ):
            send, receive = benchmark.pedantic(
                mesh_client_round_trip, args=(port, source), rounds=1, iterations=1
            )
            meshpipe_rss = process_figures(process.pid)["peak_rss_mib"]
    figures = {
        "MiB": size // MiB,
        "sandbox_send_MBps": sandbox_send,
        "sandbox_receive_MBps": sandbox_receive,
        "sandbox_peak_rss_MiB": sandbox_rss,
        "meshpipe_send_MBps": send,
        "meshpipe_receive_MBps": receive,
        "meshpipe_peak_rss_MiB": meshpipe_rss,
        "send_ratio": send / sandbox_send,
        "receive_ratio": receive / sandbox_receive,
    }
    benchmark.extra_info.update(figures)
    report("mesh-client through mesh-sandbox vs meshpipe serve", figures)
