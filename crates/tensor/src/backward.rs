//! Backward kernels: the gradients of the forward operations, for `autograd`.
//!
//! Each takes the upstream gradient `dy` (shaped as the forward's output) and what the
//! forward saved, and returns the gradients of the forward's inputs. The memory-bound
//! ones (ReLU, batch norm) run the SIMD bodies of every tier; linear is GEMMs; max pool
//! and average pool are plain loops (they move data and do no arithmetic worth
//! vectorising). The convolution's backward is in `crate::conv` (`conv/backward.rs`),
//! where its plan picks the routes of `dX` and `dW`. Naive versions are in
//! [`crate::reference`].

use rayon::prelude::*;

use crate::error::{Result, TensorError};
use crate::gemm::MatMut;
use crate::gemm::MatRef;
use crate::kernels::{AvgPool2d, Kernels, MaxPoolIndices, Pool2d};
use crate::tensor::Tensor;

/// Gradients of batch norm's input and affine parameters.
#[derive(Debug, Clone)]
pub struct BatchNormGrads {
    /// The input's gradient.
    pub dx: Tensor,
    /// The scale's (`gamma`'s) gradient, per channel.
    pub dgamma: Vec<f32>,
    /// The shift's (`beta`'s) gradient, per channel.
    pub dbeta: Vec<f32>,
    /// With [`BnGradIn::MaskedBy`], `dy` masked by the ReLU: the residual's gradient.
    pub masked_dy: Option<Tensor>,
}

/// Gradients of a convolution's input and weights; each is `None` when not asked for.
#[derive(Debug, Clone)]
pub struct ConvGrads {
    /// The input's gradient, shaped as the input.
    pub dx: Option<Tensor>,
    /// The weights' gradient, OIHW.
    pub dw: Option<Tensor>,
}

/// Gradients of a linear layer `y = x W^T + b`.
#[derive(Debug, Clone)]
pub struct LinearGrads {
    /// The input's gradient, `[N, in]`.
    pub dx: Tensor,
    /// The weights' gradient, `[out, in]`.
    pub dw: Tensor,
    /// The bias's gradient, `[out]`.
    pub db: Vec<f32>,
}

/// `got` has the shape `expected`, or the error names both.
pub(crate) fn expect_shape(
    op: &'static str,
    arg: &'static str,
    expected: &[usize],
    got: &Tensor,
) -> Result<()> {
    if got.shape() != expected {
        return Err(TensorError::ShapeMismatch {
            op,
            arg,
            expected: expected.to_vec(),
            got: got.shape().to_vec(),
        });
    }
    Ok(())
}

/// The output gradient handed to [`Kernels::batch_norm_backward`].
#[derive(Debug)]
pub enum BnGradIn<'a> {
    /// Read only; `dx` goes to a new tensor.
    Borrowed(&'a Tensor),
    /// Consumed: `dx` is written over its buffer (the training step's usual case, where
    /// the output gradient is not needed afterwards).
    Owned(Tensor),
    /// Consumed, and first masked by the ReLU of `relu(batch_norm(x) + residual)`, whose
    /// output is the tensor given: each plane is masked just before its sums are taken,
    /// while it is in cache (one pass over `dy` fewer than `relu_backward` first). The
    /// masked gradient, also the residual's, comes back as
    /// [`BatchNormGrads::masked_dy`]; `dx` goes to a new tensor.
    MaskedBy(Tensor, &'a Tensor),
}

/// Sums across the replicas of a data-parallel job: what synchronised batch norm needs
/// (each replica holds part of the batch; the statistics and the backward's per-channel
/// sums are those of the whole batch). A communicator implements it (`resnet`'s MPI
/// one); this crate never communicates itself.
pub trait ReplicaSum: Sync + std::fmt::Debug {
    /// Replaces every element of `values` by its sum over all replicas. Every replica
    /// calls it at the same point of the same computation, with equally long `values`.
    fn sum(&self, values: &mut [f64]) -> Result<()>;
}

/// What a batch norm's forward was, for its backward.
#[derive(Debug, Clone, Copy)]
pub struct BatchNormBackward<'a> {
    /// The mean the forward normalised with, per channel.
    pub mean: &'a [f32],
    /// `1 / sqrt(var + eps)` the forward normalised with, per channel.
    pub inv_std: &'a [f32],
    /// The scale, per channel.
    pub gamma: &'a [f32],
    /// The batch's statistics (training mode), or fixed ones (running statistics: eval
    /// mode, a frozen backbone), which are constants: then `dx = gamma inv_std dy`.
    pub batch_stats: bool,
    /// A ReLU after the batch norm, `y = max(scale x + shift, 0)` with this per-channel
    /// `[scale, shift]` (as [`Kernels::scale_shift`] with `[Epilogue::Relu]` computes it): its mask is
    /// recomputed from `x` inside the two passes, so the ReLU costs no pass of its own.
    pub relu: Option<[&'a [f32]; 2]>,
    /// Synchronised batch norm (with batch statistics): the forward normalised with the
    /// statistics of the batch across all replicas, so the backward's two per-channel
    /// sums (of `dy` and of `dy x_hat`) and the count `M` are summed across them before
    /// `dx` is formed. `dgamma` and `dbeta` stay this replica's own (the data-parallel
    /// gradient reduction sums them, as PyTorch's `SyncBatchNorm` leaves them to DDP).
    pub sync: Option<&'a dyn ReplicaSum>,
}

impl<'a> BatchNormBackward<'a> {
    /// A forward that normalised with `mean` and `inv_std`, by the batch's statistics if
    /// `batch_stats`, else by fixed ones, with no ReLU after it.
    pub fn new(mean: &'a [f32], inv_std: &'a [f32], gamma: &'a [f32], batch_stats: bool) -> Self {
        BatchNormBackward {
            mean,
            inv_std,
            gamma,
            batch_stats,
            relu: None,
            sync: None,
        }
    }

    /// [`BatchNormBackward::new`] with the batch's statistics (training mode).
    pub fn batch(mean: &'a [f32], inv_std: &'a [f32], gamma: &'a [f32]) -> Self {
        Self::new(mean, inv_std, gamma, true)
    }

    /// [`BatchNormBackward::new`] with fixed statistics (eval mode, a frozen backbone).
    pub fn fixed(mean: &'a [f32], inv_std: &'a [f32], gamma: &'a [f32]) -> Self {
        Self::new(mean, inv_std, gamma, false)
    }

    /// The same with a ReLU after the batch norm (see [`BatchNormBackward::relu`]).
    pub fn with_relu(self, affine: [&'a [f32]; 2]) -> Self {
        BatchNormBackward {
            relu: Some(affine),
            ..self
        }
    }

    /// The same, synchronised across replicas by `sync` (see [`BatchNormBackward::sync`];
    /// `None` leaves it local).
    pub fn synced(self, sync: Option<&'a dyn ReplicaSum>) -> Self {
        BatchNormBackward { sync, ..self }
    }
}

impl Kernels {
    /// ReLU's backward: `dx = dy` where `y > 0`, else 0, with `y` the ReLU's output
    /// (also right for a fused BN + ReLU or add + ReLU, whose output is that ReLU's).
    pub fn relu_backward(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
        dy.expect_same_shape("relu_backward", "y", y)?;
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

    /// Batch norm's backward over `[N, C, ...]`, given the input `x`, the output
    /// gradient `dy` and what the forward was (`bn`: the statistics and `gamma` it
    /// normalised with, and a ReLU after it, if any). With batch statistics, `x_hat =
    /// (x - mean) inv_std` and `M = N H W` elements per channel:
    ///
    /// - `dbeta = sum(dy)`, `dgamma = sum(dy x_hat)`;
    /// - `dx = gamma inv_std (dy - dbeta / M - x_hat dgamma / M)`.
    ///
    /// Per channel that is affine in `dy` and `x`, so the second pass is one fused
    /// kernel: `dx = a dy + b x + c` (see `docs/autograd.md` for the derivation). With
    /// fixed statistics `dx = gamma inv_std dy`. Every fused form (a ReLU after it, a
    /// residual and ReLU after it, `dy` overwritten) gives the same values as the
    /// unfused ops in a row, to the last bit.
    pub fn batch_norm_backward(
        &self,
        x: &Tensor,
        dy: BnGradIn,
        bn: &BatchNormBackward,
    ) -> Result<BatchNormGrads> {
        if let BnGradIn::MaskedBy(dy, out) = &dy {
            dy.expect_same_shape("batch_norm_backward", "out", out)?;
        }
        let (mut g, masked) = self.batch_norm_backward_impl(
            "batch_norm_backward",
            x,
            dy,
            bn.mean,
            bn.inv_std,
            bn.gamma,
            bn.batch_stats,
            bn.relu,
            bn.sync,
        )?;
        g.masked_dy = masked;
        Ok(g)
    }

    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward_impl(
        &self,
        op: &'static str,
        x: &Tensor,
        dy: BnGradIn,
        mean: &[f32],
        inv_std: &[f32],
        gamma: &[f32],
        batch_stats: bool,
        relu: Option<[&[f32]; 2]>,
        sync: Option<&dyn ReplicaSum>,
    ) -> Result<(BatchNormGrads, Option<Tensor>)> {
        // `masked`: the owned dy and the ReLU output that masks it.
        let (mut dx, borrowed, mut masked) = match dy {
            BnGradIn::Borrowed(dy) => {
                x.expect_same_shape(op, "dy", dy)?;
                (Tensor::for_overwrite(x.shape())?, Some(dy), None)
            }
            BnGradIn::Owned(dy) => {
                x.expect_same_shape(op, "dy", &dy)?;
                (dy, None, None)
            }
            BnGradIn::MaskedBy(dy, out) => {
                x.expect_same_shape(op, "dy", &dy)?;
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
            if let Some(sync) = sync.filter(|_| batch_stats) {
                // The other replicas wait for this one's (empty) sums.
                sync.sum(&mut vec![0.0; 2 * c + 1])?;
            }
            let g = BatchNormGrads {
                dx,
                dgamma: vec![0.0; c],
                dbeta: vec![0.0; c],
                masked_dy: None,
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
                    let p = d.as_mut_ptr();
                    unsafe { relu_backward(p, o.as_ptr(), p, plane) };
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
        // Synchronised: the sums and the count over every replica's part of the batch.
        let (global, m) = match sync.filter(|_| batch_stats) {
            Some(sync) => {
                let mut all: Vec<f64> = totals.iter().flat_map(|&(a, b)| [a, b]).collect();
                all.push(count as f64);
                sync.sum(&mut all)?;
                let m = all[2 * c];
                let pairs = all.chunks_exact(2).map(|p| (p[0], p[1])).collect();
                (Some::<Vec<(f64, f64)>>(pairs), m)
            }
            None => (None, count as f64),
        };
        let mut dgamma = vec![0.0f32; c];
        let mut dbeta = vec![0.0f32; c];
        let mut coef = vec![[0.0f32; 3]; c];
        for ch in 0..c {
            let (s_dy, s_dev) = global.as_ref().map_or(totals[ch], |g| g[ch]);
            let istd = inv_std[ch] as f64;
            let k = gamma[ch] as f64 * istd;
            coef[ch] = if batch_stats {
                // dx = k dy - k s_dy / M - k istd^2 s_dev / M (x - mean)
                let b = -k * istd * istd * s_dev / m;
                let cst = -k * s_dy / m - b * mean[ch] as f64;
                [k as f32, b as f32, cst as f32]
            } else {
                [k as f32, 0.0, 0.0]
            };
            let (s_dy, s_dev) = totals[ch]; // this replica's own
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
            // In place when there is no separate dy: one pointer, taken mutably, reads and
            // writes `d`.
            let dp = d.as_mut_ptr();
            let g = gd.map_or(dp.cast_const(), |gd| gd[s..].as_ptr());
            // SAFETY: plane `i` of dy and x is in bounds, as long as `d`.
            unsafe { apply(g, xd[s..].as_ptr(), dp, plane, coef[ch], mask(ch)) }
        };
        for_each_plane(dx.data_mut(), plane, run);
        Ok((
            BatchNormGrads {
                dx,
                dgamma,
                dbeta,
                masked_dy: None,
            },
            masked.map(|(dy, _)| dy),
        ))
    }

    /// Max pooling's backward: each output's gradient goes to the input that won its
    /// window (the first maximum in row-major window order, as PyTorch), found again
    /// from `x` rather than saved.
    pub fn max_pool2d_backward(&self, x: &Tensor, dy: &Tensor, pool: &Pool2d) -> Result<Tensor> {
        self.max_pool_backward(x, None, dy, pool)
    }

    /// [`Kernels::max_pool2d_backward`] given the forward's output `y` too (for a caller
    /// that kept the output but not the winners; the tape keeps the winners and runs
    /// [`Kernels::max_pool2d_backward_from_indices`]): a window's winner is then its first input equal to
    /// the window's maximum, found without comparing the inputs with each other, and
    /// the search stops there (ResNet-18's stem pool at batch 16, 2 threads: 29.9 ms
    /// against 50.9, 2026-12-05). The result is the same whatever `y` holds: a window whose
    /// output is NaN, or that holds no input equal to it, is searched as without `y`.
    pub fn max_pool2d_backward_given_output(
        &self,
        x: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        pool: &Pool2d,
    ) -> Result<Tensor> {
        expect_shape("max_pool2d_backward", "y", dy.shape(), y)?;
        self.max_pool_backward(x, Some(y), dy, pool)
    }

    /// Max pooling's backward from the winners the forward found
    /// ([`Kernels::max_pool2d_with_indices`]): each output's gradient is added to its
    /// winner's, nothing searched (ResNet-18's stem pool at batch 16: see
    /// `docs/benchmarks.md`). The result is `[N, C, H, W]` of the pooled input.
    pub fn max_pool2d_backward_from_indices(
        &self,
        indices: &MaxPoolIndices,
        dy: &Tensor,
    ) -> Result<Tensor> {
        let [n, c, h, w] = indices.input_shape();
        expect_shape(
            "max_pool2d_backward_from_indices",
            "dy",
            &indices.output_shape(),
            dy,
        )?;
        let (plane, out_plane) = (h * w, dy.len() / (n * c).max(1));
        if plane == 0 || out_plane == 0 {
            return Tensor::zeros(&[n, c, h, w]);
        }
        // Each plane zeroed by the task that scatters into it, while it is in cache
        // (zeroing the whole tensor first was one more pass over memory).
        let mut dx = Tensor::for_overwrite(&[n, c, h, w])?;
        let (gd, at) = (dy.data(), indices.as_slice());
        let run = |i: usize, d: &mut [f32]| {
            d.fill(0.0);
            let range = i * out_plane..(i + 1) * out_plane;
            for (&g, &k) in gd[range.clone()].iter().zip(&at[range]) {
                // `u32::MAX`: a window of padding only, no winner. Offsets come from the
                // forward over this plane's shape, so they are inside it.
                if let Some(d) = d.get_mut(k as usize) {
                    *d += g;
                }
            }
        };
        for_each_plane(dx.data_mut(), plane, run);
        Ok(dx)
    }

    fn max_pool_backward(
        &self,
        x: &Tensor,
        y: Option<&Tensor>,
        dy: &Tensor,
        pool: &Pool2d,
    ) -> Result<Tensor> {
        let [n, c, h, w] = x.dims4("max_pool2d_backward")?;
        let [oh, ow] = pool.output_size(h, w)?;
        expect_shape("max_pool2d_backward", "dy", &[n, c, oh, ow], dy)?;
        let mut dx = Tensor::zeros(x.shape())?;
        if h * w == 0 {
            return Ok(dx);
        }
        let (xd, gd) = (x.data(), dy.data());
        let [kh, kw] = pool.kernel;
        let [sh, sw] = pool.stride;
        let [ph, pw] = pool.padding;
        let [dh, dw] = pool.dilation;
        // Undilated windows (every ResNet's) are row ranges: their columns once per
        // output column, a plain loop over each window's rows. (ResNet-18's stem pool at
        // batch 16, 2 threads: 50.5-56.4 ms against 69.7-71.0 for the general loop
        // below, over filtered tap iterators. What is left is about 80 cycles per output,
        // instructions more than latency: four windows interleaved gained 8%. Given the
        // forward's output, the search stops at the first input equal to it, see
        // `max_pool2d_backward_given_output`; the tape needs no search at all, see
        // `max_pool2d_backward_from_indices`.)
        let cols: Vec<(usize, usize)> = (0..ow).map(|ox| window(ox, sw, pw, kw, w)).collect();
        // The first input of a window equal to its (non-NaN) output, if any.
        let first_equal =
            |xs: &[f32], (y0, y1): (usize, usize), (x0, x1): (usize, usize), m: f32| {
                if m.is_nan() {
                    return None;
                }
                (y0..y1).find_map(|iy| {
                    let row = iy * w;
                    xs[row + x0..row + x1]
                        .iter()
                        .position(|&v| v == m)
                        .map(|j| row + x0 + j)
                })
            };
        let undilated = |xs: &[f32], ys: Option<&[f32]>, gs: &[f32], d: &mut [f32]| {
            for oy in 0..oh {
                let (y0, y1) = window(oy, sh, ph, kh, h);
                for (ox, &(x0, x1)) in cols.iter().enumerate() {
                    // PyTorch's rule: the first maximum, or the last NaN (the forward
                    // pass propagates it).
                    if y0 >= y1 || x0 >= x1 {
                        continue;
                    }
                    let o = oy * ow + ox;
                    if let Some(at) = ys.and_then(|ys| first_equal(xs, (y0, y1), (x0, x1), ys[o])) {
                        d[at] += gs[o];
                        continue;
                    }
                    let (mut best, mut bv) = (y0 * w + x0, xs[y0 * w + x0]);
                    for iy in y0..y1 {
                        let row = iy * w;
                        for (ix, &v) in xs.iter().enumerate().take(row + x1).skip(row + x0) {
                            let better = v > bv || v.is_nan();
                            best = if better { ix } else { best };
                            bv = if better { v } else { bv };
                        }
                    }
                    d[best] += gs[oy * ow + ox];
                }
            }
        };
        let yd = y.map(|y| y.data());
        let run = |i: usize, d: &mut [f32]| {
            let xs = &xd[i * h * w..(i + 1) * h * w];
            let gs = &gd[i * oh * ow..(i + 1) * oh * ow];
            if dh == 1 && dw == 1 {
                let ys = yd.map(|yd| &yd[i * oh * ow..(i + 1) * oh * ow]);
                undilated(xs, ys, gs, d);
                return;
            }
            for oy in 0..oh {
                for ox in 0..ow {
                    // A dilated window of padding only has no winner (its output is
                    // `-inf`): no gradient.
                    let mut best: Option<usize> = None;
                    for iy in taps(oy, sh, ph, kh, dh, h) {
                        for ix in taps(ox, sw, pw, kw, dw, w) {
                            // PyTorch's rule: the first maximum, or the last NaN
                            // (the forward pass propagates it).
                            let v = xs[iy * w + ix];
                            if best.is_none_or(|b| v > xs[b] || v.is_nan()) {
                                best = Some(iy * w + ix);
                            }
                        }
                    }
                    if let Some(b) = best {
                        d[b] += gs[oy * ow + ox];
                    }
                }
            }
        };
        for_each_plane(dx.data_mut(), h * w, run);
        Ok(dx)
    }

    /// Average pooling's backward: each output's gradient, over its window's count,
    /// added to every input of its window (`x_shape` is the forward's input shape).
    pub fn avg_pool2d_backward(
        &self,
        dy: &Tensor,
        x_shape: [usize; 4],
        pool: &AvgPool2d,
    ) -> Result<Tensor> {
        let [n, c, h, w] = x_shape;
        let [oh, ow] = pool.output_size(h, w)?;
        expect_shape("avg_pool2d_backward", "dy", &[n, c, oh, ow], dy)?;
        let mut dx = Tensor::zeros(&x_shape)?;
        if h * w == 0 {
            return Ok(dx);
        }
        let gd = dy.data();
        let ([kh, kw], [sh, sw], [ph, pw]) =
            (pool.window.kernel, pool.window.stride, pool.window.padding);
        // Each output row's divisors are the row's count times each column's.
        let cols: Vec<usize> = (0..ow).map(|ox| pool.count(1, ox, w)).collect();
        let run = |i: usize, d: &mut [f32]| {
            let gs = &gd[i * oh * ow..(i + 1) * oh * ow];
            for oy in 0..oh {
                let (y0, y1) = window(oy, sh, ph, kh, h);
                let rows = pool.count(0, oy, h);
                for ox in 0..ow {
                    let (x0, x1) = window(ox, sw, pw, kw, w);
                    let g = gs[oy * ow + ox] / (rows * cols[ox]) as f32;
                    for iy in y0..y1 {
                        for v in &mut d[iy * w + x0..iy * w + x1] {
                            *v += g;
                        }
                    }
                }
            }
        };
        for_each_plane(dx.data_mut(), h * w, run);
        Ok(dx)
    }

    /// Global average pooling's backward: `dx[n, c, :, :] = dy[n, c] / (H W)`.
    pub fn global_avg_pool_backward(&self, dy: &Tensor, x_shape: [usize; 4]) -> Result<Tensor> {
        let [n, c, h, w] = x_shape;
        expect_shape("global_avg_pool_backward", "dy", &[n, c], dy)?;
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

    /// Linear layer's backward for `y = x W^T + b` (`x: [N, in]`, `w: [out, in]`,
    /// `dy: [N, out]`): `dx = dy W`, `dW = dy^T x`, `db = sum_n dy`.
    pub fn linear_backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<LinearGrads> {
        let op = "linear_backward";
        let [n, inp] = x.dims2(op)?;
        let [out, win] = w.dims2(op)?;
        if win != inp {
            return Err(TensorError::ShapeMismatch {
                op,
                arg: "w",
                expected: vec![out, inp],
                got: w.shape().to_vec(),
            });
        }
        expect_shape(op, "dy", &[n, out], dy)?;
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

/// The input rows (or columns) under output `o`'s window of `k` taps `dil` apart.
fn taps(
    o: usize,
    stride: usize,
    pad: usize,
    k: usize,
    dil: usize,
    size: usize,
) -> impl Iterator<Item = usize> {
    (0..k)
        .map(move |t| (o * stride + t * dil) as isize - pad as isize)
        .filter(move |&i| i >= 0 && (i as usize) < size)
        .map(|i| i as usize)
}

/// Runs `run(i, plane)` on each `plane`-float plane of `data` (plane `i` of the tensor):
/// in this thread for a small tensor, else over rayon's threads, at least 16 Ki floats a
/// task. Nothing for planes of no elements.
fn for_each_plane(data: &mut [f32], plane: usize, run: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if plane == 0 {
        return;
    }
    if data.len() < 1 << 16 {
        data.chunks_mut(plane)
            .enumerate()
            .for_each(|(i, d)| run(i, d));
    } else {
        data.par_chunks_mut(plane)
            .enumerate()
            .with_min_len((16384 / plane).max(1))
            .for_each(|(i, d)| run(i, d));
    }
}

/// The input rows (or columns) `lo..hi` under output `o`'s pooling window.
fn window(o: usize, stride: usize, pad: usize, k: usize, size: usize) -> (usize, usize) {
    let top = (o * stride) as isize - pad as isize;
    let lo = top.max(0) as usize;
    let hi = ((top + k as isize).max(0) as usize).min(size);
    (lo, hi)
}
