"""The dir store survives SIGKILL: nothing accepted is lost, nothing partial is delivered."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import requests

from tests.peers import auth_headers
from tests.server.processes import serve_with


@contextmanager
def serve(data_dir: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    with serve_with("--store", "dir", "--data-dir", str(data_dir)) as running:
        yield running


def inbox(url: str) -> list[str]:
    answer = requests.get(
        f"{url}/messageexchange/X26ABC2/inbox", headers=auth_headers("X26ABC2"), timeout=10
    )
    return list(answer.json()["messages"])


def start_partial_upload(
    url: str, path: str, headers: dict[str, str], declared: int, sent: int
) -> socket.socket:
    """Send the headers and the first ``sent`` of ``declared`` body bytes, then stop."""
    parsed = urlparse(url)
    sock = socket.create_connection((parsed.hostname, parsed.port))
    lines = [f"POST {path} HTTP/1.1", f"Host: {parsed.netloc}", f"Content-Length: {declared}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + b"p" * sent)
    return sock


def wait_for_part_file(data_dir: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(data_dir.glob("*/in/*/.*.part")):
            return
        time.sleep(0.02)
    raise AssertionError("the server never started writing the chunk")


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def test_sigkill_mid_upload_and_after_acceptance(tmp_path: Path) -> None:
    data_dir = tmp_path / "store"
    send_headers = auth_headers(
        "X26ABC1", **{"mex-To": "X26ABC2", "mex-WorkflowID": "TEST_WORKFLOW"}
    )
    with serve(data_dir) as (url, process):
        accepted = requests.post(
            f"{url}/messageexchange/X26ABC1/outbox", headers=send_headers, data=b"kept", timeout=10
        )
        accepted_id = accepted.json()["message_id"]
        # a two-chunk message: chunk 1 accepted, chunk 2 killed halfway
        first = requests.post(
            f"{url}/messageexchange/X26ABC1/outbox",
            headers={**send_headers, "mex-Chunk-Range": "1:2"},
            data=b"first",
            timeout=10,
        )
        chunked_id = first.json()["message_id"]
        sock = start_partial_upload(
            url,
            f"/messageexchange/X26ABC1/outbox/{chunked_id}/2",
            {**auth_headers("X26ABC1"), "mex-Chunk-Range": "2:2"},
            declared=4 * 1024 * 1024,
            sent=1024 * 1024,
        )
        wait_for_part_file(data_dir)
        kill(process)
        sock.close()
    with serve(data_dir) as (url, process):
        assert inbox(url) == [accepted_id]
        download = requests.get(
            f"{url}/messageexchange/X26ABC2/inbox/{accepted_id}",
            headers=auth_headers("X26ABC2"),
            timeout=10,
        )
        assert download.content == b"kept"
        assert not list(data_dir.glob("*/in/*/.*.part"))  # leftovers removed on load
        tracking = requests.get(
            f"{url}/messageexchange/X26ABC1/outbox/tracking?messageID={chunked_id}",
            headers=auth_headers("X26ABC1"),
            timeout=10,
        )
        assert tracking.json()["status"] == "uploading"
        # the client resumes: chunk 2 again, then the message is complete
        second = requests.post(
            f"{url}/messageexchange/X26ABC1/outbox/{chunked_id}/2",
            headers={**auth_headers("X26ABC1"), "mex-Chunk-Range": "2:2"},
            data=b"second",
            timeout=10,
        )
        assert second.status_code == 202
        assert inbox(url) == [accepted_id, chunked_id]
        kill(process)
    with serve(data_dir) as (url, _):
        assert inbox(url) == [accepted_id, chunked_id]
        parts = [
            requests.get(
                f"{url}/messageexchange/X26ABC2/inbox/{chunked_id}/{n}",
                headers=auth_headers("X26ABC2"),
                timeout=10,
            ).content
            for n in (1, 2)
        ]
        assert parts == [b"first", b"second"]


def test_sigkill_during_a_single_chunk_message_leaves_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "store"
    with serve(data_dir) as (url, process):
        sock = start_partial_upload(
            url,
            "/messageexchange/X26ABC1/outbox",
            auth_headers("X26ABC1", **{"mex-To": "X26ABC2", "mex-WorkflowID": "TEST_WORKFLOW"}),
            declared=8 * 1024 * 1024,
            sent=2 * 1024 * 1024,
        )
        wait_for_part_file(data_dir)
        kill(process)
        sock.close()
    with serve(data_dir) as (url, _):
        assert inbox(url) == []
        rich = requests.get(
            f"{url}/messageexchange/X26ABC1/outbox/rich",
            headers=auth_headers("X26ABC1"),
            timeout=10,
        )
        assert rich.json()["messages"] == []


def test_takes_over_a_mesh_sandbox_data_directory(tmp_path: Path) -> None:
    """Messages mesh-sandbox's file store wrote are served by meshpipe serve on the same dir."""
    import gzip

    from tests.peers import SANDBOX_SHARED_KEY, run_sandbox

    data_dir = tmp_path / "shared"
    with run_sandbox(data_dir, shared_key=SANDBOX_SHARED_KEY) as sandbox:
        url = f"{sandbox.url}/messageexchange"
        send = {"mex-To": "X26ABC2", "mex-WorkflowID": "TEST_WORKFLOW"}
        gz = {**send, "mex-Chunk-Range": "1:2", "Content-Encoding": "gzip", "mex-Subject": "S"}
        chunked = requests.post(
            f"{url}/X26ABC1/outbox",
            headers=auth_headers("X26ABC1", **gz),
            data=gzip.compress(b"one"),
            timeout=10,
        )
        chunked_id = chunked.json()["message_id"]
        requests.post(
            f"{url}/X26ABC1/outbox/{chunked_id}/2",
            headers=auth_headers(
                "X26ABC1", **{"mex-Chunk-Range": "2:2", "Content-Encoding": "gzip"}
            ),
            data=gzip.compress(b"two"),
            timeout=10,
        )
        acked = requests.post(
            f"{url}/X26ABC1/outbox",
            headers=auth_headers("X26ABC1", **send),
            data=b"done",
            timeout=10,
        )
        acked_id = acked.json()["message_id"]
        requests.put(
            f"{url}/X26ABC2/inbox/{acked_id}/status/acknowledged",
            headers=auth_headers("X26ABC2"),
            timeout=10,
        )
        partial = requests.post(
            f"{url}/X26ABC1/outbox",
            headers=auth_headers("X26ABC1", **send, **{"mex-Chunk-Range": "1:2"}),
            data=b"half",
            timeout=10,
        )
        partial_id = partial.json()["message_id"]
    with serve(data_dir) as (url, _):
        assert inbox(url) == [chunked_id]
        first = requests.get(
            f"{url}/messageexchange/X26ABC2/inbox/{chunked_id}",
            headers=auth_headers("X26ABC2", **{"Accept-Encoding": "identity"}),
            timeout=10,
        )
        assert first.status_code == 206 and first.content == b"one"
        assert first.headers["mex-Subject"] == "S"
        tracking = requests.get(
            f"{url}/messageexchange/X26ABC1/outbox/tracking?messageID={acked_id}",
            headers=auth_headers("X26ABC1"),
            timeout=10,
        )
        assert tracking.json()["status"] == "acknowledged"
        # an upload the sandbox left half done is finished against meshpipe
        rest = requests.post(
            f"{url}/messageexchange/X26ABC1/outbox/{partial_id}/2",
            headers=auth_headers("X26ABC1", **{"mex-Chunk-Range": "2:2"}),
            data=b" and half",
            timeout=10,
        )
        assert rest.status_code == 202
        assert inbox(url) == [chunked_id, partial_id]
