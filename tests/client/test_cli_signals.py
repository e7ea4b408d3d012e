"""The command line's operations signals against mesh-sandbox: ``meshpipe handshake`` prints
the client certificate's expiry (and warns near it), ``--log-format json`` logs one JSON object
per line, and no secret reaches stderr."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme

from meshpipe import cli
from tests.client.conftest import SENDER


def client_certificate(tmp_path: Path, valid_for: timedelta) -> list[str]:
    """``--cert``/``--key`` flags of a client certificate ending ``valid_for`` from now."""
    now = datetime.now(UTC)
    leaf = trustme.CA().issue_cert(
        "meshpipe.X26.api.mesh-client.nhs.uk",
        not_before=now - timedelta(days=300),
        not_after=now + valid_for,
    )
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return ["--cert", str(cert), "--key", str(key)]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.usefixtures("env")
def test_handshake_prints_the_certificate_expiry_and_warns_near_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = client_certificate(tmp_path, timedelta(days=5, hours=1))
    status, out, err = run(capsys, "handshake", "--mailbox", SENDER, *flags)
    assert status == 0, err
    ok, expiry = out.splitlines()
    assert ok == f"{SENDER}: handshake ok"
    assert expiry.startswith(f"{SENDER}: client certificate expires ")
    assert expiry.endswith("UTC (in 5 days)")
    assert "warning: the client certificate expires within 30 days: renew it" in err


@pytest.mark.usefixtures("env")
def test_handshake_far_from_expiry_does_not_warn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = client_certificate(tmp_path, timedelta(days=200, hours=1))
    status, out, err = run(capsys, "handshake", "--mailbox", SENDER, *flags)
    assert status == 0, err
    assert out.splitlines()[1].endswith("(in 200 days)")
    assert "warning" not in err


@pytest.mark.usefixtures("env")
def test_handshake_warns_about_an_expired_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = client_certificate(tmp_path, timedelta(days=-3))
    status, out, err = run(capsys, "handshake", "--mailbox", SENDER, *flags)
    # mesh-sandbox speaks plain HTTP, so it cannot refuse the certificate: the warning stands
    assert status == 0, err
    assert "client certificate EXPIRED on" in out
    assert "meshpipe: warning: the client certificate EXPIRED on" in err


@pytest.mark.usefixtures("env")
def test_handshake_without_a_certificate_prints_only_ok(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = run(capsys, "handshake", "--mailbox", SENDER)
    assert (status, out) == (0, f"{SENDER}: handshake ok\n")


@pytest.mark.usefixtures("env")
def test_json_logs_are_one_object_per_line_and_keep_secrets_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    wrong = "Wr0ng-Pa55word-for-the-logs-77"
    status, out, err = run(
        capsys, "handshake", "--mailbox", SENDER, "--password", wrong, "-vv", "--log-format", "json"
    )
    assert status == 1 and out == ""
    lines = err.splitlines()
    error = [line for line in lines if line.startswith("meshpipe: error: ")]
    logged = [json.loads(line) for line in lines if line not in error]
    assert len(error) == 1 and "403" in error[0]
    assert logged, "-vv logs at least the event loop's debug line"
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in logged)
    assert wrong not in err


@pytest.mark.usefixtures("env")
def test_text_logs_start_with_meshpipe(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "handshake", "--mailbox", SENDER, "-vv")
    assert status == 0
    assert err and all(line.startswith("meshpipe: ") for line in err.splitlines())
