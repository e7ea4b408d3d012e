//! Single-thread codec speed (per CPU-second) on a file's first 20 MiB chunks: `cargo run --release --example codec_speed -- FILE`.

use meshpipe::codec::{Codec, Compressor};

fn main() {
    let path = std::env::args().nth(1).expect("file");
    let data = std::fs::read(path).expect("read");
    let chunk = 20 << 20;
    for codec in [
        Codec::gzip(1).unwrap(),
        Codec::gzip(0).unwrap(),
        Codec::zstd(1).unwrap(),
        Codec::zstd(3).unwrap(),
    ] {
        let mut compressor = Compressor::new(codec).unwrap();
        let mut out = Vec::new();
        let mut total = 0usize;
        let mut packed = 0usize;
        let start = cpu_seconds();
        for piece in data.chunks(chunk) {
            compressor.compress(piece, &mut out).unwrap();
            total += piece.len();
            packed += out.len();
        }
        let secs = cpu_seconds() - start;
        println!(
            "{:?} level {}: {:.0} MB/s, ratio {:.2}",
            codec.kind(),
            codec.level(),
            total as f64 / secs / 1e6,
            total as f64 / packed as f64
        );
    }
}

/// This thread's CPU time, so that the figure holds on a busy machine.
fn cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}
