//! The whole-file manifest end to end: a split that carries it at the end of the last chunk, an
//! assembler that checks the file against it, and the body check of a server that counts it as
//! nothing.

use std::io::Write;
use std::path::Path;

use meshpipe::assemble::{AssembleOptions, Assembler};
use meshpipe::check::{BodyCheck, BodyEncoding};
use meshpipe::checksum::xxh3_128;
use meshpipe::codec::{Codec, DEFAULT_WINDOW_LOG_MAX};
use meshpipe::error::Error;
use meshpipe::manifest::Manifest;
use meshpipe::split::{SplitOptions, Splitter, Trailer};

const CHUNK: u64 = 64 * 1024;

fn source(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let data: Vec<u8> = (0..5 * CHUNK as usize + 777)
        .map(|i| b"0123456789,SMITH,19550109\n"[i % 26] ^ (i / 4099) as u8)
        .collect();
    let path = dir.join("source.csv");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&data)
        .unwrap();
    (path, data)
}

/// Every chunk's payload, split with or without the manifest.
fn payloads(path: &Path, codec: Codec, trailer: Trailer) -> Vec<Vec<u8>> {
    let options = SplitOptions {
        codec,
        chunk_size: CHUNK,
        threads: 2,
        window: 3,
        limits: meshpipe::plan::Limits {
            min_chunk_size: 1,
            ..Default::default()
        },
        trailer,
        ..SplitOptions::default()
    };
    Splitter::open(path, options)
        .unwrap()
        .map(|c| c.unwrap().payload.as_slice().to_vec())
        .collect()
}

fn assemble(
    destination: &Path,
    codec: Codec,
    size: u64,
    trailer: bool,
    payloads: &[Vec<u8>],
) -> meshpipe::Result<Vec<String>> {
    let mut options = AssembleOptions::new(payloads.len() as u32, codec.kind());
    options.chunk_size = Some(CHUNK);
    options.file_size = Some(size);
    options.trailer = trailer;
    let assembler = Assembler::create(destination, options)?;
    // The last chunk first: the manifest is checked at finish, whatever the order.
    for (index, payload) in payloads.iter().enumerate().rev() {
        let mut writer = assembler.open_chunk(index as u32 + 1, None)?;
        for piece in payload.chunks(1000) {
            writer.write(piece)?;
        }
        let report = writer.finish()?;
        if index + 1 < payloads.len() {
            assert_eq!(
                report.manifest, None,
                "only the last chunk's report has one"
            );
        }
    }
    Ok(assembler.finish()?.verified)
}

fn codecs() -> [Codec; 2] {
    [Codec::gzip(1).unwrap(), Codec::zstd(1).unwrap()]
}

#[test]
fn the_receiver_verifies_the_file_against_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = source(dir.path());
    for codec in codecs() {
        let destination = dir.path().join(format!("out.{}", codec.name()));
        let sent = payloads(&path, codec, Trailer::FromDigest);
        let verified = assemble(&destination, codec, data.len() as u64, true, &sent).unwrap();
        assert!(
            verified.contains(&"file xxh3-128".to_string()),
            "{verified:?}"
        );
        assert_eq!(std::fs::read(&destination).unwrap(), data);
    }
}

#[test]
fn the_last_chunk_s_report_carries_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = source(dir.path());
    for codec in codecs() {
        let sent = payloads(&path, codec, Trailer::FromDigest);
        let mut options = AssembleOptions::new(sent.len() as u32, codec.kind());
        options.chunk_size = Some(CHUNK);
        let assembler = Assembler::create(&dir.path().join("one.part"), options).unwrap();
        let last = sent.len() as u32;
        let mut writer = assembler.open_chunk(last, None).unwrap();
        writer.write(sent.last().unwrap()).unwrap();
        let report = writer.finish().unwrap();
        let expected = Manifest {
            xxh3_128: xxh3_128(&data),
            size: data.len() as u64,
        };
        assert_eq!(report.manifest, Some(expected), "{}", codec.name());
    }
}

fn assert_refused_and_nothing_left(
    dir: &Path,
    destination: &Path,
    result: meshpipe::Result<Vec<String>>,
    words: &str,
) {
    let err = result.unwrap_err();
    assert!(
        matches!(err, Error::ChecksumMismatch { chunk: None, .. }),
        "{err}"
    );
    assert!(err.to_string().contains(words), "{err}");
    assert!(!destination.exists());
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != "source.csv")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_missing_or_wrong_manifest_leaves_nothing_at_the_destination() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = source(dir.path());
    let size = data.len() as u64;
    for codec in codecs() {
        let destination = dir.path().join("out");
        // Announced, but not there.
        let plain = payloads(&path, codec, Trailer::None);
        let result = assemble(&destination, codec, size, true, &plain);
        assert_refused_and_nothing_left(
            dir.path(),
            &destination,
            result,
            "as the headers announced",
        );
        // There, but of other bytes (one hex digit of the hash changed in transit or by the
        // sender): refused, whether announced or not.
        let mut sent = payloads(&path, codec, Trailer::FromDigest);
        let last = sent.last_mut().unwrap();
        let at = last
            .windows(9)
            .position(|w| w == b"xxh3-128:")
            .expect("manifest text in the payload")
            + 9;
        last[at] = if last[at] == b'0' { b'1' } else { b'0' };
        for announced in [true, false] {
            let result = assemble(&destination, codec, size, announced, &sent);
            assert_refused_and_nothing_left(
                dir.path(),
                &destination,
                result,
                "manifest in the last chunk",
            );
        }
    }
}

#[test]
fn a_manifest_in_an_earlier_chunk_fails_that_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = source(dir.path());
    for codec in codecs() {
        let mut sent = payloads(&path, codec, Trailer::None);
        Manifest {
            xxh3_128: xxh3_128(&data),
            size: data.len() as u64,
        }
        .append_to(codec.kind(), &mut sent[1])
        .unwrap();
        let err = assemble(
            &dir.path().join("out"),
            codec,
            data.len() as u64,
            false,
            &sent,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("only the last chunk carries one"),
            "{err}"
        );
    }
}

#[test]
fn a_server_counts_the_manifest_as_no_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = source(dir.path());
    for (codec, encoding) in [
        (Codec::gzip(1).unwrap(), BodyEncoding::Gzip),
        (Codec::zstd(1).unwrap(), BodyEncoding::SniffZstd),
    ] {
        let sent = payloads(&path, codec, Trailer::FromDigest);
        let last = sent.last().unwrap();
        let mut check = BodyCheck::new(encoding, CHUNK, DEFAULT_WINDOW_LOG_MAX).unwrap();
        for piece in last.chunks(333) {
            check.update(piece).unwrap();
        }
        let report = check.finish().unwrap();
        let tail = &data[5 * CHUNK as usize..];
        assert_eq!(report.decoded_size, tail.len() as u64);
        assert_eq!(report.xxh3_128, xxh3_128(tail));
        assert_eq!(report.stored_size, last.len() as u64);
    }
}
