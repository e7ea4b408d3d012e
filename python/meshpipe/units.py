"""Sizes and codec names shared by every module: the engine's ``KiB``/``MiB``/``GiB`` constants
and MESH's limits (defined once, in ``rust/src/plan.rs``), and the one parser of sizes that
people type (``20MiB``, ``75MB``, ``5242880``)."""

from __future__ import annotations

import argparse
import re
from typing import Final, Literal

from meshpipe._meshpipe import (
    DEFAULT_CHUNK_SIZE,
    MAX_FILE_SIZE,
    MAX_REQUEST_SIZE,
    MIN_CHUNK_SIZE,
    GiB,
    KiB,
    MiB,
)

Codec = Literal["none", "gzip", "zstd"]
"""A chunk codec: "none", "gzip" (one gzip member per chunk) or "zstd" (one frame per chunk)."""

CODECS: Final[tuple[Codec, ...]] = ("none", "gzip", "zstd")

_SIZE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
#: Binary units for K/M/G/T and KiB..TiB, decimal for KB..TB, as people write them.
_UNITS: Final = {
    "": 1,
    "B": 1,
    **{f"{p}": 1024 ** (i + 1) for i, p in enumerate("KMGT")},
    **{f"{p}IB": 1024 ** (i + 1) for i, p in enumerate("KMGT")},
    **{f"{p}B": 1000 ** (i + 1) for i, p in enumerate("KMGT")},
}


def parse_size(text: str) -> int:
    """Bytes from ``5242880``, ``20MiB`` or ``20M`` (binary), ``75MB`` (decimal).

    ValueError, naming the text and the forms accepted, for anything else.
    """
    match = _SIZE.fullmatch(text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size: use bytes or a unit, e.g. 20MiB, 75MB, 5242880")
    return int(float(match.group(1)) * _UNITS[unit])


def size_argument(text: str) -> int:
    """:func:`parse_size` for an argparse ``type=``: its ValueError as the error argparse
    reports (usage and exit status 2)."""
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


__all__ = [
    "CODECS",
    "DEFAULT_CHUNK_SIZE",
    "MAX_FILE_SIZE",
    "MAX_REQUEST_SIZE",
    "MIN_CHUNK_SIZE",
    "Codec",
    "GiB",
    "KiB",
    "MiB",
    "parse_size",
    "size_argument",
]
