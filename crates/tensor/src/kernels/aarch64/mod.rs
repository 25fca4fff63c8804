//! The AArch64 tier.

pub(crate) mod neon;
