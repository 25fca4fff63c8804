//! The tape: a Wengert list of the operations of one training step.
//!
//! Every operation appends a node holding its output, its inputs (as [`Var`]s, indices
//! of earlier nodes) and whatever its backward needs. Because a node can only name
//! nodes made before it, the creation order is already a topological order, and
//! [`Tape::backward`] is one loop over the nodes in reverse:
//!
//! 1. seed the loss's gradient with 1;
//! 2. for each node, last to first, that has received a gradient: hand the gradient to
//!    the op's backward, which returns one gradient per input, and add each into the
//!    input's slot;
//! 3. keep what reached the leaves.
//!
//! A node's output is no longer needed once the node has been visited (everything that
//! read it came later and was visited earlier), so the loop frees each as it goes and
//! the step's memory falls while the backward pass runs. `backward` consumes the tape:
//! nothing survives the step but the gradients.

use std::rc::Rc;
use std::time::{Duration, Instant};

use tensor::{
    AvgPool2d, BatchNormBackward, BatchNormGrads, BnGradIn, ChannelStats, Conv2d, ConvBackward,
    ConvPlan, ConvWeights, Epilogue, Kernels, MaxPoolIndices, Mode, Pool2d, ReplicaSum, Result,
    Tensor, TensorError,
};

/// A value on a tape: the index of the node that made it, and which tape that is (a
/// `Var` handed to another tape, or to another tape's gradients, is an error, not a
/// silent reference to whatever node has the same index there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(usize, u32);

/// The next tape's identity.
static NEXT_TAPE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Var {
    /// The node index (creation order).
    pub fn index(self) -> usize {
        self.0
    }
}

/// A node's output: owned when an op made it, borrowed when it is a parameter (the
/// tape never copies the model's weights).
enum Value<'p> {
    Owned(Tensor),
    Borrowed(&'p Tensor),
    /// A batch norm's output, computed only when something reads it: a convolution or a
    /// residual add that reads it applies the batch norm on the way in instead (see
    /// [`Tape::batch_norm`]).
    Deferred(std::cell::OnceCell<Tensor>),
    /// Freed by the backward pass after its last use.
    Released,
}

/// What made a node, with what its backward needs beyond the inputs' values.
enum Op {
    /// A parameter, a constant or an input.
    Leaf,
    Conv2d {
        x: Var,
        w: Var,
        /// The plan: the routes of the forward, `dX` and `dW`.
        plan: ConvPlan,
        /// The output's per-channel batch statistics, gathered while each image's
        /// output was still in cache, for the batch norm that follows.
        stats: Option<ChannelStats>,
        /// `x` is a batch norm + ReLU whose output was never stored: the convolution
        /// normalised its input image by image (the plan's input prologue), and its
        /// backward recomputes the normalised input the same way for `dW`.
        normalised: bool,
    },
    /// Batch norm, optionally fused with ReLU: with the batch's statistics (training
    /// mode) or with fixed ones (running statistics: a frozen backbone, eval mode).
    BatchNorm {
        x: Var,
        gamma: Var,
        beta: Var,
        mean: Vec<f32>,
        inv_std: Vec<f32>,
        relu: bool,
        batch_stats: bool,
    },
    Relu {
        x: Var,
    },
    Add {
        a: Var,
        b: Var,
        relu: bool,
        /// `a` is a batch norm (no ReLU, batch statistics) whose output was never
        /// stored: the add applied it to its input in the same pass.
        normalised: bool,
    },
    MaxPool {
        x: Var,
        pool: Pool2d,
        /// Each output's winner, found by the forward pass when `x` needs a gradient.
        winners: Option<MaxPoolIndices>,
    },
    AvgPool {
        x: Var,
        pool: AvgPool2d,
    },
    GlobalAvgPool {
        x: Var,
    },
    Linear {
        x: Var,
        w: Var,
        b: Var,
    },
    /// The CIFAR option-A shortcut: subsample by `stride`, zero-pad `pad` channels on
    /// each side.
    PadChannels {
        x: Var,
        stride: usize,
        pad: usize,
    },
    /// Mean softmax cross-entropy; `probs` is the softmax of the logits.
    CrossEntropy {
        logits: Var,
        probs: Tensor,
        targets: Vec<usize>,
        smoothing: f32,
    },
}

impl Op {
    /// The nodes the op read.
    fn inputs(&self) -> Vec<Var> {
        match self {
            Op::Leaf => Vec::new(),
            Op::Conv2d { x, w, .. } => vec![*x, *w],
            Op::BatchNorm { x, gamma, beta, .. } => vec![*x, *gamma, *beta],
            Op::Add { a, b, .. } => vec![*a, *b],
            Op::Linear { x, w, b } => vec![*x, *w, *b],
            Op::CrossEntropy { logits, .. } => vec![*logits],
            Op::Relu { x }
            | Op::MaxPool { x, .. }
            | Op::AvgPool { x, .. }
            | Op::GlobalAvgPool { x }
            | Op::PadChannels { x, .. } => vec![*x],
        }
    }
}

struct Node<'p> {
    value: Value<'p>,
    op: Op,
    /// Whether any gradient flows here: a trainable leaf, or an op with such an input.
    requires_grad: bool,
    /// How many ops have read this node so far.
    uses: u32,
    /// The first op that read this node: in the backward pass, the last to add to its
    /// gradient (for [`Tape::backward_with`]'s readiness).
    first_reader: Option<usize>,
}

/// The record of one training step's forward pass. `'p` is the borrow of the model's
/// parameters, which enter as leaves without being copied.
pub struct Tape<'p> {
    kernels: Kernels,
    nodes: Vec<Node<'p>>,
    id: u32,
    /// Synchronised batch norm: batch statistics and their backward's sums taken over
    /// every replica ([`Tape::sync_batch_norm`]).
    sync: Option<&'p dyn ReplicaSum>,
    /// Whether convolution plans may take Winograd ([`Tape::set_winograd`]).
    winograd: bool,
    /// Each node's forward time, when profiling ([`Tape::set_profile`]).
    profile: Option<Profiler>,
}

/// The forward half of a profile: the time between one node's recording and the next.
struct Profiler {
    last: Instant,
    forward: Vec<Duration>,
}

/// One op of a profiled step ([`Tape::set_profile`], [`Gradients::profile`]).
#[derive(Clone, Debug, PartialEq)]
pub struct OpTime {
    /// The node's index on the tape (creation order).
    pub node: usize,
    /// What the op is ([`Tape::describe`]); for a convolution also its kernel, stride
    /// and the routes its forward, `dX` and `dW` took.
    pub op: String,
    /// The output's shape.
    pub shape: Vec<usize>,
    /// The nodes it read, as tape indices (a parameter among them names the layer).
    pub inputs: Vec<usize>,
    /// The forward's multiply-adds for a convolution or a linear layer (each gradient,
    /// `dX` and `dW`, takes as many), 0 for other ops.
    pub macs: u64,
    /// From the previous node's recording to this one's: the op's forward, plus a
    /// deferred batch norm's output if this op is the one that computed it.
    pub forward: Duration,
    /// Its backward (zero when no gradient reached it).
    pub backward: Duration,
}

/// The gradients a backward pass left on the leaves that require them.
pub struct Gradients {
    grads: Vec<Option<Tensor>>,
    tape: u32,
    profile: Option<Vec<OpTime>>,
}

impl Gradients {
    /// The gradient of a leaf, if one reached it (`None` too for a `Var` of another
    /// tape).
    pub fn get(&self, v: Var) -> Option<&Tensor> {
        if v.1 != self.tape {
            return None;
        }
        self.grads.get(v.0).and_then(|g| g.as_ref())
    }

    /// Takes a leaf's gradient out.
    pub fn take(&mut self, v: Var) -> Option<Tensor> {
        if v.1 != self.tape {
            return None;
        }
        self.grads.get_mut(v.0).and_then(|g| g.take())
    }

    /// Every op's forward and backward time, in tape order, when the tape was profiled
    /// ([`Tape::set_profile`]); leaves are left out.
    pub fn profile(&self) -> Option<&[OpTime]> {
        self.profile.as_deref()
    }
}

/// Each named per-channel parameter has `c` elements, or the error names the first that
/// does not.
fn expect_lengths(op: &'static str, c: usize, params: &[(&'static str, &[f32])]) -> Result<()> {
    match params.iter().find(|(_, v)| v.len() != c) {
        Some(&(arg, v)) => Err(TensorError::ShapeMismatch {
            op,
            arg,
            expected: vec![c],
            got: vec![v.len()],
        }),
        None => Ok(()),
    }
}

fn invalid(op: &'static str, reason: String) -> TensorError {
    TensorError::InvalidArgument { op, reason }
}

/// Whether convolving `x` (NCHW) with `w` (OIHW) gives no elements per output channel
/// (an empty batch or an empty output plane). Shape errors come back as errors.
fn conv_output_is_empty(x: &Tensor, w: &Tensor, p: Conv2d) -> Result<bool> {
    let [n, _, h, wd] = x.dims4("conv2d")?;
    let [_, _, kh, kw] = w.dims4("conv2d")?;
    let [oh, ow] = p.output_size(h, wd, kh, kw)?;
    Ok(n * oh * ow == 0)
}

/// `1 / sqrt(var + eps)` per channel, in `f64` before the final rounding.
fn inv_std(var: &[f32], eps: f32) -> Vec<f32> {
    var.iter()
        .map(|&v| (1.0 / (v as f64 + eps as f64).sqrt()) as f32)
        .collect()
}

impl<'p> Tape<'p> {
    /// An empty tape whose ops run on `kernels`.
    pub fn new(kernels: Kernels) -> Self {
        Tape {
            kernels,
            nodes: Vec::new(),
            id: NEXT_TAPE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            sync: None,
            winograd: true,
            profile: None,
        }
    }

    /// Times every op from here on: its forward (from the previous node's recording to
    /// its own) and its backward, returned by [`Gradients::profile`]. Off by default;
    /// the clock reads cost well under a microsecond an op. Each parallel kernel
    /// finishes before its op returns, so the times add up to the step's.
    pub fn set_profile(&mut self, on: bool) {
        self.profile = on.then(|| Profiler {
            last: Instant::now(),
            forward: vec![Duration::ZERO; self.nodes.len()],
        });
    }

    /// Whether the convolutions recorded from here on may run by Winograd (on by default:
    /// the 3x3, stride-1 layers the plan's ladder measured it faster on, forward and
    /// `dX`; `tensor::ConvPlan::with_winograd`). `false` keeps every convolution on a
    /// route that sums plain products, with the direct kernel's rounding.
    pub fn set_winograd(&mut self, on: bool) {
        self.winograd = on;
    }

    /// Synchronised batch norm from here on (PyTorch's `SyncBatchNorm`): in data-parallel
    /// training, where each replica records the same network on its part of the batch,
    /// [`Tape::batch_norm`] normalises with the statistics of the whole batch (the
    /// replicas' means and variances combined by their counts) and returns those, and
    /// the backward pass sums its per-channel sums across the replicas. Every replica
    /// must record the same ops in the same order: each batch norm is a collective call.
    pub fn sync_batch_norm(&mut self, sync: &'p dyn ReplicaSum) {
        self.sync = Some(sync);
    }

    /// The kernels the ops run on.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Number of nodes recorded so far.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn push(&mut self, value: Value<'p>, op: Op, requires_grad: bool) -> Var {
        if let Some(p) = &mut self.profile {
            let now = Instant::now();
            p.forward.push(now - p.last);
            p.last = now;
        }
        self.nodes.push(Node {
            value,
            op,
            requires_grad,
            uses: 0,
            first_reader: None,
        });
        Var(self.nodes.len() - 1, self.id)
    }

    fn push_op(&mut self, value: Tensor, op: Op, inputs: &[Var]) -> Var {
        self.push_value(Value::Owned(value), op, inputs)
    }

    fn push_value(&mut self, value: Value<'p>, op: Op, inputs: &[Var]) -> Var {
        let requires_grad = inputs.iter().any(|&v| self.requires_grad(v));
        let index = self.nodes.len();
        for v in inputs {
            if let Some(n) = self.nodes.get_mut(v.0) {
                n.uses += 1;
                n.first_reader.get_or_insert(index);
            }
        }
        self.push(value, op, requires_grad)
    }

    /// A trainable parameter: it receives a gradient.
    pub fn param(&mut self, t: &'p Tensor) -> Var {
        self.push(Value::Borrowed(t), Op::Leaf, true)
    }

    /// A frozen parameter: used, but no gradient is computed for it (or, when nothing
    /// upstream is trainable either, for anything before it).
    pub fn constant(&mut self, t: &'p Tensor) -> Var {
        self.push(Value::Borrowed(t), Op::Leaf, false)
    }

    /// An input batch (no gradient).
    pub fn input(&mut self, t: Tensor) -> Var {
        self.push(Value::Owned(t), Op::Leaf, false)
    }

    /// The value of `v` (a deferred batch norm's is computed now, once).
    pub fn value(&self, v: Var) -> Result<&Tensor> {
        match self.node(v).map(|n| &n.value) {
            Some(Value::Owned(t)) => Ok(t),
            Some(Value::Borrowed(t)) => Ok(t),
            Some(Value::Deferred(cell)) => {
                if let Some(t) = cell.get() {
                    return Ok(t);
                }
                let Some(Op::BatchNorm {
                    x,
                    gamma,
                    beta,
                    mean,
                    inv_std,
                    relu,
                    ..
                }) = self.node(v).map(|n| &n.op)
                else {
                    unreachable!("only a batch norm's value is deferred");
                };
                let y = self.affine(*x, *gamma, *beta, mean, inv_std, *relu)?;
                Ok(cell.get_or_init(|| y))
            }
            _ => Err(invalid(
                "Tape::value",
                format!("{v:?} is not a value on this tape"),
            )),
        }
    }

    /// The batch norm `v` names if its output has not been computed: its input, its
    /// `[scale, shift]` and whether a ReLU follows.
    fn deferred_norm(&self, v: Var) -> Option<DeferredNorm> {
        let n = self.node(v)?;
        let (Value::Deferred(cell), Op::BatchNorm { relu, .. }) = (&n.value, &n.op) else {
            return None;
        };
        if cell.get().is_some() {
            return None;
        }
        let (x, affine) = self.norm_of(v).ok()?;
        Some(DeferredNorm {
            x,
            affine,
            relu: *relu,
        })
    }

    /// Bytes of the values the tape owns (activations and inputs, not the borrowed
    /// parameters): what a training step must keep alive for its backward pass.
    pub fn owned_bytes(&self) -> usize {
        let saved = |op: &Op| match op {
            Op::CrossEntropy { probs, .. } => probs.len(),
            // (`u32`s, as many bytes as floats.)
            Op::MaxPool {
                winners: Some(w), ..
            } => w.as_slice().len(),
            _ => 0,
        };
        self.nodes
            .iter()
            .map(|n| match &n.value {
                Value::Owned(t) => t.len() + saved(&n.op),
                Value::Deferred(cell) => cell.get().map_or(0, Tensor::len) + saved(&n.op),
                _ => saved(&n.op),
            })
            .sum::<usize>()
            * std::mem::size_of::<f32>()
    }

    /// The node `v` names, if it is one of this tape's.
    fn node(&self, v: Var) -> Option<&Node<'p>> {
        if v.1 != self.id {
            return None;
        }
        self.nodes.get(v.0)
    }

    /// What made `v`, in a few words, with the fusions the tape chose: `conv2d` or
    /// `conv2d of a normalised input` (the batch norm + ReLU before it applied on the
    /// way in), `batch_norm` with `(deferred)` while its output has not been computed,
    /// `add+relu of a normalised input`, ... `None` for a `Var` of another tape.
    pub fn describe(&self, v: Var) -> Option<String> {
        let n = self.node(v)?;
        let text = match &n.op {
            Op::Leaf => "leaf".to_string(),
            Op::Conv2d { normalised, .. } => match normalised {
                true => "conv2d of a normalised input".into(),
                false => "conv2d".into(),
            },
            Op::BatchNorm {
                relu, batch_stats, ..
            } => {
                let stats = if *batch_stats {
                    ""
                } else {
                    " (fixed statistics)"
                };
                let relu = if *relu { "+relu" } else { "" };
                let deferred = match &n.value {
                    Value::Deferred(cell) if cell.get().is_none() => " (deferred)",
                    _ => "",
                };
                format!("batch_norm{relu}{stats}{deferred}")
            }
            Op::Relu { .. } => "relu".into(),
            Op::Add {
                relu, normalised, ..
            } => {
                let relu = if *relu { "+relu" } else { "" };
                let norm = if *normalised {
                    " of a normalised input"
                } else {
                    ""
                };
                format!("add{relu}{norm}")
            }
            Op::MaxPool { .. } => "max_pool2d".into(),
            Op::AvgPool { .. } => "avg_pool2d".into(),
            Op::GlobalAvgPool { .. } => "global_avg_pool".into(),
            Op::Linear { .. } => "linear".into(),
            Op::PadChannels { .. } => "pad_channels".into(),
            Op::CrossEntropy { .. } => "cross_entropy".into(),
        };
        Some(text)
    }

    /// Whether a gradient will flow to `v`.
    pub fn requires_grad(&self, v: Var) -> bool {
        self.node(v).is_some_and(|n| n.requires_grad)
    }

    // ---- Operations ----

    /// 2-D convolution (no bias): NCHW `x`, OIHW `w`.
    ///
    /// When `x` is a batch norm + ReLU whose output nobody has read yet, the
    /// convolution reads the batch norm's input and normalises it image by image on the
    /// way in (the plan's input prologue): the normalised tensor is never stored, and the
    /// backward needs only the batch norm's input. The same values as reading `x`.
    pub fn conv2d(&mut self, x: Var, w: Var, p: Conv2d) -> Result<Var> {
        let k = self.kernels;
        let (packed, plan) = self.plan_conv(w, p)?;
        let norm = self.deferred_norm(x).filter(|n| n.relu);
        let (input, affine) = match &norm {
            Some(n) => (n.x, Some([&n.affine[0][..], &n.affine[1][..]])),
            None => (x, None),
        };
        let xv = self.value(input)?;
        // An output without elements per channel has no statistics; the convolution
        // itself may still be fine.
        let (y, stats, normalised) = if conv_output_is_empty(xv, self.value(w)?, p)? {
            (k.conv2d(self.value(x)?, &packed, &[])?, None, false)
        } else {
            let (y, stats) = k.conv2d_with_stats(xv, &packed, affine)?;
            (y, Some(stats), affine.is_some())
        };
        let op = Op::Conv2d {
            x,
            w,
            plan,
            stats,
            normalised,
        };
        Ok(self.push_op(y, op, &[x, w]))
    }

    /// The training plan of a convolution by `w`'s value (the routes of its forward
    /// and both gradients, `tensor::ConvPlan`) and its weights packed for it.
    fn plan_conv(&self, w: Var, p: Conv2d) -> Result<(ConvWeights, ConvPlan)> {
        let wv = self.value(w)?;
        let plan = ConvPlan::new(&self.kernels, wv.dims4("conv2d")?, p, Mode::Training)?
            .with_winograd(self.winograd);
        Ok((self.kernels.pack_conv(&plan, wv)?, plan))
    }

    /// Training-mode batch norm over `[N, C, ...]`: normalise with the batch's mean and
    /// biased variance, scale by `gamma`, shift by `beta`, then ReLU if `relu`. Returns
    /// the batch statistics too, for the caller to update its running statistics.
    ///
    /// The output is computed when first read, and the op that reads it may apply the
    /// batch norm itself instead, in the pass it makes anyway: a convolution after
    /// batch norm + ReLU ([`Tape::conv2d`]), an add + ReLU after batch norm
    /// ([`Tape::add`]). Those fusions are the tape's choice, not the caller's: a model
    /// records the plain graph.
    pub fn batch_norm(
        &mut self,
        x: Var,
        gamma: Var,
        beta: Var,
        eps: f32,
        relu: bool,
    ) -> Result<(Var, ChannelStats)> {
        let mut stats = self.batch_stats(x)?;
        if let Some(sync) = self.sync {
            stats = combine_replicas(sync, &stats)?;
        }
        let inv_std = inv_std(&stats.var, eps);
        // The lengths are checked now, not when (or if) the output is computed.
        self.checked_affine(gamma, beta, &stats.mean, &inv_std)?;
        let op = Op::BatchNorm {
            x,
            gamma,
            beta,
            mean: stats.mean.clone(),
            inv_std,
            relu,
            batch_stats: true,
        };
        let deferred = Value::Deferred(std::cell::OnceCell::new());
        Ok((self.push_value(deferred, op, &[x, gamma, beta]), stats))
    }

    /// The per-channel batch statistics of `x`: those its convolution gathered, or a
    /// pass over it.
    fn batch_stats(&self, x: Var) -> Result<ChannelStats> {
        match self.node(x).map(|n| &n.op) {
            Some(Op::Conv2d {
                stats: Some(stats), ..
            }) => Ok(stats.clone()),
            _ => self.kernels.channel_stats(self.value(x)?),
        }
    }

    /// Batch norm with fixed statistics (`running_mean`, `running_var`): eval mode, as
    /// a frozen backbone runs while its head trains. Gradients still flow through it
    /// (to `x`, and to `gamma`/`beta` if they are parameters).
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_fixed(
        &mut self,
        x: Var,
        gamma: Var,
        beta: Var,
        running_mean: &[f32],
        running_var: &[f32],
        eps: f32,
        relu: bool,
    ) -> Result<Var> {
        let c = match self.value(x)?.shape() {
            [_, c, ..] => *c,
            s => {
                return Err(TensorError::Rank {
                    op: "batch_norm_fixed",
                    expected: 4,
                    got: s.to_vec(),
                })
            }
        };
        expect_lengths(
            "batch_norm_fixed",
            c,
            &[("running_mean", running_mean), ("running_var", running_var)],
        )?;
        let inv_std = inv_std(running_var, eps);
        let y = self.affine(x, gamma, beta, running_mean, &inv_std, relu)?;
        let op = Op::BatchNorm {
            x,
            gamma,
            beta,
            mean: running_mean.to_vec(),
            inv_std,
            relu,
            batch_stats: false,
        };
        Ok(self.push_op(y, op, &[x, gamma, beta]))
    }

    /// `gamma (x - mean) inv_std + beta`, then ReLU if `relu`, as one kernel pass.
    fn affine(
        &self,
        x: Var,
        gamma: Var,
        beta: Var,
        mean: &[f32],
        inv_std: &[f32],
        relu: bool,
    ) -> Result<Tensor> {
        let [scale, shift] = self.checked_affine(gamma, beta, mean, inv_std)?;
        let (k, xv) = (self.kernels, self.value(x)?);
        if relu {
            k.scale_shift(xv, &scale, &shift, &[Epilogue::Relu])
        } else {
            k.scale_shift(xv, &scale, &shift, &[])
        }
    }

    /// Batch norm's per-channel `[scale, shift]` from `gamma`, `beta` and the
    /// statistics, once their lengths agree.
    fn checked_affine(
        &self,
        gamma: Var,
        beta: Var,
        mean: &[f32],
        inv_std: &[f32],
    ) -> Result<[Vec<f32>; 2]> {
        let (g, b) = (self.value(gamma)?.data(), self.value(beta)?.data());
        let c = mean.len();
        expect_lengths(
            "batch_norm",
            c,
            &[("gamma", g), ("beta", b), ("running_var", inv_std)],
        )?;
        Ok(affine_coefficients(g, b, mean, inv_std))
    }

    /// `max(x, 0)`.
    pub fn relu(&mut self, x: Var) -> Result<Var> {
        let y = self.kernels.relu(self.value(x)?)?;
        Ok(self.push_op(y, Op::Relu { x }, &[x]))
    }

    /// `a + b` (same shapes), then ReLU if `relu`: the end of a residual block.
    ///
    /// With ReLU, when `a` or `b` is a batch norm (no ReLU, batch statistics) whose output
    /// nobody has read yet, the add applies it in the same pass
    /// (`Kernels::scale_shift` with the epilogue `[residual, Relu]`): the normalised
    /// tensor is never stored, and the
    /// backward masks the gradient in the pass batch norm's backward makes over it.
    pub fn add(&mut self, a: Var, b: Var, relu: bool) -> Result<Var> {
        let fusable = |v: Var| {
            self.deferred_norm(v)
                .filter(|n| relu && !n.relu && self.is_batch_norm(v, true))
        };
        // The batch norm goes first.
        let (a, b, norm) = match (fusable(a), fusable(b)) {
            (Some(n), _) => (a, b, Some(n)),
            (None, Some(n)) => (b, a, Some(n)),
            (None, None) => (a, b, None),
        };
        let k = self.kernels;
        let y = match &norm {
            Some(n) => {
                let [scale, shift] = &n.affine;
                k.scale_shift(
                    self.value(n.x)?,
                    scale,
                    shift,
                    &[Epilogue::residual(self.value(b)?), Epilogue::Relu],
                )?
            }
            None => {
                let (av, bv) = (self.value(a)?, self.value(b)?);
                if relu {
                    k.add(av, bv, &[Epilogue::Relu])?
                } else {
                    k.add(av, bv, &[])?
                }
            }
        };
        let op = Op::Add {
            a,
            b,
            relu,
            normalised: norm.is_some(),
        };
        Ok(self.push_op(y, op, &[a, b]))
    }

    /// Whether `v` is a batch norm, with batch statistics if `batch_stats`.
    fn is_batch_norm(&self, v: Var, batch_stats: bool) -> bool {
        matches!(self.node(v).map(|n| &n.op),
            Some(Op::BatchNorm { batch_stats: b, .. }) if *b == batch_stats)
    }

    /// 2-D max pooling. Where `x` needs a gradient, the forward pass also records each
    /// window's winner (`Kernels::max_pool2d_with_indices`: 4 bytes an output), and the
    /// backward pass only scatters.
    pub fn max_pool2d(&mut self, x: Var, pool: Pool2d) -> Result<Var> {
        // A batch norm + ReLU nobody has read (the stem's): the pool normalises each plane
        // as it reads it, and its gradient goes to the batch norm, whose backward
        // recomputes the ReLU's mask from its input anyway.
        if let Some(norm) = self
            .deferred_norm(x)
            .filter(|n| n.relu && self.requires_grad(x))
        {
            let affine = [&norm.affine[0][..], &norm.affine[1][..]];
            let (y, w) = self.kernels.max_pool2d_with_indices_normalised(
                self.value(norm.x)?,
                &pool,
                Some(affine),
            )?;
            let winners = Some(w);
            return Ok(self.push_op(y, Op::MaxPool { x, pool, winners }, &[x]));
        }
        let xv = self.value(x)?;
        let (y, winners) = if self.requires_grad(x) {
            let (y, w) = self.kernels.max_pool2d_with_indices(xv, &pool)?;
            (y, Some(w))
        } else {
            (self.kernels.max_pool2d(xv, &pool)?, None)
        };
        Ok(self.push_op(y, Op::MaxPool { x, pool, winners }, &[x]))
    }

    /// 2-D average pooling (PyTorch's `AvgPool2d`, see `tensor::AvgPool2d`).
    pub fn avg_pool2d(&mut self, x: Var, pool: AvgPool2d) -> Result<Var> {
        let y = self.kernels.avg_pool2d(self.value(x)?, &pool)?;
        Ok(self.push_op(y, Op::AvgPool { x, pool }, &[x]))
    }

    /// Global average pooling, `[N, C, H, W]` to `[N, C]`.
    pub fn global_avg_pool(&mut self, x: Var) -> Result<Var> {
        let y = self.kernels.global_avg_pool(self.value(x)?)?;
        Ok(self.push_op(y, Op::GlobalAvgPool { x }, &[x]))
    }

    /// `y = x W^T + b` for `x: [N, in]`, `w: [out, in]`, `b: [out]`.
    pub fn linear(&mut self, x: Var, w: Var, b: Var) -> Result<Var> {
        let k = self.kernels;
        let wv = self.value(w)?;
        let packed = k.pack_linear_weights(wv)?;
        let y = k.linear(self.value(x)?, &packed, Some(self.value(b)?.data()))?;
        Ok(self.push_op(y, Op::Linear { x, w, b }, &[x, w, b]))
    }

    /// The CIFAR ResNets' option-A shortcut: `x[:, :, ::stride, ::stride]` with `pad`
    /// zero channels added before and after.
    pub fn pad_channels(&mut self, x: Var, stride: usize, pad: usize) -> Result<Var> {
        let y = self.kernels.pad_channels(self.value(x)?, stride, pad)?;
        Ok(self.push_op(y, Op::PadChannels { x, stride, pad }, &[x]))
    }

    /// Mean softmax cross-entropy of `[N, classes]` logits against class indices, with
    /// label smoothing `smoothing` in `[0, 1)` (the target puts `1 - smoothing` on the
    /// class and spreads `smoothing` evenly over all classes, as PyTorch's
    /// `label_smoothing`). The result is a scalar.
    pub fn cross_entropy(&mut self, logits: Var, targets: &[usize], smoothing: f32) -> Result<Var> {
        let lv = self.value(logits)?;
        let [n, classes] = lv.dims2("cross_entropy")?;
        if targets.len() != n || n == 0 {
            return Err(invalid(
                "cross_entropy",
                format!("{} targets for a batch of {n}", targets.len()),
            ));
        }
        if let Some(&t) = targets.iter().find(|&&t| t >= classes) {
            return Err(invalid(
                "cross_entropy",
                format!("target class {t} is out of range for {classes} classes"),
            ));
        }
        if !(0.0..1.0).contains(&smoothing) {
            return Err(invalid(
                "cross_entropy",
                format!("label smoothing {smoothing} is not in [0, 1)"),
            ));
        }
        let logp = self.kernels.log_softmax(lv)?;
        let mut total = 0.0f64;
        for (row, &t) in logp.data().chunks(classes).zip(targets) {
            let mean_logp = row.iter().map(|&v| v as f64).sum::<f64>() / classes as f64;
            total -= (1.0 - smoothing as f64) * row[t] as f64 + smoothing as f64 * mean_logp;
        }
        let loss = Tensor::scalar((total / n as f64) as f32);
        let probs = self.kernels.softmax(lv)?;
        let op = Op::CrossEntropy {
            logits,
            probs,
            targets: targets.to_vec(),
            smoothing,
        };
        Ok(self.push_op(loss, op, &[logits]))
    }

    // ---- The backward pass ----

    /// Runs the backward pass from the scalar `loss` and returns the gradients of the
    /// trainable leaves. Consumes the tape.
    pub fn backward(self, loss: Var) -> Result<Gradients> {
        let seed = self.value(loss)?;
        if seed.len() != 1 {
            return Err(invalid(
                "backward",
                format!("the loss must be a scalar, got shape {:?}", seed.shape()),
            ));
        }
        let ones = Tensor::full(seed.shape(), 1.0)?;
        self.backward_from(loss, ones)
    }

    /// The backward pass seeded with gradient `dy` on any node `output` (a
    /// vector-Jacobian product): the gradients of `sum(output * dy)`. Consumes the tape.
    pub fn backward_from(self, output: Var, dy: Tensor) -> Result<Gradients> {
        self.backward_with(output, dy, &mut |_, _| Ok(()))
    }

    /// [`Tape::backward_from`], calling `ready` with each trainable leaf and its
    /// gradient as soon as that gradient is final (the op that read the leaf first in
    /// the forward pass, the last to add to it here, has run), while the rest of the
    /// backward pass still has to run: data-parallel training starts reducing a bucket
    /// of gradients across replicas there, so that the communication overlaps the
    /// remaining backward work. The order is deterministic (the same on every replica
    /// recording the same ops). An error from `ready` stops the pass.
    pub fn backward_with(
        mut self,
        output: Var,
        dy: Tensor,
        ready: &mut dyn FnMut(Var, &Tensor) -> Result<()>,
    ) -> Result<Gradients> {
        let shape = self.value(output)?.shape().to_vec();
        if dy.shape() != shape {
            return Err(TensorError::ShapeMismatch {
                op: "backward_from",
                arg: "dy",
                expected: shape,
                got: dy.shape().to_vec(),
            });
        }
        // A gradient may be shared: a residual add hands the same one to both inputs
        // (`Rc`, not a copy). It is copied only if someone must write to it while it
        // is still shared, which a ResNet never does: the add's first input uses it
        // (read only) before the second input's other consumer adds to it.
        let mut grads: Vec<Option<Rc<Tensor>>> = (0..self.nodes.len()).map(|_| None).collect();
        grads[output.0] = Some(Rc::new(dy));
        // The trainable leaves whose gradient is final once node `i` has run.
        let mut completes: Vec<Vec<usize>> = vec![Vec::new(); output.0 + 1];
        for (leaf, n) in self.nodes.iter().enumerate() {
            if let (Op::Leaf, true, Some(first)) = (&n.op, n.requires_grad, n.first_reader) {
                if first <= output.0 {
                    completes[first].push(leaf);
                }
            }
        }
        let mut profile = self.profile.as_ref().map(|_| self.op_times(output.0));
        for i in (0..=output.0).rev() {
            let start = Instant::now();
            self.backward_node(i, &mut grads)?;
            if let Some(row) = profile
                .as_mut()
                .and_then(|p| p.iter_mut().find(|r| r.node == i))
            {
                row.backward = start.elapsed();
            }
            for &leaf in &completes[i] {
                if let Some(g) = &grads[leaf] {
                    ready(Var(leaf, self.id), g)?;
                }
            }
        }
        let grads = grads
            .into_iter()
            .map(|g| g.map(|g| Rc::try_unwrap(g).unwrap_or_else(|g| (*g).clone())))
            .collect();
        Ok(Gradients {
            grads,
            tape: self.id,
            profile,
        })
    }

    /// The profile's rows for the ops up to node `last`, before the backward pass
    /// frees their values (backward times zero).
    fn op_times(&self, last: usize) -> Vec<OpTime> {
        let forward = |i: usize| {
            self.profile
                .as_ref()
                .and_then(|p| p.forward.get(i).copied())
                .unwrap_or_default()
        };
        (0..=last)
            .filter(|&i| !matches!(self.nodes[i].op, Op::Leaf))
            .map(|i| {
                let v = Var(i, self.id);
                let n = &self.nodes[i];
                let mut op = self.describe(v).unwrap_or_default();
                let shape = self.shape_of(v);
                let mut macs = 0;
                if let Op::Conv2d { w, .. } | Op::Linear { w, .. } = &n.op {
                    // Each output element sums one weight row: O x I x kh x kw / O.
                    let row: usize = self.shape_of(*w).iter().skip(1).product();
                    macs = (shape.iter().product::<usize>() * row) as u64;
                }
                if let Op::Conv2d { x, w, plan, .. } = &n.op {
                    op.push_str(&self.conv_summary(*x, *w, plan));
                }
                OpTime {
                    node: i,
                    op,
                    shape,
                    macs,
                    inputs: n.op.inputs().iter().map(|v| v.0).collect(),
                    forward: forward(i),
                    backward: Duration::ZERO,
                }
            })
            .collect()
    }

    /// `" 3x3 s1: forward / dX / dW routes"` of a convolution, as far as known.
    fn conv_summary(&self, x: Var, w: Var, plan: &ConvPlan) -> String {
        let dims = |v: Var| self.node(v).and_then(|_| self.shape_of(v).try_into().ok());
        let (Some(xd), Some(wd)) = (dims(x), dims(w)) else {
            return String::new();
        };
        let [_, _, kh, kw]: [usize; 4] = wd;
        let stride = plan.conv().stride;
        match plan.routes(xd) {
            Ok(r) => {
                let dx = r.input_grad.map_or("-".into(), |d| d.to_string());
                let dw = r.weight_grad.map_or("-".into(), |d| d.to_string());
                format!(" {kh}x{kw} s{stride}: {} / {dx} / {dw}", r.forward)
            }
            Err(_) => format!(" {kh}x{kw} s{stride}"),
        }
    }

    /// The shape of `v`'s value (a deferred batch norm's: its input's), before the
    /// backward pass frees it.
    fn shape_of(&self, v: Var) -> Vec<usize> {
        match self.node(v) {
            Some(Node {
                value: Value::Deferred(cell),
                op: Op::BatchNorm { x, .. },
                ..
            }) if cell.get().is_none() => self.shape_of(*x),
            Some(_) => self
                .value(v)
                .map(|t| t.shape().to_vec())
                .unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// One step of the backward pass: node `i`'s gradient (if it has one) through its
    /// op into its inputs' slots; its output is freed.
    fn backward_node(&mut self, i: usize, grads: &mut [Option<Rc<Tensor>>]) -> Result<()> {
        if !self.nodes[i].requires_grad {
            return Ok(());
        }
        if let Op::Leaf = self.nodes[i].op {
            return Ok(()); // its gradient stays in `grads`
        }
        let Some(dy) = grads[i].take() else {
            return Ok(()); // nothing downstream used this node
        };
        // A convolution whose input already holds a gradient from another consumer
        // (a residual block's input: the shortcut's) adds its dX straight into it.
        let acc = match self.nodes[i].op {
            Op::Conv2d { x, .. } if self.nodes[x.0].requires_grad => {
                match grads[x.0].take().map(Rc::try_unwrap) {
                    Some(Ok(t)) => Some(t),
                    Some(Err(shared)) => {
                        grads[x.0] = Some(shared);
                        None
                    }
                    None => None,
                }
            }
            _ => None,
        };
        for (input, g) in self.node_backward(i, dy, acc)? {
            if !self.nodes[input.0].requires_grad {
                continue;
            }
            match &mut grads[input.0] {
                Some(acc) => self.kernels.add_assign(Rc::make_mut(acc), &g, &[])?,
                slot => *slot = Some(g),
            }
        }
        self.nodes[i].value = Value::Released;
        if let Op::MaxPool { winners, .. } = &mut self.nodes[i].op {
            *winners = None;
        }
        Ok(())
    }

    /// The input and `[scale, shift]` of the batch norm `v`, which a convolution applied
    /// on the way in.
    fn norm_of(&self, v: Var) -> Result<(Var, [Vec<f32>; 2])> {
        match self.node(v).map(|n| &n.op) {
            Some(Op::BatchNorm {
                x,
                gamma,
                beta,
                mean,
                inv_std,
                ..
            }) => Ok((*x, self.checked_affine(*gamma, *beta, mean, inv_std)?)),
            _ => Err(invalid(
                "backward",
                format!("{v:?} was read as a batch norm's output but is not one"),
            )),
        }
    }

    /// ReLU's backward for a node whose output is `out`: in place when this is the
    /// gradient's only holder (the usual case), into a new tensor otherwise.
    fn relu_grad(&self, dy: Rc<Tensor>, out: &Tensor) -> Result<Rc<Tensor>> {
        match Rc::try_unwrap(dy) {
            Ok(mut d) => {
                self.kernels.relu_backward_assign(&mut d, out)?;
                Ok(Rc::new(d))
            }
            Err(shared) => Ok(Rc::new(self.kernels.relu_backward(&shared, out)?)),
        }
    }

    /// Batch norm's backward (training or fixed statistics, with or without the ReLU
    /// after it), writing dx over dy's buffer when nobody else holds dy.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_grads(
        &self,
        x: Var,
        gamma: Var,
        beta: Var,
        mean: &[f32],
        inv_std: &[f32],
        relu: bool,
        batch_stats: bool,
        dy: Rc<Tensor>,
    ) -> Result<BatchNormGrads> {
        let k = self.kernels;
        let (xv, gv) = (self.value(x)?, self.value(gamma)?.data());
        if relu {
            // The ReLU's mask is recomputed from x inside the batch-norm passes, with
            // the forward's scale and shift (the same arithmetic as `affine`, so the
            // same floats): no ReLU-backward pass.
            let [scale, shift] = affine_coefficients(gv, self.value(beta)?.data(), mean, inv_std);
            let affine = [&scale[..], &shift[..]];
            return match Rc::try_unwrap(dy) {
                Ok(dy) => k.batch_norm_backward(
                    xv,
                    BnGradIn::Owned(dy),
                    &BatchNormBackward::new(mean, inv_std, gv, batch_stats)
                        .with_relu(affine)
                        .synced(self.sync),
                ),
                Err(dy) => k.batch_norm_backward(
                    xv,
                    BnGradIn::Borrowed(&dy),
                    &BatchNormBackward::new(mean, inv_std, gv, batch_stats)
                        .with_relu(affine)
                        .synced(self.sync),
                ),
            };
        }
        if !batch_stats {
            return k.batch_norm_backward(
                xv,
                BnGradIn::Borrowed(&dy),
                &BatchNormBackward::fixed(mean, inv_std, gv),
            );
        }
        match Rc::try_unwrap(dy) {
            Ok(dy) => k.batch_norm_backward(
                xv,
                BnGradIn::Owned(dy),
                &BatchNormBackward::batch(mean, inv_std, gv).synced(self.sync),
            ),
            Err(dy) => k.batch_norm_backward(
                xv,
                BnGradIn::Borrowed(&dy),
                &BatchNormBackward::batch(mean, inv_std, gv).synced(self.sync),
            ),
        }
    }

    /// The gradients of node `i`'s inputs, given the gradient `dy` of its output. For a
    /// convolution, `dx_acc` is the gradient its input already has, to add `dX` into.
    fn node_backward(
        &self,
        i: usize,
        dy: Rc<Tensor>,
        dx_acc: Option<Tensor>,
    ) -> Result<Vec<(Var, Rc<Tensor>)>> {
        let k = self.kernels;
        let wants = |v: Var| self.nodes[v.0].requires_grad;
        // The node's own output, for the ops whose backward reads it (a deferred batch
        // norm's is never computed for this).
        let out = || self.value(Var(i, self.id));
        let grads = match &self.nodes[i].op {
            Op::Leaf => Vec::new(),
            Op::Conv2d {
                x,
                w,
                plan,
                normalised,
                ..
            } => {
                // A normalised input: the batch norm's input and its affine map; dX is
                // the gradient of the normalised tensor, which goes to the batch norm.
                let norm = match *normalised {
                    true => Some(self.norm_of(*x)?),
                    false => None,
                };
                let (xv, what) = match &norm {
                    Some((input, [scale, shift])) => (
                        self.value(*input)?,
                        ConvBackward::new(wants(*x), wants(*w)).normalised([scale, shift]),
                    ),
                    None => (self.value(*x)?, ConvBackward::new(wants(*x), wants(*w))),
                };
                let what = match dx_acc {
                    Some(acc) => what.adding_dx_into(acc),
                    None => what,
                };
                let g = k.conv2d_backward(xv, self.value(*w)?, &dy, plan, what)?;
                [(*x, g.dx), (*w, g.dw)]
                    .into_iter()
                    .filter_map(|(v, t)| t.map(|t| (v, t)))
                    .collect()
            }
            Op::BatchNorm {
                x,
                gamma,
                beta,
                mean,
                inv_std,
                relu,
                batch_stats,
            } => {
                let g = self.batch_norm_grads(
                    *x,
                    *gamma,
                    *beta,
                    mean,
                    inv_std,
                    *relu,
                    *batch_stats,
                    dy,
                )?;
                bn_grads(*x, *gamma, *beta, g)?
            }
            Op::Add {
                a,
                b,
                relu: true,
                normalised: true,
            } if self.nodes[a.0].uses == 1 => {
                // `a` is a batch norm only this add read, so its gradient is this one
                // masked by the ReLU: the mask is applied plane by plane as batch norm's
                // backward reads it (when this is dy's only holder, in place), and the
                // masked gradient goes unchanged to `b`. Batch norm's node then
                // receives nothing.
                let Op::BatchNorm {
                    x,
                    gamma,
                    beta,
                    mean,
                    inv_std,
                    ..
                } = &self.nodes[a.0].op
                else {
                    unreachable!("a normalised add reads a batch norm");
                };
                let (xv, gv) = (self.value(*x)?, self.value(*gamma)?.data());
                let bn = BatchNormBackward::batch(mean, inv_std, gv).synced(self.sync);
                let (g, dy) = match Rc::try_unwrap(dy) {
                    Ok(dy) => {
                        let mut g =
                            k.batch_norm_backward(xv, BnGradIn::MaskedBy(dy, out()?), &bn)?;
                        let masked = g.masked_dy.take().expect("a masked gradient comes back");
                        (g, Rc::new(masked))
                    }
                    Err(shared) => {
                        let dy = self.relu_grad(shared, out()?)?;
                        (k.batch_norm_backward(xv, BnGradIn::Borrowed(&dy), &bn)?, dy)
                    }
                };
                let mut grads: Vec<_> = bn_grads(*x, *gamma, *beta, g)?
                    .into_iter()
                    .map(|(v, t)| (v, Rc::new(t)))
                    .collect();
                grads.push((*b, dy));
                return Ok(grads);
            }
            Op::Relu { x } => return Ok(vec![(*x, self.relu_grad(dy, out()?)?)]),
            Op::Add { a, b, relu, .. } => {
                let dy = if *relu {
                    self.relu_grad(dy, out()?)?
                } else {
                    dy
                };
                return Ok(vec![(*a, Rc::clone(&dy)), (*b, dy)]);
            }
            Op::MaxPool {
                x,
                winners: Some(w),
                ..
            } => vec![(*x, k.max_pool2d_backward_from_indices(w, &dy)?)],
            Op::MaxPool {
                x,
                pool,
                winners: None,
            } => {
                // (Not reached: a node whose input needs no gradient gets none.) The
                // output, still held, says each window's maximum: its winner is the
                // first input equal to it.
                let xv = self.value(*x)?;
                vec![(
                    *x,
                    k.max_pool2d_backward_given_output(xv, out()?, &dy, pool)?,
                )]
            }
            Op::AvgPool { x, pool } => {
                let shape = self.value(*x)?.dims4("avg_pool2d_backward")?;
                vec![(*x, k.avg_pool2d_backward(&dy, shape, pool)?)]
            }
            Op::GlobalAvgPool { x } => {
                let shape = self.value(*x)?.dims4("global_avg_pool_backward")?;
                vec![(*x, k.global_avg_pool_backward(&dy, shape)?)]
            }
            Op::Linear { x, w, b } => {
                let g = k.linear_backward(self.value(*x)?, self.value(*w)?, &dy)?;
                let db = Tensor::from_vec(&[g.db.len()], g.db)?;
                vec![(*x, g.dx), (*w, g.dw), (*b, db)]
            }
            Op::PadChannels { x, stride, pad } => {
                let shape = self.value(*x)?.dims4("pad_channels_backward")?;
                vec![(*x, k.pad_channels_backward(&dy, shape, *stride, *pad)?)]
            }
            Op::CrossEntropy {
                logits,
                probs,
                targets,
                smoothing,
            } => vec![(
                *logits,
                cross_entropy_backward(probs, targets, *smoothing, dy.data()[0])?,
            )],
        };
        Ok(grads.into_iter().map(|(v, g)| (v, Rc::new(g))).collect())
    }
}

/// Softmax cross-entropy's backward: `d loss / d logits = (softmax - target
/// distribution) / N`, times the loss's own upstream gradient `dloss`. The target
/// distribution puts `1 - smoothing` on the target class and spreads `smoothing` evenly
/// over all classes.
fn cross_entropy_backward(
    probs: &Tensor,
    targets: &[usize],
    smoothing: f32,
    dloss: f32,
) -> Result<Tensor> {
    let [n, classes] = probs.dims2("cross_entropy_backward")?;
    let scale = dloss / n as f32;
    let spread = smoothing / classes as f32;
    let mut d = probs.clone();
    for (row, &t) in d.data_mut().chunks_mut(classes).zip(targets) {
        for v in row.iter_mut() {
            *v = (*v - spread) * scale;
        }
        row[t] -= (1.0 - smoothing) * scale;
    }
    Ok(d)
}

/// The statistics of the whole batch from each replica's `local` ones: the count-weighted
/// mean, then the variance as the count-weighted sum of each replica's variance and
/// squared distance of its mean from the whole batch's (exact, with no cancellation of
/// a sum of squares), both summed in f64.
fn combine_replicas(sync: &dyn ReplicaSum, local: &ChannelStats) -> Result<ChannelStats> {
    let n = local.count as f64;
    let mut first: Vec<f64> = std::iter::once(n)
        .chain(local.mean.iter().map(|&m| n * m as f64))
        .collect();
    sync.sum(&mut first)?;
    let total = first[0];
    let mean: Vec<f64> = first[1..]
        .iter()
        .map(|s| if total > 0.0 { s / total } else { 0.0 })
        .collect();
    let mut second: Vec<f64> = local
        .var
        .iter()
        .zip(&local.mean)
        .zip(&mean)
        .map(|((&v, &m), &g)| n * (v as f64 + (m as f64 - g) * (m as f64 - g)))
        .collect();
    sync.sum(&mut second)?;
    let var = second
        .iter()
        .map(|s| if total > 0.0 { (s / total) as f32 } else { 0.0 })
        .collect();
    Ok(ChannelStats {
        mean: mean.into_iter().map(|m| m as f32).collect(),
        var,
        count: total as usize,
    })
}

/// A batch norm whose output has not been computed (see [`Tape::batch_norm`]).
struct DeferredNorm {
    x: Var,
    /// `[scale, shift]` (see [`affine_coefficients`]).
    affine: [Vec<f32>; 2],
    relu: bool,
}

/// Batch norm's gradients as `(input, gradient)` pairs: x, gamma, beta.
fn bn_grads(x: Var, gamma: Var, beta: Var, g: BatchNormGrads) -> Result<Vec<(Var, Tensor)>> {
    let c = g.dgamma.len();
    Ok(vec![
        (x, g.dx),
        (gamma, Tensor::from_vec(&[c], g.dgamma)?),
        (beta, Tensor::from_vec(&[c], g.dbeta)?),
    ])
}

/// Batch norm as one affine map per channel, `y = scale x + shift`: `scale = gamma
/// inv_std`, `shift = beta - mean scale`. The forward and the fused BN + ReLU backward
/// (which recomputes the ReLU's mask from it) both take it from here, so they agree to
/// the bit.
fn affine_coefficients(
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    inv_std: &[f32],
) -> [Vec<f32>; 2] {
    let scale: Vec<f32> = gamma.iter().zip(inv_std).map(|(g, s)| g * s).collect();
    let shift = beta
        .iter()
        .zip(mean)
        .zip(&scale)
        .map(|((b, m), s)| b - m * s)
        .collect();
    [scale, shift]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_norm_fixed_names_the_statistic_of_the_wrong_length() {
        let k = Kernels::active().unwrap();
        let (gamma, beta, beta3) = (
            Tensor::full(&[4], 1.0).unwrap(),
            Tensor::zeros(&[4]).unwrap(),
            Tensor::zeros(&[3]).unwrap(),
        );
        let mut tp = Tape::new(k);
        let x = tp.input(Tensor::zeros(&[1, 4, 2, 2]).unwrap());
        let g = tp.param(&gamma);
        let b = tp.param(&beta);
        let e = tp
            .batch_norm_fixed(x, g, b, &[0.0; 4], &[1.0; 3], 1e-5, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("running_var") && e.contains("[3]") && e.contains("[4]"),
            "{e}"
        );
        assert!(!e.contains("gamma"), "{e}");
        let e = tp
            .batch_norm_fixed(x, g, b, &[0.0; 5], &[1.0; 4], 1e-5, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("running_mean") && e.contains("[5]"), "{e}");
        let short = tp.param(&beta3);
        let e = tp
            .batch_norm_fixed(x, g, short, &[0.0; 4], &[1.0; 4], 1e-5, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("beta") && e.contains("[3]"), "{e}");
    }

    #[test]
    fn a_var_of_another_tape_is_an_error() {
        let k = Kernels::active().unwrap();
        let a = Tensor::from_vec(&[2], vec![1.0, -1.0]).unwrap();
        let mut first = Tape::new(k);
        let x = first.param(&a);
        let mut second = Tape::new(k);
        let other = second.param(&a);
        // Same index, other tape: refused, not taken for `other`.
        assert_eq!(x.index(), other.index());
        assert!(second.value(x).is_err());
        assert!(!second.requires_grad(x));
        assert!(second.relu(x).is_err());
        let y = first.relu(x).unwrap();
        let dy = Tensor::from_vec(&[2], vec![3.0, 4.0]).unwrap();
        let grads = first.backward_from(y, dy).unwrap();
        assert_eq!(grads.get(x).unwrap().data(), &[3.0, 0.0]);
        assert!(grads.get(other).is_none());
    }

    /// conv -> batch norm + ReLU -> global pool -> linear -> loss, its four trainable
    /// leaves (conv weight, gamma, beta, fc weight) and the frozen fc bias.
    fn small_net<'p>(
        tape: &mut Tape<'p>,
        t: &'p [Tensor; 5],
        x: Tensor,
    ) -> (Var, [Var; 4], ChannelStats) {
        let x = tape.input(x);
        let [w, g, b, fw] = [&t[0], &t[1], &t[2], &t[3]].map(|p| tape.param(p));
        let fb = tape.constant(&t[4]);
        let h = tape.conv2d(x, w, Conv2d::new(1, 1)).unwrap();
        let (h, stats) = tape.batch_norm(h, g, b, 1e-5, true).unwrap();
        let h = tape.global_avg_pool(h).unwrap();
        let logits = tape.linear(h, fw, fb).unwrap();
        let loss = tape.cross_entropy(logits, &[1, 0, 2], 0.0).unwrap();
        (loss, [w, g, b, fw], stats)
    }

    fn small_params() -> [Tensor; 5] {
        [
            Tensor::randn(&[4, 2, 3, 3], 0.0, 0.3, 1).unwrap(),
            Tensor::full(&[4], 1.2).unwrap(),
            Tensor::full(&[4], 0.1).unwrap(),
            Tensor::randn(&[3, 4], 0.0, 0.5, 2).unwrap(),
            Tensor::zeros(&[3]).unwrap(),
        ]
    }

    #[test]
    fn a_max_pool_after_batch_norm_and_relu_normalises_on_the_way_in_to_the_same_bits() {
        let k = Kernels::active().unwrap();
        let params = small_params();
        let x = Tensor::randn(&[3, 2, 9, 9], 0.0, 1.0, 3).unwrap();
        let run = |fused: bool| {
            let mut tape = Tape::new(k);
            let xv = tape.input(x.clone());
            let [w, g, b, fw] =
                [&params[0], &params[1], &params[2], &params[3]].map(|p| tape.param(p));
            let fb = tape.constant(&params[4]);
            let h = tape.conv2d(xv, w, Conv2d::new(1, 1)).unwrap();
            let (h, _) = tape.batch_norm(h, g, b, 1e-5, true).unwrap();
            if !fused {
                tape.value(h).unwrap(); // computed: the pool reads it as it is
            }
            let p = tape.max_pool2d(h, Pool2d::RESNET_STEM).unwrap();
            assert_eq!(tape.describe(h).unwrap().ends_with("(deferred)"), fused);
            let y = tape.value(p).unwrap().clone();
            let h = tape.global_avg_pool(p).unwrap();
            let logits = tape.linear(h, fw, fb).unwrap();
            let loss = tape.cross_entropy(logits, &[1, 0, 2], 0.0).unwrap();
            let grads = tape.backward(loss).unwrap();
            let g: Vec<Tensor> = [w, g, b, fw]
                .iter()
                .map(|&v| grads.get(v).unwrap().clone())
                .collect();
            (y, g)
        };
        let (y_plain, g_plain) = run(false);
        let (y_fused, g_fused) = run(true);
        assert_eq!(y_plain, y_fused);
        assert_eq!(g_plain, g_fused);
    }

    #[test]
    fn a_profiled_step_times_every_op_and_computes_the_same_gradients() {
        let k = Kernels::active().unwrap();
        let params = small_params();
        let x = Tensor::randn(&[3, 2, 5, 5], 0.0, 1.0, 3).unwrap();
        let run = |profile: bool| {
            let mut tape = Tape::new(k);
            tape.set_profile(profile);
            let (loss, leaves, _) = small_net(&mut tape, &params, x.clone());
            let grads = tape.backward(loss).unwrap();
            let g: Vec<Tensor> = leaves
                .iter()
                .map(|&v| grads.get(v).unwrap().clone())
                .collect();
            (g, grads.profile().map(|p| p.to_vec()))
        };
        let (plain, none) = run(false);
        let (profiled, rows) = run(true);
        assert!(none.is_none());
        assert_eq!(plain, profiled);
        let rows = rows.unwrap();
        // The five ops, in tape order, leaves left out.
        let ops: Vec<&str> = rows
            .iter()
            .map(|r| r.op.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            ops,
            [
                "conv2d",
                "batch_norm+relu",
                "global_avg_pool",
                "linear",
                "cross_entropy"
            ]
        );
        assert!(rows.windows(2).all(|w| w[0].node < w[1].node));
        let conv = &rows[0];
        assert_eq!(conv.shape, [3, 4, 5, 5]);
        assert!(conv.op.contains("3x3 s1: "), "{}", conv.op);
        // Output elements x (input channels x 3 x 3).
        assert_eq!(conv.macs, 3 * 4 * 5 * 5 * 2 * 3 * 3);
        assert_eq!(rows[3].macs, 3 * 3 * 4);
        assert_eq!(rows[1].macs, 0);
        assert_eq!(rows[1].shape, [3, 4, 5, 5]);
        assert_eq!(conv.inputs, [0, 1]);
        // Every op ran forward; all but the loss's seed-only node took a backward.
        assert!(rows.iter().all(|r| r.forward > Duration::ZERO));
        assert!(rows[..4].iter().all(|r| r.backward > Duration::ZERO));
    }

    #[test]
    fn backward_with_reports_each_trainable_leaf_once_its_gradient_is_final() {
        let k = Kernels::active().unwrap();
        let params = small_params();
        let x = Tensor::randn(&[3, 2, 5, 5], 0.0, 1.0, 3).unwrap();
        let mut tape = Tape::new(k);
        let (loss, leaves, _) = small_net(&mut tape, &params, x.clone());
        let mut seen: Vec<(Var, Tensor)> = Vec::new();
        let ones = Tensor::full(&[], 1.0).unwrap();
        let grads = tape
            .backward_with(loss, ones, &mut |v, g| {
                seen.push((v, g.clone()));
                Ok(())
            })
            .unwrap();
        // The head first, the first layer last; each once, and with its final value.
        let order: Vec<Var> = seen.iter().map(|(v, _)| *v).collect();
        assert_eq!(order, [leaves[3], leaves[1], leaves[2], leaves[0]]);
        for (v, g) in &seen {
            assert_eq!(grads.get(*v).unwrap(), g);
        }
        // The same as the plain backward pass.
        let mut plain = Tape::new(k);
        let (loss, again, _) = small_net(&mut plain, &params, x);
        let g2 = plain.backward(loss).unwrap();
        for (a, b) in leaves.iter().zip(again) {
            assert_eq!(grads.get(*a), g2.get(b));
        }
    }

    /// Two replicas holding the same batch: every sum doubles.
    #[derive(Debug)]
    struct Twins;

    impl ReplicaSum for Twins {
        fn sum(&self, values: &mut [f64]) -> Result<()> {
            values.iter_mut().for_each(|v| *v *= 2.0);
            Ok(())
        }
    }

    #[test]
    fn synchronised_batch_norm_over_identical_replicas_is_the_local_one() {
        // Two replicas with the same images have the batch's own statistics, twice the
        // count, and the same gradients: what a wrong combination (a variance from
        // uncentred sums, a count left local, dy's sums not summed) would break.
        let k = Kernels::active().unwrap();
        let params = small_params();
        let x = Tensor::randn(&[3, 2, 5, 5], 0.5, 2.0, 4).unwrap();
        let mut local = Tape::new(k);
        let (loss, leaves, stats) = small_net(&mut local, &params, x.clone());
        let g = local.backward(loss).unwrap();
        let mut synced = Tape::new(k);
        synced.sync_batch_norm(&Twins);
        let (loss, leaves2, stats2) = small_net(&mut synced, &params, x);
        let g2 = synced.backward(loss).unwrap();
        assert_eq!(stats2.count, 2 * stats.count);
        for (a, b) in stats.mean.iter().zip(&stats2.mean) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + a.abs()), "{a} {b}");
        }
        for (a, b) in stats.var.iter().zip(&stats2.var) {
            assert!((a - b).abs() <= 1e-5 * a.abs(), "{a} {b}");
        }
        for (a, b) in leaves.iter().zip(leaves2) {
            let (a, b) = (g.get(*a).unwrap(), g2.get(b).unwrap());
            let scale = a.data().iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (x, y) in a.data().iter().zip(b.data()) {
                assert!((x - y).abs() <= 1e-5 * scale, "{x} {y}");
            }
        }
    }
}
