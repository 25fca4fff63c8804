//! The direct-convolution microkernel: `OB` output channels by `XV` vectors of output
//! pixels of one row, accumulated in registers over the whole reduction
//! (`C x kh x kw`), reading the input image in place: no im2col, no packing.
//!
//! For reduction index `r` (an input channel and a kernel tap), the tap's input pixels
//! for the tile are `XV` vectors of the zero-padded image (consecutive along a row, or
//! running on across row ends), and the `OB` channels' weights for the tap are `OB`
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

/// One tile: `out[b][v LANES + i] (+)= sum_r w[r * OB + b] * x[offs[r] + vo[v] + i]`
/// for `b < OB` channels, `v < XV` vectors and `i < LANES` lanes, then the epilogue and
/// the clipped store.
///
/// The vector offsets `vo` are `0, LANES, 2 LANES, ..` for a tile along one output row.
/// When every output row is a whole number of vectors, a tile may instead run on across
/// row ends (the output of consecutive rows is contiguous): then a vector's input is a
/// padded row pitch further on, not a vector, and `vo` says where each one starts. That
/// keeps `XV` vectors of accumulators on rows one or two vectors wide.
///
/// # Safety
///
/// `offs` holds `k` offsets and `vo` holds `XV`; for every `r < k` and `v < XV`, the
/// `LANES` pixels at `x + offs[r] + vo[v]` are readable; `w` holds `k * OB` floats;
/// `out` describes a writable tile of at most `OB x XV * LANES`.
#[inline(always)]
pub(crate) unsafe fn direct_tile<S: Simd, const OB: usize, const XV: usize>(
    k: usize,
    offs: *const usize,
    w: *const f32,
    x: *const f32,
    vo: *const usize,
    out: &TileOut,
) {
    let vo: [usize; XV] = std::array::from_fn(|v| *vo.add(v));
    let mut acc = [[S::splat(0.0); XV]; OB];
    for r in 0..k {
        let p = x.add(*offs.add(r));
        let mut xv = [S::splat(0.0); XV];
        for (v, xv) in xv.iter_mut().enumerate() {
            *xv = S::load(p.add(vo[v]));
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
