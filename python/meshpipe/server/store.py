"""Where chunk bytes and message metadata live.

* ``dir``: durable. ``<root>/<RECIPIENT>/in/<ID>/<n>`` holds chunk n as received and
  ``<root>/<RECIPIENT>/in/<ID>.msg`` the message's metadata (JSON). Messages mesh-sandbox's file
  store left there (``<ID>.json``, same chunk layout) are read too. A chunk is written to a
  temporary file and renamed into place after fsync; metadata is written the same way, so a
  crash leaves either the old or the new state, never a torn one. The message status in the
  metadata only becomes ``accepted`` after every chunk file is in place.
* ``memory``: the same layout in a private temporary directory, no fsync, forgotten on close
  (chunk bodies still go to disk, so no chunk is ever held in memory).
* ``discard``: chunk bodies are checked by the caller and dropped; only metadata is kept, in
  memory. Downloads of such messages are synthetic (see streaming.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from pathlib import Path

from meshpipe.server.models import Message
from meshpipe.server.sandbox_import import message_from_sandbox

log = logging.getLogger("meshpipe.server")

METADATA_SUFFIX = ".msg"
#: The used-token journal, a file in the data directory's root (a file, and lower case, so it
#: is never taken for a mailbox folder).
USED_TOKENS_FILE = ".meshpipe-used-tokens"


class ChunkWriter(ABC):
    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    def commit(self) -> None:
        """Make the chunk durable and visible under its final name."""

    @abstractmethod
    def abort(self) -> None:
        """Forget everything written; safe to call after commit (then it does nothing)."""


class _NullWriter(ChunkWriter):
    def write(self, data: bytes) -> None:
        return None

    def commit(self) -> None:
        return None

    def abort(self) -> None:
        return None


class _FileWriter(ChunkWriter):
    def __init__(self, final: Path, durable: bool) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        self._final = final
        self._temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")
        self._durable = durable
        self._fd: int | None = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def write(self, data: bytes) -> None:
        assert self._fd is not None, "chunk writer already closed"
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def commit(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._temp, self._final)
        if self._durable:
            _fsync_dir(self._final.parent)

    def abort(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, *, durable: bool = True) -> None:
    """temp file + fsync + rename (+ fsync of the directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(temp, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temp, path)
    if durable:
        _fsync_dir(path.parent)


class MessageStore(ABC):
    mode: str
    keeps_bodies: bool = True

    @abstractmethod
    def load(self) -> list[Message]:
        """Every message persisted earlier (empty for non-durable stores)."""

    @abstractmethod
    def save(self, message: Message) -> None:
        """Persist the message's metadata atomically."""

    @abstractmethod
    def chunk_writer(self, message: Message, number: int) -> ChunkWriter: ...

    @abstractmethod
    def chunk_path(self, message: Message, number: int) -> Path | None:
        """The stored chunk's file, or None if there is none."""

    @abstractmethod
    def delete(self, message: Message) -> None: ...

    def mailbox_dirs(self) -> list[str]:
        """Upper-case mailbox directories found in the store (the sandbox adds such mailboxes)."""
        return []

    def used_tokens_journal(self) -> Path | None:
        """Where the authentication tokens already used are journalled (durable stores only)."""
        return None

    def clear(self) -> None:  # noqa: B027 - optional hook, a no-op unless overridden
        """Remove everything (non-durable stores only)."""

    def close(self) -> None:
        return None


class DirStore(MessageStore):
    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self.root = root
        self.durable = durable
        self.mode = "dir" if durable else "memory"
        root.mkdir(parents=True, exist_ok=True)

    def _message_dir(self, message: Message) -> Path:
        return self.root / message.recipient / "in" / message.message_id

    def _metadata_path(self, message: Message) -> Path:
        return self.root / message.recipient / "in" / f"{message.message_id}{METADATA_SUFFIX}"

    def load(self) -> list[Message]:
        if not self.durable:
            return []
        messages: list[Message] = []
        for path in sorted(self.root.glob(f"*/in/*{METADATA_SUFFIX}")):
            try:
                messages.append(Message.from_json(json.loads(path.read_bytes())))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping unreadable message metadata %s: %s", path, exc)
        known = {m.message_id for m in messages}
        for path in sorted(self.root.glob("*/in/*.json")):
            if path.stem.upper() in known:
                continue
            try:
                data = json.loads(path.read_bytes())
                messages.append(message_from_sandbox(data, path.with_suffix("")))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping unreadable mesh-sandbox message %s: %s", path, exc)
        for stale in self.root.glob("*/in/*/.*.part"):
            with contextlib.suppress(OSError):
                stale.unlink()
        return messages

    def used_tokens_journal(self) -> Path | None:
        return self.root / USED_TOKENS_FILE if self.durable else None

    def mailbox_dirs(self) -> list[str]:
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and p.name == p.name.upper()
        )

    def save(self, message: Message) -> None:
        if not self.durable:
            return
        data = json.dumps(message.to_json(), separators=(",", ":")).encode()
        write_atomically(self._metadata_path(message), data)

    def chunk_writer(self, message: Message, number: int) -> ChunkWriter:
        return _FileWriter(self._message_dir(message) / str(number), self.durable)

    def chunk_path(self, message: Message, number: int) -> Path | None:
        path = self._message_dir(message) / str(number)
        return path if path.is_file() else None

    def delete(self, message: Message) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._metadata_path(message).unlink()
        shutil.rmtree(self._message_dir(message), ignore_errors=True)

    def clear(self) -> None:
        if self.durable:
            return
        for child in self.root.iterdir():
            shutil.rmtree(child, ignore_errors=True)


class TemporaryStore(DirStore):
    """``memory`` mode: bodies in a private temporary directory removed on close."""

    def __init__(self) -> None:
        self._tempdir = tempfile.TemporaryDirectory(prefix="meshpipe-serve-")
        super().__init__(Path(self._tempdir.name), durable=False)

    def close(self) -> None:
        self._tempdir.cleanup()


class DiscardStore(MessageStore):
    mode = "discard"
    keeps_bodies = False

    def load(self) -> list[Message]:
        return []

    def save(self, message: Message) -> None:
        return None

    def chunk_writer(self, message: Message, number: int) -> ChunkWriter:
        return _NullWriter()

    def chunk_path(self, message: Message, number: int) -> Path | None:
        return None

    def delete(self, message: Message) -> None:
        return None


def make_store(mode: str, data_dir: Path | None) -> MessageStore:
    if mode == "dir":
        assert data_dir is not None
        return DirStore(data_dir)
    if mode == "discard":
        return DiscardStore()
    return TemporaryStore()
