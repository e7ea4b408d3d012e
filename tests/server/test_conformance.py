"""One conformance module, run against NHS's mesh-sandbox and against meshpipe serve
(``--rules sandbox``), with the same assertions for both.

The clients are NHS's own ``mesh_client`` (5.0.2) and plain ``requests`` for the raw HTTP shapes
and the admin API. Differences are allowed only where named (``peer.kind`` checks), each with
its reason.
"""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Iterator

import pytest
import requests
from mesh_client import MeshClient

from meshpipe.auth import make_token
from tests.peers import SANDBOX_PASSWORD, V2_MEDIA_TYPE, auth_headers
from tests.server.conftest import Peer

V2 = V2_MEDIA_TYPE
PASSWORD = SANDBOX_PASSWORD


def client(peer: Peer, mailbox: str, **kwargs: object) -> MeshClient:
    return MeshClient(peer.url, mailbox, PASSWORD, shared_key=peer.shared_key.encode(), **kwargs)  # type: ignore[arg-type]


def headers(peer: Peer, mailbox: str, *, v2: bool = True, **extra: str) -> dict[str, str]:
    return auth_headers(mailbox, shared_key=peer.shared_key, v2=v2, **extra)


def drain(mesh: MeshClient) -> None:
    for message_id in mesh.list_messages():
        mesh.acknowledge_message(message_id)


@pytest.fixture
def sender(peer: Peer) -> Iterator[MeshClient]:
    with client(peer, "X26ABC1", max_chunk_size=1000) as mesh:
        yield mesh


@pytest.fixture
def receiver(peer: Peer) -> Iterator[MeshClient]:
    with client(peer, "X26ABC2") as mesh:
        drain(mesh)
        yield mesh


def test_ping_and_handshake(peer: Peer, sender: MeshClient) -> None:
    ping = sender.ping()
    assert ping["status"] == "running" and ping["outcome"] == "Yes"
    assert sender.handshake() == b"hello"


def test_single_message_round_trip(peer: Peer, sender: MeshClient, receiver: MeshClient) -> None:
    local_id = f"local-{uuid.uuid4().hex}"
    message_id = sender.send_message(
        "X26ABC2",
        b"id,name\n1,SMITH\n",
        workflow_id="TEST_WORKFLOW",
        subject="a subject",
        local_id=local_id,
        filename="extract.csv",
        checksum="sha256:abc",
        content_type="text/csv",
    )
    assert message_id in receiver.list_messages()
    with pytest.warns(DeprecationWarning):
        assert receiver.count_messages() >= 1
    with receiver.retrieve_message(message_id) as message:
        assert message.read() == b"id,name\n1,SMITH\n"
        assert message.sender == "X26ABC1"
        assert message.recipient == "X26ABC2"
        assert message.workflow_id == "TEST_WORKFLOW"
        assert message.subject == "a subject"
        assert message.local_id == local_id
        assert message.filename == "extract.csv"
        assert message.message_type == "DATA"
        assert message.mex_header("content-checksum") == "sha256:abc"
        assert message.mex_header("statuscode") == "00"
        assert message.mex_header("statussuccess") == "SUCCESS"
        assert message.mex_header("chunk-range") == "1:1"
    # leaving the with block acknowledged it
    assert message_id not in receiver.list_messages()
    tracking = sender.track_message(message_id)
    assert tracking["message_id"] == message_id
    assert tracking["status"] == "acknowledged"
    by_local_id = requests.get(
        f"{peer.url}/messageexchange/X26ABC1/outbox/tracking/{local_id}",
        headers=headers(peer, "X26ABC1", v2=False),
        timeout=10,
    ).json()
    assert by_local_id["messageId"] == message_id and by_local_id["status"] == "Acknowledged"
    assert by_local_id["statusSuccess"] == "SUCCESS" and by_local_id["fileName"] == "extract.csv"
    v1 = requests.get(
        f"{peer.url}/messageexchange/X26ABC1/outbox/tracking?messageID={message_id}",
        headers=headers(peer, "X26ABC1", v2=False),
        timeout=10,
    ).json()
    assert v1["dtsId"] == message_id and v1["recipientName"] == "TESTMB2" and v1["chunkCount"] == 1
    rich = requests.get(
        f"{peer.url}/messageexchange/X26ABC2/inbox/rich",
        headers=headers(peer, "X26ABC2"),
        timeout=10,
    ).json()
    mine = [m for m in rich["messages"] if m["message_id"] == message_id]
    assert mine and mine[0]["status"] == "acknowledged" and mine[0]["local_id"] == local_id
    assert rich["links"]["self"].startswith("/messageexchange/X26ABC2/inbox/rich?start_time=")
    assert tracking["local_id"] == local_id
    assert tracking["recipient"] == "X26ABC2"
    assert tracking["status_success"] is True


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_chunked_message_round_trip(
    peer: Peer, sender: MeshClient, receiver: MeshClient, compress: bool
) -> None:
    data = bytes(range(256)) * 13 + b"tail"  # 3332 bytes: 4 chunks of ≤ 1000
    message_id = sender.send_message(
        "X26ABC2", data, workflow_id="TEST_WORKFLOW", compress=compress
    )
    message = receiver.retrieve_message(message_id)
    assert message.mex_header("total-chunks") == "4"
    assert message.mex_header("chunk-range") == "1:4"
    assert message.read() == data
    message.close()
    receiver.acknowledge_message(message_id)
    tracking = sender.track_message(message_id)
    assert tracking["status"] == "acknowledged"


def test_gzip_single_message(peer: Peer, receiver: MeshClient) -> None:
    with client(peer, "X26ABC1") as mesh:
        message_id = mesh.send_message(
            "X26ABC2", b"x" * 5000, workflow_id="TEST_WORKFLOW", compress=True
        )
    message = receiver.retrieve_message(message_id)
    assert message.read() == b"x" * 5000
    message.close()
    receiver.acknowledge_message(message_id)


def test_endpoint_lookup_and_workflow_search(peer: Peer, sender: MeshClient) -> None:
    found = sender.lookup_endpoint("X26", "TEST_WORKFLOW")
    assert found["results"] == [{"mailbox_id": "X26ABC2", "mailbox_name": "TESTMB2"}]
    assert sender.lookup_endpoint("X99", "TEST_WORKFLOW")["results"] == []
    ids = {r["mailbox_id"] for r in sender.lookup_endpoint("X26", "TEST_WORKFLOW2")["results"]}
    assert ids == {"X26ABC1", "X26ABC2"}
    search = requests.get(
        f"{peer.url}/messageexchange/workflowsearch/TEST_WORKFLOW_ACK", timeout=10
    )
    assert search.status_code == 200
    assert {r["mailbox_id"] for r in search.json()["results"]} == {"X26ABC1", "X26ABC3"}
    v1 = requests.get(
        f"{peer.url}/messageexchange/endpointlookup/X26/TEST_WORKFLOW", timeout=10
    ).json()
    assert v1["results"] == [
        {"address": "X26ABC2", "description": "TESTMB2", "endpoint_type": "MESH"}
    ]
    assert len(v1["query_id"]) == 32


def test_inbox_paging_and_workflow_filter(peer: Peer, receiver: MeshClient) -> None:
    with client(peer, "X26ABC1") as mesh:
        sent = [
            mesh.send_message("X26ABC2", b"m", workflow_id="PAGE_WF" if i % 3 else "OTHER_WF")
            for i in range(12)
        ]
    paged = list(receiver.iterate_message_ids(batch_size=10))
    assert paged == sent  # oldest first, page 2 reached through the relative links.next
    first = requests.get(
        f"{peer.url}/messageexchange/X26ABC2/inbox?max_results=10",
        headers=headers(peer, "X26ABC2"),
        timeout=10,
    ).json()
    assert len(first["messages"]) == 10
    assert first["links"]["self"] == "/messageexchange/X26ABC2/inbox?max_results=10"
    assert first["links"]["next"].startswith(
        "/messageexchange/X26ABC2/inbox?max_results=10&continue_from="
    )
    assert first["approx_inbox_count"] == 12
    assert receiver.list_messages(workflow_filter="OTHER_WF") == sent[::3]
    assert receiver.list_messages(workflow_filter="!OTHER_WF") == [
        m for i, m in enumerate(sent) if i % 3
    ]
    assert receiver.list_messages(workflow_filter="PAGE*") == [
        m for i, m in enumerate(sent) if i % 3
    ]
    assert receiver.list_messages(workflow_filter="*HER*") == sent[::3]
    v1 = requests.get(
        f"{peer.url}/messageexchange/X26ABC2/inbox?max_results=10",
        headers=headers(peer, "X26ABC2", v2=False),
        timeout=10,
    ).json()
    assert v1 == {"messages": sent[:10]}
    v1_next = requests.get(
        f"{peer.url}/messageexchange/X26ABC2/inbox?max_results=10&continue_from={sent[9]}",
        headers=headers(peer, "X26ABC2", v2=False),
        timeout=10,
    ).json()
    assert v1_next == {"messages": sent[10:]}
    drain(receiver)


def test_v1_and_v2_send_and_ack_shapes(peer: Peer, receiver: MeshClient) -> None:
    url = f"{peer.url}/messageexchange/X26ABC1/outbox"
    send = {"mex-To": "X26ABC2", "mex-WorkflowID": "TEST_WORKFLOW"}
    v1 = requests.post(
        url, headers=headers(peer, "X26ABC1", v2=False, **send), data=b"a", timeout=10
    )
    v2 = requests.post(url, headers=headers(peer, "X26ABC1", **send), data=b"b", timeout=10)
    assert (v1.status_code, v2.status_code) == (202, 202)
    first, second = v1.json()["messageID"], v2.json()["message_id"]
    assert len(first) == len(second) == 32
    ack = f"{peer.url}/messageexchange/X26ABC2/inbox/{first}/status/acknowledged"
    answer = requests.put(ack, headers=headers(peer, "X26ABC2", v2=False), timeout=10)
    assert answer.status_code == 200 and answer.json() == {"messageId": first}
    answer = requests.put(ack, headers=headers(peer, "X26ABC2"), timeout=10)
    assert answer.status_code == 200  # acknowledging twice is fine
    handshake = requests.post(
        f"{peer.url}/messageexchange/X26ABC1",
        headers=headers(
            peer,
            "X26ABC1",
            v2=False,
            **{"mex-ClientVersion": "t", "mex-OSName": "l", "mex-OSVersion": "1"},
        ),
        timeout=10,
    )
    assert handshake.json() == {"mailboxId": "X26ABC1"}
    count = requests.get(
        f"{peer.url}/messageexchange/X26ABC2/count",
        headers=headers(peer, "X26ABC2", v2=False),
        timeout=10,
    )
    assert set(count.json()) == {"count", "internalID", "allResultsIncluded"}
    drain(receiver)


def test_chunk_download_status_codes_and_headers(
    peer: Peer, sender: MeshClient, receiver: MeshClient
) -> None:
    message_id = sender.send_message(
        "X26ABC2", b"z" * 2500, workflow_id="TEST_WORKFLOW", compress=True
    )
    base = f"{peer.url}/messageexchange/X26ABC2/inbox/{message_id}"
    first = requests.get(
        base,
        headers=headers(peer, "X26ABC2", **{"Accept-Encoding": "gzip"}),
        timeout=10,
        stream=True,
    )
    assert first.status_code == 206
    assert first.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(first.raw.read()) == b"z" * 1000
    middle = requests.get(
        f"{base}/2", headers=headers(peer, "X26ABC2", **{"Accept-Encoding": "identity"}), timeout=10
    )
    assert middle.status_code == 206 and middle.content == b"z" * 1000
    assert "Content-Encoding" not in middle.headers
    last = requests.get(f"{base}/3", headers=headers(peer, "X26ABC2"), timeout=10)
    assert last.status_code == 200 and last.content == b"z" * 500
    assert last.headers["mex-Chunk-Range"] == "3:3"
    too_far = requests.get(f"{base}/4", headers=headers(peer, "X26ABC2"), timeout=10)
    assert too_far.status_code == 404
    assert too_far.json()["detail"][0]["code"] == "20"
    head = requests.head(base, headers=headers(peer, "X26ABC2"), timeout=10)
    assert head.status_code == 200 and head.headers["mex-MessageID"] == message_id
    assert head.headers["mex-Total-Chunks"] == "3" and head.headers["mex-StatusCode"] == "00"
    by_sender = requests.head(
        base.replace("X26ABC2", "X26ABC1"), headers=headers(peer, "X26ABC1"), timeout=10
    )
    assert by_sender.status_code == 200  # the sandbox lets the sender HEAD its own message
    unknown = requests.head(base[:-32] + "F" * 32, headers=headers(peer, "X26ABC2"), timeout=10)
    assert unknown.status_code == 404
    not_yours = requests.get(
        base.replace("X26ABC2", "X26ABC3"), headers=headers(peer, "X26ABC3"), timeout=10
    )
    assert not_yours.status_code == 403
    drain(receiver)


def test_send_refusals(peer: Peer) -> None:
    url = f"{peer.url}/messageexchange/X26ABC1/outbox"

    def post(data: bytes = b"x", v2: bool = True, **extra: str) -> requests.Response:
        return requests.post(
            url, headers=headers(peer, "X26ABC1", v2=v2, **extra), data=data, timeout=10
        )

    base = {"mex-To": "X26ABC2", "mex-WorkflowID": "TEST_WORKFLOW"}
    missing_to = post(**{"mex-WorkflowID": "W"})
    assert missing_to.status_code == 400
    assert missing_to.json()["detail"][0]["loc"] == ["header", "mex-to"]
    unknown = post(**{**base, "mex-To": "NOBODY1"})
    assert unknown.status_code == 417
    assert unknown.json()["detail"][0]["code"] == "12"
    unknown_v1 = post(v2=False, **{**base, "mex-To": "NOBODY1"})
    assert unknown_v1.json() == {
        "errorEvent": "SEND",
        "errorCode": "12",
        "errorDescription": "Unregistered to address",
    }
    empty = post(b"", **base)
    assert empty.status_code == 417 and empty.json()["detail"][0]["code"] == "02"
    deflate = post(**{**base, "Content-Encoding": "deflate"})
    assert deflate.status_code == 422
    bad_range = post(**{**base, "mex-Chunk-Range": "2:3"})
    assert bad_range.status_code == 417
    assert bad_range.json()["detail"][0]["code"] == "InvalidHeaderChunks"
    checksum = post(**{**base, "mex-Content-Checksum": "md5:ab+c="})
    assert checksum.status_code == 400
    url_to = post(**{**base, "mex-To": "https://example.org"})
    assert url_to.status_code == 400 and url_to.json()["detail"][0]["code"] == "06"
    tab = post(**{**base, "mex-Subject": "a\tb"})
    assert tab.status_code == 400 and tab.json()["detail"][0]["code"] == "06"
    long_subject = post(**{**base, "mex-Subject": "s" * 501})
    assert long_subject.status_code == 400
    assert long_subject.json()["detail"][0]["type"] == "string_too_long"


def test_chunk_refusals(peer: Peer) -> None:
    outbox = f"{peer.url}/messageexchange/X26ABC1/outbox"
    created = requests.post(
        outbox,
        headers=headers(
            peer,
            "X26ABC1",
            **{
                "mex-To": "X26ABC2",
                "mex-WorkflowID": "TEST_WORKFLOW",
                "mex-Chunk-Range": "1:3",
                "Content-Encoding": "gzip",
            },
        ),
        data=gzip.compress(b"one"),
        timeout=10,
    )
    assert created.status_code == 202
    message_id = created.json()["message_id"]

    def chunk(
        number: int, v2: bool = True, mailbox: str = "X26ABC1", **extra: str
    ) -> requests.Response:
        return requests.post(
            f"{peer.url}/messageexchange/{mailbox}/outbox/{message_id}/{number}",
            headers=headers(peer, mailbox, v2=v2, **extra),
            data=gzip.compress(b"more"),
            timeout=10,
        )

    assert chunk(2, **{"Content-Encoding": "gzip"}).status_code == 417  # no range
    assert chunk(2, **{"mex-Chunk-Range": "2:3"}).status_code == 417  # encoding changed
    assert chunk(4, **{"mex-Chunk-Range": "4:3", "Content-Encoding": "gzip"}).status_code == 417
    assert (
        chunk(
            2, mailbox="X26ABC2", **{"mex-Chunk-Range": "2:3", "Content-Encoding": "gzip"}
        ).status_code
        == 403
    )
    download = requests.get(
        f"{peer.url}/messageexchange/X26ABC2/inbox/{message_id}",
        headers=headers(peer, "X26ABC2"),
        timeout=10,
    )
    assert download.status_code == 410  # still uploading
    rich = requests.get(
        f"{peer.url}/messageexchange/X26ABC1/outbox/rich",
        headers=headers(peer, "X26ABC1"),
        timeout=10,
    )
    uploading = [m for m in rich.json()["messages"] if m["message_id"] == message_id]
    assert uploading and uploading[0]["status"] == "uploading" and uploading[0]["total_chunks"] == 3
    second = chunk(2, v2=False, **{"mex-Chunk-Range": "2:3", "Content-Encoding": "gzip"})
    assert second.status_code == 202 and second.json() == {"messageID": message_id, "blockID": 2}
    assert chunk(3, **{"mex-Chunk-Range": "3:3", "Content-Encoding": "gzip"}).status_code == 202
    assert chunk(3, **{"mex-Chunk-Range": "3:3", "Content-Encoding": "gzip"}).status_code == 423
    with client(peer, "X26ABC2") as mesh:
        message = mesh.retrieve_message(message_id)
        assert message.read() == b"one" + b"more" * 2
        message.close()
        drain(mesh)


def test_auth_refusals(peer: Peer) -> None:
    inbox = f"{peer.url}/messageexchange/X26ABC1/inbox"
    none = requests.get(inbox, timeout=10)
    assert none.status_code == 403
    assert none.json()["errorDescription"] == "Error reading from Authorization header"
    wrong_key = requests.get(
        inbox, headers={"Authorization": make_token("X26ABC1", PASSWORD, "wrong")}, timeout=10
    )
    assert wrong_key.status_code == 403
    assert wrong_key.json()["errorDescription"] == "Invalid Authentication Token"
    other = requests.get(
        inbox,
        headers={"Authorization": make_token("X26ABC2", PASSWORD, peer.shared_key)},
        timeout=10,
    )
    assert other.json()["errorDescription"] == "Mailbox id does not match token"
    unknown = requests.get(
        f"{peer.url}/messageexchange/NOBODY1/inbox",
        headers=headers(peer, "NOBODY1"),
        timeout=10,
    )
    assert unknown.status_code == 403 and unknown.json()["detail"][0]["code"] == "EPL-151"
    upper_hex = make_token("X26ABC1", PASSWORD, peer.shared_key)
    upper_hex = (
        upper_hex[: upper_hex.rindex(":") + 1] + upper_hex[upper_hex.rindex(":") + 1 :].upper()
    )
    assert requests.get(inbox, headers={"Authorization": upper_hex}, timeout=10).status_code == 200
    bad_accept = requests.get(
        inbox,
        headers=headers(peer, "X26ABC1", Accept="application/json, application/vnd.mesh.v2+json"),
        timeout=10,
    )
    assert bad_accept.status_code == 400


def test_admin_api(peer: Peer, sender: MeshClient, receiver: MeshClient) -> None:
    admin = f"{peer.url}/messageexchange/admin"
    mailbox = requests.get(f"{admin}/mailbox/X26ABC3", timeout=10)
    assert mailbox.status_code == 200
    assert mailbox.json()["ods_code"] == "X27" and "password" not in mailbox.json()
    assert (
        requests.get(f"{peer.url}/messageexchange/mailbox/X26ABC1", timeout=10).json()[
            "mailbox_name"
        ]
        == "TESTMB1"
    )
    message_id = sender.send_message(
        "X26ABC2", b"data", workflow_id="TEST_WORKFLOW", subject="subj", local_id="loc"
    )
    details = requests.get(f"{admin}/message/{message_id}", timeout=10).json()
    assert (
        details["status"] == "Accepted"
        and details["file_size"] == 4
        and details["sender"] == "X26ABC1"
    )
    # an NDR put into the sender's inbox
    created = requests.post(
        f"{admin}/report",
        json={
            "mailbox_id": "X26ABC1",
            "code": "14",
            "description": "x",
            "workflow_id": "TEST_WORKFLOW",
            "subject": "subj",
            "local_id": "loc",
            "linked_message_id": message_id,
        },
        timeout=10,
    )
    assert created.status_code == 200
    report_id = created.json()["message_id"]
    report = requests.get(
        f"{peer.url}/messageexchange/X26ABC1/inbox/{report_id}",
        headers=headers(peer, "X26ABC1"),
        timeout=10,
    )
    assert report.status_code == 200 and report.content == b""
    assert report.headers["mex-MessageType"] == "REPORT"
    assert report.headers["mex-StatusCode"] == "14"
    assert report.headers["mex-StatusSuccess"] == "ERROR"
    assert report.headers["mex-LinkedMsgID"] == message_id
    assert report.headers["mex-Subject"] == "NDR: subj"
    assert report_id in sender.list_messages()
    sender.acknowledge_message(report_id)
    # a forced error status: tracking reports it and downloads are refused
    event = requests.post(
        f"{admin}/message/{message_id}/event",
        json={"status": "error", "code": "99", "event": "TRANSFER", "description": "forced"},
        timeout=10,
    )
    assert event.status_code == 200
    assert sender.track_message(message_id)["status"] == "error"
    gone = requests.get(
        f"{peer.url}/messageexchange/X26ABC2/inbox/{message_id}",
        headers=headers(peer, "X26ABC2"),
        timeout=10,
    )
    assert gone.status_code == 410
    assert requests.delete(f"{admin}/reset/NOBODY1", timeout=10).status_code == 404
    another = sender.send_message("X26ABC3", b"data", workflow_id="TEST_WORKFLOW2")
    reset = requests.delete(f"{peer.url}/admin/reset/X26ABC3", timeout=10)
    assert reset.status_code == 200 and reset.json() == {"message": "mailbox X26ABC3 reset"}
    with client(peer, "X26ABC3") as third:
        assert another not in third.list_messages()


def test_remaining_endpoints(peer: Peer) -> None:
    for path in ("/_ping", "/health", "/messageexchange/_ping"):
        assert requests.get(f"{peer.url}{path}", timeout=10).json()["status"] == "running"
    client_info = {"mex-ClientVersion": "t", "mex-OSName": "l", "mex-OSVersion": "1"}
    as_get = requests.get(
        f"{peer.url}/messageexchange/X26ABC1",
        headers=headers(peer, "X26ABC1", **client_info),
        timeout=10,
    )
    assert as_get.status_code == 200 and as_get.content == b""  # v2 handshake: empty body
    update = requests.post(
        f"{peer.url}/messageexchange/X26ABC1/update", headers=headers(peer, "X26ABC1"), timeout=10
    )
    assert update.status_code == 200
    count = requests.get(
        f"{peer.url}/messageexchange/X26ABC1/count", headers=headers(peer, "X26ABC1"), timeout=10
    )
    assert set(count.json()) == {"count"}
    missing = requests.get(
        f"{peer.url}/messageexchange/X26ABC1/outbox/tracking",
        headers=headers(peer, "X26ABC1"),
        timeout=10,
    )
    assert missing.status_code == 400
    lower = requests.get(
        f"{peer.url}/messageexchange/x26abc1/inbox", headers=headers(peer, "X26ABC1"), timeout=10
    )
    assert lower.status_code == 200  # the path's mailbox id is upper-cased
    too_short = requests.get(
        f"{peer.url}/messageexchange/X26ABC1/inbox?continue_from=short",
        headers=headers(peer, "X26ABC1"),
        timeout=10,
    )
    assert too_short.status_code == 400
    reset = requests.delete(f"{peer.url}/messageexchange/admin/reset", timeout=10)
    assert reset.status_code == 200 and reset.json() == {"message": "all mailboxes reset"}


def test_download_of_an_uncompressed_message_to_a_gzip_client(peer: Peer) -> None:
    """Named difference: mesh-sandbox gzips a stored uncompressed body at level 9 on the request
    path (v2 Accept + gzip in Accept-Encoding); meshpipe serve sends it as stored (an HTTP server
    may decline to compress). Clients see the same bytes either way."""
    send = {"mex-To": "X26ABC2", "mex-WorkflowID": "TEST_WORKFLOW", "Content-Type": "text/csv"}
    created = requests.post(
        f"{peer.url}/messageexchange/X26ABC1/outbox",
        headers=headers(peer, "X26ABC1", **send),
        data=b"a,b\n1,2\n",
        timeout=10,
    )
    message_id = created.json()["message_id"]
    url = f"{peer.url}/messageexchange/X26ABC2/inbox/{message_id}"
    answer = requests.get(
        url,
        headers=headers(peer, "X26ABC2", **{"Accept-Encoding": "gzip"}),
        timeout=10,
        stream=True,
    )
    raw = answer.raw.read()
    assert answer.headers["Content-Type"] == "text/csv; charset=utf-8"  # v2, single chunk
    if peer.kind == "sandbox":
        assert (
            answer.headers["Content-Encoding"] == "gzip" and gzip.decompress(raw) == b"a,b\n1,2\n"
        )
        assert answer.headers["mex-Content-Compressed"] == "Y"  # the sandbox's quirk
    else:
        assert "Content-Encoding" not in answer.headers and raw == b"a,b\n1,2\n"
    v1 = requests.get(
        url, headers=headers(peer, "X26ABC2", v2=False, **{"Accept-Encoding": "gzip"}), timeout=10
    )
    assert v1.headers["Content-Type"] == "application/octet-stream" and v1.content == b"a,b\n1,2\n"
    requests.put(f"{url}/status/acknowledged", headers=headers(peer, "X26ABC2"), timeout=10)


def test_mailbox_reset_empties_only_its_own_inbox(
    peer: Peer, sender: MeshClient, receiver: MeshClient
) -> None:
    """Resetting a mailbox empties its inbox; what it sent stays in the recipient's inbox."""
    body = f"sent before the reset {uuid.uuid4()}".encode()
    sent = sender.send_message("X26ABC2", body, workflow_id="TEST_WORKFLOW")
    received = receiver.send_message("X26ABC1", b"to be reset", workflow_id="TEST_WORKFLOW_ACK")
    assert received in sender.list_messages()
    reset = requests.delete(f"{peer.url}/messageexchange/admin/reset/X26ABC1", timeout=10)
    assert reset.status_code == 200
    assert sender.list_messages() == []
    assert sent in receiver.list_messages()
    assert receiver.retrieve_message(sent).read() == body
