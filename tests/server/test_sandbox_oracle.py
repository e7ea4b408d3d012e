"""Differential property tests: meshpipe's parsing rules against mesh-sandbox's own functions
(imported from the installed package as oracles, never copied)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshpipe.server.negotiation import AcceptHeaderError, api_version
from meshpipe.server.routes import chunk_range_for, workflow_predicate

sandbox_inbox = pytest.importorskip("mesh_sandbox.handlers.inbox")
sandbox_outbox = pytest.importorskip("mesh_sandbox.handlers.outbox")
sandbox_dependencies = pytest.importorskip("mesh_sandbox.dependencies")
sandbox_message = pytest.importorskip("mesh_sandbox.models.message")

words = st.text(alphabet="AB_*!", min_size=0, max_size=6)


@given(words, st.lists(st.text(alphabet="AB_", max_size=5), min_size=1, max_size=6))
def test_workflow_filter_matches_the_sandbox(expression: str, workflow_ids: list[str]) -> None:
    theirs = sandbox_inbox.InboxHandler._get_workflow_filter(expression)
    ours = workflow_predicate(expression)
    assert (theirs is None) == (ours is None)
    if ours is None:
        return
    for workflow_id in workflow_ids:
        message = sandbox_message.Message(message_id="X", workflow_id=workflow_id)
        assert ours(workflow_id) == theirs(message), (expression, workflow_id)


chunk_ranges = st.one_of(
    st.just(""),
    st.from_regex(r"\A-?\d{1,2}:-?\d{1,2}\Z"),
    st.text(alphabet="0123456789: x", max_size=6),
)


@given(chunk_ranges, st.integers(1, 12))
def test_chunk_range_rules_match_the_sandbox(value: str, url_number: int) -> None:
    error, number, total = sandbox_outbox.get_chunk_range(value, url_number)
    ours = chunk_range_for(value, url_number)
    if error:
        assert ours is None, (value, url_number)
    else:
        assert ours == (number, total), (value, url_number)


accepts = st.one_of(
    st.sampled_from(
        [
            "",
            "application/json",
            "application/vnd.mesh.v1+json",
            "application/vnd.mesh.v2+json",
            "application/vnd.mesh.v3+json",
            "application/json, application/vnd.mesh.v2+json",
            "application/vnd.mesh.v2+json; q=0.9",
            "*/*",
            "application/vnd.mesh.vx+json",
        ]
    ),
    st.text(alphabet="avnd.mesh+json;, 12", max_size=30),
)


@given(accepts)
def test_accept_header_versions_match_the_sandbox(accept: str) -> None:
    theirs = sandbox_dependencies.parse_accept_header(accept)
    try:
        ours: int | None = api_version(accept)
    except AcceptHeaderError:
        ours = None
    assert ours == theirs, accept
