"""Keyset paging's one rule, shared by the transfers list and the jobs page: a page is read
from its keyset in *walk* order (towards older rows, or back towards newer ones from an
``after`` keyset), one row more than it shows to learn whether the walk goes on, then shown
in display order, with the keysets of its neighbours."""

from __future__ import annotations

from typing import Protocol, TypeVar


class _Keyed(Protocol):
    @property
    def id(self) -> int: ...


Row = TypeVar("Row", bound=_Keyed)


def keyset_page(
    walked: list[Row], size: int, *, walked_back: bool, from_newer: bool, from_older: bool
) -> tuple[list[Row], int | None, int | None]:
    """The page of ``walked`` (up to ``size + 1`` rows in walk order; ``walked_back``: read
    against the display order), and the keysets of the newer and older pages (None: none).
    ``from_newer``/``from_older``: the page was reached from a newer or an older one (its
    query had a ``before`` or an ``after`` keyset), so that neighbour exists."""
    more = len(walked) > size
    rows = walked[:size]
    if walked_back:
        rows.reverse()
        newer_exists, older_exists = more, from_older
    else:
        newer_exists, older_exists = from_newer, more
    newer = rows[0].id if rows and newer_exists else None
    older = rows[-1].id if rows and older_exists else None
    return rows, newer, older


__all__ = ["keyset_page"]
