"""Inbox expiry after 5 days: the message becomes undeliverable and its sender gets an NDR."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import requests
from mesh_client import MeshClient

from meshpipe.server import LocalMeshServer
from tests.peers import SANDBOX_SHARED_KEY, auth_headers

Start = Callable[..., LocalMeshServer]


def test_unacknowledged_message_expires_into_an_ndr(threaded_server: Start) -> None:
    server = threaded_server(rules="sandbox")
    with MeshClient(
        server.url, "X26ABC1", "password", shared_key=SANDBOX_SHARED_KEY.encode()
    ) as sender:
        message_id = sender.send_message(
            "X26ABC2", b"late", workflow_id="TEST_WORKFLOW", subject="weekly", local_id="run-7"
        )
        collected = sender.send_message("X26ABC2", b"on time", workflow_id="TEST_WORKFLOW")
    with MeshClient(
        server.url, "X26ABC2", "password", shared_key=SANDBOX_SHARED_KEY.encode()
    ) as receiver:
        receiver.acknowledge_message(collected)
    # four days: nothing happens
    advanced = requests.post(
        f"{server.url}/messageexchange/admin/clock", json={"seconds": 4 * 86400}, timeout=10
    )
    assert advanced.json()["reports"] == []
    # past five days: an NDR for the uncollected message only
    reports = server.advance_clock(timedelta(days=1, minutes=1))
    assert len(reports) == 1
    with MeshClient(
        server.url, "X26ABC1", "password", shared_key=SANDBOX_SHARED_KEY.encode()
    ) as sender:
        assert sender.list_messages() == reports
        ndr = sender.retrieve_message(reports[0])
        assert ndr.read() == b""
        assert ndr.message_type == "REPORT"
        assert ndr.mex_header("statuscode") == "14"
        assert ndr.mex_header("statusevent") == "SEND"
        assert (
            ndr.mex_header("statusdescription") == "Message not collected by recipient after 5 days"
        )
        assert ndr.mex_header("linkedmsgid") == message_id
        assert ndr.subject == "NDR: weekly"
        assert ndr.local_id == "run-7"
        assert ndr.workflow_id == "TEST_WORKFLOW"
        ndr.close()
        assert sender.track_message(message_id)["status"] == "undeliverable"
    gone = requests.get(
        f"{server.url}/messageexchange/X26ABC2/inbox/{message_id}",
        headers=auth_headers("X26ABC2"),
        timeout=10,
    )
    assert gone.status_code == 410
    inbox = requests.get(
        f"{server.url}/messageexchange/X26ABC2/inbox", headers=auth_headers("X26ABC2"), timeout=10
    )
    assert inbox.json()["messages"] == []
    # after the 30-day retention everything is deleted
    server.advance_clock(timedelta(days=30))
    assert server.message(message_id) is None
