"""``meshpipe demo``: the main job end to end on this machine, with no external MESH.

It starts a local MESH server (``meshpipe serve``, in its own process), generates a realistic
CSV extract, sends it from mailbox X26ABC1 to X26ABC2 with a progress bar, receives it as
X26ABC2 (verified chunk by chunk and whole, fsynced, renamed), acknowledges it, checks the
received file against the original independently, and prints throughput, peak memory and an
integrity verdict. ``--json`` puts one JSON object on the last line of stdout.

With ``--store discard`` the server checks and drops what it receives (no disk needed for the
message) and the receive side downloads a synthetic message of the same size instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from meshpipe import units
from meshpipe._meshpipe import xxh3_128_file
from meshpipe.client import MeshClient
from meshpipe.config import MeshConfig, Secret
from meshpipe.errors import MeshpipeError
from meshpipe.headers import SendHeaders
from meshpipe.memory import peak_rss
from meshpipe.progress import Progress
from meshpipe.server.process import server_process
from meshpipe.synthetic import write_csv
from meshpipe.transfer import receive_message, send_file

SENDER = "X26ABC1"
RECIPIENT = "X26ABC2"
WORKFLOW = "TEST_WORKFLOW"
PASSWORD = "password"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshpipe demo",
        description="Send and receive a generated CSV extract through a local MESH server.",
    )
    parser.add_argument(
        "--size", type=units.size_argument, default=units.GiB, help="extract size (1GiB)"
    )
    parser.add_argument("--compress", choices=units.CODECS, default="gzip")
    parser.add_argument("--chunk-size", type=units.size_argument, default=units.DEFAULT_CHUNK_SIZE)
    parser.add_argument("--concurrency", type=int, default=4, help="chunks in flight (4)")
    parser.add_argument(
        "--store",
        choices=("dir", "discard"),
        default="dir",
        help="dir: the server keeps the message on disk (default); discard: it checks and "
        "drops it, and the receive side downloads a synthetic message of the same size",
    )
    parser.add_argument("--workdir", type=Path, help="where to put the files (a temp dir)")
    parser.add_argument("--json", action="store_true", help="one JSON object on the last line")
    return parser


@dataclass
class DemoResult:
    bytes: int
    compress: str
    chunk_size: int
    chunks: int
    store: str
    send_seconds: float
    send_mb_s: float
    receive_seconds: float
    receive_mb_s: float
    peak_rss_client_bytes: int
    peak_rss_server_bytes: int
    verified: bool
    verification: list[str]
    message_id: str


def _synthetic_message(url: str, size: int, chunk_size: int) -> str:
    body = json.dumps(
        {"mailbox_id": RECIPIENT, "size": size, "chunk_size": chunk_size, "sender": SENDER}
    ).encode()
    request = urllib.request.Request(
        f"{url}/messageexchange/admin/synthetic",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(json.load(response)["message_id"])


async def _run(
    args: argparse.Namespace, workdir: Path, url: str, shared_key: str
) -> tuple[float, float, str, list[str], int, bool]:
    source = workdir / "extract.csv"
    received = workdir / "received.csv"
    password, key = Secret(PASSWORD), Secret(shared_key)
    sender = MeshConfig(url=url, mailbox=SENDER, password=password, shared_key=key)
    recipient = MeshConfig(url=url, mailbox=RECIPIENT, password=password, shared_key=key)
    progress = Progress(sys.stderr, label="send")
    async with MeshClient(sender) as client:
        started = time.perf_counter()
        sent = await send_file(
            client,
            source,
            SendHeaders(to=RECIPIENT, workflow_id=WORKFLOW, subject="meshpipe demo extract"),
            codec=args.compress,
            chunk_size=args.chunk_size,
            concurrency=args.concurrency,
            progress=progress,
        )
        send_seconds = time.perf_counter() - started
    progress.close()
    message_id = sent.message_id
    if args.store == "discard":
        message_id = await asyncio.to_thread(_synthetic_message, url, args.size, args.chunk_size)
    async with MeshClient(recipient) as client:
        started = time.perf_counter()
        result = await receive_message(
            client, message_id, received, concurrency=args.concurrency, overwrite=True
        )
        receive_seconds = time.perf_counter() - started
    verified = bool(result.verified) and result.acknowledged
    if args.store == "dir":
        # An independent check: the received file hashes as the original does.
        original, copy = await asyncio.gather(
            asyncio.to_thread(xxh3_128_file, source), asyncio.to_thread(xxh3_128_file, received)
        )
        verified = verified and original == copy == sent.xxh3_128
    return (
        send_seconds,
        receive_seconds,
        message_id,
        list(result.verified),
        sent.chunk_count,
        verified,
    )


def run(args: argparse.Namespace) -> DemoResult:
    with contextlib.ExitStack() as stack:
        if args.workdir:
            workdir = args.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="meshpipe-demo-"))
            )
        data_dir = workdir / "mesh-data"
        data_dir.mkdir(exist_ok=True)
        source = workdir / "extract.csv"
        if not source.exists() or source.stat().st_size != args.size:
            print(f"demo: generating a {args.size:,}-byte CSV extract", file=sys.stderr)
            write_csv(source, args.size)
        shared_key = secrets.token_hex(16)
        server_args = ["--store", args.store, "--log-level", "WARNING"]
        if args.store == "dir":
            server_args += ["--data-dir", str(data_dir)]
        log = stack.enter_context((workdir / "server.log").open("wb"))
        url, server = stack.enter_context(
            server_process(*server_args, env={"SHARED_KEY": shared_key}, stderr=log)
        )
        print(f"demo: local MESH server at {url} (store: {args.store})", file=sys.stderr)
        send_s, receive_s, message_id, verification, chunks, verified = asyncio.run(
            _run(args, workdir, url, shared_key)
        )
        server_rss = peak_rss(server.pid)
    return DemoResult(
        bytes=args.size,
        compress=args.compress,
        chunk_size=args.chunk_size,
        chunks=chunks,
        store=args.store,
        send_seconds=round(send_s, 3),
        send_mb_s=round(args.size / send_s / 1e6, 1),
        receive_seconds=round(receive_s, 3),
        receive_mb_s=round(args.size / receive_s / 1e6, 1),
        peak_rss_client_bytes=peak_rss(),
        peak_rss_server_bytes=server_rss,
        verified=verified,
        verification=verification,
        message_id=message_id,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    if args.concurrency < 1:
        print("meshpipe demo: --concurrency must be at least 1", file=sys.stderr)
        return 2
    try:
        result = run(args)
    except (MeshpipeError, OSError) as exc:
        print(f"meshpipe demo: {exc}", file=sys.stderr)
        return 1
    mib = units.MiB
    print(
        f"sent     {result.bytes:,} bytes in {result.chunks} chunks ({result.compress}) "
        f"in {result.send_seconds:.2f} s: {result.send_mb_s:,.0f} MB/s"
    )
    print(
        f"received {result.bytes:,} bytes in {result.receive_seconds:.2f} s: "
        f"{result.receive_mb_s:,.0f} MB/s ({', '.join(result.verification) or 'nothing verified'})"
    )
    print(
        f"peak RSS client {result.peak_rss_client_bytes / mib:,.0f} MiB, "
        f"server {result.peak_rss_server_bytes / mib:,.0f} MiB"
    )
    print(f"integrity: {'VERIFIED' if result.verified else 'FAILED'}")
    if args.json:
        print(json.dumps(asdict(result)))
    return 0 if result.verified else 1
