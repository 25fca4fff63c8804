//! The GEMM loop nest and its threading.
//!
//! ```text
//! for jc in 0..n step NC                      block of columns of B and C
//!   for pc in 0..k step KC                    block of the inner dimension
//!     pack B[pc.., jc..] into panels          once per block, in parallel, shared
//!     parallel for each task (a block of MC rows x a group of B panels):
//!       for each B panel in the group         (kc x NR: stays in L1/L2 across the rows)
//!         for each MR-row panel of A          (kc x MR: streams from L2)
//!           microkernel -> C tile (+ epilogue on the last pc block)
//! ```
//!
//! Where one task covers every row of A (at most `MC` rows), each B panel has a single
//! reader: that task packs it just before its tiles, into a panel-sized buffer that
//! stays in L1/L2, and no block is packed beforehand (with the prefetch of
//! `pack.rs`'s `PREFETCH_PANELS`, the next panels' rows load while this one's tiles
//! run).
//!
//! A product split across threads whose whole packed B (all of K) is at most 8 MiB packs
//! it at once instead, and each task runs every K block of its tiles: two hand-offs per
//! column block, not two per K block (ResNet-50 at batch 1, 2 threads, in-process A/B,
//! three runs: 59.2/62.9, 54.6/62.0, 62.6/67.0 ms per image).
//!
//! A is packed whole before the loop (or beforehand, for inference weights), so tasks
//! share it read-only. The output tiles of a block are split over threads in both
//! dimensions: by rows of A in blocks of `MC`, and by B panels in groups sized so there
//! are at least `4 x threads` tasks, so that a small-N shape (N = 49 in ResNet's last
//! stage) still uses every core.

use rayon::prelude::*;

use super::pack::{aligned_start, b_panels, pack_b, BPanel, BSource, PackedA, ALIGN_SLACK};
use super::{check_epilogue, MatMut};
use crate::epilogue::{accumulates, tile_steps, Epilogue};
use crate::error::Result;
use crate::kernels::microkernel::TileOut;
use crate::kernels::KernelSet;
use crate::layout::OutPtr;
use crate::workspace::{Scratch, Workspace};

// The three blocking sizes below start from the cache sizes (the reasons are given
// with each) and were then measured (2026-11-29, AVX-512 Xeon, 2 MiB L2 per core): each
// alternative alternated with the chosen value in one process, best of 18 calls per
// side, A prepacked, over ten shapes (squares 256-1024 and ResNet-50's im2col shapes
// but the 2048 square). Geometric mean of the time ratios, alternative / chosen, on
// 1 thread and 2:
//
//   KC = 128: 1.005 / 1.006    KC = 192: 1.017 / 1.003
//   KC = 384: 0.993 / 0.998    KC = 512: 1.002 / 1.003
//   MC = 64 (8 panels): 1.033 / 1.005    MC = 256 (32 panels): 1.018 / 0.977
//   NC = 1024: 0.983 / 1.015    NC = 4096: 1.003 / 0.998
//
// So every alternative is within about 3% (inside this host's noise), and single
// shapes swing both ways by up to 20-50% in a run: a flat optimum, and no reason to
// leave the cache-derived values.

/// Depth of a K block: a `KC x NR` B panel is 48 KiB at KC = 256 and NR = 48, which
/// stays in the 2 MiB L2 while the A panels (8 KiB each) stream past it.
pub(crate) const KC: usize = 256;
/// Rows of A per task, in MR-row panels: `MC x KC` of packed A is 128 KiB at MC = 16
/// panels x 8 rows = 128, well inside L2.
pub(crate) const MC_PANELS: usize = 16;
/// Columns of B per block: the packed `KC x NC` block is 2 MiB at NC = 2048.
pub(crate) const NC: usize = 2048;
/// Largest packed B (floats, all of K) that a multi-threaded GEMM packs at once (see
/// `gemm`): 2 Mi floats, 8 MiB, which covers every layer of ResNet-50 at batch 1.
const WHOLE_K_MAX: usize = 1 << 21;
/// Below this many multiply-adds a GEMM runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// Whether a GEMM may split its work across rayon's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Threads {
    /// Split when the product is large enough.
    Auto,
    /// Stay on the calling thread (the caller is already parallel, e.g. over images).
    Single,
}

/// `C = A B` then `epilogue`, for `A` packed and `B` from `b`; `m x n` output.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    set: &KernelSet,
    a: &PackedA,
    b: &BSource,
    m: usize,
    n: usize,
    c: &mut MatMut,
    epilogue: &[Epilogue],
    threads: Threads,
    ws: &Workspace,
) -> Result<()> {
    check_epilogue("gemm", epilogue, m, n)?;
    let k = a.cols();
    debug_assert_eq!(b.rows(), k);
    if m == 0 || n == 0 {
        return Ok(());
    }
    let lanes = set.lanes;
    let mr = set.gemm_mr;
    let nr = set.gemm_tiles.len() * lanes;
    let accumulate = accumulates(epilogue);
    let parallel = threads == Threads::Auto
        && m * n * k.max(1) >= PARALLEL_MIN_MACS
        && rayon::current_num_threads() > 1;
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let m_panels = m.div_ceil(mr);
    let m_blocks = m_panels.div_ceil(MC_PANELS);
    let ldc = c.ld;
    // Tasks write disjoint tiles of C (their row blocks and panel groups do not overlap).
    let cptr = OutPtr(c.data.as_mut_ptr());

    // Where one task covers every row of A, each B panel has one reader: that task packs
    // it, just before its tiles, into a panel-sized buffer that stays in L1/L2, instead
    // of the block being packed first (written out past L2 and read back).
    let in_task = m_blocks == 1;
    // This thread's buffer for packed blocks of B, reused across calls: a fresh 2 MiB
    // allocation per call would be mapped (and page-faulted) anew each time.
    ws.scratch(Scratch::PackB, |buf| {
        // K = 0 still runs one (empty) block, so C gets zeros and the epilogue.
        let k_blocks = k.div_ceil(KC).max(1);
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            // Split across threads, a product whose whole packed B (all of K) is small is
            // packed at once, and each task then runs every K block: two hand-offs per
            // column block instead of two per K block, and no barrier between K blocks.
            // Otherwise B is packed one K block at a time (a cache-sized block).
            let whole_k = parallel && k_blocks > 1 && b_panels(nc, nr, lanes, k).len <= WHOLE_K_MAX;
            let step = if whole_k { k_blocks } else { 1 };
            for kb0 in (0..k_blocks).step_by(step) {
                let kbs = kb0..(kb0 + step).min(k_blocks);
                // The packed rows: `pc0..pc0 + rows` of B, every panel holding all of them.
                let pc0 = kb0 * KC;
                let rows = (kbs.end * KC).min(k) - pc0.min(k);
                let layout = b_panels(nc, nr, lanes, rows);
                let bbuf: &[f32] = if in_task {
                    &[]
                } else {
                    buf.resize((layout.len + ALIGN_SLACK).max(buf.len()), 0.0);
                    // Panels start on cache lines (their sizes are whole vectors).
                    let at = aligned_start(buf);
                    pack_b(
                        b,
                        pc0.min(k),
                        rows,
                        jc,
                        nc,
                        &layout,
                        &mut buf[at..],
                        parallel && rows * nc >= 1 << 15,
                    );
                    &buf[at..]
                };
                let n_panels = layout.panels.len();
                // Split the panels into groups so that there are >= 4 tasks per thread.
                let groups = (4 * threads).div_ceil(m_blocks).clamp(1, n_panels);
                let per_group = n_panels.div_ceil(groups);
                let groups = n_panels.div_ceil(per_group);
                let layout = &layout;
                let kbs = &kbs;

                // One task: its row block and panel group, every K block of them; `local`
                // is the buffer its panels are packed into when it packs them itself.
                let body = |t: usize, mut local: Option<&mut Vec<f32>>| {
                    let (mb, g) = (t / groups, t % groups);
                    for kb in kbs.clone() {
                        let pc = kb * KC;
                        let kc = KC.min(k - pc.min(k));
                        let first = kb == 0;
                        let last = kb + 1 == k_blocks;
                        for &BPanel { j, width, at } in
                            &layout.panels[g * per_group..((g + 1) * per_group).min(n_panels)]
                        {
                            // A one-vector edge of a few valid columns takes the narrow tile.
                            let valid = (n - (jc + j)).min(width);
                            let tile = if width == lanes && valid <= set.gemm_narrow_max {
                                set.gemm_narrow
                            } else {
                                set.gemm_tiles[width / lanes - 1]
                            };
                            // This K block's rows of the panel, packed here or before.
                            let bpanel: &[f32] = match local.as_deref_mut() {
                                Some(lb) => {
                                    let len = width * kc;
                                    if lb.len() < len + ALIGN_SLACK {
                                        lb.resize(len + ALIGN_SLACK, 0.0);
                                    }
                                    let at = aligned_start(lb);
                                    let dst = &mut lb[at..at + len];
                                    b.pack_panel(
                                        pc.min(k),
                                        kc,
                                        jc + j,
                                        width.min(nc - j),
                                        width,
                                        dst,
                                    );
                                    &lb[at..at + len]
                                }
                                None => {
                                    let from = at + (pc - pc0) * width;
                                    &bbuf[from..from + width * kc]
                                }
                            };
                            let col = jc + j;
                            for p in mb * MC_PANELS..((mb + 1) * MC_PANELS).min(m_panels) {
                                let row = p * mr;
                                let steps = if last {
                                    // SAFETY: check_epilogue verified the list against
                                    // m x n, and (row, col) is inside.
                                    unsafe { tile_steps(epilogue, row, col) }
                                } else {
                                    [None; 4]
                                };
                                let out = TileOut {
                                    // SAFETY: row < m and col < n, inside C (validated by
                                    // MatMut).
                                    c: unsafe { cptr.get().add(row * ldc + col) },
                                    ldc,
                                    m: (m - row).min(mr),
                                    n: (n - col).min(width),
                                    load_c: !first || accumulate,
                                    steps,
                                };
                                // SAFETY: the tier is supported (Kernels was built for it);
                                // the A panel holds kc x MR floats and the B panel kc x width
                                // (whole vectors), both zero-padded; the tile's valid m x n
                                // part is inside C and the residual, and no other task
                                // writes this tile.
                                unsafe {
                                    tile(
                                        kc,
                                        a.panel(p, pc.min(k), kc).as_ptr(),
                                        bpanel.as_ptr(),
                                        width,
                                        &out,
                                    )
                                };
                            }
                        }
                    }
                };
                let task = |t: usize| {
                    if in_task {
                        ws.scratch(Scratch::PackBPanel, |lb| body(t, Some(lb)));
                    } else {
                        body(t, None);
                    }
                };
                let tasks = m_blocks * groups;
                if parallel {
                    (0..tasks).into_par_iter().for_each(task);
                } else {
                    (0..tasks).for_each(task);
                }
            }
        }
    });
    Ok(())
}
