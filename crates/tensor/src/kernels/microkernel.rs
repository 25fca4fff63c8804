//! The GEMM microkernel: one `MR x (NV * LANES)` tile of `C += A B`, in registers.
//!
//! Written once over [`Simd`] and instantiated by every tier with its own tile: the
//! kernel named `avx512_f32_8x48` is this body with `MR = 8`, `NV = 3` vectors of 16
//! lanes. For AVX-512 the register file during the `k` loop is
//!
//! ```text
//!             B row k (packed, 48 floats = 3 zmm loads)
//!             [ b0 ....... | b1 ....... | b2 ....... ]
//!  A col k   +------------+------------+------------+
//!  a0 (bcast)| acc[0][0]  | acc[0][1]  | acc[0][2]  |   acc[r][v] += a_r * b_v
//!  a1        | acc[1][0]  | acc[1][1]  | acc[1][2]  |   (a_r broadcast into one
//!  ...       |    ...     |    ...     |    ...     |    register, then three FMAs
//!  a7        | acc[7][0]  | acc[7][1]  | acc[7][2]  |    read it)
//!            +------------+------------+------------+
//!  24 accumulators + 3 B vectors + 1 broadcast = 28 of the 32 zmm registers
//! ```
//!
//! Per step of `k`: `NV` vector loads of B, `MR` broadcasts of A, `MR * NV` FMAs. With 24
//! FMAs per step and two FMA units, the loads (3 + 8) are never the bottleneck.
//!
//! The packed panels are zero-padded to the full tile, so the loop never branches on
//! the edges; only the final stores are clipped to the `m x n` valid part (masked stores
//! for a ragged last vector). After the `k` loop, while the tile is still in registers,
//! the epilogue steps run in order (see [`TileStep`]).

use super::simd::Simd;

/// One epilogue step, with its pointers already offset to this tile.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TileStep {
    /// `acc[r][..] += bias[r]`; the pointer is to this tile's first row's bias.
    RowBias(*const f32),
    /// `acc[r][j] += residual[r * ld + j]`.
    Residual(*const f32, usize),
    /// `acc = max(acc, 0)`.
    Relu,
}

/// Where a tile goes and what happens to it on the way.
pub(crate) struct TileOut {
    /// The tile's top-left element of C, and C's row stride.
    pub c: *mut f32,
    pub ldc: usize,
    /// Valid rows (`<= MR`) and columns (`<= NV * LANES`).
    pub m: usize,
    pub n: usize,
    /// Add C's current contents (a later block of K, or an accumulating GEMM).
    pub load_c: bool,
    /// Epilogue steps to run in order (only on the last block of K).
    pub steps: [Option<TileStep>; 4],
}

/// `C_tile (+)= A_panel * B_panel`, then the epilogue, then the clipped store.
///
/// `a`: `kc x MR` floats, k-major (`a[k * MR + r]`); `b`: `kc` rows of `NV * LANES`
/// floats, row `k` at `b + k * ldb` (a packed panel has `ldb = NV * LANES`; a row-major
/// B read in place has its own row stride).
#[inline(always)]
pub(crate) unsafe fn gemm_tile<S: Simd, const MR: usize, const NV: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    out: &TileOut,
) {
    let l = S::LANES;
    // Start fetching the C tile now: it is read (when accumulating) and written after
    // the k loop, and without this its cache misses stall the end of every tile.
    for r in 0..out.m.min(MR) {
        for v in 0..NV {
            S::prefetch(out.c.wrapping_add(r * out.ldc + v * l));
        }
    }
    let mut acc = [[S::splat(0.0); NV]; MR];
    let mut a = a;
    let mut b = b;
    for _ in 0..kc {
        // A's panel 64 steps of k ahead (2 KiB at MR = 8): at batch 1 a layer's weights
        // stream from memory once (ResNet-50's are 100 MB), and the hardware prefetcher
        // alone left the 7 x 7 stage's layers up to 1.4x slower than with their weights
        // in cache. In-process A/B, weights rotated out of cache, 2 threads: 3x3 512 at
        // 7 x 7 2.17 -> 1.69 ms, 1x1 512 -> 2048 0.76 -> 0.67; whole ResNet-50 at batch
        // 1 (best of 40 forwards) 54.2 -> 50.8, 70.4 -> 68.0, 54.7 -> 53.4 ms; with the
        // weights in cache no change. Distances 16, 32 and 256 were no better, 128 tied.
        // (`wrapping_add`: the address may lie past the panel; a prefetch never faults.)
        S::prefetch(a.wrapping_add(64 * MR));
        let mut bv = [S::splat(0.0); NV];
        for (v, bv) in bv.iter_mut().enumerate() {
            *bv = S::load(b.add(v * l));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let ar = S::splat(*a.add(r));
            for (acc, bv) in row.iter_mut().zip(bv) {
                *acc = S::mul_add(ar, bv, *acc);
            }
        }
        a = a.add(MR);
        b = b.add(ldb);
    }
    finish_tile::<S, MR, NV>(&mut acc, out);
}

/// The end of every tile: add C (when accumulating), run the epilogue steps, and store
/// the valid `m x n` part (partial stores for a ragged last vector). Shared by the GEMM
/// and the direct-convolution microkernels.
#[inline(always)]
pub(crate) unsafe fn finish_tile<S: Simd, const MR: usize, const NV: usize>(
    acc: &mut [[S::V; NV]; MR],
    out: &TileOut,
) {
    let l = S::LANES;
    // Lanes of vector `v` that are inside the valid columns.
    let valid = |v: usize| out.n.saturating_sub(v * l).min(l);
    let load = |p: *const f32, v: usize| {
        let n = valid(v);
        if n == l {
            S::load(p)
        } else {
            S::load_partial(p, n, 0.0)
        }
    };
    let rows = out.m.min(MR);

    if out.load_c {
        for (r, row) in acc.iter_mut().enumerate().take(rows) {
            for (v, acc) in row.iter_mut().enumerate() {
                if valid(v) > 0 {
                    *acc = S::add(*acc, load(out.c.add(r * out.ldc + v * l), v));
                }
            }
        }
    }
    for step in out.steps.iter().flatten() {
        match *step {
            TileStep::RowBias(bias) => {
                for (r, row) in acc.iter_mut().enumerate().take(rows) {
                    let br = S::splat(*bias.add(r));
                    for acc in row.iter_mut() {
                        *acc = S::add(*acc, br);
                    }
                }
            }
            TileStep::Residual(res, ld) => {
                for (r, row) in acc.iter_mut().enumerate().take(rows) {
                    for (v, acc) in row.iter_mut().enumerate() {
                        if valid(v) > 0 {
                            *acc = S::add(*acc, load(res.add(r * ld + v * l), v));
                        }
                    }
                }
            }
            TileStep::Relu => {
                let zero = S::splat(0.0);
                for row in acc.iter_mut() {
                    for acc in row.iter_mut() {
                        *acc = S::max(zero, *acc);
                    }
                }
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(rows) {
        for (v, acc) in row.iter().enumerate() {
            let p = out.c.add(r * out.ldc + v * l);
            let n = valid(v);
            if n == l {
                S::store(p, *acc);
            } else if n > 0 {
                S::store_partial(p, *acc, n);
            }
        }
    }
}

/// The narrow tile: `MR x N` for a ragged right edge of `N` (a few) valid columns,
/// vectorised along the rows instead of the columns.
///
/// The one-vector `gemm_tile` on an edge of one valid column computes `LANES` columns
/// to keep one, and its `MR` broadcasts per step of `k` make it load-bound besides: on
/// AVX-512, 9 loads for 8 FMAs, one lane in 16 of them useful. That edge is ResNet's
/// 7 x 7 stage: 49 columns are three full vectors and one column. Here a step of `k`
/// loads the A panel's `MR` floats once (contiguous: one `ymm` for `MR = 8`) and does one
/// `MR`-wide FMA per column, with `U` partial sums in flight to cover the FMA latency.
/// Written over plain arrays: the compiler vectorises it for the tier it is
/// instantiated in (a tier without FMA instructions would call `fmaf` and must not use
/// it).
///
/// # Safety
///
/// As [`gemm_tile`], with `out.n <= N`: the A panel holds `kc x MR` floats and B has
/// `kc` rows of at least `N` readable floats at stride `ldb`.
#[inline(always)]
pub(crate) unsafe fn gemm_narrow_tile<const MR: usize, const N: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    out: &TileOut,
) {
    const U: usize = 4;
    const PF: usize = 256;
    let mut acc = [[[0.0f32; MR]; N]; U];
    let step = |acc: &mut [[f32; MR]; N], k: usize| {
        let ar = a.add(k * MR).cast::<[f32; MR]>().read_unaligned();
        for (j, acc) in acc.iter_mut().enumerate() {
            let bj = *b.add(k * ldb + j);
            for (acc, ar) in acc.iter_mut().zip(ar) {
                *acc = ar.mul_add(bj, *acc);
            }
        }
    };
    let whole = kc - kc % U;
    for k0 in (0..whole).step_by(U) {
        // A's panel `PF` steps of k ahead into L2, a line per 16 floats: a linear layer
        // at batch 1 (one column) streams its weights from memory at the speed of these
        // prefetches. ResNet-50's classifier (8.2 MB, `bench model --profile`, 1 thread,
        // AMD Zen 4 host, 2026-12-06): 0.88-0.90 ms without, 0.49-0.58 at 256 steps
        // (8 KiB at MR = 8), 0.53-0.54 at 128, 0.56-0.62 at 512.
        for line in (0..U * MR).step_by(16) {
            crate::kernels::prefetch_l2(a.wrapping_add((k0 + PF) * MR + line));
        }
        for (u, acc) in acc.iter_mut().enumerate() {
            step(acc, k0 + u);
        }
    }
    for k in whole..kc {
        step(&mut acc[0], k);
    }
    let (rows, cols) = (out.m.min(MR), out.n.min(N));
    let [a0, a1, a2, a3] = &acc;
    for (r, j) in (0..rows).flat_map(|r| (0..cols).map(move |j| (r, j))) {
        let mut v = a0[j][r] + a1[j][r] + (a2[j][r] + a3[j][r]);
        let c = out.c.add(r * out.ldc + j);
        if out.load_c {
            v += *c;
        }
        for step in out.steps.iter().flatten() {
            match *step {
                TileStep::RowBias(bias) => v += *bias.add(r),
                TileStep::Residual(res, ld) => v += *res.add(r * ld + j),
                TileStep::Relu => v = crate::kernels::relu1(v),
            }
        }
        *c = v;
    }
}
