//! Single-precision matrix multiplication, BLIS-style: `C = A B`, then an epilogue.
//!
//! # The pieces
//!
//! - [`MatRef`] / [`MatMut`]: a matrix in a slice with explicit row and column strides,
//!   so a transposed operand is just a view (`a.t()`), never a copy. Autograd needs
//!   `A^T B` and `A B^T`.
//! - `pack`: copies A into row panels of `MR` and B into column panels of `NR` (both
//!   zero-padded to whole tiles, k-major), so the microkernel reads both with unit
//!   stride. B can also be packed straight from an image (`pack::BSource::Im2col`): the
//!   convolution's column matrix is built one cache-sized block at a time and never
//!   exists whole.
//! - `driver`: the loop nest: blocks of `KC` along K and `NC` along N; each block of B
//!   is packed once (in parallel) and shared; the output tiles of that block are split
//!   across rayon's threads in both dimensions.
//! - the microkernels (`kernels/microkernel.rs`): an `MR x NR` tile in registers, one per
//!   ISA tier (`avx512_f32_8x48`, `avx2_f32_6x16`, `neon_f32_8x12`, `generic_f32_4x8`).
//! - [`Epilogue`]: steps applied to each tile while it is still in registers (per-row
//!   bias, residual add, ReLU, accumulate into C): the one mechanism that serves conv +
//!   BN + ReLU, residual blocks, linear layers and gradient accumulation.
//! - [`PackedA`]: A packed once and reused for every call (inference weights).

pub(crate) mod driver;
pub(crate) mod pack;

use crate::epilogue::{self, Epilogue};
use crate::error::{Result, TensorError};
use crate::kernels::Kernels;
use crate::workspace::{Scratch, Workspace};

pub use pack::PackedA;

/// A read-only matrix view: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

/// The index one past the last element a `rows x cols` view with these strides touches.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1)
        .checked_mul(rs)?
        .checked_add((cols - 1).checked_mul(cs)?)?
        .checked_add(1)
}

impl<'a> MatRef<'a> {
    /// A view with explicit strides; every element it names must lie inside `data`.
    pub fn new(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Result<Self> {
        match extent(rows, cols, row_stride, col_stride) {
            Some(e) if e <= data.len() => {
                Ok(MatRef { data, rows, cols, rs: row_stride, cs: col_stride })
            }
            _ => Err(TensorError::InvalidArgument {
                op: "MatRef::new",
                reason: format!(
                    "a {rows}x{cols} view with strides ({row_stride}, {col_stride}) reaches past the {} elements given",
                    data.len()
                ),
            }),
        }
    }

    /// A contiguous row-major `rows x cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The transpose, as a view (no copy).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Rows of the matrix (of the view, after any transpose).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns of the matrix (of the view, after any transpose).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Element `(i, j)` (panics if outside the view; internal loops only).
    #[inline(always)]
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

/// A mutable row-major matrix view with a row stride (`ld >= cols`).
#[derive(Debug)]
pub struct MatMut<'a> {
    pub(crate) data: &'a mut [f32],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) ld: usize,
}

impl<'a> MatMut<'a> {
    /// A `rows x cols` view whose rows start `ld` elements apart.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, ld: usize) -> Result<Self> {
        match extent(rows, cols, ld, 1) {
            Some(e) if e <= data.len() && (ld >= cols || rows <= 1) => {
                Ok(MatMut { data, rows, cols, ld })
            }
            _ => Err(TensorError::InvalidArgument {
                op: "MatMut::new",
                reason: format!(
                    "a {rows}x{cols} output with row stride {ld} does not fit the {} elements given",
                    data.len()
                ),
            }),
        }
    }

    /// A contiguous row-major `rows x cols` matrix.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols)
    }
}

/// Checks an epilogue against an `m x n` output.
pub(crate) fn check_epilogue(
    op: &'static str,
    steps: &[Epilogue],
    m: usize,
    n: usize,
) -> Result<()> {
    epilogue::check(op, steps, epilogue::Output::Matrix { m, n })
}

impl Kernels {
    /// `C = A B`, then the epilogue steps, with this tier's microkernel. `A` is `m x k`,
    /// `B` is `k x n`, `C` is `m x n`; any of A and B may be transposed views.
    pub fn gemm(&self, a: MatRef, b: MatRef, c: &mut MatMut, epilogue: &[Epilogue]) -> Result<()> {
        self.gemm_on(
            a,
            b,
            c,
            epilogue,
            driver::Threads::Auto,
            &Workspace::current(),
        )
    }

    /// [`Kernels::gemm`] on the given threads (`Single` inside a caller's own parallel
    /// loop), with its scratch from `ws` (the caller's, from whichever thread runs it).
    pub(crate) fn gemm_on(
        &self,
        a: MatRef,
        b: MatRef,
        c: &mut MatMut,
        epilogue: &[Epilogue],
        threads: driver::Threads,
        ws: &Workspace,
    ) -> Result<()> {
        self.check_gemm_shapes("gemm", a.rows, a.cols, b, c)?;
        // A is packed into this thread's buffer, reused across calls.
        ws.scratch(Scratch::PackA, |buf| {
            let packed = PackedA::pack_into(self.isa(), self.set().gemm_mr, a, std::mem::take(buf));
            let result = driver::gemm(
                self.set(),
                &packed,
                &pack::BSource::Matrix(b),
                c.rows,
                c.cols,
                c,
                epilogue,
                threads,
                ws,
            );
            *buf = packed.into_buffer();
            result
        })
    }

    /// `C = A B` with A packed beforehand by [`Kernels::pack_a`] (by the same tier).
    pub fn gemm_prepacked(
        &self,
        a: &PackedA,
        b: MatRef,
        c: &mut MatMut,
        epilogue: &[Epilogue],
    ) -> Result<()> {
        self.check_packed(a)?;
        self.check_gemm_shapes("gemm_prepacked", a.rows(), a.cols(), b, c)?;
        driver::gemm(
            self.set(),
            a,
            &pack::BSource::Matrix(b),
            c.rows,
            c.cols,
            c,
            epilogue,
            driver::Threads::Auto,
            &Workspace::current(),
        )
    }

    /// Packs A into this tier's row panels, for [`Kernels::gemm_prepacked`].
    pub fn pack_a(&self, a: MatRef) -> PackedA {
        PackedA::pack(self.isa(), self.set().gemm_mr, a)
    }

    pub(crate) fn check_packed(&self, a: &PackedA) -> Result<()> {
        if a.isa() != self.isa() {
            return Err(TensorError::InvalidArgument {
                op: "gemm_prepacked",
                reason: format!(
                    "A was packed for tier {}, but these kernels are {}",
                    a.isa(),
                    self.isa()
                ),
            });
        }
        Ok(())
    }

    fn check_gemm_shapes(
        &self,
        op: &'static str,
        m: usize,
        k: usize,
        b: MatRef,
        c: &MatMut,
    ) -> Result<()> {
        gemm_shapes(op, [m, k], [b.rows, b.cols], [c.rows, c.cols])
    }
}

/// The shapes of `C = A B`: `B` must have `A`'s columns as rows, `C` `A`'s rows and
/// `B`'s columns. The error names the matrix that does not fit.
fn gemm_shapes(op: &'static str, a: [usize; 2], b: [usize; 2], c: [usize; 2]) -> Result<()> {
    let mismatch = |arg, expected: [usize; 2], got: [usize; 2]| {
        Err(TensorError::ShapeMismatch {
            op,
            arg,
            expected: expected.to_vec(),
            got: got.to_vec(),
        })
    };
    if b[0] != a[1] {
        return mismatch("B (A is [m, k]: B must be [k, n])", [a[1], b[1]], b);
    }
    if c != [a[0], b[1]] {
        return mismatch("C (must be [m, n])", [a[0], b[1]], c);
    }
    Ok(())
}

/// `C = A B` by matrixmultiply, the portable baseline and second oracle.
pub fn matrixmultiply_gemm(a: MatRef, b: MatRef, c: &mut MatMut) -> Result<()> {
    gemm_shapes(
        "matrixmultiply_gemm",
        [a.rows, a.cols],
        [b.rows, b.cols],
        [c.rows, c.cols],
    )?;
    if c.rows == 0 || c.cols == 0 {
        return Ok(());
    }
    // SAFETY: the views were validated at construction (every index they name is inside
    // their slices), and the shapes agree.
    unsafe {
        matrixmultiply::sgemm(
            a.rows,
            a.cols,
            b.cols,
            1.0,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            0.0,
            c.data.as_mut_ptr(),
            c.ld as isize,
            1,
        );
    }
    Ok(())
}
