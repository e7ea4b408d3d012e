"""``meshpipe worker`` and ``meshpipe submit``: the fleet's commands.

    meshpipe worker --ledger postgresql://... [--concurrency N] [--lease S] [--name NAME]
                    [--max-in-flight N] [--max-rps R] [--order ORDER]
                    [--inbox DIR [--poll-interval S]]
                    [connection flags]
    meshpipe submit FILE --to MAILBOX --workflow-id WF --ledger postgresql://...
                    [--local-id ID] [--subject S] [--filename NAME] [--compress CODEC]
                    [--level N] [--chunk-size SIZE] [--chunks-per-job N] [--again]

The ledger is ``--ledger``, else ``$MESHPIPE_LEDGER``: a PostgreSQL database every worker and
submitter reaches. The mailbox and its credentials come as in every other command: the
connection flags, the MESH_* environment variables, a profile. ``submit`` prints the local
id and enqueues the send (nothing is read or sent by it); ``worker`` runs until SIGTERM or
SIGINT (the first stops it cleanly; a second at once: its jobs are then taken over by
another worker after the lease). Exit status 0 on success, 2 for a usage or configuration
error, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, Final

import psycopg
from sqlalchemy.engine import make_url

from meshpipe import units
from meshpipe.arguments import (
    connection_flags,
    mesh_config,
    message_flags,
    positive,
    positive_rate,
    positive_seconds,
    retry_policy,
    stop_on_signals,
)
from meshpipe.client import ClientSettings, MeshClient
from meshpipe.config import UPLOAD_ORDERS, Secret
from meshpipe.errors import ConfigError, MeshpipeError, MessageHeaderError, PlanError
from meshpipe.fleet.jobs import TURN_WAIT
from meshpipe.fleet.limits import MailboxLimits
from meshpipe.fleet.queue import conninfo
from meshpipe.fleet.submit import DEFAULT_CHUNKS_PER_JOB, submit
from meshpipe.fleet.worker import (
    DEFAULT_LEASE,
    DEFAULT_POLL_INTERVAL,
    WorkerSettings,
    run_worker,
)
from meshpipe.headers import SendHeaders
from meshpipe.ledger import LEDGER_VARIABLE, LedgerError
from meshpipe.logs import hide, logging_configured

WORKER: Final = "meshpipe worker"
SUBMIT: Final = "meshpipe submit"


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ledger", help=f"the fleet's PostgreSQL ledger, postgresql://... ({LEDGER_VARIABLE})"
    )
    connection_flags(parser)


def worker_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=WORKER,
        description="Run a fleet worker: take the send jobs of this mailbox from the queue "
        "in the PostgreSQL ledger until stopped. Start one per machine (or several); they "
        "share the work of every message, each chunk sent once.",
    )
    _common_flags(parser)
    parser.add_argument("--concurrency", type=positive, default=1, help="jobs at a time")
    parser.add_argument(
        "--lease",
        type=positive_seconds,
        default=DEFAULT_LEASE,
        help="seconds without a heartbeat before a worker's jobs are taken over (default "
        "%(default)s)",
    )
    parser.add_argument("--name", help="this worker's name in the ledger (default pid@host)")
    parser.add_argument(
        "--max-in-flight",
        type=positive,
        help="chunk requests in flight for the mailbox across every worker (give every "
        "worker the same)",
    )
    parser.add_argument(
        "--max-rps",
        type=positive_rate,
        help="requests a second for the mailbox across every worker",
    )
    parser.add_argument(
        "--order",
        choices=UPLOAD_ORDERS,
        help="chunks 2..N-1 of a message across the fleet: in-order or sequential (each "
        "posted once the one before was accepted; the default for integration, deployment "
        "and live) or concurrent (side by side; the default for any other server)",
    )
    parser.add_argument(
        "--turn-wait",
        type=positive_seconds,
        default=TURN_WAIT,
        help="in order: seconds a chunk waits for the one before it before its job steps "
        "aside for others (default %(default)s)",
    )
    parser.add_argument(
        "--inbox",
        type=Path,
        help="receive the mailbox into this folder (a shared path), polled by one worker of "
        "the fleet per --poll-interval",
    )
    parser.add_argument(
        "--poll-interval",
        type=positive_seconds,
        default=DEFAULT_POLL_INTERVAL,
        help="seconds between polls of the inbox, set on the clock: a divisor of 60 s or of "
        "60 min (default %(default)s)",
    )
    parser.add_argument(
        "--min-payload-size",
        type=units.size_argument,
        default=units.MIN_CHUNK_SIZE,
        help="smallest payload of every chunk but the last with zstd (MESH: 5MiB; 0 for "
        "test servers)",
    )
    return parser


def submit_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=SUBMIT,
        description="Enqueue the send of a file for the fleet's workers and print its local "
        "id. The file must be at the same path on every worker (a shared path). A local id "
        "already sent is not sent again; an unfinished one is taken up again.",
    )
    parser.add_argument("path", help="the file (absolute, or relative to here)")
    parser.add_argument("--to", required=True, help="recipient mailbox id")
    parser.add_argument("--workflow-id", required=True)
    parser.add_argument("--local-id", help="your reference (default: a fresh unique id)")
    message_flags(parser)
    parser.add_argument(
        "--chunks-per-job",
        type=positive,
        default=DEFAULT_CHUNKS_PER_JOB,
        help="chunks of one range job (default %(default)s)",
    )
    parser.add_argument(
        "--again", action="store_true", help="send a new message even if this local id was sent"
    )
    _common_flags(parser)
    return parser


def _ledger(args: argparse.Namespace) -> str:
    location = args.ledger or os.environ.get(LEDGER_VARIABLE)
    if not location:
        raise ConfigError(
            f"give --ledger postgresql://USER@HOST/DATABASE (or {LEDGER_VARIABLE}): the "
            "fleet's workers share one PostgreSQL ledger"
        )
    conninfo(location)  # refuses a SQLite ledger, saying why
    password = make_url(location).password
    if password:
        hide(Secret(str(password)))  # the database's password, like MESH's, never logged
    return str(location)


async def _work(args: argparse.Namespace) -> None:
    location = _ledger(args)
    config = mesh_config(args)
    if args.order is not None:
        config = config.with_overrides(upload_order=args.order)
    settings = WorkerSettings(
        concurrency=args.concurrency,
        lease=args.lease,
        limits=MailboxLimits(args.max_in_flight, args.max_rps),
        name=args.name,
        min_payload_size=args.min_payload_size,
        inbox=args.inbox.absolute() if args.inbox else None,
        poll_interval=args.poll_interval,
        turn_wait=args.turn_wait,
    )
    stop = asyncio.Event()
    stop_on_signals(stop, WORKER)
    client_settings = ClientSettings(
        max_connections=max(8, args.concurrency * 2 + 4), retry=retry_policy(args)
    )
    async with MeshClient(config, client_settings) as client:
        sys.stderr.write(
            f"{WORKER}: {settings.name or 'this worker'} sending for {client.mailbox} "
            f"({args.concurrency} at a time)\n"
        )
        sys.stderr.flush()
        await run_worker(location, client, settings, stop)


async def _submit(args: argparse.Namespace) -> None:
    location = _ledger(args)
    config = mesh_config(args)
    headers = SendHeaders(
        to=args.to,
        workflow_id=args.workflow_id,
        local_id=args.local_id,
        subject=args.subject,
        filename=args.filename,
        content_type=args.content_type,
    )
    submitted = await submit(
        location,
        config.mailbox,
        args.path,
        headers,
        codec=args.compress,
        level=args.level,
        chunk_size=args.chunk_size,
        chunks_per_job=args.chunks_per_job,
        again=args.again,
    )
    if submitted.outcome == "already-sent":
        sys.stderr.write(
            f"{SUBMIT}: local id {submitted.local_id} was already sent as message "
            f"{submitted.message_id}; nothing enqueued (pass --again to send it again)\n"
        )
    elif submitted.outcome == "resubmitted":
        sys.stderr.write(
            f"{SUBMIT}: local id {submitted.local_id} was not finished; taken up again\n"
        )
    sys.stdout.write(f"{submitted.local_id}\n")


def _main(program: str, args: argparse.Namespace, run: Coroutine[Any, Any, None]) -> int:
    with logging_configured(args.verbose, args.log_format):
        try:
            asyncio.run(run)
        except (ConfigError, MessageHeaderError, PlanError) as error:
            sys.stderr.write(f"{program}: error: {error}\n")
            return 2
        except (MeshpipeError, LedgerError, OSError) as error:
            sys.stderr.write(f"{program}: error: {error}\n")
            return 1
        except psycopg.Error as error:  # the job queue's database (libpq hides passwords)
            sys.stderr.write(
                f"{program}: error: the fleet's PostgreSQL database could not be used: "
                f"{str(error).strip()}\n"
            )
            return 1
        except (KeyboardInterrupt, asyncio.CancelledError):
            sys.stderr.write(f"{program}: stopped at once\n")
            return 130
    return 0


def worker_main(argv: Sequence[str] | None = None) -> int:
    args = worker_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return _main(WORKER, args, _work(args))


def submit_main(argv: Sequence[str] | None = None) -> int:
    args = submit_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return _main(SUBMIT, args, _submit(args))


__all__ = ["submit_main", "submit_parser", "worker_main", "worker_parser"]
