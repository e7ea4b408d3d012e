"""``meshpipe worker`` (see meshpipe.fleet.cli)."""

from meshpipe.fleet.cli import worker_main as main

__all__ = ["main"]
