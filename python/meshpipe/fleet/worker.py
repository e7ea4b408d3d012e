"""One fleet worker: procrastinate's worker on the mailbox's queue running the send jobs
(meshpipe.fleet.jobs) ``concurrency`` at a time, beside a recovery loop that puts back the
jobs of workers that stopped sending heartbeats, and a supervisor that rides out the
database going away.

Leases: a worker's heartbeat is renewed every ``lease / 3`` seconds; a worker silent for
``lease`` seconds is taken for dead and its jobs go back on the queue (a job retried so is
safe: see meshpipe.fleet.jobs). PostgreSQL restarted or unreachable: the worker stops taking
jobs, waits ``reconnect_delay`` and starts again (connections are checked before use); jobs
that were running when it went are recovered as those of a dead worker, and jobs that failed
meanwhile are retried by the queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import psycopg
import psycopg_pool
from procrastinate import App
from procrastinate import exceptions as procrastinate_errors

from meshpipe.client import MeshClient
from meshpipe.fleet import jobs
from meshpipe.fleet.limits import FleetLimiter, MailboxLimits
from meshpipe.fleet.queue import (
    POLL,
    RECEIVE_FINAL,
    RECEIVE_RANGE,
    SEND_FIRST,
    SEND_LAST,
    SEND_RANGE,
    apply_schema,
    conninfo,
    cron_every,
    make_app,
    queue_name,
    retry_stalled_jobs,
)
from meshpipe.ledger import Ledger, LedgerError
from meshpipe.units import MIN_CHUNK_SIZE

log = logging.getLogger("meshpipe.fleet")

DEFAULT_LEASE: Final = 30.0
DEFAULT_RECONNECT_DELAY: Final = 2.0
DEFAULT_POLL_INTERVAL: Final = 60.0


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How one worker runs: ``concurrency`` jobs at a time; ``lease`` (seconds without a
    heartbeat before its jobs are taken over); the fleet-wide ``limits`` of its mailbox;
    ``name`` (recorded against each chunk it sends; default ``pid@host``);
    ``min_payload_size`` (MESH's 5 MiB rule for zstd payloads; 0 for test servers);
    ``inbox``: receive the mailbox into this folder every ``poll_interval`` seconds (one
    worker per tick across the fleet), or None not to receive; ``turn_wait``: in order, how
    long a chunk waits for the one before it before its job steps aside."""

    concurrency: int = 1
    lease: float = DEFAULT_LEASE
    limits: MailboxLimits = field(default_factory=MailboxLimits)
    name: str | None = None
    min_payload_size: int = MIN_CHUNK_SIZE
    reconnect_delay: float = DEFAULT_RECONNECT_DELAY
    inbox: Path | None = None
    poll_interval: float = DEFAULT_POLL_INTERVAL
    turn_wait: float = jobs.TURN_WAIT

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.lease <= 0:
            raise ValueError("lease must be positive")
        cron_every(self.poll_interval)  # ConfigError for an interval not set on the clock


def register_tasks(app: App, mailbox: str, settings: WorkerSettings) -> None:
    """meshpipe's jobs on ``app`` (retried by the queue; see meshpipe.fleet.jobs), and the
    periodic poll of ``mailbox`` when the worker receives."""
    app.task(name=SEND_FIRST, pass_context=True, retry=jobs.RETRY)(jobs.send_first)
    app.task(name=SEND_RANGE, pass_context=True, retry=jobs.RETRY)(jobs.send_range)
    app.task(name=SEND_LAST, pass_context=True, retry=jobs.RETRY)(jobs.send_last)
    if settings.inbox is not None:
        app.task(name=RECEIVE_RANGE, pass_context=True, retry=jobs.RETRY)(jobs.receive_range)
        app.task(name=RECEIVE_FINAL, pass_context=True, retry=jobs.RETRY)(jobs.receive_final)
        poll = app.task(name=POLL, pass_context=True, queue=queue_name(mailbox))(jobs.poll)
        app.periodic(cron=cron_every(settings.poll_interval), periodic_id=mailbox.upper())(poll)


async def run_worker(
    ledger_location: str,
    client: MeshClient,
    settings: WorkerSettings,
    stop: asyncio.Event,
) -> None:
    """Run the worker for ``client``'s mailbox until ``stop`` is set (module doc)."""
    name = settings.name or jobs.worker_name()
    # Each job blocks a thread in the engine's next() while its chunk is compressed and makes
    # its ledger calls on threads too: the default executor (cores + 4 threads) would make the
    # ledger wait for the codec. Threads enough for every lane of every job, and some.
    threads = settings.concurrency * (jobs.JOB_LANES + 2) + 4
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="meshpipe-fleet")
    )
    limiter = FleetLimiter(conninfo(ledger_location), client.mailbox, settings.limits)
    ledger = await _open_ledger(ledger_location, stop, settings.reconnect_delay)
    if ledger is None:
        return
    context = jobs.FleetContext(
        client,
        ledger,
        name,
        limiter,
        settings.min_payload_size,
        settings.inbox,
        in_turn=client.config.effective_upload_order != "concurrent",
        turn_wait=settings.turn_wait,
    )
    recovery = asyncio.create_task(_recover(ledger_location, settings, stop))
    try:
        while not stop.is_set():
            try:
                await _run_once(ledger_location, context, settings, stop, name)
            except (
                psycopg.Error,
                psycopg_pool.PoolTimeout,
                procrastinate_errors.ProcrastinateException,
                OSError,
            ) as error:
                if stop.is_set():
                    break
                log.warning(
                    "worker %s lost the database (%s); starting again in %.0f s",
                    name,
                    error,
                    settings.reconnect_delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), settings.reconnect_delay)
    finally:
        recovery.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recovery
        await asyncio.to_thread(ledger.close)


async def _open_ledger(location: str, stop: asyncio.Event, delay: float) -> Ledger | None:
    while not stop.is_set():
        try:
            return await asyncio.to_thread(Ledger.open, location)
        except LedgerError as error:
            if error.code != "unreachable":
                raise
            log.warning("the ledger is unreachable (%s); trying again in %.0f s", error, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    return None


async def _run_once(
    location: str,
    context: jobs.FleetContext,
    settings: WorkerSettings,
    stop: asyncio.Event,
    name: str,
) -> None:
    await apply_schema(location)
    # procrastinate's pool checks each connection before lending it (a restarted server's
    # dead connections are replaced).
    app = make_app(location, min_size=1, max_size=settings.concurrency + 2)
    register_tasks(app, context.mailbox, settings)
    async with app.open_async():
        worker = asyncio.create_task(
            app.run_worker_async(
                queues=[queue_name(context.mailbox)],
                name=name,
                concurrency=settings.concurrency,
                additional_context={"meshpipe": context},
                install_signal_handlers=False,
                update_heartbeat_interval=settings.lease / 3,
                stalled_worker_timeout=settings.lease,
                fetch_job_polling_interval=min(5.0, settings.lease / 3),
                shutdown_graceful_timeout=settings.lease,
            )
        )
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({worker, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not worker.done():
                worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker  # its error, if it stopped on its own, goes to the supervisor


async def _recover(location: str, settings: WorkerSettings, stop: asyncio.Event) -> None:
    """Every ``lease / 2`` seconds: put back the jobs of workers silent for ``lease``."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.lease / 2)
        if stop.is_set():
            return
        try:
            await retry_stalled_jobs(location, settings.lease)
        except psycopg.Error as error:
            log.warning("could not look for stalled jobs: %s", error)


__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_POLL_INTERVAL",
    "WorkerSettings",
    "register_tasks",
    "run_worker",
]
