//! The backward kernels, in every ISA tier this CPU has, equal the naive backward
//! passes of `reference` (in `f64`) over random shapes, ragged tails included.
//!
//! Tolerances: ReLU and max pool move values without arithmetic, so they must match
//! exactly (max pool adds overlapping windows in the same order). Convolution and
//! linear allow `1e-5` of the per-element error scale (the same backward run on the
//! absolute values), as the forward suites do. Batch norm allows `1e-4` of the scale of
//! its three terms, because its mean and variance come from the f32 forward.

mod common;

use common::{close, fail, prop, Check, CheckResult};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tensor::{
    reference, AvgPool2d, BatchNormBackward, BnGradIn, Conv2d, ConvBackward, ConvPlan, Epilogue,
    Forward, InputGrad, Kernels, Layout, Mode, Pool2d, Tensor, WeightGrad,
};

const CHECKS: &[(&str, Check)] = &[
    ("relu_backward_equals_reference", check_relu),
    ("batch_norm_backward_equals_reference", check_batch_norm),
    (
        "batch_norm_relu_backward_equals_relu_then_batch_norm",
        check_batch_norm_relu,
    ),
    (
        "batch_norm_add_relu_backward_equals_relu_then_batch_norm",
        check_batch_norm_add_relu,
    ),
    ("max_pool2d_backward_equals_reference", check_max_pool),
    ("global_avg_pool_backward_spreads_evenly", check_avg_pool),
    ("avg_pool2d_backward_equals_reference", check_avg_pool2d),
    ("conv2d_backward_equals_reference", check_conv),
    ("conv2d_backward_resnet20_layers", check_conv_resnet20),
    (
        "conv2d_backward_wide_input_gemm_route",
        check_conv_wide_input,
    ),
    ("conv2d_dw_in_row_batches", check_conv_dw_in_row_batches),
    (
        "conv2d_normalised_equals_scale_shift_relu_then_conv2d",
        check_conv_normalised,
    ),
    (
        "conv2d_of_empty_images_with_padding_is_zero",
        check_conv_empty_images,
    ),
    ("linear_backward_equals_reference", check_linear),
    ("backward_rejects_bad_shapes", check_errors),
];

fn abs(t: &Tensor) -> Tensor {
    let mut a = t.clone();
    a.data_mut().iter_mut().for_each(|v| *v = v.abs());
    a
}

fn check_relu(k: Kernels) -> CheckResult {
    prop((0usize..200, any::<u64>()), |(n, seed)| {
        // Every fifth case is long enough for several chunks and threads (not under
        // Miri, which would take minutes over one).
        let n = if seed % 5 == 0 && !cfg!(miri) {
            n * 1500
        } else {
            n
        };
        let dy = Tensor::randn(&[n], 0.0, 1.0, seed).map_err(fail)?;
        let mut y = Tensor::randn(&[n], 0.0, 1.0, seed ^ 7).map_err(fail)?;
        // Exact zeros and NaNs must select 0, like the reference.
        for (i, v) in y.data_mut().iter_mut().enumerate() {
            match i % 7 {
                0 => *v = 0.0,
                1 => *v = -0.0,
                2 => *v = f32::NAN,
                _ => {}
            }
        }
        let got = k.relu_backward(&dy, &y).map_err(fail)?;
        let want = reference::relu_backward(&dy, &y).map_err(fail)?;
        close("relu_backward", got.data(), want.data(), |_| 0.0)?;
        let mut in_place = dy.clone();
        k.relu_backward_assign(&mut in_place, &y).map_err(fail)?;
        close("relu_backward_assign", in_place.data(), want.data(), |_| {
            0.0
        })
    })
}

fn check_batch_norm(k: Kernels) -> CheckResult {
    let strategy = (1usize..=3, 1usize..=5, 1usize..=9, 1usize..=9, any::<u64>());
    prop(strategy, |(n, c, h, w, seed)| {
        if n * h * w < 2 {
            return Ok(());
        }
        let x = Tensor::randn(&[n, c, h, w], 0.7, 2.0, seed).map_err(fail)?;
        let dy = Tensor::randn(&[n, c, h, w], 0.1, 1.0, seed ^ 3).map_err(fail)?;
        let gamma: Vec<f32> = (0..c).map(|i| 0.5 + 0.3 * i as f32).collect();
        let eps = 1e-5;
        let stats = k.channel_stats(&x).map_err(fail)?;
        let inv_std: Vec<f32> = stats.var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let got = k
            .batch_norm_backward(
                &x,
                BnGradIn::Borrowed(&dy),
                &BatchNormBackward::batch(&stats.mean, &inv_std, &gamma),
            )
            .map_err(fail)?;
        let (dx, dgamma, dbeta) =
            reference::batch_norm_backward(&x, &dy, &gamma, eps).map_err(fail)?;
        let plane = h * w;
        let m = (n * plane) as f32;
        let ch = |i: usize| (i / plane) % c;
        let mean_abs_dy: Vec<f32> = (0..c)
            .map(|j| {
                dy.data()
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| ch(*i) == j)
                    .map(|(_, v)| v.abs())
                    .sum::<f32>()
                    / m
            })
            .collect();
        close("dx", got.dx.data(), dx.data(), |i| {
            let j = ch(i);
            let xh = ((x.data()[i] - stats.mean[j]) * inv_std[j]).abs();
            let scale =
                gamma[j] * inv_std[j] * (dy.data()[i].abs() + mean_abs_dy[j] * (1.0 + 4.0 * xh));
            1e-4 * scale + 1e-5
        })?;
        close("dbeta", &got.dbeta, &dbeta, |j| {
            1e-5 * mean_abs_dy[j] * m + 1e-5
        })?;
        close("dgamma", &got.dgamma, &dgamma, |j| {
            1e-4 * mean_abs_dy[j] * m * 4.0 + 1e-5
        })?;
        // Writing dx over dy's buffer is the same arithmetic: equal to the last bit.
        let reused = k
            .batch_norm_backward(
                &x,
                BnGradIn::Owned(dy.clone()),
                &BatchNormBackward::batch(&stats.mean, &inv_std, &gamma),
            )
            .map_err(fail)?;
        close("dx (reusing dy)", reused.dx.data(), got.dx.data(), |_| 0.0)?;
        close("dgamma (reusing dy)", &reused.dgamma, &got.dgamma, |_| 0.0)?;
        close("dbeta (reusing dy)", &reused.dbeta, &got.dbeta, |_| 0.0)
    })
}

/// The fused BN + ReLU backward (the ReLU's mask recomputed from `x`) against the
/// unfused chain it replaces: ReLU's backward on the forward's output, then batch
/// norm's. Same arithmetic, so equal to the last bit, with batch or fixed statistics,
/// into a new tensor or over `dy`'s buffer.
fn check_batch_norm_relu(k: Kernels) -> CheckResult {
    let strategy = (1usize..=3, 1usize..=5, 1usize..=9, 1usize..=9, any::<u64>());
    prop(strategy, |(n, c, h, w, seed)| {
        if n * h * w < 2 {
            return Ok(());
        }
        let x = Tensor::randn(&[n, c, h, w], 0.7, 2.0, seed).map_err(fail)?;
        let dy = Tensor::randn(&[n, c, h, w], 0.1, 1.0, seed ^ 3).map_err(fail)?;
        // A negative gamma flips which side of the mean the ReLU keeps.
        let gamma: Vec<f32> = (0..c)
            .map(|i| {
                if i % 3 == 2 {
                    -0.7
                } else {
                    0.5 + 0.3 * i as f32
                }
            })
            .collect();
        let beta: Vec<f32> = (0..c).map(|i| 0.4 * i as f32 - 0.3).collect();
        let stats = k.channel_stats(&x).map_err(fail)?;
        let inv_std: Vec<f32> = stats.var.iter().map(|v| 1.0 / (v + 1e-5).sqrt()).collect();
        let scale: Vec<f32> = gamma.iter().zip(&inv_std).map(|(g, s)| g * s).collect();
        let shift: Vec<f32> = (0..c).map(|i| beta[i] - stats.mean[i] * scale[i]).collect();
        let y = k
            .scale_shift(&x, &scale, &shift, &[Epilogue::Relu])
            .map_err(fail)?;
        if y.data().iter().all(|&v| v > 0.0) {
            return Err(TestCaseError::fail("the case masks nothing"));
        }
        let masked = k.relu_backward(&dy, &y).map_err(fail)?;
        let affine = [&scale[..], &shift[..]];
        for batch_stats in [true, false] {
            let want = if batch_stats {
                k.batch_norm_backward(
                    &x,
                    BnGradIn::Borrowed(&masked),
                    &BatchNormBackward::batch(&stats.mean, &inv_std, &gamma),
                )
            } else {
                k.batch_norm_backward(
                    &x,
                    BnGradIn::Borrowed(&masked),
                    &BatchNormBackward::fixed(&stats.mean, &inv_std, &gamma),
                )
            }
            .map_err(fail)?;
            let (mean, istd) = (&stats.mean, &inv_std);
            let got = k
                .batch_norm_backward(
                    &x,
                    BnGradIn::Borrowed(&dy),
                    &BatchNormBackward::new(mean, istd, &gamma, batch_stats).with_relu(affine),
                )
                .map_err(fail)?;
            let reused = k
                .batch_norm_backward(
                    &x,
                    BnGradIn::Owned(dy.clone()),
                    &BatchNormBackward::new(mean, istd, &gamma, batch_stats).with_relu(affine),
                )
                .map_err(fail)?;
            for (how, g) in [("new tensor", &got), ("reusing dy", &reused)] {
                let what = |t: &str| format!("{t} ({how}, batch stats {batch_stats})");
                close(&what("dx"), g.dx.data(), want.dx.data(), |_| 0.0)?;
                close(&what("dgamma"), &g.dgamma, &want.dgamma, |_| 0.0)?;
                close(&what("dbeta"), &g.dbeta, &want.dbeta, |_| 0.0)?;
            }
        }
        Ok(())
    })
}

/// The backward of `relu(batch_norm(x) + residual)` (the mask applied to each plane
/// just before its sums) against the chain it replaces: ReLU's backward on the output,
/// then batch norm's. Equal to the last bit, the masked gradient included; small cases
/// and one large enough for the threaded passes.
fn check_batch_norm_add_relu(k: Kernels) -> CheckResult {
    let run = |n: usize, c: usize, h: usize, w: usize, seed: u64| -> Result<(), TestCaseError> {
        let shape = [n, c, h, w];
        let x = Tensor::randn(&shape, 0.7, 2.0, seed).map_err(fail)?;
        let residual = Tensor::randn(&shape, -0.2, 1.0, seed ^ 1).map_err(fail)?;
        let dy = Tensor::randn(&shape, 0.1, 1.0, seed ^ 3).map_err(fail)?;
        let gamma: Vec<f32> = (0..c).map(|i| 0.5 - 0.3 * i as f32).collect();
        let beta: Vec<f32> = (0..c).map(|i| 0.4 * i as f32 - 0.3).collect();
        let stats = k.channel_stats(&x).map_err(fail)?;
        let inv_std: Vec<f32> = stats.var.iter().map(|v| 1.0 / (v + 1e-5).sqrt()).collect();
        let scale: Vec<f32> = gamma.iter().zip(&inv_std).map(|(g, s)| g * s).collect();
        let shift: Vec<f32> = (0..c).map(|i| beta[i] - stats.mean[i] * scale[i]).collect();
        let out = k
            .scale_shift(
                &x,
                &scale,
                &shift,
                &[Epilogue::residual(&residual), Epilogue::Relu],
            )
            .map_err(fail)?;
        if out.data().iter().all(|&v| v > 0.0) && n * h * w > 64 {
            // Only a tiny random case may leave every output positive.
            return Err(TestCaseError::fail("the case masks nothing"));
        }
        let masked = k.relu_backward(&dy, &out).map_err(fail)?;
        let (mean, istd) = (&stats.mean, &inv_std);
        let want = k
            .batch_norm_backward(
                &x,
                BnGradIn::Borrowed(&masked),
                &BatchNormBackward::batch(mean, istd, &gamma),
            )
            .map_err(fail)?;
        let mut got = k
            .batch_norm_backward(
                &x,
                BnGradIn::MaskedBy(dy, &out),
                &BatchNormBackward::batch(mean, istd, &gamma),
            )
            .map_err(fail)?;
        let got_masked = got.masked_dy.take().ok_or_else(|| fail("no masked dy"))?;
        let at = format!("{shape:?}");
        close(
            &format!("masked dy {at}"),
            got_masked.data(),
            masked.data(),
            |_| 0.0,
        )?;
        close(&format!("dx {at}"), got.dx.data(), want.dx.data(), |_| 0.0)?;
        close(&format!("dgamma {at}"), &got.dgamma, &want.dgamma, |_| 0.0)?;
        close(&format!("dbeta {at}"), &got.dbeta, &want.dbeta, |_| 0.0)
    };
    // A case large enough for every thread (not under Miri: minutes).
    if !cfg!(miri) {
        run(2, 3, 128, 128, 11).map_err(|e| e.to_string())?;
    }
    let strategy = (1usize..=3, 1usize..=5, 1usize..=9, 1usize..=9, any::<u64>());
    prop(strategy, |(n, c, h, w, seed)| {
        if n * h * w < 2 {
            return Ok(());
        }
        run(n, c, h, w, seed)
    })
}

fn pool_case() -> impl Strategy<Value = (usize, usize, usize, Pool2d, u64)> {
    (
        1usize..=3,
        1usize..=12,
        1usize..=12,
        1usize..=4,
        1usize..=3,
        any::<u64>(),
    )
        .prop_flat_map(|(c, h, w, kernel, stride, seed)| {
            (Just((c, h, w, kernel, stride, seed)), 0..=kernel / 2)
        })
        .prop_filter("window fits", |((_, h, w, k, _, _), p)| {
            h + 2 * p >= *k && w + 2 * p >= *k
        })
        .prop_map(|((c, h, w, k, s, seed), p)| (c, h, w, Pool2d::square(k, s, p), seed))
}

fn check_max_pool(k: Kernels) -> CheckResult {
    prop((pool_case(), 1usize..=3), |((c, h, w, pool, seed), d)| {
        let pool = pool.with_dilation(d);
        if pool.output_size(h, w).is_err() {
            return Ok(());
        }
        let mut x = Tensor::randn(&[2, c, h, w], 0.0, 1.0, seed).map_err(fail)?;
        // Ties: the first maximum in window order must win, as in PyTorch.
        for v in x.data_mut().iter_mut().step_by(3) {
            *v = 0.5;
        }
        // NaNs in some cases: the last NaN of a window wins.
        if seed % 3 == 0 {
            for v in x.data_mut().iter_mut().skip(seed as usize % 7).step_by(11) {
                *v = f32::NAN;
            }
        }
        let [oh, ow] = pool.output_size(h, w).map_err(fail)?;
        let dy = Tensor::randn(&[2, c, oh, ow], 0.0, 1.0, seed ^ 5).map_err(fail)?;
        let want = reference::max_pool2d_backward(&x, &dy, &pool).map_err(fail)?;
        let got = k.max_pool2d_backward(&x, &dy, &pool).map_err(fail)?;
        close(
            &format!("max_pool2d_backward {pool:?}"),
            got.data(),
            want.data(),
            |_| 0.0,
        )?;
        // Given the forward's output, the same; and given a wrong one (another input's),
        // still the same: the output only speeds the search up.
        let y = k.max_pool2d(&x, &pool).map_err(fail)?;
        let given = k
            .max_pool2d_backward_given_output(&x, &y, &dy, &pool)
            .map_err(fail)?;
        close(
            &format!("max_pool2d_backward_given_output {pool:?}"),
            given.data(),
            want.data(),
            |_| 0.0,
        )?;
        let wrong = Tensor::randn(y.shape(), 0.0, 1.0, seed ^ 9).map_err(fail)?;
        let given = k
            .max_pool2d_backward_given_output(&x, &wrong, &dy, &pool)
            .map_err(fail)?;
        close(
            &format!("max_pool2d_backward_given_output, unrelated y {pool:?}"),
            given.data(),
            want.data(),
            |_| 0.0,
        )
    })
}

fn check_avg_pool2d(k: Kernels) -> CheckResult {
    prop(
        (pool_case(), any::<bool>(), any::<bool>()),
        |((c, h, w, window, seed), ceil_mode, include_pad)| {
            let pool = AvgPool2d::new(window.with_ceil_mode(ceil_mode), include_pad);
            let [oh, ow] = pool.output_size(h, w).map_err(fail)?;
            let dy = Tensor::randn(&[2, c, oh, ow], 0.0, 1.0, seed ^ 5).map_err(fail)?;
            let got = k
                .avg_pool2d_backward(&dy, [2, c, h, w], &pool)
                .map_err(fail)?;
            let want = reference::avg_pool2d_backward(&dy, [2, c, h, w], &pool).map_err(fail)?;
            // Each input sums at most kernel^2 / stride^2 <= 16 scaled gradients.
            close(
                &format!("avg_pool2d_backward {pool:?}"),
                got.data(),
                want.data(),
                |i| 1e-5 * (1.0 + want.data()[i].abs()),
            )
        },
    )
}

fn check_avg_pool(k: Kernels) -> CheckResult {
    prop(
        (1usize..=3, 1usize..=4, 1usize..=7, 1usize..=7, any::<u64>()),
        |(n, c, h, w, seed)| {
            let dy = Tensor::randn(&[n, c], 0.0, 1.0, seed).map_err(fail)?;
            let got = k
                .global_avg_pool_backward(&dy, [n, c, h, w])
                .map_err(fail)?;
            // The adjoint identity: <dx, x> = <dy, avg_pool(x)> for any x.
            let x = Tensor::randn(&[n, c, h, w], 0.0, 1.0, seed ^ 1).map_err(fail)?;
            let pooled = reference::global_avg_pool(&x).map_err(fail)?;
            let lhs: f64 = got
                .data()
                .iter()
                .zip(x.data())
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            let rhs: f64 = dy
                .data()
                .iter()
                .zip(pooled.data())
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            prop_assert!(
                (lhs - rhs).abs() <= 1e-5 * (1.0 + rhs.abs()),
                "{lhs} vs {rhs}"
            );
            Ok(())
        },
    )
}

#[derive(Debug, Clone)]
struct ConvCase {
    n: usize,
    c: usize,
    o: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    want: u8,
    seed: u64,
}

fn conv_case(k: Kernels) -> impl Strategy<Value = ConvCase> {
    let (mr, _) = k.gemm_tile();
    // Widths past two vectors, so that the weight gradient also reads the padded image
    // in place (rows at least a vector long) with a ragged last vector.
    let max_w = 2 * k.lanes() + 3;
    // Output channels past a GEMM tile, or two and four vectors (the weight gradient's
    // outer-product kernel, which needs a whole number of at least two vectors).
    let l = k.lanes();
    (
        1usize..=4,
        1usize..=5,
        prop_oneof![3 => 1..=2 * mr + 1, 1 => prop::sample::select(vec![2 * l, 4 * l])],
        1usize..=10,
        1usize..=max_w,
        prop::sample::select(vec![1usize, 2, 3, 5]),
    )
        .prop_flat_map(|(n, c, o, h, w, k)| {
            (
                Just((n, c, o, h, w, k)),
                1usize..=3,
                0..=k / 2 + 1,
                1u8..4,
                any::<u64>(),
            )
        })
        .prop_filter("kernel fits", |((_, _, _, h, w, k), _, p, _, _)| {
            h + 2 * p >= *k && w + 2 * p >= *k
        })
        .prop_map(|((n, c, o, h, w, k), stride, pad, want, seed)| ConvCase {
            n,
            c,
            o,
            h,
            w,
            k,
            stride,
            pad,
            want,
            seed,
        })
}

/// The training plan of a layer of `w`'s shape (the ladder's routes).
fn tp(k: &Kernels, w: &Tensor, p: Conv2d) -> ConvPlan {
    let shape = w.dims4("test").expect("4-D weights");
    ConvPlan::new(k, shape, p, Mode::Training).expect("a training plan")
}

fn run_conv(kern: Kernels, c: &ConvCase) -> Result<(), TestCaseError> {
    let x = Tensor::randn(&[c.n, c.c, c.h, c.w], 0.0, 1.0, c.seed).map_err(fail)?;
    let w = Tensor::randn(&[c.o, c.c, c.k, c.k], 0.0, 0.5, c.seed ^ 1).map_err(fail)?;
    let p = Conv2d::new(c.stride, c.pad);
    let [oh, ow] = p.output_size(c.h, c.w, c.k, c.k).map_err(fail)?;
    let dy = Tensor::randn(&[c.n, c.o, oh, ow], 0.0, 1.0, c.seed ^ 2).map_err(fail)?;
    let (want_dx, want_dw) = (c.want & 1 != 0, c.want & 2 != 0);
    let got = kern
        .conv2d_backward(
            &x,
            &w,
            &dy,
            &tp(&kern, &w, p),
            ConvBackward::new(want_dx, want_dw),
        )
        .map_err(fail)?;
    let (dx, dw) = reference::conv2d_backward(&x, &w, &dy, c.stride, c.pad).map_err(fail)?;
    let (sx, sw) =
        reference::conv2d_backward(&abs(&x), &abs(&w), &abs(&dy), c.stride, c.pad).map_err(fail)?;
    prop_assert_eq!(got.dx.is_some(), want_dx);
    prop_assert_eq!(got.dw.is_some(), want_dw);
    if let Some(g) = &got.dx {
        close(&format!("dx {c:?}"), g.data(), dx.data(), |i| {
            1e-5 * sx.data()[i] + 1e-6
        })?;
    }
    if let Some(g) = &got.dw {
        close(&format!("dw {c:?}"), g.data(), dw.data(), |i| {
            1e-5 * sw.data()[i] + 1e-6
        })?;
    }
    if want_dx {
        // Accumulating into another consumer's gradient: that gradient plus dX.
        let acc = Tensor::randn(x.shape(), 0.0, 1.0, c.seed ^ 3).map_err(fail)?;
        let summed = kern
            .conv2d_backward(
                &x,
                &w,
                &dy,
                &tp(&kern, &w, p),
                ConvBackward::new(false, want_dw).adding_dx_into(acc.clone()),
            )
            .map_err(fail)?;
        let sum = summed.dx.ok_or_else(|| TestCaseError::fail("no dx"))?;
        let want: Vec<f32> = dx
            .data()
            .iter()
            .zip(acc.data())
            .map(|(d, a)| d + a)
            .collect();
        close(&format!("dx accumulated {c:?}"), sum.data(), &want, |i| {
            1e-5 * sx.data()[i] + 1e-6 * (1.0 + acc.data()[i].abs())
        })?;
        prop_assert_eq!(summed.dw.is_some(), want_dw);
        if let (Some(a), Some(b)) = (&summed.dw, &got.dw) {
            close(
                &format!("dw with dx accumulated {c:?}"),
                a.data(),
                b.data(),
                |_| 0.0,
            )?;
        }
    }
    Ok(())
}

fn check_conv(k: Kernels) -> CheckResult {
    prop(conv_case(k), |c| run_conv(k, &c))
}

/// Every distinct convolution of the CIFAR ResNets (3x3 stride 1 and 2, and the stem),
/// at batch 3 (images split unevenly over threads), and two wider ones.
fn check_conv_resnet20(k: Kernels) -> CheckResult {
    let layers = [
        (3, 16, 1, 8),
        (16, 16, 1, 8),
        (16, 32, 2, 8),
        (32, 32, 1, 6),
        (32, 64, 2, 6),
        (64, 64, 1, 4),
        // Rows of 17 (a ragged tail on every tier) and 16 (whole vectors on every tier):
        // the direct kernel's planar and whole-vector routes, in the forward and in dX
        // (on AVX-512 the narrower shapes above take its masked and planar routes).
        (16, 16, 1, 17),
        (8, 24, 1, 16),
    ];
    for (i, &(c, o, stride, size)) in layers.iter().enumerate() {
        let case = ConvCase {
            n: 3,
            c,
            o,
            h: size,
            w: size,
            k: 3,
            stride,
            pad: 1,
            want: 3,
            seed: i as u64,
        };
        run_conv(k, &case).map_err(|e| format!("{c}->{o} s{stride}: {e}"))?;
    }
    Ok(())
}

/// More than 64 input channels: the plan then gives dX to the GEMM route
/// (`col2im(W^T dY)`, or `W^T dY` straight into dX for 1x1, stride 1, unpadded), the
/// ImageNet nets' route, which the narrow random cases above reach only through shape
/// fallbacks. 3x3 at stride 1 and 2, 1x1 at stride 1 and 2, ragged sizes, batch 3.
fn check_conv_wide_input(k: Kernels) -> CheckResult {
    let layers = [
        (72, 5, 3, 1, 1, 7),
        (65, 8, 3, 2, 1, 9),
        (80, 3, 1, 1, 0, 6),
        (70, 16, 1, 2, 0, 7),
    ];
    for (i, &(c, o, kk, stride, pad, size)) in layers.iter().enumerate() {
        let case = ConvCase {
            n: 3,
            c,
            o,
            h: size,
            w: size,
            k: kk,
            stride,
            pad,
            want: 3,
            seed: 100 + i as u64,
        };
        run_conv(k, &case).map_err(|e| format!("{c}->{o} {kk}x{kk} s{stride}: {e}"))?;
    }
    Ok(())
}

/// `dW` over images whose output gradient outgrows the outer-product kernel's batch of
/// rows (`DY_BATCH_FLOATS` in `weight_grad.rs`, 2^18 floats: here 32 channels x 64
/// pixels a row, 130 rows an image, read in two batches; and a strided 7x7 layer like
/// ResNet's stem, 64 channels x 112 pixels a row), against the reference.
fn check_conv_dw_in_row_batches(k: Kernels) -> CheckResult {
    let layers = [
        // (n, c, o, h, w, kernel, stride, pad)
        (1, 2, 32, 130, 64, 3, 1, 1),
        (1, 3, 64, 80, 224, 7, 2, 3),
    ];
    for (i, &(n, c, o, h, w, kk, stride, pad)) in layers.iter().enumerate() {
        let case = ConvCase {
            n,
            c,
            o,
            h,
            w,
            k: kk,
            stride,
            pad,
            want: 2,
            seed: 200 + i as u64,
        };
        run_conv(k, &case).map_err(|e| format!("{c}->{o} {kk}x{kk} s{stride} {h}x{w}: {e}"))?;
    }
    Ok(())
}

/// The convolution of a normalised input (batch norm + ReLU fused into the next
/// convolution), forward and backward, equals `scale_shift_relu` followed by the plain
/// convolution exactly: the same kernels on the same values.
fn check_conv_normalised(k: Kernels) -> CheckResult {
    prop(conv_case(k), |c| {
        let x = Tensor::randn(&[c.n, c.c, c.h, c.w], 0.0, 1.0, c.seed).map_err(fail)?;
        let w = Tensor::randn(&[c.o, c.c, c.k, c.k], 0.0, 0.5, c.seed ^ 1).map_err(fail)?;
        // Shifts of both signs, so the ReLU clears some channels' pixels and not others.
        let scale = Tensor::randn(&[c.c], 0.0, 1.0, c.seed ^ 4).map_err(fail)?;
        let shift = Tensor::randn(&[c.c], 0.0, 1.0, c.seed ^ 5).map_err(fail)?;
        let affine = [scale.data(), shift.data()];
        let p = Conv2d::new(c.stride, c.pad);
        let [oh, ow] = p.output_size(c.h, c.w, c.k, c.k).map_err(fail)?;
        let dy = Tensor::randn(&[c.n, c.o, oh, ow], 0.0, 1.0, c.seed ^ 2).map_err(fail)?;
        let y = k
            .scale_shift(&x, scale.data(), shift.data(), &[Epilogue::Relu])
            .map_err(fail)?;
        // The ladder's plan, and Winograd's routes forced where the layer has them (the
        // input normalised as it is copied into the blocked layout, for the forward and
        // for dW).
        let ladder = tp(&k, &w, p);
        let winograd = ladder
            .force_forward(Forward::Winograd)
            .force_input_grad(InputGrad::Winograd)
            .force_weight_grad(WeightGrad::Winograd);
        let input = [c.n, c.c, c.h, c.w];
        // And dW by one GEMM over the images (its input's columns gathered normalised:
        // im2col, or for an unpadded 1x1 layer the subsampled input).
        let gemm_dw = ladder.force_weight_grad(WeightGrad::Gemm);
        let plans = std::iter::once(ladder)
            .chain(winograd.routes(input).is_ok().then_some(winograd))
            .chain(gemm_dw.routes(input).is_ok().then_some(gemm_dw));
        for plan in plans {
            let packed = k.pack_conv(&plan, &w).map_err(fail)?;
            let (want, want_stats) = k.conv2d_with_stats(&y, &packed, None).map_err(fail)?;
            let (got, got_stats) = k
                .conv2d_with_stats(&x, &packed, Some(affine))
                .map_err(fail)?;
            close(&format!("forward {c:?}"), got.data(), want.data(), |_| 0.0)?;
            close(
                &format!("mean {c:?}"),
                &got_stats.mean,
                &want_stats.mean,
                |_| 0.0,
            )?;
            close(
                &format!("var {c:?}"),
                &got_stats.var,
                &want_stats.var,
                |_| 0.0,
            )?;
            let (want_dx, want_dw) = (c.want & 1 != 0, c.want & 2 != 0);
            let want = k
                .conv2d_backward(&y, &w, &dy, &plan, ConvBackward::new(want_dx, want_dw))
                .map_err(fail)?;
            let got = k
                .conv2d_backward(
                    &x,
                    &w,
                    &dy,
                    &plan,
                    ConvBackward::new(want_dx, want_dw).normalised(affine),
                )
                .map_err(fail)?;
            for (name, g, r) in [("dx", &got.dx, &want.dx), ("dw", &got.dw, &want.dw)] {
                prop_assert_eq!(g.is_some(), r.is_some());
                if let (Some(g), Some(r)) = (g, r) {
                    close(&format!("{name} {c:?}"), g.data(), r.data(), |_| 0.0)?;
                }
            }
            // A scale or shift of the wrong length is an error, not a panic.
            let short = &shift.data()[..c.c - 1];
            prop_assert!(k
                .conv2d_with_stats(&x, &packed, Some([scale.data(), short]))
                .is_err());
            prop_assert!(k
                .conv2d_backward(
                    &x,
                    &w,
                    &dy,
                    &plan,
                    ConvBackward::new(true, true).normalised([short, shift.data()])
                )
                .is_err());
        }
        Ok(())
    })
}

/// An image with no rows or no columns, padded, still has an output: every tap reads
/// padding, so the convolution is zero (plus its bias), `dW` is zero and `dX` is empty.
/// Every route (1x1, 3x3, strided, normalised) returns those values, not a panic.
fn check_conv_empty_images(k: Kernels) -> CheckResult {
    let fail = |what: String| Err(what);
    for (x_shape, kernel, stride, pad) in [
        ([2, 3, 0, 5], 3, 1, 2),
        ([2, 3, 5, 0], 3, 1, 2),
        ([1, 3, 0, 0], 3, 2, 2),
        ([1, 3, 0, 4], 1, 1, 1),
        ([1, 3, 4, 0], 1, 2, 1),
    ] {
        let case = format!("x {x_shape:?}, {kernel}x{kernel}, stride {stride}, padding {pad}");
        let x = Tensor::zeros(&x_shape).map_err(|e| e.to_string())?;
        let c = x_shape[1];
        let w = Tensor::randn(&[4, c, kernel, kernel], 0.0, 1.0, 7).map_err(|e| e.to_string())?;
        let p = Conv2d::new(stride, pad);
        let [oh, ow] = p
            .output_size(x_shape[2], x_shape[3], kernel, kernel)
            .map_err(|e| e.to_string())?;
        if oh * ow == 0 {
            return fail(format!("{case}: test case has an empty output"));
        }
        let plan = tp(&k, &w, p);
        let packed = k.pack_conv(&plan, &w).map_err(|e| e.to_string())?;
        let bias = [0.5f32, -1.0, 2.0, 0.0];
        let y = k
            .conv2d(&x, &packed, &[tensor::Epilogue::Bias(&bias)])
            .map_err(|e| format!("{case}: forward: {e}"))?;
        let plane = oh * ow;
        for (i, v) in y.data().iter().enumerate() {
            if *v != bias[(i / plane) % 4] {
                return fail(format!("{case}: forward output {i} is {v}, not the bias"));
            }
        }
        // The blocked layout's convolution too.
        let xb = k.to_blocked(&x).map_err(|e| e.to_string())?;
        let blocked = ConvPlan::new(&k, plan.weights_shape(), p, Mode::Inference)
            .and_then(|p| p.in_layout(Layout::Blocked))
            .map_err(|e| e.to_string())?
            .force_forward(Forward::Blocked);
        let wb = k.pack_conv(&blocked, &w).map_err(|e| e.to_string())?;
        let yb = k
            .blocked_conv2d(&xb, &wb, &[tensor::Epilogue::Bias(&bias)])
            .and_then(|y| k.from_blocked(&y))
            .map_err(|e| format!("{case}: blocked forward: {e}"))?;
        if yb.data() != y.data() {
            return fail(format!("{case}: blocked forward is not the bias"));
        }
        let dy = Tensor::randn(&[x_shape[0], 4, oh, ow], 0.0, 1.0, 8).map_err(|e| e.to_string())?;
        let affine = [&[1.0f32; 3][..], &[0.5f32; 3][..]];
        for (route, grads) in [
            (
                "plain",
                k.conv2d_backward(&x, &w, &dy, &tp(&k, &w, p), ConvBackward::new(true, true)),
            ),
            (
                "normalised",
                k.conv2d_backward(
                    &x,
                    &w,
                    &dy,
                    &tp(&k, &w, p),
                    ConvBackward::new(true, true).normalised(affine),
                ),
            ),
        ] {
            let grads = grads.map_err(|e| format!("{case}: {route} backward: {e}"))?;
            let (Some(dx), Some(dw)) = (grads.dx, grads.dw) else {
                return fail(format!("{case}: {route} backward left out a gradient"));
            };
            if dx.shape() != x.shape() {
                return fail(format!("{case}: {route} dx shaped {:?}", dx.shape()));
            }
            if dw.shape() != w.shape() || dw.data().iter().any(|v| *v != 0.0) {
                return fail(format!("{case}: {route} dw is not zeros shaped as w"));
            }
        }
    }
    Ok(())
}

fn check_linear(k: Kernels) -> CheckResult {
    prop(
        (1usize..=9, 1usize..=40, 1usize..=20, any::<u64>()),
        |(n, inp, out, seed)| {
            let x = Tensor::randn(&[n, inp], 0.0, 1.0, seed).map_err(fail)?;
            let w = Tensor::randn(&[out, inp], 0.0, 1.0, seed ^ 1).map_err(fail)?;
            let dy = Tensor::randn(&[n, out], 0.0, 1.0, seed ^ 2).map_err(fail)?;
            let got = k.linear_backward(&x, &w, &dy).map_err(fail)?;
            // A linear layer is a 1x1 convolution of n images of 1x1 pixels.
            let as4 = |t: &Tensor, a, b| t.clone().reshape(&[a, b, 1, 1]).map_err(fail);
            let (dx, dw) = reference::conv2d_backward(
                &as4(&x, n, inp)?,
                &as4(&w, out, inp)?,
                &as4(&dy, n, out)?,
                1,
                0,
            )
            .map_err(fail)?;
            let tol = |len: usize| move |_| 1e-5 * len as f32 * 4.0 + 1e-6;
            close("dx", got.dx.data(), dx.data(), tol(out))?;
            close("dw", got.dw.data(), dw.data(), tol(n))?;
            let db: Vec<f32> = (0..out)
                .map(|o| (0..n).map(|b| dy.data()[b * out + o] as f64).sum::<f64>() as f32)
                .collect();
            close("db", &got.db, &db, tol(n))
        },
    )
}

fn check_errors(k: Kernels) -> CheckResult {
    let t = |s: &[usize]| Tensor::zeros(s).unwrap();
    let p = Conv2d::new(1, 1);
    let cases: Vec<(&str, bool)> = vec![
        (
            "relu shapes differ",
            k.relu_backward(&t(&[3]), &t(&[4])).is_err(),
        ),
        (
            "relu in place, shapes differ",
            k.relu_backward_assign(&mut t(&[3]), &t(&[4])).is_err(),
        ),
        (
            "conv dy shape",
            k.conv2d_backward(
                &t(&[1, 2, 4, 4]),
                &t(&[3, 2, 3, 3]),
                &t(&[1, 3, 3, 4]),
                &tp(&k, &t(&[3, 2, 3, 3]), p),
                ConvBackward::new(true, true),
            )
            .is_err(),
        ),
        (
            "conv channels",
            k.conv2d_backward(
                &t(&[1, 2, 4, 4]),
                &t(&[3, 1, 3, 3]),
                &t(&[1, 3, 4, 4]),
                &tp(&k, &t(&[3, 1, 3, 3]), p),
                ConvBackward::new(true, true),
            )
            .is_err(),
        ),
        (
            // Twice this padding wraps around to 2, which would make a 2x2 output.
            "conv padding overflows",
            k.conv2d_backward(
                &t(&[1, 1, 2, 2]),
                &t(&[1, 1, 3, 3]),
                &t(&[1, 1, 2, 2]),
                &tp(&k, &t(&[1, 1, 3, 3]), Conv2d::new(1, usize::MAX / 2 + 2)),
                ConvBackward::new(true, true),
            )
            .is_err(),
        ),
        (
            "conv weights not the plan's",
            k.conv2d_backward(
                &t(&[1, 2, 4, 4]),
                &t(&[3, 2, 3, 3]),
                &t(&[1, 3, 4, 4]),
                &tp(&k, &t(&[3, 2, 5, 5]), p),
                ConvBackward::new(true, true),
            )
            .is_err(),
        ),
        (
            "conv backward with an inference plan",
            k.conv2d_backward(
                &t(&[1, 2, 4, 4]),
                &t(&[3, 2, 3, 3]),
                &t(&[1, 3, 4, 4]),
                &ConvPlan::new(&k, [3, 2, 3, 3], p, Mode::Inference).unwrap(),
                ConvBackward::new(true, true),
            )
            .is_err(),
        ),
        (
            "bn params",
            k.batch_norm_backward(
                &t(&[1, 2, 2, 2]),
                BnGradIn::Borrowed(&t(&[1, 2, 2, 2])),
                &BatchNormBackward::batch(&[0.0], &[1.0, 1.0], &[1.0, 1.0]),
            )
            .is_err(),
        ),
        (
            "pool dy shape",
            k.max_pool2d_backward(
                &t(&[1, 1, 4, 4]),
                &t(&[1, 1, 4, 4]),
                &Pool2d::square(2, 2, 0),
            )
            .is_err(),
        ),
        (
            "linear dy shape",
            k.linear_backward(&t(&[2, 3]), &t(&[4, 3]), &t(&[2, 3]))
                .is_err(),
        ),
        (
            "avg pool dy shape",
            k.global_avg_pool_backward(&t(&[2, 3]), [2, 4, 2, 2])
                .is_err(),
        ),
    ];
    match cases.iter().find(|(_, rejected)| !rejected) {
        Some((what, _)) => Err(format!("accepted bad input: {what}")),
        None => Ok(()),
    }
}

fn main() {
    common::run("backward_matches_reference", CHECKS);
}
