//! Direct convolution: the alternative to im2col + GEMM for convolutions with few
//! output channels, where packing the column matrix costs more than the arithmetic it
//! feeds (each packed element serves only `2 x out_channels` flops).
//!
//! The kernel reads the image in one of four forms ([`DirectForm`]), which the
//! convolution plan (`crate::conv`) picks from the shape; the weights are stored
//! transposed, `[C kh kw][O]`, in blocks of `OB` output channels. Every tile of `OB`
//! output channels by `XV` consecutive vectors of pixels is one call of the microkernel
//! in `crate::kernels::direct_tile`; its result goes through the epilogue (accumulate,
//! bias, residual, ReLU) into the NCHW output.
//!
//! - `Padded` (stride 1, output rows of whole vectors): the image is copied once into a
//!   zero-padded buffer, each channel's output is one flat run of vectors, and tiles run
//!   on across row ends.
//! - `Phased` (strided, rows of whole vectors): the image is split into phase planes
//!   (for stride `s`, `s x s` subsampled copies, see `direct_conv_image_planar`), read
//!   the same way at their pitch.
//! - `Planar` (any shape; the ladder's choice for rows that are not a whole number of
//!   vectors): the output computed as one flat run per channel at the planes' pitch into
//!   a wider buffer, then copied out (`direct_conv_image_planar`).
//! - `Masked` (rows shorter than a vector in a stride-1 "same" convolution whose planes
//!   are whole vectors, 8 x 8 on AVX-512): masked copies of the image at its own pitch
//!   (`pad_image_masked`), run flat like whole-vector rows.
//!
//! The input gradient of a convolution is a transposed convolution, run by the same
//! kernel: with flipped weights for stride 1 ([`DirectWeights::flipped`]), phase by phase
//! for a stride above 1 ([`StridedTransposed`]).

use rayon::prelude::*;

use super::{phases_fit, DirectForm};
use crate::epilogue::{accumulates, finish_row, tile_steps, Epilogue};
use crate::gemm::driver::Threads;
use crate::kernels::microkernel::TileOut;
use crate::kernels::KernelSet;
use crate::layout::{per_channel, phase_tap_offsets, split_phases, Normalise, OutPtr};
use crate::workspace::{Scratch, Workspace};

/// Convolution weights laid out for the direct kernel: blocks of `ob` output channels,
/// each `[C kh kw][ob]` (`wt[(blk * k + r) * ob + b]` for reduction index
/// `r = (c * kh + ky) * kw + kx`), output channels padded with zeros to whole blocks.
#[derive(Clone, Debug)]
pub(crate) struct DirectWeights {
    wt: Vec<f32>,
    pub o: usize,
    ob: usize,
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
}

impl DirectWeights {
    /// From OIHW weights, for tiles of `ob` channels.
    pub fn new(w: &[f32], [o, c, kh, kw]: [usize; 4], ob: usize) -> Self {
        Self::from_fn(o, c, kh, kw, ob, |oc, ci, ky, kx| {
            w[((oc * c + ci) * kh + ky) * kw + kx]
        })
    }

    /// The weights of the transposed convolution that computes a stride-1
    /// convolution's input gradient: `w'[c][o][ky][kx] = w[o][c][kh-1-ky][kw-1-kx]`
    /// (input and output channels swapped, the kernel rotated by 180 degrees).
    pub fn flipped(w: &[f32], [o, c, kh, kw]: [usize; 4], ob: usize) -> Self {
        Self::from_fn(c, o, kh, kw, ob, |ci, oc, ky, kx| {
            w[((oc * c + ci) * kh + (kh - 1 - ky)) * kw + (kw - 1 - kx)]
        })
    }

    fn from_fn(
        o: usize,
        c: usize,
        kh: usize,
        kw: usize,
        ob: usize,
        at: impl Fn(usize, usize, usize, usize) -> f32,
    ) -> Self {
        let k = c * kh * kw;
        let blocks = o.div_ceil(ob);
        let mut wt = vec![0.0f32; blocks * k * ob];
        for oc in 0..o {
            let (blk, b) = (oc / ob, oc % ob);
            for ci in 0..c {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let r = (ci * kh + ky) * kw + kx;
                        wt[(blk * k + r) * ob + b] = at(oc, ci, ky, kx);
                    }
                }
            }
        }
        DirectWeights {
            wt,
            o,
            ob,
            c,
            kh,
            kw,
        }
    }
}

/// Copies a `C x H x W` image into `padded`, zero-padded by `pad` on every side, and
/// returns the padded row pitch (`W + 2 pad`) and each reduction index's offset
/// (`(c * PH + ky) * pitch + kx`).
///
/// Every float of each channel is written (its rows copied, its border zeroed), so the
/// buffer needs no clearing first. No margin is needed: the flat-run tiles that read
/// this layout (rows of whole vectors, stride 1) stay inside the padded rows.
#[allow(clippy::too_many_arguments)]
fn pad_image(
    set: &KernelSet,
    x: &[f32],
    c: usize,
    [h, w]: [usize; 2],
    [kh, kw]: [usize; 2],
    pad: usize,
    padded: &mut Vec<f32>,
    parallel: bool,
    norm: Option<&Normalise>,
) -> (usize, Vec<usize>) {
    let (ph, pw) = (h + 2 * pad, w + 2 * pad);
    let per = ph * pw;
    padded.resize((c * per).max(padded.len()), 0.0);
    per_channel(
        parallel,
        x,
        h * w,
        &mut padded[..c * per],
        per,
        |ch, src, dst| {
            let (top, rest) = dst.split_at_mut(pad * pw);
            top.fill(0.0);
            let (rows, bottom) = rest.split_at_mut(h * pw);
            bottom.fill(0.0);
            for d in rows.chunks_exact_mut(pw) {
                // The border elements one by one: `fill` on a slice of one or two
                // floats compiled to a `memset` call each (0.9% of a training step).
                for i in 0..pad {
                    d[i] = 0.0;
                    d[pad + w + i] = 0.0;
                }
            }
            // The rows in one call (a call per row cost more than its copy on 16-32
            // pixel rows).
            match norm {
                Some(n) => n.rows(ch, src, w, &mut rows[pad..], pw, [h, w]),
                None => set.copy_rows(src, w, &mut rows[pad..], pw, [h, w], None),
            }
        },
    );
    (pw, phase_tap_offsets(c, [kh, kw], 1, [ph, pw]))
}

/// Splits a `C x H x W` image, zero-padded by `pad`, into its `s x s` phase planes per
/// channel (see `direct_conv_image_planar`), normalised as it goes with `norm` (stride 1
/// only), followed by `margin` zeros; returns their row pitch `QW` and each reduction
/// index's offset. Every float of each channel's planes is written (each channel by one
/// task).
#[allow(clippy::too_many_arguments)]
fn phase_planes(
    set: &KernelSet,
    x: &[f32],
    c: usize,
    [h, w]: [usize; 2],
    [kh, kw]: [usize; 2],
    s: usize,
    pad: usize,
    padded: &mut Vec<f32>,
    parallel: bool,
    norm: Option<&Normalise>,
    margin: usize,
) -> (usize, Vec<usize>) {
    let (qh, qw) = ((h + 2 * pad).div_ceil(s), (w + 2 * pad).div_ceil(s));
    let per = s * s * qh * qw;
    padded.resize((c * per + margin).max(padded.len()), 0.0);
    padded[c * per..c * per + margin].fill(0.0);
    per_channel(
        parallel,
        x,
        h * w,
        &mut padded[..c * per],
        per,
        |ch, src, dst| {
            dst.fill(0.0);
            split_phases(set, src, w, pad, s, [qh, qw], dst, norm.map(|n| (n, ch)));
        },
    );
    (qw, phase_tap_offsets(c, [kh, kw], s, [qh, qw]))
}

/// Convolves one `C x H x W` image into `out` (`O x OH x OW`), stride `s`, padding
/// `pad`. `padded` is scratch, resized as needed. The weights must have been laid out
/// for this tier's tile (`DirectWeights::new(.., set.direct_ob)`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn direct_conv_image(
    set: &KernelSet,
    form: DirectForm,
    x: &[f32],
    [h, w]: [usize; 2],
    dw: &DirectWeights,
    s: usize,
    pad: usize,
    [oh, ow]: [usize; 2],
    out: &mut [f32],
    epilogue: &[Epilogue],
    threads: Threads,
    padded: &mut Vec<f32>,
    norm: Option<&Normalise>,
    ws: &Workspace,
    ahead: &[f32],
) {
    debug_assert_eq!(dw.ob, set.direct_ob);
    assert!(
        norm.is_none() || s == 1,
        "direct convolution: normalised input needs stride 1"
    );
    let (ob, lanes) = (dw.ob, set.lanes);
    let max_xv = set.direct_tiles.len();
    // The plan checked the form against this shape (`DirectForm::fits`); the raw
    // pointer arithmetic below relies on it.
    if let Err(why) = form.fits(s, [h, w], [oh, ow], pad, lanes) {
        panic!("direct convolution: {why}");
    }
    let (flat, phased) = match form {
        DirectForm::Planar => {
            return direct_conv_image_planar(
                set,
                x,
                [h, w],
                dw,
                s,
                pad,
                [oh, ow],
                out,
                epilogue,
                threads,
                padded,
                norm,
                ws,
            )
        }
        DirectForm::Masked => (true, false),
        DirectForm::Phased => (false, true),
        DirectForm::Padded => (false, false),
    };
    let parallel = matches!(threads, Threads::Auto);
    let (pw, offs) = if flat {
        pad_image_masked(x, dw.c, [h, w], [dw.kh, dw.kw], pad, padded, parallel, norm)
    } else if phased {
        phase_planes(
            set,
            x,
            dw.c,
            [h, w],
            [dw.kh, dw.kw],
            s,
            pad,
            padded,
            parallel,
            None,
            0,
        )
    } else {
        pad_image(
            set,
            x,
            dw.c,
            [h, w],
            [dw.kh, dw.kw],
            pad,
            padded,
            parallel,
            norm,
        )
    };
    let k = offs.len();
    let plane = oh * ow;
    let blocks = dw.o.div_ceil(ob);
    // Here either every row is a whole number of vectors (`vpr` of them; the planar
    // route took the other shapes), so the output image is a flat run of `oh vpr`
    // vectors, and a tile takes `max_xv` consecutive ones, running on across row ends:
    // each vector's input starts at its own row and column of the padded image (of the
    // phase planes, at their pitch, when strided). Rows of one or two vectors (16 x 16
    // and 32 x 32 on AVX-512) then still give whole tiles.
    // Or (`flat`) rows are shorter than a vector but the plane is a whole number of
    // vectors, and vector `g` simply starts at pixel `g lanes` of the masked copies.
    debug_assert!(max_xv <= MAX_XV);
    debug_assert!(flat || ow % lanes == 0);
    let vpr = ow / lanes;
    let vectors = if flat { oh * ow / lanes } else { oh * vpr };
    let start = |g: usize| {
        if flat {
            g * lanes
        } else {
            (g / vpr) * pw + (g % vpr) * lanes
        }
    };
    let positions = vectors.div_ceil(max_xv);
    // The kernel reads through raw pointers: the last tap of the last vector must end
    // inside the padded image.
    if let (Some(&tap), true) = (offs.iter().max(), vectors > 0) {
        let last = start(vectors - 1) + tap;
        let written = if flat {
            dw.kw * (dw.c * (h + 2 * pad) * w + 2 * pad)
        } else if phased {
            dw.c * s * s * (h + 2 * pad).div_ceil(s) * pw
        } else {
            dw.c * (h + 2 * pad) * pw
        };
        assert!(
            last + lanes <= written,
            "direct convolution: padded image too small"
        );
    }
    // The tiles write through raw pointers: the output must hold every channel's plane.
    assert_eq!(
        out.len(),
        dw.o * plane,
        "direct convolution: output too small"
    );
    let outp = OutPtr(out.as_mut_ptr());
    let padded = &padded[..];
    let tasks = blocks * positions;
    let run = |(blk, pos): (usize, usize)| {
        // The next image (`ahead`), into L2 a share a tile while this one computes:
        // its copy into `padded` waited on memory for 12% of a 16-channel layer's time.
        crate::kernels::prefetch_share(ahead, pos * blocks + blk, tasks);
        let (o0, out) = (blk * ob, outp);
        // Vectors `g0..g0 + xv` of the flat run; vector `g` reads from `start(g)`.
        let g0 = pos * max_xv;
        let xv = max_xv.min(vectors - g0);
        let vo: [usize; MAX_XV] = std::array::from_fn(|v| start(g0 + v.min(xv - 1)) - start(g0));
        let at = o0 * plane + g0 * lanes;
        // SAFETY: the plan checked the epilogue against this image's `O x (OH OW)`
        // output (lowered to a matrix residual by the caller), and (o0, g0 lanes) is
        // inside it.
        let steps = unsafe { tile_steps(epilogue, o0, g0 * lanes) };
        let tile = TileOut {
            // SAFETY: `at` is inside the output (channel o0 < O, pixel g0 lanes < plane).
            c: unsafe { out.0.add(at) },
            ldc: plane,
            m: ob.min(dw.o - o0),
            n: xv * lanes,
            load_c: accumulates(epilogue),
            steps,
        };
        // SAFETY: every read stays inside `padded`: vector `g` reads `lanes` floats from
        // `start(g)` plus a tap offset, and the largest of those was asserted above to
        // end inside what the padded copy wrote. The weights hold `k * ob` floats for
        // block `blk`, and the tile covers only this task's channels and pixels, inside
        // the output (asserted `O x OH x OW` above).
        unsafe {
            (set.direct_tiles[xv - 1])(
                k,
                offs.as_ptr(),
                dw.wt.as_ptr().add(blk * k * ob),
                padded.as_ptr().add(start(g0)),
                vo.as_ptr(),
                &tile,
            )
        };
    };
    for_each_tile(blocks, positions, k * blocks * ob * plane, threads, run);
}

/// The image laid out for the flat route of a stride-1 "same" convolution (`OH = H`,
/// `OW = W`, so `kh = kw = 2 pad + 1`) whose rows are shorter than a vector: `kw`
/// copies of the image at its own pitch `W`, each channel with `pad` zero rows above
/// and below, and a margin of `pad` zeros around each copy. Tap `(c, ky, kx)` reads
/// copy `kx` from row `ky`, column `kx - pad` on, as one run over the whole output
/// plane; where `ox + kx - pad` falls outside the row, the run reads a pixel of the
/// row above or below instead, so copy `kx` has exactly those columns (never read
/// legitimately by that tap) zeroed: the last `pad - kx` for `kx < pad`, the first
/// `kx - pad` for `kx > pad`. Returns the pitch and each reduction index's offset.
///
/// Against the planar route this writes `kw W` floats per row instead of `W + 2 pad`,
/// and saves the `2 pad` wasted columns of every output row (a fifth of the work on
/// ResNet-20's 8 x 8 stage) and the copy of the output out of a wider buffer.
#[allow(clippy::too_many_arguments)]
fn pad_image_masked(
    x: &[f32],
    c: usize,
    [h, w]: [usize; 2],
    [kh, kw]: [usize; 2],
    pad: usize,
    padded: &mut Vec<f32>,
    parallel: bool,
    norm: Option<&Normalise>,
) -> (usize, Vec<usize>) {
    let block = (h + 2 * pad) * w;
    let copy = c * block + 2 * pad;
    padded.resize((kw * copy).max(padded.len()), 0.0);
    for (kx, dst) in padded.chunks_exact_mut(copy).take(kw).enumerate() {
        let (lead, rest) = dst.split_at_mut(pad);
        lead.fill(0.0);
        let (blocks, trail) = rest.split_at_mut(c * block);
        trail.fill(0.0);
        // Columns `lo..hi` are kept; the rest of each row is zero.
        let (lo, hi) = (kx.saturating_sub(pad), (w + kx).saturating_sub(pad).min(w));
        per_channel(parallel, x, h * w, blocks, block, |ch, src, dst| {
            let (top, rest) = dst.split_at_mut(pad * w);
            let (rows, bottom) = rest.split_at_mut(h * w);
            // Zeros are stored one by one, never by `fill`: on runs this short (8
            // floats above and below, 1 per row) each `fill` compiled to a `memset`
            // call, 6% of the time of ResNet-20's 8 x 8 layers. Measured, in-process
            // A/B, batch 128, 2 threads: 64 -> 64 at 8 x 8, forward 0.968, input
            // gradient 0.961.
            for i in 0..pad * w {
                top[i] = 0.0;
                bottom[i] = 0.0;
            }
            match norm {
                Some(n) => n.apply(ch, src, rows),
                None => rows.copy_from_slice(src),
            }
            // Column by column, down the rows (a strided loop, not a `memset`).
            for col in (0..lo).chain(hi..w) {
                for y in 0..h {
                    rows[y * w + col] = 0.0;
                }
            }
        });
    }
    let mut offs = Vec::with_capacity(c * kh * kw);
    for ci in 0..c {
        for ky in 0..kh {
            offs.extend((0..kw).map(|kx| kx * copy + ci * block + ky * w + kx));
        }
    }
    (w, offs)
}

/// The widest direct tile of any tier, in vectors.
const MAX_XV: usize = 4;

/// Runs `run((channel block, position))` for every pair, over rayon's pool when allowed
/// and the work (multiply-adds) is worth a hand-off.
fn for_each_tile(
    blocks: usize,
    positions: usize,
    work: usize,
    threads: Threads,
    run: impl Fn((usize, usize)) + Sync + Send,
) {
    let tasks = blocks * positions;
    if matches!(threads, Threads::Auto) && work >= 1 << 18 && rayon::current_num_threads() > 1 {
        (0..tasks)
            .into_par_iter()
            .map(|t| (t % blocks, t / blocks))
            .for_each(run);
    } else {
        (0..tasks).map(|t| (t % blocks, t / blocks)).for_each(run);
    }
}

/// Output rows that are not a whole number of vectors (ResNet-20's 8 x 8 stage and
/// ResNet-50's 56 x 56 on AVX-512), strided or not: a tile along one output
/// row would leave lanes idle, or need strided loads. Instead the image is split into
/// *phase planes* (for stride `s`, plane `(c, ry, rx)` holds the zero-padded pixels
/// `(s yy + ry, s xx + rx)`, row pitch `QW = ceil(PW / s)`; for stride 1 it is the
/// padded image) and the output is computed at pitch `QW`, as one flat run of `OH QW`
/// pixels per channel: output pixel `t = oy QW + ox` of tap `(c, ky, kx)` reads pixel
/// `t + (ky / s) QW + kx / s` of plane `(c, ky % s, kx % s)`, contiguous across row ends.
/// The `QW - OW` extra columns of each row are wasted work (2 of 10 on ResNet-20's last
/// stage), computed into a scratch buffer and dropped when the valid columns are copied
/// out through the epilogue.
#[allow(clippy::too_many_arguments)]
fn direct_conv_image_planar(
    set: &KernelSet,
    x: &[f32],
    [h, w]: [usize; 2],
    dw: &DirectWeights,
    s: usize,
    pad: usize,
    [oh, ow]: [usize; 2],
    out: &mut [f32],
    epilogue: &[Epilogue],
    threads: Threads,
    padded: &mut Vec<f32>,
    norm: Option<&Normalise>,
    ws: &Workspace,
) {
    let (ob, lanes) = (dw.ob, set.lanes);
    let max_xv = set.direct_tiles.len();
    // The phase planes, and a zeroed margin for the last tile's run past the last plane.
    let (qw, offs) = phase_planes(
        set,
        x,
        dw.c,
        [h, w],
        [dw.kh, dw.kw],
        s,
        pad,
        padded,
        matches!(threads, Threads::Auto),
        norm,
        dw.kw + max_xv * lanes,
    );
    let ext = oh * qw;
    let k = offs.len();
    let blocks = dw.o.div_ceil(ob);
    let step = max_xv * lanes;
    let chunks = ext.div_ceil(step);
    let along_row: [usize; MAX_XV] = std::array::from_fn(|v| v * lanes);
    // Every element of `wide` is written by a tile before it is read, so a reused
    // buffer needs no clearing (a fresh zeroed one per call cost page faults: 3.3 MB for
    // ResNet-50's stem).
    ws.scratch(Scratch::DirectWide, |wide| {
        wide.resize(dw.o * ext, 0.0);
        let wp = OutPtr(wide.as_mut_ptr());
        let padded = &padded[..];
        let run = |(blk, chunk): (usize, usize)| {
            let (o0, t0) = (blk * ob, chunk * step);
            let xv = (ext - t0).div_ceil(lanes).min(max_xv);
            let wide = wp;
            let tile = TileOut {
                // SAFETY: channel o0 < O and pixel t0 < OH PW are inside `wide`.
                c: unsafe { wide.0.add(o0 * ext + t0) },
                ldc: ext,
                m: ob.min(dw.o - o0),
                n: (xv * lanes).min(ext - t0),
                load_c: false,
                steps: [None; 4],
            };
            // SAFETY: the reads reach at most offs[k - 1] + t0 + xv * lanes, inside the
            // padded planes plus their margin; the weights hold `k * ob` floats for block
            // `blk`; the tile covers only this task's channels and pixels of `wide`.
            unsafe {
                (set.direct_tiles[xv - 1])(
                    k,
                    offs.as_ptr(),
                    dw.wt.as_ptr().add(blk * k * ob),
                    padded.as_ptr().add(t0),
                    along_row.as_ptr(),
                    &tile,
                )
            };
        };
        for_each_tile(blocks, chunks, k * blocks * ob * ext, threads, run);
        // The valid columns, through the epilogue, in its order; channels in parallel when
        // the convolution itself was split.
        let opix = oh * ow;
        let copy_out = |(oc, (dst, src)): (usize, (&mut [f32], &[f32]))| {
            for (oy, (d, s)) in dst.chunks_exact_mut(ow).zip(src.chunks(qw)).enumerate() {
                finish_row(epilogue, oc, oy * ow, &s[..ow], d);
            }
        };
        if matches!(threads, Threads::Auto)
            && out.len() >= 1 << 16
            && rayon::current_num_threads() > 1
        {
            out.par_chunks_exact_mut(opix)
                .zip(wide.par_chunks_exact(ext))
                .enumerate()
                .for_each(copy_out);
        } else {
            out.chunks_exact_mut(opix)
                .zip(wide.chunks_exact(ext))
                .enumerate()
                .for_each(copy_out);
        }
    });
}

/// The input gradient of a strided convolution, by the direct kernel: for stride `s`,
/// `dX` splits into `s x s` *output phases*, and each is a stride-1 correlation of `dY`
/// with a sub-kernel.
///
/// With `Y = y + pad` (a row of `dX` in padded coordinates), `Y = s oy + ky`: the rows of
/// phase `ry = Y % s`, `YY = Y / s`, receive exactly the taps `ky = ry + s jy`, from row
/// `oy = YY - jy` of `dY`. So phase `(ry, rx)` of channel `c` is
/// `sum over (o, jy, jx) of w[o][c][ry + s jy][rx + s jx] dY[o][YY - jy][XX - jx]`: a
/// direct convolution reading `dY` zero-padded on every side by
/// `T = ceil(max(kh, kw) / s) - 1` (the most taps a sub-kernel has along a side, less
/// one) at tap offsets `(T - jy, T - jx)`, computed flat at the padded pitch like the
/// planar route. Once every phase is computed, each row of `dX` is assembled from its
/// phases' rows in one pass (for `s = 2`, an interleave of two rows). No column matrix,
/// no col2im; every pixel of `dX` comes from exactly one phase.
#[derive(Clone, Debug)]
pub(crate) struct StridedTransposed {
    /// Per phase `ry * s + rx`: its sub-kernel's weights (`None` when it has no taps:
    /// those pixels of `dX` get nothing).
    phases: Vec<Option<DirectWeights>>,
    s: usize,
    /// The padding of `dY` on every side, `ceil(max(kh, kw) / s) - 1`.
    t: usize,
    /// The full kernel's size, to check a use against [`StridedTransposed::fits`].
    kh: usize,
    kw: usize,
}

impl StridedTransposed {
    /// For OIHW weights `[o, c, kh, kw]` and stride `s > 1`, tiles of `ob` channels.
    pub fn new(w: &[f32], [o, c, kh, kw]: [usize; 4], s: usize, ob: usize) -> Self {
        let t = kh.max(kw).div_ceil(s).saturating_sub(1);
        let phases = (0..s * s)
            .map(|ph| {
                let (ry, rx) = (ph / s, ph % s);
                let (ny, nx) = (
                    kh.saturating_sub(ry).div_ceil(s),
                    kw.saturating_sub(rx).div_ceil(s),
                );
                (ny > 0 && nx > 0).then(|| {
                    DirectWeights::from_fn(c, o, ny, nx, ob, |ci, oc, jy, jx| {
                        w[((oc * c + ci) * kh + ry + s * jy) * kw + rx + s * jx]
                    })
                })
            })
            .collect();
        StridedTransposed {
            phases,
            s,
            t,
            kh,
            kw,
        }
    }
}

/// One image's input gradient through [`StridedTransposed`]: `dy` is `O x OH x OW`,
/// `dx` is `C x H x W` (written, or added to with `accumulate`), padding `pad`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn strided_transposed_image(
    set: &KernelSet,
    dy: &[f32],
    [oh, ow]: [usize; 2],
    st: &StridedTransposed,
    pad: usize,
    [h, w]: [usize; 2],
    dx: &mut [f32],
    accumulate: bool,
    threads: Threads,
    padded: &mut Vec<f32>,
    ws: &Workspace,
) {
    let (s, t) = (st.s, st.t);
    // The phase arithmetic below (rows up to `(h - 1 + pad) / s`, reads inside the
    // padded `dY`) holds only for the shapes `phases_fit` accepts.
    assert!(
        phases_fit(s, [st.kh, st.kw], pad, [h, w], [oh, ow]),
        "strided transposed route used outside its shapes"
    );
    let Some(any) = st.phases.iter().flatten().next() else {
        if !accumulate {
            dx.fill(0.0);
        }
        return;
    };
    let (c, o, ob, lanes) = (any.o, any.c, any.ob, set.lanes);
    assert_eq!(dy.len(), o * oh * ow, "dY is not O x OH x OW");
    assert_eq!(dx.len(), c * h * w, "dX is not C x H x W");
    let max_xv = set.direct_tiles.len();
    let parallel = matches!(threads, Threads::Auto);
    // dY padded by `t` on every side (its offsets table is not used: each phase has its
    // own taps).
    let (pw, _) = pad_image(set, dy, o, [oh, ow], [1, 1], t, padded, parallel, None);
    let ph = oh + 2 * t;
    // Phase rows `YY` 0..=yy_max and columns 0..pw are computed, flat at pitch `pw`.
    let yy_max = (h - 1 + pad) / s;
    let ext = (yy_max + 1) * pw;
    let step = max_xv * lanes;
    // The last tile reads up to a whole step past `ext`, from the largest offset on.
    let need = o * ph * pw + ext.next_multiple_of(step) + t * pw + t + lanes;
    let written = o * ph * pw;
    if padded.len() < need {
        padded.resize(need, 0.0);
    }
    padded[written..need].fill(0.0);
    let src = &padded[..need];
    let along_row: [usize; MAX_XV] = std::array::from_fn(|v| v * lanes);
    // Phase `f`'s channel `ch` is at `(f C + ch) ext` in `wide`; past every phase, a row
    // of zeros stands for the phases without taps. Every other float is written by a
    // tile before it is read: no clearing.
    let phases = s * s;
    let zeros = phases * c * ext;
    ws.scratch(Scratch::DirectWide, |wide| {
        wide.resize(zeros + pw, 0.0);
        wide[zeros..zeros + pw].fill(0.0);
        for (phase, weights) in st.phases.iter().enumerate() {
            let Some(dwp) = weights else { continue };
            let (ny, nx) = (dwp.kh, dwp.kw);
            let mut offs = Vec::with_capacity(o * ny * nx);
            for oc in 0..o {
                for jy in 0..ny {
                    offs.extend((0..nx).map(|jx| oc * ph * pw + (t - jy) * pw + t - jx));
                }
            }
            let k = offs.len();
            let blocks = c.div_ceil(ob);
            let chunks = ext.div_ceil(step);
            let wp = OutPtr(wide[phase * c * ext..].as_mut_ptr());
            let run = |(blk, chunk): (usize, usize)| {
                let (o0, t0) = (blk * ob, chunk * step);
                let xv = (ext - t0).div_ceil(lanes).min(max_xv);
                let wide = wp;
                let tile = TileOut {
                    // SAFETY: channel o0 < C and pixel t0 < ext are inside this phase's part
                    // of `wide`.
                    c: unsafe { wide.0.add(o0 * ext + t0) },
                    ldc: ext,
                    m: ob.min(c - o0),
                    n: (xv * lanes).min(ext - t0),
                    load_c: false,
                    steps: [None; 4],
                };
                // SAFETY: reads reach at most the largest offset plus `t0 + xv lanes`, inside
                // `need` (zeroed past the padded image); the weights hold `k * ob` floats per
                // block; the tile covers only this task's channels and pixels of its phase.
                unsafe {
                    (set.direct_tiles[xv - 1])(
                        k,
                        offs.as_ptr(),
                        dwp.wt.as_ptr().add(blk * k * ob),
                        src.as_ptr().add(t0),
                        along_row.as_ptr(),
                        &tile,
                    )
                };
            };
            for_each_tile(blocks, chunks, k * blocks * ob * ext, threads, run);
        }
        // Row `y` of `dX` is phase row `YY = (y + pad) / s` of the phases `ry = (y + pad) % s`;
        // its pixel `x` is column `(x + pad) / s` of phase `rx = (x + pad) % s`. `fits`
        // keeps both inside the computed rows and columns.
        let wide_ref = &wide[..];
        let row_of = |phase: usize, ch: usize, yy: usize| match st.phases[phase] {
            Some(_) => (phase * c + ch) * ext + yy * pw,
            None => zeros,
        };
        for (ch, plane) in dx.chunks_exact_mut(h * w).enumerate() {
            for (y, row) in plane.chunks_exact_mut(w).enumerate() {
                let (yy, ry) = ((y + pad) / s, (y + pad) % s);
                if s == 2 {
                    // Pixel 2j from column pad / 2 + j of phase rx = pad % 2, pixel 2j + 1
                    // from column (pad + 1) / 2 + j of the other.
                    let r0 = pad % 2;
                    let a = row_of(2 * ry + r0, ch, yy) + pad / 2;
                    let b = row_of(2 * ry + 1 - r0, ch, yy) + pad.div_ceil(2);
                    let (na, nb) = (w.div_ceil(2), w / 2);
                    interleave2(&wide_ref[a..a + na], &wide_ref[b..b + nb], row, accumulate);
                    continue;
                }
                for (x, d) in row.iter_mut().enumerate() {
                    let (xx, rx) = ((x + pad) / s, (x + pad) % s);
                    let r = row_of(ry * s + rx, ch, yy);
                    let v = if r == zeros { 0.0 } else { wide_ref[r + xx] };
                    if accumulate {
                        *d += v;
                    } else {
                        *d = v;
                    }
                }
            }
        }
    });
}

/// `row[2 j] (+)= a[j]` and `row[2 j + 1] (+)= b[j]`, where `a` holds `ceil(len / 2)`
/// floats and `b` `floor(len / 2)`. In blocks of 8 pairs, which compile to vector
/// unpacks; a loop over single pairs stayed scalar (the scatter it replaced, one phase
/// at a time with a stride, was a fifth of a stride-2 input gradient).
fn interleave2(a: &[f32], b: &[f32], row: &mut [f32], accumulate: bool) {
    const P: usize = 8;
    let blocks = row.len() / (2 * P);
    let (head, tail) = row.split_at_mut(blocks * 2 * P);
    let pairs = a.chunks_exact(P).zip(b.chunks_exact(P));
    for (d, (x, y)) in head.chunks_exact_mut(2 * P).zip(pairs) {
        let d: &mut [f32; 2 * P] = d.try_into().expect("a block of pairs");
        let x: &[f32; P] = x.try_into().expect("a block");
        let y: &[f32; P] = y.try_into().expect("a block");
        if accumulate {
            for j in 0..P {
                d[2 * j] += x[j];
                d[2 * j + 1] += y[j];
            }
        } else {
            for j in 0..P {
                d[2 * j] = x[j];
                d[2 * j + 1] = y[j];
            }
        }
    }
    let (x, y) = (&a[blocks * P..], &b[blocks * P..]);
    for (i, d) in tail.iter_mut().enumerate() {
        let v = if i % 2 == 0 { x[i / 2] } else { y[i / 2] };
        if accumulate {
            *d += v;
        } else {
            *d = v;
        }
    }
}
