"""The ledger, on SQLite and PostgreSQL, never records a patient's NHS number: a GP-routed
send's recipient, a subject naming the patient, an error's text and an event's detail are
kept masked, while what a resume needs (local id, checksum, paths) is kept as it is."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from meshpipe.durable.history import event_json, summary_json
from meshpipe.headers import SendHeaders
from meshpipe.ledger import HistoryFilter, Ledger, SendRecord, SourceFile

NUMBER = "9434765919"
ROUTE = f"GPPROVIDER_{NUMBER}_19550109_SMITH"


def everything(ledger: Ledger) -> str:
    """Every row the ledger hands back, as JSON text."""
    rows = ledger.history(HistoryFilter(), limit=1000)
    texts = [json.dumps(summary_json(row)) for row in rows]
    for row in rows:
        texts.append(json.dumps(asdict(ledger.transfer(row.id)), default=str))
        texts += [json.dumps(event_json(event)) for event in ledger.events(row.id)]
    return "\n".join(texts)


def test_a_gp_send_is_recorded_without_the_nhs_number(ledger: Ledger, tmp_path: Path) -> None:
    source = tmp_path / "batch-2026120401.csv"  # ten digits in a path are not a patient's
    source.write_bytes(b"x\n")
    headers = SendHeaders(
        to=ROUTE,
        workflow_id="GPCONNECT_SEND_DOCUMENT",
        local_id="letter-1",
        subject=f"Discharge summary for Mr Smith, NHS Number {NUMBER}",
        checksum="meshpipe/2 size:1073741824",
    )
    record = ledger.begin_send(
        "X26ABC1",
        headers,
        SourceFile.stat(source),
        chunk_size=1 << 20,
        chunk_count=1,
        codec="none",
    )
    assert record.recipient == "GPPROVIDER_******5919"
    assert record.subject == "Discharge summary for Mr Smith, NHS Number ******5919"
    assert record.headers["mex-To"] == "GPPROVIDER_******5919"
    assert record.headers["mex-LocalID"] == "letter-1"
    assert record.headers["mex-Content-Checksum"] == "meshpipe/2 size:1073741824"
    assert record.source.path == str(source)
    ledger.record_event(record, "note", text=f"routing {ROUTE}", path=str(source))
    failed = ledger.mark_failed(record, f"MESH refused {ROUTE}: number {NUMBER}")
    assert failed.error == "MESH refused GPPROVIDER_******5919: number ******5919"
    # a resume finds it by the masked recipient
    [found] = ledger.history(HistoryFilter(local_id="letter-1"))
    assert found.counterparty == "GPPROVIDER_******5919"
    assert isinstance(ledger.find_send("X26ABC1", "letter-1"), SendRecord)
    notes = [event for event in ledger.events(record) if event.kind == "note"]
    assert notes[0].detail == {"text": "routing GPPROVIDER_******5919", "path": str(source)}
    shown = everything(ledger)
    assert NUMBER not in shown and "19550109" not in shown and "SMITH" not in shown


def test_a_received_messages_subject_is_recorded_masked(ledger: Ledger, tmp_path: Path) -> None:
    record = ledger.begin_receive(
        "X26ABC3",
        "20261204021128000000_ABC123",
        {
            "mex-From": "X26ABC1",
            "mex-To": "X26ABC3",
            "mex-Subject": f"Letter, NHS Number {NUMBER[:3]} {NUMBER[3:6]} {NUMBER[6:]}",
            "mex-LocalID": "letter-1",
        },
        chunk_count=1,
        codec="none",
        destination=tmp_path / "letter.pdf",
        partial_path=tmp_path / ".letter.pdf.partial",
    )
    assert record.subject == "Letter, NHS Number ******5919"
    assert record.local_id == "letter-1" and record.message_id == "20261204021128000000_ABC123"
    assert "476 5919" not in everything(ledger)
