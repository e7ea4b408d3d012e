//! The whole-file manifest: the file's xxh3-128 and size, carried at the end of the last chunk
//! of a gzip or zstd message in a form every plain decoder skips, so the sender can compute it
//! while it reads the file once, instead of hashing the file before chunk 1.
//!
//! The text is `meshpipe-manifest/1 xxh3-128:<32 hex> size:<bytes>`, wrapped as:
//! - gzip: one extra, empty gzip member (RFC 1952) after the chunk's own member; its header sets
//!   FEXTRA with one subfield, SI1 = 'M', SI2 = 'P', holding the text; its deflate data is one
//!   empty final block, its CRC-32 and ISIZE are 0. A gzip decoder that reads concatenated
//!   members (Python's gzip and zlib, urllib3, aiohttp, ISA-L, this engine) decodes it to zero
//!   bytes; one that stops after the first member never sees it.
//! - zstd: one skippable frame (magic 0x184D2A5E, then its length as u32 little-endian, then the
//!   text). Every zstd decoder skips skippable frames; they decode to zero bytes.
//!
//! The decoders in [`crate::codec`] capture a manifest where they find one; the assembler
//! checks the assembled file against it.

use crate::checksum::{hex128, parse_hex128};
use crate::codec::CodecKind;
use crate::error::{Error, Result};

/// The text's first word, naming the format and its version.
pub const MANIFEST_VERSION: &str = "meshpipe-manifest/1";

/// The gzip FEXTRA subfield id that carries the manifest: 'M', 'P'.
pub const GZIP_SUBFIELD: [u8; 2] = *b"MP";

/// The zstd skippable frame magic number meshpipe writes (any of 0x184D2A50..=0x184D2A5F is a
/// skippable frame; readers accept a manifest in any of them).
pub const ZSTD_SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;

/// The longest manifest text a decoder keeps; a longer one is not meshpipe's.
pub const MAX_MANIFEST_TEXT: usize = 1024;

/// Bytes a manifest adds to a chunk's payload, at most (the wrapper plus the longest text).
pub const MAX_MANIFEST_BYTES: u64 = 32 + MAX_MANIFEST_TEXT as u64;

/// The whole file, as the sender read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manifest {
    pub xxh3_128: u128,
    pub size: u64,
}

impl Manifest {
    pub fn text(&self) -> String {
        format!(
            "{MANIFEST_VERSION} xxh3-128:{} size:{}",
            hex128(self.xxh3_128),
            self.size
        )
    }

    /// Parse a manifest text; `Ok(None)` when it is not meshpipe's (another program's data in
    /// the same place), an error when it claims to be meshpipe's but is malformed.
    pub fn parse(text: &[u8]) -> Result<Option<Manifest>> {
        let Ok(text) = std::str::from_utf8(text) else {
            return Ok(None);
        };
        let mut words = text.split(' ');
        if words.next() != Some(MANIFEST_VERSION) {
            return Ok(None);
        }
        let malformed = || Error::Codec {
            chunk: None,
            codec: "manifest",
            detail: format!(
                "malformed whole-file manifest {text:?}; expected \"{MANIFEST_VERSION} \
                 xxh3-128:<32 hex digits> size:<bytes>\""
            ),
        };
        let mut xxh3 = None;
        let mut size = None;
        for word in words {
            match word.split_once(':') {
                Some(("xxh3-128", hex)) if hex.len() == 32 => {
                    xxh3 = Some(parse_hex128(hex).map_err(|_| malformed())?)
                }
                Some(("size", digits)) if !digits.is_empty() => {
                    size = Some(digits.parse::<u64>().map_err(|_| malformed())?)
                }
                _ => return Err(malformed()),
            }
        }
        match (xxh3, size) {
            (Some(xxh3_128), Some(size)) => Ok(Some(Manifest { xxh3_128, size })),
            _ => Err(malformed()),
        }
    }

    /// Append this manifest, wrapped for `codec`, to a chunk's compressed payload.
    pub fn append_to(&self, codec: CodecKind, payload: &mut Vec<u8>) -> Result<()> {
        let text = self.text();
        let text = text.as_bytes();
        match codec {
            CodecKind::Gzip => {
                let subfield_length = text.len() as u16;
                let extra_length = subfield_length + 4;
                // ID1 ID2 CM=deflate FLG=FEXTRA MTIME=0 XFL=0 OS=unknown
                payload.extend_from_slice(&[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255]);
                payload.extend_from_slice(&extra_length.to_le_bytes());
                payload.extend_from_slice(&GZIP_SUBFIELD);
                payload.extend_from_slice(&subfield_length.to_le_bytes());
                payload.extend_from_slice(text);
                // One final, fixed-Huffman block holding only end-of-block; CRC-32 0, ISIZE 0.
                payload.extend_from_slice(&[0x03, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]);
                Ok(())
            }
            CodecKind::Zstd => {
                payload.extend_from_slice(&ZSTD_SKIPPABLE_MAGIC.to_le_bytes());
                payload.extend_from_slice(&(text.len() as u32).to_le_bytes());
                payload.extend_from_slice(text);
                Ok(())
            }
            CodecKind::None => Err(Error::InvalidArgument(
                "a manifest cannot travel with codec \"none\" without changing the file's bytes; \
                 put the checksum in the header instead"
                    .into(),
            )),
        }
    }
}

/// The manifest in a gzip header's FEXTRA field, if it holds one ('M','P' subfield).
pub fn from_gzip_extra(extra: &[u8]) -> Result<Option<Manifest>> {
    let mut rest = extra;
    while rest.len() >= 4 {
        let id = [rest[0], rest[1]];
        let length = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
        let Some(data) = rest.get(4..4 + length) else {
            return Ok(None);
        };
        if id == GZIP_SUBFIELD {
            return Manifest::parse(data);
        }
        rest = &rest[4 + length..];
    }
    Ok(None)
}

/// Whether `magic` (read little-endian) starts a zstd skippable frame.
pub fn is_skippable_magic(magic: u32) -> bool {
    magic & 0xFFFF_FFF0 == 0x184D_2A50
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const SAMPLE: Manifest = Manifest {
        xxh3_128: 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        size: 53_687_091_200,
    };

    #[test]
    fn text_round_trips() {
        let text = SAMPLE.text();
        assert_eq!(
            text,
            "meshpipe-manifest/1 xxh3-128:0123456789abcdeffedcba9876543210 size:53687091200"
        );
        assert_eq!(Manifest::parse(text.as_bytes()).unwrap(), Some(SAMPLE));
    }

    #[test]
    fn other_texts_are_not_manifests_and_malformed_ones_are_refused() {
        assert_eq!(Manifest::parse(b"somebody else's data").unwrap(), None);
        assert_eq!(Manifest::parse(&[0xff, 0xfe]).unwrap(), None);
        for bad in [
            "meshpipe-manifest/1 xxh3-128:0123 size:5",
            "meshpipe-manifest/1 size:5",
            "meshpipe-manifest/1 xxh3-128:0123456789abcdeffedcba9876543210",
            "meshpipe-manifest/1 xxh3-128:0123456789abcdeffedcba9876543210 size:-1",
            "meshpipe-manifest/1 xxh3-128:0123456789abcdeffedcba987654321g size:5",
        ] {
            let err = Manifest::parse(bad.as_bytes()).unwrap_err();
            assert!(
                err.to_string().contains("malformed whole-file manifest"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_gzip_member_is_empty_to_a_plain_decoder_and_carries_the_text() {
        let mut payload = Vec::new();
        SAMPLE.append_to(CodecKind::Gzip, &mut payload).unwrap();
        assert!(payload.len() as u64 <= MAX_MANIFEST_BYTES);
        let mut decoded = Vec::new();
        flate2::read::MultiGzDecoder::new(&payload[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert!(decoded.is_empty());
        let header = flate2::read::GzDecoder::new(&payload[..]);
        let extra = header.header().unwrap().extra().unwrap().to_vec();
        assert_eq!(from_gzip_extra(&extra).unwrap(), Some(SAMPLE));
        // Another program's subfields before ours are skipped.
        let mut mixed = vec![b'A', b'B', 2, 0, 9, 9];
        mixed.extend_from_slice(&extra);
        assert_eq!(from_gzip_extra(&mixed).unwrap(), Some(SAMPLE));
        assert_eq!(from_gzip_extra(&[b'A', b'B', 1, 0, 7]).unwrap(), None);
    }

    #[test]
    fn the_zstd_frame_is_skipped_by_libzstd() {
        let mut payload = zstd::encode_all(&b"abc"[..], 1).unwrap();
        SAMPLE.append_to(CodecKind::Zstd, &mut payload).unwrap();
        assert_eq!(zstd::decode_all(&payload[..]).unwrap(), b"abc");
        assert!(is_skippable_magic(ZSTD_SKIPPABLE_MAGIC));
        assert!(!is_skippable_magic(0xFD2F_B528));
    }

    #[test]
    fn codec_none_has_no_place_for_a_manifest() {
        let err = SAMPLE
            .append_to(CodecKind::None, &mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("header"), "{err}");
    }
}
