"""MESH error answers → :class:`meshpipe.errors.MeshHTTPError`: the body parsed whatever its
shape, then classified by one table of (status, MESH code, description words) → kind.

Body shapes: v1 ``{messageID, errorEvent, errorCode, errorDescription}``; v2 ``{message_id,
internal_id, detail: [{event, code, msg}]}``; validation ``{detail: [{loc, msg, type}]}``; bare
``{internal_id, message}``; anything else (XML, HTML, text) becomes a short description.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from meshpipe.errors import (
    TRANSIENT_STATUSES,
    MeshAuthenticationError,
    MeshHTTPError,
    MeshMessageLockedError,
    MeshNotFoundError,
    MeshUnknownRecipientError,
)


@dataclass(frozen=True, slots=True)
class ErrorFields:
    """What an error body said (each None when it did not say)."""

    code: str | None = None
    event: str | None = None
    description: str | None = None
    message_id: str | None = None
    internal_id: str | None = None


@dataclass(frozen=True, slots=True)
class _Rule:
    """A kind for ``statuses`` (None: any 5xx), when the MESH code is one of ``codes``, or the
    description holds one of ``words``, or is empty and ``when_empty``; a rule with none of
    these conditions matches every answer with its status."""

    statuses: frozenset[int] | None
    kind: str
    codes: frozenset[str] = frozenset()
    words: tuple[str, ...] = ()
    when_empty: bool = False

    def matches(self, status: int, code: str | None, description: str) -> bool:
        if self.statuses is None and status < 500:
            return False
        if self.statuses is not None and status not in self.statuses:
            return False
        if not (self.codes or self.words or self.when_empty):
            return True
        low = description.lower()
        return (
            code in self.codes
            or any(word in low for word in self.words)
            or (self.when_empty and not low)
        )


def _rule(statuses: set[int] | None, kind: str, **conditions: Any) -> _Rule:
    return _Rule(None if statuses is None else frozenset(statuses), kind, **conditions)


#: First match wins; the last rules are the catch-alls.
RULES: Final[tuple[_Rule, ...]] = (
    _rule({400}, "missing_header", codes=frozenset({"08"}), words=("workflowid",)),
    _rule({400}, "bad_request"),
    _rule({401}, "authentication"),
    _rule(
        {403},
        "authentication",
        codes=frozenset({"EPL-151"}),
        words=(
            "authorization",
            "authentication",
            "mailbox id does not match token",
            "no mailbox matched",
            "inactive mailbox",
        ),
        when_empty=True,
    ),
    _rule({403}, "forbidden"),
    _rule({404}, "not_found"),
    _rule({406}, "chunk_range"),
    _rule({410}, "gone"),
    _rule({417}, "unknown_recipient", codes=frozenset({"12"})),
    _rule({417}, "workflow", codes=frozenset({"16", "17"})),
    _rule({417}, "missing_data", codes=frozenset({"02"})),
    _rule({417}, "missing_header", codes=frozenset({"08"})),
    _rule({417}, "chunk_range", codes=frozenset({"InvalidHeaderChunks"}), words=("chunk",)),
    _rule({417}, "rejected"),
    _rule({422}, "unsupported_encoding"),
    _rule({423}, "locked"),
    _rule({429}, "rate_limited"),
    _rule(set(TRANSIENT_STATUSES - {429}), "transient"),
    _rule(None, "server_error"),
)

#: The sentence that says what to do, by kind.
HINTS: Final[Mapping[str, str]] = {
    "bad_request": "check the mex- headers and parameters named in the error",
    "missing_header": "give the recipient mailbox (--to) and the workflow id (--workflow-id)",
    "authentication": "check the mailbox id, password and shared key for this environment",
    "forbidden": "check the message id belongs to this mailbox",
    "not_found": "check the message id and chunk number",
    "chunk_range": "send chunk numbers 1..N with mex-Chunk-Range n:N",
    "gone": "check its status with `meshpipe track`; the sender may need to send it again",
    "rejected": "the MESH error code says what to change",
    "unknown_recipient": (
        "check the recipient mailbox id (use `meshpipe lookup ODS WORKFLOW` to find it)"
    ),
    "workflow": "check the workflow id; the mailbox must be registered for it",
    "missing_data": "send a non-empty body",
    "unsupported_encoding": "send gzip or no Content-Encoding",
    "locked": "check the message with `meshpipe track` before sending more chunks",
    "rate_limited": "try again later",
    "transient": "try again later",
    "server_error": (
        "try again later; if it persists, contact the MESH service desk with the internal id"
    ),
}

#: The kinds a caller catches by class; every other kind is a plain MeshHTTPError.
CLASSES: Final[Mapping[str, type[MeshHTTPError]]] = {
    "authentication": MeshAuthenticationError,
    "unknown_recipient": MeshUnknownRecipientError,
    "not_found": MeshNotFoundError,
    "locked": MeshMessageLockedError,
}


def classify(status: int, code: str | None, description: str) -> str:
    """The kind of an error answer (``"other"`` when no rule matches)."""
    normalised = description.replace("-", "").replace("_", "")
    for rule in RULES:
        if rule.matches(status, code, description) or (
            rule.words and rule.matches(status, code, normalised)
        ):
            return rule.kind
    return "other"


def _first_text(*values: object) -> str | None:
    for value in values:
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


def _from_detail(detail: list[Any]) -> tuple[str | None, str | None, str | None]:
    """(code, event, description) from a v2 or validation ``detail`` list."""
    first = detail[0]
    description = _first_text(first.get("msg"), first.get("message"))
    location = first.get("loc")
    if isinstance(location, list | tuple) and location and description:
        description = f"{description}: {'.'.join(str(part) for part in location)}"
    return _first_text(first.get("code")), _first_text(first.get("event")), description


def parse_error_body(body: bytes) -> ErrorFields:
    """The MESH error fields of a response body, whatever its shape (see the module doc)."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        text = body[:300].decode("utf-8", "replace").strip()
        return ErrorFields(description=" ".join(text.split())[:200] or None)
    detail = data.get("detail")
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        code, event, description = _from_detail(detail)
    elif isinstance(detail, str):
        code, event, description = None, None, detail
    else:
        code = _first_text(data.get("errorCode"))
        event = _first_text(data.get("errorEvent"))
        description = _first_text(
            data.get("errorDescription"), data.get("message"), data.get("error")
        )
    return ErrorFields(
        code=code,
        event=event,
        description=description,
        message_id=_first_text(data.get("messageID"), data.get("message_id")),
        internal_id=_first_text(data.get("internal_id"), data.get("internalID")),
    )


def mesh_error_from_response(
    status: int,
    body: bytes,
    *,
    method: str,
    path: str,
    message_id: str | None = None,
    retry_after: float | None = None,
) -> MeshHTTPError:
    """The MeshHTTPError for an error response (``path`` must hold no secret); ``retry_after``
    is the server's Retry-After, in seconds, if it sent one."""
    fields = parse_error_body(body)
    description = fields.description or ""
    kind = classify(status, fields.code, description)
    message_id = fields.message_id or message_id
    text = f"MESH answered {status} to {method} {path}"
    if fields.code or fields.event:
        text += f" (code {fields.code or '?'}, {fields.event or '?'})"
    if description:
        text += f": {description}"
    if message_id:
        text += f" [message {message_id}]"
    if kind in HINTS:
        text += f"; {HINTS[kind]}"
    return CLASSES.get(kind, MeshHTTPError)(
        text,
        status=status,
        kind=kind,
        code=fields.code,
        event=fields.event,
        description=fields.description,
        message_id=message_id,
        internal_id=fields.internal_id,
        method=method,
        path=path,
        retry_after=retry_after,
    )
