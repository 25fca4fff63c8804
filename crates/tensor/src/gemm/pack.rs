//! Packing: copying operands into the exact order the microkernel reads them.
//!
//! ```text
//! A (m x k) -> row panels of MR rows, each k-major:     panel p = [a(pMR.., 0) .. a(pMR+MR-1, 0)],
//!                                                                [a(pMR.., 1) ..               ], ...
//! B block (kc x nc) -> column panels of NR, each k-major: panel q = [b(0, qNR..qNR+NR)], [b(1, ..)], ...
//! ```
//!
//! Rows of A past `m` and columns of B past `n` are packed as zeros, so the microkernel
//! always runs whole tiles; only its stores are clipped. The last B panel of a block is
//! narrowed to the fewest whole vectors that cover the remaining columns (a 49-column
//! block on AVX-512 is one 48-wide panel and one 16-wide panel, not two 48-wide ones).
//!
//! B comes either from a strided matrix or straight from an image through the
//! convolution's im2col mapping ([`BSource::Im2col`]), one block at a time.

use rayon::prelude::*;

use super::MatRef;
use crate::isa::Isa;
use crate::workspace::Workspace;

/// A packed into row panels of `MR` for one tier's microkernel; reusable across calls.
#[derive(Clone, Debug)]
pub struct PackedA {
    isa: Isa,
    mr: usize,
    rows: usize,
    cols: usize,
    /// `ceil(rows / mr)` panels of `cols * mr` floats.
    data: Vec<f32>,
}

impl PackedA {
    pub(crate) fn pack(isa: Isa, mr: usize, a: MatRef) -> Self {
        Self::pack_into(isa, mr, a, Vec::new())
    }

    /// Packs into `buf`'s allocation (whatever it holds is overwritten): a GEMM that
    /// packs A on every call reuses one buffer instead of mapping fresh pages each time
    /// (a fresh 9 MiB buffer for ResNet-50's 512 x 4608 layer cost more in page faults
    /// than the product itself).
    pub(crate) fn pack_into(isa: Isa, mr: usize, a: MatRef, mut buf: Vec<f32>) -> Self {
        let (m, k) = (a.rows, a.cols);
        let panels = m.div_ceil(mr);
        buf.resize(panels * k * mr, 0.0);
        let mut data = buf;
        let pack_panel = |p: usize, dst: &mut [f32]| {
            let rows = mr.min(m - p * mr);
            let r0 = p * mr;
            if rows < mr {
                // The padding rows of the last panel must be zeros (the buffer may be
                // reused): the microkernel multiplies them like any other row.
                for d in dst.chunks_exact_mut(mr) {
                    d[rows..].fill(0.0);
                }
            }
            if a.cs == 1 && rows == mr && matches!(mr, 4 | 6 | 8) {
                // Row-major A, whole panel: a transpose of an MR x k strip, written so
                // the compiler vectorises it (an interleaved store group of MR).
                let row = |r: usize| &a.data[(r0 + r) * a.rs..(r0 + r) * a.rs + k];
                match mr {
                    4 => transpose_strip::<4>(std::array::from_fn(row), dst),
                    6 => transpose_strip::<6>(std::array::from_fn(row), dst),
                    _ => transpose_strip::<8>(std::array::from_fn(row), dst),
                }
            } else if a.cs == 1 {
                // Row-major A, a partial panel (or an unusual MR): element by element,
                // 64 columns at a time so the destination stays in L1.
                const CHUNK: usize = 64;
                for k0 in (0..k).step_by(CHUNK) {
                    let len = CHUNK.min(k - k0);
                    let block = &mut dst[k0 * mr..(k0 + len) * mr];
                    for r in 0..rows {
                        let start = (r0 + r) * a.rs + k0;
                        let src = &a.data[start..start + len];
                        for (d, &v) in block.chunks_exact_mut(mr).zip(src) {
                            d[r] = v;
                        }
                    }
                }
            } else if a.rs == 1 {
                // Column-major A (a transposed view): each k is already MR contiguous
                // floats. Whole panels copy a fixed length, inlined (a `memcpy` call per
                // 8 floats was a tenth of Winograd's `dW`, whose `U^T` is such a view).
                let runs = dst.chunks_exact_mut(mr).enumerate();
                match (rows == mr, mr) {
                    (true, 4) => {
                        runs.for_each(|(kk, d)| copy_fixed::<4>(a.data, kk * a.cs + r0, d))
                    }
                    (true, 6) => {
                        runs.for_each(|(kk, d)| copy_fixed::<6>(a.data, kk * a.cs + r0, d))
                    }
                    (true, 8) => {
                        runs.for_each(|(kk, d)| copy_fixed::<8>(a.data, kk * a.cs + r0, d))
                    }
                    _ => runs.for_each(|(kk, d)| {
                        let start = kk * a.cs + r0;
                        d[..rows].copy_from_slice(&a.data[start..start + rows]);
                    }),
                }
            } else {
                for (kk, d) in dst.chunks_exact_mut(mr).enumerate() {
                    for (r, o) in d[..rows].iter_mut().enumerate() {
                        *o = a.at(r0 + r, kk);
                    }
                }
            }
        };
        if k > 0 {
            if m * k >= 1 << 16 {
                data.par_chunks_mut(k * mr)
                    .enumerate()
                    .for_each(|(p, d)| pack_panel(p, d));
            } else {
                data.chunks_mut(k * mr)
                    .enumerate()
                    .for_each(|(p, d)| pack_panel(p, d));
            }
        }
        PackedA {
            isa,
            mr,
            rows: m,
            cols: k,
            data,
        }
    }

    /// [`PackedA::pack_into`] a buffer lent by `ws` for one call; give it back with
    /// `ws.recycle(packed.into_buffer())`.
    pub(crate) fn pack_lent(isa: Isa, mr: usize, a: MatRef, ws: &Workspace) -> Self {
        let len = a.rows.div_ceil(mr) * mr * a.cols;
        Self::pack_into(isa, mr, a, ws.lend(len).into_inner())
    }

    /// Gives back the buffer, for [`PackedA::pack_into`] to reuse.
    pub(crate) fn into_buffer(self) -> Vec<f32> {
        self.data
    }

    /// The tier whose microkernel this packing is for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Rows of A (`m`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns of A (`k`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The `kc x MR` slice of panel `p` that covers `k` in `pc..pc + kc`.
    #[inline]
    pub(crate) fn panel(&self, p: usize, pc: usize, kc: usize) -> &[f32] {
        let start = p * self.cols * self.mr + pc * self.mr;
        &self.data[start..start + kc * self.mr]
    }
}

/// `dst[k * MR + r] = rows[r][k]`: an `MR x k` strip transposed into a k-major panel.
/// The fixed `MR` lets the compiler unroll the inner loop into one contiguous `MR`-float
/// store per `k`. Measured on ResNet-50's (512, 49, 4608) GEMM with A packed per call, one
/// thread: 36-47 GFLOP/s with element-by-element stores at stride `MR`, 54 with this
/// (prepacked: 57-70 in the same runs).
fn transpose_strip<const MR: usize>(rows: [&[f32]; MR], dst: &mut [f32]) {
    let k = rows.iter().map(|r| r.len()).min().unwrap_or(0);
    for (t, d) in dst.chunks_exact_mut(MR).take(k).enumerate() {
        for r in 0..MR {
            d[r] = rows[r][t];
        }
    }
}

/// Floats [`Im2col::pack_panel`] copies at a time; a run may be over-copied up to the
/// next multiple of this, so the planes need that many floats of margin after them.
pub(crate) const IM2COL_CHUNK: usize = 8;

/// The geometry of a convolution seen as a GEMM's B matrix, read from the image's
/// *phase planes*: `B[(ci, ky, kx), (oy, ox)] = xpad[ci, oy s + ky, ox s + kx]`, where
/// `xpad` is the zero-padded image, and padded pixel `(y, x)` is stored in plane
/// `(ci, y % s, x % s)` at `(y / s, x / s)` ((`crate::layout::split_phases`)).
///
/// In those planes, row `(ci, ky, kx)` of B over one output row is a *contiguous* run:
/// plane `(ci, ky % s, kx % s)` from `(oy + ky / s, kx / s)` on, `OW` floats. The
/// padding is real zeros in the planes and the stride is folded into the split, so
/// packing a panel is a handful of plain copies per row, with no bounds logic.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Im2col<'a> {
    /// One image's planes: `c * s * s` planes of `qh x qw`, then at least
    /// [`IM2COL_CHUNK`] floats of margin.
    pub planes: &'a [f32],
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    /// Stride (the same along both axes).
    pub s: usize,
    /// Each plane's rows and row pitch.
    pub qh: usize,
    pub qw: usize,
    /// Output width.
    pub ow: usize,
}

impl Im2col<'_> {
    pub fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Packs rows `k0..k0 + kc` and columns `j0..j0 + valid` of B into a `kc x width`
    /// k-major panel, zero-padded to `width` columns.
    ///
    /// The panel's columns are split once into runs that lie within one output row
    /// (offset in the panel row, `oy qw + ox` of the first column, length); then each
    /// of the `kc` rows is those runs, read from the tap's plane at the tap's offset,
    /// with `(ci, ky, kx)` stepped along without divisions.
    pub(crate) fn pack_panel(
        &self,
        k0: usize,
        kc: usize,
        j0: usize,
        valid: usize,
        width: usize,
        dst: &mut [f32],
    ) {
        let (s, qw) = (self.s, self.qw);
        let plane = self.qh * qw;
        let mut runs = Vec::with_capacity(valid / self.ow.max(1) + 2);
        let (mut oy, mut ox) = (j0 / self.ow, j0 % self.ow);
        let mut off = 0;
        while off < valid {
            let len = (self.ow - ox).min(valid - off);
            runs.push((off, oy * qw + ox, len));
            off += len;
            ox = 0;
            oy += 1;
        }
        let (mut ci, mut ky, mut kx) = (
            k0 / (self.kh * self.kw),
            (k0 / self.kw) % self.kh,
            k0 % self.kw,
        );
        for row in dst.chunks_exact_mut(width).take(kc) {
            let tap = ((ci * s + ky % s) * s + kx % s) * plane + (ky / s) * qw + kx / s;
            // In increasing `off`: a run over-copied past its end is overwritten by the
            // next run, or lands in the padding columns zeroed below.
            for &(off, rel, len) in &runs {
                copy_run(&mut row[off..], &self.planes[tap + rel..], len);
            }
            row[valid..].fill(0.0);
            kx += 1;
            if kx == self.kw {
                kx = 0;
                ky += 1;
                if ky == self.kh {
                    ky = 0;
                    ci += 1;
                }
            }
        }
    }
}

/// `dst[..len] = src[..len]`, [`IM2COL_CHUNK`] floats at a time, possibly writing (and
/// reading) up to the next multiple of the chunk where both slices have room. Runs are
/// short (a ResNet output row is 7 to 112 floats), too short for a `memcpy` call to pay
/// off; fixed-size chunks compile to a few vector moves.
#[inline]
fn copy_run(dst: &mut [f32], src: &[f32], len: usize) {
    let mut t = 0;
    while t < len && t + IM2COL_CHUNK <= dst.len() && t + IM2COL_CHUNK <= src.len() {
        dst[t..t + IM2COL_CHUNK].copy_from_slice(&src[t..t + IM2COL_CHUNK]);
        t += IM2COL_CHUNK;
    }
    while t < len {
        dst[t] = src[t];
        t += 1;
    }
}

/// `dst[..N] = src[start..start + N]`, a length the compiler knows.
#[inline(always)]
fn copy_fixed<const N: usize>(src: &[f32], start: usize, dst: &mut [f32]) {
    let run: &[f32; N] = src[start..start + N]
        .try_into()
        .expect("a slice of N floats");
    dst[..N].copy_from_slice(run);
}

/// How many panels ahead of the one being packed a row-major B's rows are prefetched:
/// the hardware prefetchers do not follow the `kc` short runs a panel reads (one per
/// row, `ldb` apart), so a panel of an image that is not in cache waited on memory row
/// by row. Two panels ahead, each panel's rows arrive while the tiles of the panel
/// before it are computed (`gemm/driver.rs` packs a panel just before its tiles where
/// one task covers every row of A). Measured on ResNet-50's 256 -> 64 channel 1x1
/// layer at 56 x 56, batch 8, 2 threads (2026-12-06, Zen 4, `docs/benchmarks.md`):
/// 6.0-6.1 ms without, 5.2-5.5 one panel ahead, 4.4-5.0 two, three and four no better.
const PREFETCH_PANELS: usize = 2;

/// Asks for the cache line holding `p` (a hint: it never faults, whatever the address).
#[inline(always)]
fn prefetch(p: *const f32) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: a prefetch reads nothing and cannot fault; SSE is part of x86_64.
    unsafe {
        core::arch::x86_64::_mm_prefetch(p as *const i8, core::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = p;
}

/// Where B's elements come from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum BSource<'a> {
    Matrix(MatRef<'a>),
    Im2col(Im2col<'a>),
}

impl BSource<'_> {
    pub fn rows(&self) -> usize {
        match self {
            BSource::Matrix(m) => m.rows,
            BSource::Im2col(g) => g.rows(),
        }
    }

    /// Packs rows `k0..k0 + kc`, columns `j0..j0 + valid` into a `kc x width` panel.
    pub(crate) fn pack_panel(
        &self,
        k0: usize,
        kc: usize,
        j0: usize,
        valid: usize,
        width: usize,
        dst: &mut [f32],
    ) {
        match self {
            BSource::Matrix(m) if m.rs == 1 && m.cs != 1 && kc > 0 => {
                // A transposed view (B^T row-major): each column of the panel is a
                // contiguous run of the source; read runs, write with stride `width`.
                let dst = &mut dst[..kc * width];
                if valid < width {
                    dst.fill(0.0);
                }
                for t in 0..valid {
                    let col = &m.data[(j0 + t) * m.cs + k0..][..kc];
                    for (d, v) in dst[t..].iter_mut().step_by(width).zip(col) {
                        *d = *v;
                    }
                }
            }
            BSource::Matrix(m) => {
                for (kk, row) in dst.chunks_exact_mut(width).take(kc).enumerate() {
                    let k = k0 + kk;
                    if m.cs == 1 {
                        // A short row piece (at most NR floats): chunked copies, not a
                        // `memcpy` call each; any over-copy lands in `row[valid..]`,
                        // zeroed below.
                        let start = k * m.rs + j0;
                        copy_run(row, &m.data[start..], valid);
                        // A later panel's piece of this row (past the row's end, a
                        // harmless hint).
                        let ahead = m
                            .data
                            .as_ptr()
                            .wrapping_add(start + PREFETCH_PANELS * width);
                        for line in (0..width).step_by(16) {
                            prefetch(ahead.wrapping_add(line));
                        }
                    } else {
                        for (t, o) in row[..valid].iter_mut().enumerate() {
                            *o = m.at(k, j0 + t);
                        }
                    }
                    row[valid..].fill(0.0);
                }
            }
            BSource::Im2col(g) => g.pack_panel(k0, kc, j0, valid, width, dst),
        }
    }
}

/// Floats of slack a buffer needs for [`aligned_start`].
pub(crate) const ALIGN_SLACK: usize = 16;

/// Where in `buf` a 64-byte (cache-line) aligned window starts: `buf[at..]` begins on
/// a cache line, provided `buf` has [`ALIGN_SLACK`] floats more than the window needs.
///
/// A 64-byte vector load from an address that is not 64-byte aligned touches two cache
/// lines. Large `Vec`s come from `mmap` 16 bytes past a page boundary, so without this
/// *every* full-width load from a packed B panel was split. Measured (in-process A/B,
/// ResNet-50's conv shapes at batch 1, AVX-512, 8 alternating rounds): the aligned B
/// buffer was faster on 13 of 15 shapes, by 3-25% on one thread and 3-14% on two.
pub(crate) fn aligned_start(buf: &[f32]) -> usize {
    buf.as_ptr().align_offset(64).min(ALIGN_SLACK - 1)
}

/// One column panel of a B block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BPanel {
    /// First column within the block, and width in columns (whole vectors).
    pub j: usize,
    pub width: usize,
    /// Start in the packed buffer.
    pub at: usize,
}

/// The column panels of one B block.
pub(crate) struct BPanels {
    pub panels: Vec<BPanel>,
    /// Floats of packed buffer the block needs.
    pub len: usize,
}

/// Splits `nc` columns into panels of `nr`, the last narrowed to whole vectors of
/// `lanes`.
///
/// Every panel is packed, even when B is a row-major matrix the microkernel could read
/// in place with B's row stride: measured on the ResNet-50 shapes and squares (1
/// thread, AVX-512, best of 3 interleaved runs), reading in place was slower on 10 of
/// 11 shapes, by up to 46% (square 1024: 67.5 vs 124.8 GFLOP/s), because rows far apart
/// defeat the prefetchers where a packed panel is one sequential stream.
pub(crate) fn b_panels(nc: usize, nr: usize, lanes: usize, kc: usize) -> BPanels {
    let mut panels = Vec::with_capacity(nc.div_ceil(nr));
    let (mut j, mut len) = (0, 0);
    while j < nc {
        let width = nr.min((nc - j).div_ceil(lanes) * lanes);
        panels.push(BPanel { j, width, at: len });
        len += width * kc;
        j += width;
    }
    BPanels { panels, len }
}

/// Packs `B[pc..pc + kc, jc..jc + nc]` into `buf` laid out as `layout` says.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_b(
    b: &BSource,
    pc: usize,
    kc: usize,
    jc: usize,
    nc: usize,
    layout: &BPanels,
    buf: &mut [f32],
    parallel: bool,
) {
    let pack_panel = |&BPanel { j, width, .. }: &BPanel, dst: &mut [f32]| {
        b.pack_panel(pc, kc, jc + j, width.min(nc - j), width, dst);
    };
    // Hand each panel its own disjoint piece of the buffer (in layout order).
    let packed: Vec<&BPanel> = layout.panels.iter().collect();
    let mut pieces: Vec<&mut [f32]> = Vec::with_capacity(packed.len());
    let mut rest = &mut buf[..layout.len];
    for p in &packed {
        let (head, tail) = rest.split_at_mut(p.width * kc);
        pieces.push(head);
        rest = tail;
    }
    if parallel {
        packed
            .into_par_iter()
            .zip(pieces)
            .for_each(|(p, d)| pack_panel(p, d));
    } else {
        packed
            .into_iter()
            .zip(pieces)
            .for_each(|(p, d)| pack_panel(p, d));
    }
}
