"""The transfer ledger (placeholder docstring)."""

from meshpipe.ledger.errors import LedgerError, LedgerErrorCode, TransferBusyError
from meshpipe.ledger.location import (
    LEDGER_FILE_NAME,
    resolve_ledger_location,
    resolve_state_dir,
)
from meshpipe.ledger.records import *  # noqa: F403
from meshpipe.ledger.store import Ledger
