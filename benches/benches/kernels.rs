//! The elementwise and reduction kernels on large tensors, in bytes per second, at 1
//! thread and at every core. Compare with `--bench machine`'s copy and triad: these
//! kernels are memory-bound, so the bandwidth is their ceiling.
//!
//! `cargo bench -p resnet-benches --bench kernels`
//!
//! The active tier (widest supported, or `RESNET_ISA`) runs every kernel; the other
//! supported tiers run the two hottest ResNet ones (BN+ReLU and residual add+ReLU), to
//! show what the hand-written tiers buy.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use resnet_benches::{active, pool, supported_tiers, thread_counts, LARGE};
use tensor::{Epilogue, Kernels, Pool2d, Tensor};

/// 16 Mi floats as a batch of ResNet activations: [16, 64, 128, 128].
const SHAPE: [usize; 4] = [16, 64, 128, 128];
const BYTES: u64 = 4 * LARGE as u64;

fn bench_tier(c: &mut Criterion, k: Kernels, all_ops: bool) {
    assert_eq!(SHAPE.iter().product::<usize>(), LARGE);
    let x = Tensor::randn(&SHAPE, 0.0, 1.0, 1).expect("input");
    let r = Tensor::randn(&SHAPE, 0.0, 1.0, 2).expect("residual");
    let scale = vec![0.9f32; SHAPE[1]];
    let shift = vec![0.1f32; SHAPE[1]];
    // A batch of 256 rows of 1000 ImageNet logits (1 MiB): compute-bound on `exp`, and
    // the figure includes allocating the output.
    let logits = Tensor::randn(&[256, 1000], 0.0, 3.0, 3).expect("logits");

    let mut g = c.benchmark_group(format!("kernels/{}", k.isa()));
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for threads in thread_counts() {
        let p = pool(threads);
        let id = |op: &str| BenchmarkId::new(op, format!("t{threads}"));
        // Read x, write y.
        g.throughput(Throughput::Bytes(2 * BYTES));
        let mut y = x.clone();
        // The ceiling, measured in the same run on the same buffers: a plain copy.
        let chunk = 1 << 16;
        g.bench_function(id("copy_reference"), |b| {
            b.iter(|| {
                p.install(|| {
                    use rayon::prelude::*;
                    y.data_mut()
                        .par_chunks_mut(chunk)
                        .zip(x.data().par_chunks(chunk))
                        .for_each(|(d, s)| d.copy_from_slice(s))
                })
            })
        });
        g.bench_function(id("scale_shift_relu_into"), |b| {
            b.iter(|| {
                p.install(|| k.scale_shift_into(&x, &scale, &shift, &[Epilogue::Relu], &mut y))
            })
        });
        g.bench_function(id("scale_shift_relu_inplace"), |b| {
            b.iter(|| {
                p.install(|| k.scale_shift_inplace(&mut y, &scale, &shift, &[Epilogue::Relu]))
            })
        });
        // Read a and b, write a.
        g.throughput(Throughput::Bytes(3 * BYTES));
        let mut acc = x.clone();
        g.bench_function(id("add_relu_assign"), |b| {
            b.iter(|| p.install(|| k.add_assign(&mut acc, &r, &[Epilogue::Relu])))
        });
        if !all_ops {
            continue;
        }
        g.throughput(Throughput::Bytes(2 * BYTES));
        g.bench_function(id("relu_inplace"), |b| {
            b.iter(|| p.install(|| k.relu_inplace(&mut y)))
        });
        g.throughput(Throughput::Bytes(2 * 4 * 256 * 1000));
        g.bench_function(id("softmax_256x1000"), |b| {
            b.iter(|| p.install(|| k.softmax(&logits)))
        });
        // Reads x twice (mean, then squared deviations); writes nothing.
        g.throughput(Throughput::Bytes(2 * BYTES));
        g.bench_function(id("channel_stats"), |b| {
            b.iter(|| p.install(|| k.channel_stats(&x)))
        });
        g.throughput(Throughput::Bytes(BYTES));
        g.bench_function(id("global_avg_pool"), |b| {
            b.iter(|| p.install(|| k.global_avg_pool(&x)))
        });
        // Reads x, writes a quarter of it.
        g.throughput(Throughput::Bytes(BYTES + BYTES / 4));
        let mut pooled = k.max_pool2d(&x, &Pool2d::RESNET_STEM).expect("pooled");
        g.bench_function(id("max_pool2d_3x3s2_into"), |b| {
            b.iter(|| p.install(|| k.max_pool2d_into(&x, &Pool2d::RESNET_STEM, &mut pooled)))
        });
    }
    g.finish();
}

fn kernels(c: &mut Criterion) {
    let main = active();
    bench_tier(c, main, true);
    for k in supported_tiers()
        .into_iter()
        .filter(|k| k.isa() != main.isa())
    {
        bench_tier(c, k, false);
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
