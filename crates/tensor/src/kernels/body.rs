//! The kernel bodies, written once over [`Simd`] and instantiated by every tier.
//!
//! Each function walks its data a vector at a time and finishes the ragged tail (fewer
//! than `LANES` elements) with a partial load and store, so the tail goes through the
//! very same arithmetic as the rest (no separate scalar loop that could disagree).
//!
//! # Safety
//!
//! Callers (the tiers' entry points, reached only through the checked wrappers in
//! [`super`]) guarantee that every pointer is valid for the stated number of elements
//! and that the CPU has the tier's features. Source and destination may be the same
//! pointer (an in-place operation): each element is read before the same element is
//! written, and no other element is touched in between.

use super::simd::Simd;
use super::{AvgPool2d, Pool2d};

/// `dst[i] = f(src[i])` over `n` elements.
#[inline(always)]
unsafe fn map1<S: Simd>(src: *const f32, dst: *mut f32, n: usize, f: impl Fn(S::V) -> S::V) {
    let mut i = 0;
    while i + S::LANES <= n {
        S::store(dst.add(i), f(S::load(src.add(i))));
        i += S::LANES;
    }
    if i < n {
        S::store_partial(
            dst.add(i),
            f(S::load_partial(src.add(i), n - i, 0.0)),
            n - i,
        );
    }
}

/// `dst[i] = f(a[i], b[i])` over `n` elements.
#[inline(always)]
unsafe fn map2<S: Simd>(
    a: *const f32,
    b: *const f32,
    dst: *mut f32,
    n: usize,
    f: impl Fn(S::V, S::V) -> S::V,
) {
    let mut i = 0;
    while i + S::LANES <= n {
        S::store(dst.add(i), f(S::load(a.add(i)), S::load(b.add(i))));
        i += S::LANES;
    }
    if i < n {
        let r = n - i;
        let v = f(
            S::load_partial(a.add(i), r, 0.0),
            S::load_partial(b.add(i), r, 0.0),
        );
        S::store_partial(dst.add(i), v, r);
    }
}

/// Folds `n` elements into one vector: `acc = step(acc, x)` over four independent
/// accumulators (starting at `init`) so that the steps pipeline instead of waiting on
/// each other, then `combine` merges the four. The tail's missing lanes hold `fill`,
/// which must leave an accumulator unchanged under `step`.
#[inline(always)]
unsafe fn fold<S: Simd>(
    src: *const f32,
    n: usize,
    init: f32,
    fill: f32,
    step: impl Fn(S::V, S::V) -> S::V,
    combine: impl Fn(S::V, S::V) -> S::V,
) -> S::V {
    let l = S::LANES;
    let mut acc = [S::splat(init); 4];
    let mut i = 0;
    while i + 4 * l <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = step(*a, S::load(src.add(i + j * l)));
        }
        i += 4 * l;
    }
    while i + l <= n {
        acc[0] = step(acc[0], S::load(src.add(i)));
        i += l;
    }
    if i < n {
        acc[0] = step(acc[0], S::load_partial(src.add(i), n - i, fill));
    }
    combine(combine(acc[0], acc[1]), combine(acc[2], acc[3]))
}

/// Inference batch norm on one plane: `dst = src * scale + shift`.
#[inline(always)]
pub(crate) unsafe fn scale_shift<S: Simd>(
    src: *const f32,
    dst: *mut f32,
    n: usize,
    scale: f32,
    shift: f32,
) {
    let (a, b) = (S::splat(scale), S::splat(shift));
    map1::<S>(src, dst, n, |x| S::mul_add(x, a, b));
}

/// Inference batch norm fused with ReLU: `dst = max(src * scale + shift, 0)`.
#[inline(always)]
pub(crate) unsafe fn scale_shift_relu<S: Simd>(
    src: *const f32,
    dst: *mut f32,
    n: usize,
    scale: f32,
    shift: f32,
) {
    let (a, b, zero) = (S::splat(scale), S::splat(shift), S::splat(0.0));
    map1::<S>(src, dst, n, |x| S::max(zero, S::mul_add(x, a, b)));
}

/// `rows` rows of `width` floats, row `r` read at `src + r src_pitch` and written at
/// `dst + r dst_pitch`: copied, or with `affine = Some([scale, shift])` normalised as
/// [`scale_shift_relu`] does. One call for a plane's rows: a call per row of 16-32
/// floats (ResNet-20's planes, each padded or re-pitched on its way into a convolution's
/// kernel) spent more on the call than on the copy.
#[inline(always)]
pub(crate) unsafe fn copy_rows<S: Simd>(
    src: *const f32,
    src_pitch: usize,
    dst: *mut f32,
    dst_pitch: usize,
    [rows, width]: [usize; 2],
    affine: Option<[f32; 2]>,
) {
    match affine {
        Some([scale, shift]) => {
            for r in 0..rows {
                scale_shift_relu::<S>(
                    src.add(r * src_pitch),
                    dst.add(r * dst_pitch),
                    width,
                    scale,
                    shift,
                );
            }
        }
        None => {
            for r in 0..rows {
                map1::<S>(src.add(r * src_pitch), dst.add(r * dst_pitch), width, |x| x);
            }
        }
    }
}

/// `dst = max(src, 0)`.
#[inline(always)]
pub(crate) unsafe fn relu<S: Simd>(src: *const f32, dst: *mut f32, n: usize) {
    let zero = S::splat(0.0);
    map1::<S>(src, dst, n, |x| S::max(zero, x));
}

/// Residual add: `dst = a + b`.
#[inline(always)]
pub(crate) unsafe fn add<S: Simd>(a: *const f32, b: *const f32, dst: *mut f32, n: usize) {
    map2::<S>(a, b, dst, n, |x, y| S::add(x, y));
}

/// Residual add fused with ReLU: `dst = max(a + b, 0)`.
#[inline(always)]
pub(crate) unsafe fn add_relu<S: Simd>(a: *const f32, b: *const f32, dst: *mut f32, n: usize) {
    let zero = S::splat(0.0);
    map2::<S>(a, b, dst, n, |x, y| S::max(zero, S::add(x, y)));
}

/// ReLU's backward: `dx = dy` where the ReLU's output `y > 0`, else `0`. Also the
/// backward of a fused `max(a + b, 0)` and of BN + ReLU's ReLU.
#[inline(always)]
pub(crate) unsafe fn relu_backward<S: Simd>(dy: *const f32, y: *const f32, dx: *mut f32, n: usize) {
    map2::<S>(dy, y, dx, n, |g, out| S::select_positive(out, g));
}

/// Batch norm's backward sums over one plane: `[sum(dy), sum(dy * (x - mean))]`.
/// Two pairs of accumulators keep the adds pipelined; tail lanes load `dy = 0`, which
/// adds nothing to either sum.
///
/// With `relu = Some([scale, shift])` the batch norm was followed by a ReLU, and `dy`
/// is first masked where that ReLU was off: `scale x + shift <= 0`, recomputed from `x`
/// by the same fused multiply-add the forward used (`scale_shift_relu`), so the mask
/// equals the forward's to the bit and no separate ReLU-backward pass is needed.
#[inline(always)]
pub(crate) unsafe fn bn_backward_sums<S: Simd>(
    dy: *const f32,
    x: *const f32,
    n: usize,
    mean: f32,
    relu: Option<[f32; 2]>,
) -> [f32; 2] {
    match relu {
        None => bn_sums::<S, false>(dy, x, n, mean, [0.0; 2]),
        Some(affine) => bn_sums::<S, true>(dy, x, n, mean, affine),
    }
}

#[inline(always)]
unsafe fn bn_sums<S: Simd, const RELU: bool>(
    dy: *const f32,
    x: *const f32,
    n: usize,
    mean: f32,
    [scale, shift]: [f32; 2],
) -> [f32; 2] {
    let l = S::LANES;
    let m = S::splat(mean);
    let (sa, sb) = (S::splat(scale), S::splat(shift));
    let mask = |g: S::V, v: S::V| {
        if RELU {
            S::select_positive(S::mul_add(v, sa, sb), g)
        } else {
            g
        }
    };
    let zero = S::splat(0.0);
    let (mut s0, mut s1, mut d0, mut d1) = (zero, zero, zero, zero);
    let mut i = 0;
    while i + 2 * l <= n {
        let (v0, v1) = (S::load(x.add(i)), S::load(x.add(i + l)));
        let g0 = mask(S::load(dy.add(i)), v0);
        let g1 = mask(S::load(dy.add(i + l)), v1);
        s0 = S::add(s0, g0);
        s1 = S::add(s1, g1);
        d0 = S::mul_add(g0, S::sub(v0, m), d0);
        d1 = S::mul_add(g1, S::sub(v1, m), d1);
        i += 2 * l;
    }
    while i < n {
        let r = (n - i).min(l);
        let (g, v) = if r == l {
            (S::load(dy.add(i)), S::load(x.add(i)))
        } else {
            (
                S::load_partial(dy.add(i), r, 0.0),
                S::load_partial(x.add(i), r, mean),
            )
        };
        let g = mask(g, v);
        s0 = S::add(s0, g);
        d0 = S::mul_add(g, S::sub(v, m), d0);
        i += r;
    }
    [S::reduce_add(S::add(s0, s1)), S::reduce_add(S::add(d0, d1))]
}

/// Batch norm's input gradient over one plane, `dx = a dy + b x + c` with
/// `coef = [a, b, c]`; with `relu`, `dy` is masked first as in [`bn_backward_sums`].
#[inline(always)]
pub(crate) unsafe fn bn_backward_apply<S: Simd>(
    dy: *const f32,
    x: *const f32,
    dx: *mut f32,
    n: usize,
    coef: [f32; 3],
    relu: Option<[f32; 2]>,
) {
    let (a, b, c) = (S::splat(coef[0]), S::splat(coef[1]), S::splat(coef[2]));
    match relu {
        None => map2::<S>(dy, x, dx, n, |g, v| S::mul_add(g, a, S::mul_add(v, b, c))),
        Some([scale, shift]) => {
            let (sa, sb) = (S::splat(scale), S::splat(shift));
            map2::<S>(dy, x, dx, n, |g, v| {
                let g = S::select_positive(S::mul_add(v, sa, sb), g);
                S::mul_add(g, a, S::mul_add(v, b, c))
            })
        }
    }
}

/// The sum of `n` elements (lane-parallel partial sums, each over `n / (4 * LANES)`
/// elements, so the rounding error grows far slower than a serial sum's).
#[inline(always)]
pub(crate) unsafe fn sum<S: Simd>(src: *const f32, n: usize) -> f32 {
    S::reduce_add(fold::<S>(
        src,
        n,
        0.0,
        0.0,
        |a, x| S::add(a, x),
        |a, b| S::add(a, b),
    ))
}

/// `sum((x - mean)^2)`: the second pass of the two-pass variance, which, unlike
/// `E[x^2] - E[x]^2`, does not cancel catastrophically when the mean is large.
#[inline(always)]
pub(crate) unsafe fn sum_sq_dev<S: Simd>(src: *const f32, n: usize, mean: f32) -> f32 {
    let m = S::splat(mean);
    // Tail lanes are filled with the mean itself, so they add (mean - mean)^2 = 0.
    let step = |acc, x| {
        let d = S::sub(x, m);
        S::mul_add(d, d, acc)
    };
    S::reduce_add(fold::<S>(src, n, 0.0, mean, step, |a, b| S::add(a, b)))
}

/// `e^x` lane-wise, to within about 2 ulp for `x` in `[-87.3, 88.7]` (inputs outside
/// are clamped: below, the result is the smallest normal float instead of a denormal
/// or 0; above, the largest power of two before overflow).
///
/// The method (Cody and Waite range reduction with Cephes' `expf` polynomial):
/// `x = n ln2 + r` with integer `n = round(x / ln2)` and `|r| <= ln2 / 2`; then
/// `e^x = 2^n e^r`, where `e^r` is a degree-7 polynomial and `2^n` is built directly in
/// the float's exponent bits. `ln2` is split in two parts so that `n * ln2_hi` is exact.
#[inline(always)]
pub(crate) unsafe fn exp<S: Simd>(x: S::V) -> S::V {
    // The value that may be NaN second, so that exp(NaN) is NaN (see `Simd::max`).
    let x = S::min(S::splat(88.722_83), S::max(S::splat(-87.336_55), x));
    let n = S::round(S::mul(x, S::splat(std::f32::consts::LOG2_E)));
    let r = S::mul_add(n, S::splat(-0.693_359_4), x);
    let r = S::mul_add(n, S::splat(2.121_944_4e-4), r);
    let mut p = S::splat(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = S::mul_add(p, r, S::splat(c));
    }
    let r2 = S::mul(r, r);
    let y = S::add(S::mul_add(p, r2, r), S::splat(1.0));
    S::mul(y, S::pow2i(n))
}

/// The largest of `n > 0` elements.
#[inline(always)]
unsafe fn max_of<S: Simd>(src: *const f32, n: usize) -> f32 {
    let neg_inf = f32::NEG_INFINITY;
    S::reduce_max(fold::<S>(
        src,
        n,
        neg_inf,
        neg_inf,
        |a, x| S::max(a, x),
        |a, b| S::max(a, b),
    ))
}

/// `sum(exp(x - m))` over `n` elements; with `dst` given, also stores each `exp(x - m)`.
#[inline(always)]
unsafe fn sum_exp_shifted<S: Simd>(
    src: *const f32,
    dst: Option<*mut f32>,
    n: usize,
    m: f32,
) -> f32 {
    let mv = S::splat(m);
    let mut acc = S::splat(0.0);
    let mut i = 0;
    while i + S::LANES <= n {
        let e = exp::<S>(S::sub(S::load(src.add(i)), mv));
        if let Some(d) = dst {
            S::store(d.add(i), e);
        }
        acc = S::add(acc, e);
        i += S::LANES;
    }
    if i < n {
        let r = n - i;
        // Tail lanes hold -inf: exp clamps them to ~1e-38, which vanishes against the
        // sum, which is at least 1 (the maximum contributes e^0).
        let e = exp::<S>(S::sub(
            S::load_partial(src.add(i), r, f32::NEG_INFINITY),
            mv,
        ));
        if let Some(d) = dst {
            S::store_partial(d.add(i), e, r);
        }
        acc = S::add(acc, e);
    }
    S::reduce_add(acc)
}

/// Softmax of one row: `dst = exp(x - max) / sum(exp(x - max))`.
#[inline(always)]
pub(crate) unsafe fn softmax_row<S: Simd>(src: *const f32, dst: *mut f32, n: usize) {
    if n == 0 {
        return;
    }
    let m = max_of::<S>(src, n);
    let total = sum_exp_shifted::<S>(src, Some(dst), n, m);
    let inv = S::splat(1.0 / total);
    map1::<S>(dst, dst, n, |e| S::mul(e, inv));
}

/// Log-softmax of one row: `dst = (x - max) - ln(sum(exp(x - max)))`.
///
/// The two subtractions stay apart: `x - max` is exact near the maximum, where the
/// result is small, and the log-sum (between 0 and `ln n`) is subtracted from it.
/// Folding them into one shift `x - (max + log_sum)` would round `max + log_sum` at the
/// scale of `max`: at logits of 1e4 that costs 2.4e-4 on every output.
#[inline(always)]
pub(crate) unsafe fn log_softmax_row<S: Simd>(src: *const f32, dst: *mut f32, n: usize) {
    if n == 0 {
        return;
    }
    let m = max_of::<S>(src, n);
    let log_sum = S::splat(sum_exp_shifted::<S>(src, None, n, m).ln());
    let mv = S::splat(m);
    map1::<S>(src, dst, n, |x| S::sub(S::sub(x, mv), log_sum));
}

/// The input rows under output row `oy`'s pooling windows, in tap order: `oy sh - ph +
/// ky dh` for each tap row `ky` inside the `h` rows (none, for a dilated window over
/// padding only).
#[inline(always)]
fn window_rows(oy: usize, p: &Pool2d, h: usize) -> impl Iterator<Item = usize> {
    let top = (oy * p.stride[0]) as isize - p.padding[0] as isize;
    let dh = p.dilation[0];
    (0..p.kernel[0])
        .map(move |ky| top + (ky * dh) as isize)
        .filter(move |&iy| iy >= 0 && (iy as usize) < h)
        .map(|iy| iy as usize)
}

/// Max pooling of one `h x w` plane into an `oh x ow` plane.
///
/// Each output row is made in two passes. First the vertical one: the input rows its
/// windows cover are reduced with `max`, element by element (contiguous vectors), into
/// `scratch`, which holds the row between `padding_w` cells of `-inf` on either side.
/// Then the horizontal one: output `ox` is the max of
/// `scratch[ox * stride_w + kx]` over `kx`, read a vector of outputs at a time with
/// strided loads. Padding never wins a max, as in PyTorch.
///
/// `scratch` must hold `p.padded_row_len(w, ow)` floats (`w + 2 * padding_w`, or more
/// where a `ceil_mode` window runs past it); the geometry must be valid (checked by
/// [`Pool2d::output_size`]), so that every window covers at least one input row.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn max_pool_plane<S: Simd>(
    src: *const f32,
    h: usize,
    w: usize,
    dst: *mut f32,
    oh: usize,
    ow: usize,
    p: &Pool2d,
    scratch: *mut f32,
) {
    // (Rows: `window_rows`.)
    let [_, kw] = p.kernel;
    let [_, sw] = p.stride;
    let [_, pw] = p.padding;
    let [_, dw] = p.dilation;
    let row = scratch.add(pw);
    for i in 0..pw {
        *scratch.add(i) = f32::NEG_INFINITY;
    }
    for i in pw + w..p.padded_row_len(w, ow) {
        *scratch.add(i) = f32::NEG_INFINITY;
    }
    for oy in 0..oh {
        // The input rows under this output row's windows: `top + ky dh` inside the
        // input (none, for a dilated window over padding only: then `-inf`).
        let mut rows = window_rows(oy, p, h);
        match rows.next() {
            Some(first) => std::ptr::copy_nonoverlapping(src.add(first * w), row, w),
            None => {
                for i in 0..w {
                    *row.add(i) = f32::NEG_INFINITY;
                }
            }
        }
        for iy in rows {
            map2::<S>(row, src.add(iy * w), row, w, |a, b| S::max_nan(a, b));
        }
        let out = dst.add(oy * ow);
        let mut ox = 0;
        // Stride 1 reads plain contiguous vectors; other strides gather.
        let load = |q: *const f32| {
            if sw == 1 {
                S::load(q)
            } else {
                S::load_strided(q, sw)
            }
        };
        while ox + S::LANES <= ow {
            let base = scratch.add(ox * sw);
            let mut m = load(base);
            for kx in 1..kw {
                m = S::max_nan(m, load(base.add(kx * dw)));
            }
            S::store(out.add(ox), m);
            ox += S::LANES;
        }
        for ox in ox..ow {
            let base = scratch.add(ox * sw);
            let mut m = *base;
            for kx in 1..kw {
                let v = *base.add(kx * dw);
                if v > m || v.is_nan() {
                    m = v;
                }
            }
            *out.add(ox) = m;
        }
    }
}

/// The most cells a plane may have for [`max_pool_plane_indices`]: it carries input
/// offsets in `f32` lanes, exact below `2^24`.
pub(crate) const POOL_INDEX_MAX_PLANE: usize = 1 << 24;

/// Max pooling of one `h x w` plane into an `oh x ow` plane, with each output's winner:
/// `idx[o]` is the offset in the plane of the input that won window `o`, by PyTorch's
/// rule (the first maximum in row-major window order, or the last NaN), or `u32::MAX`
/// for a window with no input in it (a dilated window over padding only: output
/// `-inf`). A training tape keeps `idx` for the backward pass, which then only scatters.
///
/// Row-major order is what makes the passes run the other way round from
/// [`max_pool_plane`]'s: first along each input row, once per row, each window's row
/// segment reduced to its first maximum (or last NaN) and that input's column, into
/// `scratch`; then down, each output row combining its window's rows in order, the
/// later row taking over only with a larger value or a NaN. So the topmost row holding
/// the maximum wins, and in it the leftmost column: row-major's first. Positions travel
/// in float lanes beside the values ([`Simd::pool_take`]); a segment starts from `-inf`
/// and its first input column, so a window of `-inf` inputs is won by its first input,
/// as in PyTorch. Segments that reach into the padding or past the row go one by one.
///
/// `scratch` holds `2 (h + 1) ow` floats; `h w <= POOL_INDEX_MAX_PLANE`; the geometry is
/// valid ([`Pool2d::output_size`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn max_pool_plane_indices<S: Simd>(
    src: *const f32,
    h: usize,
    w: usize,
    dst: *mut f32,
    idx: *mut u32,
    oh: usize,
    ow: usize,
    p: &Pool2d,
    scratch: *mut f32,
) {
    debug_assert!(h * w <= POOL_INDEX_MAX_PLANE);
    // (Rows: `window_rows`.)
    let [_, kw] = p.kernel;
    let [_, sw] = p.stride;
    let [_, pw] = p.padding;
    let [_, dw] = p.dilation;
    let l = S::LANES;
    // Per input row: the segments' maxima, then their winners' columns (`-inf` for a
    // segment with no input in it); then the first tap's column of each output column.
    let (seg_max, seg_col, col0) = (scratch, scratch.add(h * ow), scratch.add(2 * h * ow));
    for ox in 0..ow {
        *col0.add(ox) = (ox * sw) as f32 - pw as f32;
    }
    // The output columns whose whole segment lies in the row: `ox sw >= pw` and
    // `ox sw - pw + (kw - 1) dw < w`.
    let span = (kw - 1) * dw;
    let lo = pw.div_ceil(sw).min(ow);
    let hi = if w + pw > span {
        ((w + pw - span - 1) / sw + 1).clamp(lo, ow)
    } else {
        lo
    };
    // One segment the scalar way, taps outside the row skipped.
    let segment = |row: *const f32, ox: usize| -> (f32, f32) {
        let (mut m, mut at) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
        for kx in 0..kw {
            let ix = (ox * sw + kx * dw) as isize - pw as isize;
            if ix < 0 || ix as usize >= w {
                continue;
            }
            let v = *row.add(ix as usize);
            if at == f32::NEG_INFINITY || v > m || v.is_nan() {
                m = v;
                at = ix as f32;
            }
        }
        (m, at)
    };
    for iy in 0..h {
        let row = src.add(iy * w);
        let (sm, sc) = (seg_max.add(iy * ow), seg_col.add(iy * ow));
        for ox in (0..lo).chain(hi..ow) {
            (*sm.add(ox), *sc.add(ox)) = segment(row, ox);
        }
        // (Not a closure: closures do not inherit the tier's target features, and the
        // intrinsics would not inline into one.)
        #[inline(always)]
        unsafe fn vector<S: Simd>(
            row: *const f32,
            ox: usize,
            [kw, sw, pw, dw]: [usize; 4],
            col0: *const f32,
            [sm, sc]: [*mut f32; 2],
        ) {
            // Inside the row: the first tap's column `ox sw - pw >= 0`.
            let base = row.add(ox * sw - pw);
            let mut col = S::load(col0.add(ox));
            let step = S::splat(dw as f32);
            let (mut m, mut at) = (S::splat(f32::NEG_INFINITY), col);
            for kx in 0..kw {
                let q = base.add(kx * dw);
                let v = if sw == 1 {
                    S::load(q)
                } else {
                    S::load_strided(q, sw)
                };
                (m, at) = S::pool_take(m, at, v, col);
                col = S::add(col, step);
            }
            S::store(sm.add(ox), m);
            S::store(sc.add(ox), at);
        }
        let mut ox = lo;
        while ox + l <= hi {
            vector::<S>(row, ox, [kw, sw, pw, dw], col0, [sm, sc]);
            ox += l;
        }
        if ox < hi && hi - lo >= l {
            // The last vector overlaps the one before (its outputs made again, the same).
            vector::<S>(row, hi - l, [kw, sw, pw, dw], col0, [sm, sc]);
        } else {
            for ox in ox..hi {
                (*sm.add(ox), *sc.add(ox)) = segment(row, ox);
            }
        }
    }
    // Down: each output row's window rows in order, row by row across the whole output
    // row (the maxima in `dst`, the winners' offsets, as floats, in `offs`): a winner's
    // offset is its column plus its row's start. A segment with no input (`-inf` column)
    // stays `-inf`, which becomes `u32::MAX`.
    let offs = col0.add(ow);
    for oy in 0..oh {
        let mut rows = window_rows(oy, p, h);
        let (out, at) = (dst.add(oy * ow), idx.add(oy * ow));
        let Some(first) = rows.next() else {
            for ox in 0..ow {
                *out.add(ox) = f32::NEG_INFINITY;
                *at.add(ox) = u32::MAX;
            }
            continue;
        };
        let start = (first * w) as f32;
        for ox in 0..ow {
            *out.add(ox) = *seg_max.add(first * ow + ox);
            *offs.add(ox) = *seg_col.add(first * ow + ox) + start;
        }
        for iy in rows {
            let (sm, sc) = (seg_max.add(iy * ow), seg_col.add(iy * ow));
            let start = (iy * w) as f32;
            #[inline(always)]
            unsafe fn vector<S: Simd>(
                ox: usize,
                [out, offs]: [*mut f32; 2],
                [sm, sc]: [*const f32; 2],
                start: f32,
            ) {
                let (m, off) = S::pool_take(
                    S::load(out.add(ox)),
                    S::load(offs.add(ox)),
                    S::load(sm.add(ox)),
                    S::add(S::load(sc.add(ox)), S::splat(start)),
                );
                S::store(out.add(ox), m);
                S::store(offs.add(ox), off);
            }
            let mut ox = 0;
            while ox + l <= ow {
                vector::<S>(ox, [out, offs], [sm, sc], start);
                ox += l;
            }
            if ox < ow && ow >= l {
                // Overlapping the vector before: taking the same row twice changes
                // nothing (a winner does not beat itself; a NaN takes its own place).
                vector::<S>(ow - l, [out, offs], [sm, sc], start);
                continue;
            }
            for ox in ox..ow {
                let v = *sm.add(ox);
                if v > *out.add(ox) || v.is_nan() {
                    *out.add(ox) = v;
                    *offs.add(ox) = *sc.add(ox) + start;
                }
            }
        }
        for ox in 0..ow {
            let o = *offs.add(ox);
            *at.add(ox) = if o >= 0.0 { o as u32 } else { u32::MAX };
        }
    }
}

/// Average pooling of one `h x w` plane into an `oh x ow` plane.
///
/// The same two passes as [`max_pool_plane`], with sums: the input rows under an
/// output row's windows are added element by element into `scratch`, which holds the row
/// between zeros (its padding, and past it as far as a `ceil_mode` window reaches), then
/// each output sums its `kw` cells of that row (strided loads for a stride above 1) and
/// is multiplied by the inverse of its window's count ([`AvgPool2d::count`]), made for
/// the row in `scratch`'s tail.
///
/// `scratch` must hold `p.window.padded_row_len(w, ow) + ow` floats; the geometry must
/// be valid (checked by [`Pool2d::output_size`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn avg_pool_plane<S: Simd>(
    src: *const f32,
    h: usize,
    w: usize,
    dst: *mut f32,
    oh: usize,
    ow: usize,
    p: &AvgPool2d,
    scratch: *mut f32,
) {
    let [kh, kw] = p.window.kernel;
    let [sh, sw] = p.window.stride;
    let [ph, pw] = p.window.padding;
    let len = p.window.padded_row_len(w, ow);
    let row = scratch.add(pw);
    let inv = scratch.add(len);
    for i in 0..pw {
        *scratch.add(i) = 0.0;
    }
    for i in pw + w..len {
        *scratch.add(i) = 0.0;
    }
    for oy in 0..oh {
        // Input rows iy0..iy1 under this output row's windows (clipped to the input;
        // `output_size` leaves every window at least one).
        let top = (oy * sh) as isize - ph as isize;
        let iy0 = top.max(0) as usize;
        let iy1 = ((top + kh as isize) as usize).min(h);
        let rows = p.count(0, oy, h);
        for ox in 0..ow {
            *inv.add(ox) = 1.0 / (rows * p.count(1, ox, w)) as f32;
        }
        std::ptr::copy_nonoverlapping(src.add(iy0 * w), row, w);
        for iy in iy0 + 1..iy1 {
            map2::<S>(row, src.add(iy * w), row, w, |a, b| S::add(a, b));
        }
        let out = dst.add(oy * ow);
        let load = |q: *const f32| {
            if sw == 1 {
                S::load(q)
            } else {
                S::load_strided(q, sw)
            }
        };
        let mut ox = 0;
        while ox + S::LANES <= ow {
            let base = scratch.add(ox * sw);
            let mut acc = load(base);
            for kx in 1..kw {
                acc = S::add(acc, load(base.add(kx)));
            }
            S::store(out.add(ox), S::mul(acc, S::load(inv.add(ox))));
            ox += S::LANES;
        }
        for ox in ox..ow {
            let base = scratch.add(ox * sw);
            let mut acc = *base;
            for kx in 1..kw {
                acc += *base.add(kx);
            }
            *out.add(ox) = acc * *inv.add(ox);
        }
    }
}

/// Independent FMA chains kept in flight by [`fma_chains`]: enough to cover the FMA
/// latency (4 cycles) times the FMA units (2) of current x86 and ARM cores, with room,
/// yet few enough that the chains and the two constants fit in the 16 vector registers
/// of AVX2 and SSE (16 chains spilled there and measured 45 instead of 75 GFLOP/s).
pub(crate) const FMA_CHAINS: usize = 12;

/// The peak-FMA probe: `iters` rounds of `FMA_CHAINS` independent vector FMAs, all in
/// registers, no memory traffic. Returns a value that depends on every chain, so the
/// compiler cannot drop the work. Performs `iters * FMA_CHAINS * LANES * 2` flops.
#[inline(always)]
pub(crate) unsafe fn fma_chains<S: Simd>(iters: usize, seed: f32) -> f32 {
    let a = S::splat(0.999_999);
    let b = S::splat(1e-7);
    let mut acc = [S::splat(seed); FMA_CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = S::mul_add(*v, a, b);
        }
    }
    let mut total = S::splat(0.0);
    for v in acc {
        total = S::add(total, v);
    }
    S::reduce_add(total)
}
