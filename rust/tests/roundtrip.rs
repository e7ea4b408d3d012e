//! Property tests: split → assemble round trips through the public core API, any order, any
//! feed sizes, every codec.

use std::io::Write;

use meshpipe::assemble::{AssembleOptions, Assembler};
use meshpipe::checksum::xxh3_128;
use meshpipe::codec::Codec;
use meshpipe::error::Error;
use meshpipe::plan::Limits;
use meshpipe::split::{SplitOptions, Splitter};
use proptest::prelude::*;

/// Small limits so that property tests can use many chunks without megabytes of data.
fn small_limits() -> Limits {
    Limits {
        min_chunk_size: 1,
        ..Limits::default()
    }
}

fn codec_strategy() -> impl Strategy<Value = Codec> {
    prop_oneof![
        Just(Codec::none()),
        (0..=3i32).prop_map(|l| Codec::gzip(l).unwrap()),
        (1..=5i32).prop_map(|l| Codec::zstd(l).unwrap()),
    ]
}

fn data_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..5000),
        (0usize..20_000).prop_map(|n| (0..n).map(|i| b"12,SMITH,A1\n"[i % 12]).collect()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn split_then_assemble_in_any_order(
        data in data_strategy(),
        chunk_size in 1u64..3000,
        codec in codec_strategy(),
        order_seed in any::<u64>(),
        piece in 1usize..700,
        known_size in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.bin");
        std::fs::File::create(&source).unwrap().write_all(&data).unwrap();
        let options = SplitOptions {
            codec,
            chunk_size,
            threads: 2,
            window: 3,
            sha256: true,
            limits: small_limits(),
            ..SplitOptions::default()
        };
        let mut splitter = Splitter::open(&source, options).unwrap();
        let chunks: Vec<_> = splitter.by_ref().map(|c| {
            let c = c.unwrap();
            (c.index, c.length, c.xxh3_128, c.payload.as_slice().to_vec())
        }).collect();
        let digest = splitter.digest().unwrap();
        prop_assert_eq!(digest.xxh3_128, xxh3_128(&data));
        let count = chunks.len() as u32;
        prop_assert_eq!(count as u64, (data.len() as u64).div_ceil(chunk_size).max(1));

        let destination = dir.path().join("out.bin");
        let mut options = AssembleOptions::new(count, codec.kind());
        options.xxh3_128 = Some(digest.xxh3_128);
        options.sha256 = digest.sha256;
        if known_size {
            options.chunk_size = Some(chunk_size);
            options.file_size = Some(data.len() as u64);
        }
        let assembler = Assembler::create(&destination, options).unwrap();
        // Known sizes: any order. Unknown: chunk 1 first, then fix the size, then any order.
        let mut order: Vec<usize> = (0..chunks.len()).collect();
        let mut seed = order_seed | 1;
        for i in (1..order.len()).rev() {
            seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
            order.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        if !known_size {
            order.retain(|&i| i != 0);
            order.insert(0, 0);
        }
        for (position, &i) in order.iter().enumerate() {
            let (index, _, xxh, payload) = &chunks[i];
            let mut writer = assembler.open_chunk(index + 1, Some(*xxh)).unwrap();
            for part in payload.chunks(piece) {
                writer.write(part).unwrap();
            }
            writer.finish().unwrap();
            if !known_size && position == 0 && count > 1 {
                assembler.assume_fixed_chunk_size().unwrap();
            }
        }
        let report = assembler.finish().unwrap();
        prop_assert_eq!(std::fs::read(&destination).unwrap(), data);
        prop_assert_eq!(report.xxh3_128, digest.xxh3_128);
        prop_assert!(report.verified.contains(&"file xxh3-128".to_string()));
    }
}

#[test]
fn nothing_is_left_behind_when_a_chunk_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("out.bin");
    let mut options = AssembleOptions::new(2, Codec::none().kind());
    options.chunk_size = Some(4);
    options.file_size = Some(6);
    let assembler = Assembler::create(&destination, options).unwrap();
    let mut w = assembler.open_chunk(1, Some(xxh3_128(b"abcd"))).unwrap();
    w.write(b"abce").unwrap();
    let err = w.finish().unwrap_err();
    assert!(
        matches!(err, Error::ChecksumMismatch { chunk: Some(1), .. }),
        "{err}"
    );
    // The chunk can be fetched again after a failure.
    let mut w = assembler.open_chunk(1, Some(xxh3_128(b"abcd"))).unwrap();
    w.write(b"abcd").unwrap();
    w.finish().unwrap();
    let err = assembler.finish().unwrap_err();
    assert!(matches!(err, Error::MissingChunks { ref missing, .. } if missing == &vec![2]));
    let temporary = assembler.temporary_path().to_path_buf();
    assert!(temporary.exists());
    drop(assembler);
    assert!(!temporary.exists());
    assert!(!destination.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_failed_attempt_never_reaches_the_whole_file_checksum() {
    // Chunk 1 is hashed into the whole-file digest as it is written; a failed or abandoned
    // attempt must be taken back out, or the retried file would fail its whole-file check.
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("out.bin");
    let (first, second) = (vec![b'a'; 4096], vec![b'b'; 100]);
    let whole: Vec<u8> = [first.clone(), second.clone()].concat();
    let mut options = AssembleOptions::new(2, Codec::none().kind());
    options.chunk_size = Some(first.len() as u64);
    options.file_size = Some(whole.len() as u64);
    options.xxh3_128 = Some(xxh3_128(&whole));
    let assembler = Assembler::create(&destination, options).unwrap();
    // A corrupt attempt, refused at finish.
    let mut writer = assembler.open_chunk(1, Some(xxh3_128(&first))).unwrap();
    writer.write(&vec![b'x'; 4096]).unwrap();
    assert!(matches!(
        writer.finish(),
        Err(Error::ChecksumMismatch { chunk: Some(1), .. })
    ));
    // An attempt abandoned half-way.
    let mut writer = assembler.open_chunk(1, None).unwrap();
    writer.write(&first[..1000]).unwrap();
    drop(writer);
    // The good attempt, in two pieces, then chunk 2.
    let mut writer = assembler.open_chunk(1, Some(xxh3_128(&first))).unwrap();
    writer.write(&first[..2000]).unwrap();
    writer.write(&first[2000..]).unwrap();
    writer.finish().unwrap();
    let mut writer = assembler.open_chunk(2, None).unwrap();
    writer.write(&second).unwrap();
    writer.finish().unwrap();
    let report = assembler.finish().unwrap();
    assert_eq!(report.xxh3_128, xxh3_128(&whole));
    assert_eq!(std::fs::read(&destination).unwrap(), whole);
}

#[test]
fn a_chunk_started_before_its_predecessor_finished_is_still_hashed_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("out.bin");
    let chunks: Vec<Vec<u8>> = (0..3u8).map(|i| vec![b'0' + i; 1000]).collect();
    let whole = chunks.concat();
    let mut options = AssembleOptions::new(3, Codec::none().kind());
    options.chunk_size = Some(1000);
    options.file_size = Some(3000);
    options.xxh3_128 = Some(xxh3_128(&whole));
    let assembler = Assembler::create(&destination, options).unwrap();
    let mut one = assembler.open_chunk(1, None).unwrap();
    let mut two = assembler.open_chunk(2, None).unwrap();
    let mut three = assembler.open_chunk(3, None).unwrap();
    two.write(&chunks[1][..300]).unwrap(); // before chunk 1 is done: not hashed yet
    one.write(&chunks[0]).unwrap();
    three.write(&chunks[2]).unwrap();
    one.finish().unwrap();
    two.write(&chunks[1][300..]).unwrap(); // now first in line: reads back 300, hashes on
    three.finish().unwrap();
    two.finish().unwrap();
    assert_eq!(assembler.finish().unwrap().xxh3_128, xxh3_128(&whole));
}
