//! # resnet-autograd
//!
//! Reverse-mode automatic differentiation for training ResNets on `resnet-tensor`:
//!
//! - [`Tape`]: the record of one step's forward pass (a Wengert list). Parameters enter
//!   as borrowed leaves, every op is coarse (a convolution, a batch norm, a residual
//!   add) with a hand-written backward kernel, and [`Tape::backward`] walks the list
//!   once in reverse, freeing each activation after its last use.
//! - [`Sgd`]: SGD with momentum, Nesterov and weight decay, step for step as PyTorch;
//!   [`accumulate_gradients`] for several batches per step.
//! - [`Schedule`]: step, multi-step, cosine and linear warm-up learning-rate schedules.
//!
//! ```
//! use autograd::{Sgd, SgdConfig, Tape};
//! use tensor::{Conv2d, Kernels, Tensor};
//!
//! let k = Kernels::active()?;
//! let mut w = Tensor::randn(&[4, 3, 3, 3], 0.0, 0.1, 1)?;
//! let (gamma, beta) = (Tensor::full(&[4], 1.0)?, Tensor::zeros(&[4])?);
//! let (fc_w, fc_b) = (Tensor::randn(&[10, 4], 0.0, 0.1, 2)?, Tensor::zeros(&[10])?);
//!
//! let mut tape = Tape::new(k);
//! let x = tape.input(Tensor::randn(&[2, 3, 8, 8], 0.0, 1.0, 3)?);
//! let wv = tape.param(&w);
//! let (g, b) = (tape.constant(&gamma), tape.constant(&beta));
//! let (fw, fb) = (tape.constant(&fc_w), tape.constant(&fc_b));
//! let h = tape.conv2d(x, wv, Conv2d::new(1, 1))?;
//! let (h, _batch_stats) = tape.batch_norm(h, g, b, 1e-5, true)?;
//! let h = tape.global_avg_pool(h)?;
//! let logits = tape.linear(h, fw, fb)?;
//! let loss = tape.cross_entropy(logits, &[3, 7], 0.0)?;
//! let grads = tape.backward(loss)?;
//! let dw = grads.get(wv).cloned();
//!
//! let mut sgd = Sgd::new(SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() }, 1)?;
//! sgd.step(&mut [&mut w], &[dw.as_ref()])?;
//! # Ok::<(), tensor::TensorError>(())
//! ```

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod optim;
pub mod schedule;
pub mod tape;

pub use optim::{accumulate_gradients, scale_gradients, Sgd, SgdConfig};
pub use schedule::Schedule;
pub use tape::{Gradients, OpTime, Tape, Var};
