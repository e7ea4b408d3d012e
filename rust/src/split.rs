//! Split: read → checksum → compress, over a bounded window of chunks on worker threads.
//!
//! One reader thread reads the file in order with positioned reads; one hasher thread feeds the
//! whole-file hashers in order; worker threads hash each chunk and compress it; the consumer
//! takes chunks in order.
//! Buffers come from two fixed pools, and a chunk's buffers are taken *before* it is read, in
//! chunk order, so memory is bounded and out-of-order completion can never starve the chunk the
//! consumer is waiting for:
//! - codec none: `window` buffers of `chunk_size` (the payload is the read buffer itself);
//! - gzip/zstd: `window` payload buffers, plus `threads + 2` read buffers.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};

use crate::checksum::{xxh3_128, FileDigest, FileHasher};
use crate::codec::{Codec, CodecKind, Compressor};
use crate::error::{Error, Result};
use crate::plan::{ChunkPlan, Limits, DEFAULT_CHUNK_SIZE};

/// How often blocked threads look at the cancel flag.
const POLL: Duration = Duration::from_millis(50);

/// Options for a split.
#[derive(Debug, Clone)]
pub struct SplitOptions {
    pub codec: Codec,
    pub chunk_size: u64,
    /// Worker threads; default: one per core.
    pub threads: usize,
    /// Chunks in flight (read and not yet released by the consumer).
    pub window: usize,
    pub sha256: bool,
    pub limits: Limits,
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

/// A buffer borrowed from a pool; it goes home when dropped.
pub struct PooledBuffer {
    data: Vec<u8>,
    home: Sender<Vec<u8>>,
}

impl PooledBuffer {
    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        // If the pool is gone (split finished or cancelled) the buffer is simply freed.
        let _ = self.home.send(std::mem::take(&mut self.data));
    }
}

struct Pool {
    give: Sender<Vec<u8>>,
    take: Receiver<Vec<u8>>,
}

impl Pool {
    /// `count` buffers of `capacity` bytes, allocated lazily on first use.
    fn new(count: usize, capacity: usize) -> Self {
        let (give, take) = bounded(count);
        for _ in 0..count {
            give.send(large_buffer(capacity)).expect("pool has room");
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
                Ok(data) => {
                    return Some(PooledBuffer {
                        data,
                        home: self.give.clone(),
                    })
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

/// A buffer for a whole chunk. Chunk buffers are tens of MiB: ask the kernel for transparent
/// huge pages, so first use faults 2 MiB pages instead of 4 KiB ones (512× fewer faults).
fn large_buffer(capacity: usize) -> Vec<u8> {
    const HUGE: usize = 2 << 20;
    let buffer = Vec::<u8>::with_capacity(capacity);
    if capacity >= 2 * HUGE {
        let start = (buffer.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (buffer.as_ptr() as usize + capacity) / HUGE * HUGE;
        if end > start {
            // SAFETY: [start, end) lies inside this Vec's allocation; MADV_HUGEPAGE changes only
            // how the kernel backs the pages, never their contents. Failure is harmless.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    buffer
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
}

/// An in-order stream of chunks from a file.
pub struct Splitter {
    plan: ChunkPlan,
    codec: Codec,
    next_index: u32,
    results: Receiver<Result<ReadyChunk>>,
    pending: BTreeMap<u32, ReadyChunk>,
    digest_rx: Receiver<Result<FileDigest>>,
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
        let threads = options.threads.min(plan.chunk_count() as usize).max(1);
        let window = options.window;
        let buffer_size = plan.chunk_length(0) as usize;
        let compressed = options.codec.kind() != CodecKind::None;

        // Read buffers: for gzip/zstd, one per worker plus one at the hasher and one being read.
        let input_pool = Pool::new(if compressed { threads + 2 } else { window }, buffer_size);
        let output_pool = compressed.then(|| {
            Pool::new(
                window,
                options.codec.max_payload_size(buffer_size as u64) as usize,
            )
        });

        let cancel = Arc::new(AtomicBool::new(false));
        let (read_tx, read_rx) = bounded::<Stage>(1);
        let (job_tx, job_rx) = bounded::<Job>(threads);
        let (result_tx, result_rx) = unbounded::<Result<ReadyChunk>>();
        let (digest_tx, digest_rx) = bounded::<Result<FileDigest>>(1);
        let file = Arc::new(file);

        let mut handles = Vec::with_capacity(threads + 2);
        {
            let cancel = cancel.clone();
            let result_tx = result_tx.clone();
            handles.push(
                std::thread::Builder::new()
                    .name("meshpipe-read".into())
                    .spawn(move || {
                        let outcome = read_loop(
                            &file,
                            &name,
                            plan,
                            &input_pool,
                            output_pool.as_ref(),
                            &read_tx,
                            &cancel,
                        );
                        if let Err(e) = outcome {
                            cancel.store(true, Ordering::Relaxed);
                            let _ = result_tx.send(Err(e));
                        }
                    })
                    .map_err(|e| Error::io("starting the reader thread", e))?,
            );
        }
        {
            // The whole-file hashers run on their own thread, so hashing chunk i overlaps
            // reading chunk i + 1.
            let sha256 = options.sha256;
            handles.push(
                std::thread::Builder::new()
                    .name("meshpipe-hash".into())
                    .spawn(move || {
                        let mut hasher = FileHasher::new(sha256);
                        for stage in read_rx {
                            match stage {
                                Stage::Chunk(job) => {
                                    hasher.update(job.input.as_slice());
                                    if job_tx.send(job).is_err() {
                                        return;
                                    }
                                }
                                Stage::End => {
                                    let _ = digest_tx.send(Ok(hasher.finish()));
                                    return;
                                }
                            }
                        }
                    })
                    .map_err(|e| Error::io("starting the hasher thread", e))?,
            );
        }
        for worker in 0..threads {
            let cancel = cancel.clone();
            let result_tx = result_tx.clone();
            let job_rx = job_rx.clone();
            let codec = options.codec;
            handles.push(
                std::thread::Builder::new()
                    .name(format!("meshpipe-work-{worker}"))
                    .spawn(move || work_loop(codec, plan, &job_rx, &result_tx, &cancel))
                    .map_err(|e| Error::io("starting a worker thread", e))?,
            );
        }

        Ok(Splitter {
            plan,
            codec: options.codec,
            next_index: 0,
            results: result_rx,
            pending: BTreeMap::new(),
            digest_rx,
            digest: None,
            error: None,
            cancel,
            threads: handles,
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
        if self.next_index >= self.plan.chunk_count() {
            return Ok(None);
        }
        loop {
            if let Some(chunk) = self.pending.remove(&self.next_index) {
                self.next_index += 1;
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

    /// Whole-file checksums; available once the last chunk has been taken.
    pub fn digest(&mut self) -> Result<FileDigest> {
        if let Some(d) = &self.digest {
            return Ok(d.clone());
        }
        if self.next_index < self.plan.chunk_count() {
            return Err(Error::State(format!(
                "the whole-file digest is known only after the last chunk; {} of {} chunks taken",
                self.next_index,
                self.plan.chunk_count()
            )));
        }
        let digest = match self.digest_rx.recv() {
            Ok(digest) => digest?,
            // The reader failed after the last chunk (the file changed size): its error is
            // queued before the hasher gives up.
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

/// What the reader hands to the hasher: a chunk, or the end of a file read in full.
enum Stage {
    Chunk(Job),
    End,
}

fn read_loop(
    file: &File,
    name: &str,
    plan: ChunkPlan,
    input_pool: &Pool,
    output_pool: Option<&Pool>,
    stages: &Sender<Stage>,
    cancel: &AtomicBool,
) -> Result<()> {
    for index in 0..plan.chunk_count() {
        // Take this chunk's buffers before reading it: back-pressure, in chunk order.
        let output = match output_pool {
            Some(pool) => match pool.acquire(cancel) {
                Some(buffer) => Some(buffer),
                None => return Ok(()),
            },
            None => None,
        };
        let Some(mut input) = input_pool.acquire(cancel) else {
            return Ok(());
        };
        let offset = plan.chunk_offset(index);
        let length = plan.chunk_length(index) as usize;
        read_chunk(file, &mut input.data, length, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::SourceChanged(format!(
                    "{name} shrank while it was being split (it was {} bytes); send it again once \
                     it is no longer being written",
                    plan.file_size()
                ))
            } else {
                Error::io(format!("reading {name} at offset {offset}"), e)
            }
        })?;
        let job = Job {
            index,
            offset,
            input,
            output,
        };
        if stages.send(Stage::Chunk(job)).is_err() {
            return Ok(());
        }
    }
    let now = file
        .metadata()
        .map_err(|e| Error::io(format!("reading metadata of {name}"), e))?
        .len();
    if now != plan.file_size() {
        return Err(Error::SourceChanged(format!(
            "{name} changed size while it was being split ({} bytes, now {now}); send it again \
             once it is no longer being written",
            plan.file_size()
        )));
    }
    let _ = stages.send(Stage::End);
    Ok(())
}

fn work_loop(
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
                if let Err(e) = compressor.compress(job.input.as_slice(), &mut output.data) {
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
