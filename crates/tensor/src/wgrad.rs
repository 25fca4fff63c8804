//! A convolution's weight gradient, `dW[o][c kh kw] = sum_n sum_p dY_n[o][p] X_n[c kh kw][p]`,
//! by the row-dot microkernel (`kernels::dot`).
//!
//! GEMM would need one operand transposed into its packed layout (both `dY` and the
//! taps `X` run along the pixels `p` in NCHW), which costs a pass over the im2col
//! columns and a second over their packed copy. Here both are read as rows, and the
//! taps come from one of three places:
//!
//! - **the image itself** for a 1x1, stride-1, unpadded convolution (tap `c` is channel
//!   `c`);
//! - **the zero-padded image** for stride 1 with output rows at least a vector long: tap
//!   `(c, ky, kx)` at output row `oy` is `OW` contiguous floats of padded row `oy + ky`
//!   from column `kx`, one reduction segment per output row, and no column matrix;
//! - **im2col columns** otherwise (strided convolutions, rows shorter than a vector),
//!   one segment per image.
//!
//! Images are taken a few at a time so that each tile's reduction is long (its final
//! horizontal sums are then a small part of its work) while the taps of the chunk stay
//! in L2.

use rayon::prelude::*;

use crate::gemm::pack::Im2col;
use crate::kernels::dot::DotTile;
use crate::kernels::KernelSet;

/// The shape of one convolution, per image.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvShape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub stride: usize,
    pub pad: usize,
}

/// Where the taps of the chunk are read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Taps {
    Image,
    Padded,
    Columns,
}

/// Aim for at least this many floats of reduction per tile (amortises its horizontal
/// sums: 24 of them against `24 * 2048 / 16` FMAs on AVX-512).
const REDUCTION_TARGET: usize = 2048;
/// At most this many floats of padded images or columns per chunk (1 MiB, half of L2).
const SCRATCH_MAX: usize = 1 << 18;

/// Scratch buffers of the weight gradient, reused between calls.
#[derive(Default)]
pub(crate) struct WeightGradScratch {
    taps: Vec<f32>,
    dy: Vec<f32>,
    segs: Vec<[usize; 2]>,
}

/// `dw` (`[o, c kh kw]`) `+=` the weight gradient of the images in `x` (`[n, c, h, w]`)
/// against `dy` (`[n, o, oh, ow]`). With `parallel`, blocks of output channels are
/// spread over rayon's pool.
///
/// Every route gives the kernel rows whose length is a whole number of vectors:
///
/// - `Image`: the rows as they are, when `OH OW` is already a multiple of the vector;
/// - `Padded`: each image zero-padded to `PH x PW`, and `dY` copied to the same row
///   pitch `PW` with zeros in its `PW - OW` extra columns. Then tap `(c, ky, kx)` over
///   the whole image is *one* run of the padded plane, from `(c PH + ky) PW + kx`: its
///   extra columns read neighbouring pixels, which meet `dY`'s zeros;
/// - `Columns`: im2col with the row pitch rounded up to a vector (zeros past `OH OW`),
///   `dY` copied to that pitch when it differs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn accumulate_weight_grad(
    set: &KernelSet,
    g: &ConvShape,
    o: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    scratch: &mut WeightGradScratch,
    parallel: bool,
) {
    let (k, pix) = (g.c * g.kh * g.kw, g.oh * g.ow);
    let (in_image, out_image) = (g.c * g.h * g.w, o * pix);
    if k == 0 || pix == 0 || o == 0 || in_image == 0 {
        return;
    }
    let n = x.len() / in_image;
    assert_eq!(x.len(), n * in_image, "weight gradient: input length");
    assert_eq!(
        dy.len(),
        n * out_image,
        "weight gradient: output-gradient length"
    );
    assert_eq!(dw.len(), o * k, "weight gradient: gradient length");
    let lanes = set.lanes;
    let (ph, pw) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
    let plane = ph * pw;
    let one_by_one = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0;
    let taps = if one_by_one && pix % lanes == 0 {
        Taps::Image
    } else if g.stride == 1 && g.ow >= lanes {
        Taps::Padded
    } else {
        Taps::Columns
    };
    // The reduction length per image (the rows' pitch) and the taps' floats per image.
    let (len, per_image) = match taps {
        Taps::Image => (pix, 0),
        Taps::Padded => ((g.oh * pw).next_multiple_of(lanes), g.c * plane),
        Taps::Columns => {
            let len = pix.next_multiple_of(lanes);
            (len, k * len)
        }
    };
    let chunk = REDUCTION_TARGET
        .div_ceil(len)
        .min(SCRATCH_MAX / per_image.max(1))
        .clamp(1, n.max(1));
    let a_rows: Vec<usize> = (0..o).map(|i| i * len).collect();
    let b_rows: Vec<usize> = match taps {
        Taps::Image => (0..k).map(|ci| ci * pix).collect(),
        Taps::Padded => (0..g.c)
            .flat_map(|ci| (0..g.kh).flat_map(move |ky| (0..g.kw).map(move |kx| (ci, ky, kx))))
            .map(|(ci, ky, kx)| (ci * ph + ky) * pw + kx)
            .collect(),
        Taps::Columns => (0..k).map(|j| j * len).collect(),
    };
    let WeightGradScratch {
        taps: tb,
        dy: db,
        segs,
    } = scratch;
    for c0 in (0..n).step_by(chunk) {
        let cn = chunk.min(n - c0);
        let xs = &x[c0 * in_image..(c0 + cn) * in_image];
        let dys = &dy[c0 * out_image..(c0 + cn) * out_image];
        segs.clear();
        let b_image = if taps == Taps::Image {
            in_image
        } else {
            per_image
        };
        segs.extend((0..cn).map(|i| [i * o * len, i * b_image]));
        // dY at the row pitch `pitch` (of `row` valid floats), `len` floats per channel.
        let mut dy_at_pitch = |row: usize, pitch: usize| {
            db.clear();
            db.resize(cn * o * len, 0.0);
            for (src, dst) in dys.chunks_exact(pix).zip(db.chunks_exact_mut(len)) {
                for (s, d) in src.chunks_exact(row).zip(dst.chunks_mut(pitch)) {
                    d[..row].copy_from_slice(s);
                }
            }
        };
        let (a, b): (&[f32], &[f32]) = match taps {
            Taps::Image => (dys, xs),
            Taps::Padded => {
                dy_at_pitch(g.ow, pw);
                // Zero-padded images, plus a margin for the last tap's run, which ends
                // up to `kw - 1 + lanes` floats past the last plane.
                tb.clear();
                tb.resize(cn * per_image + g.kw + lanes, 0.0);
                for (img, dst) in xs
                    .chunks_exact(in_image)
                    .zip(tb.chunks_exact_mut(per_image))
                {
                    for (src, dst) in img.chunks_exact(g.h * g.w).zip(dst.chunks_exact_mut(plane)) {
                        for (row, d) in src.chunks_exact(g.w).zip(dst[g.pad * pw..].chunks_mut(pw))
                        {
                            d[g.pad..g.pad + g.w].copy_from_slice(row);
                        }
                    }
                }
                (&db[..], &tb[..])
            }
            Taps::Columns => {
                tb.clear();
                tb.resize(cn * per_image, 0.0);
                for (img, cols) in xs
                    .chunks_exact(in_image)
                    .zip(tb.chunks_exact_mut(per_image))
                {
                    let im2col = Im2col {
                        x: img,
                        c: g.c,
                        h: g.h,
                        w: g.w,
                        kh: g.kh,
                        kw: g.kw,
                        sh: g.stride,
                        sw: g.stride,
                        ph: g.pad,
                        pw: g.pad,
                        ow: g.ow,
                    };
                    im2col.pack_panel(0, k, 0, pix, len, cols);
                }
                if len == pix {
                    (dys, &tb[..])
                } else {
                    dy_at_pitch(pix, len);
                    (&db[..], &tb[..])
                }
            }
        };
        dot_rows(set, a, &a_rows, b, &b_rows, segs, len, dw, parallel);
    }
}

/// `out[i][j] += sum_s sum_{t < len} a[a_rows[i] + s[0] + t] * b[b_rows[j] + s[1] + t]`,
/// `out` being `a_rows.len() x b_rows.len()`, tile by tile. Checks every bound first.
#[allow(clippy::too_many_arguments)]
fn dot_rows(
    set: &KernelSet,
    a: &[f32],
    a_rows: &[usize],
    b: &[f32],
    b_rows: &[usize],
    segs: &[[usize; 2]],
    len: usize,
    out: &mut [f32],
    parallel: bool,
) {
    let (m, nb) = (a_rows.len(), b_rows.len());
    if m == 0 || nb == 0 || segs.is_empty() || len == 0 {
        return;
    }
    // The kernel reads `len` floats from every row offset plus every segment offset.
    let reach = |rows: &[usize], s: usize| {
        rows.iter().max().copied().unwrap_or(0)
            + segs.iter().map(|seg| seg[s]).max().unwrap_or(0)
            + len
    };
    assert!(
        reach(a_rows, 0) <= a.len(),
        "row-dot: A read out of bounds ({} > {})",
        reach(a_rows, 0),
        a.len()
    );
    assert!(
        reach(b_rows, 1) <= b.len(),
        "row-dot: B read out of bounds ({} > {})",
        reach(b_rows, 1),
        b.len()
    );
    assert_eq!(out.len(), m * nb, "row-dot: output length");
    let (mi, nj) = (set.dot_mi, set.dot_nj);
    assert!(
        mi <= 8 && nj <= 8,
        "row-dot tile larger than its offset buffers"
    );
    let block = |i0: usize, rows_out: &mut [f32]| {
        let mut ar = [0usize; 8];
        for (r, slot) in ar.iter_mut().enumerate().take(mi) {
            *slot = a_rows[(i0 + r).min(m - 1)];
        }
        let mut br = [0usize; 8];
        for j0 in (0..nb).step_by(nj) {
            for (r, slot) in br.iter_mut().enumerate().take(nj) {
                *slot = b_rows[(j0 + r).min(nb - 1)];
            }
            let tile = DotTile {
                a: a.as_ptr(),
                a_rows: ar.as_ptr(),
                b: b.as_ptr(),
                b_rows: br.as_ptr(),
                segs: segs.as_ptr(),
                nseg: segs.len(),
                len,
                out: rows_out[j0..].as_mut_ptr(),
                ldo: nb,
                mi: (m - i0).min(mi),
                nj: (nb - j0).min(nj),
            };
            // SAFETY: every offset was bounds-checked above (invalid rows repeat the last
            // valid one); the tile writes `mi x nj` floats of `rows_out` at stride `nb`,
            // inside it since `rows_out` holds rows `i0..i0 + mi` of `out`; the kernel
            // set's features were checked when it was handed out.
            unsafe { (set.dot_tile)(&tile) };
        }
    };
    if parallel && m > mi {
        out.par_chunks_mut(mi * nb)
            .enumerate()
            .for_each(|(bi, rows)| block(bi * mi, rows));
    } else {
        out.chunks_mut(mi * nb)
            .enumerate()
            .for_each(|(bi, rows)| block(bi * mi, rows));
    }
}
