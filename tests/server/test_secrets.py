"""No password or shared key in the server's logs, error bodies or reprs."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import requests

from meshpipe.auth import make_token
from meshpipe.server import LocalMeshServer, Mailbox, ServerConfig

SECRET_KEY = "SharedSecret-Key-123"
SECRET_PASSWORD = "Mailbox-Password-456"


def test_reprs_hide_secrets() -> None:
    config = ServerConfig(
        shared_key=SECRET_KEY, mailboxes=(Mailbox("A1", password=SECRET_PASSWORD),)
    )
    assert SECRET_KEY not in repr(config) and SECRET_PASSWORD not in repr(config)
    assert SECRET_PASSWORD not in repr(config.mailboxes[0])
    server = LocalMeshServer(config)
    assert SECRET_KEY not in repr(server)


def test_logs_and_errors_hide_secrets(
    threaded_server: Callable[..., LocalMeshServer], caplog: pytest.LogCaptureFixture
) -> None:
    mailboxes = (
        Mailbox("X26ABC1", password=SECRET_PASSWORD),
        Mailbox("X26ABC2", password=SECRET_PASSWORD),
    )
    with caplog.at_level(logging.DEBUG):
        server = threaded_server(shared_key=SECRET_KEY, mailboxes=mailboxes, rules="sandbox")
        inbox = f"{server.url}/messageexchange/X26ABC1/inbox"
        answers = [
            requests.get(
                inbox,
                headers={"Authorization": make_token("X26ABC1", "wrong", SECRET_KEY)},
                timeout=10,
            ),
            requests.get(
                inbox,
                headers={"Authorization": make_token("X26ABC1", SECRET_PASSWORD, "wrong")},
                timeout=10,
            ),
            requests.get(inbox, headers={"Authorization": "garbage"}, timeout=10),
        ]
        good = make_token("X26ABC1", SECRET_PASSWORD, SECRET_KEY)
        sent = requests.post(
            f"{server.url}/messageexchange/X26ABC1/outbox",
            headers={"Authorization": good, "mex-To": "NOBODY", "mex-WorkflowID": "W"},
            data=b"x",
            timeout=10,
        )
        answers.append(sent)
    assert [a.status_code for a in answers] == [403, 403, 403, 417]
    for answer in answers:
        assert SECRET_KEY not in answer.text and SECRET_PASSWORD not in answer.text
    server_records = [r for r in caplog.records if r.name.startswith("meshpipe.server")]
    logged = "\n".join(record.getMessage() for record in server_records)
    # The check can fail: the server logged its start and each of the four refusals.
    assert "meshpipe MESH server listening on" in logged
    assert logged.count("refused ") == 4, logged
    assert "token_invalid" in logged and "unregistered_recipient" in logged
    assert SECRET_KEY not in logged and SECRET_PASSWORD not in logged
    assert good.split(":")[-1] not in logged  # nor a token's HMAC
