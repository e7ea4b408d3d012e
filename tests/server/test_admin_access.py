"""The admin API (reset, clock, faults, ...): on by default only where nobody else can reach it,
behind a token when it is reachable, and a start-up that says what is bound."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
import requests

from meshpipe.errors import ConfigError
from meshpipe.pages.access import bearer_matches
from meshpipe.server import LocalMeshServer, ServerConfig
from meshpipe.server.cli import build_parser, config_from_args, main
from meshpipe.server.config import ADMIN_TOKEN_ENV, is_loopback
from tests.peers import SANDBOX_SHARED_KEY, auth_headers

Start = Callable[..., LocalMeshServer]
TOKEN = "admin-token-for-the-tests-0123456789"


def admin_answers(server: LocalMeshServer, **headers: str) -> list[int]:
    base = f"{server.url}/messageexchange/admin"
    return [
        requests.post(
            f"{base}/clock", json={"seconds": 0}, headers=headers, timeout=10
        ).status_code,
        requests.get(f"{base}/faults", headers=headers, timeout=10).status_code,
        requests.delete(f"{server.url}/admin/reset", headers=headers, timeout=10).status_code,
    ]


def test_which_binds_count_as_loopback() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "", "10.1.2.3", "mesh.example"))


def test_the_admin_api_is_off_by_default_off_loopback_and_needs_a_token_to_be_on() -> None:
    assert ServerConfig().admin_enabled  # 127.0.0.1: the test rig's default, unchanged
    assert not ServerConfig(host="0.0.0.0").admin_enabled
    with pytest.raises(ConfigError, match=ADMIN_TOKEN_ENV):
        ServerConfig(host="0.0.0.0", admin_api=True)
    with pytest.raises(ConfigError, match="at least 16 characters"):
        ServerConfig(host="0.0.0.0", admin_api=True, admin_token="short")
    config = ServerConfig(host="0.0.0.0", admin_api=True, admin_token=TOKEN)
    assert config.admin_enabled and TOKEN not in repr(config)
    assert not ServerConfig(admin_api=False).admin_enabled


def test_bearer_tokens_compare_exactly() -> None:
    assert bearer_matches(f"Bearer {TOKEN}", TOKEN) and bearer_matches(f"bearer  {TOKEN} ", TOKEN)
    for header in (None, "", TOKEN, f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer "):
        assert not bearer_matches(header, TOKEN), header


def test_a_wildcard_bind_serves_mesh_but_not_the_admin_api(threaded_server: Start) -> None:
    server = threaded_server(host="0.0.0.0")
    assert server.bound_addresses == [f"0.0.0.0:{server.port}"]
    assert server.url == f"http://127.0.0.1:{server.port}"  # connectable
    assert admin_answers(server) == [404, 404, 404]
    inbox = requests.get(
        f"{server.url}/messageexchange/X26ABC1/inbox", headers=auth_headers("X26ABC1"), timeout=10
    )
    assert inbox.status_code == 200


def test_an_enabled_admin_api_off_loopback_wants_the_token_and_warns(
    threaded_server: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshpipe.server")
    server = threaded_server(host="0.0.0.0", admin_api=True, admin_token=TOKEN)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ADMIN API IS REACHABLE FROM THE NETWORK" in w for w in warnings)
    assert admin_answers(server) == [403, 403, 403]
    assert admin_answers(server, Authorization=f"Bearer {TOKEN[:-1]}") == [403, 403, 403]
    refused = requests.get(f"{server.url}/messageexchange/admin/faults", timeout=10)
    assert "Bearer" in refused.json()["errorDescription"]
    assert admin_answers(server, Authorization=f"Bearer {TOKEN}") == [200, 200, 200]
    assert TOKEN not in caplog.text


def test_loopback_keeps_the_open_admin_api_unless_given_a_token(threaded_server: Start) -> None:
    assert admin_answers(threaded_server()) == [200, 200, 200]
    guarded = threaded_server(admin_token=TOKEN)
    assert admin_answers(guarded) == [403, 403, 403]
    assert admin_answers(guarded, Authorization=f"Bearer {TOKEN}") == [200, 200, 200]


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse(*argv: str, env: dict[str, str] | None = None) -> ServerConfig:
        return config_from_args(build_parser().parse_args(list(argv)), env or {})

    assert not parse("--host", "0.0.0.0").admin_enabled
    config = parse("--host", "0.0.0.0", "--admin-api", env={ADMIN_TOKEN_ENV: TOKEN})
    assert config.admin_enabled and config.admin_token == TOKEN
    assert parse("--admin-api", "--admin-token", TOKEN).admin_token == TOKEN
    assert not parse("--no-admin-api").admin_enabled
    assert main(["--host", "0.0.0.0", "--admin-api"]) == 2


def run_serve(*args: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    """Start meshpipe serve, read its start-up line, stop it; (that line, its stderr)."""
    command = [sys.executable, "-m", "meshpipe.server", "--port", "0", *args]
    environment = {**os.environ, "SHARED_KEY": SANDBOX_SHARED_KEY, **(env or {})}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    return line, stderr


def test_the_startup_line_says_what_is_bound() -> None:
    line, stderr = run_serve("--host", "0.0.0.0")
    assert line.startswith("meshpipe serve: listening on http://0.0.0.0:"), line
    port = line.split("0.0.0.0:", 1)[1].split(";", 1)[0]
    assert line.endswith(f"from this machine: http://127.0.0.1:{port}"), line
    assert "admin API off" in stderr
    line, stderr = run_serve("--host", "0.0.0.0", "--admin-api", env={ADMIN_TOKEN_ENV: TOKEN})
    assert "REACHABLE FROM THE NETWORK" in stderr and TOKEN not in stderr + line
    line, _ = run_serve()
    assert line.startswith("meshpipe serve: listening on http://127.0.0.1:") and ";" not in line
