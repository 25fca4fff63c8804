//! Convolution (NCHW input, OIHW weights; channel groups and dilation too): the **plan**
//! that chooses how each layer runs, and the routes it chooses between.
//!
//! A [`ConvPlan`] is made once per layer from what the layer is (its weights' shape, its
//! stride and padding), the tier's [`Kernels`], the [`Mode`] (inference, or training,
//! which also needs the two gradients) and the activations' [`Layout`]. For an input
//! shape, [`ConvPlan::routes`] names what runs, as values: the forward route
//! ([`Forward`]), the input gradient's ([`InputGrad`]) and the weight gradient's
//! ([`WeightGrad`]). Every one of those choices is made in one function, `ladder` below,
//! read top to bottom; no kernel decides a route on its own. A test or a tool can force a
//! route ([`ConvPlan::force_forward`] and its two siblings); a forced route that cannot
//! run the layer is an error naming why, never a silent fallback. `resnet info --plan`
//! lists a whole network's plan.
//!
//! [`Kernels::pack_conv`] packs a layer's weights in the layout its plan's forward route
//! reads ([`ConvWeights`], which keeps the plan), and [`Kernels::conv2d`] runs it. What
//! decides the weights' layout depends on the layer alone, never on the image size, so
//! one packing serves every input size: only the direct kernel's form (which reads the
//! image padded, in phase planes, ...) and the weight gradient's operand depend on the
//! image, and the ladder resolves them again for each input shape.
//!
//! # The ladder
//!
//! | rung | route | when |
//! |---|---|---|
//! | dilated, blocked | [`Forward::Blocked`] / [`Forward::BlockedGrouped`] / [`Forward::BlockedNarrowGroups`] | dilation above 1 in the blocked layout: the kernel steps `d` rows and columns between taps |
//! | dilated | the rungs below, once per phase | dilation above 1 in NCHW: a "same" layer (stride 1, padding `d (k - 1) / 2`) splits into `d^2` undilated convolutions of the image's phases ([`ConvPlan::phase_plan`], `dilated.rs`); other dilated layers are refused by name |
//! | forward, grouped, 0 | [`Forward::BlockedNarrowGroups`] | groups above 1 in the blocked layout, dividing a block or whole blocks, as many outputs as inputs: the narrow-group kernel (`narrow_groups`) |
//! | forward, grouped, 0' | [`Forward::BlockedGrouped`] | other groups above 1 in the blocked layout: the single-block kernel over each output block's group of input blocks (`blocked_groups` says which groups fit) |
//! | grouped | the rungs below, once per group | groups above 1 in NCHW (and every backward): each group a dense convolution of its channels ([`ConvPlan::group_plan`], `grouped.rs`) |
//! | forward, 1' | [`Forward::BlockedWinograd`] | blocked layout, a dense 3x3 layer of stride 1 without dilation, at most `WINOGRAD_MAX_CHANNELS` channels in and out, unless [`ConvPlan::with_winograd`] turned it off |
//! | forward, 1' | [`Forward::BlockedWinogradOnTheFly`] | what takes [`Forward::BlockedWinograd`] for up to `WINOGRAD_WIDE_MAX_CHANNELS` channels at `WINOGRAD_WIDE_SPENDING_MIN_PIXELS`, where the plan may not spend memory ([`ConvPlan::with_winograd_memory`] off): the direct kernel's weights, transformed at each call |
//! | forward, 1'' | [`Forward::Winograd`] | NCHW (training's layout), a dense 3x3 layer of stride 1 without dilation, `WINOGRAD_NCHW_MIN_CHANNELS` to `WINOGRAD_NCHW_MAX_CHANNELS` channels in and out, unless Winograd is turned off |
//! | forward, 1 | [`Forward::Blocked`] | blocked layout, except an input of fewer channels than a vector (the RGB stem) |
//! | forward, 2 | [`Forward::Direct`] | a kernel larger than 1x1 and at most 64 output channels |
//! | forward, 3 | [`Forward::GemmImage`] | 1x1, stride 1, unpadded |
//! | forward, 4 | [`Forward::GemmSubsampled`] | 1x1, unpadded, strided |
//! | forward, 5 | [`Forward::GemmIm2col`] | anything else |
//! | direct form | [`DirectForm`] | `Masked` for a stride-1 "same" convolution whose rows are shorter than a vector but whose plane is whole vectors; `Padded` (stride 1) or `Phased` (strided) when rows are whole vectors; `Planar` otherwise |
//! | dX, 1 | [`InputGrad::GemmImage`] | 1x1, stride 1, unpadded |
//! | dX, 1' | [`InputGrad::Winograd`] | what forward 1'' takes (outputs and inputs swapped), padding at most 2 |
//! | dX, 2 | [`InputGrad::DirectTransposed`] | stride 1, square kernel, at most 64 input channels |
//! | dX, 3 | [`InputGrad::DirectPhases`] | strided, at most 64 input channels, where every phase reads inside `dY` |
//! | dX, 4 | [`InputGrad::GemmCol2im`] | anything else |
//! | dW, 0 | [`WeightGrad::Winograd`] | NCHW, a dense 3x3 layer of stride 1 without dilation, `WINOGRAD_DW_MIN_CHANNELS` to `WINOGRAD_NCHW_MAX_CHANNELS` channels in and out and at least `WINOGRAD_DW_MIN_PRODUCT` multiply-adds a product, unless Winograd is turned off: the 36 products summed over the batch's tiles by GEMMs |
//! | dW, 1 | [`WeightGrad::Gemm`] | output planes under `GEMM_DW_MAX_PIXELS` pixels, at least `GEMM_DW_MIN_OUTPUTS` output channels, at most `GEMM_DW_MAX_COLUMNS` pixels in one thread's group of images |
//! | dW, 2 | [`WeightGrad`] | the outer-product kernel when the output channels are whole groups of its tile's vectors, else row-dot; taps read from the image itself for a 1x1, stride-1, unpadded layer, else from phase planes |
//!
//! Each route family has a file of its own in this folder: `forward.rs` (the entry
//! points and the three GEMM routes, over `crate::gemm`), `direct.rs` (the direct
//! kernel's forms, and the transposed ones of `dX`), `nchwc.rs` (the blocked layout's
//! kernel, grouped or not), `winograd.rs` (Winograd F(4x4, 3x3) in the blocked layout), `winograd_nchw.rs` (the same for NCHW
//! activations, through copies into the blocked layout and back, and Winograd's `dW`), `weight_grad.rs` (`dW`), `backward.rs` (the backward's
//! driver and the GEMM + col2im route of `dX`), `grouped.rs` and `dilated.rs` (groups and
//! phases run through the dense routes). The copies they share (padding, phase planes,
//! per-channel views) are in `crate::layout`. `docs/convolution.md` explains them with
//! their measurements.

mod backward;
mod dilated;
mod direct;
mod forward;
mod grouped;
mod nchwc;
mod weight_grad;
mod winograd;
mod winograd_nchw;

use std::fmt;

pub use backward::{ConvBackward, DxInto};
pub(crate) use forward::Packed;
pub use forward::{fold_batch_norm, fold_batch_norm_into, Conv2d, ConvWeights};
pub use nchwc::BLOCKED_CHUNK_BYTES;
pub use winograd::WinogradWeights;
pub use winograd::ON_THE_FLY_SLICE_BYTES;

use crate::error::{Result, TensorError};
use crate::kernels::Kernels;

/// The most output channels (of the convolution the kernel computes: the forward's, or
/// for dX the input channels) for which the direct kernel is chosen. Measured
/// (`docs/convolution.md`, AVX-512, 2 threads): it beats im2col + GEMM 1.3-2.2x up to 64
/// channels (ResNet-20's 16 and 32 channels: 87 -> 216 and 96 -> 165 GFLOP/s; its 8 x 8
/// stage 71 -> 117; the stride-2 layers, read through phase planes, 44 -> 100 and 47-78
/// -> 91-153; ResNet-50's 7 x 7 stem at batch 1, 64-85 -> 118-153); with 128 and more
/// the two are within the host's noise and im2col + GEMM keeps them.
pub const DIRECT_MAX_CHANNELS: usize = 64;

/// Whether a plan is for inference (forward only) or training (the forward, `dX` and
/// `dW`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The forward only, with batch norm folded in by the caller.
    #[default]
    Inference,
    /// The forward, and the routes of `dX` and `dW` for the backward.
    Training,
}

/// The memory layout of the activations a convolution reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// `[N][C][H][W]`, PyTorch's.
    #[default]
    Nchw,
    /// The blocked channel layout `[N][C / L][H][W][L]` of `crate::blocked` (inference
    /// only).
    Blocked,
}

/// How the forward convolution runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forward {
    /// 1x1, stride 1, unpadded: the packed GEMM reads the image itself as its `B`
    /// matrix (`x[b]` is already `C x (H W)`).
    GemmImage,
    /// 1x1, unpadded, strided: `B` is the image subsampled at every `s`-th row and
    /// column, copied into a per-thread buffer.
    GemmSubsampled,
    /// im2col packed block by block from the image's phase planes into the GEMM.
    GemmIm2col,
    /// The direct kernel (no column matrix), in one of its forms.
    Direct(DirectForm),
    /// The blocked-layout kernel (`crate::blocked`).
    Blocked,
    /// A grouped convolution in the blocked layout: each output block by the
    /// single-block kernel over its group's input blocks only (groups narrower than a
    /// block are read as one block of several groups, the weights zero between groups;
    /// see `blocked_groups` in `conv/mod.rs`).
    BlockedGrouped,
    /// A grouped convolution in the blocked layout whose groups divide a block or are
    /// whole blocks, with as many outputs as inputs (all of ResNeXt-50's: 4 to 32
    /// channels; a depthwise layer): the narrow-group kernel, each output lane multiplying
    /// only its own group's inputs (`kernels::blocked_tile::narrow_tile`), no zero
    /// weights.
    BlockedNarrowGroups,
    /// A 3x3, stride-1, undilated, dense convolution in the blocked layout by Winograd's
    /// F(4x4, 3x3) (`winograd.rs`): 4 x 4 output tiles from 6 x 6 input windows, 36
    /// products per tile and channel pair instead of 144, through the blocked kernel.
    /// Not exact: its rounding error is a few times the direct kernel's
    /// (`docs/convolution.md`); [`ConvPlan::with_winograd`] turns it off.
    BlockedWinograd,
    /// [`Forward::BlockedWinograd`] by F(2x2, 3x3): 2 x 2 tiles from 4 x 4 windows, 16
    /// products per tile and channel pair instead of 36 (2.25x fewer multiplications
    /// than the direct kernel, weights 16/9 of the 3x3 ones); forced only.
    BlockedWinograd2,
    /// [`Forward::BlockedWinograd`] with the weights kept as the direct kernel's
    /// (`Forward::Blocked`'s, 9 values a channel pair instead of 36) and transformed on
    /// the fly, per call, a slice of input channels at a time while the products use
    /// them (`winograd.rs`): Winograd's multiplications without its memory, for the
    /// layers whose transformed weights would cost more than a plan may spend
    /// ([`ConvPlan::with_winograd_memory`]). The transform runs in `f32` (the kept
    /// weights are transformed in `f64` and rounded once).
    BlockedWinogradOnTheFly,
    /// [`Forward::BlockedWinograd`] for NCHW activations (`winograd_nchw.rs`): the batch
    /// copied into the blocked layout (a training batch norm + ReLU applied on the way),
    /// the blocked route, and the output copied back with the epilogue. Training's 3x3,
    /// stride-1 layers; the same rounding as the blocked route.
    Winograd,
}

/// How the direct kernel reads the image (see `direct.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DirectForm {
    /// Stride 1, output rows of whole vectors: a zero-padded copy of the image, tiles
    /// running on across row ends.
    Padded,
    /// Stride 1 "same" convolution whose rows are shorter than a vector but whose plane
    /// is whole vectors (ResNet-20's 8 x 8 stage on AVX-512): `kw` masked copies of the
    /// image at its own pitch, one flat run per channel.
    Masked,
    /// Strided, output rows of whole vectors: the phase planes read like a padded image.
    Phased,
    /// Any shape: the phase planes (the padded image for stride 1) computed as one flat
    /// run per channel at their pitch into a wider buffer, then copied out.
    Planar,
}

/// How the input gradient `dX` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputGrad {
    /// 1x1, stride 1, unpadded: `dX_n = W^T dY_n`, one GEMM straight into `dX`.
    GemmImage,
    /// `dcols = W^T dY_n` by the GEMM, then col2im into `dX`.
    GemmCol2im,
    /// Stride 1: the transposed convolution (`dY` with the weights rotated by 180
    /// degrees and their channels swapped, padded by `kh - 1 - p`) by the direct kernel,
    /// in the form given (`Padded`, `Masked` or `Planar`: the transposed convolution has
    /// stride 1).
    DirectTransposed(DirectForm),
    /// Strided: the direct kernel once per output phase `(y % s, x % s)`, the phases
    /// interleaved into `dX` (`StridedTransposed`).
    DirectPhases,
    /// 3x3, stride 1, padding at most 2: the transposed convolution (`dY` by the weights
    /// rotated by 180 degrees, channels swapped, padded by `2 - p`) by Winograd F(4x4,
    /// 3x3), as [`Forward::Winograd`] runs a forward (`winograd_nchw.rs`).
    Winograd,
}

/// Where the weight gradient's kernels read the taps (the input seen through each
/// kernel position).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Taps {
    /// The image itself (1x1, stride 1, unpadded: tap `c` is channel `c`).
    Image,
    /// The zero-padded image's phase planes, in which every tap is a unit-stride run.
    PhasePlanes,
}

/// How the weight gradient `dW` runs (see `weight_grad.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightGrad {
    /// `dY` transposed pixel-major, each input value broadcast: outer products into
    /// `dW^T` (output channels a whole number of the tile's vector groups).
    OuterProduct(Taps),
    /// Rows of `dY` and of the taps dotted along the pixels, reduced at the end.
    RowDot(Taps),
    /// `dW = dY X^T` as one GEMM over a group of images, their pixels side by side
    /// (`[O, images x pixels]` times the transpose of the images' columns: im2col of the
    /// possibly normalised input, or for an unpadded 1x1 layer the input subsampled by
    /// the stride). For small planes of wide layers, where the other routes'
    /// per-image reductions are short and their tiles of `dW` are written back image
    /// after image.
    Gemm,
    /// 3x3, stride 1: Winograd F(4x4, 3x3) turned around (`dW = G^T [(A dY A^T) (.)
    /// (B^T d B)] G` a tile, `kernels::winograd`), the whole batch's 4 x 4 tiles the
    /// reduction of 36 GEMMs (`winograd_nchw.rs`): 4x fewer multiplications.
    Winograd,
}

/// What a plan runs for one input shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routes {
    /// The layout the forward reads and writes ([`Layout::Blocked`] exactly when the
    /// forward is one of the blocked routes: [`Forward::layout`]).
    pub layout: Layout,
    /// The forward's route.
    pub forward: Forward,
    /// `None` in inference.
    pub input_grad: Option<InputGrad>,
    /// `None` in inference.
    pub weight_grad: Option<WeightGrad>,
    /// The routes run once per channel group ([`ConvPlan::group_plan`]) when above 1.
    pub groups: usize,
    /// The routes run once per phase of a `dilation x dilation` split of the image
    /// ([`ConvPlan::phase_plan`]) when above 1. A dilated layer in the blocked layout
    /// has 1 here: its kernel reads the dilated taps where they lie.
    pub dilation: usize,
}

/// A layer's convolution plan: what it is, for which tier and mode, and any routes
/// forced on it. Cheap to copy; holds no weights ([`ConvWeights`] holds them, with
/// their plan).
#[derive(Clone, Copy, Debug)]
pub struct ConvPlan {
    kernels: Kernels,
    /// OIHW.
    weights: [usize; 4],
    conv: Conv2d,
    mode: Mode,
    layout: Layout,
    forced: Forced,
    /// Whether the ladder may take Winograd ([`Forward::BlockedWinograd`], and in NCHW
    /// [`Forward::Winograd`] and [`InputGrad::Winograd`]).
    winograd: bool,
    /// The input's rows and columns the layer is planned for, if known
    /// ([`ConvPlan::with_planned_input`]).
    planned: Option<[usize; 2]>,
    /// Whether the ladder may take Winograd where it is faster but its transformed
    /// weights cost memory ([`ConvPlan::with_winograd_memory`]).
    winograd_memory: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Forced {
    forward: Option<Forward>,
    input_grad: Option<InputGrad>,
    weight_grad: Option<WeightGrad>,
}

/// One convolution's whole geometry: the layer and an input shape.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    s: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    /// How many images each of `dW`'s partial sums runs over: the backward gives each
    /// thread of the pool one group of the batch's images (or, with fewer images than
    /// threads, all of them to one group that threads its work inside).
    fn dw_group_images(&self) -> usize {
        backward::dw_group_images(self.n, rayon::current_num_threads())
    }

    fn unpadded_1x1(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.pad == 0
    }
}

impl ConvPlan {
    /// The plan of a layer with OIHW weights of `weights` shape and stride/padding
    /// `conv`, in `mode`, on `kernels`' tier, with NCHW activations.
    pub fn new(kernels: &Kernels, weights: [usize; 4], conv: Conv2d, mode: Mode) -> Result<Self> {
        let [o, c, kh, kw] = weights;
        if o == 0 || c == 0 || kh == 0 || kw == 0 || conv.stride == 0 || conv.groups == 0 {
            return Err(TensorError::InvalidArgument {
                op: "ConvPlan",
                reason: format!(
                    "weights [{o}, {c}, {kh}, {kw}] with stride {} and {} groups: every \
                     dimension, the stride and the groups must be positive",
                    conv.stride, conv.groups
                ),
            });
        }
        let mut conv = conv;
        if kh * kw == 1 {
            // A 1x1 kernel has no taps to spread.
            conv.dilation = 1;
        }
        if conv.dilation == 0 {
            return Err(TensorError::InvalidArgument {
                op: "ConvPlan",
                reason: "the dilation must be positive".into(),
            });
        }
        if conv.dilation > 1 && !dilation_fits(conv, kh, kw) {
            return Err(TensorError::InvalidArgument {
                op: "ConvPlan",
                reason: format!(
                    "a dilated convolution runs as a 'same' one for now: stride 1, a square \
                     kernel of odd size and padding dilation * (k - 1) / 2 (got a {kh}x{kw} \
                     kernel, stride {}, padding {}, dilation {})",
                    conv.stride, conv.padding, conv.dilation
                ),
            });
        }
        if !o.is_multiple_of(conv.groups) || c.checked_mul(conv.groups).is_none() {
            return Err(TensorError::InvalidArgument {
                op: "ConvPlan",
                reason: format!(
                    "{o} output channels do not split into {} equal groups",
                    conv.groups
                ),
            });
        }
        Ok(ConvPlan {
            kernels: *kernels,
            weights,
            conv,
            mode,
            layout: Layout::Nchw,
            forced: Forced::default(),
            winograd: true,
            planned: None,
            winograd_memory: false,
        })
    }

    /// The same plan for activations in `layout`. The blocked layout has no backward: a
    /// training plan in it is an error.
    pub fn in_layout(mut self, layout: Layout) -> Result<Self> {
        if layout == Layout::Blocked && self.mode == Mode::Training {
            return Err(TensorError::InvalidArgument {
                op: "ConvPlan",
                reason: "the blocked layout has no backward routes: training runs in NCHW".into(),
            });
        }
        if layout == Layout::Blocked && self.conv.groups > 1 {
            let [o, cg, _, _] = self.weights;
            let g = self.conv.groups;
            if blocked_groups(cg * g, o, g, self.kernels.lanes()).is_none() {
                return Err(TensorError::InvalidArgument {
                    op: "ConvPlan",
                    reason: format!(
                        "a convolution of {} to {o} channels in {g} groups has no route in \
                         the blocked layout: its groups must be whole {}-channel blocks, or \
                         fill blocks exactly with as many inputs as outputs each; run it in \
                         NCHW",
                        cg * g,
                        self.kernels.lanes()
                    ),
                });
            }
        }
        self.layout = layout;
        Ok(self)
    }

    /// Whether the ladder may run the layer by Winograd ([`Forward::BlockedWinograd`] in
    /// the blocked layout, [`Forward::Winograd`] and [`InputGrad::Winograd`] in NCHW; on
    /// by default where the ladder measured it faster); `false` keeps every layer on
    /// a route that computes each output as a plain sum of products, for users who want
    /// the direct kernel's rounding. (A forced route overrides it.)
    pub fn with_winograd(mut self, on: bool) -> Self {
        self.winograd = on;
        self
    }

    /// The input size (rows, columns) the layer will mostly run on, for the choices that
    /// depend on it: in the blocked layout, Winograd for 3x3 stride-1 layers wider than
    /// [`WINOGRAD_MAX_CHANNELS`] where the planned image has enough tiles to pay for
    /// their transformed weights ([`WINOGRAD_WIDE_MIN_PIXELS`]). The weights are packed
    /// for the route chosen, so it is decided here, not per call; any input still runs.
    /// (The `resnet` crate's `InferenceModel` plans for 224 x 224 images unless told
    /// otherwise.)
    pub fn with_planned_input(mut self, h: usize, w: usize) -> Self {
        self.planned = Some([h, w]);
        self
    }

    /// Whether the ladder may spend memory for speed on Winograd: with it, 3x3 stride-1
    /// layers wider than [`WINOGRAD_MAX_CHANNELS`] (up to
    /// [`WINOGRAD_WIDE_MAX_CHANNELS`]) planned for an input of at least
    /// [`WINOGRAD_WIDE_SPENDING_MIN_PIXELS`] (14 x 14) but less than
    /// [`WINOGRAD_WIDE_MIN_PIXELS`] keep their transformed weights
    /// ([`Forward::BlockedWinograd`]): faster, for `27 c o` more floats of weights a
    /// layer (7.1 MB for 256 channels); without it they transform the direct kernel's
    /// weights at each call ([`Forward::BlockedWinogradOnTheFly`]). Off by default; the
    /// `resnet` crate's `InferenceModel` turns it on for a network whose layers' extra
    /// weights fit its budget.
    pub fn with_winograd_memory(mut self, spend: bool) -> Self {
        self.winograd_memory = spend;
        self
    }

    /// Whether the ladder may spend memory for speed on Winograd
    /// ([`ConvPlan::with_winograd_memory`]).
    pub fn winograd_memory(&self) -> bool {
        self.winograd_memory
    }

    /// The input size the layer is planned for ([`ConvPlan::with_planned_input`]).
    pub fn planned_input(&self) -> Option<[usize; 2]> {
        self.planned
    }

    /// Whether the ladder may take Winograd (see [`ConvPlan::with_winograd`]).
    pub fn winograd(&self) -> bool {
        self.winograd
    }

    /// Forces the forward route. [`ConvPlan::routes`] then fails for an input the route
    /// cannot run, naming why.
    pub fn force_forward(mut self, route: Forward) -> Self {
        self.forced.forward = Some(route);
        self
    }

    /// Forces the input gradient's route (see [`ConvPlan::force_forward`]).
    pub fn force_input_grad(mut self, route: InputGrad) -> Self {
        self.forced.input_grad = Some(route);
        self
    }

    /// Forces the weight gradient's route (see [`ConvPlan::force_forward`]).
    pub fn force_weight_grad(mut self, route: WeightGrad) -> Self {
        self.forced.weight_grad = Some(route);
        self
    }

    /// The OIHW weight shape (`[O, C / groups, kh, kw]`).
    pub fn weights_shape(&self) -> [usize; 4] {
        self.weights
    }

    /// Channel groups (1: dense).
    pub fn groups(&self) -> usize {
        self.conv.groups
    }

    /// The dilation (1: none).
    pub fn dilation(&self) -> usize {
        self.conv.dilation
    }

    /// The undilated plan each phase of a dilated plan runs (`dilated.rs`): the same
    /// weights, groups, mode and forced routes, dilation 1 and padding `(k - 1) / 2`.
    /// An undilated plan's is itself.
    pub fn phase_plan(&self) -> ConvPlan {
        if self.conv.dilation <= 1 {
            return *self;
        }
        ConvPlan {
            conv: Conv2d {
                dilation: 1,
                padding: (self.weights[2] - 1) / 2,
                ..self.conv
            },
            ..*self
        }
    }

    /// The dense plan each group of a grouped plan runs: `O / groups` output channels
    /// from `C / groups` inputs, with the same stride, padding, mode, layout and forced
    /// routes. A dense plan's is itself.
    pub fn group_plan(&self) -> ConvPlan {
        let [o, c, kh, kw] = self.weights;
        let g = self.conv.groups.max(1);
        ConvPlan {
            weights: [o / g, c, kh, kw],
            conv: Conv2d {
                groups: 1,
                ..self.conv
            },
            ..*self
        }
    }

    /// Stride and padding.
    pub fn conv(&self) -> Conv2d {
        self.conv
    }

    /// Inference or training.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The layout the plan was asked to run in (a layer whose input is narrower than a
    /// channel block still runs in NCHW: see [`Routes::layout`]).
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The tier's kernels the plan was made for.
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// The routes for an NCHW input of `input` shape: the ladder's choice, or the forced
    /// routes, checked against this input.
    pub fn routes(&self, input: [usize; 4]) -> Result<Routes> {
        if self.conv.dilation > 1
            && self.layout == Layout::Blocked
            && self.forward_family().layout() == Layout::Blocked
        {
            // The blocked kernel reads the dilated taps where they lie: no phases.
            if let Some(
                r @ (Forward::BlockedWinograd
                | Forward::BlockedWinograd2
                | Forward::BlockedWinogradOnTheFly),
            ) = self.forced.forward
            {
                return Err(unfit("forward", r, "it runs undilated layers only".into()));
            }
            let undilated = ConvPlan {
                conv: Conv2d {
                    dilation: 1,
                    ..self.conv
                },
                winograd: false,
                ..*self
            };
            self.geometry(input)?;
            let r = undilated.routes(input)?;
            return Ok(Routes { dilation: 1, ..r });
        }
        if self.conv.dilation > 1 {
            // Each of the `d x d` phases of the image is an undilated "same" convolution
            // of its own pixels: the routes are the phase plan's, on the largest phase.
            // (Phases differ by a row or column at most; each resolves its own ladder,
            // and a forced route must fit them all.)
            let [n, c, h, w] = input;
            self.geometry(input)?;
            let d = self.conv.dilation;
            let phase = self.phase_plan();
            for ph in [h / d, h.div_ceil(d)] {
                for pw in [w / d, w.div_ceil(d)] {
                    if ph * pw > 0 {
                        phase.routes([n, c, ph, pw])?;
                    }
                }
            }
            let sub = phase.routes([n, c, h.div_ceil(d), w.div_ceil(d)])?;
            return Ok(Routes { dilation: d, ..sub });
        }
        if self.conv.groups > 1 && self.layout == Layout::Blocked {
            self.geometry(input)?;
            return Ok(Routes {
                layout: Layout::Blocked,
                forward: self.blocked_grouped_route()?,
                input_grad: None,
                weight_grad: None,
                groups: self.conv.groups,
                dilation: 1,
            });
        }
        if self.conv.groups > 1 {
            // Each group is a dense convolution of its channels: the routes are its plan's,
            // run once per group.
            let [n, c, h, w] = input;
            self.geometry(input)?;
            let groups = self.conv.groups;
            let sub = self.group_plan().routes([n, c / groups, h, w])?;
            return Ok(Routes { groups, ..sub });
        }
        let g = self.geometry(input)?;
        let chosen = self.ladder(&g);
        let forward = match self.forced.forward {
            Some(r) => {
                self.forward_fits(r, &g)
                    .map_err(|why| unfit("forward", r, why))?;
                r
            }
            None => chosen.forward,
        };
        let training = self.mode == Mode::Training;
        let input_grad = match self.forced.input_grad {
            Some(r) if training => {
                self.input_grad_fits(r, &g)
                    .map_err(|why| unfit("dX", r, why))?;
                Some(r)
            }
            _ => chosen.input_grad,
        };
        let weight_grad = match self.forced.weight_grad {
            Some(r) if training => {
                self.weight_grad_fits(r, &g)
                    .map_err(|why| unfit("dW", r, why))?;
                Some(r)
            }
            _ => chosen.weight_grad,
        };
        Ok(Routes {
            layout: forward.layout(),
            forward,
            input_grad,
            weight_grad,
            groups: 1,
            dilation: 1,
        })
    }

    /// The forward route's family, which fixes the weights' layout: the ladder's first
    /// rungs, which look at the layer alone (or the forced route). For the direct kernel
    /// the form in the value returned is a placeholder: `ladder` picks it for the image.
    pub(crate) fn forward_family(&self) -> Forward {
        // A grouped plan in the blocked layout (which `in_layout` admitted, and
        // `with_forward` checked the forced route of).
        if self.conv.groups > 1 && self.layout == Layout::Blocked {
            return self
                .blocked_grouped_route()
                .unwrap_or(Forward::BlockedGrouped);
        }
        if let Some(r) = self.forced.forward {
            return r;
        }
        let [o, c, kh, kw] = self.weights;
        let lanes = self.kernels.lanes();
        // 1. The blocked layout runs every layer in it, except one whose input has fewer
        //    channels than a block (the RGB stem: 3 of 16 lanes on AVX-512 would be read,
        //    and its output is 4x the pooled tensor the next layer reads; in NCHW on the
        //    direct kernel, ResNet-18 at batch 1 ran at 0.94-0.96 of the time, ResNet-50
        //    at 0.96-0.99, in-process A/B on 2 threads).
        if self.layout == Layout::Blocked && c >= lanes {
            // 1'. Winograd for the 3x3, stride-1 layers it wins on.
            if self.winograd && self.winograd_fits().is_ok() {
                if let Some(route) = winograd_route(c, o, self.planned, self.winograd_memory) {
                    return route;
                }
            }
            return Forward::Blocked;
        }
        // 1''. Winograd in NCHW (training's layout) for the 3x3, stride-1 layers it wins
        //      on.
        if self.layout == Layout::Nchw
            && self.winograd
            && self.winograd_layer_fits().is_ok()
            && nchw_winograd_wins(c, o)
        {
            return Forward::Winograd;
        }
        // 2. Few output channels and a real kernel: the direct kernel (see
        //    `DIRECT_MAX_CHANNELS` for the measurements). Its form depends on the image.
        if kh * kw > 1 && o <= DIRECT_MAX_CHANNELS {
            return Forward::Direct(DirectForm::Planar);
        }
        // 3-5. The GEMM, its B operand by the layer's kernel and stride.
        let (s, pad) = (self.conv.stride, self.conv.padding);
        match (kh * kw, s, pad) {
            (1, 1, 0) => Forward::GemmImage,
            (1, _, 0) => Forward::GemmSubsampled,
            _ => Forward::GemmIm2col,
        }
    }

    /// The whole ladder for one input: every route the plan would choose by itself.
    fn ladder(&self, g: &Geometry) -> Routes {
        let lanes = self.kernels.lanes();
        let forward = match self.forward_family() {
            // The direct kernel's form, from how its output rows meet the vectors.
            Forward::Direct(_) => Forward::Direct(DirectForm::choose(
                g.s,
                [g.h, g.w],
                [g.oh, g.ow],
                g.pad,
                lanes,
            )),
            family => family,
        };
        if self.mode == Mode::Inference {
            return Routes {
                layout: forward.layout(),
                forward,
                input_grad: None,
                weight_grad: None,
                groups: 1,
                dilation: 1,
            };
        }
        // dX: the transposed convolution has the layer's input channels as its output
        // channels, so the direct kernel's threshold applies to `c`.
        let direct_dx = g.c <= DIRECT_MAX_CHANNELS;
        let input_grad = if g.unpadded_1x1() && g.s == 1 {
            InputGrad::GemmImage
        } else if self.layout == Layout::Nchw
            && self.winograd
            && self.winograd_layer_fits().is_ok()
            && g.pad <= 2
            && nchw_winograd_wins(g.o, g.c)
        {
            // The transposed convolution, from the layer's outputs to its inputs.
            InputGrad::Winograd
        } else if g.s == 1 && g.kh == g.kw && g.pad < g.kh && direct_dx {
            let pad_t = g.kh - 1 - g.pad;
            InputGrad::DirectTransposed(DirectForm::choose(
                1,
                [g.oh, g.ow],
                [g.h, g.w],
                pad_t,
                lanes,
            ))
        } else if g.s > 1 && direct_dx && self.phases_fit(g) {
            InputGrad::DirectPhases
        } else {
            InputGrad::GemmCol2im
        };
        // dW: the outer-product kernel where it has a tile for the output channels
        // (in-process A/B, ResNet-20's layers at batch 128, 2 threads, AVX-512, against
        // row-dot: 32 -> 32 at 16 x 16 0.78 of the time, 64 -> 64 at 8 x 8 0.63, the
        // stride-2 layers 0.62 and 0.76; 16 channels, one vector, has no outer tile and
        // lost 1.29 in a one-vector variant). Taps from the image in place when a 1x1
        // layer allows (the row-dot kernel reads a whole number of vectors along the
        // pixels there).
        let outer = self.kernels.set().outer_tile(g.o).is_some();
        let in_place =
            g.unpadded_1x1() && g.s == 1 && (outer || (g.oh * g.ow).is_multiple_of(lanes));
        let taps = if in_place {
            Taps::Image
        } else {
            Taps::PhasePlanes
        };
        let weight_grad = if self.layout == Layout::Nchw
            && self.winograd
            && self.winograd_layer_fits().is_ok()
            && g.c.min(g.o) >= WINOGRAD_DW_MIN_CHANNELS
            && g.c.max(g.o) <= WINOGRAD_NCHW_MAX_CHANNELS
            && g.o * g.c * g.n * g.oh.div_ceil(4) * g.ow.div_ceil(4) >= WINOGRAD_DW_MIN_PRODUCT
        {
            WeightGrad::Winograd
        } else if g.oh * g.ow < GEMM_DW_MAX_PIXELS
            && g.o >= GEMM_DW_MIN_OUTPUTS
            && g.dw_group_images() * g.oh * g.ow <= GEMM_DW_MAX_COLUMNS
        {
            WeightGrad::Gemm
        } else if outer {
            WeightGrad::OuterProduct(taps)
        } else {
            WeightGrad::RowDot(taps)
        };
        Routes {
            layout: forward.layout(),
            forward,
            input_grad: Some(input_grad),
            weight_grad: Some(weight_grad),
            groups: 1,
            dilation: 1,
        }
    }

    /// The route of a grouped plan in the blocked layout: the narrow-group kernel where
    /// the groups divide a block or are whole blocks, with as many outputs as inputs (the
    /// dense single-block kernel reads narrower ones with zero weights between groups: 4x
    /// the multiply-adds for 4-channel groups on AVX-512; and groups of whole blocks it
    /// reads with one broadcast load per multiply-add, which ran at 0.8-0.9 of the narrow
    /// kernel's speed, `docs/benchmarks.md`), else blocked-grouped; or the forced one of the two,
    /// if it fits.
    pub(crate) fn blocked_grouped_route(&self) -> Result<Forward> {
        let [o, cg, _, kw] = self.weights;
        let g = self.conv.groups;
        // (The kernel keeps a tile's input row in a buffer: a kernel row wider than it,
        // which no network has, runs blocked-grouped.)
        let reach = (kw - 1) * self.conv.dilation.max(1) + 1;
        let narrow = narrow_groups(cg * g, o, g, self.kernels.lanes())
            && reach <= crate::kernels::blocked_tile::SPREAD_ROW;
        match self.forced.forward {
            None if narrow => Ok(Forward::BlockedNarrowGroups),
            None | Some(Forward::BlockedGrouped) => Ok(Forward::BlockedGrouped),
            Some(Forward::BlockedNarrowGroups) if narrow => Ok(Forward::BlockedNarrowGroups),
            Some(r @ Forward::BlockedNarrowGroups) => Err(unfit(
                "forward",
                r,
                format!(
                    "its groups of {cg} channels neither divide nor are whole {}-channel \
                     blocks with as many outputs as inputs, or its kernel row spans more \
                     than {} pixels",
                    self.kernels.lanes(),
                    crate::kernels::blocked_tile::SPREAD_ROW
                ),
            )),
            Some(r) => Err(unfit(
                "forward",
                r,
                "a grouped plan in the blocked layout runs blocked-grouped or \
                 blocked-narrow-groups"
                    .into(),
            )),
        }
    }

    /// Whether Winograd F(4x4, 3x3) can run the layer, or why not (the layer alone
    /// decides).
    fn winograd_fits(&self) -> std::result::Result<(), String> {
        if self.layout != Layout::Blocked {
            Err("it needs a plan in the blocked layout".into())
        } else {
            self.winograd_layer_fits()
        }
    }

    /// Whether the layer is one Winograd F(4x4, 3x3) computes, in any layout.
    fn winograd_layer_fits(&self) -> std::result::Result<(), String> {
        let [_, _, kh, kw] = self.weights;
        let c = self.conv;
        if (kh, kw) != (3, 3) || c.stride != 1 || c.dilation > 1 || c.groups > 1 {
            Err(format!(
                "it runs dense 3x3 layers of stride 1 without dilation (this one: {kh}x{kw}, \
                 stride {}, dilation {}, {} groups)",
                c.stride, c.dilation, c.groups
            ))
        } else {
            Ok(())
        }
    }

    fn geometry(&self, [n, c, h, w]: [usize; 4]) -> Result<Geometry> {
        let [o, wc, kh, kw] = self.weights;
        let groups = self.conv.groups.max(1);
        if wc * groups != c {
            return Err(TensorError::ShapeMismatch {
                op: "conv2d",
                arg: "weights",
                expected: vec![o, c / groups, kh, kw],
                got: self.weights.to_vec(),
            });
        }
        let [oh, ow] = self.conv.output_size(h, w, kh, kw)?;
        Ok(Geometry {
            n,
            c,
            h,
            w,
            o,
            kh,
            kw,
            s: self.conv.stride,
            pad: self.conv.padding,
            oh,
            ow,
        })
    }

    fn phases_fit(&self, g: &Geometry) -> bool {
        phases_fit(g.s, [g.kh, g.kw], g.pad, [g.h, g.w], [g.oh, g.ow])
    }

    fn forward_fits(&self, r: Forward, g: &Geometry) -> std::result::Result<(), String> {
        let lanes = self.kernels.lanes();
        match r {
            Forward::GemmImage if !(g.unpadded_1x1() && g.s == 1) => {
                Err("it needs a 1x1, stride-1, unpadded layer".into())
            }
            Forward::GemmSubsampled if !g.unpadded_1x1() => {
                Err("it needs a 1x1, unpadded layer".into())
            }
            Forward::Direct(_) if g.kh * g.kw == 1 => {
                Err("the direct kernel runs kernels larger than 1x1".into())
            }
            Forward::Direct(f) => f.fits(g.s, [g.h, g.w], [g.oh, g.ow], g.pad, lanes),
            Forward::Blocked if self.layout != Layout::Blocked => {
                Err("it needs a plan in the blocked layout".into())
            }
            Forward::BlockedGrouped | Forward::BlockedNarrowGroups => {
                Err("it runs grouped convolutions in the blocked layout only".into())
            }
            Forward::BlockedWinograd
            | Forward::BlockedWinograd2
            | Forward::BlockedWinogradOnTheFly => self.winograd_fits(),
            Forward::Winograd => self.winograd_layer_fits(),
            _ => Ok(()),
        }
    }

    fn input_grad_fits(&self, r: InputGrad, g: &Geometry) -> std::result::Result<(), String> {
        match r {
            InputGrad::GemmImage if !(g.unpadded_1x1() && g.s == 1) => {
                Err("it needs a 1x1, stride-1, unpadded layer".into())
            }
            InputGrad::DirectTransposed(_)
                if g.s != 1 || g.kh != g.kw || g.pad >= g.kh || g.kh == 1 =>
            {
                Err(
                    "it needs stride 1, a square kernel larger than 1x1 and padding \
                     below its size"
                        .into(),
                )
            }
            InputGrad::DirectTransposed(f) => f.fits(
                1,
                [g.oh, g.ow],
                [g.h, g.w],
                g.kh - 1 - g.pad,
                self.kernels.lanes(),
            ),
            InputGrad::DirectPhases if !self.phases_fit(g) => {
                Err("it needs a stride above 1 and every phase of dX inside dY".into())
            }
            InputGrad::Winograd => {
                self.winograd_layer_fits()?;
                if g.pad > 2 {
                    return Err(format!(
                        "its transposed convolution pads by 2 - padding: padding {} is over 2",
                        g.pad
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn weight_grad_fits(&self, r: WeightGrad, g: &Geometry) -> std::result::Result<(), String> {
        let outer = matches!(r, WeightGrad::OuterProduct(_));
        if outer && self.kernels.set().outer_tile(g.o).is_none() {
            return Err(format!(
                "no outer-product tile covers {} output channels on {}",
                g.o,
                self.kernels.isa()
            ));
        }
        let taps = match r {
            WeightGrad::OuterProduct(taps) | WeightGrad::RowDot(taps) => taps,
            // Any dense, undilated layer (the geometry's): im2col of every image.
            WeightGrad::Gemm => return Ok(()),
            // Any padding: the windows read zeros past the image.
            WeightGrad::Winograd => return self.winograd_layer_fits(),
        };
        let lanes = self.kernels.lanes();
        if taps == Taps::Image {
            if !(g.unpadded_1x1() && g.s == 1) {
                return Err("taps from the image need a 1x1, stride-1, unpadded layer".into());
            }
            if !outer && !(g.oh * g.ow).is_multiple_of(lanes) {
                return Err(format!(
                    "the row-dot kernel reads the image in place only when its {} pixels are \
                     whole {lanes}-lane vectors",
                    g.oh * g.ow
                ));
            }
        }
        Ok(())
    }
}

/// How a grouped convolution of `c` to `o` channels in `groups` groups runs in the
/// blocked layout of `lanes`-channel blocks, if it can: `(input channels, output
/// channels)` of each *super-group* the kernel treats as one dense convolution. Groups of
/// whole blocks are their own super-groups; groups narrower than a block, with as many
/// inputs as outputs (ResNeXt's), are read a block at a time, `lanes / cg` groups in
/// each, with zero weights between them (ResNeXt-50 32x4d's first stage on AVX-512: 4x
/// the multiply-adds of its grouped layers, which are 5% of the network's).
pub(crate) fn blocked_groups(
    c: usize,
    o: usize,
    groups: usize,
    lanes: usize,
) -> Option<(usize, usize)> {
    if groups == 0 || !c.is_multiple_of(groups) || !o.is_multiple_of(groups) {
        return None;
    }
    let (cg, og) = (c / groups, o / groups);
    if cg.is_multiple_of(lanes) && og.is_multiple_of(lanes) {
        Some((cg, og))
    } else if cg == og && lanes.is_multiple_of(cg) && c.is_multiple_of(lanes) {
        Some((lanes, lanes))
    } else {
        None
    }
}

/// Whether a grouped convolution of `c` to `o` channels in `groups` groups has the
/// narrow-group kernel ([`Forward::BlockedNarrowGroups`]) on `lanes`-channel blocks: as
/// many outputs as inputs per group, whose width divides a block (each block holds
/// whole groups) or is a multiple of it (each group whole blocks), and whole blocks of
/// channels.
pub(crate) fn narrow_groups(c: usize, o: usize, groups: usize, lanes: usize) -> bool {
    groups > 1
        && c == o
        && c.is_multiple_of(groups)
        && (lanes.is_multiple_of(c / groups) || (c / groups).is_multiple_of(lanes))
        && c.is_multiple_of(lanes)
}

/// The most input or output channels of a layer the ladder runs by Winograd
/// ([`Forward::BlockedWinograd`]). Measured (Intel host, 2 threads, 2026-12-05,
/// `docs/benchmarks.md`): ResNet-50's 64- and 128-channel 3x3 layers take 0.44-0.53 of
/// the direct kernel's time at batch 1 and 16; whole networks at batch 1 with the limit
/// at 64 / 128 / 512 against Winograd off, in one run: ResNet-18 10.9 / 9.7 / 12.1
/// against 12.6 ms, ResNet-50 30.7 / 30.0 / 32.9 against 32.1 ms. The 512-channel layers
/// lose at batch 1 (1.17x: 38 MB of transformed weights for 4 tiles); the 256-channel
/// ones win in ResNet-18 (about 10%) but not in ResNet-50, for 35 MB more of its memory
/// (they run by Winograd where a plan may spend the memory:
/// [`WINOGRAD_WIDE_SPENDING_MIN_PIXELS`]).
pub const WINOGRAD_MAX_CHANNELS: usize = 128;

/// The Winograd route the ladder takes for a 3x3, stride-1 layer of `c` to `o` channels,
/// if any (the layer alone decides, as the weights' layout depends on it). F(2x2, 3x3)
/// ([`Forward::BlockedWinograd2`]) is never taken: alone it beat the direct kernel on
/// the 512-channel layer at batch 1 (0.88-0.91 of its time) and lost to F(4x4, 3x3)
/// everywhere else, but in whole networks, on the 256- and 512-channel layers, it was
/// within noise (ResNet-18 at batch 1 10.97 / 10.51 ms without, 11.68 / 10.10 with;
/// ResNet-50 33.0 / 31.1 and 33.1 / 30.6, 2 threads, 2026-12-05), for 16/9 of their
/// weights' memory. Wider layers up to [`WINOGRAD_WIDE_MAX_CHANNELS`] take F(4x4, 3x3)
/// too when planned for an input of at least [`WINOGRAD_WIDE_MIN_PIXELS`].
/// Planned for at least [`WINOGRAD_WIDE_SPENDING_MIN_PIXELS`], they take it with the
/// weights kept where the plan may spend memory, else with the direct kernel's weights
/// transformed at each call ([`Forward::BlockedWinogradOnTheFly`]: ResNet-50's five
/// 256-channel layers at 14 x 14, batch 1, 2 threads, AMD Zen 4 host, 2026-12-06: the
/// network 0.944-0.961 of its time with them on the direct kernel; the 512-channel
/// layers at 7 x 7 on the fly 1.000-1.002, not taken).
fn winograd_route(
    c: usize,
    o: usize,
    planned: Option<[usize; 2]>,
    spend_memory: bool,
) -> Option<Forward> {
    let pixels = planned.map_or(0, |[h, w]| h * w);
    let wide = c.max(o) <= WINOGRAD_WIDE_MAX_CHANNELS;
    if c.max(o) <= WINOGRAD_MAX_CHANNELS || (wide && pixels >= WINOGRAD_WIDE_MIN_PIXELS) {
        return Some(Forward::BlockedWinograd);
    }
    if wide && pixels >= WINOGRAD_WIDE_SPENDING_MIN_PIXELS {
        // Kept where the plan may spend the memory, else transformed per call.
        return Some(match spend_memory {
            true => Forward::BlockedWinograd,
            false => Forward::BlockedWinogradOnTheFly,
        });
    }
    None
}

/// The most channels of a layer wider than [`WINOGRAD_MAX_CHANNELS`] that the ladder
/// runs by Winograd in the blocked layout, when its planned input has at least
/// [`WINOGRAD_WIDE_MIN_PIXELS`] pixels.
///
/// Whether F(4x4, 3x3) pays at batch 1 depends on the plane more than on the channels:
/// it saves `9 h w - 36 tiles` multiply-adds per input and output channel pair, and
/// costs its transformed weights, `36 x 4` bytes per pair, read once per forward. That
/// is about 37 multiply-adds saved per byte at 28 x 28, 8 at 14 x 14 and 2 at 7 x 7
/// (whatever the channels). Measured (Intel host, 2 threads, 2026-12-05, late night,
/// `resnet bench model --arch wide_resnet50_2`, the limit by hand, three rounds
/// alternating): Wide ResNet-50-2, whose 256-channel 3x3 layers are at 28 x 28, 84.0 /
/// 80.5 / 81.1 ms at 128 channels, 80.4 / 77.4 / 78.1 at 256 (26 MB more memory), 76.8
/// / 76.4 / 79.8 at 512 (its 14 x 14 layers too: 164 MB more, not taken). ResNet-50's
/// and ResNet-18's 256-channel layers are at 14 x 14 and stay direct (no gain in
/// ResNet-50 with 35 MB more, `WINOGRAD_MAX_CHANNELS`).
pub const WINOGRAD_WIDE_MAX_CHANNELS: usize = 256;

/// The fewest input pixels (rows x columns) a layer wider than [`WINOGRAD_MAX_CHANNELS`]
/// needs to be planned for to run by Winograd (28 x 28; see
/// [`WINOGRAD_WIDE_MAX_CHANNELS`]).
pub const WINOGRAD_WIDE_MIN_PIXELS: usize = 28 * 28;

/// [`WINOGRAD_WIDE_MIN_PIXELS`] when the plan may spend memory for speed
/// ([`ConvPlan::with_winograd_memory`]): 14 x 14, where F(4x4, 3x3) saves about 8
/// multiply-adds per byte of transformed weights (without it, layers planned for this
/// size transform the direct weights at each call: [`Forward::BlockedWinogradOnTheFly`]). Measured (AMD Zen 4 host, 2026-12-06,
/// `resnet bench model --batch 1`, 256-channel layers at 14 x 14 by Winograd or not, three
/// rounds alternating): ResNet-18 1 thread 21.8-22.0 / 24.9-25.2 ms, 2 threads
/// 11.6-11.8 / 13.4-13.8; ResNet-50 65.2-68.8 / 71.2-71.4 and 33.6-34.2 / 36.6-37.0, at
/// 169-174 MB of peak RSS against 134-140 (its five such layers: 35 MB more).
pub const WINOGRAD_WIDE_SPENDING_MIN_PIXELS: usize = 14 * 14;

/// Whether the ladder runs a 3x3, stride-1 convolution of `c` to `o` channels in NCHW by
/// Winograd ([`Forward::Winograd`], and [`InputGrad::Winograd`] for its transposed
/// convolution, `o` to `c`): between [`WINOGRAD_NCHW_MIN_CHANNELS`] and
/// [`WINOGRAD_NCHW_MAX_CHANNELS`] channels in and out.
fn nchw_winograd_wins(c: usize, o: usize) -> bool {
    c.min(o) >= WINOGRAD_NCHW_MIN_CHANNELS && c.max(o) <= WINOGRAD_NCHW_MAX_CHANNELS
}

/// The fewest input and output channels of a layer the ladder runs by Winograd in NCHW.
/// Measured (Intel host, 2 threads, 2026-12-05, `resnet bench train`, one binary with the
/// limits set by hand, two rounds): ResNet-20 at batch 128 (its 64-channel 8 x 8 stage)
/// 146 / 155 ms with 64 against 160 / 152 without Winograd, 172 / 184 with 16 (its
/// 16-channel layers lose: the copies and a 16-long reduction).
pub const WINOGRAD_NCHW_MIN_CHANNELS: usize = 64;

/// The most input or output channels of a layer the ladder runs by Winograd in NCHW.
/// Measured as [`WINOGRAD_NCHW_MIN_CHANNELS`]: ResNet-18 at 224 x 224, batch 16, 848-862
/// ms a step without Winograd, 790 with it up to 64 channels, 762-768 up to 128, 730-744
/// up to 256, 780-847 up to 512 (a 512-channel layer's weights, transformed twice a step,
/// are 38 MB each time, for 4 tiles an image at 7 x 7).
pub const WINOGRAD_NCHW_MAX_CHANNELS: usize = 256;

/// The fewest input and output channels of a layer whose `dW` the ladder runs by
/// Winograd ([`WeightGrad::Winograd`], up to [`WINOGRAD_NCHW_MAX_CHANNELS`]). Measured
/// (Zen 4 host, 2 threads, 2026-12-06, ResNet-20's layers at batch 128, `dW` alone,
/// against the outer-product and row-dot kernels): 64 channels at 8 x 8 1.25 against
/// 2.8 ms, 32 at 16 x 16 2.3-2.5 against 2.8, 16 at 32 x 32 4.8-5.2 against 3.2-3.3
/// (the copies and transforms outweigh products only 16 long).
pub const WINOGRAD_DW_MIN_CHANNELS: usize = 32;

/// The fewest multiply-adds one of Winograd's 36 `dW` products must hold (output
/// channels x input channels x the batch's 4 x 4 tiles) for the ladder to take it:
/// below, its copies, transforms and 36 small GEMMs cost more than they save. Measured
/// (Zen 4 host, 2 threads, 2026-12-06, `dW` alone, Winograd / the outer-product kernel,
/// ms): 32 channels at 7 x 7 (a ResNeXt-50 group of its last stage), batch 8 (32 tiles)
/// 0.059 / 0.045, batch 16 0.100 / 0.088, batch 32 0.152 / 0.160, batch 64 0.261 /
/// 0.304; 32 channels at 8 x 8, batch 8 0.073 / 0.072; 64 channels at 8 x 8, batch 8
/// 0.166 / 0.206.
pub const WINOGRAD_DW_MIN_PRODUCT: usize = 1 << 17;

/// A layer whose output planes have fewer pixels than this (and at least
/// [`GEMM_DW_MIN_OUTPUTS`] output channels) takes its `dW` by one GEMM over each group of
/// images ([`WeightGrad::Gemm`]); larger planes keep the outer-product (or row-dot)
/// kernel.
///
/// Measured (Intel host, 2 threads, 2026-12-06, `dW` alone, batch 8, best of 6, GEMM
/// against the outer-product kernel): ResNet-50's 7 x 7 1x1 layers 2.98 / 3.57 ms (2048 ->
/// 512), 2.80 / 3.95 (512 -> 2048), its stride-2 projection to 7 x 7 5.54 / 12.28;
/// ResNet-18's projection to 7 x 7 at batch 16 0.84 / 0.90. At 14 x 14 it is a tie or a
/// loss: 256 <-> 1024 channels 3.08 / 2.97 and 3.27 / 2.54, the stride-2 512 -> 1024
/// projection 5.65 / 5.98, and inside the training step 1024 -> 512 12.9 / 10.5; at
/// 28 x 28 and 56 x 56 the outer-product kernel wins by 1.2-3x. 3x3 layers (AMD Zen 4
/// host, 2 threads, 2026-12-06, same timing): 512 channels at 14 -> 7 (stride 2) and
/// 7 x 7, batch 8: 11.4 / 14.1 and 10.8 / 13.5 ms; batch 16: 27.4 / 28.4 and 23.8 /
/// 26.9; 256 channels at 14 x 14 12.8 / 9.4 (a loss).
pub const GEMM_DW_MAX_PIXELS: usize = 100;

/// The fewest output channels a layer needs for [`WeightGrad::Gemm`] (see
/// [`GEMM_DW_MAX_PIXELS`]): the GEMM does `2 o` flops for each float of the input's
/// columns it gathers, and narrower layers lose to the gathering. Measured (AMD Zen 4
/// host, 2 threads, 2026-12-06, `dW` alone, GEMM against the outer-product kernel): 3x3
/// layers at 7 x 7, 256 channels 2.77 / 2.40 ms (batch 8), 5.77 / 4.65 (16), 27.0 / 17.4
/// (64); 128 channels 0.83 / 0.90, 1.92 / 1.38, 7.10 / 4.31; ResNet-20's 64-channel 8 x 8
/// layers at batch 128 6.77 / 2.83. Every layer it won on has 512 or more.
pub const GEMM_DW_MIN_OUTPUTS: usize = 512;

/// The most columns (images of one thread's group of the batch, times their output
/// pixels) [`WeightGrad::Gemm`] takes (see [`GEMM_DW_MAX_PIXELS`]): with more images the
/// other kernels' reductions grow long enough to win. Measured (AMD Zen 4 host, 2
/// threads, 2026-12-06, `dW` alone, GEMM against the outer-product kernel, ResNet-50's
/// 7 x 7 layers 2048 -> 512, 512 -> 2048 and the 1024 -> 2048 stride-2 projection; and the
/// 3x3 512-channel layers 14 -> 7 and 7 x 7): batch 8 (4 images, 196 columns a group)
/// 4.99 / 6.71, 4.78 / 5.61, 9.54 / 12.49, 11.4 / 14.1 and 10.8 / 13.5 ms; batch 16 (392)
/// 9.75 / 9.97, 9.29 / 9.48, 19.0 / 20.6, 27.4 / 28.4 and 23.8 / 26.9; batch 32 (784)
/// 20.6 / 20.5, 21.3 / 22.5, 48.5 / 43.1, 46.3 / 42.5 and 45.2 / 38.9; batch 64 (1568)
/// 50.5 / 43.1, 50.7 / 46.6, 89.5 / 90.1, 97.2 / 89.8 and 94.7 / 74.8.
pub const GEMM_DW_MAX_COLUMNS: usize = 512;

/// Whether a dilated convolution has a route: a "same" one (stride 1, a square kernel of
/// odd size, padding `dilation (k - 1) / 2`, as every dilated layer of torchvision's
/// `replace_stride_with_dilation` backbones), which splits into `dilation^2` undilated
/// "same" convolutions of the image's phases.
fn dilation_fits(conv: Conv2d, kh: usize, kw: usize) -> bool {
    conv.stride == 1 && kh == kw && kh % 2 == 1 && conv.padding == conv.dilation * (kh - 1) / 2
}

/// Whether [`InputGrad::DirectPhases`] covers a convolution of stride `s`, kernel
/// `[kh, kw]` and padding `pad` from `[h, w]` to `[oh, ow]`: every phase row and column
/// of `dX` must read inside `dY` padded by `t = ceil(max(kh, kw) / s) - 1` or the zeros
/// just past it (`direct::StridedTransposed`).
pub(crate) fn phases_fit(
    s: usize,
    [kh, kw]: [usize; 2],
    pad: usize,
    [h, w]: [usize; 2],
    [oh, ow]: [usize; 2],
) -> bool {
    let t = kh.max(kw).div_ceil(s).saturating_sub(1);
    s > 1 && h > 0 && w > 0 && (h - 1 + pad) / s < oh + 2 * t && (w - 1 + pad) / s < ow + 2 * t
}

fn unfit(what: &str, route: impl fmt::Display, why: String) -> TensorError {
    TensorError::InvalidArgument {
        op: "conv2d plan",
        reason: format!("the {what} route {route} was forced, but {why}"),
    }
}

impl DirectForm {
    /// Every form, for tests and tools.
    pub const ALL: [DirectForm; 4] = [
        DirectForm::Padded,
        DirectForm::Masked,
        DirectForm::Phased,
        DirectForm::Planar,
    ];

    /// The ladder's form for a convolution of an `[h, w]` image to `[oh, ow]`, stride
    /// `s`, padding `pad`, on `lanes`-wide vectors. Rows that are not a whole number of
    /// vectors (ResNet's 56, 28, 14, 7 on AVX-512) take the planar form: tiles along a
    /// row would end in a narrow, half-empty one, where the planar form's flat runs
    /// waste only the pad columns (in-process A/B, 2 threads: 64->64 at 56 x 56, batch 1,
    /// 155 -> 177 and 159 -> 187 GFLOP/s; ResNet-50 at batch 1 53.5 -> 51.7 and 67.3 ->
    /// 63.5 ms). The masked form saves the planar form's `2 pad` wasted columns per row
    /// (a fifth of the work on ResNet-20's 8 x 8 stage) and its copy out.
    pub fn choose(s: usize, hw: [usize; 2], ohw: [usize; 2], pad: usize, lanes: usize) -> Self {
        if DirectForm::Masked.fits(s, hw, ohw, pad, lanes).is_ok() {
            DirectForm::Masked
        } else if ohw[1].is_multiple_of(lanes) {
            if s == 1 {
                DirectForm::Padded
            } else {
                DirectForm::Phased
            }
        } else {
            DirectForm::Planar
        }
    }

    /// Whether this form can run that convolution, or why not.
    pub fn fits(
        self,
        s: usize,
        [h, w]: [usize; 2],
        [oh, ow]: [usize; 2],
        pad: usize,
        lanes: usize,
    ) -> std::result::Result<(), String> {
        let whole_rows = ow.is_multiple_of(lanes);
        match self {
            DirectForm::Padded if s != 1 || !whole_rows => Err(format!(
                "the padded form needs stride 1 and rows of whole {lanes}-lane vectors \
                 (stride {s}, rows of {ow})"
            )),
            DirectForm::Phased if s == 1 || !whole_rows => Err(format!(
                "the phased form needs a stride above 1 and rows of whole {lanes}-lane \
                 vectors (stride {s}, rows of {ow})"
            )),
            DirectForm::Masked
                if !(s == 1
                    && ow < lanes
                    && (oh, ow) == (h, w)
                    && (oh * ow).is_multiple_of(lanes)
                    && pad < w) =>
            {
                Err(format!(
                    "the masked form needs a stride-1 'same' convolution with rows shorter \
                     than a {lanes}-lane vector, a plane of whole vectors and padding below \
                     the width ([{h}, {w}] -> [{oh}, {ow}], stride {s}, padding {pad})"
                ))
            }
            _ => Ok(()),
        }
    }
}

impl Forward {
    /// Every forward route, for tests and tools.
    pub const ALL: [Forward; 14] = [
        Forward::GemmImage,
        Forward::GemmSubsampled,
        Forward::GemmIm2col,
        Forward::Direct(DirectForm::Padded),
        Forward::Direct(DirectForm::Masked),
        Forward::Direct(DirectForm::Phased),
        Forward::Direct(DirectForm::Planar),
        Forward::Blocked,
        Forward::BlockedGrouped,
        Forward::BlockedNarrowGroups,
        Forward::BlockedWinograd,
        Forward::BlockedWinograd2,
        Forward::BlockedWinogradOnTheFly,
        Forward::Winograd,
    ];

    /// The layout this route reads and writes.
    pub fn layout(self) -> Layout {
        match self {
            Forward::Blocked
            | Forward::BlockedGrouped
            | Forward::BlockedNarrowGroups
            | Forward::BlockedWinograd
            | Forward::BlockedWinograd2
            | Forward::BlockedWinogradOnTheFly => Layout::Blocked,
            _ => Layout::Nchw,
        }
    }

    /// The microkernel that does its arithmetic, named by tier and tile.
    pub fn microkernel(self, k: &Kernels) -> String {
        match self {
            Forward::GemmImage | Forward::GemmSubsampled | Forward::GemmIm2col => {
                k.gemm_kernel_name()
            }
            Forward::Direct(_) => k.direct_kernel_name(),
            Forward::Blocked => k.blocked_kernel_name(),
            Forward::BlockedGrouped => k.blocked1_kernel_name(),
            Forward::BlockedNarrowGroups => k.grouped_kernel_name(),
            Forward::BlockedWinograd
            | Forward::BlockedWinograd2
            | Forward::BlockedWinogradOnTheFly
            | Forward::Winograd => k.blocked_kernel_name(),
        }
    }
}

impl InputGrad {
    /// Every input-gradient route, for tests and tools (the transposed convolution has
    /// stride 1, so it never takes the phased form).
    pub const ALL: [InputGrad; 7] = [
        InputGrad::GemmImage,
        InputGrad::GemmCol2im,
        InputGrad::DirectTransposed(DirectForm::Padded),
        InputGrad::DirectTransposed(DirectForm::Masked),
        InputGrad::DirectTransposed(DirectForm::Planar),
        InputGrad::DirectPhases,
        InputGrad::Winograd,
    ];

    /// The microkernel that does its arithmetic, named by tier and tile.
    pub fn microkernel(self, k: &Kernels) -> String {
        match self {
            InputGrad::GemmImage | InputGrad::GemmCol2im => k.gemm_kernel_name(),
            InputGrad::DirectTransposed(_) | InputGrad::DirectPhases => k.direct_kernel_name(),
            InputGrad::Winograd => k.blocked_kernel_name(),
        }
    }
}

impl WeightGrad {
    /// Every weight-gradient route, for tests and tools.
    pub const ALL: [WeightGrad; 6] = [
        WeightGrad::OuterProduct(Taps::Image),
        WeightGrad::OuterProduct(Taps::PhasePlanes),
        WeightGrad::RowDot(Taps::Image),
        WeightGrad::RowDot(Taps::PhasePlanes),
        WeightGrad::Gemm,
        WeightGrad::Winograd,
    ];

    /// The microkernel that does its arithmetic for `o` output channels, named by tier
    /// and tile.
    pub fn microkernel(self, k: &Kernels, o: usize) -> String {
        match self {
            WeightGrad::OuterProduct(_) => match k.set().outer_tile(o) {
                Some((f, p, _)) => k.outer_kernel_name(f, p),
                None => "none".into(),
            },
            WeightGrad::RowDot(_) => k.dot_kernel_name(),
            WeightGrad::Gemm | WeightGrad::Winograd => k.gemm_kernel_name(),
        }
    }
}

impl fmt::Display for DirectForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DirectForm::Padded => "padded",
            DirectForm::Masked => "masked",
            DirectForm::Phased => "phased",
            DirectForm::Planar => "planar",
        })
    }
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Forward::GemmImage => f.write_str("gemm-image"),
            Forward::GemmSubsampled => f.write_str("gemm-subsampled"),
            Forward::GemmIm2col => f.write_str("gemm-im2col"),
            Forward::Direct(form) => write!(f, "direct-{form}"),
            Forward::Blocked => f.write_str("blocked"),
            Forward::BlockedGrouped => f.write_str("blocked-grouped"),
            Forward::BlockedNarrowGroups => f.write_str("blocked-narrow-groups"),
            Forward::BlockedWinograd => f.write_str("blocked-winograd"),
            Forward::BlockedWinograd2 => f.write_str("blocked-winograd2"),
            Forward::BlockedWinogradOnTheFly => f.write_str("blocked-winograd-on-the-fly"),
            Forward::Winograd => f.write_str("winograd"),
        }
    }
}

impl fmt::Display for InputGrad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputGrad::GemmImage => f.write_str("gemm-image"),
            InputGrad::GemmCol2im => f.write_str("gemm-col2im"),
            InputGrad::DirectTransposed(form) => write!(f, "direct-transposed-{form}"),
            InputGrad::DirectPhases => f.write_str("direct-phases"),
            InputGrad::Winograd => f.write_str("winograd"),
        }
    }
}

impl fmt::Display for Taps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Taps::Image => "image",
            Taps::PhasePlanes => "planes",
        })
    }
}

impl fmt::Display for WeightGrad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightGrad::OuterProduct(t) => write!(f, "outer-{t}"),
            WeightGrad::RowDot(t) => write!(f, "rowdot-{t}"),
            WeightGrad::Gemm => f.write_str("gemm-images"),
            WeightGrad::Winograd => f.write_str("winograd"),
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Nchw => "nchw",
            Layout::Blocked => "blocked",
        })
    }
}

/// Parses a route by the name it prints as (`direct-planar`, `gemm-im2col`, ...).
macro_rules! parse_by_name {
    ($t:ty) => {
        impl std::str::FromStr for $t {
            type Err = TensorError;
            fn from_str(s: &str) -> Result<Self> {
                <$t>::ALL
                    .into_iter()
                    .find(|r| r.to_string() == s)
                    .ok_or_else(|| TensorError::InvalidArgument {
                        op: stringify!($t),
                        reason: format!(
                            "unknown route {s:?}; the routes are: {}",
                            <$t>::ALL.map(|r| r.to_string()).join(", ")
                        ),
                    })
            }
        }
    };
}
parse_by_name!(Forward);
parse_by_name!(InputGrad);
parse_by_name!(WeightGrad);
