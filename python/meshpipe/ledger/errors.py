"""The ledger's errors: one class with a ``code`` saying what went wrong, and one for a transfer
that another process holds."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from meshpipe.errors import MeshpipeError

LedgerErrorCode = Literal[
    # opening a ledger
    "unsupported-location",  # not a path, sqlite:/// or postgresql:// location
    "driver-missing",  # a postgresql:// location without psycopg installed
    "unreachable",  # the database could not be opened or reached
    "not-a-database",  # the file is not SQLite (garbage, another format)
    "truncated",  # the file is shorter than its own header says, or empty beside a WAL
    "corrupt",  # SQLite reported a malformed database
    "not-a-ledger",  # a database with tables that are not meshpipe's
    "locked",  # another process held the SQLite write lock past the busy timeout
    "newer-schema",  # written by a newer meshpipe
    # using one
    "not-found",  # no transfer with that id
    "exists",  # a transfer with that identity exists already
    "wrong-direction",  # a send method on a receive, or the reverse
    "invalid-state",  # the state machine does not allow this change
    "chunk-number",  # a chunk number outside 1..chunk_count
    "checksum-mismatch",  # a chunk or source recorded again with a different checksum
    "chunk-not-sent",  # a chunk recorded accepted that was never recorded sent
    "incomplete",  # completed or verified with chunks still missing
    "busy",  # another process holds the transfer (TransferBusyError)
    "closed",  # the ledger was used after close()
]


class LedgerError(MeshpipeError):
    """A ledger could not be opened or refused a change. ``code`` says which (errors as data);
    ``location`` is the file or URL (password hidden); ``transfer`` the transfer id, if any."""

    def __init__(
        self,
        message: str,
        *,
        code: LedgerErrorCode,
        location: str | None = None,
        transfer: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code: LedgerErrorCode = code
        self.location = location
        self.transfer = transfer


class TransferBusyError(LedgerError):
    """Another live process holds the claim on this transfer. ``owner`` is ``pid@host``;
    ``expires_at`` is when its lease runs out unless it renews it (it does while it runs)."""

    def __init__(
        self,
        message: str,
        *,
        transfer: int,
        owner: str,
        expires_at: datetime | None,
        location: str | None = None,
    ) -> None:
        super().__init__(message, code="busy", location=location, transfer=transfer)
        self.owner = owner
        self.expires_at = expires_at


__all__ = ["LedgerError", "LedgerErrorCode", "TransferBusyError"]
