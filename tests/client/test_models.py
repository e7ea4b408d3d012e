"""The checksum header form and header parsing."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshpipe.errors import MeshProtocolError
from meshpipe.headers import parse_chunk_range
from meshpipe.models import ContentChecksum, MessageMetadata, ReportMessage

SANDBOX_RULE = re.compile(r"^[A-Za-z0-9\s:/-]*$")


@given(
    digest=st.text("0123456789abcdef", min_size=32, max_size=32),
    size=st.integers(0, 100 * 10**9),
    chunk=st.integers(5 * 2**20, 2**30),
    codec=st.sampled_from(["none", "gzip", "zstd"]),
)
def test_checksum_round_trip_and_mesh_rules(digest: str, size: int, chunk: int, codec: str) -> None:
    value = ContentChecksum(
        xxh3_128=digest, size=size, chunk_size=chunk, codec=codec
    ).header_value()
    assert len(value) <= 100
    assert SANDBOX_RULE.match(value)
    parsed = ContentChecksum.parse(value)
    assert parsed is not None and parsed.meshpipe
    assert (parsed.xxh3_128, parsed.size, parsed.chunk_size, parsed.codec) == (
        digest,
        size,
        chunk,
        codec,
    )


@given(
    size=st.integers(0, 100 * 10**9),
    chunk=st.integers(5 * 2**20, 2**30),
    codec=st.sampled_from(["gzip", "zstd"]),
)
def test_the_trailer_form_round_trips_within_mesh_rules(size: int, chunk: int, codec: str) -> None:
    value = ContentChecksum(size=size, chunk_size=chunk, codec=codec, trailer=True).header_value()
    assert value == f"meshpipe/2 xxh3-128:trailer size:{size} chunk:{chunk} codec:{codec}"
    assert len(value) <= 100
    assert SANDBOX_RULE.match(value)
    parsed = ContentChecksum.parse(value)
    assert parsed is not None and parsed.meshpipe and parsed.trailer
    assert (parsed.xxh3_128, parsed.size, parsed.chunk_size, parsed.codec) == (
        None,
        size,
        chunk,
        codec,
    )


def test_the_trailer_form_needs_a_codec_that_carries_it_and_unknown_versions_are_foreign() -> None:
    with pytest.raises(ValueError, match="gzip or zstd"):
        ContentChecksum(size=5, chunk_size=5, codec="none", trailer=True).header_value()
    # A version this meshpipe does not know is another sender's text: received unverified.
    later = ContentChecksum.parse("meshpipe/3 xxh3-128:elsewhere size:5 chunk:5 codec:gzip")
    assert later is not None and not later.meshpipe and not later.trailer
    header_form = ContentChecksum.parse(f"meshpipe/1 xxh3-128:{'0' * 32} size:5 codec:gzip")
    assert header_form is not None and header_form.meshpipe and not header_form.trailer


def test_foreign_checksums() -> None:
    sha = "a" * 64
    parsed = ContentChecksum.parse(f"sha256:{sha}")
    assert parsed is not None and not parsed.meshpipe and parsed.sha256 == sha
    assert ContentChecksum.parse("") is None
    assert ContentChecksum.parse("just words") is None
    md5 = ContentChecksum.parse("md5:0123")
    assert md5 is not None and md5.other == {"md5": "0123"}


def test_chunk_range() -> None:
    assert parse_chunk_range(None) == (1, 1)
    assert parse_chunk_range("2:7") == (2, 7)
    assert parse_chunk_range("x") is None
    assert MessageMetadata.from_headers("M", {"mex-Chunk-Range": "2:7"}).chunk_count == 7
    with pytest.raises(MeshProtocolError):
        MessageMetadata.from_headers("M", {"mex-Chunk-Range": "x"})


def test_report_headers() -> None:
    headers = {
        "mex-MessageType": "REPORT",
        "mex-StatusCode": "14",
        "mex-StatusEvent": "SEND",
        "mex-StatusSuccess": "ERROR",
        "mex-StatusDescription": "Message not collected by recipient after 5 days",
        "mex-LinkedMsgID": "ORIGINAL",
        "mex-Chunk-Range": "1:0",
        "mex-WorkflowID": "WF",
    }
    metadata = MessageMetadata.from_headers("R1", headers)
    assert metadata.is_report
    report = ReportMessage.from_metadata(metadata)
    assert report.is_non_delivery and report.linked_message_id == "ORIGINAL"
    assert "code 14" in report.describe()
