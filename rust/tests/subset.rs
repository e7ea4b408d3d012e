//! Property tests: a split of a subset of the chunks gives exactly what a full split gives for
//! those chunks (bytes, lengths, offsets, xxh3-128), in ascending order, and no whole-file digest.

use std::collections::BTreeSet;
use std::io::Write;

use meshpipe::codec::Codec;
use meshpipe::error::Error;
use meshpipe::plan::Limits;
use meshpipe::split::{ChunkSelection, SplitOptions, Splitter};
use proptest::prelude::*;

type Produced = Vec<(u32, u64, u64, u128, Vec<u8>)>;

fn split(path: &std::path::Path, options: SplitOptions) -> (Produced, Splitter) {
    let mut splitter = Splitter::open(path, options).unwrap();
    let produced = splitter
        .by_ref()
        .map(|chunk| {
            let c = chunk.unwrap();
            (
                c.index,
                c.offset,
                c.length,
                c.xxh3_128,
                c.payload.as_slice().to_vec(),
            )
        })
        .collect();
    (produced, splitter)
}

fn options(codec: Codec, chunk_size: u64, chunks: ChunkSelection, window: usize) -> SplitOptions {
    SplitOptions {
        codec,
        chunk_size,
        threads: 2,
        window,
        limits: Limits {
            min_chunk_size: 1,
            ..Limits::default()
        },
        chunks,
        ..SplitOptions::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_subset_split_equals_the_full_split_on_those_chunks(
        data in prop::collection::vec(any::<u8>(), 0..9000),
        chunk_size in 1u64..2500,
        codec in prop_oneof![
            Just(Codec::none()),
            Just(Codec::gzip(1).unwrap()),
            Just(Codec::zstd(3).unwrap()),
        ],
        picks in prop::collection::vec(any::<u32>(), 0..12),
        window in 1usize..4,
    ) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&data).unwrap();
        let (full, mut whole) = split(file.path(), options(codec, chunk_size, ChunkSelection::All, 3));
        let count = full.len() as u32;
        prop_assert!(whole.digest().is_ok());
        // Any numbers in 1..=count, unsorted and repeated: produced once each, ascending.
        let numbers: BTreeSet<u32> = picks.iter().map(|p| p % count + 1).collect();
        let selection = ChunkSelection::Only(numbers.clone());
        let (subset, mut splitter) = split(file.path(), options(codec, chunk_size, selection, window));
        let expected: Produced = full
            .iter()
            .filter(|c| numbers.contains(&(c.0 + 1)))
            .cloned()
            .collect();
        prop_assert_eq!(&subset, &expected);
        let digest = splitter.digest();
        if numbers.len() == count as usize {
            prop_assert_eq!(digest.unwrap(), whole.digest().unwrap());
        } else {
            let message = digest.unwrap_err().to_string();
            prop_assert!(message.contains("no whole-file digest"), "{}", message);
        }
    }
}

#[test]
fn a_chunk_outside_the_plan_or_sha256_of_a_subset_is_refused() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&[7u8; 1000]).unwrap();
    let outside = ChunkSelection::Only(BTreeSet::from([2, 11]));
    let err = Splitter::open(file.path(), options(Codec::none(), 100, outside, 2)).err();
    assert!(
        matches!(
            err,
            Some(Error::ChunkNumber {
                chunk: 11,
                count: 10
            })
        ),
        "{err:?}"
    );
    let mut with_sha = options(
        Codec::none(),
        100,
        ChunkSelection::Only(BTreeSet::from([1])),
        2,
    );
    with_sha.sha256 = true;
    let err = Splitter::open(file.path(), with_sha).err();
    assert!(
        matches!(err, Some(Error::InvalidArgument(ref m)) if m.contains("sha256")),
        "{err:?}"
    );
}

#[test]
fn an_empty_selection_produces_nothing() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&[7u8; 1000]).unwrap();
    let (produced, mut splitter) = split(
        file.path(),
        options(Codec::none(), 100, ChunkSelection::Only(BTreeSet::new()), 2),
    );
    assert!(produced.is_empty());
    assert!(matches!(splitter.digest(), Err(Error::State(_))));
}
