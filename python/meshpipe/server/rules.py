"""The two rule sets a server can follow, as data: ``strict`` (what the live MESH platform
enforces) and ``sandbox`` (what mesh-sandbox 1.0.137 enforces). One field per row of the
"strict and sandbox rules, side by side" table in this package's README; the authenticator and
the mailroom read these fields and nothing else decides by the rule set's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from meshpipe.units import MAX_FILE_SIZE, MAX_REQUEST_SIZE, MIN_CHUNK_SIZE, GiB

RulesName = Literal["strict", "sandbox"]
RULES: tuple[RulesName, ...] = ("strict", "sandbox")

#: A token's timestamp may be this far from the server's time under strict rules (2 hours).
TOKEN_WINDOW_SECONDS = 2 * 60 * 60
#: Under sandbox rules a chunk may decode to at most this many bytes. mesh-sandbox holds a
#: chunk's body in memory, so no suite written for it sends chunks anywhere near this size;
#: the cap stops a decompression bomb (or an endless body) from running the server's disk and
#: CPU without bound.
SANDBOX_MAX_DECODED_CHUNK_SIZE = 4 * GiB
#: Under sandbox rules a message may have at most this many chunks. mesh-sandbox checks no
#: count; this one keeps a message's bookkeeping (which chunks are missing, tracking) bounded
#: while leaving room for any suite written for the sandbox (which holds every chunk in memory).
SANDBOX_MAX_CHUNKS = 100_000


def most_chunks(max_message_size: int, min_chunk_size: int) -> int:
    """How many chunks a message can have when every chunk but the last decodes to at least
    ``min_chunk_size`` bytes and the whole to at most ``max_message_size``: (N - 1) chunks of
    the minimum must fit, so N ≤ max // min + 1 (9,537 with MESH's 50 GB and 5 MiB)."""
    return max_message_size // min_chunk_size + 1


@dataclass(frozen=True, slots=True)
class RuleSet:
    """What a server checks beyond the rules both sets share. ``None`` limits are not checked."""

    name: RulesName
    #: token timestamp within this many seconds of server time, else 403
    token_window_seconds: int | None
    #: each (mailbox, nonce, nonce count) accepted once, else 403
    single_use_tokens: bool
    #: the Authorization header must start with ``NHSMESH ``
    token_scheme_required: bool
    #: sender in the workflow's senders and recipient in its receivers, else 417 code 17
    workflow_entitlement: bool
    #: every chunk but the last at least this many bytes decompressed, else 417 ChunkTooSmall
    min_chunk_size: int | None
    #: a request body must be below this many bytes, else 413 RequestTooLarge
    max_request_size: int | None
    #: a message's decoded bytes at most this many, else 413 MessageTooLarge
    max_message_size: int | None
    #: a message has at most this many chunks (``mex-Chunk-Range: 1:N``), else 417
    #: InvalidHeaderChunks
    max_chunks: int
    #: a chunk's decoded bytes at most this many, else 413 ChunkDecodesTooLarge, refused as soon
    #: as decoding passes it (both sets: a decompression bomb is never expanded further)
    max_decoded_chunk_size: int
    #: an acknowledged message may still be downloaded (the live platform answers 410)
    download_after_acknowledgement: bool
    #: an upper-case folder in the data directory is a mailbox (password ``password``)
    mailboxes_from_data_dir: bool
    #: gzip downloads say ``mex-Content-Compressed: Y`` whatever the sender flagged
    compressed_flag_on_gzip: bool
    #: another mailbox's message is answered as if it did not exist (404, as for an unknown
    #: id); otherwise 403, as mesh-sandbox answers, which tells a caller that the id exists
    others_messages_hidden: bool
    #: a ``GPPROVIDER_`` recipient is resolved against the demographics table (when one is
    #: given): delivered to the practice, or not delivered and an ``EPL-15x`` error report
    #: put in the sender's inbox
    gp_routing: bool

    @classmethod
    def strict(
        cls,
        *,
        token_window_seconds: int = TOKEN_WINDOW_SECONDS,
        min_chunk_size: int = MIN_CHUNK_SIZE,
        max_request_size: int = MAX_REQUEST_SIZE,
        max_message_size: int = MAX_FILE_SIZE,
        max_decoded_chunk_size: int | None = None,
    ) -> RuleSet:
        """The live platform's rules, with its limits unless a test gives smaller ones. A chunk
        may decode to the whole message limit unless ``max_decoded_chunk_size`` says less."""
        return cls(
            name="strict",
            token_window_seconds=token_window_seconds,
            single_use_tokens=True,
            token_scheme_required=True,
            workflow_entitlement=True,
            min_chunk_size=min_chunk_size,
            max_request_size=max_request_size,
            max_message_size=max_message_size,
            max_chunks=most_chunks(max_message_size, min_chunk_size),
            max_decoded_chunk_size=max_decoded_chunk_size or max_message_size,
            download_after_acknowledgement=False,
            mailboxes_from_data_dir=False,
            compressed_flag_on_gzip=False,
            others_messages_hidden=True,
            gp_routing=True,
        )

    @classmethod
    def sandbox(cls, *, max_decoded_chunk_size: int | None = None) -> RuleSet:
        """mesh-sandbox's rules: none of the checks above, but a decoded chunk size cap
        (:data:`SANDBOX_MAX_DECODED_CHUNK_SIZE` unless ``max_decoded_chunk_size`` says) and a
        chunk count cap (:data:`SANDBOX_MAX_CHUNKS`)."""
        return cls(
            name="sandbox",
            token_window_seconds=None,
            single_use_tokens=False,
            token_scheme_required=False,
            workflow_entitlement=False,
            min_chunk_size=None,
            max_request_size=None,
            max_message_size=None,
            max_chunks=SANDBOX_MAX_CHUNKS,
            max_decoded_chunk_size=max_decoded_chunk_size or SANDBOX_MAX_DECODED_CHUNK_SIZE,
            download_after_acknowledgement=True,
            mailboxes_from_data_dir=True,
            compressed_flag_on_gzip=True,
            others_messages_hidden=False,
            gp_routing=False,
        )
