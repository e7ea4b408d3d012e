//! Checking a chunk body as it streams in, without keeping it: undo its encoding, count the
//! decoded bytes against a cap, and hash them (xxh3-128). This is what a MESH server does with
//! every upload, at the engine's speed (ISA-L inflate, libzstd), so that the server is never
//! what a transfer benchmark measures.
//!
//! Memory: one decoder (ISA-L's state, or a zstd window capped by `window_log_max`) and its
//! 256 KiB output buffer; decoded bytes are hashed and dropped piece by piece, so a body that
//! decodes to gigabytes costs no more memory than one that decodes to nothing. A body that
//! decodes past `limit` fails as soon as it passes it (after at most one output buffer of
//! work): a decompression bomb is never expanded.
//!
//! Which decoding applies: [`BodyEncoding::Gzip`] for an HTTP `Content-Encoding: gzip` body;
//! [`BodyEncoding::SniffZstd`] for a body flagged as a compressed payload, decoded as zstd when
//! it starts with zstd's magic number (zstd can only travel that way) and counted as it is
//! otherwise; [`BodyEncoding::Identity`] for the rest.

use crate::checksum::Xxh3Hasher;
use crate::codec::{CodecKind, Decoder};
use crate::error::Result;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEncoding {
    Identity,
    Gzip,
    SniffZstd,
}

/// What a finished check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyReport {
    /// Bytes received.
    pub stored_size: u64,
    /// Bytes after decoding.
    pub decoded_size: u64,
    /// xxh3-128 of the decoded bytes.
    pub xxh3_128: u128,
    /// Whether the body was decoded (gzip, or a sniffed zstd payload).
    pub decoded: bool,
}

/// A streaming check of one body: [`BodyCheck::update`] with each piece as it arrives, then
/// [`BodyCheck::finish`].
pub struct BodyCheck {
    decoder: Option<Decoder>,
    /// Bytes held while deciding whether a flagged payload is zstd (fewer than 4).
    head: Vec<u8>,
    limit: u64,
    window_log_max: u32,
    hasher: Xxh3Hasher,
    stored_size: u64,
    decoded: bool,
}

impl BodyCheck {
    pub fn new(encoding: BodyEncoding, limit: u64, window_log_max: u32) -> Result<Self> {
        let decoder = match encoding {
            BodyEncoding::Identity => Some(Decoder::new(CodecKind::None, limit, false)?),
            BodyEncoding::Gzip => Some(Decoder::with_window_log_max(
                CodecKind::Gzip,
                limit,
                false,
                window_log_max,
            )?),
            BodyEncoding::SniffZstd => None,
        };
        Ok(BodyCheck {
            decoded: encoding == BodyEncoding::Gzip,
            decoder,
            head: Vec::with_capacity(ZSTD_MAGIC.len()),
            limit,
            window_log_max,
            hasher: Xxh3Hasher::default(),
            stored_size: 0,
        })
    }

    /// Bytes received so far.
    pub fn stored_size(&self) -> u64 {
        self.stored_size
    }

    /// Feed the next piece of the body.
    pub fn update(&mut self, mut data: &[u8]) -> Result<()> {
        self.stored_size += data.len() as u64;
        let held;
        if self.decoder.is_none() {
            let need = (ZSTD_MAGIC.len() - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..need]);
            data = &data[need..];
            if self.head.len() < ZSTD_MAGIC.len() {
                return Ok(());
            }
            self.choose_decoder()?;
            held = std::mem::take(&mut self.head);
            self.feed(&held)?;
        }
        self.feed(data)
    }

    /// The body is complete: check its end (a truncated gzip member or zstd frame fails).
    pub fn finish(mut self) -> Result<BodyReport> {
        if self.decoder.is_none() {
            // Fewer than four bytes: too short to be zstd.
            self.decoder = Some(Decoder::new(CodecKind::None, self.limit, false)?);
            let held = std::mem::take(&mut self.head);
            self.feed(&held)?;
        }
        let decoder = self.decoder.as_mut().expect("chosen above");
        decoder.finish()?;
        Ok(BodyReport {
            stored_size: self.stored_size,
            decoded_size: decoder.produced(),
            xxh3_128: self.hasher.digest(),
            decoded: self.decoded,
        })
    }

    fn choose_decoder(&mut self) -> Result<()> {
        let zstd = self.head[..] == ZSTD_MAGIC;
        let kind = if zstd {
            CodecKind::Zstd
        } else {
            CodecKind::None
        };
        self.decoded = zstd;
        self.decoder = Some(Decoder::with_window_log_max(
            kind,
            self.limit,
            false,
            self.window_log_max,
        )?);
        Ok(())
    }

    fn feed(&mut self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let hasher = &mut self.hasher;
        let decoder = self
            .decoder
            .as_mut()
            .expect("a decoder is chosen before feeding");
        decoder.feed(data, &mut |bytes| {
            hasher.update(bytes);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::xxh3_128;
    use crate::codec::{Codec, Compressor};
    use crate::error::{Error, LengthProblem};

    fn compressed(codec: Codec, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Compressor::new(codec)
            .unwrap()
            .compress(data, &mut out)
            .unwrap();
        out
    }

    fn check_in_pieces(encoding: BodyEncoding, body: &[u8], piece: usize) -> Result<BodyReport> {
        let mut check = BodyCheck::new(encoding, 1 << 30, 23)?;
        for part in body.chunks(piece.max(1)) {
            check.update(part)?;
        }
        check.finish()
    }

    fn sample() -> Vec<u8> {
        (0..300_000u32)
            .flat_map(|n| format!("{n},row\n").into_bytes())
            .collect()
    }

    #[test]
    fn gzip_and_sniffed_zstd_decode_to_the_original_in_any_piece_size() {
        let data = sample();
        for piece in [1, 3, 4096, 1 << 20] {
            let gzip = compressed(Codec::gzip(1).unwrap(), &data);
            let report = check_in_pieces(BodyEncoding::Gzip, &gzip, piece).unwrap();
            assert_eq!(report.decoded_size, data.len() as u64);
            assert_eq!(report.stored_size, gzip.len() as u64);
            assert_eq!(report.xxh3_128, xxh3_128(&data));
            assert!(report.decoded);

            let zstd = compressed(Codec::zstd(1).unwrap(), &data);
            let report = check_in_pieces(BodyEncoding::SniffZstd, &zstd, piece).unwrap();
            assert_eq!(report.decoded_size, data.len() as u64);
            assert_eq!(report.xxh3_128, xxh3_128(&data));
            assert!(report.decoded);
        }
    }

    #[test]
    fn a_flagged_payload_that_is_not_zstd_is_counted_as_it_is() {
        for body in [&b""[..], b"ab", b"abcd", b"plain text, not zstd"] {
            let report = check_in_pieces(BodyEncoding::SniffZstd, body, 1).unwrap();
            assert_eq!(report.decoded_size, body.len() as u64);
            assert_eq!(report.xxh3_128, xxh3_128(body));
            assert!(!report.decoded);
        }
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 64 << 20];
        let gzip = compressed(Codec::gzip(1).unwrap(), &zeros);
        let mut check = BodyCheck::new(BodyEncoding::Gzip, 1 << 20, 23).unwrap();
        let error = check.update(&gzip).unwrap_err();
        assert!(matches!(
            error,
            Error::ChunkLength {
                problem: LengthProblem::Over,
                ..
            }
        ));
    }

    #[test]
    fn an_unbounded_limit_decodes() {
        let data = sample();
        let gzip = compressed(Codec::gzip(1).unwrap(), &data);
        let mut check = BodyCheck::new(BodyEncoding::Gzip, u64::MAX, 23).unwrap();
        check.update(&gzip).unwrap();
        assert_eq!(check.finish().unwrap().decoded_size, data.len() as u64);
    }

    #[test]
    fn truncated_and_corrupt_bodies_fail() {
        let data = sample();
        let gzip = compressed(Codec::gzip(1).unwrap(), &data);
        let truncated = check_in_pieces(BodyEncoding::Gzip, &gzip[..gzip.len() / 2], 4096);
        assert!(matches!(truncated, Err(Error::Codec { .. })));
        let mut zstd = compressed(Codec::zstd(1).unwrap(), &data);
        let middle = zstd.len() / 2;
        zstd[middle] ^= 0xff;
        assert!(check_in_pieces(BodyEncoding::SniffZstd, &zstd, 4096).is_err());
    }
}
