"""Every exception meshpipe raises, in one hierarchy under MeshpipeError: only the classes a
caller catches, with what went wrong as data (pydantic-core style: few classes, codes as fields).

The engine (rust/src/py/errors.rs) raises the engine classes here, by name, with the attributes
each one documents. A MESH error answer is a :class:`MeshHTTPError` carrying MESH's status, code,
event, description and a ``kind`` (``"not_found"``, ``"missing_data"``, ...); subclasses exist
only for the answers callers handle apart (authentication, unknown recipient, not found, locked).
The bodies are parsed into these by :mod:`meshpipe.error_body`. OS errors stay the built-in
OSError subclasses (FileNotFoundError, FileExistsError, PermissionError, ...).
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


class GPRouteError(MessageHeaderError):
    """A GP-routing address (``GPPROVIDER_<NHS number>_<date of birth>_<surname>``) is not
    one MESH can route; nothing was sent. ``part`` names what is wrong: ``"nhs_number"``,
    ``"date_of_birth"``, ``"surname"`` or ``"format"``. The message never shows the patient's
    details. A MessageHeaderError (header ``mex-To``, rule ``gp_route``), so a MeshpipeError
    and a ValueError too."""

    def __init__(self, message: str, *, part: str, header: str = "mex-To") -> None:
        super().__init__(message, header=header, rule="gp_route")
        self.part = part


class MeshConnectionError(MeshpipeError, ConnectionError):
    """MESH could not be reached, or the connection failed or timed out mid-request.

    ``retryable`` is True: an idempotent request may be sent again (see meshpipe.retry).
    ``request_sent`` is False when no connection was made (refused, unreachable, a TLS
    handshake that failed), so nothing reached MESH; True when the request may have arrived.
    ``timed_out`` is True when a time limit ran out (connecting, a stall, the whole request)
    rather than the connection failing."""

    retryable = True

    def __init__(self, message: str, *, request_sent: bool = True, timed_out: bool = False) -> None:
        super().__init__(message)
        self.request_sent = request_sent
        self.timed_out = timed_out


class MeshProtocolError(MeshpipeError):
    """MESH answered with something the protocol does not allow (e.g. a missing header)."""


#: The statuses that say MESH is busy, timed the request out or a gateway failed: retrying later
#: is safe.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 502, 503, 504})


class MeshHTTPError(MeshpipeError):
    """MESH answered with an HTTP error status.

    ``status`` is the HTTP status; ``code``, ``event`` and ``description`` are MESH's error code
    (e.g. "12"), phase (e.g. "SEND") and text when the body carried them (v1 or v2 shape);
    ``kind`` names the failure (``"bad_request"``, ``"missing_header"``, ``"forbidden"``,
    ``"authentication"``, ``"not_found"``, ``"chunk_range"``, ``"gone"``, ``"rejected"``,
    ``"unknown_recipient"``, ``"workflow"``, ``"missing_data"``, ``"unsupported_encoding"``,
    ``"locked"``, ``"rate_limited"``, ``"transient"``, ``"server_error"`` or ``"other"``);
    ``message_id`` is the message concerned, if known; ``retry_after`` the server's Retry-After
    in seconds.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        kind: str = "other",
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
        self.status = status
        self.kind = kind
        self.code = code
        self.event = event
        self.description = description
        self.message_id = message_id
        self.internal_id = internal_id
        self.method = method
        self.path = path
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Whether an idempotent request may be sent again after this answer: MESH was busy
        (425, 429), timed the request out (408), a gateway failed (502, 503, 504) or MESH itself
        failed (5xx). The one
        answer to "is this retryable" (meshpipe.retry asks it); never for any other 4xx."""
        return self.status in TRANSIENT_STATUSES or self.status >= 500


class MeshAuthenticationError(MeshHTTPError):
    """401/403: authentication failed (wrong mailbox, password or shared key, or a bad token)."""


class MeshUnknownRecipientError(MeshHTTPError):
    """417 code 12: the recipient mailbox is not registered."""


class MeshNotFoundError(MeshHTTPError):
    """404: no such message or chunk (or it is not yours)."""


class MeshMessageLockedError(MeshHTTPError):
    """423: a chunk was sent to a message that is already complete."""


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


class UnverifiedMessageError(MeshpipeError):
    """Verification was required and the message carries nothing to verify it against (no
    meshpipe checksum, no compression): it was neither written nor acknowledged."""

    def __init__(self, message: str, *, message_id: str) -> None:
        super().__init__(message)
        self.message_id = message_id


class MeshReportError(MeshpipeError):
    """A REPORT message (non-delivery or error report) was found where data was expected.

    ``report`` is the typed report (meshpipe.models.ReportMessage): status code, description,
    the linked (failed) message id."""

    def __init__(self, message: str, *, report: object) -> None:
        super().__init__(message)
        self.report = report


__all__ = [
    "TRANSIENT_STATUSES",
    "ChecksumMismatchError",
    "ChunkLengthError",
    "ChunkNumberError",
    "ChunkOrderError",
    "ChunkSizeError",
    "ChunkTransferError",
    "CodecError",
    "ConfigError",
    "DuplicateChunkError",
    "FileTooLargeError",
    "GPRouteError",
    "MeshAuthenticationError",
    "MeshConnectionError",
    "MeshDuplicateRiskError",
    "MeshHTTPError",
    "MeshMessageLockedError",
    "MeshNotFoundError",
    "MeshProtocolError",
    "MeshReportError",
    "MeshUnknownRecipientError",
    "MeshpipeError",
    "MessageHeaderError",
    "MissingChunksError",
    "PlanError",
    "SourceChangedError",
    "StateError",
    "UnverifiedMessageError",
]
