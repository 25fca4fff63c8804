//! Winograd's F(4x4, 3x3) in the blocked layout (`Forward::BlockedWinograd`): a 3x3,
//! stride-1 convolution with 4x fewer multiplications than the direct kernel
//! (`kernels::winograd` has the algebra).
//!
//! The output is cut into 4 x 4 tiles (the last row and column of tiles may hang over
//! its edge), each read from a 6 x 6 window of the input. Tiles go in chunks small
//! enough for their transforms to stay in cache, each chunk in three steps:
//!
//! ```text
//!   1. input transform   x (blocked) --B^T d B--> V [tiles][36][CB][L]
//!   2. 36 products       M[k] = V[k] U[k]: a 1x1 convolution of a "tiles-pixel image"
//!                        by the blocked kernel (`blocked_tile`), weights U packed as
//!                        36 sets of 1x1 blocked weights  --> M [OB][36][tiles][L]
//!   3. output transform  M --A^T M A, + bias, + residual, ReLU--> y (blocked)
//! ```
//!
//! The transformed weights take 4x the memory of the 3x3 ones (36 values per channel
//! pair instead of 9): the ladder keeps Winograd to the layers it measured it on
//! (`WINOGRAD_MAX_CHANNELS` in `conv/mod.rs`), and where keeping them would cost more
//! memory than the plan may spend, `Forward::BlockedWinogradOnTheFly` keeps the direct
//! kernel's weights and transforms them in step 2, a slice of input blocks at a time
//! (`WinogradSource::OnTheFly`).
//!
//! F(2x2, 3x3) (`Forward::BlockedWinograd2`, forced only) runs through the same driver
//! with 2 x 2 tiles, 4 x 4 windows and 16 positions wherever 36 is written here.

use rayon::prelude::*;

use super::nchwc::BlockedConvWeights;
use super::Conv2d;
use crate::blocked::{checked_len, expect_blocked, lanes_mismatch, BlockedTensor};
use crate::epilogue::{self, Epilogue, Output};
use crate::error::{Result, TensorError};
use crate::kernels::blocked_tile::{BlockedTile, NarrowRow};
use crate::kernels::winograd::{
    kernel_transform2, kernel_transform_lanes, WinogradIn, WinogradKernel, WinogradOut, POSITIONS,
    TILE, TILE2, WINDOW2,
};
use crate::kernels::Kernels;
use crate::layout::OutPtr;
use crate::tensor::Tensor;
use crate::workspace::{Scratch, Workspace};

/// The floats of transformed input and products a chunk of tiles may hold (1 MiB, half
/// a core's L2 on the Intel host). Measured on ResNet-50's 64-channel 3x3 layer
/// (`resnet bench conv --path blocked-winograd`, 2 threads): batch 1 0.25-0.26 ms with
/// 1 MiB or less, 0.35-0.47 with 2-4 MiB (fewer chunks than threads to share them).
const CHUNK_FLOATS: usize = 1 << 18;

/// The fewest tiles a chunk holds, so that each transformed weight read serves at
/// least this many tiles (the 256- and 512-channel layers, whose weights are 9.4 and
/// 38 MB, ran 1.2-1.5x slower with chunks of 1 MiB than with one chunk of all tiles).
const MIN_CHUNK: usize = 48;

/// Input channels whose kernels the weight transform gathers at once (36 KB).
const GATHER: usize = 32;

/// The most bytes of transformed weights a task of the on-the-fly route
/// (`Forward::BlockedWinogradOnTheFly`) makes at once: its group of output blocks'
/// weights for a slice of whole input blocks, at all 36 positions, which the slice's
/// products then read from L2 (at least one block: 147 KB on AVX-512).
pub const ON_THE_FLY_SLICE_BYTES: usize = 512 << 10;

/// Where the Winograd route's transformed weights come from.
pub(crate) enum WinogradSource<'a> {
    /// Transformed once, at packing, and kept (`Forward::BlockedWinograd`,
    /// `Forward::BlockedWinograd2`).
    Kept(&'a WinogradWeights),
    /// The direct kernel's weights, transformed per call
    /// (`Forward::BlockedWinogradOnTheFly`): F(4x4, 3x3).
    OnTheFly(&'a BlockedConvWeights),
}

impl WinogradSource<'_> {
    fn lanes(&self) -> usize {
        match self {
            WinogradSource::Kept(w) => w.lanes,
            WinogradSource::OnTheFly(w) => w.lanes,
        }
    }

    /// OIHW.
    fn shape(&self) -> [usize; 4] {
        match self {
            WinogradSource::Kept(w) => w.shape,
            WinogradSource::OnTheFly(w) => w.shape,
        }
    }

    /// Output blocks per group of the layout.
    fn f(&self) -> usize {
        match self {
            WinogradSource::Kept(w) => w.f,
            WinogradSource::OnTheFly(w) => w.f,
        }
    }

    /// Output pixels per tile side.
    fn tile(&self) -> usize {
        match self {
            WinogradSource::Kept(w) => w.tile,
            WinogradSource::OnTheFly(_) => TILE,
        }
    }

    /// Positions of the transformed domain.
    fn positions(&self) -> usize {
        (self.tile() + 2) * (self.tile() + 2)
    }
}

/// A 3x3 layer's weights for Winograd F(4x4, 3x3) (or F(2x2, 3x3)): for each of the
/// 36 (16) positions `k`, `U[k] = (G g G^T)[k]` of every channel pair, packed as the
/// blocked kernel's 1x1 weights (`[G][CB][icb][F][L oc]`), `per_pos` floats each.
#[derive(Clone, Debug)]
pub struct WinogradWeights {
    pub(super) data: Tensor,
    pub(super) per_pos: usize,
    /// OIHW (`[O, C, 3, 3]`).
    pub(super) shape: [usize; 4],
    pub(super) lanes: usize,
    pub(super) f: usize,
    /// Input channels read per block (`nchwc::block_channels`).
    pub(super) icb: usize,
    /// Output pixels per tile side: 4 for F(4x4, 3x3) (36 positions), 2 for F(2x2,
    /// 3x3) (16).
    pub(super) tile: usize,
}

impl WinogradWeights {
    /// Positions of the transformed domain: `(tile + 2)^2`.
    fn positions(&self) -> usize {
        (self.tile + 2) * (self.tile + 2)
    }
}

impl Kernels {
    /// 3x3 OIHW weights transformed (in `f64`, rounded once) and laid out for
    /// [`super::Forward::BlockedWinograd`] (`tile` 4) or
    /// [`super::Forward::BlockedWinograd2`] (`tile` 2).
    pub(crate) fn pack_winograd_weights(&self, w: &Tensor, tile: usize) -> Result<WinogradWeights> {
        let [o, c, kh, kw] = w.dims4("pack_winograd_weights")?;
        if (kh, kw) != (3, 3) {
            return Err(TensorError::InvalidArgument {
                op: "pack_winograd_weights",
                reason: format!("Winograd F(4x4, 3x3) needs a 3x3 kernel, not {kh}x{kw}"),
            });
        }
        let wd = w.data();
        let positions = if tile == TILE2 {
            WINDOW2 * WINDOW2
        } else {
            POSITIONS
        };
        // Each position's weights as the blocked kernel's 1x1 weights
        // (`pack_blocked_conv_weights`): `[G][CB][icb][F][L oc]`, written straight from
        // each kernel's transform. Training packs them every step: in parallel over the
        // output channels, each writing its own lanes.
        let (l, f) = (self.lanes(), self.set().blocked_f);
        let (ob, cb) = (o.div_ceil(l), c.div_ceil(l));
        let groups = ob.div_ceil(f);
        let icb = super::nchwc::block_channels(c, l);
        let per_pos = groups * cb * icb * f * l;
        // From the workspace, and back to it when dropped (training packs and drops
        // them every step: 38 MB for a 512-channel layer).
        // Every element is written below (zeros past the channels), once: for a
        // 512-channel layer, zeroing the 38 MB first cost as much as the transforms.
        let mut data = Tensor::for_overwrite(&[positions * per_pos])?;
        let out = OutPtr(data.data_mut().as_mut_ptr());
        // One task per block of `L` output channels (the last group's blocks past the
        // channels included): for each input channel (the last block's past the
        // channels included), its `L` kernels' transforms, then one `L`-float run per
        // position.
        (0..groups * f).into_par_iter().for_each(|blk| {
            let (g, fi) = (blk / f, blk % f);
            let lanes = l.min(o.saturating_sub(blk * l));
            let mut t = vec![0.0f32; positions * l];
            let mut gathered = vec![[[0.0f64; 16]; 9]; GATHER];
            for cc in 0..cb * icb {
                if cc >= c || lanes == 0 {
                    // Past the channels: zeros.
                    t.fill(0.0);
                } else if tile == TILE2 {
                    for oc in 0..lanes {
                        let k9 = &wd[((blk * l + oc) * c + cc) * 9..][..9];
                        let g9: [f64; 9] = std::array::from_fn(|i| k9[i] as f64);
                        for (k, v) in kernel_transform2(g9).iter().enumerate() {
                            t[k * l + oc] = *v as f32;
                        }
                    }
                } else {
                    // The block's kernels side by side (lanes past `o` stay zero), from
                    // `gathered`, refilled every `GATHER` input channels row by row (the
                    // block's rows are `9 C` floats apart: read one kernel of each per
                    // channel, their 16 streams fell into two L1 sets).
                    if cc % GATHER == 0 {
                        let span = GATHER.min(c - cc);
                        for oc in 0..lanes {
                            let row = &wd[((blk * l + oc) * c + cc) * 9..][..span * 9];
                            for (j, k9) in row.chunks_exact(9).enumerate() {
                                for (i, v) in k9.iter().enumerate() {
                                    gathered[j][i][oc] = *v as f64;
                                }
                            }
                        }
                    }
                    for (k, u) in kernel_transform_lanes(&gathered[cc % GATHER])
                        .iter()
                        .enumerate()
                    {
                        for (d, v) in t[k * l..(k + 1) * l].iter_mut().zip(u) {
                            *d = *v as f32;
                        }
                    }
                }
                let (cbi, ic) = (cc / icb, cc % icb);
                let at = (((g * cb + cbi) * icb + ic) * f + fi) * l;
                for k in 0..positions {
                    // SAFETY: `at + l <= per_pos` (blk < G F, cc < CB icb), and block blk
                    // alone writes the run of lanes of (g, fi).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            t[k * l..].as_ptr(),
                            out.get().add(k * per_pos + at),
                            l,
                        )
                    };
                }
            }
        });
        Ok(WinogradWeights {
            data,
            per_pos,
            shape: [o, c, 3, 3],
            lanes: l,
            f,
            icb,
            tile: if tile == TILE2 { TILE2 } else { TILE },
        })
    }

    /// [`Kernels::blocked_conv2d_into`] for a plan on [`super::Forward::BlockedWinograd`]:
    /// the arguments checked, then `blocked_winograd`.
    pub(super) fn blocked_winograd_into(
        &self,
        x: &BlockedTensor,
        w: WinogradSource,
        p: Conv2d,
        epilogue: &[Epilogue],
        y: &mut BlockedTensor,
    ) -> Result<()> {
        let op = "blocked_conv2d";
        let l = self.lanes();
        for got in [x.lanes, w.lanes()] {
            if got != l {
                return Err(lanes_mismatch(op, got, l));
            }
        }
        let [n, c, h, wd] = x.shape;
        let [o, wc, kh, kw] = w.shape();
        if wc != c {
            return Err(TensorError::ShapeMismatch {
                op,
                arg: "weights",
                expected: vec![o, c, kh, kw],
                got: w.shape().to_vec(),
            });
        }
        let [oh, ow] = p.output_size(h, wd, kh, kw)?;
        let shape = [n, o, oh, ow];
        epilogue::check(op, epilogue, Output::Blocked { shape, lanes: l })?;
        let (bias, residual, relu) = super::nchwc::blocked_epilogue(op, epilogue)?;
        expect_blocked(op, "y", y, l, shape)?;
        if w.f() != self.set().blocked_f {
            return Err(TensorError::InvalidArgument {
                op,
                reason: format!(
                    "weights packed in groups of {} channel blocks, but this tier's kernel \
                     takes {} (pack them with the same Kernels)",
                    w.f(),
                    self.set().blocked_f
                ),
            });
        }
        let (cb, ob) = (c.div_ceil(l), o.div_ceil(l));
        let groups = ob.div_ceil(w.f());
        // The unsafe tiles trust these lengths: check them (and that no size wraps
        // around) first.
        let weights_agree = match &w {
            WinogradSource::Kept(w) => {
                w.per_pos == checked_len(op, &[groups, cb, w.icb, w.f, l])?
                    && w.data.len() == checked_len(op, &[w.positions(), w.per_pos])?
            }
            WinogradSource::OnTheFly(w) => {
                let icb = super::nchwc::block_channels(c, l);
                w.groups.is_none()
                    && !w.narrow
                    && (kh, kw) == (3, 3)
                    && w.data.len() == checked_len(op, &[groups, cb, kh, kw, icb, w.f, l])?
            }
        };
        let lengths_agree = x.data.len() == checked_len(op, &[n, cb, h, wd, l])?
            && y.data.len() == checked_len(op, &[n, ob, oh, ow, l])?
            && residual.fits(y.data.len())
            && weights_agree
            && checked_len(
                op,
                &[
                    w.positions(),
                    cb + ob,
                    n,
                    oh.div_ceil(w.tile()),
                    ow.div_ceil(w.tile()),
                    l,
                ],
            )
            .is_ok();
        if !lengths_agree {
            return Err(TensorError::InvalidArgument {
                op,
                reason: "a blocked tensor's data does not match its shape".into(),
            });
        }
        if n * oh * ow * o == 0 || c * h * wd == 0 {
            epilogue::finish_blocked_empty(epilogue, y);
            return Ok(());
        }
        let bias_padded: Option<Vec<f32>> = bias.map(|b| {
            let mut v = b.to_vec();
            v.resize(ob * l, 0.0);
            v
        });
        self.blocked_winograd(x, w, p.padding, bias_padded.as_deref(), residual, relu, y);
        Ok(())
    }

    /// The Winograd route, its arguments checked (`blocked_winograd_into`): `pad` the
    /// layer's padding, `bias` padded to whole output blocks.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn blocked_winograd(
        &self,
        x: &BlockedTensor,
        w: WinogradSource,
        pad: usize,
        bias: Option<&[f32]>,
        residual: super::nchwc::BlockedAdd,
        relu: bool,
        y: &mut BlockedTensor,
    ) {
        let set = self.set();
        let l = self.lanes();
        let [n, c, h, wd] = x.shape;
        let [_, o, oh, ow] = y.shape;
        debug_assert_eq!(c, w.shape()[1]);
        let (cb, ob, f) = (c.div_ceil(l), o.div_ceil(l), w.f());
        let groups = ob.div_ceil(f);
        let icb = super::nchwc::block_channels(c, l);
        // A group's weights at one position (kept), and its 3x3 weights (on the fly).
        let w_group = cb * icb * f * l;
        let w_group9 = 9 * w_group;
        if let WinogradSource::Kept(w) = &w {
            debug_assert_eq!(w.per_pos, groups * w_group);
            debug_assert_eq!(w.icb, icb);
        }
        // The on-the-fly route's slices of input blocks: as many as fit
        // `ON_THE_FLY_SLICE_BYTES` of transformed weights, at least one.
        let slice_blocks =
            (ON_THE_FLY_SLICE_BYTES / (POSITIONS * icb * f * l * 4)).clamp(1, cb.max(1));
        // F(4x4, 3x3) or F(2x2, 3x3).
        let (side, positions) = (w.tile(), w.positions());
        let (th, tw) = (oh.div_ceil(side), ow.div_ceil(side));
        let per_image = th * tw;
        let total = n * per_image;
        let kernels = set.blocked_tiles;
        let pmax = kernels.len();
        // Tiles per chunk: as many as fit `CHUNK_FLOATS`, but at least `MIN_CHUNK` (each
        // chunk reads all the transformed weights: 36 C O floats, from memory once
        // they outgrow the caches), a whole number of the kernel's widest tile
        // (narrower ones run at a lower share of the peak).
        let per_tile = positions * (cb + ob) * l;
        let chunk = (CHUNK_FLOATS / per_tile).max(MIN_CHUNK) / pmax * pmax;
        let chunk = chunk.max(pmax).min(total);
        let chunks = total.div_ceil(chunk);
        let threads = rayon::current_num_threads();
        let parallel = threads > 1 && total * per_tile * cb.max(ob) * l >= 1 << 18;
        // Enough chunks to go round: each thread runs whole chunks, the three steps on
        // its own buffer, with no waiting between them; else the chunks one after
        // another, each step split across the threads.
        let by_chunk = parallel && chunks >= 2 * threads;
        let outp = OutPtr(y.data.as_mut_ptr());
        let ws = Workspace::current();
        let (input_tile, output_tile) = if side == TILE2 {
            (set.winograd2_input, set.winograd2_output)
        } else {
            (set.winograd_input, set.winograd_output)
        };
        // V is `[tile][36][CB][L]` (a tile's transform written in one place), M
        // `[OB][36][tile][L]` (the kernel's output pixels `L` floats apart), so that
        // neither transform strides across the whole buffer. The kernel reads V's tiles
        // as pixels at these offsets.
        let offs: Vec<usize> = (0..chunk).map(|q| q * positions * cb * l).collect();
        let v_len = positions * cb * chunk * l;
        let buf_len = v_len + positions * ob * chunk * l;
        // Tile `t`'s image and its top-left output pixel.
        let place = |t: usize| {
            let (b, r) = (t / per_image, t % per_image);
            (b, (r / tw) * side, (r % tw) * side)
        };
        // One chunk, from tile `t0`, in `buf`, each step split across the threads if
        // `split`.
        let run = |t0: usize, buf: &mut Vec<f32>, split: bool| {
            // Every element a step reads was written by the step before it.
            buf.resize(buf_len, 0.0);
            let (v, m) = buf.split_at_mut(v_len);
            let (vp, mp) = (OutPtr(v.as_mut_ptr()), OutPtr(m.as_mut_ptr()));
            {
                let tc = chunk.min(total - t0);
                // 1. The input transform: V[k][cb][q] for every tile q of the chunk.
                let transform_in = |q: usize| {
                    let (b, oy, ox) = place(t0 + q);
                    for i in 0..cb {
                        let t = WinogradIn {
                            x: x.data[(b * cb + i) * h * wd * l..].as_ptr(),
                            h,
                            w: wd,
                            iy0: oy as isize - pad as isize,
                            ix0: ox as isize - pad as isize,
                            // SAFETY: inside V: tile q < tc <= chunk, block i.
                            out: unsafe { vp.get().add((q * positions * cb + i) * l) },
                            out_pos: cb * l,
                        };
                        // SAFETY: the window's pixels inside the image are read from
                        // image b's block i; V holds tile q's 36 positions `cb l` apart.
                        // Tiles write disjoint positions of V.
                        unsafe { input_tile(&t) };
                    }
                };
                // 2. The 36 products, each a 1x1 convolution over the chunk's tiles by
                //    the blocked kernel: tasks (position, group of output blocks, run).
                //    On the fly, tasks (group of output blocks, run), each making its group's
                //    transformed weights a slice of input blocks at a time and running the
                //    slice's 36 products, summed onto the slices' before it: fewer tasks
                //    than positions, as each run transforms the weights again (and one
                //    run a group where the chunk runs on one thread).
                let (wanted, per_run) = match &w {
                    WinogradSource::Kept(_) => (8 * threads, positions * groups),
                    WinogradSource::OnTheFly(_) if split => (2 * threads, groups),
                    WinogradSource::OnTheFly(_) => (1, groups),
                };
                let runs = wanted.div_ceil(per_run).clamp(1, tc.div_ceil(pmax));
                let run_px = tc.div_ceil(runs).div_ceil(pmax) * pmax;
                let runs = tc.div_ceil(run_px);
                // Position k's products of group g for the run's tiles over input blocks
                // `c0..c1`, weights `wk` (that group's, position's and blocks', laid out
                // as 1x1 blocked weights), summed onto M's values unless `c0` is 0.
                let products =
                    |k: usize, g: usize, run: usize, (c0, c1): (usize, usize), wk: *const f32| {
                        let fv = f.min(ob - g * f);
                        let (q0, q1) = (run * run_px, ((run + 1) * run_px).min(tc));
                        let (len, count) = (q1 - q0, (q1 - q0).div_ceil(pmax));
                        let (base, extra) = (len / count.max(1), len % count.max(1));
                        let mut q = q0;
                        for ti in 0..count {
                            let pn = base + usize::from(ti < extra);
                            // SAFETY: inside M: block g f, position k, tile q.
                            let out =
                                unsafe { mp.get().add(((g * f * positions + k) * tc + q) * l) };
                            let tile = BlockedTile {
                                // SAFETY: inside V: tile 0, position k, block c0.
                                x: unsafe { vp.get().add((k * cb + c0) * l) },
                                x_off: offs[q..].as_ptr(),
                                x_cb: l,
                                x_row: 0,
                                x_col: 0,
                                cb: c1 - c0,
                                icb,
                                kh: 1,
                                kw: 1,
                                w: wk,
                                out,
                                out_ob: positions * tc * l,
                                f: fv,
                                bias: std::ptr::null(),
                                residual: if c0 == 0 { std::ptr::null() } else { out },
                                relu: false,
                                ahead: std::ptr::null(),
                                ahead_lines: 0,
                                narrow: NarrowRow::default(),
                            };
                            // SAFETY: tiles q..q + pn of each of position k's blocks c0..c1 are
                            // in V (written by step 1); `wk` holds `(c1 - c0) icb f l` floats;
                            // the kernel writes (and, past the first slice, reads first) `fv`
                            // blocks of `pn` tiles of position k's M. Tasks differ in (k, g,
                            // run) or (g, run): disjoint outputs.
                            unsafe { (kernels[pn - 1])(&tile) };
                            q += pn;
                        }
                    };
                let product = |task: usize| match &w {
                    WinogradSource::Kept(w) => {
                        let (k, rest) = (task / (groups * runs), task % (groups * runs));
                        let (g, run) = (rest / runs, rest % runs);
                        let wk = w.data.data()[k * w.per_pos + g * w_group..].as_ptr();
                        products(k, g, run, (0, cb), wk);
                    }
                    WinogradSource::OnTheFly(w) => {
                        let (g, run) = (task / runs, task % runs);
                        let wg = &w.data[g * w_group9..(g + 1) * w_group9];
                        ws.scratch(Scratch::WinogradKernel, |u| {
                            // Positions a cache line more than a slice apart: a slice is a
                            // multiple of 4 KiB, and each transform's 36 stores to one L1
                            // set missed it.
                            let slice_len = slice_blocks * icb * f * l + 16;
                            u.resize(POSITIONS * slice_len, 0.0);
                            let up = OutPtr(u.as_mut_ptr());
                            for c0 in (0..cb).step_by(slice_blocks) {
                                let c1 = (c0 + slice_blocks).min(cb);
                                // The slice's weights, `[36][c1 - c0][icb][f][l]` with
                                // positions `slice_len` apart, from the direct layout's
                                // `[CB][3][3][icb][f][l]`.
                                for i in c0..c1 {
                                    for j in 0..icb * f {
                                        let t = WinogradKernel {
                                            g: wg[(i * 9 * icb * f + j) * l..].as_ptr(),
                                            tap: icb * f * l,
                                            // SAFETY: inside u: position 0, block i - c0,
                                            // run j of `l` floats.
                                            out: unsafe {
                                                up.get().add(((i - c0) * icb * f + j) * l)
                                            },
                                            out_pos: slice_len,
                                        };
                                        // SAFETY: block i's 9 taps of run j lie in group
                                        // g's weights (`[CB][3][3][icb f][l]`); u holds 36
                                        // positions of `slice_len` floats.
                                        unsafe { (set.winograd_kernel)(&t) };
                                    }
                                }
                                for k in 0..positions {
                                    products(k, g, run, (c0, c1), u[k * slice_len..].as_ptr());
                                }
                            }
                        });
                    }
                };
                // 3. The output transform and the epilogue, into y.
                let transform_out = |q: usize| {
                    let (b, oy, ox) = place(t0 + q);
                    for i in 0..ob {
                        let at = ((b * ob + i) * oh + oy) * ow * l + ox * l;
                        let t = WinogradOut {
                            // SAFETY: inside M: block i, position 0, tile q.
                            m: unsafe { mp.get().add((i * positions * tc + q) * l) as *const f32 },
                            m_pos: tc * l,
                            // SAFETY: inside y: image b, block i, pixel (oy, ox).
                            out: unsafe { outp.get().add(at) },
                            row: ow * l,
                            rows: side.min(oh - oy),
                            cols: side.min(ow - ox),
                            bias: bias.map_or(std::ptr::null(), |b| b[i * l..].as_ptr()),
                            // SAFETY: as `out`.
                            residual: residual.at(at, unsafe { outp.get().add(at) }),
                            relu,
                        };
                        // SAFETY: M's 36 positions of tile q, block i, were written by
                        // step 2; the tile's `rows x cols` pixels lie inside image b's
                        // block i of y (and of the residual, of y's shape). Tiles write
                        // disjoint pixels.
                        unsafe { output_tile(&t) };
                    }
                };
                let tasks = match &w {
                    WinogradSource::Kept(_) => positions * groups * runs,
                    WinogradSource::OnTheFly(_) => groups * runs,
                };
                if split {
                    (0..tc).into_par_iter().for_each(transform_in);
                    (0..tasks).into_par_iter().for_each(product);
                    (0..tc).into_par_iter().for_each(transform_out);
                } else {
                    (0..tc).for_each(transform_in);
                    (0..tasks).for_each(product);
                    (0..tc).for_each(transform_out);
                }
            }
        };
        if by_chunk {
            (0..chunks)
                .into_par_iter()
                .for_each(|i| ws.scratch(Scratch::Winograd, |buf| run(i * chunk, buf, false)));
        } else {
            ws.scratch(Scratch::Winograd, |buf| {
                for i in 0..chunks {
                    run(i * chunk, buf, parallel);
                }
            });
        }
    }
}
