//! Winograd's F(4x4, 3x3) transforms for the blocked layout (`conv/winograd.rs`).
//!
//! A 3x3, stride-1 convolution computes each 4 x 4 patch of its output from a 6 x 6
//! window of its input. Winograd's minimal filtering algorithm (Lavin and Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016, with the interpolation points
//! 0, 1, -1, 2, -2 and infinity) writes that patch as
//!
//! ```text
//!     Y = A^T [ (G g G^T) (.) (B^T d B) ] A        (.) : element-wise product
//! ```
//!
//! `d` the 6 x 6 input window, `g` the 3 x 3 kernel, `U = G g G^T` the 6 x 6 transformed
//! kernel (made once, at packing), `V = B^T d B` the transformed window. Summed over the
//! input channels, the element-wise products are 36 independent matrix products, one per
//! position of the 6 x 6 domain: `M[pos] = V[pos] U[pos]` (tiles x input channels times
//! input channels x output channels), which the blocked layout's own kernel computes as
//! 1x1 convolutions. 36 multiplications per tile and channel pair instead of 144: 4x
//! fewer than the direct kernel's, paid for by the two transforms below (adds and a few
//! multiplies, memory-bound) and by a larger rounding error (`docs/convolution.md`).
//!
//! In the blocked layout a pixel's `LANES` channels are one vector, so each transform
//! is scalar arithmetic on whole vectors: every lane is a channel, transformed alike.
//!
//! ```text
//!       B^T                         G                      A^T
//!  4  0 -5  0  1  0        1/4     0     0         1  1  1  1  1  0
//!  0 -4 -4  1  1  0       -1/6  -1/6  -1/6         0  1 -1  2 -2  0
//!  0  4 -4 -1  1  0       -1/6   1/6  -1/6         0  1  1  4  4  0
//!  0 -2 -1  2  1  0       1/24  1/12   1/6         0  1 -1  8 -8  1
//!  0  2 -1 -2  1  0       1/24 -1/12   1/6
//!  0  4  0 -5  0  1          0     0     1
//! ```

use super::simd::Simd;

/// Output pixels per tile side, and input pixels per window side.
pub(crate) const TILE: usize = 4;
pub(crate) const WINDOW: usize = 6;
/// Positions of the transformed domain.
pub(crate) const POSITIONS: usize = WINDOW * WINDOW;

/// One input window of one channel block, to transform.
pub(crate) struct WinogradIn {
    /// The image's channel block, at pixel (0, 0) (`[H][W][LANES]`).
    pub x: *const f32,
    pub h: usize,
    pub w: usize,
    /// The window's top-left pixel (negative, or past the image, in the padding: read as
    /// zeros).
    pub iy0: isize,
    pub ix0: isize,
    /// Where position 0 of the transformed window goes; position `k` at `k out_pos`
    /// floats from it.
    pub out: *mut f32,
    pub out_pos: usize,
}

/// One tile of one output block, to transform back and finish.
pub(crate) struct WinogradOut {
    /// Position 0 of the tile's products; position `k` at `k m_pos` floats from it.
    pub m: *const f32,
    pub m_pos: usize,
    /// The tile's top-left output pixel of its block; rows `row` floats apart.
    pub out: *mut f32,
    pub row: usize,
    /// The rows and columns of the tile inside the output (at most 4 each).
    pub rows: usize,
    pub cols: usize,
    /// `LANES` biases of the block, or null.
    pub bias: *const f32,
    /// Laid out as `out`, or null.
    pub residual: *const f32,
    pub relu: bool,
}

/// `B^T z` for one column or row of six vectors.
#[inline(always)]
unsafe fn input_1d<S: Simd>(z: [S::V; WINDOW]) -> [S::V; WINDOW] {
    let (four, five, two) = (S::splat(4.0), S::splat(5.0), S::splat(2.0));
    // r0 = 4 z0 - 5 z2 + z4, r5 = 4 z1 - 5 z3 + z5.
    let r0 = S::mul_add(four, z[0], S::sub(z[4], S::mul(five, z[2])));
    let r5 = S::mul_add(four, z[1], S::sub(z[5], S::mul(five, z[3])));
    // r1, r2 = (z4 - 4 z2) +- (z3 - 4 z1).
    let a = S::sub(z[4], S::mul(four, z[2]));
    let b = S::sub(z[3], S::mul(four, z[1]));
    // r3, r4 = (z4 - z2) +- 2 (z3 - z1).
    let c = S::sub(z[4], z[2]);
    let e = S::mul(two, S::sub(z[3], z[1]));
    [
        r0,
        S::add(a, b),
        S::sub(a, b),
        S::add(c, e),
        S::sub(c, e),
        r5,
    ]
}

/// `A^T m` for one column or row of six vectors: four.
#[inline(always)]
unsafe fn output_1d<S: Simd>(m: [S::V; WINDOW]) -> [S::V; TILE] {
    let a = S::add(m[1], m[2]);
    let b = S::sub(m[1], m[2]);
    let c = S::add(m[3], m[4]);
    let e = S::sub(m[3], m[4]);
    [
        S::add(S::add(m[0], a), c),
        S::mul_add(S::splat(2.0), e, b),
        S::mul_add(S::splat(4.0), c, a),
        S::add(S::mul_add(S::splat(8.0), e, b), m[5]),
    ]
}

/// The input transform `V = B^T d B` of one window of one channel block.
///
/// # Safety
///
/// The pixels of the window inside the `h x w` image at `x` are readable (`LANES`
/// floats each); `out + k out_pos` is writable for `LANES` floats, `k < 36`.
#[inline(always)]
pub(crate) unsafe fn input_tile<S: Simd>(t: &WinogradIn) {
    transform_in::<S, WINDOW>(t, input_1d::<S>)
}

/// The `N x N` pixels of `t`'s window from `(iy0, ix0)` on, zeros where they fall
/// outside the `h x w` image.
///
/// # Safety
///
/// The window's pixels inside the image at `t.x` are readable (`LANES` floats each).
#[inline(always)]
unsafe fn load_window<S: Simd, const N: usize>(t: &WinogradIn) -> [[S::V; N]; N] {
    let l = S::LANES;
    let mut d = [[S::splat(0.0); N]; N];
    for (i, row) in d.iter_mut().enumerate() {
        let y = t.iy0 + i as isize;
        if y < 0 || y >= t.h as isize {
            continue;
        }
        let base = t.x.add(y as usize * t.w * l);
        for (j, v) in row.iter_mut().enumerate() {
            let x = t.ix0 + j as isize;
            if x >= 0 && x < t.w as isize {
                *v = S::load(base.add(x as usize * l));
            }
        }
    }
    d
}

/// The input transform of an `N x N` window by the 1-D transform `b_t` (`B^T z`),
/// columns first, then rows.
///
/// # Safety
///
/// As [`input_tile`], for an `N x N` window and `N^2` positions.
#[inline(always)]
unsafe fn transform_in<S: Simd, const N: usize>(
    t: &WinogradIn,
    b_t: unsafe fn([S::V; N]) -> [S::V; N],
) {
    let zero = S::splat(0.0);
    let d = load_window::<S, N>(t);
    // Columns first: tmp[.][j] = B^T d[.][j].
    let mut tmp = [[zero; N]; N];
    for j in 0..N {
        let col = b_t(std::array::from_fn(|i| d[i][j]));
        for (row, v) in tmp.iter_mut().zip(col) {
            row[j] = v;
        }
    }
    // Then rows: V[i][.] = B^T tmp[i][.] (that is, tmp B).
    for (i, row) in tmp.iter().enumerate() {
        for (j, v) in b_t(*row).iter().enumerate() {
            S::store(t.out.add((i * N + j) * t.out_pos), *v);
        }
    }
}

/// The output transform `Y = A^T M A` of one tile of one output block, then its
/// epilogue (bias, residual, ReLU: in that order, as the blocked kernel's), stored for
/// the tile's pixels inside the output.
///
/// # Safety
///
/// `m + k m_pos` is readable for `LANES` floats, `k < 36`; `out` (and `residual`) hold
/// `rows` rows `row` floats apart of `cols` pixels; `bias` holds `LANES` floats.
#[inline(always)]
pub(crate) unsafe fn output_tile<S: Simd>(t: &WinogradOut) {
    transform_out::<S, WINDOW, TILE>(t, output_1d::<S>)
}

/// The output transform of `N x N` positions to a `T x T` tile by the 1-D transform
/// `a_t` (`A^T m`), columns first, then rows and the epilogue.
///
/// # Safety
///
/// As [`output_tile`], for `N^2` positions and at most `T x T` pixels.
#[inline(always)]
unsafe fn transform_out<S: Simd, const N: usize, const T: usize>(
    t: &WinogradOut,
    a_t: unsafe fn([S::V; N]) -> [S::V; T],
) {
    let l = S::LANES;
    let zero = S::splat(0.0);
    // Columns first: tmp[.][j] = A^T M[.][j] (T x N).
    let mut tmp = [[zero; N]; T];
    for j in 0..N {
        let col = a_t(std::array::from_fn(|i| {
            S::load(t.m.add((i * N + j) * t.m_pos))
        }));
        for (row, v) in tmp.iter_mut().zip(col) {
            row[j] = v;
        }
    }
    let bias = (!t.bias.is_null()).then(|| S::load(t.bias));
    for (i, row) in tmp.iter().enumerate().take(t.rows) {
        for (j, v) in a_t(*row).iter().enumerate().take(t.cols) {
            let at = i * t.row + j * l;
            let mut v = *v;
            if let Some(b) = bias {
                v = S::add(v, b);
            }
            if !t.residual.is_null() {
                v = S::add(v, S::load(t.residual.add(at)));
            }
            if t.relu {
                v = S::max(zero, v);
            }
            S::store(t.out.add(at), v);
        }
    }
}

// The weight gradient by the same algorithm. Summed over a tile's outputs, `dY (.) Y`
// is bilinear in the kernel and the input window: differentiating `Y = A^T [(G g G^T)
// (.) (B^T d B)] A` by `g` gives the tile's share of `dW` as
//
// ```text
//     dW = G^T [ (A dY A^T) (.) (B^T d B) ] G      (3 x 3, from the 4 x 4 tile of dY)
// ```
//
// the same input transform, `A` (6 x 4) for the transform of `dY`, and `G^T` (3 x 6) to
// come back. Summed over the tiles of every image, the element-wise products are 36
// matrix products again (output channels x tiles times tiles x input channels), and
// the transform back runs once per channel pair.

/// `A z` for one column or row of four vectors of `dY`: six.
#[inline(always)]
unsafe fn grad_input_1d<S: Simd>(z: [S::V; TILE]) -> [S::V; WINDOW] {
    let (two, four, eight) = (S::splat(2.0), S::splat(4.0), S::splat(8.0));
    // r1, r2 = (z0 + z2) +- (z1 + z3); r3, r4 = (z0 + 4 z2) +- (2 z1 + 8 z3).
    let p = S::add(z[0], z[2]);
    let q = S::add(z[1], z[3]);
    let r = S::mul_add(four, z[2], z[0]);
    let e = S::mul_add(eight, z[3], S::mul(two, z[1]));
    [
        z[0],
        S::add(p, q),
        S::sub(p, q),
        S::add(r, e),
        S::sub(r, e),
        z[3],
    ]
}

/// The transform `A dY A^T` of one 4 x 4 tile of one block of `dY` (`x` of `t` is the
/// block, `(iy0, ix0)` the tile's top-left pixel, `h x w` the output plane: pixels past
/// it read as zeros), written as [`input_tile`] writes its 36 positions.
///
/// # Safety
///
/// The tile's pixels inside the `h x w` plane at `x` are readable (`LANES` floats
/// each); `out + k out_pos` is writable for `LANES` floats, `k < 36`.
#[inline(always)]
pub(crate) unsafe fn grad_output_tile<S: Simd>(t: &WinogradIn) {
    let zero = S::splat(0.0);
    let d = load_window::<S, TILE>(t);
    // Columns first: tmp[.][j] = A d[.][j] (6 x 4); then rows: U[i][.] = A tmp[i][.].
    let mut tmp = [[zero; TILE]; WINDOW];
    for j in 0..TILE {
        let col = grad_input_1d::<S>(std::array::from_fn(|i| d[i][j]));
        for (row, v) in tmp.iter_mut().zip(col) {
            row[j] = v;
        }
    }
    for (i, row) in tmp.iter().enumerate() {
        for (j, v) in grad_input_1d::<S>(*row).iter().enumerate() {
            S::store(t.out.add((i * WINDOW + j) * t.out_pos), *v);
        }
    }
}

/// The summed products of one output channel and up to `LANES` input channels, to
/// transform back into their `dW`.
pub(crate) struct WinogradGrad {
    /// Position 0 of the products (input channels along the lanes); position `k` at
    /// `k m_pos` floats from it.
    pub m: *const f32,
    pub m_pos: usize,
    /// The input channels (lanes) that are real: at most `LANES`.
    pub n: usize,
    /// The first channel's nine taps; channel `i`'s at `9 i` floats from it.
    pub out: *mut f32,
}

/// `G^T m` for one column or row of six vectors: three.
#[inline(always)]
unsafe fn grad_kernel_1d<S: Simd>(m: [S::V; WINDOW]) -> [S::V; 3] {
    let (quarter, sixth) = (S::splat(0.25), S::splat(1.0 / 6.0));
    let (twelfth, twentyfourth) = (S::splat(1.0 / 12.0), S::splat(1.0 / 24.0));
    let a = S::add(m[1], m[2]);
    let b = S::sub(m[1], m[2]);
    let c = S::add(m[3], m[4]);
    let e = S::sub(m[3], m[4]);
    // g0 = m0 / 4 - a / 6 + c / 24; g1 = e / 12 - b / 6; g2 = (c - a) / 6 + m5.
    [
        S::mul_add(
            twentyfourth,
            c,
            S::sub(S::mul(quarter, m[0]), S::mul(sixth, a)),
        ),
        S::sub(S::mul(twelfth, e), S::mul(sixth, b)),
        S::mul_add(sixth, S::sub(c, a), m[5]),
    ]
}

/// `dW += G^T M G` of one output channel and up to `LANES` input channels: the 3 x 3
/// taps of each channel pair from its 36 summed products.
///
/// # Safety
///
/// `m + k m_pos` is readable for `n` floats, `k < 36`, `n <= LANES`; `out` is writable
/// for `9 n` floats.
#[inline(always)]
pub(crate) unsafe fn grad_kernel_tile<S: Simd>(t: &WinogradGrad) {
    let zero = S::splat(0.0);
    let load = |k: usize| {
        if t.n == S::LANES {
            S::load(t.m.add(k * t.m_pos))
        } else {
            S::load_partial(t.m.add(k * t.m_pos), t.n, 0.0)
        }
    };
    // Columns first: tmp[.][j] = G^T M[.][j] (3 x 6); then rows: dW[i][.] = G^T tmp[i][.].
    let mut tmp = [[zero; WINDOW]; 3];
    for j in 0..WINDOW {
        let col = grad_kernel_1d::<S>(std::array::from_fn(|i| load(i * WINDOW + j)));
        for (row, v) in tmp.iter_mut().zip(col) {
            row[j] = v;
        }
    }
    // The nine taps, lane by lane into each channel's kernel.
    let mut taps = [[0.0f32; 16]; 9];
    for (i, row) in tmp.iter().enumerate() {
        for (j, v) in grad_kernel_1d::<S>(*row).iter().enumerate() {
            S::store(taps[i * 3 + j].as_mut_ptr(), *v);
        }
    }
    for lane in 0..t.n {
        let out = t.out.add(lane * 9);
        for (tap, v) in taps.iter().enumerate() {
            *out.add(tap) += v[lane];
        }
    }
}

/// `LANES` output channels' 3 x 3 kernels for one input channel, to transform into
/// their 36 positions in `f32` (`kernel_tile`): the weights the transformed-domain
/// products read, made per call from the direct kernel's blocked weights instead of
/// kept (`Forward::BlockedWinogradOnTheFly`).
pub(crate) struct WinogradKernel {
    /// Tap (0, 0) of the `LANES` kernels (one vector, output channels along the lanes);
    /// tap `i` (row-major) at `i tap` floats from it.
    pub g: *const f32,
    pub tap: usize,
    /// Where position 0 of the transform goes; position `k` at `k out_pos` floats.
    pub out: *mut f32,
    pub out_pos: usize,
}

/// `G z` for one column or row of three vectors: six.
#[inline(always)]
unsafe fn kernel_1d<S: Simd>(z: [S::V; 3]) -> [S::V; WINDOW] {
    let minus_sixth = S::splat(-1.0 / 6.0);
    // r1, r2 = -(z0 + z2 +- z1) / 6; r3, r4 = (z0 / 24 + z2 / 6) +- z1 / 12.
    let p = S::add(z[0], z[2]);
    let q = S::mul_add(
        S::splat(1.0 / 24.0),
        z[0],
        S::mul(S::splat(1.0 / 6.0), z[2]),
    );
    let t = S::mul(S::splat(1.0 / 12.0), z[1]);
    [
        S::mul(S::splat(0.25), z[0]),
        S::mul(minus_sixth, S::add(p, z[1])),
        S::mul(minus_sixth, S::sub(p, z[1])),
        S::add(q, t),
        S::sub(q, t),
        z[2],
    ]
}

/// The kernel transform `U = G g G^T` of `LANES` kernels in `f32`, columns first, then
/// rows (`kernel_transform_lanes` is the same in `f64`, for weights kept transformed).
///
/// # Safety
///
/// `g + i tap` is readable for `LANES` floats, `i < 9`; `out + k out_pos` is writable
/// for `LANES` floats, `k < 36`.
#[inline(always)]
pub(crate) unsafe fn kernel_tile<S: Simd>(t: &WinogradKernel) {
    let zero = S::splat(0.0);
    let g: [S::V; 9] = std::array::from_fn(|i| S::load(t.g.add(i * t.tap)));
    // Columns first: tmp[.][j] = G g[.][j] (6 x 3); then rows: U[i][.] = G tmp[i][.].
    let mut tmp = [[zero; 3]; WINDOW];
    for j in 0..3 {
        let col = kernel_1d::<S>([g[j], g[3 + j], g[6 + j]]);
        for (row, v) in tmp.iter_mut().zip(col) {
            row[j] = v;
        }
    }
    for (i, row) in tmp.iter().enumerate() {
        for (j, v) in kernel_1d::<S>(*row).iter().enumerate() {
            S::store(t.out.add((i * WINDOW + j) * t.out_pos), *v);
        }
    }
}

/// `G g G^T` of up to 16 3 x 3 kernels (row-major) at once, in `f64`: the transformed
/// kernels the 36 products multiply by, lane by lane (`g[i][lane]` is tap `i` of kernel
/// `lane`), in loops over the lanes the compiler vectorises (training transforms the
/// weights of every Winograd layer twice a step; one kernel at a time, with divisions,
/// this was a tenth of ResNet-18's training step).
pub(crate) fn kernel_transform_lanes(g: &[[f64; 16]; 9]) -> [[f64; 16]; POSITIONS] {
    const SIXTH: f64 = 1.0 / 6.0;
    const TWELFTH: f64 = 1.0 / 12.0;
    const TWENTYFOURTH: f64 = 1.0 / 24.0;
    let gm = |z: [&[f64; 16]; 3], out: [&mut [f64; 16]; WINDOW]| {
        let [o0, o1, o2, o3, o4, o5] = out;
        for q in 0..16 {
            let (a, b, c) = (z[0][q], z[1][q], z[2][q]);
            o0[q] = a * 0.25;
            o1[q] = -(a + b + c) * SIXTH;
            o2[q] = -(a - b + c) * SIXTH;
            o3[q] = a * TWENTYFOURTH + b * TWELFTH + c * SIXTH;
            o4[q] = a * TWENTYFOURTH - b * TWELFTH + c * SIXTH;
            o5[q] = c;
        }
    };
    // Columns: cols[j][i] = (G g[.][j])[i]; then rows: U[i][.] = G cols[.][i].
    let mut cols = [[[0.0f64; 16]; WINDOW]; 3];
    for (j, col) in cols.iter_mut().enumerate() {
        let [c0, c1, c2, c3, c4, c5] = col;
        gm([&g[j], &g[3 + j], &g[6 + j]], [c0, c1, c2, c3, c4, c5]);
    }
    let mut u = [[0.0f64; 16]; POSITIONS];
    for i in 0..WINDOW {
        let row = &mut u[i * WINDOW..(i + 1) * WINDOW];
        let [r0, r1, r2, r3, r4, r5] = row else {
            unreachable!("a row of WINDOW positions")
        };
        gm(
            [&cols[0][i], &cols[1][i], &cols[2][i]],
            [r0, r1, r2, r3, r4, r5],
        );
    }
    u
}

// F(2x2, 3x3): 2 x 2 output tiles from 4 x 4 windows, 16 products per tile and channel
// pair instead of 36 (2.25x fewer multiplications than the direct kernel, against
// F(4x4, 3x3)'s 4x), weights 16/9 of the 3x3 ones instead of 4x, and a smaller error.
//
// ```text
//      B^T               G                 A^T
//   1  0 -1  0       1    0    0        1  1  1  0
//   0  1  1  0      1/2  1/2  1/2       0  1 -1 -1
//   0 -1  1  0      1/2 -1/2  1/2
//   0  1  0 -1       0    0    1
// ```

/// F(2x2, 3x3)'s output pixels per tile side and input pixels per window side.
pub(crate) const TILE2: usize = 2;
pub(crate) const WINDOW2: usize = 4;

/// `B^T z` of F(2x2, 3x3).
#[inline(always)]
unsafe fn input2_1d<S: Simd>(z: [S::V; WINDOW2]) -> [S::V; WINDOW2] {
    [
        S::sub(z[0], z[2]),
        S::add(z[1], z[2]),
        S::sub(z[2], z[1]),
        S::sub(z[1], z[3]),
    ]
}

/// `A^T m` of F(2x2, 3x3).
#[inline(always)]
unsafe fn output2_1d<S: Simd>(m: [S::V; WINDOW2]) -> [S::V; TILE2] {
    [
        S::add(S::add(m[0], m[1]), m[2]),
        S::sub(S::sub(m[1], m[2]), m[3]),
    ]
}

/// [`input_tile`] of F(2x2, 3x3): a 4 x 4 window, 16 positions.
///
/// # Safety
///
/// As [`input_tile`], for a 4 x 4 window and 16 positions.
#[inline(always)]
pub(crate) unsafe fn input_tile2<S: Simd>(t: &WinogradIn) {
    transform_in::<S, WINDOW2>(t, input2_1d::<S>)
}

/// [`output_tile`] of F(2x2, 3x3): 16 positions to a 2 x 2 tile, then the epilogue.
///
/// # Safety
///
/// As [`output_tile`], for 16 positions and at most 2 x 2 pixels.
#[inline(always)]
pub(crate) unsafe fn output_tile2<S: Simd>(t: &WinogradOut) {
    transform_out::<S, WINDOW2, TILE2>(t, output2_1d::<S>)
}

/// `G g G^T` of F(2x2, 3x3), in `f64`: 16 values, row-major.
pub(crate) fn kernel_transform2(g: [f64; 9]) -> [f64; WINDOW2 * WINDOW2] {
    let gm = |z: [f64; 3]| -> [f64; WINDOW2] {
        [
            z[0],
            (z[0] + z[1] + z[2]) / 2.0,
            (z[0] - z[1] + z[2]) / 2.0,
            z[2],
        ]
    };
    let cols: [[f64; WINDOW2]; 3] = std::array::from_fn(|j| gm([g[j], g[3 + j], g[6 + j]]));
    let mut u = [0.0; WINDOW2 * WINDOW2];
    for i in 0..WINDOW2 {
        let r = gm([cols[0][i], cols[1][i], cols[2][i]]);
        u[i * WINDOW2..(i + 1) * WINDOW2].copy_from_slice(&r);
    }
    u
}
