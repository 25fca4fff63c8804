//! Naive, obviously correct versions of every kernel: the specification.
//!
//! Read these first. Each is the textbook loop with no tricks, accumulating in `f64`
//! where a sum is involved, so it is the oracle the SIMD kernels are tested against (see
//! `tests/kernels_match_reference.rs`). They are slow on purpose; never call them on a
//! hot path.

use crate::conv::Conv2d;
use crate::error::{Result, TensorError};
use crate::gemm::MatRef;
use crate::kernels::{AvgPool2d, Pool2d};
use crate::tensor::Tensor;

/// `b` (named `arg`) has `a`'s shape.
fn same_shape(op: &'static str, arg: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(TensorError::ShapeMismatch {
            op,
            arg,
            expected: a.shape().to_vec(),
            got: b.shape().to_vec(),
        });
    }
    Ok(())
}

/// `y[n, c, ...] = x[n, c, ...] * scale[c] + shift[c]`, then `max(y, 0)` if `relu`.
pub fn scale_shift(x: &Tensor, scale: &[f32], shift: &[f32], relu: bool) -> Result<Tensor> {
    let shape = x.shape();
    if shape.len() < 2 || scale.len() != shape[1] || shift.len() != shape[1] {
        return Err(TensorError::InvalidArgument {
            op: "reference::scale_shift",
            reason: format!(
                "shape {shape:?} with {} scales, {} shifts",
                scale.len(),
                shift.len()
            ),
        });
    }
    let c = shape[1];
    let plane: usize = shape[2..].iter().product();
    let mut y = x.clone();
    for (i, v) in y.data_mut().iter_mut().enumerate() {
        let ch = (i / plane) % c;
        let out = *v * scale[ch] + shift[ch];
        *v = if relu { relu_scalar(out) } else { out };
    }
    Ok(y)
}

/// `max(v, 0)`, NaN kept (PyTorch's ReLU propagates NaN).
fn relu_scalar(v: f32) -> f32 {
    if v > 0.0 || v.is_nan() {
        v
    } else {
        0.0
    }
}

/// `max(x, 0)`.
pub fn relu(x: &Tensor) -> Tensor {
    let mut y = x.clone();
    y.data_mut().iter_mut().for_each(|v| *v = relu_scalar(*v));
    y
}

/// `a + b`, then `max(., 0)` if `relu`.
pub fn add(a: &Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
    same_shape("reference::add", "b", a, b)?;
    let mut y = a.clone();
    for (v, w) in y.data_mut().iter_mut().zip(b.data()) {
        let s = *v + *w;
        *v = if relu { relu_scalar(s) } else { s };
    }
    Ok(y)
}

/// Per-channel mean and biased variance over every axis but axis 1, in `f64`.
pub fn channel_mean_var(x: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    let shape = x.shape();
    if shape.len() < 2 {
        return Err(TensorError::Rank {
            op: "reference::channel_mean_var",
            expected: 2,
            got: shape.to_vec(),
        });
    }
    let c = shape[1];
    let plane: usize = shape[2..].iter().product();
    let count = (shape[0] * plane) as f64;
    let mut mean = vec![0.0f64; c];
    for (i, &v) in x.data().iter().enumerate() {
        mean[(i / plane) % c] += v as f64;
    }
    mean.iter_mut().for_each(|m| *m /= count);
    let mut var = vec![0.0f64; c];
    for (i, &v) in x.data().iter().enumerate() {
        let ch = (i / plane) % c;
        var[ch] += (v as f64 - mean[ch]).powi(2);
    }
    var.iter_mut().for_each(|v| *v /= count);
    Ok((mean, var))
}

/// Softmax over the last axis, in `f64`.
pub fn softmax(x: &Tensor) -> Tensor {
    rows(x, |row| {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = row.iter().map(|v| (v - m).exp()).sum();
        row.iter().map(|v| (v - m).exp() / total).collect()
    })
}

/// Log-softmax over the last axis, in `f64`.
pub fn log_softmax(x: &Tensor) -> Tensor {
    rows(x, |row| {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        row.iter().map(|v| v - lse).collect()
    })
}

fn rows(x: &Tensor, f: impl Fn(&[f64]) -> Vec<f64>) -> Tensor {
    let mut y = x.clone();
    let cols = x.shape().last().copied().unwrap_or(1).max(1);
    for row in y.data_mut().chunks_mut(cols) {
        let r: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        for (o, v) in row.iter_mut().zip(f(&r)) {
            *o = v as f32;
        }
    }
    y
}

/// Max pooling, straight from the definition: each output is the max over the window's
/// input positions that fall inside the image.
pub fn max_pool2d(x: &Tensor, p: &Pool2d) -> Result<Tensor> {
    let [n, c, h, w] = x.dims4("reference::max_pool2d")?;
    let [oh, ow] = p.output_size(h, w)?;
    let mut y = Tensor::zeros(&[n, c, oh, ow])?;
    for b in 0..n {
        for ch in 0..c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut m = f32::NEG_INFINITY;
                    for ky in 0..p.kernel[0] {
                        for kx in 0..p.kernel[1] {
                            let iy = (oy * p.stride[0] + ky * p.dilation[0]) as isize
                                - p.padding[0] as isize;
                            let ix = (ox * p.stride[1] + kx * p.dilation[1]) as isize
                                - p.padding[1] as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                let v = x.get(&[b, ch, iy as usize, ix as usize])?;
                                // A NaN in the window is the result, as in PyTorch.
                                if v > m || v.is_nan() {
                                    m = v;
                                }
                            }
                        }
                    }
                    y.set(&[b, ch, oy, ox], m)?;
                }
            }
        }
    }
    Ok(y)
}

/// The divisor of average pooling's output `(oy, ox)`, straight from PyTorch's
/// definition: the window clipped to the padded input (`count_include_pad`) or to the
/// input, rows times columns.
fn avg_divisor(p: &AvgPool2d, [oy, ox]: [usize; 2], [h, w]: [usize; 2]) -> f64 {
    let mut d = 1.0;
    for (axis, (o, size)) in [(oy, h), (ox, w)].into_iter().enumerate() {
        let (k, s, pad) = (
            p.window.kernel[axis] as isize,
            p.window.stride[axis] as isize,
            p.window.padding[axis] as isize,
        );
        let start = o as isize * s - pad;
        let (lo, hi) = if p.count_include_pad {
            (start, (start + k).min(size as isize + pad))
        } else {
            (start.max(0), (start + k).min(size as isize))
        };
        d *= (hi - lo) as f64;
    }
    d
}

/// Average pooling, straight from the definition, in `f64`: each output is the sum of
/// its window's inputs (padding adds zero) over the window's count.
pub fn avg_pool2d(x: &Tensor, p: &AvgPool2d) -> Result<Tensor> {
    let [n, c, h, w] = x.dims4("reference::avg_pool2d")?;
    let [oh, ow] = p.output_size(h, w)?;
    let mut y = Tensor::zeros(&[n, c, oh, ow])?;
    for b in 0..n {
        for ch in 0..c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = 0.0f64;
                    for ky in 0..p.window.kernel[0] {
                        for kx in 0..p.window.kernel[1] {
                            let iy = (oy * p.window.stride[0] + ky) as isize
                                - p.window.padding[0] as isize;
                            let ix = (ox * p.window.stride[1] + kx) as isize
                                - p.window.padding[1] as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                sum += x.get(&[b, ch, iy as usize, ix as usize])? as f64;
                            }
                        }
                    }
                    let d = avg_divisor(p, [oy, ox], [h, w]);
                    y.set(&[b, ch, oy, ox], (sum / d) as f32)?;
                }
            }
        }
    }
    Ok(y)
}

/// Average pooling's backward, in `f64`: each output's gradient, over its divisor, goes
/// to every input of its window.
pub fn avg_pool2d_backward(dy: &Tensor, x_shape: [usize; 4], p: &AvgPool2d) -> Result<Tensor> {
    let [n, c, h, w] = x_shape;
    let [oh, ow] = p.output_size(h, w)?;
    if dy.shape() != [n, c, oh, ow] {
        return Err(TensorError::ShapeMismatch {
            op: "reference::avg_pool2d_backward",
            arg: "dy",
            expected: vec![n, c, oh, ow],
            got: dy.shape().to_vec(),
        });
    }
    let mut dx = vec![0.0f64; n * c * h * w];
    for b in 0..n {
        for ch in 0..c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let g = dy.get(&[b, ch, oy, ox])? as f64 / avg_divisor(p, [oy, ox], [h, w]);
                    for ky in 0..p.window.kernel[0] {
                        for kx in 0..p.window.kernel[1] {
                            let iy = (oy * p.window.stride[0] + ky) as isize
                                - p.window.padding[0] as isize;
                            let ix = (ox * p.window.stride[1] + kx) as isize
                                - p.window.padding[1] as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                dx[((b * c + ch) * h + iy as usize) * w + ix as usize] += g;
                            }
                        }
                    }
                }
            }
        }
    }
    Tensor::from_vec(&x_shape, dx.into_iter().map(|v| v as f32).collect())
}

/// Global average pooling `[N, C, H, W] -> [N, C]`, in `f64`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let [n, c, h, w] = x.dims4("reference::global_avg_pool")?;
    let plane = h * w;
    let means = x
        .data()
        .chunks(plane.max(1))
        .take(n * c)
        .map(|p| (p.iter().map(|&v| v as f64).sum::<f64>() / plane as f64) as f32)
        .collect();
    Tensor::from_vec(&[n, c], means)
}

/// `A B` by the triple loop, accumulated in `f64`: row-major `m x n`. Also returns, per
/// element, `sum_k |a_ik| |b_kj|`, the scale that bounds the rounding error of any
/// `f32` evaluation order (tests use it for their tolerance).
pub fn gemm(a: MatRef, b: MatRef) -> (Vec<f64>, Vec<f64>) {
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    assert_eq!(b.rows(), k, "reference::gemm: inner dimensions differ");
    let mut c = vec![0.0f64; m * n];
    let mut scale = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                let (x, y) = (a.at(i, p) as f64, b.at(p, j) as f64);
                c[i * n + j] += x * y;
                scale[i * n + j] += (x * y).abs();
            }
        }
    }
    (c, scale)
}

/// Direct 2-D convolution of NCHW `x` with OIHW `w` (groups = 1), straight from the
/// definition, in `f64`: `y[b, o, oy, ox] = bias[o] + sum_{c, ky, kx} w[o, c, ky, kx] *
/// x[b, c, oy * s + ky - p, ox * s + kx - p]` (zero outside the image). Returns the output
/// and the per-element error scale `|bias| + sum |w x|`.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&[f32]>,
    stride: usize,
    padding: usize,
) -> Result<(Tensor, Vec<f64>)> {
    conv2d_grouped(x, w, bias, stride, padding, 1)
}

/// [`conv2d`] in `groups` channel groups (PyTorch's `groups`): `w` is
/// `[O, C / groups, kh, kw]`, and output channel `o` of group `g = o / (O / groups)` sums
/// over input channels `g C / groups ..` only: `y[b, o, oy, ox] = bias[o] + sum_{j, ky, kx}
/// w[o, j, ky, kx] x[b, g C / groups + j, ...]`.
pub fn conv2d_grouped(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&[f32]>,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<(Tensor, Vec<f64>)> {
    let conv = Conv2d::new(stride, padding).with_groups(groups);
    conv2d_with(x, w, bias, conv)
}

/// [`conv2d`] with every setting of `conv`: stride, padding, groups (see
/// [`conv2d_grouped`]) and dilation (tap `(ky, kx)` reads `x[.., oy s + ky d - p, ox s +
/// kx d - p]`).
pub fn conv2d_with(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&[f32]>,
    conv: Conv2d,
) -> Result<(Tensor, Vec<f64>)> {
    let Conv2d {
        stride,
        padding,
        groups,
        dilation,
    } = conv;
    let [n, c, h, wd] = x.dims4("reference::conv2d")?;
    let [o, wc, kh, kw] = w.dims4("reference::conv2d")?;
    let (sh, sw) = (
        dilation * (kh.max(1) - 1) + 1,
        dilation * (kw.max(1) - 1) + 1,
    );
    if groups == 0
        || dilation == 0
        || wc * groups != c
        || o % groups != 0
        || stride == 0
        || h + 2 * padding < sh
        || wd + 2 * padding < sw
    {
        return Err(TensorError::InvalidArgument {
            op: "reference::conv2d",
            reason: format!("input {:?}, weight {:?}, {conv:?}", x.shape(), w.shape()),
        });
    }
    let og = o / groups;
    let oh = (h + 2 * padding - sh) / stride + 1;
    let ow = (wd + 2 * padding - sw) / stride + 1;
    let mut y = Tensor::zeros(&[n, o, oh, ow])?;
    let mut scale = vec![0.0f64; y.len()];
    let (xd, wdta) = (x.data(), w.data());
    for b in 0..n {
        for oc in 0..o {
            let c0 = (oc / og) * wc;
            for oy in 0..oh {
                for ox in 0..ow {
                    let b0 = bias.map_or(0.0, |bs| bs[oc] as f64);
                    let (mut acc, mut sc) = (b0, b0.abs());
                    for j in 0..wc {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * stride + ky * dilation) as isize - padding as isize;
                                let ix = (ox * stride + kx * dilation) as isize - padding as isize;
                                if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= wd {
                                    continue;
                                }
                                let xv = xd[((b * c + c0 + j) * h + iy as usize) * wd + ix as usize]
                                    as f64;
                                let wv = wdta[((oc * wc + j) * kh + ky) * kw + kx] as f64;
                                acc += xv * wv;
                                sc += (xv * wv).abs();
                            }
                        }
                    }
                    let idx = ((b * o + oc) * oh + oy) * ow + ox;
                    y.data_mut()[idx] = acc as f32;
                    scale[idx] = sc;
                }
            }
        }
    }
    Ok((y, scale))
}

/// `y[b, o] = bias[o] + sum_i x[b, i] * w[o, i]` in `f64`, for `x: [N, in]`, `w: [out, in]`.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&[f32]>) -> Result<Tensor> {
    let [n, inp] = x.dims2("reference::linear")?;
    let [out, win] = w.dims2("reference::linear")?;
    if win != inp {
        return Err(TensorError::ShapeMismatch {
            op: "reference::linear",
            arg: "weight",
            expected: vec![out, inp],
            got: w.shape().to_vec(),
        });
    }
    let mut y = Tensor::zeros(&[n, out])?;
    for b in 0..n {
        for o in 0..out {
            let mut acc = bias.map_or(0.0, |bs| bs[o] as f64);
            for i in 0..inp {
                acc += x.data()[b * inp + i] as f64 * w.data()[o * inp + i] as f64;
            }
            y.data_mut()[b * out + o] = acc as f32;
        }
    }
    Ok(y)
}

// ---- Backward ----

/// ReLU's backward: `dy` where the ReLU's output `y > 0`, else 0.
pub fn relu_backward(dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    same_shape("reference::relu_backward", "y", dy, y)?;
    let mut dx = dy.clone();
    for (d, &o) in dx.data_mut().iter_mut().zip(y.data()) {
        if o.is_nan() || o <= 0.0 {
            *d = 0.0;
        }
    }
    Ok(dx)
}

/// Training batch norm's backward, straight from the formula, in `f64`. Returns
/// `(dx, dgamma, dbeta)`; the mean and inverse standard deviation are recomputed from
/// `x` (biased variance, as the forward normalises with).
pub fn batch_norm_backward(
    x: &Tensor,
    dy: &Tensor,
    gamma: &[f32],
    eps: f32,
) -> Result<(Tensor, Vec<f32>, Vec<f32>)> {
    same_shape("reference::batch_norm_backward", "dy", x, dy)?;
    let (mean, var) = channel_mean_var(x)?;
    let shape = x.shape();
    let c = shape[1];
    let plane: usize = shape[2..].iter().product();
    let m = (x.len() / c.max(1)) as f64;
    let ch_of = |i: usize| (i / plane.max(1)) % c;
    let istd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps as f64).sqrt()).collect();
    let (mut s_dy, mut s_dyxh) = (vec![0.0f64; c], vec![0.0f64; c]);
    for (i, (&xv, &g)) in x.data().iter().zip(dy.data()).enumerate() {
        let ch = ch_of(i);
        s_dy[ch] += g as f64;
        s_dyxh[ch] += g as f64 * (xv as f64 - mean[ch]) * istd[ch];
    }
    let mut dx = x.clone();
    for (i, (d, &g)) in dx.data_mut().iter_mut().zip(dy.data()).enumerate() {
        let ch = ch_of(i);
        let xh = (*d as f64 - mean[ch]) * istd[ch];
        *d = (gamma[ch] as f64 * istd[ch] * (g as f64 - s_dy[ch] / m - xh * s_dyxh[ch] / m)) as f32;
    }
    let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
    Ok((dx, f(s_dyxh), f(s_dy)))
}

/// Max pooling's winners: for each output of [`max_pool2d`] (in NCHW order), the offset
/// in its input plane (`iy W + ix`) of the first input, in row-major window order,
/// holding the window's maximum, or of its last NaN (PyTorch's rule); `u32::MAX` for a
/// window with no input in it.
pub fn max_pool2d_indices(x: &Tensor, p: &Pool2d) -> Result<Vec<u32>> {
    let [n, c, h, w] = x.dims4("reference::max_pool2d_indices")?;
    let [oh, ow] = p.output_size(h, w)?;
    let mut out = Vec::with_capacity(n * c * oh * ow);
    for b in 0..n {
        for ch in 0..c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut best: Option<(usize, f32)> = None;
                    for ky in 0..p.kernel[0] {
                        for kx in 0..p.kernel[1] {
                            let iy = (oy * p.stride[0] + ky * p.dilation[0]) as isize
                                - p.padding[0] as isize;
                            let ix = (ox * p.stride[1] + kx * p.dilation[1]) as isize
                                - p.padding[1] as isize;
                            if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                continue;
                            }
                            let v = x.get(&[b, ch, iy as usize, ix as usize])?;
                            // The first maximum, or the last NaN (PyTorch's rule).
                            if best.is_none_or(|(_, m)| v > m || v.is_nan()) {
                                best = Some((iy as usize * w + ix as usize, v));
                            }
                        }
                    }
                    out.push(best.map_or(u32::MAX, |(at, _)| at as u32));
                }
            }
        }
    }
    Ok(out)
}

/// Max pooling's backward: each output's gradient goes to the first input (in window
/// order) holding the window's maximum ([`max_pool2d_indices`]).
pub fn max_pool2d_backward(x: &Tensor, dy: &Tensor, p: &Pool2d) -> Result<Tensor> {
    let [n, c, h, w] = x.dims4("reference::max_pool2d_backward")?;
    let [oh, ow] = p.output_size(h, w)?;
    if dy.shape() != [n, c, oh, ow] {
        return Err(TensorError::ShapeMismatch {
            op: "reference::max_pool2d_backward",
            arg: "dy",
            expected: vec![n, c, oh, ow],
            got: dy.shape().to_vec(),
        });
    }
    let winners = max_pool2d_indices(x, p)?;
    let mut dx = Tensor::zeros(x.shape())?;
    let d = dx.data_mut();
    for (o, (&at, &g)) in winners.iter().zip(dy.data()).enumerate() {
        if at != u32::MAX {
            d[o / (oh * ow) * h * w + at as usize] += g;
        }
    }
    Ok(dx)
}

/// The gradients of the direct convolution (see [`conv2d`]) with respect to its input
/// and weights, in `f64`, straight from the definition: every product
/// `w[o, c, ky, kx] x[b, c, iy, ix]` that made `y[b, o, oy, ox]` sends `dy` times the
/// other factor back to each factor.
pub fn conv2d_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<(Tensor, Tensor)> {
    conv2d_grouped_backward(x, w, dy, stride, padding, 1)
}

/// The gradients of [`conv2d_grouped`], as [`conv2d_backward`]'s.
pub fn conv2d_grouped_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<(Tensor, Tensor)> {
    conv2d_backward_with(x, w, dy, Conv2d::new(stride, padding).with_groups(groups))
}

/// The gradients of [`conv2d_with`], as [`conv2d_backward`]'s.
pub fn conv2d_backward_with(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    conv: Conv2d,
) -> Result<(Tensor, Tensor)> {
    let Conv2d {
        stride,
        padding,
        groups,
        dilation,
    } = conv;
    let [n, c, h, wd] = x.dims4("reference::conv2d_backward")?;
    let [o, wc, kh, kw] = w.dims4("reference::conv2d_backward")?;
    let [_, _, oh, ow] = dy.dims4("reference::conv2d_backward")?;
    if groups == 0 || dilation == 0 || wc * groups != c || o % groups != 0 {
        return Err(TensorError::InvalidArgument {
            op: "reference::conv2d_backward",
            reason: format!(
                "input {:?}, weight {:?}, groups {groups}",
                x.shape(),
                w.shape()
            ),
        });
    }
    let og = o / groups;
    let mut dx = vec![0.0f64; x.len()];
    let mut dw = vec![0.0f64; w.len()];
    let (xd, wdta, gd) = (x.data(), w.data(), dy.data());
    for b in 0..n {
        for oc in 0..o {
            let c0 = (oc / og) * wc;
            for oy in 0..oh {
                for ox in 0..ow {
                    let g = gd[((b * o + oc) * oh + oy) * ow + ox] as f64;
                    for j in 0..wc {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * stride + ky * dilation) as isize - padding as isize;
                                let ix = (ox * stride + kx * dilation) as isize - padding as isize;
                                if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= wd {
                                    continue;
                                }
                                let xi = ((b * c + c0 + j) * h + iy as usize) * wd + ix as usize;
                                let wi = ((oc * wc + j) * kh + ky) * kw + kx;
                                dx[xi] += g * wdta[wi] as f64;
                                dw[wi] += g * xd[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
    Ok((
        Tensor::from_vec(x.shape(), f(dx))?,
        Tensor::from_vec(w.shape(), f(dw))?,
    ))
}
