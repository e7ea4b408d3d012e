"""DTSControl files: parsing (what is refused, and why), writing, and the files written
after a send and beside a received message."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshpipe.models import MessageMetadata
from meshpipe.watch.control import (
    MAX_CONTROL_BYTES,
    ControlFile,
    ControlFileError,
    StatusRecord,
    failed_control,
    parse_control,
    received_control,
    render_control,
    send_codec,
    send_headers,
    sent_control,
)

#: Shaped like the examples NHS publishes: empty elements mean "not given".
NHS_STYLE = b"""<DTSControl>
<Version>1.0</Version>
<AddressType>ALL</AddressType>
<MessageType>Data</MessageType>
<From_DTS>X26HC010</From_DTS>
<To_DTS>X26OT002</To_DTS>
<From_ESMTP>sender@example.nhs.uk</From_ESMTP>
<To_ESMTP></To_ESMTP>
<Subject>monthly extract</Subject>
<LocalId>extract-2025-01</LocalId>
<DTSId></DTSId>
<PartnerId></PartnerId>
<Compress>Y</Compress>
<Encrypted>N</Encrypted>
<WorkflowId>DSP_Extract</WorkflowId>
<ProcessId></ProcessId>
<DataChecksum></DataChecksum>
<IsCompressed>N</IsCompressed>
<StatusRecord>
<DateTime>20180808170418</DateTime>
<Event>TRANSFER</Event>
<Status>SUCCESS</Status>
<StatusCode>00</StatusCode>
<Description>Transferred to recipient mailbox</Description>
</StatusRecord>
</DTSControl>
"""


def test_an_nhs_style_control_file_parses_with_empty_elements_as_not_given() -> None:
    control = parse_control(NHS_STYLE, "x.ctl")
    assert control.address_type == "ALL"
    assert control.from_dts == "X26HC010" and control.to_dts == "X26OT002"
    assert control.workflow_id == "DSP_Extract"
    assert control.local_id == "extract-2025-01"
    assert control.partner_id is None and control.dts_id is None and control.to_esmtp is None
    assert control.compress is True and control.encrypted is False
    assert control.allow_chunking is None
    assert control.status_record == StatusRecord(
        datetime(2018, 8, 8, 17, 4, 18, tzinfo=UTC),
        "TRANSFER",
        "SUCCESS",
        "00",
        "Transferred to recipient mailbox",
    )


def test_render_then_parse_gives_the_same_control_file() -> None:
    control = parse_control(NHS_STYLE, "x.ctl")
    assert parse_control(render_control(control), "again.ctl") == control


def test_a_minimal_control_file_takes_the_defaults() -> None:
    control = parse_control(
        b"<DTSControl><To_DTS>X26ABC2</To_DTS><WorkflowId>W</WorkflowId></DTSControl>", "m.ctl"
    )
    assert control == ControlFile(to_dts="X26ABC2", workflow_id="W")


_TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
    max_size=40,
).map(str.strip)


@given(subject=_TEXT, local_id=_TEXT, process_id=_TEXT, flag=st.sampled_from([None, True, False]))
def test_any_text_values_survive_writing_and_reading(
    subject: str, local_id: str, process_id: str, flag: bool | None
) -> None:
    control = ControlFile(
        to_dts="X26ABC2",
        workflow_id="W",
        subject=subject or None,
        local_id=local_id or None,
        process_id=process_id or None,
        compress=flag,
    )
    assert parse_control(render_control(control), "p.ctl") == control


@pytest.mark.parametrize(
    ("data", "code", "element"),
    [
        (b"x" * (MAX_CONTROL_BYTES + 1), "too_large", None),
        (b"<DTSControl><To_DTS>X</DTSControl>", "not_xml", None),
        (b"", "not_xml", None),
        (
            b'<!DOCTYPE DTSControl [<!ENTITY e "boom">]><DTSControl>'
            b"<Subject>&e;</Subject></DTSControl>",
            "unsafe_xml",
            None,
        ),
        (
            b'<!DOCTYPE DTSControl SYSTEM "http://example.invalid/x.dtd"><DTSControl/>',
            "unsafe_xml",
            None,
        ),
        (b"<Control><To_DTS>X26ABC2</To_DTS></Control>", "root", None),
        (b'<DTSControl xmlns="urn:x"><To_DTS>X26ABC2</To_DTS></DTSControl>', "root", None),
        (b"<DTSControl><To>X26ABC2</To></DTSControl>", "unknown_element", "To"),
        (b"<DTSControl><to_dts>X26ABC2</to_dts></DTSControl>", "unknown_element", "to_dts"),
        (
            b"<DTSControl><To_DTS>A1</To_DTS><To_DTS>B2</To_DTS></DTSControl>",
            "duplicate_element",
            "To_DTS",
        ),
        (b'<DTSControl><To_DTS a="1">A1</To_DTS></DTSControl>', "attribute", "To_DTS"),
        (b'<DTSControl v="2"></DTSControl>', "attribute", "DTSControl"),
        (b"<DTSControl>loose<To_DTS>A1</To_DTS></DTSControl>", "structure", "DTSControl"),
        (b"<DTSControl><To_DTS><b>A1</b></To_DTS></DTSControl>", "structure", "To_DTS"),
        (b"<DTSControl><Compress>yes</Compress></DTSControl>", "value", "Compress"),
        (b"<DTSControl><Version>2.0</Version></DTSControl>", "value", "Version"),
        (b"<DTSControl><AddressType>SMTP</AddressType></DTSControl>", "value", "AddressType"),
        (b"<DTSControl><MessageType>Ping</MessageType></DTSControl>", "value", "MessageType"),
        (b"<DTSControl><To_DTS>../../etc</To_DTS></DTSControl>", "value", "To_DTS"),
        (b"<DTSControl><Subject>a&#9;b</Subject></DTSControl>", "value", "Subject"),
        (
            b"<DTSControl><LocalId>" + b"x" * 301 + b"</LocalId></DTSControl>",
            "value",
            "LocalId",
        ),
        (
            b"<DTSControl><StatusRecord><DateTime>yesterday</DateTime></StatusRecord></DTSControl>",
            "value",
            "DateTime",
        ),
        (
            b"<DTSControl><StatusRecord><Colour>red</Colour></StatusRecord></DTSControl>",
            "unknown_element",
            "Colour",
        ),
    ],
)
def test_unsafe_or_wrong_control_files_are_refused_with_a_code(
    data: bytes, code: str, element: str | None
) -> None:
    with pytest.raises(ControlFileError) as caught:
        parse_control(data, "out/x.ctl")
    assert caught.value.code == code
    assert caught.value.element == element
    assert "out/x.ctl" in str(caught.value)


def test_a_billion_laughs_is_refused_before_any_expansion() -> None:
    data = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><DTSControl><Subject>&b;</Subject>'
        b"</DTSControl>"
    )
    with pytest.raises(ControlFileError) as caught:
        parse_control(data, "bomb.ctl")
    assert caught.value.code == "unsafe_xml"


def test_the_error_says_what_to_fix() -> None:
    with pytest.raises(ControlFileError, match=r"<Compress> 'yes' is not Y or N"):
        parse_control(b"<DTSControl><Compress>yes</Compress></DTSControl>", "c.ctl")


def test_send_headers_map_the_elements() -> None:
    control = parse_control(NHS_STYLE, "x.ctl")
    headers = send_headers(control, mailbox="x26hc010", source="x.ctl", filename="x.dat")
    assert headers.to == "X26OT002"
    assert headers.workflow_id == "DSP_Extract"
    assert headers.local_id == "extract-2025-01"
    assert headers.subject == "monthly extract"
    assert headers.filename == "x.dat"
    assert headers.compressed is None and headers.encrypted is None
    flagged = ControlFile(to_dts="B1", workflow_id="W", encrypted=True, is_compressed=True)
    headers = send_headers(flagged, mailbox="A1", source="f.ctl")
    assert headers.encrypted is True and headers.compressed is True


@pytest.mark.parametrize(
    ("control", "code", "words"),
    [
        (ControlFile(to_dts="B1", workflow_id="W", from_dts="C3"), "sender", "sends from A1"),
        (ControlFile(workflow_id="W"), "missing", "recipient's mailbox id"),
        (ControlFile(to_dts="B1"), "missing", "workflow id"),
        (ControlFile(to_dts="B1", workflow_id="W", message_type="Report"), "not_data", "Data"),
    ],
)
def test_a_control_file_that_cannot_be_sent_is_refused(
    control: ControlFile, code: str, words: str
) -> None:
    with pytest.raises(ControlFileError) as caught:
        send_headers(control, mailbox="A1", source="f.ctl")
    assert caught.value.code == code
    assert words in str(caught.value)


def test_compress_chooses_the_codec() -> None:
    assert send_codec(ControlFile(compress=True), "none") == "gzip"
    assert send_codec(ControlFile(compress=False), "zstd") == "none"
    assert send_codec(ControlFile(), "zstd") == "zstd"
    assert send_codec(ControlFile(compress=True, is_compressed=True), "gzip") == "none"


def test_sent_and_failed_control_files_carry_a_status_record() -> None:
    when = datetime(2025, 1, 31, 23, 59, 58, 123, tzinfo=UTC)
    control = ControlFile(to_dts="B1", workflow_id="W", local_id="L")
    sent = parse_control(render_control(sent_control(control, "20250131_ABC", when)), "s.ctl")
    assert sent.dts_id == "20250131_ABC" and sent.local_id == "L"
    assert sent.status_record is not None
    assert sent.status_record.status == "SUCCESS" and sent.status_record.status_code == "00"
    assert sent.status_record.date_time == when.replace(microsecond=0)
    assert b"<DateTime>20250131235958</DateTime>" in render_control(sent)
    failed = failed_control(control, "unknown recipient B1", code="12", when=when)
    assert failed.status_record is not None
    assert (failed.status_record.status, failed.status_record.status_code) == ("ERROR", "12")
    assert failed.dts_id is None


def test_received_control_describes_the_message_and_writes_remote_text_safely() -> None:
    metadata = MessageMetadata.from_headers(
        "20250101120000_XYZ",
        {
            "mex-From": "X26ABC1",
            "mex-To": "X26ABC2",
            "mex-WorkflowID": "W1",
            "mex-LocalID": "L<1>&\x07",
            "mex-Subject": "</Subject><Injected/>",
            "mex-Content-Encrypted": "Y",
            "mex-StatusTimestamp": "20250101120001123",
            "mex-MessageType": "DATA",
        },
    )
    control = received_control(metadata)
    assert control.dts_id == "20250101120000_XYZ"
    assert control.from_dts == "X26ABC1" and control.to_dts == "X26ABC2"
    assert control.encrypted is True
    assert control.status_record is not None
    assert control.status_record.date_time == datetime(2025, 1, 1, 12, 0, 1, tzinfo=UTC)
    again = parse_control(render_control(control), "in.ctl")
    assert again.subject == "</Subject><Injected/>"
    assert again.local_id == "L<1>&\ufffd"


def test_a_received_report_is_a_report_control_file() -> None:
    metadata = MessageMetadata.from_headers(
        "R1",
        {
            "mex-MessageType": "REPORT",
            "mex-StatusCode": "14",
            "mex-StatusEvent": "SEND",
            "mex-StatusDescription": "Undelivered message",
            "mex-LinkedMsgID": "M1",
        },
    )
    when = datetime(2025, 2, 1, tzinfo=UTC)
    control = received_control(metadata, when)
    assert control.message_type == "Report"
    assert control.status_record == StatusRecord(when, "SEND", "ERROR", "14", "Undelivered message")
    assert parse_control(render_control(control), "r.ctl") == control


@given(st.binary(max_size=400))
def test_any_bytes_parse_or_are_refused_with_a_control_file_error(data: bytes) -> None:
    try:
        parse_control(data, "fuzz.ctl")
    except ControlFileError as error:
        assert error.code
        assert "fuzz.ctl" in str(error)


_PIECES = st.sampled_from(
    [
        "<DTSControl>",
        "</DTSControl>",
        "<To_DTS>",
        "</To_DTS>",
        "X26ABC2",
        "<StatusRecord>",
        "</StatusRecord>",
        "<DateTime>20250101000000</DateTime>",
        "<!-- note -->",
        "&amp;",
        "&x;",
        "<![CDATA[y]]>",
        "<?pi x?>",
        "<!DOCTYPE DTSControl []>",
        " ",
    ]
)


@given(st.lists(_PIECES, max_size=12).map("".join))
def test_xml_like_text_parses_or_is_refused_with_a_control_file_error(text: str) -> None:
    try:
        control = parse_control(text.encode(), "fuzz.ctl")
    except ControlFileError as error:
        assert error.code
    else:
        assert parse_control(render_control(control), "again.ctl") == control


def test_comments_and_processing_instructions_are_dropped_unread() -> None:
    data = b"<?xml version='1.0' encoding='ISO-8859-1'?><DTSControl><!-- a note -->"
    data += b"<?app ignore?><Subject>caf\xe9</Subject></DTSControl>"
    assert parse_control(data, "c.ctl") == ControlFile(subject="caf\u00e9")
