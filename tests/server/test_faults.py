"""Fault injection mechanics: each kind fires on the planned request, deterministically, and is
logged. (test_faults_client.py runs the same faults against meshpipe's own client.)"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from mesh_client import MeshClient

from meshpipe.server import Fault, FaultPlan, FaultPlanError, LocalMeshServer
from tests.peers import SANDBOX_SHARED_KEY, auth_headers

Start = Callable[..., LocalMeshServer]


def send(server: LocalMeshServer, data: bytes = b"payload") -> str:
    answer = requests.post(
        f"{server.url}/messageexchange/X26ABC1/outbox",
        headers=auth_headers("X26ABC1", **{"mex-To": "X26ABC2", "mex-WorkflowID": "TEST_WORKFLOW"}),
        data=data,
        timeout=10,
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["message_id"])


def test_status_fault_on_the_nth_matching_request_with_retry_after(
    threaded_server: Start, caplog: pytest.LogCaptureFixture
) -> None:
    plan = FaultPlan((Fault("status", route="inbox", nth=2, times=2, status=429, retry_after=3),))
    server = threaded_server(rules="sandbox", faults=plan)
    url = f"{server.url}/messageexchange/X26ABC2/inbox"
    with caplog.at_level(logging.WARNING, logger="meshpipe.server.faults"):
        answers = [requests.get(url, headers=auth_headers("X26ABC2"), timeout=10) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 429, 429, 200]
    assert answers[1].headers["Retry-After"] == "3"
    assert [entry["status"] for entry in server.fault_log] == [429, 429]
    assert sum("injected fault" in r.message for r in caplog.records) == 2
    # other routes do not count towards the rule
    assert requests.get(f"{server.url}/messageexchange/_ping", timeout=10).status_code == 200


def test_mesh_client_retries_a_503_on_a_later_chunk(threaded_server: Start) -> None:
    plan = FaultPlan((Fault("status", route="send_chunk", chunk=2, status=503, retry_after=0),))
    server = threaded_server(rules="sandbox", faults=plan)
    data = b"0123456789" * 250
    with MeshClient(
        server.url,
        "X26ABC1",
        "password",
        shared_key=SANDBOX_SHARED_KEY.encode(),
        max_chunk_size=1000,
    ) as mesh:
        message_id = mesh.send_message("X26ABC2", data, workflow_id="TEST_WORKFLOW")
    assert server.fault_log == [
        {
            "fault": "status",
            "rule": 0,
            "route": "send_chunk",
            "chunk": 2,
            "status": 503,
            "path": f"/messageexchange/X26ABC1/outbox/{message_id}/2",
        }
    ]
    with MeshClient(
        server.url, "X26ABC2", "password", shared_key=SANDBOX_SHARED_KEY.encode()
    ) as mesh:
        message = mesh.retrieve_message(message_id)
        assert message.read() == data
        message.close()


def test_reset_during_upload_stores_nothing(threaded_server: Start) -> None:
    plan = FaultPlan((Fault("reset", route="send", after_bytes=100_000),))
    server = threaded_server(rules="sandbox", faults=plan)
    with pytest.raises(requests.ConnectionError):
        send(server, b"x" * 1_000_000)
    assert server.fault_log[0]["after_bytes"] == 100_000
    inbox = requests.get(
        f"{server.url}/messageexchange/X26ABC2/inbox", headers=auth_headers("X26ABC2"), timeout=10
    )
    assert inbox.json()["messages"] == []
    message_id = send(server, b"x" * 1_000_000)  # the rule fired once; the retry goes through
    assert server.message(message_id) is not None


def test_reset_during_download_and_flipped_byte(threaded_server: Start) -> None:
    plan = FaultPlan(
        (
            Fault("reset", route="download", nth=1, after_bytes=5000),
            Fault("flip", route="download", nth=2),
        ),
        seed=42,
    )
    server = threaded_server(rules="sandbox", faults=plan)
    data = bytes(range(256)) * 100
    message_id = send(server, data)
    url = f"{server.url}/messageexchange/X26ABC2/inbox/{message_id}"
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(url, headers=auth_headers("X26ABC2"), timeout=10).content  # noqa: B018
    flipped = requests.get(url, headers=auth_headers("X26ABC2"), timeout=10).content
    differences = [i for i, (a, b) in enumerate(zip(flipped, data, strict=True)) if a != b]
    assert len(differences) == 1
    assert flipped[differences[0]] == data[differences[0]] ^ 0xFF
    assert server.fault_log[1]["offset"] == differences[0]
    assert requests.get(url, headers=auth_headers("X26ABC2"), timeout=10).content == data
    # the same plan and seed flip the same byte
    again = threaded_server(rules="sandbox", faults=plan)
    second_id = send(again, data)
    second_url = f"{again.url}/messageexchange/X26ABC2/inbox/{second_id}"
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(second_url, headers=auth_headers("X26ABC2"), timeout=10).content  # noqa: B018
    requests.get(second_url, headers=auth_headers("X26ABC2"), timeout=10)
    assert again.fault_log[1]["offset"] == server.fault_log[1]["offset"]


@pytest.mark.parametrize("applied", [False, True])
def test_lost_acknowledgement(threaded_server: Start, applied: bool) -> None:
    server = threaded_server(
        rules="sandbox", faults=FaultPlan((Fault("lost_ack", route="ack", applied=applied),))
    )
    message_id = send(server)
    ack = f"{server.url}/messageexchange/X26ABC2/inbox/{message_id}/status/acknowledged"
    with pytest.raises(requests.ConnectionError):
        requests.put(ack, headers=auth_headers("X26ABC2"), timeout=10)
    inbox = requests.get(
        f"{server.url}/messageexchange/X26ABC2/inbox", headers=auth_headers("X26ABC2"), timeout=10
    )
    assert (message_id in inbox.json()["messages"]) is not applied
    assert requests.put(ack, headers=auth_headers("X26ABC2"), timeout=10).status_code == 200
    assert server.fault_log == [
        {
            "fault": "lost_ack",
            "rule": 0,
            "route": "ack",
            "message_id": message_id,
            "applied": applied,
        }
    ]


def test_stall_before_a_request_and_mid_download(threaded_server: Start) -> None:
    plan = FaultPlan(
        (
            Fault("stall", route="handshake", seconds=0.05),
            Fault("stall", route="download", seconds=0.05, after_bytes=10),
        )
    )
    server = threaded_server(rules="sandbox", faults=plan)
    handshake = requests.post(
        f"{server.url}/messageexchange/X26ABC1",
        headers=auth_headers(
            "X26ABC1", **{"mex-ClientVersion": "t", "mex-OSName": "l", "mex-OSVersion": "1"}
        ),
        timeout=10,
    )
    assert handshake.status_code == 200
    message_id = send(server, b"stalled data")
    download = requests.get(
        f"{server.url}/messageexchange/X26ABC2/inbox/{message_id}",
        headers=auth_headers("X26ABC2"),
        timeout=10,
    )
    assert download.content == b"stalled data"
    assert [(e["fault"], e["route"]) for e in server.fault_log] == [
        ("stall", "handshake"),
        ("stall", "download"),
    ]


def test_plan_from_json_file_and_admin_api(threaded_server: Start, tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(
        json.dumps({"seed": 3, "faults": [{"kind": "status", "route": "inbox", "status": 500}]})
    )
    plan = FaultPlan.load(path)
    assert plan.seed == 3 and plan.faults[0].status == 500
    server = threaded_server(rules="sandbox")
    put = requests.put(
        f"{server.url}/messageexchange/admin/faults", json=plan.to_json(), timeout=10
    )
    assert put.status_code == 200
    inbox = requests.get(
        f"{server.url}/messageexchange/X26ABC2/inbox", headers=auth_headers("X26ABC2"), timeout=10
    )
    assert inbox.status_code == 500
    state = requests.get(f"{server.url}/messageexchange/admin/faults", timeout=10).json()
    assert state["log"][0]["status"] == 500
    with pytest.raises(FaultPlanError):
        FaultPlan.from_json({"faults": [{"kind": "explode"}]})
    with pytest.raises(FaultPlanError):
        FaultPlan.from_json({"faults": [{"kind": "flip", "route": "send"}]})
    bad = requests.put(
        f"{server.url}/messageexchange/admin/faults",
        json={"faults": [{"kind": "nope"}]},
        timeout=10,
    )
    assert bad.status_code == 400


def test_stall_mid_upload(threaded_server: Start) -> None:
    server = threaded_server(
        rules="sandbox",
        faults=FaultPlan((Fault("stall", route="send", seconds=0.05, after_bytes=1000),)),
    )
    message_id = send(server, b"s" * 5000)
    assert server.message(message_id) is not None
    assert server.fault_log[0]["route"] == "upload" and server.fault_log[0]["after_bytes"] == 1000
