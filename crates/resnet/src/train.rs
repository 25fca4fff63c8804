//! The training form of a ResNet: its forward pass recorded on an autograd [`Tape`],
//! the running-statistics update batch norm makes in training mode, and freezing for
//! transfer learning.
//!
//! ```
//! use autograd::{Sgd, SgdConfig};
//! use resnet::{train_step, Arch, Freeze, ResNet};
//! use tensor::{Kernels, Tensor};
//!
//! let mut model = ResNet::new(Arch::Cifar { depth: 20 }, 10, 1)?;
//! let config = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 5e-4, ..Default::default() };
//! let mut sgd = Sgd::new(config, model.parameters_mut().len())?;
//! let x = Tensor::randn(&[4, 3, 32, 32], 0.0, 1.0, 2)?;
//! let step = train_step(&mut model, &mut sgd, Kernels::active()?, x, &[0, 1, 2, 3], Freeze::None, 0.0)?;
//! assert!(step.loss.is_finite());
//! # Ok::<(), tensor::TensorError>(())
//! ```

use std::time::{Duration, Instant};

use autograd::{Tape, Var};
use tensor::{ChannelStats, Pool2d, Result, Tensor, TensorError};

use crate::model::{ConvBn, ResNet, Shortcut};

/// Which parameters train (the rest are frozen: no gradients, and their batch norms use
/// the running statistics, as in eval mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freeze {
    /// Everything trains.
    None,
    /// Only the head (`fc`) trains.
    Backbone,
    /// The last stage and the head train.
    AllButLastStage,
}

impl std::fmt::Display for Freeze {
    /// `none`, `backbone` or `all-but-last-stage`, as the CLI and checkpoints name it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Freeze::None => "none",
            Freeze::Backbone => "backbone",
            Freeze::AllButLastStage => "all-but-last-stage",
        })
    }
}

impl std::str::FromStr for Freeze {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Freeze::None),
            "backbone" => Ok(Freeze::Backbone),
            "all-but-last-stage" => Ok(Freeze::AllButLastStage),
            other => Err(format!(
                "unknown freeze policy {other:?}: expected none, backbone or all-but-last-stage"
            )),
        }
    }
}

/// What [`ResNet::forward_train`] recorded.
pub struct TrainForward {
    /// `[N, classes]`.
    pub logits: Var,
    /// `[N, features]`, the pooled embedding before the head.
    pub features: Var,
    /// One entry per trainable parameter, in [`ResNet::parameters_mut`] order: its
    /// variable on the tape, or `None` when frozen.
    pub params: Vec<Option<Var>>,
    /// The batch statistics of every training-mode batch norm, in model order (frozen
    /// batch norms, which use their running statistics, are absent); hand them to
    /// [`ResNet::update_running_stats`] after the step.
    pub batch_stats: Vec<BatchStats>,
}

/// One batch norm's statistics from a training forward pass.
#[derive(Debug, Clone)]
pub struct BatchStats {
    /// The batch norm's index in model order (stem first, then each block's convs, then
    /// its projection).
    pub index: usize,
    /// The batch's per-channel mean and biased variance, and the number of values per
    /// channel (`N * H * W`) they were taken over.
    pub stats: ChannelStats,
}

/// Walks the forward pass, recording on the tape.
struct Recorder<'t, 'p> {
    tape: &'t mut Tape<'p>,
    params: Vec<Option<Var>>,
    batch_stats: Vec<BatchStats>,
    bn_index: usize,
}

impl<'p> Recorder<'_, 'p> {
    fn leaf(&mut self, t: &'p Tensor, train: bool) -> Var {
        if train {
            let v = self.tape.param(t);
            self.params.push(Some(v));
            v
        } else {
            self.params.push(None);
            self.tape.constant(t)
        }
    }

    /// `conv -> bn (-> relu)`, its parameters registered in `parameters_mut` order
    /// (conv weight, bn weight, bn bias). In training the batch norm uses the batch's
    /// statistics (and the tape may fold it into the op that reads it, see
    /// [`Tape::batch_norm`]); frozen, its running statistics.
    fn conv_bn(&mut self, x: Var, c: &'p ConvBn, train: bool, relu: bool) -> Result<Var> {
        let w = self.leaf(&c.weight, train);
        let gamma = self.leaf(&c.bn.weight, train);
        let beta = self.leaf(&c.bn.bias, train);
        let h = self.tape.conv2d(x, w, c.conv())?;
        let index = self.bn_index;
        self.bn_index += 1;
        if train {
            let (y, stats) = self.tape.batch_norm(h, gamma, beta, c.bn.eps, relu)?;
            self.batch_stats.push(BatchStats { index, stats });
            Ok(y)
        } else {
            self.tape.batch_norm_fixed(
                h,
                gamma,
                beta,
                c.bn.running_mean.data(),
                c.bn.running_var.data(),
                c.bn.eps,
                relu,
            )
        }
    }
}

impl ResNet {
    /// The trainable parameters under their torchvision keys, in [`ResNet::named_tensors`]
    /// order with the running statistics left out: the order of
    /// [`TrainForward::params`] and of an optimizer's state.
    pub fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        self.named_tensors_mut()
            .into_iter()
            .filter(|(name, _)| !is_buffer(name))
            .collect()
    }

    /// Records a training forward pass of the batch `x` (`[N, 3, H, W]`) on `tape`.
    /// Batch norms of trainable parts use batch statistics (training mode); frozen parts
    /// run as in eval mode.
    pub fn forward_train<'p>(
        &'p self,
        tape: &mut Tape<'p>,
        x: Tensor,
        freeze: Freeze,
    ) -> Result<TrainForward> {
        let [_, c, _, _] = x.dims4("forward_train")?;
        if c != 3 {
            return Err(TensorError::InvalidArgument {
                op: "forward_train",
                reason: format!("expected 3 input channels (RGB), got {c}"),
            });
        }
        let last = self.stages.len().saturating_sub(1);
        let trains_stage = |s: usize| match freeze {
            Freeze::None => true,
            Freeze::Backbone => false,
            Freeze::AllButLastStage => s == last,
        };
        let mut r = Recorder {
            tape,
            params: Vec::new(),
            batch_stats: Vec::new(),
            bn_index: 0,
        };
        let input = r.tape.input(x);
        let mut h = input;
        for c in &self.deep_stem {
            h = r.conv_bn(h, c, freeze == Freeze::None, true)?;
        }
        let mut h = r.conv_bn(h, &self.stem, freeze == Freeze::None, true)?;
        if !self.arch.is_cifar() {
            h = r.tape.max_pool2d(h, Pool2d::RESNET_STEM)?;
        }
        for (s, stage) in self.stages.iter().enumerate() {
            let train = trains_stage(s);
            for block in stage {
                let x = h;
                let Some((last, inner)) = block.convs.split_last() else {
                    continue;
                };
                // ReLU after every conv-bn but the last, which joins the shortcut.
                let mut y = x;
                for c in inner {
                    y = r.conv_bn(y, c, train, true)?;
                }
                let y = r.conv_bn(y, last, train, false)?;
                let shortcut = match &block.shortcut {
                    Shortcut::Projection(c) => r.conv_bn(x, c, train, false)?,
                    Shortcut::AvgProjection { pool, conv } => {
                        let pooled = match pool {
                            Some(p) => r.tape.avg_pool2d(x, *p)?,
                            None => x,
                        };
                        r.conv_bn(pooled, conv, train, false)?
                    }
                    Shortcut::Identity => x,
                    Shortcut::PadChannels { stride, pad } => {
                        r.tape.pad_channels(x, *stride, *pad)?
                    }
                };
                h = r.tape.add(y, shortcut, true)?;
            }
        }
        let features = r.tape.global_avg_pool(h)?;
        let fc_w = r.leaf(&self.fc_weight, true);
        let fc_b = r.leaf(&self.fc_bias, true);
        let logits = r.tape.linear(features, fc_w, fc_b)?;
        Ok(TrainForward {
            logits,
            features,
            params: r.params,
            batch_stats: r.batch_stats,
        })
    }

    /// Every batch norm in model order (the order of [`BatchStats::index`]).
    fn batch_norms_mut(&mut self) -> Vec<&mut crate::model::BatchNorm> {
        let mut out: Vec<_> = self.deep_stem.iter_mut().map(|c| &mut c.bn).collect();
        out.push(&mut self.stem.bn);
        for block in self.stages.iter_mut().flatten() {
            for c in block.convs.iter_mut() {
                out.push(&mut c.bn);
            }
            if let Some(c) = block.shortcut.projection_mut() {
                out.push(&mut c.bn);
            }
        }
        out
    }

    /// Folds a training step's batch statistics into the running statistics, as
    /// PyTorch does: `running = (1 - momentum) running + momentum batch`, with the
    /// unbiased variance (`var * M / (M - 1)`) for `running_var`.
    pub fn update_running_stats(&mut self, stats: &[BatchStats]) -> Result<()> {
        let mut bns = self.batch_norms_mut();
        for s in stats {
            let count = bns.len();
            let bn = bns
                .get_mut(s.index)
                .ok_or_else(|| TensorError::InvalidArgument {
                    op: "update_running_stats",
                    reason: format!("batch norm {} of {count}", s.index),
                })?;
            let c = bn.running_mean.len();
            for (arg, got) in [
                ("batch mean", &s.stats.mean),
                ("batch variance", &s.stats.var),
            ] {
                if got.len() != c {
                    return Err(TensorError::ShapeMismatch {
                        op: "update_running_stats",
                        arg,
                        expected: vec![c],
                        got: vec![got.len()],
                    });
                }
            }
            let m = bn.momentum;
            let unbias = if s.stats.count > 1 {
                s.stats.count as f32 / (s.stats.count - 1) as f32
            } else {
                1.0
            };
            for (r, &v) in bn.running_mean.data_mut().iter_mut().zip(&s.stats.mean) {
                *r = (1.0 - m) * *r + m * v;
            }
            for (r, &v) in bn.running_var.data_mut().iter_mut().zip(&s.stats.var) {
                *r = (1.0 - m) * *r + m * v * unbias;
            }
        }
        Ok(())
    }

    /// Replaces the head with a freshly initialised one for `num_classes` classes
    /// (PyTorch's `nn.Linear` initialisation), for fine-tuning on a new task.
    pub fn replace_head(&mut self, num_classes: usize, seed: u64) -> Result<()> {
        let features = self.fc_weight.shape()[1];
        let bound = 1.0 / (features as f32).sqrt();
        self.fc_weight = Tensor::rand_uniform(&[num_classes, features], -bound, bound, seed)?;
        self.fc_bias = Tensor::rand_uniform(&[num_classes], -bound, bound, seed ^ 1)?;
        Ok(())
    }
}

/// Whether a torchvision key names a buffer (running statistics) rather than a
/// parameter.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// The limit of the workspace a training loop should run its steps in
/// ([`crate::trainer::Trainer`]'s, `resnet bench train`'s): 4 GiB, a bound, not an
/// amount held. A workspace keeps a step's activation and gradient buffers for the next
/// step only up to its limit; past it they go back to the allocator, and the next step
/// maps (and page-faults) them afresh. ResNet-50 at 224 x 224, batch 8, keeps 570 MB of
/// activations: 2 threads, AMD Zen 4, 2026-12-06, two runs each, ms a step and peak RSS
/// with a limit of 512 MiB (the default) 1081-1099 ms and 1145-1161 MB, 1 GiB 1055-1077
/// and 1043-1066, 2 GiB 1053-1060 and 1044 (`docs/benchmarks.md`); ResNet-18 at batch 16
/// and ResNet-20 at batch 128, whose steps fit in 512 MiB, are unchanged.
pub const TRAINING_WORKSPACE_LIMIT: usize = 4 << 30;

/// What one training step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// The mean loss over the batch (before the update).
    pub loss: f32,
    /// Examples whose highest logit was the target's class.
    pub correct: usize,
}

/// One SGD step on a batch: forward on a tape, cross-entropy loss (with label
/// smoothing `smoothing`), backward, running statistics, optimizer update.
///
/// The step runs on one of rayon's worker threads (`rayon::scope` moves it there when
/// called from outside the pool), so its many parallel kernels are started from inside
/// the pool instead of each being handed over from the calling thread and waited for
/// (in-process A/B, ResNet-20 at batch 128: on 1 thread 0.77 and 0.82 of the time, best
/// of 15 and 10 steps; on 2 threads no change, 0.95-1.07).
///
/// It runs in the calling thread's [`tensor::Workspace`] (the trainer's own, under
/// [`crate::trainer::Trainer`]; [`tensor::Workspace::global`] if the caller names none).
/// A loop of steps runs fastest in a workspace whose limit holds a step's buffers:
/// `Workspace::with_limit(TRAINING_WORKSPACE_LIMIT).run(|| ...)`
/// ([`TRAINING_WORKSPACE_LIMIT`]).
pub fn train_step(
    model: &mut ResNet,
    sgd: &mut autograd::Sgd,
    kernels: tensor::Kernels,
    x: Tensor,
    targets: &[usize],
    freeze: Freeze,
    smoothing: f32,
) -> Result<StepOutcome> {
    // The scope's body may run on another thread: it runs in the caller's workspace.
    let ws = tensor::Workspace::current();
    rayon::scope(|_| {
        let how = How {
            freeze,
            smoothing,
            profile: false,
        };
        ws.run(|| train_step_here(model, sgd, kernels, x, targets, how))
    })
    .map(|(outcome, _)| outcome)
}

/// Where one training step's time went: [`profile_step`].
#[derive(Debug, Clone)]
pub struct StepProfile {
    /// Every op of the step in tape order, with the layer it belongs to.
    pub ops: Vec<LayerTime>,
    /// The running statistics' and the optimizer's update.
    pub update: Duration,
    /// The whole step, as [`train_step`] runs it.
    pub total: Duration,
}

/// One op of a profiled step.
#[derive(Debug, Clone)]
pub struct LayerTime {
    /// The parameter-naming layer the op belongs to, as the weights file names it
    /// (`layer3.1.conv2`, `layer3.1.bn2`, `fc`); an op without parameters (a residual add,
    /// a pool, the loss) is named after the last layer before it, with the op's name:
    /// `layer3.1.bn3 > add+relu`.
    pub layer: String,
    /// The tape's record: op, output shape, routes, forward and backward time.
    pub time: autograd::OpTime,
}

/// [`train_step`] with every op timed ([`autograd::Tape::set_profile`]): the same step,
/// the same update, and where its time went, op by op. Its total is within the clock
/// reads' cost (well under a microsecond an op) of an unprofiled step's.
pub fn profile_step(
    model: &mut ResNet,
    sgd: &mut autograd::Sgd,
    kernels: tensor::Kernels,
    x: Tensor,
    targets: &[usize],
) -> Result<StepProfile> {
    let names: Vec<String> = model.parameters_mut().into_iter().map(|(n, _)| n).collect();
    let ws = tensor::Workspace::current();
    let start = Instant::now();
    let (_, profile) = rayon::scope(|_| {
        let how = How {
            freeze: Freeze::None,
            smoothing: 0.0,
            profile: true,
        };
        ws.run(|| train_step_here(model, sgd, kernels, x, targets, how))
    })?;
    let total = start.elapsed();
    let (ops, params, update) = profile.ok_or_else(|| TensorError::InvalidArgument {
        op: "profile_step",
        reason: "the tape returned no profile".into(),
    })?;
    // Each parameter's tape node -> its layer's name (the parameter's name without
    // `.weight` / `.bias`).
    let layer_of: std::collections::HashMap<usize, &str> = params
        .iter()
        .zip(&names)
        .filter_map(|(v, name)| {
            let layer = name.rsplit_once('.').map_or(name.as_str(), |(l, _)| l);
            v.map(|v| (v.index(), layer))
        })
        .collect();
    let mut last = String::from("input");
    let ops = ops
        .into_iter()
        .map(|time| {
            let layer = match time.inputs.iter().find_map(|i| layer_of.get(i)) {
                Some(&l) => {
                    last = l.to_string();
                    last.clone()
                }
                None => {
                    let op = time.op.split(' ').next().unwrap_or_default();
                    format!("{last} > {op}")
                }
            };
            LayerTime { layer, time }
        })
        .collect();
    Ok(StepProfile { ops, update, total })
}

/// What a profiled step's tape recorded: its ops, the parameters' tape variables and the
/// update's time.
type TapeProfile = (Vec<autograd::OpTime>, Vec<Option<Var>>, Duration);

/// How [`train_step_here`] runs a step.
#[derive(Clone, Copy)]
struct How {
    freeze: Freeze,
    smoothing: f32,
    /// Time every op ([`profile_step`]).
    profile: bool,
}

/// [`train_step`] on the calling thread.
fn train_step_here(
    model: &mut ResNet,
    sgd: &mut autograd::Sgd,
    kernels: tensor::Kernels,
    x: Tensor,
    targets: &[usize],
    how: How,
) -> Result<(StepOutcome, Option<TapeProfile>)> {
    let How {
        freeze,
        smoothing,
        profile,
    } = how;
    let (outcome, grads, stats, ops) = {
        let mut tape = Tape::new(kernels);
        tape.set_profile(profile);
        let fwd = model.forward_train(&mut tape, x, freeze)?;
        let loss = tape.cross_entropy(fwd.logits, targets, smoothing)?;
        let value = tape.value(loss)?.data()[0];
        let correct = count_correct(tape.value(fwd.logits)?, targets);
        let mut grads = tape.backward(loss)?;
        let ops = grads.profile().map(|p| p.to_vec());
        let grads: Vec<Option<Tensor>> = fwd
            .params
            .iter()
            .map(|v| v.and_then(|v| grads.take(v)))
            .collect();
        let outcome = StepOutcome {
            loss: value,
            correct,
        };
        let ops = ops.map(|p| (p, fwd.params));
        (outcome, grads, fwd.batch_stats, ops)
    };
    let start = Instant::now();
    update(model, sgd, &grads, &stats)?;
    let profile = ops.map(|(ops, params)| (ops, params, start.elapsed()));
    Ok((outcome, profile))
}

/// A step's update: the running statistics, then SGD with `grads` (in
/// [`ResNet::parameters_mut`] order, `None` for the frozen).
fn update(
    model: &mut ResNet,
    sgd: &mut autograd::Sgd,
    grads: &[Option<Tensor>],
    stats: &[BatchStats],
) -> Result<()> {
    model.update_running_stats(stats)?;
    let grads: Vec<Option<&Tensor>> = grads.iter().map(|g| g.as_ref()).collect();
    let mut params: Vec<&mut Tensor> = model.parameters_mut().into_iter().map(|(_, t)| t).collect();
    sgd.step(&mut params, &grads)
}

/// One data-parallel SGD step (see [`crate::distributed`]): this rank's part `x` of the
/// step's global batch, `share` its fraction of the global batch's images (`n_rank /
/// n_step`, the seed of its backward pass), the gradients summed across ranks in
/// buckets while the backward pass runs, then the same update on every rank. The
/// outcome is this rank's (its part's mean loss and correct count).
#[allow(clippy::too_many_arguments)]
pub fn train_step_parallel(
    model: &mut ResNet,
    sgd: &mut autograd::Sgd,
    kernels: tensor::Kernels,
    x: Tensor,
    targets: &[usize],
    freeze: Freeze,
    smoothing: f32,
    share: f32,
    dp: &mut crate::distributed::DataParallel,
) -> Result<StepOutcome> {
    let ws = tensor::Workspace::current();
    rayon::scope(|_| {
        ws.run(|| {
            let g = gradients_here(model, kernels, x, targets, freeze, smoothing, share, dp)?;
            update(model, sgd, &g.grads, &g.batch_stats)?;
            Ok(g.outcome)
        })
    })
}

/// What a data-parallel step computed before its update ([`parallel_gradients`]).
#[derive(Debug)]
pub struct StepGradients {
    /// This rank's loss and correct count.
    pub outcome: StepOutcome,
    /// Per parameter ([`ResNet::parameters_mut`] order), its gradient summed across
    /// ranks: the gradient of the mean loss over the global batch (`None`: frozen).
    pub grads: Vec<Option<Tensor>>,
    /// The batch norms' statistics (with synchronised batch norm, the global batch's),
    /// for [`ResNet::update_running_stats`].
    pub batch_stats: Vec<BatchStats>,
}

/// [`train_step_parallel`] without the update: the forward and backward passes and the
/// gradients summed across ranks. The model is unchanged.
#[allow(clippy::too_many_arguments)]
pub fn parallel_gradients(
    model: &ResNet,
    kernels: tensor::Kernels,
    x: Tensor,
    targets: &[usize],
    freeze: Freeze,
    smoothing: f32,
    share: f32,
    dp: &mut crate::distributed::DataParallel,
) -> Result<StepGradients> {
    let ws = tensor::Workspace::current();
    rayon::scope(|_| {
        ws.run(|| gradients_here(model, kernels, x, targets, freeze, smoothing, share, dp))
    })
}

#[allow(clippy::too_many_arguments)]
fn gradients_here(
    model: &ResNet,
    kernels: tensor::Kernels,
    x: Tensor,
    targets: &[usize],
    freeze: Freeze,
    smoothing: f32,
    share: f32,
    dp: &mut crate::distributed::DataParallel,
) -> Result<StepGradients> {
    use crate::distributed::{timed, Buckets};
    let comm = std::sync::Arc::clone(&dp.comm);
    let stats = &mut dp.stats;
    let (outcome, grads, batch_stats) = {
        let mut tape = Tape::new(kernels);
        if dp.sync_bn {
            tape.sync_batch_norm(&*comm);
        }
        let (fwd, loss, value, correct) = timed(&mut stats.forward_s, || -> Result<_> {
            let fwd = model.forward_train(&mut tape, x, freeze)?;
            let loss = tape.cross_entropy(fwd.logits, targets, smoothing)?;
            let value = tape.value(loss)?.data()[0];
            let correct = count_correct(tape.value(fwd.logits)?, targets);
            Ok((fwd, loss, value, correct))
        })?;
        let seed = Tensor::full(tape.value(loss)?.shape(), share)?;
        // Which parameter each trainable leaf is, and the buckets of their gradients.
        let mut position = std::collections::HashMap::new();
        let mut lens = Vec::with_capacity(fwd.params.len());
        for (p, v) in fwd.params.iter().enumerate() {
            match v {
                Some(v) => {
                    position.insert(v.index(), p);
                    lens.push(Some(tape.value(*v)?.len()));
                }
                None => lens.push(None),
            }
        }
        let mut buckets = Buckets::new(&*comm, &lens, dp.bucket_bytes, dp.overlap);
        stats.gradient_values = buckets.values();
        timed(&mut stats.backward_s, || {
            tape.backward_with(loss, seed, &mut |v, g| match position.get(&v.index()) {
                Some(&p) => buckets.ready(p, g),
                None => Ok(()),
            })
        })?;
        let grads = timed(&mut stats.exposed_s, || buckets.finish())?;
        let outcome = StepOutcome {
            loss: value,
            correct,
        };
        (outcome, grads, fwd.batch_stats)
    };
    stats.steps += 1;
    // The buckets hold flat copies: give each its parameter's shape back.
    let grads: Vec<Option<Tensor>> = grads
        .into_iter()
        .zip(
            model
                .named_tensors()
                .into_iter()
                .filter(|n| !is_buffer(&n.name)),
        )
        .map(|(g, p)| g.map(|g| g.reshape(p.tensor.shape())).transpose())
        .collect::<Result<_>>()?;
    Ok(StepGradients {
        outcome,
        grads,
        batch_stats,
    })
}

/// How many rows of `[N, classes]` logits have their maximum at the target's class.
pub fn count_correct(logits: &Tensor, targets: &[usize]) -> usize {
    let classes = logits.shape().last().copied().unwrap_or(1).max(1);
    logits
        .data()
        .chunks(classes)
        .zip(targets)
        .filter(|(row, &t)| argmax(row) == t)
        .count()
}

/// The index of the largest value (the first, on ties).
pub(crate) fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0
}
