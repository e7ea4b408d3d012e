"""``meshpipe watch``: run the service of :mod:`meshpipe.watch.service` until SIGTERM/SIGINT.

    meshpipe watch --config FILE [--listen HOST:PORT] [--poll-interval S] [--once]
                   [--ledger LOCATION | --state-dir DIR] [--fleet] [--log-format text|json] [-v]

The configuration is the ``[watch]`` table of the TOML file (``--config``, else
``$MESHPIPE_CONFIG``; see :mod:`meshpipe.watch.settings`); flags override it. On start-up one
line on stderr gives the mailboxes and the operations endpoint's URL (``/metrics``,
``/healthz``, ``/readyz``). The first SIGTERM or SIGINT stops it cleanly (no new work,
transfers in flight get ``shutdown_grace`` seconds); a second one stops at once (what was in
flight resumes at the next start). Exit status 0 after a clean stop, 2 for a configuration
error, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Final

from meshpipe.arguments import log_flags, stop_on_signals
from meshpipe.config import ENV_CONFIG_FILE
from meshpipe.errors import ConfigError, MeshpipeError
from meshpipe.ledger import resolve_ledger_location
from meshpipe.logs import hide, logging_configured
from meshpipe.watch.certificates import run_certificate_checks
from meshpipe.watch.health import Health
from meshpipe.watch.metrics import WatchMetrics
from meshpipe.watch.ops import start_ops
from meshpipe.watch.service import WatchService
from meshpipe.watch.settings import WatchSettings, load_watch_settings

PROGRAM: Final = "meshpipe watch"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Send the files dropped in each mailbox's outbox folder, receive its "
        "messages into its inbox folder, and serve metrics and health, until stopped.",
    )
    parser.add_argument("--config", help=f"TOML file with a [watch] table ({ENV_CONFIG_FILE})")
    parser.add_argument("--listen", help="operations endpoint HOST:PORT (default 127.0.0.1:9464)")
    parser.add_argument("--poll-interval", type=float, help="seconds between inbox polls")
    parser.add_argument("--ledger", help="ledger file or postgresql:// URL")
    parser.add_argument("--state-dir", help="directory of the ledger and partial files")
    parser.add_argument(
        "--fleet",
        action="store_true",
        default=None,
        help="hand sends to the fleet's workers (meshpipe worker) instead of sending them "
        "here, as [watch] fleet = true (a mailbox's own fleet setting wins); needs a "
        "postgresql:// ledger",
    )
    parser.add_argument(
        "--once", action="store_true", help="one handshake, scan and poll per mailbox, then exit"
    )
    log_flags(parser)
    return parser


def settings_from(args: argparse.Namespace) -> WatchSettings:
    config = args.config or os.environ.get(ENV_CONFIG_FILE)
    if not config:
        raise ConfigError(f"give --config FILE (or {ENV_CONFIG_FILE}) with a [watch] table")
    settings = load_watch_settings(
        config,
        listen=args.listen,
        poll_interval=args.poll_interval,
        ledger=args.ledger,
        state_dir=args.state_dir,
        fleet=args.fleet,
    )
    for mailbox in settings.mailboxes:
        hide(mailbox.config.password, mailbox.config.shared_key)
    return settings


async def serve(settings: WatchSettings, *, once: bool = False) -> None:
    """The service, its operations endpoint and its certificate checks, until a signal."""
    metrics = WatchMetrics()
    health = Health(mailbox.mailbox for mailbox in settings.mailboxes)
    stop = asyncio.Event()
    runner, port = await start_ops(
        metrics,
        health,
        settings.listen_host,
        settings.listen_port,
        allow_remote=settings.allow_remote_listen,
        ledger=resolve_ledger_location(settings.ledger, settings.state_dir),
    )
    signals = stop_on_signals(stop, PROGRAM)
    certificates = asyncio.create_task(
        run_certificate_checks(
            settings.mailboxes,
            metrics,
            health,
            stop,
            warning_days=settings.certificate_warning_days,
        )
    )
    names = ", ".join(mailbox.mailbox for mailbox in settings.mailboxes)
    host = f"[{settings.listen_host}]" if ":" in settings.listen_host else settings.listen_host
    sys.stderr.write(f"{PROGRAM}: watching {names}; operations on http://{host}:{port}\n")
    sys.stderr.flush()
    try:
        await WatchService(settings, metrics, health).run(stop, once=once)
    finally:
        stop.set()
        signals()
        await certificates
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    with logging_configured(args.verbose, args.log_format):
        try:
            settings = settings_from(args)
            asyncio.run(serve(settings, once=args.once))
        except ConfigError as error:
            sys.stderr.write(f"meshpipe: error: {error}\n")
            return 2
        except (MeshpipeError, OSError) as error:
            sys.stderr.write(f"meshpipe: error: {error}\n")
            return 1
        except (KeyboardInterrupt, asyncio.CancelledError):
            sys.stderr.write(
                f"{PROGRAM}: stopped at once; interrupted transfers resume at the next start\n"
            )
            return 130
    return 0
