//! The direct-convolution microkernel: `OB` output channels by `XV` vectors of output
//! pixels of one row, accumulated in registers over the whole reduction
//! (`C x kh x kw`), reading the input image in place: no im2col, no packing.
//!
//! For reduction index `r` (an input channel and a kernel tap), the tap's input pixels
//! for the tile are `XV` vectors of the zero-padded image (consecutive along a row, or
//! one per row), and the `OB` channels' weights for the tap are `OB`
//! consecutive floats, each broadcast:
//!
//! ```text
//!                    input pixels of tap r: XV vector loads
//!                    [ x0 ........ | x1 ........ | x2 ........ ]
//!  weight w_b (bcast)+-------------+-------------+-------------+
//!  channel 0         | acc[0][0]   | acc[0][1]   | acc[0][2]   |  acc[b][v] += w_b * x_v
//!  ...               |    ...      |    ...      |    ...      |
//!  channel 7         | acc[7][0]   | acc[7][1]   | acc[7][2]   |
//!                    +-------------+-------------+-------------+
//!  AVX-512, OB = 8, XV = 3: 24 accumulators + 3 pixel vectors = 27 of 32 registers
//! ```
//!
//! It is the GEMM microkernel (rows: output channels; columns: output pixels) with the
//! packed im2col panel replaced by address arithmetic into the padded image, and it ends
//! the same way (`finish_tile`: accumulate, bias, residual, ReLU, clipped stores
//! straight into the NCHW output).

use super::microkernel::{finish_tile, TileOut};
use super::simd::Simd;

/// One tile: `out[b][v LANES + i] (+)= sum_r w[r * OB + b] * x[offs[r] + v * vs + i]`
/// for `b < OB` channels, `v < XV` vectors and `i < LANES` lanes, then the epilogue and
/// the clipped store.
///
/// The vector step `vs` is `LANES` for a tile along one output row; it is the padded
/// row pitch for a tile whose vectors are consecutive output rows, each one vector wide
/// (a 16 x 16 image on AVX-512): then the tile still has `XV` vectors' worth of
/// accumulators instead of one.
///
/// # Safety
///
/// `offs` holds `k` offsets; for every `r < k` and `v < XV`, the `LANES` pixels at
/// `x + offs[r] + v * vs` are readable; `w` holds `k * OB` floats; `out` describes a
/// writable tile of at most `OB x XV * LANES`.
#[inline(always)]
pub(crate) unsafe fn direct_tile<S: Simd, const OB: usize, const XV: usize>(
    k: usize,
    offs: *const usize,
    w: *const f32,
    x: *const f32,
    vs: usize,
    out: &TileOut,
) {
    let mut acc = [[S::splat(0.0); XV]; OB];
    for r in 0..k {
        let p = x.add(*offs.add(r));
        let mut xv = [S::splat(0.0); XV];
        for (v, xv) in xv.iter_mut().enumerate() {
            *xv = S::load(p.add(v * vs));
        }
        let wr = w.add(r * OB);
        for (b, row) in acc.iter_mut().enumerate() {
            let wb = S::splat(*wr.add(b));
            for (acc, xv) in row.iter_mut().zip(xv) {
                *acc = S::mul_add(wb, xv, *acc);
            }
        }
    }
    finish_tile::<S, OB, XV>(&mut acc, out);
}
