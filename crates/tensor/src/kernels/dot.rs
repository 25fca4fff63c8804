//! The row-dot microkernel: `C += A B^T` when both operands are stored along the
//! reduction, as a convolution's weight gradient is.
//!
//! `dW[o][j] = sum over images and output pixels p of dY[o][p] * X_j[p]`, where row `j`
//! of `X` (an input channel and a kernel tap) is the input image shifted by the tap.
//! In NCHW both `dY[o][..]` and `X_j[..]` run along `p`, so instead of transposing one
//! of them into GEMM's packed layout, this kernel keeps an `MI x NJ` block of *vector*
//! partial sums in registers, streams both operands' rows lane-parallel, and reduces
//! each vector to one number only at the end:
//!
//! ```text
//!                  rows of X (NJ loads per step of LANES pixels)
//!                  [ x0 .... ] [ x1 .... ] ... [ x5 .... ]
//!  rows of dY     +-----------+-----------+---+-----------+
//!  d0 (load)      | acc[0][0] | acc[0][1] |...| acc[0][5] |   acc[i][j] += d_i * x_j
//!  ...            |    ...    |    ...    |   |    ...    |   (lane by lane)
//!  d3             | acc[3][0] | acc[3][1] |...| acc[3][5] |
//!                 +-----------+-----------+---+-----------+
//!  AVX-512, MI = 4, NJ = 6: 24 accumulators + 4 dY vectors + 1 X vector = 29 of 32
//! ```
//!
//! The rows are described by offsets, and the reduction by *segments*: equal-length
//! stretches (a whole number of vectors) at per-segment offsets added to every row, one
//! segment per image of the chunk. The caller (`conv/weight_grad.rs`) decides what a row is:
//! a channel of the image, or one tap's run over the image's phase planes, with no
//! column matrix at all.

use super::simd::Simd;

/// The operands and destination of one tile (all offsets in floats).
pub(crate) struct DotTile {
    /// Base of the `A` rows (`dY`) and the `MI` row offsets (invalid rows repeat a
    /// valid one; their sums are not stored).
    pub a: *const f32,
    pub a_rows: *const usize,
    /// Base of the `B` rows (image taps) and the `NJ` row offsets (same rule).
    pub b: *const f32,
    pub b_rows: *const usize,
    /// `nseg` pairs `[a offset, b offset]` added to every row, each `len` floats long;
    /// `len` is a whole number of vectors.
    pub segs: *const [usize; 2],
    pub nseg: usize,
    pub len: usize,
    /// `out[i * ldo + j] += sum` for the valid `mi x nj` part.
    pub out: *mut f32,
    pub ldo: usize,
    pub mi: usize,
    pub nj: usize,
    /// `ahead_lines` cache lines from `ahead` on are prefetched into L2, one a step of
    /// the reduction: the next call's operands, read from memory while this one
    /// computes.
    pub ahead: *const f32,
    pub ahead_lines: usize,
}

/// `out[i][j] += sum_s sum_{t < len} a[a_rows[i] + s.0 + t] * b[b_rows[j] + s.1 + t]`.
///
/// The loop has no ragged tail: callers lay their rows out with a pitch that is a
/// whole number of vectors, zeros in `A` where there is no data.
///
/// # Safety
///
/// `len` is a multiple of `S::LANES`; every row offset plus every segment offset plus
/// `len` stays inside the memory the caller owns; `a_rows` holds `MI` offsets and
/// `b_rows` `NJ`; `out` is writable for `mi <= MI` rows of `nj <= NJ` columns at stride
/// `ldo`.
#[inline(always)]
pub(crate) unsafe fn dot_tile<S: Simd, const MI: usize, const NJ: usize>(t: &DotTile) {
    let l = S::LANES;
    debug_assert_eq!(t.len % l, 0);
    let mut acc = [[S::splat(0.0); NJ]; MI];
    let mut ahead = 0;
    for s in 0..t.nseg {
        let [sa, sb] = *t.segs.add(s);
        let mut pa = [t.a; MI];
        for (i, p) in pa.iter_mut().enumerate() {
            *p = t.a.add(*t.a_rows.add(i) + sa);
        }
        let mut pb = [t.b; NJ];
        for (j, p) in pb.iter_mut().enumerate() {
            *p = t.b.add(*t.b_rows.add(j) + sb);
        }
        for _ in 0..t.len / l {
            if ahead < t.ahead_lines {
                // (`wrapping_add`: a prefetch never faults.)
                S::prefetch_l2(t.ahead.wrapping_add(ahead * 16));
                ahead += 1;
            }
            let mut av = [S::splat(0.0); MI];
            for (v, p) in av.iter_mut().zip(pa.iter_mut()) {
                *v = S::load(*p);
                *p = p.add(l);
            }
            for (j, p) in pb.iter_mut().enumerate() {
                let bv = S::load(*p);
                *p = p.add(l);
                for (row, a) in acc.iter_mut().zip(av.iter()) {
                    row[j] = S::mul_add(*a, bv, row[j]);
                }
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(t.mi) {
        for (j, v) in row.iter().enumerate().take(t.nj) {
            *t.out.add(i * t.ldo + j) += S::reduce_add(*v);
        }
    }
}
