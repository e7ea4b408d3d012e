//! Split throughput per CPU-second and per wall-second, without Python:
//! `cargo run --release --example split_speed -- FILE [none|gzip|zstd] [threads]`.
use std::path::Path;
use std::time::Instant;

use meshpipe::codec::Codec;
use meshpipe::split::{SplitOptions, Splitter};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("file");
    let codec = Codec::from_name(&args.next().unwrap_or_else(|| "gzip".into()), None).unwrap();
    let threads: usize = args.next().map_or(2, |t| t.parse().unwrap());
    for round in 0..3 {
        let (cpu, wall) = (process_cpu_seconds(), Instant::now());
        let options = SplitOptions {
            codec,
            threads,
            ..SplitOptions::default()
        };
        let mut splitter = Splitter::open(Path::new(&path), options).unwrap();
        let mut bytes = 0u64;
        for chunk in splitter.by_ref() {
            bytes += chunk.unwrap().length;
        }
        splitter.digest().unwrap();
        splitter.close();
        let (cpu, wall) = (process_cpu_seconds() - cpu, wall.elapsed().as_secs_f64());
        println!(
            "round {round}: {:.0} MB/s wall, {:.0} MB per CPU-second",
            bytes as f64 / wall / 1e6,
            bytes as f64 / cpu / 1e6
        );
    }
}

fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
