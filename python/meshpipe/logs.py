"""How every meshpipe command logs: one handler on the root logger, writing to stderr.

Two formats: ``text`` (the default), lines starting ``meshpipe:`` with the time, level,
logger and message; ``json``, one JSON object per line with ``time`` (UTC, ISO 8601),
``level``, ``logger``, ``message`` and, when a call passes them as ``extra=``, the transfer's
keys ``local_id``, ``message_id`` and ``mailbox`` (text lines end with them as ``key=value``).
An exception's traceback is included (``exception`` in JSON).

Never a secret: :class:`meshpipe.config.Secret` renders as ``<redacted>`` wherever it is
formatted, and every secret value handed to :func:`hide` (a command hides its profile's
password and shared key as soon as it has read them) is replaced by ``<redacted>`` in every
line, whatever put it there (a message, an argument, an exception's text).

Never a patient's details either: every line goes through
:func:`meshpipe.gp_route.mask_patient_details`, so a GP-routing address shows as
``GPPROVIDER_******1234`` and any other NHS number-like run of ten digits as ``******1234``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, Literal, TextIO

from meshpipe.config import Secret
from meshpipe.gp_route import mask_patient_details

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("text", "json")

#: The fields a transfer's log lines are keyed by (pass them with ``extra=``).
TRANSFER_KEYS: Final = ("local_id", "message_id", "mailbox")

REDACTED: Final = "<redacted>"

#: Secret values shorter than this are not searched for (a one-letter test password would
#: blank out every occurrence of that letter); MESH passwords and keys are far longer.
_SHORTEST_HIDDEN: Final = 4

_hidden: set[str] = set()


def hide(*secrets: Secret | None) -> None:
    """Have every later log line show ``<redacted>`` instead of these secrets' values."""
    for secret in secrets:
        if secret is not None and len(secret.reveal()) >= _SHORTEST_HIDDEN:
            _hidden.add(secret.reveal())


def redact(text: str) -> str:
    """``text`` with every hidden secret value replaced (longest first), then patient details
    masked (:func:`~meshpipe.gp_route.mask_patient_details`)."""
    for value in sorted(_hidden, key=len, reverse=True):
        if value in text:
            text = text.replace(value, REDACTED)
    return mask_patient_details(text)


def _keys(record: logging.LogRecord) -> dict[str, str]:
    """The transfer keys given with ``extra=`` (as text; a Secret shows redacted)."""
    found: dict[str, str] = {}
    for key in TRANSFER_KEYS:
        value = record.__dict__.get(key)
        if value is not None:
            found[key] = str(value)
    return found


def _utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """``meshpipe: <time> <LEVEL> <logger>: <message> [key=value ...]``, secrets redacted."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"meshpipe: {_utc(record.created)} {record.levelname} {record.name}: "
        line += record.getMessage()
        keys = _keys(record)
        if keys:
            line += " " + " ".join(f"{key}={value}" for key, value in keys.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, secrets redacted."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_keys(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, ensure_ascii=False))


class _MeshpipeHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_logging` installs (and replaces when called again)."""


def formatter(log_format: LogFormat) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return TextFormatter()
    raise ValueError(f"log format {log_format!r}: choose one of {', '.join(LOG_FORMATS)}")


def level_for(verbosity: int) -> int:
    """``-v`` count → level: warnings only, ``-v`` info, ``-vv`` debug."""
    if verbosity <= 0:
        return logging.WARNING
    return logging.INFO if verbosity == 1 else logging.DEBUG


def configure_logging(
    verbosity: int = 0, log_format: LogFormat = "text", stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record at the level ``verbosity`` chooses to ``stream`` (stderr) in
    ``log_format``; replaces the handler an earlier call installed. Returns the handler."""
    handler = _MeshpipeHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in [item for item in root.handlers if isinstance(item, _MeshpipeHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level_for(verbosity))
    return handler


@contextmanager
def logging_configured(
    verbosity: int = 0, log_format: LogFormat = "text", stream: TextIO | None = None
) -> Iterator[logging.Handler]:
    """:func:`configure_logging` for the duration of a command: afterwards the handler is
    removed and the root logger's level restored (a command run in-process leaves nothing)."""
    root = logging.getLogger()
    level = root.level
    handler = configure_logging(verbosity, log_format, stream)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


__all__ = [
    "LOG_FORMATS",
    "REDACTED",
    "TRANSFER_KEYS",
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "configure_logging",
    "formatter",
    "hide",
    "level_for",
    "logging_configured",
    "redact",
]
