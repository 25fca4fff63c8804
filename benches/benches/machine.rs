//! The machine's limits: memory bandwidth (copy, triad) and the FMA peak per tier.
//!
//! `cargo bench -p resnet-benches --bench machine`
//!
//! Bandwidth counts the bytes a kernel must move (STREAM's convention: copy reads one
//! array and writes one, triad reads two and writes one; write-allocate traffic is not
//! counted), so kernel figures from `--bench kernels` compare directly.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rayon::prelude::*;
use resnet_benches::{pool, supported_tiers, thread_counts, LARGE};
use tensor::peak;

const CHUNK: usize = 1 << 16;

fn bandwidth(c: &mut Criterion) {
    let src = vec![1.0f32; LARGE];
    let src2 = vec![2.0f32; LARGE];
    let mut dst = vec![0.0f32; LARGE];
    let mut g = c.benchmark_group("bandwidth");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    for threads in thread_counts() {
        let p = pool(threads);
        g.throughput(Throughput::Bytes((2 * 4 * LARGE) as u64));
        g.bench_function(format!("copy/t{threads}"), |b| {
            b.iter(|| {
                p.install(|| {
                    dst.par_chunks_mut(CHUNK)
                        .zip(src.par_chunks(CHUNK))
                        .for_each(|(d, s)| d.copy_from_slice(s))
                })
            })
        });
        g.throughput(Throughput::Bytes((3 * 4 * LARGE) as u64));
        g.bench_function(format!("triad/t{threads}"), |b| {
            b.iter(|| {
                p.install(|| {
                    dst.par_chunks_mut(CHUNK)
                        .zip(src.par_chunks(CHUNK).zip(src2.par_chunks(CHUNK)))
                        .for_each(|(d, (x, y))| {
                            for ((d, x), y) in d.iter_mut().zip(x).zip(y) {
                                *d = x + 3.0 * y;
                            }
                        })
                })
            })
        });
    }
    g.finish();
}

fn fma_peak(c: &mut Criterion) {
    let mut g = c.benchmark_group("fma_peak");
    g.sample_size(20).measurement_time(Duration::from_secs(2));
    for k in supported_tiers() {
        let iters = 100_000;
        // Criterion's "elements" are flops here: its elem/s column reads as FLOP/s.
        g.throughput(Throughput::Elements(peak::fma_probe_flops(&k, iters) as u64));
        g.bench_function(format!("{}/t1", k.isa()), |b| {
            b.iter(|| peak::fma_probe(&k, iters))
        });
    }
    g.finish();
}

criterion_group!(benches, bandwidth, fma_peak);
criterion_main!(benches);
