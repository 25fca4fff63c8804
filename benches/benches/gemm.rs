//! GEMM and convolution forward under criterion: ours (A packed per call, and
//! prepacked) vs matrixmultiply on a square and ResNet-50's extreme im2col shapes, and a
//! 3x3 convolution, at 1 thread and every core. Criterion's "elements" are flops, so its
//! elem/s column reads as FLOP/s.
//!
//! `cargo bench -p resnet-benches --bench gemm`. The full tables (every shape, % of
//! the measured peak) come from `resnet bench gemm` and `resnet bench conv`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use resnet_benches::{active, pool, thread_counts};
use tensor::gemm::matrixmultiply_gemm;
use tensor::{Conv2d, ConvPlan, Epilogue, MatMut, MatRef, Mode, Tensor};

const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("square_1024", 1024, 1024, 1024),
    ("r50_layer4_3x3", 512, 49, 4608),
    ("r50_layer1_3x3", 64, 3136, 576),
];

fn gemm(c: &mut Criterion) {
    let k = active();
    let mut g = c.benchmark_group(format!("gemm/{}", k.gemm_kernel_name()));
    g.sample_size(10).measurement_time(Duration::from_secs(2));
    for &(name, m, n, kk) in SHAPES {
        let a: Vec<f32> = (0..m * kk)
            .map(|i| ((i % 17) as f32 - 8.0) * 0.01)
            .collect();
        let b: Vec<f32> = (0..kk * n)
            .map(|i| ((i % 13) as f32 - 6.0) * 0.01)
            .collect();
        let mut out = vec![0.0f32; m * n];
        let av = MatRef::row_major(&a, m, kk).expect("A");
        let bv = MatRef::row_major(&b, kk, n).expect("B");
        let packed = k.pack_a(av);
        g.throughput(Throughput::Elements(2 * (m * n * kk) as u64));
        for threads in thread_counts() {
            let p = pool(threads);
            let id = |imp: &str| BenchmarkId::new(format!("{name}/{imp}"), format!("t{threads}"));
            g.bench_function(id("ours"), |bch| {
                bch.iter(|| {
                    p.install(|| {
                        k.gemm(av, bv, &mut MatMut::row_major(&mut out, m, n).unwrap(), &[])
                    })
                })
            });
            g.bench_function(id("ours_prepacked"), |bch| {
                bch.iter(|| {
                    p.install(|| {
                        k.gemm_prepacked(
                            &packed,
                            bv,
                            &mut MatMut::row_major(&mut out, m, n).unwrap(),
                            &[],
                        )
                    })
                })
            });
        }
        // matrixmultiply is single-threaded in this build (its "threading" feature is
        // only enabled by the CLI).
        g.bench_function(
            BenchmarkId::new(format!("{name}/matrixmultiply"), "t1"),
            |bch| {
                bch.iter(|| {
                    matrixmultiply_gemm(av, bv, &mut MatMut::row_major(&mut out, m, n).unwrap())
                })
            },
        );
    }
    g.finish();
}

fn conv(c: &mut Criterion) {
    let k = active();
    let mut g = c.benchmark_group("conv2d");
    g.sample_size(10).measurement_time(Duration::from_secs(2));
    // ResNet-50 layer2's 3x3 convolution at batch 1: 128 -> 128 channels, 28x28.
    let x = Tensor::randn(&[1, 128, 28, 28], 0.0, 1.0, 1).expect("x");
    let plan =
        ConvPlan::new(&k, [128, 128, 3, 3], Conv2d::new(1, 1), Mode::Inference).expect("plan");
    let w = k
        .pack_conv(
            &plan,
            &Tensor::randn(&[128, 128, 3, 3], 0.0, 0.05, 2).expect("w"),
        )
        .expect("packed");
    let bias = vec![0.0f32; 128];
    let mut y = Tensor::zeros(&[1, 128, 28, 28]).expect("y");
    g.throughput(Throughput::Elements(2 * 128 * 28 * 28 * 128 * 9));
    for threads in thread_counts() {
        let p = pool(threads);
        g.bench_function(
            BenchmarkId::new("r50_layer2_3x3_bias_relu", format!("t{threads}")),
            |bch| {
                bch.iter(|| {
                    p.install(|| {
                        k.conv2d_into(&x, &w, &[Epilogue::Bias(&bias), Epilogue::Relu], &mut y)
                    })
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, gemm, conv);
criterion_main!(benches);
