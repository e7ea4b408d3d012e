"""``meshpipe serve``: run the local MESH server until interrupted.

Flags take precedence over mesh-sandbox's environment variables (SHARED_KEY, AUTH_MODE,
STORE_MODE, MAILBOXES_DATA_DIR), which take precedence over the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meshpipe.errors import ConfigError
from meshpipe.server.config import (
    ADMIN_TOKEN_ENV,
    BODY_TIMEOUT_SECONDS,
    CLIENT_CERT_MODES,
    HEADER_TIMEOUT_SECONDS,
    MAX_CONNECTIONS,
    STORE_MODES,
    ServerConfig,
    TLSSettings,
    env_defaults,
    load_mailboxes,
    load_workflows,
)
from meshpipe.server.demographics import load_demographics
from meshpipe.server.faults import FaultPlan, FaultPlanError
from meshpipe.server.local_server import LocalMeshServer
from meshpipe.server.rules import RULES
from meshpipe.units import size_argument

DEFAULT_PORT = 8700
SANDBOX_DEFAULT_SHARED_KEY = "Banana"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshpipe serve",
        description="Run a local MESH server (a drop-in replacement for NHS's mesh-sandbox).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT}; 0 = any free port)"
    )
    parser.add_argument("--shared-key", help="NHSMESH shared key (env SHARED_KEY)")
    parser.add_argument("--auth-mode", choices=("full", "none", "canned"), help="env AUTH_MODE")
    parser.add_argument(
        "--store",
        choices=STORE_MODES,
        help="dir (durable, needs --data-dir), memory, or discard (check and drop bodies); "
        "env STORE_MODE (file = dir). Default: dir with a data directory, else memory",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="directory for the dir store (env MAILBOXES_DATA_DIR)"
    )
    parser.add_argument("--mailboxes", type=Path, help="mailboxes JSON-lines file (sandbox format)")
    parser.add_argument("--workflows", type=Path, help="workflows JSON-lines file (sandbox format)")
    parser.add_argument(
        "--demographics",
        type=Path,
        metavar="FILE",
        help="GP-routing table, JSON lines of nhs_number, date_of_birth, surname, mailbox: "
        "with --rules strict a GPPROVIDER_ recipient is delivered to its practice or gets "
        "MESH's error report",
    )
    parser.add_argument(
        "--rules",
        choices=RULES,
        default="strict",
        help="strict: the live platform's limits; sandbox: answer as mesh-sandbox does",
    )
    parser.add_argument(
        "--max-decoded-chunk-size",
        type=size_argument,
        metavar="SIZE",
        help="refuse (413) a chunk as soon as it decodes past SIZE, e.g. 1GiB "
        "(default: strict rules the 50 GB message limit, sandbox rules 4 GiB)",
    )
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM); enables HTTPS")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument("--tls-client-ca", type=Path, help="CA that signs client certificates")
    parser.add_argument(
        "--tls-client-cert",
        choices=CLIENT_CERT_MODES,
        default="required",
        help="required (default; needs --tls-client-ca), optional (checked when sent; needs "
        "--tls-client-ca) or none (no client certificates)",
    )
    parser.add_argument(
        "--admin-api",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve the admin API (reset, clock, faults, ...); default: on when bound to "
        "loopback, off otherwise, where it also needs an admin token",
    )
    parser.add_argument(
        "--admin-token",
        help=f"admin requests must send 'Authorization: Bearer TOKEN' (env {ADMIN_TOKEN_ENV}, "
        "which keeps it out of process lists); at least 16 characters",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        metavar="SECONDS",
        help="close a connection that has not sent a whole request head within SECONDS of "
        "opening or of the previous answer; bounds TLS handshakes too "
        f"({HEADER_TIMEOUT_SECONDS:g})",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        metavar="SECONDS",
        help=f"close a request whose body pauses for SECONDS ({BODY_TIMEOUT_SECONDS:g})",
    )
    parser.add_argument(
        "--min-body-rate",
        type=size_argument,
        metavar="SIZE",
        help="...or averages under SIZE a second, e.g. 4KiB (16KiB; 0 = pauses only)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help=f"answer 503 to connections beyond N open at once ({MAX_CONNECTIONS})",
    )
    parser.add_argument("--faults", type=Path, help="fault plan (JSON) to inject")
    parser.add_argument("--log-level", default="INFO", help="logging level (INFO)")
    return parser


def config_from_args(
    args: argparse.Namespace, environ: dict[str, str] | None = None
) -> ServerConfig:
    values: dict[str, Any] = env_defaults(environ)
    values["host"] = args.host
    values["port"] = args.port
    values["rules"] = args.rules
    if args.shared_key:
        values["shared_key"] = args.shared_key
    elif "shared_key" not in values and args.rules == "sandbox":
        values["shared_key"] = SANDBOX_DEFAULT_SHARED_KEY
    if args.auth_mode:
        values["auth_mode"] = args.auth_mode
    if args.data_dir:
        values["data_dir"] = args.data_dir
    if args.store:
        values["store"] = args.store
    elif "store" not in values:
        values["store"] = "dir" if values.get("data_dir") else "memory"
    if args.max_decoded_chunk_size is not None:
        values["max_decoded_chunk_size"] = args.max_decoded_chunk_size
    for flag, key in (
        ("admin_api", "admin_api"),
        ("admin_token", "admin_token"),
        ("header_timeout", "header_timeout_seconds"),
        ("body_timeout", "body_timeout_seconds"),
        ("min_body_rate", "min_body_rate"),
        ("max_connections", "max_connections"),
    ):
        if getattr(args, flag) is not None:
            values[key] = getattr(args, flag)
    values["mailboxes"] = load_mailboxes(args.mailboxes)
    values["workflows"] = load_workflows(args.workflows)
    values["demographics"] = load_demographics(args.demographics)
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        values["tls"] = TLSSettings(
            args.tls_cert, args.tls_key, args.tls_client_ca, args.tls_client_cert
        )
    elif args.tls_client_ca:
        raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    return ServerConfig(**values)


def startup_line(server: LocalMeshServer) -> str:
    """What the server listens on, as bound, and (last, for scripts) the URL clients on this
    machine use when that differs (a wildcard bind)."""
    scheme = "https" if server.config.tls else "http"
    bound = [f"{scheme}://{address}" for address in server.bound_addresses]
    line = f"meshpipe serve: listening on {', '.join(bound)}"
    if bound != [server.url]:
        line += f"; from this machine: {server.url}"
    return line


async def _serve(server: LocalMeshServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # RuntimeError outside the main thread: then the caller stops the server instead.
        with contextlib.suppress(RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    async with server:
        if server.config.store == "memory":
            logging.getLogger("meshpipe.server").info(
                "store 'memory': messages live in a temporary directory until exit "
                "(give --data-dir for the durable dir store)"
            )
        print(startup_line(server), flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        config = config_from_args(args)
        plan = FaultPlan.load(args.faults) if args.faults else None
        server = LocalMeshServer(config, faults=plan)
    except (ConfigError, FaultPlanError) as exc:
        print(f"meshpipe serve: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(server))
    except OSError as exc:
        print(
            f"meshpipe serve: cannot listen on {args.host}:{args.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        pass
    return 0
