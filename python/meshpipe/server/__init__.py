"""A local MESH server: the embedded default for demos, the benchmark harness (discard and
synthetic modes), fault injection for tests, and a drop-in replacement for NHS's mesh-sandbox.

Its modules import only the low layers of the client side (``meshpipe.errors``, ``units``,
``headers``, ``auth``, ``models``, ``synthetic``), never the client, retry, transfer or CLI
modules. Importing it still runs ``meshpipe/__init__.py`` (as importing any submodule does),
which loads the native engine and meshpipe's top-level re-exports; ``meshpipe.units`` takes
MESH's limits from the native engine too.
"""

from meshpipe.errors import ConfigError
from meshpipe.server.config import (
    DEFAULT_MAILBOXES,
    DEFAULT_WORKFLOWS,
    Mailbox,
    ServerConfig,
    TLSSettings,
    Workflow,
    load_mailboxes,
    load_workflows,
)
from meshpipe.server.faults import Fault, FaultPlan, FaultPlanError
from meshpipe.server.local_server import LocalMeshServer
from meshpipe.server.models import Clock
from meshpipe.server.rules import RuleSet
from meshpipe.server.streaming import (
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
    "RuleSet",
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
