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
//! Module map: [`tensor`] (the type), [`isa`] (tiers and detection), [`kernels`] (the
//! kernels and their safe API), [`reference`] (the oracle), [`rng`] (seeded random
//! numbers), [`peak`] (machine limits: FMA peak, memory bandwidth), [`pool`] (recycled
//! buffers of large tensors), [`blocked`] (the blocked channel layout and its
//! convolution, experimental).

pub mod backward;
pub mod blocked;
pub mod conv;
pub(crate) mod direct;
pub mod error;
pub mod gemm;
pub mod isa;
pub mod kernels;
pub mod linear;
pub mod peak;
pub mod pool;
pub mod reference;
pub mod rng;
pub mod tensor;
pub(crate) mod wgrad;

pub use backward::{BatchNormGrads, ConvGrads, LinearGrads};
pub use blocked::BlockedTensor;
pub use conv::{
    fold_batch_norm, Conv2d, ConvEpilogue, ConvPlan, ConvWeights, DirectForm, Forward, InputGrad,
    Layout, Mode, Routes, Taps, WeightGrad,
};
pub use error::{Result, TensorError};
pub use gemm::{Epilogue, MatMut, MatRef, PackedA};
pub use isa::Isa;
pub use kernels::{ChannelStats, Kernels, Pool2d};
pub use linear::LinearWeights;
pub use tensor::Tensor;
