"""GP-routing addresses: the NHS number's Modulus 11 check, the date of birth, the surname,
the string form, and patient details masked wherever text is shown."""

from __future__ import annotations

import logging
import string
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshpipe.errors import GPRouteError, MeshpipeError, MessageHeaderError
from meshpipe.gp_route import (
    GPRoute,
    check_digit,
    mask_patient_details,
    nhs_number_problem,
)
from meshpipe.headers import SendHeaders
from meshpipe.logs import JsonFormatter, TextFormatter
from meshpipe.watch.control import ControlFileError, parse_control, send_headers

#: Valid NHS numbers (Modulus 11), of the kind NHS's own test data uses.
VALID = ("9434765919", "9434765870", "4010232137", "9990001234"[:9] + "0")
NUMBER = "9434765919"
ADDRESS = f"GPPROVIDER_{NUMBER}_19550109_SMITH"


def valid_number(first_nine: str) -> str | None:
    digit = check_digit(first_nine)
    return None if digit is None else first_nine + str(digit)


def test_the_check_digit_follows_modulus_11() -> None:
    # 9*10 + 4*9 + 3*8 + 4*7 + 7*6 + 6*5 + 5*4 + 9*3 + 1*2 = 299; 299 % 11 = 2; 11 - 2 = 9
    assert check_digit("943476591") == 9
    # a remainder of 0 gives 11, which stands for 0
    assert check_digit("000000000") == 0
    # a remainder of 1 gives 10: no valid number starts with these nine digits
    assert check_digit("100000001") is None


@pytest.mark.parametrize("number", ["9434765919", "9434765870", "4010232137", "0000000000"])
def test_valid_nhs_numbers_pass(number: str) -> None:
    assert nhs_number_problem(number) is None
    assert GPRoute(number, date(1955, 1, 9), "Smith").nhs_number == number


@pytest.mark.parametrize(
    ("number", "says"),
    [
        ("9434765918", "Modulus 11"),  # wrong check digit
        ("9434765910", "Modulus 11"),
        ("1000000010", "check digit of 10"),  # 100000001 gives 10: never valid
        ("943476591", "ten digits, not 9"),
        ("94347659190", "ten digits, not 11"),
        ("943476591X", "0-9 only"),
        ("943 476 5919", "0-9 only"),  # spaces only in --to-gp's three-part form
        ("", "0-9 only"),
        ("٩٤٣٤٧٦٥٩١٩", "0-9 only"),  # Arabic-Indic digits are digits to str.isdigit
    ],
)
def test_invalid_nhs_numbers_are_refused_naming_the_part(number: str, says: str) -> None:
    with pytest.raises(GPRouteError, match=says) as raised:
        GPRoute.parse(f"GPPROVIDER_{number}_19550109_SMITH")
    assert raised.value.part == "nhs_number"
    if len(number) == 10:
        assert number not in str(raised.value)


@pytest.mark.parametrize(
    ("dob", "says"),
    [
        ("19550230", "not a real date"),  # 30 February
        ("19551301", "not a real date"),
        ("20230229", "not a real date"),  # not a leap year
        ("18991231", "before 1900-01-01"),
        ("1955019", "eight digits"),
        ("1955-01-09", "eight digits"),
        ("09011955", "DDMMYYYY"),  # 9 January 1955, day first: the hint
    ],
)
def test_impossible_dates_are_refused(dob: str, says: str) -> None:
    with pytest.raises(GPRouteError, match=says) as raised:
        GPRoute.parse(f"GPPROVIDER_{NUMBER}_{dob}_SMITH")
    assert raised.value.part == "date_of_birth"
    assert dob not in str(raised.value)


def test_a_date_of_birth_in_the_future_is_refused_and_today_and_a_leap_day_are_not() -> None:
    tomorrow = date.today() + timedelta(days=1)
    with pytest.raises(GPRouteError, match="in the future"):
        GPRoute.parse(f"GPPROVIDER_{NUMBER}_{tomorrow:%Y%m%d}_SMITH")
    with pytest.raises(GPRouteError, match="in the future"):
        GPRoute(NUMBER, tomorrow, "Smith")
    assert GPRoute.parse(f"GPPROVIDER_{NUMBER}_{date.today():%Y%m%d}_SMITH")
    assert GPRoute.parse(f"GPPROVIDER_{NUMBER}_20000229_SMITH").date_of_birth == date(2000, 2, 29)


@pytest.mark.parametrize(
    "surname", ["Smith", "O'Brien", "Smith-Jones", "De La Cruz", "d'Arcy-Van Der Berg", "A" * 35]
)
def test_surnames_with_spaces_apostrophes_and_hyphens_are_accepted(surname: str) -> None:
    route = GPRoute.parse(f"GPPROVIDER_{NUMBER}_19550109_{surname}")
    assert route.surname == surname
    assert GPRoute.parse(str(route)) == route


@pytest.mark.parametrize(
    ("surname", "says"),
    [
        ("", "empty"),
        ("A" * 36, "36 characters"),
        ("Smith  Jones", "single spaces"),
        ("-Smith", "between letters"),
        ("Smith'", "between letters"),
        ("O''Brien", "between letters"),
        ("Smith3", "letters A-Z"),
        ("Müller", "without accents"),
        ("Smith Jones_X", None),  # a fourth part
    ],
)
def test_surnames_mesh_may_refuse_are_refused(surname: str, says: str | None) -> None:
    with pytest.raises(GPRouteError, match=says) as raised:
        GPRoute.parse(f"GPPROVIDER_{NUMBER}_19550109_{surname}")
    assert raised.value.part == ("format" if says is None else "surname")


@pytest.mark.parametrize(
    "address",
    ["GPPROVIDER_", f"GPPROVIDER_{NUMBER}", f"GPPROVIDER_{NUMBER}_19550109", "X26ABC1"],
)
def test_an_address_not_in_three_parts_is_a_format_error(address: str) -> None:
    with pytest.raises(GPRouteError) as raised:
        GPRoute.parse(address)
    assert raised.value.part == "format"
    assert NUMBER not in str(raised.value)


def test_the_string_form_round_trips_and_the_repr_is_masked() -> None:
    route = GPRoute.parse("gpprovider_9434765919_19550109_Smith")
    assert route == GPRoute(NUMBER, date(1955, 1, 9), "Smith")
    assert str(route) == "GPPROVIDER_9434765919_19550109_Smith"
    assert repr(route) == "GPRoute('GPPROVIDER_******5919')"
    assert NUMBER not in repr([route]) and "SMITH" not in repr(route).upper()
    assert route.matches(NUMBER, date(1955, 1, 9), "SMITH")
    assert not route.matches(NUMBER, date(1955, 1, 10), "Smith")


def test_the_three_part_argument_of_to_gp() -> None:
    route = GPRoute.from_argument("943 476 5919, 19550109 ,O'Brien")
    assert str(route) == "GPPROVIDER_9434765919_19550109_O'Brien"
    with pytest.raises(GPRouteError, match="three values") as raised:
        GPRoute.from_argument("9434765919,19550109")
    assert raised.value.part == "format"


def test_gp_route_error_is_a_header_error_a_meshpipe_error_and_a_value_error() -> None:
    with pytest.raises(GPRouteError) as raised:
        GPRoute.parse("GPPROVIDER_9434765918_19550109_SMITH")
    error = raised.value
    assert isinstance(error, MessageHeaderError | MeshpipeError | ValueError)
    assert isinstance(error, ValueError) and isinstance(error, MeshpipeError)
    assert (error.header, error.rule, error.part) == ("mex-To", "gp_route", "nhs_number")


def test_send_headers_check_a_gp_recipient_before_anything_is_sent() -> None:
    assert SendHeaders(to=ADDRESS, workflow_id="WF").validate().to == ADDRESS
    with pytest.raises(GPRouteError) as raised:
        SendHeaders(to="GPPROVIDER_9434765918_19550109_SMITH", workflow_id="WF").validate()
    assert raised.value.part == "nhs_number"
    [problem] = SendHeaders(to=ADDRESS.replace("1955", "1855"), workflow_id="WF").problems()
    assert (problem.header, problem.rule, problem.part) == ("mex-To", "gp_route", "date_of_birth")
    assert SendHeaders(to=ADDRESS, workflow_id="WF").to_request()["mex-To"] == ADDRESS


@pytest.mark.parametrize("local_id", [NUMBER, f"ref-{NUMBER}", "ref-943-476-5919", "943 476 5919"])
def test_a_local_id_holding_the_patients_nhs_number_is_refused(local_id: str) -> None:
    headers = SendHeaders(to=ADDRESS, workflow_id="WF", local_id=local_id)
    with pytest.raises(MessageHeaderError, match="holds the patient's NHS number") as raised:
        headers.validate()
    assert raised.value.header == "mex-LocalID" and raised.value.rule == "patient_detail"
    assert NUMBER not in str(raised.value)
    # the same local id to a mailbox is not a patient detail meshpipe can know of
    SendHeaders(to="X26ABC2", workflow_id="WF", local_id=local_id).validate()


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"to {ADDRESS} failed", "to GPPROVIDER_******5919 failed"),
        (f"'{ADDRESS.lower()}'", "'GPPROVIDER_******5919'"),
        (f"mex-To: GPPROVIDER_{NUMBER}_19550109_O'BRIEN-SMITH.", "mex-To: GPPROVIDER_******5919."),
        (f"NHS number {NUMBER}.", "NHS number ******5919."),
        ("NHS number 943 476 5919", "NHS number ******5919"),
        ("NHS number 943-476-5919", "NHS number ******5919"),
        ("GPPROVIDER_943476591", "GPPROVIDER_******6591"),  # a number too short: still hidden
        ("GPPROVIDER_12_X", "GPPROVIDER_******"),
        ("GPPROVIDER_943 476 5919_19550109_SMITH", "GPPROVIDER_******5919"),
        # not NHS numbers: a MESH message id's 20 digits, 9 and 11 digits
        ("20200601122152994285_D59900", "20200601122152994285_D59900"),
        ("123456789 and 12345678901", "123456789 and 12345678901"),
        # inside a word of letters and digits (a hexadecimal message id): not a number
        ("7E2052B4CD1234567890F5E7 x9434765919", "7E2052B4CD1234567890F5E7 x9434765919"),
        (f"ref-{NUMBER}_x (={NUMBER})", "ref-******5919_x (=******5919)"),
        ("", ""),
    ],
)
def test_mask_patient_details(text: str, shown: str) -> None:
    assert mask_patient_details(text) == shown
    assert mask_patient_details(shown) == shown  # masking twice changes nothing


@given(
    st.from_regex(r"[0-9]{9}", fullmatch=True),
    st.text(
        st.characters(blacklist_categories=["Nd"], blacklist_characters=string.ascii_letters),
        max_size=20,
    ),
)
def test_no_valid_nhs_number_standing_alone_survives_masking(first_nine: str, around: str) -> None:
    number = valid_number(first_nine)
    if number is None:
        return
    for text in (f"{around}{number}{around}", f"x GPPROVIDER_{number}_19550109_SMITH {around}"):
        masked = mask_patient_details(text)
        assert number not in masked


def test_every_log_line_is_masked(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("meshpipe.test")
    with caplog.at_level(logging.INFO, logger="meshpipe.test"):
        logger.info("sending to %s", ADDRESS, extra={"local_id": f"x-{NUMBER}"})
    [record] = caplog.records
    for formatter in (TextFormatter(), JsonFormatter()):
        line = formatter.format(record)
        assert NUMBER not in line and "GPPROVIDER_******5919" in line


def control(to_dts: str) -> bytes:
    return (
        "<DTSControl><Version>1.0</Version><AddressType>DTS</AddressType>"
        "<MessageType>Data</MessageType><WorkflowId>WF</WorkflowId>"
        f"<To_DTS>{to_dts}</To_DTS></DTSControl>"
    ).encode()


def test_a_control_files_to_dts_may_be_a_gp_routing_address() -> None:
    parsed = parse_control(control("GPPROVIDER_9434765919_19550109_O&apos;Brien"), "x.ctl")
    headers = send_headers(parsed, mailbox="X26ABC1", source="x.ctl")
    assert headers.to == "GPPROVIDER_9434765919_19550109_O'BRIEN"
    with pytest.raises(ControlFileError, match="Modulus 11") as raised:
        parse_control(control("GPPROVIDER_9434765918_19550109_SMITH"), "x.ctl")
    assert raised.value.element == "To_DTS" and "9434765918" not in str(raised.value)
    with pytest.raises(ControlFileError, match="mailbox id"):
        parse_control(control("X26 ABC"), "x.ctl")


@given(
    st.from_regex(r"[0-9]{9}", fullmatch=True),
    st.dates(min_value=date(1900, 1, 1), max_value=date.today()),
    st.from_regex(r"[A-Za-z]{1,10}(?:[ '\-][A-Za-z]{1,10}){0,2}", fullmatch=True),
)
def test_every_valid_route_round_trips_through_its_string_form(
    first_nine: str, born: date, surname: str
) -> None:
    number = valid_number(first_nine)
    if number is None:
        with pytest.raises(GPRouteError, match="check digit of 10"):
            GPRoute.parse(f"GPPROVIDER_{first_nine}0_{born:%Y%m%d}_{surname}")
        return
    route = GPRoute(number, born, surname)
    assert GPRoute.parse(str(route)) == route
    assert GPRoute.parse(str(route).upper()).matches(number, born, surname)
    assert SendHeaders(to=str(route), workflow_id="WF").validate()
    assert number not in mask_patient_details(f"to {route}") and number not in repr(route)


def test_the_reprs_of_headers_and_control_files_are_masked() -> None:
    headers = SendHeaders(to=ADDRESS, workflow_id="WF", subject=f"NHS Number {NUMBER}")
    shown = repr(headers)
    assert NUMBER not in shown and "19550109" not in shown
    assert shown.startswith("SendHeaders(to='GPPROVIDER_******5919', workflow_id='WF'")
    assert "subject='NHS Number ******5919'" in shown
    parsed = parse_control(control(ADDRESS), "x.ctl")
    assert NUMBER not in repr(parsed) and "to_dts='GPPROVIDER_******5919'" in repr(parsed)
    assert NUMBER not in repr([headers, parsed])
