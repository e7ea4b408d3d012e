"""Safe file operations in the watched folders: listings that never follow a symlink, moves
and writes that never replace a file, and names made safe from untrusted text."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshpipe.watch import folders
from meshpipe.watch.folders import (
    MAX_NAME_BYTES,
    is_temporary_name,
    list_folder,
    make_folders,
    move_new,
    numbered,
    read_small,
    safe_name,
    write_new,
)


def test_make_folders_creates_them_and_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    wanted = [tmp_path / "a" / "out", tmp_path / "a" / "sent"]
    make_folders(wanted)
    make_folders(wanted)  # again: nothing to do
    assert all(path.is_dir() for path in wanted)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        make_folders([tmp_path / "file"])


def test_listing_offers_regular_files_only_and_never_follows_links(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("outside")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "b.dat").write_bytes(b"1")
    (folder / "a.dat").write_bytes(b"22")
    (folder / "link.dat").symlink_to(secret)
    (folder / "dangling.dat").symlink_to(tmp_path / "missing")
    os.mkfifo(folder / "pipe.dat")
    (folder / "rules").mkdir()
    (folder / ".hidden").write_text("x")
    (folder / "c.dat.part").write_text("x")
    listing = list_folder(folder)
    assert [entry.name for entry in listing.files] == ["a.dat", "b.dat"]
    assert listing.files[0].size == 2
    assert listing.folders == ("rules",)
    assert [name for name, _ in listing.skipped] == ["dangling.dat", "link.dat", "pipe.dat"]
    assert "symbolic link" in dict(listing.skipped)["link.dat"]
    assert "FIFO" in dict(listing.skipped)["pipe.dat"]


@pytest.mark.parametrize(
    ("name", "temporary"),
    [
        (".x.dat", True),
        ("x.dat.part", True),
        ("x.TMP", True),
        ("x~", True),
        ("~$x.docx", True),
        ("x.crdownload", True),
        ("x.dat", False),
        ("x.ctl", False),
        ("tmp.csv", False),
    ],
)
def test_temporary_names(name: str, temporary: bool) -> None:
    assert is_temporary_name(name) is temporary


def test_the_signature_changes_when_the_file_is_written(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"1")
    before = list_folder(tmp_path).files[0].signature
    assert list_folder(tmp_path).files[0].signature == before
    with path.open("ab") as handle:
        handle.write(b"2")
    assert list_folder(tmp_path).files[0].signature != before


def test_read_small_refuses_links_and_fifos_and_reads_one_byte_past_the_limit(
    tmp_path: Path,
) -> None:
    (tmp_path / "x.ctl").write_bytes(b"abcdef")
    assert read_small(tmp_path / "x.ctl", 3) == b"abcd"
    (tmp_path / "link.ctl").symlink_to(tmp_path / "x.ctl")
    with pytest.raises(OSError, match="symbolic link"):
        read_small(tmp_path / "link.ctl", 100)
    os.mkfifo(tmp_path / "pipe.ctl")
    with pytest.raises(OSError, match="FIFO"):
        read_small(tmp_path / "pipe.ctl", 100)


def test_move_new_never_replaces_and_numbers_a_taken_name(tmp_path: Path) -> None:
    target = tmp_path / "sent"
    target.mkdir()
    (target / "x.tar.gz").write_bytes(b"old")
    (target / "x-1.tar.gz").write_bytes(b"older")
    source = tmp_path / "x"
    source.write_bytes(b"new")
    moved = move_new(source, target, "x.tar.gz")
    assert moved == target / "x-2.tar.gz"
    assert moved.read_bytes() == b"new" and not source.exists()
    assert (target / "x.tar.gz").read_bytes() == b"old"
    assert (target / "x-1.tar.gz").read_bytes() == b"older"


def test_move_new_without_renameat2_still_never_replaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(folders, "_RENAMEAT2", None)
    (tmp_path / "x").write_bytes(b"old")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x").write_bytes(b"new")
    moved = move_new(tmp_path / "src" / "x", tmp_path, "x")
    assert moved == tmp_path / "x-1"
    assert moved.read_bytes() == b"new" and (tmp_path / "x").read_bytes() == b"old"
    assert not (tmp_path / "src" / "x").exists()


def test_move_new_moves_a_symlink_itself_not_its_target(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("outside")
    (tmp_path / "out").mkdir()
    (tmp_path / "failed").mkdir()
    (tmp_path / "out" / "link").symlink_to(secret)
    moved = move_new(tmp_path / "out" / "link", tmp_path / "failed", "link")
    assert moved.is_symlink() and secret.read_text() == "outside"


def test_move_new_across_file_systems_copies_then_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cross_device(source: Path, target: Path) -> None:
        raise OSError(18, "Invalid cross-device link")  # EXDEV

    monkeypatch.setattr(folders, "_rename_no_replace", cross_device)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"data")
    (tmp_path / "b" / "x").write_bytes(b"taken")
    moved = move_new(tmp_path / "a" / "x", tmp_path / "b", "x")
    assert moved == tmp_path / "b" / "x-1" and moved.read_bytes() == b"data"
    assert not (tmp_path / "a" / "x").exists()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["x", "x-1"]


def test_write_new_writes_whole_files_without_replacing(tmp_path: Path) -> None:
    first = write_new(tmp_path, "m.json", b"{}")
    second = write_new(tmp_path, "m.json", b"[]")
    assert (first.name, second.name) == ("m.json", "m-1.json")
    assert first.read_bytes() == b"{}" and second.read_bytes() == b"[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-1.json", "m.json"]  # no temp left


def test_write_new_does_not_write_through_a_symlink(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("outside")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x").symlink_to(secret)
    written = write_new(tmp_path / "in", "x", b"new")
    assert written.name == "x-1" and secret.read_text() == "outside"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\0b"])
def test_moves_and_writes_take_plain_names_only(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        write_new(tmp_path, name, b"")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("../../x", "x"),
        ("..\\..\\windows\\x.dat", "x.dat"),
        ("/etc/passwd", "passwd"),
        ("..", "fallback.dat"),
        ("", "fallback.dat"),
        (None, "fallback.dat"),
        (".bashrc", "bashrc"),
        ("-rf", "rf"),
        ("report 2025/01.csv", "01.csv"),
        ("a b;c|d$(e).csv", "a_b_c_d__e_.csv"),
        ("Résumé.csv", "Résumé.csv"),
        ("x\x00y\n.dat", "x_y_.dat"),
    ],
)
def test_safe_name(text: str | None, expected: str) -> None:
    assert safe_name(text, "fallback.dat") == expected


def test_a_long_name_is_cut_keeping_its_extension() -> None:
    name = safe_name("é" * 300 + ".csv", "f")
    assert name.endswith(".csv") and len(name.encode()) <= MAX_NAME_BYTES


@given(st.text(max_size=400))
def test_safe_name_is_always_one_plain_name(text: str) -> None:
    name = safe_name(text, "fallback")
    assert name and "/" not in name and "\0" not in name
    assert not name.startswith(".") and name not in (".", "..")
    assert len(name.encode()) <= MAX_NAME_BYTES


def test_numbered() -> None:
    assert numbered("x.tar.gz", 2) == "x-2.tar.gz"
    assert numbered("x", 1) == "x-1"
