//! Every convolution route, forced: each forward, input-gradient and weight-gradient
//! route of the plan (`crates/tensor/src/conv/`) runs on random shapes made for it (so that no
//! route is covered by chance, or only when the ladder happens to pick it) and equals the
//! `f64` reference (`reference::conv2d`, `reference::conv2d_backward`), in every ISA tier
//! this CPU has. One check per route, named after it; a failure names the route and the
//! microkernel that ran. Every case a generator makes must be accepted by the plan (a
//! rejection fails the check), so the generators and `ConvPlan`'s checks agree.
//!
//! Forward outputs start as NaNs, so an element a route does not write fails. Epilogues
//! (bias, residual, ReLU, accumulate) vary with the case. Tolerances as in
//! `conv_matches_reference.rs` and `backward_matches_reference.rs`: `1e-5` of the sum of
//! the magnitudes of the products, plus `1e-6`.

mod common;

use common::{close, fail, prop, Check, CheckResult};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tensor::{
    reference, Conv2d, ConvBackward, ConvPlan, DirectForm, Epilogue, Forward, InputGrad, Kernels,
    Layout, Mode, Taps, Tensor, WeightGrad, BLOCKED_CHUNK_BYTES, ON_THE_FLY_SLICE_BYTES,
};

/// Winograd F(4x4, 3x3)'s tolerance, relative to `winograd_scale`: the worst of 2000
/// random cases per tier (generic, AVX2, AVX-512) was 1.3e-6 of it; 4x that.
const WINOGRAD_TOLERANCE: f64 = 5e-6;

/// The scale of Winograd's rounding error at each output: its transforms mix the whole
/// 6 x 6 input window of the output's 4 x 4 tile, so the error follows the window's
/// magnitudes, not only the nine products the output sums: over the input channels,
/// the sum of `|x|` over the window (inside the image) times the largest `|w|` of the
/// channel pair's kernel.
fn winograd_scale(c: &Case, x: &Tensor, w: &Tensor, tile: usize) -> Vec<f64> {
    let [oh, ow] = c.out();
    let (xd, wd) = (x.data(), w.data());
    let mut out = vec![0.0f64; c.n * c.o * oh * ow];
    for b in 0..c.n {
        for oc in 0..c.o {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (ty, tx) = ((oy / tile * tile) as isize, (ox / tile * tile) as isize);
                    let span = tile as isize + 2;
                    let mut sum = 0.0;
                    for ic in 0..c.c {
                        let wmax = wd[(oc * c.c + ic) * 9..][..9]
                            .iter()
                            .fold(0.0f64, |m, v| m.max(v.abs() as f64));
                        let mut window = 0.0;
                        for y in ty - c.pad as isize..ty - c.pad as isize + span {
                            for xx in tx - c.pad as isize..tx - c.pad as isize + span {
                                if (0..c.h as isize).contains(&y) && (0..c.w as isize).contains(&xx)
                                {
                                    let v =
                                        xd[((b * c.c + ic) * c.h + y as usize) * c.w + xx as usize];
                                    if v.is_finite() {
                                        window += v.abs() as f64;
                                    }
                                }
                            }
                        }
                        sum += window * wmax;
                    }
                    out[((b * c.o + oc) * oh + oy) * ow + ox] = sum;
                }
            }
        }
    }
    out
}

/// The Winograd weight gradient's tolerance, relative to `winograd_dw_scale`: the worst
/// of 2100 random cases (700 per tier: generic, AVX2, AVX-512) was 3.6e-6 of it; 4x
/// that.
const WINOGRAD_DW_TOLERANCE: f64 = 1.5e-5;

/// The scale of the Winograd weight gradient's rounding error at each tap of channel
/// pair `(o, c)`: each 4 x 4 tile of `dY` and the 6 x 6 input window under it are
/// transformed whole, so over the images and tiles, the sum of `|x|` over the window
/// (inside the image) times the largest `|dY|` of the tile.
fn winograd_dw_scale(c: &Case, x: &Tensor, dy: &Tensor) -> Vec<f64> {
    let [oh, ow] = c.out();
    let (xd, gd) = (x.data(), dy.data());
    let mut out = vec![0.0f64; c.o * c.c * 9];
    for b in 0..c.n {
        for ty in (0..oh).step_by(4) {
            for tx in (0..ow).step_by(4) {
                let dmax: Vec<f64> = (0..c.o)
                    .map(|oc| {
                        let mut m = 0.0f64;
                        for y in ty..(ty + 4).min(oh) {
                            for xx in tx..(tx + 4).min(ow) {
                                let v = gd[((b * c.o + oc) * oh + y) * ow + xx] as f64;
                                m = m.max(v.abs());
                            }
                        }
                        m
                    })
                    .collect();
                for ic in 0..c.c {
                    let mut window = 0.0f64;
                    for y in ty as isize - c.pad as isize..ty as isize - c.pad as isize + 6 {
                        for xx in tx as isize - c.pad as isize..tx as isize - c.pad as isize + 6 {
                            if (0..c.h as isize).contains(&y) && (0..c.w as isize).contains(&xx) {
                                let v = xd[((b * c.c + ic) * c.h + y as usize) * c.w + xx as usize];
                                window += (v as f64).abs();
                            }
                        }
                    }
                    for (oc, d) in dmax.iter().enumerate() {
                        for tap in 0..9 {
                            out[(oc * c.c + ic) * 9 + tap] += window * d;
                        }
                    }
                }
            }
        }
    }
    out
}

/// One convolution: batch, channels, image, square kernel, stride, padding, the
/// epilogue's bits (1 bias, 2 residual, 4 ReLU, 8 accumulate) and a seed.
#[derive(Debug, Clone, Copy)]
struct Case {
    n: usize,
    c: usize,
    o: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    pad: usize,
    epilogue: u8,
    seed: u64,
}

impl Case {
    fn fits(&self) -> bool {
        self.h + 2 * self.pad >= self.k && self.w + 2 * self.pad >= self.k
    }
    fn out(&self) -> [usize; 2] {
        let o = |size: usize| (size + 2 * self.pad - self.k) / self.s + 1;
        [o(self.h), o(self.w)]
    }
}

/// What a generator fixes; the rest is random.
#[derive(Clone, Copy, Default)]
struct Shape {
    /// The kernel sizes to draw from (empty: 1, 2, 3, 5).
    k: &'static [usize],
    /// Strides to draw from (empty: 1..=3).
    s: &'static [usize],
    /// Padding `k / 2` ("same") instead of a random one.
    same: bool,
    /// Padding 0.
    unpadded: bool,
    /// The output (for the forward) or the input (for dX's transposed convolution)
    /// width, a whole number of vectors.
    whole_rows: bool,
    /// Masked form: rows shorter than a vector, planes of whole vectors, "same".
    masked: bool,
    /// Output channels a multiple of this many vectors (0: any count).
    o_vectors: usize,
    /// Input channels around a vector (the blocked layout's blocks).
    blocked: bool,
    /// Padding below the kernel size (dX's transposed convolution pads by
    /// `k - 1 - pad`).
    transposed: bool,
    /// Every phase of dX reads inside dY (`StridedTransposed`): for stride `s`, with
    /// `t = ceil(k / s) - 1`, the last row and column `(size - 1 + pad) / s` of each
    /// phase fall before `out + 2 t`.
    phases: bool,
}

fn cases(kern: Kernels, shape: Shape) -> impl Strategy<Value = Case> {
    let l = kern.lanes();
    let ks = if shape.k.is_empty() {
        vec![1, 2, 3, 5]
    } else {
        shape.k.to_vec()
    };
    let ss = if shape.s.is_empty() {
        vec![1, 2, 3]
    } else {
        shape.s.to_vec()
    };
    let channels = if shape.blocked {
        prop::sample::select(vec![1, l - 1, l, l + 1, 2 * l + 1]).boxed()
    } else {
        (1usize..=5).boxed()
    };
    let outs = match shape.o_vectors {
        0 if shape.blocked => prop::sample::select(vec![1, l - 1, l, l + 1, 2 * l + 1]).boxed(),
        0 => (1usize..=19).boxed(),
        v => (1usize..=3).prop_map(move |m| m * v * l).boxed(),
    };
    (
        1usize..=3,
        channels,
        outs,
        prop::sample::select(ks),
        prop::sample::select(ss),
        (0usize..=3, 1usize..=3, 1usize..=9, 0usize..=3),
        0u8..16,
        any::<u64>(),
    )
        .prop_map(
            move |(n, c, o, k, s, (pad, m, size, extra), epilogue, seed)| {
                let pad = if shape.unpadded {
                    0
                } else if shape.same || shape.masked {
                    k / 2
                } else if shape.transposed {
                    pad.min(k - 1)
                } else {
                    pad.min(k / 2 + 1)
                };
                let mut case = Case {
                    n,
                    c,
                    o,
                    h: size,
                    w: size + extra,
                    k,
                    s,
                    pad,
                    epilogue,
                    seed,
                };
                if shape.masked {
                    // Rows shorter than a vector, wider than the padding, and a plane of
                    // whole vectors: `h` a multiple of `l / gcd(w, l)`.
                    let w = (pad + 1 + extra).min(l - 1).max(pad + 1);
                    let g = (1..=w)
                        .rev()
                        .find(|d| w.is_multiple_of(*d) && l.is_multiple_of(*d))
                        .unwrap_or(1);
                    case.w = w;
                    case.h = (l / g) * m;
                } else if shape.whole_rows {
                    // The forward's output rows `ow = m l`: `w = (ow - 1) s + k - 2 pad + e`
                    // with `e < s`.
                    let ow = m * l;
                    let w = ((ow - 1) * s + k + extra % s).saturating_sub(2 * pad);
                    case.w = w.max(1);
                }
                case
            },
        )
        .prop_filter("the kernel fits the padded image", Case::fits)
        .prop_filter("whole rows kept", move |c| {
            !shape.whole_rows || c.out()[1] % l == 0
        })
        .prop_filter("every phase of dX inside dY", move |c| {
            let t = c.k.div_ceil(c.s) - 1;
            let [oh, ow] = c.out();
            !shape.phases
                || ((c.h - 1 + c.pad) / c.s < oh + 2 * t && (c.w - 1 + c.pad) / c.s < ow + 2 * t)
        })
}

/// `plan` forced to `route` must accept the case.
fn accepted(
    plan: ConvPlan,
    input: [usize; 4],
    what: &str,
) -> Result<tensor::Routes, TestCaseError> {
    plan.routes(input).map_err(|e| {
        TestCaseError::fail(format!("{what}: the plan rejected a case made for it: {e}"))
    })
}

fn operands(c: &Case) -> Result<(Tensor, Tensor, Tensor), TestCaseError> {
    let x = Tensor::randn(&[c.n, c.c, c.h, c.w], 0.0, 1.0, c.seed).map_err(fail)?;
    let w = Tensor::randn(&[c.o, c.c, c.k, c.k], 0.0, 0.5, c.seed ^ 1).map_err(fail)?;
    let [oh, ow] = c.out();
    let dy = Tensor::randn(&[c.n, c.o, oh, ow], 0.0, 1.0, c.seed ^ 2).map_err(fail)?;
    Ok((x, w, dy))
}

fn abs(t: &Tensor) -> Tensor {
    let mut a = t.clone();
    a.data_mut().iter_mut().for_each(|v| *v = v.abs());
    a
}

/// The forward by `route`, with the case's epilogue, against the reference.
fn run_forward(kern: Kernels, route: Forward, c: &Case) -> Result<(), TestCaseError> {
    let (mut x, w, _) = operands(c)?;
    // One case in four has a NaN input pixel: the outputs whose windows cover it must be
    // NaN after every epilogue, ReLU included, as in PyTorch.
    let mut nan_at = None;
    if c.seed.is_multiple_of(4) && !x.is_empty() {
        let at = (c.seed / 4) as usize % x.len();
        x.data_mut()[at] = f32::NAN;
        nan_at = Some(at);
    }
    let layout = route.layout();
    let blocked = layout == Layout::Blocked;
    let plan = ConvPlan::new(
        &kern,
        [c.o, c.c, c.k, c.k],
        Conv2d::new(c.s, c.pad),
        Mode::Inference,
    )
    .and_then(|p| p.in_layout(layout))
    .map_err(fail)?
    .force_forward(route);
    let what = format!("{route} ({}) {c:?}", route.microkernel(&kern));
    prop_assert_eq!(accepted(plan, [c.n, c.c, c.h, c.w], &what)?.forward, route);
    let packed = kern.pack_conv(&plan, &w).map_err(fail)?;
    let bias: Vec<f32> = (0..c.o).map(|i| 0.1 * i as f32 - 0.3).collect();
    let (with_bias, with_residual, relu, accumulate) = (
        c.epilogue & 1 != 0,
        c.epilogue & 2 != 0,
        c.epilogue & 4 != 0,
        // The blocked kernel adds the output's values or a residual, not both.
        c.epilogue & 8 != 0 && !(blocked && c.epilogue & 2 != 0),
    );
    let (mut want, scale) =
        reference::conv2d(&x, &w, with_bias.then_some(&bias[..]), c.s, c.pad).map_err(fail)?;
    // Winograd's output tile side (4 or 2), or 0.
    let tile = match route {
        Forward::BlockedWinograd | Forward::BlockedWinogradOnTheFly | Forward::Winograd => 4,
        Forward::BlockedWinograd2 => 2,
        _ => 0,
    };
    let mut tol: Vec<f32> = if tile > 0 {
        winograd_scale(c, &x, &w, tile)
            .iter()
            .map(|s| (WINOGRAD_TOLERANCE * s + 1e-6) as f32)
            .collect()
    } else {
        scale.iter().map(|s| (1e-5 * s + 1e-6) as f32).collect()
    };
    let residual = Tensor::randn(want.shape(), 0.0, 1.0, c.seed ^ 3).map_err(fail)?;
    let start = Tensor::randn(want.shape(), 0.0, 1.0, c.seed ^ 4).map_err(fail)?;
    for (add, on) in [(&start, accumulate), (&residual, with_residual)] {
        if on {
            for ((v, r), t) in want.data_mut().iter_mut().zip(add.data()).zip(&mut tol) {
                *v += r;
                *t += 1e-6 * r.abs();
            }
        }
    }
    if relu {
        want.data_mut()
            .iter_mut()
            .for_each(|v| *v = if *v > 0.0 || v.is_nan() { *v } else { 0.0 });
    }
    let rb = kern.to_blocked(&residual).map_err(fail)?;
    let mut steps = Vec::new();
    if accumulate {
        steps.push(Epilogue::Accumulate);
    }
    if with_bias {
        steps.push(Epilogue::Bias(&bias));
    }
    if with_residual {
        steps.push(if blocked {
            Epilogue::residual_blocked(&rb)
        } else {
            Epilogue::residual(&residual)
        });
    }
    if relu {
        steps.push(Epilogue::Relu);
    }
    let got = if blocked {
        let xb = kern.to_blocked(&x).map_err(fail)?;
        let y = if accumulate {
            let mut y = kern.to_blocked(&start).map_err(fail)?;
            kern.blocked_conv2d_into(&xb, &packed, &steps, &mut y)
                .map_err(fail)?;
            y
        } else {
            kern.blocked_conv2d(&xb, &packed, &steps).map_err(fail)?
        };
        kern.from_blocked(&y).map_err(fail)?
    } else {
        // NaNs, unless accumulating: the route must write every element.
        let mut y = if accumulate {
            start.clone()
        } else {
            Tensor::full(want.shape(), f32::NAN).map_err(fail)?
        };
        kern.conv2d_into(&x, &packed, &steps, &mut y)
            .map_err(fail)?;
        y
    };
    let mut got = got;
    if let (true, Some(at)) = (tile > 0, nan_at) {
        // Winograd mixes a whole 6 x 6 input window into each 4 x 4 output tile: a NaN
        // input makes NaN every output of the tiles whose windows hold it (a superset of
        // the outputs whose 3 x 3 windows do, which must be NaN as the reference's).
        let [oh, ow] = c.out();
        let (b, y, x) = (at / (c.c * c.h * c.w), at / c.w % c.h, at % c.w);
        let near = |o: usize, i: usize| {
            o / tile * tile <= i + c.pad && i + c.pad <= o / tile * tile + tile + 1
        };
        for (i, v) in got.data_mut().iter_mut().enumerate() {
            let (ob, oy, ox) = (i / (c.o * oh * ow), i / ow % oh, i % ow);
            if v.is_nan() && ob == b && near(oy, y) && near(ox, x) {
                *v = want.data()[i];
            }
        }
    }
    close(&what, got.data(), want.data(), |i| tol[i])
}

/// A training plan forced to `dx` or `dw`, its backward against the reference; dX also
/// added into another consumer's gradient when the case's accumulate bit is set.
fn run_backward(
    kern: Kernels,
    dx: Option<InputGrad>,
    dw: Option<WeightGrad>,
    c: &Case,
) -> Result<(), TestCaseError> {
    let (x, w, dy) = operands(c)?;
    let mut plan = ConvPlan::new(
        &kern,
        [c.o, c.c, c.k, c.k],
        Conv2d::new(c.s, c.pad),
        Mode::Training,
    )
    .map_err(fail)?;
    let what = match (dx, dw) {
        (Some(r), _) => {
            plan = plan.force_input_grad(r);
            format!("dX {r} ({}) {c:?}", r.microkernel(&kern))
        }
        (_, Some(r)) => {
            plan = plan.force_weight_grad(r);
            format!("dW {r} ({}) {c:?}", r.microkernel(&kern, c.o))
        }
        _ => unreachable!("a route to force"),
    };
    let routes = accepted(plan, [c.n, c.c, c.h, c.w], &what)?;
    prop_assert!(dx.is_none() || routes.input_grad == dx);
    prop_assert!(dw.is_none() || routes.weight_grad == dw);
    let (rdx, rdw) = reference::conv2d_backward(&x, &w, &dy, c.s, c.pad).map_err(fail)?;
    let (sx, sw) =
        reference::conv2d_backward(&abs(&x), &abs(&w), &abs(&dy), c.s, c.pad).map_err(fail)?;
    if dw.is_some() {
        let got = kern
            .conv2d_backward(&x, &w, &dy, &plan, ConvBackward::new(false, true))
            .map_err(fail)?;
        let g = got.dw.ok_or_else(|| TestCaseError::fail("no dW"))?;
        if dw == Some(WeightGrad::Winograd) {
            let scale = winograd_dw_scale(c, &x, &dy);
            return close(&what, g.data(), rdw.data(), |i| {
                (WINOGRAD_DW_TOLERANCE * scale[i] + 1e-6) as f32
            });
        }
        return close(&what, g.data(), rdw.data(), |i| 1e-5 * sw.data()[i] + 1e-6);
    }
    let got = if c.epilogue & 8 != 0 {
        let acc = Tensor::randn(x.shape(), 0.0, 1.0, c.seed ^ 5).map_err(fail)?;
        let got = kern
            .conv2d_backward(
                &x,
                &w,
                &dy,
                &plan,
                ConvBackward::new(false, false).adding_dx_into(acc.clone()),
            )
            .map_err(fail)?;
        let mut g = got.dx.ok_or_else(|| TestCaseError::fail("no dX"))?;
        g.data_mut()
            .iter_mut()
            .zip(acc.data())
            .for_each(|(v, a)| *v -= a);
        g
    } else {
        let got = kern
            .conv2d_backward(&x, &w, &dy, &plan, ConvBackward::new(true, false))
            .map_err(fail)?;
        got.dx.ok_or_else(|| TestCaseError::fail("no dX"))?
    };
    let tol: Vec<f64> = if dx == Some(InputGrad::Winograd) {
        // dX is the convolution of dY by the rotated, transposed weights, padded by
        // `2 - pad`: Winograd's error scale of that convolution.
        let [oh, ow] = c.out();
        let t = Case {
            c: c.o,
            o: c.c,
            h: oh,
            w: ow,
            s: 1,
            pad: c.k - 1 - c.pad,
            ..*c
        };
        let mut wt = vec![0.0f32; c.o * c.c * 9];
        for (i, v) in w.data().iter().enumerate() {
            let (oc, ic, tap) = (i / (c.c * 9), i / 9 % c.c, i % 9);
            wt[(ic * c.o + oc) * 9 + 8 - tap] = *v;
        }
        let wt = Tensor::from_vec(&[c.c, c.o, 3, 3], wt).map_err(fail)?;
        winograd_scale(&t, &dy, &wt, 4)
            .iter()
            .map(|s| WINOGRAD_TOLERANCE * s + 2e-6)
            .collect()
    } else {
        sx.data().iter().map(|s| 1e-5 * *s as f64 + 2e-6).collect()
    };
    close(&what, got.data(), rdx.data(), |i| tol[i] as f32)
}

fn forward(kern: Kernels, route: Forward, shape: Shape) -> CheckResult {
    prop(cases(kern, shape), |c| run_forward(kern, route, &c))
}

fn input_grad(kern: Kernels, route: InputGrad, shape: Shape) -> CheckResult {
    prop(cases(kern, shape), |c| {
        run_backward(kern, Some(route), None, &c)
    })
}

fn weight_grad(kern: Kernels, route: WeightGrad, shape: Shape) -> CheckResult {
    prop(cases(kern, shape), |c| {
        run_backward(kern, None, Some(route), &c)
    })
}

const ONE: &[usize] = &[1];
const REAL: &[usize] = &[2, 3, 5];
const STRIDE_1: &[usize] = &[1];
const STRIDED: &[usize] = &[2, 3];
const UNIT_1X1: Shape = Shape {
    k: ONE,
    s: STRIDE_1,
    unpadded: true,
    ..ANY
};
const ANY: Shape = Shape {
    k: &[],
    s: &[],
    unpadded: false,
    same: false,
    whole_rows: false,
    masked: false,
    o_vectors: 0,
    blocked: false,
    transposed: false,
    phases: false,
};

/// Grouped convolutions in the blocked layout, by `route` (forced): for
/// `Forward::BlockedGrouped`, groups of whole blocks (as many or more outputs than
/// inputs) and groups at most a block wide with as many outputs as inputs (ResNeXt's),
/// several in a block, read with zero weights between them; for
/// `Forward::BlockedNarrowGroups`, groups of as many outputs as inputs only, narrow or
/// of whole blocks. Bias, residual and ReLU in the
/// tile; any kernel, stride and padding; dilation 1-3 at stride 1; rows of 1-30 pixels.
fn blocked_grouped(kern: Kernels, route: Forward) -> CheckResult {
    let l = kern.lanes();
    let narrow: Vec<usize> = [1, 2, 4, 8, 16]
        .into_iter()
        .filter(|d| d <= &l && l.is_multiple_of(*d))
        .collect();
    // Narrow: cg = og dividing the block.
    let narrow = prop::sample::select(narrow).prop_map(|d| (d, d));
    let per_group = if route == Forward::BlockedGrouped {
        // And whole blocks: (cg, og) multiples of the block.
        let whole = (1usize..=2, 1usize..=2).prop_map(move |(a, b)| (a * l, b * l));
        prop_oneof![whole, narrow].boxed()
    } else {
        // And whole blocks with as many outputs as inputs.
        let square = (1usize..=2).prop_map(move |a| (a * l, a * l));
        prop_oneof![square, narrow].boxed()
    };
    let cases = (
        1usize..=2,
        1usize..=3,
        per_group,
        prop::sample::select(vec![1usize, 3]),
        1usize..=2,
        1usize..=9,
        0u8..16,
        1usize..=3,
        1usize..=30,
        any::<u64>(),
    );
    prop(
        cases,
        |(n, mult, (cg, og), k, s, size, epilogue, d, width, seed)| {
            // At least two groups, and enough that the channels are whole blocks.
            let groups = if cg < l { mult * l / cg } else { mult + 1 };
            // Dilation at stride 1 ("same" layers, as the dilated backbones').
            let d = if s == 1 { d } else { 1 };
            let (c, o, pad) = (groups * cg, groups * og, d * (k / 2));
            let conv = Conv2d::new(s, pad).with_groups(groups).with_dilation(d);
            let plan = ConvPlan::new(&kern, [o, cg, k, k], conv, Mode::Inference)
                .and_then(|p| p.in_layout(tensor::Layout::Blocked))
                .map_err(fail)?;
            // Rows of up to 30 pixels: several tiles per row.
            let input = [n, c, size, width];
            let what = format!("{route} {groups} x ({cg} -> {og}) k{k} s{s} d{d} {input:?}");
            // The ladder's choice: the narrow-group kernel wherever it fits.
            let chosen = if cg == og {
                Forward::BlockedNarrowGroups
            } else {
                Forward::BlockedGrouped
            };
            prop_assert_eq!(accepted(plan, input, &what)?.forward, chosen);
            let plan = plan.force_forward(route);
            prop_assert_eq!(accepted(plan, input, &what)?.forward, route);
            let x = Tensor::randn(&input, 0.0, 1.0, seed).map_err(fail)?;
            let w = Tensor::randn(&[o, cg, k, k], 0.0, 0.5, seed ^ 1).map_err(fail)?;
            let bias: Vec<f32> = (0..o).map(|i| 0.1 * i as f32 - 0.3).collect();
            let (with_bias, with_residual, relu) =
                (epilogue & 1 != 0, epilogue & 2 != 0, epilogue & 4 != 0);
            let (mut want, scale) =
                reference::conv2d_with(&x, &w, with_bias.then_some(&bias[..]), conv)
                    .map_err(fail)?;
            let residual = Tensor::randn(want.shape(), 0.0, 1.0, seed ^ 3).map_err(fail)?;
            if with_residual {
                want.data_mut()
                    .iter_mut()
                    .zip(residual.data())
                    .for_each(|(v, r)| *v += r);
            }
            if relu {
                want.data_mut().iter_mut().for_each(|v| *v = v.max(0.0));
            }
            let rb = kern.to_blocked(&residual).map_err(fail)?;
            let mut steps = Vec::new();
            if with_bias {
                steps.push(Epilogue::Bias(&bias));
            }
            // The residual as a step, or (bit 8) already in the output, accumulated onto.
            let in_place = with_residual && epilogue & 8 != 0;
            if in_place {
                steps.insert(0, Epilogue::Accumulate);
            } else if with_residual {
                steps.push(Epilogue::residual_blocked(&rb));
            }
            if relu {
                steps.push(Epilogue::Relu);
            }
            let packed = kern.pack_conv(&plan, &w).map_err(fail)?;
            let xb = kern.to_blocked(&x).map_err(fail)?;
            let y = if in_place {
                let mut y = rb.clone();
                kern.blocked_conv2d_into(&xb, &packed, &steps, &mut y)
                    .map_err(fail)?;
                y
            } else {
                kern.blocked_conv2d(&xb, &packed, &steps).map_err(fail)?
            };
            let got = kern.from_blocked(&y).map_err(fail)?;
            close(&what, got.data(), want.data(), |i| {
                (1e-5 * (scale[i] + residual.data()[i].abs() as f64) + 1e-6) as f32
            })?;
            // Groups that fill no block exactly are refused there, by name.
            if l > 2 {
                let odd = ConvPlan::new(
                    &kern,
                    [3 * (l - 1), l - 1, 3, 3],
                    Conv2d::new(1, 1).with_groups(3),
                    Mode::Inference,
                )
                .map_err(fail)?;
                prop_assert!(odd.in_layout(tensor::Layout::Blocked).is_err());
            }
            // Groups of more outputs than inputs have no narrow-group route: forcing it
            // is refused.
            let whole = ConvPlan::new(
                &kern,
                [4 * l, l, 3, 3],
                Conv2d::new(1, 1).with_groups(2),
                Mode::Inference,
            )
            .and_then(|p| p.in_layout(tensor::Layout::Blocked))
            .map_err(fail)?
            .force_forward(Forward::BlockedNarrowGroups);
            prop_assert!(whole.routes([1, 2 * l, 4, 4]).is_err());
            let zeros = Tensor::zeros(&[4 * l, l, 3, 3]).map_err(fail)?;
            prop_assert!(kern.pack_conv(&whole, &zeros).is_err());
            Ok(())
        },
    )
}

/// The blocked kernel on a layer whose weights per group of output blocks pass
/// `BLOCKED_CHUNK_BYTES`, so that it sums the input channels in chunks (each adding to
/// the output the chunks before wrote): every epilogue (accumulating too), strides 1 and 2, ragged last
/// input and output blocks. A few fixed cases (the layer is large for the f64 reference).
fn blocked_in_chunks(kern: Kernels) -> CheckResult {
    let l = kern.lanes();
    // Four output blocks (the kernel's group), 5x5 taps: weights of `c` inputs are
    // `c 25 4 l` floats a group; at least three chunks' worth.
    let c = 3 * BLOCKED_CHUNK_BYTES / (25 * 4 * l * 4) + l / 2 + 1;
    for seed in 0..4u64 {
        let case = Case {
            n: 2,
            c,
            o: 3 * l + 1,
            h: 3,
            w: 4 + seed as usize % 2,
            k: 5,
            s: 1 + seed as usize % 2,
            pad: 2,
            epilogue: [7, 13, 6, 9][seed as usize],
            seed: 11 + seed,
        };
        run_forward(kern, Forward::Blocked, &case).map_err(|e| format!("{case:?}: {e}"))?;
    }
    Ok(())
}

/// The on-the-fly Winograd route on a layer of enough input channels that a task
/// transforms its weights in several slices of `ON_THE_FLY_SLICE_BYTES` (each slice's
/// products summing onto the ones before), and a last slice of fewer blocks.
fn winograd_on_the_fly_in_slices(kern: Kernels) -> CheckResult {
    let l = kern.lanes();
    // 36 positions of `F` output blocks' weights: `36 F l^2` floats an input block, at
    // most `F` = 4 blocks of `l` lanes (with `F` = 1, the most slices).
    let per_block = 36 * l * l * 4;
    let blocks = 2 * (ON_THE_FLY_SLICE_BYTES / per_block).max(1) + 1;
    for seed in 0..3u64 {
        let case = Case {
            n: 1 + seed as usize % 2,
            c: blocks * l - seed as usize,
            o: 2 * l + 3,
            h: 5 + seed as usize,
            w: 6,
            k: 3,
            s: 1,
            pad: 1,
            epilogue: [7, 3, 6][seed as usize],
            seed: 21 + seed,
        };
        run_forward(kern, Forward::BlockedWinogradOnTheFly, &case)
            .map_err(|e| format!("{case:?}: {e}"))?;
    }
    Ok(())
}

/// One check per route: `(name, check)`.
macro_rules! route_checks {
    ($($name:ident => $body:expr;)*) => {
        $(fn $name(k: Kernels) -> CheckResult { $body(k) })*
        const CHECKS: &[(&str, Check)] = &[$((stringify!($name), $name)),*];
    };
}

route_checks! {
    forward_gemm_image => |k| forward(k, Forward::GemmImage, UNIT_1X1);
    forward_gemm_subsampled => |k| forward(k, Forward::GemmSubsampled, Shape { s: &[1, 2, 3], ..UNIT_1X1 });
    forward_gemm_im2col => |k| forward(k, Forward::GemmIm2col, ANY);
    forward_direct_padded => |k| forward(k, Forward::Direct(DirectForm::Padded), Shape { k: REAL, s: STRIDE_1, whole_rows: true, ..ANY });
    forward_direct_masked => |k| forward(k, Forward::Direct(DirectForm::Masked), Shape { k: &[3, 5], s: STRIDE_1, masked: true, ..ANY });
    forward_direct_phased => |k| forward(k, Forward::Direct(DirectForm::Phased), Shape { k: REAL, s: STRIDED, whole_rows: true, ..ANY });
    forward_direct_planar => |k| forward(k, Forward::Direct(DirectForm::Planar), Shape { k: REAL, ..ANY });
    forward_blocked => |k| forward(k, Forward::Blocked, Shape { k: &[1, 3], blocked: true, ..ANY });
    forward_blocked_in_chunks => blocked_in_chunks;
    forward_blocked_winograd => |k| forward(k, Forward::BlockedWinograd, Shape { k: &[3], s: STRIDE_1, blocked: true, ..ANY });
    forward_blocked_winograd2 => |k| forward(k, Forward::BlockedWinograd2, Shape { k: &[3], s: STRIDE_1, blocked: true, ..ANY });
    forward_blocked_winograd_on_the_fly => |k| forward(k, Forward::BlockedWinogradOnTheFly, Shape { k: &[3], s: STRIDE_1, blocked: true, ..ANY });
    forward_on_the_fly_in_slices => winograd_on_the_fly_in_slices;
    forward_winograd => |k| forward(k, Forward::Winograd, Shape { k: &[3], s: STRIDE_1, blocked: true, ..ANY });
    forward_blocked_grouped => |k| blocked_grouped(k, Forward::BlockedGrouped);
    forward_blocked_narrow_groups => |k| blocked_grouped(k, Forward::BlockedNarrowGroups);
    dx_gemm_image => |k| input_grad(k, InputGrad::GemmImage, UNIT_1X1);
    dx_gemm_col2im => |k| input_grad(k, InputGrad::GemmCol2im, ANY);
    dx_direct_transposed_padded => |k| input_grad(k, InputGrad::DirectTransposed(DirectForm::Padded), Shape { k: &[3, 5], s: STRIDE_1, same: true, whole_rows: true, ..ANY });
    dx_direct_transposed_masked => |k| input_grad(k, InputGrad::DirectTransposed(DirectForm::Masked), Shape { k: &[3, 5], s: STRIDE_1, masked: true, ..ANY });
    dx_direct_transposed_planar => |k| input_grad(k, InputGrad::DirectTransposed(DirectForm::Planar), Shape { k: REAL, s: STRIDE_1, transposed: true, ..ANY });
    dx_direct_phases => |k| input_grad(k, InputGrad::DirectPhases, Shape { s: STRIDED, phases: true, ..ANY });
    dx_winograd => |k| input_grad(k, InputGrad::Winograd, Shape { k: &[3], s: STRIDE_1, blocked: true, transposed: true, ..ANY });
    dw_outer_image => |k| weight_grad(k, WeightGrad::OuterProduct(Taps::Image), Shape { o_vectors: 2, ..UNIT_1X1 });
    dw_outer_planes => |k| weight_grad(k, WeightGrad::OuterProduct(Taps::PhasePlanes), Shape { o_vectors: 2, ..ANY });
    dw_rowdot_image => |k| weight_grad(k, WeightGrad::RowDot(Taps::Image), Shape { whole_rows: true, ..UNIT_1X1 });
    dw_rowdot_planes => |k| weight_grad(k, WeightGrad::RowDot(Taps::PhasePlanes), ANY);
    dw_winograd => |k| weight_grad(k, WeightGrad::Winograd, Shape { k: &[3], s: STRIDE_1, blocked: true, ..ANY });
    dw_gemm_images => |k| {
        // The unpadded 1x1 layers' subsampled input, and im2col for the rest.
        weight_grad(k, WeightGrad::Gemm, Shape { s: &[1, 2, 3], ..UNIT_1X1 })?;
        weight_grad(k, WeightGrad::Gemm, Shape { k: REAL, ..ANY })
    };
}

fn main() {
    // Every route in the library's lists has a check here.
    let names: Vec<String> = CHECKS.iter().map(|(n, _)| n.replace('_', "-")).collect();
    let listed = Forward::ALL
        .iter()
        .map(|r| format!("forward-{r}"))
        .chain(InputGrad::ALL.iter().map(|r| format!("dx-{r}")))
        .chain(WeightGrad::ALL.iter().map(|r| format!("dw-{r}")));
    for route in listed {
        assert!(
            names.contains(&route),
            "route {route} has no check in conv_routes.rs"
        );
    }
    common::run("conv_routes", CHECKS);
}
