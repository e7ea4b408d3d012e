"""``meshpipe submit`` (see meshpipe.fleet.cli)."""

from meshpipe.fleet.cli import submit_main as main

__all__ = ["main"]
