"""The mex- headers a MESH message is sent with, and MESH's rules for them, in one place for
both sides: the client checks them before sending anything, the local server refuses what
breaks them (as mesh-sandbox does).

:class:`SendHeaders` is the set of per-message headers carried by chunk 1 (the transport
headers of each request, ``mex-Chunk-Range`` and ``Content-Encoding``, are not in it). Its
:meth:`~SendHeaders.problems` lists every broken rule as data (the header, a rule code, a
sentence); the client raises the first as :class:`MessageHeaderError`, the server turns each
code into the refusal MESH gives.

Lengths are the longest value mesh-sandbox accepts; NHS's API specification publishes none.

A GP-routing recipient (``GPPROVIDER_...``, :mod:`meshpipe.gp_route`) is checked as one:
a broken address is the problem ``gp_route`` (with the ``part`` at fault), and a local id
that holds the patient's NHS number is ``patient_detail`` (``mex-LocalID`` travels and is
shown everywhere; it must never carry patient details).
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from meshpipe.errors import GPRouteError, MessageHeaderError
from meshpipe.gp_route import GPRoute, is_gp_address, masked_repr

SEND_HEADER_LIMITS: Final[Mapping[str, int]] = {
    "mex-To": 100,
    "mex-WorkflowID": 300,
    "mex-Chunk-Range": 20,
    "mex-Subject": 500,
    "mex-LocalID": 300,
    "mex-PartnerID": 500,
    "mex-FileName": 300,
    "mex-Content-Encrypted": 20,
    "mex-Content-Compressed": 20,
    "mex-Content-Checksum": 100,
    "mex-Content-Type": 100,
}

#: Any of these in a string header gets 400 TRANSFER/06 "MalformedControlFile".
CONTROL_CHARACTERS: Final = re.compile(r"[\x00-\x1f]")

_CHECKSUM_CHARACTERS: Final = frozenset(
    string.ascii_letters + string.digits + string.whitespace + ":-/"
)
_URL: Final = re.compile(r"^https?://", re.IGNORECASE)
_TRUE: Final = frozenset({"y", "yes", "t", "true", "on", "1"})


def checksum_is_valid(value: str) -> bool:
    """mex-Content-Checksum may hold only letters, digits, whitespace, ``:``, ``-`` and ``/``
    (so base64's ``+`` and ``=`` are refused), within its length limit."""
    return len(value) <= SEND_HEADER_LIMITS["mex-Content-Checksum"] and all(
        c in _CHECKSUM_CHARACTERS for c in value
    )


def parse_flag(value: str | None) -> bool | None:
    """A Y/N flag header (``mex-Content-Compressed``): None when absent or empty. MESH clients
    send Y or N; mesh-sandbox also reads true/1/on, so this does too."""
    if value is None or not value.strip():
        return None
    return value.strip().lower() in _TRUE


ProblemRule = Literal[
    "missing",
    "too_long",
    "control_character",
    "url",
    "checksum_characters",
    "gp_route",
    "patient_detail",
]


@dataclass(frozen=True, slots=True)
class HeaderProblem:
    """One broken rule: ``header`` (e.g. ``mex-To``), ``rule``, and a sentence saying what to
    do. ``length``/``limit`` are set for ``too_long``, ``part`` for ``gp_route``."""

    header: str
    rule: ProblemRule
    message: str
    length: int | None = None
    limit: int | None = None
    part: str | None = None


@dataclass(frozen=True, slots=True)
class _Field:
    attribute: str
    header: str
    label: str


@dataclass(frozen=True, slots=True)
class SendHeaders:
    """The per-message headers of a send (chunk 1). ``to`` and ``workflow_id`` are required;
    empty optional values are not sent. ``checksum`` is ``mex-Content-Checksum`` (free text to
    MESH); ``compressed``/``encrypted`` are the Y/N payload flags (None: not sent)."""

    to: str
    workflow_id: str
    local_id: str | None = None
    subject: str | None = None
    filename: str | None = None
    partner_id: str | None = None
    content_type: str | None = None
    checksum: str | None = None
    compressed: bool | None = None
    encrypted: bool | None = None

    def __repr__(self) -> str:
        """The dataclass form, with patient details masked (a GP-routing recipient, an NHS
        number in the subject)."""
        return masked_repr(self)

    def problems(self) -> list[HeaderProblem]:
        """Every MESH rule these headers break, in header order (empty when they are fine)."""
        found: list[HeaderProblem] = []
        for name in ("to", "workflow_id"):
            field = _FIELDS[name]
            if not (getattr(self, name) or "").strip():
                found.append(HeaderProblem(field.header, "missing", _MISSING[name]))
        for field in _FIELDS.values():
            value = getattr(self, field.attribute)
            if not value:
                continue
            limit = SEND_HEADER_LIMITS[field.header]
            if len(value) > limit:
                found.append(
                    HeaderProblem(
                        field.header,
                        "too_long",
                        f"{field.label} ({field.header}) is {len(value)} characters; "
                        f"MESH allows {limit}",
                        length=len(value),
                        limit=limit,
                    )
                )
            if CONTROL_CHARACTERS.search(value):
                found.append(
                    HeaderProblem(
                        field.header,
                        "control_character",
                        f"{field.label} ({field.header}) contains a control character "
                        "(tab, newline, ...); MESH refuses them",
                    )
                )
            if field.attribute in ("to", "workflow_id", "checksum") and _URL.match(value):
                found.append(
                    HeaderProblem(
                        field.header,
                        "url",
                        f"{field.label} ({field.header}) must not be a URL"
                        + ("; give the recipient's mailbox id" if field.attribute == "to" else ""),
                    )
                )
        found += self._gp_problems()
        checksum = (self.checksum or "").strip()
        fits = len(checksum) <= SEND_HEADER_LIMITS["mex-Content-Checksum"]
        if checksum and fits and not checksum_is_valid(checksum):
            found.append(
                HeaderProblem(
                    "mex-Content-Checksum",
                    "checksum_characters",
                    "the checksum (mex-Content-Checksum) may hold only letters, digits, "
                    "spaces, ':', '-' and '/' (MESH refuses base64's '+' and '=')",
                )
            )
        return found

    def _gp_problems(self) -> list[HeaderProblem]:
        """A GP-routing ``to`` that is not a route; a local id holding its NHS number."""
        if not is_gp_address(self.to):
            return []
        try:
            route = GPRoute.parse(self.to)
        except GPRouteError as error:
            return [HeaderProblem("mex-To", "gp_route", str(error), part=error.part)]
        local_id = "".join(c for c in self.local_id or "" if c.isalnum())
        if route.nhs_number in local_id:
            return [
                HeaderProblem(
                    "mex-LocalID",
                    "patient_detail",
                    "the local id (mex-LocalID) holds the patient's NHS number: MESH shows "
                    "local ids to everyone handling the message, so choose one without patient "
                    "details (or let meshpipe choose)",
                )
            ]
        return []

    def validate(self) -> SendHeaders:
        """These headers, or MessageHeaderError naming the first broken rule
        (GPRouteError for a GP-routing address)."""
        found = self.problems()
        if found:
            first = found[0]
            if first.rule == "gp_route":
                raise GPRouteError(first.message, part=first.part or "format")
            raise MessageHeaderError(first.message, header=first.header, rule=first.rule)
        return self

    def replace(self, **changes: object) -> SendHeaders:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def to_request(self) -> dict[str, str]:
        """The request headers for chunk 1 (``Content-Type`` included: MESH shows the sender's
        content type to the recipient of a single-chunk v2 download)."""
        headers = {
            "mex-To": self.to.strip().upper(),
            "mex-WorkflowID": self.workflow_id.strip(),
            "Content-Type": self.content_type or "application/octet-stream",
        }
        for field in _FIELDS.values():
            if field.attribute in ("to", "workflow_id"):
                continue
            value = getattr(self, field.attribute)
            if value:
                headers[field.header] = value
        if self.compressed is not None:
            headers["mex-Content-Compressed"] = "Y" if self.compressed else "N"
        if self.encrypted is not None:
            headers["mex-Content-Encrypted"] = "Y" if self.encrypted else "N"
        return headers

    @classmethod
    def from_request(cls, headers: Mapping[str, str]) -> SendHeaders:
        """The headers of a received chunk-1 request, as sent (``to`` uppercased and stripped,
        absent optional values None); check them with :meth:`problems`."""

        def get(header: str) -> str | None:
            value = headers.get(header)
            return value if value else None

        return cls(
            to=(headers.get("mex-To") or "").strip().upper(),
            workflow_id=(headers.get("mex-WorkflowID") or "").strip(),
            local_id=get("mex-LocalID"),
            subject=get("mex-Subject"),
            filename=get("mex-FileName"),
            partner_id=get("mex-PartnerID"),
            content_type=get("mex-Content-Type"),
            checksum=(get("mex-Content-Checksum") or "").strip() or None,
            compressed=parse_flag(headers.get("mex-Content-Compressed")),
            encrypted=parse_flag(headers.get("mex-Content-Encrypted")),
        )


_FIELDS: Final[Mapping[str, _Field]] = {
    f.attribute: f
    for f in (
        _Field("to", "mex-To", "recipient"),
        _Field("workflow_id", "mex-WorkflowID", "workflow id"),
        _Field("local_id", "mex-LocalID", "local id"),
        _Field("subject", "mex-Subject", "subject"),
        _Field("filename", "mex-FileName", "file name"),
        _Field("partner_id", "mex-PartnerID", "partner id"),
        _Field("content_type", "mex-Content-Type", "content type"),
        _Field("checksum", "mex-Content-Checksum", "checksum"),
    )
}

_MISSING: Final[Mapping[str, str]] = {
    "to": "no recipient: give the recipient mailbox id (--to), or the patient's details for a "
    "GP-routed send (--to-gp)",
    "workflow_id": (
        "no workflow id: every MESH message needs one (--workflow-id); ask the recipient which "
        "workflow they are registered for"
    ),
}


def format_chunk_range(number: int, count: int) -> str:
    """``mex-Chunk-Range`` for chunk ``number`` of ``count`` (1-based)."""
    return f"{number}:{count}"


def parse_chunk_range(value: str | None) -> tuple[int, int] | None:
    """(n, N) from ``n:N`` (spaces allowed around each number); (1, 1) when absent or empty;
    None when malformed or out of range (n < 1 or n > N)."""
    if not value or not value.strip():
        return 1, 1
    parts = value.split(":")
    if len(parts) != 2:
        return None
    try:
        number, count = (int(part.strip()) for part in parts)
    except ValueError:
        return None
    if not 0 < number <= count:
        return None
    return number, count
