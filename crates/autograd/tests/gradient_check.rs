//! Every backward of the tape against central finite differences computed in `f64`.
//!
//! For each op, a random small input set goes through the tape (in the tier under
//! test), and the backward pass is seeded with a random `r` on the output: it returns
//! the gradients of `F = sum(op(inputs) * r)`. The same `F` is then evaluated by a
//! naive `f64` forward of the op (written below from the definition), and each checked
//! input element `j` gets `(F(x + h e_j) - F(x - h e_j)) / 2h` with `h = 1e-6`. In
//! `f64` that difference is accurate to about `1e-8`, so the comparison measures the
//! backward formulas and the `f32` rounding of the tape alone: an element passes when
//! `|analytic - numeric| <= 2e-3 * (max |numeric| over the tensor) + 1e-4`. An element
//! whose one-sided slopes disagree has a ReLU or max kink within `h` (the derivative is
//! undefined there) and is skipped; at most a quarter of an input's elements may be.

#[path = "../../tensor/tests/common/mod.rs"]
mod common;

use autograd::{Tape, Var};
use common::{fail, prop, Check, CheckResult};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tensor::{AvgPool2d, Conv2d, Kernels, Pool2d, Result as TResult, Tensor};

const CHECKS: &[(&str, Check)] = &[
    ("conv2d_gradients", check_conv),
    ("conv2d_winograd_switch", check_conv_winograd_switch),
    ("batch_norm_gradients", check_batch_norm),
    ("batch_norm_relu_gradients", check_batch_norm_relu),
    ("batch_norm_fixed_gradients", check_batch_norm_fixed),
    (
        "batch_norm_fixed_relu_gradients",
        check_batch_norm_fixed_relu,
    ),
    ("batch_norm_add_relu_gradients", check_batch_norm_add_relu),
    (
        "batch_norm_relu_conv2d_gradients",
        check_batch_norm_relu_conv2d,
    ),
    ("batch_norm_shared_gradients", check_batch_norm_shared),
    ("relu_gradients", check_relu),
    ("add_relu_gradients", check_add_relu),
    ("add_of_one_input_twice_gradients", check_add_twice),
    ("max_pool_gradients", check_max_pool),
    ("avg_pool2d_gradients", check_avg_pool2d),
    ("global_avg_pool_gradients", check_avg_pool),
    ("linear_gradients", check_linear),
    ("pad_channels_gradients", check_pad_channels),
    ("cross_entropy_gradients", check_cross_entropy),
    ("residual_block_gradients", check_block),
];

type F64Forward = dyn Fn(&[Vec<f64>]) -> Vec<f64>;

/// Runs the check: `build` records the op on a tape over the inputs (all trainable),
/// `reference` computes the same op in `f64` from the inputs' values.
fn grad_check(
    k: Kernels,
    inputs: &[Tensor],
    build: impl Fn(&mut Tape, &[Var]) -> TResult<Var>,
    reference: &F64Forward,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut tape = Tape::new(k);
    let vars: Vec<Var> = inputs.iter().map(|t| tape.param(t)).collect();
    let out = build(&mut tape, &vars).map_err(fail)?;
    let r = Tensor::randn(tape.value(out).map_err(fail)?.shape(), 0.0, 1.0, seed).map_err(fail)?;
    let grads = tape.backward_from(out, r.clone()).map_err(fail)?;
    let r64: Vec<f64> = r.data().iter().map(|&v| v as f64).collect();
    let xs: Vec<Vec<f64>> = inputs
        .iter()
        .map(|t| t.data().iter().map(|&v| v as f64).collect())
        .collect();
    let f = |xs: &[Vec<f64>]| -> f64 { reference(xs).iter().zip(&r64).map(|(a, b)| a * b).sum() };
    let h = 1e-6;
    let f0 = f(&xs);
    for (i, v) in vars.iter().enumerate() {
        let Some(g) = grads.get(*v) else {
            return Err(TestCaseError::fail(format!(
                "input {i} received no gradient"
            )));
        };
        prop_assert_eq!(g.shape(), inputs[i].shape());
        // Check up to 40 elements per input, spread over the tensor.
        let n = xs[i].len();
        let step = n.div_ceil(40).max(1);
        let (mut numeric, mut kinks) = (Vec::new(), 0);
        for j in (0..n).step_by(step) {
            let mut plus = xs.to_vec();
            plus[i][j] += h;
            let mut minus = xs.to_vec();
            minus[i][j] -= h;
            let (fp, fm) = (f(&plus), f(&minus));
            // A ReLU (or max) kink within h of x makes the one-sided slopes disagree;
            // the derivative is not defined there, so the element is not checked.
            let (right, left) = ((fp - f0) / h, (f0 - fm) / h);
            if (right - left).abs() > 1e-3 * (right.abs() + left.abs()) + 1e-3 {
                kinks += 1;
                continue;
            }
            numeric.push((j, (fp - fm) / (2.0 * h)));
        }
        // Kinks are rare, but an input may put one ReLU input within `h` of zero, and
        // then every element that moves it sees the kink (a CI run on 2026-11-28 drew
        // such a residual block: 4 of 9 weights). The kinks come from the f64
        // reference alone, not from the code under test, so such an input is
        // discarded and another drawn (proptest caps the discards, so a reference
        // that always kinks still fails).
        let checked = numeric.len() + kinks;
        let why = format!("input {i}: {kinks} of {checked} checked elements sit on a kink");
        prop_assume!(kinks * 4 <= checked, "{}", why);
        let scale = numeric.iter().map(|(_, v)| v.abs()).fold(0.0, f64::max);
        for (j, want) in numeric {
            let got = g.data()[j] as f64;
            let tol = 2e-3 * scale + 1e-4;
            // A NaN gradient must fail too, and `NaN > tol` is false.
            let err = (got - want).abs();
            if err.is_nan() || err > tol {
                return Err(TestCaseError::fail(format!(
                    "input {i} element {j}: analytic {got:e}, finite difference {want:e} (tolerance {tol:e})"
                )));
            }
        }
    }
    Ok(())
}

// ---- f64 forwards, from the definitions ----

#[allow(clippy::too_many_arguments)]
fn conv_f64(
    x: &[f64],
    w: &[f64],
    [n, c, h, wd]: [usize; 4],
    [o, kh, kw]: [usize; 3],
    s: usize,
    p: usize,
) -> Vec<f64> {
    let oh = (h + 2 * p - kh) / s + 1;
    let ow = (wd + 2 * p - kw) / s + 1;
    let mut y = vec![0.0; n * o * oh * ow];
    for b in 0..n {
        for oc in 0..o {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0;
                    for ci in 0..c {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * s + ky) as isize - p as isize;
                                let ix = (ox * s + kx) as isize - p as isize;
                                if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= wd {
                                    continue;
                                }
                                acc += x[((b * c + ci) * h + iy as usize) * wd + ix as usize]
                                    * w[((oc * c + ci) * kh + ky) * kw + kx];
                            }
                        }
                    }
                    y[((b * o + oc) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    y
}

/// Batch norm over `[n, c, plane]`, with batch statistics (`stats = None`) or fixed ones.
fn bn_f64(
    x: &[f64],
    g: &[f64],
    b: &[f64],
    c: usize,
    plane: usize,
    stats: Option<(&[f64], &[f64])>,
    relu: bool,
) -> Vec<f64> {
    let n = x.len() / (c * plane);
    let m = (n * plane) as f64;
    let mut y = vec![0.0; x.len()];
    for ch in 0..c {
        let idx = |bi: usize, i: usize| (bi * c + ch) * plane + i;
        let (mean, var) = match stats {
            Some((mu, var)) => (mu[ch], var[ch]),
            None => {
                let mean = (0..n)
                    .flat_map(|bi| (0..plane).map(move |i| (bi, i)))
                    .map(|(bi, i)| x[idx(bi, i)])
                    .sum::<f64>()
                    / m;
                let var = (0..n)
                    .flat_map(|bi| (0..plane).map(move |i| (bi, i)))
                    .map(|(bi, i)| (x[idx(bi, i)] - mean).powi(2))
                    .sum::<f64>()
                    / m;
                (mean, var)
            }
        };
        let istd = 1.0 / (var + 1e-5).sqrt();
        for bi in 0..n {
            for i in 0..plane {
                let v = g[ch] * (x[idx(bi, i)] - mean) * istd + b[ch];
                y[idx(bi, i)] = if relu { v.max(0.0) } else { v };
            }
        }
    }
    y
}

fn relu_f64(x: &[f64]) -> Vec<f64> {
    x.iter().map(|v| v.max(0.0)).collect()
}

// ---- Checks ----

fn t(shape: &[usize], seed: u64) -> Result<Tensor, TestCaseError> {
    Tensor::randn(shape, 0.0, 1.0, seed).map_err(fail)
}

fn check_conv(k: Kernels) -> CheckResult {
    let s = (
        1usize..=2,
        1usize..=3,
        1usize..=4,
        2usize..=6,
        prop::sample::select(vec![1usize, 3]),
        1usize..=2,
        any::<u64>(),
    );
    prop(s, |(n, c, o, size, kk, stride, seed)| {
        let pad = kk / 2;
        let x = t(&[n, c, size, size], seed)?;
        let w = t(&[o, c, kk, kk], seed ^ 1)?;
        let p = Conv2d::new(stride, pad);
        let refn = move |v: &[Vec<f64>]| {
            conv_f64(&v[0], &v[1], [n, c, size, size], [o, kk, kk], stride, pad)
        };
        grad_check(
            k,
            &[x, w],
            |tp, v| tp.conv2d(v[0], v[1], p),
            &refn,
            seed ^ 2,
        )
    })
}

/// A 64-channel 3x3 layer, which the training ladder runs by Winograd (forward, dX and
/// dW): with [`Tape::set_winograd`] off, the tape's output and gradients are those of the
/// plan without Winograd to the bit; on, they are Winograd's (not the same bits, within
/// its error of the exact ones).
fn check_conv_winograd_switch(k: Kernels) -> CheckResult {
    use tensor::{ConvBackward, ConvPlan, Mode};
    // 17 x 18: ragged 4 x 4 tiles, and 50 of them, enough for Winograd's dW
    // (`WINOGRAD_DW_MIN_PRODUCT`).
    let x = Tensor::randn(&[2, 64, 17, 18], 0.0, 1.0, 7).map_err(|e| e.to_string())?;
    let w = Tensor::randn(&[64, 64, 3, 3], 0.0, 0.1, 8).map_err(|e| e.to_string())?;
    let dy = Tensor::randn(&[2, 64, 17, 18], 0.0, 1.0, 9).map_err(|e| e.to_string())?;
    let p = Conv2d::new(1, 1);
    let run = |winograd: bool| -> TResult<(Tensor, Tensor, Tensor)> {
        let mut tape = Tape::new(k);
        tape.set_winograd(winograd);
        let (xv, wv) = (tape.param(&x), tape.param(&w));
        let y = tape.conv2d(xv, wv, p)?;
        let out = tape.value(y)?.clone();
        let mut g = tape.backward_from(y, dy.clone())?;
        let none = || tensor::TensorError::InvalidArgument {
            op: "test",
            reason: "no gradient".into(),
        };
        Ok((
            out,
            g.take(xv).ok_or_else(none)?,
            g.take(wv).ok_or_else(none)?,
        ))
    };
    let e = |e: tensor::TensorError| e.to_string();
    let exact_plan = ConvPlan::new(&k, [64, 64, 3, 3], p, Mode::Training)
        .map_err(e)?
        .with_winograd(false);
    let routes = exact_plan.routes([2, 64, 17, 18]).map_err(e)?;
    if routes.forward == tensor::Forward::Winograd
        || routes.input_grad == Some(tensor::InputGrad::Winograd)
        || routes.weight_grad == Some(tensor::WeightGrad::Winograd)
    {
        return Err("the plan without Winograd took it".into());
    }
    let exact_y = k
        .conv2d(&x, &k.pack_conv(&exact_plan, &w).map_err(e)?, &[])
        .map_err(e)?;
    let exact = k
        .conv2d_backward(&x, &w, &dy, &exact_plan, ConvBackward::default())
        .map_err(e)?;
    let (exact_dx, exact_dw) = (exact.dx.ok_or("no dX")?, exact.dw.ok_or("no dW")?);
    let (y0, dx0, dw0) = run(false).map_err(e)?;
    let (y1, dx1, dw1) = run(true).map_err(e)?;
    for (name, a, b) in [
        ("y", &y0, &exact_y),
        ("dx", &dx0, &exact_dx),
        ("dw", &dw0, &exact_dw),
    ] {
        if a.data() != b.data() {
            return Err(format!("{name}: not the plan's exact route's values"));
        }
    }
    let on_plan = ConvPlan::new(&k, [64, 64, 3, 3], p, Mode::Training).map_err(e)?;
    let winograd_routes = on_plan.routes([2, 64, 17, 18]).map_err(e)?;
    let took = [
        winograd_routes.forward == tensor::Forward::Winograd,
        winograd_routes.input_grad == Some(tensor::InputGrad::Winograd),
        winograd_routes.weight_grad == Some(tensor::WeightGrad::Winograd),
    ];
    if took != [true; 3] {
        return Err(format!(
            "the ladder did not take Winograd: {winograd_routes:?}"
        ));
    }
    for (name, a, b) in [
        ("y", &y1, &exact_y),
        ("dx", &dx1, &exact_dx),
        ("dw", &dw1, &exact_dw),
    ] {
        let scale = b.data().iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = a
            .data()
            .iter()
            .zip(b.data())
            .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
        if worst > 1e-4 * scale {
            return Err(format!(
                "{name} by Winograd: {worst} off the exact route (scale {scale})"
            ));
        }
        if worst == 0.0 {
            return Err(format!("{name}: Winograd on gave the exact route's bits"));
        }
    }
    Ok(())
}

/// Whether every channel of `x` (NCHW) spreads enough for an `f32` batch-norm gradient
/// to be accurate. With two or three values per channel that nearly coincide, the
/// normalisation subtracts numbers that agree in most of their digits, and its
/// gradient cancels again (`dy - mean(dy) - x_hat mean(dy x_hat)`): a CI run on
/// 2026-11-29 drew two values 0.023 apart near 2.6, whose `f32` gradient was 0.6% off
/// the `f64` finite difference in every tier (PyTorch's `f32` batch norm is no
/// better). Such draws test the arithmetic's conditioning, not the code.
fn spread_enough(x: &Tensor) -> bool {
    let [n, c, h, w] = match x.shape() {
        &[n, c, h, w] => [n, c, h, w],
        _ => return false,
    };
    let plane = h * w;
    (0..c).all(|ch| {
        let vals: Vec<f64> = (0..n)
            .flat_map(|b| &x.data()[(b * c + ch) * plane..(b * c + ch + 1) * plane])
            .map(|&v| v as f64)
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / vals.len() as f64;
        var >= 0.05
    })
}

fn bn_case(k: Kernels, relu: bool, fixed: bool) -> CheckResult {
    let s = (2usize..=3, 1usize..=3, 1usize..=4, any::<u64>());
    prop(s, move |(n, c, size, seed)| {
        let x = Tensor::randn(&[n, c, size, size], 0.3, 1.5, seed).map_err(fail)?;
        // Batch statistics only: the fixed (inference) form has no such cancellation.
        prop_assume!(
            fixed || spread_enough(&x),
            "a channel's values nearly coincide"
        );
        let g = Tensor::rand_uniform(&[c], 0.5, 1.5, seed ^ 1).map_err(fail)?;
        let b = t(&[c], seed ^ 2)?;
        let mean: Vec<f32> = (0..c).map(|i| 0.1 * i as f32).collect();
        let var: Vec<f32> = (0..c).map(|i| 0.5 + 0.25 * i as f32).collect();
        let plane = size * size;
        let (m64, v64): (Vec<f64>, Vec<f64>) = (
            mean.iter().map(|&v| v as f64).collect(),
            var.iter().map(|&v| v as f64).collect(),
        );
        let refn = move |v: &[Vec<f64>]| {
            bn_f64(
                &v[0],
                &v[1],
                &v[2],
                c,
                plane,
                fixed.then_some((&m64[..], &v64[..])),
                relu,
            )
        };
        grad_check(
            k,
            &[x, g, b],
            |tp, v| {
                if fixed {
                    tp.batch_norm_fixed(v[0], v[1], v[2], &mean, &var, 1e-5, relu)
                } else {
                    tp.batch_norm(v[0], v[1], v[2], 1e-5, relu).map(|(y, _)| y)
                }
            },
            &refn,
            seed ^ 3,
        )
    })
}

fn check_batch_norm(k: Kernels) -> CheckResult {
    bn_case(k, false, false)
}

fn check_batch_norm_relu(k: Kernels) -> CheckResult {
    bn_case(k, true, false)
}

fn check_batch_norm_fixed(k: Kernels) -> CheckResult {
    bn_case(k, false, true)
}

fn check_batch_norm_fixed_relu(k: Kernels) -> CheckResult {
    bn_case(k, true, true)
}

/// `relu(bn(x) + r)`, which the tape fuses into one pass (the add applies the batch
/// norm), or not when the batch norm's output was read first: gradients to x, gamma,
/// beta and the residual, both ways.
fn check_batch_norm_add_relu(k: Kernels) -> CheckResult {
    prop(
        (
            2usize..=3,
            1usize..=3,
            1usize..=4,
            any::<bool>(),
            any::<u64>(),
        ),
        |(n, c, size, fused, seed)| {
            let shape = [n, c, size, size];
            let inputs = [
                t(&shape, seed)?,
                Tensor::rand_uniform(&[c], 0.5, 1.5, seed ^ 1).map_err(fail)?,
                t(&[c], seed ^ 2)?,
                t(&shape, seed ^ 3)?,
            ];
            prop_assume!(
                spread_enough(&inputs[0]),
                "a channel's values nearly coincide"
            );
            let plane = size * size;
            let refn = move |v: &[Vec<f64>]| {
                let h = bn_f64(&v[0], &v[1], &v[2], c, plane, None, false);
                relu_f64(&h.iter().zip(&v[3]).map(|(a, b)| a + b).collect::<Vec<_>>())
            };
            grad_check(
                k,
                &inputs,
                |tp, v| {
                    let (h, _) = tp.batch_norm(v[0], v[1], v[2], 1e-5, false)?;
                    if !fused {
                        tp.value(h)?;
                    }
                    // The residual first: the tape finds the batch norm either side.
                    let y = tp.add(v[3], h, true)?;
                    expect_op(
                        tp,
                        y,
                        if fused {
                            "add+relu of a normalised input"
                        } else {
                            "add+relu"
                        },
                    )?;
                    Ok(y)
                },
                &refn,
                seed ^ 4,
            )
        },
    )
}

/// Fails unless the tape describes `v` as `expected`: a fusion the tape should choose
/// (or not) is checked, not assumed.
fn expect_op(tp: &Tape, v: Var, expected: &str) -> tensor::Result<()> {
    let got = tp.describe(v).unwrap_or_default();
    if got == expected {
        Ok(())
    } else {
        Err(tensor::TensorError::InvalidArgument {
            op: "expect_op",
            reason: format!("the tape recorded {got:?}, expected {expected:?}"),
        })
    }
}

/// `conv2d(relu(bn(x)), w)`, which the tape fuses (the convolution normalises its
/// input on the way in; the normalised tensor is never stored), or not when the batch
/// norm's output was read first: gradients to x, gamma, beta and w, both ways.
fn check_batch_norm_relu_conv2d(k: Kernels) -> CheckResult {
    let s = (
        2usize..=3,
        1usize..=3,
        1usize..=3,
        2usize..=5,
        prop::sample::select(vec![1usize, 3]),
        1usize..=2,
        (any::<bool>(), any::<u64>()),
    );
    prop(s, |(n, c, o, size, kk, stride, (fused, seed))| {
        let pad = kk / 2;
        let inputs = [
            Tensor::randn(&[n, c, size, size], 0.3, 1.5, seed).map_err(fail)?,
            Tensor::rand_uniform(&[c], 0.5, 1.5, seed ^ 1).map_err(fail)?,
            t(&[c], seed ^ 2)?,
            t(&[o, c, kk, kk], seed ^ 3)?,
        ];
        let p = Conv2d::new(stride, pad);
        let plane = size * size;
        let refn = move |v: &[Vec<f64>]| {
            let h = bn_f64(&v[0], &v[1], &v[2], c, plane, None, true);
            conv_f64(&h, &v[3], [n, c, size, size], [o, kk, kk], stride, pad)
        };
        grad_check(
            k,
            &inputs,
            |tp, v| {
                let (h, _) = tp.batch_norm(v[0], v[1], v[2], 1e-5, true)?;
                if !fused {
                    tp.value(h)?;
                }
                let y = tp.conv2d(h, v[3], p)?;
                expect_op(
                    tp,
                    y,
                    if fused {
                        "conv2d of a normalised input"
                    } else {
                        "conv2d"
                    },
                )?;
                Ok(y)
            },
            &refn,
            seed ^ 4,
        )
    })
}

/// A batch norm + ReLU read by a fused convolution and, afterwards, by an add (a
/// CIFAR stem's output, which is also the first block's shortcut), and a batch norm read
/// by two adds: the gradients of every consumer reach x, gamma and beta.
fn check_batch_norm_shared(k: Kernels) -> CheckResult {
    prop(
        (2usize..=3, 1usize..=3, 2usize..=4, any::<u64>()),
        |(n, c, size, seed)| {
            let shape = [n, c, size, size];
            let inputs = [
                Tensor::randn(&shape, 0.3, 1.5, seed).map_err(fail)?,
                Tensor::rand_uniform(&[c], 0.5, 1.5, seed ^ 1).map_err(fail)?,
                t(&[c], seed ^ 2)?,
                Tensor::randn(&[c, c, 3, 3], 0.0, 0.5, seed ^ 3).map_err(fail)?,
                t(&shape, seed ^ 4)?,
            ];
            prop_assume!(
                spread_enough(&inputs[0]),
                "a channel's values nearly coincide"
            );
            let plane = size * size;
            let refn = move |v: &[Vec<f64>]| {
                let h = bn_f64(&v[0], &v[1], &v[2], c, plane, None, true);
                let y = conv_f64(&h, &v[3], shape, [c, 3, 3], 1, 1);
                let z = relu_f64(&y.iter().zip(&h).map(|(a, b)| a + b).collect::<Vec<_>>());
                // The second: bn(x) (no ReLU) into two adds, summed.
                let g = bn_f64(&v[0], &v[1], &v[2], c, plane, None, false);
                let a = relu_f64(&g.iter().zip(&v[4]).map(|(a, b)| a + b).collect::<Vec<_>>());
                let b = relu_f64(&g.iter().zip(&z).map(|(a, b)| a + b).collect::<Vec<_>>());
                a.iter().zip(&b).map(|(a, b)| a + b).collect()
            };
            grad_check(
                k,
                &inputs,
                |tp, v| {
                    let (h, _) = tp.batch_norm(v[0], v[1], v[2], 1e-5, true)?;
                    let y = tp.conv2d(h, v[3], Conv2d::new(1, 1))?;
                    expect_op(tp, y, "conv2d of a normalised input")?;
                    let z = tp.add(y, h, true)?;
                    expect_op(tp, h, "batch_norm+relu")?;
                    let (g, _) = tp.batch_norm(v[0], v[1], v[2], 1e-5, false)?;
                    let a = tp.add(g, v[4], true)?;
                    let b = tp.add(g, z, true)?;
                    expect_op(tp, a, "add+relu of a normalised input")?;
                    expect_op(tp, b, "add+relu of a normalised input")?;
                    tp.add(a, b, false)
                },
                &refn,
                seed ^ 5,
            )
        },
    )
}

fn check_relu(k: Kernels) -> CheckResult {
    prop((1usize..=50, any::<u64>()), |(n, seed)| {
        grad_check(
            k,
            &[t(&[n], seed)?],
            |tp, v| tp.relu(v[0]),
            &|v| relu_f64(&v[0]),
            seed ^ 1,
        )
    })
}

fn check_add_relu(k: Kernels) -> CheckResult {
    prop(
        (1usize..=50, any::<bool>(), any::<u64>()),
        |(n, relu, seed)| {
            let refn = move |v: &[Vec<f64>]| {
                let s: Vec<f64> = v[0].iter().zip(&v[1]).map(|(a, b)| a + b).collect();
                if relu {
                    relu_f64(&s)
                } else {
                    s
                }
            };
            grad_check(
                k,
                &[t(&[1, n], seed)?, t(&[1, n], seed ^ 1)?],
                |tp, v| tp.add(v[0], v[1], relu),
                &refn,
                seed ^ 2,
            )
        },
    )
}

/// `relu?(x + x) + y`: the add hands one shared gradient to both of its inputs, which
/// are the same node, so the second must be added to the first (a copy of the shared
/// tensor, not a write through it).
fn check_add_twice(k: Kernels) -> CheckResult {
    prop(
        (1usize..=50, any::<bool>(), any::<u64>()),
        |(n, relu, seed)| {
            let refn = move |v: &[Vec<f64>]| {
                let s: Vec<f64> = v[0].iter().map(|a| a + a).collect();
                let s = if relu { relu_f64(&s) } else { s };
                s.iter().zip(&v[1]).map(|(a, b)| a + b).collect()
            };
            grad_check(
                k,
                &[t(&[1, n], seed)?, t(&[1, n], seed ^ 1)?],
                |tp, v| {
                    let s = tp.add(v[0], v[0], relu)?;
                    tp.add(s, v[1], false)
                },
                &refn,
                seed ^ 2,
            )
        },
    )
}

fn check_max_pool(k: Kernels) -> CheckResult {
    let s = (1usize..=2, 3usize..=7, 2usize..=3, 1usize..=2, any::<u64>());
    prop(s, |(c, size, kk, stride, seed)| {
        let pool = Pool2d::square(kk, stride, kk / 2);
        let [oh, ow] = pool.output_size(size, size).map_err(fail)?;
        let refn = move |v: &[Vec<f64>]| {
            let mut y = Vec::new();
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut m = f64::NEG_INFINITY;
                        for ky in 0..kk {
                            for kx in 0..kk {
                                let iy = (oy * stride + ky) as isize - (kk / 2) as isize;
                                let ix = (ox * stride + kx) as isize - (kk / 2) as isize;
                                if iy >= 0
                                    && ix >= 0
                                    && (iy as usize) < size
                                    && (ix as usize) < size
                                {
                                    m = m.max(v[0][(ch * size + iy as usize) * size + ix as usize]);
                                }
                            }
                        }
                        y.push(m);
                    }
                }
            }
            y
        };
        grad_check(
            k,
            &[t(&[1, c, size, size], seed)?],
            |tp, v| tp.max_pool2d(v[0], pool),
            &refn,
            seed ^ 1,
        )
    })
}

fn check_avg_pool2d(k: Kernels) -> CheckResult {
    let s = (
        1usize..=2,
        3usize..=7,
        2usize..=3,
        1usize..=2,
        any::<bool>(),
        any::<u64>(),
    );
    prop(s, |(c, size, kk, stride, include_pad, seed)| {
        let pad = kk / 2;
        let pool = AvgPool2d::new(
            Pool2d::square(kk, stride, pad).with_ceil_mode(true),
            include_pad,
        );
        let [oh, ow] = pool.output_size(size, size).map_err(fail)?;
        let refn = move |v: &[Vec<f64>]| {
            let mut y = Vec::new();
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (mut sum, mut cells, mut padded) = (0.0, 0usize, 0usize);
                        for ky in 0..kk {
                            for kx in 0..kk {
                                let iy = (oy * stride + ky) as isize - pad as isize;
                                let ix = (ox * stride + kx) as isize - pad as isize;
                                let inside = |i: isize| i >= 0 && (i as usize) < size;
                                let in_pad =
                                    |i: isize| i >= -(pad as isize) && i < (size + pad) as isize;
                                if inside(iy) && inside(ix) {
                                    sum += v[0][(ch * size + iy as usize) * size + ix as usize];
                                    cells += 1;
                                }
                                if in_pad(iy) && in_pad(ix) {
                                    padded += 1;
                                }
                            }
                        }
                        y.push(sum / if include_pad { padded } else { cells } as f64);
                    }
                }
            }
            y
        };
        grad_check(
            k,
            &[t(&[1, c, size, size], seed)?],
            |tp, v| tp.avg_pool2d(v[0], pool),
            &refn,
            seed ^ 1,
        )
    })
}

fn check_avg_pool(k: Kernels) -> CheckResult {
    prop(
        (1usize..=2, 1usize..=3, 1usize..=5, any::<u64>()),
        |(n, c, size, seed)| {
            let plane = size * size;
            let refn = move |v: &[Vec<f64>]| {
                v[0].chunks(plane)
                    .map(|p| p.iter().sum::<f64>() / plane as f64)
                    .collect()
            };
            grad_check(
                k,
                &[t(&[n, c, size, size], seed)?],
                |tp, v| tp.global_avg_pool(v[0]),
                &refn,
                seed ^ 1,
            )
        },
    )
}

fn check_linear(k: Kernels) -> CheckResult {
    prop(
        (1usize..=4, 1usize..=20, 1usize..=12, any::<u64>()),
        |(n, inp, out, seed)| {
            let refn = move |v: &[Vec<f64>]| {
                let mut y = vec![0.0; n * out];
                for b in 0..n {
                    for o in 0..out {
                        y[b * out + o] = v[2][o]
                            + (0..inp)
                                .map(|i| v[0][b * inp + i] * v[1][o * inp + i])
                                .sum::<f64>();
                    }
                }
                y
            };
            let inputs = [
                t(&[n, inp], seed)?,
                t(&[out, inp], seed ^ 1)?,
                t(&[out], seed ^ 2)?,
            ];
            grad_check(
                k,
                &inputs,
                |tp, v| tp.linear(v[0], v[1], v[2]),
                &refn,
                seed ^ 3,
            )
        },
    )
}

fn check_pad_channels(k: Kernels) -> CheckResult {
    prop(
        (
            1usize..=2,
            1usize..=3,
            1usize..=6,
            1usize..=2,
            0usize..=2,
            any::<u64>(),
        ),
        |(n, c, size, stride, pad, seed)| {
            let os = size.div_ceil(stride);
            let oc = c + 2 * pad;
            let refn = move |v: &[Vec<f64>]| {
                let mut y = vec![0.0; n * oc * os * os];
                for b in 0..n {
                    for ch in 0..c {
                        for oy in 0..os {
                            for ox in 0..os {
                                y[((b * oc + ch + pad) * os + oy) * os + ox] =
                                    v[0][((b * c + ch) * size + oy * stride) * size + ox * stride];
                            }
                        }
                    }
                }
                y
            };
            grad_check(
                k,
                &[t(&[n, c, size, size], seed)?],
                |tp, v| tp.pad_channels(v[0], stride, pad),
                &refn,
                seed ^ 1,
            )
        },
    )
}

fn check_cross_entropy(k: Kernels) -> CheckResult {
    let s = (1usize..=5, 2usize..=10, 0u8..3, any::<u64>());
    prop(s, |(n, classes, smooth, seed)| {
        let smoothing = [0.0f32, 0.1, 0.3][smooth as usize];
        let targets: Vec<usize> = (0..n)
            .map(|i| (seed as usize / 7 + i * 3) % classes)
            .collect();
        let tg = targets.clone();
        let refn = move |v: &[Vec<f64>]| {
            let mut total = 0.0;
            for (row, &tc) in v[0].chunks(classes).zip(&tg) {
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                let mean_logp = row.iter().map(|x| x - lse).sum::<f64>() / classes as f64;
                total -= (1.0 - smoothing as f64) * (row[tc] - lse) + smoothing as f64 * mean_logp;
            }
            vec![total / n as f64]
        };
        grad_check(
            k,
            &[t(&[n, classes], seed)?],
            |tp, v| tp.cross_entropy(v[0], &targets, smoothing),
            &refn,
            seed ^ 1,
        )
    })
}

/// A whole basic residual block, `relu(bn(conv(relu(bn(conv(x))))) + x)`, checks that
/// gradients accumulate where a value has two consumers (x feeds both branches); its
/// end fused by the tape (the add applies the batch norm) or, when the batch norm's
/// output is read first, not.
fn check_block(k: Kernels) -> CheckResult {
    prop(
        (
            2usize..=3,
            1usize..=3,
            2usize..=4,
            any::<bool>(),
            any::<u64>(),
        ),
        |(n, c, size, fused, seed)| {
            let shape = [n, c, size, size];
            let inputs = [
                t(&shape, seed)?,
                Tensor::randn(&[c, c, 3, 3], 0.0, 0.5, seed ^ 1).map_err(fail)?,
                Tensor::randn(&[c, c, 3, 3], 0.0, 0.5, seed ^ 2).map_err(fail)?,
                Tensor::rand_uniform(&[c], 0.5, 1.5, seed ^ 3).map_err(fail)?,
                t(&[c], seed ^ 4)?,
            ];
            let plane = size * size;
            let refn = move |v: &[Vec<f64>]| {
                let h = conv_f64(&v[0], &v[1], shape, [c, 3, 3], 1, 1);
                let h = bn_f64(&h, &v[3], &v[4], c, plane, None, true);
                let h = conv_f64(&h, &v[2], shape, [c, 3, 3], 1, 1);
                let h = bn_f64(&h, &v[3], &v[4], c, plane, None, false);
                relu_f64(&h.iter().zip(&v[0]).map(|(a, b)| a + b).collect::<Vec<_>>())
            };
            let build = |tp: &mut Tape, v: &[Var]| {
                let p = Conv2d::new(1, 1);
                let h = tp.conv2d(v[0], v[1], p)?;
                let (h, _) = tp.batch_norm(h, v[3], v[4], 1e-5, true)?;
                let h = tp.conv2d(h, v[2], p)?;
                let (h, _) = tp.batch_norm(h, v[3], v[4], 1e-5, false)?;
                if !fused {
                    tp.value(h)?;
                }
                tp.add(h, v[0], true)
            };
            grad_check(k, &inputs, build, &refn, seed ^ 5)
        },
    )
}

fn main() {
    common::run("gradient_check", CHECKS);
}
