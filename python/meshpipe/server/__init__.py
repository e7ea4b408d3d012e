"""A local MESH server: the embedded default for demos, the benchmark harness (discard and
synthetic modes), fault injection for tests, and a drop-in replacement for NHS's mesh-sandbox.

This package imports neither the native engine nor meshpipe's top-level re-exports.
"""

from meshpipe.server.config import (
    DEFAULT_MAILBOXES,
    DEFAULT_WORKFLOWS,
    ConfigError,
    Mailbox,
    ServerConfig,
    TLSSettings,
    Workflow,
    load_mailboxes,
    load_workflows,
)
from meshpipe.server.faults import Fault, FaultPlan, FaultPlanError
from meshpipe.server.models import Clock
from meshpipe.server.server import LocalMeshServer
from meshpipe.server.synthetic import (
    synthetic_bytes,
    synthetic_checksum,
    synthetic_pieces,
    synthetic_xxh3_128,
)
from meshpipe.server.threaded import ServerThread, run_in_thread

__all__ = [
    "DEFAULT_MAILBOXES",
    "DEFAULT_WORKFLOWS",
    "Clock",
    "ConfigError",
    "Fault",
    "FaultPlan",
    "FaultPlanError",
    "LocalMeshServer",
    "Mailbox",
    "ServerConfig",
    "ServerThread",
    "TLSSettings",
    "Workflow",
    "load_mailboxes",
    "load_workflows",
    "run_in_thread",
    "synthetic_bytes",
    "synthetic_checksum",
    "synthetic_pieces",
    "synthetic_xxh3_128",
]
