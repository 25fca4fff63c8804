//! Every kernel, in every ISA tier this CPU has, equals the naive reference on random
//! shapes: lengths that are not multiples of any vector width, size 1, and empty where
//! the operation allows it.
//!
//! This is a test binary with its own small harness (`harness = false`) so that a tier
//! the CPU lacks is *reported* as skipped, never counted as passed:
//!
//! ```text
//! ok      avx512::softmax_row_equals_reference
//! SKIP    neon: ISA tier neon needs CPU features ["neon"], ... (14 checks not run)
//! kernels_match_reference: 42 passed, 0 failed, 14 skipped
//! ```
//!
//! Arguments: a substring filters the checks by name (`cargo test --test
//! kernels_match_reference -- softmax`). `PROPTEST_CASES` sets the random cases per
//! check (default 256). A failure prints the shrunk (minimal) input; such inputs are
//! added to `regressions()` below as named cases.
//!
//! Tolerances (stated per check, relative to the reference in f64 or exact f32):
//! - relu, add, add_relu, max pool: bit-exact (a single rounding, or none, either way).
//! - scale_shift(+relu): `1e-6 * (|x * scale| + |shift|)`: the tiers with FMA round once
//!   where the reference rounds twice.
//! - channel mean/variance: `1e-5` relative to `|mean| + std` and `1e-4` to the variance.
//! - softmax: `1e-6 + 1e-5 * |y|`; log-softmax: `1e-5 * (1 + |y|)`: the vector `exp`
//!   is within 2 ulp.
//! - global average pool: `1e-5 * (mean |x| + 1e-6)`.

mod common;

use common::{close, fail, prop, Check, CheckResult};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tensor::{reference, AvgPool2d, Epilogue, Kernels, Pool2d, Tensor};

/// The checks, by name. Each runs against one tier's kernels.
const CHECKS: &[(&str, Check)] = &[
    ("scale_shift_equals_reference", |k| {
        check_scale_shift(k, false)
    }),
    ("scale_shift_relu_equals_reference", |k| {
        check_scale_shift(k, true)
    }),
    (
        "scale_shift_add_relu_equals_scale_shift_then_add_relu",
        check_scale_shift_add_relu,
    ),
    (
        "scale_shift_inplace_equals_out_of_place",
        check_scale_shift_inplace,
    ),
    ("relu_equals_reference", check_relu),
    ("add_equals_reference", |k| check_add(k, false)),
    ("add_relu_equals_reference", |k| check_add(k, true)),
    ("channel_stats_equal_reference", check_channel_stats),
    ("softmax_row_equals_reference", |k| check_softmax(k, false)),
    ("log_softmax_row_equals_reference", |k| {
        check_softmax(k, true)
    }),
    ("max_pool2d_equals_reference", check_max_pool),
    (
        "max_pool2d_resnet_stem_equals_reference",
        check_max_pool_stem,
    ),
    (
        "max_pool2d_with_indices_equals_reference",
        check_max_pool_indices,
    ),
    ("global_avg_pool_equals_reference", check_global_avg_pool),
    ("avg_pool2d_equals_reference", check_avg_pool),
    (
        "avg_pool2d_resnet_d_shortcut_equals_reference",
        check_avg_pool_resnet_d,
    ),
    (
        "large_tensors_take_the_parallel_path_and_agree",
        check_large_parallel,
    ),
    ("regressions", regressions),
    ("nan_propagates_as_in_pytorch", nan_propagates),
];

/// Lengths that exercise the ragged tails of every vector width (most cases are short),
/// and now and then a longer run.
fn length() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 0usize..=70, 1 => 70usize..=2500]
}

fn values(n: usize) -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec(-10.0f32..10.0, n)
}

/// An `[N, C, H, W]` shape and data for it.
fn nchw(
    max_n: usize,
    max_c: usize,
    max_hw: usize,
) -> impl Strategy<Value = (Vec<usize>, Vec<f32>)> {
    (1..=max_n, 1..=max_c, 1..=max_hw, 1..=max_hw)
        .prop_flat_map(|(n, c, h, w)| (Just(vec![n, c, h, w]), values(n * c * h * w)))
}

fn tensor(shape: &[usize], data: Vec<f32>) -> Result<Tensor, TestCaseError> {
    Tensor::from_vec(shape, data).map_err(fail)
}

fn check_scale_shift(k: Kernels, relu: bool) -> CheckResult {
    let strategy = nchw(3, 6, 17).prop_flat_map(|(shape, data)| {
        let c = shape[1];
        (
            Just(shape),
            Just(data),
            proptest::collection::vec(-3.0f32..3.0, c),
            proptest::collection::vec(-3.0f32..3.0, c),
        )
    });
    prop(strategy, |(shape, data, scale, shift)| {
        let x = tensor(&shape, data)?;
        let want = reference::scale_shift(&x, &scale, &shift, relu).map_err(fail)?;
        let got = if relu {
            k.scale_shift(&x, &scale, &shift, &[Epilogue::Relu])
        } else {
            k.scale_shift(&x, &scale, &shift, &[])
        }
        .map_err(fail)?;
        let plane = shape[2] * shape[3];
        let c = shape[1];
        close("scale_shift", got.data(), want.data(), |i| {
            let ch = (i / plane) % c;
            1e-6 * ((x.data()[i] * scale[ch]).abs() + shift[ch].abs())
        })
    })
}

/// The fused end of a residual block equals its two kernels run one after the other,
/// to the bit (it runs the same two, plane by plane), ragged planes included.
fn check_scale_shift_add_relu(k: Kernels) -> CheckResult {
    let strategy = nchw(3, 6, 17).prop_flat_map(|(shape, data)| {
        let (c, len) = (shape[1], data.len());
        (
            Just(shape),
            Just(data),
            proptest::collection::vec(-3.0f32..3.0, len),
            proptest::collection::vec(-3.0f32..3.0, c),
            proptest::collection::vec(-3.0f32..3.0, c),
        )
    });
    prop(strategy, |(shape, data, res, scale, shift)| {
        let x = tensor(&shape, data)?;
        let r = tensor(&shape, res)?;
        let normalised = k.scale_shift(&x, &scale, &shift, &[]).map_err(fail)?;
        let want = k.add(&normalised, &r, &[Epilogue::Relu]).map_err(fail)?;
        let got = k
            .scale_shift(
                &x,
                &scale,
                &shift,
                &[Epilogue::residual(&r), Epilogue::Relu],
            )
            .map_err(fail)?;
        close("scale_shift_add_relu", got.data(), want.data(), |_| 0.0)?;
        let wrong = Tensor::zeros(&[shape[0], shape[1], shape[2], shape[3] + 1]).map_err(fail)?;
        if k.scale_shift(
            &x,
            &scale,
            &shift,
            &[Epilogue::residual(&wrong), Epilogue::Relu],
        )
        .is_ok()
        {
            return Err(TestCaseError::fail(
                "a residual of another shape was accepted",
            ));
        }
        Ok(())
    })
}

fn check_scale_shift_inplace(k: Kernels) -> CheckResult {
    prop(nchw(2, 5, 9), |(shape, data)| {
        let x = tensor(&shape, data)?;
        let c = shape[1];
        let scale: Vec<f32> = (0..c).map(|i| 0.5 + i as f32).collect();
        let shift: Vec<f32> = (0..c).map(|i| -(i as f32)).collect();
        for relu in [false, true] {
            let want = if relu {
                k.scale_shift(&x, &scale, &shift, &[Epilogue::Relu])
            } else {
                k.scale_shift(&x, &scale, &shift, &[])
            }
            .map_err(fail)?;
            let mut got = x.clone();
            if relu {
                k.scale_shift_inplace(&mut got, &scale, &shift, &[Epilogue::Relu])
                    .map_err(fail)?;
            } else {
                k.scale_shift_inplace(&mut got, &scale, &shift, &[])
                    .map_err(fail)?;
            }
            close("scale_shift_inplace", got.data(), want.data(), |_| 0.0)?;
            let mut into = Tensor::full(&shape, f32::NAN).map_err(fail)?;
            if relu {
                k.scale_shift_into(&x, &scale, &shift, &[Epilogue::Relu], &mut into)
                    .map_err(fail)?;
            } else {
                k.scale_shift_into(&x, &scale, &shift, &[], &mut into)
                    .map_err(fail)?;
            }
            close("scale_shift_into", into.data(), want.data(), |_| 0.0)?;
        }
        let mut wrong = Tensor::zeros(&[shape[0], c + 1, shape[2], shape[3]]).map_err(fail)?;
        prop_assert!(k
            .scale_shift_into(&x, &scale, &shift, &[], &mut wrong)
            .is_err());
        Ok(())
    })
}

fn check_relu(k: Kernels) -> CheckResult {
    prop(length().prop_flat_map(values), |data| {
        let x = tensor(&[data.len()], data)?;
        let want = reference::relu(&x);
        close(
            "relu",
            k.relu(&x).map_err(fail)?.data(),
            want.data(),
            |_| 0.0,
        )?;
        let mut inplace = x.clone();
        k.relu_inplace(&mut inplace);
        close("relu_inplace", inplace.data(), want.data(), |_| 0.0)
    })
}

fn check_add(k: Kernels, relu: bool) -> CheckResult {
    let strategy = length().prop_flat_map(|n| (values(n), values(n)));
    prop(strategy, |(a, b)| {
        let n = a.len();
        let (a, b) = (tensor(&[n], a)?, tensor(&[n], b)?);
        let want = reference::add(&a, &b, relu).map_err(fail)?;
        let got = if relu {
            k.add(&a, &b, &[Epilogue::Relu])
        } else {
            k.add(&a, &b, &[])
        }
        .map_err(fail)?;
        close("add", got.data(), want.data(), |_| 0.0)?;
        let mut acc = a.clone();
        if relu {
            k.add_assign(&mut acc, &b, &[Epilogue::Relu])
        } else {
            k.add_assign(&mut acc, &b, &[])
        }
        .map_err(fail)?;
        close("add_assign", acc.data(), want.data(), |_| 0.0)
    })
}

fn check_channel_stats(k: Kernels) -> CheckResult {
    // A large common offset (up to 100) with a small spread is where a one-pass
    // E[x^2] - E[x]^2 variance would fall apart.
    let strategy = (nchw(3, 5, 20), -100.0f32..100.0);
    prop(strategy, |((shape, data), offset)| {
        let data: Vec<f32> = data.iter().map(|v| v * 0.1 + offset).collect();
        let x = tensor(&shape, data)?;
        let (mean, var) = reference::channel_mean_var(&x).map_err(fail)?;
        let got = k.channel_stats(&x).map_err(fail)?;
        prop_assert_eq!(got.count, shape[0] * shape[2] * shape[3]);
        for c in 0..shape[1] {
            let scale = mean[c].abs() + var[c].sqrt();
            prop_assert!(
                (got.mean[c] as f64 - mean[c]).abs() <= 1e-5 * scale,
                "channel {}: mean {} vs reference {}",
                c,
                got.mean[c],
                mean[c]
            );
            prop_assert!(
                (got.var[c] as f64 - var[c]).abs() <= 1e-4 * var[c] + 1e-6 * scale * scale * 1e-6,
                "channel {}: variance {} vs reference {}",
                c,
                got.var[c],
                var[c]
            );
        }
        Ok(())
    })
}

fn check_softmax(k: Kernels, log: bool) -> CheckResult {
    // Rows of up to 1000 classes, with logits spread widely enough that many
    // probabilities underflow towards 0, and logits up to 1e6 in magnitude, where
    // rounding at the scale of the maximum would show.
    let strategy = (
        1usize..=4,
        prop_oneof![3 => 1usize..=40, 1 => 40usize..=1000],
        prop_oneof![2 => 1.0f32..8.0, 1 => 8.0f32..1e5],
        prop_oneof![1 => Just(0.0f32), 1 => -1e6f32..1e6],
    )
        .prop_flat_map(|(rows, cols, spread, offset)| {
            (
                Just(rows),
                Just(cols),
                values(rows * cols),
                Just(spread),
                Just(offset),
            )
        });
    prop(strategy, |(rows, cols, data, spread, offset)| {
        let data: Vec<f32> = data.iter().map(|v| v * spread + offset).collect();
        let x = tensor(&[rows, cols], data)?;
        if log {
            let want = reference::log_softmax(&x);
            let got = k.log_softmax(&x).map_err(fail)?;
            close("log_softmax", got.data(), want.data(), |i| {
                1e-5 * (1.0 + want.data()[i].abs())
            })
        } else {
            let want = reference::softmax(&x);
            let got = k.softmax(&x).map_err(fail)?;
            close("softmax", got.data(), want.data(), |i| {
                1e-6 + 1e-5 * want.data()[i].abs()
            })
        }
    })
}

fn pool_geometry() -> impl Strategy<Value = Pool2d> {
    (1usize..=4, 1usize..=4, 1usize..=3, 1usize..=3).prop_flat_map(|(kh, kw, sh, sw)| {
        (0..=kh / 2, 0..=kw / 2, any::<bool>()).prop_map(move |(ph, pw, ceil_mode)| Pool2d {
            kernel: [kh, kw],
            stride: [sh, sw],
            padding: [ph, pw],
            ceil_mode,
            dilation: [1, 1],
        })
    })
}

/// Max pooling's windows, dilated too (taps 1 to 3 apart on each axis).
fn dilated_pool_geometry() -> impl Strategy<Value = Pool2d> {
    (pool_geometry(), 1usize..=3, 1usize..=3).prop_map(|(p, dh, dw)| Pool2d {
        dilation: [dh, dw],
        ..p
    })
}

fn check_pool_case(
    k: Kernels,
    shape: &[usize],
    data: Vec<f32>,
    p: &Pool2d,
) -> Result<(), TestCaseError> {
    let x = tensor(shape, data)?;
    match reference::max_pool2d(&x, p) {
        Ok(want) => {
            let got = k.max_pool2d(&x, p).map_err(fail)?;
            prop_assert_eq!(got.shape(), want.shape());
            close("max_pool2d", got.data(), want.data(), |_| 0.0)?;
            let mut into = Tensor::full(want.shape(), f32::NAN).map_err(fail)?;
            k.max_pool2d_into(&x, p, &mut into).map_err(fail)?;
            close("max_pool2d_into", into.data(), want.data(), |_| 0.0)
        }
        // An invalid geometry (window larger than the padded input) must be refused
        // by both, not computed by one.
        Err(_) => {
            prop_assert!(k.max_pool2d(&x, p).is_err());
            Ok(())
        }
    }
}

fn check_max_pool(k: Kernels) -> CheckResult {
    // Widths up to 40 give several full vectors of outputs at stride 1 even at 16 lanes.
    prop(
        (nchw(2, 3, 40), dilated_pool_geometry()),
        |((shape, data), p)| check_pool_case(k, &shape, data, &p),
    )
}

/// Max pooling with its winners: the output equals the reference's and
/// [`Kernels::max_pool2d`]'s, every winner is the reference's (ties everywhere, and in
/// some cases `-inf` and NaN inputs: the first maximum in row-major window order, the last
/// NaN, the first input of an all-`-inf` window), and the backward from them equals the
/// reference's. Widths up to 48 give several vectors of windows inside the row at
/// strides 1 and 2 even at 16 lanes.
fn check_max_pool_indices(k: Kernels) -> CheckResult {
    let strategy = (
        nchw(2, 3, 48),
        dilated_pool_geometry(),
        0u8..4,
        any::<u64>(),
    );
    prop(strategy, |((shape, data), p, special, seed)| {
        // Values rounded to a few levels tie often; then -inf and NaN in some cases.
        let data: Vec<f32> = data
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let r = (seed >> (i % 61)) as usize + i;
                match special {
                    1 if r.is_multiple_of(5) => f32::NEG_INFINITY,
                    2 if r.is_multiple_of(13) => f32::NAN,
                    3 => f32::NEG_INFINITY,
                    _ => (v / 4.0).round(),
                }
            })
            .collect();
        let x = tensor(&shape, data)?;
        let Ok(want) = reference::max_pool2d(&x, &p) else {
            prop_assert!(k.max_pool2d_with_indices(&x, &p).is_err());
            return Ok(());
        };
        let (got, idx) = k.max_pool2d_with_indices(&x, &p).map_err(fail)?;
        close("max_pool2d_with_indices", got.data(), want.data(), |_| 0.0)?;
        let plain = k.max_pool2d(&x, &p).map_err(fail)?;
        close(
            "max_pool2d_with_indices vs max_pool2d",
            got.data(),
            plain.data(),
            |_| 0.0,
        )?;
        let winners = reference::max_pool2d_indices(&x, &p).map_err(fail)?;
        prop_assert_eq!(idx.output_shape().to_vec(), want.shape().to_vec());
        prop_assert_eq!(idx.input_shape().to_vec(), x.shape().to_vec());
        if let Some(o) = (0..winners.len()).find(|&o| idx.as_slice()[o] != winners[o]) {
            return Err(TestCaseError::fail(format!(
                "max_pool2d_with_indices {p:?}, shape {shape:?}: output {o} won by {}, reference {}",
                idx.as_slice()[o],
                winners[o]
            )));
        }
        let dy = Tensor::randn(want.shape(), 0.0, 1.0, seed).map_err(fail)?;
        let dx = k
            .max_pool2d_backward_from_indices(&idx, &dy)
            .map_err(fail)?;
        let want_dx = reference::max_pool2d_backward(&x, &dy, &p).map_err(fail)?;
        close(
            "max_pool2d_backward_from_indices",
            dx.data(),
            want_dx.data(),
            |_| 0.0,
        )?;
        // A gradient of another shape is refused, not read out of bounds.
        let wrong = Tensor::zeros(&[1, 1, 1, want.len() + 1]).map_err(fail)?;
        prop_assert!(k.max_pool2d_backward_from_indices(&idx, &wrong).is_err());
        // Normalising on the way in (a batch norm + ReLU before the pool) pools the same
        // floats as normalising first, with the same winners: scales of both signs and
        // zero, so that the ReLU ties whole windows at 0.
        let c = shape[1];
        let scale: Vec<f32> = (0..c)
            .map(|ch| ((seed >> ch) % 4) as f32 * 0.5 - 0.5)
            .collect();
        let shift: Vec<f32> = (0..c).map(|ch| 0.25 * ch as f32 - 0.25).collect();
        let normed = k
            .scale_shift(&x, &scale, &shift, &[Epilogue::Relu])
            .map_err(fail)?;
        let (want_n, want_idx) = k.max_pool2d_with_indices(&normed, &p).map_err(fail)?;
        let (got_n, got_idx) = k
            .max_pool2d_with_indices_normalised(&x, &p, Some([&scale, &shift]))
            .map_err(fail)?;
        close(
            "max_pool2d_with_indices_normalised",
            got_n.data(),
            want_n.data(),
            |_| 0.0,
        )?;
        prop_assert_eq!(got_idx.as_slice(), want_idx.as_slice());
        prop_assert!(k
            .max_pool2d_with_indices_normalised(&x, &p, Some([&scale[1..], &shift[1..]]))
            .is_err());
        Ok(())
    })
}

fn check_max_pool_stem(k: Kernels) -> CheckResult {
    prop(nchw(2, 3, 70), |(shape, data)| {
        check_pool_case(k, &shape, data, &Pool2d::RESNET_STEM)
    })
}

/// Average pooling's bound against the f64 reference: `m <= 16` values of magnitude
/// `<= 10` summed in f32 make `m - 1` roundings of partial sums `<= 10 m`, each
/// `<= 2^-24 * 10 m`, so `<= 10 m^2 2^-24` in all, `<= 10 m 2^-24 = 9.5e-6` after the
/// division by `m`, plus one rounding of the product: 1.1e-5, doubled.
const AVG_TOL: f32 = 2e-5;

fn check_avg_pool(k: Kernels) -> CheckResult {
    prop(
        (nchw(2, 3, 40), pool_geometry(), any::<bool>()),
        |((shape, data), window, count_include_pad)| {
            let p = AvgPool2d::new(window, count_include_pad);
            let x = tensor(&shape, data)?;
            match reference::avg_pool2d(&x, &p) {
                Ok(want) => {
                    let got = k.avg_pool2d(&x, &p).map_err(fail)?;
                    prop_assert_eq!(got.shape(), want.shape());
                    close("avg_pool2d", got.data(), want.data(), |_| AVG_TOL)?;
                    let mut into = Tensor::full(want.shape(), f32::NAN).map_err(fail)?;
                    k.avg_pool2d_into(&x, &p, &mut into).map_err(fail)?;
                    close("avg_pool2d_into", into.data(), want.data(), |_| AVG_TOL)
                }
                Err(_) => {
                    prop_assert!(k.avg_pool2d(&x, &p).is_err());
                    Ok(())
                }
            }
        },
    )
}

/// timm's ResNet-D shortcut pool on odd and even sizes: `ceil_mode` makes a last window
/// of one column or row, whose divisor counts only it.
fn check_avg_pool_resnet_d(k: Kernels) -> CheckResult {
    prop(nchw(2, 3, 41), |(shape, data)| {
        let x = tensor(&shape, data)?;
        let p = AvgPool2d::resnet_d(2);
        let want = reference::avg_pool2d(&x, &p).map_err(fail)?;
        let got = k.avg_pool2d(&x, &p).map_err(fail)?;
        prop_assert_eq!(
            got.shape(),
            &[
                shape[0],
                shape[1],
                shape[2].div_ceil(2),
                shape[3].div_ceil(2)
            ][..]
        );
        close("avg_pool2d resnet_d", got.data(), want.data(), |_| AVG_TOL)
    })
}

fn check_global_avg_pool(k: Kernels) -> CheckResult {
    prop(nchw(3, 5, 20), |(shape, data)| {
        let x = tensor(&shape, data)?;
        let want = reference::global_avg_pool(&x).map_err(fail)?;
        let got = k.global_avg_pool(&x).map_err(fail)?;
        prop_assert_eq!(got.shape(), &[shape[0], shape[1]][..]);
        let plane = shape[2] * shape[3];
        close("global_avg_pool", got.data(), want.data(), |i| {
            let p = &x.data()[i * plane..(i + 1) * plane];
            1e-5 * (p.iter().map(|v| v.abs()).sum::<f32>() / plane as f32 + 1e-6)
        })
    })
}

/// Tensors past the parallel threshold, so the rayon split is checked too.
fn check_large_parallel(k: Kernels) -> CheckResult {
    let run = || -> Result<(), TestCaseError> {
        let shape = [2, 24, 57, 61];
        let x = Tensor::randn(&shape, 0.5, 2.0, 11).map_err(fail)?;
        let r = Tensor::randn(&shape, 0.0, 1.0, 12).map_err(fail)?;
        let scale: Vec<f32> = (0..24).map(|i| 0.1 * i as f32 - 1.0).collect();
        let shift: Vec<f32> = (0..24).map(|i| 0.05 * i as f32).collect();
        let want = reference::scale_shift(&x, &scale, &shift, true).map_err(fail)?;
        let got = k
            .scale_shift(&x, &scale, &shift, &[Epilogue::Relu])
            .map_err(fail)?;
        close("large scale_shift_relu", got.data(), want.data(), |i| {
            1e-6 * (x.data()[i].abs() * 2.5 + 2.0)
        })?;
        let want = reference::add(&x, &r, true).map_err(fail)?;
        close(
            "large add_relu",
            k.add(&x, &r, &[Epilogue::Relu]).map_err(fail)?.data(),
            want.data(),
            |_| 0.0,
        )?;
        let want = reference::add(&x, &r, false).map_err(fail)?;
        let got = k.add(&x, &r, &[]).map_err(fail)?;
        close("large add", got.data(), want.data(), |_| 0.0)?;
        let want = reference::scale_shift(&x, &scale, &shift, false).map_err(fail)?;
        let got = k.scale_shift(&x, &scale, &shift, &[]).map_err(fail)?;
        close("large scale_shift", got.data(), want.data(), |i| {
            1e-6 * (x.data()[i].abs() * 2.5 + 2.0)
        })?;
        let want = reference::relu(&x);
        close(
            "large relu",
            k.relu(&x).map_err(fail)?.data(),
            want.data(),
            |_| 0.0,
        )?;
        let want = reference::max_pool2d(&x, &Pool2d::RESNET_STEM).map_err(fail)?;
        let got = k.max_pool2d(&x, &Pool2d::RESNET_STEM).map_err(fail)?;
        close("large max_pool2d", got.data(), want.data(), |_| 0.0)?;
        let (mean, var) = reference::channel_mean_var(&x).map_err(fail)?;
        let got = k.channel_stats(&x).map_err(fail)?;
        for c in 0..24 {
            prop_assert!(
                (got.mean[c] as f64 - mean[c]).abs() <= 1e-5 * (mean[c].abs() + var[c].sqrt())
            );
            prop_assert!((got.var[c] as f64 - var[c]).abs() <= 1e-4 * var[c]);
        }
        let want = reference::global_avg_pool(&x).map_err(fail)?;
        close(
            "large global_avg_pool",
            k.global_avg_pool(&x).map_err(fail)?.data(),
            want.data(),
            |_| 1e-5,
        )?;
        Ok(())
    };
    run().map_err(|e| e.to_string())
}

/// Named edge cases: sizes at and around every vector width, single elements, empty
/// tensors, and the shrunk inputs of past failures.
fn regressions(k: Kernels) -> CheckResult {
    let run = || -> Result<(), TestCaseError> {
        // `ceil_mode` and `count_include_pad` as PyTorch computes them (torch 2.15:
        // `F.avg_pool2d(x, (1, 4), (1, 3), padding=(0, 1), ceil_mode=True, ...)` on
        // 1..=5; the last window runs past the padded row).
        let x = tensor(&[1, 1, 1, 5], vec![1.0, 2.0, 3.0, 4.0, 5.0])?;
        let window = Pool2d {
            kernel: [1, 4],
            stride: [1, 3],
            padding: [0, 1],
            ceil_mode: true,
            dilation: [1, 1],
        };
        for (include, want) in [(true, [1.5, 3.0]), (false, [2.0, 4.0])] {
            let got = k
                .avg_pool2d(&x, &AvgPool2d::new(window, include))
                .map_err(fail)?;
            prop_assert_eq!(got.data(), &want[..], "include {}", include);
        }
        let got = k.max_pool2d(&x, &window).map_err(fail)?;
        prop_assert_eq!(got.data(), &[3.0, 5.0][..]);
        let got = k.avg_pool2d(&x, &AvgPool2d::resnet_d(2)).map_err(fail)?;
        prop_assert_eq!(got.data(), &[1.5, 3.5, 5.0][..]);
        // Dilated max pooling as torch 2.15 computes it: `F.max_pool2d(x, (1, 3), (1, 2),
        // padding=(0, 1), dilation=(1, 2))` on 1..=7, and a window whose taps all fall in
        // the padding (`(1, 2)`, padding 1, dilation 3 on a row of 2) giving -inf.
        let x7 = tensor(&[1, 1, 1, 7], (1..=7).map(|v| v as f32).collect())?;
        let window = Pool2d {
            kernel: [1, 3],
            stride: [1, 2],
            padding: [0, 1],
            ceil_mode: false,
            dilation: [1, 2],
        };
        let got = k.max_pool2d(&x7, &window).map_err(fail)?;
        prop_assert_eq!(got.data(), &[4.0, 6.0, 6.0][..]);
        let x2 = tensor(&[1, 1, 1, 2], vec![1.0, 2.0])?;
        let empty = Pool2d {
            kernel: [1, 2],
            stride: [1, 1],
            padding: [0, 1],
            ceil_mode: false,
            dilation: [1, 3],
        };
        let got = k.max_pool2d(&x2, &empty).map_err(fail)?;
        prop_assert_eq!(got.data(), &[f32::NEG_INFINITY][..]);
        prop_assert!(k.avg_pool2d(&x7, &AvgPool2d::new(window, true)).is_err());
        for n in [
            0usize, 1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65,
        ] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 - 7.5) * 0.37).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 1.3).sin()).collect();
            let (a, b) = (tensor(&[n], a)?, tensor(&[n], b)?);
            close(
                "edge relu",
                k.relu(&a).map_err(fail)?.data(),
                reference::relu(&a).data(),
                |_| 0.0,
            )?;
            let want = reference::add(&a, &b, true).map_err(fail)?;
            close(
                "edge add_relu",
                k.add(&a, &b, &[Epilogue::Relu]).map_err(fail)?.data(),
                want.data(),
                |_| 0.0,
            )?;
            if n > 0 {
                let row = a.clone().reshape(&[1, n]).map_err(fail)?;
                let want = reference::softmax(&row);
                close(
                    "edge softmax",
                    k.softmax(&row).map_err(fail)?.data(),
                    want.data(),
                    |i| 1e-6 + 1e-5 * want.data()[i].abs(),
                )?;
            }
        }
        // A softmax row of one element is exactly 1; log-softmax exactly 0.
        let one = tensor(&[1, 1], vec![42.0])?;
        prop_assert_eq!(k.softmax(&one).map_err(fail)?.into_vec(), vec![1.0]);
        prop_assert_eq!(k.log_softmax(&one).map_err(fail)?.into_vec(), vec![0.0]);
        // ONNX's conformance case `test_logsoftmax_large_number`: logits of 1e4 give the
        // same log-probabilities as logits near 0.
        let large = tensor(
            &[2, 4],
            vec![0.0, 1.0, 2.0, 3.0, 1e4, 1e4 + 1.0, 1e4 + 2.0, 1e4 + 3.0],
        )?;
        let want = [-3.440_189_7f32, -2.440_189_7, -1.440_189_7, -0.440_189_75];
        let got = k.log_softmax(&large).map_err(fail)?;
        for (i, g) in got.data().iter().enumerate() {
            prop_assert!(
                (g - want[i % 4]).abs() <= 1e-6,
                "log_softmax(large)[{}] = {}",
                i,
                g
            );
        }
        // A 1x1 input with the stem's padding: the one value is every window's max.
        let x = tensor(&[1, 1, 1, 1], vec![-3.0])?;
        prop_assert_eq!(
            k.max_pool2d(&x, &Pool2d::RESNET_STEM)
                .map_err(fail)?
                .into_vec(),
            vec![-3.0]
        );
        // Empty batches are legal for the elementwise ops and pooling.
        let empty = Tensor::zeros(&[0, 4, 5, 5]).map_err(fail)?;
        prop_assert!(k
            .scale_shift(&empty, &[1.0; 4], &[0.0; 4], &[])
            .map_err(fail)?
            .is_empty());
        let pooled = k.max_pool2d(&empty, &Pool2d::RESNET_STEM).map_err(fail)?;
        prop_assert_eq!(pooled.shape(), &[0, 4, 3, 3][..]);
        // ... but statistics over no elements are an error, not a NaN.
        prop_assert!(k.channel_stats(&empty).is_err());
        // Wrong parameter lengths and shapes are errors.
        let x = Tensor::zeros(&[1, 3, 2, 2]).map_err(fail)?;
        prop_assert!(k.scale_shift(&x, &[1.0; 2], &[0.0; 3], &[]).is_err());
        prop_assert!(k
            .add(&x, &Tensor::zeros(&[1, 3, 2, 3]).map_err(fail)?, &[])
            .is_err());
        // An epilogue an element-wise op does not apply is an error, not ignored.
        let (one, zero) = ([1.0f32; 3], [0.0f32; 3]);
        let residual = [Epilogue::residual(&x), Epilogue::Relu];
        prop_assert!(k
            .scale_shift(&x, &one, &zero, &[Epilogue::Bias(&one)])
            .is_err());
        prop_assert!(k
            .scale_shift(&x, &one, &zero, &[Epilogue::Relu, Epilogue::Relu])
            .is_err());
        prop_assert!(k.scale_shift(&x, &one, &zero, &residual[1..]).is_ok());
        prop_assert!(k.scale_shift(&x, &one, &zero, &residual).is_ok());
        let mut out = x.clone();
        prop_assert!(k
            .scale_shift_into(&x, &one, &zero, &residual, &mut out)
            .is_err());
        prop_assert!(k
            .scale_shift_inplace(&mut out, &one, &zero, &residual)
            .is_err());
        prop_assert!(k.add(&x, &x, &residual).is_err());
        prop_assert!(k.add_assign(&mut out, &x, &[Epilogue::Accumulate]).is_err());
        // A residual of another shape.
        let wrong = Tensor::zeros(&[1, 3, 2, 3]).map_err(fail)?;
        let steps = [Epilogue::residual(&wrong), Epilogue::Relu];
        prop_assert!(k.scale_shift(&x, &one, &zero, &steps).is_err());
        prop_assert!(k
            .max_pool2d(
                &Tensor::zeros(&[3, 2, 2]).map_err(fail)?,
                &Pool2d::RESNET_STEM
            )
            .is_err());
        prop_assert!(k.max_pool2d(&x, &Pool2d::square(3, 1, 2)).is_err());
        prop_assert!(k.max_pool2d(&x, &Pool2d::square(3, 0, 1)).is_err());
        Ok(())
    };
    run().map_err(|e| e.to_string())
}

fn main() {
    common::run("kernels_match_reference", CHECKS);
}

/// NaN comes out of ReLU, max pooling and softmax as it went in (PyTorch propagates it;
/// `max(x, 0)` by `maxps` or `f32::max` would turn it into 0, and NaN weights into a
/// confident-looking answer). Every vector position and the scalar tails.
fn nan_propagates(k: Kernels) -> CheckResult {
    let run = || -> Result<(), TestCaseError> {
        for n in [1usize, 3, 4, 5, 8, 9, 16, 17, 33] {
            for at in [0, n / 2, n - 1] {
                let mut v: Vec<f32> = (0..n).map(|i| i as f32 - 2.0).collect();
                v[at] = f32::NAN;
                let x = tensor(&[1, 1, 1, n], v.clone())?;
                let ones = tensor(&[1, 1, 1, n], vec![1.0; n])?;
                let nan_at = |y: &[f32], what: &str| -> Result<(), TestCaseError> {
                    prop_assert!(
                        y[at].is_nan(),
                        "{} of NaN at {} of {}: {:?}",
                        what,
                        at,
                        n,
                        y
                    );
                    Ok(())
                };
                nan_at(k.relu(&x).map_err(fail)?.data(), "relu")?;
                let mut inplace = x.clone();
                k.relu_inplace(&mut inplace);
                nan_at(inplace.data(), "relu_inplace")?;
                let relu = [Epilogue::Relu];
                nan_at(k.add(&x, &ones, &relu).map_err(fail)?.data(), "add+relu")?;
                nan_at(
                    k.scale_shift(&x, &[2.0], &[1.0], &relu)
                        .map_err(fail)?
                        .data(),
                    "scale_shift+relu",
                )?;
                // A 1x2 window, stride 1: outputs at-1 and at both cover the NaN.
                let pool = Pool2d {
                    kernel: [1, 2],
                    stride: [1, 1],
                    padding: [0, 0],
                    ceil_mode: false,
                    dilation: [1, 1],
                };
                if n >= 2 {
                    let y = k.max_pool2d(&x, &pool).map_err(fail)?;
                    let want = reference::max_pool2d(&x, &pool).map_err(fail)?;
                    for (i, (g, w)) in y.data().iter().zip(want.data()).enumerate() {
                        prop_assert!(
                            g.is_nan() == w.is_nan() && (w.is_nan() || g == w),
                            "max_pool2d of NaN at {} of {}: output {} is {}, reference {}",
                            at,
                            n,
                            i,
                            g,
                            w
                        );
                    }
                    prop_assert!(want.data().iter().any(|v| v.is_nan()));
                }
                if n == 5 && at == 0 {
                    // The gradient goes where PyTorch sends it: to the window's last NaN
                    // (checked against torch 2.15: [0, 0, 0, 1, 0]), and without NaN to
                    // the first of equal maxima.
                    let nan = f32::NAN;
                    let pool = Pool2d {
                        kernel: [1, 5],
                        stride: [1, 1],
                        padding: [0, 0],
                        ceil_mode: false,
                        dilation: [1, 1],
                    };
                    let dy = tensor(&[1, 1, 1, 1], vec![1.0])?;
                    for (xs, want) in [
                        ([1.0, nan, 5.0, nan, 2.0], [0.0, 0.0, 0.0, 1.0, 0.0]),
                        ([1.0, 5.0, 5.0, 2.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]),
                    ] {
                        let x = tensor(&[1, 1, 1, 5], xs.to_vec())?;
                        let got = k.max_pool2d_backward(&x, &dy, &pool).map_err(fail)?;
                        let refr = reference::max_pool2d_backward(&x, &dy, &pool).map_err(fail)?;
                        prop_assert_eq!(got.data(), &want[..], "max_pool2d_backward of {:?}", xs);
                        prop_assert_eq!(refr.data(), &want[..], "reference of {:?}", xs);
                    }
                }
                let row = tensor(&[1, n], v)?;
                for (what, y) in [
                    ("softmax", k.softmax(&row).map_err(fail)?),
                    ("log_softmax", k.log_softmax(&row).map_err(fail)?),
                ] {
                    prop_assert!(
                        y.data().iter().all(|v| v.is_nan()),
                        "{} of a row with NaN: {:?}",
                        what,
                        y.data()
                    );
                }
            }
        }
        Ok(())
    };
    run().map_err(|e| e.to_string())
}
