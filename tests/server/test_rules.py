"""--rules strict: the live platform's rules, each refusal with the MESH answer a client gets.

Limits are shrunk through ServerConfig (min_chunk_size, max_request_size, max_message_size) so
the tests move kilobytes, not gigabytes; the code paths are the ones the real limits take.
"""

from __future__ import annotations

import gzip
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from meshpipe.server import LocalMeshServer
from tests.peers import SANDBOX_SHARED_KEY, token

V2 = "application/vnd.mesh.v2+json"


def send(
    server: LocalMeshServer, data: bytes, *, sender: str = "X26ABC1", **extra: str
) -> requests.Response:
    head = {
        "Authorization": token(sender),
        "Accept": V2,
        "mex-To": "X26ABC2",
        "mex-WorkflowID": "TEST_WORKFLOW",
        **extra,
    }
    return requests.post(
        f"{server.url}/messageexchange/{sender}/outbox", headers=head, data=data, timeout=10
    )


def chunk(
    server: LocalMeshServer, message_id: str, number: int, total: int, data: bytes, **extra: str
) -> requests.Response:
    head = {
        "Authorization": token("X26ABC1"),
        "Accept": V2,
        "mex-Chunk-Range": f"{number}:{total}",
        **extra,
    }
    return requests.post(
        f"{server.url}/messageexchange/X26ABC1/outbox/{message_id}/{number}",
        headers=head,
        data=data,
        timeout=10,
    )


Start = Callable[..., LocalMeshServer]


def test_every_chunk_but_the_last_must_reach_the_minimum_decompressed(
    threaded_server: Start,
) -> None:
    server = threaded_server(rules="strict", min_chunk_size=1024)
    small = send(server, b"a" * 1023, **{"mex-Chunk-Range": "1:2"})
    assert small.status_code == 417
    assert small.json()["detail"][0]["code"] == "ChunkTooSmall"
    # compressed below the minimum but 4 KiB once decompressed: accepted (the rule is decoded size)
    packed = gzip.compress(b"a" * 4096)
    assert len(packed) < 1024
    first = send(server, packed, **{"mex-Chunk-Range": "1:2", "Content-Encoding": "gzip"})
    assert first.status_code == 202
    message_id = first.json()["message_id"]
    last = chunk(server, message_id, 2, 2, gzip.compress(b"b"), **{"Content-Encoding": "gzip"})
    assert last.status_code == 202  # the last chunk may be small
    assert server.message(message_id) is not None
    assert server.message(message_id).status == "accepted"  # type: ignore[union-attr]


def test_sandbox_rules_accept_tiny_chunks(threaded_server: Start) -> None:
    server = threaded_server(rules="sandbox", min_chunk_size=1024)
    assert send(server, b"tiny", **{"mex-Chunk-Range": "1:2"}).status_code == 202


def test_request_and_message_size_limits(threaded_server: Start) -> None:
    server = threaded_server(
        rules="strict", max_request_size=10_000, max_message_size=15_000, min_chunk_size=1
    )
    too_big = send(server, b"x" * 10_000)
    assert too_big.status_code == 413
    assert too_big.json()["detail"][0]["code"] == "RequestTooLarge"
    first = send(server, b"x" * 9_000, **{"mex-Chunk-Range": "1:2"})
    assert first.status_code == 202
    over = chunk(server, first.json()["message_id"], 2, 2, b"y" * 9_000)
    assert over.status_code == 413
    assert over.json()["detail"][0]["code"] == "MessageTooLarge"
    # gzip bombs count by decoded size too
    bomb = send(server, gzip.compress(b"\0" * 20_000), **{"Content-Encoding": "gzip"})
    assert bomb.status_code == 413


def test_workflow_entitlements(threaded_server: Start) -> None:
    strict = threaded_server(rules="strict")
    refused = send(strict, b"x", **{"mex-WorkflowID": "NOT_A_WORKFLOW"})
    assert refused.status_code == 417
    assert refused.json()["detail"][0]["code"] == "17"
    wrong_way = send(strict, b"x", sender="X26ABC2")  # X26ABC2 may not send TEST_WORKFLOW
    assert wrong_way.status_code == 417
    assert send(strict, b"x").status_code == 202
    lenient = threaded_server(rules="sandbox")
    assert send(lenient, b"x", **{"mex-WorkflowID": "NOT_A_WORKFLOW"}).status_code == 202


def test_tokens_are_single_use_and_timely_under_strict_rules(threaded_server: Start) -> None:
    server = threaded_server(rules="strict")
    inbox = f"{server.url}/messageexchange/X26ABC1/inbox"
    once = token("X26ABC1")
    assert requests.get(inbox, headers={"Authorization": once}, timeout=10).status_code == 200
    replay = requests.get(inbox, headers={"Authorization": once}, timeout=10)
    assert replay.status_code == 403
    assert replay.json()["errorDescription"] == "Error Duplicated Authentication Token"
    old = token("X26ABC1", now=datetime.now(UTC) - timedelta(hours=3))
    assert requests.get(inbox, headers={"Authorization": old}, timeout=10).status_code == 403
    nonce = str(uuid.uuid4())
    fresh = [token("X26ABC1", nonce=nonce, nonce_count=n) for n in range(3)]
    assert all(
        requests.get(inbox, headers={"Authorization": t}, timeout=10).status_code == 200
        for t in fresh
    )
    lenient = threaded_server(rules="sandbox")
    lenient_inbox = f"{lenient.url}/messageexchange/X26ABC1/inbox"
    assert (
        requests.get(lenient_inbox, headers={"Authorization": once}, timeout=10).status_code == 200
    )
    assert (
        requests.get(lenient_inbox, headers={"Authorization": once}, timeout=10).status_code == 200
    )
    assert (
        requests.get(lenient_inbox, headers={"Authorization": old}, timeout=10).status_code == 200
    )


def test_auth_modes(threaded_server: Start) -> None:
    open_server = threaded_server(auth_mode="none")
    assert (
        requests.get(f"{open_server.url}/messageexchange/X26ABC1/inbox", timeout=10).status_code
        == 200
    )
    canned = threaded_server(auth_mode="canned")
    inbox = f"{canned.url}/messageexchange/X26ABC1/inbox"
    good = token("X26ABC1", nonce="VALID")
    assert requests.get(inbox, headers={"Authorization": good}, timeout=10).status_code == 200
    assert (
        requests.get(inbox, headers={"Authorization": token("X26ABC1")}, timeout=10).status_code
        == 403
    )


def test_corrupt_gzip_is_refused_and_nothing_is_stored(threaded_server: Start) -> None:
    server = threaded_server(rules="sandbox")
    broken = gzip.compress(b"hello" * 100)[:-12] + b"\0" * 12
    answer = send(server, broken, **{"Content-Encoding": "gzip"})
    assert answer.status_code == 400
    inbox = requests.get(
        f"{server.url}/messageexchange/X26ABC2/inbox",
        headers={"Authorization": token("X26ABC2")},
        timeout=10,
    )
    assert inbox.json() == {"messages": []}


def test_last_chunk_before_the_others_keeps_the_message_uploading(threaded_server: Start) -> None:
    server = threaded_server(rules="sandbox")
    first = send(server, b"1", **{"mex-Chunk-Range": "1:3"})
    message_id = first.json()["message_id"]
    early = chunk(server, message_id, 3, 3, b"3")
    assert early.status_code == 500  # as mesh-sandbox's file store answers
    assert chunk(server, message_id, 2, 3, b"2").status_code == 202
    assert server.message(message_id).status == "uploading"  # type: ignore[union-attr]
    assert chunk(server, message_id, 3, 3, b"3").status_code == 202
    download = requests.get(
        f"{server.url}/messageexchange/X26ABC2/inbox/{message_id}/3",
        headers={"Authorization": token("X26ABC2")},
        timeout=10,
    )
    assert download.status_code == 200 and download.content == b"3"


def test_mesh_client_works_under_strict_rules(threaded_server: Start) -> None:
    """NHS's mesh-client uses a fresh (nonce, count) per request, so one-use tokens suit it."""
    from mesh_client import MeshClient

    server = threaded_server(rules="strict")
    with MeshClient(
        server.url, "X26ABC1", "password", shared_key=SANDBOX_SHARED_KEY.encode()
    ) as sender:
        sender.handshake()
        message_id = sender.send_message("X26ABC2", b"strict" * 100, workflow_id="TEST_WORKFLOW")
        assert (
            sender.lookup_endpoint("X26", "TEST_WORKFLOW")["results"][0]["mailbox_id"] == "X26ABC2"
        )
    with MeshClient(
        server.url, "X26ABC2", "password", shared_key=SANDBOX_SHARED_KEY.encode()
    ) as receiver:
        assert receiver.list_messages() == [message_id]
        with receiver.retrieve_message(message_id) as message:
            assert message.read() == b"strict" * 100
        assert receiver.list_messages() == []
        with pytest.raises(requests.HTTPError) as gone:
            receiver.retrieve_message(
                message_id
            )  # acknowledged: not downloadable under strict rules
        assert gone.value.response.status_code == 410


def test_memory_store_reset_clears_everything(threaded_server: Start) -> None:
    server = threaded_server(store="memory", rules="sandbox")
    message_id = send(server, b"gone soon").json()["message_id"]
    assert server.message(message_id) is not None
    assert requests.delete(f"{server.url}/admin/reset", timeout=10).json() == {
        "message": "all mailboxes reset"
    }
    assert server.message(message_id) is None


def test_middle_chunks_concurrently_and_out_of_order(threaded_server: Start) -> None:
    from concurrent.futures import ThreadPoolExecutor

    server = threaded_server(rules="strict", min_chunk_size=1000)
    parts = [bytes([65 + n]) * 1000 for n in range(10)]
    message_id = send(server, parts[0], **{"mex-Chunk-Range": "1:10"}).json()["message_id"]
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda n: chunk(server, message_id, n, 10, parts[n - 1]), range(9, 1, -1))
        )
    assert [a.status_code for a in answers] == [202] * 8
    assert chunk(server, message_id, 10, 10, parts[9]).status_code == 202
    got = [
        requests.get(
            f"{server.url}/messageexchange/X26ABC2/inbox/{message_id}/{n}",
            headers={"Authorization": token("X26ABC2")},
            timeout=10,
        ).content
        for n in range(1, 11)
    ]
    assert got == parts


def test_client_disconnect_mid_chunk_leaves_nothing(
    threaded_server: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import socket
    from urllib.parse import urlparse

    caplog.set_level(logging.INFO, logger="meshpipe.server")
    server = threaded_server(rules="sandbox", store="dir", data_dir=tmp_path)
    address = urlparse(server.url)
    with socket.create_connection((address.hostname, address.port)) as sock:
        head = (
            "POST /messageexchange/X26ABC1/outbox HTTP/1.1\r\nHost: t\r\n"
            "Content-Length: 5000000\r\n"
            f"Authorization: {token('X26ABC1')}\r\nmex-To: X26ABC2\r\nmex-WorkflowID: W\r\n\r\n"
        )
        sock.sendall(head.encode() + b"x" * 100_000)
    # The server logs the client's going once it has cleaned up; wait for that, not a timer.
    for _ in range(1000):
        if any("client disconnected" in r.getMessage() for r in caplog.records):
            break
        time.sleep(0.01)
    else:
        pytest.fail("the server never noticed that the client went away")
    # the server is still answering, and nothing of the upload was kept
    assert not list(tmp_path.rglob("*.part"))
    assert not list(tmp_path.rglob("*.msg"))
    assert send(server, b"after").status_code == 202


def test_mesh_client_retries_reuse_the_token_so_strict_rules_refuse_them(
    threaded_server: Start,
) -> None:
    """A fact about NHS's mesh-client 5.0.2: urllib3 re-sends a failed chunk with the same
    Authorization header. Single-use tokens (the live platform refuses a reused one; --rules
    strict) refuse the retry with 403; the sandbox accepts it."""
    from mesh_client import MeshClient

    from meshpipe.server import Fault, FaultPlan

    outcomes = {}
    for rules in ("sandbox", "strict"):
        plan = FaultPlan((Fault("reset", route="send_chunk", chunk=2, after_bytes=100),))
        server = threaded_server(rules=rules, faults=plan, min_chunk_size=1000)
        with MeshClient(
            server.url,
            "X26ABC1",
            "password",
            shared_key=SANDBOX_SHARED_KEY.encode(),
            max_chunk_size=1000,
        ) as mesh:
            try:
                mesh.send_message("X26ABC2", b"x" * 2500, workflow_id="TEST_WORKFLOW")
                outcomes[rules] = 202
            except requests.HTTPError as error:
                outcomes[rules] = error.response.status_code
    assert outcomes == {"sandbox": 202, "strict": 403}
