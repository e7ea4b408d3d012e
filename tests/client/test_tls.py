"""Mutual TLS: the client presents its certificate and trusts only the configured CA."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from meshpipe import errors
from meshpipe.client import ClientSettings, MeshClient
from meshpipe.config import MeshConfig
from meshpipe.retry import RetryPolicy
from tests.peers import Sandbox, free_port


@dataclass
class TLSServer:
    url: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    seen_subjects: list[str]


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[TLSServer]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
    ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED
    client_cert = ca.issue_cert("meshpipe.X26.api.mesh-client.nhs.uk")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "k.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client_cert.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in client_cert.cert_chain_pems))
    seen: list[str] = []

    async def ping(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        seen.append(str(peer.get("subjectAltName")) if peer else "")
        return web.json_response({"status": "running"})

    app = web.Application()
    app.router.add_get("/messageexchange/_ping", ping)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_context).start()
    try:
        yield TLSServer(f"https://localhost:{port}", ca_file, cert_file, key_file, seen)
    finally:
        await runner.cleanup()


SETTINGS = ClientSettings(retry=RetryPolicy(attempts=1), connect_timeout=5, request_timeout=10)


async def test_mutual_tls(tls_server: TLSServer) -> None:
    config = MeshConfig(
        tls_server.url,
        "X26ABC1",
        "password",  # type: ignore[arg-type]
        "key",  # type: ignore[arg-type]
        client_cert=tls_server.cert_file,
        client_key=tls_server.key_file,
        ca_cert=tls_server.ca_file,
    )
    async with MeshClient(config, SETTINGS) as client:
        assert (await client.ping())["status"] == "running"
    assert "meshpipe.x26.api.mesh-client.nhs.uk" in tls_server.seen_subjects[0].lower()


async def test_no_client_certificate_is_refused(tls_server: TLSServer) -> None:
    config = MeshConfig(
        tls_server.url,
        "X26ABC1",
        "p",
        "k",
        ca_cert=tls_server.ca_file,  # type: ignore[arg-type]
    )
    async with MeshClient(config, SETTINGS) as client:
        with pytest.raises(errors.MeshConnectionError) as caught:
            await client.ping()
    message = str(caught.value)
    assert "the server refused the TLS handshake" in message
    assert "--cert/--key/--ca" in message and "Server disconnected" not in message


async def test_a_certificate_from_another_ca_is_refused_clearly(
    tls_server: TLSServer, tmp_path: Path
) -> None:
    stranger = trustme.CA().issue_cert("meshpipe.X26.api.mesh-client.nhs.uk")
    cert_file, key_file = tmp_path / "stranger.pem", tmp_path / "stranger.key"
    stranger.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in stranger.cert_chain_pems))
    config = MeshConfig(
        tls_server.url,
        "X26ABC1",
        "p",  # type: ignore[arg-type]
        "k",  # type: ignore[arg-type]
        client_cert=cert_file,
        client_key=key_file,
        ca_cert=tls_server.ca_file,
    )
    async with MeshClient(config, SETTINGS) as client:
        with pytest.raises(errors.MeshConnectionError, match="refused the TLS handshake"):
            await client.ping()
    assert tls_server.seen_subjects == []


async def test_untrusted_server_is_refused(tls_server: TLSServer) -> None:
    config = MeshConfig(
        tls_server.url,
        "X26ABC1",
        "p",  # type: ignore[arg-type]
        "k",  # type: ignore[arg-type]
        client_cert=tls_server.cert_file,
        client_key=tls_server.key_file,
    )
    async with MeshClient(config, SETTINGS) as client:
        with pytest.raises(errors.MeshConnectionError, match="failed"):
            await client.ping()


async def test_https_to_a_plain_http_server_says_so(sandbox: Sandbox) -> None:
    config = MeshConfig(
        sandbox.url.replace("http://", "https://"),
        "X26ABC1",
        "p",  # type: ignore[arg-type]
        "k",  # type: ignore[arg-type]
    )
    async with MeshClient(config, SETTINGS) as client:
        with pytest.raises(errors.MeshConnectionError, match="did not answer in TLS"):
            await client.ping()
