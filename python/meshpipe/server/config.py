"""Server settings, mailboxes and workflow entitlements.

Mailboxes and workflows are read from JSON-lines files in mesh-sandbox's format, one object a line:
mailboxes ``{"mailbox_id", "mailbox_name", "billing_entity", "ods_code", "org_code", "password"}``,
workflows ``{"workflow_id", "senders": [...], "receivers": [...]}``. Without files, the defaults are
the ones mesh-sandbox ships, so code written against the sandbox works unchanged.
"""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from meshpipe.errors import ConfigError
from meshpipe.server.demographics import PatientRecord
from meshpipe.server.rules import RULES, TOKEN_WINDOW_SECONDS, RuleSet, RulesName
from meshpipe.units import MAX_FILE_SIZE, MAX_REQUEST_SIZE, MIN_CHUNK_SIZE

StoreMode = Literal["memory", "dir", "discard"]
AuthMode = Literal["full", "none", "canned"]

STORE_MODES: tuple[str, ...] = ("memory", "dir", "discard")
AUTH_MODES: tuple[str, ...] = ("full", "none", "canned")

DEFAULT_SHARED_KEY = "BackBone"
DEFAULT_PASSWORD = "password"

#: A message accepted but not acknowledged for this long becomes undeliverable (an NDR).
INBOX_EXPIRY_DAYS = 5
#: Every message is deleted this long after it was sent.
MESSAGE_RETENTION_DAYS = 30

#: A connection must deliver a whole request head (request line and headers) within this many
#: seconds of opening (or of the previous answer on it), else it is closed (408 when part of a
#: request had arrived). Also the longest a TLS handshake may take.
HEADER_TIMEOUT_SECONDS = 30.0
#: A request body may pause for at most this many seconds ...
BODY_TIMEOUT_SECONDS = 30.0
#: ... and must average at least this many bytes a second (16 KiB/s = 128 kbit/s): each byte
#: received buys 1/rate seconds, never more than the pause above from now.
MIN_BODY_RATE = 16 * 1024
#: At most this many connections open at once; more are answered 503 and closed.
MAX_CONNECTIONS = 512
#: An admin token shorter than this is refused (it guards deleting every message).
MIN_ADMIN_TOKEN_LENGTH = 16
#: meshpipe's own environment variable for the admin token (a flag shows in process lists).
ADMIN_TOKEN_ENV = "MESHPIPE_ADMIN_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as given to bind) is reachable only from this machine: ``localhost``
    or a loopback address. Any other name counts as reachable from the network."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Mailbox:
    mailbox_id: str
    mailbox_name: str = ""
    billing_entity: str | None = None
    ods_code: str = ""
    org_code: str = ""
    org_name: str = ""
    password: str = field(default=DEFAULT_PASSWORD, repr=False)
    active: bool = True

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> Mailbox:
        mailbox_id = str(item.get("mailbox_id") or "").strip().upper()
        if not mailbox_id:
            raise ConfigError("a mailbox entry has no mailbox_id")
        return cls(
            mailbox_id=mailbox_id,
            mailbox_name=str(item.get("mailbox_name") or ""),
            billing_entity=item.get("billing_entity"),
            ods_code=str(item.get("ods_code") or "").strip().upper(),
            org_code=str(item.get("org_code") or ""),
            org_name=str(item.get("org_name") or ""),
            password=str(item.get("password") or DEFAULT_PASSWORD),
            active=bool(item.get("active", True)),
        )

    def public(self) -> dict[str, Any]:
        """Details safe to show (never the password)."""
        return {
            "mailbox_id": self.mailbox_id,
            "mailbox_name": self.mailbox_name,
            "billing_entity": self.billing_entity,
            "ods_code": self.ods_code,
            "org_code": self.org_code,
            "org_name": self.org_name,
            "active": self.active,
        }


@dataclass(frozen=True, slots=True)
class Workflow:
    workflow_id: str
    senders: tuple[str, ...] = ()
    receivers: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> Workflow:
        workflow_id = str(item.get("workflow_id") or "").strip()
        if not workflow_id:
            raise ConfigError("a workflow entry has no workflow_id")
        return cls(
            workflow_id=workflow_id,
            senders=tuple(str(s).strip().upper() for s in item.get("senders") or ()),
            receivers=tuple(str(r).strip().upper() for r in item.get("receivers") or ()),
        )


DEFAULT_MAILBOXES: tuple[Mailbox, ...] = (
    Mailbox("X26ABC1", "TESTMB1", "England", "X26", "X26"),
    Mailbox("X26ABC2", "TESTMB2", "Wales", "X26", "X26"),
    Mailbox("X26ABC3", "TESTMB3", "England", "X27", "X27"),
)
DEFAULT_WORKFLOWS: tuple[Workflow, ...] = (
    Workflow("TEST_WORKFLOW", ("X26ABC1",), ("X26ABC2",)),
    Workflow("TEST_WORKFLOW_ACK", ("X26ABC2",), ("X26ABC1", "X26ABC3")),
    Workflow("TEST_WORKFLOW2", ("X26ABC1",), ("X26ABC1", "X26ABC2", "X26ABC3")),
)


def _read_jsonl(path: Path) -> Iterable[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    # The sandbox's own files have no newline between the last two objects, so decode a stream
    # of concatenated JSON objects rather than splitting on lines.
    decoder = json.JSONDecoder()
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            return
        try:
            item, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not JSON lines ({exc.msg} at char {exc.pos})") from None
        if not isinstance(item, dict):
            raise ConfigError(f"{path}: every line must be a JSON object")
        yield item


def load_mailboxes(path: Path | None) -> tuple[Mailbox, ...]:
    if path is None:
        return DEFAULT_MAILBOXES
    return tuple(Mailbox.from_json(item) for item in _read_jsonl(path))


def load_workflows(path: Path | None) -> tuple[Workflow, ...]:
    if path is None:
        return DEFAULT_WORKFLOWS
    return tuple(Workflow.from_json(item) for item in _read_jsonl(path))


class Directory:
    """The mailboxes and workflows a server knows: look-ups, entitlements, endpoint search."""

    def __init__(self, mailboxes: Iterable[Mailbox], workflows: Iterable[Workflow]) -> None:
        self.mailboxes: dict[str, Mailbox] = {m.mailbox_id: m for m in mailboxes}
        self.workflows: dict[str, Workflow] = {w.workflow_id: w for w in workflows}

    def get(self, mailbox_id: str) -> Mailbox | None:
        return self.mailboxes.get(mailbox_id.strip().upper())

    def add(self, mailbox: Mailbox) -> None:
        self.mailboxes.setdefault(mailbox.mailbox_id, mailbox)

    def may_send(self, sender: str, recipient: str, workflow_id: str) -> bool:
        workflow = self.workflows.get(workflow_id)
        return (
            workflow is not None and sender in workflow.senders and recipient in workflow.receivers
        )

    def receivers(self, workflow_id: str) -> list[Mailbox]:
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            return []
        return [self.mailboxes[r] for r in workflow.receivers if r in self.mailboxes]

    def lookup(self, ods_code: str, workflow_id: str) -> list[Mailbox]:
        ods = ods_code.strip().upper()
        return [m for m in self.receivers(workflow_id) if m.ods_code and m.ods_code == ods]


ClientCertMode = Literal["none", "optional", "required"]
CLIENT_CERT_MODES: tuple[str, ...] = ("none", "optional", "required")


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """HTTPS with the server's certificate, and what it asks of clients: ``required`` (the MESH
    platform's mutual TLS: a certificate signed by ``client_ca``, else the handshake fails),
    ``optional`` (checked against ``client_ca`` when sent) or ``none`` (no client certificates,
    which must be said: no combination of settings means that by default)."""

    cert: Path
    key: Path
    client_ca: Path | None = None
    client_cert: ClientCertMode = "required"

    def __post_init__(self) -> None:
        if self.client_cert not in CLIENT_CERT_MODES:
            raise ConfigError(
                f"client certificate mode must be one of {', '.join(CLIENT_CERT_MODES)}, "
                f"not {self.client_cert!r}"
            )
        if self.client_cert != "none" and self.client_ca is None:
            raise ConfigError(
                f"--tls-client-cert {self.client_cert} needs --tls-client-ca (the CA that signs "
                "client certificates); without it no client certificate could be checked. "
                "Give the CA, or say --tls-client-cert none to accept clients without one"
            )
        if self.client_cert == "none" and self.client_ca is not None:
            raise ConfigError(
                "--tls-client-ca was given with --tls-client-cert none, so it would never be "
                "used; say --tls-client-cert required (or optional) to check client certificates"
            )

    def server_context(self) -> ssl.SSLContext:
        """TLS 1.2+; the client must (``required``) or may (``optional``) present a certificate
        signed by ``client_ca``, or is not asked for one (``none``)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load TLS certificate {self.cert} / key: {exc}") from None
        if self.client_cert == "none":
            context.verify_mode = ssl.CERT_NONE
            return context
        assert self.client_ca is not None  # checked at construction
        try:
            context.load_verify_locations(cafile=str(self.client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load client CA {self.client_ca}: {exc}") from None
        context.verify_mode = (
            ssl.CERT_REQUIRED if self.client_cert == "required" else ssl.CERT_OPTIONAL
        )
        return context


@dataclass(frozen=True)
class ServerConfig:
    """Everything a LocalMeshServer needs. Validated at construction; the repr hides the key."""

    host: str = "127.0.0.1"
    port: int = 0
    shared_key: str = field(default=DEFAULT_SHARED_KEY, repr=False)
    auth_mode: AuthMode = "full"
    store: StoreMode = "memory"
    data_dir: Path | None = None
    rules: RulesName = "strict"
    mailboxes: tuple[Mailbox, ...] = DEFAULT_MAILBOXES
    workflows: tuple[Workflow, ...] = DEFAULT_WORKFLOWS
    #: the GP-routing table (``--demographics``); used under rules with ``gp_routing``
    demographics: tuple[PatientRecord, ...] = field(default=(), repr=False)
    tls: TLSSettings | None = None
    #: the admin API: None = on when bound to loopback only, off otherwise
    admin_api: bool | None = None
    #: with it, every admin request needs ``Authorization: Bearer <token>``; required when the
    #: admin API is on and the server is reachable from the network
    admin_token: str | None = field(default=None, repr=False)
    header_timeout_seconds: float = HEADER_TIMEOUT_SECONDS
    body_timeout_seconds: float = BODY_TIMEOUT_SECONDS
    min_body_rate: int = MIN_BODY_RATE
    max_connections: int = MAX_CONNECTIONS
    min_chunk_size: int = MIN_CHUNK_SIZE
    max_request_size: int = MAX_REQUEST_SIZE
    max_message_size: int = MAX_FILE_SIZE
    #: None: the rule set's own cap (strict: the message limit; sandbox: 4 GiB)
    max_decoded_chunk_size: int | None = None
    inbox_expiry_days: int = INBOX_EXPIRY_DAYS
    retention_days: int = MESSAGE_RETENTION_DAYS
    token_window_seconds: int = TOKEN_WINDOW_SECONDS
    expiry_interval_seconds: float = 60.0
    env: str = "local"
    build_label: str = "meshpipe"

    def __post_init__(self) -> None:
        if self.store not in STORE_MODES:
            raise ConfigError(f"store must be one of {', '.join(STORE_MODES)}, not {self.store!r}")
        if self.rules not in RULES:
            raise ConfigError(f"rules must be one of {', '.join(RULES)}, not {self.rules!r}")
        if self.auth_mode not in AUTH_MODES:
            raise ConfigError(f"auth mode must be one of {', '.join(AUTH_MODES)}")
        if self.store == "dir" and self.data_dir is None:
            raise ConfigError(
                "store 'dir' needs a data directory (--data-dir or MAILBOXES_DATA_DIR)"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, not {self.port}")
        if not self.shared_key:
            raise ConfigError("the shared key must not be empty")
        if self.max_decoded_chunk_size is not None and self.max_decoded_chunk_size <= 0:
            raise ConfigError(
                f"the decoded chunk size cap must be positive, not {self.max_decoded_chunk_size}"
            )
        for name, value in (
            ("header timeout", self.header_timeout_seconds),
            ("body timeout", self.body_timeout_seconds),
        ):
            if not value > 0:
                raise ConfigError(f"the {name} must be a positive number of seconds, not {value}")
        if self.min_body_rate < 0:
            raise ConfigError(
                f"the minimum body rate must be ≥ 0 bytes/s, not {self.min_body_rate}"
            )
        if self.max_connections < 1:
            raise ConfigError(f"the connection cap must be at least 1, not {self.max_connections}")
        self._check_admin()

    def _check_admin(self) -> None:
        token = self.admin_token
        if token is not None and len(token) < MIN_ADMIN_TOKEN_LENGTH:
            raise ConfigError(
                f"the admin token must be at least {MIN_ADMIN_TOKEN_LENGTH} characters "
                "(e.g. the output of: python -c 'import secrets; print(secrets.token_urlsafe())')"
            )
        if self.admin_enabled and not self.loopback_only and token is None:
            raise ConfigError(
                f"the admin API on {self.host!r} (reachable from the network) needs an admin "
                f"token: set {ADMIN_TOKEN_ENV} (or --admin-token); without one anyone who can "
                "reach the port could delete messages, move the clock and plan faults. Or "
                "leave the admin API off (the default off loopback)"
            )

    @property
    def loopback_only(self) -> bool:
        """Bound to a loopback address only (the admin API's default is on)."""
        return is_loopback(self.host)

    @property
    def admin_enabled(self) -> bool:
        return self.admin_api if self.admin_api is not None else self.loopback_only

    @property
    def rule_set(self) -> RuleSet:
        """The rules this server follows (``rules``), with this config's limits."""
        if self.rules == "sandbox":
            return RuleSet.sandbox(max_decoded_chunk_size=self.max_decoded_chunk_size)
        return RuleSet.strict(
            token_window_seconds=self.token_window_seconds,
            min_chunk_size=self.min_chunk_size,
            max_request_size=self.max_request_size,
            max_message_size=self.max_message_size,
            max_decoded_chunk_size=self.max_decoded_chunk_size,
        )


ENV_STORE_MODES = {"memory": "memory", "file": "dir", "dir": "dir", "discard": "discard"}
ENV_AUTH_MODES = {"full": "full", "no_auth": "full", "none": "none", "canned": "canned"}


def env_defaults(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The sandbox's environment variables, mapped to ServerConfig fields (flags override them),
    and meshpipe's own ``MESHPIPE_ADMIN_TOKEN``.

    ``STORE_MODE=file`` means meshpipe's durable ``dir`` store; ``canned`` (the sandbox's read-only
    demo store) has no equivalent and is refused. ``AUTH_MODE=no_auth`` is the sandbox's default
    and, like there, still checks tokens fully.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if env.get("SHARED_KEY"):
        values["shared_key"] = env["SHARED_KEY"]
    if env.get("AUTH_MODE"):
        mode = env["AUTH_MODE"].strip().lower()
        if mode not in ENV_AUTH_MODES:
            raise ConfigError(f"AUTH_MODE must be one of {', '.join(ENV_AUTH_MODES)}")
        values["auth_mode"] = ENV_AUTH_MODES[mode]
    if env.get("STORE_MODE"):
        mode = env["STORE_MODE"].strip().lower()
        if mode not in ENV_STORE_MODES:
            raise ConfigError(
                f"STORE_MODE must be one of {', '.join(ENV_STORE_MODES)} ('canned' is not offered)"
            )
        values["store"] = ENV_STORE_MODES[mode]
    data_dir = env.get("MAILBOXES_DATA_DIR") or env.get("FILE_STORE_DIR")
    if data_dir:
        values["data_dir"] = Path(data_dir)
    for name, key in (
        ("INBOX_EXPIRY_DAYS", "inbox_expiry_days"),
        ("MESSAGE_EXPIRY_DAYS", "retention_days"),
    ):
        if env.get(name):
            try:
                values[key] = int(env[name])
            except ValueError:
                raise ConfigError(f"{name} must be a whole number of days") from None
    if env.get(ADMIN_TOKEN_ENV):
        values["admin_token"] = env[ADMIN_TOKEN_ENV]
    if env.get("ENV"):
        values["env"] = env["ENV"]
    if env.get("BUILD_LABEL"):
        values["build_label"] = env["BUILD_LABEL"]
    return values
