//! Fully connected layers: `y = x W^T + b`, PyTorch's `nn.Linear` with weights `[out, in]`.
//!
//! Computed as `y^T = W x^T` so that the weights are the GEMM's A operand: packed once
//! ([`LinearWeights`]), with the bias as a per-row epilogue step (rows are output
//! features). The product is `out x N`; it is transposed into the `N x out` result,
//! which at classifier sizes (N <= a few hundred, out = 1000) is a small copy next to
//! the `N * out * in` multiply-adds.

use crate::epilogue::Epilogue;
use crate::error::{Result, TensorError};
use crate::gemm::pack::BSource;
use crate::gemm::{driver, MatMut, MatRef, PackedA};
use crate::kernels::Kernels;
use crate::tensor::Tensor;

/// Linear-layer weights packed for one tier's GEMM.
#[derive(Clone, Debug)]
pub struct LinearWeights {
    packed: PackedA,
}

impl LinearWeights {
    /// Output features.
    pub fn out_features(&self) -> usize {
        self.packed.rows()
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.packed.cols()
    }
}

impl Kernels {
    /// Packs `[out, in]` weights for [`Kernels::linear`].
    pub fn pack_linear_weights(&self, w: &Tensor) -> Result<LinearWeights> {
        let [out, inp] = w.dims2("pack_linear_weights")?;
        Ok(LinearWeights {
            packed: self.pack_a(MatRef::row_major(w.data(), out, inp)?),
        })
    }

    /// `y = x W^T (+ bias)` for `x` of shape `[N, in]`; returns `[N, out]`.
    pub fn linear(&self, x: &Tensor, w: &LinearWeights, bias: Option<&[f32]>) -> Result<Tensor> {
        self.check_packed(&w.packed)?;
        let [n, inp] = x.dims2("linear")?;
        let out = w.out_features();
        if inp != w.in_features() {
            return Err(TensorError::ShapeMismatch {
                op: "linear",
                arg: "x",
                expected: vec![n, w.in_features()],
                got: x.shape().to_vec(),
            });
        }
        if let Some(b) = bias.filter(|b| b.len() != out) {
            return Err(TensorError::ShapeMismatch {
                op: "linear",
                arg: "bias",
                expected: vec![out],
                got: vec![b.len()],
            });
        }
        let mut yt = vec![0.0f32; out * n];
        let steps: Vec<Epilogue> = bias.map(Epilogue::Bias).into_iter().collect();
        let xt = MatRef::row_major(x.data(), n, inp)?.t();
        let mut c = MatMut::row_major(&mut yt, out, n)?;
        driver::gemm(
            self.set(),
            &w.packed,
            &BSource::Matrix(xt),
            out,
            n,
            &mut c,
            &steps,
            driver::Threads::Auto,
            &crate::Workspace::current(),
        )?;
        let mut y = Tensor::zeros(&[n, out])?;
        for (o, row) in yt.chunks_exact(n.max(1)).enumerate().take(out) {
            for (b, &v) in row.iter().enumerate() {
                y.data_mut()[b * out + o] = v;
            }
        }
        Ok(y)
    }
}
