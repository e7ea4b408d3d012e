"""One mailbox's outbox folder: every complete file in it is sent once, through the ledger,
and then moved to ``sent/`` or ``failed/``.

Complete files (:meth:`Outbox.scan`):

- in ``out/`` itself, a data file ``x.dat`` whose control file ``x.ctl`` is there too (the
  data is put first, then the control file, as for NHS's MESH client): the control file
  (:mod:`meshpipe.watch.control`) gives the recipient, workflow and the rest. A control file
  that cannot be used fails the pair once it has stayed unchanged for ``settle_seconds``
  (a control file still being written is not judged);
- in ``out/<folder>/`` of a folder rule, any regular file, once it is unchanged (size,
  modification and change time, inode) between two scans at least ``settle_seconds``
  apart, or, at the first scan that sees it, once its change time is that long (and at
  least 1 s) past: the rule gives the recipient and workflow.

Dotfiles, temporary names (``x.part``, ``x~``...), symlinks, FIFOs and devices are never
picked up (:mod:`meshpipe.watch.folders`).

Each file is sent by :class:`~meshpipe.durable.DurableSend` with a local id: the control
file's ``LocalId``, else one made from the file's identity (mailbox, path, size, modification
time, inode), so that a file sent before a crash but not yet moved is found in the ledger and
reported "already sent", never sent twice. A control file's ``LocalId`` that the ledger shows
was sent from another file is refused (give each file its own ``LocalId``).

What happens to a file (:class:`SendOutcome`):

- ``sent`` / ``already-sent``: the status control file (``DTSId`` = the message id, a
  ``SEND``/``SUCCESS`` status record) is written to ``sent/`` as ``x_<message id>.ctl``, the
  data moved beside it as ``x_<message id>.dat`` (the original extension kept), and the
  original control file removed;
- ``failed`` (a change is needed: a bad control file, an unknown recipient, a workflow the
  recipient may not receive, a file too large...): the data moves to ``failed/``, beside it
  ``<name>.reason.txt`` saying what to fix and, for control-file users, the control file
  with an ``ERROR`` status record;
- ``deferred`` (MESH unreachable or busy after the retry budget, the mailbox's credentials
  refused, the file changed or in use): left in place; the next scan takes it up again and
  the ledger resumes an interrupted send where it stopped.

Names in ``sent/`` and ``failed/`` never replace a file: a name taken gets a number.

With ``fleet = true`` the same files are submitted to the fleet's workers instead, and moved
once the ledger shows their send ended (:mod:`meshpipe.watch.fleet_outbox`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

from meshpipe import units
from meshpipe.client import MeshClient
from meshpipe.durable import DurableSend, DurableSendResult
from meshpipe.errors import (
    ChunkTransferError,
    MeshAuthenticationError,
    MeshConnectionError,
    MeshDuplicateRiskError,
    MeshHTTPError,
    MeshpipeError,
    MeshProtocolError,
    MessageHeaderError,
    PlanError,
    SourceChangedError,
    StateError,
)
from meshpipe.headers import SendHeaders
from meshpipe.ledger import Ledger, LedgerError, SendRecord, SourceFile
from meshpipe.transfer import SendOptions
from meshpipe.watch.control import (
    CONTROL_SUFFIX,
    DATA_SUFFIX,
    MAX_CONTROL_BYTES,
    ControlFile,
    ControlFileError,
    failed_control,
    parse_control,
    render_control,
    send_codec,
    send_headers,
    sent_control,
)
from meshpipe.watch.folders import (
    FileEntry,
    list_folder,
    make_folders,
    move_new,
    read_small,
    regular_file,
    safe_name,
    write_new,
)
from meshpipe.watch.metrics import WatchMetrics
from meshpipe.watch.settings import FolderRule, MailboxSettings

log = logging.getLogger("meshpipe.watch.outbox")

#: What became of a file; "submitted" only with the fleet (meshpipe.watch.fleet_outbox): its
#: send is on the fleet's queue, and the file stays in out/ until the ledger shows it ended.
Outcome = Literal["sent", "already-sent", "failed", "deferred", "submitted"]

REASON_SUFFIX: Final = ".reason.txt"


@dataclass(frozen=True, slots=True)
class OutgoingFile:
    """A complete file to send: ``data`` (as listed), its ``control`` (parsed from
    ``control_path``, or made from ``rule``), the ``codec`` to send with; ``problem`` when it
    cannot be sent as it is (it goes to ``failed/``)."""

    data: FileEntry
    control: ControlFile
    codec: units.Codec
    control_path: Path | None = None
    rule: FolderRule | None = None
    problem: ControlFileError | None = None

    @property
    def name(self) -> str:
        return self.data.name


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What became of ``item``: ``outcome``, the ``message_id`` (sent, already sent),
    ``reason`` (failed, deferred: what to fix, or why it waits) and where the data went."""

    item: OutgoingFile
    outcome: Outcome
    message_id: str | None = None
    reason: str | None = None
    moved_to: Path | None = None


#: A file changed less than this long ago is never taken at its first sighting, whatever
#: settle_seconds says (a writer between two writes).
_MIN_AGE: Final = 1.0


@dataclass
class _Sighting:
    signature: tuple[int, int, int, int, int]
    since: float


class _Failed(Exception):
    """A file that cannot be sent as it is: ``reason`` says what to fix."""

    def __init__(self, reason: str, *, code: str = "99") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class _Deferred(Exception):
    """A file left in place for the next scan: ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Outbox:
    """The outbox of one mailbox (see the module doc). ``settle_seconds``: how long a
    rule-folder file (or a control file that cannot be parsed) must stay unchanged;
    ``concurrency``: messages sent at once."""

    def __init__(
        self,
        settings: MailboxSettings,
        client: MeshClient,
        ledger: Ledger,
        metrics: WatchMetrics,
        *,
        settle_seconds: float,
        concurrency: int,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if settle_seconds < 0:
            raise ValueError("settle_seconds must be at least 0")
        self.settings = settings
        self.client = client
        self.ledger = ledger
        self.metrics = metrics
        self.settle_seconds = settle_seconds
        self.concurrency = concurrency
        self._seen: dict[Path, _Sighting] = {}
        self._in_flight: set[Path] = set()
        self._prepared = False

    @property
    def mailbox(self) -> str:
        return self.settings.mailbox

    # --- scanning --------------------------------------------------------------------------

    async def scan(self) -> list[OutgoingFile]:
        """The complete files waiting in the outbox folders (see the module doc); the
        backlog gauge is set to every file waiting, complete or not."""
        return await asyncio.to_thread(self._scan, time.monotonic())

    def _scan(self, now: float) -> list[OutgoingFile]:
        if not self._prepared:
            folders = self.settings.folders
            make_folders([folders.out, folders.sent, folders.failed])
            make_folders(folders.out / rule.folder for rule in self.settings.rules)
            self._prepared = True
        present: set[Path] = set()  # every file watched (sightings of others are dropped)
        controls: set[Path] = set()  # the control files among them (not backlog)
        ready = self._control_pairs(now, present, controls)
        for rule in self.settings.rules:
            ready += self._rule_files(rule, now, present)
        for path in set(self._seen) - present:
            del self._seen[path]
        self.metrics.outbox_backlog.labels(self.mailbox).set(len(present - controls))
        return [item for item in ready if item.data.path not in self._in_flight]

    def _settled(self, entry: FileEntry, now: float) -> bool:
        """Whether ``entry`` was seen unchanged at least ``settle_seconds`` ago, or, at its
        first sighting, its inode last changed (a write, a rename into the folder) at least
        ``settle_seconds`` ago by the system clock (so ``meshpipe watch --once`` from cron
        sends a file that was dropped before it started)."""
        sighting = self._seen.get(entry.path)
        if sighting is None or sighting.signature != entry.signature:
            self._seen[entry.path] = _Sighting(entry.signature, now)
            age = time.time() - entry.ctime_ns / 1e9
            return sighting is None and age >= max(self.settle_seconds, _MIN_AGE)
        return now - sighting.since >= self.settle_seconds

    def _control_pairs(
        self, now: float, present: set[Path], controls: set[Path]
    ) -> list[OutgoingFile]:
        listing = list_folder(self.settings.folders.out)
        for name, kind in listing.skipped:
            log.debug("%s: %s in the outbox is %s: ignored", self.mailbox, name, kind)
        files = {entry.name: entry for entry in listing.files}
        ready: list[OutgoingFile] = []
        for entry in listing.files:
            if not entry.name.lower().endswith(DATA_SUFFIX):
                continue
            present.add(entry.path)
            stem = entry.name[: -len(DATA_SUFFIX)]
            control = files.get(stem + CONTROL_SUFFIX) or files.get(stem + ".CTL")
            if control is None:
                continue  # the data is there; its control file is not yet
            present.add(control.path)
            controls.add(control.path)
            item = self._with_control(entry, control, now)
            if item is not None:
                ready.append(item)
        return ready

    def _with_control(self, data: FileEntry, control: FileEntry, now: float) -> OutgoingFile | None:
        try:
            parsed = parse_control(read_small(control.path, MAX_CONTROL_BYTES), control.name)
        except (ControlFileError, OSError) as error:
            if not self._settled(control, now):
                return None  # may still be being written: judged once it stays the same
            problem = (
                error
                if isinstance(error, ControlFileError)
                else ControlFileError(
                    f"cannot be read ({error})", code="not_xml", source=control.name
                )
            )
            return OutgoingFile(data, ControlFile(), "none", control.path, problem=problem)
        codec = send_codec(parsed, self.settings.compress)
        return OutgoingFile(data, parsed, codec, control.path)

    def _rule_files(self, rule: FolderRule, now: float, present: set[Path]) -> list[OutgoingFile]:
        try:
            listing = list_folder(self.settings.folders.out / rule.folder)
        except FileNotFoundError:
            self._prepared = False  # removed: made again at the next scan
            return []
        ready: list[OutgoingFile] = []
        control = ControlFile(to_dts=rule.to, workflow_id=rule.workflow_id, subject=rule.subject)
        codec = rule.compress or self.settings.compress
        for entry in listing.files:
            present.add(entry.path)
            if self._settled(entry, now):
                ready.append(OutgoingFile(entry, control, codec, rule=rule))
        return ready

    # --- sending ---------------------------------------------------------------------------

    async def run_once(self, stopping: asyncio.Event) -> list[SendOutcome]:
        """Scan, then send the complete files, ``concurrency`` at once; once ``stopping`` is
        set nothing new starts (sends under way go on; the caller may cancel them, leaving
        them resumable). Returns what became of each file started."""
        if stopping.is_set():
            return []
        items = await self.scan()
        slots = asyncio.Semaphore(self.concurrency)
        tasks: list[asyncio.Task[SendOutcome]] = []
        try:
            for item in items:
                await slots.acquire()
                if stopping.is_set():
                    slots.release()
                    break
                self._in_flight.add(item.data.path)
                tasks.append(asyncio.create_task(self._send_in_slot(item, slots)))
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _send_in_slot(self, item: OutgoingFile, slots: asyncio.Semaphore) -> SendOutcome:
        try:
            return await self.send(item)
        finally:
            self._in_flight.discard(item.data.path)
            slots.release()

    async def send(self, item: OutgoingFile) -> SendOutcome:
        """Send one complete file and move it where it belongs (see the module doc): a file
        refused goes to failed/, one deferred stays for a later scan."""
        try:
            if item.problem is not None:
                raise _Failed(f"{item.problem}", code="06")
            return await self._deliver(item)
        except _Deferred as deferred:
            log.warning("%s: %s left in the outbox: %s", self.mailbox, item.name, deferred.reason)
            return SendOutcome(item, "deferred", reason=deferred.reason)
        except _Failed as failed:
            return await self._fail(item, failed)

    async def _deliver(self, item: OutgoingFile) -> SendOutcome:
        """Send the file from this process and move it to sent/ (the fleet's outbox submits
        it instead); raises _Failed or _Deferred."""
        started = time.monotonic()
        result = await self._send(item)
        outcome: Outcome = "already-sent" if result.outcome == "already-sent" else "sent"
        self._count_sent(item, result, outcome, time.monotonic() - started)
        return await self._finish_sent(item, outcome, result.message_id, result.local_id)

    async def _finish_sent(
        self, item: OutgoingFile, outcome: Outcome, message_id: str, local_id: str
    ) -> SendOutcome:
        """Move a sent file to sent/ (its status control file first) and log it."""
        try:
            moved = await asyncio.to_thread(self._move_sent, item, message_id)
        except OSError as error:
            reason = f"sent as {message_id}, but not moved to sent/ ({error}): fix it"
            log.error("%s: %s %s", self.mailbox, item.name, reason)
            return SendOutcome(item, outcome, message_id, reason=reason)
        log.info(
            "%s: %s %s as message %s",
            self.mailbox,
            item.name,
            "was already sent" if outcome == "already-sent" else "sent",
            message_id,
            extra={"mailbox": self.mailbox, "local_id": local_id, "message_id": message_id},
        )
        return SendOutcome(item, outcome, message_id, moved_to=moved)

    async def _send(self, item: OutgoingFile) -> DurableSendResult:
        headers, generated = self._headers(item)
        assert headers.local_id is not None
        try:
            record = await asyncio.to_thread(self.ledger.find_send, self.mailbox, headers.local_id)
            if record is not None and record.state == "completed":
                return self._already_sent(item, record)
            await asyncio.to_thread(_check_unchanged, item.data)
            return await DurableSend(
                self.client,
                self.ledger,
                item.data.path,
                headers,
                # A new send of a generated local id needs no look-up in MESH's outbox (it
                # was never used); an interrupted send whose file changed goes as a new one.
                again=record is not None or generated,
                notice=lambda text: log.info("%s: %s", self.mailbox, text),
                **self._options(item),
            ).run()
        except Exception as error:
            raise _classified(error) from error

    def _headers(self, item: OutgoingFile) -> tuple[SendHeaders, bool]:
        try:
            headers = send_headers(
                item.control,
                mailbox=self.mailbox,
                source=item.control_path.name if item.control_path else item.name,
                filename=item.name,
            )
        except ControlFileError as error:
            raise _Failed(str(error), code="06") from error
        if headers.local_id:
            return headers, False
        return headers.replace(local_id=file_local_id(self.mailbox, item.data)), True

    def _already_sent(self, item: OutgoingFile, record: SendRecord) -> DurableSendResult:
        """A completed send of this local id: the same file (sent, not yet moved: a crash),
        or another file that reused the control file's LocalId (refused)."""
        if record.source.differences(listed_source(item)):
            raise _Failed(
                f"LocalId {record.local_id!r} was already used by {record.source.path}, sent "
                f"as message {record.message_id}: give this file's control file its own "
                "<LocalId> (or leave it empty)"
            )
        assert record.message_id is not None and record.local_id is not None
        return DurableSendResult("already-sent", record.message_id, record.local_id, record.id)

    def _options(self, item: OutgoingFile) -> SendOptions:
        options: SendOptions = {"codec": item.codec, "chunk_size": self.settings.chunk_size}
        if item.control.allow_chunking is False:
            size = item.data.size
            if size > units.MAX_REQUEST_SIZE:
                raise _Failed(
                    f"<AllowChunking> is N, but {item.name} is {size} bytes, more than one "
                    f"chunk can carry ({units.MAX_REQUEST_SIZE} bytes): set <AllowChunking>Y"
                    "</AllowChunking> or send a smaller file"
                )
            options["chunk_size"] = max(size, self.settings.chunk_size, units.MIN_CHUNK_SIZE)
        return options

    # --- moving ----------------------------------------------------------------------------

    def _move_sent(self, item: OutgoingFile, message_id: str) -> Path:
        """Status control file first (so a crash leaves the data to be found "already
        sent"), then the data, then the original control file is removed."""
        sent = self.settings.folders.sent
        stem, extension = _split(item.name)
        base = safe_name(f"{stem}_{message_id}", message_id)
        control = sent_control(
            _with_sender(item.control, self.mailbox), message_id, datetime.now(UTC)
        )
        status_name = base + CONTROL_SUFFIX
        if not _written_before(sent / status_name, message_id):
            write_new(sent, status_name, render_control(control))
        moved = move_new(item.data.path, sent, base + (extension or DATA_SUFFIX))
        if item.control_path is not None:
            with contextlib.suppress(FileNotFoundError):
                item.control_path.unlink()
        return moved

    async def _fail(self, item: OutgoingFile, failed: _Failed) -> SendOutcome:
        log.error(
            "%s: %s cannot be sent: %s",
            self.mailbox,
            item.name,
            failed.reason,
            extra={"mailbox": self.mailbox},
        )
        try:
            moved = await asyncio.to_thread(self._move_failed, item, failed)
        except OSError as error:
            reason = f"{failed.reason} (and it could not be moved to failed/: {error})"
            return SendOutcome(item, "deferred", reason=reason)
        self.metrics.transfers.labels(self.mailbox, "send", "failed").inc()
        return SendOutcome(item, "failed", reason=failed.reason, moved_to=moved)

    def _move_failed(self, item: OutgoingFile, failed: _Failed) -> Path:
        """The data first (its name in failed/ names the rest), then the reason, then the
        control file (with an ERROR status record when it could be read)."""
        folder = self.settings.folders.failed
        moved = move_new(item.data.path, folder, item.name)
        write_new(folder, moved.name + REASON_SUFFIX, _reason_text(item, failed, self.mailbox))
        if item.control_path is not None:
            control_name = _split(moved.name)[0] + CONTROL_SUFFIX
            if item.problem is not None:
                with contextlib.suppress(FileNotFoundError):
                    move_new(item.control_path, folder, control_name)
            else:
                status = failed_control(item.control, failed.reason[:500], code=failed.code)
                write_new(folder, control_name, render_control(status))
                with contextlib.suppress(FileNotFoundError):
                    item.control_path.unlink()
        return moved

    def _count_sent(
        self, item: OutgoingFile, result: DurableSendResult, outcome: Outcome, seconds: float
    ) -> None:
        self.metrics.transfers.labels(self.mailbox, "send", outcome).inc()
        upload = result.sent
        if upload is None:
            return
        new_chunks = max(upload.chunk_count - result.already_accepted, 0)
        self.metrics.chunks_sent.labels(self.mailbox).inc(new_chunks)
        share = new_chunks / upload.chunk_count if upload.chunk_count else 1.0
        self.metrics.bytes_sent.labels(self.mailbox).inc(round(upload.file_size * share))
        self.metrics.transfer_seconds.labels(self.mailbox, "send").observe(seconds)


# --- helpers ----------------------------------------------------------------------------


def file_local_id(mailbox: str, entry: FileEntry) -> str:
    """The local id of a file sent without one: the same for the same file (path, size,
    modification time, inode, device) from the same mailbox, so a resend finds its send."""
    identity = f"{mailbox.upper()}\0{entry.path}\0{entry.size}\0{entry.mtime_ns}"
    identity += f"\0{entry.inode}\0{entry.device}"
    return "meshpipe-" + hashlib.blake2b(identity.encode(), digest_size=12).hexdigest()


def _check_unchanged(entry: FileEntry) -> None:
    """The file is still the regular file listed (not replaced by a symlink, not written)."""
    try:
        info = regular_file(entry.path)
    except FileNotFoundError:
        raise _Deferred(f"{entry.name} is gone") from None
    except OSError as error:
        raise _Failed(f"{error}: put regular files only in the outbox") from None
    now = (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev)
    if now != entry.signature:
        raise _Deferred(f"{entry.name} changed since it was listed: it is sent once it settles")


def _split(name: str) -> tuple[str, str]:
    """``x.tar.gz`` -> (``x``, ``.tar.gz``); a dotless name has no extension."""
    stem, dot, extensions = name.partition(".")
    return (stem, dot + extensions) if stem else (name, "")


def _with_sender(control: ControlFile, mailbox: str) -> ControlFile:
    return control if control.from_dts else replace(control, from_dts=mailbox)


def _written_before(path: Path, message_id: str) -> bool:
    """Whether ``path`` is already the status control file of ``message_id`` (a crash after
    it was written, before the data moved)."""
    try:
        return parse_control(read_small(path, MAX_CONTROL_BYTES), path.name).dts_id == message_id
    except (OSError, ControlFileError):
        return False


#: Permanent refusals by MESH, and what to change for each.
_MESH_HINTS: Final = {
    "unknown_recipient": "check the recipient mailbox id (To_DTS, or the rule's `to`)",
    "workflow": "the recipient may not receive this workflow id: check WorkflowId (or the "
    "rule's `workflow_id`) with the recipient",
    "missing_header": "give the missing value in the control file or the rule",
    "bad_request": "correct the control file or the rule",
}


def listed_source(item: OutgoingFile) -> SourceFile:
    """The file as the scan listed it, in the ledger's terms (to compare with a send's
    recorded source)."""
    listed = item.data
    return SourceFile(str(listed.path), listed.size, listed.mtime_ns, listed.inode, listed.device)


def _classified(error: BaseException) -> _Failed | _Deferred:
    """A send's error as a failure (a change is needed) or a deferral (try again later)."""
    if isinstance(error, _Failed | _Deferred):
        return error
    if isinstance(error, ChunkTransferError) and isinstance(error.__cause__, MeshHTTPError):
        error = error.__cause__
    if isinstance(error, MeshAuthenticationError):
        return _Deferred(f"MESH refused this mailbox's credentials ({error}): fix the profile")
    if isinstance(error, MeshHTTPError):
        if error.retryable:
            return _Deferred(f"MESH is not accepting messages now: {error}")
        hint = _MESH_HINTS.get(error.kind, "correct the file, its control file or the rule")
        return _Failed(
            f"MESH refused the message: {error}. What to do: {hint}", code=error.code or "99"
        )
    if isinstance(error, ControlFileError | MessageHeaderError | PlanError):
        return _Failed(str(error))
    deferred = (
        MeshConnectionError,
        MeshDuplicateRiskError,
        MeshProtocolError,
        LedgerError,
        SourceChangedError,
        StateError,
        ChunkTransferError,
        OSError,
    )
    if isinstance(error, deferred):
        return _Deferred(str(error))
    if isinstance(error, MeshpipeError):
        return _Failed(str(error))
    log.exception("unexpected error sending a file", exc_info=error)
    return _Deferred(f"unexpected error: {error!r}")


def _reason_text(item: OutgoingFile, failed: _Failed, mailbox: str) -> bytes:
    control = item.control
    where = (
        f"the control file {item.control_path.name}"
        if item.control_path is not None
        else f"the folder rule {item.rule.folder!r}"
        if item.rule is not None
        else "no control"
    )
    lines: Iterable[str] = (
        f"meshpipe could not send {item.name} from mailbox {mailbox}",
        f"(to {control.to_dts or '?'}, workflow {control.workflow_id or '?'}, from {where})",
        f"at {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S')} UTC.",
        "",
        f"Why: {failed.reason}",
        "",
        "To send it again, fix the cause and move the data file (and its .ctl, last) back into",
        "the outbox folder.",
    )
    return ("\n".join(lines) + "\n").encode()


__all__ = [
    "CONTROL_SUFFIX",
    "DATA_SUFFIX",
    "REASON_SUFFIX",
    "Outbox",
    "OutgoingFile",
    "SendOutcome",
    "file_local_id",
]
