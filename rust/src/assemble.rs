//! Assemble: chunks arrive in any order, as byte feeds; each is decoded (capped at its planned
//! length), verified and written at its offset into a temporary file beside the destination.
//! The whole-file digest is fed in file order: the first chunk not yet hashed is hashed as it is
//! written, chunks completed ahead of it are read back (from the page cache) when it completes.
//! `finish` verifies the whole file, fsyncs it and renames it into place. Until then nothing is
//! at the destination; an assembler dropped before `finish` deletes its temporary file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::checksum::{hex128, hex_bytes, FileHasher, Xxh3Hasher};
use crate::codec::{CodecKind, Decoder};
use crate::error::{Error, LengthProblem, Result};

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
        }
    }
}

/// The outcome for one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkReport {
    pub number: u32,
    pub length: u64,
    pub xxh3_128: u128,
    pub verified_by: &'static str,
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

#[derive(Debug, Clone)]
enum Slot {
    Missing,
    Writing,
    Done {
        length: u64,
        xxh3_128: u128,
        verified_by: &'static str,
    },
}

struct State {
    slots: Vec<Slot>,
    chunk_size: Option<u64>,
    /// Chunks 0..hashed have been fed to `whole` (in file order).
    hashed: u32,
    whole: FileHasher,
    /// The chunk being hashed as it is written (the first one not yet hashed), with the
    /// whole-file hashers as they were at its start, to go back to if it is aborted.
    streaming: Option<(u32, FileHasher)>,
    closed: Option<&'static str>,
}

struct Shared {
    destination: PathBuf,
    temporary: PathBuf,
    file: File,
    options: AssembleOptions,
    state: Mutex<State>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let finished = self
            .state
            .get_mut()
            .map(|s| s.closed == Some("finished"))
            .unwrap_or(false);
        if !finished {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough state to report and abort.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reassembles one message into one file.
pub struct Assembler {
    shared: Arc<Shared>,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temporary_path_for(destination: &Path) -> Result<PathBuf> {
    let name = destination.file_name().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "destination {} must name a file",
            destination.display()
        ))
    })?;
    let unique = format!(
        ".{}.meshpipe-{}-{}.part",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    Ok(destination.with_file_name(unique))
}

impl Assembler {
    pub fn create(destination: &Path, options: AssembleOptions) -> Result<Self> {
        if options.chunk_count == 0 {
            return Err(Error::InvalidArgument(
                "a message has at least one chunk".into(),
            ));
        }
        if let (Some(chunk), Some(file)) = (options.chunk_size, options.file_size) {
            if chunk == 0 {
                return Err(Error::InvalidArgument("chunk_size must be positive".into()));
            }
            let count = file.div_ceil(chunk).max(1);
            if count != u64::from(options.chunk_count) {
                return Err(Error::InvalidArgument(format!(
                    "a {file}-byte file in {chunk}-byte chunks has {count} chunks, not {}",
                    options.chunk_count
                )));
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
                format!(
                    "destination {} already exists; remove it or pass overwrite=True",
                    destination.display()
                ),
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        let temporary = temporary_path_for(destination)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temporary)
            .map_err(|e| Error::io(format!("creating {}", temporary.display()), e))?;
        if let Some(size) = options.file_size {
            // Sparse: reserves nothing, but lets chunks land at any offset.
            if let Err(e) = file.set_len(size) {
                let _ = std::fs::remove_file(&temporary);
                return Err(Error::io(format!("sizing {}", temporary.display()), e));
            }
        }
        let with_sha = options.compute_sha256 || options.sha256.is_some();
        let state = State {
            slots: vec![Slot::Missing; options.chunk_count as usize],
            chunk_size: options.chunk_size,
            hashed: 0,
            whole: FileHasher::new(with_sha),
            streaming: None,
            closed: None,
        };
        Ok(Assembler {
            shared: Arc::new(Shared {
                destination: destination.to_path_buf(),
                temporary,
                file,
                options,
                state: Mutex::new(state),
            }),
        })
    }

    pub fn destination(&self) -> &Path {
        &self.shared.destination
    }

    pub fn temporary_path(&self) -> &Path {
        &self.shared.temporary
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
                state.closed = Some("finished");
                Ok(report)
            }
            Err(e) => {
                state.closed = Some("aborted");
                let _ = std::fs::remove_file(&shared.temporary);
                Err(e)
            }
        }
    }

    /// Delete the temporary file; later calls fail with a state error. Idempotent.
    pub fn abort(&self) {
        let mut state = self.shared.lock();
        if state.closed.is_none() {
            state.closed = Some("aborted");
            let _ = std::fs::remove_file(&self.shared.temporary);
        }
    }
}

impl Drop for Assembler {
    /// The assembler owns the temporary file: dropped unfinished, it deletes it, even while
    /// writers of it are still alive (their later writes fail on a closed assembler).
    fn drop(&mut self) {
        self.abort();
    }
}

fn check_open(state: &State) -> Result<()> {
    match state.closed {
        None => Ok(()),
        Some(how) => Err(Error::State(format!("the assembler was already {how}"))),
    }
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
    let mut methods: Vec<&'static str> = Vec::new();
    for slot in &state.slots {
        if let Slot::Done {
            length,
            verified_by,
            ..
        } = slot
        {
            size += length;
            if !methods.contains(verified_by) {
                methods.push(verified_by);
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
    advance_whole_hash(shared, state)?;
    let digest = state.whole.finish();
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
    for method in methods {
        if method != "none" {
            verified.push(format!("chunks {method}"));
        }
    }
    let file = &shared.file;
    let temporary = &shared.temporary;
    file.set_len(size)
        .map_err(|e| Error::io(format!("sizing {}", temporary.display()), e))?;
    file.sync_all()
        .map_err(|e| Error::io(format!("syncing {}", temporary.display()), e))?;
    place(temporary, &shared.destination, options.overwrite)?;
    if let Some(parent) = shared.destination.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
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
            format!(
                "destination {} appeared while receiving; remove it or pass overwrite=True",
                destination.display()
            ),
            e,
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

/// Feed every complete chunk at the front of the file to the whole-file hashers, reading back
/// what was written (it is in the page cache: it was just written). Chunks that were hashed as
/// they were written (see `stream_whole`) need no reading back.
fn advance_whole_hash(shared: &Shared, state: &mut State) -> Result<()> {
    while (state.hashed as usize) < state.slots.len() {
        let Slot::Done { length, .. } = state.slots[state.hashed as usize] else {
            break;
        };
        let offset = state.whole.size();
        hash_back(shared, &mut state.whole, offset, length)?;
        state.hashed += 1;
    }
    Ok(())
}

/// Hash `length` bytes of the temporary file from `offset` into `whole`.
fn hash_back(shared: &Shared, whole: &mut FileHasher, offset: u64, length: u64) -> Result<()> {
    let mut buffer = vec![0u8; length.min(1 << 20) as usize];
    let mut done = 0u64;
    while done < length {
        let n = (length - done).min(buffer.len() as u64) as usize;
        shared
            .file
            .read_exact_at(&mut buffer[..n], offset + done)
            .map_err(|e| Error::io(format!("reading back {}", shared.temporary.display()), e))?;
        whole.update(&buffer[..n]);
        done += n as u64;
    }
    Ok(())
}

/// Bytes of chunk `index` just written at `at`: if every earlier chunk is hashed, hash them
/// now (after reading back any of this chunk written before the earlier ones were done), so the
/// whole-file check needs no second read of them.
fn stream_whole(shared: &Shared, index: u32, at: u64, bytes: &[u8]) -> Result<()> {
    let mut state = shared.lock();
    if state.hashed != index {
        return Ok(());
    }
    if state.streaming.as_ref().map(|(i, _)| *i) != Some(index) {
        let snapshot = state.whole.clone();
        state.streaming = Some((index, snapshot));
    }
    let hashed_to = state.whole.size();
    if hashed_to < at {
        hash_back(shared, &mut state.whole, hashed_to, at - hashed_to)?;
    }
    state.whole.update(bytes);
    Ok(())
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

    /// Feed the next bytes of the chunk as received (compressed per the codec).
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.check_open()?;
        let base = self.offset + self.decoder.produced();
        let mut position = base;
        let file = &self.shared.file;
        let hasher = &mut self.hasher;
        let repeat = self.previous.is_some();
        let shared = &self.shared;
        let index = self.number - 1;
        let result = self.decoder.feed(data, &mut |bytes| {
            hasher.update(bytes);
            if !repeat {
                file.write_all_at(bytes, position)
                    .map_err(|e| Error::io(format!("writing {}", shared.temporary.display()), e))?;
                stream_whole(shared, index, position, bytes)?;
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
        self.check_open()?;
        let outcome = self.verify();
        match outcome {
            Ok(report) => {
                self.open = false;
                if self.previous.is_none() {
                    let index = self.number - 1;
                    let mut state = self.shared.lock();
                    state.slots[index as usize] = Slot::Done {
                        length: report.length,
                        xxh3_128: report.xxh3_128,
                        verified_by: report.verified_by,
                    };
                    if state.streaming.take_if(|(i, _)| *i == index).is_some() {
                        // Every byte of it went to the whole-file hashers as it was written.
                        debug_assert_eq!(state.whole.size(), self.offset + report.length);
                        state.hashed += 1;
                    }
                    advance_whole_hash(&self.shared, &mut state)?;
                }
                Ok(report)
            }
            Err(e) => {
                self.abort();
                Err(e.for_chunk(self.number))
            }
        }
    }

    fn verify(&mut self) -> Result<ChunkReport> {
        let integrity = self.decoder.finish()?;
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
        let mut verified_by = integrity.name();
        if let Some(expected) = self.expected_xxh3 {
            if expected != actual {
                return Err(Error::ChecksumMismatch {
                    chunk: Some(self.number),
                    algorithm: "xxh3-128",
                    expected: hex128(expected),
                    actual: hex128(actual),
                });
            }
            verified_by = "xxh3-128";
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
            // Bytes of this attempt may have reached the whole-file hashers: take them back.
            if let Some((_, snapshot)) = state.streaming.take_if(|(i, _)| *i == index) {
                state.whole = snapshot;
            }
        }
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        self.abort();
    }
}
