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
    /// Cache lines (16 floats each, from `ahead`) to ask L2 for, one per step of the
    /// reduction until done: the weights the task reads next, so that they stream from
    /// memory while these are used (`ahead_lines` 0: none). The dense tile only.
    pub ahead: *const f32,
    pub ahead_lines: usize,
    /// The narrow-group tile's (`narrow_tile`) own fields; the dense tile ignores them.
    pub narrow: NarrowRow,
}

/// Where a narrow-group tile's `P` pixels (consecutive pixels of one output row) read
/// the unpadded image: `x` points at its block's first pixel, rows `x_row` floats apart.
#[derive(Clone, Copy, Default)]
pub(crate) struct NarrowRow {
    /// Channels per group, or per input block of a group of several blocks (`G`, the
    /// rotations): 1, 2, 4, 8 or 16, at most `LANES`.
    pub group: usize,
    /// The image's rows and columns.
    pub h: usize,
    pub w: usize,
    /// The input row of tap row 0 and column of pixel 0's tap column 0 (negative, or
    /// past the image, in the padding).
    pub iy0: isize,
    pub ix0: isize,
    /// Columns between the tile's pixels, and between taps.
    pub stride: usize,
    pub dilation: usize,
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
    let mut ahead = 0;
    for cb in 0..t.cb {
        for ky in 0..t.kh {
            for kx in 0..t.kw {
                let tap = cb * t.x_cb + ky * t.x_row + kx * t.x_col;
                for ic in 0..t.icb {
                    // (`wrapping_add`: may point past the weights; a prefetch never faults.)
                    for f in 0..F {
                        S::prefetch(w.wrapping_add(pf + f * l));
                    }
                    if ahead < t.ahead_lines {
                        S::prefetch_l2(t.ahead.wrapping_add(ahead * 16));
                        ahead += 1;
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
        finish_block::<S, P>(t, f, row);
    }
}

/// The epilogue of output block `f` of a tile, in registers: bias, residual, ReLU, store.
#[inline(always)]
unsafe fn finish_block<S: Simd, const P: usize>(t: &BlockedTile, f: usize, row: &mut [S::V; P]) {
    let l = S::LANES;
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

/// The narrow-group tile: one output block whose `LANES` channels fall in groups of
/// `G <= LANES` (ResNeXt-50 32x4d's first three stages on AVX-512: 4, 8 and 16 channels
/// a group; a depthwise layer: 1), or a group of `cb` whole blocks (`G = LANES`:
/// ResNeXt-50's 32-channel groups, two blocks), by `P` consecutive pixels of one output
/// row. A group's inputs lie in the output block's own input block (or, `cb` of them, in
/// its group's input blocks, each taken in turn as if it were the group). Rotating each group of the input
/// vector by `r` (`Simd::group_rotate`) brings to lane `o` input `(o + r) mod G` of
/// its own group, which meets weight vector `r`, whose lane `o` is output `o`'s weight
/// for that input; the `G` rotations cover every input of the group once:
///
/// ```text
///  input block at a pixel   [ a0 a1 a2 a3 | b0 b1 b2 b3 | c0 .. | d0 .. ]   G = 4
///  rotated by 1             [ a1 a2 a3 a0 | b1 b2 b3 b0 | c1 .. | d1 .. ]
///  weights r = 1            [ w(0,1) w(1,2) w(2,3) w(3,0) | w(4,1) ...  ]
///  acc += weights x rotated: G multiply-adds per pixel and tap, every lane useful;
///  rotation 0 is the input itself (G - 1 shuffles per input vector)
/// ```
///
/// The dense single-block tile (`blocked_tile` with `F = 1`) reads the same layer with
/// zero weights between the groups: `LANES` multiply-adds where this does `G`.
///
/// These layers do few multiply-adds per byte (36 per output value for 4-channel 3x3
/// groups), so the tile also saves memory traffic: it reads the image where it lies,
/// without a padded copy (taps in the padding read zeros, rows in it are skipped). Each
/// input vector of a tap row is rotated once for all the tile's taps that read it (`kw`
/// of them at stride 1), not once per tap: for a 3-wide kernel at stride 1 or 2, one
/// rotation at a time across the row with the three taps' weights in registers
/// (`narrow_row3`), else every rotation of the row kept in a buffer on the stack.
/// Weights are laid out `[kh][cb][kw][G r][LANES oc]`.
///
/// # Safety
///
/// `(P - 1) stride + (kw - 1) dilation + 1 <= SPREAD_ROW`; `x` holds `cb` blocks `x_cb`
/// floats apart, each of `h` rows of `w` pixels `x_row` floats apart; `w` holds `kh cb
/// kw G LANES` floats; `out` (and
/// `residual`, `bias` when not null) hold the block's `P` pixels.
#[inline(always)]
unsafe fn narrow_tile<S: Simd, const G: usize, const P: usize>(t: &BlockedTile) {
    let l = S::LANES;
    let r = t.narrow;
    let span = (P - 1) * r.stride + (t.kw - 1) * r.dilation + 1;
    debug_assert!(span <= SPREAD_ROW);
    let mut acc = [S::splat(0.0); P];
    // The rotations in registers (`narrow_row3`): P accumulators, 3 weights, 3 rotated
    // columns and a spare for a rotation's index; only the row's first and last columns
    // may lie in the padding (a padding of at most 1: every ResNeXt layer).
    let in_registers = t.kw == 3
        && r.stride <= 2
        && r.dilation == 1
        && P + NARROW_ROW3_REGISTERS <= S::REGISTERS
        && r.ix0 >= -1
        && r.ix0 + span as isize - 1 <= r.w as isize;
    let mut rotated = [std::mem::MaybeUninit::<S::V>::uninit(); SPREAD_ROW * 16];
    let sp = rotated.as_mut_ptr() as *mut S::V;
    let mut w = t.w;
    for ky in 0..t.kh {
        let iy = r.iy0 + (ky * r.dilation) as isize;
        if iy < 0 || iy >= r.h as isize {
            // A row of padding: zeros times these weights.
            w = w.add(t.cb * t.kw * G * l);
            continue;
        }
        // A group of several blocks: each of its input blocks in turn.
        for block in 0..t.cb {
            let xr = t.x.add(block * t.x_cb + iy as usize * t.x_row);
            if in_registers {
                if r.stride == 1 {
                    narrow_row3::<S, G, P, 1>(&mut acc, xr, r, w);
                } else {
                    narrow_row3::<S, G, P, 2>(&mut acc, xr, r, w);
                }
                w = w.add(3 * G * l);
                continue;
            }
            for q in 0..span {
                let x = column::<S>(xr, r, q);
                sp.add(q * G).write(x);
                for j in 1..G {
                    sp.add(q * G + j).write(S::group_rotate::<G>(x, j));
                }
            }
            for kx in 0..t.kw {
                let at = kx * r.dilation;
                for j in 0..G {
                    let wj = S::load(w.add(j * l));
                    for (p, a) in acc.iter_mut().enumerate() {
                        *a = S::mul_add(wj, sp.add((p * r.stride + at) * G + j).read(), *a);
                    }
                }
                w = w.add(G * l);
            }
        }
    }
    finish_block::<S, P>(t, 0, &mut acc);
}

/// Input column `q` of a narrow-group tile's row `xr`, or zeros in the padding.
#[inline(always)]
unsafe fn column<S: Simd>(xr: *const f32, r: NarrowRow, q: usize) -> S::V {
    let ix = r.ix0 + q as isize;
    // Without a branch where the tier masks its loads: a tile's first and last columns
    // may lie in the padding, and branches there cost more than the loads.
    let valid = ix >= 0 && ix < r.w as isize;
    S::load_or_zero(xr.wrapping_offset(ix * S::LANES as isize), valid)
}

/// Vector registers [`narrow_row3`] needs besides a tile's accumulators.
pub(crate) const NARROW_ROW3_REGISTERS: usize = 8;

/// One kernel row of a 3-wide narrow-group tile of stride `ST` (1 or 2) with its
/// rotations in registers, rotation by rotation (`narrow_rotation`): for rotation `j`,
/// the three taps' weights, then pixel by pixel the rotated input columns `p ST + kx`
/// times them. Only the first and the last of the row's `(P - 1) ST + 3` columns may lie
/// in the padding (`r.ix0 >= -1`, and the last column at most one past the image).
#[inline(always)]
unsafe fn narrow_row3<S: Simd, const G: usize, const P: usize, const ST: usize>(
    acc: &mut [S::V; P],
    xr: *const f32,
    r: NarrowRow,
    w: *const f32,
) {
    let span = (P - 1) * ST + 3;
    let row = NarrowRow3 {
        x: xr.wrapping_offset(r.ix0 * S::LANES as isize),
        first: r.ix0 >= 0,
        last: r.ix0 + (span as isize) - 1 < r.w as isize,
        w,
    };
    // The sums in a local array (LLVM kept them on the stack through `acc`).
    let mut sums = *acc;
    // Written out, not looped, with the rotation a constant: `group_rotate` picks its
    // shuffle by it.
    macro_rules! rotations {
        ($($j:literal)*) => {
            $(if $j < G {
                narrow_rotation::<S, G, P, ST, $j>(&mut sums, &row);
            })*
        };
    }
    rotations!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    *acc = sums;
}

/// A row of [`narrow_row3`]: `x` at its column 0 (which may point outside the image),
/// whether the first and the last column are in the image, the row's weights.
struct NarrowRow3 {
    x: *const f32,
    first: bool,
    last: bool,
    w: *const f32,
}

impl NarrowRow3 {
    /// Column `q` of `span`, rotated by `J`.
    #[inline(always)]
    unsafe fn rotated<S: Simd, const G: usize, const J: usize>(
        &self,
        q: usize,
        span: usize,
    ) -> S::V {
        let at = self.x.wrapping_add(q * S::LANES);
        let x = if q == 0 {
            S::load_or_zero(at, self.first)
        } else if q + 1 == span {
            S::load_or_zero(at, self.last)
        } else {
            S::load(at)
        };
        if J == 0 {
            x
        } else {
            S::group_rotate::<G>(x, J)
        }
    }
}

/// Rotation `J` of [`narrow_row3`]. Pixel by pixel, not tap by tap: consecutive
/// multiply-adds go to different accumulators, three in a row to each, so a pixel's
/// sum waits for the one before it in its chain only once per three, and only the last
/// three rotated columns are live. (Column by column, with every rotation of a column
/// at once, each accumulator took its `3 G` multiply-adds of a row in a chain of
/// neighbours: ResNeXt-50's 4- and 8-channel layers ran at 34-46% of the FMA peak.)
#[inline(always)]
unsafe fn narrow_rotation<
    S: Simd,
    const G: usize,
    const P: usize,
    const ST: usize,
    const J: usize,
>(
    acc: &mut [S::V; P],
    row: &NarrowRow3,
) {
    let l = S::LANES;
    let span = (P - 1) * ST + 3;
    let wv: [S::V; 3] = std::array::from_fn(|kx| S::load(row.w.add((kx * G + J) * l)));
    let mut window = [
        row.rotated::<S, G, J>(0, span),
        row.rotated::<S, G, J>(1, span),
        S::splat(0.0),
    ];
    for (p, a) in acc.iter_mut().enumerate() {
        let q = p * ST;
        // Columns q, q + 1, q + 2 (taps 0, 1, 2); at stride 2, column q + 1 is new too.
        if ST == 2 {
            window[1] = row.rotated::<S, G, J>(q + 1, span);
        }
        window[2] = row.rotated::<S, G, J>(q + 2, span);
        for kx in 0..3 {
            *a = S::mul_add(wv[kx], window[kx], *a);
        }
        window = if ST == 1 {
            [window[1], window[2], window[2]]
        } else {
            [window[2], window[2], window[2]]
        };
    }
}

/// The longest row of input vectors whose rotations [`narrow_tile`] keeps in its buffer (12
/// pixels at stride 2 of a 3x3 kernel: 25).
pub(crate) const SPREAD_ROW: usize = 32;

/// [`narrow_tile`] for the tile's group width, one of 1, 2, 4, 8, 16 up to `LANES`.
///
/// # Safety
///
/// As [`narrow_tile`].
#[inline(always)]
pub(crate) unsafe fn narrow_tile_any<S: Simd, const P: usize>(t: &BlockedTile) {
    match t.narrow.group {
        1 => narrow_tile::<S, 1, P>(t),
        2 if S::LANES >= 2 => narrow_tile::<S, 2, P>(t),
        4 if S::LANES >= 4 => narrow_tile::<S, 4, P>(t),
        8 if S::LANES >= 8 => narrow_tile::<S, 8, P>(t),
        16 if S::LANES >= 16 => narrow_tile::<S, 16, P>(t),
        g => unreachable!(
            "no narrow-group tile for groups of {g} on {} lanes",
            S::LANES
        ),
    }
}
