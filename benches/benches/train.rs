//! The backward kernels and a whole ResNet-20 training step under criterion.
//!
//! `cargo bench -p resnet-benches --bench train`. Backward kernels on ResNet-20 layer
//! shapes at batch 128 (32x32 input): ReLU, batch norm (alone, with fixed statistics,
//! fused with ReLU, and the residual block's fused end, forward and backward), max pool
//! and global average pool in bytes/s of their traffic; convolution (dX and dW; plain,
//! reading a normalised input, or adding dX into a gradient; every 3 x 3 shape of the
//! stages, and a 1 x 1 convolution of an ImageNet bottleneck) and the linear layer in
//! flops/s; the tape's own backward ops (option-A shortcut, cross-entropy) with their
//! forward on a fresh tape; and the whole step in images/s. The one-shot figure with
//! peak memory comes from `resnet bench train`.

use std::time::Duration;

use autograd::{Sgd, SgdConfig, Tape};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use resnet::{train_step, Arch, Freeze, ResNet};
use resnet_benches::{active, pool, thread_counts};
use tensor::{
    BatchNormBackward, BnGradIn, Conv2d, ConvBackward, ConvPlan, Epilogue, Mode, Pool2d, Tensor,
};

fn backward_kernels(c: &mut Criterion) {
    let k = active();
    let mut g = c.benchmark_group(format!("backward/{}", k.isa()));
    g.sample_size(10).measurement_time(Duration::from_secs(2));
    let x = Tensor::randn(&[128, 16, 32, 32], 0.0, 1.0, 1).unwrap();
    let dy = Tensor::randn(&[128, 16, 32, 32], 0.0, 1.0, 2).unwrap();
    let bytes = (x.len() * 4) as u64;
    let stats = k.channel_stats(&x).unwrap();
    let inv_std: Vec<f32> = stats.var.iter().map(|v| 1.0 / (v + 1e-5).sqrt()).collect();
    let gamma = vec![1.0f32; 16];
    for threads in thread_counts() {
        let p = pool(threads);
        let id = |name: &str| BenchmarkId::new(name.to_string(), format!("t{threads}"));
        g.throughput(Throughput::Bytes(3 * bytes));
        g.bench_function(id("relu_backward_128x16x32x32"), |b| {
            b.iter(|| p.install(|| k.relu_backward(&dy, &x).unwrap()))
        });
        g.throughput(Throughput::Bytes(4 * bytes));
        g.bench_function(id("batch_norm_backward_128x16x32x32"), |b| {
            b.iter(|| {
                p.install(|| {
                    k.batch_norm_backward(
                        &x,
                        BnGradIn::Borrowed(&dy),
                        &BatchNormBackward::batch(&stats.mean, &inv_std, &gamma),
                    )
                    .unwrap()
                })
            })
        });
        // With fixed (running) statistics, as when fine-tuning a frozen backbone: dx is
        // a per-channel scaling of dy, and dgamma and dbeta still need a pass.
        g.throughput(Throughput::Bytes(3 * bytes));
        g.bench_function(id("batch_norm_fixed_backward_128x16x32x32"), |b| {
            b.iter(|| {
                p.install(|| {
                    k.batch_norm_backward(
                        &x,
                        BnGradIn::Borrowed(&dy),
                        &BatchNormBackward::fixed(&stats.mean, &inv_std, &gamma),
                    )
                    .unwrap()
                })
            })
        });
        // The fused BN + ReLU backward: the same four streams, the mask recomputed.
        let scale: Vec<f32> = gamma.iter().zip(&inv_std).map(|(g, s)| g * s).collect();
        let shift: Vec<f32> = (0..16).map(|i| 0.1 - stats.mean[i] * scale[i]).collect();
        g.throughput(Throughput::Bytes(4 * bytes));
        g.bench_function(id("batch_norm_relu_backward_128x16x32x32"), |b| {
            b.iter(|| {
                p.install(|| {
                    let affine = [&scale[..], &shift[..]];
                    k.batch_norm_backward(
                        &x,
                        BnGradIn::Borrowed(&dy),
                        &BatchNormBackward::new(&stats.mean, &inv_std, &gamma, true)
                            .with_relu(affine),
                    )
                    .unwrap()
                })
            })
        });
        // The block end's forward, relu(bn(x) + r): x and r read, y written.
        g.throughput(Throughput::Bytes(3 * bytes));
        g.bench_function(id("scale_shift_add_relu_128x16x32x32"), |b| {
            b.iter(|| {
                p.install(|| {
                    k.scale_shift(
                        &x,
                        &scale,
                        &shift,
                        &[Epilogue::residual(&dy), Epilogue::Relu],
                    )
                    .unwrap()
                })
            })
        });
        // Its backward: dy masked by the output, then batch norm's two passes (x, dy and
        // the output read; the masked dy, which the shortcut receives, and dx written).
        let out = k
            .scale_shift(
                &x,
                &scale,
                &shift,
                &[Epilogue::residual(&dy), Epilogue::Relu],
            )
            .unwrap();
        g.throughput(Throughput::Bytes(5 * bytes));
        g.bench_function(id("batch_norm_add_relu_backward_128x16x32x32"), |b| {
            b.iter_batched(
                || dy.clone(),
                |d| {
                    p.install(|| {
                        let bn = BatchNormBackward::batch(&stats.mean, &inv_std, &gamma);
                        k.batch_norm_backward(&x, BnGradIn::MaskedBy(d, &out), &bn)
                            .unwrap()
                    })
                },
                BatchSize::LargeInput,
            )
        });
        // The head: global average pool (dy [128, 64] spread over 8 x 8 planes) and the
        // classifier (dx, dW and db of a 64 -> 10 linear layer).
        let pooled_dy = Tensor::randn(&[128, 64], 0.0, 1.0, 6).unwrap();
        g.throughput(Throughput::Bytes((128 * 64 * 64 * 4) as u64));
        g.bench_function(id("global_avg_pool_backward_128x64x8x8"), |b| {
            b.iter(|| {
                p.install(|| {
                    k.global_avg_pool_backward(&pooled_dy, [128, 64, 8, 8])
                        .unwrap()
                })
            })
        });
        let fc_w = Tensor::randn(&[10, 64], 0.0, 0.1, 7).unwrap();
        let logits_dy = Tensor::randn(&[128, 10], 0.0, 1.0, 8).unwrap();
        g.throughput(Throughput::Elements(2 * 2 * 128 * 64 * 10));
        g.bench_function(id("linear_backward_128x64_to_10_flops"), |b| {
            b.iter(|| p.install(|| k.linear_backward(&pooled_dy, &fc_w, &logits_dy).unwrap()))
        });
        // Two ops whose backward lives in the tape (`autograd`), timed as forward and
        // backward on a fresh tape: the option-A shortcut (stride-2 subsample, channels
        // zero-padded 16 -> 32) and softmax cross-entropy with label smoothing.
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(id("shortcut_option_a_fwd_bwd_128x16x32x32"), |b| {
            let seed = Tensor::randn(&[128, 32, 16, 16], 0.0, 1.0, 9).unwrap();
            b.iter(|| {
                p.install(|| {
                    let mut tape = Tape::new(k);
                    let v = tape.param(&x);
                    let y = tape.pad_channels(v, 2, 8).unwrap();
                    tape.backward_from(y, seed.clone())
                        .unwrap()
                        .take(v)
                        .unwrap()
                })
            })
        });
        let logits = Tensor::randn(&[128, 10], 0.0, 1.0, 10).unwrap();
        let targets: Vec<usize> = (0..128).map(|i| i % 10).collect();
        g.throughput(Throughput::Elements(128));
        g.bench_function(id("cross_entropy_fwd_bwd_128x10"), |b| {
            b.iter(|| {
                p.install(|| {
                    let mut tape = Tape::new(k);
                    let v = tape.param(&logits);
                    let loss = tape.cross_entropy(v, &targets, 0.1).unwrap();
                    tape.backward(loss).unwrap().take(v).unwrap()
                })
            })
        });
        g.throughput(Throughput::Bytes(2 * bytes));
        g.bench_function(id("max_pool2d_backward_3x3s2"), |b| {
            let pool3 = Pool2d::RESNET_STEM;
            let y = k.max_pool2d(&x, &pool3).unwrap();
            b.iter(|| p.install(|| k.max_pool2d_backward(&x, &y, &pool3).unwrap()))
        });
        g.bench_function(id("max_pool2d_backward_given_output_3x3s2"), |b| {
            let pool3 = Pool2d::RESNET_STEM;
            let out = k.max_pool2d(&x, &pool3).unwrap();
            let y = k.max_pool2d(&x, &pool3).unwrap();
            b.iter(|| {
                p.install(|| {
                    k.max_pool2d_backward_given_output(&x, &out, &y, &pool3)
                        .unwrap()
                })
            })
        });
        g.bench_function(id("max_pool2d_with_indices_3x3s2"), |b| {
            let pool3 = Pool2d::RESNET_STEM;
            b.iter(|| p.install(|| k.max_pool2d_with_indices(&x, &pool3).unwrap()))
        });
        g.bench_function(id("max_pool2d_backward_from_indices_3x3s2"), |b| {
            let pool3 = Pool2d::RESNET_STEM;
            let (y, winners) = k.max_pool2d_with_indices(&x, &pool3).unwrap();
            b.iter(|| p.install(|| k.max_pool2d_backward_from_indices(&winners, &y).unwrap()))
        });
        // Every 3 x 3 convolution shape of ResNet-20's stages.
        for (name, cin, cout, size, stride) in [
            ("conv_16_16_s1", 16, 16, 32, 1),
            ("conv_16_32_s2", 16, 32, 32, 2),
            ("conv_32_32_s1", 32, 32, 16, 1),
            ("conv_32_64_s2", 32, 64, 16, 2),
            ("conv_64_64_s1", 64, 64, 8, 1),
        ] {
            let xin = Tensor::randn(&[128, cin, size, size], 0.0, 1.0, 3).unwrap();
            let w = Tensor::randn(&[cout, cin, 3, 3], 0.0, 0.1, 4).unwrap();
            let pc = Conv2d::new(stride, 1);
            let [oh, ow] = pc.output_size(size, size, 3, 3).unwrap();
            let plan = ConvPlan::new(&k, [cout, cin, 3, 3], pc, Mode::Training).unwrap();
            let pc = &plan;
            let gy = Tensor::randn(&[128, cout, oh, ow], 0.0, 1.0, 5).unwrap();
            // dX and dW: each as many multiply-adds as the forward.
            let backward_flops = 4 * (128 * cout * oh * ow * cin * 9) as u64;
            g.throughput(Throughput::Elements(backward_flops));
            g.bench_function(id(&format!("{name}_backward_flops")), |b| {
                b.iter(|| {
                    p.install(|| {
                        k.conv2d_backward(&xin, &w, &gy, pc, ConvBackward::new(true, true))
                            .unwrap()
                    })
                })
            });
            // The same convolution reading relu(scale x + shift), normalised as it is
            // copied (a block's batch norm + ReLU folded in): backward, then forward.
            let scale = vec![1.1f32; cin];
            let shift = vec![0.05f32; cin];
            let affine = [&scale[..], &shift[..]];
            g.bench_function(id(&format!("{name}_normalised_backward_flops")), |b| {
                b.iter(|| {
                    p.install(|| {
                        k.conv2d_backward(
                            &xin,
                            &w,
                            &gy,
                            pc,
                            ConvBackward::new(true, true).normalised(affine),
                        )
                        .unwrap()
                    })
                })
            });
            let packed = k.pack_conv(&plan, &w).unwrap();
            g.throughput(Throughput::Elements(
                2 * (128 * cout * oh * ow * cin * 9) as u64,
            ));
            g.bench_function(id(&format!("{name}_normalised_forward_flops")), |b| {
                b.iter(|| p.install(|| k.conv2d_with_stats(&xin, &packed, Some(affine)).unwrap()))
            });
            if name == "conv_16_16_s1" {
                // A block's first convolution: dX added into the gradient the shortcut
                // already gave its input.
                g.throughput(Throughput::Elements(backward_flops));
                g.bench_function(id(&format!("{name}_backward_accumulating_flops")), |b| {
                    b.iter_batched(
                        || xin.clone(),
                        |acc| {
                            p.install(|| {
                                k.conv2d_backward(
                                    &xin,
                                    &w,
                                    &gy,
                                    pc,
                                    ConvBackward::new(false, true).adding_dx_into(acc),
                                )
                                .unwrap()
                            })
                        },
                        BatchSize::LargeInput,
                    )
                });
            }
        }
        // A 1x1 convolution (an ImageNet bottleneck's 256 -> 64 at 14 x 14, batch 32):
        // dX as one GEMM per image with no col2im, dW with no columns.
        let x1 = Tensor::randn(&[32, 256, 14, 14], 0.0, 1.0, 11).unwrap();
        let w1 = Tensor::randn(&[64, 256, 1, 1], 0.0, 0.1, 12).unwrap();
        let gy1 = Tensor::randn(&[32, 64, 14, 14], 0.0, 1.0, 13).unwrap();
        g.throughput(Throughput::Elements(2 * 2 * 32 * 64 * 256 * 14 * 14));
        g.bench_function(id("conv1x1_256_64_14x14_backward_flops"), |b| {
            let p1 = ConvPlan::new(&k, [64, 256, 1, 1], Conv2d::new(1, 0), Mode::Training).unwrap();
            b.iter(|| {
                p.install(|| {
                    k.conv2d_backward(&x1, &w1, &gy1, &p1, ConvBackward::new(true, true))
                        .unwrap()
                })
            })
        });
    }
    g.finish();
}

fn train_step_bench(c: &mut Criterion) {
    let k = active();
    let mut g = c.benchmark_group(format!("train_step/{}", k.isa()));
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    let batch = 128;
    g.throughput(Throughput::Elements(batch as u64));
    let x = Tensor::randn(&[batch, 3, 32, 32], 0.0, 1.0, 1).unwrap();
    let targets: Vec<usize> = (0..batch).map(|i| i % 10).collect();
    for threads in thread_counts() {
        let p = pool(threads);
        let mut model = ResNet::new(Arch::Cifar { depth: 20 }, 10, 1).unwrap();
        let config = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            ..Default::default()
        };
        let mut sgd = Sgd::new(config, model.parameters_mut().len()).unwrap();
        g.bench_function(
            BenchmarkId::new("resnet20_batch128_images", format!("t{threads}")),
            |b| {
                b.iter(|| {
                    p.install(|| {
                        train_step(
                            &mut model,
                            &mut sgd,
                            k,
                            x.clone(),
                            &targets,
                            Freeze::None,
                            0.0,
                        )
                        .unwrap()
                    })
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, backward_kernels, train_step_bench);
criterion_main!(benches);
