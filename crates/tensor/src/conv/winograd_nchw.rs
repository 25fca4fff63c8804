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

use super::WinogradWeights;
use crate::blocked::BlockedTensor;
use crate::epilogue::{self, Epilogue, Residual};
use crate::error::{Result, TensorError};
use crate::kernels::Kernels;
use crate::layout::{copy_from_blocked, copy_to_blocked, Normalise};
use crate::tensor::Tensor;
use crate::workspace::Workspace;

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
                w,
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
}
