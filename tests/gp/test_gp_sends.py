"""GP-routed sends end to end through ``meshpipe serve`` with strict rules and a demographics
table: delivered to the patient's practice, or not delivered and MESH's error report put in
the sender's inbox, received there as a report (never as data), tied to the original send in
the ledger and shown by ``history``; the NHS number in no log line, error, ledger row or
output."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshpipe import cli
from meshpipe.client import ClientSettings, MeshClient
from meshpipe.config import MeshConfig
from meshpipe.durable import DurableReceiver, DurableSend
from meshpipe.errors import ConfigError, MeshpipeError
from meshpipe.gp_route import check_digit
from meshpipe.headers import SendHeaders
from meshpipe.ledger import Ledger, SourceFile, TransferBusyError
from meshpipe.models import ReportMessage
from meshpipe.retry import RetryPolicy
from meshpipe.server import LocalMeshServer
from meshpipe.server.config import DEFAULT_PASSWORD, DEFAULT_SHARED_KEY
from meshpipe.server.demographics import (
    Demographics,
    PatientRecord,
    RoutingFailure,
    load_demographics,
    parse_record,
)
from meshpipe.server.threaded import ServerThread
from meshpipe.transfer import ReceiveFailure
from meshpipe.units import DEFAULT_CHUNK_SIZE
from meshpipe.watch.folders import make_folders
from meshpipe.watch.inbox import Inbox
from meshpipe.watch.metrics import WatchMetrics
from meshpipe.watch.outbox import Outbox
from meshpipe.watch.settings import MailboxSettings
from tests.watch.conftest import folders_in

SENDER = "X26ABC1"
WORKFLOW = "TEST_WORKFLOW2"  # X26ABC1 sends; X26ABC1, X26ABC2 and X26ABC3 receive
PATIENT = "9434765919"  # registered at X26ABC3
OTHER = "9434765870"  # registered at X26ABC2
TWO_PRACTICES = "4010232137"  # two rows, two practices
UNKNOWN = "9990000026"  # valid, in no row
GONE = "9990000018"  # valid, its practice's mailbox not on this server
#: Every NHS number these tests use: none may appear in any output, log or ledger file.
NUMBERS = (PATIENT, OTHER, TWO_PRACTICES, UNKNOWN, GONE)


def test_the_numbers_are_valid() -> None:
    for number in NUMBERS:
        assert check_digit(number[:9]) == int(number[9])


ROWS = [
    {"nhs_number": PATIENT, "date_of_birth": "19550109", "surname": "Smith", "mailbox": "X26ABC3"},
    {
        "nhs_number": OTHER,
        "date_of_birth": "1980-01-01",
        "surname": "O'Brien",
        "mailbox": "x26abc2",
    },
    {
        "nhs_number": TWO_PRACTICES,
        "date_of_birth": "19900101",
        "surname": "Jones",
        "mailbox": "X26ABC2",
    },
    {
        "nhs_number": TWO_PRACTICES,
        "date_of_birth": "19900101",
        "surname": "JONES",
        "mailbox": "X26ABC3",
    },
    {"nhs_number": GONE, "date_of_birth": "19700101", "surname": "Gone", "mailbox": "Y99ZZZ9"},
]


@pytest.fixture
def demographics(tmp_path: Path) -> Path:
    path = tmp_path / "demographics.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS) + "\n")
    return path


@pytest.fixture
def server(demographics: Path) -> Iterator[LocalMeshServer]:
    """``meshpipe serve --rules strict --demographics FILE`` in a thread, for the test."""
    thread = ServerThread(
        LocalMeshServer(rules="strict", demographics=load_demographics(demographics))
    )
    started = thread.start()
    try:
        yield started
    finally:
        thread.stop()


@pytest.fixture
def env(server: LocalMeshServer, monkeypatch: pytest.MonkeyPatch) -> LocalMeshServer:
    monkeypatch.setenv("MESH_URL", server.url)
    monkeypatch.setenv("MESH_MAILBOX", SENDER)
    monkeypatch.setenv("MESH_PASSWORD", DEFAULT_PASSWORD)
    monkeypatch.setenv("MESH_SHARED_KEY", DEFAULT_SHARED_KEY)
    monkeypatch.setenv("MESHPIPE_CONFIG", "")
    monkeypatch.delenv("MESHPIPE_PROFILE", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent-home-for-tests")
    return server


def client_for(url: str, mailbox: str) -> MeshClient:
    config = MeshConfig(url, mailbox, DEFAULT_PASSWORD, DEFAULT_SHARED_KEY)
    policy = RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2)
    return MeshClient(config, ClientSettings(retry=policy))


def assert_no_patient_number(*texts: str) -> None:
    for text in texts:
        for number in NUMBERS:
            assert number not in text
            assert f"{number[:3]} {number[3:6]} {number[6:]}" not in text


def assert_ledger_free(state_dir: Path) -> None:
    """Not in the ledger's bytes: the database and its write-ahead log."""
    files = [path for path in state_dir.rglob("*") if path.is_file()]
    assert any(path.name.startswith("ledger.sqlite3") for path in files)
    for path in files:
        data = path.read_bytes()
        for number in NUMBERS:
            assert number.encode() not in data, path


class Run:
    """``meshpipe ARGS`` in-process at debug level; everything it printed or logged kept."""

    def __init__(self, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture):
        self.capsys = capsys
        self.caplog = caplog
        self.seen: list[str] = []

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        with self.caplog.at_level(logging.DEBUG):
            status = cli.main([argv[0], "-vv", *argv[1:]])
        captured = self.capsys.readouterr()
        self.seen += [captured.out, captured.err]
        return status, captured.out, captured.err

    def everything(self) -> str:
        # caplog.text is formatted without meshpipe's handler: the masking must not depend on it
        # for what meshpipe itself writes, but a record's message is checked as logged too.
        return "\n".join([*self.seen, self.caplog.text])


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Run:
    return Run(capsys, caplog)


def send_file(tmp_path: Path, name: str = "letter.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(b"a discharge summary\n")
    return path


def inbox_of(url: str, mailbox: str) -> list[str]:
    async def listed() -> list[str]:
        async with client_for(url, mailbox) as client:
            return await client.list_inbox()

    return asyncio.run(listed())


def call(url: str, mailbox: str, method: str, *args: str) -> Any:
    """``MeshClient(mailbox).method(*args)`` from a test that is not a coroutine."""

    async def called() -> Any:
        async with client_for(url, mailbox) as client:
            return await getattr(client, method)(*args)

    return asyncio.run(called())


def test_a_gp_routed_send_is_delivered_to_the_patients_practice(
    env: LocalMeshServer, run: Run, tmp_path: Path, _state_dir: Path
) -> None:
    status, out, err = run(
        "send",
        str(send_file(tmp_path)),
        "--to-gp",
        f"{PATIENT},19550109,smith",
        "--workflow-id",
        WORKFLOW,
    )
    assert status == 0, err
    message_id = out.strip()
    assert inbox_of(env.url, "X26ABC3") == [message_id]
    assert inbox_of(env.url, "X26ABC2") == []
    metadata = call(env.url, "X26ABC3", "head", message_id)
    headers = {name.lower(): value for name, value in metadata.headers.items()}
    assert headers["mex-to"] == "X26ABC3" and headers["mex-from"] == SENDER
    # the raw address form too, and the O'Brien row's practice
    status, out, err = run(
        "send",
        str(send_file(tmp_path, "second.txt")),
        "--to",
        f"GPPROVIDER_{OTHER}_19800101_O'BRIEN",
        "--workflow-id",
        WORKFLOW,
    )
    assert status == 0, err
    assert inbox_of(env.url, "X26ABC2") == [out.strip()]
    status, out, _ = run("history", "--json")
    assert status == 0
    rows = json.loads(out)
    assert {row["counterparty"] for row in rows} == {
        "GPPROVIDER_******5919",
        "GPPROVIDER_******5870",
    }
    assert_no_patient_number(run.everything())
    assert_ledger_free(_state_dir)


def test_the_failure_reports_reach_the_sender_tied_to_the_send(
    env: LocalMeshServer, run: Run, tmp_path: Path, _state_dir: Path
) -> None:
    sent: dict[str, str] = {}
    for code, to_gp in (
        ("EPL-154", f"{PATIENT},19550109,Smyth"),  # no demographics match
        ("EPL-153", f"{UNKNOWN},19550109,Smith"),  # NHS number not found
        ("EPL-150", f"{TWO_PRACTICES},19900101,Jones"),
        ("EPL-151", f"{GONE},19700101,Gone"),
    ):
        status, out, err = run(
            "send",
            str(send_file(tmp_path, f"{code}.txt")),
            "--to-gp",
            to_gp,
            "--workflow-id",
            WORKFLOW,
            "--local-id",
            f"letter-{code}",
        )
        assert status == 0, err  # accepted: the failure comes later, as a report
        sent[code] = out.strip()
    for mailbox in ("X26ABC2", "X26ABC3"):
        assert inbox_of(env.url, mailbox) == []  # delivered to nobody
    tracked = call(env.url, SENDER, "track", sent["EPL-154"])
    assert tracked.status_success is False and (tracked.status or "").lower() == "error"

    out_dir = tmp_path / "received"
    status, out, err = run("receive", "--all", "--out-dir", str(out_dir))
    assert status == 0, err
    assert out == "" and list(out_dir.iterdir()) == []  # reports are never data
    for code, message_id in sent.items():
        [line] = [line for line in err.splitlines() if f"about message {message_id}" in line]
        assert f"code {code} (SEND)" in line and f"local id letter-{code}" in line
        assert "recorded on ledger transfer" in line
    assert "NHS Number supplied does not match the demographics" in err
    assert inbox_of(env.url, SENDER) == []  # acknowledged once recorded

    status, out, err = run("history", sent["EPL-154"])
    assert status == 0, err
    [report_line] = [line for line in out.splitlines() if " report " in line]
    assert "code=EPL-154" in report_line and f"linked_message_id={sent['EPL-154']}" in report_line
    assert "counterparty: GPPROVIDER_******5919" in out
    status, out, _ = run("history", sent["EPL-153"], "--json")
    [shown] = json.loads(out)
    [event] = [event for event in shown["events"] if event["kind"] == "report"]
    assert event["detail"]["code"] == "EPL-153"
    assert event["detail"]["description"] == "NHS Number not found"
    assert event["detail"]["local_id"] == "letter-EPL-153"
    assert_no_patient_number(run.everything())
    assert_ledger_free(_state_dir)


async def test_an_invalid_nhs_number_sent_by_another_client_gets_epl_152(
    server: LocalMeshServer, tmp_path: Path
) -> None:
    """meshpipe never sends an invalid NHS number; another client may. The report is tied to a
    send the ledger knows by its linked message id, and a second sight of it is not recorded
    twice."""
    invalid = f"GPPROVIDER_{PATIENT[:9]}8_19550109_SMITH"
    headers = SendHeaders(to=invalid, workflow_id=WORKFLOW, local_id="raw-1")
    source = send_file(tmp_path)
    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        async with client_for(server.url, SENDER) as sender:
            message_id = await sender.send_message(headers, source.read_bytes())
            record = ledger.begin_send(
                SENDER,
                headers,
                SourceFile.stat(source),
                chunk_size=1 << 20,
                chunk_count=1,
                codec="none",
            )
            ledger.chunk_sent(record, 1, "0" * 32, 20)
            ledger.set_message_id(record, message_id)
            ledger.chunk_accepted(record, 1)
            ledger.finish_send(record, "completed")
            receiver = DurableReceiver(ledger, state_dir=tmp_path / "state")
            results = await receiver.receive_all(sender, tmp_path / "in", acknowledge=False)
            again = await receiver.receive_all(sender, tmp_path / "in", acknowledge=True)
        [report] = results
        assert isinstance(report, ReportMessage) and report.transfer_id == record.id
        assert (report.status_code, report.status_description) == ("EPL-152", "Invalid NHS Number")
        assert report.linked_message_id == message_id and report.local_id == "raw-1"
        assert [item.message_id for item in again] == [report.message_id]
        events = [event for event in ledger.events(record) if event.kind == "report"]
        assert len(events) == 1 and events[0].detail["report_message_id"] == report.message_id
        assert ledger.transfer(record).recipient == "GPPROVIDER_******5918"


async def test_watch_records_files_and_counts_a_report_before_acknowledging_it(
    server: LocalMeshServer, tmp_path: Path
) -> None:
    async with client_for(server.url, SENDER) as sender:
        headers = SendHeaders(
            to=f"GPPROVIDER_{UNKNOWN}_19550109_SMITH", workflow_id=WORKFLOW, local_id="w-1"
        )
        message_id = await sender.send_message(headers, b"x\n")
        with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
            source = send_file(tmp_path)
            record = ledger.begin_send(
                SENDER,
                headers,
                SourceFile.stat(source),
                chunk_size=1 << 20,
                chunk_count=1,
                codec="none",
            )  # known by its local id only (a crash before the message id was recorded)
            settings = MailboxSettings(
                profile="gp",
                config=MeshConfig(server.url, SENDER, DEFAULT_PASSWORD, DEFAULT_SHARED_KEY),
                folders=folders_in(tmp_path),
            )
            inbox = Inbox(settings, sender, ledger, WatchMetrics(), state_dir=tmp_path / "state")
            result = await inbox.poll_once()
            [report] = result.reports
            assert report.transfer_id == record.id and report.linked_message_id == message_id
            [event] = [event for event in ledger.events(record) if event.kind == "report"]
            assert event.detail["code"] == "EPL-153"
        assert await sender.list_inbox() == []
    document = json.loads((tmp_path / "reports" / f"{report.message_id}.json").read_text())
    assert document["status_code"] == "EPL-153" and document["transfer_id"] == record.id
    assert list((tmp_path / "in").iterdir()) == []
    count = inbox.metrics.registry.get_sample_value(
        "meshpipe_reports_received_total",
        {"mailbox": SENDER, "workflow_id": WORKFLOW, "code": "EPL-153"},
    )
    assert count == 1


def test_resolution_codes_without_a_server() -> None:
    table = Demographics(load_rows())
    known = ("X26ABC2", "X26ABC3")
    assert table.resolve(f"GPPROVIDER_{PATIENT}_19550109_SMITH", known) == "X26ABC3"
    for address, code in (
        (f"GPPROVIDER_{PATIENT[:9]}0_19550109_SMITH", "EPL-152"),
        (f"GPPROVIDER_{UNKNOWN}_19550109_SMITH", "EPL-153"),
        (f"GPPROVIDER_{PATIENT}_19550110_SMITH", "EPL-154"),
        (f"GPPROVIDER_{PATIENT}_19551301_SMITH", "EPL-154"),
        (f"GPPROVIDER_{TWO_PRACTICES}_19900101_JONES", "EPL-150"),
        (f"GPPROVIDER_{GONE}_19700101_GONE", "EPL-151"),
        (f"GPPROVIDER_{PATIENT}_19550109", "EPL-151"),
    ):
        with pytest.raises(RoutingFailure) as raised:
            table.resolve(address, known)
        assert raised.value.code == code
        assert_no_patient_number(str(raised.value))


def load_rows() -> list[PatientRecord]:
    return [parse_record(row) for row in ROWS]


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("not json", "not JSON"),
        ("[1]", "JSON object"),
        (json.dumps({"nhs_number": PATIENT}), "missing date_of_birth, surname, mailbox"),
        (json.dumps({**ROWS[0], "nhs_number": PATIENT[:9] + "8"}), "Modulus 11"),
        (json.dumps({**ROWS[0], "date_of_birth": "09/01/1955"}), "YYYYMMDD or YYYY-MM-DD"),
        (json.dumps({**ROWS[0], "surname": " "}), "must not be empty"),
    ],
)
def test_a_bad_demographics_line_is_a_config_error_naming_the_line(
    tmp_path: Path, line: str, says: str
) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[1]) + "\n" + line + "\n")
    with pytest.raises(ConfigError, match=f"line 2: .*{says}") as raised:
        load_demographics(path)
    assert_no_patient_number(str(raised.value))


def test_bad_patient_details_are_refused_before_anything_is_sent(
    env: LocalMeshServer, run: Run, tmp_path: Path, _state_dir: Path
) -> None:
    source = str(send_file(tmp_path))
    wrong_digit = PATIENT[:9] + "8"
    for to_gp, says in (
        (f"{wrong_digit},19550109,Smith", "Modulus 11"),
        (f"{PATIENT},09011955,Smith", "DDMMYYYY"),
        (f"{PATIENT},19550109,Sm1th", "surname may hold only"),
        (f"{PATIENT},19550109", "three values"),
    ):
        status, out, err = run("send", source, "--to-gp", to_gp, "--workflow-id", WORKFLOW)
        assert (status, out) == (2, "")
        assert says in err and wrong_digit not in err
    status, _, err = run(
        "send",
        source,
        "--to",
        f"GPPROVIDER_{wrong_digit}_19550109_SMITH",
        "--workflow-id",
        WORKFLOW,
    )
    assert status == 2 and "Modulus 11" in err and wrong_digit not in err
    status, _, err = run(
        "send",
        source,
        "--to-gp",
        f"{PATIENT},19550109,Smith",
        "--local-id",
        f"x{PATIENT}",
        "--workflow-id",
        WORKFLOW,
    )
    assert status == 2 and "holds the patient's NHS number" in err
    with pytest.raises(SystemExit):
        run("send", source, "--to", "X26ABC2", "--to-gp", f"{PATIENT},19550109,Smith")
    assert "not allowed with argument" in run.capsys.readouterr().err
    assert inbox_of(env.url, "X26ABC3") == []
    assert wrong_digit not in run.everything()
    assert_no_patient_number(run.everything())


async def test_an_interrupted_gp_send_resumes_only_given_its_address_again(
    server: LocalMeshServer, tmp_path: Path
) -> None:
    """The ledger keeps the recipient masked, so a resume that must send chunk 1 again takes
    the address from the caller, and only the same route's."""
    route = f"GPPROVIDER_{PATIENT}_19550109_SMITH"
    source = send_file(tmp_path)
    headers = SendHeaders(to=route, workflow_id=WORKFLOW, local_id="resume-1")
    (tmp_path / "state").mkdir()
    with Ledger.open(tmp_path / "state" / "ledger.sqlite3") as ledger:
        ledger.begin_send(
            SENDER,
            headers,
            SourceFile.stat(source),
            chunk_size=DEFAULT_CHUNK_SIZE,
            chunk_count=1,
            codec="none",
        )  # interrupted before chunk 1 went
        async with client_for(server.url, SENDER) as sender:
            bare = SendHeaders(to="", workflow_id="")
            with pytest.raises(MeshpipeError, match="give the same address again") as raised:
                await DurableSend(sender, ledger, None, bare, resume_local_id="resume-1").run()
            assert "GPPROVIDER_******5919" in str(raised.value)
            other = SendHeaders(to=f"GPPROVIDER_{OTHER}_19800101_OBRIEN", workflow_id="")
            with pytest.raises(MeshpipeError, match="not of this recipient"):
                await DurableSend(sender, ledger, None, other, resume_local_id="resume-1").run()
            given = SendHeaders(to=route, workflow_id="")
            result = await DurableSend(
                sender, ledger, None, given, resume_local_id="resume-1"
            ).run()
        assert result.outcome == "resumed"
        assert ledger.transfer(result.transfer_id or 0).state == "completed"
    async with client_for(server.url, "X26ABC3") as practice:
        assert await practice.list_inbox() == [result.message_id]
    assert_ledger_free(tmp_path / "state")


async def test_watch_sends_a_control_files_gp_route_and_refuses_a_broken_one(
    server: LocalMeshServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folders = folders_in(tmp_path / "gp")
    make_folders(folders.all().values())
    settings = MailboxSettings(
        profile="gp",
        config=MeshConfig(server.url, SENDER, DEFAULT_PASSWORD, DEFAULT_SHARED_KEY),
        folders=folders,
    )
    wrong_digit = PATIENT[:9] + "8"
    for name, to_dts in (("letter", f"GPPROVIDER_{PATIENT}_19550109_Smith"), ("bad", None)):
        (folders.out / f"{name}.dat").write_bytes(b"a letter\n")
        to = to_dts or f"GPPROVIDER_{wrong_digit}_19550109_Smith"
        (folders.out / f"{name}.ctl").write_bytes(
            "<DTSControl><Version>1.0</Version><AddressType>DTS</AddressType>"
            f"<MessageType>Data</MessageType><WorkflowId>{WORKFLOW}</WorkflowId>"
            f"<To_DTS>{to}</To_DTS></DTSControl>".encode()
        )
    with caplog.at_level(logging.DEBUG), Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        async with client_for(server.url, SENDER) as sender:
            outbox = Outbox(
                settings, sender, ledger, WatchMetrics(), settle_seconds=0, concurrency=2
            )
            outcomes = {o.item.name: o for o in await outbox.run_once(asyncio.Event())}
            # a control file that does not parse is judged once it stays the same
            outcomes |= {o.item.name: o for o in await outbox.run_once(asyncio.Event())}
        async with client_for(server.url, "X26ABC3") as practice:
            [delivered] = await practice.list_inbox()
    assert_no_patient_number(repr(outcomes))
    assert outcomes["letter.dat"].outcome == "sent"
    assert outcomes["letter.dat"].message_id == delivered
    assert outcomes["bad.dat"].outcome == "failed"
    reason = (folders.failed / "bad.dat.reason.txt").read_text()
    assert "Modulus 11" in reason and wrong_digit not in reason
    assert wrong_digit not in caplog.text
    assert_no_patient_number(caplog.text, reason, outcomes["bad.dat"].reason or "")


async def test_a_report_that_cannot_be_recorded_is_left_in_the_inbox(
    server: LocalMeshServer, tmp_path: Path
) -> None:
    """Acknowledged only once recorded: while another process holds the send, recording
    fails, so the report stays in the inbox for the next receive, which records it."""
    headers = SendHeaders(
        to=f"GPPROVIDER_{PATIENT}_19550109_JONES", workflow_id=WORKFLOW, local_id="held-1"
    )
    source = send_file(tmp_path)
    location = tmp_path / "ledger.sqlite3"
    with Ledger.open(location) as ledger, Ledger.open(location) as other_process:
        record = ledger.begin_send(
            SENDER,
            headers,
            SourceFile.stat(source),
            chunk_size=DEFAULT_CHUNK_SIZE,
            chunk_count=1,
            codec="none",
        )
        async with client_for(server.url, SENDER) as sender:
            await sender.send_message(headers, b"x\n")
            receiver = DurableReceiver(ledger, state_dir=tmp_path / "state")
            with other_process.claim(record):
                [failure] = await receiver.receive_all(sender, tmp_path / "in")
            assert isinstance(failure, ReceiveFailure)
            assert isinstance(failure.error, TransferBusyError)
            [report_id] = await sender.list_inbox()
            [report] = await receiver.receive_all(sender, tmp_path / "in")
            assert await sender.list_inbox() == []
        assert isinstance(report, ReportMessage) and report.message_id == report_id
        assert report.status_code == "EPL-154" and report.transfer_id == record.id
        assert [event.kind for event in ledger.events(record)].count("report") == 1
