//! Dilated convolution (PyTorch's `dilation`; torchvision's
//! `replace_stride_with_dilation` backbones) by splitting the image into phases:
//!
//! ```text
//! dilation 2: a 3x3 kernel's taps are 2 pixels apart, so output pixel (y, x) reads
//! only pixels of its own phase (y % 2, x % 2):
//!
//!   image            phase (0, 0)   phase (0, 1)   ...
//!   a b a b a b      a a a          b b b
//!   c d c d c d      a a a          b b b
//!   a b a b a b      a a a          b b b
//!   c d c d c d
//! ```
//!
//! A "same" dilated convolution (stride 1, padding `dilation (k - 1) / 2`) is therefore
//! `dilation^2` undilated "same" convolutions, one per phase of the image, each writing
//! the same phase of the output; its gradients split the same way (`dW` summed over the
//! phases). Each phase runs the undilated plan ([`ConvPlan::phase_plan`], which may be
//! grouped) through every route the ladder has, in every tier; the phases are gathered
//! into compact tensors and scattered back, a pass over the activations each way.

use super::backward::DxInto;
use super::forward::{ConvWeights, Packed};
use super::grouped::{check_split, part_steps, residual_part};
use super::ConvPlan;
use crate::backward::ConvGrads;
use crate::epilogue::{Epilogue, StatsSink};
use crate::error::Result;
use crate::kernels::{ChannelStats, Kernels};
use crate::tensor::Tensor;

/// The phase `(a, b)` of a `d x d` split of every plane: pixels `(a + i d, b + j d)`, as
/// a compact `[N, C, ceil((H - a) / d), ceil((W - b) / d)]` tensor.
fn gather(x: &Tensor, d: usize, (a, b): (usize, usize)) -> Result<Tensor> {
    let [n, c, h, w] = x.dims4("dilated conv2d")?;
    let (ph, pw) = ((h - a).div_ceil(d), (w - b).div_ceil(d));
    let mut out = Tensor::for_overwrite(&[n, c, ph, pw])?;
    if ph * pw == 0 {
        return Ok(out);
    }
    for (dst, src) in out
        .data_mut()
        .chunks_exact_mut(ph * pw)
        .zip(x.data().chunks_exact(h * w))
    {
        for (i, row) in dst.chunks_exact_mut(pw).enumerate() {
            let from = &src[(a + i * d) * w..][..w];
            for (j, v) in row.iter_mut().enumerate() {
                *v = from[b + j * d];
            }
        }
    }
    Ok(out)
}

/// Writes the compact phase `src` back to phase `(a, b)` of `dst`.
fn scatter(src: &Tensor, dst: &mut Tensor, d: usize, (a, b): (usize, usize)) -> Result<()> {
    let [_, _, ph, pw] = src.dims4("dilated conv2d")?;
    let [_, _, h, w] = dst.dims4("dilated conv2d")?;
    if ph * pw == 0 {
        return Ok(());
    }
    for (d_plane, s_plane) in dst
        .data_mut()
        .chunks_exact_mut(h * w)
        .zip(src.data().chunks_exact(ph * pw))
    {
        for (i, row) in s_plane.chunks_exact(pw).enumerate() {
            let to = &mut d_plane[(a + i * d) * w..][..w];
            for (j, v) in row.iter().enumerate() {
                to[b + j * d] = *v;
            }
        }
    }
    Ok(())
}

/// The phases of a `d x d` split of an `h x w` plane that hold pixels.
fn phases(d: usize, h: usize, w: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..d.min(h)).flat_map(move |a| (0..d.min(w)).map(move |b| (a, b)))
}

/// Per-channel statistics of the whole output from those of its phases: counts add,
/// means average by count, and each phase's variance is shifted to the whole mean (in
/// `f64`, as the Statistics step combines images).
fn combine(parts: &[ChannelStats]) -> Option<ChannelStats> {
    let first = parts.first()?;
    let total: usize = parts.iter().map(|p| p.count).sum();
    let channels = first.mean.len();
    let mut mean = vec![0.0f32; channels];
    let mut var = vec![0.0f32; channels];
    for ch in 0..channels {
        let m: f64 = parts
            .iter()
            .map(|p| p.count as f64 * p.mean[ch] as f64)
            .sum::<f64>()
            / total as f64;
        let v: f64 = parts
            .iter()
            .map(|p| {
                let dm = p.mean[ch] as f64 - m;
                p.count as f64 * (p.var[ch] as f64 + dm * dm)
            })
            .sum::<f64>()
            / total as f64;
        mean[ch] = m as f32;
        var[ch] = v as f32;
    }
    Some(ChannelStats {
        mean,
        var,
        count: total,
    })
}

impl Kernels {
    /// A dilated plan's weights: packed for its phase plan.
    pub(crate) fn pack_dilated(&self, plan: &ConvPlan, w: &Tensor) -> Result<ConvWeights> {
        self.pack_conv(&plan.phase_plan(), w)
    }

    /// The forward of a dilated plan, phase by phase, each with its part of the
    /// residual and accumulator and its batch statistics.
    pub(crate) fn dilated_conv2d(
        &self,
        x: &Tensor,
        w: &ConvWeights,
        sub: &ConvWeights,
        steps: &[Epilogue],
        y: &mut Tensor,
        normalise: Option<[&[f32]; 2]>,
    ) -> Result<()> {
        let [n, _, h, wd] = x.dims4("conv2d")?;
        let [_, o, oh, ow] = check_split(w, x, y, steps)?;
        let d = w.plan().dilation();
        debug_assert_eq!([oh, ow], [h, wd], "a 'same' convolution");
        let accumulate = steps.iter().any(|s| matches!(s, Epilogue::Accumulate));
        let mut stats = Vec::new();
        for phase in phases(d, h, wd) {
            let xp = gather(x, d, phase)?;
            let [_, _, ph, pw] = xp.dims4("conv2d")?;
            let mut yp = if accumulate {
                gather(y, d, phase)?
            } else {
                Tensor::for_overwrite(&[n, o, ph, pw])?
            };
            let residual = residual_part(steps, |r| gather(r, d, phase))?;
            let sink = StatsSink::new();
            let phase_steps = part_steps(steps, None, residual.as_ref(), &sink);
            self.conv2d_impl(&xp, sub, &phase_steps, &mut yp, normalise)?;
            scatter(&yp, y, d, phase)?;
            stats.extend(sink.take());
        }
        if let (Some(Epilogue::Statistics(sink)), Some(all)) = (steps.last(), combine(&stats)) {
            sink.set(all);
        }
        Ok(())
    }

    /// The backward of a dilated plan, phase by phase: `dX` scattered into the input's
    /// gradient (or added into the accumulator given), `dW` summed over the phases.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dilated_conv2d_backward(
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
        let [n, c, h, wd] = x.dims4(op)?;
        let [o, _, kh, kw] = w.dims4(op)?;
        plan.routes([n, c, h, wd])?;
        let [oh, ow] = plan.conv().output_size(h, wd, kh, kw)?;
        crate::backward::expect_shape(op, "dy", &[n, o, oh, ow], dy)?;
        let d = plan.dilation();
        let sub = plan.phase_plan();
        let mut acc = match dx_into {
            Some(DxInto::Add(acc)) => Some(acc),
            Some(DxInto::New) => Some(Tensor::zeros(x.shape())?),
            None | Some(DxInto::Skip) => None,
        };
        let mut dw: Option<Tensor> = None;
        for phase in phases(d, h, wd) {
            let xp = gather(x, d, phase)?;
            let dyp = gather(dy, d, phase)?;
            let into = match &acc {
                Some(a) => Some(DxInto::Add(gather(a, d, phase)?)),
                None => None,
            };
            let g = self.conv2d_backward_impl(op, &xp, w, &dyp, &sub, into, want_dw, normalise)?;
            if let (Some(a), Some(dxp)) = (&mut acc, g.dx) {
                scatter(&dxp, a, d, phase)?;
            }
            if let Some(dwp) = g.dw {
                match &mut dw {
                    Some(total) => total
                        .data_mut()
                        .iter_mut()
                        .zip(dwp.data())
                        .for_each(|(t, v)| *t += v),
                    None => dw = Some(dwp),
                }
            }
        }
        let dw = match (want_dw, dw) {
            (true, None) => Some(Tensor::zeros(w.shape())?),
            (_, dw) => dw,
        };
        Ok(ConvGrads { dx: acc, dw })
    }
}

/// `Packed::Dilated`'s weights, or `None` for an undilated plan.
pub(crate) fn dilated_weights(w: &ConvWeights) -> Option<&ConvWeights> {
    match w.packed() {
        Packed::Dilated(sub) => Some(sub),
        _ => None,
    }
}
