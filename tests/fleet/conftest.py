"""Fixtures of the fleet tests: a PostgreSQL database per test (on the session's server, or
on a server of the test's own where it is restarted), ``meshpipe serve`` or mesh-sandbox to
send to, and worker processes (``python -m meshpipe worker``) standing in for machines."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from meshpipe.fleet import Submitted, submit
from meshpipe.headers import SendHeaders
from meshpipe.ledger import Ledger, SendRecord
from meshpipe.server.process import server_process
from meshpipe.units import MiB
from tests.ledger.postgres import PostgresServer
from tests.peers import SANDBOX_PASSWORD, SANDBOX_SHARED_KEY, Sandbox

SENDER = "X26ABC1"
RECIPIENT = "X26ABC2"
#: Seconds without a heartbeat before a worker's jobs are taken over, short for the tests.
LEASE = 3.0


@pytest.fixture
def fleet_db(postgres_server: PostgresServer) -> str:
    """A new, empty database: ledger and job queue."""
    return postgres_server.create_database("fleet")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[str]:
    """``meshpipe serve`` with a durable directory store and mesh-sandbox's rules."""
    with server_process(
        "--rules", "sandbox", "--shared-key", SANDBOX_SHARED_KEY, "--store", "dir",
        "--data-dir", str(tmp_path / "store"), "--log-level", "WARNING",
    ) as (url, _process):  # fmt: skip
        yield url


@pytest.fixture
def peer_name() -> str:
    return "serve"


@pytest.fixture
def mesh_url(request: pytest.FixtureRequest, peer_name: str) -> str:
    """The MESH server of the test: ``serve`` unless it parametrizes ``peer_name``."""
    if peer_name == "serve":
        return str(request.getfixturevalue("serve"))
    sandbox: Sandbox = request.getfixturevalue("sandbox")
    return sandbox.url


@pytest.fixture
def workflow() -> str:
    return f"MPFLEET_{uuid.uuid4().hex[:10].upper()}"


def mesh_env(url: str, mailbox: str = SENDER) -> dict[str, str]:
    return {
        "MESH_URL": url,
        "MESH_MAILBOX": mailbox,
        "MESH_PASSWORD": SANDBOX_PASSWORD,
        "MESH_SHARED_KEY": SANDBOX_SHARED_KEY,
    }


@dataclass
class Fleet:
    """Worker processes of one mailbox on one ledger; their stderr in ``logs``."""

    ledger: str
    url: str
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *extra: str, lease: float = LEASE) -> subprocess.Popen[bytes]:
        command = [
            sys.executable, "-m", "meshpipe", "worker", "--ledger", self.ledger,
            "--name", name, "--lease", str(lease), "--min-payload-size", "0", "-v", *extra,
        ]  # fmt: skip
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command, stderr=log, stdout=log, env={**os.environ, **mesh_env(self.url)}
        )
        self.processes[name] = process
        return process

    def start_all(self, *extra: str, names: tuple[str, ...] = ("w1", "w2", "w3")) -> None:
        """Start workers ``names`` with the flags ``extra``, and wait until every one listens."""
        for name in names:
            self.start(name, *extra)
        self.wait_until_listening()

    def submit(self, source: Path, workflow: str, *, chunks_per_job: int = 1) -> Submitted:
        """Enqueue the send of ``source`` in 5 MiB chunks to the recipient."""
        return asyncio.run(
            submit(
                self.ledger,
                SENDER,
                source,
                SendHeaders(to=RECIPIENT, workflow_id=workflow),
                chunk_size=5 * MiB,
                chunks_per_job=chunks_per_job,
            )
        )

    def wait_until_listening(self, timeout: float = 60.0) -> None:
        """Until every started worker has registered with the job queue, so a job submitted
        next can go to any of them (a worker that is slow to start would otherwise leave
        every job to the first)."""
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.ledger, autocommit=True) as connection:
            while time.monotonic() < deadline:
                try:
                    row = connection.execute("SELECT count(*) FROM procrastinate_workers")
                except psycopg.errors.UndefinedTable:
                    pass  # no worker has put the queue's schema in yet
                else:
                    if (row.fetchone() or (0,))[0] >= len(self.processes):
                        return
                if any(p.poll() is not None for p in self.processes.values()):
                    raise AssertionError(f"a worker exited:\n{self.log_text()}")
                time.sleep(0.1)
        raise AssertionError(f"the workers did not all start:\n{self.log_text()}")

    def kill(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGKILL)
        self.processes[name].wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log_text(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
            for path in sorted(self.logs.glob("*.log"))
        )


@pytest.fixture
def fleet(fleet_db: str, mesh_url: str, tmp_path: Path) -> Iterator[Fleet]:
    logs = tmp_path / "logs"
    logs.mkdir()
    running = Fleet(fleet_db, mesh_url, logs)
    try:
        yield running
    finally:
        running.stop()


def wait_for_send(
    ledger: Ledger, transfer_id: int, fleet: Fleet, *, timeout: float = 60.0
) -> SendRecord:
    """The send once it is completed or failed (the workers' logs if it never is)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fleet.processes and all(p.poll() is not None for p in fleet.processes.values()):
            raise AssertionError(f"every worker exited:\n{fleet.log_text()}")
        record = ledger.transfer(transfer_id)
        assert isinstance(record, SendRecord)
        if record.state in ("completed", "failed"):
            return record
        time.sleep(0.2)
    raise AssertionError(f"transfer {transfer_id} did not finish:\n{fleet.log_text()}")
