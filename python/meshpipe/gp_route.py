"""GP-routed addresses: ``GPPROVIDER_<NHS number>_<date of birth>_<surname>`` in ``mex-To``
(or a control file's ``To_DTS``) asks MESH to deliver to the patient's registered practice,
found by a Spine demographic check during delivery. A failed check is not an API error: it
comes back later as an error report in the sender's inbox (codes ``EPL-150`` to ``EPL-154``,
see :data:`ROUTING_ERRORS`), so the address is checked here before anything is sent.

:class:`GPRoute` is the address as data; :meth:`GPRoute.parse` reads the string form and
``str(route)`` writes it. What is checked, and where the rules come from:

- **NHS number**: ten digits whose last is the Modulus 11 check digit of the first nine
  (weights 10 down to 2; a remainder giving 11 means 0, one giving 10 means the number is
  invalid): NHS's published algorithm. ``--to-gp`` also takes the 3-3-4 form with spaces.
- **Date of birth**: ``YYYYMMDD`` (NHS's GP Connect guidance for ``mex-To``; some older
  control file examples show ``DDMMYYYY``, so a value that reads only that way is refused with
  a hint), a real date, not in the future and not before 1900-01-01. The 1900 floor is our
  choice: NHS publishes none, and an earlier date is almost always a typing error.
- **Surname**: NHS publishes no rules for this part. We chose conservatively: ASCII letters,
  with single spaces, apostrophes or hyphens between letters (``O'Brien``, ``Smith-Jones``,
  ``De La Cruz``), at most :data:`SURNAME_LIMIT` (35) characters, the longest family name the
  PDS MESH trace files take. MESH matches it case-insensitively; ``mex-To`` is sent upper case.

Patient details are patient-identifiable: no message here shows an NHS number, date of birth
or surname, a route's ``repr`` is masked, and :func:`mask_patient_details` (which
:mod:`meshpipe.logs` applies to every line, and the ledger to what it records) replaces NHS
numbers and GP addresses in any text by :func:`mask_address`'s form,
``GPPROVIDER_******1234`` (the last four digits only, enough to tell two sends apart).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final, Literal

from meshpipe.errors import GPRouteError

GP_PREFIX: Final = "GPPROVIDER_"
#: The earliest date of birth accepted (our choice; NHS publishes no floor).
EARLIEST_BIRTH: Final = date(1900, 1, 1)
#: The longest surname accepted (our choice: NHS publishes no limit for this address).
SURNAME_LIMIT: Final = 35
#: What stands for the hidden digits of an NHS number.
MASK: Final = "******"

GPRoutePart = Literal["nhs_number", "date_of_birth", "surname", "format"]

#: The error reports MESH puts in the sender's inbox when GP routing fails: status code ->
#: (MESH's error name, its description), as NHS's GP Connect guidance publishes them.
ROUTING_ERRORS: Final[Mapping[str, tuple[str, str]]] = {
    "EPL-150": ("ERROR_TOO_MANY_MAILBOX_MATCHES", "Multiple mailboxes match"),
    "EPL-151": ("ERROR_NO_MAILBOX_MATCHES", "No mailbox matched"),
    "EPL-152": ("ERROR_INVALID_NHSNUMBER", "Invalid NHS Number"),
    "EPL-153": ("ERROR_NHSNUMBER_NOT_FOUND", "NHS Number not found"),
    "EPL-154": (
        "ERROR_NO_DEMOGRAPHICS_MATCH",
        "NHS Number supplied does not match the demographics",
    ),
}

_WEIGHTS: Final = range(10, 1, -1)
_SURNAME: Final = re.compile(r"[A-Za-z]+(?:[ '\-][A-Za-z]+)*")
_NHS_SPACED: Final = re.compile(r"\d{3}[ -]?\d{3}[ -]?\d{4}")
#: A GP address in free text: the prefix, then whatever of the three parts follows (a
#: surname's later words after a space are not taken: they cannot be told from the text).
_ADDRESS_IN_TEXT: Final = re.compile(
    r"GPPROVIDER_(?P<nhs>[0-9*]+(?:[ \-][0-9]+)*)?(?:_[0-9]+)?(?:_[A-Za-z]+(?:['\-][A-Za-z]+)*)?",
    re.IGNORECASE,
)
#: A bare NHS number in free text: ten digits (or 3-3-4 with spaces or hyphens) standing
#: alone, not inside a longer word of letters and digits (a MESH message id's twenty digits,
#: a hexadecimal id that happens to hold ten digits in a row).
_NHS_IN_TEXT: Final = re.compile(r"(?<![0-9A-Za-z])\d{3}([ -]?)\d{3}\1\d{4}(?![0-9A-Za-z])")


def check_digit(first_nine: str) -> int | None:
    """The Modulus 11 check digit of an NHS number's first nine digits; None when the
    remainder makes it 10 (no valid number starts with those nine digits)."""
    total = sum(int(digit) * weight for digit, weight in zip(first_nine, _WEIGHTS, strict=True))
    digit = 11 - total % 11
    if digit == 11:
        return 0
    return None if digit == 10 else digit


def nhs_number_problem(nhs_number: str) -> str | None:
    """What is wrong with ``nhs_number`` (ten digits, no spaces), or None. Never repeats it."""
    if not nhs_number.isascii() or not nhs_number.isdigit():
        return "the NHS number must be ten digits (0-9 only)"
    if len(nhs_number) != 10:
        return f"the NHS number must be ten digits, not {len(nhs_number)}"
    expected = check_digit(nhs_number[:9])
    if expected is None:
        return (
            "the NHS number is not valid: its first nine digits give a check digit of 10, "
            "which no NHS number has; check it was copied correctly"
        )
    if expected != int(nhs_number[9]):
        return (
            "the NHS number fails its Modulus 11 check (the last digit is wrong): check it "
            "was copied correctly"
        )
    return None


def mask_nhs_number(nhs_number: str) -> str:
    """``******1234``: the last four digits of an NHS number, the rest hidden."""
    digits = "".join(c for c in nhs_number if c.isdigit())
    return MASK + digits[-4:] if len(digits) >= 4 else MASK


def mask_address(address: str) -> str:
    """A GP address as logs, errors and the ledger show it: ``GPPROVIDER_******1234`` (date
    of birth and surname dropped); any other address unchanged."""
    return mask_patient_details(address)


def is_gp_address(address: str) -> bool:
    """Whether ``address`` is a GP-routing address (``GPPROVIDER_...``, any case)."""
    return address.strip().upper().startswith(GP_PREFIX)


def mask_patient_details(text: str) -> str:
    """``text`` with every GP address and every NHS number-like run of ten digits standing
    alone masked (``GPPROVIDER_******1234``, ``******1234``)."""
    if not text:
        return text
    text = _ADDRESS_IN_TEXT.sub(_masked_address, text)
    return _NHS_IN_TEXT.sub(lambda found: mask_nhs_number(found.group(0)), text)


def mask_json(value: Any) -> Any:
    """A JSON-like value (mappings, lists, text) with patient details masked in every text."""
    if isinstance(value, str):
        return mask_patient_details(value)
    if isinstance(value, Mapping):
        return {key: mask_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [mask_json(item) for item in value]
    return value


def masked_repr(instance: Any) -> str:
    """A dataclass instance's usual ``repr``, with patient details masked: for records that
    may hold a GP-routing address or a subject naming the patient."""
    shown = ", ".join(
        f"{field.name}={getattr(instance, field.name)!r}"
        for field in dataclasses.fields(instance)
        if field.repr
    )
    return mask_patient_details(f"{type(instance).__name__}({shown})")


def _masked_address(found: re.Match[str]) -> str:
    digits = "".join(c for c in found.group("nhs") or "" if c.isdigit())
    return GP_PREFIX + (mask_nhs_number(digits) if len(digits) >= 4 else MASK)


def _date_of_birth(text: str, today: date) -> date:
    """The date ``YYYYMMDD`` stands for, or GPRouteError (with a hint for DDMMYYYY)."""
    if not (len(text) == 8 and text.isascii() and text.isdigit()):
        raise GPRouteError(
            "the date of birth must be eight digits, YYYYMMDD (e.g. 19550109 for 9 January 1955)",
            part="date_of_birth",
        )
    try:
        born = datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        born = None
    if born is None or born < EARLIEST_BIRTH:
        hint = ""
        try:
            datetime.strptime(text, "%d%m%Y")
        except ValueError:
            pass
        else:
            hint = "; it reads as DDMMYYYY (day first): MESH wants the year first, YYYYMMDD"
        what = "is not a real date" if born is None else f"is before {EARLIEST_BIRTH:%Y-%m-%d}"
        raise GPRouteError(
            f"the date of birth {what} (YYYYMMDD expected){hint}", part="date_of_birth"
        )
    return _checked_date(born, today)


def _checked_date(born: date, today: date) -> date:
    if born > today:
        raise GPRouteError("the date of birth is in the future", part="date_of_birth")
    if born < EARLIEST_BIRTH:
        raise GPRouteError(
            f"the date of birth is before {EARLIEST_BIRTH:%Y-%m-%d}", part="date_of_birth"
        )
    return born


def surname_problem(surname: str) -> str | None:
    """What is wrong with ``surname`` (the rules in the module doc), or None."""
    if not surname:
        return "the surname is empty"
    if len(surname) > SURNAME_LIMIT:
        return f"the surname is {len(surname)} characters; at most {SURNAME_LIMIT} are accepted"
    if not surname.isascii() or _SURNAME.fullmatch(surname) is None:
        return (
            "the surname may hold only the letters A-Z, with single spaces, apostrophes or "
            "hyphens between letters (e.g. O'Brien, Smith-Jones); write accented letters "
            "without accents"
        )
    return None


@dataclass(frozen=True, slots=True)
class GPRoute:
    """A GP-routing address, checked when made (:class:`~meshpipe.errors.GPRouteError`
    naming the ``part`` that is wrong). ``str(route)`` is the address to send; ``repr`` is
    masked."""

    nhs_number: str
    date_of_birth: date
    surname: str

    def __post_init__(self) -> None:
        problem = nhs_number_problem(self.nhs_number)
        if problem is not None:
            raise GPRouteError(problem, part="nhs_number")
        _checked_date(self.date_of_birth, date.today())
        problem = surname_problem(self.surname)
        if problem is not None:
            raise GPRouteError(problem, part="surname")

    def __str__(self) -> str:
        return f"{GP_PREFIX}{self.nhs_number}_{self.date_of_birth:%Y%m%d}_{self.surname}"

    def __repr__(self) -> str:
        return f"GPRoute({self.masked()!r})"

    def masked(self) -> str:
        """``GPPROVIDER_******1234``: what logs, errors and the ledger show."""
        return GP_PREFIX + mask_nhs_number(self.nhs_number)

    def matches(self, nhs_number: str, date_of_birth: date, surname: str) -> bool:
        """Whether these demographics are this route's (the surname in any case)."""
        return (
            nhs_number == self.nhs_number
            and date_of_birth == self.date_of_birth
            and surname.casefold() == self.surname.casefold()
        )

    @classmethod
    def parse(cls, address: str) -> GPRoute:
        """The route ``GPPROVIDER_<NHS number>_<YYYYMMDD>_<surname>`` stands for."""
        text = address.strip()
        if not text.upper().startswith(GP_PREFIX):
            raise GPRouteError(
                f"a GP-routing address starts with {GP_PREFIX} (then NHS number, date of "
                "birth YYYYMMDD and surname, separated by '_')",
                part="format",
            )
        parts = text[len(GP_PREFIX) :].split("_")
        if len(parts) != 3:
            raise GPRouteError(
                f"a GP-routing address has three parts after {GP_PREFIX}, separated by '_': "
                f"NHS number, date of birth (YYYYMMDD), surname; this one has {len(parts)}",
                part="format",
            )
        return cls.from_parts(*parts, spaced_number=False)

    @classmethod
    def from_parts(
        cls, nhs_number: str, date_of_birth: str, surname: str, *, spaced_number: bool = True
    ) -> GPRoute:
        """The route of three given parts (``--to-gp NHS_NUMBER,DOB,SURNAME``): surrounding
        spaces dropped, and with ``spaced_number`` the 3-3-4 form (``943 476 5919``)."""
        number = nhs_number.strip()
        if spaced_number and _NHS_SPACED.fullmatch(number):
            number = re.sub(r"[ -]", "", number)
        problem = nhs_number_problem(number)
        if problem is not None:
            raise GPRouteError(problem, part="nhs_number")
        born = _date_of_birth(date_of_birth.strip(), date.today())
        return cls(number, born, surname.strip())

    @classmethod
    def from_argument(cls, text: str) -> GPRoute:
        """The route of ``NHS_NUMBER,DOB,SURNAME`` (``--to-gp``)."""
        parts = text.split(",")
        if len(parts) != 3:
            raise GPRouteError(
                "--to-gp takes NHS_NUMBER,DATE_OF_BIRTH,SURNAME (three values separated by "
                f"commas, the date YYYYMMDD); {len(parts)} value(s) given",
                part="format",
            )
        return cls.from_parts(*parts)


__all__ = [
    "EARLIEST_BIRTH",
    "GP_PREFIX",
    "MASK",
    "ROUTING_ERRORS",
    "SURNAME_LIMIT",
    "GPRoute",
    "GPRoutePart",
    "check_digit",
    "is_gp_address",
    "mask_address",
    "mask_json",
    "mask_nhs_number",
    "mask_patient_details",
    "masked_repr",
    "nhs_number_problem",
    "surname_problem",
]
