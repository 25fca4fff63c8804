//! A convolution's weight gradient, `dW[o][c kh kw] = sum_n sum_p dY_n[o][p] X_n[c kh kw][p]`,
//! by one of two microkernels, neither of which builds a column matrix (the convolution
//! plan, `crate::conv::WeightGrad`, chooses which, and where the taps are read from):
//!
//! - the **outer-product** kernel (`kernels::outer`), where the output channels are a
//!   whole number of `F >= 2` vectors: `dY` is transposed to pixel-major (output
//!   channels along the lanes) and each tap's input value is broadcast, so each pixel
//!   adds an outer product to `dW^T` with no horizontal sums and no padding columns;
//! - the **row-dot** kernel (`kernels::dot`) otherwise (a single vector of output
//!   channels, as ResNet-20's first stage on AVX-512, or a ragged count): both `dY`'s
//!   rows and the taps' rows are read along the pixels and each vector of partial sums
//!   is reduced at the end.
//!
//! Both read the taps from the image itself when a 1x1, stride-1, unpadded convolution
//! allows (tap `c` is channel `c`), and otherwise from **phase planes** of the
//! zero-padded image (see [`accumulate_weight_grad`]): for stride `s`, `s x s` planes
//! per channel in which every tap is one unit-stride run along each output row (for
//! stride 1, the padded image itself).
//!
//! Images are taken a few at a time: enough that each tile's reduction is long (its
//! write-back, or for the row-dot kernel its horizontal sums, is then a small part of
//! its work) while the planes of the chunk stay in L2. The outer-product kernel reads a
//! large image's rows in batches (`DY_BATCH_FLOATS` of `dY`), every tap block over one
//! batch while it is in L2, and its `dW^T` goes into `dW` by transposed blocks.
//!
//! Measured (in-process A/B, ResNet-20's layers at batch 128, 2 threads, AVX-512,
//! outer-product over row-dot): 32 -> 32 channels at 16x16 0.78, 64 -> 64 at 8x8 0.63,
//! the stride-2 layers 0.62 and 0.76; 16 -> 16 at 32x32 (a single vector of output
//! channels, `F = 1`) lost 1.29, so it stays on the row-dot kernel.

use rayon::prelude::*;

use super::{Taps, WeightGrad};
use crate::gemm::pack::{aligned_start, ALIGN_SLACK};
use crate::kernels::dot::DotTile;
use crate::kernels::outer::OuterTile;
use crate::kernels::{line_share, KernelSet, OuterTileFn};
use crate::layout::{normalise_image, phase_tap_offsets_strided, split_phases, Normalise};
use crate::workspace::{Scratch, Workspace};

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

/// The row-dot kernel's chunks: aim for at least this many floats of reduction per
/// tile, to amortise its horizontal sums (24 of them on AVX-512, about as long as 4
/// steps of the reduction: with one 32 x 32 image a chunk they were 17% of the kernel's
/// time)...
const REDUCTION_TARGET: usize = 8192;
/// ... but keep a tile's `A` rows (`MI` rows of `dY` over the chunk, reread by every
/// tile of the row block) within this many floats (96 KiB, read from L2). Measured
/// (ResNet-20's 16-channel layer, batch 128, 2 threads, Zen 4, `dW` alone): 4.0-4.2 ms
/// with the rows kept in L1 (one image a chunk), 3.23-3.32 with five images, 3.26-3.59
/// with seven.
const A_ROWS_MAX: usize = 24576;
/// At most this many floats of phase planes per chunk (1 MiB, half of L2).
const SCRATCH_MAX: usize = 1 << 18;

/// Scratch buffers of the weight gradient, reused between calls.
#[derive(Default)]
pub(crate) struct WeightGradScratch {
    planes: Vec<f32>,
    dy: Vec<f32>,
    segs: Vec<[usize; 2]>,
    /// The chunk's images normalised, when the convolution's input is.
    normed: Vec<f32>,
    /// The outer-product kernel's `dW^T`, and its rows' input offsets.
    dwt: Vec<f32>,
    rows: Vec<usize>,
}

impl WeightGradScratch {
    /// Runs `f` with this thread's scratch of `ws`, kept there between calls (fresh
    /// buffers per call, `dW^T` alone megabytes, cost page faults, and unmapping them
    /// interrupted the other threads).
    pub(crate) fn with<R>(ws: &Workspace, f: impl FnOnce(&mut WeightGradScratch) -> R) -> R {
        use std::mem::take;
        ws.scratch(Scratch::WeightGradPlanes, |planes| {
            ws.scratch(Scratch::WeightGradDy, |dy| {
                ws.scratch(Scratch::WeightGradNormed, |normed| {
                    ws.scratch(Scratch::WeightGradTransposed, |dwt| {
                        let mut s = WeightGradScratch {
                            planes: take(planes),
                            dy: take(dy),
                            normed: take(normed),
                            dwt: take(dwt),
                            ..Default::default()
                        };
                        let result = f(&mut s);
                        (*planes, *dy, *normed, *dwt) = (s.planes, s.dy, s.normed, s.dwt);
                        result
                    })
                })
            })
        })
    }
}

/// `dw` (`[o, c kh kw]`) `+=` the weight gradient of the images in `x` (`[n, c, h, w]`)
/// against `dy` (`[n, o, oh, ow]`). With `parallel`, tiles are spread over rayon's
/// pool. With `normalise = Some([scale, shift])` the convolution's input was
/// `relu(scale[c] x + shift[c])`, normalised on the way into the kernel's operand:
/// stride-1 phase planes are written normalised, strided ones are split from one
/// channel normalised into L1, and the 1x1 image read in place is normalised a chunk of
/// images at a time into a buffer.
///
/// Phase planes: for stride `s`, plane `(c, ry, rx)` holds the zero-padded pixels
/// `(s yy + ry, s xx + rx)`, at row pitch `QW = ceil(PW / s)`. Tap `(c, ky, kx)` then
/// reads plane `(c, ky % s, kx % s)` from `(ky / s, kx / s)` on, at unit stride. The
/// outer-product kernel reads each output row's run (`OW` pixels). The row-dot kernel
/// reads the whole image as *one* run of `OH QW` floats, with `dY` copied to the same
/// pitch `QW` and zeros in its `QW - OW` extra columns: the run's extra columns read
/// neighbouring pixels, which meet those zeros (`QW / OW` more multiply-adds). Either
/// way the cost of the planes is one pass over the image instead of im2col's `kh kw`.
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
    normalise: Option<[&[f32]; 2]>,
    route: WeightGrad,
) {
    let (k, pix) = (g.c * g.kh * g.kw, g.oh * g.ow);
    let (in_image, out_image) = (g.c * g.h * g.w, o * pix);
    if k == 0 || pix == 0 || o == 0 || in_image == 0 || g.stride == 0 {
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
    let (lanes, s) = (set.lanes, g.stride);
    // The plan's route (`ConvPlan::routes` checked it fits this layer).
    let (outer, in_place) = match route {
        WeightGrad::OuterProduct(taps) => {
            let tile = set.outer_tile(o);
            assert!(
                tile.is_some(),
                "weight gradient: no outer-product tile for {o} channels"
            );
            (tile, taps == Taps::Image)
        }
        WeightGrad::RowDot(taps) => (None, taps == Taps::Image),
        WeightGrad::Gemm | WeightGrad::Winograd => {
            unreachable!("dW by GEMMs runs in backward.rs")
        }
    };
    assert!(
        !in_place || (g.kh == 1 && g.kw == 1 && s == 1 && g.pad == 0),
        "weight gradient: taps in place need a 1x1, stride-1, unpadded layer"
    );
    assert!(
        !in_place || outer.is_some() || pix % lanes == 0,
        "weight gradient: the row-dot kernel reads the image in place only for whole vectors"
    );
    // Phase-plane geometry: `QH x QW` planes, `s * s` per channel.
    let (qh, qw) = ((g.h + 2 * g.pad).div_ceil(s), (g.w + 2 * g.pad).div_ceil(s));
    let sp = s * s * qh * qw;
    // The row-dot kernel's reduction length per image (the rows' pitch) and the
    // planes' floats per image.
    let (len, per_image) = if in_place {
        (pix, in_image)
    } else {
        ((g.oh * qw).next_multiple_of(lanes), g.c * sp)
    };
    let chunk = match outer {
        Some(_) => OUTER_PIXELS.div_ceil(pix),
        None => REDUCTION_TARGET
            .div_ceil(len)
            .min(A_ROWS_MAX / (set.dot_mi * len)),
    }
    .min(SCRATCH_MAX / per_image)
    .clamp(1, n.max(1));
    // The chunk's planes are channel-major (`[c][image][s s QH QW]`): a tile's taps
    // read a few channels, and their planes for all the chunk's images are adjacent.
    let (ch_stride, img_stride) = if in_place {
        (pix, in_image)
    } else {
        (chunk * sp, sp)
    };
    let b_rows: Vec<usize> = if in_place {
        (0..k).map(|ci| ci * pix).collect()
    } else {
        phase_tap_offsets_strided(g.c, [g.kh, g.kw], s, [qh, qw], ch_stride)
    };
    let a_rows: Vec<usize> = (0..o).map(|i| i * len).collect();
    let WeightGradScratch {
        planes,
        dy: db,
        segs,
        normed,
        dwt,
        rows,
    } = scratch;
    if outer.is_some() {
        db.clear();
        db.resize(chunk * out_image, 0.0);
        dwt.clear();
        dwt.resize(k * o, 0.0);
    } else if !in_place {
        // Zeroed once: every chunk writes the same positions (the pixels, and dY's valid
        // columns), so padding and dY's extra columns stay zero across chunks.
        db.clear();
        db.resize(chunk * o * len + ALIGN_SLACK, 0.0);
    }
    if !in_place {
        // Zeroed once, as `db`: padding stays zero across chunks. The margin is for the
        // row-dot kernel's last tap run, which ends up to `kw / s + lanes` floats past
        // the last plane.
        planes.clear();
        planes.resize(chunk * per_image + g.kw + lanes, 0.0);
    }
    // dY's rows (a whole number of vectors each) start on cache lines: measured
    // (in-process A/B, ResNet-20's layers at batch 128, 2 threads, two runs) the
    // weight gradient was faster on 7 of 8, by up to 20%, than 16 bytes off.
    let at = if in_place || outer.is_some() {
        0
    } else {
        aligned_start(db)
    };
    let db = &mut db[at..];
    // One normalised channel of a strided convolution's input.
    let mut channel: Vec<f32> = Vec::new();
    for c0 in (0..n).step_by(chunk) {
        let cn = chunk.min(n - c0);
        let mut xs = &x[c0 * in_image..(c0 + cn) * in_image];
        // Stride-1 planes are written normalised; strided ones are split from one
        // normalised channel at a time (in L1); the image read in place is normalised
        // whole into a buffer.
        let split_norm = normalise
            .filter(|_| !in_place)
            .map(|a| Normalise::new(set, a));
        if let Some(affine) = normalise.filter(|_| in_place) {
            normed.resize(xs.len().max(normed.len()), 0.0);
            for (src, dst) in xs
                .chunks_exact(in_image)
                .zip(normed.chunks_exact_mut(in_image))
            {
                normalise_image(set, src, g.h * g.w, affine, dst);
            }
            xs = &normed[..xs.len()];
        }
        let dys = &dy[c0 * out_image..(c0 + cn) * out_image];
        if !in_place {
            for (i, img) in xs.chunks_exact(in_image).enumerate() {
                for (ch, src) in img.chunks_exact(g.h * g.w).enumerate() {
                    let at = ch * ch_stride + i * img_stride;
                    let dst = &mut planes[at..at + sp];
                    match &split_norm {
                        Some(n) if s > 1 => {
                            channel.resize(src.len(), 0.0);
                            n.apply(ch, src, &mut channel);
                            split_phases(set, &channel, g.w, g.pad, s, [qh, qw], dst, None);
                        }
                        norm => {
                            let norm = norm.as_ref().map(|n| (n, ch));
                            split_phases(set, src, g.w, g.pad, s, [qh, qw], dst, norm);
                        }
                    }
                }
            }
        }
        let xb: &[f32] = if in_place { xs } else { planes };
        if let Some(tile) = outer {
            let width = tile.0 * lanes;
            transpose_dy(set, dys, o, pix, width, &mut db[..cn * out_image]);
            // One row per image (read in place) or per output row of each image.
            rows.clear();
            let row_len = if in_place {
                rows.extend((0..cn).map(|i| i * img_stride));
                pix
            } else {
                rows.extend((0..cn).flat_map(|i| (0..g.oh).map(move |y| i * img_stride + y * qw)));
                g.ow
            };
            let dyt = &db[..cn * out_image];
            outer_rows(set, tile, dyt, o, xb, &b_rows, rows, row_len, dwt, parallel);
            continue;
        }
        segs.clear();
        segs.extend((0..cn).map(|i| [i * o * len, i * img_stride]));
        // The next chunk's input and dY, prefetched while this one computes.
        let next = (c0 + cn)..(c0 + 2 * cn).min(n);
        let ahead = [
            &x[next.start * in_image..next.end * in_image],
            &dy[next.start * out_image..next.end * out_image],
        ];
        if in_place {
            dot_rows(
                set, dys, &a_rows, xs, &b_rows, segs, len, dw, parallel, ahead,
            );
            continue;
        }
        // dY at row pitch QW, zeros in the extra columns, `len` floats per channel.
        for (src, dst) in dys.chunks_exact(pix).zip(db.chunks_exact_mut(len)) {
            set.copy_rows(src, g.ow, dst, qw, [g.oh, g.ow], None);
        }
        let a = &db[..cn * o * len];
        dot_rows(
            set, a, &a_rows, planes, &b_rows, segs, len, dw, parallel, ahead,
        );
    }
    if outer.is_some() {
        add_transposed(set, dwt, k, o, dw);
    }
}

/// `dw` (`[o][k]`) `+=` the transpose of `dwt` (`[k][o]`, `o` a whole number of vectors):
/// `L x L` blocks by the tier's transpose, the last `k % L` rows one by one. (Element by
/// element, the writes `4 k` bytes apart missed the cache every time: a 512-channel 3x3
/// layer's `dW` at batch 16 spent most of its time here.)
fn add_transposed(set: &KernelSet, dwt: &[f32], k: usize, o: usize, dw: &mut [f32]) {
    let l = set.lanes;
    assert!(
        o.is_multiple_of(l),
        "add_transposed: channels not in whole vectors"
    );
    assert!(
        dwt.len() == k * o && dw.len() == o * k,
        "add_transposed: lengths"
    );
    let full = k / l * l;
    let mut block = [0.0f32; 16 * 16];
    for kk0 in (0..full).step_by(l) {
        for oi0 in (0..o).step_by(l) {
            // SAFETY: rows `kk0..kk0 + l` of `dwt` (pitch `o`) at columns `oi0..oi0 + l`
            // are inside it, and `block` holds `l x l` floats at pitch `l`.
            unsafe {
                (set.transpose_block)(dwt[kk0 * o + oi0..].as_ptr(), o, block.as_mut_ptr(), l)
            };
            for (j, row) in block.chunks_exact(l).take(l).enumerate() {
                let d = &mut dw[(oi0 + j) * k + kk0..][..l];
                d.iter_mut().zip(row).for_each(|(d, v)| *d += v);
            }
        }
    }
    for (kk, row) in dwt.chunks_exact(o).enumerate().skip(full) {
        for (oi, v) in row.iter().enumerate() {
            dw[oi * k + kk] += v;
        }
    }
}

/// Pixels per tile row block of the outer-product kernel: enough images per chunk that
/// a tile's accumulators are written back after this many pixels at least.
const OUTER_PIXELS: usize = 256;

/// `dY` (`[n][o][pix]`) transposed to `[o / width][n][pix][width]`: each group of
/// `width` output channels (a whole number of vectors) pixel-major, as the
/// outer-product kernel reads it. Whole `lanes x lanes` blocks by the tier's
/// transpose, the last `pix % lanes` pixels one by one.
fn transpose_dy(set: &KernelSet, dy: &[f32], o: usize, pix: usize, width: usize, out: &mut [f32]) {
    let l = set.lanes;
    assert!(
        width.is_multiple_of(l) && o.is_multiple_of(width),
        "transpose: channel groups"
    );
    assert_eq!(out.len(), dy.len(), "transpose: output length");
    let n = dy.len() / (o * pix);
    let full = pix / l * l;
    for (i, img) in dy.chunks_exact(o * pix).enumerate() {
        for (gi, src) in img.chunks_exact(width * pix).enumerate() {
            let dst = &mut out[(gi * n + i) * pix * width..][..pix * width];
            for j0 in (0..width).step_by(l) {
                for q0 in (0..full).step_by(l) {
                    // SAFETY: rows `j0..j0 + l` of `src` (pitch `pix`) at columns
                    // `q0..q0 + l`, and rows `q0..q0 + l` of `dst` (pitch `width`) at
                    // columns `j0..j0 + l`, are inside both slices (`j0 + l <= width`,
                    // `q0 + l <= pix`); the kernel set was checked when handed out.
                    unsafe {
                        (set.transpose_block)(
                            src[j0 * pix + q0..].as_ptr(),
                            pix,
                            dst[q0 * width + j0..].as_mut_ptr(),
                            width,
                        )
                    };
                }
                for q in full..pix {
                    for j in j0..j0 + l {
                        dst[q * width + j] = src[j * pix + q];
                    }
                }
            }
        }
    }
}

/// `dwt[tap][oc] += sum over rows r and pixels q < row_len of x[b_rows[tap] + rows[r] +
/// q] * dyt[pixel][oc]`, tile by tile. Checks every bound first.
#[allow(clippy::too_many_arguments)]
fn outer_rows(
    set: &KernelSet,
    (f, p, tile): (usize, usize, OuterTileFn),
    dyt: &[f32],
    o: usize,
    x: &[f32],
    b_rows: &[usize],
    rows: &[usize],
    row_len: usize,
    dwt: &mut [f32],
    parallel: bool,
) {
    let k = b_rows.len();
    if rows.is_empty() || row_len == 0 {
        return;
    }
    let width = f * set.lanes;
    assert!(
        o.is_multiple_of(width),
        "outer: channels not in whole groups"
    );
    assert_eq!(dyt.len(), rows.len() * row_len * o, "outer: dY length");
    assert_eq!(dwt.len(), k * o, "outer: gradient length");
    let reach = b_rows.iter().max().copied().unwrap_or(0)
        + rows.iter().max().copied().unwrap_or(0)
        + row_len;
    assert!(
        reach <= x.len(),
        "outer: input read out of bounds ({reach} > {})",
        x.len()
    );
    assert!(p <= 16, "outer tile larger than its offset buffer");
    let per_group = rows.len() * row_len * width;
    // Rows in batches whose `dY` (every group's) stays in L2 while every tap block
    // reads it: one image of the 7 x 7 stem's output gradient is 3.2 MB at batch 16,
    // which each of its 25 tap blocks streamed from memory.
    let batch = (DY_BATCH_FLOATS / (row_len * o)).max(1);
    for r0 in (0..rows.len()).step_by(batch) {
        let nrows = batch.min(rows.len() - r0);
        let block = |t0: usize, out: &mut [f32]| {
            let mut offs = [0usize; 16];
            for (r, slot) in offs.iter_mut().enumerate().take(p) {
                *slot = b_rows[(t0 + r).min(k - 1)];
            }
            for gi in 0..o / width {
                let t = OuterTile {
                    dy: dyt[gi * per_group + r0 * row_len * width..].as_ptr(),
                    x: x.as_ptr(),
                    x_off: offs.as_ptr(),
                    rows: rows[r0..].as_ptr(),
                    nrows,
                    row_len,
                    out: out[gi * width..].as_mut_ptr(),
                    ldo: o,
                    np: (k - t0).min(p),
                };
                // SAFETY: every read was bounds-checked above (invalid taps repeat the
                // last valid one); `dyt` holds `per_group` floats for each group, rows
                // `r0..r0 + nrows` of them from the offset given; the tile writes `np`
                // rows of `width` floats at stride `o` inside `out`, which holds rows
                // `t0..t0 + np` of `dwt`; the kernel set was checked when handed out.
                unsafe { tile(&t) };
            }
        };
        row_blocks(dwt, p, o, parallel, block);
    }
}

/// The most floats of `dY` (all output channels) one batch of the outer-product
/// kernel's rows holds (1 MiB, half of a core's L2).
const DY_BATCH_FLOATS: usize = 1 << 18;

/// Runs `block(first row, rows)` on `out` (rows of `width` floats) in blocks of `rows`
/// rows, over rayon's pool when `parallel` and there is more than one block.
fn row_blocks(
    out: &mut [f32],
    rows: usize,
    width: usize,
    parallel: bool,
    block: impl Fn(usize, &mut [f32]) + Sync,
) {
    // One thread: no hand-off. Called from outside a one-thread pool, each parallel
    // call cost a wake-up of the pool's thread, once per chunk of images (measured,
    // in-process A/B, `conv2d_backward` of ResNet-20's layers at batch 32 from the main
    // thread, 1 thread: 0.77-0.84 of the time without it).
    if parallel && out.len() > rows * width && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(rows * width)
            .enumerate()
            .for_each(|(bi, b)| block(bi * rows, b));
    } else {
        out.chunks_mut(rows * width)
            .enumerate()
            .for_each(|(bi, b)| block(bi * rows, b));
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
    ahead: [&[f32]; 2],
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
    // The tiles share out the prefetch of `ahead` (the next call's operands): even
    // tiles the first slice, odd ones the second, in equal runs of cache lines.
    let per_block = nb.div_ceil(nj);
    let tiles = m.div_ceil(mi) * per_block;
    let prefetch = |t: usize| line_share(ahead[t % 2], t / 2, (tiles + 1 - t % 2) / 2);
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
            let (ahead, ahead_lines) = prefetch(i0 / mi * per_block + j0 / nj);
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
                ahead,
                ahead_lines,
            };
            // SAFETY: every offset was bounds-checked above (invalid rows repeat the last
            // valid one); the tile writes `mi x nj` floats of `rows_out` at stride `nb`,
            // inside it since `rows_out` holds rows `i0..i0 + mi` of `out`; the kernel
            // set's features were checked when it was handed out.
            unsafe { (set.dot_tile)(&tile) };
        }
    };
    row_blocks(out, mi, nb, parallel, block);
}
