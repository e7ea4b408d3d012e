"""DTSControl files: the ``.ctl`` XML that NHS's MESH client reads beside each data file it
sends (``x.dat`` with ``x.ctl``) and writes beside each file it sent or received.

The format: one root element ``<DTSControl>`` holding simple elements, in any order, each at
most once, plus an optional ``<StatusRecord>`` (``DateTime`` as ``YYYYMMDDHHMMSS`` UTC,
``Event``, ``Status``, ``StatusCode``, ``Description``). Empty elements
(``<PartnerId></PartnerId>``) mean "not given". A control file is untrusted input, so
:func:`parse_control` refuses, with one :class:`ControlFileError` naming what to fix: more
than :data:`MAX_CONTROL_BYTES`, anything but well-formed XML, a DTD, entities, namespaces,
attributes, unknown or repeated elements, text outside elements, and any value that breaks
its element's rule below (comments and processing instructions are dropped unread).

How each element is used when meshpipe sends the data file:

=================  ====================================================================
``Version``        ``1.0`` (the only version); kept.
``AddressType``    ``DTS`` or ``ALL``: the recipient is the MESH mailbox in ``To_DTS``
                   (SMTP addressing is not supported); kept.
``MessageType``    ``Data`` to send; ``Report`` only in files meshpipe writes (a report
                   cannot be sent).
``WorkflowId``     ``mex-WorkflowID`` (required).
``To_DTS``         ``mex-To``: the recipient mailbox (required), or a GP-routing address
                   ``GPPROVIDER_<NHS number>_<YYYYMMDD>_<surname>`` checked as
                   :class:`~meshpipe.gp_route.GPRoute` (a broken one is refused naming
                   the part, never showing the patient's details).
``From_DTS``       when given, must be the sending mailbox (else refused); written in.
``From_ESMTP``     kept, not sent (MESH addresses mailboxes, not e-mail).
``To_ESMTP``       kept, not sent.
``Subject``        ``mex-Subject``.
``LocalId``        ``mex-LocalID``: also the send's identity in the ledger, so a file sent
                   once is not sent twice.
``PartnerId``      ``mex-PartnerID``.
``DTSId``          ignored on the way out (MESH gives the message its id); set to the
                   message id in the ``.ctl`` written to ``sent/``, and on received files.
``Compress``       ``Y``: meshpipe compresses the data with gzip on the way (the recipient
                   gets the original bytes); ``N``: sent as it is; absent: the folder's
                   setting.
``IsCompressed``   ``Y``: the data is already compressed by the sender
                   (``mex-Content-Compressed: Y``); sent as it is.
``Encrypted``      ``Y``: the data is already encrypted (``mex-Content-Encrypted: Y``).
``AllowChunking``  ``N``: the file must go as one chunk (refused if it does not fit one).
``ProcessId``      kept, not sent.
``DataChecksum``   kept, not sent (meshpipe sends and verifies its own xxh3-128 checksum).
``StatusRecord``   ignored on the way out; written by :func:`sent_control`,
                   :func:`failed_control` and :func:`received_control`.
=================  ====================================================================

:func:`render_control` writes a control file back (UTF-8, the elements in NHS's order, every
element present, empty when not given); ``parse_control(render_control(c))`` is ``c``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape

import defusedxml
import defusedxml.ElementTree

from meshpipe import units
from meshpipe.errors import GPRouteError, MeshpipeError
from meshpipe.gp_route import GPRoute, is_gp_address, masked_repr
from meshpipe.headers import CONTROL_CHARACTERS, SEND_HEADER_LIMITS, SendHeaders
from meshpipe.models import MessageMetadata

#: A data file and its control file: ``x.dat`` with ``x.ctl`` (NHS's MESH client's naming).
DATA_SUFFIX: Final = ".dat"
CONTROL_SUFFIX: Final = ".ctl"
#: A control file is a few hundred bytes; anything larger than this is refused unread.
MAX_CONTROL_BYTES: Final = 64 * 1024

#: The timestamp format of ``StatusRecord/DateTime`` (UTC).
DATE_TIME_FORMAT: Final = "%Y%m%d%H%M%S"

ControlErrorCode = Literal[
    "too_large",
    "not_xml",
    "unsafe_xml",
    "root",
    "unknown_element",
    "duplicate_element",
    "attribute",
    "structure",
    "value",
    "missing",
    "sender",
    "not_data",
]


class ControlFileError(MeshpipeError, ValueError):
    """A control file that cannot be used. ``code`` names the rule broken
    (:data:`ControlErrorCode`), ``source`` the file, ``element`` the element when one is at
    fault; the message says what to change."""

    def __init__(
        self, message: str, *, code: ControlErrorCode, source: str, element: str | None = None
    ) -> None:
        super().__init__(f"control file {source}: {message}")
        self.code = code
        self.source = source
        self.element = element


@dataclass(frozen=True, slots=True)
class StatusRecord:
    """What happened to the file: ``date_time`` (UTC, whole seconds), ``event`` (e.g.
    ``TRANSFER``, ``SEND``), ``status`` (``SUCCESS`` or ``ERROR``), ``status_code`` (MESH's,
    ``00`` for success) and ``description``."""

    date_time: datetime
    event: str
    status: str
    status_code: str
    description: str


@dataclass(frozen=True, slots=True)
class ControlFile:
    """One DTSControl file (see the module doc for each field's use). Text fields are None
    when the element is absent or empty; flags are True (Y), False (N) or None (not given)."""

    version: str = "1.0"
    address_type: str = "DTS"
    message_type: str = "Data"
    workflow_id: str | None = None
    from_dts: str | None = None
    to_dts: str | None = None
    from_esmtp: str | None = None
    to_esmtp: str | None = None
    subject: str | None = None
    local_id: str | None = None
    dts_id: str | None = None
    partner_id: str | None = None
    process_id: str | None = None
    data_checksum: str | None = None
    compress: bool | None = None
    encrypted: bool | None = None
    is_compressed: bool | None = None
    allow_chunking: bool | None = None
    status_record: StatusRecord | None = None

    def __repr__(self) -> str:
        """The dataclass form, with patient details masked (a GP-routing ``To_DTS``)."""
        return masked_repr(self)


# --- the elements and their rules ---------------------------------------------------------

_MAILBOX: Final = re.compile(r"^[A-Za-z0-9]{1,20}$")
_MESSAGE_ID: Final = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_STATUS_CODE: Final = re.compile(r"^[0-9A-Za-z]{1,10}$")
_WORD: Final = re.compile(r"^[A-Za-z_]{1,40}$")
_FLAGS: Final[Mapping[str, bool]] = {"Y": True, "N": False}
#: Longest free-text value where MESH sets no limit (ProcessId, e-mail addresses, ...).
_TEXT_LIMIT: Final = 500
#: Characters XML 1.0 cannot hold at all, even escaped (replaced when writing).
_NOT_XML: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

#: Element name -> ControlFile field, in the order NHS's client writes them.
_TEXT_ELEMENTS: Final[Mapping[str, str]] = {
    "Version": "version",
    "AddressType": "address_type",
    "MessageType": "message_type",
    "From_DTS": "from_dts",
    "To_DTS": "to_dts",
    "From_ESMTP": "from_esmtp",
    "To_ESMTP": "to_esmtp",
    "Subject": "subject",
    "LocalId": "local_id",
    "DTSId": "dts_id",
    "PartnerId": "partner_id",
    "Compress": "compress",
    "Encrypted": "encrypted",
    "WorkflowId": "workflow_id",
    "ProcessId": "process_id",
    "DataChecksum": "data_checksum",
    "IsCompressed": "is_compressed",
    "AllowChunking": "allow_chunking",
}
_FLAG_FIELDS: Final = frozenset({"compress", "encrypted", "is_compressed", "allow_chunking"})
_STATUS_ELEMENTS: Final[Mapping[str, str]] = {
    "DateTime": "date_time",
    "Event": "event",
    "Status": "status",
    "StatusCode": "status_code",
    "Description": "description",
}
_HEADER_OF: Final[Mapping[str, str]] = {
    "WorkflowId": "mex-WorkflowID",
    "To_DTS": "mex-To",
    "Subject": "mex-Subject",
    "LocalId": "mex-LocalID",
    "PartnerId": "mex-PartnerID",
}


def _text_problem(element: str, value: str) -> str | None:
    """What is wrong with any element's text (too long, a control character), or None."""
    limit = SEND_HEADER_LIMITS.get(_HEADER_OF.get(element, ""), _TEXT_LIMIT)
    if len(value) > limit:
        return f"is {len(value)} characters long; at most {limit} are allowed"
    if CONTROL_CHARACTERS.search(value):
        return "contains a control character (tab, newline, ...): put it on one line"
    return None


def _rule(pattern: re.Pattern[str], what: str) -> Callable[[str, str], str | None]:
    def check(element: str, value: str) -> str | None:
        return None if pattern.match(value) else f"{value!r} is not {what}"

    return check


def _recipient(element: str, value: str) -> str | None:
    """A mailbox id, or a GP-routing address that is a route (the problem never shows it)."""
    if is_gp_address(value):
        try:
            GPRoute.parse(value)
        except GPRouteError as error:
            return f"is not a GP-routing address MESH can route: {error}"
        return None
    return _rule(_MAILBOX, "a MESH mailbox id (letters and digits, e.g. X26ABC1)")(element, value)


def _one_of(*allowed: str) -> Callable[[str, str], str | None]:
    def check(element: str, value: str) -> str | None:
        if value.upper() in (item.upper() for item in allowed):
            return None
        return f"{value!r} is not one of {', '.join(allowed)}"

    return check


_VALUE_RULES: Final[Mapping[str, Callable[[str, str], str | None]]] = {
    "Version": _one_of("1.0"),
    "AddressType": _one_of("DTS", "ALL"),
    "MessageType": _one_of("Data", "Report"),
    "From_DTS": _rule(_MAILBOX, "a MESH mailbox id (letters and digits, e.g. X26ABC1)"),
    "To_DTS": _recipient,
    "DTSId": _rule(_MESSAGE_ID, "a MESH message id"),
}


# --- parsing ----------------------------------------------------------------------------


def parse_control(data: bytes, source: str) -> ControlFile:
    """The control file ``data`` (read from ``source``, named in errors): see the module doc
    for what is refused. Raises :class:`ControlFileError`."""
    if len(data) > MAX_CONTROL_BYTES:
        raise ControlFileError(
            f"is {len(data)} bytes; a DTSControl file is at most {MAX_CONTROL_BYTES} bytes",
            code="too_large",
            source=source,
        )
    root = _xml_root(data, source)
    if root.tag != "DTSControl":
        raise ControlFileError(
            f"the root element is <{_shown(root.tag)}>; a control file is one <DTSControl> element",
            code="root",
            source=source,
        )
    _check_plain(root, source, children_allowed=True)
    values: dict[str, object] = {}
    for child in root:
        name = _element_name(child, source, _TEXT_ELEMENTS.keys() | {"StatusRecord"})
        field = "status_record" if name == "StatusRecord" else _TEXT_ELEMENTS[name]
        if field in values:
            raise ControlFileError(
                f"<{name}> appears twice: keep one",
                code="duplicate_element",
                source=source,
                element=name,
            )
        if name == "StatusRecord":
            values[field] = _status_record(child, source)
        else:
            values[field] = _value(child, name, field, source)
    given = {key: value for key, value in values.items() if value is not None}
    return ControlFile(**given)  # type: ignore[arg-type]


def _xml_root(data: bytes, source: str) -> Element:
    try:
        root = defusedxml.ElementTree.fromstring(
            data, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except defusedxml.DefusedXmlException as error:
        raise ControlFileError(
            f"uses a construct refused for safety ({type(error).__name__}: DTDs, entities and "
            "external references are not allowed): write plain elements only",
            code="unsafe_xml",
            source=source,
        ) from None
    except (SyntaxError, ValueError) as error:  # ParseError is a SyntaxError
        raise ControlFileError(
            f"is not well-formed XML ({error}): fix the XML", code="not_xml", source=source
        ) from None
    assert isinstance(root, Element)
    return root


def _shown(tag: object) -> str:
    return repr(tag)[1:-1][:60] if isinstance(tag, str) else "a processing instruction"


def _element_name(child: Element, source: str, known: set[str] | frozenset[str]) -> str:
    name = child.tag
    if not isinstance(name, str) or name not in known:
        raise ControlFileError(
            f"<{_shown(name)}> is not a DTSControl element (known: {', '.join(sorted(known))}): "
            "remove it or fix its name (names are case-sensitive, without namespaces)",
            code="unknown_element",
            source=source,
            element=name if isinstance(name, str) else None,
        )
    return name


def _check_plain(element: Element, source: str, *, children_allowed: bool) -> None:
    """No attributes; text only where allowed (a container holds only whitespace between
    its children; a value element holds no children)."""
    name = str(element.tag)
    if element.attrib:
        raise ControlFileError(
            f"<{name}> has attributes ({', '.join(map(_shown, element.attrib))}): remove them",
            code="attribute",
            source=source,
            element=name,
        )
    stray = [element.text, *(child.tail for child in element)] if children_allowed else []
    if any(text and text.strip() for text in stray):
        raise ControlFileError(
            f"<{name}> holds text outside its elements: put every value in its element",
            code="structure",
            source=source,
            element=name,
        )
    if not children_allowed and len(element):
        raise ControlFileError(
            f"<{name}> holds other elements; it takes a plain value",
            code="structure",
            source=source,
            element=name,
        )


def _value(child: Element, name: str, field: str, source: str) -> str | bool | None:
    _check_plain(child, source, children_allowed=False)
    value = (child.text or "").strip()
    if not value:
        return None
    problem = _text_problem(name, value)
    if problem is None and field in _FLAG_FIELDS and value.upper() not in _FLAGS:
        problem = f"{value!r} is not Y or N"
    rule = _VALUE_RULES.get(name)
    if problem is None and rule is not None:
        problem = rule(name, value)
    if problem is not None:
        raise ControlFileError(f"<{name}> {problem}", code="value", source=source, element=name)
    if field in _FLAG_FIELDS:
        return _FLAGS[value.upper()]
    if name == "AddressType":
        return value.upper()
    if name == "MessageType":
        return value.capitalize()
    return value


def _status_record(element: Element, source: str) -> StatusRecord | None:
    _check_plain(element, source, children_allowed=True)
    values: dict[str, str] = {}
    for child in element:
        name = _element_name(child, source, frozenset(_STATUS_ELEMENTS))
        if name in values:
            raise ControlFileError(
                f"<StatusRecord> holds <{name}> twice: keep one",
                code="duplicate_element",
                source=source,
                element=name,
            )
        _check_plain(child, source, children_allowed=False)
        value = (child.text or "").strip()
        problem = _text_problem(name, value)
        if problem is not None:
            raise ControlFileError(f"<{name}> {problem}", code="value", source=source, element=name)
        values[name] = value
    if not any(values.values()):
        return None
    return StatusRecord(
        date_time=_date_time(values.get("DateTime", ""), source),
        event=values.get("Event", ""),
        status=values.get("Status", ""),
        status_code=values.get("StatusCode", ""),
        description=values.get("Description", ""),
    )


def _date_time(value: str, source: str) -> datetime:
    try:
        if len(value) != 14 or not value.isdigit():
            raise ValueError(value)
        return datetime.strptime(value, DATE_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise ControlFileError(
            f"<DateTime> {value!r} is not a time as YYYYMMDDHHMMSS (e.g. 20250131235959)",
            code="value",
            source=source,
            element="DateTime",
        ) from None


# --- writing ----------------------------------------------------------------------------


def render_control(control: ControlFile) -> bytes:
    """``control`` as a DTSControl file (UTF-8, one element a line, in NHS's order)."""
    lines = ["<DTSControl>"]
    for name, field in _TEXT_ELEMENTS.items():
        lines.append(f"  <{name}>{_text(getattr(control, field))}</{name}>")
    record = control.status_record
    if record is not None:
        lines.append("  <StatusRecord>")
        for name, field in _STATUS_ELEMENTS.items():
            value = getattr(record, field)
            if isinstance(value, datetime):
                value = value.astimezone(UTC).strftime(DATE_TIME_FORMAT)
            lines.append(f"    <{name}>{_text(value)}</{name}>")
        lines.append("  </StatusRecord>")
    lines.append("</DTSControl>")
    return ("\n".join(lines) + "\n").encode()


def _text(value: object) -> str:
    """An element's text: flags as Y/N, None as empty; characters XML cannot hold become
    U+FFFD, line breaks become spaces (values are single lines)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "Y" if value else "N"
    text = CONTROL_CHARACTERS.sub(" ", _NOT_XML.sub("\ufffd", str(value)))
    return escape(text.strip())


# --- the control file of a send, and the ones written after it ---------------------------


def send_headers(
    control: ControlFile, *, mailbox: str, source: str, filename: str | None = None
) -> SendHeaders:
    """The headers to send the data file of ``control`` with, from ``mailbox``; raises
    :class:`ControlFileError` when the file cannot be sent as it is (a report, no recipient or
    workflow, another sender)."""
    if control.message_type.capitalize() != "Data":
        raise ControlFileError(
            f"<MessageType> is {control.message_type}: only Data files can be sent",
            code="not_data",
            source=source,
            element="MessageType",
        )
    for name, value in (("To_DTS", control.to_dts), ("WorkflowId", control.workflow_id)):
        if not value:
            raise ControlFileError(
                f"<{name}> is missing or empty: give the "
                + ("recipient's mailbox id" if name == "To_DTS" else "workflow id"),
                code="missing",
                source=source,
                element=name,
            )
    if control.from_dts and control.from_dts.upper() != mailbox.upper():
        raise ControlFileError(
            f"<From_DTS> is {control.from_dts}, but this folder sends from {mailbox}: put the "
            f"file in {control.from_dts}'s outbox, or set <From_DTS> to {mailbox} (or leave it "
            "empty)",
            code="sender",
            source=source,
            element="From_DTS",
        )
    assert control.to_dts is not None and control.workflow_id is not None
    return SendHeaders(
        to=control.to_dts.upper(),
        workflow_id=control.workflow_id,
        local_id=control.local_id,
        subject=control.subject,
        filename=filename,
        partner_id=control.partner_id,
        compressed=True if control.is_compressed else None,
        encrypted=True if control.encrypted else None,
    )


def send_codec(control: ControlFile, default: units.Codec) -> units.Codec:
    """The codec to send with: gzip for ``Compress=Y``, none for ``N``, else ``default``.
    Data the sender compressed already (``IsCompressed=Y``) is not compressed again."""
    if control.is_compressed:
        return "none"
    if control.compress is None:
        return default
    return "gzip" if control.compress else "none"


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def sent_control(
    control: ControlFile, message_id: str, when: datetime | None = None
) -> ControlFile:
    """The control file written to ``sent/`` beside a file sent as ``message_id``."""
    return dataclasses.replace(
        control,
        dts_id=message_id,
        status_record=StatusRecord(
            date_time=(when or _now()).replace(microsecond=0),
            event="SEND",
            status="SUCCESS",
            status_code="00",
            description=f"Uploaded to MESH as message {message_id}",
        ),
    )


def failed_control(
    control: ControlFile, reason: str, *, code: str = "99", when: datetime | None = None
) -> ControlFile:
    """The control file written to ``failed/`` beside a file that could not be sent."""
    return dataclasses.replace(
        control,
        status_record=StatusRecord(
            date_time=(when or _now()).replace(microsecond=0),
            event="SEND",
            status="ERROR",
            status_code=code if _STATUS_CODE.match(code) else "99",
            description=reason,
        ),
    )


def received_control(metadata: MessageMetadata, when: datetime | None = None) -> ControlFile:
    """The control file written beside a message received (``metadata``: its headers, from
    a remote sender, so untrusted: :func:`render_control` writes any text safely). The
    status record's time is MESH's status timestamp when it gives one, else ``when`` (now by
    default)."""
    report = metadata.is_report
    record = StatusRecord(
        date_time=_mesh_time(metadata.status_timestamp) or (when or _now()).replace(microsecond=0),
        event=(metadata.status_event or "TRANSFER") if report else "TRANSFER",
        status="ERROR" if report else "SUCCESS",
        status_code=(metadata.status_code or "") if report else "00",
        description=(metadata.status_description or "")
        if report
        else "Transferred to recipient mailbox",
    )
    return ControlFile(
        message_type="Report" if report else "Data",
        workflow_id=metadata.workflow_id,
        from_dts=metadata.sender,
        to_dts=metadata.recipient,
        subject=metadata.subject,
        local_id=metadata.local_id,
        dts_id=metadata.message_id,
        partner_id=metadata.partner_id,
        data_checksum=metadata.checksum_header,
        encrypted=metadata.encrypted,
        is_compressed=metadata.compressed,
        status_record=record,
    )


def _mesh_time(value: str | None) -> datetime | None:
    """MESH's ``mex-StatusTimestamp`` (``YYYYMMDDHHMMSS``, sometimes with fractions)."""
    digits = (value or "").strip()[:14]
    if len(digits) != 14 or not digits.isdigit():
        return None
    try:
        return datetime.strptime(digits, DATE_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


__all__ = [
    "MAX_CONTROL_BYTES",
    "ControlFile",
    "ControlFileError",
    "StatusRecord",
    "failed_control",
    "parse_control",
    "received_control",
    "render_control",
    "send_codec",
    "send_headers",
    "sent_control",
]
