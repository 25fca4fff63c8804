//! 2-D convolution forward (NCHW input, OIHW weights, groups = 1) as a GEMM, and batch
//! norm folded into it.
//!
//! For one image, `y[o, p] = sum_q W[o, q] * col[q, p]`, where `W` is the weight tensor
//! seen as an `O x (I kh kw)` matrix (OIHW is exactly that matrix, row-major) and
//! `col[(i, ky, kx), (oy, ox)] = x[i, oy s + ky - pad, ox s + kx - pad]` (zero outside
//! the image) is the im2col matrix. `y` is `O x (OH OW)`: the NCHW output plane block of
//! that image, row-major, so the GEMM writes the output in place.
//!
//! This module runs the forward routes the plan (`super`) picks: the three GEMM routes,
//! whose B operand is
//!
//! | route | B operand of the GEMM |
//! |---|---|
//! | `GemmImage` (1x1, stride 1, no padding) | the input itself: `x[b]` is already the `I x (H W)` matrix |
//! | `GemmSubsampled` (1x1, stride s, no padding) | the subsampled image (`x[b]` at every s-th row and column, in a per-thread buffer) |
//! | `GemmIm2col` | im2col, one packed block at a time, from the image's phase planes (see `Im2col`) |
//!
//! and the direct kernel's (`direct.rs`), which reads the padded image in place,
//! with no column matrix at all.
//!
//! The im2col is never materialised whole for a large layer: the GEMM packs B in blocks
//! of at most `NC` = 2048 columns, straight from the image, and each block is consumed
//! before the next is made. Along K a block is `KC` = 256 rows (2 MiB, about the L2),
//! except that a GEMM split across threads packs all of K at once when that is at most
//! 8 MiB (two hand-offs to the pool per column block instead of two per K block; see
//! `gemm/driver.rs`), so a column matrix of at most 2048 columns and 8 MiB can exist
//! whole. For ResNet-50's first layer at batch 1 the whole column matrix would be
//! 147 x 12544 floats (7.0 MiB); its block is 147 x 2048 (1.15 MiB).
//!
//! Weights are packed once in the layout of the plan's route ([`ConvWeights`]); inference also
//! folds batch norm into them ([`fold_batch_norm`]) and passes the folded bias, a
//! residual and ReLU as the GEMM epilogue, so conv + BN + (residual +) ReLU is one pass
//! over the output while it is in registers.

use rayon::prelude::*;

use super::direct::{direct_conv_image, DirectWeights};
use super::nchwc::BlockedConvWeights;
use super::{ConvPlan, Forward};
use crate::epilogue::{self, Epilogue, Output, Residual, StatsSink};
use crate::error::{Result, TensorError};
use crate::gemm::pack::{BSource, Im2col, IM2COL_CHUNK};
use crate::gemm::{driver, MatMut, MatRef, PackedA};
use crate::kernels::{ChannelStats, Kernels};
use crate::layout::{check_affine, normalise_image, per_channel, split_phases, Normalise};
use crate::tensor::Tensor;
use crate::workspace::{Scratch, Workspace};

/// Stride and zero padding of a convolution (the same along both axes, as in every
/// ResNet layer), and its channel groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2d {
    /// The step between output pixels, in input pixels.
    pub stride: usize,
    /// Zeros added on every side of the input.
    pub padding: usize,
    /// PyTorch's `groups`: the input and output channels are cut into `groups` equal,
    /// consecutive parts, and output part `g` reads input part `g` only; the weights are
    /// `[O, C / groups, kh, kw]`. 1 (every output reads every input) for a dense
    /// convolution; ResNeXt's 3x3 layers have 32 or 64.
    pub groups: usize,
    /// PyTorch's `dilation`: the kernel's taps are `dilation` pixels apart, so a 3x3
    /// kernel spans `2 dilation + 1` pixels (torchvision's `replace_stride_with_dilation`
    /// backbones). 1 for an ordinary convolution.
    pub dilation: usize,
}

impl Conv2d {
    /// A dense convolution of `stride` and `padding`.
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2d {
            stride,
            padding,
            groups: 1,
            dilation: 1,
        }
    }

    /// The same convolution with its taps `dilation` pixels apart.
    pub fn with_dilation(mut self, dilation: usize) -> Self {
        self.dilation = dilation;
        self
    }

    /// The span of a `k`-tap kernel: `dilation (k - 1) + 1` pixels.
    pub fn span(&self, k: usize) -> usize {
        self.dilation
            .max(1)
            .saturating_mul(k.saturating_sub(1))
            .saturating_add(1)
    }

    /// The same convolution in `groups` channel groups.
    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// The output `[height, width]` for an `h x w` input and a `kh x kw` kernel.
    pub fn output_size(&self, h: usize, w: usize, kh: usize, kw: usize) -> Result<[usize; 2]> {
        let bad = |reason: String| TensorError::InvalidArgument {
            op: "conv2d",
            reason,
        };
        if self.stride == 0 || kh == 0 || kw == 0 || self.dilation == 0 {
            return Err(bad(format!(
                "stride, dilation and kernel must be positive ({self:?}, kernel {kh}x{kw})"
            )));
        }
        // A dilated kernel covers its span.
        let (kh, kw) = (self.span(kh), self.span(kw));
        // Checked: a hostile padding must be an error, not an overflow.
        let both_sides = self.padding.checked_mul(2);
        let (ph, pw) = (
            both_sides.and_then(|p| h.checked_add(p)),
            both_sides.and_then(|p| w.checked_add(p)),
        );
        match (ph, pw) {
            (Some(ph), Some(pw)) if ph >= kh && pw >= kw => {
                Ok([(ph - kh) / self.stride + 1, (pw - kw) / self.stride + 1])
            }
            _ => Err(bad(format!(
                "a {kh}x{kw} kernel does not fit the {h}x{w} input padded by {}",
                self.padding
            ))),
        }
    }
}

/// A layer's weights packed in the layout its plan's forward route reads, with the
/// plan: pack once ([`Kernels::pack_conv`]), convolve many times.
#[derive(Clone, Debug)]
pub struct ConvWeights {
    plan: ConvPlan,
    packed: Packed,
}

/// The weights in one route family's layout.
#[derive(Clone, Debug)]
pub(crate) enum Packed {
    /// The GEMM's A panels (`O x (C kh kw)`).
    Gemm(PackedA),
    /// The direct kernel's `[C kh kw][ob]` blocks.
    Direct(DirectWeights),
    /// The blocked layout's weight groups.
    Blocked(BlockedConvWeights),
    /// Winograd's transformed weights, packed for the blocked kernel.
    Winograd(super::WinogradWeights),
    /// A grouped plan's: each channel group's weights, packed for the group plan.
    Grouped(Vec<ConvWeights>),
    /// A dilated plan's: the weights packed for its phase plan.
    Dilated(Box<ConvWeights>),
}

impl ConvWeights {
    /// `[out_channels, in_channels, kh, kw]`.
    pub fn shape(&self) -> [usize; 4] {
        self.plan.weights_shape()
    }

    /// The plan these weights were packed for.
    pub fn plan(&self) -> &ConvPlan {
        &self.plan
    }

    pub(crate) fn packed(&self) -> &Packed {
        &self.packed
    }
}

/// Folds inference batch norm into the preceding convolution:
/// `w'[o] = w[o] * g[o]`, `b'[o] = beta[o] + (b[o] - mean[o]) * g[o]` with
/// `g = gamma / sqrt(running_var + eps)`. Returns the new weights and bias.
pub fn fold_batch_norm(
    w: &Tensor,
    bias: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> Result<(Tensor, Vec<f32>)> {
    w.dims4("fold_batch_norm")?;
    fold_batch_norm_into(w.clone(), bias, gamma, beta, mean, var, eps)
}

/// [`fold_batch_norm`] on weights given up: folded in place, no copy (for building an
/// inference model layer by layer, where the unfolded weights are not needed after).
pub fn fold_batch_norm_into(
    w: Tensor,
    bias: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> Result<(Tensor, Vec<f32>)> {
    let [o, i, kh, kw] = w.dims4("fold_batch_norm")?;
    for (name, p) in [
        ("gamma", gamma),
        ("beta", beta),
        ("running_mean", mean),
        ("running_var", var),
    ]
    .into_iter()
    .chain(bias.map(|b| ("bias", b)))
    {
        if p.len() != o {
            return Err(TensorError::InvalidArgument {
                op: "fold_batch_norm",
                reason: format!("{name} has {} elements for {o} output channels", p.len()),
            });
        }
    }
    let per_out = i * kh * kw;
    let mut folded = w;
    let mut new_bias = vec![0.0f32; o];
    for oc in 0..o {
        // In f64, so the fold adds no rounding beyond the final store.
        let g = gamma[oc] as f64 / (var[oc] as f64 + eps as f64).sqrt();
        for v in &mut folded.data_mut()[oc * per_out..(oc + 1) * per_out] {
            *v = (*v as f64 * g) as f32;
        }
        let b = bias.map_or(0.0, |b| b[oc] as f64);
        new_bias[oc] = (beta[oc] as f64 + (b - mean[oc] as f64) * g) as f32;
    }
    Ok((folded, new_bias))
}

impl Kernels {
    /// Packs OIHW weights `w` for `plan`: in the layout of the forward route family its
    /// ladder picks for the layer (GEMM panels, the direct kernel's blocks, or the
    /// blocked layout's groups), and only that one (keeping both the GEMM's and the
    /// direct kernel's for every 3x3 layer held ResNet-50's 3x3 weights twice, about
    /// 45 MB).
    pub fn pack_conv(&self, plan: &ConvPlan, w: &Tensor) -> Result<ConvWeights> {
        let shape = w.dims4("pack_conv")?;
        if shape != plan.weights_shape() {
            return Err(TensorError::ShapeMismatch {
                op: "pack_conv",
                arg: "weights",
                expected: plan.weights_shape().to_vec(),
                got: shape.to_vec(),
            });
        }
        self.check_plan("pack_conv", plan)?;
        // (A dilated layer in the blocked layout needs no phases: packed as any other.)
        let blocked = plan.layout() == super::Layout::Blocked
            && plan.forward_family().layout() == super::Layout::Blocked;
        if plan.dilation() > 1 && !blocked {
            return Ok(ConvWeights {
                plan: *plan,
                packed: Packed::Dilated(Box::new(self.pack_dilated(plan, w)?)),
            });
        }
        if plan.groups() > 1 {
            let packed = if plan.layout() == super::Layout::Blocked {
                let narrow = plan.blocked_grouped_route()? == Forward::BlockedNarrowGroups;
                Packed::Blocked(self.pack_blocked_grouped_weights(w, plan.groups(), narrow)?)
            } else {
                Packed::Grouped(self.pack_grouped(plan, w)?)
            };
            return Ok(ConvWeights {
                plan: *plan,
                packed,
            });
        }
        let [o, i, kh, kw] = shape;
        let packed = match plan.forward_family() {
            Forward::Direct(_) => {
                Packed::Direct(DirectWeights::new(w.data(), shape, self.set().direct_ob))
            }
            Forward::Blocked => Packed::Blocked(self.pack_blocked_conv_weights(w)?),
            Forward::BlockedWinograd => Packed::Winograd(self.pack_winograd_weights(w, 4)?),
            Forward::BlockedWinograd2 => Packed::Winograd(self.pack_winograd_weights(w, 2)?),
            // The direct kernel's weights, transformed per call.
            Forward::BlockedWinogradOnTheFly => Packed::Blocked(self.pack_blocked_conv_weights(w)?),
            Forward::Winograd => Packed::Winograd(self.pack_winograd_weights(w, 4)?),
            Forward::BlockedGrouped | Forward::BlockedNarrowGroups => {
                return Err(TensorError::InvalidArgument {
                    op: "pack_conv",
                    reason: format!("{} runs grouped convolutions only", plan.forward_family()),
                })
            }
            Forward::GemmImage | Forward::GemmSubsampled | Forward::GemmIm2col => {
                Packed::Gemm(self.pack_a(MatRef::row_major(w.data(), o, i * kh * kw)?))
            }
        };
        Ok(ConvWeights {
            plan: *plan,
            packed,
        })
    }

    /// A plan made for another tier's kernels is an error.
    pub(crate) fn check_plan(&self, op: &'static str, plan: &ConvPlan) -> Result<()> {
        if plan.kernels().isa() != self.isa() {
            return Err(TensorError::InvalidArgument {
                op,
                reason: format!(
                    "the plan was made for tier {}, but these kernels are {}",
                    plan.kernels().isa(),
                    self.isa()
                ),
            });
        }
        Ok(())
    }

    /// Convolution of an NCHW batch by the routes `w`'s plan picks for its shape, then
    /// the epilogue steps in order.
    pub fn conv2d(&self, x: &Tensor, w: &ConvWeights, epilogue: &[Epilogue]) -> Result<Tensor> {
        let [n, _, h, wd] = x.dims4("conv2d")?;
        let [o, _, kh, kw] = w.shape();
        let [oh, ow] = w.plan.conv().output_size(h, wd, kh, kw)?;
        // Every route writes every output element (the tests start from NaNs).
        let mut y = Tensor::for_overwrite(&[n, o, oh, ow])?;
        self.conv2d_into(x, w, epilogue, &mut y)?;
        Ok(y)
    }

    /// [`Kernels::conv2d`] into an existing `[N, O, OH, OW]` tensor (no allocation).
    pub fn conv2d_into(
        &self,
        x: &Tensor,
        w: &ConvWeights,
        epilogue: &[Epilogue],
        y: &mut Tensor,
    ) -> Result<()> {
        self.conv2d_impl(x, w, epilogue, y, None)
    }

    /// [`Kernels::conv2d`] for training: the output and its per-channel batch statistics
    /// (the [`Epilogue::Statistics`] step), which the training batch norm that follows
    /// needs.
    ///
    /// With `input_affine = Some([scale, shift])` (per input channel) it convolves
    /// `relu(scale[c] x + shift[c])` (a training batch norm and its ReLU, as
    /// [`Kernels::scale_shift`] with `[Epilogue::Relu]` computes them) without that input ever being stored:
    /// the direct kernel (stride 1) normalises as it writes its padded copy of the image;
    /// the other routes normalise each image into a buffer of the thread that convolves
    /// it, just before, where it stays in cache. The same values as `scale_shift_relu`
    /// followed by the plain call, to the last bit, minus a pass that writes the whole
    /// normalised batch to memory and another that reads it back.
    pub fn conv2d_with_stats(
        &self,
        x: &Tensor,
        w: &ConvWeights,
        input_affine: Option<[&[f32]; 2]>,
    ) -> Result<(Tensor, ChannelStats)> {
        let op = "conv2d_with_stats";
        let [n, c, h, wd] = x.dims4(op)?;
        if let Some(affine) = input_affine {
            check_affine(op, affine, c)?;
        }
        let [o, _, kh, kw] = w.shape();
        let [oh, ow] = w.plan.conv().output_size(h, wd, kh, kw)?;
        let mut y = Tensor::for_overwrite(&[n, o, oh, ow])?;
        let sink = StatsSink::new();
        self.conv2d_impl(x, w, &[Epilogue::Statistics(&sink)], &mut y, input_affine)?;
        let stats = sink.take().expect("the Statistics step fills its sink");
        Ok((y, stats))
    }

    /// Runs `w`'s plan on `x` into `y`: a dilated plan phase by phase (`dilated.rs`;
    /// each phase comes back here, and may be grouped), a grouped one group by group
    /// (`grouped.rs`), a dense one by [`Kernels::conv2d_impl_dense`].
    pub(crate) fn conv2d_impl(
        &self,
        x: &Tensor,
        w: &ConvWeights,
        epilogue: &[Epilogue],
        y: &mut Tensor,
        normalise: Option<[&[f32]; 2]>,
    ) -> Result<()> {
        self.check_plan("conv2d", &w.plan)?;
        if let Some(affine) = normalise {
            check_affine("conv2d", affine, x.dims4("conv2d")?[1])?;
        }
        if let Some(sub) = super::dilated::dilated_weights(w) {
            return self.dilated_conv2d(x, w, sub, epilogue, y, normalise);
        }
        if let Some(subs) = super::grouped::grouped_weights(w) {
            return self.grouped_conv2d(x, w, subs, epilogue, y, normalise);
        }
        self.conv2d_impl_dense(x, w, epilogue, y, normalise)
    }

    /// Runs a dense plan on `x` into `y`: checks, then the routes the plan resolves for
    /// `x`'s shape, image by image.
    pub(crate) fn conv2d_impl_dense(
        &self,
        x: &Tensor,
        w: &ConvWeights,
        epilogue: &[Epilogue],
        y: &mut Tensor,
        normalise: Option<[&[f32]; 2]>,
    ) -> Result<()> {
        self.check_plan("conv2d", &w.plan)?;
        let input = x.dims4("conv2d")?;
        let routes = w.plan.routes(input)?;
        let [n, c, h, wd] = input;
        let [o, _, kh, kw] = w.shape();
        let p = w.plan.conv();
        let [oh, ow] = p.output_size(h, wd, kh, kw)?;
        let out_shape = [n, o, oh, ow];
        if y.shape() != out_shape {
            return Err(TensorError::ShapeMismatch {
                op: "conv2d_into",
                arg: "y",
                expected: out_shape.to_vec(),
                got: y.shape().to_vec(),
            });
        }
        epilogue::check("conv2d", epilogue, Output::Nchw(&out_shape))?;
        // A Statistics step (last, checked) runs per image below; the routes get the rest.
        let (epilogue, sink) = match epilogue.split_last() {
            Some((Epilogue::Statistics(sink), rest)) => (rest, Some(*sink)),
            _ => (epilogue, None),
        };
        if sink.is_some() && n * oh * ow == 0 {
            return Err(TensorError::InvalidArgument {
                op: "conv2d",
                reason: format!(
                    "batch statistics of an output without elements per channel [{n}, {o}, \
                     {oh}, {ow}]"
                ),
            });
        }
        if let (Forward::Winograd, Packed::Winograd(ww)) = (routes.forward, &w.packed) {
            // The whole batch at once (`winograd_nchw.rs`), then the statistics.
            self.winograd_nchw(
                x.data(),
                input,
                ww,
                p.padding,
                epilogue,
                normalise,
                y.data_mut(),
                [o, oh, ow],
            )?;
            if let Some(sink) = sink {
                let plane = oh * ow;
                let (sum, sum_sq_dev) = (self.set().sum, self.set().sum_sq_dev);
                let planes: Vec<[f64; 2]> = y
                    .data()
                    .par_chunks(plane.max(1))
                    .map(|v| plane_stats(sum, sum_sq_dev, v))
                    .collect();
                sink.set(combine_plane_stats(&planes, n, o, plane));
            }
            return Ok(());
        }
        // The route's weights: the plan packed them for this route's family.
        let (packed, direct) = match (routes.forward, &w.packed) {
            (Forward::Direct(form), Packed::Direct(dw)) => (None, Some((form, dw))),
            (
                Forward::GemmImage | Forward::GemmSubsampled | Forward::GemmIm2col,
                Packed::Gemm(a),
            ) => {
                self.check_packed(a)?;
                (Some(a), None)
            }
            (
                Forward::Blocked
                | Forward::BlockedGrouped
                | Forward::BlockedNarrowGroups
                | Forward::BlockedWinograd
                | Forward::BlockedWinograd2
                | Forward::BlockedWinogradOnTheFly,
                _,
            ) => {
                return Err(TensorError::InvalidArgument {
                    op: "conv2d",
                    reason: "this plan runs in the blocked layout: use blocked_conv2d".into(),
                })
            }
            (route, _) => {
                return Err(TensorError::InvalidArgument {
                    op: "conv2d",
                    reason: format!("route {route} has no weights packed for it in this plan"),
                })
            }
        };
        let (in_image, out_image) = (c * h * wd, o * oh * ow);
        if n == 0 || out_image == 0 {
            return Ok(());
        }
        let xd = x.data();
        // Scratch comes from the caller's workspace, in whichever thread runs an image.
        let ws = Workspace::current();
        // `norm`: the image is to be normalised as the direct kernel's padded copy is
        // written (stride 1 only).
        let compute_on = |image: &[f32],
                          norm: Option<&Normalise>,
                          b: usize,
                          out: &mut [f32],
                          threads: driver::Threads|
         -> Result<()> {
            // Only the direct kernel's copies normalise; the other routes would ignore it.
            assert!(norm.is_none() || direct.is_some());
            // The epilogue of this image: its residual is the `O x (OH OW)` matrix at
            // the image's place in the residual tensor.
            let mut steps = [Epilogue::Relu; epilogue::MAX_STEPS];
            for (s, e) in steps.iter_mut().zip(epilogue) {
                *s = match *e {
                    Epilogue::Residual(Residual::Nchw(r)) => Epilogue::residual_matrix(
                        &r.data()[b * out_image..(b + 1) * out_image],
                        oh * ow,
                    ),
                    other => other,
                };
            }
            let steps = &steps[..epilogue.len()];
            if let Some((form, dw)) = direct {
                ws.scratch(Scratch::ConvPadded, |buf| {
                    direct_conv_image(
                        self.set(),
                        form,
                        image,
                        [h, wd],
                        dw,
                        p.stride,
                        p.padding,
                        [oh, ow],
                        out,
                        steps,
                        threads,
                        buf,
                        norm,
                        &ws,
                        // The next image, which this thread likely runs next.
                        xd.get((b + 1) * in_image..(b + 2) * in_image)
                            .unwrap_or(&[]),
                    )
                });
                return Ok(());
            }
            let packed = packed.expect("a GEMM route has GEMM weights");
            let run_gemm = |source: BSource, out: &mut [f32]| -> Result<()> {
                let mut c_mat = MatMut::row_major(out, o, oh * ow)?;
                driver::gemm(
                    self.set(),
                    packed,
                    &source,
                    o,
                    oh * ow,
                    &mut c_mat,
                    steps,
                    threads,
                    &ws,
                )
            };
            let s = p.stride;
            match routes.forward {
                Forward::GemmImage => {
                    run_gemm(BSource::Matrix(MatRef::row_major(image, c, h * wd)?), out)
                }
                // A strided 1x1 convolution: B is the subsampled image, `[c, oh ow]`.
                Forward::GemmSubsampled => ws.scratch(Scratch::ConvPlanes, |sub| {
                    // Every element is written below: no clearing.
                    sub.resize(c * oh * ow, 0.0);
                    let parallel = threads == driver::Threads::Auto;
                    per_channel(parallel, image, h * wd, sub, oh * ow, |_, src, dst| {
                        let rows = src.chunks(wd * s).take(oh);
                        for (row, d) in rows.zip(dst.chunks_exact_mut(ow.max(1))) {
                            d.iter_mut()
                                .zip(row.iter().step_by(s))
                                .for_each(|(d, v)| *d = *v);
                        }
                    });
                    let sub = &sub[..c * oh * ow];
                    run_gemm(BSource::Matrix(MatRef::row_major(sub, c, oh * ow)?), out)
                }),
                // im2col, packed block by block from the image's phase planes (see
                // `Im2col`), made in this thread's buffer.
                _ => {
                    let (qh, qw) = (
                        (h + 2 * p.padding).div_ceil(s),
                        (wd + 2 * p.padding).div_ceil(s),
                    );
                    ws.scratch(Scratch::ConvPlanes, |planes| {
                        // Each channel's planes are cleared (the padding) and written by
                        // one task; the margin past them only feeds over-copied runs,
                        // which are overwritten.
                        let per = s * s * qh * qw;
                        planes.resize((c * per + IM2COL_CHUNK).max(planes.len()), 0.0);
                        let parallel = threads == driver::Threads::Auto;
                        per_channel(parallel, image, h * wd, planes, per, |_, src, dst| {
                            dst.fill(0.0);
                            split_phases(self.set(), src, wd, p.padding, s, [qh, qw], dst, None);
                        });
                        let source = BSource::Im2col(Im2col {
                            planes,
                            c,
                            kh,
                            kw,
                            s,
                            qh,
                            qw,
                            ow,
                        });
                        run_gemm(source, out)
                    })
                }
            }
        };
        let compute_image = |b: usize, out: &mut [f32], threads: driver::Threads| -> Result<()> {
            let image = &xd[b * in_image..(b + 1) * in_image];
            match normalise {
                None => compute_on(image, None, b, out, threads),
                // The direct kernel's stride-1 routes normalise while padding; the others
                // read a normalised copy.
                Some(affine) if direct.is_some() && p.stride == 1 => {
                    let norm = Normalise::new(self.set(), affine);
                    compute_on(image, Some(&norm), b, out, threads)
                }
                Some(affine) => ws.scratch(Scratch::ConvNormed, |normed| {
                    normed.resize(in_image.max(normed.len()), 0.0);
                    let normed = &mut normed[..in_image];
                    normalise_image(self.set(), image, h * wd, affine, normed);
                    compute_on(normed, None, b, out, threads)
                }),
            }
        };
        // The image's output, then (if asked) each of its planes' sum and sum of squared
        // deviations about the plane's mean, while the output is still in cache.
        let (sum, sum_sq_dev) = (self.set().sum, self.set().sum_sq_dev);
        let plane = oh * ow;
        let run_image = |b: usize,
                         out: &mut [f32],
                         st: Option<&mut [[f64; 2]]>,
                         threads: driver::Threads|
         -> Result<()> {
            compute_image(b, out, threads)?;
            for (s, v) in st.into_iter().flatten().zip(out.chunks_exact(plane)) {
                *s = plane_stats(sum, sum_sq_dev, v);
            }
            Ok(())
        };
        // A batch that divides evenly over the threads (or is much larger) runs one image
        // per thread, each GEMM on its own: no barriers, no shared packed blocks. A
        // smaller batch runs image after image, each GEMM split across the threads.
        let threads = rayon::current_num_threads();
        let per_image = threads > 1 && n > 1 && (n % threads == 0 || n >= 4 * threads);
        // Each image's slots for its `o` planes' `[sum, sum of squared deviations]`, or
        // none.
        let mut planes = match sink {
            Some(_) => vec![[0.0f64; 2]; n * o],
            None => Vec::new(),
        };
        let mut slots: Vec<Option<&mut [[f64; 2]]>> = match sink {
            Some(_) => planes.chunks_mut(o).map(Some).collect(),
            None => (0..n).map(|_| None).collect(),
        };
        if per_image {
            y.data_mut()
                .par_chunks_mut(out_image)
                .zip(slots.par_iter_mut())
                .enumerate()
                .try_for_each(|(b, (out, st))| {
                    run_image(b, out, st.take(), driver::Threads::Single)
                })?;
        } else {
            let images = y.data_mut().chunks_mut(out_image);
            for (b, (out, st)) in images.zip(slots.iter_mut()).enumerate() {
                run_image(b, out, st.take(), driver::Threads::Auto)?;
            }
        }
        drop(slots);
        if let Some(sink) = sink {
            sink.set(combine_plane_stats(&planes, n, o, oh * ow));
        }
        Ok(())
    }
}

/// One output plane's `[sum, sum of squared deviations about its mean]` (in `f64`, from
/// the kernel set's `f32` sums).
fn plane_stats(
    sum: unsafe fn(*const f32, usize) -> f32,
    sum_sq_dev: unsafe fn(*const f32, usize, f32) -> f32,
    v: &[f32],
) -> [f64; 2] {
    let plane = v.len();
    // SAFETY: `v` is one in-bounds plane of `plane` floats.
    let total = unsafe { sum(v.as_ptr(), plane) };
    let a = total / plane as f32;
    let q = unsafe { sum_sq_dev(v.as_ptr(), plane, a) } as f64;
    // The deviations were taken about `a`, the f32 mean, not the exact mean `m`:
    // `sum (x - a)^2 = sum (x - m)^2 + plane (m - a)^2`.
    let (len, total) = (plane as f64, total as f64);
    let d = total / len - a as f64;
    [total, q - len * d * d]
}

/// Per-channel batch statistics from per-plane `[sum, sum of squared deviations about
/// the plane's mean]` (`planes[b * c + ch]`, `plane` elements each): Chan et al.'s
/// combination, in `f64`.
fn combine_plane_stats(planes: &[[f64; 2]], n: usize, c: usize, plane: usize) -> ChannelStats {
    let count = n * plane;
    let len = plane as f64;
    let mut mean = vec![0.0f32; c];
    let mut var = vec![0.0f32; c];
    for ch in 0..c {
        let at = |b: usize| planes[b * c + ch];
        let total: f64 = (0..n).map(|b| at(b)[0]).sum();
        let m = total / count as f64;
        let m2: f64 = (0..n)
            .map(|b| {
                let [s, q] = at(b);
                let mb = s / len;
                q + len * (mb - m) * (mb - m)
            })
            .sum();
        mean[ch] = m as f32;
        var[ch] = (m2.max(0.0) / count as f64) as f32;
    }
    ChannelStats { mean, var, count }
}
