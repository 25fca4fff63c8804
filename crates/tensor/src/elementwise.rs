//! The element-wise kernels' safe API: batch norm as a per-channel affine map
//! (`scale_shift`), ReLU and the residual add. A fusion is an epilogue, not a method: what
//! follows the affine map or the add in the same pass is a list of [`Epilogue`] steps, the
//! same type the convolution and the GEMM take.

use crate::epilogue::{Epilogue, Residual};
use crate::error::{Result, TensorError};
use crate::kernels::{
    channels_and_plane, expect_channel_params, for_each_chunk, for_each_chunk_with, new_written,
    Kernels, ELEMENTWISE_CHUNK,
};
use crate::tensor::Tensor;

/// What an element-wise op applies after its own arithmetic, read from its epilogue.
#[derive(Clone, Copy)]
enum After<'a> {
    Nothing,
    Relu,
    /// Add this tensor (of the output's shape), then ReLU.
    AddRelu(&'a Tensor),
}

/// Reads `steps` as one of the lists an element-wise op applies: none, `[Relu]`, or (where
/// `residual` is allowed) `[Epilogue::residual(r), Relu]`.
fn after<'a>(op: &'static str, steps: &[Epilogue<'a>], residual: bool) -> Result<After<'a>> {
    match *steps {
        [] => Ok(After::Nothing),
        [Epilogue::Relu] => Ok(After::Relu),
        [Epilogue::Residual(Residual::Nchw(r)), Epilogue::Relu] if residual => {
            Ok(After::AddRelu(r))
        }
        _ => Err(TensorError::InvalidArgument {
            op,
            reason: format!(
                "this op applies the epilogues [], [Relu]{}; got {steps:?}",
                if residual {
                    " and [residual, Relu]"
                } else {
                    ""
                }
            ),
        }),
    }
}

impl Kernels {
    // ---- Batch norm as a per-channel affine map ----

    /// Batch norm on `[N, C, ...]` as an affine map per channel, `y = scale[c] x +
    /// shift[c]` (for inference `scale = gamma / sqrt(running_var + eps)`, `shift = beta -
    /// mean scale`), then `epilogue` in the same pass:
    ///
    /// - `&[]`: nothing more;
    /// - `&[Epilogue::Relu]`: ReLU (batch norm + ReLU, the usual pair);
    /// - `&[Epilogue::residual(r), Epilogue::Relu]`: `max(scale x + shift + r, 0)`, the end
    ///   of a residual block in training (its second batch norm, the shortcut, the ReLU).
    ///   Each plane is normalised into the output and the residual added while it is still
    ///   in L1, by the same kernels as the unfused ops, so the result equals them to the
    ///   bit; the normalised tensor itself is never written to memory.
    ///
    /// Any other list is an error that says which it takes.
    pub fn scale_shift(
        &self,
        x: &Tensor,
        scale: &[f32],
        shift: &[f32],
        epilogue: &[Epilogue],
    ) -> Result<Tensor> {
        let op = "scale_shift";
        let then = after(op, epilogue, true)?;
        let (c, plane) = channels_and_plane(op, x)?;
        expect_channel_params(op, c, &[("scale", scale), ("shift", shift)])?;
        let set = self.set();
        let xd = x.data();
        match then {
            After::Nothing | After::Relu => {
                let kernel = match then {
                    After::Relu => set.scale_shift_relu,
                    _ => set.scale_shift,
                };
                new_written(x, plane, |i, out, len| {
                    let ch = i % c;
                    // SAFETY: chunk `i` is plane `i` of `x` (`len` floats, in bounds) and
                    // `out` holds `len` writable floats; the tier is supported.
                    unsafe { kernel(xd[i * plane..].as_ptr(), out, len, scale[ch], shift[ch]) }
                })
            }
            After::AddRelu(residual) => {
                x.expect_same_shape(op, "residual", residual)?;
                let (affine, add_relu) = (set.scale_shift, set.add_relu);
                let rd = residual.data();
                new_written(x, plane, |i, out, len| {
                    let ch = i % c;
                    // SAFETY: chunk `i` is plane `i` of `x` and of `residual` (`len` floats
                    // each, in bounds) and `out` holds `len` writable floats; `add_relu`
                    // reads each vector of `out` before writing it back; the tier is
                    // supported.
                    unsafe {
                        affine(xd[i * plane..].as_ptr(), out, len, scale[ch], shift[ch]);
                        add_relu(out, rd[i * plane..].as_ptr(), out, len);
                    }
                })
            }
        }
    }

    /// [`Kernels::scale_shift`] into an existing tensor of `x`'s shape (no allocation: a
    /// fresh 64 MiB output costs more in page faults than the kernel itself); epilogue
    /// `[]` or `[Relu]`.
    pub fn scale_shift_into(
        &self,
        x: &Tensor,
        scale: &[f32],
        shift: &[f32],
        epilogue: &[Epilogue],
        out: &mut Tensor,
    ) -> Result<()> {
        let op = "scale_shift_into";
        let relu = matches!(after(op, epilogue, false)?, After::Relu);
        x.expect_same_shape(op, "out", out)?;
        self.scale_shift_impl(op, out, Some(x), scale, shift, relu)
    }

    /// [`Kernels::scale_shift`] in place; epilogue `[]` or `[Relu]`.
    pub fn scale_shift_inplace(
        &self,
        x: &mut Tensor,
        scale: &[f32],
        shift: &[f32],
        epilogue: &[Epilogue],
    ) -> Result<()> {
        let op = "scale_shift_inplace";
        let relu = matches!(after(op, epilogue, false)?, After::Relu);
        self.scale_shift_impl(op, x, None, scale, shift, relu)
    }

    fn scale_shift_impl(
        &self,
        op: &'static str,
        x: &mut Tensor,
        src: Option<&Tensor>,
        scale: &[f32],
        shift: &[f32],
        relu: bool,
    ) -> Result<()> {
        let (c, plane) = channels_and_plane(op, src.unwrap_or(&*x))?;
        expect_channel_params(op, c, &[("scale", scale), ("shift", shift)])?;
        let kernel = if relu {
            self.set().scale_shift_relu
        } else {
            self.set().scale_shift
        };
        // `s` null: in place, `d` is the source too.
        let run = |i: usize, d: &mut [f32], s: *const f32| {
            let ch = i % c;
            let dp = d.as_mut_ptr();
            let s = if s.is_null() { dp.cast_const() } else { s };
            // SAFETY: `s` and `d` point to `d.len()` valid floats (same chunking of two
            // equally long buffers, or the same pointer), and the tier is supported.
            unsafe { kernel(s, dp, d.len(), scale[ch], shift[ch]) }
        };
        match src {
            Some(s) => for_each_chunk_with(x.data_mut(), s.data(), plane, |i, d, s| {
                run(i, d, s.as_ptr())
            }),
            // In place: `run` reads through the very pointer it writes through (taken once,
            // mutably: a shared pointer taken first would be invalidated by the mutable
            // one under Stacked Borrows).
            None => for_each_chunk(x.data_mut(), plane, |i, d| run(i, d, std::ptr::null())),
        }
        Ok(())
    }

    // ---- ReLU ----

    /// `max(x, 0)`.
    pub fn relu(&self, x: &Tensor) -> Result<Tensor> {
        let kernel = self.set().relu;
        let xd = x.data();
        new_written(x, ELEMENTWISE_CHUNK, |i, out, len| {
            // SAFETY: chunk `i` of `x` holds `len` floats, `out` as many writable ones.
            unsafe { kernel(xd[i * ELEMENTWISE_CHUNK..].as_ptr(), out, len) }
        })
    }

    /// `max(x, 0)` in place.
    pub fn relu_inplace(&self, x: &mut Tensor) {
        let kernel = self.set().relu;
        for_each_chunk(x.data_mut(), ELEMENTWISE_CHUNK, |_, d| {
            // SAFETY: in place over one valid chunk; each element is read, then written.
            // One pointer, taken mutably, for reading and writing (see `scale_shift_impl`).
            let p = d.as_mut_ptr();
            unsafe { kernel(p, p, d.len()) }
        });
    }

    /// ReLU's backward in place: `dy` becomes `dx` (`dy` where `y > 0`, else 0, with `y`
    /// the ReLU's output), without a new buffer. See [`Kernels::relu_backward`].
    pub fn relu_backward_assign(&self, dy: &mut Tensor, y: &Tensor) -> Result<()> {
        dy.expect_same_shape("relu_backward_assign", "y", y)?;
        let kernel = self.set().relu_backward;
        for_each_chunk_with(dy.data_mut(), y.data(), ELEMENTWISE_CHUNK, |_, d, o| {
            // SAFETY: `d` (the gradient read and, element by element, the result written)
            // and `o` are equally long chunks of buffers whose shapes were checked equal.
            let (n, p) = (d.len().min(o.len()), d.as_mut_ptr());
            unsafe { kernel(p, o.as_ptr(), p, n) }
        });
        Ok(())
    }

    // ---- Residual add ----

    /// The add kernel `epilogue` asks for (`[]` or `[Relu]`), once `a` and `b` agree.
    fn add_kernel(
        &self,
        op: &'static str,
        a: &Tensor,
        b: &Tensor,
        epilogue: &[Epilogue],
    ) -> Result<unsafe fn(*const f32, *const f32, *mut f32, usize)> {
        let relu = matches!(after(op, epilogue, false)?, After::Relu);
        a.expect_same_shape(op, "b", b)?;
        Ok(if relu {
            self.set().add_relu
        } else {
            self.set().add
        })
    }

    /// `a + b` (same shapes), then `epilogue`: `&[]`, or `&[Epilogue::Relu]` for
    /// `max(a + b, 0)`, the end of a residual block.
    pub fn add(&self, a: &Tensor, b: &Tensor, epilogue: &[Epilogue]) -> Result<Tensor> {
        let kernel = self.add_kernel("add", a, b, epilogue)?;
        let (ad, bd) = (a.data(), b.data());
        new_written(a, ELEMENTWISE_CHUNK, |i, out, len| {
            let at = i * ELEMENTWISE_CHUNK;
            // SAFETY: chunk `i` of `a` and `b` (same shape) holds `len` floats each, and
            // `out` as many writable ones.
            unsafe { kernel(ad[at..].as_ptr(), bd[at..].as_ptr(), out, len) }
        })
    }

    /// `a += b`, then `epilogue` on `a`: `&[]`, or `&[Epilogue::Relu]`.
    pub fn add_assign(&self, a: &mut Tensor, b: &Tensor, epilogue: &[Epilogue]) -> Result<()> {
        let kernel = self.add_kernel("add_assign", a, b, epilogue)?;
        for_each_chunk_with(a.data_mut(), b.data(), ELEMENTWISE_CHUNK, |_, d, s| {
            // SAFETY: `d` (also the first operand, in place) and `s` are equally long
            // chunks of buffers whose shapes were checked equal.
            let (n, p) = (d.len().min(s.len()), d.as_mut_ptr());
            unsafe { kernel(p, s.as_ptr(), p, n) }
        });
        Ok(())
    }
}
