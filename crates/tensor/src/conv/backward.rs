//! A convolution's backward: the input gradient by the route the plan picked (a GEMM
//! straight into `dX` for an unpadded 1x1, the direct kernel's transposed convolution,
//! or a GEMM into `dcols` and col2im), and the weight gradient by `weight_grad.rs`.
//! Images are split over the threads, each with its own `dW` accumulator, summed at the
//! end.

use rayon::prelude::*;

use super::direct::{
    direct_conv_image, strided_transposed_image, DirectWeights, StridedTransposed,
};
use super::weight_grad::{accumulate_weight_grad, ConvShape, WeightGradScratch};
use super::{ConvPlan, DirectForm, InputGrad, Mode, WeightGrad};
use crate::backward::{expect_shape, ConvGrads};
use crate::epilogue::Epilogue;
use crate::error::{Result, TensorError};
use crate::gemm::driver::{self, Threads};
use crate::gemm::pack::{BSource, PackedA};
use crate::gemm::{MatMut, MatRef};
use crate::kernels::Kernels;
use crate::layout::{check_affine, normalise_image, Normalise};
use crate::tensor::Tensor;
use crate::workspace::{Lent, Workspace};

/// `dw` (`[o, c kh kw]`) = the weight gradient of a dense, undilated convolution over the
/// images of `x` (`[n, c, h, w]`) and `dy` (`[n, o, oh, ow]`) as one GEMM
/// ([`WeightGrad::Gemm`]): `dY` gathered to `[o, n P]` (`P = oh ow`), the input's columns
/// (im2col of every image, side by side: `[c kh kw, n P]`; for an unpadded 1x1 layer the
/// input subsampled by the stride) normalised, `relu(scale[c] x + shift[c])`, when
/// `normalise` is given, then `dW = dY X^T` with the second operand read transposed.
#[allow(clippy::too_many_arguments)]
fn gemm_weight_grad(
    k: &Kernels,
    g: &ConvShape,
    o: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    normalise: Option<[&[f32]; 2]>,
    threads: Threads,
    ws: &Workspace,
) -> Result<()> {
    let (c, pix, s) = (g.c, g.oh * g.ow, g.stride);
    let (in_image, out_image) = (c * g.h * g.w, o * pix);
    let n = x.len() / in_image.max(1);
    let cols = n * pix;
    let rows = c * g.kh * g.kw;
    if cols == 0 || o == 0 || rows == 0 {
        return Ok(());
    }
    let norm = normalise.map(|affine| Normalise::new(k.set(), affine));
    let one_by_one = g.kh == 1 && g.kw == 1 && g.pad == 0;
    // Lent by the workspace for this call (a few MB for the small-plane layers the ladder
    // gives this route), not parked in its scratch between steps. `dY`'s rows are
    // written in full; the columns start as zeros: im2col leaves the taps that read
    // padding alone.
    let mut a = ws.lend(o * cols);
    let mut b = ws.lend_zeroed(rows * cols);
    let mut row = vec![0.0f32; if one_by_one && s > 1 { pix } else { 0 }];
    let mut normalised = ws.lend(if !one_by_one && norm.is_some() {
        in_image
    } else {
        0
    });
    let images = x.chunks_exact(in_image).zip(dy.chunks_exact(out_image));
    for (i, (x_i, dy_i)) in images.enumerate() {
        for (oc, run) in dy_i.chunks_exact(pix).enumerate() {
            a[oc * cols + i * pix..][..pix].copy_from_slice(run);
        }
        if !one_by_one {
            // im2col of the (normalised) image into its columns of every row.
            let img: &[f32] = match normalise {
                Some(affine) => {
                    normalise_image(k.set(), x_i, g.h * g.w, affine, &mut normalised);
                    &normalised
                }
                None => x_i,
            };
            g.for_each_run(cols, |dst, src, ox0, ox1, kx| {
                let out = &mut b[dst + i * pix + ox0..dst + i * pix + ox1];
                let first = src + ox0 * s + kx - g.pad;
                if s == 1 {
                    out.copy_from_slice(&img[first..first + out.len()]);
                } else {
                    out.iter_mut()
                        .zip(img[first..].iter().step_by(s))
                        .for_each(|(d, v)| *d = *v);
                }
            });
            continue;
        }
        for (ch, plane) in x_i.chunks_exact(g.h * g.w).enumerate() {
            let dst = &mut b[ch * cols + i * pix..][..pix];
            // The pixels the 1x1 taps read: every `s`-th of every `s`-th row.
            let src = if s == 1 {
                plane
            } else {
                for (oy, r) in row.chunks_exact_mut(g.ow).enumerate() {
                    let line = &plane[oy * s * g.w..];
                    r.iter_mut()
                        .zip(line.iter().step_by(s))
                        .for_each(|(d, v)| *d = *v);
                }
                &row[..]
            };
            match &norm {
                Some(nm) => nm.apply(ch, src, dst),
                None => dst.copy_from_slice(src),
            }
        }
    }
    let packed = PackedA::pack_lent(
        k.isa(),
        k.set().gemm_mr,
        MatRef::row_major(&a, o, cols)?,
        ws,
    );
    drop(a);
    let source = BSource::Matrix(MatRef::row_major(&b, rows, cols)?.t());
    let mut c_mat = MatMut::row_major(dw, o, rows)?;
    let done = driver::gemm(
        k.set(),
        &packed,
        &source,
        o,
        rows,
        &mut c_mat,
        &[],
        threads,
        ws,
    );
    ws.recycle(packed.into_buffer());
    done
}

/// How many images each of `dW`'s partial sums runs over, for `n` images on `threads`
/// threads: one group per thread, or with fewer images than threads all of them in one
/// group that threads its work inside (`conv2d_backward_dense`; the ladder's
/// [`WeightGrad::Gemm`] rule reads it too).
pub(crate) fn dw_group_images(n: usize, threads: usize) -> usize {
    if threads > 1 && n >= threads {
        n.div_ceil(threads)
    } else {
        n
    }
}

/// The output positions `o` in `0..out` whose input coordinate `o * stride + offset -
/// pad` falls inside `0..size`, as a range (they are contiguous).
fn valid_outputs(
    out: usize,
    stride: usize,
    offset: usize,
    pad: usize,
    size: usize,
) -> (usize, usize) {
    // o * stride + offset >= pad  <=>  o >= ceil((pad - offset) / stride)
    let lo = if offset >= pad {
        0
    } else {
        (pad - offset).div_ceil(stride)
    };
    // o * stride + offset - pad < size  <=>  o * stride < size + pad - offset
    let limit = size + pad;
    let hi = if limit <= offset {
        0
    } else {
        (limit - offset).div_ceil(stride)
    };
    (lo.min(out), hi.min(out).max(lo.min(out)))
}

/// The convolution geometry of one image (col2im here; im2col is `Im2col::pack_panel`).
type Geometry = ConvShape;

impl Geometry {
    /// Visits every (column-matrix row, output row) pair with the input row it reads
    /// and the valid output columns: `f(col_offset, input_offset, ox0, ox1, kx)`, where
    /// column `ox` of the run reads input column `ox * stride + kx - pad`; the column
    /// matrix's rows are `p` floats apart (the image's pixels, or more where the matrix
    /// holds several images side by side).
    fn for_each_run(&self, p: usize, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
        for ci in 0..self.c {
            for ky in 0..self.kh {
                let (oy0, oy1) = valid_outputs(self.oh, self.stride, ky, self.pad, self.h);
                for kx in 0..self.kw {
                    let row = (ci * self.kh + ky) * self.kw + kx;
                    let (ox0, ox1) = valid_outputs(self.ow, self.stride, kx, self.pad, self.w);
                    if ox0 == ox1 {
                        continue; // this tap reads only padding
                    }
                    for oy in oy0..oy1 {
                        let iy = oy * self.stride + ky - self.pad;
                        f(
                            row * p + oy * self.ow,
                            (ci * self.h + iy) * self.w,
                            ox0,
                            ox1,
                            kx,
                        );
                    }
                }
            }
        }
    }

    /// Adds the column matrix `cols` back into the image gradient `dx` (the transpose
    /// of im2col, `Im2col::pack_panel`: every input pixel collects the columns that read
    /// it). The image's columns start at `cols[0]`, in rows `row_stride` floats apart.
    fn col2im(&self, cols: &[f32], row_stride: usize, dx: &mut [f32]) {
        let (s, pad) = (self.stride, self.pad);
        self.for_each_run(row_stride, |src, dst, ox0, ox1, kx| {
            let run = &cols[src + ox0..src + ox1];
            let first = dst + ox0 * s + kx - pad;
            if s == 1 {
                // Contiguous on both sides: the compiler vectorises this.
                let out = &mut dx[first..first + run.len()];
                out.iter_mut().zip(run).for_each(|(d, v)| *d += v);
            } else {
                let out = dx[first..].iter_mut().step_by(s);
                out.zip(run).for_each(|(d, v)| *d += v);
            }
        });
    }
}

/// The fewest columns a dX GEMM of the col2im route aims for: images with fewer pixels
/// go several to a GEMM (`conv2d_backward_dense`). Measured in `docs/benchmarks.md`
/// (2026-12-05, night).
const DX_GEMM_COLUMNS: usize = 256;

/// Where a convolution's input gradient `dX` goes.
#[derive(Debug, Default)]
pub enum DxInto {
    /// Not computed.
    Skip,
    /// A new tensor, shaped as the input.
    #[default]
    New,
    /// Added into this tensor, shaped as the input: the gradient other consumers of the
    /// input already sent it (a residual block's input gets its shortcut's gradient
    /// first). It comes back as the result's `dx`; the kernels' epilogues and col2im
    /// add in place, so there is no separate tensor and no pass to add it.
    Add(Tensor),
}

/// What [`Kernels::conv2d_backward`] computes. The default: `dX` into a new tensor and
/// `dW`, for a convolution of the plain input.
#[derive(Debug)]
pub struct ConvBackward<'a> {
    /// `Some([scale, shift])`: the convolution read `relu(scale[c] x + shift[c])` of the
    /// `x` given (a training batch norm and its ReLU folded in, as the forward
    /// `conv2d_with_stats(x, w, Some(affine))` ran it). `dX` is then the gradient with
    /// respect to that normalised input (it needs no input values), and `dW` normalises
    /// the input on the way into its operand (the phase planes, or for 1x1 a buffer of a
    /// few images at a time): the same values as a backward on `scale_shift_relu(x)`, to
    /// the last bit.
    pub input_affine: Option<[&'a [f32]; 2]>,
    /// Where `dX` goes.
    pub dx: DxInto,
    /// Whether to compute `dW`.
    pub dw: bool,
}

impl<'a> ConvBackward<'a> {
    /// `dX` into a new tensor if `want_dx`, `dW` if `want_dw`, of the plain input.
    pub fn new(want_dx: bool, want_dw: bool) -> Self {
        ConvBackward {
            input_affine: None,
            dx: if want_dx { DxInto::New } else { DxInto::Skip },
            dw: want_dw,
        }
    }

    /// The same for a convolution that read `relu(scale[c] x + shift[c])` (see
    /// [`ConvBackward::input_affine`]).
    pub fn normalised(self, affine: [&'a [f32]; 2]) -> Self {
        ConvBackward {
            input_affine: Some(affine),
            ..self
        }
    }

    /// `dX` added into `acc` (see [`DxInto::Add`]).
    pub fn adding_dx_into(self, acc: Tensor) -> Self {
        ConvBackward {
            dx: DxInto::Add(acc),
            ..self
        }
    }
}

impl Default for ConvBackward<'_> {
    fn default() -> Self {
        ConvBackward {
            input_affine: None,
            dx: DxInto::New,
            dw: true,
        }
    }
}

impl Kernels {
    /// Convolution's backward (NCHW input `x`, OIHW weights `w`, upstream `dy`) by the
    /// routes of `plan`, a training plan of the layer; `what` says which gradients, and
    /// whether the input was normalised on the way in:
    ///
    /// - `dW = sum_n dY_n X_n^T`, where row `(c, ky, kx)` of `X_n` is the image seen
    ///   through that tap, with no column matrix (`weight_grad.rs`): the outer-product
    ///   kernel when the output channels are two or more whole vectors, the row-dot
    ///   kernel otherwise, both reading the taps from the image itself (1x1, stride 1,
    ///   unpadded) or from its zero-padded phase planes, a few images at a time;
    /// - `dX_n = col2im(W^T dY_n)`, or where the direct kernel is the faster algorithm
    ///   the transposed convolution by it: for stride 1 one convolution of `dY` with
    ///   the flipped weights, for stride `s` one per output phase `(y % s, x % s)`
    ///   (`StridedTransposed` in `direct.rs`).
    ///
    /// A 1x1 stride-1 unpadded convolution needs no columns: `dX_n = W^T dY_n` directly.
    /// Images are split over the threads, each with its own `dW` accumulator, summed at
    /// the end.
    pub fn conv2d_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        plan: &ConvPlan,
        what: ConvBackward,
    ) -> Result<ConvGrads> {
        let op = "conv2d_backward";
        let [_, c, _, _] = x.dims4(op)?;
        if let Some(affine) = what.input_affine {
            check_affine(op, affine, c)?;
        }
        if let DxInto::Add(acc) = &what.dx {
            x.expect_same_shape(op, "dx accumulator", acc)?;
        }
        let dx = match what.dx {
            DxInto::Skip => None,
            into => Some(into),
        };
        self.conv2d_backward_impl(op, x, w, dy, plan, dx, what.dw, what.input_affine)
    }

    /// The backward of `plan`: a dilated plan phase by phase (`dilated.rs`; each phase
    /// comes back here, and may be grouped), a grouped one group by group
    /// (`grouped.rs`), a dense one by its routes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv2d_backward_impl(
        &self,
        op: &'static str,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        plan: &ConvPlan,
        dx_into: Option<DxInto>,
        want_dw: bool,
        normalise: Option<[&[f32]; 2]>,
    ) -> Result<ConvGrads> {
        self.check_plan(op, plan)?;
        if plan.dilation() > 1 {
            return self.dilated_conv2d_backward(op, x, w, dy, plan, dx_into, want_dw, normalise);
        }
        if plan.groups() > 1 {
            return self.grouped_conv2d_backward(op, x, w, dy, plan, dx_into, want_dw, normalise);
        }
        self.conv2d_backward_dense(op, x, w, dy, plan, dx_into, want_dw, normalise)
    }

    /// [`Kernels::conv2d_backward`] of a dense plan.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv2d_backward_dense(
        &self,
        op: &'static str,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        plan: &ConvPlan,
        dx_into: Option<DxInto>,
        want_dw: bool,
        normalise: Option<[&[f32]; 2]>,
    ) -> Result<ConvGrads> {
        let want_dx = dx_into.is_some();
        let accumulate = matches!(dx_into, Some(DxInto::Add(_)));
        let [n, c, h, wd] = x.dims4(op)?;
        let [o, wc, kh, kw] = w.dims4(op)?;
        if [o, wc, kh, kw] != plan.weights_shape() {
            return Err(TensorError::ShapeMismatch {
                op,
                arg: "w",
                expected: plan.weights_shape().to_vec(),
                got: w.shape().to_vec(),
            });
        }
        self.check_plan(op, plan)?;
        let routes = plan.routes([n, c, h, wd])?;
        let (Some(dx_route), Some(dw_route)) = (routes.input_grad, routes.weight_grad) else {
            return Err(TensorError::InvalidArgument {
                op,
                reason: format!(
                    "the plan is for {:?}: a backward needs one made with Mode::Training",
                    plan.mode()
                ),
            });
        };
        debug_assert_eq!(plan.mode(), Mode::Training);
        let p = plan.conv();
        let [oh, ow] = p.output_size(h, wd, kh, kw)?;
        expect_shape(op, "dy", &[n, o, oh, ow], dy)?;
        let g = Geometry {
            c,
            h,
            w: wd,
            kh,
            kw,
            oh,
            ow,
            stride: p.stride,
            pad: p.padding,
        };
        let (k, pix) = (c * kh * kw, oh * ow);
        let (in_image, out_image) = (c * h * wd, o * pix);
        // The plan's dX route: a GEMM straight into dX (1x1), the transposed
        // convolution by the direct kernel (stride 1: dY with the weights rotated by 180
        // degrees and their channels swapped, padded by `kh - 1 - p`; strided: phase by
        // phase), or a GEMM into dcols and col2im.
        let direct = want_dx && dx_route == InputGrad::GemmImage;
        let transposed: Option<DirectForm> = match dx_route {
            InputGrad::DirectTransposed(form) if want_dx => Some(form),
            _ => None,
        };
        let strided = want_dx && dx_route == InputGrad::DirectPhases;
        let winograd = want_dx && dx_route == InputGrad::Winograd;
        let empty = n == 0 || k == 0 || pix == 0 || o == 0 || in_image == 0;
        // dX is written in full by a GEMM (1x1) or the direct kernel; col2im and the
        // empty cases add into zeros.
        let mut dx = match dx_into {
            None | Some(DxInto::Skip) => None,
            Some(DxInto::Add(acc)) => Some(acc),
            Some(DxInto::New)
                if !empty && (direct || transposed.is_some() || strided || winograd) =>
            {
                Some(Tensor::for_overwrite(x.shape())?)
            }
            Some(DxInto::New) => Some(Tensor::zeros(x.shape())?),
        };
        if empty {
            let dw = if want_dw {
                Some(Tensor::zeros(w.shape())?)
            } else {
                None
            };
            return Ok(ConvGrads { dx, dw });
        }
        let set = self.set();
        // Scratch comes from the caller's workspace, in whichever thread runs an image.
        let ws = Workspace::current();
        let mr = set.gemm_mr;
        let flipped = transposed.map(|form| {
            (
                form,
                DirectWeights::flipped(w.data(), [o, c, kh, kw], set.direct_ob),
            )
        });
        let phased = strided
            .then(|| StridedTransposed::new(w.data(), [o, c, kh, kw], p.stride, set.direct_ob));
        // W^T ([K, O]), packed once for every image's dX GEMM.
        // The transposed convolution's weights for Winograd.
        let winograd_weights = if winograd {
            let wt = super::winograd_nchw::transposed_weights(w.data(), [o, c])?;
            Some(self.pack_winograd_weights(&wt, 4)?)
        } else {
            None
        };
        let wt = if want_dx && transposed.is_none() && !strided && !winograd {
            Some(PackedA::pack_lent(
                self.isa(),
                mr,
                MatRef::row_major(w.data(), o, k)?.t(),
                &ws,
            ))
        } else {
            None
        };
        let (xd, gd) = (x.data(), dy.data());

        // One group of images' partial dW.
        let dw_group = |images: std::ops::Range<usize>, threads: Threads| -> Result<Lent> {
            // Lent by the workspace: a fresh buffer per call cost page faults and, freed,
            // an unmapping that interrupted the threads computing `dX` meanwhile.
            let mut dw_part = ws.lend_zeroed(o * k);
            if dw_route == WeightGrad::Winograd {
                self.winograd_weight_grad(
                    &xd[images.start * in_image..images.end * in_image],
                    [images.len(), c, h, wd],
                    &gd[images.start * out_image..images.end * out_image],
                    [o, oh, ow],
                    p.padding,
                    normalise,
                    &mut dw_part,
                )?;
                return Ok(dw_part);
            }
            if dw_route == WeightGrad::Gemm {
                let (x_g, dy_g) = (
                    &xd[images.start * in_image..images.end * in_image],
                    &gd[images.start * out_image..images.end * out_image],
                );
                gemm_weight_grad(
                    self,
                    &g,
                    o,
                    x_g,
                    dy_g,
                    &mut dw_part,
                    normalise,
                    threads,
                    &ws,
                )?;
                return Ok(dw_part);
            }
            WeightGradScratch::with(&ws, |scratch| {
                accumulate_weight_grad(
                    set,
                    &g,
                    o,
                    &xd[images.start * in_image..images.end * in_image],
                    &gd[images.start * out_image..images.end * out_image],
                    &mut dw_part,
                    scratch,
                    threads == Threads::Auto,
                    normalise,
                    dw_route,
                )
            });
            Ok(dw_part)
        };
        // One image's dX, with scratch buffers the caller keeps between images.
        let dx_image = |b: usize,
                        dx_b: &mut [f32],
                        threads: Threads,
                        padded: &mut Vec<f32>,
                        dcols: &mut Vec<f32>|
         -> Result<()> {
            let dy_b = &gd[b * out_image..(b + 1) * out_image];
            if let Some((form, fw)) = &flipped {
                direct_conv_image(
                    set,
                    *form,
                    dy_b,
                    [oh, ow],
                    fw,
                    1,
                    kh - 1 - p.padding,
                    [h, wd],
                    dx_b,
                    if accumulate {
                        &[Epilogue::Accumulate]
                    } else {
                        &[]
                    },
                    threads,
                    padded,
                    None,
                    &ws,
                    // The next image's dY, which this thread likely runs next.
                    gd.get((b + 1) * out_image..(b + 2) * out_image)
                        .unwrap_or(&[]),
                );
            }
            if let Some(st) = &phased {
                strided_transposed_image(
                    set,
                    dy_b,
                    [oh, ow],
                    st,
                    p.padding,
                    [h, wd],
                    dx_b,
                    accumulate,
                    threads,
                    padded,
                    &ws,
                );
            }
            if let Some(wt) = &wt {
                // dcols [K, P] = W^T [K, O] dY_b [O, P], straight into dX_b when the
                // columns are the image itself.
                let source = BSource::Matrix(MatRef::row_major(dy_b, o, pix)?);
                if direct {
                    let mut c_mat = MatMut::row_major(dx_b, k, pix)?;
                    let epilogue: &[Epilogue] = if accumulate {
                        &[Epilogue::Accumulate]
                    } else {
                        &[]
                    };
                    driver::gemm(set, wt, &source, k, pix, &mut c_mat, epilogue, threads, &ws)?;
                } else {
                    // Written in full by the GEMM: a reused buffer needs no clearing.
                    dcols.resize(k * pix, 0.0);
                    let mut c_mat = MatMut::row_major(dcols, k, pix)?;
                    driver::gemm(set, wt, &source, k, pix, &mut c_mat, &[], threads, &ws)?;
                    g.col2im(dcols, pix, dx_b);
                }
            }
            Ok(())
        };
        // Images `b0..` whose dX chunk is `dx_chunk` (whole images). On the col2im
        // route, several images make one GEMM, their `dY` side by side (gathered into
        // `[O, images x pixels]`): `W^T` is then read once for them all, and the
        // GEMM's columns fill its tiles (ResNet-18's 512-channel layers have 49
        // pixels an image, one 48-wide tile and a nearly empty one); see
        // `DX_GEMM_COLUMNS`.
        let dx_images = |b0: usize,
                         dx_chunk: &mut [f32],
                         threads: Threads,
                         (padded, dcols, gathered): &mut (Vec<f32>, Lent, Lent)|
         -> Result<()> {
            let nb = dx_chunk.len() / in_image;
            let batched = nb > 1 && !direct && transposed.is_none() && !strided;
            let Some(wt) = wt.as_ref().filter(|_| batched) else {
                for (i, dx_b) in dx_chunk.chunks_mut(in_image).enumerate() {
                    dx_image(b0 + i, dx_b, threads, padded, dcols)?;
                }
                return Ok(());
            };
            let cols = nb * pix;
            gathered.resize(o * cols, 0.0);
            for (i, dy_b) in gd[b0 * out_image..(b0 + nb) * out_image]
                .chunks_exact(out_image)
                .enumerate()
            {
                for (oc, run) in dy_b.chunks_exact(pix).enumerate() {
                    gathered[oc * cols + i * pix..][..pix].copy_from_slice(run);
                }
            }
            let source = BSource::Matrix(MatRef::row_major(gathered, o, cols)?);
            dcols.resize(k * cols, 0.0);
            let mut c_mat = MatMut::row_major(dcols, k, cols)?;
            driver::gemm(set, wt, &source, k, cols, &mut c_mat, &[], threads, &ws)?;
            for (i, dx_b) in dx_chunk.chunks_mut(in_image).enumerate() {
                g.col2im(&dcols[i * pix..], cols, dx_b);
            }
            Ok(())
        };
        // Images per dX task: enough for `DX_GEMM_COLUMNS` columns on the col2im
        // route, in equal chunks per thread.
        let threads = rayon::current_num_threads();
        let per_chunk = if want_dx && wt.is_some() && !direct {
            let per_thread = n.div_ceil(threads.min(n).max(1));
            let chunks = per_thread.div_ceil(DX_GEMM_COLUMNS.div_ceil(pix));
            per_thread.div_ceil(chunks)
        } else {
            1
        };

        // Winograd's dX runs on the whole batch at once, after dW.
        let (mut dx_later, mut dx) = match winograd {
            true => (dx.take(), None),
            false => (None, dx),
        };
        // The dX tasks' column buffers, lent by the workspace at the sizes the col2im
        // route asks for (`dx_images`).
        let cols_lent = || {
            let (dcols, gathered) = if want_dx && wt.is_some() && !direct {
                (
                    k * per_chunk * pix,
                    if per_chunk > 1 {
                        o * per_chunk * pix
                    } else {
                        0
                    },
                )
            } else {
                (0, 0)
            };
            (Vec::new(), ws.lend(dcols), ws.lend(gathered))
        };
        let mut partials: Vec<Lent> = Vec::new();
        // Winograd's dW runs on the whole batch at once (its GEMMs' reduction runs over
        // every image's tiles), split across the threads inside, after dX.
        let winograd_dw = want_dw && dw_route == WeightGrad::Winograd;
        let grouped_dw = want_dw && !winograd_dw;
        if threads > 1 && n >= threads {
            // dW in one group of images per thread (each group's reduction runs over
            // all its images), dX image by image; both handed to rayon together, so a
            // thread that falls behind (the host is shared) is helped by the others
            // rather than waited for.
            let per = dw_group_images(n, threads);
            let groups: Vec<std::ops::Range<usize>> =
                (0..n).step_by(per).map(|s| s..(s + per).min(n)).collect();
            let dx_all = |dx: &mut Tensor| -> Result<()> {
                dx.data_mut()
                    .par_chunks_mut(in_image * per_chunk)
                    .enumerate()
                    .try_for_each_init(cols_lent, |scratch, (i, chunk)| {
                        dx_images(i * per_chunk, chunk, Threads::Single, scratch)
                    })
            };
            let (parts, dx_done) = rayon::join(
                || {
                    if grouped_dw {
                        groups
                            .into_par_iter()
                            .map(|r| dw_group(r, Threads::Single))
                            .collect::<Result<Vec<_>>>()
                    } else {
                        Ok(Vec::new())
                    }
                },
                || dx.as_mut().map_or(Ok(()), dx_all),
            );
            dx_done?;
            partials = parts?;
        } else {
            if grouped_dw {
                partials.push(dw_group(0..n, Threads::Auto)?);
            }
            if let Some(dx) = dx.as_mut() {
                let mut scratch = cols_lent();
                for (i, chunk) in dx.data_mut().chunks_mut(in_image * per_chunk).enumerate() {
                    dx_images(i * per_chunk, chunk, Threads::Auto, &mut scratch)?;
                }
            }
        }
        if let (Some(dxw), Some(ww)) = (dx_later.as_mut(), &winograd_weights) {
            let steps: &[Epilogue] = if accumulate {
                &[Epilogue::Accumulate]
            } else {
                &[]
            };
            self.winograd_nchw(
                gd,
                [n, o, oh, ow],
                ww,
                kh - 1 - p.padding,
                steps,
                None,
                dxw.data_mut(),
                [c, h, wd],
            )?;
            dx = dx_later.take();
        }
        if winograd_dw {
            partials.push(dw_group(0..n, Threads::Auto)?);
        }
        let dw = if want_dw {
            // Sum the groups' partial dW, already in OIHW order, into the first (which
            // becomes the result; the others go back to the workspace).
            let mut it = partials.into_iter();
            let mut total = it.next().map_or_else(|| vec![0.0; k * o], Lent::into_inner);
            for part in it {
                total.iter_mut().zip(part.iter()).for_each(|(t, v)| *t += v);
            }
            let dw = Tensor::from_vec(w.shape(), total)?;
            Some(dw)
        } else {
            None
        };
        if let Some(wt) = wt {
            ws.recycle(wt.into_buffer());
        }
        Ok(ConvGrads { dx, dw })
    }
}
