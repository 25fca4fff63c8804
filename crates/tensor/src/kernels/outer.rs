//! The outer-product microkernel of a convolution's weight gradient:
//! `dW^T[tap][o] += sum over pixels q of X_tap[q] * dY^T[q][o]`, with the output
//! channels along the lanes.
//!
//! Each step of the reduction (one output pixel `q`) is an outer product: `F` vectors
//! of `dY^T[q]` (`F * LANES` output channels, contiguous once `dY` is transposed to
//! pixel-major) times `P` input values, one per kernel tap, each broadcast from where
//! it lies in the (padded) input. Nothing is summed across lanes: an accumulator holds
//! `LANES` separate weights' gradients, added to memory once per tile.
//!
//! ```text
//!                       dY^T[q]: F vector loads (output channels)
//!                       [ oc block 0 | oc block 1 | oc block 2 | oc block 3 ]
//!  x(tap 0, q) bcast    +------------+------------+------------+------------+
//!                       | acc[0][0]  | acc[1][0]  | acc[2][0]  | acc[3][0]  |
//!  ...                  |    ...     |    ...     |    ...     |    ...     |
//!  x(tap 5, q)          | acc[0][5]  | acc[1][5]  | acc[2][5]  | acc[3][5]  |
//!                       +------------+------------+------------+------------+
//!  AVX-512, F = 4, P = 6: 24 accumulators + 4 dY vectors = 28 of 32 registers
//! ```
//!
//! This is the blocked forward tile (`super::blocked`) with the reduction running over
//! pixels instead of input channels. The reduction is split into *rows*: runs of
//! consecutive output pixels whose taps are consecutive in the input (an output row of
//! a padded image or of a stride's phase plane), so no pixel is computed twice and no
//! padding column is multiplied.

use super::simd::Simd;

/// One tile's operands (offsets in floats).
pub(crate) struct OuterTile {
    /// `dY^T` of the tile's `F` output blocks: `F * LANES` floats per pixel, the pixels
    /// of all rows one after another.
    pub dy: *const f32,
    /// Base of the input, the `P` tap offsets from it (invalid taps repeat a valid
    /// one; their sums are not stored), and the `nrows` row offsets added to them.
    pub x: *const f32,
    pub x_off: *const usize,
    pub rows: *const usize,
    pub nrows: usize,
    /// Pixels per row.
    pub row_len: usize,
    /// `out[p * ldo + f * LANES + lane] += sum` for the `np <= P` valid taps.
    pub out: *mut f32,
    pub ldo: usize,
    pub np: usize,
}

/// # Safety
///
/// `dy` holds `nrows * row_len * F * LANES` floats; `x_off` holds `P` offsets and
/// `rows` `nrows`; for every tap, row and pixel `q < row_len`, `x + x_off[p] + rows[r]
/// + q` is readable; `out` is writable for `np` rows of `F * LANES` floats at stride
/// `ldo`.
#[inline(always)]
pub(crate) unsafe fn outer_tile<S: Simd, const F: usize, const P: usize>(t: &OuterTile) {
    let l = S::LANES;
    let off: [usize; P] = std::array::from_fn(|p| *t.x_off.add(p));
    let mut acc = [[S::splat(0.0); P]; F];
    let mut d = t.dy;
    for r in 0..t.nrows {
        let xr = t.x.add(*t.rows.add(r));
        let px: [*const f32; P] = std::array::from_fn(|p| xr.add(off[p]));
        for q in 0..t.row_len {
            let dv: [S::V; F] = std::array::from_fn(|f| S::load(d.add(f * l)));
            for (p, x) in px.iter().enumerate() {
                let xb = S::splat(*x.add(q));
                for f in 0..F {
                    acc[f][p] = S::mul_add(dv[f], xb, acc[f][p]);
                }
            }
            d = d.add(F * l);
        }
    }
    for p in 0..t.np {
        for (f, row) in acc.iter().enumerate() {
            let o = t.out.add(p * t.ldo + f * l);
            S::store(o, S::add(S::load(o), row[p]));
        }
    }
}
