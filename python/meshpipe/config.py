"""Connection settings for a MESH mailbox: environment, credentials and TLS material, and the
numbers of a retry policy (what is retried, and how, is meshpipe.retry's job).

Settings come from, in order of precedence: explicit arguments, environment variables
(``MESH_URL``, ``MESH_MAILBOX``, ``MESH_PASSWORD``, ``MESH_SHARED_KEY``, ``MESH_CLIENT_CERT``,
``MESH_CLIENT_KEY``, ``MESH_CA_CERT``) and a named profile in a TOML file::

    # ~/.config/meshpipe/config.toml   (or $MESHPIPE_CONFIG, or --config)
    default_profile = "int"

    [profiles.int]
    url = "integration"              # a named environment or a full https:// URL
    mailbox = "X26ABC1"
    password_env = "MY_MESH_PASSWORD"  # or password = "..." (keep the file private)
    shared_key_env = "MY_MESH_KEY"     # or shared_key = "..."
    client_cert = "/etc/mesh/int.crt"
    client_key = "/etc/mesh/int.key"
    ca_cert = "/etc/mesh/nhs-int-ca-bundle.pem"
    upload_order = "in-order"        # or "concurrent", "sequential" (see UploadOrder)

The password and shared key are held in :class:`Secret`, whose ``repr`` and ``str`` never show
the value, so neither ever reaches a log line, an exception or a repr.
"""

from __future__ import annotations

import os
import random
import re
import ssl
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

from meshpipe.errors import ConfigError

#: Named environments and their base URLs (NHS England publishes these for the MESH API).
ENVIRONMENTS: Final[Mapping[str, str]] = {
    "local": "http://localhost:8700",
    "integration": "https://msg.intspineservices.nhs.uk",
    "deployment": "https://msg.depspineservices.nhs.uk",
    "live": "https://mesh-sync.spineservices.nhs.uk",
}
ENVIRONMENT_ALIASES: Final[Mapping[str, str]] = {
    "int": "integration",
    "dep": "deployment",
    "prod": "live",
    "production": "live",
    "sandbox": "local",
}


UploadOrder = Literal["in-order", "concurrent", "sequential"]
"""How the chunks 2..N-1 of a message are sent (chunk 1 always goes first and alone, the last
chunk after every other chunk was accepted): ``in-order``, pipelined in chunk order (each body
reaches the server after the previous one, and is completed only once the previous one was
accepted: meshpipe.transfer.order); ``concurrent``, side by side within a window;
``sequential``, each request only after the previous one was answered."""
UPLOAD_ORDERS: Final[tuple[UploadOrder, ...]] = ("in-order", "concurrent", "sequential")
#: The environments whose API specification asks for chunks in order.
IN_ORDER_ENVIRONMENTS: Final = frozenset({"integration", "deployment", "live"})


def default_upload_order(url: str) -> UploadOrder:
    """``in-order`` for NHS's integration, deployment and live environments (they ask for
    chunks in order, and nobody here can test what they do otherwise); ``concurrent`` for the
    local server and any other URL."""
    return "in-order" if environment_of(url) in IN_ORDER_ENVIRONMENTS else "concurrent"


def upload_order(value: str) -> UploadOrder:
    """``value`` as an UploadOrder, or ConfigError naming the choices."""
    if value not in UPLOAD_ORDERS:
        raise ConfigError(
            f"upload order {value!r} is not one of {', '.join(UPLOAD_ORDERS)}: choose one"
        )
    return value


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long, and how, a failed request is tried again (meshpipe.retry applies it).

    The limit is time: after a request first fails, it is tried again until ``budget`` seconds
    have passed since that failure (default 120 s: a server restart or outage of 60 s is ridden
    out with as much again to spare), the last try timed for the end of the budget.
    ``attempts`` bounds the tries in all as well (None, the default: only the budget; 1: never
    retry). The wait before try k (k ≥ 2) is a random value in
    [0, min(max_delay, base_delay · 2^(k-2))] ("full jitter": up to 0.5 s, 1 s, 2 s, ... and at
    most 10 s, so a server that is back is tried again within 10 s). A server's Retry-After is
    waited for when it is longer, unless it is beyond ``max_retry_after`` or the budget left:
    then the error stands.

    ``on_retry``, when given, is told the cause of every retry just before its wait (e.g.
    ``"connection"``, ``"timeout"``, ``"http_503"``: :func:`meshpipe.retry.retry_cause`), so
    a service can count retries by cause; it observes only, and never changes what is retried.
    """

    budget: float = 120.0
    attempts: int | None = None
    base_delay: float = 0.5
    max_delay: float = 10.0
    #: The longest Retry-After (from a 429 or 503) that is honoured; longer ones fail.
    max_retry_after: float = 120.0
    on_retry: Callable[[str], None] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ValueError("attempts must be at least 1 (or None: bounded by the budget only)")
        if self.budget < 0:
            raise ValueError("the retry budget must not be negative")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before try ``attempt`` (2, 3, ...)."""
        exponent = min(max(0, attempt - 2), 64)
        ceiling = min(self.max_delay, self.base_delay * (2**exponent))
        return (rng or random).uniform(0, ceiling)

    def delay_after(self, attempt: int, error: BaseException) -> float | None:
        """The wait before try ``attempt`` after ``error``: the backoff, or the server's
        Retry-After if longer; None when that is longer than ``max_retry_after``."""
        wait = self.delay(attempt)
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, int | float):
            if retry_after > self.max_retry_after:
                return None
            wait = max(wait, float(retry_after))
        return wait


ENV_URL: Final = "MESH_URL"
ENV_MAILBOX: Final = "MESH_MAILBOX"
ENV_PASSWORD: Final = "MESH_PASSWORD"
ENV_SHARED_KEY: Final = "MESH_SHARED_KEY"
ENV_CLIENT_CERT: Final = "MESH_CLIENT_CERT"
ENV_CLIENT_KEY: Final = "MESH_CLIENT_KEY"
ENV_CA_CERT: Final = "MESH_CA_CERT"
ENV_CONFIG_FILE: Final = "MESHPIPE_CONFIG"
ENV_PROFILE: Final = "MESHPIPE_PROFILE"

DEFAULT_CONFIG_FILE: Final = Path("~/.config/meshpipe/config.toml")

_MAILBOX_RE: Final = re.compile(r"^[A-Z0-9]{3,20}$")


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or f-strings; ``reveal()`` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret holds a str")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    def __str__(self) -> str:
        return "<redacted>"

    def __format__(self, format_spec: str) -> str:
        return "<redacted>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")


def resolve_url(url_or_environment: str) -> str:
    """A base URL (no trailing slash) from a URL or an environment name."""
    value = url_or_environment.strip()
    name = ENVIRONMENT_ALIASES.get(value.lower(), value.lower())
    if name in ENVIRONMENTS:
        return ENVIRONMENTS[name]
    if not value.startswith(("http://", "https://")):
        names = ", ".join(ENVIRONMENTS)
        raise ConfigError(
            f"MESH URL {value!r} is neither an environment name ({names}) nor an http(s):// URL"
        )
    value = value.rstrip("/")
    if value.endswith("/messageexchange"):
        value = value[: -len("/messageexchange")]
    return value


def environment_of(url: str) -> str | None:
    """The environment name for a base URL, or None for any other server."""
    for name, base in ENVIRONMENTS.items():
        if base == url:
            return name
    return None


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """Everything needed to talk to one MESH mailbox; validated on construction.

    ``url`` is a base URL or an environment name (local, integration, deployment, live).
    Client certificate and key (mutual TLS) must be given together; ``ca_cert`` replaces the
    system trust store. ``verify_tls=False`` is refused for the NHS environments.
    ``upload_order`` (an :data:`UploadOrder`) overrides the order uploads default to
    (:attr:`effective_upload_order`).
    """

    url: str
    mailbox: str
    password: Secret = field(repr=False)
    shared_key: Secret = field(repr=False)
    client_cert: Path | None = None
    client_key: Path | None = None
    ca_cert: Path | None = None
    verify_tls: bool = True
    upload_order: UploadOrder | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", resolve_url(self.url))
        if self.upload_order is not None:
            object.__setattr__(self, "upload_order", upload_order(self.upload_order))
        mailbox = (self.mailbox or "").strip().upper()
        if not _MAILBOX_RE.match(mailbox):
            raise ConfigError(
                f"mailbox id {self.mailbox!r} is not valid: use the mailbox id NHS issued "
                "(letters and digits, e.g. X26ABC1)"
            )
        object.__setattr__(self, "mailbox", mailbox)
        for name in ("password", "shared_key"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = Secret(value)
                object.__setattr__(self, name, value)
            if not isinstance(value, Secret) or not value:
                env = ENV_PASSWORD if name == "password" else ENV_SHARED_KEY
                raise ConfigError(
                    f"no MESH {name.replace('_', ' ')} given: pass it, set {env} or add it to "
                    "the profile"
                )
        for name in ("client_cert", "client_key", "ca_cert"):
            value = getattr(self, name)
            if value is None or value == "":
                object.__setattr__(self, name, None)
                continue
            path = Path(value).expanduser()
            if not path.is_file():
                raise ConfigError(f"{name.replace('_', ' ')} file {str(path)!r} does not exist")
            object.__setattr__(self, name, path)
        if (self.client_cert is None) != (self.client_key is None):
            raise ConfigError(
                "give both a client certificate and its key for mutual TLS, or neither"
            )
        environment = environment_of(self.url)
        if environment not in (None, "local"):
            if not self.verify_tls:
                raise ConfigError(f"TLS verification cannot be turned off for {environment}")
            if self.client_cert is None:
                raise ConfigError(
                    f"the {environment} environment needs mutual TLS: give the client "
                    f"certificate and key NHS issued ({ENV_CLIENT_CERT}, {ENV_CLIENT_KEY})"
                )

    @property
    def environment(self) -> str | None:
        return environment_of(self.url)

    @property
    def effective_upload_order(self) -> UploadOrder:
        """The order a send uses unless told otherwise: ``upload_order`` when set, else
        in-order for NHS's environments and concurrent for any other server."""
        return self.upload_order or default_upload_order(self.url)

    def with_overrides(self, **changes: Any) -> MeshConfig:
        return replace(self, **changes)

    def ssl_context(self) -> ssl.SSLContext | bool:
        """The TLS context for aiohttp: True (default verification) for plain http URLs."""
        if not self.url.startswith("https://"):
            return True
        context = ssl.create_default_context(
            cafile=str(self.ca_cert) if self.ca_cert is not None else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # As mesh-client does for internet endpoints: the host name must be in the SAN.
        context.hostname_checks_common_name = False
        if not self.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.client_cert is not None and self.client_key is not None:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


_FIELDS: Final = (
    "url",
    "mailbox",
    "password",
    "shared_key",
    "client_cert",
    "client_key",
    "ca_cert",
    "verify_tls",
    "upload_order",
)
_ENV_NAMES: Final[Mapping[str, str]] = {
    "url": ENV_URL,
    "mailbox": ENV_MAILBOX,
    "password": ENV_PASSWORD,
    "shared_key": ENV_SHARED_KEY,
    "client_cert": ENV_CLIENT_CERT,
    "client_key": ENV_CLIENT_KEY,
    "ca_cert": ENV_CA_CERT,
}


def read_config_file(path: Path) -> dict[str, Any]:
    """The TOML config file ``path`` (profiles, and the ``[watch]`` table), or ConfigError."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


def read_profile(path: Path, profile: str | None = None) -> dict[str, Any]:
    """The settings of one profile in a TOML file (``[profiles.NAME]``); ``*_env`` keys are
    read from the named environment variables."""
    document = read_config_file(path)
    profiles = document.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigError(f"config file {str(path)!r}: [profiles] must be a table")
    name = profile or document.get("default_profile") or "default"
    if name not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(f"profile {name!r} not found in {str(path)!r} (profiles: {known})")
    table = profiles[name]
    if not isinstance(table, dict):
        raise ConfigError(f"profile {name!r} in {str(path)!r} must be a table")
    settings: dict[str, Any] = {}
    for key, value in table.items():
        if key.endswith("_env"):
            target = key[: -len("_env")]
            if target not in _FIELDS:
                raise ConfigError(f"profile {name!r}: unknown setting {key!r}")
            env_value = os.environ.get(str(value))
            if env_value is None:
                raise ConfigError(
                    f"profile {name!r}: {key} names environment variable {value!r}, "
                    "which is not set"
                )
            settings.setdefault(target, env_value)
        elif key in _FIELDS:
            settings[key] = value
        else:
            raise ConfigError(f"profile {name!r}: unknown setting {key!r}")
    return settings


def load_config(
    *,
    profile: str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    **arguments: Any,
) -> MeshConfig:
    """Settings from arguments, then environment variables, then a TOML profile.

    The TOML file is ``config_file``, else ``$MESHPIPE_CONFIG``, else
    ``~/.config/meshpipe/config.toml`` if it exists; the profile is ``profile``, else
    ``$MESHPIPE_PROFILE``, else the file's ``default_profile``. Arguments that are None are
    ignored.
    """
    environ = os.environ if environ is None else environ
    unknown = set(arguments) - set(_FIELDS)
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    settings: dict[str, Any] = {}
    explicit_file = config_file or environ.get(ENV_CONFIG_FILE)
    profile = profile or environ.get(ENV_PROFILE)
    path = Path(explicit_file).expanduser() if explicit_file else DEFAULT_CONFIG_FILE.expanduser()
    if explicit_file or profile or path.is_file():
        settings.update(read_profile(path, profile))
    for name, env_name in _ENV_NAMES.items():
        value = environ.get(env_name)
        if value:
            settings[name] = value
    for name, value in arguments.items():
        if value is not None:
            settings[name] = value
    missing = [name for name in ("url", "mailbox") if not settings.get(name)]
    if missing:
        hints = {"url": f"--url or {ENV_URL}", "mailbox": f"--mailbox or {ENV_MAILBOX}"}
        raise ConfigError(
            "missing MESH settings: "
            + ", ".join(f"{name} ({hints[name]})" for name in missing)
            + ", or choose a profile with --profile"
        )
    for name in ("password", "shared_key"):
        value = settings.get(name)
        if isinstance(value, str):
            settings[name] = Secret(value)
        elif value is None:
            settings[name] = Secret("")
    verify = settings.get("verify_tls", True)
    if isinstance(verify, str):
        settings["verify_tls"] = verify.strip().lower() not in ("0", "false", "no", "off")
    return MeshConfig(**settings)
