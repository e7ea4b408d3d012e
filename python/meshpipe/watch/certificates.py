"""When each mailbox's client certificate expires, and saying so in time: MESH refuses a
client the moment its certificate expires, so the service warns from
``certificate_warning_days`` before (at start-up and daily), logs an error once it has
expired, serves the seconds left as ``meshpipe_client_certificate_expiry_seconds`` (computed
at each scrape, so it never goes stale between checks) and records the expiry in
:class:`~meshpipe.watch.health.Health` (an expired certificate makes the service not ready).

Only the certificate (the ``client_cert`` file, PEM or DER; the first certificate of a PEM
chain is the client's own) is read, never the private key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography import x509

from meshpipe.config import MeshConfig
from meshpipe.errors import ConfigError
from meshpipe.watch.health import Health
from meshpipe.watch.metrics import WatchMetrics
from meshpipe.watch.settings import MailboxSettings

log = logging.getLogger("meshpipe.watch.certificates")

DAY: Final = 86400.0
#: How often :func:`run_certificate_checks` looks again.
CHECK_INTERVAL: Final = DAY
#: The largest certificate file read (a client certificate with its chain is a few KiB).
_MAX_FILE_SIZE: Final = 1024 * 1024


class CertificateError(ConfigError):
    """The client certificate file cannot be read as a certificate."""


@dataclass(frozen=True, slots=True)
class CertificateExpiry:
    """A client certificate's subject and end of validity (``not_after``, UTC)."""

    path: Path
    subject: str
    not_after: datetime

    @property
    def expires_at(self) -> float:
        """``not_after`` as Unix seconds."""
        return self.not_after.timestamp()

    def seconds_left(self, now: float | None = None) -> float:
        """Seconds until it expires (negative once expired)."""
        return self.expires_at - (time.time() if now is None else now)

    def days_left(self, now: float | None = None) -> float:
        return self.seconds_left(now) / DAY

    def describe(self, now: float | None = None) -> str:
        """E.g. ``expires 2027-01-05 12:00 UTC (in 33 days)``, or ``EXPIRED on ...``."""
        when = self.not_after.strftime("%Y-%m-%d %H:%M UTC")
        left = self.seconds_left(now)
        if left <= 0:
            return f"EXPIRED on {when} ({-left / DAY:.0f} days ago)"
        if left < DAY:
            return f"expires {when} (in {left / 3600:.1f} hours)"
        return f"expires {when} (in {left / DAY:.0f} days)"


def read_certificate_expiry(path: Path) -> CertificateExpiry:
    """The expiry of the certificate in ``path`` (PEM, first of a chain; or DER)."""
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_FILE_SIZE + 1)
    except OSError as error:
        raise CertificateError(
            f"client certificate {str(path)!r} cannot be read ({error.strerror or error}); "
            "check client_cert in the profile (or --cert, MESH_CLIENT_CERT)"
        ) from None
    if len(data) > _MAX_FILE_SIZE:
        raise CertificateError(
            f"client certificate {str(path)!r} is larger than 1 MiB: it is not a certificate; "
            "check client_cert in the profile (or --cert, MESH_CLIENT_CERT)"
        )
    try:
        if b"-----BEGIN" in data:
            certificate = x509.load_pem_x509_certificates(data)[0]
        else:
            certificate = x509.load_der_x509_certificate(data)
    except ValueError:
        raise CertificateError(
            f"client certificate {str(path)!r} holds no PEM or DER X.509 certificate; check "
            "client_cert in the profile (or --cert, MESH_CLIENT_CERT): it must be the "
            "certificate NHS issued, not the key"
        ) from None
    return CertificateExpiry(
        path, certificate.subject.rfc4514_string(), certificate.not_valid_after_utc
    )


def config_certificate_expiry(config: MeshConfig) -> CertificateExpiry | None:
    """The expiry of ``config``'s client certificate, None without one (no mutual TLS)."""
    if config.client_cert is None:
        return None
    return read_certificate_expiry(Path(config.client_cert))


def log_expiry(
    mailbox: str, expiry: CertificateExpiry, warning_days: int, now: float | None = None
) -> int:
    """Log the expiry: an error once expired, a warning within ``warning_days``, else info.
    Returns the level logged at."""
    left = expiry.seconds_left(now)
    where = f"{mailbox}: client certificate {str(expiry.path)!r} ({expiry.subject})"
    if left <= 0:
        level, advice = logging.ERROR, "MESH refuses it: install a renewed certificate now"
    elif left <= warning_days * DAY:
        level, advice = logging.WARNING, "renew it before then (MESH refuses it once expired)"
    else:
        level, advice = logging.INFO, "no action needed"
    log.log(level, "%s %s; %s", where, expiry.describe(now), advice, extra={"mailbox": mailbox})
    return level


def check_certificate(
    mailbox: MailboxSettings,
    metrics: WatchMetrics,
    health: Health,
    *,
    warning_days: int,
    now: float | None = None,
) -> CertificateExpiry | None:
    """Read ``mailbox``'s client certificate, log its expiry (error, warning or info), serve
    the seconds left as the gauge and record the expiry in ``health``. None (and nothing
    set) when the mailbox has no client certificate. Raises CertificateError when the file
    is not a readable certificate (a blocking read of a small file)."""
    expiry = config_certificate_expiry(mailbox.config)
    if expiry is None:
        return None
    expires_at = expiry.expires_at
    gauge = metrics.certificate_expiry.labels(mailbox=mailbox.mailbox)
    gauge.set_function(lambda: expires_at - time.time())
    health[mailbox.mailbox].certificate_expires = expires_at
    log_expiry(mailbox.mailbox, expiry, warning_days, now)
    return expiry


def check_all_certificates(
    mailboxes: tuple[MailboxSettings, ...],
    metrics: WatchMetrics,
    health: Health,
    *,
    warning_days: int,
) -> None:
    """:func:`check_certificate` for every mailbox; a certificate that cannot be read is
    logged as an error (the others are still checked), not raised."""
    for mailbox in mailboxes:
        try:
            check_certificate(mailbox, metrics, health, warning_days=warning_days)
        except CertificateError as error:
            log.error("%s: %s", mailbox.mailbox, error, extra={"mailbox": mailbox.mailbox})


async def run_certificate_checks(
    mailboxes: tuple[MailboxSettings, ...],
    metrics: WatchMetrics,
    health: Health,
    stop: asyncio.Event,
    *,
    warning_days: int,
    interval: float = CHECK_INTERVAL,
) -> None:
    """Check every mailbox's certificate now and every ``interval`` seconds until ``stop``
    is set (the files are read in a worker thread)."""
    while not stop.is_set():
        await asyncio.to_thread(
            check_all_certificates, mailboxes, metrics, health, warning_days=warning_days
        )
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            continue


__all__ = [
    "CHECK_INTERVAL",
    "CertificateError",
    "CertificateExpiry",
    "check_all_certificates",
    "check_certificate",
    "config_certificate_expiry",
    "log_expiry",
    "read_certificate_expiry",
    "run_certificate_checks",
]
