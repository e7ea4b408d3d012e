//! Split: read → checksum → compress, over a bounded window of chunks on worker threads.
//!
//! The pipeline has three named stages, one function each, joined by bounded channels:
//! - `read_stage` (one thread) reads the selected chunks in ascending order with positioned
//!   reads;
//! - `hash_stage` (one thread) feeds the whole-file digest in file order, so hashing chunk i
//!   overlaps reading chunk i + 1 (in a split of a subset of the chunks there is no whole-file
//!   digest, and it only passes chunks on);
//! - `work_stage` (`threads` threads) hashes each chunk (xxh3-128) and compresses it;
//!
//! and the consumer takes chunks in order.
//!
//! # The whole-file manifest
//! With [`Trailer::FromDigest`] (gzip and zstd), the last chunk's payload ends with a
//! [`Manifest`] of the whole file (its xxh3-128 and size; see [`crate::manifest`]): the hash
//! stage holds the last chunk until the read stage has read every chunk and found the file's
//! size unchanged, then hands it on with the digest, so the file is read once and the digest is
//! of exactly the bytes sent. A split of a subset of the chunks has no digest of its own: it is
//! given the manifest ([`Trailer::Given`], e.g. the hash a resume has just checked).
//!
//! # Memory bound
//! Buffers come from two fixed pools (filled from the buffers earlier splits left spare, see
//! [`crate::buffers`]), and a chunk's buffers are taken *before* it is read, in
//! chunk order, so memory is bounded and out-of-order completion can never starve the chunk the
//! consumer is waiting for:
//! - codec none: `window` buffers of `chunk_size` (the payload is the read buffer itself);
//! - gzip/zstd: `window` payload buffers, plus `threads + 2` read buffers (one per worker, one at
//!   the hash stage, one being read).
//!
//! # A subset of the chunks
//! [`SplitOptions::chunks`] selects which chunks to produce (say, the ones a resumed send still
//! has to upload, or one machine's share of a message). Only those are read, compressed and
//! checksummed, in ascending order, with exactly the bytes and xxh3-128 a full split gives them;
//! the memory bound is the same. Unless it selects every chunk, such a split has no whole-file
//! digest: [`Splitter::digest`] refuses with a state error saying so (hash the whole file for
//! that), and `sha256` is refused up front.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};

use crate::buffers;
pub use crate::buffers::PooledBuffer;
use crate::checksum::{xxh3_128, FileDigest, FileHasher};
use crate::codec::{Codec, CodecKind, Compressor};
use crate::error::{Error, Result};
use crate::manifest::{Manifest, MAX_MANIFEST_BYTES};
use crate::plan::{ChunkPlan, Limits, DEFAULT_CHUNK_SIZE};

/// How often blocked threads look at the cancel flag.
const POLL: Duration = Duration::from_millis(50);

/// Which of a file's chunks a split produces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ChunkSelection {
    /// Every chunk, with the whole-file digest.
    #[default]
    All,
    /// These chunk numbers (1-based, as MESH numbers them), produced in ascending order. All of
    /// them is the same as `All`.
    Only(BTreeSet<u32>),
}

impl ChunkSelection {
    /// The 0-based indexes to produce, in order; every number must be in the plan.
    fn indexes(&self, plan: &ChunkPlan) -> Result<Vec<u32>> {
        let count = plan.chunk_count();
        match self {
            ChunkSelection::All => Ok((0..count).collect()),
            ChunkSelection::Only(numbers) => numbers
                .iter()
                .map(|&number| {
                    if number == 0 || number > count {
                        Err(Error::ChunkNumber {
                            chunk: i64::from(number),
                            count,
                        })
                    } else {
                        Ok(number - 1)
                    }
                })
                .collect(),
        }
    }
}

/// Whether the last chunk's payload ends with a whole-file manifest (gzip and zstd only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Trailer {
    /// No manifest.
    #[default]
    None,
    /// The manifest of the split's own whole-file digest (a split of every chunk).
    FromDigest,
    /// This manifest (a split of a subset that includes the last chunk).
    Given(Manifest),
}

/// Options for a split.
#[derive(Debug, Clone)]
pub struct SplitOptions {
    pub codec: Codec,
    pub chunk_size: u64,
    /// Worker threads; default: one per core.
    pub threads: usize,
    /// Chunks in flight (read and not yet released by the consumer).
    pub window: usize,
    /// Compute the whole-file SHA-256 too (a split of every chunk only).
    pub sha256: bool,
    pub limits: Limits,
    /// Which chunks to produce.
    pub chunks: ChunkSelection,
    /// A whole-file manifest at the end of the last chunk.
    pub trailer: Trailer,
}

impl Default for SplitOptions {
    fn default() -> Self {
        let threads = default_threads();
        SplitOptions {
            codec: Codec::none(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            threads,
            window: default_window(threads),
            sha256: false,
            limits: Limits::default(),
            chunks: ChunkSelection::All,
            trailer: Trailer::None,
        }
    }
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Enough chunks for every worker to be busy and a few more queued for the network.
pub fn default_window(threads: usize) -> usize {
    (threads * 2).max(4)
}

struct Pool {
    give: Sender<Vec<u8>>,
    take: Receiver<Vec<u8>>,
}

impl Pool {
    /// `count` buffers of `capacity` bytes: spare ones of an earlier split if there are
    /// (see [`crate::buffers`]), else new ones, backed by the kernel on first use.
    fn new(count: usize, capacity: usize) -> Self {
        let (give, take) = bounded(count);
        for _ in 0..count {
            give.send(buffers::take(capacity)).expect("pool has room");
        }
        Pool { give, take }
    }

    /// Wait for a free buffer; None when cancelled.
    fn acquire(&self, cancel: &AtomicBool) -> Option<PooledBuffer> {
        loop {
            if cancel.load(Ordering::Relaxed) {
                return None;
            }
            match self.take.recv_timeout(POLL) {
                Ok(data) => return Some(PooledBuffer::new(data, self.give.clone())),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

impl Drop for Pool {
    /// The free buffers are kept spare for the next split; those still lent out follow when
    /// their chunks are released.
    fn drop(&mut self) {
        while let Ok(data) = self.take.try_recv() {
            buffers::keep(data);
        }
    }
}

/// One chunk, ready to send.
pub struct ReadyChunk {
    /// 0-based; MESH's chunk number is `index + 1`.
    pub index: u32,
    pub offset: u64,
    /// Uncompressed length.
    pub length: u64,
    /// xxh3-128 of the uncompressed bytes.
    pub xxh3_128: u128,
    /// Compressed bytes (gzip, zstd) or the raw bytes (none).
    pub payload: PooledBuffer,
}

struct Job {
    index: u32,
    offset: u64,
    input: PooledBuffer,
    output: Option<PooledBuffer>,
    /// For the last chunk, with a trailer: the manifest to append to its payload.
    manifest: Option<Manifest>,
}

/// An in-order stream of chunks from a file.
pub struct Splitter {
    plan: ChunkPlan,
    codec: Codec,
    /// The 0-based indexes produced, ascending; `order[next..]` are still to come.
    order: Vec<u32>,
    next: usize,
    results: Receiver<Result<ReadyChunk>>,
    pending: BTreeMap<u32, ReadyChunk>,
    /// None for a split of a subset of the chunks.
    digest_rx: Option<Receiver<Result<FileDigest>>>,
    digest: Option<FileDigest>,
    error: Option<String>,
    cancel: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Splitter {
    /// Split the file at `path`.
    pub fn open(path: &Path, options: SplitOptions) -> Result<Self> {
        let file =
            File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        if file
            .metadata()
            .map_err(|e| Error::io(format!("reading metadata of {}", path.display()), e))?
            .is_dir()
        {
            return Err(Error::io(
                format!("opening {}", path.display()),
                std::io::Error::from(std::io::ErrorKind::IsADirectory),
            ));
        }
        Self::from_file(file, path.display().to_string(), options)
    }

    /// Split an open file (read with positioned reads; its cursor is not used).
    pub fn from_file(file: File, name: String, options: SplitOptions) -> Result<Self> {
        if options.threads == 0 || options.window == 0 {
            return Err(Error::InvalidArgument(
                "threads and window must be at least 1".into(),
            ));
        }
        let size = file
            .metadata()
            .map_err(|e| Error::io(format!("reading metadata of {name}"), e))?
            .len();
        let plan = ChunkPlan::new(size, options.chunk_size, options.codec, &options.limits)?;
        let order = options.chunks.indexes(&plan)?;
        // A selection of every chunk is a whole-file split, digest included.
        let whole_file = order.len() == plan.chunk_count() as usize;
        if options.sha256 && !whole_file {
            return Err(Error::InvalidArgument(
                "sha256 is a whole-file digest; a split of some of the chunks cannot give it"
                    .into(),
            ));
        }
        check_trailer(&options, &plan, &order, whole_file)?;
        let source = Source { file, name, plan };
        let running = start_pipeline(source, &options, order.clone(), whole_file)?;
        Ok(Splitter {
            plan,
            codec: options.codec,
            order,
            next: 0,
            results: running.results,
            pending: BTreeMap::new(),
            digest_rx: running.digest,
            digest: None,
            error: None,
            cancel: running.cancel,
            threads: running.threads,
        })
    }

    pub fn plan(&self) -> &ChunkPlan {
        &self.plan
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The next chunk in order, None after the last. Blocks while it is being prepared.
    pub fn next_chunk(&mut self) -> Result<Option<ReadyChunk>> {
        if let Some(message) = &self.error {
            return Err(Error::State(format!("the split already failed: {message}")));
        }
        let Some(&wanted) = self.order.get(self.next) else {
            return Ok(None);
        };
        loop {
            if let Some(chunk) = self.pending.remove(&wanted) {
                self.next += 1;
                return Ok(Some(chunk));
            }
            match self.results.recv() {
                Ok(Ok(chunk)) => {
                    self.pending.insert(chunk.index, chunk);
                }
                Ok(Err(e)) => return Err(self.fail(e)),
                Err(_) => {
                    return Err(self.fail(Error::State(
                        "the split's threads stopped unexpectedly".into(),
                    )))
                }
            }
        }
    }

    fn fail(&mut self, error: Error) -> Error {
        self.cancel.store(true, Ordering::Relaxed);
        self.pending.clear();
        self.error = Some(error.to_string());
        error
    }

    /// Whole-file checksums; available once the last chunk has been taken, and only from a
    /// split of every chunk.
    pub fn digest(&mut self) -> Result<FileDigest> {
        if let Some(d) = &self.digest {
            return Ok(d.clone());
        }
        let Some(digest_rx) = &self.digest_rx else {
            return Err(Error::State(format!(
                "this split produces {} of the file's {} chunks, so it has no whole-file digest; \
                 split every chunk, or hash the file, for that",
                self.order.len(),
                self.plan.chunk_count()
            )));
        };
        if self.next < self.order.len() {
            return Err(Error::State(format!(
                "the whole-file digest is known only after the last chunk; {} of {} chunks taken",
                self.next,
                self.plan.chunk_count()
            )));
        }
        let digest = match digest_rx.recv() {
            Ok(digest) => digest?,
            // The reader failed after the last chunk (the file changed size): its error is
            // queued before the hash stage gives up.
            Err(_) => {
                let error = std::iter::from_fn(|| self.results.try_recv().ok())
                    .find_map(Result::err)
                    .unwrap_or_else(|| Error::State("the reader stopped without a digest".into()));
                return Err(self.fail(error));
            }
        };
        self.digest = Some(digest.clone());
        Ok(digest)
    }

    /// Stop the threads and wait for them (at most ~POLL after they notice).
    pub fn close(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.pending.clear();
        while let Ok(result) = self.results.try_recv() {
            drop(result);
        }
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Iterator for Splitter {
    type Item = Result<ReadyChunk>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_chunk().transpose()
    }
}

impl Drop for Splitter {
    fn drop(&mut self) {
        // Threads notice within POLL and exit on their own; no join while possibly holding a lock.
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// A manifest needs a codec that can carry it and, unless given, the split's own digest.
fn check_trailer(
    options: &SplitOptions,
    plan: &ChunkPlan,
    order: &[u32],
    whole_file: bool,
) -> Result<()> {
    if options.trailer == Trailer::None {
        return Ok(());
    }
    if options.codec.kind() == CodecKind::None {
        return Err(Error::InvalidArgument(
            "a whole-file manifest travels only with gzip or zstd (codec \"none\" sends the file's \
             bytes as they are); put the checksum in the header instead"
                .into(),
        ));
    }
    match options.trailer {
        Trailer::FromDigest if !whole_file => Err(Error::InvalidArgument(format!(
            "this split produces {} of the file's {} chunks, so it has no whole-file digest for \
             the manifest; pass the file's xxh3-128 (a resume has just checked it)",
            order.len(),
            plan.chunk_count()
        ))),
        Trailer::Given(manifest) if manifest.size != plan.file_size() => {
            Err(Error::InvalidArgument(format!(
                "the manifest given is of a {}-byte file, but the file is {} bytes",
                manifest.size,
                plan.file_size()
            )))
        }
        _ => Ok(()),
    }
}

/// The file being split, as the read stage sees it.
struct Source {
    file: File,
    /// For messages: the path, or "file descriptor N".
    name: String,
    plan: ChunkPlan,
}

/// The two buffer pools of a split (see the module's memory bound).
struct Pools {
    input: Pool,
    /// For gzip/zstd: where compressed payloads go.
    output: Option<Pool>,
}

impl Pools {
    fn new(plan: &ChunkPlan, codec: Codec, threads: usize, window: usize) -> Self {
        let buffer_size = plan.chunk_length(0) as usize;
        if codec.kind() == CodecKind::None {
            return Pools {
                input: Pool::new(window, buffer_size),
                output: None,
            };
        }
        // Room for a manifest after the last chunk's compressed bytes.
        let payload_size =
            (codec.max_payload_size(buffer_size as u64) + MAX_MANIFEST_BYTES) as usize;
        Pools {
            input: Pool::new(threads + 2, buffer_size),
            output: Some(Pool::new(window, payload_size)),
        }
    }

    /// One chunk's buffers, payload first; None when cancelled.
    fn acquire(&self, cancel: &AtomicBool) -> Option<(PooledBuffer, Option<PooledBuffer>)> {
        let output = match &self.output {
            Some(pool) => Some(pool.acquire(cancel)?),
            None => None,
        };
        let input = self.input.acquire(cancel)?;
        Some((input, output))
    }
}

/// A started pipeline: what the consumer keeps.
struct Running {
    results: Receiver<Result<ReadyChunk>>,
    digest: Option<Receiver<Result<FileDigest>>>,
    cancel: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Start the read, hash and work stages of a split of `order` (0-based, ascending).
fn start_pipeline(
    source: Source,
    options: &SplitOptions,
    order: Vec<u32>,
    whole_file: bool,
) -> Result<Running> {
    let plan = source.plan;
    let threads = options.threads.min(order.len()).max(1);
    let pools = Pools::new(&plan, options.codec, threads, options.window);
    let cancel = Arc::new(AtomicBool::new(false));
    let (stage_tx, stage_rx) = bounded::<Stage>(1);
    let (job_tx, job_rx) = bounded::<Job>(threads);
    let (result_tx, result_rx) = unbounded::<Result<ReadyChunk>>();
    let (digest_tx, digest_rx) = bounded::<Result<FileDigest>>(1);
    let mut handles = Vec::with_capacity(threads + 2);

    let (reader_cancel, reader_results) = (cancel.clone(), result_tx.clone());
    handles.push(spawn("meshpipe-read", move || {
        let outcome = read_stage(&source, &order, &pools, &stage_tx, &reader_cancel);
        if let Err(e) = outcome {
            reader_cancel.store(true, Ordering::Relaxed);
            let _ = reader_results.send(Err(e));
        }
    })?);
    let hasher = whole_file.then(|| FileHasher::new(options.sha256));
    let last = plan.chunk_count() - 1;
    let trailer = options.trailer;
    handles.push(spawn("meshpipe-hash", move || {
        hash_stage(hasher, trailer, last, &stage_rx, &job_tx, &digest_tx)
    })?);
    for worker in 0..threads {
        let (cancel, results, jobs) = (cancel.clone(), result_tx.clone(), job_rx.clone());
        let codec = options.codec;
        handles.push(spawn(&format!("meshpipe-work-{worker}"), move || {
            work_stage(codec, plan, &jobs, &results, &cancel)
        })?);
    }
    Ok(Running {
        results: result_rx,
        digest: whole_file.then_some(digest_rx),
        cancel,
        threads: handles,
    })
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(body)
        .map_err(|e| Error::io(format!("starting the {name} thread"), e))
}

/// Read `length` bytes at `offset` into `buffer` (replacing its contents). Reads straight into
/// the buffer's spare capacity: zero-filling a fresh 20 MiB buffer first would touch every page
/// twice.
fn read_chunk(
    file: &File,
    buffer: &mut Vec<u8>,
    length: usize,
    offset: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    buffer.clear();
    buffer.reserve(length);
    let spare = &mut buffer.spare_capacity_mut()[..length];
    let mut done = 0;
    while done < length {
        let position = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: the destination is the unfilled part of `spare`, which has `length - done`
        // writable bytes; pread writes at most that many.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare[done..].as_mut_ptr().cast::<libc::c_void>(),
                length - done,
                position,
            )
        };
        match n {
            0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            n if n > 0 => done += n as usize,
            _ => {
                let error = std::io::Error::last_os_error();
                if error.kind() != std::io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
    // SAFETY: pread initialised all `length` bytes above.
    unsafe { buffer.set_len(length) };
    Ok(())
}

/// What the read stage hands to the hash stage: a chunk, or the end of the selection.
enum Stage {
    Chunk(Job),
    End,
}

/// The read stage: for each selected chunk in order, take its buffers (back-pressure, in chunk
/// order), read it, pass it on; at the end, check that the file did not change size.
fn read_stage(
    source: &Source,
    order: &[u32],
    pools: &Pools,
    stages: &Sender<Stage>,
    cancel: &AtomicBool,
) -> Result<()> {
    for &index in order {
        let Some((mut input, output)) = pools.acquire(cancel) else {
            return Ok(());
        };
        let offset = source.plan.chunk_offset(index);
        let length = source.plan.chunk_length(index) as usize;
        read_chunk(&source.file, &mut input.data, length, offset)
            .map_err(|e| read_error(source, offset, e))?;
        let job = Job {
            index,
            offset,
            input,
            output,
            manifest: None,
        };
        if stages.send(Stage::Chunk(job)).is_err() {
            return Ok(());
        }
    }
    check_unchanged(source)?;
    let _ = stages.send(Stage::End);
    Ok(())
}

fn read_error(source: &Source, offset: u64, error: std::io::Error) -> Error {
    if error.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::SourceChanged(format!(
            "{} shrank while it was being split (it was {} bytes); send it again once it is no \
             longer being written",
            source.name,
            source.plan.file_size()
        ))
    } else {
        Error::io(format!("reading {} at offset {offset}", source.name), error)
    }
}

fn check_unchanged(source: &Source) -> Result<()> {
    let now = source
        .file
        .metadata()
        .map_err(|e| Error::io(format!("reading metadata of {}", source.name), e))?
        .len();
    if now != source.plan.file_size() {
        return Err(Error::SourceChanged(format!(
            "{} changed size while it was being split ({} bytes, now {now}); send it again once \
             it is no longer being written",
            source.name,
            source.plan.file_size()
        )));
    }
    Ok(())
}

/// The hash stage: feed each chunk, in file order, to the whole-file digest (when there is one),
/// then hand it to the workers; send the digest at the end. With a manifest from the digest,
/// the last chunk (index `last`) waits here for the end of the read, then carries it.
fn hash_stage(
    mut hasher: Option<FileHasher>,
    trailer: Trailer,
    last: u32,
    stages: &Receiver<Stage>,
    jobs: &Sender<Job>,
    digest: &Sender<Result<FileDigest>>,
) {
    let mut held: Option<Job> = None;
    for stage in stages {
        match stage {
            Stage::Chunk(mut job) => {
                if let Some(hasher) = hasher.as_mut() {
                    hasher.update(job.input.as_slice());
                }
                if job.index == last {
                    match trailer {
                        Trailer::None => {}
                        Trailer::Given(manifest) => job.manifest = Some(manifest),
                        Trailer::FromDigest => {
                            held = Some(job);
                            continue;
                        }
                    }
                }
                if jobs.send(job).is_err() {
                    return;
                }
            }
            Stage::End => {
                if let Some(hasher) = hasher {
                    let whole = hasher.finish();
                    if let Some(mut job) = held.take() {
                        job.manifest = Some(Manifest {
                            xxh3_128: whole.xxh3_128,
                            size: whole.size,
                        });
                        if jobs.send(job).is_err() {
                            return;
                        }
                    }
                    let _ = digest.send(Ok(whole));
                }
                return;
            }
        }
    }
}

/// A work stage thread: checksum and compress chunks until the jobs end or the split is cancelled.
fn work_stage(
    codec: Codec,
    plan: ChunkPlan,
    jobs: &Receiver<Job>,
    results: &Sender<Result<ReadyChunk>>,
    cancel: &AtomicBool,
) {
    let mut compressor = match Compressor::new(codec) {
        Ok(c) => c,
        Err(e) => {
            cancel.store(true, Ordering::Relaxed);
            let _ = results.send(Err(e));
            return;
        }
    };
    loop {
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        let job = match jobs.recv_timeout(POLL) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let checksum = xxh3_128(job.input.as_slice());
        let payload = match job.output {
            Some(mut output) => {
                let compressed = compressor
                    .compress(job.input.as_slice(), &mut output.data)
                    .and_then(|()| match job.manifest {
                        Some(manifest) => manifest.append_to(codec.kind(), &mut output.data),
                        None => Ok(()),
                    });
                if let Err(e) = compressed {
                    cancel.store(true, Ordering::Relaxed);
                    let _ = results.send(Err(e.for_chunk(job.index + 1)));
                    return;
                }
                output
            }
            None => job.input,
        };
        let ready = ReadyChunk {
            index: job.index,
            offset: job.offset,
            length: plan.chunk_length(job.index),
            xxh3_128: checksum,
            payload,
        };
        if results.send(Ok(ready)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::MIB;
    use std::io::Write;

    fn file_with(len: usize) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 253) as u8).collect();
        f.write_all(&data).unwrap();
        f
    }

    #[test]
    fn chunks_come_in_order_with_a_whole_file_digest() {
        let f = file_with(11 * MIB as usize + 3);
        let data = std::fs::read(f.path()).unwrap();
        for codec in [
            Codec::none(),
            Codec::gzip(1).unwrap(),
            Codec::zstd(1).unwrap(),
        ] {
            let options = SplitOptions {
                codec,
                chunk_size: 5 * MIB,
                threads: 2,
                window: 2,
                sha256: true,
                ..SplitOptions::default()
            };
            let mut splitter = Splitter::open(f.path(), options).unwrap();
            let mut numbers = Vec::new();
            for chunk in splitter.by_ref() {
                let chunk = chunk.unwrap();
                let start = chunk.offset as usize;
                let expected = &data[start..start + chunk.length as usize];
                assert_eq!(chunk.xxh3_128, xxh3_128(expected));
                numbers.push(chunk.index);
            }
            assert_eq!(numbers, vec![0, 1, 2]);
            let digest = splitter.digest().unwrap();
            assert_eq!(digest.xxh3_128, xxh3_128(&data));
            assert_eq!(digest.size, data.len() as u64);
        }
    }

    fn manifest_of(codec: Codec, payload: &[u8]) -> (Vec<u8>, Option<Manifest>) {
        let mut decoder = crate::codec::Decoder::new(codec.kind(), u64::MAX, false).unwrap();
        let mut out = Vec::new();
        decoder
            .feed(payload, &mut |bytes| {
                out.extend_from_slice(bytes);
                Ok(())
            })
            .unwrap();
        decoder.finish().unwrap();
        (out, decoder.manifest())
    }

    #[test]
    fn the_last_chunk_carries_the_manifest_of_the_bytes_read() {
        let f = file_with(11 * MIB as usize + 3);
        let data = std::fs::read(f.path()).unwrap();
        let whole = Manifest {
            xxh3_128: xxh3_128(&data),
            size: data.len() as u64,
        };
        for codec in [Codec::gzip(1).unwrap(), Codec::zstd(1).unwrap()] {
            let options = SplitOptions {
                codec,
                chunk_size: 5 * MIB,
                threads: 2,
                window: 2,
                trailer: Trailer::FromDigest,
                ..SplitOptions::default()
            };
            let mut splitter = Splitter::open(f.path(), options.clone()).unwrap();
            for chunk in splitter.by_ref() {
                let chunk = chunk.unwrap();
                let (out, found) = manifest_of(codec, chunk.payload.as_slice());
                let start = chunk.offset as usize;
                assert_eq!(out, &data[start..start + chunk.length as usize]);
                let expected = (chunk.index == 2).then_some(whole);
                assert_eq!(found, expected, "{} chunk {}", codec.name(), chunk.index);
            }
            assert_eq!(splitter.digest().unwrap().xxh3_128, whole.xxh3_128);
            // A subset is given the manifest; without it, it has none to give.
            let subset = SplitOptions {
                chunks: ChunkSelection::Only(BTreeSet::from([2, 3])),
                trailer: Trailer::Given(whole),
                ..options.clone()
            };
            let last = Splitter::open(f.path(), subset.clone())
                .unwrap()
                .map(Result::unwrap)
                .last()
                .unwrap();
            assert_eq!(manifest_of(codec, last.payload.as_slice()).1, Some(whole));
            let refused = SplitOptions {
                trailer: Trailer::FromDigest,
                ..subset.clone()
            };
            assert!(matches!(
                Splitter::open(f.path(), refused),
                Err(Error::InvalidArgument(_))
            ));
            let wrong_size = SplitOptions {
                trailer: Trailer::Given(Manifest { size: 5, ..whole }),
                ..subset
            };
            assert!(matches!(
                Splitter::open(f.path(), wrong_size),
                Err(Error::InvalidArgument(_))
            ));
        }
        let none = SplitOptions {
            trailer: Trailer::FromDigest,
            chunk_size: 5 * MIB,
            ..SplitOptions::default()
        };
        let err = Splitter::open(f.path(), none).err().unwrap();
        assert!(err.to_string().contains("header instead"), "{err}");
    }

    /// Join `handles`, failing the test if any thread is still running after 30 s or panicked.
    fn join_all_within_30s(handles: Vec<JoinHandle<()>>) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for handle in handles {
            while !handle.is_finished() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "split thread {:?} still running after the splitter was dropped",
                    handle.thread().name()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            handle.join().expect("split thread panicked");
        }
    }

    #[test]
    fn digest_before_the_end_is_refused_and_drop_mid_way_is_clean() {
        let f = file_with(16 * MIB as usize);
        let data = std::fs::read(f.path()).unwrap();
        for codec in [Codec::none(), Codec::zstd(1).unwrap()] {
            let options = SplitOptions {
                codec,
                chunk_size: 5 * MIB,
                window: 1,
                threads: 2,
                ..SplitOptions::default()
            };
            let mut splitter = Splitter::open(f.path(), options).unwrap();
            let first = splitter.next_chunk().unwrap().unwrap();
            assert!(matches!(splitter.digest(), Err(Error::State(_))));
            // Dropped while the reader waits for the only buffer (held here): every thread
            // must still notice and exit, without a panic.
            let handles = std::mem::take(&mut splitter.threads);
            assert_eq!(handles.len(), 4, "reader, hasher and two workers");
            drop(splitter);
            join_all_within_30s(handles);
            // The chunk taken before the drop stays valid, and its buffer can still go home.
            assert_eq!(first.xxh3_128, xxh3_128(&data[..5 * MIB as usize]));
            drop(first);
        }
    }
}
