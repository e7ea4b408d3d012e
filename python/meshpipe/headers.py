"""MESH's rules for the mex- headers of a send, in one place for both sides: the client checks
them before sending anything, the local server refuses what breaks them (as mesh-sandbox
does). Lengths are the longest value mesh-sandbox accepts (protocol reference §6)."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Final

SEND_HEADER_LIMITS: Final[Mapping[str, int]] = {
    "mex-To": 100,
    "mex-WorkflowID": 300,
    "mex-Chunk-Range": 20,
    "mex-Subject": 500,
    "mex-LocalID": 300,
    "mex-PartnerID": 500,
    "mex-FileName": 300,
    "mex-Content-Encrypted": 20,
    "mex-Content-Compressed": 20,
    "mex-Content-Checksum": 100,
    "mex-Content-Type": 100,
}

#: Any of these in a string header gets 400 TRANSFER/06 "MalformedControlFile".
CONTROL_CHARACTERS: Final = re.compile(r"[\x00-\x1f]")

_CHECKSUM_CHARACTERS: Final = frozenset(
    string.ascii_letters + string.digits + string.whitespace + ":-/"
)


def checksum_is_valid(value: str) -> bool:
    """mex-Content-Checksum may hold only letters, digits, whitespace, ``:``, ``-`` and ``/``
    (so base64's ``+`` and ``=`` are refused), within its length limit."""
    return len(value) <= SEND_HEADER_LIMITS["mex-Content-Checksum"] and all(
        c in _CHECKSUM_CHARACTERS for c in value
    )
