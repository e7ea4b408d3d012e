"""The ``meshpipe`` command line.

    meshpipe send PATH --to MAILBOX --workflow-id WF [--compress none|gzip|zstd] ...
    meshpipe send PATH --to-gp NHS_NUMBER,DOB,SURNAME --workflow-id WF ...   (GP-routed)
    meshpipe send --resume LOCAL_ID    (the same send again resumes it too; --again, --no-ledger)
    meshpipe receive MESSAGE_ID --out PATH [--no-ack] [--overwrite] [--require-verified]
                     [--exec CMD] [--no-ledger]
    meshpipe receive --all --out-dir DIR [--require-verified]
    meshpipe history [--json] [filters] | history MESSAGE_ID_OR_LOCAL_ID
    meshpipe inbox [--json] | ack ID... | track ID [--json] | lookup ODS WORKFLOW | handshake
    meshpipe serve ...   (the local MESH server)      meshpipe demo ...      meshpipe --version
    meshpipe watch --config FILE   (unattended: outbox and inbox folders, metrics, health)
    meshpipe web [--ledger LOCATION] [--listen HOST:PORT]   (the tracking web view)

Connection flags (``--url --mailbox --password --shared-key --cert --key --ca --profile
--config``) sit beside the environment variables MESH_URL, MESH_MAILBOX, MESH_PASSWORD,
MESH_SHARED_KEY, MESH_CLIENT_CERT, MESH_CLIENT_KEY, MESH_CA_CERT; ``--retry-budget SECONDS``
(MESHPIPE_RETRY_BUDGET) bounds how long a failed request is tried again. Exit status 0 on success;
otherwise 1 (2 for usage or configuration errors, 130 if interrupted) and one line on stderr.
A received message that could not be verified (nothing to verify it against) gets a WARNING
line on stderr; ``--require-verified`` refuses it instead.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, TextIO

from meshpipe import units
from meshpipe._meshpipe import __version__
from meshpipe.client import ClientSettings, MeshClient
from meshpipe.config import UPLOAD_ORDERS, RetryPolicy, load_config
from meshpipe.durable import CommandHook, DurableReceiver, DurableReceiveResult, DurableSend
from meshpipe.durable.history import history_filter, show_history
from meshpipe.errors import ConfigError, MeshpipeError, MessageHeaderError, PlanError
from meshpipe.gp_route import GPRoute, mask_json, mask_patient_details
from meshpipe.headers import SendHeaders
from meshpipe.ledger import Ledger, resolve_ledger_location
from meshpipe.logs import LOG_FORMATS, hide, logging_configured
from meshpipe.models import ReportMessage
from meshpipe.progress import Progress
from meshpipe.retry import RetryingClient
from meshpipe.transfer import (
    DEFAULT_CONCURRENCY,
    ReceiveFailure,
    ReceiveOptions,
    ReceiveResult,
    SendOptions,
    receive_all,
    receive_message,
    send_file,
)

PROGRAM: Final = "meshpipe"
#: ``meshpipe handshake`` warns when the client certificate expires within this many days.
HANDSHAKE_WARNING_DAYS: Final = 30
ENV_RETRY_BUDGET: Final = "MESHPIPE_RETRY_BUDGET"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _connection_flags(parser: argparse.ArgumentParser) -> None:
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
        type=_seconds,
        metavar="SECONDS",
        help="how long a failed request is tried again (MESHPIPE_RETRY_BUDGET; default 120, "
        "which rides out a 60 s outage; 0: never retry)",
    )
    _log_flags(group)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number of seconds, 0 or more")
    return value


def _retry_policy(args: argparse.Namespace) -> RetryPolicy:
    """--retry-budget, else MESHPIPE_RETRY_BUDGET, else the default policy."""
    budget = args.retry_budget
    if budget is None and (text := os.environ.get(ENV_RETRY_BUDGET)):
        try:
            budget = _seconds(text)
        except argparse.ArgumentTypeError as error:
            raise ConfigError(f"{ENV_RETRY_BUDGET}={text!r}: {error}") from None
    if budget is None:
        return RetryPolicy()
    return RetryPolicy(budget=budget, attempts=1 if budget == 0 else None)


def _log_flags(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "-v", "--verbose", action="count", default=0, help="log to stderr (-vv: debug)"
    )
    group.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines as text (default) or one JSON object per line",
    )


def _ledger_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("transfer ledger (resume, exactly-once)")
    group.add_argument(
        "--state-dir",
        help="directory of the ledger and partial files (MESHPIPE_STATE_DIR; default "
        "~/.local/share/meshpipe)",
    )
    group.add_argument(
        "--ledger", help="ledger file or postgresql:// URL (MESHPIPE_LEDGER; beats --state-dir)"
    )


def _open_ledger(args: argparse.Namespace) -> Ledger:
    """The ledger chosen by --ledger / --state-dir / the environment (created if missing)."""
    return Ledger.open(resolve_ledger_location(args.ledger, args.state_dir))


def _history_parser(commands: Any) -> None:
    history = commands.add_parser("history", help="transfers recorded in the ledger")
    history.add_argument(
        "transfer", nargs="?", metavar="MESSAGE_ID_OR_LOCAL_ID", help="show its events"
    )
    history.add_argument("--json", action="store_true")
    history.add_argument("--local-id")
    history.add_argument("--message-id")
    history.add_argument("--mailbox")
    history.add_argument("--workflow-id")
    history.add_argument("--state", help="e.g. uploading, delivered, acknowledged, failed")
    history.add_argument("--since", help="created at or after (YYYY-MM-DD or ISO date-time, UTC)")
    history.add_argument("--until", help="created before (YYYY-MM-DD or ISO date-time, UTC)")
    history.add_argument("--limit", type=_positive, default=50)
    _log_flags(history)
    _ledger_flags(history)


def _add_send_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``meshpipe send``: the file, its headers, the plan, the ledger flags."""
    send = commands.add_parser(
        "send",
        help="send a file; prints the message id",
        description="Send a file as one MESH message and print its id. The send is recorded "
        "in the ledger: the same command after an interruption resumes it (only the chunks "
        "MESH does not hold are sent, into the same message), and a local id already sent "
        "prints the existing message id instead of sending again.",
    )
    send.add_argument("path", nargs="?", help="the file (optional with --resume)")
    recipient = send.add_mutually_exclusive_group()
    recipient.add_argument(
        "--to", help="recipient mailbox id (or a GP-routing address GPPROVIDER_...)"
    )
    recipient.add_argument(
        "--to-gp",
        metavar="NHS_NUMBER,DOB,SURNAME",
        help="route to the patient's registered GP practice (date of birth YYYYMMDD); "
        "checked before anything is sent, never logged",
    )
    send.add_argument("--workflow-id")
    send.add_argument(
        "--local-id",
        help="your reference (default: a fresh unique id); a local id already sent is not "
        "sent again",
    )
    send.add_argument(
        "--resume",
        metavar="LOCAL_ID",
        help="resume the interrupted send of LOCAL_ID (its recorded file, recipient, workflow)",
    )
    send.add_argument(
        "--again",
        action="store_true",
        help="send a new message even if this local id (or this file) was sent before",
    )
    send.add_argument(
        "--no-ledger", action="store_true", help="do not record the send (no resume, no check)"
    )
    send.add_argument("--subject")
    send.add_argument("--filename", help="name the recipient sees (default: the file's)")
    send.add_argument("--content-type")
    send.add_argument("--compress", choices=units.CODECS, default="none")
    send.add_argument("--level", type=int, help="compression level")
    send.add_argument(
        "--chunk-size",
        type=units.size_argument,
        default=units.DEFAULT_CHUNK_SIZE,
        help="uncompressed chunk size (default %(default)s bytes; at least 5MiB)",
    )
    send.add_argument(
        "--order",
        choices=UPLOAD_ORDERS,
        help="how chunks 2..N-1 go: in-order (pipelined in chunk order; the default for "
        "integration, deployment and live), concurrent (the default for any other server), "
        "sequential (each only after the one before was answered); or upload_order in the "
        "profile",
    )
    send.add_argument(
        "--concurrency",
        type=_positive,
        default=DEFAULT_CONCURRENCY,
        help="chunks in flight with --order concurrent (default %(default)s)",
    )
    send.add_argument("--sequential", action="store_true", help="the same as --order sequential")
    send.add_argument("--partner-id")
    send.add_argument(
        "--max-file-size",
        type=units.size_argument,
        default=units.MAX_FILE_SIZE,
        help="refuse larger files (default %(default)s bytes, NHS's advertised 50 GB)",
    )
    send.add_argument(
        "--checksum-in-header",
        action="store_true",
        help="gzip/zstd: put the whole-file xxh3-128 in chunk 1's header (meshpipe/1, which "
        "older meshpipe receivers verify) at the cost of reading the file twice; by default "
        "it travels at the end of the last chunk and the file is read once",
    )
    _ledger_flags(send)
    _connection_flags(send)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Fast, verified file transfers through NHS England's MESH."
    )
    parser.add_argument("--version", action="version", version=f"{PROGRAM} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_send_command(commands)

    receive = commands.add_parser("receive", help="download, verify and acknowledge")
    receive.add_argument("message_id", nargs="?")
    receive.add_argument("--out", help="file to write (for one message)")
    receive.add_argument("--all", action="store_true", help="every message in the inbox")
    receive.add_argument("--out-dir", help="directory for --all")
    receive.add_argument("--workflow-filter", help="with --all: e.g. WF, !WF, WF*, *WF*")
    receive.add_argument("--no-ack", action="store_true", help="do not acknowledge")
    receive.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    receive.add_argument(
        "--keep-zstd", action="store_true", help="keep a meshpipe zstd payload compressed"
    )
    receive.add_argument(
        "--require-verified",
        action="store_true",
        help="refuse (leave in the inbox, write nothing) a message that carries nothing to "
        "verify it against: no meshpipe checksum and no compression",
    )
    receive.add_argument("--concurrency", type=_positive, default=DEFAULT_CONCURRENCY)
    receive.add_argument("--json", action="store_true", help="print results as JSON")
    receive.add_argument(
        "--exec",
        dest="exec_command",
        metavar="CMD",
        help="run CMD PATH METADATA_JSON after delivery, before acknowledging (no shell; "
        "MESHPIPE_IDEMPOTENCY_KEY and more in its environment); a failure leaves the message "
        "unacknowledged",
    )
    receive.add_argument(
        "--exec-timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="stop an --exec command (and what it started) that runs longer (default 3600); "
        "the message then stays unacknowledged",
    )
    receive.add_argument(
        "--no-ledger",
        action="store_true",
        help="no resume or exactly-once: do not record the receive in the ledger",
    )
    _ledger_flags(receive)
    _connection_flags(receive)

    _history_parser(commands)

    inbox = commands.add_parser("inbox", help="list message ids ready to download")
    inbox.add_argument("--workflow-filter")
    inbox.add_argument("--json", action="store_true", help="with metadata, as JSON")
    _connection_flags(inbox)

    ack = commands.add_parser("ack", help="acknowledge messages")
    ack.add_argument("message_ids", nargs="+", metavar="MESSAGE_ID")
    _connection_flags(ack)

    track = commands.add_parser("track", help="status of a message you sent")
    track.add_argument("message_id", metavar="ID")
    track.add_argument("--local-id", action="store_true", help="ID is a local id")
    track.add_argument("--json", action="store_true")
    _connection_flags(track)

    lookup = commands.add_parser("lookup", help="find mailboxes by ODS code and workflow")
    lookup.add_argument("ods_code")
    lookup.add_argument("workflow_id")
    lookup.add_argument("--json", action="store_true")
    _connection_flags(lookup)

    handshake = commands.add_parser("handshake", help="check the mailbox and credentials")
    _connection_flags(handshake)

    commands.add_parser("serve", help="run the local MESH server (meshpipe serve --help)")
    commands.add_parser("demo", help="run the demo (meshpipe demo --help)")
    commands.add_parser(
        "watch", help="run unattended: outbox and inbox folders, metrics (meshpipe watch --help)"
    )
    commands.add_parser("web", help="serve the tracking web view (meshpipe web --help)")
    return parser


def _client(args: argparse.Namespace) -> MeshClient:
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
    settings = ClientSettings(
        max_connections=max(8, getattr(args, "concurrency", 4) + 4), retry=_retry_policy(args)
    )
    return MeshClient(config, settings)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            item.name: _jsonable(getattr(value, item.name))
            for item in dataclasses.fields(value)
            if item.name not in ("headers",)
        }
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _print_json(value: Any, out: TextIO) -> None:
    json.dump(_jsonable(value), out, indent=2, sort_keys=True)
    out.write("\n")


def _send_options(args: argparse.Namespace) -> SendOptions:
    options: SendOptions = {
        "checksum_in_header": args.checksum_in_header,
        "max_file_size": args.max_file_size,
        "codec": args.compress,
        "level": args.level,
        "chunk_size": args.chunk_size,
        "concurrency": args.concurrency,
    }
    if args.order or args.sequential:
        options["order"] = "sequential" if args.sequential else args.order
    return options


def _check_send_usage(args: argparse.Namespace) -> None:
    if args.sequential and args.order not in (None, "sequential"):
        raise MessageHeaderError(f"--sequential contradicts --order {args.order}: give one of them")
    if args.no_ledger and (args.resume or args.again):
        raise MessageHeaderError("--resume and --again need the ledger: drop --no-ledger")
    if args.resume and (args.local_id or args.again):
        raise MessageHeaderError("--resume LOCAL_ID names the send: drop --local-id/--again")
    if args.path is None and not args.resume:
        raise MessageHeaderError("give the PATH of the file to send (or --resume LOCAL_ID)")


async def _send(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    _check_send_usage(args)
    headers = SendHeaders(
        to=str(GPRoute.from_argument(args.to_gp)) if args.to_gp else args.to or "",
        workflow_id=args.workflow_id or "",
        local_id=args.local_id,
        subject=args.subject,
        filename=args.filename,
        partner_id=args.partner_id,
        content_type=args.content_type,
    )
    progress = Progress(err, label="send")
    async with _client(args) as client:
        try:
            if args.no_ledger:
                result = await send_file(
                    client, args.path, headers, progress=progress, **_send_options(args)
                )
                message_id = result.message_id
            else:
                message_id = await _send_durably(args, client, headers, progress, err)
        finally:
            progress.close()
    out.write(f"{message_id}\n")
    return 0


async def _send_durably(
    args: argparse.Namespace,
    client: MeshClient,
    headers: SendHeaders,
    progress: Progress,
    err: TextIO,
) -> str:
    def notice(text: str) -> None:
        progress.close()
        err.write(f"{PROGRAM}: {mask_patient_details(text)}\n")
        err.flush()

    with _open_ledger(args) as ledger:
        result = await DurableSend(
            client,
            ledger,
            args.path,
            headers,
            again=args.again,
            resume_local_id=args.resume,
            notice=notice,
            progress=progress,
            **_send_options(args),
        ).run()
    return result.message_id


async def _receive(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.all == bool(args.message_id):
        raise MessageHeaderError("give either a MESSAGE_ID with --out, or --all with --out-dir")
    if args.no_ledger and args.exec_command:
        raise MessageHeaderError(
            "--exec needs the ledger (it runs once per delivery): drop --no-ledger"
        )
    if not args.all and not args.out:
        raise MessageHeaderError("give --out PATH for the received file")
    if args.all and not args.out_dir:
        raise MessageHeaderError("give --out-dir DIR with --all")
    receiver = None if args.no_ledger else _durable_receiver(args)
    try:
        async with _client(args) as client:
            if args.all:
                return _report_all(args, await _receive_all(args, client, receiver), out, err)
            return await _receive_one(args, client, receiver, out, err)
    finally:
        if receiver is not None:
            receiver.ledger.close()


def _durable_receiver(args: argparse.Namespace) -> DurableReceiver:
    hook = CommandHook(args.exec_command, timeout=args.exec_timeout) if args.exec_command else None
    return DurableReceiver(_open_ledger(args), hook=hook, state_dir=args.state_dir)


async def _receive_one(
    args: argparse.Namespace,
    client: MeshClient,
    receiver: DurableReceiver | None,
    out: TextIO,
    err: TextIO,
) -> int:
    progress = Progress(err, label="receive")
    options: ReceiveOptions = {
        "acknowledge": not args.no_ack,
        "concurrency": args.concurrency,
        "overwrite": args.overwrite,
        "decode_payload": not args.keep_zstd,
        "require_verified": args.require_verified,
        "progress": progress,
    }
    try:
        if receiver is None:
            result = await receive_message(client, args.message_id, args.out, **options)
            note = _verified_text(result)
        else:
            durable = await receiver.receive(client, args.message_id, args.out, **options)
            result, note = durable.result, _durable_text(durable)
    finally:
        progress.close()
    if args.json:
        _print_json(result, out)
    else:
        out.write(f"{result.path}\n")
    err.write(f"{PROGRAM}: {result.message_id}: {note}\n")
    return 0


async def _receive_all(
    args: argparse.Namespace, client: MeshClient, receiver: DurableReceiver | None
) -> list[ReceiveResult | ReportMessage | ReceiveFailure]:
    return await receive_all(
        client,
        args.out_dir,
        workflow_filter=args.workflow_filter,
        acknowledge=not args.no_ack,
        concurrency=args.concurrency,
        decode_payload=not args.keep_zstd,
        receiver=receiver.receive_message if receiver is not None else None,
        require_verified=args.require_verified,
        on_report=receiver.report_handler(client.mailbox) if receiver is not None else None,
    )


def _report_all(
    args: argparse.Namespace,
    results: list[ReceiveResult | ReportMessage | ReceiveFailure],
    out: TextIO,
    err: TextIO,
) -> int:
    failures = 0
    for item in results:
        if isinstance(item, ReceiveFailure):
            failures += 1
            err.write(f"{PROGRAM}: message {item.message_id} not received: {item.error}\n")
        elif isinstance(item, ReportMessage):
            err.write(f"{PROGRAM}: {item.describe()}\n")
        elif isinstance(item, ReceiveResult):
            if not args.json:
                out.write(f"{item.message_id}\t{item.path}\n")
            if not item.verified:
                err.write(f"{PROGRAM}: {item.message_id}: {_verified_text(item)}\n")
    if args.json:
        _print_json([item for item in results if not isinstance(item, ReceiveFailure)], out)
    return 1 if failures else 0


def _durable_text(durable: DurableReceiveResult) -> str:
    if durable.outcome == "already-delivered":
        done = "acknowledged" if durable.result.acknowledged else "not acknowledged (--no-ack)"
        return (
            f"already delivered to {durable.result.path} (ledger transfer "
            f"{durable.transfer_id}); {done}, not written again"
        )
    text = _verified_text(durable.result)
    if durable.kept_chunks:
        text += f"; resumed: {durable.kept_chunks} chunk(s) kept from an earlier run"
    return text


async def _history(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    filters = history_filter(
        local_id=args.local_id,
        message_id=args.message_id,
        mailbox=args.mailbox,
        workflow_id=args.workflow_id,
        state=args.state,
        since=args.since,
        until=args.until,
    )
    with _open_ledger(args) as ledger:
        return show_history(
            ledger, out, name=args.transfer, filters=filters, limit=args.limit, as_json=args.json
        )


def _verified_text(result: ReceiveResult) -> str:
    if result.verified:
        return "verified " + ", ".join(result.verified)
    return (
        f"WARNING: {result.path} was NOT verified: the sender gave no checksum and no "
        "compression, so damage on the way cannot be detected; check it another way, or use "
        "--require-verified to refuse such messages"
    )


async def _inbox(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async with _client(args) as client:
        endpoints = RetryingClient(client)
        ids = await endpoints.list_inbox(workflow_filter=args.workflow_filter)
        if not args.json:
            out.writelines(f"{message_id}\n" for message_id in ids)
            return 0
        infos = [await endpoints.message_info(message_id) for message_id in ids]
    _print_json(mask_json(_jsonable(infos)), out)  # a GP-routed message's recipient is masked
    return 0


async def _ack(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async with _client(args) as client:
        endpoints = RetryingClient(client)
        for message_id in args.message_ids:
            await endpoints.acknowledge(message_id)
    return 0


async def _track(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async with _client(args) as client:
        endpoints = RetryingClient(client)
        if args.local_id:
            info = await endpoints.track_local_id(args.message_id)
        else:
            info = await endpoints.track(args.message_id)
    if args.json:
        _print_json(mask_json(info.raw), out)  # MESH shows a GP-routed recipient in full
    else:
        success = {True: "success", False: "failed", None: "-"}[info.status_success]
        detail = f" {info.status_code} {info.status_description}" if info.status_code else ""
        line = f"{info.message_id}\t{info.status or '-'}\t{success}{detail}"
        out.write(mask_patient_details(line) + "\n")
    return 0


async def _lookup(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async with _client(args) as client:
        endpoints = await RetryingClient(client).lookup(args.ods_code, args.workflow_id)
    if args.json:
        _print_json(endpoints, out)
    else:
        out.writelines(f"{item.mailbox_id}\t{item.mailbox_name or ''}\n" for item in endpoints)
    return 0


async def _handshake(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    # Imported here: the other commands need neither cryptography nor the watch package.
    from meshpipe.watch.certificates import config_certificate_expiry

    async with _client(args) as client:
        expiry = config_certificate_expiry(client.config)
        if expiry is not None and expiry.seconds_left() <= 0:
            err.write(f"{PROGRAM}: warning: the client certificate {expiry.describe()}\n")
        await RetryingClient(client).handshake()
    out.write(f"{client.mailbox}: handshake ok\n")
    if expiry is not None:
        out.write(f"{client.mailbox}: client certificate {expiry.describe()}\n")
        if 0 < expiry.days_left() <= HANDSHAKE_WARNING_DAYS:
            err.write(
                f"{PROGRAM}: warning: the client certificate expires within "
                f"{HANDSHAKE_WARNING_DAYS} days: renew it (MESH refuses it once expired)\n"
            )
    return 0


Handler = Callable[[argparse.Namespace, TextIO, TextIO], Coroutine[Any, Any, int]]
_HANDLERS: Final[dict[str, Handler]] = {
    "send": _send,
    "receive": _receive,
    "inbox": _inbox,
    "ack": _ack,
    "track": _track,
    "lookup": _lookup,
    "handshake": _handshake,
    "history": _history,
}


_DELEGATED: Final = {
    "serve": "meshpipe.server.cli",
    "demo": "meshpipe.demo",
    "watch": "meshpipe.watch.cli",
    "worker": "meshpipe.fleet.worker_cli",
    "submit": "meshpipe.fleet.submit_cli",
    "web": "meshpipe.web.cli",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``meshpipe`` command; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in _DELEGATED:
        # Other modules own these commands; each takes the rest of the arguments.
        module = importlib.import_module(_DELEGATED[arguments[0]])
        return int(module.main(arguments[1:]) or 0)
    args = build_parser().parse_args(arguments)
    with logging_configured(args.verbose, args.log_format):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Run the chosen command; its errors become one line on stderr and the exit status."""
    try:
        return asyncio.run(_HANDLERS[args.command](args, sys.stdout, sys.stderr))
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROGRAM}: interrupted\n")
        return 130
    except (ConfigError, MessageHeaderError, PlanError) as error:
        sys.stderr.write(f"{PROGRAM}: error: {mask_patient_details(str(error))}\n")
        return 2
    except (MeshpipeError, OSError) as error:
        sys.stderr.write(f"{PROGRAM}: error: {mask_patient_details(str(error))}\n")
        return 1
