"""Refusals: the answers MESH gives when it will not do what a request asks, as data.

A :class:`Refusal` is raised by whatever layer finds the broken rule (the authenticator, the
mailroom, a handler parsing its request) and carries the HTTP status and a key into
:data:`CATALOGUE`, which gives the MESH event, code and description. One middleware renders
it in the API version the request asked for. Codes are MESH's (the DTS codes, e.g. 12
"Unregistered to address") plus the names mesh-sandbox gives its own (``InvalidHeaderChunks``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from meshpipe.server.negotiation import json_response

#: How a refusal's body is shaped: ``mesh`` v1 ``{errorEvent, errorCode, errorDescription}`` /
#: v2 ``{detail: [{event, code, msg}]}``; ``plain`` the same with an empty event and code (the
#: sandbox's wording of authentication, 403 and 404 errors); ``internal`` the sandbox's generic
#: ``{"message": ...}`` (406, 423, 500); ``validation`` a request-validation list
#: ``{"detail": [{type, loc, msg, ...}]}``.
Shape = Literal["mesh", "plain", "internal", "validation"]


@dataclass(frozen=True, slots=True)
class Entry:
    shape: Shape
    event: str = ""
    code: str = ""
    description: str = ""


INTERNAL_ERROR_TEXT = "An internal error occurred.\n\nPlease contact support."

CATALOGUE: dict[str, Entry] = {
    # sending
    "malformed_control_file": Entry("mesh", "TRANSFER", "06", "MalformedControlFile"),
    "missing_to": Entry("mesh", "SEND", "08", "TO_DTS missing"),
    "unregistered_recipient": Entry("mesh", "SEND", "12", "Unregistered to address"),
    "not_registered_for_workflow": Entry(
        "mesh", "SEND", "17", "Workflow ID not registered for mailbox"
    ),
    "missing_data_file": Entry("mesh", "COLLECT", "02", "Data file is missing or inaccessible."),
    "invalid_chunks": Entry(
        "mesh",
        "SEND",
        "InvalidHeaderChunks",
        "Invalid chunk values sent in mex-Chunk-Range header",
    ),
    "too_many_chunks": Entry(
        "mesh",
        "SEND",
        "InvalidHeaderChunks",
        "A message may have at most {maximum} chunks; mex-Chunk-Range asked for {total}",
    ),
    "unsupported_encoding": Entry(
        "mesh", "SEND", "UnsupportedContentEncoding", "Unsupported content encoding"
    ),
    "encoding_changed": Entry("plain", description="cannot change content encoding"),
    "invalid_checksum": Entry("mesh", "SEND", "Invalid checksum", "Invalid checksum"),
    "invalid_file_format": Entry(
        "mesh", "SEND", "Invalid file format", "File Level Error (file not formed correctly)"
    ),
    "chunk_too_small": Entry(
        "mesh",
        "SEND",
        "ChunkTooSmall",
        "Every chunk but the last must be at least {minimum} bytes once decompressed; "
        "chunk {number} was {size}",
    ),
    "request_too_large": Entry(
        "mesh",
        "SEND",
        "RequestTooLarge",
        "A request body must be below {maximum} bytes; send smaller chunks",
    ),
    "chunk_decodes_too_large": Entry(
        "mesh",
        "SEND",
        "ChunkDecodesTooLarge",
        "A chunk must decode to at most {maximum} bytes; send smaller chunks",
    ),
    "message_too_large": Entry(
        "mesh", "SEND", "MessageTooLarge", "The message exceeds the {maximum} byte limit"
    ),
    # receiving
    "does_not_exist": Entry("mesh", "RECEIVE", "20", "Message does not exist"),
    "message_gone": Entry(
        "mesh", "SEND", "Message already accepted", "Message no longer available for download"
    ),
    # authentication
    "no_mailbox": Entry("mesh", "SEND", "EPL-151", "No mailbox matched"),
    "token_unreadable": Entry("plain", description="Error reading from Authorization header"),
    "token_invalid": Entry("plain", description="Invalid Authentication Token"),
    "token_mailbox_mismatch": Entry("plain", description="Mailbox id does not match token"),
    "token_replayed": Entry("plain", description="Error Duplicated Authentication Token"),
    # plain HTTP answers
    "accept_header": Entry("plain", description="Accept header api format incorrect"),
    "forbidden": Entry("plain", description="Forbidden"),
    "not_found": Entry("plain", description="Not Found"),
    "multiple_choices": Entry("plain", description="Multiple Choices"),
    "mailbox_does_not_exist": Entry("plain", description="mailbox does not exist"),
    "internal": Entry("internal", description=INTERNAL_ERROR_TEXT),
    # meshpipe's admin API and connection limits
    "admin_token": Entry(
        "plain",
        description="The admin API needs the header 'Authorization: Bearer <admin token>'",
    ),
    "invalid_request": Entry("validation"),
}


class Refusal(Exception):
    """MESH refuses the request: answer ``status`` with the catalogue entry ``key``.

    ``details`` fill the description's ``{placeholders}``; ``problems`` are the items of a
    ``validation`` refusal (see :func:`missing`, :func:`too_long`, ...), ``body`` the request body
    echoed with them; ``headers`` go on the response (e.g. ``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        key: str,
        *,
        message_id: str | None = None,
        problems: tuple[dict[str, Any], ...] = (),
        body: Any = None,
        headers: dict[str, str] | None = None,
        **details: Any,
    ) -> None:
        entry = CATALOGUE[key]  # a KeyError here is a programming error, caught by the tests
        super().__init__(status, key)
        self.status = status
        self.key = key
        self.entry = entry
        self.message_id = message_id
        self.problems = problems
        self.body = body
        self.headers = headers
        self.details = details

    @property
    def event(self) -> str:
        return self.entry.event

    @property
    def code(self) -> str:
        return self.entry.code

    @property
    def description(self) -> str:
        text = self.entry.description
        return text.format(**self.details) if self.details else text

    def __str__(self) -> str:
        return f"{self.status} {self.key}: {self.description}"

    def render(self, version: int) -> web.Response:
        """The response, in MESH API ``version``'s shape where the entry has versions."""
        shape = self.entry.shape
        if shape == "internal":
            return json_response(
                {"message": self.description}, status=self.status, headers=self.headers
            )
        if shape == "validation":
            content: dict[str, Any] = {"detail": list(self.problems)}
            if self.body is not None:
                content["body"] = self.body
            return json_response(content, status=self.status, headers=self.headers)
        body: dict[str, Any]
        if version < 2:
            body = {
                "errorEvent": self.event,
                "errorCode": self.code,
                "errorDescription": self.description,
            }
            if self.message_id:
                body = {"messageID": self.message_id, **body}
        else:
            body = {"detail": [{"event": self.event, "code": self.code, "msg": self.description}]}
            if self.message_id:
                body = {"message_id": self.message_id, **body}
        return json_response(body, status=self.status, version=version, headers=self.headers)


def invalid(*problems: dict[str, Any], body: Any = None) -> Refusal:
    """400: the request does not validate (the problems, as the sandbox lists them)."""
    return Refusal(400, "invalid_request", problems=problems, body=body)


# -- validation problems, in the shape the sandbox's request validation lists them ------------


def _problem(
    kind: str, location: str, name: str, text: str, given: Any = None, **context: Any
) -> dict[str, Any]:
    item: dict[str, Any] = {"type": kind, "loc": [location, name], "msg": text}
    if given is not None:
        item["input"] = given
    if context:
        item["ctx"] = context
    return item


def missing(location: str, name: str, given: Any = None) -> dict[str, Any]:
    return _problem("missing", location, name, "Field required", given)


def too_long(location: str, name: str, value: str, longest: int) -> dict[str, Any]:
    text = f"String should have at most {longest} characters"
    return _problem("string_too_long", location, name, text, value, max_length=longest)


def too_short(location: str, name: str, value: str, shortest: int) -> dict[str, Any]:
    text = f"String should have at least {shortest} characters"
    return _problem("string_too_short", location, name, text, value, min_length=shortest)


def out_of_range(location: str, name: str, value: str, low: int, high: int) -> dict[str, Any]:
    try:
        number = int(value)
    except ValueError:
        text = "Input should be a valid integer, unable to parse string as an integer"
        return _problem("int_parsing", location, name, text, value)
    if number < low:
        text = f"Input should be greater than or equal to {low}"
        return _problem("greater_than_equal", location, name, text, value, ge=low)
    text = f"Input should be less than or equal to {high}"
    return _problem("less_than_equal", location, name, text, value, le=high)


def value_error(location: str, name: str, text: str) -> dict[str, Any]:
    return _problem("value_error", location, name, text)
