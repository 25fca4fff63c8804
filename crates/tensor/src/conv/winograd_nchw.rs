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
use crate::gemm::driver::Threads;
use crate::gemm::{MatMut, MatRef};
use crate::kernels::winograd::{WinogradGrad, WinogradIn, POSITIONS, TILE};
use crate::kernels::Kernels;
use crate::layout::{copy_from_blocked, copy_to_blocked, Normalise, OutPtr};
use crate::tensor::Tensor;
use crate::workspace::Workspace;

/// The floats of transformed input and `dY` one chunk of the weight gradient's tiles
/// holds (4 MiB). Measured (`dW` alone, batch 128, 2 threads, Zen 4, three runs each):
/// ResNet-20's 64-channel 8 x 8 layer 1.48-1.56 ms with 1 MiB, 1.30-1.40 with 2,
/// 1.25-1.26 with 4, 1.36-1.56 with 8; its 32-channel 16 x 16 layer 2.64-2.82,
/// 2.3-2.5 (4 MiB) and 2.7-3.1.
const GRAD_CHUNK_FLOATS: usize = 1 << 20;

/// The weights of `dX`'s transposed convolution for a 3x3 layer: `[C, O, 3, 3]`,
/// `wt[c][o][ky][kx] = w[o][c][2 - ky][2 - kx]`.
pub(super) fn transposed_weights(w: &[f32], [o, c]: [usize; 2]) -> Result<Tensor> {
    // From the workspace (training makes it every step); every element is written.
    let mut wt = Tensor::for_overwrite(&[c, o, 3, 3])?;
    let t = wt.data_mut();
    for oc in 0..o {
        for ic in 0..c {
            let src = &w[(oc * c + ic) * 9..][..9];
            let dst = &mut t[(ic * o + oc) * 9..][..9];
            for (i, d) in dst.iter_mut().enumerate() {
                *d = src[8 - i];
            }
        }
    }
    Ok(wt)
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
        // The blocked route's unsafe tiles trust the weights' layout: check it.
        let (cb, ob) = (c.div_ceil(l), o.div_ceil(l));
        let f = self.set().blocked_f;
        let positions = (w.tile + 2) * (w.tile + 2);
        let packed_len = ob.div_ceil(f) * cb * w.icb * f * l;
        if w.lanes != l
            || w.shape[..2] != [o, c]
            || w.f != f
            || w.per_pos != packed_len
            || w.data.len() != positions * packed_len
        {
            return Err(TensorError::InvalidArgument {
                op,
                reason: format!(
                    "Winograd weights of {:?} packed for {}-lane vectors, but the layer is \
                     {o} x {c} on this tier's {l} lanes (pack them with the same Kernels)",
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
        let (plane, oplane) = (h * wd, oh * ow);
        let xb_len = n * cb * plane * l;
        let yb_len = n * ob * oplane * l;
        let mut xb = BlockedTensor {
            data: ws.take(xb_len).unwrap_or_else(|| vec![0.0; xb_len]),
            shape: [n, c, h, wd],
            lanes: l,
        };
        let norm = normalise.map(|a| Normalise::new(self.set(), a));
        copy_to_blocked(self.set(), x, [n, c, plane], norm.as_ref(), &mut xb.data);
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
            self.blocked_winograd(
                &xb,
                super::winograd::WinogradSource::Kept(w),
                pad,
                None,
                super::nchwc::BlockedAdd::Nothing,
                false,
                &mut yb,
            );
        }
        ws.give(xb.data);
        // Each channel's rows finished by the steps, the residual as the image's
        // `O x plane` matrix.
        let image = o * oplane;
        copy_from_blocked(
            self.set(),
            &yb.data,
            [n, o, oplane],
            y,
            |b, ch, p0, src, dst| {
                let mut local = [Epilogue::Relu; epilogue::MAX_STEPS];
                for (s, e) in local.iter_mut().zip(steps) {
                    *s = match *e {
                        Epilogue::Residual(Residual::Nchw(r)) => {
                            Epilogue::residual_matrix(&r.data()[b * image..(b + 1) * image], oplane)
                        }
                        other => other,
                    };
                }
                epilogue::finish_row(&local[..steps.len()], ch, p0, src, dst);
            },
        );
        ws.give(yb.data);
        Ok(())
    }

    /// `dw += dW` of a 3x3, stride-1 layer (`[o, c, 3, 3]`, padding `pad`) by Winograd
    /// F(4x4, 3x3) (`WeightGrad::Winograd`; the algebra in `kernels::winograd`): the
    /// input (normalised on the way by `normalise`, as the forward read it) and `dY`
    /// copied into the blocked layout, then chunk by chunk of 4 x 4 output tiles their
    /// transforms `V = B^T d B` and `U = A dY A^T` (`[tile][36][blocks][L]`, in parallel
    /// over the tiles) and the 36 products `M[k] += U[k]^T V[k]` (output channels x
    /// input channels, the chunk's tiles the reduction; one GEMM a position, in
    /// parallel), and once at the end `dW = G^T M G` for every channel pair.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn winograd_weight_grad(
        &self,
        x: &[f32],
        [n, c, h, wd]: [usize; 4],
        dy: &[f32],
        [o, oh, ow]: [usize; 3],
        pad: usize,
        normalise: Option<[&[f32]; 2]>,
        dw: &mut [f32],
    ) -> Result<()> {
        assert_eq!(x.len(), n * c * h * wd, "Winograd dW: input length");
        assert_eq!(dy.len(), n * o * oh * ow, "Winograd dW: dY length");
        assert_eq!(dw.len(), o * c * 9, "Winograd dW: gradient length");
        if n * c * o * oh * ow * h * wd == 0 {
            return Ok(());
        }
        let set = self.set();
        let l = set.lanes;
        let ws = Workspace::current();
        let (cb, ob) = (c.div_ceil(l), o.div_ceil(l));
        let (plane, oplane) = (h * wd, oh * ow);
        // Every element of both is written by the copies (zeros past the channels).
        let mut xb = ws.lend(n * cb * plane * l);
        let norm = normalise.map(|a| Normalise::new(set, a));
        copy_to_blocked(set, x, [n, c, plane], norm.as_ref(), &mut xb);
        let mut yb = ws.lend(n * ob * oplane * l);
        copy_to_blocked(set, dy, [n, o, oplane], None, &mut yb);
        let (th, tw) = (oh.div_ceil(TILE), ow.div_ceil(TILE));
        let per_image = th * tw;
        let total = n * per_image;
        let per_tile = POSITIONS * (cb + ob) * l;
        // Chunks of equal size (a last, short chunk ran its GEMMs on a short reduction).
        let chunk = (GRAD_CHUNK_FLOATS / per_tile).max(1).min(total);
        let chunk = total.div_ceil(total.div_ceil(chunk));
        let v_len = chunk * POSITIONS * cb * l;
        // The products summed over every tile: `[36][O][C]`.
        let mut m = ws.lend_zeroed(POSITIONS * o * c);
        // Every element the products read is written by the transforms first.
        let mut buf = ws.lend(chunk * per_tile);
        let (v, u) = buf.split_at_mut(v_len);
        for t0 in (0..total).step_by(chunk) {
            let tc = chunk.min(total - t0);
            let (vp, up) = (OutPtr(v.as_mut_ptr()), OutPtr(u.as_mut_ptr()));
            let (xs, ys) = (&xb[..], &yb[..]);
            (0..tc).into_par_iter().for_each(|q| {
                let (b, r) = ((t0 + q) / per_image, (t0 + q) % per_image);
                let (oy, ox) = ((r / tw) * TILE, (r % tw) * TILE);
                for i in 0..cb {
                    let t = WinogradIn {
                        x: xs[(b * cb + i) * plane * l..].as_ptr(),
                        h,
                        w: wd,
                        iy0: oy as isize - pad as isize,
                        ix0: ox as isize - pad as isize,
                        // SAFETY: inside V: tile q < tc <= chunk, block i < CB.
                        out: unsafe { vp.get().add((q * POSITIONS * cb + i) * l) },
                        out_pos: cb * l,
                    };
                    // SAFETY: the window's pixels inside the image are read from image
                    // b's block i; tile q's 36 positions lie `cb l` apart inside V, and
                    // no other tile writes them.
                    unsafe { (set.winograd_input)(&t) };
                }
                for i in 0..ob {
                    let t = WinogradIn {
                        x: ys[(b * ob + i) * oplane * l..].as_ptr(),
                        h: oh,
                        w: ow,
                        iy0: oy as isize,
                        ix0: ox as isize,
                        // SAFETY: inside U: tile q < tc <= chunk, block i < OB.
                        out: unsafe { up.get().add((q * POSITIONS * ob + i) * l) },
                        out_pos: ob * l,
                    };
                    // SAFETY: as above, for dY's block i of image b and U.
                    unsafe { (set.winograd_grad_dy)(&t) };
                }
            });
            let (v, u) = (&v[..], &u[..]);
            m.par_chunks_mut(o * c)
                .enumerate()
                .try_for_each(|(k, mk)| -> Result<()> {
                    // U[k]^T: `O x tc`, the tiles `36 OB L` apart; V[k]: `tc x C`.
                    let a = MatRef::new(&u[k * ob * l..], o, tc, 1, POSITIONS * ob * l)?;
                    let bm = MatRef::new(&v[k * cb * l..], tc, c, POSITIONS * cb * l, 1)?;
                    let mut cm = MatMut::row_major(mk, o, c)?;
                    self.gemm_on(
                        a,
                        bm,
                        &mut cm,
                        &[Epilogue::Accumulate],
                        Threads::Single,
                        &ws,
                    )
                })?;
        }
        drop(buf);
        // dW = G^T M G, each output channel's kernels by up to `L` input channels.
        let m = &m[..];
        dw.par_chunks_mut(c * 9).enumerate().for_each(|(oc, dwo)| {
            for c0 in (0..c).step_by(l) {
                let g = WinogradGrad {
                    m: m[oc * c + c0..].as_ptr(),
                    m_pos: o * c,
                    n: l.min(c - c0),
                    out: dwo[c0 * 9..].as_mut_ptr(),
                };
                // SAFETY: position k's run of `n` channels is `m[k o c + oc c + c0..]`,
                // inside M (k < 36); `dwo` holds the `9 n` taps from channel c0 on.
                unsafe { (set.winograd_grad_dw)(&g) };
            }
        });
        Ok(())
    }
}
