//! Chunk buffers: how a split gets its tens-of-MiB buffers, and where they go when it ends.
//!
//! A buffer the kernel has never backed costs it a page fault and a zero-fill of every page on
//! first touch: for a 20 MiB chunk that is 20 MiB zeroed before the read or the compressor
//! writes a byte. One split recycles its buffers for its whole life (its two pools, see
//! [`crate::split`]), so a single send pays that once per buffer. A fleet worker runs one
//! split per job, a few chunks each: measured on a 400 MiB zstd send by one worker, zeroing
//! fresh pages (`clear_page_erms`) was 36% of the worker's CPU and its system time was 14× a
//! single-process send's.
//!
//! So the buffers of a finished split are kept here, *spare*, for the next split that asks for
//! the same size. Bounded: at most [`SPARE_BYTES`] of capacity in all (the oldest freed first
//! beyond it), and none for longer than [`SPARE_FOR`] (a reaper thread, running only while
//! buffers are kept, frees the older ones), so a process that stops splitting gives the memory
//! back within seconds. A split's own bound ([`crate::split`]'s module doc) is unchanged: it
//! takes no more buffers than before, some of them used before.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

/// The most capacity kept spare across the process (the buffers of a few splits of 20 MiB
/// chunks: a fleet worker's jobs start and end a few at a time).
pub const SPARE_BYTES: usize = 1 << 30;
/// How long a spare buffer is kept before it is freed.
pub const SPARE_FOR: Duration = Duration::from_secs(5);

/// A buffer borrowed from a split's pool: it goes back to the pool when dropped, or is kept
/// spare if the pool is gone (the split ended while the consumer still held the chunk).
pub struct PooledBuffer {
    pub(crate) data: Vec<u8>,
    home: Sender<Vec<u8>>,
}

impl PooledBuffer {
    pub(crate) fn new(data: Vec<u8>, home: Sender<Vec<u8>>) -> Self {
        PooledBuffer { data, home }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Err(returned) = self.home.send(std::mem::take(&mut self.data)) {
            keep(returned.into_inner());
        }
    }
}

/// A buffer of at least `capacity` bytes: a spare one of about that size (within 1/8 more)
/// if there is one, else a new one.
pub fn take(capacity: usize) -> Vec<u8> {
    let reused = {
        let mut spare = lock();
        spare.take(capacity)
    };
    reused.unwrap_or_else(|| large_buffer(capacity))
}

/// Keep `buffer` spare for a later [`take`] (freed at once if it is small or empty).
pub fn keep(buffer: Vec<u8>) {
    if buffer.capacity() < MIN_SPARE {
        return;
    }
    let start_reaper = {
        let mut spare = lock();
        spare.keep(buffer, Instant::now());
        !std::mem::replace(&mut spare.reaping, true)
    };
    if start_reaper {
        let started = std::thread::Builder::new()
            .name("meshpipe-spare".into())
            .spawn(reap);
        if started.is_err() {
            // No thread for the reaper: keep nothing rather than keep it forever.
            let mut spare = lock();
            spare.buffers.clear();
            spare.bytes = 0;
            spare.reaping = false;
        }
    }
}

/// Bytes of capacity kept spare now.
pub fn spare_bytes() -> usize {
    lock().bytes
}

/// Buffers smaller than this are not worth keeping (the allocator recycles them itself).
const MIN_SPARE: usize = 1 << 20;

struct Spare {
    /// Oldest first.
    buffers: Vec<(Instant, Vec<u8>)>,
    bytes: usize,
    reaping: bool,
}

static SPARE: Mutex<Spare> = Mutex::new(Spare {
    buffers: Vec::new(),
    bytes: 0,
    reaping: false,
});

fn lock() -> std::sync::MutexGuard<'static, Spare> {
    // A panic while holding the lock leaves the list consistent (each method updates `bytes`
    // with the list): carry on with it.
    SPARE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Spare {
    fn take(&mut self, capacity: usize) -> Option<Vec<u8>> {
        let fits =
            |b: &Vec<u8>| b.capacity() >= capacity && b.capacity() - capacity <= capacity / 8;
        // The newest first: the likeliest to be in the CPU's caches.
        let at = self.buffers.iter().rposition(|(_, b)| fits(b))?;
        let (_, buffer) = self.buffers.remove(at);
        self.bytes -= buffer.capacity();
        Some(buffer)
    }

    fn keep(&mut self, buffer: Vec<u8>, now: Instant) {
        self.bytes += buffer.capacity();
        self.buffers.push((now, buffer));
        while self.bytes > SPARE_BYTES {
            let (_, oldest) = self.buffers.remove(0);
            self.bytes -= oldest.capacity();
        }
    }

    /// Free the buffers kept since before `now - SPARE_FOR`; whether any are left.
    fn expire(&mut self, now: Instant) -> bool {
        let fresh = self
            .buffers
            .iter()
            .position(|(kept, _)| now.duration_since(*kept) < SPARE_FOR)
            .unwrap_or(self.buffers.len());
        for (_, old) in self.buffers.drain(..fresh) {
            self.bytes -= old.capacity();
        }
        !self.buffers.is_empty()
    }
}

/// The reaper: frees expired buffers until none are kept, then ends (a later [`keep`] starts
/// another).
fn reap() {
    loop {
        std::thread::sleep(SPARE_FOR / 2);
        let mut spare = lock();
        if !spare.expire(Instant::now()) {
            spare.reaping = false;
            return;
        }
    }
}

/// A new buffer for a whole chunk. Chunk buffers are tens of MiB: ask the kernel for
/// transparent huge pages, so first use faults 2 MiB pages instead of 4 KiB ones (512× fewer
/// faults; the zero-fill is the same).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spare() -> Spare {
        Spare {
            buffers: Vec::new(),
            bytes: 0,
            reaping: false,
        }
    }

    #[test]
    fn a_kept_buffer_is_taken_again_for_about_its_size_only() {
        let mut list = spare();
        let buffer = Vec::<u8>::with_capacity(8 << 20);
        let address = buffer.as_ptr();
        list.keep(buffer, Instant::now());
        assert!(list.take(16 << 20).is_none(), "too small for the request");
        assert!(
            list.take(4 << 20).is_none(),
            "far larger than asked: not handed out"
        );
        let again = list.take(7 << 20 | 1 << 19).expect("within 1/8");
        assert_eq!(again.as_ptr(), address);
        assert_eq!(list.bytes, 0);
        assert!(list.take(8 << 20).is_none());
    }

    #[test]
    fn the_spare_bytes_are_bounded_oldest_freed_first() {
        let mut list = spare();
        let now = Instant::now();
        let size = SPARE_BYTES / 4;
        for _ in 0..6 {
            list.keep(Vec::with_capacity(size), now);
        }
        assert!(list.bytes <= SPARE_BYTES);
        assert_eq!(list.buffers.len(), SPARE_BYTES / size);
    }

    #[test]
    fn buffers_kept_longer_than_spare_for_are_freed() {
        let mut list = spare();
        let start = Instant::now();
        list.keep(Vec::with_capacity(2 << 20), start);
        list.keep(Vec::with_capacity(2 << 20), start + SPARE_FOR / 2);
        assert!(list.expire(start + SPARE_FOR));
        assert_eq!(list.buffers.len(), 1);
        assert_eq!(list.bytes, 2 << 20);
        assert!(!list.expire(start + SPARE_FOR * 2));
        assert_eq!(list.bytes, 0);
    }
}
