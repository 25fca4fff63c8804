//! Winograd F(4x4, 3x3) for NCHW activations (`Forward::Winograd`, `InputGrad::Winograd`):
//! the batch copied into the blocked layout, the blocked route of `winograd.rs`, and the
//! result copied back, so that training (which runs in NCHW) gets Winograd's 4x fewer
//! multiplications for its 3x3, stride-1 layers:
//!
//! ```text
//!   x (NCHW) --to blocked, batch norm + ReLU applied on the way--> x (blocked)
//!            --blocked Winograd (transforms and 36 products)------> y (blocked)
//!            --to NCHW, epilogue (accumulate, bias, residual, ReLU)--> y (NCHW)
//! ```
//!
//! The two copies read and write the batch once each; the blocked route needs the whole
//! batch at once (its chunks of tiles run across images, so that the transformed
//! weights, 36 values per channel pair, are read once per chunk rather than per image).
//! `dX` of a 3x3, stride-1 layer is the same convolution of `dY` by the weights rotated
//! by 180 degrees with their channels swapped, padded by `2 - pad`.

use rayon::prelude::*;

use super::WinogradWeights;
use crate::blocked::BlockedTensor;
use crate::epilogue::{self, Epilogue, Residual};
use crate::error::{Result, TensorError};
use crate::kernels::{KernelSet, Kernels};
use crate::layout::{Normalise, OutPtr};
use crate::tensor::Tensor;
use crate::workspace::Workspace;

/// Pixels copied per step of a layout conversion: one channel's run of them is read
/// (or written) contiguously, and a block's `L` runs stay in the L1 cache.
const RUN: usize = 64;

/// The weights of `dX`'s transposed convolution for a 3x3 layer: `[C, O, 3, 3]`,
/// `wt[c][o][ky][kx] = w[o][c][2 - ky][2 - kx]`.
pub(super) fn transposed_weights(w: &[f32], [o, c]: [usize; 2]) -> Result<Tensor> {
    let mut t = vec![0.0f32; o * c * 9];
    for oc in 0..o {
        for ic in 0..c {
            let src = &w[(oc * c + ic) * 9..][..9];
            let dst = &mut t[(ic * o + oc) * 9..][..9];
            for (i, d) in dst.iter_mut().enumerate() {
                *d = src[8 - i];
            }
        }
    }
    Tensor::from_vec(&[c, o, 3, 3], t)
}

impl Kernels {
    /// `y = epilogue(conv(x, w))` for an NCHW batch `x` of `[n, c, h, w]` into the NCHW
    /// `y` of `[n, o, oh, ow]` by Winograd F(4x4, 3x3) in the blocked layout, padding
    /// `pad`; `normalise` applies `relu(scale[c] x + shift[c])` to the input as it is
    /// copied. `steps` passed `epilogue::check` against the NCHW output, without a
    /// Statistics step.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn winograd_nchw(
        &self,
        x: &[f32],
        [n, c, h, wd]: [usize; 4],
        w: &WinogradWeights,
        pad: usize,
        steps: &[Epilogue],
        normalise: Option<[&[f32]; 2]>,
        y: &mut [f32],
        [o, oh, ow]: [usize; 3],
    ) -> Result<()> {
        let op = "conv2d (winograd)";
        let l = self.lanes();
        if w.lanes != l || w.shape[..2] != [o, c] {
            return Err(TensorError::InvalidArgument {
                op,
                reason: format!(
                    "Winograd weights of {:?} for {}-lane vectors, but the layer is {o} x {c} \
                     on {l} lanes",
                    w.shape, w.lanes
                ),
            });
        }
        if x.len() != n * c * h * wd || y.len() != n * o * oh * ow {
            return Err(TensorError::InvalidArgument {
                op,
                reason: "a tensor's data does not match its shape".into(),
            });
        }
        if n * o * oh * ow == 0 {
            return Ok(());
        }
        let ws = Workspace::current();
        let (cb, ob) = (c.div_ceil(l), o.div_ceil(l));
        let (plane, oplane) = (h * wd, oh * ow);
        let xb_len = n * cb * plane * l;
        let yb_len = n * ob * oplane * l;
        let mut xb = BlockedTensor {
            data: ws.take(xb_len).unwrap_or_else(|| vec![0.0; xb_len]),
            shape: [n, c, h, wd],
            lanes: l,
        };
        let norm = normalise.map(|a| Normalise::new(self.set(), a));
        to_blocked(self.set(), x, [n, c, plane], norm.as_ref(), &mut xb.data);
        let mut yb = BlockedTensor {
            data: ws.take(yb_len).unwrap_or_else(|| vec![0.0; yb_len]),
            shape: [n, o, oh, ow],
            lanes: l,
        };
        if c * plane == 0 {
            // No input: the products are zeros.
            yb.data.fill(0.0);
        } else {
            // Every element of yb is written by the output transform.
            self.blocked_winograd(&xb, w, pad, None, None, false, &mut yb);
        }
        ws.give(xb.data);
        from_blocked(self.set(), &yb.data, [n, o, oplane], steps, y);
        ws.give(yb.data);
        Ok(())
    }
}

/// Copies the NCHW batch `x` (`[n, c, plane]`) into the blocked `out` (`[n][CB][plane][L]`,
/// the lanes past `c` zero), through `norm` if given: `L x L` blocks by the tier's
/// transpose, parallel over (image, block).
fn to_blocked(
    set: &KernelSet,
    x: &[f32],
    [_n, c, plane]: [usize; 3],
    norm: Option<&Normalise>,
    out: &mut [f32],
) {
    let l = set.lanes;
    let cb = c.div_ceil(l);
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

/// Copies the blocked `yb` (`[n][OB][plane][L]`) into the NCHW `y` (`[n, o, plane]`),
/// each channel's row finished by `steps` (accumulate, bias, residual, ReLU): `L x L`
/// blocks by the tier's transpose, parallel over (image, block).
fn from_blocked(
    set: &KernelSet,
    yb: &[f32],
    [n, o, plane]: [usize; 3],
    steps: &[Epilogue],
    y: &mut [f32],
) {
    let l = set.lanes;
    let ob = o.div_ceil(l);
    let yp = OutPtr(y.as_mut_ptr());
    (0..n * ob).into_par_iter().for_each(|bi| {
        let (b, i) = (bi / ob, bi % ob);
        let lanes = l.min(o - i * l);
        let src = &yb[bi * plane * l..][..plane * l];
        // This image's residual as the `O x plane` matrix it is.
        let mut local = [Epilogue::Relu; epilogue::MAX_STEPS];
        for (s, e) in local.iter_mut().zip(steps) {
            *s = match *e {
                Epilogue::Residual(Residual::Nchw(r)) => {
                    Epilogue::residual_matrix(&r.data()[b * o * plane..(b + 1) * o * plane], plane)
                }
                other => other,
            };
        }
        let local = &local[..steps.len()];
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
                epilogue::finish_row(local, ch, p0, &rows[lane * RUN..][..len], dst);
            }
        }
    });
}
