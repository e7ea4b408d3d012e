"""watch.certificates: a client certificate expiring in 5 days gives the warning and the gauge;
an expired one an error and not ready; one far off an info line; bad files a clear error."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme

from meshpipe.config import MeshConfig
from meshpipe.watch.certificates import (
    CertificateError,
    check_all_certificates,
    check_certificate,
    read_certificate_expiry,
    run_certificate_checks,
)
from meshpipe.watch.health import Health
from meshpipe.watch.metrics import WatchMetrics
from meshpipe.watch.settings import MailboxFolders, MailboxSettings

MAILBOX = "X26ABC1"
DAY = 86400.0


def certificate(tmp_path: Path, valid_for: timedelta, *, der: bool = False) -> tuple[Path, Path]:
    """A client certificate (with its chain, PEM) ending ``valid_for`` from now, and its key."""
    now = datetime.now(UTC)
    ca = trustme.CA()
    leaf = ca.issue_cert(
        "client.meshpipe.test",
        not_before=now - timedelta(days=400),
        not_after=now + valid_for,
    )
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    if der:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        parsed = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
        cert.write_bytes(parsed.public_bytes(Encoding.DER))
    else:
        cert.write_bytes(
            b"".join(blob.bytes() for blob in leaf.cert_chain_pems) + ca.cert_pem.bytes()
        )
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def mailbox(tmp_path: Path, cert: Path | None, key: Path | None) -> MailboxSettings:
    config = MeshConfig(
        url="local",
        mailbox=MAILBOX,
        password="password",
        shared_key="shared-key",
        client_cert=cert,
        client_key=key,
    )
    folders = MailboxFolders(*(tmp_path / name for name in ("out", "sent", "failed", "in", "r")))
    return MailboxSettings(profile="a", config=config, folders=folders)


def gauge(metrics: WatchMetrics) -> float:
    value = metrics.registry.get_sample_value(
        "meshpipe_client_certificate_expiry_seconds", {"mailbox": MAILBOX}
    )
    assert value is not None
    return value


def test_five_days_left_is_a_warning_and_the_gauge(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = certificate(tmp_path, timedelta(days=5))
    metrics, health = WatchMetrics(), Health([MAILBOX])
    with caplog.at_level(logging.INFO, "meshpipe.watch.certificates"):
        expiry = check_certificate(mailbox(tmp_path, cert, key), metrics, health, warning_days=30)
    assert expiry is not None and "Testing cert" in expiry.subject  # the leaf, not the CA
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "in 5 days" in record.getMessage() and "renew it" in record.getMessage()
    assert record.mailbox == MAILBOX  # type: ignore[attr-defined]
    assert 4.9 * DAY < gauge(metrics) <= 5 * DAY
    assert health[MAILBOX].certificate_expires == pytest.approx(time.time() + 5 * DAY, abs=60)
    health[MAILBOX].handshake_ok = True
    assert health.problems() == []


def test_an_expired_certificate_is_an_error_and_not_ready(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = certificate(tmp_path, timedelta(days=-2))
    metrics, health = WatchMetrics(), Health([MAILBOX])
    health[MAILBOX].handshake_ok = True
    with caplog.at_level(logging.INFO, "meshpipe.watch.certificates"):
        check_certificate(mailbox(tmp_path, cert, key), metrics, health, warning_days=30)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert "EXPIRED on" in record.getMessage() and "renewed certificate" in record.getMessage()
    assert gauge(metrics) < -1.9 * DAY
    assert health.problems() == [f"{MAILBOX}: the client certificate has expired"]


def test_far_from_expiry_is_only_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cert, key = certificate(tmp_path, timedelta(days=200))
    metrics = WatchMetrics()
    with caplog.at_level(logging.INFO, "meshpipe.watch.certificates"):
        check_certificate(mailbox(tmp_path, cert, key), metrics, Health([MAILBOX]), warning_days=30)
    assert [record.levelno for record in caplog.records] == [logging.INFO]
    assert gauge(metrics) > 199 * DAY


def test_the_warning_window_is_configurable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = certificate(tmp_path, timedelta(days=40))
    settings = mailbox(tmp_path, cert, key)
    with caplog.at_level(logging.INFO, "meshpipe.watch.certificates"):
        check_certificate(settings, WatchMetrics(), Health([MAILBOX]), warning_days=30)
        check_certificate(settings, WatchMetrics(), Health([MAILBOX]), warning_days=45)
    assert [record.levelno for record in caplog.records] == [logging.INFO, logging.WARNING]


def test_a_der_certificate_is_read(tmp_path: Path) -> None:
    cert, _ = certificate(tmp_path, timedelta(days=10), der=True)
    expiry = read_certificate_expiry(cert)
    assert 9 < expiry.days_left() <= 10
    assert expiry.describe().startswith("expires ") and "(in 10 days)" in expiry.describe()


def test_no_client_certificate_sets_nothing(tmp_path: Path) -> None:
    metrics, health = WatchMetrics(), Health([MAILBOX])
    assert (
        check_certificate(mailbox(tmp_path, None, None), metrics, health, warning_days=30) is None
    )
    assert (
        metrics.registry.get_sample_value(
            "meshpipe_client_certificate_expiry_seconds", {"mailbox": MAILBOX}
        )
        is None
    )
    assert health[MAILBOX].certificate_expires is None


def test_a_file_that_is_not_a_certificate_is_a_clear_error(tmp_path: Path) -> None:
    _, key = certificate(tmp_path, timedelta(days=10))
    with pytest.raises(
        CertificateError, match=r"holds no PEM or DER X\.509 certificate.*not the key"
    ):
        read_certificate_expiry(key)
    garbage = tmp_path / "garbage.crt"
    garbage.write_bytes(b"\x00\x01 not a certificate")
    with pytest.raises(CertificateError, match="check client_cert"):
        read_certificate_expiry(garbage)
    with pytest.raises(CertificateError, match="cannot be read"):
        read_certificate_expiry(tmp_path / "missing.crt")


def test_an_unreadable_certificate_is_logged_and_the_others_checked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = certificate(tmp_path, timedelta(days=5))
    settings = mailbox(tmp_path, cert, key)
    cert.write_bytes(b"replaced by something else")
    with caplog.at_level(logging.INFO, "meshpipe.watch.certificates"):
        check_all_certificates((settings,), WatchMetrics(), Health([MAILBOX]), warning_days=30)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and "holds no PEM or DER" in record.getMessage()


class Counting(logging.Handler):
    """Sets ``done`` once ``wanted`` records arrived (from any thread)."""

    def __init__(self, wanted: int) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.wanted = wanted
        self.done = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if len(self.records) >= self.wanted:
            self.done.set()


async def test_the_checks_repeat_until_stopped(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path, timedelta(days=5))
    settings, stop = mailbox(tmp_path, cert, key), asyncio.Event()
    counting = Counting(wanted=2)
    logger = logging.getLogger("meshpipe.watch.certificates")
    logger.addHandler(counting)
    try:
        task = asyncio.create_task(
            run_certificate_checks(
                (settings,), WatchMetrics(), Health([MAILBOX]), stop, warning_days=30, interval=0.05
            )
        )
        assert await asyncio.to_thread(counting.done.wait, 10)
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    finally:
        logger.removeHandler(counting)
    assert all(record.levelno == logging.WARNING for record in counting.records)
