//! The per-channel normalisation `relu(scale[c] x + shift[c])` that training's fused
//! batch norm + ReLU applies as its consumers read their input (the convolutions'
//! copies, the max pool's planes), and the check of its `[scale, shift]` pair. Here, in
//! the kernels' module, so that both the kernels and the layout code can use it.

use crate::error::{Result, TensorError};

use super::KernelSet;

/// A per-channel normalisation `relu(scale[c] x + shift[c])` applied while copying, by
/// the kernel set's `scale_shift_relu` (so the same floats as
/// `Kernels::scale_shift` with `[Epilogue::Relu]`).
#[derive(Clone, Copy)]
pub(crate) struct Normalise<'a> {
    set: &'a KernelSet,
    scale: &'a [f32],
    shift: &'a [f32],
}

impl<'a> Normalise<'a> {
    pub fn new(set: &'a KernelSet, [scale, shift]: [&'a [f32]; 2]) -> Self {
        Normalise { set, scale, shift }
    }

    /// `dst = relu(scale[ch] src + shift[ch])`.
    pub fn apply(&self, ch: usize, src: &[f32], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "normalise: lengths differ");
        let (a, b) = (self.scale[ch], self.shift[ch]);
        // SAFETY: `src` and `dst` hold `src.len()` floats each; the kernel set's features
        // were checked when it was handed out.
        unsafe { (self.set.scale_shift_relu)(src.as_ptr(), dst.as_mut_ptr(), src.len(), a, b) };
    }

    /// [`KernelSet::copy_rows`] of channel `ch`'s rows, normalised.
    pub fn rows(
        &self,
        ch: usize,
        src: &[f32],
        src_pitch: usize,
        dst: &mut [f32],
        dst_pitch: usize,
        shape: [usize; 2],
    ) {
        let affine = Some([self.scale[ch], self.shift[ch]]);
        self.set
            .copy_rows(src, src_pitch, dst, dst_pitch, shape, affine);
    }
}

/// Checks a per-channel `[scale, shift]` pair against `c` channels.
pub(crate) fn check_affine(op: &'static str, affine: [&[f32]; 2], c: usize) -> Result<()> {
    for (name, v) in ["scale", "shift"].into_iter().zip(affine) {
        if v.len() != c {
            return Err(TensorError::InvalidArgument {
                op,
                reason: format!("{name} has {} elements for {c} input channels", v.len()),
            });
        }
    }
    Ok(())
}
