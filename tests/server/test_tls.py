"""Mutual TLS: NHS's mesh-client with a client certificate, against a test CA (trustme)."""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import trustme
from mesh_client import MeshClient

from meshpipe.errors import ConfigError
from meshpipe.server import LocalMeshServer, TLSSettings
from tests.peers import SANDBOX_SHARED_KEY

Start = Callable[..., LocalMeshServer]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("client.X26.api.mesh-client.nhs.uk")
    stranger = trustme.CA().issue_cert("client.X26.api.mesh-client.nhs.uk")
    paths = {
        "ca": folder / "ca.pem",
        "server": folder / "server.pem",
        "server_key": folder / "server.key",
        "client": folder / "client.pem",
        "client_key": folder / "client.key",
        "stranger": folder / "stranger.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server_cert.cert_chain_pems[0].write_to_path(str(paths["server"]))
    server_cert.private_key_pem.write_to_path(str(paths["server_key"]))
    client_cert.cert_chain_pems[0].write_to_path(str(paths["client"]))
    client_cert.private_key_pem.write_to_path(str(paths["client_key"]))
    stranger.private_key_and_cert_chain_pem.write_to_path(str(paths["stranger"]))
    return paths


def test_mesh_client_over_mutual_tls(threaded_server: Start, pki: dict[str, Path]) -> None:
    tls = TLSSettings(pki["server"], pki["server_key"], pki["ca"], "required")
    server = threaded_server(rules="sandbox", tls=tls)
    assert server.url.startswith("https://")
    cert = (str(pki["client"]), str(pki["client_key"]))
    options = {"shared_key": SANDBOX_SHARED_KEY.encode(), "cert": cert, "verify": str(pki["ca"])}
    with MeshClient(server.url, "X26ABC1", "password", max_chunk_size=1000, **options) as sender:  # type: ignore[arg-type]
        sender.handshake()
        message_id = sender.send_message(
            "X26ABC2", b"t" * 2500, workflow_id="TEST_WORKFLOW", compress=True
        )
        assert (
            sender.lookup_endpoint("X26", "TEST_WORKFLOW")["results"][0]["mailbox_id"] == "X26ABC2"
        )
    with MeshClient(server.url, "X26ABC2", "password", **options) as receiver:  # type: ignore[arg-type]
        assert message_id in list(receiver.iterate_message_ids(batch_size=10))
        message = receiver.retrieve_message(message_id)
        assert message.read() == b"t" * 2500
        message.close()
        receiver.acknowledge_message(message_id)
    with MeshClient(server.url, "X26ABC1", "password", **options) as sender:  # type: ignore[arg-type]
        assert sender.track_message(message_id)["status"] == "acknowledged"
    # no client certificate, or one from another CA: the handshake fails
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        requests.get(f"{server.url}/messageexchange/_ping", verify=str(pki["ca"]), timeout=10)
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        requests.get(
            f"{server.url}/messageexchange/_ping",
            verify=str(pki["ca"]),
            cert=str(pki["stranger"]),
            timeout=10,
        )


def test_optional_client_certificate(threaded_server: Start, pki: dict[str, Path]) -> None:
    server = threaded_server(
        tls=TLSSettings(pki["server"], pki["server_key"], pki["ca"], "optional")
    )
    answer = requests.get(f"{server.url}/messageexchange/_ping", verify=str(pki["ca"]), timeout=10)
    assert answer.status_code == 200
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_cli_serves_mutual_tls_and_mesh_client_pages(pki: dict[str, Path]) -> None:
    from tests.server.processes import serve_with

    args = ["--tls-cert", str(pki["server"]), "--tls-key", str(pki["server_key"])]
    args += ["--tls-client-ca", str(pki["ca"]), "--tls-client-cert", "required"]
    with serve_with(*args) as (url, _):
        assert url.startswith("https://")
        cert = (str(pki["client"]), str(pki["client_key"]))
        options = {
            "shared_key": SANDBOX_SHARED_KEY.encode(),
            "cert": cert,
            "verify": str(pki["ca"]),
        }
        with MeshClient(url, "X26ABC1", "password", **options) as sender:  # type: ignore[arg-type]
            sent = [
                sender.send_message("X26ABC2", b"%d" % i, workflow_id="TEST_WORKFLOW")
                for i in range(12)
            ]
        with MeshClient(url, "X26ABC2", "password", **options) as receiver:  # type: ignore[arg-type]
            assert list(receiver.iterate_message_ids(batch_size=10)) == sent
            for message_id in sent:
                receiver.acknowledge_message(message_id)
            assert receiver.list_messages() == []


def test_client_certificate_modes_cannot_mean_open_by_accident(pki: dict[str, Path]) -> None:
    cert, key, ca = pki["server"], pki["server_key"], pki["ca"]
    for mode in ("required", "optional"):
        with pytest.raises(ConfigError, match="--tls-client-ca"):
            TLSSettings(cert, key, None, mode)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="never be used"):
        TLSSettings(cert, key, ca, "none")
    assert TLSSettings(cert, key, None, "none").server_context().verify_mode == ssl.CERT_NONE
    assert TLSSettings(cert, key, ca).server_context().verify_mode == ssl.CERT_REQUIRED


def test_serve_refuses_to_start_with_required_client_certs_and_no_ca(pki: dict[str, Path]) -> None:
    tls = ["--tls-cert", str(pki["server"]), "--tls-key", str(pki["server_key"])]
    for extra in ([], ["--tls-client-cert", "optional"]):  # required is the default
        started = subprocess.run(
            [sys.executable, "-m", "meshpipe.server", "--port", "0", *tls, *extra],
            capture_output=True,
            text=True,
            timeout=60,  # a server that starts anyway would run until then
        )
        assert started.returncode == 2, started
        assert "needs --tls-client-ca" in started.stderr
        assert "--tls-client-cert none" in started.stderr and started.stdout == ""


def wait_for_record(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    """The log messages containing ``text``, once there is one (the server logs from its own
    thread, after the client has seen the handshake fail)."""
    for _ in range(200):
        found = [r.getMessage() for r in caplog.records if text in r.getMessage()]
        if found:
            return found
        threading.Event().wait(0.05)
    raise AssertionError(f"no log record with {text!r}: {caplog.text}")


def test_refused_handshakes_are_logged_with_peer_and_reason(
    threaded_server: Start, pki: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshpipe.server")
    server = threaded_server(tls=TLSSettings(pki["server"], pki["server_key"], pki["ca"]))
    ping = f"{server.url}/messageexchange/_ping"
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        requests.get(ping, verify=str(pki["ca"]), timeout=10)
    [missing] = wait_for_record(caplog, "PEER_DID_NOT_RETURN_A_CERTIFICATE")
    assert missing.startswith("TLS handshake from 127.0.0.1:") and "refused" in missing
    caplog.clear()
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        requests.get(ping, verify=str(pki["ca"]), cert=str(pki["stranger"]), timeout=10)
    [stranger] = wait_for_record(caplog, "TLS handshake from")
    assert "CERTIFICATE_VERIFY_FAILED" in stranger
    cert = (str(pki["client"]), str(pki["client_key"]))
    assert requests.get(ping, verify=str(pki["ca"]), cert=cert, timeout=10).status_code == 200


def test_a_handshake_that_never_comes_is_dropped_and_logged(
    threaded_server: Start, pki: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshpipe.server")
    tls = TLSSettings(pki["server"], pki["server_key"], pki["ca"])
    server = threaded_server(tls=tls, header_timeout_seconds=1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as silent:
        assert silent.recv(100) == b""  # closed by the server, without a word
    [dropped] = wait_for_record(caplog, "TLS handshake from")
    assert "failed" in dropped and "longer than 1 seconds" in dropped
