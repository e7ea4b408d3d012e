"""Every exception meshpipe raises, in one hierarchy under MeshpipeError.

The engine (rust/src/py/errors.rs) raises the classes defined here, by name, with the attributes
each one documents; the MESH protocol errors subclass the same MeshpipeError. OS errors stay the
built-in OSError subclasses (FileNotFoundError, FileExistsError, PermissionError, ...).
"""

from __future__ import annotations


class MeshpipeError(Exception):
    """Base of every error meshpipe raises."""


class PlanError(MeshpipeError, ValueError):
    """A chunk plan breaks a MESH rule; nothing was read or sent."""


class ChunkSizeError(PlanError):
    """Chunk size below the 5 MiB minimum, or a chunk above the per-request maximum."""


class FileTooLargeError(PlanError):
    """The file is larger than the configured maximum message size."""


class SourceChangedError(MeshpipeError):
    """The source file changed size while it was being split."""


class CodecError(MeshpipeError):
    """Compressed data is corrupt or truncated; ``chunk`` is its number, or None."""

    chunk: int | None = None


class ChecksumMismatchError(MeshpipeError):
    """A checksum did not match; ``chunk`` is the chunk number, or None for the whole file."""

    chunk: int | None = None
    algorithm: str = ""
    expected: str = ""
    actual: str = ""


class ChunkLengthError(MeshpipeError):
    """A chunk decompressed to more (a bomb, stopped at the limit) or fewer bytes than planned."""

    chunk: int | None = None
    expected: int = 0
    actual: int = 0


class ChunkNumberError(MeshpipeError, ValueError):
    """A chunk number outside 1..chunk_count."""

    chunk: int = 0


class DuplicateChunkError(MeshpipeError):
    """A chunk arrived again with different content, or while it was still being written."""

    chunk: int = 0


class ChunkOrderError(MeshpipeError):
    """A chunk whose offset is not known yet (unknown chunk size, earlier chunks missing)."""

    chunk: int = 0
    waiting_for: int = 0


class MissingChunksError(MeshpipeError):
    """finish() was called before every chunk arrived; ``missing`` lists them (1-based)."""

    missing: list[int]

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.missing = []


class StateError(MeshpipeError):
    """An object was used after it was finished, aborted or closed."""


__all__ = [
    "ChecksumMismatchError",
    "ChunkLengthError",
    "ChunkNumberError",
    "ChunkOrderError",
    "ChunkSizeError",
    "CodecError",
    "DuplicateChunkError",
    "FileTooLargeError",
    "MeshpipeError",
    "MissingChunksError",
    "PlanError",
    "SourceChangedError",
    "StateError",
]


# --- MESH protocol errors (python/meshpipe/client.py raises these) ------------------------------

import json as _json  # noqa: E402


class ConfigError(MeshpipeError, ValueError):
    """Connection settings are missing or invalid; nothing was sent."""


class MessageHeaderError(MeshpipeError, ValueError):
    """A message header (recipient, workflow id, local id, ...) breaks MESH's rules; nothing was
    sent. ``header`` (e.g. ``mex-To``) and ``rule`` (a :data:`meshpipe.headers.ProblemRule`)
    say which, when known; the message says what to do."""

    def __init__(self, message: str, *, header: str | None = None, rule: str | None = None):
        super().__init__(message)
        self.header = header
        self.rule = rule


class MeshConnectionError(MeshpipeError, ConnectionError):
    """MESH could not be reached, or the connection failed or timed out mid-request."""


class MeshProtocolError(MeshpipeError):
    """MESH answered with something the protocol does not allow (e.g. a missing header)."""


class MeshHTTPError(MeshpipeError):
    """MESH answered with an HTTP error status.

    ``status`` is the HTTP status; ``code``, ``event`` and ``description`` are MESH's error code
    (e.g. "12"), phase (e.g. "SEND") and text when the body carried them (v1 or v2 shape);
    ``message_id`` is the message concerned, if known. ``retryable`` says whether the same
    request may safely be sent again later.
    """

    retryable: bool = False
    hint: str = ""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        event: str | None = None,
        description: str | None = None,
        message_id: str | None = None,
        internal_id: str | None = None,
        method: str = "",
        path: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status
        self.code = code
        self.event = event
        self.description = description
        self.message_id = message_id
        self.internal_id = internal_id
        self.method = method
        self.path = path


class MeshBadRequestError(MeshHTTPError):
    """400: the request failed validation (missing or malformed header, bad parameter)."""

    hint = "check the mex- headers and parameters named in the error"


class MeshMissingHeaderError(MeshBadRequestError):
    """A required header is missing: mex-To (code 08) or mex-WorkflowID."""

    hint = "give the recipient mailbox (--to) and the workflow id (--workflow-id)"


class MeshForbiddenError(MeshHTTPError):
    """403: the mailbox may not do this (not the sender or recipient of this message)."""

    hint = "check the message id belongs to this mailbox"


class MeshAuthenticationError(MeshForbiddenError):
    """403: authentication failed (wrong mailbox, password or shared key, or a bad token)."""

    hint = "check the mailbox id, password and shared key for this environment"


class MeshNotFoundError(MeshHTTPError):
    """404: no such message or chunk (or it is not yours)."""

    hint = "check the message id and chunk number"


class MeshChunkRangeError(MeshHTTPError):
    """406/417 on a chunk: the chunk number or mex-Chunk-Range is not valid for this message."""

    hint = "send chunk numbers 1..N with mex-Chunk-Range n:N"


class MeshMessageGoneError(MeshHTTPError):
    """410: the message cannot be downloaded (still uploading, failed or expired)."""

    hint = "check its status with `meshpipe track`; the sender may need to send it again"


class MeshRejectedError(MeshHTTPError):
    """417: MESH refused the message (the MESH error code says why)."""

    hint = "the MESH error code says what to change"


class MeshUnknownRecipientError(MeshRejectedError):
    """417 code 12: the recipient mailbox is not registered."""

    hint = "check the recipient mailbox id (use `meshpipe lookup ODS WORKFLOW` to find it)"


class MeshWorkflowError(MeshRejectedError):
    """417 code 16/17: the workflow id is not allowed for the sender or recipient."""

    hint = "check the workflow id; the mailbox must be registered for it"


class MeshMissingDataError(MeshRejectedError):
    """417 code 02: the message body (data file) is missing or empty."""

    hint = "send a non-empty body"


class MeshUnsupportedEncodingError(MeshHTTPError):
    """422: Content-Encoding other than gzip."""

    hint = "send gzip or no Content-Encoding"


class MeshMessageLockedError(MeshHTTPError):
    """423: a chunk was sent to a message that is already complete."""

    hint = "check the message with `meshpipe track` before sending more chunks"


class MeshTransientError(MeshHTTPError):
    """425/429/502/503/504: MESH is busy or a gateway failed; retrying later is safe."""

    retryable = True
    hint = "try again later"


class MeshRateLimitError(MeshTransientError):
    """429: too many requests."""


class MeshServerError(MeshHTTPError):
    """500 and other 5xx: MESH failed; only idempotent requests are retried."""

    hint = "try again later; if it persists, contact the MESH service desk with the internal id"


class MeshDuplicateRiskError(MeshpipeError):
    """Sending chunk 1 failed ambiguously and MESH could not tell whether the message exists.

    Re-posting could create a duplicate message, so nothing was re-sent. ``local_id`` is the
    mex-LocalID to look for (``meshpipe track``, or the recipient)."""

    def __init__(self, message: str, *, local_id: str) -> None:
        super().__init__(message)
        self.local_id = local_id


class ChunkTransferError(MeshpipeError):
    """A chunk could not be sent or received; ``chunk`` names it and ``__cause__`` says why."""

    def __init__(self, message: str, *, chunk: int, message_id: str | None = None) -> None:
        super().__init__(message)
        self.chunk = chunk
        self.message_id = message_id


class MeshReportError(MeshpipeError):
    """A REPORT message (non-delivery or error report) was found where data was expected.

    ``report`` is the typed report (meshpipe.models.ReportMessage): status code, description,
    the linked (failed) message id."""

    def __init__(self, message: str, *, report: object) -> None:
        super().__init__(message)
        self.report = report


_AUTH_DESCRIPTIONS = (
    "authorization",
    "authentication",
    "mailbox id does not match token",
    "no mailbox matched",
    "inactive mailbox",
)


def _error_class(status: int, code: str | None, description: str) -> type[MeshHTTPError]:
    low = description.lower()
    if status == 400:
        if code == "08" or "workflowid" in low.replace("-", "").replace("_", ""):
            return MeshMissingHeaderError
        return MeshBadRequestError
    if status == 403:
        if code == "EPL-151" or any(text in low for text in _AUTH_DESCRIPTIONS) or not low:
            return MeshAuthenticationError
        return MeshForbiddenError
    if status == 401:
        return MeshAuthenticationError
    if status == 404:
        return MeshNotFoundError
    if status == 406:
        return MeshChunkRangeError
    if status == 410:
        return MeshMessageGoneError
    if status == 417:
        if code == "12":
            return MeshUnknownRecipientError
        if code in ("16", "17"):
            return MeshWorkflowError
        if code == "02":
            return MeshMissingDataError
        if code == "08":
            return MeshMissingHeaderError
        if code == "InvalidHeaderChunks" or "chunk" in low:
            return MeshChunkRangeError
        return MeshRejectedError
    if status == 422:
        return MeshUnsupportedEncodingError
    if status == 423:
        return MeshMessageLockedError
    if status == 429:
        return MeshRateLimitError
    if status in (425, 502, 503, 504):
        return MeshTransientError
    if status >= 500:
        return MeshServerError
    return MeshHTTPError


def _first_text(*values: object) -> str | None:
    for value in values:
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


def parse_error_body(body: bytes) -> dict[str, str | None]:
    """The MESH error fields of a response body, whatever its shape.

    v1 ``{messageID, errorEvent, errorCode, errorDescription}``; v2 ``{message_id, internal_id,
    detail: [{event, code, msg}]}``; validation ``{detail: [{loc, msg, type}]}``; bare
    ``{internal_id, message}``; anything else (XML, HTML, text) becomes a short description.
    """
    fields: dict[str, str | None] = {
        "code": None,
        "event": None,
        "description": None,
        "message_id": None,
        "internal_id": None,
    }
    try:
        data = _json.loads(body) if body else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        fields["message_id"] = _first_text(data.get("messageID"), data.get("message_id"))
        fields["internal_id"] = _first_text(data.get("internal_id"), data.get("internalID"))
        detail = data.get("detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            first = detail[0]
            description = _first_text(first.get("msg"), first.get("message"))
            loc = first.get("loc")
            if isinstance(loc, list | tuple) and loc and description:
                description = f"{description}: {'.'.join(str(part) for part in loc)}"
            fields["description"] = description
            fields["code"] = _first_text(first.get("code"))
            fields["event"] = _first_text(first.get("event"))
        elif isinstance(detail, str):
            fields["description"] = detail
        else:
            fields["code"] = _first_text(data.get("errorCode"))
            fields["event"] = _first_text(data.get("errorEvent"))
            fields["description"] = _first_text(
                data.get("errorDescription"), data.get("message"), data.get("error")
            )
    elif body:
        text = body[:300].decode("utf-8", "replace").strip()
        fields["description"] = " ".join(text.split())[:200] or None
    return fields


def mesh_error_from_response(
    status: int,
    body: bytes,
    *,
    method: str,
    path: str,
    message_id: str | None = None,
    retry_after: float | None = None,
) -> MeshHTTPError:
    """The specific MeshHTTPError for an error response (``path`` must hold no secret);
    ``retry_after`` is the server's Retry-After, in seconds, if it sent one."""
    fields = parse_error_body(body)
    description = fields["description"] or ""
    cls = _error_class(status, fields["code"], description)
    message_id = fields["message_id"] or message_id
    parts = [f"MESH answered {status} to {method} {path}"]
    if fields["code"] or fields["event"]:
        parts.append(f"(code {fields['code'] or '?'}, {fields['event'] or '?'})")
    text = " ".join(parts)
    if description:
        text += f": {description}"
    if message_id:
        text += f" [message {message_id}]"
    if cls.hint:
        text += f"; {cls.hint}"
    return cls(
        text,
        status=status,
        code=fields["code"],
        event=fields["event"],
        description=fields["description"],
        message_id=message_id,
        internal_id=fields["internal_id"],
        method=method,
        path=path,
        retry_after=retry_after,
    )


__all__ += [
    "ChunkTransferError",
    "ConfigError",
    "MeshAuthenticationError",
    "MeshBadRequestError",
    "MeshChunkRangeError",
    "MeshConnectionError",
    "MeshDuplicateRiskError",
    "MeshForbiddenError",
    "MeshHTTPError",
    "MeshMessageGoneError",
    "MeshMessageLockedError",
    "MeshMissingDataError",
    "MeshMissingHeaderError",
    "MeshNotFoundError",
    "MeshProtocolError",
    "MeshRateLimitError",
    "MeshRejectedError",
    "MeshReportError",
    "MeshServerError",
    "MeshTransientError",
    "MeshUnknownRecipientError",
    "MeshUnsupportedEncodingError",
    "MeshWorkflowError",
    "MessageHeaderError",
    "mesh_error_from_response",
    "parse_error_body",
]
