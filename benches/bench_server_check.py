"""The server's per-chunk check at engine speed: CPU seconds per GB of a gzip upload body
(inflate, count, xxh3-128) through ``meshpipe.server.checker.ChunkChecker`` (the engine's
BodyChecker: ISA-L), against, measured round by round in the same run on the same body in the
same 64 KiB pieces: ISA-L's own inflate from Python (python-isal, no hash: the ceiling the
check should reach) and the standard library's zlib with xxhash (what the server did before
when python-isal was not installed). CPU time of this process, so other load on the machine
moves the ratios little.

Run: .venv/bin/python -m pytest benches/bench_server_check.py -s
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable

import xxhash
from isal import isal_zlib

from meshpipe.server.checker import ChunkChecker
from meshpipe.synthetic import csv_block
from meshpipe.units import MiB

BODY_SIZE = 64 * MiB  # uncompressed
PIECE = 64 * 1024
ROUNDS = 5


def _pieces() -> tuple[int, list[bytes]]:
    data = (csv_block(1 * MiB, 1) * (BODY_SIZE // MiB))[:BODY_SIZE]
    body = isal_zlib.compress(data, 1, wbits=31)
    return len(data), [body[start : start + PIECE] for start in range(0, len(body), PIECE)]


def _engine_check(pieces: list[bytes]) -> None:
    checker = ChunkChecker("gzip")
    checker.update_all(pieces)
    checker.finish()


def _isal_inflate(pieces: list[bytes]) -> None:
    inflater = isal_zlib.decompressobj(wbits=31)
    for piece in pieces:
        inflater.decompress(piece)


def _stdlib_check(pieces: list[bytes]) -> None:
    inflater, digest = zlib.decompressobj(wbits=31), xxhash.xxh3_128()
    for piece in pieces:
        digest.update(inflater.decompress(piece))


def _cpu(function: Callable[[list[bytes]], None], pieces: list[bytes]) -> float:
    started = time.process_time()
    function(pieces)
    return time.process_time() - started


def test_gzip_check_cpu_per_gb(figures: list[str]) -> None:
    size, pieces = _pieces()
    best: dict[str, float] = {}
    for _ in range(ROUNDS):
        for name, function in (
            ("isal inflate", _isal_inflate),
            ("server check", _engine_check),
            ("stdlib check", _stdlib_check),
        ):
            seconds = _cpu(function, pieces) / (size / 1e9)
            best[name] = min(best.get(name, seconds), seconds)
    ceiling = best["isal inflate"]
    for name, seconds in best.items():
        figures.append(
            f"gzip body check, {name}: {seconds:.2f} CPU-s/GB = {seconds / ceiling:.2f}x "
            "ISA-L inflate (best of 5)"
        )
