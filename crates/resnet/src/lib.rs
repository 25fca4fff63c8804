//! # resnet (not yet implemented)
//!
//! The ResNet family (ResNet-18/34/50/101/152 and the CIFAR ResNet-20..110),
//! torchvision-named `.safetensors` weights, data sets, augmentation and training. This
//! crate is a placeholder in the workspace's final shape; nothing here works yet (see
//! the project README for what does).
