//! The inference form of a ResNet: batch norm folded into every convolution, weights
//! packed once, and each block's bias, residual add and ReLU fused into the GEMM
//! epilogue of its last convolution, which accumulates onto the shortcut in place.
//!
//! Activations come from a small pool of buffers kept by the model, keyed by shape: after
//! the first call with a given input shape, a forward pass allocates nothing for its
//! activations (a fresh multi-megabyte buffer per layer would be mapped and page-faulted
//! anew each time, and the whole network is ~50 layers).

use std::collections::HashMap;
use std::sync::Mutex;

use tensor::{
    fold_batch_norm, Conv2d, ConvEpilogue, ConvWeights, Kernels, LinearWeights, Pool2d, Result,
    Tensor,
};

use crate::model::{ConvBn, ResNet, Shortcut};

/// A convolution with its batch norm folded in: packed weights and a bias.
struct FusedConv {
    weights: ConvWeights,
    bias: Vec<f32>,
    params: Conv2d,
}

impl FusedConv {
    fn new(k: &Kernels, c: &ConvBn) -> Result<Self> {
        let bn = &c.bn;
        let (w, bias) = fold_batch_norm(
            &c.weight,
            None,
            bn.weight.data(),
            bn.bias.data(),
            bn.running_mean.data(),
            bn.running_var.data(),
            bn.eps,
        )?;
        Ok(FusedConv {
            weights: k.pack_conv_weights(&w)?,
            bias,
            params: Conv2d::new(c.stride, c.padding),
        })
    }

    /// `conv(x) + bias`, then, in the same pass, `+ residual` and ReLU if asked; the
    /// output comes from `pool`.
    fn run(
        &self,
        k: &Kernels,
        pool: &Pool,
        x: &Tensor,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor> {
        let mut steps = vec![ConvEpilogue::Bias(&self.bias)];
        if let Some(r) = residual {
            steps.push(ConvEpilogue::Residual(r));
        }
        if relu {
            steps.push(ConvEpilogue::Relu);
        }
        let [n, _, h, w] = x.dims4("InferenceModel")?;
        let [o, _, kh, kw] = self.weights.shape();
        let [oh, ow] = self.params.output_size(h, w, kh, kw)?;
        let mut y = pool.take(&[n, o, oh, ow])?;
        k.conv2d_into(x, &self.weights, self.params, &steps, &mut y)?;
        Ok(y)
    }
}

impl FusedConv {
    /// `relu(onto + conv(x) + bias)`, computed in `onto`'s memory (`onto` has the
    /// output's shape: a residual block's shortcut).
    fn run_onto(&self, k: &Kernels, x: &Tensor, mut onto: Tensor) -> Result<Tensor> {
        let steps = [
            ConvEpilogue::Accumulate,
            ConvEpilogue::Bias(&self.bias),
            ConvEpilogue::Relu,
        ];
        k.conv2d_into(x, &self.weights, self.params, &steps, &mut onto)?;
        Ok(onto)
    }
}

/// Spare activation tensors by shape. Every tensor taken from it is overwritten whole
/// by the operation that fills it, so stale contents never leak.
#[derive(Default)]
struct Pool {
    spare: Mutex<HashMap<Vec<usize>, Vec<Tensor>>>,
}

impl Pool {
    fn take(&self, shape: &[usize]) -> Result<Tensor> {
        let reused = self
            .spare
            .lock()
            .ok()
            .and_then(|mut m| m.get_mut(shape).and_then(Vec::pop));
        match reused {
            Some(t) => Ok(t),
            None => Tensor::zeros(shape),
        }
    }

    fn give(&self, t: Tensor) {
        if let Ok(mut m) = self.spare.lock() {
            m.entry(t.shape().to_vec()).or_default().push(t);
        }
    }
}

enum FusedShortcut {
    Identity,
    Projection(FusedConv),
    PadChannels { stride: usize, pad: usize },
}

struct FusedBlock {
    convs: Vec<FusedConv>,
    shortcut: FusedShortcut,
}

fn fuse_block(k: &Kernels, block: &crate::model::Block) -> Result<FusedBlock> {
    Ok(FusedBlock {
        convs: block
            .convs
            .iter()
            .map(|c| FusedConv::new(k, c))
            .collect::<Result<_>>()?,
        shortcut: match &block.shortcut {
            Shortcut::Identity => FusedShortcut::Identity,
            Shortcut::Projection(c) => FusedShortcut::Projection(FusedConv::new(k, c)?),
            Shortcut::PadChannels { stride, pad } => FusedShortcut::PadChannels {
                stride: *stride,
                pad: *pad,
            },
        },
    })
}

/// A ResNet ready for fast inference (see the module docs).
pub struct InferenceModel {
    kernels: Kernels,
    cifar: bool,
    stem: FusedConv,
    stages: Vec<Vec<FusedBlock>>,
    fc: LinearWeights,
    fc_bias: Vec<f32>,
    pool: Pool,
}

impl InferenceModel {
    /// Folds and packs `model` for the given kernels (`Kernels::active()?` normally).
    ///
    /// The folded copies are freed as they are packed, not kept for recycling (see
    /// `tensor::pool::bypass`): no later tensor has their sizes.
    pub fn new(model: &ResNet, kernels: Kernels) -> Result<Self> {
        tensor::pool::bypass(|| Self::new_unpooled(model, kernels))
    }

    fn new_unpooled(model: &ResNet, kernels: Kernels) -> Result<Self> {
        let k = &kernels;
        let stages = model
            .stages
            .iter()
            .map(|stage| {
                stage
                    .iter()
                    .map(|b| fuse_block(k, b))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Self::assemble(model, kernels, stages)
    }

    /// Like [`InferenceModel::new`], but consumes the model and frees each block's
    /// unfused weights as soon as the block is folded, so the two forms never coexist
    /// whole (for ResNet-50 that is 102 MB of peak memory saved).
    pub fn from_model(model: ResNet, kernels: Kernels) -> Result<Self> {
        tensor::pool::bypass(|| Self::from_model_unpooled(model, kernels))
    }

    fn from_model_unpooled(mut model: ResNet, kernels: Kernels) -> Result<Self> {
        let k = &kernels;
        let mut stages = Vec::with_capacity(model.stages.len());
        for stage in std::mem::take(&mut model.stages) {
            let mut fused = Vec::with_capacity(stage.len());
            for block in stage {
                fused.push(fuse_block(k, &block)?);
                drop(block);
            }
            stages.push(fused);
        }
        Self::assemble(&model, kernels, stages)
    }

    fn assemble(model: &ResNet, kernels: Kernels, stages: Vec<Vec<FusedBlock>>) -> Result<Self> {
        let k = &kernels;
        Ok(InferenceModel {
            kernels,
            cifar: model.arch.is_cifar(),
            stem: FusedConv::new(k, &model.stem)?,
            stages,
            fc: k.pack_linear_weights(&model.fc_weight)?,
            fc_bias: model.fc_bias.data().to_vec(),
            pool: Pool::default(),
        })
    }

    /// The pooled feature vector of each image, `[N, feature_dim]` (2048 for
    /// ResNet-50, 512 for ResNet-18, 64 for the CIFAR nets), for an NCHW RGB batch.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        self.features_observed(x, &mut |_, _| {})
    }

    /// The output of each stage for an NCHW batch, named as torchvision's modules:
    /// `stem` (after the max pool, where there is one), `layer1`..`layer4` (`layer3`
    /// for the CIFAR nets), `features` (pooled) and `logits`. For comparing with
    /// another implementation layer by layer; slower than [`InferenceModel::forward`]
    /// by the copies.
    pub fn forward_stages(&self, x: &Tensor) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        let f =
            self.features_observed(x, &mut |name, t| out.push((name.to_string(), t.clone())))?;
        let logits = self.kernels.linear(&f, &self.fc, Some(&self.fc_bias))?;
        out.push(("features".into(), f));
        out.push(("logits".into(), logits));
        Ok(out)
    }

    fn features_observed(
        &self,
        x: &Tensor,
        observe: &mut dyn FnMut(&str, &Tensor),
    ) -> Result<Tensor> {
        let (k, pool) = (&self.kernels, &self.pool);
        let mut h = self.stem.run(k, pool, x, None, true)?;
        if !self.cifar {
            let [n, c, hh, ww] = h.dims4("InferenceModel")?;
            let [oh, ow] = Pool2d::RESNET_STEM.output_size(hh, ww)?;
            let mut pooled = pool.take(&[n, c, oh, ow])?;
            k.max_pool2d_into(&h, &Pool2d::RESNET_STEM, &mut pooled)?;
            pool.give(std::mem::replace(&mut h, pooled));
        }
        observe("stem", &h);
        for (s, block) in self
            .stages
            .iter()
            .enumerate()
            .flat_map(|(s, st)| st.iter().map(move |b| (s, b)))
        {
            let shortcut = match &block.shortcut {
                FusedShortcut::Identity => None,
                FusedShortcut::Projection(c) => Some(c.run(k, pool, &h, None, false)?),
                FusedShortcut::PadChannels { stride, pad } => {
                    Some(autograd::pad_channels_forward(&h, *stride, *pad)?)
                }
            };
            let (last, inner) =
                block
                    .convs
                    .split_last()
                    .ok_or_else(|| tensor::TensorError::InvalidArgument {
                        op: "InferenceModel::features",
                        reason: "a residual block without convolutions".into(),
                    })?;
            let mut y: Option<Tensor> = None;
            for c in inner {
                let next = c.run(k, pool, y.as_ref().unwrap_or(&h), None, true)?;
                if let Some(old) = y.replace(next) {
                    pool.give(old);
                }
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
                            pool.give(std::mem::replace(&mut h, out));
                        }
                        None => {
                            let input = std::mem::replace(&mut h, Tensor::zeros(&[0])?);
                            h = last.run_onto(k, &inner_out, input)?;
                        }
                    }
                    pool.give(inner_out);
                }
                // A block of one convolution reads its input, so cannot overwrite it.
                None => {
                    let residual = shortcut.as_ref().unwrap_or(&h);
                    let out = last.run(k, pool, &h, Some(residual), true)?;
                    if let Some(t) = shortcut {
                        pool.give(t);
                    }
                    pool.give(std::mem::replace(&mut h, out));
                }
            }
            if std::ptr::eq(block, self.stages[s].last().unwrap_or(block)) {
                observe(&format!("layer{}", s + 1), &h);
            }
        }
        let f = k.global_avg_pool(&h);
        pool.give(h);
        f
    }

    /// Class logits, `[N, num_classes]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let f = self.features(x)?;
        self.kernels.linear(&f, &self.fc, Some(&self.fc_bias))
    }
}
