"""Large-file sends at the machine's limit: one generated CSV extract sent with ``meshpipe
send`` (a whole process: start-up, handshake, send) to ``meshpipe serve --store discard`` in a
process of its own, page cache dropped before every run where permitted (as root).

Per run: wall time and MB/s; bytes read by each process (``rchar``: page cache or disk, and
``read_bytes``: from disk, from ``/proc/PID/io``); client and server CPU seconds per GB;
peak RSS of both. Reference limits measured in the same run: the time to read the file once
(cold, in 1 MiB reads), and ISA-L's inflate CPU per GB (python-isal) for the server's share.
Ratios: wall / max(read once, (client + server CPU) / cores) (goal ≤ 1.1), client rchar /
file size (goal ≤ 1.05), server CPU per GB / ISA-L inflate's (goal ≤ 1.2), in-order
(``--order in-order``, pipelined) MB/s / concurrent MB/s (goal ≥ 0.9). A third row,
``--order sequential`` (each chunk only after the one before was answered), shows what the
pipelining buys.

Size: MESHPIPE_BENCH_LARGE (default 10GiB; e.g. 50GB, 4GiB); codecs: MESHPIPE_BENCH_CODECS
(default "gzip none"); rows: MESHPIPE_BENCH_ORDERS (default "concurrent in-order sequential";
the ratios need the first two). The extract is generated once under MESHPIPE_BENCH_DIR (default
/var/tmp/meshpipe-bench) and kept for the next run.

Run: MESHPIPE_BENCH_LARGE=4GiB .venv/bin/python -m pytest benches/bench_large.py -s
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from isal import isal_zlib

from meshpipe import units
from meshpipe.memory import peak_rss
from meshpipe.server.process import server_process
from meshpipe.synthetic import csv_block

SENDER, RECIPIENT, PASSWORD = "X26ABC1", "X26ABC2", "password"
READ_SIZE = 1 * units.MiB
# A 50 GB run takes most of an hour: no per-test timeout here.
pytestmark = pytest.mark.timeout(0)
ORDERS = "concurrent in-order sequential"

# Runs ``meshpipe`` in this process and prints its own /proc figures as one JSON line on
# stderr as it exits (a parent cannot read /proc/PID/io after the child has gone).
_MEASURED_CLI = """
import json, os, resource, sys
from meshpipe.cli import main
from meshpipe.memory import peak_rss
status = main(sys.argv[1:])
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
usage = resource.getrusage(resource.RUSAGE_SELF)
print("MEASURED " + json.dumps({"status": status, "rchar": int(io["rchar"]),
      "read_bytes": int(io["read_bytes"]), "cpu": usage.ru_utime + usage.ru_stime,
      "peak_rss": peak_rss()}), file=sys.stderr)
sys.exit(status)
"""


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def _process_figures(pid: int) -> dict[str, float]:
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "rchar": int(io["rchar"]),
        "read_bytes": int(io["read_bytes"]),
        "cpu": (int(fields[11]) + int(fields[12])) / ticks,  # utime + stime
    }


@pytest.fixture(scope="module")
def extract() -> Path:
    size = units.parse_size(os.environ.get("MESHPIPE_BENCH_LARGE", "10GiB"))
    directory = Path(os.environ.get("MESHPIPE_BENCH_DIR", "/var/tmp/meshpipe-bench"))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"extract-{size}.csv"
    if not path.exists() or path.stat().st_size != size:
        block = csv_block(16 * units.MiB, 7)
        partial = path.with_suffix(".partial")
        with partial.open("wb") as out:
            left = size
            while left:
                piece = block[: min(left, len(block))]
                out.write(piece)
                left -= len(piece)
        partial.rename(path)
    return path


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, str, subprocess.Popen[str]]]:
    key = secrets.token_hex(16)
    args = ["--store", "discard", "--log-level", "WARNING"]
    with server_process(*args, env={"SHARED_KEY": key}) as (url, process):
        yield url, key, process


def read_once(path: Path) -> float:
    drop_page_cache()
    started = time.perf_counter()
    with path.open("rb", buffering=0) as source:
        buffer = bytearray(READ_SIZE)
        while source.readinto(buffer):
            pass
    return time.perf_counter() - started


def isal_inflate_cpu_per_gb() -> float:
    data = csv_block(64 * units.MiB, 7)
    body = isal_zlib.compress(data, 1, wbits=31)
    started = time.process_time()
    for _ in range(4):
        isal_zlib.decompress(body, wbits=31)
    return (time.process_time() - started) / (4 * len(data) / 1e9)


def send(
    path: Path, server: tuple[str, str, subprocess.Popen[str]], codec: str, *extra: str
) -> dict[str, Any]:
    url, key, process = server
    env = {
        **os.environ,
        "MESH_URL": url,
        "MESH_MAILBOX": SENDER,
        "MESH_PASSWORD": PASSWORD,
        "MESH_SHARED_KEY": key,
    }
    command = [sys.executable, "-c", _MEASURED_CLI, "send", str(path), "--to", RECIPIENT]
    command += ["--workflow-id", "TEST_WORKFLOW", "--compress", codec, "--no-ledger", *extra]
    cold = drop_page_cache()
    before = _process_figures(process.pid)
    started = time.perf_counter()
    finished = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = _process_figures(process.pid)
    assert finished.returncode == 0, finished.stderr[-2000:]
    line = next(x for x in finished.stderr.splitlines() if x.startswith("MEASURED "))
    client = json.loads(line.removeprefix("MEASURED "))
    return {
        "wall": wall,
        "cold": cold,
        "client": client,
        "server": {name: after[name] - before[name] for name in after},
    }


def test_large_send(extract: Path, server: Any, figures: list[str]) -> None:
    size = extract.stat().st_size
    gb = size / 1e9
    cores = os.cpu_count() or 1
    reading = read_once(extract)
    inflate = isal_inflate_cpu_per_gb()
    figures.append(
        f"large send: {size} bytes; read once (cold) {reading:.1f} s = {size / reading / 1e6:.0f}"
        f" MB/s; ISA-L inflate {inflate:.2f} CPU-s/GB"
    )
    for codec in os.environ.get("MESHPIPE_BENCH_CODECS", "gzip none").split():
        throughput: dict[str, float] = {}
        for order in os.environ.get("MESHPIPE_BENCH_ORDERS", ORDERS).split():
            run = send(extract, server, codec, "--order", order)
            client, served, wall = run["client"], run["server"], run["wall"]
            cpu_bound = (client["cpu"] + served["cpu"]) / cores
            throughput[order] = size / wall / 1e6
            figures.append(
                f"  {codec} {order}{'' if run['cold'] else ' (cache not dropped)'}: "
                f"{wall:.1f} s = {throughput[order]:.0f} MB/s; wall / max(read once, CPU/cores)"
                f" = {wall / max(reading, cpu_bound):.2f}; client rchar "
                f"{client['rchar'] / size:.2f}x file, read_bytes "
                f"{client['read_bytes'] / size:.2f}x; CPU s/GB client "
                f"{client['cpu'] / gb:.2f}, server {served['cpu'] / gb:.2f}"
                f" (= {served['cpu'] / gb / inflate:.2f}x ISA-L inflate); peak RSS client "
                f"{client['peak_rss'] / units.MiB:.0f} MiB, server so far "
                f"{peak_rss(server[2].pid) / units.MiB:.0f} MiB"
            )
        if "concurrent" in throughput:
            ratios = [
                f"{order} / concurrent = {throughput[order] / throughput['concurrent']:.2f}"
                for order in throughput
                if order != "concurrent"
            ]
            figures.append(f"  {codec}: {'; '.join(ratios)} (goal for in-order ≥ 0.9)")
