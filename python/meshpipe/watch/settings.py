"""The settings of ``meshpipe watch``: the ``[watch]`` table of the TOML config file (the same
file as the connection profiles), validated whole before anything starts::

    [profiles.a]                       # connection settings, as for every command
    url = "integration"
    mailbox = "X26ABC1"
    password_env = "MESH_A_PASSWORD"
    shared_key_env = "MESH_SHARED_KEY"
    client_cert = "/etc/mesh/a.crt"
    client_key = "/etc/mesh/a.key"

    [watch]
    listen = "127.0.0.1:9464"          # metrics, /healthz, /readyz ("host:port"; port 0: any)
    allow_remote_listen = false        # true: allow a listen address other than loopback
    poll_interval = 60                 # seconds between inbox polls (at most 300, as MESH asks)
    poll_jitter = 0.1                  # each wait is poll_interval × (1 ± jitter)
    scan_interval = 5                  # seconds between scans of the outbox folders
    settle_seconds = 2                 # a rule-folder file unchanged this long is complete
    send_concurrency = 4               # messages sent (with fleet: submitted) at once, per mailbox
    shutdown_grace = 30                # seconds transfers in flight get to finish on SIGTERM
    certificate_warning_days = 30
    retry_budget = 120                 # seconds a failed request is tried again
    ledger = "/var/lib/meshpipe/ledger.db"   # or state_dir; default as for meshpipe send
    fleet = false                      # true: hand sends to the fleet's workers (needs a
                                       # postgresql:// ledger and meshpipe[fleet])
    fleet_chunks_per_job = 4           # chunks of one fleet range job

    [[watch.mailbox]]
    profile = "a"
    root = "/srv/mesh/X26ABC1"         # out/ sent/ failed/ in/ reports/ under it, or each given
    compress = "gzip"                  # the codec for files without a .ctl saying otherwise
    fleet = true                       # this mailbox only (default: [watch] fleet)
    receive = true                     # poll the inbox (default true)
    workflow_filter = "EXTRACT*"       # receive only these (MESH's filter syntax)

    [[watch.mailbox.rule]]             # a file dropped in out/extracts/ goes to X26ABC2
    folder = "extracts"
    to = "X26ABC2"
    workflow_id = "NIGHTLY_EXTRACT"
    subject = "nightly extract"        # optional

``fleet`` is a switch, not implied by a PostgreSQL ledger: a fleet send only goes once
``meshpipe worker`` processes of that mailbox run (with the outbox at the same path), and a
PostgreSQL ledger is also used without any (several watch hosts, the web view). Per mailbox,
since a worker holds one mailbox's credentials (meshpipe.watch.fleet_outbox).

Errors are :class:`~meshpipe.errors.ConfigError` naming the setting and what to change.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from meshpipe import units
from meshpipe.config import MeshConfig, load_config, read_config_file
from meshpipe.errors import ConfigError

#: The folders of one mailbox and their default names under ``root``.
FOLDER_NAMES: Final[Mapping[str, str]] = {
    "out": "out",
    "sent": "sent",
    "failed": "failed",
    "inbox": "in",
    "reports": "reports",
}
_RULE_FOLDER: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_MAX_POLL_INTERVAL: Final = 300.0


@dataclass(frozen=True, slots=True)
class FolderRule:
    """Files dropped in ``out/<folder>/`` (no control file needed) are sent to ``to`` with
    ``workflow_id``; ``subject`` and ``compress`` are optional."""

    folder: str
    to: str
    workflow_id: str
    subject: str | None = None
    compress: units.Codec | None = None


@dataclass(frozen=True, slots=True)
class MailboxFolders:
    """Where one mailbox's files live: ``out`` (to send: data files with ``.ctl`` files, and
    one sub-folder per rule), ``sent`` and ``failed`` (what happened to them), ``inbox``
    (verified messages received) and ``reports`` (reports received: never data)."""

    out: Path
    sent: Path
    failed: Path
    inbox: Path
    reports: Path

    def all(self) -> dict[str, Path]:
        return {name: getattr(self, name) for name in FOLDER_NAMES}


@dataclass(frozen=True, slots=True)
class MailboxSettings:
    """One mailbox the service watches: its connection (``config``, from ``profile``), its
    folders, its folder rules and what it sends and receives."""

    profile: str
    config: MeshConfig
    folders: MailboxFolders
    rules: tuple[FolderRule, ...] = ()
    compress: units.Codec = "none"
    chunk_size: int = units.DEFAULT_CHUNK_SIZE
    send: bool = True
    receive: bool = True
    workflow_filter: str | None = None
    #: Hand this mailbox's sends to the fleet; None: as ``WatchSettings.fleet``.
    fleet: bool | None = None

    @property
    def mailbox(self) -> str:
        return self.config.mailbox


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """The whole service (see the module doc for each setting's meaning and default)."""

    mailboxes: tuple[MailboxSettings, ...]
    listen_host: str = "127.0.0.1"
    listen_port: int = 9464
    #: The operations endpoint refuses a non-loopback listen address unless this is true.
    allow_remote_listen: bool = False
    poll_interval: float = 60.0
    poll_jitter: float = 0.1
    scan_interval: float = 5.0
    settle_seconds: float = 2.0
    handshake_interval: float = 24 * 3600.0
    send_concurrency: int = 4
    shutdown_grace: float = 30.0
    certificate_warning_days: int = 30
    ledger: str | None = None
    state_dir: str | None = None
    #: Consecutive failed requests to MESH after which the circuit opens (requests pause,
    #: with back-off up to ``max_backoff`` seconds, until one probe succeeds).
    failure_threshold: int = 3
    max_backoff: float = 300.0
    #: How long a failed request is tried again before it counts as a failure (the retry
    #: policy's budget: meshpipe.config.RetryPolicy).
    retry_budget: float = 120.0
    #: Sends go to the fleet's workers (meshpipe.watch.fleet_outbox) instead of being sent
    #: by this process; a mailbox's own ``fleet`` overrides it.
    fleet: bool = False
    #: Chunks of one fleet range job (None: meshpipe.fleet.DEFAULT_CHUNKS_PER_JOB).
    fleet_chunks_per_job: int | None = None

    def uses_fleet(self, mailbox: MailboxSettings) -> bool:
        """Whether ``mailbox``'s outbox hands its sends to the fleet."""
        return self.fleet if mailbox.fleet is None else mailbox.fleet

    def __post_init__(self) -> None:
        if not self.mailboxes:
            raise ConfigError("[watch]: add at least one [[watch.mailbox]] table")
        if not 0 < self.poll_interval <= _MAX_POLL_INTERVAL:
            raise ConfigError(
                f"[watch] poll_interval {self.poll_interval:g} s: choose 1 to "
                f"{_MAX_POLL_INTERVAL:g} (MESH asks for a poll at least every 5 minutes)"
            )
        if not 0 <= self.poll_jitter < 1:
            raise ConfigError("[watch] poll_jitter must be at least 0 and below 1 (e.g. 0.1)")
        for name in ("scan_interval", "settle_seconds", "shutdown_grace", "handshake_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[watch] {name} must be more than 0 seconds")
        if self.send_concurrency < 1 or self.failure_threshold < 1:
            raise ConfigError("[watch] send_concurrency and failure_threshold must be at least 1")
        if self.fleet_chunks_per_job is not None and self.fleet_chunks_per_job < 1:
            raise ConfigError("[watch] fleet_chunks_per_job must be at least 1")
        if not 0 <= self.listen_port <= 65535:
            raise ConfigError(f"[watch] listen port {self.listen_port} is not a TCP port")
        _check_distinct(self.mailboxes)


def _check_distinct(mailboxes: tuple[MailboxSettings, ...]) -> None:
    """No two mailboxes alike, and no folder used twice or inside another one."""
    seen: dict[str, str] = {}
    folders: list[tuple[Path, str]] = []
    for entry in mailboxes:
        if entry.mailbox in seen:
            raise ConfigError(f"[[watch.mailbox]]: mailbox {entry.mailbox} is listed twice")
        seen[entry.mailbox] = entry.profile
        folders += [(path, f"{entry.mailbox} {name}") for name, path in entry.folders.all().items()]
    for index, (path, name) in enumerate(folders):
        for other, other_name in folders[index + 1 :]:
            if path == other or path.is_relative_to(other) or other.is_relative_to(path):
                raise ConfigError(
                    f"[[watch.mailbox]]: the {name} folder {str(path)!r} and the {other_name} "
                    f"folder {str(other)!r} overlap: give each its own directory"
                )


def load_watch_settings(config_file: str | os.PathLike[str], **overrides: Any) -> WatchSettings:
    """The ``[watch]`` table of ``config_file``, with ``overrides`` (settings given on the
    command line; None values ignored) applied."""
    path = Path(config_file).expanduser()
    document = read_config_file(path)
    table = document.get("watch")
    if not isinstance(table, dict):
        raise ConfigError(f"config file {str(path)!r} has no [watch] table: see meshpipe watch -h")
    return watch_settings(table, path, **overrides)


_SCALARS: Final[Mapping[str, type]] = {
    "poll_interval": float,
    "poll_jitter": float,
    "scan_interval": float,
    "settle_seconds": float,
    "handshake_interval": float,
    "send_concurrency": int,
    "shutdown_grace": float,
    "certificate_warning_days": int,
    "ledger": str,
    "state_dir": str,
    "failure_threshold": int,
    "max_backoff": float,
    "retry_budget": float,
    "allow_remote_listen": bool,
    "fleet": bool,
    "fleet_chunks_per_job": int,
}


def watch_settings(table: Mapping[str, Any], config_file: Path, **overrides: Any) -> WatchSettings:
    """WatchSettings from a parsed ``[watch]`` table (profiles read from ``config_file``)."""
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key == "mailbox":
            continue
        if key == "listen":
            values["listen_host"], values["listen_port"] = parse_listen(str(value))
        elif key in _SCALARS:
            values[key] = _typed(f"[watch] {key}", value, _SCALARS[key])
        else:
            raise ConfigError(f"[watch]: unknown setting {key!r}")
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "listen":
            values["listen_host"], values["listen_port"] = parse_listen(str(value))
        elif key in _SCALARS:
            values[key] = value
        else:
            raise TypeError(f"unknown watch setting {key!r}")
    entries = table.get("mailbox", [])
    if not isinstance(entries, list) or not all(isinstance(item, dict) for item in entries):
        raise ConfigError("[watch]: mailboxes are [[watch.mailbox]] tables")
    mailboxes = tuple(_mailbox(item, config_file) for item in entries)
    return WatchSettings(mailboxes=mailboxes, **values)


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9464`` for IPv6) as (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"listen address {text!r}: give host:port, e.g. 127.0.0.1:9464")
    return host.strip("[]") or "127.0.0.1", int(port)


def _typed(name: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is bool and isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"{name}: {value!r} is not a {kind.__name__}")


_MAILBOX_KEYS: Final = frozenset(
    {
        "profile",
        "root",
        "compress",
        "chunk_size",
        "send",
        "receive",
        "workflow_filter",
        "rule",
        "fleet",
    }
    | set(FOLDER_NAMES)
)


def _mailbox(table: Mapping[str, Any], config_file: Path) -> MailboxSettings:
    unknown = set(table) - _MAILBOX_KEYS
    if unknown:
        raise ConfigError(f"[[watch.mailbox]]: unknown setting(s) {', '.join(sorted(unknown))}")
    profile = table.get("profile")
    if not isinstance(profile, str) or not profile:
        raise ConfigError("[[watch.mailbox]]: give profile = NAME (a [profiles.NAME] table)")
    # Only the profile: MESH_MAILBOX and the like in the environment would make every
    # mailbox the same one.
    config = load_config(profile=profile, config_file=config_file, environ={})
    where = f"[[watch.mailbox]] {config.mailbox}"
    compress = table.get("compress", "none")
    if compress not in units.CODECS:
        raise ConfigError(f"{where}: compress {compress!r} is not one of {', '.join(units.CODECS)}")
    chunk_size = table.get("chunk_size", units.DEFAULT_CHUNK_SIZE)
    if isinstance(chunk_size, str):
        chunk_size = units.parse_size(chunk_size)
    rules = table.get("rule", [])
    if not isinstance(rules, list) or not all(isinstance(item, dict) for item in rules):
        raise ConfigError(f"{where}: folder rules are [[watch.mailbox.rule]] tables")
    parsed = tuple(_rule(where, item) for item in rules)
    if len({rule.folder for rule in parsed}) != len(parsed):
        raise ConfigError(f"{where}: two rules name the same folder")
    return MailboxSettings(
        profile=profile,
        config=config,
        folders=_folders(where, table, config_file),
        rules=parsed,
        compress=compress,
        chunk_size=_typed(f"{where} chunk_size", chunk_size, int),
        send=bool(table.get("send", True)),
        receive=bool(table.get("receive", True)),
        workflow_filter=table.get("workflow_filter"),
        fleet=None if "fleet" not in table else _typed(f"{where} fleet", table["fleet"], bool),
    )


def _folders(where: str, table: Mapping[str, Any], config_file: Path) -> MailboxFolders:
    root = table.get("root")
    paths: dict[str, Path] = {}
    for name, default in FOLDER_NAMES.items():
        value = table.get(name)
        if value is None:
            if root is None:
                raise ConfigError(f"{where}: give root = DIR, or the {name} folder")
            value = Path(root) / default
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = config_file.parent / path
        paths[name] = Path(os.path.normpath(path))
    return MailboxFolders(**paths)


def _rule(where: str, table: Mapping[str, Any]) -> FolderRule:
    unknown = set(table) - {"folder", "to", "workflow_id", "subject", "compress"}
    if unknown:
        raise ConfigError(f"{where} rule: unknown setting(s) {', '.join(sorted(unknown))}")
    folder = table.get("folder")
    if not isinstance(folder, str) or not _RULE_FOLDER.match(folder):
        raise ConfigError(
            f"{where} rule: folder {folder!r} must be one plain folder name under out/ "
            "(letters, digits, '.', '_', '-'; no '/' or '..')"
        )
    for key in ("to", "workflow_id"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise ConfigError(f"{where} rule {folder!r}: give {key}")
    compress = table.get("compress")
    if compress is not None and compress not in units.CODECS:
        raise ConfigError(f"{where} rule {folder!r}: compress {compress!r} is not a codec")
    return FolderRule(
        folder=folder,
        to=table["to"].strip().upper(),
        workflow_id=table["workflow_id"],
        subject=table.get("subject"),
        compress=compress,
    )
