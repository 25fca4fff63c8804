//! The blocked channel layout ("NCHWc"), its conversions and its pooling.
//!
//! A [`BlockedTensor`] holds an NCHW batch as `[N][CB][H][W][L]`: the channels in blocks
//! of `L` = the tier's vector width (16 on AVX-512), each pixel's block one vector, and
//! the channels past `C` in the last block zeros. Its convolution is a route of the
//! convolution plan (`Forward::Blocked`, in `conv/nchwc.rs`: [`Kernels::blocked_conv2d`]).
//!
//! The layout, its pooling and its convolution are tested against the references in
//! every tier. ResNet-18/34/50/101/152 inference (`resnet::InferenceModel`) runs in this
//! layout; the CIFAR networks and training stay in NCHW (see `docs/convolution.md`,
//! "The blocked layout", for its speed against the NCHW routes).

use rayon::prelude::*;

use crate::error::{Result, TensorError};
use crate::kernels::{AvgPool2d, Kernels, Pool2d};
use crate::layout::{copy_from_blocked, copy_to_blocked};
use crate::tensor::Tensor;

/// An NCHW batch in the blocked layout `[N][CB][H][W][L]` (see the module docs).
#[derive(Clone, Debug)]
pub struct BlockedTensor {
    pub(crate) data: Vec<f32>,
    /// The logical NCHW shape.
    pub(crate) shape: [usize; 4],
    pub(crate) lanes: usize,
}

impl BlockedTensor {
    /// The logical NCHW shape.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// The channel block width `L` (the vector width of the tier that made it).
    pub fn lanes(&self) -> usize {
        self.lanes
    }

    /// The raw `[N][CB][H][W][L]` data.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub(crate) fn blocks(&self) -> usize {
        self.shape[1].div_ceil(self.lanes)
    }
}

/// `t` is a blocked tensor of `lanes` and the logical `shape`, or the error says which.
pub(crate) fn expect_blocked(
    op: &'static str,
    arg: &'static str,
    t: &BlockedTensor,
    lanes: usize,
    shape: [usize; 4],
) -> Result<()> {
    if t.lanes != lanes {
        return Err(lanes_mismatch(op, t.lanes, lanes));
    }
    if t.shape != shape {
        return Err(TensorError::ShapeMismatch {
            op,
            arg,
            expected: shape.to_vec(),
            got: t.shape.to_vec(),
        });
    }
    Ok(())
}

pub(crate) fn lanes_mismatch(op: &'static str, got: usize, want: usize) -> TensorError {
    TensorError::InvalidArgument {
        op,
        reason: format!(
            "blocked data made for {got}-lane vectors, but these kernels use {want} lanes"
        ),
    }
}

impl Kernels {
    /// `x` (NCHW) in the blocked layout of this tier.
    pub fn to_blocked(&self, x: &Tensor) -> Result<BlockedTensor> {
        let shape = x.dims4("to_blocked")?;
        let mut y = BlockedTensor::zeros(self, shape)?;
        self.to_blocked_into(x, &mut y)?;
        Ok(y)
    }

    /// [`Kernels::to_blocked`] into an existing blocked tensor of `x`'s shape (every
    /// element written, the lanes past the channels with zeros).
    pub fn to_blocked_into(&self, x: &Tensor, y: &mut BlockedTensor) -> Result<()> {
        let [n, c, h, w] = x.dims4("to_blocked")?;
        let l = self.lanes();
        expect_blocked("to_blocked_into", "y", y, l, [n, c, h, w])?;
        copy_to_blocked(self.set(), x.data(), [n, c, h * w], None, &mut y.data);
        Ok(())
    }

    /// A blocked tensor back in NCHW.
    pub fn from_blocked(&self, x: &BlockedTensor) -> Result<Tensor> {
        let [n, c, h, w] = x.shape;
        if x.lanes != self.lanes() {
            return Err(lanes_mismatch("from_blocked", x.lanes, self.lanes()));
        }
        let mut out = Tensor::for_overwrite(&[n, c, h, w])?;
        copy_from_blocked(
            self.set(),
            &x.data,
            [n, c, h * w],
            out.data_mut(),
            |_, _, _, s, d| d.copy_from_slice(s),
        );
        Ok(out)
    }
}

/// The product of `dims`, or an error naming `op` when it overflows.
pub(crate) fn checked_len(op: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| TensorError::InvalidArgument {
            op,
            reason: format!("sizes {dims:?} overflow"),
        })
}

impl BlockedTensor {
    /// A zero batch of the logical NCHW `shape` in `kernels`' blocked layout.
    pub fn zeros(kernels: &Kernels, shape: [usize; 4]) -> Result<Self> {
        let [n, c, h, w] = shape;
        let l = kernels.lanes();
        let len = checked_len("BlockedTensor::zeros", &[n, c.div_ceil(l), h, w, l])?;
        Ok(BlockedTensor {
            data: vec![0.0; len],
            shape,
            lanes: l,
        })
    }
}

impl Kernels {
    /// Max pooling in the blocked layout (PyTorch's `MaxPool2d`, padding never chosen),
    /// into an existing output of the pooled shape.
    pub fn blocked_max_pool2d_into(
        &self,
        x: &BlockedTensor,
        pool: &Pool2d,
        y: &mut BlockedTensor,
    ) -> Result<()> {
        let op = "blocked_max_pool2d";
        let [n, c, h, w] = x.shape;
        let [oh, ow] = pool.output_size(h, w)?;
        expect_blocked(op, "y", y, x.lanes, [n, c, oh, ow])?;
        let l = x.lanes;
        let ([kh, kw], [sh, sw], [ph, pw]) = (pool.kernel, pool.stride, pool.padding);
        let [dh, dw] = pool.dilation;
        let planes = n * x.blocks();
        if planes * oh * ow == 0 {
            return Ok(());
        }
        if h * w == 0 {
            // Windows of padding only would have no maximum (PyTorch rejects these too).
            return Err(TensorError::InvalidArgument {
                op,
                reason: format!("cannot pool an empty plane, shape {:?}", x.shape),
            });
        }
        let one = |(src, dst): (&[f32], &mut [f32])| {
            // The window's taps inside the image (a dilated window of padding only keeps
            // `-inf`, as in PyTorch).
            let taps = |o: usize, s: usize, p: usize, k: usize, d: usize, size: usize| {
                (0..k)
                    .map(move |t| (o * s + t * d) as isize - p as isize)
                    .filter(move |&i| i >= 0 && (i as usize) < size)
                    .map(|i| i as usize)
            };
            for oy in 0..oh {
                for ox in 0..ow {
                    let out = &mut dst[(oy * ow + ox) * l..][..l];
                    out.fill(f32::NEG_INFINITY);
                    for iy in taps(oy, sh, ph, kh, dh, h) {
                        for ix in taps(ox, sw, pw, kw, dw, w) {
                            let v = &src[(iy * w + ix) * l..][..l];
                            for (o, v) in out.iter_mut().zip(v) {
                                // `max` skips a NaN; PyTorch's max pool propagates it.
                                *o = if v.is_nan() || *v > *o { *v } else { *o };
                            }
                        }
                    }
                }
            }
        };
        let pairs = x
            .data
            .par_chunks_exact(h * w * l)
            .zip(y.data.par_chunks_exact_mut(oh * ow * l));
        if planes > 1 && rayon::current_num_threads() > 1 {
            pairs.for_each(one);
        } else {
            x.data
                .chunks_exact(h * w * l)
                .zip(y.data.chunks_exact_mut(oh * ow * l))
                .for_each(one);
        }
        Ok(())
    }

    /// Average pooling in the blocked layout (PyTorch's `AvgPool2d`, see
    /// [`AvgPool2d`]), into an existing output of the pooled shape: each output pixel's
    /// `L` channels are the sum of its window's pixels, `L` lanes at a time, times the
    /// inverse of the window's count.
    pub fn blocked_avg_pool2d_into(
        &self,
        x: &BlockedTensor,
        pool: &AvgPool2d,
        y: &mut BlockedTensor,
    ) -> Result<()> {
        let op = "blocked_avg_pool2d";
        let [n, c, h, w] = x.shape;
        let [oh, ow] = pool.output_size(h, w)?;
        expect_blocked(op, "y", y, x.lanes, [n, c, oh, ow])?;
        let l = x.lanes;
        let w_ = &pool.window;
        let ([kh, kw], [sh, sw], [ph, pw]) = (w_.kernel, w_.stride, w_.padding);
        let planes = n * x.blocks();
        if planes * oh * ow == 0 {
            return Ok(());
        }
        if h * w == 0 {
            return Err(TensorError::InvalidArgument {
                op,
                reason: format!("cannot average an empty plane, shape {:?}", x.shape),
            });
        }
        let cols: Vec<usize> = (0..ow).map(|ox| pool.count(1, ox, w)).collect();
        let one = |(src, dst): (&[f32], &mut [f32])| {
            for oy in 0..oh {
                let y0 = (oy * sh).saturating_sub(ph);
                let y1 = (oy * sh + kh).saturating_sub(ph).min(h);
                let rows = pool.count(0, oy, h);
                for ox in 0..ow {
                    let x0 = (ox * sw).saturating_sub(pw);
                    let x1 = (ox * sw + kw).saturating_sub(pw).min(w);
                    let out = &mut dst[(oy * ow + ox) * l..][..l];
                    out.fill(0.0);
                    for iy in y0..y1 {
                        for ix in x0..x1 {
                            let v = &src[(iy * w + ix) * l..][..l];
                            for (o, v) in out.iter_mut().zip(v) {
                                *o += v;
                            }
                        }
                    }
                    let inv = 1.0 / (rows * cols[ox]) as f32;
                    for o in out.iter_mut() {
                        *o *= inv;
                    }
                }
            }
        };
        if planes > 1 && rayon::current_num_threads() > 1 {
            x.data
                .par_chunks_exact(h * w * l)
                .zip(y.data.par_chunks_exact_mut(oh * ow * l))
                .for_each(one);
        } else {
            x.data
                .chunks_exact(h * w * l)
                .zip(y.data.chunks_exact_mut(oh * ow * l))
                .for_each(one);
        }
        Ok(())
    }

    /// The mean of each channel's plane, `[N, C]` (NCHW), of a blocked batch.
    pub fn blocked_global_avg_pool(&self, x: &BlockedTensor) -> Result<Tensor> {
        let [n, c, h, w] = x.shape;
        let plane = h * w;
        if plane == 0 {
            return Err(TensorError::InvalidArgument {
                op: "blocked_global_avg_pool",
                reason: format!("cannot average an empty plane, shape {:?}", x.shape),
            });
        }
        let (l, cb) = (x.lanes, x.blocks());
        let mut y = Tensor::zeros(&[n, c])?;
        let inv = 1.0 / plane as f32;
        let yd = y.data_mut();
        let mut sums = vec![0.0f32; l];
        for b in 0..n {
            for blk in 0..cb {
                sums.fill(0.0);
                let src = &x.data[(b * cb + blk) * plane * l..][..plane * l];
                for px in src.chunks_exact(l) {
                    for (s, v) in sums.iter_mut().zip(px) {
                        *s += v;
                    }
                }
                for (i, s) in sums.iter().enumerate() {
                    if let Some(d) = yd.get_mut(b * c + blk * l + i).filter(|_| blk * l + i < c) {
                        *d = s * inv;
                    }
                }
            }
        }
        Ok(y)
    }
}
