//! # resnet
//!
//! The ResNet family on the `resnet-tensor` engine.
//!
//! - [`Arch`], [`ResNet`]: ResNet-18/34/50/101/152 and the CIFAR ResNet-20/32/44/56/110,
//!   torchvision parameter names and initialisation; [`weights`]: strict `.safetensors`
//!   loading and atomic saving.
//! - [`Classifier`]: a pretrained network as one call, image file in, named classes out.
//! - [`InferenceModel`]: the fast form (batch norm folded, weights packed, residual add
//!   and ReLU fused into the convolutions), equal to torchvision stage by stage.
//! - [`preprocess`]: torchvision's evaluation transform (decoding with the `images`
//!   feature) and the ImageNet class names.
//! - [`train`]: the forward pass on an autograd tape, running statistics, freezing;
//!   [`trainer`]: epochs, evaluation, checkpoints, resume; [`data`], [`augment`],
//!   [`loader`]: data sets (the shipped digits, CIFAR-10, image folders), augmentation
//!   and batching.
//!
//! ```
//! use resnet::{Arch, InferenceModel, Kernels, ResNet, Tensor};
//!
//! let model = ResNet::new(Arch::Cifar { depth: 20 }, 10, 42)?;
//! assert_eq!(model.num_parameters(), 269_722);
//! let fast = InferenceModel::new(&model, Kernels::active()?)?;
//! let logits = fast.forward(&Tensor::randn(&[2, 3, 32, 32], 0.0, 1.0, 7)?)?;
//! assert_eq!(logits.shape(), &[2, 10]);
//! # Ok::<(), resnet::Error>(())
//! ```
//!
//! Classifying a photo with pretrained torchvision weights takes one call
//! ([`Classifier`], with the `images` feature); the parts it puts together, with
//! [`Error`] as the one error type:
//!
//! ```no_run
//! # #[cfg(feature = "images")]
//! # fn main() -> resnet::Result<()> {
//! let net = resnet::ResNet::from_safetensors(resnet::Arch::ResNet50, "resnet50.safetensors")?;
//! let model = resnet::InferenceModel::from_model(net, resnet::Kernels::active()?)?;
//! let x = resnet::preprocess::load_imagenet("cat.jpg")?; // torchvision's transform
//! let logits = model.forward(&x.reshape(&[1, 3, 224, 224])?)?;
//! let top5 = resnet::top_k(logits.data(), 5); // (class, probability), best first
//! # let _ = top5;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "images"))]
//! # fn main() {}
//! ```
//!
//! ## Features
//!
//! - `train` (default): [`train`], [`trainer`], [`augment`], [`loader`] and the data
//!   sets of [`data`] (autograd, flate2 and the shipped digits). Inference alone:
//!   `default-features = false`.
//! - `images`: PNG and JPEG decoding ([`preprocess::load_imagenet`], image folders).

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod arch;
#[cfg(feature = "train")]
pub mod augment;
pub mod classifier;
pub mod data;
#[cfg(feature = "train")]
pub mod distributed;
pub mod error;
pub mod files;
pub mod inference;
#[cfg(feature = "images")]
mod jpeg;
#[cfg(feature = "train")]
pub mod loader;
pub mod model;
pub mod model_info;
pub mod preprocess;
pub mod pth;
#[cfg(doctest)]
mod readme;
#[cfg(feature = "train")]
pub mod train;
#[cfg(feature = "train")]
pub mod trainer;
pub mod weights;

// What an embedder touches of the tensor engine, so that `resnet` is the one dependency
// to add: `resnet::Kernels`, `resnet::Tensor`, `resnet::TensorError`, and the whole
// engine as `resnet::tensor`.
/// The autograd engine (tape, SGD, schedules), for training loops of your own.
#[cfg(feature = "train")]
pub use autograd;
pub use tensor;
pub use tensor::{Kernels, Tensor, TensorError};

pub use arch::{Arch, BlockKind, UnknownArch};
pub use classifier::{Classifier, Prediction};
pub use data::DataError;
pub use error::{Error, Result};
pub use inference::{top_k, ConvLayout, InferenceModel, InferenceOptions};
pub use model::{BatchNorm, Block, ConvBn, ConvLayer, ResNet, Shortcut};
pub use model_info::ModelInfo;
#[cfg(feature = "train")]
pub use train::{
    count_correct, parallel_gradients, profile_step, train_step, train_step_parallel, BatchStats,
    Freeze, LayerTime, StepGradients, StepOutcome, StepProfile, TrainForward,
    TRAINING_WORKSPACE_LIMIT,
};
#[cfg(feature = "train")]
pub use trainer::{
    evaluate, evaluate_shared, read_checkpoint, CheckpointInfo, EpochRecord, Evaluation, Progress,
    TrainConfig, TrainError, Trainer,
};
pub use weights::WeightsError;
