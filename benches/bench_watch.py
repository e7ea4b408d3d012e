"""``meshpipe watch`` as a service: what it costs idle, and how fast it drains many small files.

Idle: one ``meshpipe watch`` process serving 10 mailboxes with empty folders, on the local
server (``meshpipe serve`` in its own process), at its default intervals (inbox polls every
60 s ± 10%, outbox scans every 5 s). After start-up (handshakes, first polls), its CPU time
and RSS are read from /proc over MESHPIPE_BENCH_IDLE seconds (default 60). Goals: under 1% of
a core, under 80 MiB.

Many small files: MESHPIPE_BENCH_FILES (default 1000) files of 10 KB are dropped at once into
mailbox A's rule folder; the time until every one is in mailbox B's inbox folder (the same
watch process receives for B: sent, delivered, downloaded, verified, written with its
metadata and acknowledged), against NHS's mesh-client sending the same files one after
another from one process (its API has no concurrency) to the same server, in the same run.
Goal: at least 10× faster. The watch runs with poll_interval 1 s, scan_interval 1 s and
settle_seconds 0.5 s so that its wait times do not dominate a test of throughput.

Both run twice: on bare loopback, where a request costs only CPU, and with every request
answered MESHPIPE_BENCH_LATENCY seconds late (default 0.05: a stall fault on every route of
the local server), as over a network to the real MESH, where doing several at once pays.

    .venv/bin/python -m pytest benches/bench_watch.py -s
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

import pytest

from meshpipe import units
from meshpipe.memory import peak_rss
from meshpipe.server.process import server_process

MAILBOXES = [f"X26WAT{index}" for index in range(10)]
PASSWORD = "bench-password"
WORKFLOW = "BENCH_WATCH"
IDLE_SECONDS = float(os.environ.get("MESHPIPE_BENCH_IDLE", "60"))
FILES = int(os.environ.get("MESHPIPE_BENCH_FILES", "1000"))
FILE_SIZE = 10_000
LATENCY = float(os.environ.get("MESHPIPE_BENCH_LATENCY", "0.05"))
pytestmark = pytest.mark.timeout(0)

_MESH_CLIENT_SENDS = """
import sys, pathlib, mesh_client
url, mailbox, password, key, recipient, workflow, folder = sys.argv[1:]
with mesh_client.MeshClient(url, mailbox, password, shared_key=key.encode()) as client:
    client.handshake()
    for path in sorted(pathlib.Path(folder).iterdir()):
        client.send_message(recipient, path.read_bytes(), workflow_id=workflow,
                            filename=path.name)
"""


@pytest.fixture(params=[0.0, LATENCY], ids=["loopback", "latency"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    mailboxes = tmp_path / "mailboxes.jsonl"
    mailboxes.write_text(
        "".join(
            json.dumps({"mailbox_id": name, "mailbox_name": name, "password": PASSWORD}) + "\n"
            for name in MAILBOXES
        )
    )
    workflows = tmp_path / "workflows.jsonl"
    workflows.write_text(
        json.dumps({"workflow_id": WORKFLOW, "senders": MAILBOXES, "receivers": MAILBOXES})
    )
    key = secrets.token_hex(16)
    args = ["--store", "memory", "--mailboxes", str(mailboxes), "--workflows", str(workflows)]
    if request.param:  # every request answered after LATENCY seconds, as over a real network
        plan = tmp_path / "latency.json"
        stall = {"kind": "stall", "route": "any", "times": 0, "seconds": request.param}
        plan.write_text(json.dumps({"faults": [stall]}))
        args += ["--faults", str(plan)]
    with server_process(*args, "--log-level", "WARNING", env={"SHARED_KEY": key}) as (url, _):
        yield url, key


def _config(root: Path, url: str, key: str, mailboxes: list[str], watch: str) -> Path:
    lines = []
    for name in mailboxes:
        lines += [
            f"[profiles.{name}]",
            f'url = "{url}"',
            f'mailbox = "{name}"',
            f'password = "{PASSWORD}"',
            f'shared_key = "{key}"',
        ]
    lines += ["[watch]", 'listen = "127.0.0.1:0"', watch]
    for name in mailboxes:
        lines += ["[[watch.mailbox]]", f'profile = "{name}"', f'root = "{root / name}"']
        if name == mailboxes[0]:
            lines += [
                "[[watch.mailbox.rule]]",
                'folder = "drop"',
                f'to = "{mailboxes[1]}"',
                f'workflow_id = "{WORKFLOW}"',
            ]
    path = root / "watch.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _start_watch(config: Path, state: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "meshpipe", "watch", "--config", str(config)]
    command += ["--state-dir", str(state)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_for(condition: object, seconds: float, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        if process.poll() is not None:
            raise AssertionError(f"meshpipe watch exited: {process.stderr.read()[-2000:]}")  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _delivered(inbox: Path) -> int:
    """Messages written into an inbox folder (its sidecars not counted)."""
    if not inbox.is_dir():
        return 0
    return sum(1 for path in inbox.glob("*.meshpipe.json") if not path.name.startswith("."))


@pytest.mark.parametrize("server", [0.0], indirect=True, ids=["loopback"])
def test_watch_idle(server: tuple[str, str], tmp_path: Path, figures: list[str]) -> None:
    url, key = server
    config = _config(tmp_path, url, key, MAILBOXES, "")
    process = _start_watch(config, tmp_path / "state")
    try:
        inboxes = [tmp_path / name / "in" for name in MAILBOXES]
        _wait_for(lambda: all(path.is_dir() for path in inboxes), 60, process)
        time.sleep(5)  # start-up done: handshakes and first polls
        cpu_before, started = _cpu_seconds(process.pid), time.monotonic()
        time.sleep(IDLE_SECONDS)
        cpu = _cpu_seconds(process.pid) - cpu_before
        wall = time.monotonic() - started
        peak = peak_rss(process.pid)
    finally:
        _stop(process)
    figures.append(
        f"watch idle, {len(MAILBOXES)} mailboxes, {wall:.0f} s: CPU {100 * cpu / wall:.2f}% of "
        f"a core (goal < 1%), peak RSS {peak / units.MiB:.0f} MiB "
        "(goal < 80 MiB)"
    )


def test_watch_many_small_files(
    server: tuple[str, str], tmp_path: Path, figures: list[str], request: pytest.FixtureRequest
) -> None:
    url, key = server
    sender, recipient = MAILBOXES[:2]
    staged = tmp_path / "staged"
    staged.mkdir()
    for index in range(FILES):
        (staged / f"file-{index:05d}.csv").write_bytes(os.urandom(FILE_SIZE // 2).hex().encode())

    command = [sys.executable, "-c", _MESH_CLIENT_SENDS, url, sender, PASSWORD, key]
    started = time.perf_counter()
    sent = subprocess.run(
        [*command, recipient, WORKFLOW, str(staged)], capture_output=True, text=True, check=False
    )
    theirs = time.perf_counter() - started
    assert sent.returncode == 0, sent.stderr[-2000:]

    config = _config(
        tmp_path,
        url,
        key,
        [sender, recipient],
        "poll_interval = 1\nscan_interval = 1\nsettle_seconds = 0.5",
    )
    process = _start_watch(config, tmp_path / "state")
    try:
        inbox = tmp_path / recipient / "in"
        _wait_for(lambda: inbox.is_dir(), 60, process)
        # mesh-client's messages are received first (not timed)
        _wait_for(lambda: _delivered(inbox) >= FILES, 600, process)
        drop = tmp_path / sender / "out" / "drop"
        drop.mkdir(parents=True, exist_ok=True)
        settled = _delivered(inbox)
        started = time.perf_counter()
        for path in sorted(staged.iterdir()):
            path.rename(drop / path.name)
        _wait_for(lambda: _delivered(inbox) >= settled + FILES, 1800, process)
        ours = time.perf_counter() - started
    finally:
        _stop(process)
    delay = request.node.callspec.params["server"]
    latency = f"{delay:g} s latency per request" if delay else "loopback"
    figures.append(
        f"watch ({latency}), {FILES} files of {FILE_SIZE} bytes dropped at once: all in the "
        f"recipient's inbox folder in {ours:.1f} s; mesh-client sending them one by one: "
        f"{theirs:.1f} s; ratio {theirs / ours:.1f}x (goal ≥ 10x)"
    )
