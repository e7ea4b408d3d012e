"""The main job (README's first command) end to end, small: `meshpipe demo --json`."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from meshpipe.units import GiB, MiB, size_argument


def run_demo(*arguments: str) -> tuple[int, dict[str, object], str]:
    completed = subprocess.run(
        [sys.executable, "-m", "meshpipe", "demo", "--json", *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    last = completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else "{}"
    return completed.returncode, json.loads(last), completed.stderr


@pytest.mark.parametrize(
    ("store", "compress", "size", "chunks"),
    [("dir", "gzip", 11 * MiB, 3), ("dir", "zstd", 1, 1), ("discard", "none", 6 * MiB, 2)],
)
def test_demo_sends_receives_and_verifies(
    tmp_path: Path, store: str, compress: str, size: int, chunks: int
) -> None:
    status, result, stderr = run_demo(
        "--size", str(size), "--chunk-size", "5MiB", "--compress", compress,
        "--store", store, "--workdir", str(tmp_path),
    )  # fmt: skip
    assert status == 0, stderr
    assert result["verified"] is True
    assert result["bytes"] == size and result["chunks"] == chunks
    assert "file xxh3-128" in result["verification"]  # type: ignore[operator]
    for direction in ("send", "receive"):
        # the rate is the size over the time taken (each rounded as the demo prints it)
        seconds, rate = result[f"{direction}_seconds"], result[f"{direction}_mb_s"]
        assert isinstance(seconds, float) and seconds > 0
        assert rate == pytest.approx(size / seconds / 1e6, rel=0.05, abs=0.1)
    for key in ("peak_rss_client_bytes", "peak_rss_server_bytes"):
        assert isinstance(result[key], int) and result[key] > 10 * MiB
    if store == "dir":
        assert (tmp_path / "received.csv").read_bytes() == (tmp_path / "extract.csv").read_bytes()


def test_demo_refuses_a_bad_plan_before_sending(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "meshpipe", "demo", "--size", "12MiB", "--chunk-size", "1MiB",
         "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode != 0
    assert "5242880" in completed.stderr and "Traceback" not in completed.stderr


def test_sizes() -> None:
    assert size_argument("1GiB") == GiB
    assert size_argument("500MB") == 500_000_000
    assert size_argument("20MiB") == 20 * MiB
    assert size_argument("1048576") == MiB
    with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
        size_argument("lots")
