"""Safe file operations inside the watched folders, whose contents are untrusted: whoever can
drop a file in a folder must not be able to make the service read, replace or write anything
outside it.

- :func:`make_folders` creates a mailbox's folders (refusing a path that is a file).
- :func:`list_folder` lists a folder without following symbolic links: only regular files
  are offered; a symlink, FIFO, socket or device is listed as skipped (never opened), and
  dotfiles and the temporary names editors and copy tools use (:func:`is_temporary_name`)
  are left alone.
- :func:`read_small` reads a small regular file (a control file) without following a
  symlink or blocking on a FIFO swapped in after the listing.
- :func:`move_new` moves a file into a folder atomically and never over another file: a name
  already taken gets a number (``x-1.dat``); :func:`write_new` writes a new file the same
  way (a temporary file, fsync, then a link that cannot replace). Both fsync the folders, so
  a file moved or written is still there after a power cut.
- :func:`safe_name` makes a file name from untrusted text (a remote sender's file name): one
  plain name, never a path, a dotfile or ``..``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
import stat
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

#: Names used while a file is still being written by common tools (and by us).
TEMPORARY_SUFFIXES: Final = (
    "~",
    ".tmp",
    ".temp",
    ".part",
    ".partial",
    ".swp",
    ".filepart",
    ".crdownload",
    ".download",
)
#: Longest name written (bytes of UTF-8): most file systems allow 255.
MAX_NAME_BYTES: Final = 200
#: Characters kept in names made from untrusted text, besides letters and digits.
_NAME_PUNCTUATION: Final = frozenset("._-+=@,")
#: How many numbered alternatives are tried before a name is given up as taken.
_MAX_ALTERNATIVES: Final = 10_000

_RENAME_NOREPLACE: Final = 1
_AT_FDCWD: Final = -100


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A regular file found in a folder, with what tells whether it changed since."""

    name: str
    path: Path
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @property
    def signature(self) -> tuple[int, int, int, int, int]:
        """Equal across two listings only if the file was not written, replaced or touched."""
        return (self.size, self.mtime_ns, self.ctime_ns, self.inode, self.device)


@dataclass(frozen=True, slots=True)
class FolderListing:
    """``files``: regular files, by name; ``folders``: sub-folder names (real directories);
    ``skipped``: (name, why) of entries never opened (symlinks, FIFOs, devices, sockets)."""

    files: tuple[FileEntry, ...]
    folders: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]


def make_folders(paths: Iterable[Path]) -> None:
    """Create each folder (and its parents) when missing; a path that exists and is not a
    directory is refused with an error naming it."""
    for path in paths:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise NotADirectoryError(
                f"{path} exists and is not a folder: move it away or choose another folder"
            ) from None
        if not path.is_dir():
            raise NotADirectoryError(f"{path} is not a folder: choose another folder")


def is_temporary_name(name: str) -> bool:
    """A dotfile or a name tools use while writing (``x.part``, ``x~``, ...): not picked up."""
    lowered = name.lower()
    return name.startswith(".") or name.startswith("~$") or lowered.endswith(TEMPORARY_SUFFIXES)


def list_folder(directory: Path) -> FolderListing:
    """What ``directory`` holds, without following symlinks (see the module doc)."""
    files: list[FileEntry] = []
    folders: list[str] = []
    skipped: list[tuple[str, str]] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if is_temporary_name(entry.name):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone since the listing
            kind = _kind(info.st_mode)
            if kind == "file":
                files.append(
                    FileEntry(
                        name=entry.name,
                        path=Path(entry.path),
                        size=info.st_size,
                        mtime_ns=info.st_mtime_ns,
                        ctime_ns=info.st_ctime_ns,
                        inode=info.st_ino,
                        device=info.st_dev,
                    )
                )
            elif kind == "folder":
                folders.append(entry.name)
            else:
                skipped.append((entry.name, kind))
    files.sort(key=lambda item: item.name)
    return FolderListing(tuple(files), tuple(sorted(folders)), tuple(sorted(skipped)))


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISLNK(mode):
        return "a symbolic link (never followed)"
    if stat.S_ISFIFO(mode):
        return "a FIFO (never read)"
    if stat.S_ISSOCK(mode):
        return "a socket (never read)"
    return "a device (never read)"


def regular_file(path: Path) -> os.stat_result:
    """``path``'s status if it is a regular file itself (not a symlink); else an OSError
    saying what it is."""
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, f"{path} is {_kind(info.st_mode)}, not a regular file")
    return info


def read_small(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` + 1 of them (so a caller sees
    that it is too large); a symlink is not followed and a FIFO not waited on (OSError)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, f"{path} is a symbolic link (never followed)") from None
        raise
    with os.fdopen(descriptor, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"{path} is {_kind(mode)}, not a regular file")
        return handle.read(limit + 1)


def safe_name(text: str | None, fallback: str) -> str:
    """A plain file name made from untrusted ``text``: its last path part, letters, digits
    and ``._-+=@,`` kept, anything else ``_``, no leading dots or dashes (no dotfile, no
    ``..``, no option-like name), at most :data:`MAX_NAME_BYTES` (the extension kept);
    ``fallback`` (itself made safe) when nothing is left."""
    name = unicodedata.normalize("NFC", text or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c if c.isalnum() or c in _NAME_PUNCTUATION else "_" for c in name)
    name = name.lstrip(".-")
    if len(name.encode()) > MAX_NAME_BYTES:
        stem, extension = os.path.splitext(name)
        extension = extension if len(extension) <= 20 else ""
        while stem and len((stem + extension).encode()) > MAX_NAME_BYTES:
            stem = stem[:-1]
        name = stem + extension
    if not name.strip("._-"):
        return "file" if text == fallback else safe_name(fallback, fallback)
    return name


def numbered(name: str, number: int) -> str:
    """``name`` with ``-number`` before its extensions: ``x.tar.gz`` -> ``x-2.tar.gz``."""
    stem, dot, extensions = name.partition(".")
    return f"{stem}-{number}{dot}{extensions}" if stem else f"{name}-{number}"


def _candidates(directory: Path, name: str) -> Iterable[Path]:
    yield directory / name
    for number in range(1, _MAX_ALTERNATIVES):
        yield directory / numbered(name, number)


def move_new(source: Path, directory: Path, name: str) -> Path:
    """Move ``source`` into ``directory`` as ``name`` (a plain name), or a numbered name when
    that is taken; never replaces a file. Atomic within a file system (rename without
    replace, or a hard link then unlink); across file systems a copy is written next to the
    target, fsynced and linked in, then the source removed. Returns the new path."""
    _check_plain_name(name)
    for target in _candidates(directory, name):
        try:
            _rename_no_replace(source, target)
        except FileExistsError:
            continue
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            target = _copy_across(source, directory, name)
            source.unlink()
            _sync_directory(source.parent)
            return target
        _sync_directory(directory)
        if source.parent != directory:
            _sync_directory(source.parent)
        return target
    raise FileExistsError(f"{directory}: every name like {name!r} is taken: clear the folder")


def write_new(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as a new file in ``directory`` named ``name`` (a numbered name when
    taken), atomically: readers see the whole file or none. Returns its path."""
    _check_plain_name(name)
    temporary = _write_temporary(directory, data)
    try:
        return _link_new(temporary, directory, name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def _check_plain_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"{name!r} is not a plain file name: make it with safe_name()")


def _write_temporary(directory: Path, data: bytes) -> Path:
    temporary = directory / f".meshpipe-{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(temporary, flags, 0o644)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    return temporary


def _link_new(temporary: Path, directory: Path, name: str) -> Path:
    """Link the fsynced ``temporary`` in as ``name`` or a numbered name (never replacing)."""
    for target in _candidates(directory, name):
        try:
            os.link(temporary, target, follow_symlinks=False)
        except FileExistsError:
            continue
        _sync_directory(directory)
        return target
    raise FileExistsError(f"{directory}: every name like {name!r} is taken: clear the folder")


def _copy_across(source: Path, directory: Path, name: str) -> Path:
    temporary = directory / f".meshpipe-{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    read_flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        with (
            os.fdopen(os.open(source, read_flags), "rb") as reader,
            os.fdopen(os.open(temporary, flags, 0o644), "wb") as writer,
        ):
            shutil.copyfileobj(reader, writer, 1024 * 1024)
            writer.flush()
            os.fsync(writer.fileno())
        return _link_new(temporary, directory, name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def _load_renameat2() -> Callable[..., int] | None:
    """libc's renameat2 (Linux 3.15+, glibc 2.28+), or None where there is none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return cast("Callable[..., int]", function)


_RENAMEAT2 = _load_renameat2()
#: errno values saying renameat2's no-replace flag is not available here.
_NO_RENAMEAT2: Final = frozenset({errno.ENOSYS, errno.EINVAL, errno.ENOTSUP})


def _rename_no_replace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` unless ``target`` exists (FileExistsError)."""
    if _RENAMEAT2 is not None:
        result = _RENAMEAT2(
            _AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE
        )
        if result == 0:
            return
        code = ctypes.get_errno()
        if code not in _NO_RENAMEAT2:
            raise OSError(code, os.strerror(code), str(target))
    # Without renameat2: a hard link cannot replace either; then the old name goes.
    os.link(source, target, follow_symlinks=False)
    source.unlink()


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


__all__ = [
    "MAX_NAME_BYTES",
    "TEMPORARY_SUFFIXES",
    "FileEntry",
    "FolderListing",
    "is_temporary_name",
    "list_folder",
    "make_folders",
    "move_new",
    "numbered",
    "read_small",
    "regular_file",
    "safe_name",
    "write_new",
]
