"""``meshpipe web``: serve the tracking web view over the ledger until SIGTERM/SIGINT.

    meshpipe web [--ledger LOCATION | --state-dir DIR] [--listen HOST:PORT]
                 [--token-file FILE] [--profile NAME] [--config FILE] [-v]

The ledger is found as ``meshpipe send`` finds it (``--ledger``, ``--state-dir``,
``$MESHPIPE_LEDGER``, ``$MESHPIPE_STATE_DIR``, the default state directory); an SQLite
ledger must exist. It listens on 127.0.0.1:8080 by default; any other address needs a token
(``--token-file``, else ``$MESHPIPE_WEB_TOKEN``: see :mod:`meshpipe.pages.access`). With a
MESH profile (``--profile``/``--config``, or ``$MESHPIPE_PROFILE``/``$MESHPIPE_CONFIG``) a sent
message's page shows MESH's tracking, fetched live; without one it says tracking is not
configured. One line on stderr gives the address (never the token). Exit status 0 after a
stop, 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from typing import Final

from aiohttp import web

from meshpipe.arguments import log_flags
from meshpipe.client import MeshClient
from meshpipe.config import ENV_CONFIG_FILE, ENV_PROFILE, load_config
from meshpipe.errors import ConfigError
from meshpipe.ledger import LedgerError, resolve_ledger_location
from meshpipe.ledger.database import parse_location
from meshpipe.logs import hide, logging_configured
from meshpipe.pages.access import load_token, require_token
from meshpipe.retry import RetryingClient
from meshpipe.web import build_web_app
from meshpipe.web.store import LedgerView
from meshpipe.web.views import Tracker

PROGRAM: Final = "meshpipe web"
DEFAULT_LISTEN: Final = "127.0.0.1:8080"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Serve the tracking web view: every transfer in the ledger, chunk by "
        "chunk, with its checksums, events and MESH's tracking.",
    )
    parser.add_argument("--ledger", help="ledger file or postgresql:// URL")
    parser.add_argument("--state-dir", help="directory of the ledger")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT ({DEFAULT_LISTEN})")
    parser.add_argument(
        "--token-file", help="file whose first line is the access token ($MESHPIPE_WEB_TOKEN)"
    )
    parser.add_argument("--profile", help=f"MESH profile for live tracking ({ENV_PROFILE})")
    parser.add_argument("--config", help=f"TOML config file of the profile ({ENV_CONFIG_FILE})")
    log_flags(parser)
    return parser


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6) as (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {text!r}: give host:port, e.g. {DEFAULT_LISTEN}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _ledger_location(args: argparse.Namespace) -> str:
    location = resolve_ledger_location(args.ledger, args.state_dir)
    path = parse_location(location).path
    if path is not None and not path.is_file():
        raise ConfigError(
            f"no ledger at {path}: give --ledger FILE (or postgresql://...) or --state-dir DIR "
            "of the ledger that meshpipe send, receive or watch write"
        )
    return location


def _mesh_client(args: argparse.Namespace) -> MeshClient | None:
    if not (args.profile or args.config or os.environ.get(ENV_PROFILE)) and not os.environ.get(
        ENV_CONFIG_FILE
    ):
        return None
    config = load_config(profile=args.profile, config_file=args.config)
    hide(config.password, config.shared_key)
    return MeshClient(config)


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM or SIGINT."""
    host, port = parse_listen(args.listen)
    token = load_token(args.token_file)
    require_token(host, token)
    location = _ledger_location(args)
    client = _mesh_client(args)
    view = await asyncio.to_thread(LedgerView, location)
    tracker: Tracker | None = None
    try:
        if client is not None:
            await client.open()
            tracker = RetryingClient(client).track
        app = build_web_app(view, tracker=tracker, token=token)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as error:
                raise ConfigError(
                    f"cannot listen on {host}:{port} ({error.strerror or error}); choose another "
                    "port with --listen (port 0 picks a free one)"
                ) from None
            bound = runner.addresses[0][1]
            shown = f"[{host}]" if ":" in host else host
            guarded = "; the token is needed" if token else ""
            sys.stderr.write(
                f"{PROGRAM}: ledger {view.location}; open http://{shown}:{bound}/{guarded}\n"
            )
            sys.stderr.flush()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for number in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(number, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()
    finally:
        if client is not None:
            await client.close()
        await asyncio.to_thread(view.close)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    with logging_configured(args.verbose, args.log_format):
        try:
            asyncio.run(serve(args))
        except (ConfigError, LedgerError) as error:
            sys.stderr.write(f"{PROGRAM}: error: {error}\n")
            return 2
    return 0


__all__ = ["DEFAULT_LISTEN", "build_parser", "main", "parse_listen", "serve"]
