//! meshpipe's chunk engine: plan, split, compress, checksum and reassemble files for NHS MESH.
//!
//! Pure Rust; the Python bindings live in `rust/src/py/` behind the `python` feature.
//!
//! - [`plan`]: fixed uncompressed chunk boundaries, checked against MESH's limits.
//! - [`codec`]: none / gzip (ISA-L) / zstd; one-shot compression, incremental capped decoding.
//! - [`checksum`]: xxh3-128 per chunk and per file, SHA-256 on request.
//! - [`manifest`]: the whole-file checksum carried at the end of the last gzip/zstd chunk.
//! - [`buffers`]: chunk buffers, kept spare between splits for a few seconds.
//! - [`split`]: the read → hash → compress pipeline over a bounded window of threads, over all
//!   of a file's chunks or any subset of them.
//! - [`assemble`]: decode → verify → write at offset, any order; verify, fsync, rename; resume
//!   from a stable partial file whose completed chunks are re-checked.

pub mod assemble;
pub mod buffers;
pub mod check;
pub mod checksum;
pub mod codec;
pub mod error;
pub mod manifest;
pub mod plan;
pub mod split;

#[cfg(feature = "python")]
mod py;

pub use error::{Error, Result};
