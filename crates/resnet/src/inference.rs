//! The inference form of a ResNet: batch norm folded into every convolution, weights
//! packed once, and each block's bias, residual add and ReLU fused into the epilogue of
//! its last convolution.
//!
//! Two layouts ([`ConvLayout`]): the ImageNet nets run in the blocked channel layout
//! (`tensor::BlockedTensor`: after the stem, which runs in NCHW, its pooled output is
//! converted once, and every later convolution and pooling runs in the layout), the
//! CIFAR nets (whose option-A shortcuts pad channels) in NCHW, where the last
//! convolution of a block accumulates onto the shortcut in place.
//!
//! Activations come from a small cache of buffers kept by the model, keyed by shape: after
//! the first call with a given input shape, a forward pass allocates nothing for its
//! activations (a fresh multi-megabyte buffer per layer would be mapped and page-faulted
//! anew each time, and the whole network is ~50 layers). The kernels' scratch and any
//! other large tensor come from the model's own [`Workspace`] ([`InferenceModel::workspace`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tensor::{
    fold_batch_norm_into, AvgPool2d, BlockedTensor, ConvWeights, Epilogue, Kernels, LinearWeights,
    Mode, Pool2d, Result, Tensor, TensorError, Workspace,
};

use crate::model::{ConvBn, ResNet, Shortcut};

/// The memory layout an [`InferenceModel`] runs in: `Nchw` (activations `[N][C][H][W]`,
/// convolutions by the NCHW routes of the plan) or `Blocked` (the blocked channel
/// layout of `tensor::BlockedTensor`, no packing per call; needs projection or identity
/// shortcuts, as the ImageNet nets have).
pub use tensor::Layout as ConvLayout;

/// How an [`InferenceModel`] plans its convolutions ([`InferenceModel::with_options`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InferenceOptions {
    /// The layout; `None`: [`InferenceModel::default_layout`]'s.
    pub layout: Option<ConvLayout>,
    /// Whether 3x3, stride-1 layers may run by Winograd F(4x4, 3x3) where the plan's
    /// ladder measured it faster (`tensor::ConvPlan::with_winograd`; blocked layout
    /// only). On by default; off keeps every output a plain sum of products, with the
    /// direct kernel's rounding (Winograd's error is a few times larger, still far
    /// below PyTorch's equivalence tolerances: `docs/convolution.md`).
    pub winograd: bool,
    /// The image size (rows, columns) the model is planned for: the routes whose speed
    /// depends on the image are chosen for it (`tensor::ConvPlan::with_planned_input`:
    /// Winograd for the 256-channel 3x3 layers of Wide ResNet-50-2 and -101-2, whose
    /// 28 x 28 planes pay for their transformed weights). Any size still runs, on the
    /// routes chosen. 224 x 224 by default.
    pub image_size: [usize; 2],
    /// The most memory, in bytes, the model may spend on Winograd's transformed weights
    /// beyond what the direct kernel's weights of the same layers take, for the layers
    /// where Winograd is faster but costs more memory than it saves
    /// (`tensor::ConvPlan::with_winograd_memory`: the 256-channel 3x3 layers at 14 x 14,
    /// 7.1 MB more each), before [`InferenceOptions::winograd_memory_per_image`] adds to
    /// it ([`InferenceOptions::winograd_budget`]). All such layers of the network or
    /// none: ResNet-18's three (21 MB) fit the default, 24 MiB, and run it at 0.86-0.90
    /// of the time at batch 1; ResNet-50's five (35 MB) would take its batch-1 peak RSS
    /// from 135-140 MB to 170 MB for 0.92-0.95 of the time, and do not at batch 1.
    pub winograd_memory: usize,
    /// What each image of the planned [`InferenceOptions::batch`] adds to the Winograd
    /// budget, in bytes: 2 MiB by default, about a tenth of what each image adds to
    /// ResNet-50's activations (peak RSS 135-140 MB at batch 1, 440 MB at batch 16).
    /// A model planned for batch 5 or more thus runs ResNet-50's 256-channel layers by
    /// Winograd (at batch 16, 0.91-0.92 of the time for 35 MB on a 440 MB process).
    pub winograd_memory_per_image: usize,
    /// The batch the model is planned for: 1 by default. Only the Winograd budget
    /// depends on it; any batch still runs.
    pub batch: usize,
}

impl InferenceOptions {
    /// The default options for a model that will run batches of `batch` images.
    pub fn for_batch(batch: usize) -> Self {
        InferenceOptions {
            batch,
            ..Default::default()
        }
    }

    /// The bytes the model may spend on Winograd's transformed weights where they cost
    /// memory: [`InferenceOptions::winograd_memory`] plus
    /// [`InferenceOptions::winograd_memory_per_image`] for each image of the planned
    /// batch (at least one).
    pub fn winograd_budget(&self) -> usize {
        self.winograd_memory_per_image
            .saturating_mul(self.batch.max(1))
            .saturating_add(self.winograd_memory)
    }
}

impl Default for InferenceOptions {
    fn default() -> Self {
        InferenceOptions {
            layout: None,
            winograd: true,
            image_size: [224, 224],
            winograd_memory: 24 << 20,
            winograd_memory_per_image: 2 << 20,
            batch: 1,
        }
    }
}

/// The layout and options every convolution of one model is planned with, and the
/// input size of the layer at hand, where known.
#[derive(Debug, Clone, Copy)]
struct Planning {
    layout: ConvLayout,
    winograd: bool,
    /// `tensor::ConvPlan::with_winograd_memory` for every layer.
    winograd_memory: bool,
    planned: Option<[usize; 2]>,
}

impl Planning {
    /// The stems' (7x7 and 3-channel layers, which Winograd does not run).
    const NCHW: Planning = Planning {
        layout: ConvLayout::Nchw,
        winograd: false,
        winograd_memory: false,
        planned: None,
    };

    /// The same for a layer planned for an input of `hw`.
    fn at(self, hw: Option<[usize; 2]>) -> Planning {
        Planning {
            planned: hw,
            ..self
        }
    }
}

/// A convolution with its batch norm folded in: weights packed for the layer's plan,
/// and a bias.
struct FusedConv {
    weights: ConvWeights,
    bias: Vec<f32>,
}

impl FusedConv {
    /// The layer folded (on a copy of its weights) and packed.
    fn new(k: &Kernels, c: &ConvBn, p: Planning) -> Result<Self> {
        Self::from_owned(k, c.clone(), p)
    }

    /// [`FusedConv::new`] on a layer given up: its weights are folded in place and
    /// freed once packed, so at most one layer exists twice while a model is built.
    fn from_owned(k: &Kernels, c: ConvBn, p: Planning) -> Result<Self> {
        let mut plan = c
            .plan(k, Mode::Inference, p.layout)?
            .with_winograd(p.winograd)
            .with_winograd_memory(p.winograd_memory);
        if let Some([h, w]) = p.planned {
            plan = plan.with_planned_input(h, w);
        }
        let ConvBn { weight, bn, .. } = c;
        let (w, bias) = fold_batch_norm_into(
            weight,
            None,
            bn.weight.data(),
            bn.bias.data(),
            bn.running_mean.data(),
            bn.running_var.data(),
            bn.eps,
        )?;
        Ok(FusedConv {
            weights: k.pack_conv(&plan, &w)?,
            bias,
        })
    }

    /// The output's NCHW shape for an input of `shape`.
    fn output_shape(&self, [n, _, h, w]: [usize; 4]) -> Result<[usize; 4]> {
        let [o, _, kh, kw] = self.weights.shape();
        let [oh, ow] = self.weights.plan().conv().output_size(h, w, kh, kw)?;
        Ok([n, o, oh, ow])
    }

    /// `conv(x) + bias`, then, in the same pass, `+ residual` and ReLU if asked; the
    /// output comes from `cache`.
    fn run(
        &self,
        k: &Kernels,
        cache: &ActivationCache<Tensor>,
        x: &Tensor,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor> {
        let mut steps = vec![Epilogue::Bias(&self.bias)];
        if let Some(r) = residual {
            steps.push(Epilogue::residual(r));
        }
        if relu {
            steps.push(Epilogue::Relu);
        }
        let shape = self.output_shape(x.dims4("InferenceModel")?)?;
        let mut y = cache.take(&shape, || Tensor::zeros(&shape))?;
        k.conv2d_into(x, &self.weights, &steps, &mut y)?;
        Ok(y)
    }

    /// The blocked layout's [`FusedConv::run`].
    fn run_blocked(
        &self,
        k: &Kernels,
        cache: &ActivationCache<BlockedTensor>,
        x: &BlockedTensor,
        residual: Option<&BlockedTensor>,
        relu: bool,
    ) -> Result<BlockedTensor> {
        let shape = self.output_shape(x.shape())?;
        let mut y = cache.take(&shape, || BlockedTensor::zeros(k, shape))?;
        let mut steps = vec![Epilogue::Bias(&self.bias)];
        if let Some(r) = residual {
            steps.push(Epilogue::residual_blocked(r));
        }
        if relu {
            steps.push(Epilogue::Relu);
        }
        k.blocked_conv2d_into(x, &self.weights, &steps, &mut y)?;
        Ok(y)
    }

    /// [`FusedConv::run_onto`] in the blocked layout.
    fn run_blocked_onto(
        &self,
        k: &Kernels,
        x: &BlockedTensor,
        mut onto: BlockedTensor,
    ) -> Result<BlockedTensor> {
        let steps = [
            Epilogue::Accumulate,
            Epilogue::Bias(&self.bias),
            Epilogue::Relu,
        ];
        k.blocked_conv2d_into(x, &self.weights, &steps, &mut onto)?;
        Ok(onto)
    }

    /// `relu(onto + conv(x) + bias)`, computed in `onto`'s memory (`onto` has the
    /// output's shape: a residual block's shortcut).
    fn run_onto(&self, k: &Kernels, x: &Tensor, mut onto: Tensor) -> Result<Tensor> {
        let steps = [
            Epilogue::Accumulate,
            Epilogue::Bias(&self.bias),
            Epilogue::Relu,
        ];
        k.conv2d_into(x, &self.weights, &steps, &mut onto)?;
        Ok(onto)
    }
}

fn wrong_layout() -> TensorError {
    TensorError::InvalidArgument {
        op: "InferenceModel",
        reason: "a channel-padding shortcut in the blocked layout".into(),
    }
}

/// Spare activation tensors by shape. Every tensor taken from it is overwritten whole
/// by the operation that fills it, so stale contents never leak.
struct ActivationCache<T> {
    spare: Mutex<HashMap<[usize; 4], Vec<T>>>,
}

impl<T> Default for ActivationCache<T> {
    fn default() -> Self {
        ActivationCache {
            spare: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> ActivationCache<T> {
    fn take(&self, shape: &[usize; 4], make: impl FnOnce() -> Result<T>) -> Result<T> {
        let reused = self
            .spare
            .lock()
            .ok()
            .and_then(|mut m| m.get_mut(shape).and_then(Vec::pop));
        match reused {
            Some(t) => Ok(t),
            None => make(),
        }
    }

    /// Keeps `t` for reuse, unless `MAX_SPARE` of its shape are kept already: then it is
    /// dropped. A forward pass never holds more than a few activations of one shape at
    /// once, so the bound costs no reuse; without it, a tensor made outside the cache
    /// and given to it every pass (the channel-padding shortcut's output did that) grew
    /// the cache by one tensor per forward, without end.
    fn give(&self, shape: [usize; 4], t: T) {
        const MAX_SPARE: usize = 4;
        if let Ok(mut m) = self.spare.lock() {
            let list = m.entry(shape).or_default();
            if list.len() < MAX_SPARE {
                list.push(t);
            }
        }
    }
}

impl ActivationCache<Tensor> {
    fn give_tensor(&self, t: Tensor) {
        if let Ok(shape) = t.dims4("cache") {
            self.give(shape, t);
        }
    }
}

impl ActivationCache<BlockedTensor> {
    fn give_blocked(&self, t: BlockedTensor) {
        self.give(t.shape(), t);
    }
}

enum FusedShortcut {
    Identity,
    Projection(FusedConv),
    /// ResNet-D's: average pooling (none at stride 1), then the projection.
    AvgProjection {
        pool: Option<AvgPool2d>,
        conv: FusedConv,
    },
    PadChannels {
        stride: usize,
        pad: usize,
    },
}

impl FusedShortcut {
    /// Its module's name in a block (its convolution's, as torchvision and timm name
    /// them), for a profiled pass's step.
    fn module(&self) -> &'static str {
        match self {
            FusedShortcut::Identity => "identity",
            FusedShortcut::Projection(_) => "downsample.0",
            FusedShortcut::AvgProjection { .. } => "downsample.1",
            FusedShortcut::PadChannels { .. } => "shortcut (channels padded)",
        }
    }

    /// The shortcut of `h` in NCHW, `None` for the identity.
    fn run(
        &self,
        k: &Kernels,
        cache: &ActivationCache<Tensor>,
        h: &Tensor,
    ) -> Result<Option<Tensor>> {
        Ok(match self {
            FusedShortcut::Identity => None,
            FusedShortcut::Projection(c) => Some(c.run(k, cache, h, None, false)?),
            FusedShortcut::AvgProjection { pool: None, conv } => {
                Some(conv.run(k, cache, h, None, false)?)
            }
            FusedShortcut::AvgProjection {
                pool: Some(p),
                conv,
            } => {
                let [n, c, hh, ww] = h.dims4("InferenceModel")?;
                let [oh, ow] = p.output_size(hh, ww)?;
                let shape = [n, c, oh, ow];
                let mut pooled = cache.take(&shape, || Tensor::zeros(&shape))?;
                k.avg_pool2d_into(h, p, &mut pooled)?;
                let out = conv.run(k, cache, &pooled, None, false)?;
                cache.give_tensor(pooled);
                Some(out)
            }
            FusedShortcut::PadChannels { stride, pad } => Some(k.pad_channels(h, *stride, *pad)?),
        })
    }

    /// The shortcut of `h` in the blocked layout, `None` for the identity.
    fn run_blocked(
        &self,
        k: &Kernels,
        cache: &ActivationCache<BlockedTensor>,
        h: &BlockedTensor,
    ) -> Result<Option<BlockedTensor>> {
        Ok(match self {
            FusedShortcut::Identity => None,
            FusedShortcut::Projection(c)
            | FusedShortcut::AvgProjection {
                pool: None,
                conv: c,
            } => Some(c.run_blocked(k, cache, h, None, false)?),
            FusedShortcut::AvgProjection {
                pool: Some(p),
                conv,
            } => {
                let [n, c, hh, ww] = h.shape();
                let [oh, ow] = p.output_size(hh, ww)?;
                let shape = [n, c, oh, ow];
                let mut pooled = cache.take(&shape, || BlockedTensor::zeros(k, shape))?;
                k.blocked_avg_pool2d_into(h, p, &mut pooled)?;
                let out = conv.run_blocked(k, cache, &pooled, None, false)?;
                cache.give_blocked(pooled);
                Some(out)
            }
            FusedShortcut::PadChannels { .. } => return Err(wrong_layout()),
        })
    }
}

/// The input size of every residual block of `model`, in order, for an image of
/// `[h, w]` (none at all where the image is too small for the network).
fn block_inputs(model: &ResNet, [h, w]: [usize; 2]) -> Vec<Option<[usize; 2]>> {
    let channels = model.stem.weight.shape().get(1).copied().unwrap_or(3);
    match model.conv_layers([1, channels, h, w]) {
        Ok(layers) => layers
            .iter()
            .filter(|l| !l.in_stem && l.name.ends_with(".conv1"))
            .map(|l| Some([l.input[2], l.input[3]]))
            .collect(),
        Err(_) => Vec::new(),
    }
}

struct FusedBlock {
    convs: Vec<FusedConv>,
    shortcut: FusedShortcut,
}

/// The block folded and packed, layer by layer, each layer's weights freed once packed
/// (see [`FusedConv::from_owned`]), each planned for its input size when the block's,
/// `input`, is known.
fn fuse_block_owned(
    k: &Kernels,
    block: crate::model::Block,
    layout: Planning,
    input: Option<[usize; 2]>,
) -> Result<FusedBlock> {
    let crate::model::Block { convs, shortcut } = block;
    let shortcut = match shortcut {
        Shortcut::Identity => FusedShortcut::Identity,
        Shortcut::Projection(c) => {
            FusedShortcut::Projection(FusedConv::from_owned(k, *c, layout.at(input))?)
        }
        Shortcut::AvgProjection { pool, conv } => {
            let pooled = match (pool, input) {
                (Some(p), Some([h, w])) => p.output_size(h, w).ok(),
                (None, hw) => hw,
                (Some(_), None) => None,
            };
            FusedShortcut::AvgProjection {
                pool,
                conv: FusedConv::from_owned(k, *conv, layout.at(pooled))?,
            }
        }
        Shortcut::PadChannels { stride, pad } => FusedShortcut::PadChannels { stride, pad },
    };
    // Each convolution's input: the block's, then each one's output.
    let mut hw = input;
    let mut fused = Vec::with_capacity(convs.len());
    for c in convs {
        let next = match (hw, c.weight.dims4("fuse_block")) {
            (Some([h, w]), Ok([_, _, kh, kw])) => c.conv().output_size(h, w, kh, kw).ok(),
            _ => None,
        };
        fused.push(FusedConv::from_owned(k, c, layout.at(hw))?);
        hw = next;
    }
    Ok(FusedBlock {
        convs: fused,
        shortcut,
    })
}

/// A ResNet ready for fast inference (see the module docs).
pub struct InferenceModel {
    kernels: Kernels,
    cifar: bool,
    layout: ConvLayout,
    /// ResNet-D's first two stem convolutions (each with ReLU), else empty; in NCHW.
    deep_stem: Vec<FusedConv>,
    /// Run in NCHW in both layouts: its plan keeps an input of fewer channels than a
    /// block out of the blocked layout (see `features_blocked`).
    stem: FusedConv,
    stages: Vec<Vec<FusedBlock>>,
    fc: LinearWeights,
    fc_bias: Vec<f32>,
    cache: ActivationCache<Tensor>,
    blocked_cache: ActivationCache<BlockedTensor>,
    /// The scratch and recycled buffers its kernels reuse (see [`InferenceModel::workspace`]).
    workspace: Workspace,
}

/// What a forward pass reports of its stages (`forward_stages`), or nothing.
type Observer<'a> = Option<&'a mut dyn FnMut(&str, &Tensor)>;

/// Where a profiled forward pass (`forward_profiled`) records the time of each of its
/// steps: from the end of the step before (so that the steps add up to the pass,
/// buffer bookkeeping included) to the end of this one. Unprofiled, it does nothing.
struct Laps<'a> {
    sink: Option<&'a mut Vec<(String, Duration)>>,
    last: Instant,
}

impl<'a> Laps<'a> {
    fn new(sink: Option<&'a mut Vec<(String, Duration)>>) -> Self {
        Laps {
            sink,
            last: Instant::now(),
        }
    }

    /// Ends the step `name` names (built only when profiling).
    fn lap(&mut self, name: impl FnOnce() -> String) {
        if let Some(sink) = self.sink.as_mut() {
            let now = Instant::now();
            sink.push((name(), now - self.last));
            self.last = now;
        }
    }
}

impl InferenceModel {
    /// Folds and packs `model` for the given kernels (`Kernels::active()?` normally), in
    /// the layout [`InferenceModel::default_layout`] picks for its architecture.
    ///
    /// The folded copies are freed as they are packed, not kept for recycling (see
    /// `tensor::workspace::bypass`): no later tensor has their sizes.
    pub fn new(model: &ResNet, kernels: Kernels) -> Result<Self> {
        Self::new_with_layout(model, kernels, Self::default_layout(model))
    }

    /// [`InferenceModel::new`] in a chosen layout (an error for `Blocked` with the CIFAR
    /// nets' channel-padding shortcuts).
    pub fn new_with_layout(model: &ResNet, kernels: Kernels, layout: ConvLayout) -> Result<Self> {
        let options = InferenceOptions {
            layout: Some(layout),
            ..InferenceOptions::default()
        };
        Self::new_with_options(model, kernels, options)
    }

    /// [`InferenceModel::new`] with [`InferenceOptions`].
    pub fn new_with_options(
        model: &ResNet,
        kernels: Kernels,
        options: InferenceOptions,
    ) -> Result<Self> {
        let layout = Self::planning(&kernels, model, options);
        check_layout(model, layout.layout)?;
        tensor::workspace::bypass(|| {
            let k = &kernels;
            // Each layer planned for its input at the planned image size, as
            // `with_options` plans them, so both build the same model.
            let mut inputs = block_inputs(model, options.image_size).into_iter();
            let stages = model
                .stages
                .iter()
                .map(|stage| {
                    stage
                        .iter()
                        .map(|b| fuse_block_owned(k, b.clone(), layout, inputs.next().flatten()))
                        .collect::<Result<Vec<_>>>()
                })
                .collect::<Result<Vec<_>>>()?;
            Self::assemble(model, kernels, stages, layout.layout)
        })
    }

    /// Like [`InferenceModel::new`], but consumes the model and frees each block's
    /// unfused weights as soon as the block is folded, so the two forms never coexist
    /// whole (for ResNet-50 that is 102 MB of peak memory saved).
    pub fn from_model(model: ResNet, kernels: Kernels) -> Result<Self> {
        let layout = Self::default_layout(&model);
        Self::from_model_with_layout(model, kernels, layout)
    }

    /// [`InferenceModel::from_model`] in a chosen layout.
    pub fn from_model_with_layout(
        model: ResNet,
        kernels: Kernels,
        layout: ConvLayout,
    ) -> Result<Self> {
        let options = InferenceOptions {
            layout: Some(layout),
            ..InferenceOptions::default()
        };
        Self::with_options(model, kernels, options)
    }

    /// [`InferenceModel::from_model`] with [`InferenceOptions`]: the layout, and whether
    /// Winograd may run.
    pub fn with_options(
        mut model: ResNet,
        kernels: Kernels,
        options: InferenceOptions,
    ) -> Result<Self> {
        let layout = Self::planning(&kernels, &model, options);
        check_layout(&model, layout.layout)?;
        tensor::workspace::bypass(|| {
            let k = &kernels;
            // Layer by layer, each folded in place and freed once packed; the head first,
            // then the blocks from the last (the largest) back, so that each packing
            // fits in memory just freed (ResNet-50 at batch 1: 135.6 MB resident after
            // building when blocks were folded by copy in forward order, 117.9 MB in
            // this order, 2026-12-05).
            let fc = k.pack_linear_weights(&model.fc_weight)?;
            model.fc_weight = Tensor::zeros(&[0])?;
            // Each block's input size at the planned image size (none where the image is
            // too small for the network: then no layer is planned for a size).
            let mut inputs = block_inputs(&model, options.image_size).into_iter();
            let mut per_stage: Vec<Vec<Option<[usize; 2]>>> = model
                .stages
                .iter()
                .map(|s| s.iter().map(|_| inputs.next().flatten()).collect())
                .collect();
            let mut stages: Vec<Vec<FusedBlock>> = Vec::with_capacity(model.stages.len());
            for stage in std::mem::take(&mut model.stages).into_iter().rev() {
                // (As many sizes as the stage has blocks: `per_stage` was made from it.)
                let sizes = per_stage.pop().unwrap_or_default();
                let mut fused = stage
                    .into_iter()
                    .zip(sizes)
                    .rev()
                    .map(|(block, hw)| fuse_block_owned(k, block, layout, hw))
                    .collect::<Result<Vec<_>>>()?;
                fused.reverse();
                stages.push(fused);
            }
            stages.reverse();
            Self::assemble_with(&model, kernels, stages, layout.layout, fc)
        })
    }

    /// The layout a model runs fastest in: blocked for the ImageNet nets (ResNet-50's
    /// convolutions at batch 1, 2 threads, 0.85x the NCHW time, `docs/convolution.md`),
    /// NCHW for the CIFAR nets, whose channel-padding shortcuts the blocked path does
    /// not have. ResNeXt's grouped convolutions and the dilated backbones' dilated ones
    /// run in it too (`blocked-narrow-groups`, and the blocked kernel reading dilated taps).
    pub fn default_layout(model: &ResNet) -> ConvLayout {
        if model.arch.is_cifar() {
            ConvLayout::Nchw
        } else {
            ConvLayout::Blocked
        }
    }

    fn planning(k: &Kernels, model: &ResNet, options: InferenceOptions) -> Planning {
        let layout = options
            .layout
            .unwrap_or_else(|| Self::default_layout(model));
        Planning {
            layout,
            winograd: options.winograd,
            winograd_memory: Self::winograd_memory_spent(k, model, options).is_some(),
            planned: None,
        }
    }

    /// What a model built from `model` with `options` spends on Winograd's transformed
    /// weights beyond the direct kernel's weights: `Some(bytes)`
    /// ([`InferenceModel::winograd_memory_needed`], 0 where no layer would change) when
    /// Winograd is on and that fits [`InferenceOptions::winograd_budget`], and the layers
    /// then run by Winograd; `None` when they do not.
    pub fn winograd_memory_spent(
        k: &Kernels,
        model: &ResNet,
        options: InferenceOptions,
    ) -> Option<usize> {
        let layout = options
            .layout
            .unwrap_or_else(|| Self::default_layout(model));
        Self::winograd_memory_needed(k, model, layout, options.image_size)
            .filter(|&bytes| options.winograd && bytes <= options.winograd_budget())
    }

    /// The memory (bytes) the model's layers would spend on Winograd's transformed
    /// weights beyond the direct kernel's weights if its plans spent memory for speed
    /// (`tensor::ConvPlan::with_winograd_memory`), planned for `image_size` images in
    /// `layout`: the sum over the layers whose route that changes to Winograd of
    /// `27 c o` floats (36 transformed weights a channel pair instead of 9); `None`
    /// where the network's layers cannot be listed for that size.
    /// [`InferenceOptions::winograd_budget`] bounds it.
    pub fn winograd_memory_needed(
        k: &Kernels,
        model: &ResNet,
        layout: ConvLayout,
        image_size: [usize; 2],
    ) -> Option<usize> {
        let [h, w] = image_size;
        let channels = model.stem.weight.shape().get(1).copied().unwrap_or(3);
        let layers = model.conv_layers([1, channels, h, w]).ok()?;
        let mut bytes = 0;
        for layer in layers.iter().filter(|l| !l.in_stem) {
            let [_, _, ih, iw] = layer.input;
            let Ok(plan) = layer.conv.plan(k, Mode::Inference, layout) else {
                continue;
            };
            let lean = plan.with_planned_input(ih, iw);
            let spending = lean.with_winograd_memory(true);
            let route = |p: tensor::ConvPlan| p.routes(layer.input).ok().map(|r| r.forward);
            if route(lean) != route(spending) {
                let [o, c, _, _] = lean.weights_shape();
                bytes += 27 * c * o * std::mem::size_of::<f32>();
            }
        }
        Some(bytes)
    }

    /// The layout this model runs in.
    pub fn layout(&self) -> ConvLayout {
        self.layout
    }

    /// The memory this model's kernels reuse between calls: each worker thread's scratch
    /// (padded images, packed panels) and recycled large tensors. Its own, not shared with
    /// other models; bound it with [`Workspace::set_limit`] (a smaller bound costs speed,
    /// not correctness), free it between bursts of work with [`Workspace::release`].
    /// The activations of one forward pass are kept apart, in a cache of one buffer per
    /// activation shape, and freed with the model.
    pub fn workspace(&self) -> &Workspace {
        &self.workspace
    }

    fn assemble(
        model: &ResNet,
        kernels: Kernels,
        stages: Vec<Vec<FusedBlock>>,
        layout: ConvLayout,
    ) -> Result<Self> {
        let fc = kernels.pack_linear_weights(&model.fc_weight)?;
        Self::assemble_with(model, kernels, stages, layout, fc)
    }

    /// [`InferenceModel::assemble`] with the head already packed.
    fn assemble_with(
        model: &ResNet,
        kernels: Kernels,
        stages: Vec<Vec<FusedBlock>>,
        layout: ConvLayout,
        fc: tensor::LinearWeights,
    ) -> Result<Self> {
        let k = &kernels;
        Ok(InferenceModel {
            kernels,
            cifar: model.arch.is_cifar(),
            layout,
            // The deep stem runs in NCHW, as the stem does (see `features_blocked`).
            deep_stem: model
                .deep_stem
                .iter()
                .map(|c| FusedConv::new(k, c, Planning::NCHW))
                .collect::<Result<_>>()?,
            stem: FusedConv::new(k, &model.stem, Planning::NCHW)?,
            stages,
            fc,
            fc_bias: model.fc_bias.data().to_vec(),
            cache: ActivationCache::default(),
            blocked_cache: ActivationCache::default(),
            workspace: Workspace::new(),
        })
    }

    /// The pooled feature vector of each image, `[N, feature_dim]` (2048 for
    /// ResNet-50, 512 for ResNet-18, 64 for the CIFAR nets), for an NCHW RGB batch.
    ///
    /// Like [`crate::train_step`], it runs on one of rayon's worker threads
    /// (`rayon::scope` moves it there when called from outside the pool), so that its
    /// parallel kernels start from inside the pool rather than each being handed over
    /// and waited for (batch 1 on 1 thread: 0.93-0.97 of the time for ResNet-18 and
    /// ResNet-50, in process and by `resnet bench model`; on 2 threads no change).
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        rayon::scope(|_| {
            self.workspace
                .run(|| self.features_observed(x, None, &mut Laps::new(None)))
        })
    }

    /// The output of each stage for an NCHW batch, named as torchvision's modules:
    /// `stem` (after the max pool, where there is one), `layer1`..`layer4` (`layer3`
    /// for the CIFAR nets), `features` (pooled) and `logits`. For comparing with
    /// another implementation layer by layer; slower than [`InferenceModel::forward`]
    /// by the copies.
    pub fn forward_stages(&self, x: &Tensor) -> Result<Vec<(String, Tensor)>> {
        self.workspace.run(|| {
            let mut out = Vec::new();
            let f = self.features_observed(
                x,
                Some(&mut |name: &str, t: &Tensor| out.push((name.to_string(), t.clone()))),
                &mut Laps::new(None),
            )?;
            let logits = self.kernels.linear(&f, &self.fc, Some(&self.fc_bias))?;
            out.push(("features".into(), f));
            out.push(("logits".into(), logits));
            Ok(out)
        })
    }

    fn features_observed(&self, x: &Tensor, observe: Observer, laps: &mut Laps) -> Result<Tensor> {
        match self.layout {
            ConvLayout::Nchw => self.features_nchw(x, observe, laps),
            ConvLayout::Blocked => self.features_blocked(x, observe, laps),
        }
    }

    /// The stem (convolution, folded batch norm, ReLU) in NCHW, then, for the ImageNet
    /// nets, the max pool; the output comes from the NCHW cache.
    fn stem_nchw(&self, x: &Tensor, laps: &mut Laps) -> Result<Tensor> {
        let (k, cache) = (&self.kernels, &self.cache);
        let mut deep: Option<Tensor> = None;
        for c in &self.deep_stem {
            let next = c.run(k, cache, deep.as_ref().unwrap_or(x), None, true)?;
            if let Some(old) = deep.replace(next) {
                cache.give_tensor(old);
            }
        }
        let h = self
            .stem
            .run(k, cache, deep.as_ref().unwrap_or(x), None, true)?;
        if let Some(t) = deep {
            cache.give_tensor(t);
        }
        laps.lap(|| STEM_LAP.into());
        if self.cifar {
            return Ok(h);
        }
        let [n, c, hh, ww] = h.dims4("InferenceModel")?;
        let [oh, ow] = Pool2d::RESNET_STEM.output_size(hh, ww)?;
        let shape = [n, c, oh, ow];
        let mut pooled = cache.take(&shape, || Tensor::zeros(&shape))?;
        k.max_pool2d_into(&h, &Pool2d::RESNET_STEM, &mut pooled)?;
        cache.give_tensor(h);
        laps.lap(|| "maxpool".into());
        Ok(pooled)
    }

    fn features_nchw(&self, x: &Tensor, mut observe: Observer, laps: &mut Laps) -> Result<Tensor> {
        let (k, cache) = (&self.kernels, &self.cache);
        let mut h = self.stem_nchw(x, laps)?;
        if let Some(o) = observe.as_mut() {
            o("stem", &h);
        }
        for (s, b, block) in self.blocks() {
            let shortcut = block.shortcut.run(k, cache, &h)?;
            if shortcut.is_some() {
                laps.lap(|| block_step(s, b, block.shortcut.module()));
            }
            let (last, inner) = split_block(block)?;
            let mut y: Option<Tensor> = None;
            for (i, c) in inner.iter().enumerate() {
                let next = c.run(k, cache, y.as_ref().unwrap_or(&h), None, true)?;
                if let Some(old) = y.replace(next) {
                    cache.give_tensor(old);
                }
                laps.lap(|| block_step(s, b, &format!("conv{}", i + 1)));
            }
            match y {
                // The block's output is written over its shortcut (the block input itself
                // for an identity), each element right after it is read: no fresh
                // buffer, whose first touch would miss the caches. In-process A/B on
                // ResNet-50 at batch 1, 2 threads: best of 40 forwards 2-4% faster in
                // five runs out of five.
                Some(inner_out) => {
                    match shortcut {
                        Some(sc) => {
                            let out = last.run_onto(k, &inner_out, sc)?;
                            cache.give_tensor(std::mem::replace(&mut h, out));
                        }
                        None => {
                            let input = std::mem::replace(&mut h, Tensor::zeros(&[0])?);
                            h = last.run_onto(k, &inner_out, input)?;
                        }
                    }
                    cache.give_tensor(inner_out);
                }
                // A block of one convolution reads its input, so cannot overwrite it.
                None => {
                    let residual = shortcut.as_ref().unwrap_or(&h);
                    let out = last.run(k, cache, &h, Some(residual), true)?;
                    if let Some(t) = shortcut {
                        cache.give_tensor(t);
                    }
                    cache.give_tensor(std::mem::replace(&mut h, out));
                }
            }
            laps.lap(|| block_step(s, b, &format!("conv{}", block.convs.len())));
            if let Some(o) = observe.as_mut().filter(|_| self.ends_stage(s, block)) {
                o(&format!("layer{}", s + 1), &h);
            }
        }
        let f = k.global_avg_pool(&h);
        cache.give_tensor(h);
        laps.lap(|| "avgpool".into());
        f
    }

    /// The forward pass in the blocked layout: the stem and its max pool in NCHW, their
    /// output converted once, every later convolution (bias, residual and ReLU in its
    /// epilogue) in the layout, and the global average pool reading it.
    fn features_blocked(
        &self,
        x: &Tensor,
        mut observe: Observer,
        laps: &mut Laps,
    ) -> Result<Tensor> {
        let (k, cache) = (&self.kernels, &self.blocked_cache);
        // The stem in NCHW, by the direct kernel, and its pooled output converted: the
        // blocked layout would hold the three input channels in 16-lane blocks, and
        // the stem's output before the pool, four times the pooled size. In process,
        // alternating forwards (2 threads, batch 1, best of 40): ResNet-18 0.93-0.96 of
        // the time, ResNet-50 0.96-0.99; on 1 thread 0.96 and 0.995.
        let stem = self.stem_nchw(x, laps)?;
        if let Some(o) = observe.as_mut() {
            o("stem", &stem);
        }
        let shape = stem.dims4("InferenceModel")?;
        let mut h = cache.take(&shape, || BlockedTensor::zeros(k, shape))?;
        k.to_blocked_into(&stem, &mut h)?;
        self.cache.give_tensor(stem);
        laps.lap(|| "to blocked layout".into());
        for (s, b, block) in self.blocks() {
            let shortcut = block.shortcut.run_blocked(k, cache, &h)?;
            if shortcut.is_some() {
                laps.lap(|| block_step(s, b, block.shortcut.module()));
            }
            let (last, inner) = split_block(block)?;
            let mut y: Option<BlockedTensor> = None;
            for (i, c) in inner.iter().enumerate() {
                let next = c.run_blocked(k, cache, y.as_ref().unwrap_or(&h), None, true)?;
                if let Some(old) = y.replace(next) {
                    cache.give_blocked(old);
                }
                laps.lap(|| block_step(s, b, &format!("conv{}", i + 1)));
            }
            // The last convolution sums onto the shortcut in its memory (the identity,
            // which nothing reads after it, or the projection's output): the residual
            // is read where the output goes, and no fresh buffer is written.
            h = match (y, shortcut) {
                (Some(x_last), Some(onto)) => {
                    let out = last.run_blocked_onto(k, &x_last, onto)?;
                    cache.give_blocked(x_last);
                    cache.give_blocked(h);
                    out
                }
                (Some(x_last), None) => {
                    let out = last.run_blocked_onto(k, &x_last, h)?;
                    cache.give_blocked(x_last);
                    out
                }
                // (A block of one convolution: it reads the identity it adds.)
                (None, shortcut) => {
                    let residual = shortcut.as_ref().unwrap_or(&h);
                    let out = last.run_blocked(k, cache, &h, Some(residual), true)?;
                    for t in shortcut.into_iter().chain([h]) {
                        cache.give_blocked(t);
                    }
                    out
                }
            };
            laps.lap(|| block_step(s, b, &format!("conv{}", block.convs.len())));
            if let Some(o) = observe.as_mut().filter(|_| self.ends_stage(s, block)) {
                o(&format!("layer{}", s + 1), &k.from_blocked(&h)?);
            }
        }
        let f = k.blocked_global_avg_pool(&h);
        cache.give_blocked(h);
        laps.lap(|| "avgpool".into());
        f
    }

    /// Every residual block with its stage's index and its index in the stage.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize, &FusedBlock)> {
        self.stages
            .iter()
            .enumerate()
            .flat_map(|(s, st)| st.iter().enumerate().map(move |(b, block)| (s, b, block)))
    }

    fn ends_stage(&self, s: usize, block: &FusedBlock) -> bool {
        self.stages[s]
            .last()
            .is_some_and(|l| std::ptr::eq(l, block))
    }

    /// Class logits, `[N, num_classes]`. On a rayon worker, as
    /// [`InferenceModel::features`].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        rayon::scope(|_| {
            self.workspace.run(|| {
                let f = self.features_observed(x, None, &mut Laps::new(None))?;
                self.kernels.linear(&f, &self.fc, Some(&self.fc_bias))
            })
        })
    }

    /// [`InferenceModel::forward`], timing each of its steps inside the network, in
    /// order: the stem's convolution (`conv1`, with its batch norm and ReLU) and max pool
    /// (`maxpool`, none in the CIFAR nets), the conversion to the blocked layout,
    /// every convolution by its torchvision name (a block's shortcut projection first,
    /// as it runs; the last convolution's time includes the residual add and ReLU it
    /// fuses), the global pool and the classifier (`fc`). Each step is timed from the
    /// end of the one before, so the steps add up to the whole pass. For finding what a
    /// layer costs in the network, with its weights and input where the layer before
    /// left them, against the same layer timed alone (`resnet bench conv`).
    pub fn forward_profiled(&self, x: &Tensor) -> Result<(Tensor, Vec<(String, Duration)>)> {
        rayon::scope(|_| {
            self.workspace.run(|| {
                let mut steps = Vec::new();
                let mut laps = Laps::new(Some(&mut steps));
                let f = self.features_observed(x, None, &mut laps)?;
                let logits = self.kernels.linear(&f, &self.fc, Some(&self.fc_bias))?;
                laps.lap(|| "fc".into());
                Ok((logits, steps))
            })
        })
    }
}

/// The stem's convolutions' step in a profiled forward pass (torchvision's `conv1`;
/// ResNet-D's three, timm's `conv1.0`, `conv1.3`, `conv1.6`, together), its max pool
/// the next (`maxpool`).
const STEM_LAP: &str = "conv1";

/// A block's step named as torchvision names its module (`layer3.2.conv2`).
fn block_step(stage: usize, block: usize, module: &str) -> String {
    format!("layer{}.{block}.{module}", stage + 1)
}

/// A block's last convolution and the ones before it.
fn split_block(block: &FusedBlock) -> Result<(&FusedConv, &[FusedConv])> {
    block
        .convs
        .split_last()
        .ok_or_else(|| TensorError::InvalidArgument {
            op: "InferenceModel::features",
            reason: "a residual block without convolutions".into(),
        })
}

/// The blocked layout has no channel-padding (option-A) shortcut.
fn check_layout(model: &ResNet, layout: ConvLayout) -> Result<()> {
    let pads = model
        .stages
        .iter()
        .flatten()
        .any(|b| matches!(b.shortcut, Shortcut::PadChannels { .. }));
    if layout == ConvLayout::Blocked && pads {
        return Err(TensorError::InvalidArgument {
            op: "InferenceModel",
            reason: format!(
                "{} has channel-padding shortcuts, which the blocked layout does not \
                 implement: use ConvLayout::Nchw",
                model.arch
            ),
        });
    }
    Ok(())
}

/// The `k` largest classes of one row of logits, as `(class, softmax probability)`, best
/// first (the probabilities are computed in `f64` from the max-shifted logits).
pub fn top_k(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let total: f64 = logits.iter().map(|&v| ((v - m) as f64).exp()).sum();
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    idx.into_iter()
        .take(k)
        .map(|i| (i, (((logits[i] - m) as f64).exp() / total) as f32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Arch;

    /// The planning a model gets spends Winograd's memory by the options' batch:
    /// ResNet-50's 256-channel layers (35 MB) not at batch 1, at batch 16; never with
    /// Winograd off or with a fixed budget below their cost.
    #[test]
    fn winograd_memory_follows_the_planned_batch() {
        let k = Kernels::active().unwrap();
        let model = ResNet::new(Arch::ResNet50, 10, 0).unwrap();
        let spends = |o: InferenceOptions| InferenceModel::planning(&k, &model, o).winograd_memory;
        assert!(!spends(InferenceOptions::default()));
        assert!(!spends(InferenceOptions::for_batch(4)));
        assert!(spends(InferenceOptions::for_batch(16)));
        assert!(!spends(InferenceOptions {
            winograd: false,
            ..InferenceOptions::for_batch(16)
        }));
        assert!(!spends(InferenceOptions {
            winograd_memory_per_image: 0,
            ..InferenceOptions::for_batch(16)
        }));
    }

    /// A profiled pass gives the unprofiled pass's logits bit for bit, and one step per
    /// convolution (each by its torchvision name, once) besides the stem, the layout
    /// conversion, the pool and the classifier, in both layouts.
    #[test]
    fn profiled_forward_names_every_layer_once() {
        let k = Kernels::active().unwrap();
        for (arch, size) in [(Arch::ResNet18, 64), (Arch::Cifar { depth: 20 }, 32)] {
            let model = ResNet::new(arch, 10, 3).unwrap();
            let convs: Vec<String> = model
                .conv_layers([2, 3, size, size])
                .unwrap()
                .into_iter()
                .filter(|l| !l.in_stem)
                .map(|l| l.name)
                .collect();
            let fast = InferenceModel::new(&model, k).unwrap();
            let x = Tensor::randn(&[2, 3, size, size], 0.0, 1.0, 5).unwrap();
            let (logits, steps) = fast.forward_profiled(&x).unwrap();
            assert_eq!(logits.data(), fast.forward(&x).unwrap().data(), "{arch}");
            let names: Vec<&str> = steps.iter().map(|s| s.0.as_str()).collect();
            let blocked = fast.layout() == ConvLayout::Blocked;
            let fixed: &[&str] = match blocked {
                true => &["conv1", "maxpool", "to blocked layout", "avgpool", "fc"],
                false => &["conv1", "avgpool", "fc"],
            };
            // The CIFAR nets' option-A shortcuts pad channels: steps, not convolutions.
            let padded = names
                .iter()
                .filter(|n| n.ends_with("(channels padded)"))
                .count();
            assert_eq!(padded, if blocked { 0 } else { 2 }, "{arch}: {names:?}");
            assert_eq!(
                names.len(),
                convs.len() + fixed.len() + padded,
                "{arch}: {names:?}"
            );
            assert_eq!(names[0], "conv1");
            assert_eq!(&names[names.len() - 2..], ["avgpool", "fc"]);
            for c in &convs {
                assert_eq!(names.iter().filter(|n| *n == c).count(), 1, "{arch}: {c}");
            }
        }
    }
}
