//! The CIFAR ResNets' option-A shortcut (the paper's parameter-free projection): the
//! block's input subsampled by the stride, with zero channels on both sides, and its
//! backward. Inference and the training tape both call these.

use rayon::prelude::*;

use crate::error::{Result, TensorError};
use crate::kernels::Kernels;
use crate::tensor::Tensor;

fn check_stride(op: &'static str, stride: usize) -> Result<()> {
    if stride == 0 {
        return Err(TensorError::InvalidArgument {
            op,
            reason: "stride must be positive".into(),
        });
    }
    Ok(())
}

impl Kernels {
    /// The option-A shortcut's forward (`x[:, :, ::stride, ::stride]` with `pad` zero
    /// channels on each side): subsample, then zero channels on both sides.
    pub fn pad_channels(&self, x: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
        let [n, c, h, w] = x.dims4("pad_channels")?;
        check_stride("pad_channels", stride)?;
        let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
        let oc = c + 2 * pad;
        let mut y = Tensor::for_overwrite(&[n, oc, oh, ow])?;
        let xd = x.data();
        // Image by image over rayon's pool (a batch of 128 is 8 MB each way), every element
        // written once: the padding channels zeroed here rather than the whole output
        // zeroed first, in a separate pass on one thread.
        let image = |(b, yb): (usize, &mut [f32])| {
            let (front, rest) = yb.split_at_mut(pad * oh * ow);
            let (inner, back) = rest.split_at_mut(c * oh * ow);
            front.fill(0.0);
            back.fill(0.0);
            for ch in 0..c {
                let src = &xd[(b * c + ch) * h * w..][..h * w];
                let dst = &mut inner[ch * oh * ow..][..oh * ow];
                for (oy, row) in dst.chunks_exact_mut(ow.max(1)).enumerate() {
                    let src_row = &src[oy * stride * w..];
                    for (ox, d) in row.iter_mut().enumerate() {
                        *d = src_row[ox * stride];
                    }
                }
            }
        };
        if oc * oh * ow > 0 {
            y.data_mut()
                .par_chunks_mut(oc * oh * ow)
                .enumerate()
                .for_each(image);
        }
        Ok(y)
    }

    /// The option-A shortcut's backward: the inner channels' gradients go back to the
    /// subsampled positions; the rest of the input (of `x_shape`) gets 0.
    pub fn pad_channels_backward(
        &self,
        dy: &Tensor,
        x_shape: [usize; 4],
        stride: usize,
        pad: usize,
    ) -> Result<Tensor> {
        let [n, c, h, w] = x_shape;
        check_stride("pad_channels_backward", stride)?;
        let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
        let oc = c + 2 * pad;
        if dy.shape() != [n, oc, oh, ow] {
            return Err(TensorError::ShapeMismatch {
                op: "pad_channels_backward",
                arg: "dy",
                expected: vec![n, oc, oh, ow],
                got: dy.shape().to_vec(),
            });
        }
        let mut dx = Tensor::for_overwrite(&x_shape)?;
        let gd = dy.data();
        // Each plane zeroed just before its scatter, while it is in L1: one pass over `dx`
        // instead of a zeroing pass first.
        let image = |(b, xb): (usize, &mut [f32])| {
            for ch in 0..c {
                let src = &gd[(b * oc + ch + pad) * oh * ow..][..oh * ow];
                let dst = &mut xb[ch * h * w..][..h * w];
                dst.fill(0.0);
                for (oy, row) in src.chunks_exact(ow.max(1)).enumerate() {
                    let dst_row = &mut dst[oy * stride * w..];
                    for (ox, &g) in row.iter().enumerate() {
                        dst_row[ox * stride] = g;
                    }
                }
            }
        };
        if c * h * w > 0 {
            dx.data_mut()
                .par_chunks_mut(c * h * w)
                .enumerate()
                .for_each(image);
        }
        Ok(dx)
    }
}
