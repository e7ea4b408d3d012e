//! The whole-file digest of an assembly, fed strictly in file order.
//!
//! Chunks complete in any order, but xxh3-128 and SHA-256 must see the file front to back.
//! [`WholeHash`] keeps that invariant in one place:
//! - the first chunk not yet hashed (`next`) is hashed *as it is written*, after reading back
//!   whatever of it was written before it became first in line;
//! - chunks completed ahead of it are read back (from the page cache: they were just written)
//!   when the gap before them closes;
//! - an attempt at chunk `next` that fails or is abandoned is taken back out (rolled back to the
//!   state before its first byte), so a retried chunk is hashed once.

use super::partial::PartialFile;
use super::Slot;
use crate::checksum::{FileDigest, FileHasher};
use crate::error::Result;

pub(super) struct WholeHash {
    hasher: FileHasher,
    /// Chunks `0..next` (0-based) are in `hasher`, and nothing else is, except bytes of the
    /// chunk `next` streamed in so far.
    next: u32,
    /// Set while chunk `next` is being streamed: `hasher` as it was before its first byte.
    before_streaming: Option<FileHasher>,
}

impl WholeHash {
    pub(super) fn new(with_sha256: bool) -> Self {
        WholeHash {
            hasher: FileHasher::new(with_sha256),
            next: 0,
            before_streaming: None,
        }
    }

    /// Bytes of chunk `index` were just written at file offset `at`. If every earlier chunk is
    /// hashed, hash them now (reading back first any part of this chunk written before that).
    pub(super) fn written(
        &mut self,
        file: &PartialFile,
        index: u32,
        at: u64,
        bytes: &[u8],
    ) -> Result<()> {
        if index != self.next {
            return Ok(());
        }
        if self.before_streaming.is_none() {
            self.before_streaming = Some(self.hasher.clone());
        }
        let hashed_to = self.hasher.size();
        if hashed_to < at {
            let hasher = &mut self.hasher;
            file.read_range(hashed_to, at - hashed_to, |piece| {
                hasher.update(piece);
                Ok(())
            })?;
        }
        self.hasher.update(bytes);
        Ok(())
    }

    /// Chunk `index` is complete (its slot says `Done`): count it if it was streamed, then
    /// hash every complete chunk now at the front of the file.
    pub(super) fn completed(
        &mut self,
        file: &PartialFile,
        slots: &[Slot],
        index: u32,
    ) -> Result<()> {
        if index == self.next && self.before_streaming.take().is_some() {
            self.next += 1;
        }
        self.catch_up(file, slots)
    }

    /// The attempt at chunk `index` failed or was abandoned: take back what it fed in.
    pub(super) fn rolled_back(&mut self, index: u32) {
        if index == self.next {
            if let Some(before) = self.before_streaming.take() {
                self.hasher = before;
            }
        }
    }

    /// The digest of the whole file; every chunk must be complete.
    pub(super) fn finish(&mut self, file: &PartialFile, slots: &[Slot]) -> Result<FileDigest> {
        self.catch_up(file, slots)?;
        debug_assert_eq!(self.next as usize, slots.len());
        Ok(self.hasher.finish())
    }

    /// Hash, by reading them back, the complete chunks at the front of what is not yet hashed.
    fn catch_up(&mut self, file: &PartialFile, slots: &[Slot]) -> Result<()> {
        while let Some(length) = slots.get(self.next as usize).and_then(Slot::done_length) {
            let before = self.hasher.clone();
            let hasher = &mut self.hasher;
            let outcome = file.read_range(hasher.size(), length, |piece| {
                hasher.update(piece);
                Ok(())
            });
            if let Err(e) = outcome {
                self.hasher = before;
                return Err(e);
            }
            self.next += 1;
        }
        Ok(())
    }
}
