"""The command-line pieces the ``meshpipe`` commands share (``meshpipe``'s own, ``worker`` and
``submit``, ``watch``, ``web``): argument types, the connection flags and the MESH settings
and retry policy they give, the log flags, the flags that describe a message to send, and the
SIGTERM/SIGINT rule of the long-running commands.

``--retry-budget SECONDS`` (else ``$MESHPIPE_RETRY_BUDGET``) bounds how long a failed request
is tried again (:class:`~meshpipe.config.RetryPolicy`); 0 never retries.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
from collections.abc import Callable
from typing import Final

from meshpipe import units
from meshpipe.config import MeshConfig, RetryPolicy, load_config
from meshpipe.errors import ConfigError
from meshpipe.logs import LOG_FORMATS, hide

ENV_RETRY_BUDGET: Final = "MESHPIPE_RETRY_BUDGET"


def positive(text: str) -> int:
    """An argument type: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def seconds(text: str) -> float:
    """An argument type: a finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError("must be a finite number of seconds, 0 or more")
    return value


def positive_seconds(text: str) -> float:
    """An argument type: a finite number of seconds, more than 0."""
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def positive_rate(text: str) -> float:
    """An argument type: a finite number more than 0 (e.g. requests a second)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError("must be a finite number more than 0")
    return value


def log_flags(group: argparse._ActionsContainer) -> None:
    """``-v``/``--verbose`` (count) and ``--log-format text|json``."""
    group.add_argument(
        "-v", "--verbose", action="count", default=0, help="log to stderr (-vv: debug)"
    )
    group.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines as text (default) or one JSON object per line",
    )


def connection_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of one MESH mailbox (beside the MESH_* variables and the profile), the retry
    budget and the log flags."""
    group = parser.add_argument_group("connection (flags override environment and profile)")
    group.add_argument(
        "--url", help="base URL or environment: local, integration, deployment, live"
    )
    group.add_argument("--mailbox", help="your mailbox id (MESH_MAILBOX)")
    group.add_argument("--password", help="mailbox password (prefer MESH_PASSWORD)")
    group.add_argument("--shared-key", help="environment shared key (prefer MESH_SHARED_KEY)")
    group.add_argument("--cert", help="client certificate for mutual TLS (MESH_CLIENT_CERT)")
    group.add_argument("--key", help="client private key (MESH_CLIENT_KEY)")
    group.add_argument("--ca", help="CA bundle to trust (MESH_CA_CERT)")
    group.add_argument("--profile", help="profile name in the config file (MESHPIPE_PROFILE)")
    group.add_argument("--config", help="TOML config file (MESHPIPE_CONFIG)")
    group.add_argument(
        "--retry-budget",
        type=seconds,
        metavar="SECONDS",
        help=f"how long a failed request is tried again ({ENV_RETRY_BUDGET}; default 120, "
        "which rides out a 60 s outage; 0: never retry)",
    )
    log_flags(group)


def mesh_config(args: argparse.Namespace) -> MeshConfig:
    """The mailbox's settings from :func:`connection_flags`, the environment and the
    profile; its password and shared key hidden from every log line at once."""
    config = load_config(
        profile=args.profile,
        config_file=args.config,
        url=args.url,
        mailbox=args.mailbox,
        password=args.password,
        shared_key=args.shared_key,
        client_cert=args.cert,
        client_key=args.key,
        ca_cert=args.ca,
    )
    hide(config.password, config.shared_key)
    return config


def retry_policy(args: argparse.Namespace) -> RetryPolicy:
    """``--retry-budget``, else ``$MESHPIPE_RETRY_BUDGET``, else the default policy."""
    budget = args.retry_budget
    if budget is None and (text := os.environ.get(ENV_RETRY_BUDGET)):
        try:
            budget = seconds(text)
        except argparse.ArgumentTypeError as error:
            raise ConfigError(f"{ENV_RETRY_BUDGET}={text!r}: {error}") from None
    if budget is None:
        return RetryPolicy()
    return RetryPolicy(budget=budget, attempts=1 if budget == 0 else None)


def message_flags(parser: argparse.ArgumentParser) -> None:
    """What a send says of its message beyond recipient and workflow: ``--subject``,
    ``--filename``, ``--content-type``, ``--compress``, ``--level``, ``--chunk-size``."""
    parser.add_argument("--subject")
    parser.add_argument("--filename", help="name the recipient sees (default: the file's)")
    parser.add_argument("--content-type")
    parser.add_argument("--compress", choices=units.CODECS, default="none")
    parser.add_argument("--level", type=int, help="compression level")
    parser.add_argument(
        "--chunk-size",
        type=units.size_argument,
        default=units.DEFAULT_CHUNK_SIZE,
        help="uncompressed chunk size (default %(default)s bytes; at least 5MiB)",
    )


def stop_on_signals(stop: asyncio.Event, program: str) -> Callable[[], None]:
    """SIGTERM or SIGINT sets ``stop`` (a clean stop); a second one cancels the running task
    at once. Returns the function that removes the handlers. Call it from that task."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def handle() -> None:
        if stop.is_set():
            if main is not None:
                main.cancel()
            return
        sys.stderr.write(f"{program}: stopping (again to stop at once)\n")
        stop.set()

    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, handle)

    def remove() -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(number)

    return remove


__all__ = [
    "ENV_RETRY_BUDGET",
    "connection_flags",
    "log_flags",
    "mesh_config",
    "message_flags",
    "positive",
    "positive_rate",
    "positive_seconds",
    "retry_policy",
    "seconds",
    "stop_on_signals",
]
