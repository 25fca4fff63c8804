//! The epilogue: what happens to each output element once its sum is complete, while
//! the tile is still in registers. One ordered list of steps ([`Epilogue`]) that the
//! GEMM and every convolution route accept: a folded batch norm's bias, a residual
//! block's shortcut and ReLU, or an accumulating gradient, cost no pass over memory.
//!
//! Each route checks the list against its output ([`Epilogue`]'s docs say what each
//! step needs), then lowers it to the microkernels' per-tile form (`TileStep`, raw
//! pointers already offset to the tile) with [`tile_steps`]; the few rows finished
//! outside a microkernel (the direct kernel's planar form copies its output out of a
//! wider buffer) go through [`finish_row`], the same steps in the same order.

use std::sync::Mutex;

use crate::blocked::BlockedTensor;
use crate::error::{Result, TensorError};
use crate::kernels::microkernel::TileStep;
use crate::kernels::ChannelStats;
use crate::tensor::Tensor;

/// One step of an epilogue, applied to every output element in the order given.
#[derive(Clone, Copy, Debug)]
pub enum Epilogue<'a> {
    /// Add the output's previous contents (`C = C + A B`, a gradient added into another
    /// consumer's). Must be the first step; the blocked layout's kernel has no such step.
    Accumulate,
    /// Add `bias[i]` to output row or channel `i` (a convolution's, or a folded batch
    /// norm's shift).
    Bias(&'a [f32]),
    /// Add a tensor of the output's shape and layout (a residual block's shortcut).
    Residual(Residual<'a>),
    /// `max(x, 0)`.
    Relu,
    /// Gather the output's per-channel batch statistics (mean and biased variance over
    /// N, H and W: what a training batch norm after the convolution normalises with) into
    /// the sink. The last step, after the others; NCHW convolutions only. Each image's
    /// planes are summed as soon as they are computed, while still in cache, instead of in
    /// a later pass over the whole output from memory, and combined exactly (each plane's
    /// sum of squared deviations about its own mean, shifted to the batch mean in `f64`).
    Statistics(&'a StatsSink),
}

/// Where an [`Epilogue::Statistics`] step leaves the statistics of the output it ran on.
#[derive(Debug, Default)]
pub struct StatsSink(Mutex<Option<ChannelStats>>);

impl StatsSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// The statistics the last convolution with this sink gathered (`None` before one
    /// ran), taken out.
    pub fn take(&self) -> Option<ChannelStats> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub(crate) fn set(&self, stats: ChannelStats) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
    }
}

/// The operand of [`Epilogue::Residual`], in the output's layout.
#[derive(Clone, Copy, Debug)]
pub enum Residual<'a> {
    /// An NCHW tensor of a convolution's output shape.
    Nchw(&'a Tensor),
    /// A blocked tensor of a blocked convolution's output shape.
    Blocked(&'a BlockedTensor),
    /// A GEMM's `m x n` output: element `(i, j)` is `data[i * ld + j]`.
    Matrix {
        /// The elements, row-major.
        data: &'a [f32],
        /// The row stride.
        ld: usize,
    },
}

impl<'a> Epilogue<'a> {
    /// Adds `r`, an NCHW tensor of the convolution's output shape.
    pub fn residual(r: &'a Tensor) -> Self {
        Epilogue::Residual(Residual::Nchw(r))
    }

    /// Adds `r`, a blocked tensor of the blocked convolution's output shape.
    pub fn residual_blocked(r: &'a BlockedTensor) -> Self {
        Epilogue::Residual(Residual::Blocked(r))
    }

    /// Adds the matrix whose element `(i, j)` is `data[i * ld + j]` to a GEMM's output.
    pub fn residual_matrix(data: &'a [f32], ld: usize) -> Self {
        Epilogue::Residual(Residual::Matrix { data, ld })
    }
}

/// The most steps a microkernel applies (each kind once, in a fixed array); an epilogue
/// may have one more, [`Epilogue::Statistics`], which the convolution applies per image.
pub const MAX_STEPS: usize = 4;

/// What a route's output is, for checking an epilogue against it.
pub(crate) enum Output<'s> {
    /// A GEMM's `m x n` matrix.
    Matrix { m: usize, n: usize },
    /// A convolution's NCHW output.
    Nchw(&'s [usize; 4]),
    /// A blocked convolution's output: logical NCHW shape and lanes.
    Blocked { shape: [usize; 4], lanes: usize },
}

/// Checks `steps` against a route's `out` (rows or channels first): their number, that
/// `Accumulate` comes first (and is allowed), the bias's length, the residual's kind
/// and extent.
pub(crate) fn check(op: &'static str, steps: &[Epilogue], out: Output) -> Result<()> {
    let bad = |reason: String| Err(TensorError::InvalidArgument { op, reason });
    let in_tile = steps
        .iter()
        .filter(|s| !matches!(s, Epilogue::Statistics(_)))
        .count();
    if in_tile > MAX_STEPS {
        return bad(format!(
            "at most {MAX_STEPS} epilogue steps besides Statistics, got {in_tile}"
        ));
    }
    let rows = match out {
        Output::Matrix { m, .. } => m,
        Output::Nchw(shape) => shape[1],
        Output::Blocked { shape, .. } => shape[1],
    };
    for (i, step) in steps.iter().enumerate() {
        match (*step, &out) {
            (Epilogue::Accumulate, Output::Blocked { .. })
                if steps.iter().any(|s| matches!(s, Epilogue::Residual(_))) =>
            {
                return bad(
                    "the blocked layout's kernel adds one tensor to its sums: the output's \
                     values (Accumulate) or a residual, not both"
                        .into(),
                )
            }
            (Epilogue::Accumulate, _) if i != 0 => {
                return bad("Accumulate must be the first epilogue step".into())
            }
            (Epilogue::Bias(b), _) if b.len() != rows => {
                return bad(format!(
                    "bias has {} elements for {rows} output channels",
                    b.len()
                ))
            }
            (Epilogue::Residual(r), out) => check_residual(op, r, out)?,
            (Epilogue::Statistics(_), Output::Nchw(_)) if i + 1 != steps.len() => {
                return bad("Statistics must be the last epilogue step".into())
            }
            (Epilogue::Statistics(_), Output::Nchw(_)) => {}
            (Epilogue::Statistics(_), _) => {
                return bad(
                    "batch statistics are gathered by the NCHW convolution only (not by a \
                     GEMM or the blocked layout)"
                        .into(),
                )
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_residual(op: &'static str, r: Residual, out: &Output) -> Result<()> {
    let mismatch = |expected: &[usize], got: &[usize]| {
        Err(TensorError::ShapeMismatch {
            op,
            arg: "residual",
            expected: expected.to_vec(),
            got: got.to_vec(),
        })
    };
    match (r, out) {
        (Residual::Matrix { data, ld }, Output::Matrix { m, n }) => {
            let (m, n) = (*m, *n);
            let covered = match (m, n) {
                (0, _) | (_, 0) => true,
                _ => (m - 1)
                    .checked_mul(ld)
                    .and_then(|e| e.checked_add(n))
                    .is_some_and(|e| e <= data.len() && (ld >= n || m <= 1)),
            };
            if covered {
                Ok(())
            } else {
                Err(TensorError::InvalidArgument {
                    op,
                    reason: format!(
                        "residual of {} elements with row stride {ld} does not cover {m}x{n}",
                        data.len()
                    ),
                })
            }
        }
        (Residual::Nchw(t), Output::Nchw(shape)) if t.shape() != &shape[..] => {
            mismatch(&shape[..], t.shape())
        }
        (Residual::Nchw(_), Output::Nchw(_)) => Ok(()),
        (Residual::Blocked(t), Output::Blocked { shape, lanes }) => {
            if t.lanes() != *lanes {
                return Err(TensorError::InvalidArgument {
                    op,
                    reason: format!(
                        "blocked residual made for {}-lane vectors, but these kernels use {lanes}",
                        t.lanes()
                    ),
                });
            }
            if t.shape() != *shape {
                return mismatch(shape, &t.shape());
            }
            Ok(())
        }
        (r, _) => Err(TensorError::InvalidArgument {
            op,
            reason: format!(
                "a {} residual does not fit this output (a GEMM takes Epilogue::residual_matrix, \
                 an NCHW convolution Epilogue::residual, a blocked one Epilogue::residual_blocked)",
                match r {
                    Residual::Nchw(_) => "NCHW",
                    Residual::Blocked(_) => "blocked",
                    Residual::Matrix { .. } => "matrix",
                }
            ),
        }),
    }
}

/// Whether the list starts by adding the output's previous contents.
pub(crate) fn accumulates(steps: &[Epilogue]) -> bool {
    matches!(steps.first(), Some(Epilogue::Accumulate))
}

/// The steps of a checked list for the tile whose first element is `(row, col)` of a
/// matrix output: pointers offset to it. `Accumulate` is the tile's `load_c`, not a
/// step. Only matrix residuals lower (a route turns its tensor residual into one, image
/// by image).
///
/// # Safety
///
/// `steps` passed [`check`] against an output that contains `(row, col)`: the bias has
/// an element for `row`, and the residual covers the element.
pub(crate) unsafe fn tile_steps(
    steps: &[Epilogue],
    row: usize,
    col: usize,
) -> [Option<TileStep>; MAX_STEPS] {
    let mut out = [None; MAX_STEPS];
    for (s, e) in out.iter_mut().zip(steps) {
        *s = match *e {
            Epilogue::Accumulate => None,
            // SAFETY: the caller's contract: row and (row, col) are inside.
            Epilogue::Bias(b) => Some(TileStep::RowBias(unsafe { b.as_ptr().add(row) })),
            Epilogue::Residual(Residual::Matrix { data, ld }) => Some(TileStep::Residual(
                unsafe { data.as_ptr().add(row * ld + col) },
                ld,
            )),
            Epilogue::Residual(_) => unreachable!("only matrix residuals reach a tile"),
            Epilogue::Relu => Some(TileStep::Relu),
            // Applied per image by the convolution, after the tiles.
            Epilogue::Statistics(_) => None,
        };
    }
    out
}

/// Finishes one output row outside a microkernel: `dst[j] = src[j]` (or `+=` with
/// `Accumulate`), then the other steps in order, for row `row`, columns `col..` of a
/// matrix output. The same steps as a tile's, on a row that was computed elsewhere.
/// `steps` passed [`check`] (matrix residuals only, as for [`tile_steps`]).
pub(crate) fn finish_row(steps: &[Epilogue], row: usize, col: usize, src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "epilogue row: lengths differ");
    if accumulates(steps) {
        dst.iter_mut().zip(src).for_each(|(d, v)| *d += v);
    } else {
        dst.copy_from_slice(src);
    }
    for step in steps {
        match *step {
            Epilogue::Accumulate => {}
            Epilogue::Bias(b) => {
                let b = b[row];
                dst.iter_mut().for_each(|d| *d += b);
            }
            Epilogue::Residual(Residual::Matrix { data, ld }) => {
                let r = &data[row * ld + col..][..dst.len()];
                dst.iter_mut().zip(r).for_each(|(d, r)| *d += r);
            }
            Epilogue::Residual(_) => unreachable!("only matrix residuals reach a row"),
            Epilogue::Relu => dst.iter_mut().for_each(|d| *d = crate::kernels::relu1(*d)),
            Epilogue::Statistics(_) => {}
        }
    }
}

/// The epilogue of an empty reduction (no input channels, or no input pixels) into a
/// blocked output: every element is the steps applied to 0, in order. `steps` passed
/// [`check`] against the blocked output `y`.
pub(crate) fn finish_blocked_empty(steps: &[Epilogue], y: &mut BlockedTensor) {
    let [_, o, oh, ow] = y.shape;
    let (l, ob) = (y.lanes, o.div_ceil(y.lanes).max(1));
    for (i, v) in y.data.iter_mut().enumerate() {
        // Element i is lane i % l of pixel (i / l) % (oh ow) of channel block
        // (i / (oh ow l)) % ob.
        let ch = ((i / (oh * ow * l)) % ob) * l + i % l;
        let mut s = 0.0f32;
        for step in steps {
            match *step {
                Epilogue::Accumulate => s += *v,
                // Padding channels past `o` get 0 bias, as the tiles give them.
                Epilogue::Bias(b) => s += b.get(ch).copied().unwrap_or(0.0),
                Epilogue::Residual(Residual::Blocked(r)) => s += r.data[i],
                Epilogue::Relu => s = crate::kernels::relu1(s),
                _ => unreachable!("checked against a blocked output"),
            }
        }
        *v = s;
    }
}
