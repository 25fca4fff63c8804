//! Shared helpers for the criterion benchmarks.
//!
//! Every benchmark runs inside a rayon pool of a stated size, so that a figure always
//! says how many threads made it, and the machine limits (memory bandwidth, FMA peak)
//! are measured in the same suite so each result can be read as a fraction of them.

use tensor::{Isa, Kernels};

/// Elements per tensor in the "large" elementwise benchmarks: 16 Mi floats (64 MiB),
/// far past every core's L2, so the kernels are bound by memory traffic, like the copy
/// and triad they are compared with.
pub const LARGE: usize = 16 << 20;

/// The thread counts to measure: 1, and every core if there is more than one.
pub fn thread_counts() -> Vec<usize> {
    let all = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if all > 1 {
        vec![1, all]
    } else {
        vec![1]
    }
}

/// A rayon pool of exactly `threads` workers.
pub fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool (benchmarks only)")
}

/// The kernel sets of every tier this CPU runs, printing a line for each it skips.
pub fn supported_tiers() -> Vec<Kernels> {
    Isa::ALL
        .into_iter()
        .filter_map(|isa| match Kernels::for_isa(isa) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("SKIP {isa}: {e}");
                None
            }
        })
        .collect()
}

/// The tier the library would use (the widest supported, or `RESNET_ISA`'s).
pub fn active() -> Kernels {
    Kernels::active().expect("the active ISA tier (check RESNET_ISA)")
}
