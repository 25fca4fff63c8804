#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
//! # resnet-tensor
//!
//! The tensor engine under the ResNet crates: an owned `f32` [`Tensor`], SIMD kernels in
//! four tiers (portable Rust, AVX2 + FMA, AVX-512, NEON) chosen at run time, and the
//! naive [`reference`](mod@reference) implementations every kernel is tested against.
//!
//! ```
//! use tensor::{Epilogue, Kernels, Pool2d, Tensor};
//!
//! let k = Kernels::active()?; // the widest tier this CPU runs, or RESNET_ISA's choice
//! let x = Tensor::randn(&[1, 64, 112, 112], 0.0, 1.0, 42)?;
//! let y = k.scale_shift(&x, &[0.5; 64], &[0.1; 64], &[Epilogue::Relu])?; // folded BN + ReLU
//! let y = k.max_pool2d(&y, &Pool2d::RESNET_STEM)?;
//! assert_eq!(y.shape(), &[1, 64, 56, 56]);
//! # Ok::<(), tensor::TensorError>(())
//! ```
//!
//! Module map, from the bottom up (the public API is the items re-exported here, plus
//! the modules [`gemm`], [`isa`], [`peak`], [`reference`](mod@reference), [`rng`] and
//! [`workspace`]):
//!
//! - `tensor` (the [`Tensor`] type), `error` ([`TensorError`]), [`rng`] (seeded random
//!   numbers), [`workspace`] ([`Workspace`]: the scratch and recycled buffers the
//!   kernels reuse between calls);
//! - [`isa`] (tiers and detection), `kernels` ([`Kernels`]: the kernels of every tier,
//!   their safe API and their microkernels: `kernels/microkernel.rs` the GEMM's tiles,
//!   `direct_tile.rs`, `blocked_tile.rs`, `outer.rs` and `dot.rs` the convolution's);
//! - [`gemm`] (packing, the loop nest), `epilogue` ([`Epilogue`], the steps every GEMM
//!   and convolution route applies in registers), `layout` (the copies the convolution
//!   routes share: padding, phase planes, per-channel views, the disjoint-output
//!   pointer), `blocked` ([`BlockedTensor`], the blocked channel layout and its pooling),
//!   `elementwise` (batch norm as a per-channel affine map, ReLU, the residual add: what
//!   follows each in the same pass is an [`Epilogue`], not another method);
//! - `conv` (the convolution plan, [`ConvPlan`]: `mod.rs` holds the ladder that picks
//!   every route, one file per route family: `forward.rs` (entry points, the GEMM
//!   routes), `direct.rs`, `nchwc.rs` (the blocked layout's), `weight_grad.rs`,
//!   `backward.rs`);
//! - `backward` (the other ops' gradients), `linear` ([`LinearWeights`]), `shortcut`
//!   (the option-A shortcut);
//! - [`reference`](mod@reference) (the naive `f64` oracle every kernel is tested
//!   against), [`peak`] (machine limits: FMA peak, memory bandwidth).
//!
//! Dependencies run one way, down this list: `tests/module_graph.rs` fails on an
//! import cycle between the crate's top-level modules.

mod backward;
mod blocked;
mod conv;
mod elementwise;
mod epilogue;
mod error;
pub mod gemm;
pub mod isa;
mod kernels;
pub(crate) mod layout;
mod linear;
pub mod peak;
pub mod reference;
pub mod rng;
mod shortcut;
mod tensor;
pub mod workspace;

pub use backward::{
    BatchNormBackward, BatchNormGrads, BnGradIn, ConvGrads, LinearGrads, ReplicaSum,
};
pub use blocked::BlockedTensor;
pub use conv::{
    fold_batch_norm, fold_batch_norm_into, Conv2d, ConvBackward, ConvPlan, ConvWeights, DirectForm,
    DxInto, Forward, InputGrad, Layout, Mode, Routes, Taps, WeightGrad, BLOCKED_CHUNK_BYTES,
    DIRECT_MAX_CHANNELS, GEMM_DW_MAX_COLUMNS, GEMM_DW_MAX_PIXELS, GEMM_DW_MIN_OUTPUTS,
    ON_THE_FLY_SLICE_BYTES, WINOGRAD_MAX_CHANNELS, WINOGRAD_WIDE_MAX_CHANNELS,
    WINOGRAD_WIDE_MIN_PIXELS, WINOGRAD_WIDE_SPENDING_MIN_PIXELS,
};
pub use epilogue::{Epilogue, Residual, StatsSink};
pub use error::{Result, TensorError};
pub use gemm::{MatMut, MatRef, PackedA};
pub use isa::Isa;
pub use kernels::{AvgPool2d, ChannelStats, Kernels, MaxPoolIndices, Pool2d};
pub use linear::LinearWeights;
pub use tensor::Tensor;
pub use workspace::Workspace;
