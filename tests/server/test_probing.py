"""What a caller probing the server learns and what it can make the server do: other
mailboxes' message ids, malformed paging parameters, absurd chunk counts, replayed tokens."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from meshpipe.server import LocalMeshServer
from meshpipe.server.rules import RuleSet, most_chunks
from meshpipe.units import MAX_FILE_SIZE, MIN_CHUNK_SIZE
from tests.peers import token
from tests.server.test_rules import V2, send

Start = Callable[..., LocalMeshServer]


def get(server: LocalMeshServer, path: str, mailbox: str = "X26ABC2") -> requests.Response:
    headers = {"Authorization": token(mailbox), "Accept": V2}
    return requests.get(
        f"{server.url}/messageexchange/{mailbox}/{path}", headers=headers, timeout=10
    )


def test_strict_rules_answer_alike_for_unknown_and_other_mailboxes_messages(
    threaded_server: Start,
) -> None:
    """A mailbox that may not see a message gets the answer an unknown id gets: the status and
    body do not say whether the id exists (the sandbox answers 403 for one, 404 for the other,
    which its rules keep)."""
    server = threaded_server(rules="strict", min_chunk_size=1)
    sent = send(server, b"secret", **{"mex-Chunk-Range": "1:2"})
    message_id = sent.json()["message_id"]
    whole = send(server, b"visible")
    visible = whole.json()["message_id"]
    unknown = "F" * 32
    for path in ("inbox/{}", "inbox/{}/1", "inbox/{}/status/acknowledged"):
        method = requests.put if "status" in path else requests.get
        answers = []
        for target in (visible, unknown):
            answers.append(
                method(
                    f"{server.url}/messageexchange/X26ABC3/{path.format(target)}",
                    headers={"Authorization": token("X26ABC3"), "Accept": V2},
                    timeout=10,
                )
            )
        assert [a.status_code for a in answers] == [404, 404], path
        assert answers[0].json() == answers[1].json(), path
    # the same for uploading a chunk to another sender's message
    chunk_answers = [
        requests.post(
            f"{server.url}/messageexchange/X26ABC2/outbox/{target}/2",
            headers={"Authorization": token("X26ABC2"), "Accept": V2, "mex-Chunk-Range": "2:2"},
            data=b"x",
            timeout=10,
        )
        for target in (message_id, unknown)
    ]
    assert [a.status_code for a in chunk_answers] == [404, 404]
    assert chunk_answers[0].json() == chunk_answers[1].json()
    # the recipient itself still downloads it
    assert get(server, f"inbox/{visible}").content == b"visible"
    lenient = threaded_server(rules="sandbox")
    theirs = send(lenient, b"x").json()["message_id"]
    assert get(lenient, f"inbox/{theirs}", "X26ABC3").status_code == 403  # as mesh-sandbox


@pytest.mark.parametrize("rules", ["strict", "sandbox"])
def test_malformed_paging_parameters_are_400_with_a_reason(
    threaded_server: Start, rules: str
) -> None:
    server = threaded_server(rules=rules)
    bad_cursor = get(server, "inbox?continue_from=" + "%21" * 30)
    assert bad_cursor.status_code == 400
    problem = bad_cursor.json()["detail"][0]
    assert problem["loc"] == ["query", "continue_from"] and "links.next" in problem["msg"]
    rich_cursor = get(server, "inbox/rich?continue_from=" + "A" * 30)
    assert rich_cursor.status_code == 400
    for value in ("yesterday", "2024-13-45T00:00:00", "9999-12-31T23:59:59-14:00"):
        bad_time = get(server, f"inbox/rich?start_time={value}")
        assert bad_time.status_code == 400, value
        problem = bad_time.json()["detail"][0]
        assert problem["loc"] == ["query", "start_time"] and "ISO 8601" in problem["msg"]
    assert get(server, "inbox/rich?start_time=2024-01-31T09:30:00Z").status_code == 200


def test_the_chunk_count_is_bounded_by_the_rules(threaded_server: Start) -> None:
    assert most_chunks(MAX_FILE_SIZE, MIN_CHUNK_SIZE) == 9537
    assert RuleSet.strict().max_chunks == 9537
    assert RuleSet.strict(min_chunk_size=1000, max_message_size=20_000).max_chunks == 21
    assert RuleSet.sandbox().max_chunks == 100_000
    strict = threaded_server(rules="strict", min_chunk_size=1000, max_message_size=20_000)
    for server in (strict, threaded_server(rules="sandbox")):
        rules = server.config.rules
        limit = server.config.rule_set.max_chunks
        refused = send(server, b"x" * 1000, **{"mex-Chunk-Range": "1:99999999999"})
        assert refused.status_code == 417, rules
        detail = refused.json()["detail"][0]
        assert detail["code"] == "InvalidHeaderChunks"
        assert f"at most {limit} chunks" in detail["msg"] and "99999999999" in detail["msg"]
        over = send(server, b"x" * 1000, **{"mex-Chunk-Range": f"1:{limit + 1}"})
        assert over.status_code == 417
        assert send(server, b"x" * 1000, **{"mex-Chunk-Range": f"1:{limit}"}).status_code == 202


def test_a_replayed_token_is_refused_after_a_restart(
    tmp_path: Path, threaded_server: Start
) -> None:
    settings = {"rules": "strict", "store": "dir", "data_dir": tmp_path}
    once = token("X26ABC1")
    inbox = "/messageexchange/X26ABC1/inbox"
    first = threaded_server(**settings)
    assert requests.get(first.url + inbox, headers={"Authorization": once}, timeout=10).ok
    replay = requests.get(first.url + inbox, headers={"Authorization": once}, timeout=10)
    assert replay.status_code == 403
    restarted = threaded_server(**settings)  # a second server on the same data directory
    again = requests.get(restarted.url + inbox, headers={"Authorization": once}, timeout=10)
    assert again.status_code == 403
    assert again.json()["errorDescription"] == "Error Duplicated Authentication Token"
    fresh = requests.get(restarted.url + inbox, headers={"Authorization": token("X26ABC1")})
    assert fresh.status_code == 200
    journal = tmp_path / ".meshpipe-used-tokens"
    lines = journal.read_text().splitlines()
    assert len(lines) == 2 and all(len(json.loads(line)) == 4 for line in lines)
    assert "password" not in journal.read_text()
