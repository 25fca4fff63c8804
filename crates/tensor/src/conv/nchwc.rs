//! The blocked layout's convolution route (`Forward::Blocked`): over `[N][CB][H][W][L]`
//! activations (`crate::blocked`) a convolution needs no packing of its input and no
//! im2col: the microkernel (`kernels::blocked_tile`) loads weight vectors (output
//! channels along the lanes) and broadcasts input values, for any pixel count, kernel and
//! stride. It is the layout ONNX Runtime's CPU convolutions use. The ImageNet nets'
//! inference runs every layer but the stem on it (`docs/convolution.md`).

use rayon::prelude::*;

use super::winograd::WinogradSource;
use super::{ConvWeights, Forward, Packed};
use crate::blocked::{checked_len, expect_blocked, lanes_mismatch, BlockedTensor};
use crate::epilogue::{self, Epilogue, Output, Residual};
use crate::error::{Result, TensorError};
use crate::kernels::blocked_tile::{BlockedTile, NarrowRow, NARROW_ROW3_REGISTERS, SPREAD_ROW};
use crate::kernels::Kernels;
use crate::layout::OutPtr;
use crate::tensor::Tensor;
use crate::workspace::{Scratch, Workspace};

/// The most bytes of one group of output blocks' weights (`F` blocks, every input
/// channel and tap) the blocked kernel's tiles read in one pass: past it, a task sums
/// its tiles' input channels in chunks of input blocks, each chunk's weights read by
/// all the task's tiles while they are in L2, and each chunk after the first adds to
/// what the ones before stored. Wide ResNet-50-2's 1024-channel 3x3 layers have 2.3 MB
/// a group on AVX-512, which every tile streamed from L3 again. Measured (Intel host,
/// 2 threads, batch 1, `resnet bench model`, 2026-12-05, alternating): Wide ResNet-50-2
/// 83.2-87.4 ms unchunked, 81.0-82.2 at 1 MiB, 76.2-80.2 at 512 KiB, 80.3-80.8 at 256
/// KiB; ResNet-18 and -50 and ResNet-50's layers alone at batch 1 and 16 within the
/// host's noise (`docs/benchmarks.md`).
pub const BLOCKED_CHUNK_BYTES: usize = 512 << 10;

/// Convolution weights laid out for the blocked kernel: groups of `F` output blocks,
/// `[G][CB][kh][kw][icb][F][L oc]`, zeros past the real channels; `icb` is `L`, or the
/// channel count of an input of a single, partial block (`block_channels`).
#[derive(Clone, Debug)]
pub struct BlockedConvWeights {
    pub(super) data: Vec<f32>,
    /// OIHW (`[O, C / groups, kh, kw]` for a grouped convolution).
    pub(super) shape: [usize; 4],
    pub(super) lanes: usize,
    pub(super) f: usize,
    /// A grouped convolution's groups and super-groups (`super::blocked_groups`): `(groups,
    /// input, output)` channels of each super-group, read as one dense convolution by the
    /// single-block kernel (`f` is then 1: one output block per weight group, `[CB of its
    /// super-group][kh][kw][L ic][1][L oc]`, zero between its groups).
    pub(super) groups: Option<(usize, usize, usize)>,
    /// Laid out for the narrow-group kernel (`Forward::BlockedNarrowGroups`): each output
    /// block `[kh][blocks][kw][G][L oc]`, `G` the rotations (its groups' width, at most
    /// `L`) and `blocks` the input blocks of a group (1 unless its groups are several
    /// blocks); `groups` is then `(groups, L, L)`.
    pub(super) narrow: bool,
}

/// Input channels the kernel reads per block: all `l` lanes, except for an input of
/// fewer channels than one block (an RGB image), where only the real ones are worth
/// reading (3 of 16 on AVX-512: the stem does 5x less work).
pub(super) fn block_channels(c: usize, l: usize) -> usize {
    if c < l {
        c.max(1)
    } else {
        l
    }
}

impl Kernels {
    /// OIHW weights laid out for the blocked kernel on this tier (through
    /// [`Kernels::pack_conv`] for a plan in the blocked layout).
    pub(crate) fn pack_blocked_conv_weights(&self, w: &Tensor) -> Result<BlockedConvWeights> {
        let [o, c, kh, kw] = w.dims4("pack_blocked_conv_weights")?;
        let (l, f) = (self.lanes(), self.set().blocked_f);
        let (ob, cb) = (o.div_ceil(l), c.div_ceil(l));
        let groups = ob.div_ceil(f);
        let icb = block_channels(c, l);
        let mut data = vec![0.0f32; groups * cb * kh * kw * icb * f * l];
        let wd = w.data();
        let mut at = 0;
        for g in 0..groups {
            for cbi in 0..cb {
                for ky in 0..kh {
                    for kx in 0..kw {
                        for ic in 0..icb {
                            for fi in 0..f {
                                for oc in 0..l {
                                    let (oo, cc) = ((g * f + fi) * l + oc, cbi * l + ic);
                                    if oo < o && cc < c {
                                        data[at] = wd[((oo * c + cc) * kh + ky) * kw + kx];
                                    }
                                    at += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(BlockedConvWeights {
            data,
            shape: [o, c, kh, kw],
            lanes: l,
            f,
            groups: None,
            narrow: false,
        })
    }

    /// Grouped OIHW weights (`[O, C / groups, kh, kw]`) laid out for the single-block
    /// kernel, output block by output block, each over its super-group's input blocks;
    /// or, `narrow`, for the narrow-group kernel.
    pub(crate) fn pack_blocked_grouped_weights(
        &self,
        w: &Tensor,
        groups: usize,
        narrow: bool,
    ) -> Result<BlockedConvWeights> {
        let [o, cg, kh, kw] = w.dims4("pack_blocked_grouped_weights")?;
        let l = self.lanes();
        let c = cg * groups;
        if narrow {
            if !super::narrow_groups(c, o, groups, l) {
                return Err(TensorError::InvalidArgument {
                    op: "pack_blocked_grouped_weights",
                    reason: format!(
                        "{c} to {o} channels in {groups} groups are not narrow groups of \
                         {l}-channel blocks"
                    ),
                });
            }
            // Output block b, tap row ky, input block `blk` of the group (one, unless the
            // group is several blocks), tap column kx, rotation j: lane oc holds output b
            // L + oc's weight for input (oc + j) mod g of the group's inputs in that
            // block, g = min(cg, L) of them (`narrow_tile`).
            let (g, blocks) = (cg.min(l), cg.div_ceil(l));
            let mut data = vec![0.0f32; o * kh * kw * cg];
            let wd = w.data();
            let mut at = 0;
            for b in 0..o / l {
                for ky in 0..kh {
                    for blk in 0..blocks {
                        for kx in 0..kw {
                            for j in 0..g {
                                for oc in 0..l {
                                    let oo = b * l + oc;
                                    let input = blk * l + (oc % g + j) % g;
                                    data[at] = wd[((oo * cg + input) * kh + ky) * kw + kx];
                                    at += 1;
                                }
                            }
                        }
                    }
                }
            }
            return Ok(BlockedConvWeights {
                data,
                shape: [o, cg, kh, kw],
                lanes: l,
                f: 1,
                groups: Some((groups, l, l)),
                narrow: true,
            });
        }
        let (sg_in, sg_out) =
            super::blocked_groups(c, o, groups, l).ok_or_else(|| TensorError::InvalidArgument {
                op: "pack_blocked_grouped_weights",
                reason: format!("{c} to {o} channels in {groups} groups fit no blocked route"),
            })?;
        let og = o / groups;
        let (ob, in_blocks) = (o.div_ceil(l), sg_in / l);
        let per_block = in_blocks * kh * kw * l * l;
        let mut data = vec![0.0f32; ob * per_block];
        let wd = w.data();
        for (b, out) in data.chunks_exact_mut(per_block).enumerate() {
            // The super-group of output block b, and its first input channel.
            let c0 = (b * l / sg_out) * sg_in;
            let mut at = 0;
            for cbi in 0..in_blocks {
                for ky in 0..kh {
                    for kx in 0..kw {
                        for ic in 0..l {
                            for oc in 0..l {
                                let (oo, cc) = (b * l + oc, c0 + cbi * l + ic);
                                // Only inputs of the output's own group count.
                                if oo < o && cc / cg == oo / og {
                                    let j = cc - (oo / og) * cg;
                                    out[at] = wd[((oo * cg + j) * kh + ky) * kw + kx];
                                }
                                at += 1;
                            }
                        }
                    }
                }
            }
        }
        Ok(BlockedConvWeights {
            data,
            shape: [o, cg, kh, kw],
            lanes: l,
            f: 1,
            groups: Some((groups, sg_in, sg_out)),
            narrow: false,
        })
    }

    /// Convolution in the blocked layout by a plan whose route is [`Forward::Blocked`],
    /// then the epilogue in the tile's registers: a bias, a residual
    /// ([`Epilogue::residual_blocked`], the output's shape) and ReLU, which must come
    /// last (this kernel applies it after the additions); no `Accumulate`.
    pub fn blocked_conv2d(
        &self,
        x: &BlockedTensor,
        w: &ConvWeights,
        epilogue: &[Epilogue],
    ) -> Result<BlockedTensor> {
        let [n, _, h, wd] = x.shape;
        let [o, _, kh, kw] = w.shape();
        let [oh, ow] = w.plan().conv().output_size(h, wd, kh, kw)?;
        let mut y = BlockedTensor::zeros(self, [n, o, oh, ow])?;
        self.blocked_conv2d_into(x, w, epilogue, &mut y)?;
        Ok(y)
    }

    /// [`Kernels::blocked_conv2d`] into an existing output of this tier's layout: every
    /// element is overwritten, or with [`Epilogue::Accumulate`] first, added to (a
    /// residual block's last convolution summing onto its shortcut in place; not
    /// together with a residual step).
    pub fn blocked_conv2d_into(
        &self,
        x: &BlockedTensor,
        weights: &ConvWeights,
        epilogue: &[Epilogue],
        y: &mut BlockedTensor,
    ) -> Result<()> {
        let op = "blocked_conv2d";
        self.check_plan(op, weights.plan())?;
        let (w, p) = match (weights.plan().routes(x.shape)?.forward, weights.packed()) {
            (
                Forward::Blocked | Forward::BlockedGrouped | Forward::BlockedNarrowGroups,
                Packed::Blocked(w),
            ) => (w, weights.plan().conv()),
            (Forward::BlockedWinograd | Forward::BlockedWinograd2, Packed::Winograd(w)) => {
                return self.blocked_winograd_into(
                    x,
                    WinogradSource::Kept(w),
                    weights.plan().conv(),
                    epilogue,
                    y,
                )
            }
            (Forward::BlockedWinogradOnTheFly, Packed::Blocked(w)) => {
                return self.blocked_winograd_into(
                    x,
                    WinogradSource::OnTheFly(w),
                    weights.plan().conv(),
                    epilogue,
                    y,
                )
            }
            (route, _) => {
                return Err(TensorError::InvalidArgument {
                    op,
                    reason: format!(
                        "the plan runs this layer by route {route}, not in the blocked layout: \
                         use conv2d"
                    ),
                })
            }
        };
        let l = self.lanes();
        for got in [x.lanes, w.lanes] {
            if got != l {
                return Err(lanes_mismatch(op, got, l));
            }
        }
        let [n, c, h, wd] = x.shape;
        let [o, wc, kh, kw] = w.shape;
        let conv_groups = w.groups.map_or(1, |(g, _, _)| g);
        if wc * conv_groups != c {
            return Err(TensorError::ShapeMismatch {
                op,
                arg: "weights",
                expected: vec![o, c / conv_groups, kh, kw],
                got: w.shape.to_vec(),
            });
        }
        let [oh, ow] = p.output_size(h, wd, kh, kw)?;
        let shape = [n, o, oh, ow];
        epilogue::check(op, epilogue, Output::Blocked { shape, lanes: l })?;
        let (bias, residual, relu) = blocked_epilogue(op, epilogue)?;
        expect_blocked(op, "y", y, l, shape)?;
        if w.groups.is_none() && w.f != self.set().blocked_f {
            return Err(TensorError::InvalidArgument {
                op,
                reason: format!(
                    "weights packed in groups of {} channel blocks, but this tier's kernel \
                     takes {} (pack them with the same Kernels)",
                    w.f,
                    self.set().blocked_f
                ),
            });
        }
        let (cb, ob, f) = (x.blocks(), o.div_ceil(l), w.f);
        let groups = ob.div_ceil(f);
        // The input blocks each group of output blocks reads: all of them, or for a
        // grouped convolution its super-group's (`super::blocked_groups`), from
        // `in_start(g)`.
        let (in_blocks, sg) = match w.groups {
            None => (cb, None),
            Some((_, sg_in, sg_out)) => (sg_in / l, Some((sg_in, sg_out))),
        };
        let in_start = |g: usize| sg.map_or(0, |(sg_in, sg_out)| (g * l / sg_out) * sg_in / l);
        // The unsafe tiles below trust these lengths: check them (and that no size
        // wraps around) first.
        let pad = p.padding;
        // A strided 1x1 convolution without padding reads a compact copy of the pixels it
        // uses (every `s`-th of every `s`-th row), as a stride-1 one: reading them in
        // place touched every cache line of the input for a quarter of its pixels
        // (ResNet-50's downsamples 1.1-1.2x slower than the NCHW route, which copies too).
        let subsample = kh == 1 && kw == 1 && pad == 0 && p.stride > 1;
        let (ph, pw, s) = if subsample {
            (oh, ow, 1)
        } else {
            (h + 2 * pad, wd + 2 * pad, p.stride)
        };
        let padded_len = checked_len(op, &[n, cb, ph, pw, l])?;
        let icb = block_channels(c, l);
        // The narrow-group kernel's weights: `wc` (its groups' width) per lane and tap.
        let w_group = if w.narrow {
            checked_len(op, &[kh, kw, wc, l])?
        } else {
            checked_len(op, &[in_blocks, kh, kw, icb, f, l])?
        };
        let lengths_agree = x.data.len() == checked_len(op, &[n, cb, h, wd, l])?
            && y.data.len() == checked_len(op, &[n, ob, oh, ow, l])?
            && residual.fits(y.data.len())
            && w.data.len() == checked_len(op, &[groups, w_group])?;
        if !lengths_agree {
            return Err(TensorError::InvalidArgument {
                op,
                reason: "a blocked tensor's data does not match its shape".into(),
            });
        }
        if n * oh * ow * o == 0 || c * h * wd == 0 {
            // Nothing to add up (no input channels, or an input of no pixels whose
            // padding makes an output): the epilogue alone.
            epilogue::finish_blocked_empty(epilogue, y);
            return Ok(());
        }
        let bias_padded: Option<Vec<f32>> = bias.map(|b| {
            let mut v = b.to_vec();
            v.resize(groups * f * l, 0.0);
            v
        });
        if w.narrow {
            self.blocked_narrow(x, w, p, bias_padded.as_deref(), residual, relu, y);
            return Ok(());
        }
        // The input padded by `p` on every side (its border zeros), or read in place: this
        // thread's copy, from the caller's workspace. A grouped convolution's task pads
        // only the rows of its own input blocks that its tiles read, into its thread's
        // scratch, just before reading them (`pad_rows`): a whole padded copy cost a pass
        // over the layer's input and its writes for layers of few multiply-adds per byte.
        let pad_in_task = sg.is_some() && pad > 0;
        let ws = Workspace::current();
        ws.scratch(Scratch::BlockedPadded, |padded| {
            if pad > 0 && !pad_in_task {
                // Every float of each padded plane is written (border zeros, rows copied):
                // the reused buffer needs no clearing.
                padded.resize(padded_len, 0.0);
                let whole = RowSpan {
                    pad,
                    h,
                    wd,
                    pw,
                    l,
                    r0: 0,
                    r1: ph,
                };
                let pairs = padded
                    .par_chunks_exact_mut(ph * pw * l)
                    .zip(x.data.par_chunks_exact(h * wd * l));
                pairs.for_each(|(dst, src)| whole.pad_plane(src, dst));
            }
            if subsample {
                padded.resize(padded_len, 0.0);
                let st = p.stride;
                let pick = |(dst, src): (&mut [f32], &[f32])| {
                    for (q, out) in dst.chunks_exact_mut(l).enumerate() {
                        let at = ((q / ow) * st * wd + (q % ow) * st) * l;
                        out.copy_from_slice(&src[at..at + l]);
                    }
                };
                padded
                    .par_chunks_exact_mut(oh * ow * l)
                    .zip(x.data.par_chunks_exact(h * wd * l))
                    .for_each(pick);
            }
            let xin: &[f32] = if (pad > 0 && !pad_in_task) || subsample {
                padded
            } else {
                &x.data
            };
            let set = self.set();
            // A grouped convolution's groups each get the single-block kernel.
            let kernels = if sg.is_some() {
                set.blocked1_tiles
            } else {
                set.blocked_tiles
            };
            let pmax = kernels.len();
            // A dilated kernel's taps are `d` rows and columns apart.
            let d = p.dilation.max(1);
            let (x_cb, x_row, x_col) = (ph * pw * l, d * pw * l, d * l);
            let (in_image, plane) = (cb * x_cb, oh * ow);
            let out_image = ob * plane * l;
            // Each output pixel's input offset (tap (0, 0), channel block 0): tiles take `P`
            // consecutive pixels of the flattened plane, across row ends.
            let offs: Vec<usize> = (0..plane)
                .map(|q| ((q / ow) * s * pw + (q % ow) * s) * l)
                .collect();
            // Tasks: (image, group of output blocks, run of whole tiles), about eight per
            // thread, so that a 7 x 7 plane still splits.
            let tiles = plane.div_ceil(pmax);
            let wanted = 8 * rayon::current_num_threads();
            let runs = wanted.div_ceil(n * groups).clamp(1, tiles);
            let run_px = tiles.div_ceil(runs) * pmax;
            let runs = plane.div_ceil(run_px);
            let outp = OutPtr(y.data.as_mut_ptr());
            // The reduction over input blocks in chunks whose weights (of one group of
            // output blocks) stay in L2 while the task's tiles reuse them: see
            // `BLOCKED_CHUNK_BYTES`. Each chunk after the first adds to the tiles'
            // output (as a residual read where it is written); the bias and the layer's
            // residual come with the first, the ReLU with the last.
            let w_block = kh * kw * icb * f * l;
            let chunks = (in_blocks * w_block * 4)
                .div_ceil(BLOCKED_CHUNK_BYTES)
                .clamp(1, in_blocks.max(1));
            let chunk_blocks = in_blocks.div_ceil(chunks);
            let chunks = in_blocks.div_ceil(chunk_blocks.max(1)).max(1);
            let tasks = n * groups * runs;
            // The group and first input block of task `t + 1`'s weights, if any.
            let next_task =
                |t: usize| (t + 1 < tasks).then(|| ((t + 1) % (groups * runs) / runs, 0));
            let task = |t: usize| {
                let (b, rest) = (t / (groups * runs), t % (groups * runs));
                let (g, run) = (rest / runs, rest % runs);
                let fv = f.min(ob - g * f);
                let (q0, q1) = (run * run_px, ((run + 1) * run_px).min(plane));
                // The run's pixels in as few tiles as `P = pmax` allows, of balanced widths
                // (49 = 4 x 6 + 5 x 5, not 8 x 6 + 1): a 1-pixel tile loads the same weights
                // for a sixth of the multiply-adds of a 6-pixel one, and took 6% of the time of
                // ResNet-50's 7 x 7 layers for 2% of their work. In-process A/B, 2 threads,
                // batch 1: those layers 0.97-0.985 of the time (mean of 400 calls), the
                // others unchanged; ResNet-50 0.97-0.99.
                let (len, count) = (q1 - q0, (q1 - q0).div_ceil(pmax));
                let (base, extra) = (len / count.max(1), len % count.max(1));
                // The tiles read channel block `c` of the group's input from `xb[c
                // tile_cb..]`, pixel `q`'s tap (0, 0) at `toffs[q - q0]` from there.
                let run_tiles = |xb: &[f32], tile_cb: usize, toffs: &[usize]| {
                    for chunk in 0..chunks {
                        let c0 = chunk * chunk_blocks;
                        let c1 = (c0 + chunk_blocks).min(in_blocks);
                        let mut q = q0;
                        // The weights the task reads next (the next chunk's, or the
                        // next task's first chunk), their lines shared among the tiles.
                        let next = match chunk + 1 < chunks {
                            true => Some((g, c1)),
                            false => next_task(t),
                        };
                        let next = next.map_or(&[][..], |(g, c)| {
                            let start = g * w_group + c * w_block;
                            let end = g * w_group + (c + chunk_blocks).min(in_blocks) * w_block;
                            &w.data[start..end]
                        });
                        for ti in 0..count {
                            let pn = base + usize::from(ti < extra);
                            let (ahead, ahead_lines) = crate::kernels::line_share(next, ti, count);
                            let at = b * out_image + g * f * plane * l + q * l;
                            // SAFETY: inside the output: image b, block g f, pixel q.
                            let out = unsafe { outp.get().add(at) };
                            let tile = BlockedTile {
                                x: xb[c0 * tile_cb..].as_ptr(),
                                x_off: toffs[q - q0..].as_ptr(),
                                x_cb: tile_cb,
                                x_row,
                                x_col,
                                cb: c1 - c0,
                                icb,
                                kh,
                                kw,
                                w: w.data[g * w_group + c0 * w_block..].as_ptr(),
                                out,
                                out_ob: plane * l,
                                f: fv,
                                bias: match &bias_padded {
                                    Some(v) if chunk == 0 => v[g * f * l..].as_ptr(),
                                    _ => std::ptr::null(),
                                },
                                residual: if chunk == 0 {
                                    residual.at(at, out)
                                } else {
                                    out
                                },
                                relu: relu && c1 == in_blocks,
                                ahead,
                                ahead_lines,
                                narrow: NarrowRow::default(),
                            };
                            // SAFETY: pixel q's taps read padded rows `oy s + ky d <= (oh - 1)
                            // s + (kh - 1) d < ph` and columns `ox s + kx d < pw` (`output_size`
                            // counts the dilated span) of channel blocks `c0..c1` of group g
                            // of image b, which `xb` holds (whole padded planes `x_cb` apart,
                            // or the task's rows of them, `pad_rows`, `tile_cb` apart);
                            // `toffs` has `pn` entries from q - q0;
                            // the chunk's weights are `(c1 - c0) w_block` floats inside group
                            // g's `w_group`; the tile writes (and reads, for the residual or
                            // the previous chunks' sums, each value before it writes it) `fv`
                            // blocks of `pn` pixels inside image b's output. Tasks differ in
                            // (b, g, run): disjoint outputs.
                            unsafe { (kernels[pn - 1])(&tile) };
                            q += pn;
                        }
                        debug_assert_eq!(q, q1);
                    }
                };
                if pad_in_task {
                    // Padded rows `r0..r1` hold every tap row of output rows `q0 / ow ..=
                    // (q1 - 1) / ow`.
                    let r0 = q0 / ow * s;
                    let r1 = ((q1 - 1) / ow * s + (kh - 1) * d + 1).min(ph);
                    let rows = RowSpan {
                        pad,
                        h,
                        wd,
                        pw,
                        l,
                        r0,
                        r1,
                    };
                    let src = &x.data[b * cb * h * wd * l + in_start(g) * h * wd * l..];
                    ws.scratch(Scratch::ConvPadded, |local| {
                        rows.pad_rows(&src[..in_blocks * h * wd * l], in_blocks, local);
                        let shift = r0 * pw * l;
                        let toffs: Vec<usize> = offs[q0..q1].iter().map(|o| o - shift).collect();
                        run_tiles(local, (r1 - r0) * pw * l, &toffs);
                    });
                } else {
                    let xb = &xin[b * in_image + in_start(g) * x_cb..];
                    run_tiles(xb, x_cb, &offs[q0..q1]);
                }
            };
            let work = [plane, f, groups, l, in_blocks, l, kh, kw]
                .iter()
                .fold(n, |a, &d| a.saturating_mul(d));
            if work >= 1 << 18 && rayon::current_num_threads() > 1 {
                (0..tasks).into_par_iter().for_each(task);
            } else {
                (0..tasks).for_each(task);
            }
            debug_assert_eq!(y.data.len(), n * out_image);
        });
        Ok(())
    }

    /// The narrow-group route ([`Forward::BlockedNarrowGroups`]) of
    /// [`Kernels::blocked_conv2d_into`], whose checks it trusts (`w.narrow`, the lengths,
    /// `bias` padded to the output blocks): tiles of consecutive pixels of one output
    /// row, which read the image in place (`kernels::blocked_tile::narrow_tile`).
    #[allow(clippy::too_many_arguments)]
    fn blocked_narrow(
        &self,
        x: &BlockedTensor,
        w: &BlockedConvWeights,
        p: super::Conv2d,
        bias: Option<&[f32]>,
        residual: BlockedAdd,
        relu: bool,
        y: &mut BlockedTensor,
    ) {
        let l = self.lanes();
        let [n, cb_all, h, wd] = [x.shape[0], x.blocks(), x.shape[2], x.shape[3]];
        let [o, cg, kh, kw] = w.shape;
        let [oh, ow] = [y.shape[2], y.shape[3]];
        let (s, d, pad) = (p.stride, p.dilation.max(1), p.padding);
        let tiles = self.set().grouped_tiles;
        // The widest tile whose input row fits the kernel's buffer (the plan sends no
        // layer whose kernel alone does not fit).
        let reach = (kw - 1) * d + 1;
        debug_assert!(reach <= SPREAD_ROW);
        let mut pmax = tiles.len().min((SPREAD_ROW - reach) / s + 1);
        // A 3-wide kernel at stride 1 or 2 keeps the tile's accumulators, a rotation's
        // weights and rotated columns in registers (`narrow_row3`) when they fit (AVX2's
        // 16 registers: tiles of up to 8 pixels for that).
        let in_registers = self
            .set()
            .vector_registers
            .saturating_sub(NARROW_ROW3_REGISTERS);
        if kw == 3 && s <= 2 && d == 1 && in_registers >= 4 {
            pmax = pmax.min(in_registers);
        }
        let (ob, plane, x_block) = (o / l, oh * ow, h * wd * l);
        let (in_image, out_image, w_block) = (cb_all * x_block, ob * plane * l, kh * kw * cg * l);
        // A group of several blocks (`cg` a multiple of `l`) reads its `blocks` input blocks,
        // from the group's first; narrower groups lie in their output block's own.
        let blocks = cg.div_ceil(l);
        let in_block = |g: usize| g / blocks * blocks;
        // Tasks: (image, output block, run of output rows), about eight per thread.
        let wanted = 8 * rayon::current_num_threads();
        let runs = wanted.div_ceil(n * ob).clamp(1, oh);
        let run_rows = oh.div_ceil(runs);
        let runs = oh.div_ceil(run_rows);
        let outp = OutPtr(y.data.as_mut_ptr());
        let task = |t: usize| {
            let (b, rest) = (t / (ob * runs), t % (ob * runs));
            let (g, run) = (rest / runs, rest % runs);
            // Each row in balanced tiles (56 = 12 + 4 x 11).
            let count = ow.div_ceil(pmax);
            let (base, extra) = (ow / count, ow % count);
            for oy in run * run_rows..((run + 1) * run_rows).min(oh) {
                let mut ox = 0;
                for ti in 0..count {
                    let pn = base + usize::from(ti < extra);
                    let at = b * out_image + g * plane * l + (oy * ow + ox) * l;
                    let tile = BlockedTile {
                        x: x.data[b * in_image + in_block(g) * x_block..].as_ptr(),
                        x_off: std::ptr::null(),
                        x_cb: x_block,
                        x_row: wd * l,
                        x_col: d * l,
                        cb: blocks,
                        icb: l,
                        kh,
                        kw,
                        w: w.data[g * w_block..].as_ptr(),
                        // SAFETY: inside the output: image b, block g, pixel (oy, ox).
                        out: unsafe { outp.get().add(at) },
                        out_ob: plane * l,
                        f: 1,
                        bias: bias.map_or(std::ptr::null(), |v| v[g * l..].as_ptr()),
                        // SAFETY: as `out`.
                        residual: residual.at(at, unsafe { outp.get().add(at) }),
                        relu,
                        ahead: std::ptr::null(),
                        ahead_lines: 0,
                        narrow: NarrowRow {
                            group: cg.min(l),
                            h,
                            w: wd,
                            iy0: (oy * s) as isize - pad as isize,
                            ix0: (ox * s) as isize - pad as isize,
                            stride: s,
                            dilation: d,
                        },
                    };
                    // SAFETY: the tile reads rows and columns of blocks `in_block(g)..+
                    // blocks` of image b (block g's group's) only inside their `h x wd`
                    // pixels (the others are padding: skipped or zeros), over `(pn - 1) s +
                    // reach <= SPREAD_ROW` columns; block g's weights are `w_block` floats; it writes (and reads, for the residual)
                    // `pn` pixels of block g inside image b's output. Tasks differ in (b,
                    // g, run): disjoint outputs.
                    unsafe { (tiles[pn - 1])(&tile) };
                    ox += pn;
                }
                debug_assert_eq!(ox, ow);
            }
        };
        let tasks = n * ob * runs;
        let work = [plane, o, cg, kh, kw]
            .iter()
            .fold(n, |a, &v| a.saturating_mul(v));
        if work >= 1 << 18 && rayon::current_num_threads() > 1 {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
    }
}

/// Rows `r0..r1` of an image's input blocks padded by `pad` on every side (`pw` the
/// padded width): what one task of a grouped convolution reads, or (all `ph` rows) the
/// padded copy the other blocked routes read.
struct RowSpan {
    pad: usize,
    h: usize,
    wd: usize,
    pw: usize,
    l: usize,
    r0: usize,
    r1: usize,
}

impl RowSpan {
    /// Writes rows `r0..r1` of each of the `blocks` unpadded `[h][wd][l]` planes of
    /// `src`, padded, into `dst` (resized to `blocks (r1 - r0) pw l` floats, every one
    /// written).
    fn pad_rows(&self, src: &[f32], blocks: usize, dst: &mut Vec<f32>) {
        let RowSpan {
            h,
            wd,
            pw,
            l,
            r0,
            r1,
            ..
        } = *self;
        let size = (r1 - r0) * pw * l;
        dst.resize(blocks * size, 0.0);
        for (plane, out) in src.chunks_exact(h * wd * l).zip(dst.chunks_exact_mut(size)) {
            self.pad_plane(plane, out);
        }
    }

    /// Rows `r0..r1` of one unpadded `[h][wd][l]` plane, padded, into `out` (`(r1 - r0) pw
    /// l` floats, every one written: a reused buffer needs no clearing).
    fn pad_plane(&self, plane: &[f32], out: &mut [f32]) {
        let RowSpan {
            pad,
            h,
            wd,
            pw,
            l,
            r0,
            r1,
        } = *self;
        for (r, out) in (r0..r1).zip(out.chunks_exact_mut(pw * l)) {
            match r.checked_sub(pad).filter(|&iy| iy < h) {
                Some(iy) => {
                    let (left, rest) = out.split_at_mut(pad * l);
                    left.fill(0.0);
                    let (mid, right) = rest.split_at_mut(wd * l);
                    mid.copy_from_slice(&plane[iy * wd * l..(iy + 1) * wd * l]);
                    right.fill(0.0);
                }
                None => out.fill(0.0),
            }
        }
    }
}

/// What a blocked route's tiles add to their sums besides the bias: nothing, a residual
/// tensor of the output's shape, or what the output already holds
/// ([`Epilogue::Accumulate`]: a residual block's shortcut, summed in its own memory).
/// Either way a tile reads each value just before it writes the same place.
#[derive(Clone, Copy)]
pub(super) enum BlockedAdd<'a> {
    Nothing,
    Residual(&'a BlockedTensor),
    Output,
}

impl BlockedAdd<'_> {
    /// The tile's residual pointer for output offset `at`, whose address is `out`.
    pub(super) fn at(self, at: usize, out: *mut f32) -> *const f32 {
        match self {
            BlockedAdd::Nothing => std::ptr::null(),
            BlockedAdd::Residual(r) => r.data[at..].as_ptr(),
            BlockedAdd::Output => out,
        }
    }

    /// Whether a residual tensor has `len` floats, as the output (true without one).
    pub(super) fn fits(self, len: usize) -> bool {
        match self {
            BlockedAdd::Residual(r) => r.data.len() == len,
            _ => true,
        }
    }
}

/// A blocked route's epilogue as its tile applies it: the bias and the residual or the
/// output's own values (in either order: all are sums), then the ReLU, which must come
/// last; `epilogue::check` has refused the other steps.
pub(super) fn blocked_epilogue<'a>(
    op: &'static str,
    epilogue: &[Epilogue<'a>],
) -> Result<(Option<&'a [f32]>, BlockedAdd<'a>, bool)> {
    let (mut bias, mut residual, mut relu) = (None, BlockedAdd::Nothing, false);
    for (i, step) in epilogue.iter().enumerate() {
        match *step {
            Epilogue::Bias(b) => bias = Some(b),
            Epilogue::Residual(Residual::Blocked(r)) => residual = BlockedAdd::Residual(r),
            Epilogue::Accumulate => residual = BlockedAdd::Output,
            Epilogue::Relu if i + 1 == epilogue.len() => relu = true,
            Epilogue::Relu => {
                return Err(TensorError::InvalidArgument {
                    op,
                    reason: "the blocked kernel applies ReLU after the bias and the \
                             residual: put Relu last"
                        .into(),
                })
            }
            // `check` rejected the others.
            Epilogue::Residual(_) | Epilogue::Statistics(_) => {
                unreachable!("checked")
            }
        }
    }
    Ok((bias, residual, relu))
}
