//! Assemble: chunks arrive in any order, as byte feeds; each is decoded (capped at its planned
//! length), verified and written at its offset into a partial file beside the destination.
//! The whole-file digest is fed in file order (one `WholeHash` keeps that order and its rollback). `finish`
//! verifies the whole file, fsyncs it and renames it into place, never over an existing file
//! unless `overwrite` is set. Until then nothing is at the destination.
//!
//! # The whole-file manifest
//! A gzip or zstd sender may carry the file's xxh3-128 and size at the end of the last chunk
//! ([`crate::manifest`]) instead of in the headers. The last chunk's decoder captures it, and
//! `finish` checks the assembled file against it. With [`trailer`](AssembleOptions::trailer)
//! set (the headers announced one) a missing manifest fails `finish` as a checksum mismatch;
//! without it, a manifest that arrives is still checked. A manifest in any other chunk fails
//! that chunk. On a resume, a completed last chunk is fetched again when a manifest is
//! expected (the manifest is not in the partial file).
//!
//! # The partial file, and resuming
//! By default the partial file is a fresh temporary file, deleted by `abort`, by a failed
//! `finish` and when the assembler is dropped unfinished.
//!
//! To survive a crash, name a stable [`partial_path`](AssembleOptions::partial_path) (on the
//! destination's filesystem) and set [`keep_partial`](AssembleOptions::keep_partial): the
//! partial file is then opened without truncation (created if absent, extended to the file size
//! when it is known) and left in place by `abort`, a failed `finish` and drop. A later run
//! passes the chunks it recorded as done in [`completed`](AssembleOptions::completed) (chunk
//! number → xxh3-128; needs the chunk size): each is re-read from the partial file and checked
//! against its checksum; a torn or tampered chunk is dropped and reported in
//! [`Assembler::resumed`], so the caller fetches it again. The re-read feeds the whole-file
//! digest, so the finished file is still checked end to end, with no further read of the chunks
//! at its front.
//!
//! A chunk is durable once [`ChunkWriter::finish_synced`] (or [`Assembler::sync`]) returns:
//! record it as done (in a ledger) only after that. A second assembler on the same partial path
//! is refused until the first has ended (finished, aborted or dropped): an advisory lock.
//!
//! I/O errors (a full disk: ENOSPC) name the file and leave the state consistent: the chunk
//! being written is forgotten and may be written again, chunks already done stay done.

mod partial;
mod whole_hash;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::checksum::{hex128, hex_bytes, Xxh3Hasher};
use crate::codec::{CodecKind, Decoder, Integrity};
use crate::error::{Error, LengthProblem, Result};
use crate::manifest::Manifest;
use partial::{is_short_file, parent_of, sync_folder, PartialFile};
use whole_hash::WholeHash;

/// Default cap on a chunk's uncompressed length when the plan does not say (a chunk as sent is at
/// most 100 MB; 1 GiB of output allows generous compression ratios and stops bombs).
pub const DEFAULT_MAX_CHUNK_SIZE: u64 = 1 << 30;

/// What the assembler knows about the message before the first byte.
#[derive(Debug, Clone)]
pub struct AssembleOptions {
    pub chunk_count: u32,
    pub codec: CodecKind,
    /// Uncompressed size of every chunk but the last, if known.
    pub chunk_size: Option<u64>,
    /// Uncompressed size of the whole file, if known.
    pub file_size: Option<u64>,
    /// Expected whole-file xxh3-128, if known.
    pub xxh3_128: Option<u128>,
    /// Expected whole-file SHA-256, if known.
    pub sha256: Option<[u8; 32]>,
    /// Compute SHA-256 even when none is expected.
    pub compute_sha256: bool,
    /// Upper bound on a chunk's uncompressed length when the plan does not fix it.
    pub max_chunk_size: u64,
    /// Replace an existing destination file.
    pub overwrite: bool,
    /// A stable path for the partial file (opened without truncation), instead of a fresh
    /// temporary file. It must be on the destination's filesystem.
    pub partial_path: Option<PathBuf>,
    /// Leave the partial file in place on abort, on a failed finish and on drop.
    pub keep_partial: bool,
    /// Chunks already in the partial file (1-based number → xxh3-128), to re-check and keep.
    /// Needs `partial_path` and `chunk_size`.
    pub completed: BTreeMap<u32, u128>,
    /// The sender announced a whole-file manifest at the end of the last chunk: `finish`
    /// requires it and checks the file against it.
    pub trailer: bool,
}

impl AssembleOptions {
    pub fn new(chunk_count: u32, codec: CodecKind) -> Self {
        AssembleOptions {
            chunk_count,
            codec,
            chunk_size: None,
            file_size: None,
            xxh3_128: None,
            sha256: None,
            compute_sha256: false,
            max_chunk_size: DEFAULT_MAX_CHUNK_SIZE,
            overwrite: false,
            partial_path: None,
            keep_partial: false,
            completed: BTreeMap::new(),
            trailer: false,
        }
    }
}

/// What vouched for a chunk's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkCheck {
    /// Its xxh3-128 matched the one expected (as received, or re-read on resume).
    Xxh3,
    /// Only what its codec checks (or nothing, for raw bytes without an expected checksum).
    Codec(Integrity),
}

impl ChunkCheck {
    pub fn name(self) -> &'static str {
        match self {
            ChunkCheck::Xxh3 => "xxh3-128",
            ChunkCheck::Codec(integrity) => integrity.name(),
        }
    }

    /// Whether anything was checked at all.
    pub fn verifies(self) -> bool {
        self != ChunkCheck::Codec(Integrity::Unverified)
    }
}

/// The outcome for one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkReport {
    pub number: u32,
    pub length: u64,
    pub xxh3_128: u128,
    pub verified_by: ChunkCheck,
    /// The whole-file manifest the chunk ended with (only the last chunk may carry one).
    pub manifest: Option<Manifest>,
}

/// The outcome for the whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssemblyReport {
    pub path: PathBuf,
    pub size: u64,
    pub chunk_count: u32,
    pub xxh3_128: u128,
    pub sha256: Option<[u8; 32]>,
    /// What was verified, in words ("file xxh3-128", "chunks gzip-crc32", ...).
    pub verified: Vec<String>,
}

/// What became of the chunks listed as completed when the assembler was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeReport {
    /// Re-read and matching their recorded checksum: kept, not to be fetched again.
    pub accepted: Vec<u32>,
    /// Torn (the partial file ends inside them) or changed: fetch them again.
    pub rejected: Vec<u32>,
}

#[derive(Debug, Clone)]
enum Slot {
    Missing,
    Writing,
    Done {
        length: u64,
        xxh3_128: u128,
        verified_by: ChunkCheck,
    },
}

impl Slot {
    fn done_length(&self) -> Option<u64> {
        match self {
            Slot::Done { length, .. } => Some(*length),
            _ => None,
        }
    }
}

/// How an assembler ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    Finished,
    Aborted,
}

impl Closed {
    fn word(self) -> &'static str {
        match self {
            Closed::Finished => "finished",
            Closed::Aborted => "aborted",
        }
    }
}

struct State {
    slots: Vec<Slot>,
    chunk_size: Option<u64>,
    whole: WholeHash,
    closed: Option<Closed>,
    /// The manifest at the end of the last chunk, once that chunk is complete.
    manifest: Option<Manifest>,
}

struct Shared {
    destination: PathBuf,
    partial: PartialFile,
    options: AssembleOptions,
    resumed: ResumeReport,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough state to report and abort.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The assembly ended without a file at the destination: drop the partial file unless the
    /// caller keeps it for a later resume (and then let a later assembler open it).
    fn discard_partial(&self) {
        if self.options.keep_partial {
            self.partial.unlock();
        } else {
            self.partial.remove();
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let finished = self
            .state
            .get_mut()
            .map(|s| s.closed == Some(Closed::Finished))
            .unwrap_or(false);
        if !finished {
            self.discard_partial();
        }
    }
}

/// Reassembles one message into one file.
pub struct Assembler {
    shared: Arc<Shared>,
}

impl Assembler {
    pub fn create(destination: &Path, options: AssembleOptions) -> Result<Self> {
        check_options(destination, &options)?;
        let partial = match &options.partial_path {
            Some(path) => PartialFile::open_stable(path, destination)?,
            None => PartialFile::create_temporary(destination)?,
        };
        let with_sha = options.compute_sha256 || options.sha256.is_some();
        let mut state = State {
            slots: vec![Slot::Missing; options.chunk_count as usize],
            chunk_size: options.chunk_size,
            whole: WholeHash::new(with_sha),
            closed: None,
            manifest: None,
        };
        let prepared = prepare_partial(&partial, &options).and_then(|()| {
            if options.completed.is_empty() {
                Ok(ResumeReport::default())
            } else {
                recheck_completed(&partial, &options, &mut state)
            }
        });
        let resumed = match prepared {
            Ok(resumed) => resumed,
            Err(e) => {
                if !options.keep_partial {
                    partial.remove();
                }
                return Err(e);
            }
        };
        Ok(Assembler {
            shared: Arc::new(Shared {
                destination: destination.to_path_buf(),
                partial,
                options,
                resumed,
                state: Mutex::new(state),
            }),
        })
    }

    pub fn destination(&self) -> &Path {
        &self.shared.destination
    }

    /// Where the file is being assembled: the temporary file, or the stable partial path.
    pub fn temporary_path(&self) -> &Path {
        self.shared.partial.path()
    }

    /// Which of the chunks listed as completed were kept, and which must be fetched again.
    pub fn resumed(&self) -> &ResumeReport {
        &self.shared.resumed
    }

    /// Make every chunk finished so far durable (one fdatasync of the partial file).
    pub fn sync(&self) -> Result<()> {
        check_open(&self.shared.lock())?;
        self.shared.partial.sync_data()
    }

    pub fn chunk_count(&self) -> u32 {
        self.shared.options.chunk_count
    }

    /// 1-based numbers of the chunks not yet complete.
    pub fn missing(&self) -> Vec<u32> {
        missing_in(&self.shared.lock())
    }

    /// Start receiving chunk `number` (1-based). `expected` is its xxh3-128 if known.
    pub fn open_chunk(&self, number: u32, expected: Option<u128>) -> Result<ChunkWriter> {
        let options = &self.shared.options;
        let count = options.chunk_count;
        if number == 0 || number > count {
            return Err(Error::ChunkNumber {
                chunk: i64::from(number),
                count,
            });
        }
        let index = number - 1;
        let mut state = self.shared.lock();
        check_open(&state)?;
        let last = number == count;
        // Where the chunk goes, and how long it may or must be.
        let (offset, limit, exact) = match state.chunk_size {
            Some(size) => {
                let offset = u64::from(index) * size;
                match (last, options.file_size) {
                    (false, _) => (offset, size, true),
                    (true, Some(file)) => (offset, file - offset, true),
                    (true, None) => (offset, size, false),
                }
            }
            None => {
                let mut offset = 0u64;
                for (i, slot) in state.slots[..index as usize].iter().enumerate() {
                    match slot {
                        Slot::Done { length, .. } => offset += length,
                        _ => {
                            return Err(Error::ChunkOrder {
                                chunk: number,
                                waiting_for: i as u32 + 1,
                            })
                        }
                    }
                }
                // Earlier chunks were capped at what the file size leaves, so this cannot wrap.
                let remaining = options.file_size.map(|file| file.saturating_sub(offset));
                match (last, remaining) {
                    (true, Some(rest)) => (offset, rest, true),
                    (false, Some(rest)) => (offset, rest.min(options.max_chunk_size), false),
                    (_, None) => (offset, options.max_chunk_size, false),
                }
            }
        };
        let previous = match &state.slots[index as usize] {
            Slot::Writing => {
                return Err(Error::DuplicateChunk {
                    chunk: number,
                    detail: "is already being written; abort that writer before retrying".into(),
                })
            }
            Slot::Missing => None,
            Slot::Done {
                length, xxh3_128, ..
            } => Some((*length, *xxh3_128)),
        };
        if previous.is_none() {
            state.slots[index as usize] = Slot::Writing;
        }
        drop(state);
        let decoder = Decoder::new(options.codec, limit, exact).inspect_err(|_| {
            if previous.is_none() {
                self.shared.lock().slots[index as usize] = Slot::Missing;
            }
        })?;
        Ok(ChunkWriter {
            shared: self.shared.clone(),
            number,
            offset,
            expected_length: exact.then_some(limit),
            expected_xxh3: expected,
            decoder,
            hasher: Xxh3Hasher::default(),
            previous,
            open: true,
        })
    }

    /// After chunk 1 of a message whose chunk size was unknown: take chunk 1's length as every
    /// chunk's but the last, so the other chunks can be written concurrently.
    pub fn assume_fixed_chunk_size(&self) -> Result<u64> {
        let mut state = self.shared.lock();
        check_open(&state)?;
        if let Some(size) = state.chunk_size {
            return Ok(size);
        }
        match state.slots[0] {
            Slot::Done { length, .. } if length > 0 => {
                state.chunk_size = Some(length);
                Ok(length)
            }
            Slot::Done { .. } => Err(Error::InvalidArgument(
                "chunk 1 is empty, so it cannot set the chunk size".into(),
            )),
            _ => Err(Error::State(
                "assume_fixed_chunk_size() needs chunk 1 to be complete first".into(),
            )),
        }
    }

    /// Verify the whole file, fsync it and rename it to the destination.
    pub fn finish(&self) -> Result<AssemblyReport> {
        let shared = &self.shared;
        let mut state = shared.lock();
        check_open(&state)?;
        let missing = missing_in(&state);
        if !missing.is_empty() {
            return Err(Error::MissingChunks {
                missing,
                count: shared.options.chunk_count,
            });
        }
        match finish_locked(shared, &mut state) {
            Ok(report) => {
                state.closed = Some(Closed::Finished);
                Ok(report)
            }
            Err(e) => {
                state.closed = Some(Closed::Aborted);
                shared.discard_partial();
                Err(e)
            }
        }
    }

    /// End the assembly: later calls fail with a state error. Deletes the partial file unless
    /// `keep_partial` was set. Idempotent.
    pub fn abort(&self) {
        let mut state = self.shared.lock();
        if state.closed.is_none() {
            state.closed = Some(Closed::Aborted);
            self.shared.discard_partial();
        }
    }
}

impl Drop for Assembler {
    /// The assembler owns the partial file: dropped unfinished, it deletes it (unless kept),
    /// even while writers of it are still alive (their later writes fail on a closed assembler).
    fn drop(&mut self) {
        self.abort();
    }
}

fn check_open(state: &State) -> Result<()> {
    match state.closed {
        None => Ok(()),
        Some(how) => Err(Error::State(format!(
            "the assembler was already {}",
            how.word()
        ))),
    }
}

/// Refuse a plan that cannot be right, or a destination that cannot be written, before any file
/// is created.
fn check_options(destination: &Path, options: &AssembleOptions) -> Result<()> {
    if options.chunk_count == 0 {
        return Err(Error::InvalidArgument(
            "a message has at least one chunk".into(),
        ));
    }
    if options.chunk_size == Some(0) {
        return Err(Error::InvalidArgument("chunk_size must be positive".into()));
    }
    if let (Some(chunk), Some(file)) = (options.chunk_size, options.file_size) {
        let count = file.div_ceil(chunk).max(1);
        if count != u64::from(options.chunk_count) {
            return Err(Error::InvalidArgument(format!(
                "a {file}-byte file in {chunk}-byte chunks has {count} chunks, not {}",
                options.chunk_count
            )));
        }
    }
    if !options.completed.is_empty() {
        if options.partial_path.is_none() {
            return Err(Error::InvalidArgument(
                "completed chunks are re-read from the partial file of an earlier run; pass partial_path too"
                    .into(),
            ));
        }
        if options.chunk_size.is_none() {
            return Err(Error::InvalidArgument(
                "resuming with completed chunks needs chunk_size (to know where they are)".into(),
            ));
        }
        if let Some(&number) = options
            .completed
            .keys()
            .find(|&&n| n == 0 || n > options.chunk_count)
        {
            return Err(Error::ChunkNumber {
                chunk: i64::from(number),
                count: options.chunk_count,
            });
        }
    }
    if destination.is_dir() {
        return Err(Error::io(
            format!("destination {}", destination.display()),
            std::io::Error::from(std::io::ErrorKind::IsADirectory),
        ));
    }
    if !options.overwrite && destination.exists() {
        return Err(Error::io(
            destination.display().to_string(),
            already_exists("already exists"),
        ));
    }
    Ok(())
}

/// The refusal to replace an existing destination, naming the way to allow it (the command
/// line's flag and the library's argument alike).
fn already_exists(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!("{what}; remove it, or pass --overwrite (overwrite=True) to replace it"),
    )
}

/// Give the partial file its planned size where it is known.
fn prepare_partial(partial: &PartialFile, options: &AssembleOptions) -> Result<()> {
    match options.file_size {
        Some(size) if partial.len()? != size => partial.set_len(size),
        _ => Ok(()),
    }
}

/// Re-read each chunk listed as completed from the partial file and keep those whose xxh3-128
/// still matches. In chunk order, so the chunks at the front go to the whole-file digest as
/// they are re-read.
fn recheck_completed(
    partial: &PartialFile,
    options: &AssembleOptions,
    state: &mut State,
) -> Result<ResumeReport> {
    let chunk_size = options.chunk_size.expect("checked by check_options");
    let present = partial.len()?;
    let mut report = ResumeReport::default();
    for (&number, &expected) in &options.completed {
        let index = number - 1;
        if options.trailer && number == options.chunk_count {
            // Its manifest is not in the partial file: fetch it again to see the manifest.
            report.rejected.push(number);
            continue;
        }
        let offset = u64::from(index) * chunk_size;
        let length = if number < options.chunk_count {
            chunk_size
        } else {
            // The last chunk ends where the file does (if the size is unknown, where the earlier
            // run stopped writing; the checksum decides whether that was all of it).
            options
                .file_size
                .map_or(present, |size| size)
                .saturating_sub(offset)
                .min(chunk_size)
        };
        let mut hasher = Xxh3Hasher::default();
        let mut position = offset;
        let whole = &mut state.whole;
        let reread = partial.read_range(offset, length, |piece| {
            hasher.update(piece);
            whole.written(partial, index, position, piece)?;
            position += piece.len() as u64;
            Ok(())
        });
        match reread {
            Ok(()) if hasher.digest() == expected => {
                state.slots[index as usize] = Slot::Done {
                    length,
                    xxh3_128: expected,
                    verified_by: ChunkCheck::Xxh3,
                };
                state.whole.completed(partial, &state.slots, index)?;
                report.accepted.push(number);
            }
            Err(e) if !is_short_file(&e) => return Err(e),
            // Changed since it was recorded, or torn: the partial file ends inside it.
            _ => {
                state.whole.rolled_back(index);
                report.rejected.push(number);
            }
        }
    }
    Ok(report)
}

fn missing_in(state: &State) -> Vec<u32> {
    state
        .slots
        .iter()
        .enumerate()
        .filter(|(_, s)| !matches!(s, Slot::Done { .. }))
        .map(|(i, _)| i as u32 + 1)
        .collect()
}

fn finish_locked(shared: &Shared, state: &mut State) -> Result<AssemblyReport> {
    let options = &shared.options;
    let mut size = 0u64;
    let mut methods: Vec<ChunkCheck> = Vec::new();
    for slot in &state.slots {
        if let Slot::Done {
            length,
            verified_by,
            ..
        } = slot
        {
            size += length;
            if !methods.contains(verified_by) {
                methods.push(*verified_by);
            }
        }
    }
    if let Some(expected) = options.file_size {
        if expected != size {
            return Err(Error::ChunkLength {
                chunk: None,
                expected,
                actual: size,
                problem: if size > expected {
                    LengthProblem::Over
                } else {
                    LengthProblem::Under
                },
                exact: true,
            });
        }
    }
    let digest = state.whole.finish(&shared.partial, &state.slots)?;
    debug_assert_eq!(digest.size, size);
    let mut verified = Vec::new();
    if let Some(expected) = options.xxh3_128 {
        if expected != digest.xxh3_128 {
            return Err(Error::ChecksumMismatch {
                chunk: None,
                algorithm: "xxh3-128",
                expected: hex128(expected),
                actual: hex128(digest.xxh3_128),
            });
        }
        verified.push("file xxh3-128".to_string());
    }
    match state.manifest {
        Some(manifest) => {
            if (manifest.xxh3_128, manifest.size) != (digest.xxh3_128, digest.size) {
                return Err(Error::ChecksumMismatch {
                    chunk: None,
                    algorithm: "xxh3-128 (manifest in the last chunk)",
                    expected: format!("{} of {} bytes", hex128(manifest.xxh3_128), manifest.size),
                    actual: format!("{} of {} bytes", hex128(digest.xxh3_128), digest.size),
                });
            }
            // The same check as a hash from the headers: say it once.
            if options.xxh3_128.is_none() {
                verified.push("file xxh3-128".to_string());
            }
        }
        None if options.trailer => {
            return Err(Error::ChecksumMismatch {
                chunk: None,
                algorithm: "xxh3-128 (manifest in the last chunk)",
                expected: "a manifest at the end of the last chunk, as the headers announced"
                    .into(),
                actual: format!(
                    "none ({} bytes, xxh3-128 {})",
                    digest.size,
                    hex128(digest.xxh3_128)
                ),
            });
        }
        None => {}
    }
    if let Some(expected) = options.sha256 {
        let actual = digest.sha256.expect("sha256 computed when expected");
        if expected != actual {
            return Err(Error::ChecksumMismatch {
                chunk: None,
                algorithm: "sha256",
                expected: hex_bytes(&expected),
                actual: hex_bytes(&actual),
            });
        }
        verified.push("file sha256".to_string());
    }
    for method in methods.into_iter().filter(|m| m.verifies()) {
        verified.push(format!("chunks {}", method.name()));
    }
    let partial = &shared.partial;
    partial.set_len(size)?;
    partial.sync_all()?;
    place(partial.path(), &shared.destination, options.overwrite)?;
    sync_folder(parent_of(&shared.destination));
    Ok(AssemblyReport {
        path: shared.destination.clone(),
        size,
        chunk_count: options.chunk_count,
        xxh3_128: digest.xxh3_128,
        sha256: digest.sha256,
        verified,
    })
}

/// Move the finished file into place: never over an existing file unless asked.
fn place(temporary: &Path, destination: &Path, overwrite: bool) -> Result<()> {
    let context = || format!("moving the finished file to {}", destination.display());
    if overwrite {
        return std::fs::rename(temporary, destination).map_err(|e| Error::io(context(), e));
    }
    // A hard link fails if the destination exists, atomically; then drop the temporary name.
    match std::fs::hard_link(temporary, destination) {
        Ok(()) => {
            let _ = std::fs::remove_file(temporary);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::io(
            destination.display().to_string(),
            already_exists("appeared while receiving"),
        )),
        Err(_) => {
            // Filesystems without hard links: check, then rename.
            if destination.exists() {
                return Err(Error::io(
                    context(),
                    std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                ));
            }
            std::fs::rename(temporary, destination).map_err(|e| Error::io(context(), e))
        }
    }
}

/// Receives one chunk's bytes. Dropping it unfinished is the same as `abort`.
pub struct ChunkWriter {
    shared: Arc<Shared>,
    number: u32,
    offset: u64,
    expected_length: Option<u64>,
    expected_xxh3: Option<u128>,
    decoder: Decoder,
    hasher: Xxh3Hasher,
    /// Set when the chunk was already complete: this is a repeat, compared but not written.
    previous: Option<(u64, u128)>,
    open: bool,
}

impl ChunkWriter {
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Uncompressed bytes so far.
    pub fn written(&self) -> u64 {
        self.decoder.produced()
    }

    fn check_open(&self) -> Result<()> {
        if self.open {
            check_open(&self.shared.lock())
        } else {
            Err(Error::State(format!(
                "chunk {}'s writer was already finished or aborted",
                self.number
            )))
        }
    }

    /// Feed the next bytes of the chunk as received (compressed per the codec). On an error
    /// (corrupt data, a full disk) the attempt is aborted: the chunk may be opened again.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.check_open()?;
        let mut position = self.offset + self.decoder.produced();
        let hasher = &mut self.hasher;
        let repeat = self.previous.is_some();
        let shared = &self.shared;
        let index = self.number - 1;
        let result = self.decoder.feed(data, &mut |bytes| {
            hasher.update(bytes);
            if !repeat {
                shared.partial.write_at(bytes, position)?;
                shared
                    .lock()
                    .whole
                    .written(&shared.partial, index, position, bytes)?;
            }
            position += bytes.len() as u64;
            Ok(())
        });
        if let Err(e) = result {
            self.abort();
            return Err(e.for_chunk(self.number));
        }
        Ok(())
    }

    /// Complete the chunk: its stream must be whole and its length and checksum right.
    pub fn finish(&mut self) -> Result<ChunkReport> {
        self.complete(false)
    }

    /// As [`finish`](Self::finish), and make the chunk durable (fdatasync of the partial file)
    /// before it counts as done: once this returns, a ledger may record the chunk as written.
    pub fn finish_synced(&mut self) -> Result<ChunkReport> {
        self.complete(true)
    }

    fn complete(&mut self, sync: bool) -> Result<ChunkReport> {
        self.check_open()?;
        let outcome = self.verify().and_then(|report| {
            if sync && self.previous.is_none() {
                self.shared.partial.sync_data()?;
            }
            Ok(report)
        });
        let report = match outcome {
            Ok(report) => report,
            Err(e) => {
                self.abort();
                return Err(e.for_chunk(self.number));
            }
        };
        self.open = false;
        if self.previous.is_none() {
            let index = self.number - 1;
            let mut state = self.shared.lock();
            state.slots[index as usize] = Slot::Done {
                length: report.length,
                xxh3_128: report.xxh3_128,
                verified_by: report.verified_by,
            };
            if self.number == self.shared.options.chunk_count {
                state.manifest = self.decoder.manifest();
            }
            let state = &mut *state;
            state
                .whole
                .completed(&self.shared.partial, &state.slots, index)?;
        }
        Ok(report)
    }

    fn verify(&mut self) -> Result<ChunkReport> {
        let integrity = self.decoder.finish()?;
        if self.decoder.manifest().is_some() && self.number != self.shared.options.chunk_count {
            return Err(Error::Codec {
                chunk: Some(self.number),
                codec: "manifest",
                detail: format!(
                    "a whole-file manifest in chunk {} of {}; only the last chunk carries one",
                    self.number, self.shared.options.chunk_count
                ),
            });
        }
        let length = self.decoder.produced();
        if let Some(expected) = self.expected_length {
            if length != expected {
                return Err(Error::ChunkLength {
                    chunk: Some(self.number),
                    expected,
                    actual: length,
                    problem: LengthProblem::Under,
                    exact: true,
                });
            }
        }
        let actual = self.hasher.digest();
        let mut verified_by = ChunkCheck::Codec(integrity);
        if let Some(expected) = self.expected_xxh3 {
            if expected != actual {
                return Err(Error::ChecksumMismatch {
                    chunk: Some(self.number),
                    algorithm: "xxh3-128",
                    expected: hex128(expected),
                    actual: hex128(actual),
                });
            }
            verified_by = ChunkCheck::Xxh3;
        }
        if let Some((previous_length, previous_xxh3)) = self.previous {
            if (previous_length, previous_xxh3) != (length, actual) {
                return Err(Error::DuplicateChunk {
                    chunk: self.number,
                    detail: format!(
                        "arrived again with different content ({length} bytes, xxh3-128 {}) \
                         than the first time ({previous_length} bytes, xxh3-128 {}); the sender \
                         or the transport is corrupting data",
                        hex128(actual),
                        hex128(previous_xxh3)
                    ),
                });
            }
        }
        Ok(ChunkReport {
            number: self.number,
            length,
            xxh3_128: actual,
            verified_by,
            manifest: self.decoder.manifest(),
        })
    }

    /// Forget this attempt: the chunk may be opened again. Idempotent.
    pub fn abort(&mut self) {
        if !self.open {
            return;
        }
        self.open = false;
        if self.previous.is_none() {
            let index = self.number - 1;
            let mut state = self.shared.lock();
            if matches!(state.slots[index as usize], Slot::Writing) {
                state.slots[index as usize] = Slot::Missing;
            }
            // Bytes of this attempt may have reached the whole-file digest: take them back.
            state.whole.rolled_back(index);
        }
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        self.abort();
    }
}
