//! A ResNet's parameters, named as torchvision names them, and their initialisation.
//!
//! This is the trainable form: convolutions and batch norms kept apart, every tensor
//! reachable by its torchvision key (`conv1.weight`, `layer1.0.bn1.running_var`,
//! `layer2.0.downsample.0.weight`, `fc.bias`, ...). [`crate::InferenceModel`] folds it
//! into the fast form.

use tensor::rng::Rng;
use tensor::{AvgPool2d, Conv2d, ConvPlan, Kernels, Layout, Mode, Result, Tensor, TensorError};

use crate::arch::{Arch, BlockKind};

/// Batch norm over channels: learned scale (`weight`, gamma) and shift (`bias`, beta),
/// running statistics, and PyTorch's defaults `eps = 1e-5`, `momentum = 0.1`.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm {
    /// Learned per-channel scale (gamma), `[C]`, initially 1.
    pub weight: Tensor,
    /// Learned per-channel shift (beta), `[C]`, initially 0.
    pub bias: Tensor,
    /// Running mean of each channel, `[C]`, initially 0: what eval mode (and a frozen
    /// layer in training) normalises with; training updates it after each step.
    pub running_mean: Tensor,
    /// Running unbiased variance of each channel, `[C]`, initially 1; updated like
    /// `running_mean`.
    pub running_var: Tensor,
    /// Added to the variance before its square root is taken (default `1e-5`).
    pub eps: f32,
    /// Weight of a batch's statistics in the running-statistics update,
    /// `running = (1 - momentum) running + momentum batch` (default 0.1).
    pub momentum: f32,
}

impl BatchNorm {
    /// PyTorch's initial state: gamma 1, beta 0, mean 0, variance 1.
    pub fn new(channels: usize) -> Result<Self> {
        Ok(BatchNorm {
            weight: Tensor::full(&[channels], 1.0)?,
            bias: Tensor::zeros(&[channels])?,
            running_mean: Tensor::zeros(&[channels])?,
            running_var: Tensor::full(&[channels], 1.0)?,
            eps: 1e-5,
            momentum: 0.1,
        })
    }
}

/// A convolution without bias followed by batch norm (every convolution of a ResNet).
#[derive(Debug, Clone, PartialEq)]
pub struct ConvBn {
    /// OIHW weights.
    pub weight: Tensor,
    /// The batch norm over the convolution's output channels.
    pub bn: BatchNorm,
    /// The convolution's stride, on both spatial axes.
    pub stride: usize,
    /// Zero padding on each side of both spatial axes, in pixels.
    pub padding: usize,
    /// Channel groups (ResNeXt's 3x3 convolutions; 1 elsewhere): `weight` is
    /// `[out, in / groups, k, k]`.
    pub groups: usize,
    /// Spacing of the kernel's taps (1: none; see
    /// [`ResNet::replace_stride_with_dilation`]).
    pub dilation: usize,
}

impl ConvBn {
    /// He (Kaiming) normal initialisation with `fan_out`, as torchvision does:
    /// `std = sqrt(2 / (out * kh * kw))`; zeros without a generator.
    fn new(
        rng: Option<&mut Rng>,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Self::grouped(rng, cin, cout, k, stride, padding, 1)
    }

    /// [`ConvBn::new`] in `groups` channel groups (PyTorch's `fan_out` is `out * k * k`
    /// whatever the groups).
    fn grouped(
        rng: Option<&mut Rng>,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        groups: usize,
    ) -> Result<Self> {
        let std = (2.0 / (cout * k * k) as f32).sqrt();
        let per_group = cin / groups.max(1);
        let len = cout * per_group * k * k;
        let data = match rng {
            Some(rng) => (0..len).map(|_| std * rng.normal()).collect(),
            None => vec![0.0; len],
        };
        Ok(ConvBn {
            weight: Tensor::from_vec(&[cout, per_group, k, k], data)?,
            bn: BatchNorm::new(cout)?,
            stride,
            padding,
            groups: groups.max(1),
            dilation: 1,
        })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.weight.shape()[0]
    }

    /// Stride, padding, groups and dilation.
    pub fn conv(&self) -> Conv2d {
        Conv2d::new(self.stride, self.padding)
            .with_groups(self.groups)
            .with_dilation(self.dilation)
    }

    /// This convolution's plan on `k`'s tier: the one inference (`InferenceModel`) and
    /// training (`autograd::Tape::conv2d`) make for it.
    pub fn plan(&self, k: &Kernels, mode: Mode, layout: Layout) -> Result<ConvPlan> {
        ConvPlan::new(k, self.weight.dims4("ConvBn::plan")?, self.conv(), mode)?.in_layout(layout)
    }
}

/// One convolution of a network, as the forward pass meets it.
#[derive(Debug, Clone)]
pub struct ConvLayer<'a> {
    /// The torchvision key of its weights, less `.weight` (`layer1.0.conv2`).
    pub name: String,
    /// The convolution, with its batch norm, in the model.
    pub conv: &'a ConvBn,
    /// The NCHW shape of its input.
    pub input: [usize; 4],
    /// The NCHW shape of its output.
    pub output: [usize; 4],
    /// Part of the stem (`conv1`, or ResNet-D's `conv1.0`, `conv1.3`, `conv1.6`), which
    /// [`crate::InferenceModel`] runs in NCHW whatever its layout: its output is pooled
    /// and converted once (ResNet-50-D with its deep stem in the blocked layout instead,
    /// converted after `conv1.0`: within the noise, 43.9 against 43.2 ms, best of five
    /// interleaved runs, batch 1, 2 threads; the simpler form was kept).
    pub in_stem: bool,
}

/// How a block's input reaches its output.
#[derive(Debug, Clone, PartialEq)]
pub enum Shortcut {
    /// The input itself (same shape).
    Identity,
    /// A 1x1 convolution with stride, then batch norm (torchvision's `downsample`).
    Projection(Box<ConvBn>),
    /// ResNet-D's shortcut (timm's `avg_down`): a 2x2 average pool with the block's
    /// stride (`ceil_mode`, padding not counted; none in a stride-1 block), then a
    /// stride-1 1x1 convolution and batch norm (timm's `downsample.1`, `downsample.2`).
    AvgProjection {
        /// The pooling, `None` for a stride-1 block (timm's `nn.Identity`).
        pool: Option<AvgPool2d>,
        /// The 1x1 convolution (stride 1) and its batch norm.
        conv: Box<ConvBn>,
    },
    /// The CIFAR paper's option A: `x[:, :, ::stride, ::stride]` zero-padded with `pad`
    /// channels on each side. No parameters.
    PadChannels {
        /// Subsampling step on both spatial axes.
        stride: usize,
        /// Zero channels added before and after the input's: `(out - in) / 2`.
        pad: usize,
    },
}

/// A residual block: `relu(convs(x) + shortcut(x))`, with BN and ReLU between the convs.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// Two (basic) or three (bottleneck) convolutions, in order.
    pub convs: Vec<ConvBn>,
    /// How the block's input reaches the addition.
    pub shortcut: Shortcut,
}

/// The keys of the deep stem's `i`-th convolution and batch norm (timm's
/// `nn.Sequential`: conv, BN, ReLU, conv, BN, ReLU, conv).
fn deep_stem_keys(i: usize) -> (String, String) {
    (format!("conv1.{}", 3 * i), format!("conv1.{}", 3 * i + 1))
}

impl Shortcut {
    /// The projection's convolution, with its keys under the block's `prefix`
    /// (`layer2.0`): torchvision's `downsample.0`/`.1`, ResNet-D's `downsample.1`/`.2`.
    fn projection(&self, prefix: &str) -> Option<(&ConvBn, String, String)> {
        let (conv, bn) = Shortcut::projection_keys(prefix, self);
        match self {
            Shortcut::Projection(c) => Some((c, conv, bn)),
            Shortcut::AvgProjection { conv: c, .. } => Some((c, conv, bn)),
            Shortcut::Identity | Shortcut::PadChannels { .. } => None,
        }
    }

    fn projection_keys(prefix: &str, s: &Shortcut) -> (String, String) {
        let first = usize::from(matches!(s, Shortcut::AvgProjection { .. }));
        (
            format!("{prefix}.downsample.{first}"),
            format!("{prefix}.downsample.{}", first + 1),
        )
    }

    /// The projection's convolution, if the shortcut has one.
    pub fn projection_mut(&mut self) -> Option<&mut ConvBn> {
        match self {
            Shortcut::Projection(c) | Shortcut::AvgProjection { conv: c, .. } => Some(c),
            Shortcut::Identity | Shortcut::PadChannels { .. } => None,
        }
    }

    /// The projection's convolution, if the shortcut has one.
    pub fn projection_conv(&self) -> Option<&ConvBn> {
        match self {
            Shortcut::Projection(c) | Shortcut::AvgProjection { conv: c, .. } => Some(c),
            Shortcut::Identity | Shortcut::PadChannels { .. } => None,
        }
    }
}

/// A whole ResNet.
#[derive(Debug, Clone, PartialEq)]
pub struct ResNet {
    /// The architecture it was built as.
    pub arch: Arch,
    /// ResNet-D's deep stem before [`ResNet::stem`]: 3x3 stride 2 from RGB to 32
    /// channels (`conv1.0`, `conv1.1`), then 3x3 to 32 (`conv1.3`, `conv1.4`), each
    /// followed by ReLU. Empty for the other architectures.
    pub deep_stem: Vec<ConvBn>,
    /// The first convolution and batch norm (`conv1`, `bn1`): 7x7 stride 2 to 64
    /// channels for the ImageNet nets (a 3x3/2 max pool follows), 3x3 stride 1 to 16
    /// channels for the CIFAR ones; ResNet-D's last stem convolution (3x3, 32 to 64
    /// channels, `conv1.6`, `bn1`).
    pub stem: ConvBn,
    /// The residual stages (`layer1`, `layer2`, ...: four for the ImageNet nets, three
    /// for the CIFAR ones), each a list of blocks; every stage after the first has
    /// stride 2 in its first block.
    pub stages: Vec<Vec<Block>>,
    /// `[num_classes, feature_dim]`.
    pub fc_weight: Tensor,
    /// `[num_classes]`.
    pub fc_bias: Tensor,
    /// torchvision's `replace_stride_with_dilation` for `layer2`..`layer4`: each stage
    /// set here keeps its input's resolution, its stride replaced by dilating its 3x3
    /// convolutions (see [`ResNet::replace_stride_with_dilation`]). All false by default.
    pub dilated_stages: [bool; 3],
}

/// A borrowed parameter or buffer, by torchvision key.
pub struct Named<'a> {
    /// The torchvision key (`layer1.0.bn1.running_var`).
    pub name: String,
    /// The tensor in the model.
    pub tensor: &'a Tensor,
    /// Learned (a parameter) rather than a running statistic (a buffer).
    pub trainable: bool,
}

impl ResNet {
    /// A freshly initialised network for `num_classes` classes; the same seed gives the
    /// same weights on every machine.
    pub fn new(arch: Arch, num_classes: usize, seed: u64) -> Result<Self> {
        Self::build(arch, num_classes, Some(&mut Rng::seed_from_u64(seed)))
    }

    /// The network with every weight zero (and batch norm at the identity), for a
    /// loader that fills in every tensor: drawing random weights to overwrite took two
    /// thirds of `resnet classify`'s time on ResNet-50.
    pub(crate) fn zeroed(arch: Arch, num_classes: usize) -> Result<Self> {
        Self::build(arch, num_classes, None)
    }

    fn build(arch: Arch, num_classes: usize, mut rng: Option<&mut Rng>) -> Result<Self> {
        // The head is `num_classes x feature_dim` floats: refused before anything is
        // allocated when it is empty or could not be addressed.
        let head = num_classes.checked_mul(arch.feature_dim());
        if num_classes == 0 || head.is_none_or(|n| n > isize::MAX as usize / 4) {
            return Err(TensorError::InvalidArgument {
                op: "ResNet::new",
                reason: format!(
                    "num_classes is {num_classes}: a head needs at least one class, and at \
                     most what memory can address"
                ),
            });
        }
        let mut deep_stem = Vec::new();
        let stem = if arch.is_cifar() {
            ConvBn::new(rng.as_deref_mut(), 3, 16, 3, 1, 1)?
        } else if arch.is_resnet_d() {
            deep_stem.push(ConvBn::new(rng.as_deref_mut(), 3, 32, 3, 2, 1)?);
            deep_stem.push(ConvBn::new(rng.as_deref_mut(), 32, 32, 3, 1, 1)?);
            ConvBn::new(rng.as_deref_mut(), 32, 64, 3, 1, 1)?
        } else {
            ConvBn::new(rng.as_deref_mut(), 3, 64, 7, 2, 3)?
        };
        let kind = arch.block();
        let mut cin = stem.out_channels();
        let mut stages = Vec::new();
        for (s, (&blocks, &width)) in arch
            .stage_blocks()
            .iter()
            .zip(&arch.stage_channels())
            .enumerate()
        {
            let mut stage = Vec::with_capacity(blocks);
            for b in 0..blocks {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let cout = width * kind.expansion();
                let convs = match kind {
                    BlockKind::Basic => vec![
                        ConvBn::new(rng.as_deref_mut(), cin, width, 3, stride, 1)?,
                        ConvBn::new(rng.as_deref_mut(), width, width, 3, 1, 1)?,
                    ],
                    // torchvision v1.5: the stride is on the 3x3.
                    // The wide variants widen the inside only: `mid = width * factor`.
                    BlockKind::Bottleneck => {
                        let mid = arch.bottleneck_width(width);
                        let mut last = ConvBn::new(rng.as_deref_mut(), mid, cout, 1, 1, 0)?;
                        // timm's `zero_init_last`: each block starts as the identity.
                        if arch.is_resnet_d() && rng.is_some() {
                            last.bn.weight = Tensor::zeros(&[cout])?;
                        }
                        vec![
                            ConvBn::new(rng.as_deref_mut(), cin, mid, 1, 1, 0)?,
                            ConvBn::grouped(
                                rng.as_deref_mut(),
                                mid,
                                mid,
                                3,
                                stride,
                                1,
                                arch.groups(),
                            )?,
                            last,
                        ]
                    }
                };
                let shortcut = if stride == 1 && cin == cout {
                    Shortcut::Identity
                } else if arch.is_cifar() {
                    Shortcut::PadChannels {
                        stride,
                        pad: (cout - cin) / 2,
                    }
                } else if arch.is_resnet_d() {
                    Shortcut::AvgProjection {
                        pool: (stride > 1).then(|| AvgPool2d::resnet_d(stride)),
                        conv: Box::new(ConvBn::new(rng.as_deref_mut(), cin, cout, 1, 1, 0)?),
                    }
                } else {
                    let conv = ConvBn::new(rng.as_deref_mut(), cin, cout, 1, stride, 0)?;
                    Shortcut::Projection(Box::new(conv))
                };
                stage.push(Block { convs, shortcut });
                cin = cout;
            }
            stages.push(stage);
        }
        // PyTorch's nn.Linear default: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
        let bound = 1.0 / (cin as f32).sqrt();
        let mut uniform = |n: usize| match rng.as_deref_mut() {
            Some(rng) => (0..n).map(|_| rng.uniform(-bound, bound)).collect(),
            None => vec![0.0; n],
        };
        let w = uniform(num_classes * cin);
        let b = uniform(num_classes);
        Ok(ResNet {
            arch,
            deep_stem,
            stem,
            stages,
            fc_weight: Tensor::from_vec(&[num_classes, cin], w)?,
            fc_bias: Tensor::from_vec(&[num_classes], b)?,
            dilated_stages: [false; 3],
        })
    }

    /// The first parameter or statistic that cannot be right: a non-finite value
    /// anywhere, or a negative running variance. `(key, index, value)`, or `None` when
    /// every value is usable. Loading refuses such files, and training stops on them.
    pub fn first_invalid_value(&self) -> Option<(String, usize, f32)> {
        for n in self.named_tensors() {
            let var = n.name.ends_with(".running_var");
            if let Some((i, &v)) = n
                .tensor
                .data()
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite() || (var && **v < 0.0))
            {
                return Some((n.name, i, v));
            }
        }
        None
    }

    /// Classes of the head.
    pub fn num_classes(&self) -> usize {
        self.fc_weight.shape()[0]
    }

    /// Every parameter and buffer under its torchvision key, in torchvision's order.
    pub fn named_tensors(&self) -> Vec<Named<'_>> {
        fn conv_bn<'a>(out: &mut Vec<Named<'a>>, conv: &str, bn: &str, c: &'a ConvBn) {
            let mut push = |name: String, tensor, trainable| {
                out.push(Named {
                    name,
                    tensor,
                    trainable,
                })
            };
            push(format!("{conv}.weight"), &c.weight, true);
            push(format!("{bn}.weight"), &c.bn.weight, true);
            push(format!("{bn}.bias"), &c.bn.bias, true);
            push(format!("{bn}.running_mean"), &c.bn.running_mean, false);
            push(format!("{bn}.running_var"), &c.bn.running_var, false);
        }
        let mut out = Vec::new();
        for (i, c) in self.deep_stem.iter().enumerate() {
            let (conv, bn) = deep_stem_keys(i);
            conv_bn(&mut out, &conv, &bn, c);
        }
        conv_bn(&mut out, self.stem_key(), "bn1", &self.stem);
        for (s, stage) in self.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                let prefix = format!("layer{}.{b}", s + 1);
                for (i, c) in block.convs.iter().enumerate() {
                    conv_bn(
                        &mut out,
                        &format!("{prefix}.conv{}", i + 1),
                        &format!("{prefix}.bn{}", i + 1),
                        c,
                    );
                }
                if let Some((c, conv, bn)) = block.shortcut.projection(&prefix) {
                    conv_bn(&mut out, &conv, &bn, c);
                }
            }
        }
        out.push(Named {
            name: "fc.weight".into(),
            tensor: &self.fc_weight,
            trainable: true,
        });
        out.push(Named {
            name: "fc.bias".into(),
            tensor: &self.fc_bias,
            trainable: true,
        });
        out
    }

    /// Every convolution in forward order (a block's shortcut after its convolutions),
    /// with its input and output shapes for an NCHW input of `input` shape.
    pub fn conv_layers<'a>(&'a self, input: [usize; 4]) -> Result<Vec<ConvLayer<'a>>> {
        fn layer(name: String, conv: &ConvBn, input: [usize; 4]) -> Result<ConvLayer<'_>> {
            let [n, _, h, w] = input;
            let [o, _, kh, kw] = conv.weight.dims4("conv_layers")?;
            let [oh, ow] = conv.conv().output_size(h, w, kh, kw)?;
            Ok(ConvLayer {
                name,
                conv,
                input,
                output: [n, o, oh, ow],
                in_stem: false,
            })
        }
        let mut out = Vec::new();
        let mut push = |l: ConvLayer<'a>| {
            let y = l.output;
            out.push(l);
            y
        };
        let mut x = input;
        let stem = |l: Result<ConvLayer<'a>>| l.map(|l| ConvLayer { in_stem: true, ..l });
        for (i, c) in self.deep_stem.iter().enumerate() {
            x = push(stem(layer(deep_stem_keys(i).0, c, x))?);
        }
        x = push(stem(layer(self.stem_key().into(), &self.stem, x))?);
        if !self.arch.is_cifar() {
            let [h, w] = tensor::Pool2d::RESNET_STEM.output_size(x[2], x[3])?;
            x = [x[0], x[1], h, w];
        }
        for (s, stage) in self.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                let (prefix, x0) = (format!("layer{}.{b}", s + 1), x);
                for (i, c) in block.convs.iter().enumerate() {
                    x = push(layer(format!("{prefix}.conv{}", i + 1), c, x)?);
                }
                match &block.shortcut {
                    Shortcut::Projection(c) => {
                        push(layer(format!("{prefix}.downsample.0"), c, x0)?);
                    }
                    Shortcut::AvgProjection { pool, conv } => {
                        let mut xp = x0;
                        if let Some(p) = pool {
                            let [h, w] = p.output_size(x0[2], x0[3])?;
                            xp = [x0[0], x0[1], h, w];
                        }
                        push(layer(format!("{prefix}.downsample.1"), conv, xp)?);
                    }
                    Shortcut::Identity | Shortcut::PadChannels { .. } => {}
                }
            }
        }
        Ok(out)
    }

    /// Multiply-adds of one forward pass on an `h x w` image, counting convolutions and
    /// the classifier (pooling, batch norm and additions are a rounding error beside
    /// them): ResNet-50 at 224 x 224 is about 4.1 G.
    pub fn forward_macs(&self, h: usize, w: usize) -> Result<f64> {
        let mut macs = self.fc_weight.len() as f64;
        for layer in self.conv_layers([1, self.stem.weight.shape()[1], h, w])? {
            let [_, o, oh, ow] = layer.output;
            let [_, i, kh, kw] = layer.conv.weight.dims4("forward_macs")?;
            macs += (o * oh * ow * i * kh * kw) as f64;
        }
        Ok(macs)
    }

    /// Every parameter and buffer, mutable, under the same keys and in the same order as
    /// [`ResNet::named_tensors`] (a test checks the two agree).
    pub fn named_tensors_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        fn conv_bn<'a>(
            out: &mut Vec<(String, &'a mut Tensor)>,
            conv: &str,
            bn: &str,
            c: &'a mut ConvBn,
        ) {
            out.push((format!("{conv}.weight"), &mut c.weight));
            out.push((format!("{bn}.weight"), &mut c.bn.weight));
            out.push((format!("{bn}.bias"), &mut c.bn.bias));
            out.push((format!("{bn}.running_mean"), &mut c.bn.running_mean));
            out.push((format!("{bn}.running_var"), &mut c.bn.running_var));
        }
        let mut out = Vec::new();
        let stem_key = self.stem_key();
        for (i, c) in self.deep_stem.iter_mut().enumerate() {
            let (conv, bn) = deep_stem_keys(i);
            conv_bn(&mut out, &conv, &bn, c);
        }
        conv_bn(&mut out, stem_key, "bn1", &mut self.stem);
        for (s, stage) in self.stages.iter_mut().enumerate() {
            for (b, block) in stage.iter_mut().enumerate() {
                let prefix = format!("layer{}.{b}", s + 1);
                for (i, c) in block.convs.iter_mut().enumerate() {
                    conv_bn(
                        &mut out,
                        &format!("{prefix}.conv{}", i + 1),
                        &format!("{prefix}.bn{}", i + 1),
                        c,
                    );
                }
                let (conv, bn) = Shortcut::projection_keys(&prefix, &block.shortcut);
                if let Some(c) = block.shortcut.projection_mut() {
                    conv_bn(&mut out, &conv, &bn, c);
                }
            }
        }
        out.push(("fc.weight".into(), &mut self.fc_weight));
        out.push(("fc.bias".into(), &mut self.fc_bias));
        out
    }

    /// torchvision's `replace_stride_with_dilation` (`resnet50(replace_stride_with_dilation
    /// = [False, True, True])`, the backbone of its DeepLabV3 and FCN): each of `layer2`,
    /// `layer3`, `layer4` set in `stages` keeps its input's resolution; its first block's
    /// stride (on the 3x3 convolution and the projection shortcut) becomes 1, and the
    /// dilation grows by that stride from the next 3x3 convolution on (the first block
    /// keeps the previous dilation, as torchvision's `_make_layer` does). `[false, true,
    /// true]` gives an output stride of 8 (a 224 x 224 image ends at 28 x 28),
    /// `[false, false, true]` 16. The weights do not change, so a loaded torchvision file
    /// can be turned into its dilated backbone; calling it again sets another pattern.
    ///
    /// Bottleneck networks only (torchvision refuses dilation in basic blocks), and not
    /// ResNet-D (timm dilates its pooled shortcuts otherwise).
    pub fn replace_stride_with_dilation(&mut self, stages: [bool; 3]) -> Result<()> {
        let refuse = |why: &str| {
            Err(TensorError::InvalidArgument {
                op: "replace_stride_with_dilation",
                reason: format!("{}: {why}", self.arch),
            })
        };
        let plain = self.arch.block() != BlockKind::Bottleneck
            || self.arch.is_cifar()
            || self.arch.is_resnet_d();
        if plain && stages.iter().all(|&d| !d) {
            // Nothing to dilate, and these nets' strides are placed otherwise (on a basic
            // block's first convolution, in ResNet-D's pooled shortcuts): left alone.
            self.dilated_stages = stages;
            return Ok(());
        }
        if stages.iter().any(|&d| d) {
            if self.arch.block() != BlockKind::Bottleneck || self.arch.is_cifar() {
                return refuse(
                    "dilation needs bottleneck blocks (torchvision refuses it in basic blocks)",
                );
            }
            if self.arch.is_resnet_d() {
                return refuse("dilating ResNet-D's pooled shortcuts is not implemented");
            }
        }
        let mut dilation = 1;
        for (s, stage) in self.stages.iter_mut().enumerate() {
            let mut stride = if s > 0 { 2 } else { 1 };
            let previous = dilation;
            if s > 0 && stages[s - 1] {
                dilation *= stride;
                stride = 1;
            }
            for (b, block) in stage.iter_mut().enumerate() {
                let (st, d) = if b == 0 {
                    (stride, previous)
                } else {
                    (1, dilation)
                };
                if let Some(c) = block.convs.get_mut(1) {
                    c.stride = st;
                    c.dilation = d;
                    c.padding = d;
                }
                if let Some(c) = block.shortcut.projection_mut() {
                    c.stride = st;
                }
            }
        }
        self.dilated_stages = stages;
        Ok(())
    }

    /// [`ResNet::replace_stride_with_dilation`] by the output stride wanted: 32 (the
    /// plain network), 16 (`layer4` dilated) or 8 (`layer3` and `layer4` dilated), the
    /// settings of torchvision's segmentation backbones.
    pub fn set_output_stride(&mut self, output_stride: usize) -> Result<()> {
        let stages = match output_stride {
            32 => [false, false, false],
            16 => [false, false, true],
            8 => [false, true, true],
            other => {
                return Err(TensorError::InvalidArgument {
                    op: "set_output_stride",
                    reason: format!("output stride {other}: expected 8, 16 or 32"),
                })
            }
        };
        self.replace_stride_with_dilation(stages)
    }

    /// The key of the stem's (last) convolution: `conv1`, or `conv1.6` in ResNet-D's
    /// deep stem.
    fn stem_key(&self) -> &'static str {
        if self.deep_stem.is_empty() {
            "conv1"
        } else {
            "conv1.6"
        }
    }

    /// The number of trainable parameters (what papers and torchvision quote).
    pub fn num_parameters(&self) -> usize {
        self.named_tensors()
            .iter()
            .filter(|n| n.trainable)
            .map(|n| n.tensor.len())
            .sum()
    }
}
