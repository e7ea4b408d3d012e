"""meshpipe.logs: the text and JSON formats, the transfer keys, the levels, and never a secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from meshpipe import logs
from meshpipe.config import MeshConfig, Secret

PASSWORD = "pw-Correct-Horse-7731"
SHARED_KEY = "sk-Battery-Staple-9902"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def capture(log_format: logs.LogFormat, verbosity: int = 1) -> io.StringIO:
    stream = io.StringIO()
    logs.configure_logging(verbosity, log_format, stream)
    return stream


@pytest.mark.usefixtures("restore_logging")
def test_text_lines_start_with_meshpipe_and_end_with_the_transfer_keys() -> None:
    stream = capture("text")
    logging.getLogger("meshpipe.watch").info(
        "sent %s", "a.dat", extra={"local_id": "L-1", "message_id": "M-2", "mailbox": "X26ABC1"}
    )
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("meshpipe: ")
    assert " INFO meshpipe.watch: sent a.dat " in line
    assert line.endswith("local_id=L-1 message_id=M-2 mailbox=X26ABC1")


@pytest.mark.usefixtures("restore_logging")
def test_json_is_one_object_per_line_with_the_transfer_keys() -> None:
    stream = capture("json")
    log = logging.getLogger("meshpipe.outbox")
    log.warning("first\nwith a newline", extra={"local_id": "L-1"})
    log.info("second", extra={"message_id": "M-2", "mailbox": "X26ABC1", "other": "ignored"})
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "first\nwith a newline"
    assert first["level"] == "WARNING" and first["logger"] == "meshpipe.outbox"
    assert first["local_id"] == "L-1" and "message_id" not in first
    assert first["time"].endswith("Z") and first["time"][10] == "T"
    assert second == {**second, "message_id": "M-2", "mailbox": "X26ABC1"}
    assert "other" not in second


@pytest.mark.usefixtures("restore_logging")
def test_json_carries_the_traceback() -> None:
    stream = capture("json")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("meshpipe").exception("failed")
    (entry,) = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "RuntimeError: boom" in entry["exception"]


@pytest.mark.parametrize(("verbosity", "shown"), [(0, {"WARNING"}), (1, {"WARNING", "INFO"})])
@pytest.mark.usefixtures("restore_logging")
def test_verbosity_chooses_the_level(verbosity: int, shown: set[str]) -> None:
    stream = capture("json", verbosity)
    log = logging.getLogger("meshpipe.levels")
    log.debug("d")
    log.info("i")
    log.warning("w")
    levels = {json.loads(line)["level"] for line in stream.getvalue().splitlines()}
    assert levels == shown


@pytest.mark.usefixtures("restore_logging")
def test_configuring_again_replaces_the_handler() -> None:
    first = capture("text")
    second = capture("json")
    logging.getLogger("meshpipe").warning("once")
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="choose one of text, json"):
        logs.formatter("xml")  # type: ignore[arg-type]


@pytest.mark.parametrize("log_format", logs.LOG_FORMATS)
@pytest.mark.usefixtures("restore_logging")
def test_no_secret_reaches_the_log(log_format: logs.LogFormat) -> None:
    config = MeshConfig(
        url="local", mailbox="X26ABC1", password=Secret(PASSWORD), shared_key=Secret(SHARED_KEY)
    )
    logs.hide(config.password, config.shared_key)
    stream = capture(log_format, verbosity=2)
    log = logging.getLogger("meshpipe.secrets")
    log.info("config %r password %s key %s", config, config.password, config.shared_key)
    log.info("a careless line with %s and %s", PASSWORD, SHARED_KEY, extra={"mailbox": PASSWORD})
    try:
        raise ValueError(f"bad credentials {PASSWORD}:{SHARED_KEY}")
    except ValueError:
        log.exception("failed")
    text = stream.getvalue()
    assert len(text.splitlines()) >= 3
    assert PASSWORD not in text and SHARED_KEY not in text
    assert logs.REDACTED in text
    assert "X26ABC1" in text  # the mailbox id is not a secret


def test_short_values_are_not_hidden() -> None:
    logs.hide(Secret("ab"), None)
    assert logs.redact("a cab") == "a cab"
