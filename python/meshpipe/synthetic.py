"""Deterministic synthetic data: CSV-like extracts for the demo, tests and benchmarks.

Lines look like an NHS extract (``NHS number,surname,date of birth,practice code,score``) and
come from a seeded pool, so the same (size, seed) always gives the same bytes, fast.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Iterator
from pathlib import Path

_SURNAMES = [
    *"SMITH JONES TAYLOR BROWN WILLIAMS WILSON JOHNSON DAVIES PATEL WRIGHT ROBINSON".split(),
    *"THOMPSON EVANS WALKER WHITE ROBERTS GREEN HALL THOMAS CLARKE JACKSON WOOD HARRIS".split(),
    *"EDWARDS TURNER MARTIN COOPER HILL WARD HUGHES MOORE CLARK KING HARRISON LEWIS".split(),
    *"BAKER LEE ALLEN MORRIS KHAN".split(),
]
_POOL_LINES = 1 << 18
_BLOCK = 4 << 20


def _line(rng: random.Random) -> bytes:
    """One extract line: NHS number, surname, date of birth, practice code, score."""
    return (
        f"{rng.randrange(10**9, 10**10)},{rng.choice(_SURNAMES)},"
        f"{rng.randrange(1920, 2024)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d},"
        f"{rng.choice('ABCDEFGHJKLMNPY')}{rng.randrange(10**4, 10**5)},"
        f"{rng.random() * 100:.4f}\n"
    ).encode()


def csv_block(size: int, seed: int) -> bytes:
    """``size`` bytes of distinct lines straight from the generator (no pool: cheap for a few
    MiB, e.g. the repeating block of the server's synthetic messages)."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    length = 0
    while length < size:
        lines.append(_line(rng))
        length += len(lines[-1])
    return b"".join(lines)[:size]


@functools.lru_cache(maxsize=4)
def _line_pool(seed: int) -> tuple[bytes, list[int]]:
    """A blob of distinct lines and the offset where each line starts (plus the end)."""
    rng = random.Random(seed)
    lines = [_line(rng) for _ in range(_POOL_LINES)]
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    return b"".join(lines), offsets


def iter_csv(size: int, seed: int = 1) -> Iterator[bytes]:
    """Yield blocks of CSV text totalling exactly ``size`` bytes: runs of 64 pool lines taken
    from random places, so repeats are as rare as in real extracts."""
    blob, offsets = _line_pool(seed)
    rng = random.Random(seed + 1)
    run = 64
    remaining = size
    while remaining > 0:
        pieces = []
        length = 0
        while length < _BLOCK:
            start = rng.randrange(_POOL_LINES - run)
            piece = blob[offsets[start] : offsets[start + run]]
            pieces.append(piece)
            length += len(piece)
        block = b"".join(pieces)[: min(_BLOCK, remaining)]
        remaining -= len(block)
        yield block


def csv_bytes(size: int, seed: int = 1) -> bytes:
    """``size`` bytes of CSV text."""
    return b"".join(iter_csv(size, seed))


def write_csv(path: str | os.PathLike[str], size: int, seed: int = 1) -> Path:
    """Write ``size`` bytes of CSV text to ``path`` (created or replaced)."""
    target = Path(path)
    with target.open("wb") as handle:
        for block in iter_csv(size, seed):
            handle.write(block)
    return target


def write_random(path: str | os.PathLike[str], size: int, seed: int = 1) -> Path:
    """Write ``size`` incompressible bytes to ``path``."""
    rng = random.Random(seed)
    target = Path(path)
    with target.open("wb") as handle:
        remaining = size
        while remaining > 0:
            step = min(_BLOCK, remaining)
            handle.write(rng.randbytes(step))
            remaining -= step
    return target
