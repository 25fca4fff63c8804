//! `Tensor`: an owned, contiguous, row-major block of `f32` with a shape.
//!
//! The layouts follow PyTorch so that weights load without transposes: activations are
//! NCHW, convolution weights OIHW, linear weights `[out, in]`. A tensor never aliases
//! another; views and strides are deliberately absent (the kernels take explicit shapes
//! instead), which keeps every buffer's ownership obvious.

use crate::error::{Result, TensorError};
use crate::rng::Rng;
use crate::workspace::{self, Home};

/// An owned, contiguous `f32` tensor.
///
/// Large tensors' buffers are reused: a tensor of at least
/// [`workspace::MIN_FLOATS`](crate::workspace::MIN_FLOATS) elements belongs to the
/// [`Workspace`](crate::Workspace) it was made in, and dropping it hands its memory back
/// there for the next tensor of that size (or to the allocator, if that workspace is gone:
/// a tensor does not keep its workspace alive).
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
    /// Where the buffer returns when the tensor is dropped (`None`: to the allocator).
    home: Option<Home>,
}

impl PartialEq for Tensor {
    /// Equal shapes and elements (where the memory returns does not count).
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && self.data == other.data
    }
}

/// The number of elements a shape holds, or `None` if that overflows `usize`.
fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

fn checked_count(op: &'static str, shape: &[usize]) -> Result<usize> {
    element_count(shape).ok_or_else(|| TensorError::InvalidArgument {
        op,
        reason: format!("shape {shape:?} has more elements than fit in memory"),
    })
}

impl Tensor {
    /// The workspace a new tensor of `n` elements belongs to, and a buffer it reuses.
    fn home_for(n: usize) -> (Option<Home>, Option<Vec<f32>>) {
        match workspace::home_for(n) {
            Some((ws, buf)) => (Some(ws), buf),
            None => (None, None),
        }
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Result<Self> {
        Self::full(shape, 0.0)
    }

    /// A tensor with every element equal to `value`.
    pub fn full(shape: &[usize], value: f32) -> Result<Self> {
        let n = checked_count("Tensor::full", shape)?;
        let (home, reused) = Self::home_for(n);
        let data = match reused {
            Some(mut v) => {
                v.fill(value);
                v
            }
            // Written here, not `vec![0.0; n]`'s untouched zero pages: a caller that
            // adds into them (a gradient accumulated by `+=`) would read each page
            // before writing it, and the write then costs a copy-on-write fault and a
            // TLB shootdown across the threads (in `perf` of ResNet-18's training step
            // at 224 x 224 these were about a tenth of the time, the max-pool backward's
            // scatter into its zeroed `dX` most of it).
            None => {
                let mut v = Vec::with_capacity(n);
                v.resize(n, value);
                v
            }
        };
        Ok(Tensor {
            shape: shape.to_vec(),
            data,
            home,
        })
    }

    /// A tensor whose elements are unspecified: a reused buffer (see [`Workspace`](crate::Workspace))
    /// or fresh zeros. For outputs the caller then writes in full; it saves the pass
    /// over memory that zeroing would cost.
    ///
    /// With debug assertions on (the test profile), the elements are NaN instead, so
    /// that any test of a caller that misses an element fails.
    pub fn for_overwrite(shape: &[usize]) -> Result<Self> {
        let n = checked_count("Tensor::for_overwrite", shape)?;
        if cfg!(debug_assertions) {
            return Self::full(shape, f32::NAN);
        }
        let (home, reused) = Self::home_for(n);
        Ok(Tensor {
            shape: shape.to_vec(),
            // Fresh zeros come from the allocator's zeroed pages: no pass here either.
            data: reused.unwrap_or_else(|| vec![0.0; n]),
            home,
        })
    }

    /// Wraps `data` (row-major) as a tensor of `shape`; the lengths must agree.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        let expected = checked_count("Tensor::from_vec", shape)?;
        if expected != data.len() {
            return Err(TensorError::ElementCount {
                op: "Tensor::from_vec",
                shape: shape.to_vec(),
                expected,
                got: data.len(),
            });
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            data,
            home: workspace::home_of_given(expected),
        })
    }

    /// A rank-0 tensor holding one value.
    pub fn scalar(value: f32) -> Self {
        Tensor {
            shape: Vec::new(),
            data: vec![value],
            home: None,
        }
    }

    /// Samples from a normal distribution with the given mean and standard deviation;
    /// the same seed gives the same tensor on every machine.
    pub fn randn(shape: &[usize], mean: f32, std: f32, seed: u64) -> Result<Self> {
        let n = checked_count("Tensor::randn", shape)?;
        let mut rng = Rng::seed_from_u64(seed);
        let data = (0..n).map(|_| mean + std * rng.normal()).collect();
        Ok(Tensor {
            shape: shape.to_vec(),
            data,
            home: workspace::home_of_given(n),
        })
    }

    /// Samples uniformly from `[lo, hi)`; the same seed gives the same tensor everywhere.
    pub fn rand_uniform(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Result<Self> {
        if !lo.is_finite() || !hi.is_finite() || lo >= hi {
            return Err(TensorError::InvalidArgument {
                op: "Tensor::rand_uniform",
                reason: format!("the range [{lo}, {hi}) is empty or not finite"),
            });
        }
        let n = checked_count("Tensor::rand_uniform", shape)?;
        let mut rng = Rng::seed_from_u64(seed);
        let data = (0..n).map(|_| rng.uniform(lo, hi)).collect();
        Ok(Tensor {
            shape: shape.to_vec(),
            data,
            home: workspace::home_of_given(n),
        })
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the tensor holds no elements (some dimension is zero).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements in row-major order.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The elements in row-major order, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Gives up the tensor and returns its elements.
    pub fn into_vec(mut self) -> Vec<f32> {
        std::mem::take(&mut self.data)
    }

    /// The same elements under another shape with the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        let expected = checked_count("Tensor::reshape", shape)?;
        if expected != self.data.len() {
            return Err(TensorError::ElementCount {
                op: "Tensor::reshape",
                shape: shape.to_vec(),
                expected,
                got: self.data.len(),
            });
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            data: std::mem::take(&mut self.data),
            home: self.home.take(),
        })
    }

    /// The (N, C, H, W) dimensions of a rank-4 tensor.
    pub fn dims4(&self, op: &'static str) -> Result<[usize; 4]> {
        match self.shape[..] {
            [n, c, h, w] => Ok([n, c, h, w]),
            _ => Err(TensorError::Rank {
                op,
                expected: 4,
                got: self.shape.clone(),
            }),
        }
    }

    /// The (rows, columns) of a rank-2 tensor.
    pub fn dims2(&self, op: &'static str) -> Result<[usize; 2]> {
        match self.shape[..] {
            [r, c] => Ok([r, c]),
            _ => Err(TensorError::Rank {
                op,
                expected: 2,
                got: self.shape.clone(),
            }),
        }
    }

    fn offset(&self, index: &[usize]) -> Result<usize> {
        let out_of_bounds = || TensorError::Index {
            index: index.to_vec(),
            shape: self.shape.clone(),
        };
        if index.len() != self.shape.len() {
            return Err(out_of_bounds());
        }
        let mut offset = 0;
        for (&i, &d) in index.iter().zip(&self.shape) {
            if i >= d {
                return Err(out_of_bounds());
            }
            offset = offset * d + i;
        }
        Ok(offset)
    }

    /// The element at a multi-dimensional index.
    pub fn get(&self, index: &[usize]) -> Result<f32> {
        Ok(self.data[self.offset(index)?])
    }

    /// Sets the element at a multi-dimensional index.
    pub fn set(&mut self, index: &[usize], value: f32) -> Result<()> {
        let o = self.offset(index)?;
        self.data[o] = value;
        Ok(())
    }

    /// Checks that `other` (the argument `arg`) has exactly this tensor's shape.
    pub(crate) fn expect_same_shape(
        &self,
        op: &'static str,
        arg: &'static str,
        other: &Tensor,
    ) -> Result<()> {
        if self.shape != other.shape {
            return Err(TensorError::ShapeMismatch {
                op,
                arg,
                expected: self.shape.clone(),
                got: other.shape.clone(),
            });
        }
        Ok(())
    }
}

impl Clone for Tensor {
    fn clone(&self) -> Self {
        let (home, reused) = Self::home_for(self.data.len());
        let data = match reused {
            Some(mut v) => {
                v.copy_from_slice(&self.data);
                v
            }
            None => self.data.clone(),
        };
        Tensor {
            shape: self.shape.clone(),
            data,
            home,
        }
    }
}

impl Drop for Tensor {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            home.give(std::mem::take(&mut self.data));
        }
    }
}

impl std::fmt::Debug for Tensor {
    /// Shows the shape and at most the first eight elements: a tensor of a million
    /// elements should not flood a test failure.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 8;
        write!(f, "Tensor{:?} [", self.shape)?;
        for (i, x) in self.data.iter().take(SHOWN).enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{x}")?;
        }
        if self.data.len() > SHOWN {
            write!(f, ", ... {} more", self.data.len() - SHOWN)?;
        }
        write!(f, "]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_vec_checks_the_element_count() {
        assert!(Tensor::from_vec(&[2, 3], vec![0.0; 6]).is_ok());
        let e = Tensor::from_vec(&[2, 3], vec![0.0; 5]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Tensor::from_vec: shape [2, 3] holds 6 elements but 5 were given"
        );
    }

    #[test]
    fn overflowing_shapes_are_errors_not_panics() {
        assert!(Tensor::zeros(&[usize::MAX, 2]).is_err());
        assert!(Tensor::from_vec(&[usize::MAX, 3], vec![]).is_err());
    }

    #[test]
    fn indexing_is_row_major_and_bounds_checked() {
        let mut t = Tensor::from_vec(&[2, 3], (0..6).map(|x| x as f32).collect()).unwrap();
        assert_eq!(t.get(&[1, 2]).unwrap(), 5.0);
        assert_eq!(t.get(&[0, 1]).unwrap(), 1.0);
        t.set(&[1, 0], -1.0).unwrap();
        assert_eq!(t.data()[3], -1.0);
        assert!(t.get(&[2, 0]).is_err());
        assert!(t.get(&[0]).is_err());
        assert!(t.set(&[0, 3], 1.0).is_err());
    }

    #[test]
    fn reshape_keeps_data_and_checks_count() {
        let t = Tensor::from_vec(&[2, 3], (0..6).map(|x| x as f32).collect()).unwrap();
        let r = t.clone().reshape(&[3, 2]).unwrap();
        assert_eq!(r.shape(), &[3, 2]);
        assert_eq!(r.data(), t.data());
        assert!(t.reshape(&[4, 2]).is_err());
    }

    #[test]
    fn seeded_constructors_are_reproducible() {
        let a = Tensor::randn(&[3, 4], 0.0, 1.0, 9).unwrap();
        let b = Tensor::randn(&[3, 4], 0.0, 1.0, 9).unwrap();
        let c = Tensor::randn(&[3, 4], 0.0, 1.0, 10).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let u = Tensor::rand_uniform(&[100], -1.0, 1.0, 1).unwrap();
        assert!(u.data().iter().all(|x| (-1.0..1.0).contains(x)));
        assert!(Tensor::rand_uniform(&[1], 1.0, 1.0, 1).is_err());
    }

    #[test]
    fn empty_and_scalar_tensors() {
        let e = Tensor::zeros(&[0, 3]).unwrap();
        assert!(e.is_empty());
        let s = Tensor::scalar(2.5);
        assert_eq!(s.rank(), 0);
        assert_eq!(s.get(&[]).unwrap(), 2.5);
    }
}
