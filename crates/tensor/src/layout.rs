//! The data movement the convolution routes share: an image's zero-padded phase planes
//! and where each kernel tap starts in them, per-channel copies spread over the
//! threads, the training batch norm's normalisation applied while copying, the copies
//! between NCHW and the blocked layout (`L x L` blocks by the tier's transpose), and the
//! disjoint-output pointer that parallel tiles write through.
//!
//! Phase planes: for stride `s`, plane `(c, ry, rx)` holds the zero-padded pixels
//! `(s yy + ry, s xx + rx)` of channel `c`, at row pitch `QW = ceil(PW / s)`; tap `(c, ky,
//! kx)` then reads plane `(c, ky % s, kx % s)` from `(ky / s, kx / s)` on, at unit stride
//! (for stride 1 the one plane is the padded image). The im2col packer, the direct
//! kernel and the weight gradient all read them.

use rayon::prelude::*;

pub(crate) use crate::kernels::normalise::{check_affine, Normalise};
use crate::kernels::KernelSet;

/// Where each tap `(c, ky, kx)` (in OIHW reduction order) starts in an image split by
/// [`split_phases`] into `s * s` planes of `QH x QW` per channel: plane
/// `(c, ky % s, kx % s)`, row `ky / s`, column `kx / s`.
pub(crate) fn phase_tap_offsets(c: usize, k: [usize; 2], s: usize, q: [usize; 2]) -> Vec<usize> {
    phase_tap_offsets_strided(c, k, s, q, s * s * q[0] * q[1])
}

pub(crate) fn phase_tap_offsets_strided(
    c: usize,
    [kh, kw]: [usize; 2],
    s: usize,
    [qh, qw]: [usize; 2],
    channel: usize,
) -> Vec<usize> {
    // This runs once per image and layer in training: plain loops, with the divisions
    // by `s` taken once per kernel tap rather than once per offset (the iterator chain
    // with per-offset divisions it replaced took 1.7% of a ResNet-20 training step).
    // A tap's offset within channel 0, plus a whole channel's planes per channel.
    let tap: Vec<usize> = (0..kh)
        .flat_map(|ky| (0..kw).map(move |kx| (ky, kx)))
        .map(|(ky, kx)| (((ky % s) * s + kx % s) * qh + ky / s) * qw + kx / s)
        .collect();
    let mut offs = Vec::with_capacity(c * tap.len());
    for ci in 0..c {
        offs.extend(tap.iter().map(|t| ci * channel + t));
    }
    offs
}

/// Runs `fill(channel, src, dst)` for each channel: `src` in chunks of `src_len` floats, `dst`
/// in chunks of `dst_len`, over rayon's pool when `parallel` and the destination is
/// large. At batch 1 the copy of a layer's input into its padded or phase-plane layout
/// is otherwise serial work between two parallel products (a quarter of a stride-2 3x3
/// layer's time on two threads: its input is four times its output).
pub(crate) fn per_channel(
    parallel: bool,
    src: &[f32],
    src_len: usize,
    dst: &mut [f32],
    dst_len: usize,
    fill: impl Fn(usize, &[f32], &mut [f32]) + Sync + Send,
) {
    if src_len == 0 || dst_len == 0 {
        dst.fill(0.0);
        return;
    }
    let dst = &mut dst[..src.len() / src_len * dst_len];
    if parallel && dst.len() >= 1 << 15 && rayon::current_num_threads() > 1 {
        dst.par_chunks_exact_mut(dst_len)
            .zip(src.par_chunks_exact(src_len))
            .enumerate()
            .for_each(|(i, (d, s))| fill(i, s, d));
    } else {
        dst.chunks_exact_mut(dst_len)
            .zip(src.chunks_exact(src_len))
            .enumerate()
            .for_each(|(i, (d, s))| fill(i, s, d));
    }
}

/// Writes the pixels of one channel's `s * s` phase planes (`QH x QW` each) of the
/// image `src` (rows of `w`) padded by `pad`: padded pixel `(y, x)` goes to plane
/// `(y % s, x % s)` at `(y / s, x / s)`. With `norm = Some((n, c))` (stride 1 only),
/// the pixels are written normalised as channel `c`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn split_phases(
    set: &KernelSet,
    src: &[f32],
    w: usize,
    pad: usize,
    s: usize,
    [qh, qw]: [usize; 2],
    dst: &mut [f32],
    norm: Option<(&Normalise, usize)>,
) {
    // Strided planes would be written raw, silently: callers normalise first.
    assert!(
        norm.is_none() || s == 1,
        "normalised phase planes are stride 1"
    );
    let plane = qh * qw;
    if s == 1 {
        // One plane: the rows at pitch `QW`, `pad` rows and columns in.
        let (h, d) = (src.len() / w, &mut dst[pad * qw + pad..]);
        match norm {
            Some((n, ch)) => n.rows(ch, src, w, d, qw, [h, w]),
            None => set.copy_rows(src, w, d, qw, [h, w], None),
        }
        return;
    }
    for (iy, row) in src.chunks_exact(w).enumerate() {
        let y = iy + pad;
        let base = (y % s * s) * plane + (y / s) * qw;
        if s == 2 {
            // Pixel 2m goes to phase pad % 2 at column pad / 2 + m, pixel 2m + 1 to the
            // other phase at column (pad + 1) / 2 + m: a de-interleave of pairs.
            let (lo, hi) = dst.split_at_mut(base + plane);
            let (p0, p1) = (&mut lo[base..], hi);
            let (even, odd) = if pad.is_multiple_of(2) {
                (p0, p1)
            } else {
                (p1, p0)
            };
            let even = &mut even[pad / 2..pad / 2 + w.div_ceil(2)];
            let odd = &mut odd[pad.div_ceil(2)..pad.div_ceil(2) + w / 2];
            for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(row.chunks_exact(2)) {
                *e = pair[0];
                *o = pair[1];
            }
            if w % 2 == 1 {
                even[w / 2] = row[w - 1];
            }
            continue;
        }
        // Column phase rx holds the pixels ix with (ix + pad) % s == rx, in order.
        for rx in 0..s {
            let ix0 = (rx + s - pad % s) % s;
            if ix0 >= w {
                continue;
            }
            let start = base + rx * plane + (ix0 + pad) / s;
            let dst_row = &mut dst[start..start + (w - ix0).div_ceil(s)];
            for (d, &v) in dst_row.iter_mut().zip(row[ix0..].iter().step_by(s)) {
                *d = v;
            }
        }
    }
}

/// Writes `relu(scale[c] x + shift[c])` of the `[C, plane]` image `x` into `out` (see
/// [`Normalise`]). The caller checked `scale` and `shift` against `C`.
pub(crate) fn normalise_image(
    set: &KernelSet,
    x: &[f32],
    plane: usize,
    affine: [&[f32]; 2],
    out: &mut [f32],
) {
    if plane == 0 {
        return;
    }
    let n = Normalise::new(set, affine);
    for (ch, (src, dst)) in x
        .chunks_exact(plane)
        .zip(out.chunks_exact_mut(plane))
        .enumerate()
    {
        n.apply(ch, src, dst);
    }
}

/// The disjoint-output pointer: a raw output pointer shared by tasks that each write
/// a disjoint set of its elements (the GEMM's tiles, the direct kernel's tiles, the
/// blocked kernel's pixels of its channel blocks).
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: every user hands it to tasks that write disjoint sets of elements, and the
// scope that uses it ends before the output's borrow does.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper rather
    /// than its raw field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Pixels copied per step of a layout conversion: one channel's run of them is read
/// (or written) contiguously, and a block's `L` runs stay in the L1 cache.
const RUN: usize = 64;

/// Copies the NCHW batch `x` (`[n, c, plane]`) into the blocked `out` (`[n][CB][plane][L]`,
/// the lanes past `c` zero), through `norm` if given: `L x L` blocks by the tier's
/// transpose, parallel over (image, block).
pub(crate) fn copy_to_blocked(
    set: &KernelSet,
    x: &[f32],
    [n, c, plane]: [usize; 3],
    norm: Option<&Normalise>,
    out: &mut [f32],
) {
    let l = set.lanes;
    let cb = c.div_ceil(l);
    assert_eq!(
        out.len(),
        n * cb * plane * l,
        "copy_to_blocked: output length"
    );
    assert!(x.len() >= n * c * plane, "copy_to_blocked: input length");
    if plane == 0 {
        return;
    }
    out.par_chunks_mut(plane * l)
        .enumerate()
        .for_each(|(bi, dst)| {
            let (b, i) = (bi / cb, bi % cb);
            let lanes = l.min(c - i * l);
            // The block's channels, `RUN` pixels at a time: `[L][RUN]`, normalised or
            // copied (rows past the channels zero).
            let mut rows = [0.0f32; 16 * RUN];
            let src = &x[(b * c + i * l) * plane..];
            for p0 in (0..plane).step_by(RUN) {
                let len = RUN.min(plane - p0);
                if norm.is_none() && lanes == l {
                    // A whole block copied: transposed straight from the image's rows
                    // (no staging copy, which was a tenth of Winograd's `dW` on
                    // ResNet-20's 8 x 8 layers).
                    let d = &mut dst[p0 * l..(p0 + len) * l];
                    let whole = len / l * l;
                    assert!(src.len() >= (l - 1) * plane + p0 + len);
                    for q in (0..whole).step_by(l) {
                        // SAFETY: the L rows of `src` (`plane` apart) hold pixels p0 + q
                        // .. p0 + q + L (asserted above), and `d` pixels q..q + L.
                        unsafe {
                            (set.transpose_block)(
                                src[p0 + q..].as_ptr(),
                                plane,
                                d[q * l..].as_mut_ptr(),
                                l,
                            )
                        };
                    }
                    for q in whole..len {
                        for lane in 0..l {
                            d[q * l + lane] = src[lane * plane + p0 + q];
                        }
                    }
                    continue;
                }
                for lane in 0..lanes {
                    let run = &src[lane * plane + p0..][..len];
                    let row = &mut rows[lane * RUN..][..len];
                    match norm {
                        Some(nm) => nm.apply(i * l + lane, run, row),
                        None => row.copy_from_slice(run),
                    }
                }
                let d = &mut dst[p0 * l..(p0 + len) * l];
                let whole = len / l * l;
                for q in (0..whole).step_by(l) {
                    // SAFETY: rows q..q + L of each of the L rows of `rows` (RUN apart)
                    // and pixels q..q + L of `d` (L floats each) are in bounds.
                    unsafe {
                        (set.transpose_block)(rows[q..].as_ptr(), RUN, d[q * l..].as_mut_ptr(), l)
                    };
                }
                for q in whole..len {
                    for lane in 0..l {
                        d[q * l + lane] = rows[lane * RUN + q];
                    }
                }
            }
        });
}

/// Copies the blocked `yb` (`[n][OB][plane][L]`) into the NCHW `y` (`[n, o, plane]`):
/// `L x L` blocks by the tier's transpose, parallel over (image, block), each run of a
/// channel's row written by `finish(image, channel, first pixel, run, destination)` (a
/// copy, or an epilogue).
pub(crate) fn copy_from_blocked(
    set: &KernelSet,
    yb: &[f32],
    [n, o, plane]: [usize; 3],
    y: &mut [f32],
    finish: impl Fn(usize, usize, usize, &[f32], &mut [f32]) + Sync,
) {
    let l = set.lanes;
    let ob = o.div_ceil(l);
    // The unsafe writes below trust these lengths.
    assert!(y.len() >= n * o * plane, "copy_from_blocked: output length");
    assert!(
        yb.len() >= n * ob * plane * l,
        "copy_from_blocked: input length"
    );
    let yp = OutPtr(y.as_mut_ptr());
    (0..n * ob).into_par_iter().for_each(|bi| {
        let (b, i) = (bi / ob, bi % ob);
        let lanes = l.min(o - i * l);
        let src = &yb[bi * plane * l..][..plane * l];
        let mut rows = [0.0f32; 16 * RUN];
        for p0 in (0..plane).step_by(RUN) {
            let len = RUN.min(plane - p0);
            let s = &src[p0 * l..(p0 + len) * l];
            let whole = len / l * l;
            for q in (0..whole).step_by(l) {
                // SAFETY: pixels q..q + L of `s` (L floats each) and columns q..q + L of
                // the L rows of `rows` (RUN apart) are in bounds.
                unsafe {
                    (set.transpose_block)(s[q * l..].as_ptr(), l, rows[q..].as_mut_ptr(), RUN)
                };
            }
            for q in whole..len {
                for lane in 0..l {
                    rows[lane * RUN + q] = s[q * l + lane];
                }
            }
            for lane in 0..lanes {
                let ch = i * l + lane;
                // SAFETY: row `ch` of image b of y, pixels p0..p0 + len, is in bounds, and
                // (image, block) tasks write disjoint channels.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(yp.get().add((b * o + ch) * plane + p0), len)
                };
                finish(b, ch, p0, &rows[lane * RUN..][..len], dst);
            }
        }
    });
}
