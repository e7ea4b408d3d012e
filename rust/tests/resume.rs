//! Resuming an assembly from a stable partial file: completed chunks are re-checked (a torn or
//! tampered one is rejected and written again), the rest written as usual, and the finished file
//! is still verified end to end.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;
use std::path::Path;

use meshpipe::assemble::{AssembleOptions, Assembler};
use meshpipe::checksum::xxh3_128;
use meshpipe::codec::Codec;
use meshpipe::error::Error;
use proptest::prelude::*;

fn options(data: &[u8], chunk_size: u64, partial: &Path, known_size: bool) -> AssembleOptions {
    let count = (data.len() as u64).div_ceil(chunk_size).max(1) as u32;
    let mut options = AssembleOptions::new(count, Codec::none().kind());
    options.chunk_size = Some(chunk_size);
    options.file_size = known_size.then_some(data.len() as u64);
    options.xxh3_128 = Some(xxh3_128(data));
    options.partial_path = Some(partial.to_path_buf());
    options.keep_partial = true;
    options
}

fn chunk(data: &[u8], chunk_size: u64, number: u32) -> &[u8] {
    let start = (u64::from(number - 1) * chunk_size) as usize;
    let end = (start + chunk_size as usize).min(data.len());
    &data[start..end]
}

fn write_chunk(assembler: &Assembler, data: &[u8], chunk_size: u64, number: u32) {
    let bytes = chunk(data, chunk_size, number);
    let mut writer = assembler.open_chunk(number, Some(xxh3_128(bytes))).unwrap();
    writer.write(bytes).unwrap();
    writer.finish_synced().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_resumed_assembly_keeps_good_chunks_and_refetches_damaged_ones(
        data in prop::collection::vec(any::<u8>(), 1..6000),
        chunk_size in 1u64..1500,
        done_picks in prop::collection::vec(any::<u32>(), 0..10),
        damage_pick in prop::option::of(any::<u32>()),
        known_size in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let destination = dir.path().join("out.bin");
        let partial = dir.path().join("out.bin.partial");
        let first = options(&data, chunk_size, &partial, known_size);
        let count = first.chunk_count;
        let done: BTreeSet<u32> = done_picks.iter().map(|p| p % count + 1).collect();
        // The first run writes some chunks, then stops (a crash: dropped unfinished).
        {
            let assembler = Assembler::create(&destination, first).unwrap();
            for &number in done.iter().rev() {
                write_chunk(&assembler, &data, chunk_size, number);
            }
        }
        prop_assert!(partial.exists() && !destination.exists());
        // Between the runs, one recorded chunk may be damaged (a torn write or tampering).
        let damaged = damage_pick.and_then(|p| done.iter().nth(p as usize % done.len().max(1))).copied();
        if let Some(number) = damaged {
            let offset = u64::from(number - 1) * chunk_size;
            let file = std::fs::OpenOptions::new().write(true).open(&partial).unwrap();
            let byte = chunk(&data, chunk_size, number)[0];
            file.write_all_at(&[byte ^ 0x5a], offset).unwrap();
        }
        let mut second = options(&data, chunk_size, &partial, known_size);
        second.completed = done
            .iter()
            .map(|&n| (n, xxh3_128(chunk(&data, chunk_size, n))))
            .collect::<BTreeMap<_, _>>();
        let assembler = Assembler::create(&destination, second).unwrap();
        let resumed = assembler.resumed().clone();
        let expected_accepted: Vec<u32> = done.iter().copied().filter(|&n| Some(n) != damaged).collect();
        prop_assert_eq!(&resumed.accepted, &expected_accepted);
        prop_assert_eq!(resumed.rejected, damaged.into_iter().collect::<Vec<_>>());
        let missing = assembler.missing();
        prop_assert_eq!(missing.len(), count as usize - expected_accepted.len());
        for number in missing {
            write_chunk(&assembler, &data, chunk_size, number);
        }
        let report = assembler.finish().unwrap();
        prop_assert_eq!(report.xxh3_128, xxh3_128(&data));
        prop_assert!(report.verified.contains(&"file xxh3-128".to_string()));
        prop_assert_eq!(std::fs::read(&destination).unwrap(), data);
        prop_assert!(!partial.exists());
    }
}

#[test]
fn a_partial_file_cut_short_rejects_the_chunks_past_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("out.bin");
    let partial = dir.path().join("partial");
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    // Chunks 1 and 3 were written; the file then lost its tail (chunk 3 torn).
    std::fs::write(&partial, &data[..2500]).unwrap();
    let mut options = options(&data, 1000, &partial, false);
    options.completed = [1, 3]
        .into_iter()
        .map(|n| (n, xxh3_128(chunk(&data, 1000, n))))
        .collect();
    let assembler = Assembler::create(&destination, options).unwrap();
    assert_eq!(assembler.resumed().accepted, vec![1]);
    assert_eq!(assembler.resumed().rejected, vec![3]);
    assert_eq!(assembler.missing(), vec![2, 3]);
    write_chunk(&assembler, &data, 1000, 3);
    write_chunk(&assembler, &data, 1000, 2);
    assert_eq!(assembler.finish().unwrap().size, 3000);
    assert_eq!(std::fs::read(&destination).unwrap(), data);
}

#[test]
fn keep_partial_survives_abort_and_drop_and_the_default_deletes_it() {
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("out.bin");
    let partial = dir.path().join("partial");
    let data = vec![9u8; 2000];
    let assembler = Assembler::create(&destination, options(&data, 1000, &partial, true)).unwrap();
    write_chunk(&assembler, &data, 1000, 2);
    assembler.abort();
    assert!(partial.exists());
    drop(assembler);
    assert_eq!(std::fs::read(&partial).unwrap()[1000..], data[1000..]);
    // The same stable path without keep_partial: abort deletes it, as for a temporary file.
    let mut options = options(&data, 1000, &partial, true);
    options.keep_partial = false;
    let assembler = Assembler::create(&destination, options).unwrap();
    assembler.abort();
    assert!(!partial.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_failed_finish_keeps_a_kept_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("out.bin");
    let partial = dir.path().join("partial");
    let data = vec![1u8; 1500];
    let mut options = options(&data, 1000, &partial, true);
    options.xxh3_128 = Some(xxh3_128(b"something else"));
    let assembler = Assembler::create(&destination, options).unwrap();
    write_chunk(&assembler, &data, 1000, 1);
    write_chunk(&assembler, &data, 1000, 2);
    let err = assembler.finish().unwrap_err();
    assert!(
        matches!(err, Error::ChecksumMismatch { chunk: None, .. }),
        "{err}"
    );
    assert!(partial.exists() && !destination.exists());
}

#[test]
fn a_second_assembler_on_the_same_partial_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("out.bin");
    let partial = dir.path().join("partial");
    let data = vec![1u8; 1500];
    let first = Assembler::create(&destination, options(&data, 1000, &partial, true)).unwrap();
    let err = Assembler::create(&destination, options(&data, 1000, &partial, true))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("in use by another assembler"),
        "{err}"
    );
    drop(first);
    assert!(Assembler::create(&destination, options(&data, 1000, &partial, true)).is_ok());
}

#[test]
fn completed_chunks_need_a_partial_path_and_a_chunk_size_and_numbers_in_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("out.bin");
    let partial = dir.path().join("partial");
    let data = vec![1u8; 1500];
    let mut no_path = options(&data, 1000, &partial, true);
    no_path.partial_path = None;
    no_path.completed = BTreeMap::from([(1, 0)]);
    assert!(matches!(
        Assembler::create(&destination, no_path).err(),
        Some(Error::InvalidArgument(m)) if m.contains("partial_path")
    ));
    let mut no_size = options(&data, 1000, &partial, false);
    no_size.chunk_size = None;
    no_size.completed = BTreeMap::from([(1, 0)]);
    assert!(matches!(
        Assembler::create(&destination, no_size).err(),
        Some(Error::InvalidArgument(m)) if m.contains("chunk_size")
    ));
    let mut outside = options(&data, 1000, &partial, true);
    outside.completed = BTreeMap::from([(3, 0)]);
    assert!(matches!(
        Assembler::create(&destination, outside).err(),
        Some(Error::ChunkNumber { chunk: 3, count: 2 })
    ));
    assert!(!partial.exists(), "nothing is created for a refused plan");
}

#[test]
fn a_full_disk_names_the_file_and_leaves_the_chunk_to_write_again() {
    // /dev/full accepts the open and fails every write with ENOSPC.
    let dir = tempfile::tempdir().unwrap();
    let destination = dir.path().join("out.bin");
    let full = Path::new("/dev/full");
    if !full.exists() {
        return;
    }
    let data = vec![1u8; 1500];
    let mut options = options(&data, 1000, full, false);
    options.keep_partial = true; // never delete /dev/full (it is not a regular file anyway)
    let assembler = Assembler::create(&destination, options).unwrap();
    let mut writer = assembler.open_chunk(1, None).unwrap();
    let err = writer.write(&data[..1000]).unwrap_err();
    match &err {
        Error::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::ENOSPC)),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("/dev/full"), "{err}");
    assert_eq!(assembler.missing(), vec![1, 2]);
    assert!(
        assembler.open_chunk(1, None).is_ok(),
        "the chunk may be written again"
    );
    assert!(full.exists());
}
