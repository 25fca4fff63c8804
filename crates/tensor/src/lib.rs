//! # resnet-tensor
//!
//! The tensor engine under the ResNet crates: an owned `f32` [`Tensor`], SIMD kernels in
//! four tiers (portable Rust, AVX2 + FMA, AVX-512, NEON) chosen at run time, and the
//! naive [`reference`] implementations every kernel is tested against.
//!
//! ```
//! use tensor::{Kernels, Pool2d, Tensor};
//!
//! let k = Kernels::active()?; // the widest tier this CPU runs, or RESNET_ISA's choice
//! let x = Tensor::randn(&[1, 64, 112, 112], 0.0, 1.0, 42)?;
//! let y = k.scale_shift_relu(&x, &[0.5; 64], &[0.1; 64])?; // folded BN + ReLU
//! let y = k.max_pool2d(&y, &Pool2d::RESNET_STEM)?;
//! assert_eq!(y.shape(), &[1, 64, 56, 56]);
//! # Ok::<(), tensor::TensorError>(())
//! ```
//!
//! Module map, from the bottom up:
//!
//! - [`tensor`] (the type), [`error`], [`rng`] (seeded random numbers), [`recycle`]
//!   (reuse of large tensors' buffers);
//! - [`isa`] (tiers and detection), [`kernels`] (the kernels of every tier, their safe
//!   API and their microkernels: `kernels/microkernel.rs` the GEMM's tiles,
//!   `direct_tile.rs`, `blocked_tile.rs`, `outer.rs` and `dot.rs` the convolution's);
//! - [`gemm`] (packing, the loop nest, the epilogue), `layout` (the copies the
//!   convolution routes share: padding, phase planes, per-channel views, the
//!   disjoint-output pointer), [`blocked`] (the blocked channel layout and its pooling);
//! - [`conv`] (the convolution plan: `mod.rs` holds the ladder that picks every route,
//!   one file per route family: `forward.rs` (entry points, the GEMM routes),
//!   `direct.rs`, `nchwc.rs` (the blocked layout's), `weight_grad.rs`, `backward.rs`);
//! - [`backward`] (the other ops' gradients), [`linear`], the option-A shortcut;
//! - [`reference`] (the naive `f64` oracle every kernel is tested against), [`peak`]
//!   (machine limits: FMA peak, memory bandwidth).
//!
//! Dependencies run one way, down this list: `tests/module_graph.rs` fails on an
//! import cycle between the crate's top-level modules.

pub mod backward;
pub mod blocked;
pub mod conv;
pub mod epilogue;
pub mod error;
pub mod gemm;
pub mod isa;
pub mod kernels;
pub(crate) mod layout;
pub mod linear;
pub mod peak;
pub mod recycle;
pub mod reference;
pub mod rng;
mod shortcut;
pub mod tensor;

pub use backward::{BatchNormGrads, ConvGrads, LinearGrads};
pub use blocked::BlockedTensor;
pub use conv::{
    fold_batch_norm, Conv2d, ConvPlan, ConvWeights, DirectForm, Forward, InputGrad, Layout, Mode,
    Routes, Taps, WeightGrad,
};
pub use epilogue::{Epilogue, Residual};
pub use error::{Result, TensorError};
pub use gemm::{MatMut, MatRef, PackedA};
pub use isa::Isa;
pub use kernels::{ChannelStats, Kernels, Pool2d};
pub use linear::LinearWeights;
pub use tensor::Tensor;
