//! Convolution forward, in every ISA tier this CPU has, by the plan's own route and by
//! every other NCHW forward route that can run the shape (forced), equals the direct
//! convolution (`reference::conv2d`, in `f64`) over random channels, sizes, kernels,
//! strides, padding, batch and epilogues, and over every distinct layer shape of
//! ResNet-18 and ResNet-50 at a small spatial size. `conv_routes.rs` forces each route
//! on shapes made for it, so none is covered by chance.
//!
//! Tolerance: `1e-5 * (|bias| + sum |w x|) + 1e-6` per output, plus the residual's
//! magnitude when one is added (see `gemm_matches_reference.rs` for why).

mod common;

use common::{close, fail, prop, Check, CheckResult};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tensor::{
    fold_batch_norm, reference, Conv2d, ConvPlan, ConvWeights, DirectForm, Epilogue, Forward,
    Kernels, Layout, Mode, Pool2d, StatsSink, Tensor,
};

/// `w` packed for its layer's inference plan in NCHW (the ladder's routes).
fn packed(kern: &Kernels, w: &Tensor, p: Conv2d) -> tensor::Result<ConvWeights> {
    let plan = ConvPlan::new(kern, w.dims4("test")?, p, Mode::Inference)?;
    kern.pack_conv(&plan, w)
}

const CHECKS: &[(&str, Check)] = &[
    ("conv2d_equals_direct_convolution", check_random),
    (
        "conv2d_every_resnet18_and_resnet50_layer",
        check_resnet_layers,
    ),
    (
        "conv2d_with_folded_batch_norm_equals_conv_then_bn",
        check_bn_folding,
    ),
    (
        "conv2d_at_batch_1_split_across_threads",
        check_batch_1_large,
    ),
    (
        "conv2d_strided_with_rows_of_whole_vectors",
        check_strided_whole_rows,
    ),
    (
        "conv2d_with_stats_equals_conv2d_then_channel_stats",
        check_with_stats,
    ),
    ("conv2d_rejects_bad_shapes", check_errors),
    ("blocked_conv2d_equals_direct_convolution", check_blocked),
];

#[derive(Debug, Clone)]
struct Case {
    n: usize,
    c: usize,
    o: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    epilogue: u8,
    seed: u64,
}

fn case(kern: Kernels) -> impl Strategy<Value = Case> {
    let (mr, _) = kern.gemm_tile();
    // Widths past two vectors: rows of one vector exactly (the direct kernel's multi-row
    // tiles), of several, and ragged ones.
    let max_w = 2 * kern.lanes() + 3;
    (
        1usize..=2,
        1usize..=6,
        1..=3 * mr + 1,
        1usize..=12,
        1usize..=max_w,
        prop::sample::select(vec![1usize, 2, 3, 5, 7]),
    )
        .prop_flat_map(|(n, c, o, h, w, k)| {
            (
                Just((n, c, o, h, w, k)),
                1usize..=3,
                0..=k / 2 + 1,
                0u8..8,
                any::<u64>(),
            )
        })
        .prop_filter(
            "kernel fits the padded input",
            |((_, _, _, h, w, k), _, pad, _, _)| h + 2 * pad >= *k && w + 2 * pad >= *k,
        )
        .prop_map(|((n, c, o, h, w, k), stride, pad, epilogue, seed)| Case {
            n,
            c,
            o,
            h,
            w,
            k,
            stride,
            pad,
            epilogue,
            seed,
        })
}

/// A case's operands and the reference's answer: `pre` before the ReLU (with bias and
/// residual as the case asks), `want` after it if asked, and the tolerance per output.
struct Expected {
    x: Tensor,
    w: Tensor,
    bias: Vec<f32>,
    residual: Tensor,
    with_bias: bool,
    with_residual: bool,
    relu: bool,
    pre: Tensor,
    want: Tensor,
    tol: Vec<f32>,
}

/// `epilogue` bits: 1 bias, 2 residual, 4 ReLU.
fn expected(c: &Case) -> Result<Expected, TestCaseError> {
    let x = Tensor::randn(&[c.n, c.c, c.h, c.w], 0.0, 1.0, c.seed).map_err(fail)?;
    let w = Tensor::randn(&[c.o, c.c, c.k, c.k], 0.0, 0.5, c.seed ^ 1).map_err(fail)?;
    let bias: Vec<f32> = (0..c.o).map(|i| 0.1 * i as f32 - 0.3).collect();
    let with_bias = c.epilogue & 1 != 0;
    let (mut pre, scale) =
        reference::conv2d(&x, &w, with_bias.then_some(&bias[..]), c.stride, c.pad).map_err(fail)?;
    let residual = Tensor::randn(pre.shape(), 0.0, 1.0, c.seed ^ 2).map_err(fail)?;
    let mut tol: Vec<f32> = scale.iter().map(|s| (1e-5 * s + 1e-6) as f32).collect();
    let with_residual = c.epilogue & 2 != 0;
    if with_residual {
        for ((v, r), t) in pre.data_mut().iter_mut().zip(residual.data()).zip(&mut tol) {
            *v += r;
            *t += 1e-6 * r.abs();
        }
    }
    let relu = c.epilogue & 4 != 0;
    let mut want = pre.clone();
    if relu {
        want.data_mut().iter_mut().for_each(|v| *v = v.max(0.0));
    }
    Ok(Expected {
        x,
        w,
        bias,
        residual,
        with_bias,
        with_residual,
        relu,
        pre,
        want,
        tol,
    })
}

/// Runs one convolution both ways and compares.
fn run_case(kern: Kernels, c: &Case) -> Result<(), TestCaseError> {
    let Expected {
        x,
        w,
        bias,
        residual,
        with_bias,
        with_residual,
        relu,
        pre,
        want,
        tol,
    } = expected(c)?;
    let mut steps = Vec::new();
    if with_bias {
        steps.push(Epilogue::Bias(&bias));
    }
    if with_residual {
        steps.push(Epilogue::residual(&residual));
    }
    if relu {
        steps.push(Epilogue::Relu);
    }
    let p = Conv2d::new(c.stride, c.pad);
    let got = kern
        .conv2d(&x, &packed(&kern, &w, p).map_err(fail)?, &steps)
        .map_err(fail)?;
    prop_assert_eq!(got.shape(), want.shape());
    close(&format!("conv2d {c:?}"), got.data(), want.data(), |i| {
        tol[i]
    })?;
    // Every NCHW route that can run this shape, whichever the plan picked.
    let plan =
        ConvPlan::new(&kern, w.dims4("test").map_err(fail)?, p, Mode::Inference).map_err(fail)?;
    // (Winograd, not exact, is checked at its own tolerance in `conv_routes.rs`.)
    for route in Forward::ALL
        .into_iter()
        .filter(|r| !matches!(r, Forward::Blocked | Forward::Winograd))
    {
        let forced = plan.force_forward(route);
        if forced.routes(x.dims4("test").map_err(fail)?).is_err() {
            continue;
        }
        let packed = kern.pack_conv(&forced, &w).map_err(fail)?;
        // NaNs: each route must write every output element.
        let mut y = Tensor::full(want.shape(), f32::NAN).map_err(fail)?;
        kern.conv2d_into(&x, &packed, &steps, &mut y)
            .map_err(fail)?;
        close(
            &format!("conv2d {route} {c:?}"),
            y.data(),
            want.data(),
            |i| tol[i],
        )?;
        // Accumulating into an output that already holds values (first in the order).
        let y0 = Tensor::randn(want.shape(), 0.0, 1.0, c.seed ^ 3).map_err(fail)?;
        let mut y = y0.clone();
        let mut acc_steps = vec![Epilogue::Accumulate];
        acc_steps.extend_from_slice(&steps);
        kern.conv2d_into(&x, &packed, &acc_steps, &mut y)
            .map_err(fail)?;
        let want_acc: Vec<f32> = pre
            .data()
            .iter()
            .zip(y0.data())
            .map(|(p, a)| if relu { (p + a).max(0.0) } else { p + a })
            .collect();
        close(
            &format!("conv2d {route} accumulating {c:?}"),
            y.data(),
            &want_acc,
            |i| tol[i] + 1e-6 * y0.data()[i].abs(),
        )?;
    }
    Ok(())
}

fn check_random(kern: Kernels) -> CheckResult {
    prop(case(kern), |c| run_case(kern, &c))
}

/// Every distinct convolution of ResNet-18 and ResNet-50 (torchvision v1.5): `(in, out,
/// kernel, stride, padding, input size here)`.
const RESNET_LAYERS: &[(usize, usize, usize, usize, usize, usize)] = &[
    (3, 64, 7, 2, 3, 20),     // conv1 (both)
    (64, 64, 3, 1, 1, 9),     // r18 layer1; r50 layer1 3x3
    (64, 128, 3, 2, 1, 9),    // r18 layer2.0 conv1
    (128, 128, 3, 1, 1, 7),   // r18 layer2, r50 layer2 3x3
    (64, 128, 1, 2, 0, 9),    // r18 layer2.0 downsample
    (128, 256, 3, 2, 1, 7),   // r18 layer3.0 conv1
    (256, 256, 3, 1, 1, 5),   // r18 layer3, r50 layer3 3x3
    (128, 256, 1, 2, 0, 7),   // r18 layer3.0 downsample
    (256, 512, 3, 2, 1, 5),   // r18 layer4.0 conv1
    (512, 512, 3, 1, 1, 3),   // r18 layer4, r50 layer4 3x3
    (256, 512, 1, 2, 0, 5),   // r18 layer4.0 downsample
    (64, 64, 1, 1, 0, 9),     // r50 layer1.0 conv1
    (64, 256, 1, 1, 0, 9),    // r50 layer1 conv3 and downsample
    (256, 64, 1, 1, 0, 9),    // r50 layer1 conv1
    (256, 128, 1, 1, 0, 7),   // r50 layer2.0 conv1
    (128, 128, 3, 2, 1, 7),   // r50 layer2.0 conv2 (stride on the 3x3)
    (128, 512, 1, 1, 0, 5),   // r50 layer2 conv3
    (256, 512, 1, 2, 0, 7),   // r50 layer2.0 downsample
    (512, 128, 1, 1, 0, 5),   // r50 layer2 conv1
    (512, 256, 1, 1, 0, 5),   // r50 layer3.0 conv1
    (256, 256, 3, 2, 1, 5),   // r50 layer3.0 conv2
    (256, 1024, 1, 1, 0, 3),  // r50 layer3 conv3
    (512, 1024, 1, 2, 0, 5),  // r50 layer3.0 downsample
    (1024, 256, 1, 1, 0, 3),  // r50 layer3 conv1
    (1024, 512, 1, 1, 0, 3),  // r50 layer4.0 conv1
    (512, 512, 3, 2, 1, 3),   // r50 layer4.0 conv2
    (512, 2048, 1, 1, 0, 2),  // r50 layer4 conv3
    (1024, 2048, 1, 2, 0, 3), // r50 layer4.0 downsample
    (2048, 512, 1, 1, 0, 2),  // r50 layer4 conv1
];

/// Runs `run` on every layer of `RESNET_LAYERS` at batch `n`, each with its own epilogue
/// and seed; an error names the layer.
fn each_resnet_layer(
    n: usize,
    mut run: impl FnMut(&Case) -> Result<(), TestCaseError>,
) -> CheckResult {
    for (i, &(c, o, k, stride, pad, size)) in RESNET_LAYERS.iter().enumerate() {
        let case = Case {
            n,
            c,
            o,
            h: size,
            w: size,
            k,
            stride,
            pad,
            epilogue: (i % 8) as u8,
            seed: i as u64,
        };
        run(&case).map_err(|e| format!("layer {c}->{o} k{k} s{stride} p{pad}: {e}"))?;
    }
    Ok(())
}

fn check_resnet_layers(kern: Kernels) -> CheckResult {
    each_resnet_layer(2, |case| run_case(kern, case))
}

/// The blocked layout's convolution (`conv/nchwc.rs`) against the same reference:
/// channel counts below, at and past a block of lanes and past a group of blocks (so
/// that partial blocks and partial groups occur), every kernel, stride, padding and
/// epilogue of the random cases, and every ResNet layer shape; the layout round trip is
/// exact.
fn run_blocked(kern: Kernels, c: &Case) -> Result<(), TestCaseError> {
    let Expected {
        x,
        w,
        bias,
        residual,
        with_bias,
        with_residual,
        relu,
        want,
        tol,
        ..
    } = expected(c)?;
    let xb = kern.to_blocked(&x).map_err(fail)?;
    let back = kern.from_blocked(&xb).map_err(fail)?;
    prop_assert_eq!(back.data(), x.data(), "layout round trip");
    // Max pooling (exact: the same maxima) and global average pooling in the layout.
    for pool in [
        Pool2d::RESNET_STEM,
        Pool2d::square(2, 2, 0),
        Pool2d::square(3, 1, 1),
        Pool2d::square(3, 2, 1)
            .with_dilation(2)
            .with_ceil_mode(true),
    ] {
        let Ok(pooled) = kern.max_pool2d(&x, &pool) else {
            continue;
        };
        let [n, ch, oh, ow] = pooled.dims4("test").map_err(fail)?;
        let mut got_pool = tensor::BlockedTensor::zeros(&kern, [n, ch, oh, ow]).map_err(fail)?;
        kern.blocked_max_pool2d_into(&xb, &pool, &mut got_pool)
            .map_err(fail)?;
        let got_pool = kern.from_blocked(&got_pool).map_err(fail)?;
        prop_assert_eq!(
            got_pool.data(),
            pooled.data(),
            "max pool {:?} {:?}",
            pool,
            c
        );
    }
    // Average pooling in the layout against the NCHW kernel (the same sums in another
    // order: within a few ulps).
    for pool in [
        tensor::AvgPool2d::resnet_d(2),
        tensor::AvgPool2d::new(Pool2d::square(3, 2, 1).with_ceil_mode(true), true),
        tensor::AvgPool2d::new(Pool2d::square(3, 1, 1), false),
    ] {
        let Ok(pooled) = kern.avg_pool2d(&x, &pool) else {
            continue;
        };
        let [n, ch, oh, ow] = pooled.dims4("test").map_err(fail)?;
        let mut got_pool = tensor::BlockedTensor::zeros(&kern, [n, ch, oh, ow]).map_err(fail)?;
        kern.blocked_avg_pool2d_into(&xb, &pool, &mut got_pool)
            .map_err(fail)?;
        let got_pool = kern.from_blocked(&got_pool).map_err(fail)?;
        close(
            &format!("avg pool {pool:?} {c:?}"),
            got_pool.data(),
            pooled.data(),
            |i| 1e-5 * (1.0 + pooled.data()[i].abs()),
        )?;
    }
    let mean = kern.global_avg_pool(&x).map_err(fail)?;
    let got_mean = kern.blocked_global_avg_pool(&xb).map_err(fail)?;
    prop_assert_eq!(got_mean.shape(), mean.shape());
    close(
        &format!("avg pool {c:?}"),
        got_mean.data(),
        mean.data(),
        |_| 1e-5,
    )?;
    let rb = kern.to_blocked(&residual).map_err(fail)?;
    // Forced: the ladder keeps inputs narrower than a block in NCHW.
    let plan = ConvPlan::new(
        &kern,
        w.dims4("test").map_err(fail)?,
        Conv2d::new(c.stride, c.pad),
        Mode::Inference,
    )
    .and_then(|p| p.in_layout(Layout::Blocked))
    .map_err(fail)?
    .force_forward(Forward::Blocked);
    let wb = kern.pack_conv(&plan, &w).map_err(fail)?;
    let y = kern
        .blocked_conv2d(
            &xb,
            &wb,
            &blocked_steps(
                with_bias.then_some(&bias[..]),
                with_residual.then_some(&rb),
                relu,
            ),
        )
        .map_err(fail)?;
    let got = kern.from_blocked(&y).map_err(fail)?;
    prop_assert_eq!(got.shape(), want.shape());
    close(&format!("blocked {c:?}"), got.data(), want.data(), |i| {
        tol[i]
    })
}

/// A blocked convolution's epilogue: bias, residual, then ReLU, each if given.
fn blocked_steps<'a>(
    bias: Option<&'a [f32]>,
    residual: Option<&'a tensor::BlockedTensor>,
    relu: bool,
) -> Vec<Epilogue<'a>> {
    let mut steps: Vec<Epilogue> = bias.map(Epilogue::Bias).into_iter().collect();
    steps.extend(residual.map(Epilogue::residual_blocked));
    if relu {
        steps.push(Epilogue::Relu);
    }
    steps
}

fn check_blocked(kern: Kernels) -> CheckResult {
    let l = kern.lanes();
    // Up to a little past two groups of blocks (4 blocks of 16 on AVX-512).
    let channels = prop::sample::select(vec![1, l - 1, l, l + 1, 3 * l, 4 * l + 3, 9 * l]);
    let cases =
        (case(kern), channels.clone(), channels).prop_map(|(c, ci, co)| Case { c: ci, o: co, ..c });
    prop(cases, |c| run_blocked(kern, &c))?;
    each_resnet_layer(1, |case| run_blocked(kern, case))
}

/// Batch 1 with at least 2^16 outputs: each algorithm splits one image across the
/// threads (the tiles, and the planar route's copy-out by channel).
fn check_batch_1_large(kern: Kernels) -> CheckResult {
    // (c, o, k, stride, pad, size): a stem (planar route), a 3x3 on whole-vector rows,
    // a 3x3 on GEMM.
    let layers = [
        (3, 64, 7, 2, 3, 64),
        (32, 64, 3, 1, 1, 32),
        (16, 128, 3, 1, 1, 24),
    ];
    for (i, &(c, o, k, stride, pad, size)) in layers.iter().enumerate() {
        for epilogue in [0u8, 7] {
            let case = Case {
                n: 1,
                c,
                o,
                h: size,
                w: size,
                k,
                stride,
                pad,
                epilogue,
                seed: 100 + i as u64,
            };
            run_case(kern, &case).map_err(|e| format!("batch 1, {c}->{o} k{k} s{stride}: {e}"))?;
        }
    }
    Ok(())
}

/// Strided convolutions whose output rows are one or two whole vectors: the direct
/// kernel reads their phase planes like a padded image and writes straight into the
/// output (the random cases above rarely land on these widths).
fn check_strided_whole_rows(kern: Kernels) -> CheckResult {
    let l = kern.lanes();
    let strategy = (
        (1usize..=2, 1usize..=6, 1usize..=17, 1usize..=8),
        (2usize..=3, prop::sample::select(vec![1usize, 2, 3, 5, 7])),
        prop::sample::select(vec![l, 2 * l]),
        (0u8..8, any::<u64>()),
    )
        .prop_flat_map(|(shape, (stride, k), ow, rest)| {
            (Just((shape, stride, k, ow, rest)), 0..=k / 2 + 1, 0..stride)
        })
        .prop_filter_map(
            "a width that gives `ow`",
            |(((n, c, o, h), stride, k, ow, (epilogue, seed)), pad, extra)| {
                // `ow = (w + 2 pad - k) / stride + 1` for every `extra < stride`.
                let w = ((ow - 1) * stride + k + extra).checked_sub(2 * pad)?;
                (w > 0 && h + 2 * pad >= k).then_some(Case {
                    n,
                    c,
                    o,
                    h,
                    w,
                    k,
                    stride,
                    pad,
                    epilogue,
                    seed,
                })
            },
        );
    prop(strategy, |c| run_case(kern, &c))
}

fn check_bn_folding(kern: Kernels) -> CheckResult {
    let strategy = (1usize..=5, 1usize..=12, 1usize..=9, any::<u64>());
    prop(strategy, |(c, o, size, seed)| {
        let x = Tensor::randn(&[2, c, size, size], 0.0, 1.0, seed).map_err(fail)?;
        let w = Tensor::randn(&[o, c, 3, 3], 0.0, 0.5, seed ^ 1).map_err(fail)?;
        let gamma: Vec<f32> = (0..o).map(|i| 0.5 + 0.1 * i as f32).collect();
        let beta: Vec<f32> = (0..o).map(|i| 0.2 - 0.05 * i as f32).collect();
        let mean: Vec<f32> = (0..o).map(|i| 0.3 * (i as f32).sin()).collect();
        let var: Vec<f32> = (0..o).map(|i| 0.5 + 0.2 * (i as f32).cos().abs()).collect();
        let eps = 1e-5;
        // Unfused: conv, then BN as scale and shift, then ReLU.
        let plain = kern
            .conv2d(
                &x,
                &packed(&kern, &w, Conv2d::new(1, 1)).map_err(fail)?,
                &[],
            )
            .map_err(fail)?;
        let scale: Vec<f32> = (0..o).map(|i| gamma[i] / (var[i] + eps).sqrt()).collect();
        let shift: Vec<f32> = (0..o).map(|i| beta[i] - mean[i] * scale[i]).collect();
        let want = kern
            .scale_shift(&plain, &scale, &shift, &[Epilogue::Relu])
            .map_err(fail)?;
        // Fused: folded weights and bias, ReLU in the epilogue.
        let (wf, bf) = fold_batch_norm(&w, None, &gamma, &beta, &mean, &var, eps).map_err(fail)?;
        let packed = packed(&kern, &wf, Conv2d::new(1, 1)).map_err(fail)?;
        let got = kern
            .conv2d(&x, &packed, &[Epilogue::Bias(&bf), Epilogue::Relu])
            .map_err(fail)?;
        let (_, err_scale) = reference::conv2d(&x, &w, None, 1, 1).map_err(fail)?;
        close("folded conv+bn+relu", got.data(), want.data(), |i| {
            let ch = (i / (size * size)) % o;
            2e-5 * (err_scale[i] as f32 * scale[ch].abs() + shift[ch].abs()) + 1e-5
        })
    })
}

/// The convolution with its output's batch statistics: the same output as `conv2d` to
/// the bit, and the statistics of `channel_stats` on it (mean within `1e-6` of the
/// output's scale, variance within `1e-5` relative: both combine f32 plane sums in f64,
/// in different orders), batches large enough to split over threads included.
fn check_with_stats(kern: Kernels) -> CheckResult {
    let strategy = (case(kern), prop::sample::select(vec![1usize, 3, 8]));
    prop(strategy, |(c, n)| {
        let x = Tensor::randn(&[n, c.c, c.h, c.w], 0.3, 1.0, c.seed).map_err(fail)?;
        let w = Tensor::randn(&[c.o, c.c, c.k, c.k], 0.1, 0.5, c.seed ^ 1).map_err(fail)?;
        let packed = packed(&kern, &w, Conv2d::new(c.stride, c.pad)).map_err(fail)?;
        let want = kern.conv2d(&x, &packed, &[]).map_err(fail)?;
        let (got, stats) = kern.conv2d_with_stats(&x, &packed, None).map_err(fail)?;
        close("output", got.data(), want.data(), |_| 0.0)?;
        let plain = kern.channel_stats(&want).map_err(fail)?;
        prop_assert_eq!(stats.count, plain.count);
        let scale = want.data().iter().fold(0.0f32, |m, v| m.max(v.abs()));
        close("mean", &stats.mean, &plain.mean, |_| 1e-6 * scale + 1e-7)?;
        close("var", &stats.var, &plain.var, |i| {
            1e-5 * plain.var[i] + 1e-7
        })?;
        // The same step after others: the statistics are the final output's.
        let bias: Vec<f32> = (0..c.o).map(|i| i as f32 * 0.3 - 0.5).collect();
        let sink = StatsSink::new();
        let steps = [
            Epilogue::Bias(&bias),
            Epilogue::Relu,
            Epilogue::Statistics(&sink),
        ];
        let got = kern.conv2d(&x, &packed, &steps).map_err(fail)?;
        let want = kern
            .conv2d(&x, &packed, &[Epilogue::Bias(&bias), Epilogue::Relu])
            .map_err(fail)?;
        close(
            "output after bias and ReLU",
            got.data(),
            want.data(),
            |_| 0.0,
        )?;
        let stats = sink.take().expect("the step filled its sink");
        let plain = kern.channel_stats(&want).map_err(fail)?;
        let scale = want.data().iter().fold(0.0f32, |m, v| m.max(v.abs()));
        close("mean after bias and ReLU", &stats.mean, &plain.mean, |_| {
            1e-6 * scale + 1e-7
        })?;
        close("var after bias and ReLU", &stats.var, &plain.var, |i| {
            1e-5 * plain.var[i] + 1e-7
        })
    })
}

fn check_errors(kern: Kernels) -> CheckResult {
    let e = |e: tensor::TensorError| e.to_string();
    let zeros = |shape: &[usize]| Tensor::zeros(shape).map_err(e);
    let x = zeros(&[1, 3, 8, 8])?;
    let same = Conv2d::new(1, 1);
    let w = packed(&kern, &zeros(&[4, 2, 3, 3])?, same).map_err(e)?;
    let w3 = packed(&kern, &zeros(&[4, 3, 3, 3])?, same).map_err(e)?;
    let wrong_res = zeros(&[1, 4, 7, 8])?;
    let xb = kern.to_blocked(&x).map_err(e)?;
    let one = kern.to_blocked(&zeros(&[1, 1, 1, 1])?).map_err(e)?;
    let wb = |shape: &[usize], p: Conv2d| -> Result<_, String> {
        let plan = ConvPlan::new(
            &kern,
            [shape[0], shape[1], shape[2], shape[3]],
            p,
            Mode::Inference,
        )
        .and_then(|p| p.in_layout(Layout::Blocked))
        .map_err(e)?
        .force_forward(Forward::Blocked);
        kern.pack_conv(&plan, &zeros(shape)?).map_err(e)
    };
    let (wb3, wb2) = (wb(&[4, 3, 3, 3], same)?, wb(&[4, 2, 3, 3], same)?);
    let tall = wb(&[4, 1, 2, 1], Conv2d::new(1 << 62, 1 << 60))?;
    let wrong_blocked = kern.to_blocked(&wrong_res).map_err(e)?;
    let plan3 = *w3.plan();
    let input = [1, 3, 8, 8];
    let sink = StatsSink::new();
    let stats = [Epilogue::Statistics(&sink)];
    let cases = [
        // Statistics: last, NCHW convolutions only (not a GEMM, not the blocked layout),
        // and not of an empty output.
        kern.conv2d(&x, &w3, &[Epilogue::Statistics(&sink), Epilogue::Relu])
            .is_err(),
        kern.blocked_conv2d(&xb, &wb3, &stats).is_err(),
        kern.conv2d(&zeros(&[0, 3, 8, 8])?, &w3, &stats).is_err(),
        // The blocked layout: channels, residual shape, bias length, and a padding and
        // stride whose padded sizes overflow (a 1 x 1 output, every tap in the padding).
        kern.blocked_conv2d(&xb, &wb2, &[]).is_err(),
        kern.blocked_conv2d(&xb, &wb3, &[Epilogue::residual_blocked(&wrong_blocked)])
            .is_err(),
        kern.blocked_conv2d(&xb, &wb3, &[Epilogue::Bias(&[0.0; 3])])
            .is_err(),
        kern.blocked_conv2d(&one, &tall, &[]).is_err(),
        // An NCHW plan run in the blocked layout, and a blocked one in NCHW.
        kern.blocked_conv2d(&xb, &w3, &[]).is_err(),
        // Epilogues a route cannot run: ReLU before the residual, and Accumulate with a
        // residual, in the blocked kernel; an NCHW residual there; a blocked one in
        // NCHW; Accumulate not first.
        kern.blocked_conv2d(&xb, &wb3, &[Epilogue::Relu, Epilogue::Bias(&[0.0; 4])])
            .is_err(),
        kern.blocked_conv2d(
            &xb,
            &wb3,
            &[
                Epilogue::Accumulate,
                Epilogue::residual_blocked(&kern.to_blocked(&zeros(&[1, 4, 8, 8])?).map_err(e)?),
            ],
        )
        .is_err(),
        kern.blocked_conv2d(&xb, &wb3, &[Epilogue::residual(&zeros(&[1, 4, 8, 8])?)])
            .is_err(),
        kern.conv2d(
            &x,
            &w3,
            &[Epilogue::residual_blocked(
                &kern.to_blocked(&zeros(&[1, 4, 8, 8])?).map_err(e)?,
            )],
        )
        .is_err(),
        kern.conv2d(&x, &w3, &[Epilogue::Relu, Epilogue::Accumulate])
            .is_err(),
        kern.conv2d(&x, &wb3, &[]).is_err(),
        kern.conv2d(&x, &w, &[]).is_err(),
        packed(&kern, &zeros(&[4, 3, 3, 3])?, Conv2d::new(0, 1)).is_err(),
        kern.conv2d(&x, &w3, &[Epilogue::residual(&wrong_res)])
            .is_err(),
        kern.conv2d(&x, &w3, &[Epilogue::Bias(&[0.0; 3])]).is_err(),
        kern.conv2d(
            &zeros(&[1, 3, 1, 1])?,
            &packed(&kern, &zeros(&[4, 3, 3, 3])?, Conv2d::new(1, 0)).map_err(e)?,
            &[],
        )
        .is_err(),
        packed(&kern, &zeros(&[4, 3, 3])?, same).is_err(),
        // Weights of another shape than the plan's.
        kern.pack_conv(&plan3, &zeros(&[4, 3, 5, 5])?).is_err(),
        // Statistics of an output without elements, and of a mismatched convolution.
        kern.conv2d_with_stats(&zeros(&[0, 3, 8, 8])?, &w3, None)
            .is_err(),
        kern.conv2d_with_stats(&x, &w, None).is_err(),
        // Forced routes that cannot run the layer: the GEMM on the image for a 3x3, the
        // padded direct form for stride 2, the masked form for rows of whole vectors,
        // the direct kernel for a 1x1, the blocked kernel in an NCHW plan.
        plan3
            .force_forward(Forward::GemmImage)
            .routes(input)
            .is_err(),
        ConvPlan::new(&kern, [4, 3, 3, 3], Conv2d::new(2, 1), Mode::Inference)
            .map_err(e)?
            .force_forward(Forward::Direct(DirectForm::Padded))
            .routes(input)
            .is_err(),
        plan3
            .force_forward(Forward::Direct(DirectForm::Masked))
            .routes([1, 3, 8, 8 * kern.lanes()])
            .is_err(),
        ConvPlan::new(&kern, [4, 3, 1, 1], Conv2d::new(1, 0), Mode::Inference)
            .map_err(e)?
            .force_forward(Forward::Direct(DirectForm::Planar))
            .routes(input)
            .is_err(),
        plan3.force_forward(Forward::Blocked).routes(input).is_err(),
        // A training plan in the blocked layout.
        ConvPlan::new(&kern, [4, 3, 3, 3], same, Mode::Training)
            .and_then(|p| p.in_layout(Layout::Blocked))
            .is_err(),
    ];
    if let Some(i) = cases.iter().position(|rejected| !rejected) {
        return Err(format!("bad input {i} was accepted"));
    }
    // A plan made for another tier's kernels.
    let generic = Kernels::for_isa(tensor::Isa::Generic).map_err(|e| e.to_string())?;
    if generic.isa() != kern.isa() {
        let other = ConvPlan::new(&generic, [4, 3, 3, 3], same, Mode::Inference).map_err(e)?;
        if kern.pack_conv(&other, &zeros(&[4, 3, 3, 3])?).is_ok() {
            return Err("a plan of another tier was accepted".into());
        }
    }
    Ok(())
}

fn main() {
    common::run("conv_matches_reference", CHECKS);
}
