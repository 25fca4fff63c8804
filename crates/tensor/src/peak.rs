//! Measuring the machine's limits, so that every benchmark figure can be stated as a
//! fraction of what the hardware can do.
//!
//! - [`fma_peak`]: the arithmetic peak. Each thread runs independent chains of vector
//!   FMAs entirely in registers (no memory traffic), enough of them to hide the FMA
//!   latency on every unit; the flop rate it reaches is the ceiling for GEMM and
//!   convolution.
//! - Memory bandwidth (copy and triad) is measured by the criterion suite
//!   (`cargo bench -p resnet-benches --bench machine`), the ceiling for elementwise
//!   kernels.

use std::time::{Duration, Instant};

use crate::kernels::body::FMA_CHAINS;
use crate::kernels::Kernels;

/// A measured peak arithmetic rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FmaPeak {
    /// Billions of floating-point operations per second (an FMA counts as two).
    pub gflops: f64,
    /// The threads that ran the probe at once.
    pub threads: usize,
}

/// Floating-point operations of one probe call of `iters` rounds.
pub fn fma_probe_flops(k: &Kernels, iters: usize) -> f64 {
    iters as f64 * (FMA_CHAINS * k.lanes() * 2) as f64
}

/// Runs the FMA probe once on the calling thread (for benchmark harnesses that time it
/// themselves). Returns a value derived from every lane, to keep the work observable.
pub fn fma_probe(k: &Kernels, iters: usize) -> f32 {
    k.fma_chains(iters, 1.0)
}

/// Measures the FMA peak of `k`'s tier on `threads` threads at once, for about
/// `duration` (the best of several short rounds, which discounts interruptions on a
/// shared machine).
pub fn fma_peak(k: &Kernels, threads: usize, duration: Duration) -> FmaPeak {
    let threads = threads.max(1);
    // About 1 GFLOP per thread per round (~10 ms at 100 GFLOP/s): long enough that
    // starting the threads is noise, short enough for several rounds.
    let iters = (1e9 / (FMA_CHAINS * k.lanes() * 2) as f64) as usize;
    let flops = fma_probe_flops(k, iters) * threads as f64;
    let rounds_deadline = Instant::now() + duration;
    let mut best = f64::INFINITY;
    let mut sink = 0.0f32;
    loop {
        let start = Instant::now();
        let outs: Vec<f32> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| s.spawn(move || k.fma_chains(iters, 1.0 + t as f32)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0.0))
                .collect()
        });
        sink += outs.iter().sum::<f32>();
        best = best.min(start.elapsed().as_secs_f64());
        if Instant::now() >= rounds_deadline {
            break;
        }
    }
    std::hint::black_box(sink);
    FmaPeak {
        gflops: flops / best / 1e9,
        threads,
    }
}
