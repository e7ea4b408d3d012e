"""MESH error bodies (v1, v2, validation, bare, non-JSON) become specific exceptions."""

from __future__ import annotations

import json

import pytest

from meshpipe import errors
from meshpipe.error_body import mesh_error_from_response
from meshpipe.errors import MeshHTTPError, MeshpipeError


def error_for(status: int, body: object) -> MeshHTTPError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return mesh_error_from_response(status, raw, method="POST", path="/messageexchange/X/outbox")


def test_v1_body() -> None:
    error = error_for(
        417,
        {
            "messageID": "20200529155357895317_3573F8",
            "errorEvent": "SEND",
            "errorCode": "12",
            "errorDescription": "Unregistered to address",
        },
    )
    assert isinstance(error, errors.MeshUnknownRecipientError)
    assert isinstance(error, MeshpipeError)
    assert (error.status, error.code, error.event) == (417, "12", "SEND")
    assert error.message_id == "20200529155357895317_3573F8"
    assert "Unregistered to address" in str(error) and "meshpipe lookup" in str(error)


def test_v2_body() -> None:
    error = error_for(
        417,
        {
            "message_id": "ABC",
            "internal_id": "I1",
            "detail": [{"event": "SEND", "code": "17", "msg": "Workflow ID not registered"}],
        },
    )
    assert error.kind == "workflow"
    assert (error.code, error.description, error.internal_id) == (
        "17",
        "Workflow ID not registered",
        "I1",
    )


def test_validation_body() -> None:
    body = {
        "detail": [
            {"type": "missing", "loc": ["header", "mex-workflowid"], "msg": "Field required"}
        ]
    }
    error = error_for(400, body)
    assert error.kind == "missing_header"
    assert "header.mex-workflowid" in str(error)


def test_bare_internal_error() -> None:
    error = error_for(423, {"internal_id": "X", "message": "An internal error occurred."})
    assert isinstance(error, errors.MeshMessageLockedError)
    assert error.internal_id == "X"


@pytest.mark.parametrize(
    "body",
    [
        b"<soap:Envelope><soap:Body>Internal failure</soap:Body></soap:Envelope>",
        b"<html><body>502 Bad Gateway</body></html>",
        b"",
        b"\xff\xfe not utf-8",
    ],
)
def test_non_json_bodies(body: bytes) -> None:
    error = error_for(502, body)
    assert error.kind == "transient"
    assert error.retryable
    assert error.status == 502


@pytest.mark.parametrize(
    ("status", "code", "kind", "cls"),
    [
        (400, None, "bad_request", MeshHTTPError),
        (403, None, "authentication", errors.MeshAuthenticationError),
        (404, "20", "not_found", errors.MeshNotFoundError),
        (406, None, "chunk_range", MeshHTTPError),
        (410, None, "gone", MeshHTTPError),
        (417, "02", "missing_data", MeshHTTPError),
        (417, "12", "unknown_recipient", errors.MeshUnknownRecipientError),
        (417, "InvalidHeaderChunks", "chunk_range", MeshHTTPError),
        (422, None, "unsupported_encoding", MeshHTTPError),
        (423, None, "locked", errors.MeshMessageLockedError),
        (429, None, "rate_limited", MeshHTTPError),
        (500, None, "server_error", MeshHTTPError),
        (503, None, "transient", MeshHTTPError),
    ],
)
def test_status_mapping(status: int, code: str | None, kind: str, cls: type[MeshHTTPError]) -> None:
    body = {"detail": [{"event": "SEND", "code": code, "msg": "x"}]} if code else {}
    error = error_for(status, body)
    assert type(error) is cls
    assert error.kind == kind
    assert error.retryable is (status >= 500 or status in (408, 429))


def test_auth_descriptions() -> None:
    auth = error_for(403, {"errorDescription": "Invalid Authentication Token"})
    assert isinstance(auth, errors.MeshAuthenticationError)
    assert "password and shared key" in str(auth)
    other = error_for(403, {"errorDescription": "not your message"})
    assert type(other) is MeshHTTPError and other.kind == "forbidden"
