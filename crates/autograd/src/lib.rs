//! # resnet-autograd (not yet implemented)
//!
//! Reverse-mode automatic differentiation over `resnet-tensor`: a per-step tape,
//! hand-written backward kernels for every ResNet operation, and optimizers. This crate
//! is a placeholder in the workspace's final shape; nothing here works yet (see the
//! project README for what does).
