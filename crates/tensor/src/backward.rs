//! Backward kernels: the gradients of the forward operations, for `autograd`.
//!
//! Each takes the upstream gradient `dy` (shaped as the forward's output) and what the
//! forward saved, and returns the gradients of the forward's inputs. The memory-bound
//! ones (ReLU, batch norm) run the SIMD bodies of every tier; convolution's weight
//! gradient runs the row-dot and outer-product kernels of `crate::wgrad`, its input
//! gradient the direct kernel (a transposed convolution) or a GEMM and col2im, chosen
//! per layer; linear is GEMMs; max pool, average pool, im2col and col2im are plain loops
//! (they move data and do no arithmetic worth vectorising). Naive versions are in
//! [`crate::reference`].

use rayon::prelude::*;

use crate::conv::{ConvPlan, DirectForm, InputGrad, Mode};
use crate::direct::{
    direct_conv_image, strided_transposed_image, DirectEpilogue, DirectWeights, StridedTransposed,
};
use crate::error::{Result, TensorError};
use crate::gemm::driver::{self, Threads};
use crate::gemm::pack::{BSource, PackedA};
use crate::gemm::{Epilogue, MatMut, MatRef};
use crate::kernels::{Kernels, Pool2d};
use crate::tensor::Tensor;
use crate::wgrad::{accumulate_weight_grad, ConvShape, WeightGradScratch};

/// Gradients of batch norm's input and affine parameters.
#[derive(Debug, Clone)]
pub struct BatchNormGrads {
    pub dx: Tensor,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
}

/// Gradients of a convolution's input and weights; each is `None` when not asked for.
#[derive(Debug, Clone)]
pub struct ConvGrads {
    pub dx: Option<Tensor>,
    pub dw: Option<Tensor>,
}

/// Gradients of a linear layer `y = x W^T + b`.
#[derive(Debug, Clone)]
pub struct LinearGrads {
    pub dx: Tensor,
    pub dw: Tensor,
    pub db: Vec<f32>,
}

fn expect_shape(op: &'static str, expected: &[usize], got: &Tensor) -> Result<()> {
    if got.shape() != expected {
        return Err(TensorError::ShapeMismatch {
            op,
            expected: expected.to_vec(),
            got: got.shape().to_vec(),
        });
    }
    Ok(())
}

/// The output positions `o` in `0..out` whose input coordinate `o * stride + offset -
/// pad` falls inside `0..size`, as a range (they are contiguous).
fn valid_outputs(
    out: usize,
    stride: usize,
    offset: usize,
    pad: usize,
    size: usize,
) -> (usize, usize) {
    // o * stride + offset >= pad  <=>  o >= ceil((pad - offset) / stride)
    let lo = if offset >= pad {
        0
    } else {
        (pad - offset).div_ceil(stride)
    };
    // o * stride + offset - pad < size  <=>  o * stride < size + pad - offset
    let limit = size + pad;
    let hi = if limit <= offset {
        0
    } else {
        (limit - offset).div_ceil(stride)
    };
    (lo.min(out), hi.min(out).max(lo.min(out)))
}

/// The convolution geometry of one image (col2im here; im2col is `Im2col::pack_panel`).
type Geometry = ConvShape;

impl Geometry {
    /// Visits every (column-matrix row, output row) pair with the input row it reads
    /// and the valid output columns: `f(col_offset, input_offset, ox0, ox1, kx)`, where
    /// column `ox` of the run reads input column `ox * stride + kx - pad`.
    fn for_each_run(&self, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
        let p = self.oh * self.ow;
        for ci in 0..self.c {
            for ky in 0..self.kh {
                let (oy0, oy1) = valid_outputs(self.oh, self.stride, ky, self.pad, self.h);
                for kx in 0..self.kw {
                    let row = (ci * self.kh + ky) * self.kw + kx;
                    let (ox0, ox1) = valid_outputs(self.ow, self.stride, kx, self.pad, self.w);
                    if ox0 == ox1 {
                        continue; // this tap reads only padding
                    }
                    for oy in oy0..oy1 {
                        let iy = oy * self.stride + ky - self.pad;
                        f(
                            row * p + oy * self.ow,
                            (ci * self.h + iy) * self.w,
                            ox0,
                            ox1,
                            kx,
                        );
                    }
                }
            }
        }
    }

    /// Adds the column matrix `cols` back into the image gradient `dx` (the transpose
    /// of im2col, `Im2col::pack_panel`: every input pixel collects the columns that read it).
    fn col2im(&self, cols: &[f32], dx: &mut [f32]) {
        let (s, pad) = (self.stride, self.pad);
        self.for_each_run(|src, dst, ox0, ox1, kx| {
            let run = &cols[src + ox0..src + ox1];
            let first = dst + ox0 * s + kx - pad;
            if s == 1 {
                // Contiguous on both sides: the compiler vectorises this.
                let out = &mut dx[first..first + run.len()];
                out.iter_mut().zip(run).for_each(|(d, v)| *d += v);
            } else {
                let out = dx[first..].iter_mut().step_by(s);
                out.zip(run).for_each(|(d, v)| *d += v);
            }
        });
    }
}

/// Where a convolution's input gradient goes: a new tensor, or added into one.
enum DxInto {
    New,
    Add(Tensor),
}

/// An output gradient handed to a backward op: read only, or owned and overwritten by
/// the input gradient.
enum GradIn<'a> {
    Borrowed(&'a Tensor),
    Owned(Tensor),
    /// Owned, first masked in place by a ReLU whose output is the tensor given, and
    /// handed back after; `dx` is written to a new tensor.
    MaskedBy(Tensor, &'a Tensor),
}

impl Kernels {
    /// ReLU's backward: `dx = dy` where `y > 0`, else 0, with `y` the ReLU's output
    /// (also right for a fused BN + ReLU or add + ReLU, whose output is that ReLU's).
    pub fn relu_backward(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
        dy.expect_same_shape("relu_backward", y)?;
        let mut dx = Tensor::for_overwrite(dy.shape())?;
        let kernel = self.set().relu_backward;
        let chunk = 1 << 14;
        let run = |(d, (g, o)): (&mut [f32], (&[f32], &[f32]))| {
            // SAFETY: three equally long chunks of equally long buffers.
            unsafe { kernel(g.as_ptr(), o.as_ptr(), d.as_mut_ptr(), d.len()) }
        };
        if dy.len() < 1 << 16 {
            dx.data_mut()
                .chunks_mut(chunk)
                .zip(dy.data().chunks(chunk).zip(y.data().chunks(chunk)))
                .for_each(run);
        } else {
            dx.data_mut()
                .par_chunks_mut(chunk)
                .zip(dy.data().par_chunks(chunk).zip(y.data().par_chunks(chunk)))
                .for_each(run);
        }
        Ok(dx)
    }

    /// Training batch norm's backward over `[N, C, ...]`, given the input `x`, the
    /// batch `mean` and `inv_std = 1 / sqrt(var + eps)` the forward normalised with, and
    /// `gamma`. With `x_hat = (x - mean) inv_std` and `M = N H W` elements per channel:
    ///
    /// - `dbeta = sum(dy)`, `dgamma = sum(dy x_hat)`;
    /// - `dx = gamma inv_std (dy - dbeta / M - x_hat dgamma / M)`.
    ///
    /// Per channel that is affine in `dy` and `x`, so the second pass is one fused
    /// kernel: `dx = a dy + b x + c` (see `docs/autograd.md` for the derivation).
    pub fn batch_norm_backward(
        &self,
        x: &Tensor,
        dy: &Tensor,
        mean: &[f32],
        inv_std: &[f32],
        gamma: &[f32],
    ) -> Result<BatchNormGrads> {
        self.batch_norm_backward_impl(
            "batch_norm_backward",
            x,
            GradIn::Borrowed(dy),
            mean,
            inv_std,
            gamma,
            true,
            None,
        )
        .map(|(g, _)| g)
    }

    /// [`Kernels::batch_norm_backward`] writing `dx` over `dy`'s buffer (which it
    /// consumes) instead of a new tensor: the training step's usual case, where the
    /// output gradient is not needed afterwards.
    pub fn batch_norm_backward_reusing(
        &self,
        x: &Tensor,
        dy: Tensor,
        mean: &[f32],
        inv_std: &[f32],
        gamma: &[f32],
    ) -> Result<BatchNormGrads> {
        self.batch_norm_backward_impl(
            "batch_norm_backward_reusing",
            x,
            GradIn::Owned(dy),
            mean,
            inv_std,
            gamma,
            true,
            None,
        )
        .map(|(g, _)| g)
    }

    /// The backward of `relu(batch_norm(x) + residual)` (training statistics) from the
    /// output gradient `dy`, which it consumes, and the output `out`: returns batch
    /// norm's gradients and `dy` masked by the ReLU, which is also the residual's
    /// gradient. The same as [`Kernels::relu_backward`] then
    /// [`Kernels::batch_norm_backward`], to the last bit, but each plane is masked just
    /// before its sums are taken, while it is in cache: one pass over `dy` fewer.
    pub fn batch_norm_add_relu_backward(
        &self,
        x: &Tensor,
        dy: Tensor,
        out: &Tensor,
        mean: &[f32],
        inv_std: &[f32],
        gamma: &[f32],
    ) -> Result<(BatchNormGrads, Tensor)> {
        let op = "batch_norm_add_relu_backward";
        dy.expect_same_shape(op, out)?;
        let (g, masked) = self.batch_norm_backward_impl(
            op,
            x,
            GradIn::MaskedBy(dy, out),
            mean,
            inv_std,
            gamma,
            true,
            None,
        )?;
        Ok((g, masked.expect("a masked gradient is handed back")))
    }

    /// Batch norm's backward with fixed statistics (running mean and variance: eval
    /// mode, a frozen backbone): the statistics are constants, so `dx = gamma inv_std
    /// dy`; `dbeta` and `dgamma` are as in [`Kernels::batch_norm_backward`].
    pub fn batch_norm_fixed_backward(
        &self,
        x: &Tensor,
        dy: &Tensor,
        mean: &[f32],
        inv_std: &[f32],
        gamma: &[f32],
    ) -> Result<BatchNormGrads> {
        self.batch_norm_backward_impl(
            "batch_norm_fixed_backward",
            x,
            GradIn::Borrowed(dy),
            mean,
            inv_std,
            gamma,
            false,
            None,
        )
        .map(|(g, _)| g)
    }

    /// The backward of batch norm fused with the ReLU after it (`Tape::batch_norm` with
    /// `relu`), writing `dx` over `dy`'s buffer, which it consumes: the ReLU's mask is
    /// recomputed from `x` and the forward's per-channel `affine = [scale, shift]`
    /// (`y = max(scale x + shift, 0)`, computed by [`Kernels::scale_shift_relu`]) inside
    /// the two batch-norm passes, so the ReLU costs no pass of its own. The same as
    /// [`Kernels::relu_backward`] on the forward's output followed by
    /// [`Kernels::batch_norm_backward`] (or, with `batch_stats = false`,
    /// [`Kernels::batch_norm_fixed_backward`]), to the last bit.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_relu_backward_reusing(
        &self,
        x: &Tensor,
        dy: Tensor,
        mean: &[f32],
        inv_std: &[f32],
        gamma: &[f32],
        affine: [&[f32]; 2],
        batch_stats: bool,
    ) -> Result<BatchNormGrads> {
        self.batch_norm_backward_impl(
            "batch_norm_relu_backward_reusing",
            x,
            GradIn::Owned(dy),
            mean,
            inv_std,
            gamma,
            batch_stats,
            Some(affine),
        )
        .map(|(g, _)| g)
    }

    /// [`Kernels::batch_norm_relu_backward_reusing`] into a new tensor, leaving `dy`.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_relu_backward(
        &self,
        x: &Tensor,
        dy: &Tensor,
        mean: &[f32],
        inv_std: &[f32],
        gamma: &[f32],
        affine: [&[f32]; 2],
        batch_stats: bool,
    ) -> Result<BatchNormGrads> {
        self.batch_norm_backward_impl(
            "batch_norm_relu_backward",
            x,
            GradIn::Borrowed(dy),
            mean,
            inv_std,
            gamma,
            batch_stats,
            Some(affine),
        )
        .map(|(g, _)| g)
    }

    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward_impl(
        &self,
        op: &'static str,
        x: &Tensor,
        dy: GradIn,
        mean: &[f32],
        inv_std: &[f32],
        gamma: &[f32],
        batch_stats: bool,
        relu: Option<[&[f32]; 2]>,
    ) -> Result<(BatchNormGrads, Option<Tensor>)> {
        // `masked`: the owned dy and the ReLU output that masks it.
        let (mut dx, borrowed, mut masked) = match dy {
            GradIn::Borrowed(dy) => {
                x.expect_same_shape(op, dy)?;
                (Tensor::for_overwrite(x.shape())?, Some(dy), None)
            }
            GradIn::Owned(dy) => {
                x.expect_same_shape(op, &dy)?;
                (dy, None, None)
            }
            GradIn::MaskedBy(dy, out) => {
                x.expect_same_shape(op, &dy)?;
                (Tensor::for_overwrite(x.shape())?, None, Some((dy, out)))
            }
        };
        let (n, c, plane) = match x.shape() {
            [n, c, rest @ ..] => (*n, *c, rest.iter().product::<usize>()),
            _ => {
                return Err(TensorError::Rank {
                    op,
                    expected: 2,
                    got: x.shape().to_vec(),
                })
            }
        };
        let affine = relu.map(|[scale, shift]| [("scale", scale), ("shift", shift)]);
        let per_channel = [("mean", mean), ("inv_std", inv_std), ("gamma", gamma)];
        for (name, p) in per_channel.into_iter().chain(affine.into_iter().flatten()) {
            if p.len() != c {
                return Err(TensorError::InvalidArgument {
                    op,
                    reason: format!("{name} has {} elements for {c} channels", p.len()),
                });
            }
        }
        let count = n * plane;
        let (sums, apply) = (self.set().bn_backward_sums, self.set().bn_backward_apply);
        let relu_backward = self.set().relu_backward;
        let xd = x.data();
        let mask = |ch: usize| relu.map(|[scale, shift]| [scale[ch], shift[ch]]);
        if count == 0 {
            let g = BatchNormGrads {
                dx,
                dgamma: vec![0.0; c],
                dbeta: vec![0.0; c],
            };
            return Ok((g, masked.map(|(dy, _)| dy)));
        }
        // Plane by plane in memory order (every task streams whole images, which the
        // prefetcher follows; a channel's planes are `C` planes apart), then each
        // channel's planes summed in f64 in image order: the same sums for any number of
        // threads. (Measured against channel-by-channel tasks, in-process on ResNet-20's
        // shapes at batch 128, 2 threads: 2%, 6% and 11% faster at 32, 16 and 8 pixels.)
        let plane_sums = |i: usize, g: &[f32]| {
            let ch = i % c;
            // SAFETY: `g` is plane `i` of dy, in bounds like plane `i` of x.
            unsafe {
                sums(
                    g.as_ptr(),
                    xd[i * plane..].as_ptr(),
                    plane,
                    mean[ch],
                    mask(ch),
                )
            }
        };
        let min_len = (16384 / plane.max(1)).max(1);
        let per_plane: Vec<[f32; 2]> = match (&mut masked, borrowed) {
            (Some((held, out)), _) => {
                // Each plane masked just before its sums.
                let od = out.data();
                let masked_sums = |(i, d): (usize, &mut [f32])| {
                    let o = &od[i * plane..(i + 1) * plane];
                    // SAFETY: `d` and `o` are plane `i` of equally shaped tensors; `d`
                    // is read and written element by element.
                    unsafe { relu_backward(d.as_ptr(), o.as_ptr(), d.as_mut_ptr(), plane) };
                    plane_sums(i, d)
                };
                if x.len() < 1 << 16 {
                    held.data_mut()
                        .chunks_mut(plane)
                        .enumerate()
                        .map(masked_sums)
                        .collect()
                } else {
                    held.data_mut()
                        .par_chunks_mut(plane)
                        .enumerate()
                        .with_min_len(min_len)
                        .map(masked_sums)
                        .collect()
                }
            }
            (None, dy) => {
                let gd = dy.map_or(dx.data(), |dy| dy.data());
                let sums_of = |i: usize| plane_sums(i, &gd[i * plane..(i + 1) * plane]);
                if x.len() < 1 << 16 {
                    (0..n * c).map(sums_of).collect()
                } else {
                    (0..n * c)
                        .into_par_iter()
                        .with_min_len(min_len)
                        .map(sums_of)
                        .collect()
                }
            }
        };
        let mut totals = vec![(0.0f64, 0.0f64); c];
        for (i, [s_dy, s_dev]) in per_plane.into_iter().enumerate() {
            let t = &mut totals[i % c];
            t.0 += s_dy as f64;
            t.1 += s_dev as f64;
        }
        let mut dgamma = vec![0.0f32; c];
        let mut dbeta = vec![0.0f32; c];
        let mut coef = vec![[0.0f32; 3]; c];
        for ch in 0..c {
            let (s_dy, s_dev) = totals[ch];
            let istd = inv_std[ch] as f64;
            let m = count as f64;
            let k = gamma[ch] as f64 * istd;
            coef[ch] = if batch_stats {
                // dx = k dy - k s_dy / M - k istd^2 s_dev / M (x - mean)
                let b = -k * istd * istd * s_dev / m;
                let cst = -k * s_dy / m - b * mean[ch] as f64;
                [k as f32, b as f32, cst as f32]
            } else {
                [k as f32, 0.0, 0.0]
            };
            dbeta[ch] = s_dy as f32;
            dgamma[ch] = (s_dev * istd) as f32;
        }
        // dy is read from its own tensor, or from `d` itself when dx is written over it
        // (element by element, each read before its write).
        let gd = borrowed
            .or(masked.as_ref().map(|(dy, _)| dy))
            .map(|dy| dy.data());
        let run = |i: usize, d: &mut [f32]| {
            let ch = i % c;
            let s = i * plane;
            let g = gd.map_or(d.as_ptr(), |gd| gd[s..].as_ptr());
            // SAFETY: plane `i` of dy and x is in bounds, as long as `d`.
            unsafe {
                apply(
                    g,
                    xd[s..].as_ptr(),
                    d.as_mut_ptr(),
                    plane,
                    coef[ch],
                    mask(ch),
                )
            }
        };
        if plane == 0 {
            // Nothing to write.
        } else if x.len() < 1 << 16 {
            dx.data_mut()
                .chunks_mut(plane)
                .enumerate()
                .for_each(|(i, d)| run(i, d));
        } else {
            dx.data_mut()
                .par_chunks_mut(plane)
                .enumerate()
                .with_min_len((16384 / plane).max(1))
                .for_each(|(i, d)| run(i, d));
        }
        Ok((
            BatchNormGrads { dx, dgamma, dbeta },
            masked.map(|(dy, _)| dy),
        ))
    }

    /// Max pooling's backward: each output's gradient goes to the input that won its
    /// window (the first maximum in row-major window order, as PyTorch), found again
    /// from `x` rather than saved.
    pub fn max_pool2d_backward(&self, x: &Tensor, dy: &Tensor, pool: &Pool2d) -> Result<Tensor> {
        let [n, c, h, w] = x.dims4("max_pool2d_backward")?;
        let [oh, ow] = pool.output_size(h, w)?;
        expect_shape("max_pool2d_backward", &[n, c, oh, ow], dy)?;
        let mut dx = Tensor::zeros(x.shape())?;
        if h * w == 0 {
            return Ok(dx);
        }
        let (xd, gd) = (x.data(), dy.data());
        let [kh, kw] = pool.kernel;
        let [sh, sw] = pool.stride;
        let [ph, pw] = pool.padding;
        let run = |i: usize, d: &mut [f32]| {
            let xs = &xd[i * h * w..(i + 1) * h * w];
            let gs = &gd[i * oh * ow..(i + 1) * oh * ow];
            for oy in 0..oh {
                let (y0, y1) = window(oy, sh, ph, kh, h);
                for ox in 0..ow {
                    let (x0, x1) = window(ox, sw, pw, kw, w);
                    let mut best = y0 * w + x0;
                    for iy in y0..y1 {
                        for ix in x0..x1 {
                            if xs[iy * w + ix] > xs[best] {
                                best = iy * w + ix;
                            }
                        }
                    }
                    d[best] += gs[oy * ow + ox];
                }
            }
        };
        if x.len() < 1 << 16 {
            dx.data_mut()
                .chunks_mut(h * w)
                .enumerate()
                .for_each(|(i, d)| run(i, d));
        } else {
            dx.data_mut()
                .par_chunks_mut(h * w)
                .enumerate()
                .for_each(|(i, d)| run(i, d));
        }
        Ok(dx)
    }

    /// Global average pooling's backward: `dx[n, c, :, :] = dy[n, c] / (H W)`.
    pub fn global_avg_pool_backward(&self, dy: &Tensor, x_shape: [usize; 4]) -> Result<Tensor> {
        let [n, c, h, w] = x_shape;
        expect_shape("global_avg_pool_backward", &[n, c], dy)?;
        let mut dx = Tensor::for_overwrite(&x_shape)?;
        let plane = h * w;
        if plane > 0 {
            let inv = 1.0 / plane as f32;
            for (d, g) in dx.data_mut().chunks_mut(plane).zip(dy.data()) {
                d.fill(g * inv);
            }
        }
        Ok(dx)
    }

    /// Convolution's backward (NCHW input `x`, OIHW weights `w`, upstream `dy`):
    ///
    /// - `dW = sum_n dY_n X_n^T`, where row `(c, ky, kx)` of `X_n` is the image seen
    ///   through that tap, with no column matrix (`crate::wgrad`): the outer-product
    ///   kernel when the output channels are two or more whole vectors, the row-dot
    ///   kernel otherwise, both reading the taps from the image itself (1x1, stride 1,
    ///   unpadded) or from its zero-padded phase planes, a few images at a time;
    /// - `dX_n = col2im(W^T dY_n)`, or where the direct kernel is the faster algorithm
    ///   the transposed convolution by it: for stride 1 one convolution of `dY` with
    ///   the flipped weights, for stride `s` one per output phase `(y % s, x % s)`
    ///   (`StridedTransposed` in `direct.rs`).
    ///
    /// A 1x1 stride-1 unpadded convolution needs no columns: `dX_n = W^T dY_n` directly.
    /// Images are split over the threads, each with its own `dW` accumulator, summed at
    /// the end.
    pub fn conv2d_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        plan: &ConvPlan,
        want_dx: bool,
        want_dw: bool,
    ) -> Result<ConvGrads> {
        let dx = want_dx.then_some(DxInto::New);
        self.conv2d_backward_impl("conv2d_backward", x, w, dy, plan, dx, want_dw, None)
    }

    /// [`Kernels::conv2d_backward`] of a convolution whose input was
    /// `relu(scale[c] x + shift[c])` (`affine = [scale, shift]`), given `x`: the backward
    /// of [`Kernels::conv2d_normalised_with_stats`]. `dX` here is the gradient with
    /// respect to that normalised input (it needs no input values); `dW` normalises the
    /// input on the way into its operand (the phase planes, or for 1x1 a buffer of a
    /// few images at a time). The same values as
    /// `conv2d_backward` on `scale_shift_relu(x)`, to the last bit.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_backward_normalised(
        &self,
        x: &Tensor,
        affine: [&[f32]; 2],
        w: &Tensor,
        dy: &Tensor,
        plan: &ConvPlan,
        want_dx: bool,
        want_dw: bool,
    ) -> Result<ConvGrads> {
        let op = "conv2d_backward_normalised";
        let [_, c, _, _] = x.dims4(op)?;
        crate::conv::check_affine(op, affine, c)?;
        let dx = want_dx.then_some(DxInto::New);
        self.conv2d_backward_impl(op, x, w, dy, plan, dx, want_dw, Some(affine))
    }

    /// [`Kernels::conv2d_backward`] adding `dX` into `dx_acc` (the gradient other
    /// consumers of `x` already sent it, shaped as `x`), which comes back as the `dx`
    /// of the result: no separate tensor and no pass to add it (the kernels' epilogues
    /// and col2im accumulate in place). A residual block's input gets its shortcut's
    /// gradient first, then the first convolution's this way.
    pub fn conv2d_backward_accumulating(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        plan: &ConvPlan,
        dx_acc: Tensor,
        want_dw: bool,
    ) -> Result<ConvGrads> {
        let op = "conv2d_backward_accumulating";
        x.expect_same_shape(op, &dx_acc)?;
        self.conv2d_backward_impl(op, x, w, dy, plan, Some(DxInto::Add(dx_acc)), want_dw, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward_impl(
        &self,
        op: &'static str,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        plan: &ConvPlan,
        dx_into: Option<DxInto>,
        want_dw: bool,
        normalise: Option<[&[f32]; 2]>,
    ) -> Result<ConvGrads> {
        let want_dx = dx_into.is_some();
        let accumulate = matches!(dx_into, Some(DxInto::Add(_)));
        let [n, c, h, wd] = x.dims4(op)?;
        let [o, wc, kh, kw] = w.dims4(op)?;
        if [o, wc, kh, kw] != plan.weights_shape() {
            return Err(TensorError::ShapeMismatch {
                op,
                expected: plan.weights_shape().to_vec(),
                got: w.shape().to_vec(),
            });
        }
        self.check_plan(op, plan)?;
        let routes = plan.routes([n, c, h, wd])?;
        let (Some(dx_route), Some(dw_route)) = (routes.input_grad, routes.weight_grad) else {
            return Err(TensorError::InvalidArgument {
                op,
                reason: format!(
                    "the plan is for {:?}: a backward needs one made with Mode::Training",
                    plan.mode()
                ),
            });
        };
        debug_assert_eq!(plan.mode(), Mode::Training);
        let p = plan.conv();
        let [oh, ow] = p.output_size(h, wd, kh, kw)?;
        expect_shape(op, &[n, o, oh, ow], dy)?;
        let g = Geometry {
            c,
            h,
            w: wd,
            kh,
            kw,
            oh,
            ow,
            stride: p.stride,
            pad: p.padding,
        };
        let (k, pix) = (c * kh * kw, oh * ow);
        let (in_image, out_image) = (c * h * wd, o * pix);
        // The plan's dX route: a GEMM straight into dX (1x1), the transposed
        // convolution by the direct kernel (stride 1: dY with the weights rotated by 180
        // degrees and their channels swapped, padded by `kh - 1 - p`; strided: phase by
        // phase), or a GEMM into dcols and col2im.
        let direct = want_dx && dx_route == InputGrad::GemmImage;
        let transposed: Option<DirectForm> = match dx_route {
            InputGrad::DirectTransposed(form) if want_dx => Some(form),
            _ => None,
        };
        let strided = want_dx && dx_route == InputGrad::DirectPhases;
        let empty = n == 0 || k == 0 || pix == 0 || o == 0 || in_image == 0;
        // dX is written in full by a GEMM (1x1) or the direct kernel; col2im and the
        // empty cases add into zeros.
        let mut dx = match dx_into {
            None => None,
            Some(DxInto::Add(acc)) => Some(acc),
            Some(DxInto::New) if !empty && (direct || transposed.is_some() || strided) => {
                Some(Tensor::for_overwrite(x.shape())?)
            }
            Some(DxInto::New) => Some(Tensor::zeros(x.shape())?),
        };
        if empty {
            let dw = if want_dw {
                Some(Tensor::zeros(w.shape())?)
            } else {
                None
            };
            return Ok(ConvGrads { dx, dw });
        }
        let set = self.set();
        let mr = set.gemm_mr;
        let flipped = transposed.map(|form| {
            (
                form,
                DirectWeights::flipped(w.data(), [o, c, kh, kw], set.direct_ob),
            )
        });
        let phased = strided
            .then(|| StridedTransposed::new(w.data(), [o, c, kh, kw], p.stride, set.direct_ob));
        // W^T ([K, O]), packed once for every image's dX GEMM.
        let wt = if want_dx && transposed.is_none() && !strided {
            Some(PackedA::pack(
                self.isa(),
                mr,
                MatRef::row_major(w.data(), o, k)?.t(),
            ))
        } else {
            None
        };
        let (xd, gd) = (x.data(), dy.data());

        // One group of images' partial dW.
        let dw_group = |images: std::ops::Range<usize>, threads: Threads| -> Vec<f32> {
            let mut dw_part = vec![0.0f32; o * k];
            let mut scratch = WeightGradScratch::default();
            accumulate_weight_grad(
                set,
                &g,
                o,
                &xd[images.start * in_image..images.end * in_image],
                &gd[images.start * out_image..images.end * out_image],
                &mut dw_part,
                &mut scratch,
                threads == Threads::Auto,
                normalise,
                dw_route,
            );
            dw_part
        };
        // One image's dX, with scratch buffers the caller keeps between images.
        let dx_image = |b: usize,
                        dx_b: &mut [f32],
                        threads: Threads,
                        padded: &mut Vec<f32>,
                        dcols: &mut Vec<f32>|
         -> Result<()> {
            let dy_b = &gd[b * out_image..(b + 1) * out_image];
            if let Some((form, fw)) = &flipped {
                direct_conv_image(
                    set,
                    *form,
                    dy_b,
                    [oh, ow],
                    fw,
                    1,
                    kh - 1 - p.padding,
                    [h, wd],
                    dx_b,
                    DirectEpilogue {
                        accumulate,
                        ..DirectEpilogue::default()
                    },
                    threads,
                    padded,
                    None,
                );
            }
            if let Some(st) = &phased {
                strided_transposed_image(
                    set,
                    dy_b,
                    [oh, ow],
                    st,
                    p.padding,
                    [h, wd],
                    dx_b,
                    accumulate,
                    threads,
                    padded,
                );
            }
            if let Some(wt) = &wt {
                // dcols [K, P] = W^T [K, O] dY_b [O, P], straight into dX_b when the
                // columns are the image itself.
                let source = BSource::Matrix(MatRef::row_major(dy_b, o, pix)?);
                if direct {
                    let mut c_mat = MatMut::row_major(dx_b, k, pix)?;
                    let epilogue: &[Epilogue] = if accumulate {
                        &[Epilogue::Accumulate]
                    } else {
                        &[]
                    };
                    driver::gemm(set, wt, &source, k, pix, &mut c_mat, epilogue, threads)?;
                } else {
                    // Written in full by the GEMM: a reused buffer needs no clearing.
                    dcols.resize(k * pix, 0.0);
                    let mut c_mat = MatMut::row_major(dcols, k, pix)?;
                    driver::gemm(set, wt, &source, k, pix, &mut c_mat, &[], threads)?;
                    g.col2im(dcols, dx_b);
                }
            }
            Ok(())
        };

        let threads = rayon::current_num_threads();
        let mut partials: Vec<Vec<f32>> = Vec::new();
        if threads > 1 && n >= threads {
            // dW in one group of images per thread (each group's reduction runs over
            // all its images), dX image by image; both handed to rayon together, so a
            // thread that falls behind (the host is shared) is helped by the others
            // rather than waited for.
            let per = n.div_ceil(threads);
            let groups: Vec<std::ops::Range<usize>> =
                (0..n).step_by(per).map(|s| s..(s + per).min(n)).collect();
            let dx_all = |dx: &mut Tensor| -> Result<()> {
                dx.data_mut()
                    .par_chunks_mut(in_image)
                    .enumerate()
                    .try_for_each_init(
                        || (Vec::new(), Vec::new()),
                        |(padded, dcols), (b, dx_b)| {
                            dx_image(b, dx_b, Threads::Single, padded, dcols)
                        },
                    )
            };
            let (parts, dx_done) = rayon::join(
                || {
                    if want_dw {
                        groups
                            .into_par_iter()
                            .map(|r| dw_group(r, Threads::Single))
                            .collect()
                    } else {
                        Vec::new()
                    }
                },
                || dx.as_mut().map_or(Ok(()), dx_all),
            );
            dx_done?;
            partials = parts;
        } else {
            if want_dw {
                partials.push(dw_group(0..n, Threads::Auto));
            }
            if let Some(dx) = dx.as_mut() {
                let (mut padded, mut dcols) = (Vec::new(), Vec::new());
                for (b, dx_b) in dx.data_mut().chunks_mut(in_image).enumerate() {
                    dx_image(b, dx_b, Threads::Auto, &mut padded, &mut dcols)?;
                }
            }
        }
        let dw = if want_dw {
            // Sum the groups' partial dW, already in OIHW order.
            let mut it = partials.into_iter();
            let mut total = it.next().unwrap_or_else(|| vec![0.0; k * o]);
            for part in it {
                total.iter_mut().zip(&part).for_each(|(t, v)| *t += v);
            }
            let dw = Tensor::from_vec(w.shape(), total)?;
            Some(dw)
        } else {
            None
        };
        Ok(ConvGrads { dx, dw })
    }

    /// Linear layer's backward for `y = x W^T + b` (`x: [N, in]`, `w: [out, in]`,
    /// `dy: [N, out]`): `dx = dy W`, `dW = dy^T x`, `db = sum_n dy`.
    pub fn linear_backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<LinearGrads> {
        let op = "linear_backward";
        let [n, inp] = x.dims2(op)?;
        let [out, win] = w.dims2(op)?;
        if win != inp {
            return Err(TensorError::ShapeMismatch {
                op,
                expected: vec![out, inp],
                got: w.shape().to_vec(),
            });
        }
        expect_shape(op, &[n, out], dy)?;
        let mut dx = Tensor::zeros(&[n, inp])?;
        let mut dw = Tensor::zeros(&[out, inp])?;
        let dy_m = MatRef::row_major(dy.data(), n, out)?;
        let w_m = MatRef::row_major(w.data(), out, inp)?;
        let x_m = MatRef::row_major(x.data(), n, inp)?;
        self.gemm(
            dy_m,
            w_m,
            &mut MatMut::row_major(dx.data_mut(), n, inp)?,
            &[],
        )?;
        self.gemm(
            dy_m.t(),
            x_m,
            &mut MatMut::row_major(dw.data_mut(), out, inp)?,
            &[],
        )?;
        let mut db = vec![0.0f64; out];
        for row in dy.data().chunks(out.max(1)) {
            db.iter_mut().zip(row).for_each(|(t, v)| *t += *v as f64);
        }
        Ok(LinearGrads {
            dx,
            dw,
            db: db.into_iter().map(|v| v as f32).collect(),
        })
    }
}

/// The input rows (or columns) `lo..hi` under output `o`'s pooling window.
fn window(o: usize, stride: usize, pad: usize, k: usize, size: usize) -> (usize, usize) {
    let top = (o * stride) as isize - pad as isize;
    let lo = top.max(0) as usize;
    let hi = ((top + k as isize).max(0) as usize).min(size);
    (lo, hi)
}
