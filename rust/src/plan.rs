//! Chunk plans: fixed *uncompressed* chunk boundaries, checked against MESH's rules before any
//! byte is read or sent.

use crate::codec::Codec;
use crate::error::{Error, Result};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;

/// MESH rejects a chunk other than the last whose *decompressed* size is below 5 MiB.
pub const MIN_CHUNK_SIZE: u64 = 5 * MIB;
/// MESH's per-request body limit (compressed bytes as sent): a body must be *below* 100 MB.
pub const MAX_REQUEST_SIZE: u64 = 100_000_000;
/// Default maximum message size: 50 GB, as NHS advertises for the API.
pub const MAX_FILE_SIZE: u64 = 50_000_000_000;
/// Default chunk size: small enough for several chunks per core in flight, large enough that
/// per-request overhead is negligible.
pub const DEFAULT_CHUNK_SIZE: u64 = 20 * MIB;

/// The rules a plan is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub min_chunk_size: u64,
    pub max_request_size: u64,
    pub max_file_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            min_chunk_size: MIN_CHUNK_SIZE,
            max_request_size: MAX_REQUEST_SIZE,
            max_file_size: MAX_FILE_SIZE,
        }
    }
}

/// Where each chunk starts and how long it is, uncompressed. Chunks are indexed from 0 here;
/// MESH (and every message) numbers them from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlan {
    file_size: u64,
    chunk_size: u64,
    chunk_count: u32,
}

impl ChunkPlan {
    /// Plan `file_size` bytes in chunks of `chunk_size`, sent with `codec`, within `limits`.
    pub fn new(file_size: u64, chunk_size: u64, codec: Codec, limits: &Limits) -> Result<Self> {
        if chunk_size == 0 {
            return Err(Error::ChunkSize(
                "chunk size must be positive; the default is 20 MiB".into(),
            ));
        }
        if file_size > limits.max_file_size {
            return Err(Error::FileTooLarge(format!(
                "file is {file_size} bytes ({}), above the maximum message size of {} bytes ({}); \
                 split the data into several messages, or raise max_file_size if your MESH \
                 mailbox is allowed larger messages",
                human(file_size),
                limits.max_file_size,
                human(limits.max_file_size)
            )));
        }
        let count = file_size.div_ceil(chunk_size).max(1);
        let chunk_count = u32::try_from(count).map_err(|_| {
            Error::ChunkSize(format!(
                "{count} chunks of {chunk_size} bytes is too many; use a larger chunk size"
            ))
        })?;
        if chunk_count > 1 && chunk_size < limits.min_chunk_size {
            return Err(Error::ChunkSize(format!(
                "chunk size {chunk_size} bytes ({}) is below MESH's minimum of {} bytes ({}) for \
                 every chunk but the last; use a chunk size of at least {}",
                human(chunk_size),
                limits.min_chunk_size,
                human(limits.min_chunk_size),
                limits.min_chunk_size
            )));
        }
        let largest = chunk_size.min(file_size);
        let worst_case = codec.max_payload_size(largest);
        if worst_case >= limits.max_request_size {
            let fits = largest_fitting(codec, limits.max_request_size);
            return Err(Error::ChunkSize(format!(
                "a {largest}-byte chunk can be up to {worst_case} bytes as sent with codec {}, \
                 not below MESH's per-request limit of {} bytes; use a chunk size of at most \
                 {fits} bytes",
                codec.name(),
                limits.max_request_size,
            )));
        }
        Ok(ChunkPlan {
            file_size,
            chunk_size,
            chunk_count,
        })
    }

    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    pub fn chunk_count(&self) -> u32 {
        self.chunk_count
    }

    /// Byte offset of chunk `index` (0-based).
    pub fn chunk_offset(&self, index: u32) -> u64 {
        u64::from(index) * self.chunk_size
    }

    /// Uncompressed length of chunk `index` (0-based).
    pub fn chunk_length(&self, index: u32) -> u64 {
        let offset = self.chunk_offset(index);
        self.chunk_size.min(self.file_size.saturating_sub(offset))
    }
}

/// The largest chunk size whose worst-case payload stays below `max_request_size`.
fn largest_fitting(codec: Codec, max_request_size: u64) -> u64 {
    let (mut low, mut high) = (0u64, max_request_size);
    while low < high {
        let mid = (low + high).div_ceil(2);
        if codec.max_payload_size(mid) < max_request_size {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    low
}

/// "5.0 MiB", "46.6 GiB": for error messages.
pub fn human(bytes: u64) -> String {
    let units = [("GiB", GIB), ("MiB", MIB), ("KiB", KIB)];
    for (name, size) in units {
        if bytes >= size {
            return format!("{:.1} {name}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(file: u64, chunk: u64) -> Result<ChunkPlan> {
        ChunkPlan::new(file, chunk, Codec::none(), &Limits::default())
    }

    #[test]
    fn empty_and_tiny_files_are_one_chunk() {
        for size in [0, 1, 1000] {
            let p = plan(size, DEFAULT_CHUNK_SIZE).unwrap();
            assert_eq!(p.chunk_count(), 1);
            assert_eq!(p.chunk_length(0), size);
        }
    }

    #[test]
    fn boundaries_cover_the_file_exactly() {
        let p = plan(3 * MIN_CHUNK_SIZE + 1, MIN_CHUNK_SIZE).unwrap();
        assert_eq!(p.chunk_count(), 4);
        assert_eq!(p.chunk_offset(3), 3 * MIN_CHUNK_SIZE);
        assert_eq!(p.chunk_length(3), 1);
        let p = plan(2 * MIN_CHUNK_SIZE, MIN_CHUNK_SIZE).unwrap();
        assert_eq!(p.chunk_count(), 2);
        assert_eq!(p.chunk_length(1), MIN_CHUNK_SIZE);
    }

    #[test]
    fn small_chunks_refused_only_when_there_are_several() {
        assert!(plan(MIB, MIB).is_ok());
        let err = plan(MIB + 1, MIB).unwrap_err();
        assert!(matches!(err, Error::ChunkSize(_)));
        assert!(err.to_string().contains("5242880"), "{err}");
    }

    #[test]
    fn oversized_chunks_refused_with_a_size_that_fits() {
        let err = plan(200_000_000, 100_000_000).unwrap_err();
        assert!(err.to_string().contains("at most 99999999"), "{err}");
        assert!(plan(200_000_000, 99_999_999).is_ok());
        let err = ChunkPlan::new(
            200_000_000,
            100_000_000,
            Codec::gzip(1).unwrap(),
            &Limits::default(),
        )
        .unwrap_err();
        let msg = err.to_string();
        let fits: u64 = msg
            .rsplit("at most ")
            .next()
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let codec = Codec::gzip(1).unwrap();
        assert!(codec.max_payload_size(fits) < MAX_REQUEST_SIZE);
        assert!(codec.max_payload_size(fits + 1) >= MAX_REQUEST_SIZE);
    }

    #[test]
    fn file_size_limit_is_configurable() {
        let err = plan(MAX_FILE_SIZE + 1, DEFAULT_CHUNK_SIZE).unwrap_err();
        assert!(matches!(err, Error::FileTooLarge(_)));
        let limits = Limits {
            max_file_size: 100 * GIB,
            ..Limits::default()
        };
        assert!(ChunkPlan::new(
            MAX_FILE_SIZE + 1,
            DEFAULT_CHUNK_SIZE,
            Codec::none(),
            &limits
        )
        .is_ok());
    }
}
