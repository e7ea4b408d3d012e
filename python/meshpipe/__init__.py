"""meshpipe: fast, verified transfers of files up to 50 GB through NHS England's MESH.

The chunk engine (planning, splitting, compression, checksums, reassembly) is native Rust;
the MESH protocol, transfers and the local server are asyncio Python on aiohttp.
"""

from meshpipe._meshpipe import (
    DEFAULT_CHUNK_SIZE,
    MAX_FILE_SIZE,
    MAX_REQUEST_SIZE,
    MIN_CHUNK_SIZE,
    Assembler,
    AssemblyReport,
    Chunk,
    ChunkPlan,
    ChunkReport,
    ChunkWriter,
    FileDigest,
    GiB,
    KiB,
    MiB,
    Splitter,
    __version__,
    sha256_file,
    xxh3_128_file,
)
from meshpipe.errors import (
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
    "DEFAULT_CHUNK_SIZE",
    "MAX_FILE_SIZE",
    "MAX_REQUEST_SIZE",
    "MIN_CHUNK_SIZE",
    "Assembler",
    "AssemblyReport",
    "ChecksumMismatchError",
    "Chunk",
    "ChunkLengthError",
    "ChunkNumberError",
    "ChunkOrderError",
    "ChunkPlan",
    "ChunkReport",
    "ChunkSizeError",
    "ChunkWriter",
    "CodecError",
    "DuplicateChunkError",
    "FileDigest",
    "FileTooLargeError",
    "GiB",
    "KiB",
    "MeshpipeError",
    "MiB",
    "MissingChunksError",
    "PlanError",
    "SourceChangedError",
    "Splitter",
    "StateError",
    "__version__",
    "sha256_file",
    "xxh3_128_file",
]

# --- the MESH client (python/meshpipe/client.py and friends) ------------------------------------
from meshpipe.client import ClientSettings, MeshClient, SyncMeshClient
from meshpipe.config import MeshConfig, Secret, load_config
from meshpipe.errors import (
    ChunkTransferError,
    ConfigError,
    MeshAuthenticationError,
    MeshConnectionError,
    MeshDuplicateRiskError,
    MeshHTTPError,
    MeshReportError,
    MeshUnknownRecipientError,
    MessageHeaderError,
)
from meshpipe.models import (
    ContentChecksum,
    Endpoint,
    MessageMetadata,
    ReportMessage,
    TrackingInfo,
)
from meshpipe.retry import RetryPolicy
from meshpipe.transfer import (
    ReceiveResult,
    SendResult,
    receive_all,
    receive_message,
    receive_report,
    send_file,
)

__all__ += [
    "ChunkTransferError",
    "ClientSettings",
    "ConfigError",
    "ContentChecksum",
    "Endpoint",
    "MeshAuthenticationError",
    "MeshClient",
    "MeshConfig",
    "MeshConnectionError",
    "MeshDuplicateRiskError",
    "MeshHTTPError",
    "MeshReportError",
    "MeshUnknownRecipientError",
    "MessageHeaderError",
    "MessageMetadata",
    "ReceiveResult",
    "ReportMessage",
    "RetryPolicy",
    "Secret",
    "SendResult",
    "SyncMeshClient",
    "TrackingInfo",
    "load_config",
    "receive_all",
    "receive_message",
    "receive_report",
    "send_file",
]
