//! The x86-64 tiers. Both are compiled on every x86-64 build and chosen at run time.

pub(crate) mod avx2;
pub(crate) mod avx512;
