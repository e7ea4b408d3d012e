"""GP routing for the local server: the demographics table a test rig gives
(``--demographics FILE.jsonl``) standing in for Spine, and the resolution of a
``GPPROVIDER_<NHS number>_<YYYYMMDD>_<surname>`` recipient against it.

The file has one JSON object a line: ``nhs_number`` (ten digits, a valid Modulus 11 number),
``date_of_birth`` (``YYYYMMDD`` or ``YYYY-MM-DD``), ``surname`` and ``mailbox`` (the practice's
mailbox id). A line that breaks this is a ConfigError naming the line (never its details).

:meth:`Demographics.resolve` returns the practice's mailbox, or raises
:class:`RoutingFailure` with the error report MESH sends for it (NHS's GP Connect guidance
publishes the codes and descriptions, :data:`meshpipe.gp_route.ROUTING_ERRORS`; which failure
gets which code is published only by the codes' names, so where a case is ours to place it
is said):

=================================================  ==========================================
the recipient                                      report
=================================================  ==========================================
NHS number not ten digits, or failing Modulus 11   ``EPL-152`` Invalid NHS Number
NHS number in no row                               ``EPL-153`` NHS Number not found
date of birth or surname not the row's             ``EPL-154`` ... does not match the
(surname in any case; an impossible date too)      demographics
matching rows naming different practices           ``EPL-150`` Multiple mailboxes match
the practice's mailbox unknown to this server,     ``EPL-151`` No mailbox matched
or an address not in three parts (our choice)
=================================================  ==========================================

The mailroom accepts a message whose routing fails (the sender gets its message id, as from
MESH) and, once complete, does not deliver it: the failure becomes the message's error event
and an error report in the sender's inbox (``mex-LinkedMsgID`` the message, ``mex-LocalID``
its local id).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from meshpipe.errors import ConfigError, GPRouteError
from meshpipe.gp_route import ROUTING_ERRORS, GPRoute, mask_nhs_number, nhs_number_problem


class RoutingFailure(Exception):
    """GP routing found no single practice: ``code`` (e.g. ``EPL-153``) and ``description``
    are the error report MESH sends."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.description = ROUTING_ERRORS[code][1]
        super().__init__(f"{code} {self.description}")


@dataclass(frozen=True, slots=True)
class PatientRecord:
    """One row of the demographics table; ``repr`` masked."""

    nhs_number: str
    date_of_birth: date
    surname: str
    mailbox: str

    def __repr__(self) -> str:
        return f"PatientRecord({mask_nhs_number(self.nhs_number)!r}, mailbox={self.mailbox!r})"


_FIELDS = ("nhs_number", "date_of_birth", "surname", "mailbox")


def _date(text: str) -> date:
    for form in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, form).date()
        except ValueError:
            continue
    raise ValueError("date_of_birth must be YYYYMMDD or YYYY-MM-DD")


def parse_record(data: object) -> PatientRecord:
    """A row from one decoded JSON line; ValueError saying what is wrong (never a detail)."""
    if not isinstance(data, dict):
        raise ValueError("each line must be a JSON object")
    missing = [
        key for key in ("nhs_number", "date_of_birth", "surname", "mailbox") if key not in data
    ]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    values = {
        key: str(data[key]).strip() for key in ("nhs_number", "date_of_birth", "surname", "mailbox")
    }
    problem = nhs_number_problem(values["nhs_number"])
    if problem is not None:
        raise ValueError(problem)
    if not values["surname"] or not values["mailbox"]:
        raise ValueError("surname and mailbox must not be empty")
    return PatientRecord(
        values["nhs_number"],
        _date(values["date_of_birth"]),
        values["surname"],
        values["mailbox"].upper(),
    )


def load_demographics(path: Path | None) -> tuple[PatientRecord, ...]:
    """The rows of the JSON-lines file at ``path`` (none without one)."""
    if path is None:
        return ()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ConfigError(f"cannot read the demographics file {path}: {error.strerror}") from None
    records: list[PatientRecord] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(parse_record(json.loads(line)))
        except ValueError as error:  # json.JSONDecodeError is one
            reason = "not JSON" if isinstance(error, json.JSONDecodeError) else str(error)
            raise ConfigError(f"demographics file {path}, line {number}: {reason}") from None
    return tuple(records)


class Demographics:
    """The table, indexed by NHS number; :meth:`resolve` routes an address (module doc)."""

    def __init__(self, records: Iterable[PatientRecord]) -> None:
        self._by_number: dict[str, list[PatientRecord]] = defaultdict(list)
        for record in records:
            self._by_number[record.nhs_number].append(record)

    def __bool__(self) -> bool:
        return bool(self._by_number)

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._by_number.values())

    def resolve(self, address: str, known_mailboxes: Iterable[str]) -> str:
        """The practice mailbox ``address`` routes to; RoutingFailure otherwise."""
        try:
            route = GPRoute.parse(address)
        except GPRouteError as error:
            code = {"nhs_number": "EPL-152", "format": "EPL-151"}.get(error.part, "EPL-154")
            raise RoutingFailure(code) from None
        rows = self._by_number.get(route.nhs_number)
        if not rows:
            raise RoutingFailure("EPL-153")
        matching = {
            row.mailbox
            for row in rows
            if route.matches(row.nhs_number, row.date_of_birth, row.surname)
        }
        if not matching:
            raise RoutingFailure("EPL-154")
        if len(matching) > 1:
            raise RoutingFailure("EPL-150")
        [mailbox] = matching
        if mailbox not in set(known_mailboxes):
            raise RoutingFailure("EPL-151")
        return mailbox


__all__ = ["Demographics", "PatientRecord", "RoutingFailure", "load_demographics", "parse_record"]
