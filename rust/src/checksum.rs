//! Checksums: xxh3-128 per chunk and for the whole file; SHA-256 of the whole file on request.
//! Digests are written as lowercase hex, as `xxhash.xxh3_128_hexdigest` and `hashlib` write them.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::Xxh3;

use crate::error::{Error, Result};

/// Streaming xxh3-128.
#[derive(Clone)]
pub struct Xxh3Hasher(Box<Xxh3>);

impl Default for Xxh3Hasher {
    fn default() -> Self {
        Xxh3Hasher(Box::new(Xxh3::new()))
    }
}

impl Xxh3Hasher {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn digest(&self) -> u128 {
        self.0.digest128()
    }
}

/// xxh3-128 of a buffer in one call.
pub fn xxh3_128(data: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(data)
}

/// 32 lowercase hex digits, high half first (xxhash's canonical form).
pub fn hex128(value: u128) -> String {
    format!("{value:032x}")
}

/// Parse a 32-hex-digit xxh3-128 digest.
pub fn parse_hex128(text: &str) -> Result<u128> {
    if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidArgument(format!(
            "an xxh3-128 digest is 32 hex digits, got {text:?}"
        )));
    }
    u128::from_str_radix(text, 16)
        .map_err(|e| Error::InvalidArgument(format!("bad xxh3-128 digest {text:?}: {e}")))
}

/// Parse a 64-hex-digit SHA-256 digest.
pub fn parse_hex256(text: &str) -> Result<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidArgument(format!(
            "a SHA-256 digest is 64 hex digits, got {text:?}"
        )));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .map_err(|e| Error::InvalidArgument(format!("bad SHA-256 digest: {e}")))?;
    }
    Ok(out)
}

pub fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The whole-file digests, fed in file order.
#[derive(Clone, Default)]
pub struct FileHasher {
    xxh3: Xxh3Hasher,
    sha256: Option<Sha256>,
    size: u64,
}

/// The result of hashing a whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    pub size: u64,
    pub xxh3_128: u128,
    pub sha256: Option<[u8; 32]>,
}

impl FileHasher {
    pub fn new(with_sha256: bool) -> Self {
        FileHasher {
            xxh3: Xxh3Hasher::default(),
            sha256: with_sha256.then(Sha256::new),
            size: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.xxh3.update(data);
        if let Some(sha) = self.sha256.as_mut() {
            sha.update(data);
        }
        self.size += data.len() as u64;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn finish(&self) -> FileDigest {
        FileDigest {
            size: self.size,
            xxh3_128: self.xxh3.digest(),
            sha256: self.sha256.clone().map(|sha| sha.finalize().into()),
        }
    }
}

/// Hash a file on disk (reads it in 1 MiB pieces).
pub fn hash_file(path: &Path, with_sha256: bool) -> Result<FileDigest> {
    let mut file =
        File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut hasher = FileHasher::new(with_sha256);
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buffer[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut h = Xxh3Hasher::default();
        for piece in data.chunks(777) {
            h.update(piece);
        }
        assert_eq!(h.digest(), xxh3_128(&data));
    }

    #[test]
    fn known_vectors() {
        // Reference values from the xxhash and hashlib Python packages.
        assert_eq!(hex128(xxh3_128(b"")), "99aa06d3014798d86001c324468d497f");
        let mut f = FileHasher::new(true);
        f.update(b"abc");
        let d = f.finish();
        assert_eq!(
            hex_bytes(&d.sha256.unwrap()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex128(d.xxh3_128), "06b05ab6733a618578af5f94892f3950");
    }

    #[test]
    fn hex_round_trips() {
        let v = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128;
        assert_eq!(parse_hex128(&hex128(v)).unwrap(), v);
        assert!(parse_hex128("xyz").is_err());
        let bytes = [7u8; 32];
        assert_eq!(parse_hex256(&hex_bytes(&bytes)).unwrap(), bytes);
    }
}
