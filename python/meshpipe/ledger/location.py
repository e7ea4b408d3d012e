"""Where the ledger lives: the state directory and the ledger's file or URL, chosen by the
command-line flags, then the environment, then the default under the user's data directory."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

LEDGER_FILE_NAME: Final = "ledger.sqlite3"
STATE_DIR_VARIABLE: Final = "MESHPIPE_STATE_DIR"
LEDGER_VARIABLE: Final = "MESHPIPE_LEDGER"


def resolve_state_dir(
    state_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """The state directory: ``state_dir`` (the ``--state-dir`` flag), else
    ``$MESHPIPE_STATE_DIR``, else ``$XDG_DATA_HOME/meshpipe``, else
    ``~/.local/share/meshpipe``. Not created here (opening a SQLite ledger creates it)."""
    env = os.environ if environ is None else environ
    if state_dir is not None and str(state_dir):
        return Path(state_dir).expanduser()
    if env.get(STATE_DIR_VARIABLE):
        return Path(env[STATE_DIR_VARIABLE]).expanduser()
    data_home = env.get("XDG_DATA_HOME")
    if data_home and Path(data_home).is_absolute():
        return Path(data_home) / "meshpipe"
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".local" / "share" / "meshpipe"


def resolve_ledger_location(
    ledger: str | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The ledger to open, as :meth:`meshpipe.ledger.Ledger.open` takes it. Flags beat the
    environment: ``ledger`` (``--ledger``: a path or URL), else ``state_dir``
    (``--state-dir``) / ``ledger.sqlite3``, else ``$MESHPIPE_LEDGER``, else
    ``$MESHPIPE_STATE_DIR`` / ``ledger.sqlite3``, else the default state directory's file."""
    env = os.environ if environ is None else environ
    if ledger:
        return ledger
    if state_dir is not None and str(state_dir):
        return str(resolve_state_dir(state_dir, env) / LEDGER_FILE_NAME)
    if env.get(LEDGER_VARIABLE):
        return env[LEDGER_VARIABLE]
    return str(resolve_state_dir(None, env) / LEDGER_FILE_NAME)


__all__ = [
    "LEDGER_FILE_NAME",
    "LEDGER_VARIABLE",
    "STATE_DIR_VARIABLE",
    "resolve_ledger_location",
    "resolve_state_dir",
]
