//! Grouped convolution (PyTorch's `groups`; ResNeXt's 3x3 layers) by its definition:
//! group `g` of the output is a dense convolution of group `g` of the input, so a
//! grouped plan runs its dense group plan ([`ConvPlan::group_plan`]) once per group,
//! on that group's channels, through every route the ladder has (forward, `dX` and
//! `dW`, in every tier).
//!
//! In NCHW a group's channels of one image are consecutive, but not across the batch:
//! each group's input (and, for the epilogue, its residual or accumulator) is gathered
//! into a compact `[N, C / groups, H, W]` tensor, and its output scattered back. The
//! copies cost a pass over the activations per layer; the arithmetic is the dense
//! routes', at the group's shape (for ResNeXt-50's `32 x 4d` layers, 4 to 32 channels a
//! group: small GEMMs and direct tiles, which is why this route is not fast yet; see
//! `docs/convolution.md`).

use super::backward::DxInto;
use super::forward::{ConvWeights, Packed};
use super::ConvPlan;
use crate::backward::ConvGrads;
use crate::epilogue::{self, Epilogue, Output, Residual, StatsSink};
use crate::error::{Result, TensorError};
use crate::kernels::{ChannelStats, Kernels};
use crate::tensor::Tensor;

/// Channels `start..start + count` of every image of an NCHW tensor, as a compact
/// `[N, count, H, W]` tensor.
fn gather(x: &Tensor, start: usize, count: usize) -> Result<Tensor> {
    let [n, c, h, w] = x.dims4("grouped conv2d")?;
    let plane = h * w;
    let mut out = Tensor::for_overwrite(&[n, count, h, w])?;
    if plane * count == 0 {
        return Ok(out);
    }
    for (dst, src) in out
        .data_mut()
        .chunks_exact_mut(count * plane)
        .zip(x.data().chunks_exact(c * plane))
    {
        dst.copy_from_slice(&src[start * plane..(start + count) * plane]);
    }
    Ok(out)
}

/// Writes the compact `[N, count, H, W]` `src` into channels `start..start + count` of
/// every image of `dst`.
fn scatter(src: &Tensor, dst: &mut Tensor, start: usize) -> Result<()> {
    let [_, count, h, w] = src.dims4("grouped conv2d")?;
    let [_, c, _, _] = dst.dims4("grouped conv2d")?;
    let plane = h * w;
    if plane * count == 0 {
        return Ok(());
    }
    for (d, s) in dst
        .data_mut()
        .chunks_exact_mut(c * plane)
        .zip(src.data().chunks_exact(count * plane))
    {
        d[start * plane..(start + count) * plane].copy_from_slice(s);
    }
    Ok(())
}

/// The rows of group `g` of OIHW weights `w` (`O / groups` output channels each), as a
/// tensor of their own.
fn group_weights(w: &Tensor, g: usize, groups: usize) -> Result<Tensor> {
    let [o, c, kh, kw] = w.dims4("grouped conv2d")?;
    let og = o / groups;
    let len = og * c * kh * kw;
    Tensor::from_vec(&[og, c, kh, kw], w.data()[g * len..(g + 1) * len].to_vec())
}

/// `[scale, shift]` of a group's input channels.
fn affine_of(affine: Option<[&[f32]; 2]>, g: usize, cg: usize) -> Option<[&[f32]; 2]> {
    affine.map(|[s, t]| [&s[g * cg..(g + 1) * cg], &t[g * cg..(g + 1) * cg]])
}

impl Kernels {
    /// Each group's weights packed for the group plan.
    pub(crate) fn pack_grouped(&self, plan: &ConvPlan, w: &Tensor) -> Result<Vec<ConvWeights>> {
        let groups = plan.groups();
        let sub = plan.group_plan();
        (0..groups)
            .map(|g| self.pack_conv(&sub, &group_weights(w, g, groups)?))
            .collect()
    }

    /// The forward of a grouped plan: each group's dense convolution on its channels,
    /// with its part of the epilogue (bias, residual and accumulator, batch statistics)
    /// and of the input's normalisation.
    pub(crate) fn grouped_conv2d(
        &self,
        x: &Tensor,
        w: &ConvWeights,
        subs: &[ConvWeights],
        steps: &[Epilogue],
        y: &mut Tensor,
        normalise: Option<[&[f32]; 2]>,
    ) -> Result<()> {
        let [n, c, _, _] = x.dims4("conv2d")?;
        let [_, o, oh, ow] = check_split(w, x, y, steps)?;
        let groups = subs.len();
        let (cg, og) = (c / groups, o / groups);
        let accumulate = steps.iter().any(|s| matches!(s, Epilogue::Accumulate));
        let mut stats: Option<ChannelStats> = None;
        for (g, sub) in subs.iter().enumerate() {
            let xg = gather(x, g * cg, cg)?;
            let mut yg = if accumulate {
                gather(y, g * og, og)?
            } else {
                Tensor::for_overwrite(&[n, og, oh, ow])?
            };
            let residual = residual_part(steps, |r| gather(r, g * og, og))?;
            let sink = StatsSink::new();
            let group_steps =
                part_steps(steps, Some(g * og..(g + 1) * og), residual.as_ref(), &sink);
            self.conv2d_impl_dense(&xg, sub, &group_steps, &mut yg, affine_of(normalise, g, cg))?;
            scatter(&yg, y, g * og)?;
            if let Some(part) = sink.take() {
                let all = stats.get_or_insert_with(|| ChannelStats {
                    mean: Vec::with_capacity(o),
                    var: Vec::with_capacity(o),
                    count: part.count,
                });
                all.mean.extend(part.mean);
                all.var.extend(part.var);
            }
        }
        if let (Some(Epilogue::Statistics(sink)), Some(stats)) = (steps.last(), stats) {
            sink.set(stats);
        }
        Ok(())
    }

    /// The backward of a grouped plan: each group's dense backward on its channels;
    /// `dX` scattered into the whole input's gradient (or added into the accumulator
    /// given), `dW` as the groups' rows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn grouped_conv2d_backward(
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
        let [o, wc, kh, kw] = w.dims4(op)?;
        if [o, wc, kh, kw] != plan.weights_shape() {
            return Err(TensorError::ShapeMismatch {
                op,
                arg: "w",
                expected: plan.weights_shape().to_vec(),
                got: w.shape().to_vec(),
            });
        }
        plan.routes([n, c, h, wd])?;
        let groups = plan.groups();
        let [oh, ow] = plan.conv().output_size(h, wd, kh, kw)?;
        crate::backward::expect_shape(op, "dy", &[n, o, oh, ow], dy)?;
        let (cg, og) = (c / groups, o / groups);
        let sub = plan.group_plan();
        let mut dx = match &dx_into {
            None | Some(DxInto::Skip) => None,
            Some(DxInto::Add(_)) => None,
            Some(DxInto::New) => Some(Tensor::for_overwrite(x.shape())?),
        };
        let mut acc = match dx_into {
            Some(DxInto::Add(acc)) => Some(acc),
            _ => None,
        };
        let want_dx = dx.is_some() || acc.is_some();
        let mut dw = want_dw
            .then(|| Tensor::for_overwrite(w.shape()))
            .transpose()?;
        for g in 0..groups {
            let xg = gather(x, g * cg, cg)?;
            let dyg = gather(dy, g * og, og)?;
            let wg = group_weights(w, g, groups)?;
            let into = match &acc {
                Some(a) => Some(DxInto::Add(gather(a, g * cg, cg)?)),
                None if want_dx => Some(DxInto::New),
                None => None,
            };
            let grads = self.conv2d_backward_dense(
                op,
                &xg,
                &wg,
                &dyg,
                &sub,
                into,
                want_dw,
                affine_of(normalise, g, cg),
            )?;
            if let Some(dxg) = grads.dx {
                match (&mut acc, &mut dx) {
                    (Some(a), _) => scatter(&dxg, a, g * cg)?,
                    (None, Some(d)) => scatter(&dxg, d, g * cg)?,
                    (None, None) => {}
                }
            }
            if let (Some(dw), Some(dwg)) = (&mut dw, grads.dw) {
                let len = dwg.len();
                dw.data_mut()[g * len..(g + 1) * len].copy_from_slice(dwg.data());
            }
        }
        Ok(ConvGrads { dx: acc.or(dx), dw })
    }
}

/// The checks a convolution split into parts (groups, phases) makes before it runs
/// them: the plan takes `x`, `y` has the output's shape, the epilogue fits it. Returns
/// the output's shape.
pub(crate) fn check_split(
    w: &ConvWeights,
    x: &Tensor,
    y: &Tensor,
    steps: &[Epilogue],
) -> Result<[usize; 4]> {
    let [n, c, h, wd] = x.dims4("conv2d")?;
    w.plan().routes([n, c, h, wd])?;
    let [o, _, kh, kw] = w.shape();
    let [oh, ow] = w.plan().conv().output_size(h, wd, kh, kw)?;
    let out_shape = [n, o, oh, ow];
    if y.shape() != out_shape {
        return Err(TensorError::ShapeMismatch {
            op: "conv2d_into",
            arg: "y",
            expected: out_shape.to_vec(),
            got: y.shape().to_vec(),
        });
    }
    epilogue::check("conv2d", steps, Output::Nchw(&out_shape))?;
    Ok(out_shape)
}

/// A part's share of the epilogue's residual, cut out by `part` (the caller keeps it
/// alive for the part's steps).
pub(crate) fn residual_part(
    steps: &[Epilogue],
    part: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Option<Tensor>> {
    steps
        .iter()
        .find_map(|s| match s {
            Epilogue::Residual(Residual::Nchw(r)) => Some(part(r)),
            _ => None,
        })
        .transpose()
}

/// A part's epilogue: the bias cut to `bias` (its channels; `None`: all of them), the
/// residual replaced by the part's (`residual_part`), the statistics gathered into the
/// part's own sink; the other steps as they are.
pub(crate) fn part_steps<'a>(
    steps: &[Epilogue<'a>],
    bias: Option<std::ops::Range<usize>>,
    residual: Option<&'a Tensor>,
    sink: &'a StatsSink,
) -> Vec<Epilogue<'a>> {
    steps
        .iter()
        .map(|s| match *s {
            Epilogue::Bias(b) => Epilogue::Bias(bias.clone().map_or(b, |r| &b[r])),
            Epilogue::Residual(Residual::Nchw(_)) => {
                Epilogue::residual(residual.expect("the part's residual, cut out for this step"))
            }
            Epilogue::Statistics(_) => Epilogue::Statistics(sink),
            other => other,
        })
        .collect()
}

/// `Packed::Grouped`'s weights, or `None` for a dense plan.
pub(crate) fn grouped_weights(w: &ConvWeights) -> Option<&[ConvWeights]> {
    match w.packed() {
        Packed::Grouped(subs) => Some(subs),
        _ => None,
    }
}
