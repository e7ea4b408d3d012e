"""Every exception meshpipe raises, in one hierarchy under MeshpipeError.

The engine's errors are defined natively (rust/src/py/errors.rs) and re-exported here; the
MESH protocol errors (HTTP status, MESH error code) subclass the same MeshpipeError.
OS errors stay the built-in OSError subclasses (FileNotFoundError, PermissionError, ...).
"""

from meshpipe._meshpipe import (
    ChecksumMismatchError,
    ChunkLengthError,
    ChunkNumberError,
    ChunkOrderError,
    ChunkSizeError,
    CodecError,
    DuplicateChunkError,
    FileTooLargeError,
    MeshpipeError,
    MissingChunksError,
    PlanError,
    SourceChangedError,
    StateError,
)

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
