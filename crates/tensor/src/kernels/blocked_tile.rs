//! The blocked-layout convolution microkernel: `F` blocks of `LANES` output channels by
//! `P` output pixels of one row, accumulated in registers over the whole reduction
//! (input channels x taps), reading the input in place.
//!
//! In the blocked layout (`crate::blocked`) a pixel's `LANES` consecutive channels are
//! one vector, so the roles of the direct kernel (`super::direct`) swap: output
//! channels run along the lanes (the weights are the vector loads) and each input pixel
//! value is broadcast:
//!
//! ```text
//!                       weights of input channel ic, tap (ky, kx): F vector loads
//!                       [ oc block 0 | oc block 1 | oc block 2 | oc block 3 ]
//!  x(pixel 0, ic) bcast +------------+------------+------------+------------+
//!                       | acc[0][0]  | acc[1][0]  | acc[2][0]  | acc[3][0]  |
//!  ...                  |    ...     |    ...     |    ...     |    ...     |
//!  x(pixel 5, ic)       | acc[0][5]  | acc[1][5]  | acc[2][5]  | acc[3][5]  |
//!                       +------------+------------+------------+------------+
//!  AVX-512, F = 4, P = 6: 24 accumulators + 4 weight vectors = 28 of 32 registers
//! ```
//!
//! No operand is packed per call: the weights were laid out once, and any pixel count
//! or stride is address arithmetic (each of the `P` pixels has its own input offset,
//! so tiles run on across output rows), so a 7 x 7 plane wastes no lanes and a 1 x 1
//! convolution reads its input where it lies.

use super::simd::Simd;

/// One tile's operands. Pointers are offset to the tile: `x` to the image (channel
/// block 0, padded row 0, column 0), `x_off` to `P` offsets from it of each output
/// pixel's tap (0, 0), so a tile may run on across output rows; `w` to the tile's
/// group of `F` output blocks, laid out `[CB][kh][kw][icb][F][LANES oc]`; `out`
/// (and `residual`, laid out as `out`) to the first of `P` consecutive pixels of output
/// block 0.
pub(crate) struct BlockedTile {
    pub x: *const f32,
    pub x_off: *const usize,
    /// Floats between input channel blocks, between the kernel's rows and between its
    /// columns (a row and `LANES`, times the dilation).
    pub x_cb: usize,
    pub x_row: usize,
    pub x_col: usize,
    pub cb: usize,
    /// Input channels per block read: `LANES`, or fewer when the input has a single
    /// block of fewer channels (a network's RGB input), whose other lanes are skipped.
    pub icb: usize,
    pub kh: usize,
    pub kw: usize,
    pub w: *const f32,
    pub out: *mut f32,
    /// Floats between output channel blocks of `out` and `residual`.
    pub out_ob: usize,
    /// Valid output blocks (`<= F`); the others' weights are zeros and are not stored.
    pub f: usize,
    /// `F * LANES` biases of the group, or null.
    pub bias: *const f32,
    pub residual: *const f32,
    pub relu: bool,
}

/// # Safety
///
/// `x_off` holds `P` offsets; for every channel block, tap and lane, the `P` input
/// values at `x + x_off[p] + cb x_cb + ky x_row + kx x_col + ic` are readable; `w`
/// holds `cb kh kw icb F LANES` floats; `out` (and `residual`, `bias` when not null) hold `f` blocks of `P` pixels.
#[inline(always)]
pub(crate) unsafe fn blocked_tile<S: Simd, const F: usize, const P: usize>(t: &BlockedTile) {
    let l = S::LANES;
    let px: [*const f32; P] = std::array::from_fn(|p| t.x.add(*t.x_off.add(p)));
    let mut acc = [[S::splat(0.0); P]; F];
    let mut w = t.w;
    // The weights 16 input channels ahead (one tap on AVX-512, 4 KiB), fetched now: in
    // a network at batch 1 they stream from memory (in-process A/B, ResNet-50 in the
    // blocked layout, 2 threads, best of 40 forwards: 46.6 -> 43.4, 51.9 -> 48.0, 50.1
    // -> 45.6 ms; ResNet-18 26.2 -> 22.7; 4, 8 and 64 steps ahead no better, 32 tied).
    let pf = 16 * F * l;
    for cb in 0..t.cb {
        for ky in 0..t.kh {
            for kx in 0..t.kw {
                let tap = cb * t.x_cb + ky * t.x_row + kx * t.x_col;
                for ic in 0..t.icb {
                    // (`wrapping_add`: may point past the weights; a prefetch never faults.)
                    for f in 0..F {
                        S::prefetch(w.wrapping_add(pf + f * l));
                    }
                    let wv: [S::V; F] = std::array::from_fn(|f| S::load(w.add(f * l)));
                    for (p, px) in px.iter().enumerate() {
                        let xb = S::splat(*px.add(tap + ic));
                        for f in 0..F {
                            acc[f][p] = S::mul_add(wv[f], xb, acc[f][p]);
                        }
                    }
                    w = w.add(F * l);
                }
            }
        }
    }
    for (f, row) in acc.iter_mut().enumerate().take(t.f) {
        let bias = (!t.bias.is_null()).then(|| S::load(t.bias.add(f * l)));
        for (p, v) in row.iter_mut().enumerate() {
            let at = f * t.out_ob + p * l;
            if let Some(b) = bias {
                *v = S::add(*v, b);
            }
            if !t.residual.is_null() {
                *v = S::add(*v, S::load(t.residual.add(at)));
            }
            if t.relu {
                *v = S::max(S::splat(0.0), *v);
            }
            S::store(t.out.add(at), *v);
        }
    }
}
