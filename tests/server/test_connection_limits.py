"""Clients that hold connections without finishing requests: half-sent heads, bodies at a byte
at a time, more connections than the cap. Limits are set to a second or two so the tests stay
short; every wait is bounded and ends on what the server does, not on a clock."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import requests

from meshpipe.errors import ConfigError
from meshpipe.server import Fault, FaultPlan, LocalMeshServer, ServerConfig
from meshpipe.server.cli import build_parser, config_from_args
from tests.peers import token

Start = Callable[..., LocalMeshServer]
#: The longest any test here waits for the server to act (far above the 1 s limits set).
PATIENCE = 20.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    pause = threading.Event()
    for _ in range(int(PATIENCE / 0.02)):
        if condition():
            return
        pause.wait(0.02)
    raise AssertionError(f"gave up waiting for {what}")


@contextmanager
def raw_connection(server: LocalMeshServer) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE)
    try:
        yield sock
    finally:
        sock.close()


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket timeout: PATIENCE)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_half_sent_request_head_is_answered_408_and_closed(threaded_server: Start) -> None:
    server = threaded_server(header_timeout_seconds=1)
    with raw_connection(server) as sock:
        sock.sendall(b"GET /messageexchange/_ping HTTP/1.1\r\nHost: mesh\r\n")  # no blank line
        answer = read_to_end(sock)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer
    assert b"request head" in answer
    with raw_connection(server) as idle:  # a connection that never says anything
        assert read_to_end(idle) == b""
    # a request sent in time is answered as ever, and so is the next on the same connection
    with requests.Session() as session:
        for _ in range(2):
            assert session.get(f"{server.url}/messageexchange/_ping", timeout=10).ok


def test_a_body_trickling_in_is_answered_408_and_closed(threaded_server: Start) -> None:
    server = threaded_server(body_timeout_seconds=1, min_body_rate=1024)
    head = (
        "POST /messageexchange/X26ABC1/outbox HTTP/1.1\r\nHost: mesh\r\n"
        f"Authorization: {token('X26ABC1')}\r\nmex-To: X26ABC2\r\n"
        "mex-WorkflowID: TEST_WORKFLOW\r\nContent-Length: 100000\r\n\r\n"
    )
    sent = 0
    with raw_connection(server) as sock:
        sock.sendall(head.encode())
        answer = b""
        while sent < 200:  # a byte each time the server has said nothing for 0.1 s
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                answer = read_to_end(sock)
                break
            try:
                sock.sendall(b"x")
            except OSError:  # closed under us: the answer is in the receive buffer
                answer = read_to_end(sock)
                break
            sent += 1
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), (sent, answer)
    assert b"request body too slow" in answer
    # a body sent at an ordinary pace is not affected
    ordinary = requests.post(
        f"{server.url}/messageexchange/X26ABC1/outbox",
        headers={
            "Authorization": token("X26ABC1"),
            "mex-To": "X26ABC2",
            "mex-WorkflowID": "TEST_WORKFLOW",
        },
        data=b"y" * 3_000_000,
        timeout=30,
    )
    assert ordinary.status_code == 202


def test_connections_beyond_the_cap_are_answered_503(threaded_server: Start) -> None:
    server = threaded_server(max_connections=2, header_timeout_seconds=PATIENCE * 3)
    with raw_connection(server) as first, raw_connection(server):
        wait_until(lambda: len(server.connections.open) == 2, "two open connections")
        with raw_connection(server) as third:
            answer = read_to_end(third)
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable"), answer
        assert b"Retry-After: 1" in answer and server.connections.refused == 1
        first.close()
        wait_until(lambda: len(server.connections.open) == 1, "the first one to close")
        # room again: an ordinary request gets through (one connection, closed after)
        ping = requests.get(
            f"{server.url}/messageexchange/_ping", headers={"Connection": "close"}, timeout=10
        )
        assert ping.ok


def test_limit_flags_and_their_checks() -> None:
    args = build_parser().parse_args(
        [
            "--header-timeout",
            "5",
            "--body-timeout",
            "7.5",
            "--min-body-rate",
            "4KiB",
            "--max-connections",
            "64",
        ]
    )
    config = config_from_args(args, {})
    assert (config.header_timeout_seconds, config.body_timeout_seconds) == (5.0, 7.5)
    assert (config.min_body_rate, config.max_connections) == (4096, 64)
    defaults = ServerConfig()
    assert (defaults.header_timeout_seconds, defaults.body_timeout_seconds) == (30.0, 30.0)
    assert (defaults.min_body_rate, defaults.max_connections) == (16 * 1024, 512)
    for bad in (
        {"header_timeout_seconds": 0},
        {"body_timeout_seconds": -1},
        {"min_body_rate": -1},
        {"max_connections": 0},
    ):
        with pytest.raises(ConfigError):
            ServerConfig(**bad)  # type: ignore[arg-type]


def test_time_the_server_holds_a_body_back_is_not_the_clients(threaded_server: Start) -> None:
    """The server stops reading for three body timeouts (a planned stall mid-upload, as a slow
    disk or a long decode would); the client, sending as fast as it may, is not cut off."""
    stall = Fault("stall", route="send", after_bytes=65536, seconds=1.5)
    server = threaded_server(body_timeout_seconds=0.5, faults=FaultPlan((stall,)))
    sent = requests.post(
        f"{server.url}/messageexchange/X26ABC1/outbox",
        headers={
            "Authorization": token("X26ABC1"),
            "mex-To": "X26ABC2",
            "mex-WorkflowID": "TEST_WORKFLOW",
        },
        data=b"z" * 8_000_000,
        timeout=30,
    )
    assert sent.status_code == 202
    assert [entry["fault"] for entry in server.fault_log] == ["stall"]
