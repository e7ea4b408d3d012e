"""One mailbox's inbox: every message waiting in MESH is received, verified and written into
the inbox folder, exactly once, then acknowledged; reports go to the reports folder.

A data message goes through :class:`~meshpipe.durable.DurableReceiver` (resumable, exactly
once: a message delivered before a crash is acknowledged by the next poll, not written again).
It lands atomically in ``inbox/`` under its ``mex-FileName`` made safe (``../../x`` is ``x``;
a name taken gets the message id in front), and before it is acknowledged, beside it:

- ``<name>.meshpipe.json``: the message id, every ``mex-`` header, the file's xxh3-128 and
  size, the time it was received;
- ``<name>.ctl`` (``x.ctl`` for ``x.dat``): a DTSControl file as NHS's MESH client writes
  for a received message.

The control file is written last: a consumer that waits for it sees the data and the sidecar
complete. A name is only chosen if none of the three files exists, so a remote name such as
``x.ctl`` can never take another message's control file.

A report (a non-delivery report, an error report such as a GP-routing failure) is never
written as data: it is recorded on the send it is about as a ``report`` event in the ledger
(:mod:`meshpipe.durable.reports`: by linked message id, then local id), lands in ``reports/``
as ``<message id>.json`` (its status fields, headers and the send's ledger id), and only then
is acknowledged and counted in ``meshpipe_reports_received_total{workflow_id,code}``.

Up to ``messages_at_once`` messages are received side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from meshpipe.client import MeshClient
from meshpipe.durable import DurableReceiver, DurableReceiveResult
from meshpipe.durable.hook import Delivery, delivery_json
from meshpipe.errors import MeshpipeError
from meshpipe.gp_route import mask_json
from meshpipe.ledger import Ledger
from meshpipe.models import MessageMetadata, ReportMessage
from meshpipe.retry import RetryingClient
from meshpipe.transfer.download import inbox_names, safe_filename
from meshpipe.watch.control import (
    CONTROL_SUFFIX,
    DATA_SUFFIX,
    received_control,
    render_control,
)
from meshpipe.watch.folders import make_folders, write_new
from meshpipe.watch.metrics import WatchMetrics
from meshpipe.watch.settings import MailboxSettings

log = logging.getLogger("meshpipe.watch")

SIDECAR_SUFFIX: Final = ".meshpipe.json"
#: MESH lists at most this many messages per poll: a full page means poll again at once.
PAGE_SIZE: Final = 500


@dataclass
class PollResult:
    """What one poll did: messages received (this run or before), reports, failures (left
    in the inbox for the next poll), and how many messages the inbox listed."""

    received: list[DurableReceiveResult] = field(default_factory=list)
    reports: list[ReportMessage] = field(default_factory=list)
    failures: list[tuple[str, BaseException]] = field(default_factory=list)
    listed: int = 0

    @property
    def full_page(self) -> bool:
        return self.listed > 0 and self.listed % PAGE_SIZE == 0


class Inbox:
    """Receives ``settings``' mailbox through ``client`` into its folders, recorded in
    ``ledger`` (see the module doc)."""

    def __init__(
        self,
        settings: MailboxSettings,
        client: MeshClient,
        ledger: Ledger,
        metrics: WatchMetrics,
        *,
        messages_at_once: int = 4,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.messages_at_once = messages_at_once
        self.receiver = DurableReceiver(ledger, hook=self._write_metadata, state_dir=state_dir)
        self._taken: set[Path] = set()
        self._endpoints = RetryingClient(client)

    @property
    def mailbox(self) -> str:
        return self.settings.mailbox

    async def poll_once(self, stopping: asyncio.Event | None = None) -> PollResult:
        """List the inbox and receive what it holds; nothing new starts once ``stopping`` is
        set. Raises only when the inbox cannot be listed (MESH down: the service backs off)."""
        folders = self.settings.folders
        await asyncio.to_thread(make_folders, [folders.inbox, folders.reports])
        ids = await self._endpoints.list_inbox(workflow_filter=self.settings.workflow_filter)
        self.metrics.inbox_backlog.labels(self.mailbox).set(len(ids))
        self.metrics.last_poll_success.labels(self.mailbox).set(time.time())
        result = PollResult(listed=len(ids))
        self._taken.clear()  # names chosen in this poll, until written (polls never overlap)
        gate = asyncio.Semaphore(self.messages_at_once)

        async def one(message_id: str) -> None:
            async with gate:
                if stopping is not None and stopping.is_set():
                    return
                try:
                    await self._receive(message_id, result)
                except (MeshpipeError, OSError) as error:
                    log.warning("%s: message %s not received: %s", self.mailbox, message_id, error)
                    self.metrics.transfers.labels(self.mailbox, "receive", "failed").inc()
                    result.failures.append((message_id, error))

        async with asyncio.TaskGroup() as group:
            for message_id in ids:
                group.create_task(one(message_id))
        return result

    async def _receive(self, message_id: str, result: PollResult) -> None:
        metadata = await self._endpoints.head(message_id)
        if metadata.is_report:
            result.reports.append(await self._file_report(metadata))
            return
        started = time.monotonic()
        received = await self.receiver.receive(
            self.client,
            message_id,
            self._target(metadata),
            recorded_destination="use",
            metadata=metadata,
            require_verified=False,
        )
        outcome = "received" if received.outcome == "delivered" else received.outcome
        labels = (self.mailbox,)
        self.metrics.transfers.labels(*labels, "receive", outcome).inc()
        if received.outcome == "delivered":
            self.metrics.bytes_received.labels(*labels).inc(received.result.size)
            self.metrics.chunks_received.labels(*labels).inc(received.result.chunk_count)
            self.metrics.transfer_seconds.labels(*labels, "receive").observe(
                time.monotonic() - started
            )
        workflow = metadata.workflow_id or ""
        self.metrics.last_received.labels(self.mailbox, workflow).set(time.time())
        log.info(
            "%s: message %s received into %s",
            self.mailbox,
            message_id,
            received.result.path,
            extra={"message_id": message_id, "local_id": metadata.local_id},
        )
        result.received.append(received)

    def _target(self, metadata: MessageMetadata) -> Path:
        """A name in the inbox folder no file of this message's three takes yet."""
        names = inbox_names(metadata, decode_payload=True)
        for candidate in names:
            three = _three(self.settings.folders.inbox / candidate)
            if not any(path in self._taken or path.exists() or path.is_symlink() for path in three):
                self._taken.update(three)  # until written: a message received beside it
                return three[0]
        # Both taken: only by an earlier, interrupted run of this very message (the ledger
        # then gives the recorded destination, and this one is unused).
        return self.settings.folders.inbox / names[1]

    def _write_metadata(self, delivery: Delivery) -> None:
        """The hook (on a thread, before the acknowledgement): the sidecar, then the ctl."""
        sidecar, control = _three(delivery.path)[1:]
        document = {**delivery_json(delivery), "received_at": _now()}
        document.pop("attempt", None)
        _write_own(sidecar, _json_bytes(document), delivery.message_id)
        control_text = render_control(received_control(delivery.metadata))
        _write_own(control, control_text, delivery.message_id)

    async def _file_report(self, metadata: MessageMetadata) -> ReportMessage:
        report = await self.receiver.record_report(
            self.mailbox, ReportMessage.from_metadata(metadata)
        )
        document = mask_json(
            {
                **asdict(report),
                "received_at": _now(),
                "headers": {
                    k: v for k, v in metadata.headers.items() if k.lower().startswith("mex-")
                },
            }
        )  # a report's subject may name the patient (an NDR repeats the message's)
        directory = self.settings.folders.reports
        name = safe_filename(f"{metadata.message_id}.json", metadata.message_id)
        if not (directory / name).exists():  # a report filed before a crash is not filed twice
            await asyncio.to_thread(write_new, directory, name, _json_bytes(document))
        await self._endpoints.acknowledge(metadata.message_id)
        self.metrics.reports.labels(
            self.mailbox, report.workflow_id or "", report.status_code or "unknown"
        ).inc()
        log.warning(
            "%s: %s",
            self.mailbox,
            report.describe(),
            extra={"message_id": report.linked_message_id, "local_id": report.local_id},
        )
        return report


def _three(target: Path) -> tuple[Path, Path, Path]:
    """The data file, its sidecar and its control file (``x.dat`` pairs with ``x.ctl``, as
    for NHS's MESH client; any other name gets ``.ctl`` added)."""
    stem = target.name.removesuffix(DATA_SUFFIX) if target.suffix == DATA_SUFFIX else target.name
    return (
        target,
        target.with_name(target.name + SIDECAR_SUFFIX),
        target.with_name(stem + CONTROL_SUFFIX),
    )


def _write_own(path: Path, data: bytes, message_id: str) -> None:
    """Write ``path`` unless this message's hook already did (a run again after a crash); a
    file there that is not this message's is never replaced."""
    with contextlib.suppress(FileNotFoundError):
        existing = path.read_bytes()
        if existing == data or message_id.encode() in existing:
            return
        raise MeshpipeError(
            f"{path} exists and is not message {message_id}'s: move it away; the message "
            "stays in the inbox until then"
        )
    written = write_new(path.parent, path.name, data)
    if written != path:  # written under another name meanwhile: never two copies
        os.unlink(written)
        raise MeshpipeError(f"{path} appeared while it was being written; polling again")


def _json_bytes(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True, default=str) + "\n").encode()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
