//! The SIMD kernels, their dispatch, and safe tensor-level operations over them.
//!
//! # Layout
//!
//! - [`simd`]: the `Simd` trait, the small vector vocabulary each tier implements.
//! - [`body`]: every kernel body, written once over `Simd`, `#[inline(always)]`.
//! - `generic`, `x86_64::avx2`, `x86_64::avx512`, `aarch64::neon`: one module per tier.
//!   Each implements `Simd` with its intrinsics and stamps out its entry points with
//!   [`tier_entry_points!`]: `#[target_feature]` functions that instantiate the bodies,
//!   collected in a static [`KernelSet`] of function pointers.
//! - [`Kernels`] (this file): the safe API. It is only handed out for a tier the CPU
//!   supports, checks every shape and length, splits large work across threads with
//!   rayon, and only then calls through the function pointers.
//!
//! # Adding a kernel
//!
//! Write the body in `body.rs` over `Simd`; add a field to `KernelSet` and a line to
//! `tier_entry_points!`; add a safe method on `Kernels`; add the naive version to
//! `crate::reference`; add a property test in `tests/kernels_match_reference.rs`. Every
//! tier gets the kernel at once, and the test runs it in every tier the CPU has.

#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;
pub(crate) mod blocked_tile;
pub(crate) mod body;
pub(crate) mod direct_tile;
pub(crate) mod dot;
pub(crate) mod generic;
pub(crate) mod microkernel;
pub(crate) mod normalise;
pub(crate) mod outer;
pub(crate) mod simd;
pub(crate) mod winograd;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;

use rayon::prelude::*;

use crate::error::{Result, TensorError};
use crate::isa::{self, Isa, IsaError};
use crate::tensor::Tensor;

/// The geometry of a 2-D pooling window: `[height, width]` pairs, as PyTorch's
/// `MaxPool2d(kernel_size, stride, padding, dilation, ceil_mode)`. Average pooling takes
/// it inside an [`AvgPool2d`] (without dilation, which PyTorch's `AvgPool2d` has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2d {
    /// The window's `[height, width]`.
    pub kernel: [usize; 2],
    /// The step between windows, `[down, across]`.
    pub stride: [usize; 2],
    /// Implicit padding on each side, `[top and bottom, left and right]` (max pooling
    /// never picks it; average pooling counts it or not, see [`AvgPool2d`]).
    pub padding: [usize; 2],
    /// PyTorch's `ceil_mode`: the output size rounds up, so a last window that runs
    /// past the (padded) input still makes an output, provided it starts inside the
    /// input or its left padding; it covers only what it overlaps.
    pub ceil_mode: bool,
    /// The spacing of the window's taps, `[down, across]` (1: adjacent). Max pooling
    /// only; a window whose taps all fall in the padding gives `-inf`, as in PyTorch.
    pub dilation: [usize; 2],
}

impl Pool2d {
    /// A square window (`ceil_mode` off).
    pub fn square(kernel: usize, stride: usize, padding: usize) -> Self {
        Pool2d {
            kernel: [kernel; 2],
            stride: [stride; 2],
            padding: [padding; 2],
            ceil_mode: false,
            dilation: [1; 2],
        }
    }

    /// The same window with its taps `dilation` apart on both axes.
    pub fn with_dilation(mut self, dilation: usize) -> Self {
        self.dilation = [dilation; 2];
        self
    }

    /// The same window with `ceil_mode` set to `on`.
    pub fn with_ceil_mode(mut self, on: bool) -> Self {
        self.ceil_mode = on;
        self
    }

    /// The pooling after a ResNet's stem: 3x3, stride 2, padding 1.
    pub const RESNET_STEM: Pool2d = Pool2d {
        kernel: [3, 3],
        stride: [2, 2],
        padding: [1, 1],
        ceil_mode: false,
        dilation: [1, 1],
    };

    /// The output `[height, width]` for an `h x w` input, or why the geometry is invalid:
    /// a zero kernel or stride, padding more than half the kernel (PyTorch's rule, which
    /// guarantees every window sees at least one input), or a window larger than the
    /// padded input. With `ceil_mode`, PyTorch's formula: `ceil((size + 2p - k) / s) + 1`
    /// outputs, less one if the last window would start past the input and its left
    /// padding.
    pub fn output_size(&self, h: usize, w: usize) -> Result<[usize; 2]> {
        let invalid = |reason: String| TensorError::InvalidArgument {
            op: "pool2d",
            reason,
        };
        let mut out = [0; 2];
        for (d, (&size, name)) in [h, w].iter().zip(["height", "width"]).enumerate() {
            let (k, s, p, dil) = (
                self.kernel[d],
                self.stride[d],
                self.padding[d],
                self.dilation[d],
            );
            if k == 0 || s == 0 || dil == 0 {
                return Err(invalid(format!(
                    "kernel, stride and dilation must be positive, got {self:?}"
                )));
            }
            if p > k / 2 {
                return Err(invalid(format!(
                    "padding {p} is more than half the kernel {k} ({name})"
                )));
            }
            if size == 0 {
                return Err(invalid(format!("cannot pool an empty {name}")));
            }
            if size > i32::MAX as usize
                || s > i32::MAX as usize / 16
                || k > i32::MAX as usize / 16
                || dil > i32::MAX as usize / 16
            {
                return Err(invalid(format!(
                    "{name} {size}, kernel {k}, stride {s} or dilation {dil} is too large"
                )));
            }
            // A dilated window spans `dil (k - 1) + 1` cells.
            let k = dil * (k - 1) + 1;
            // PyTorch's formula, in signed arithmetic (a window larger than the padded
            // input makes no output without `ceil_mode`, one with it).
            let span = (size + 2 * p) as isize - k as isize;
            let (s_, ceil) = (s as isize, self.ceil_mode);
            let mut n = (span + if ceil { s_ - 1 } else { 0 }).div_euclid(s_) + 1;
            // With `ceil_mode` the last window must start inside the input or its left
            // padding.
            if ceil && n > 1 && (n - 1) * s_ >= (size + p) as isize {
                n -= 1;
            }
            if n < 1 {
                return Err(invalid(format!(
                    "kernel {k} is larger than the padded input {name} {size} + 2 * {p}{}",
                    if ceil { "" } else { " (ceil_mode is off)" }
                )));
            }
            out[d] = n as usize;
        }
        Ok(out)
    }

    /// The length of the padded row the NCHW kernels pool a row from: the input row
    /// with `padding` cells on either side, or longer where `ceil_mode`'s last window
    /// runs past it.
    pub(crate) fn padded_row_len(&self, w: usize, ow: usize) -> usize {
        let span = self.dilation[1] * (self.kernel[1] - 1) + 1;
        let reach = (ow.max(1) - 1) * self.stride[1] + span;
        (w + 2 * self.padding[1]).max(reach)
    }
}

/// Where each output of a max pool took its value from: for an `[N, C, H, W]` input
/// pooled to `[N, C, OH, OW]`, one offset per output into its input plane (`iy W + ix`),
/// the window's first maximum in row-major order or its last NaN (PyTorch's rule), or
/// `u32::MAX` for a window with no input (a dilated window over padding only). Made by
/// [`Kernels::max_pool2d_with_indices`] and read by
/// [`Kernels::max_pool2d_backward_from_indices`], which only scatters `dY` (PyTorch's
/// `return_indices`, counted within a plane as PyTorch counts them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaxPoolIndices {
    input: [usize; 4],
    output: [usize; 2],
    data: Vec<u32>,
}

impl MaxPoolIndices {
    /// The pooled input's `[N, C, H, W]`.
    pub fn input_shape(&self) -> [usize; 4] {
        self.input
    }

    /// The output's `[N, C, OH, OW]`.
    pub fn output_shape(&self) -> [usize; 4] {
        let [n, c, _, _] = self.input;
        [n, c, self.output[0], self.output[1]]
    }

    /// The offsets, output by output (`u32::MAX`: no winner).
    pub fn as_slice(&self) -> &[u32] {
        &self.data
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<u32>()
    }
}

/// Average pooling, as PyTorch's `AvgPool2d(kernel_size, stride, padding, ceil_mode,
/// count_include_pad)` (no `divisor_override`): each output is the sum over its window's
/// inputs divided by the window's size, where the size counts the padding cells inside
/// the padded input when `count_include_pad` is set (PyTorch's default), and only the
/// input cells otherwise. A `ceil_mode` window's part past the padded input never counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPool2d {
    /// Window, stride, padding and `ceil_mode`.
    pub window: Pool2d,
    /// Whether padding cells count in the divisor.
    pub count_include_pad: bool,
}

impl AvgPool2d {
    /// Average pooling over `window`, counting padding in the divisor or not.
    pub fn new(window: Pool2d, count_include_pad: bool) -> Self {
        AvgPool2d {
            window,
            count_include_pad,
        }
    }

    /// The shortcut's pooling of timm's ResNet-D (`avg_down`): 2x2 windows at `stride`,
    /// `ceil_mode=True`, `count_include_pad=False`.
    pub fn resnet_d(stride: usize) -> Self {
        AvgPool2d::new(Pool2d::square(2, stride, 0).with_ceil_mode(true), false)
    }

    /// The output `[height, width]` for an `h x w` input (see [`Pool2d::output_size`]);
    /// a dilated window is an error (PyTorch's `AvgPool2d` has no dilation).
    pub fn output_size(&self, h: usize, w: usize) -> Result<[usize; 2]> {
        if self.window.dilation != [1, 1] {
            return Err(TensorError::InvalidArgument {
                op: "avg_pool2d",
                reason: format!(
                    "average pooling has no dilation (PyTorch's AvgPool2d neither), got {:?}",
                    self.window.dilation
                ),
            });
        }
        self.window.output_size(h, w)
    }

    /// How many cells output `o` of one axis divides by: its window's cells inside
    /// `[-pad, size + pad)` (`count_include_pad`) or inside `[0, size)`.
    pub(crate) fn count(&self, axis: usize, o: usize, size: usize) -> usize {
        let (k, s, p) = (
            self.window.kernel[axis],
            self.window.stride[axis],
            self.window.padding[axis],
        );
        // In padded coordinates: the window is [o s, o s + k), the input [p, size + p).
        let start = o * s;
        let end = start + k;
        if self.count_include_pad {
            end.min(size + 2 * p) - start
        } else {
            end.min(size + p).saturating_sub(start.max(p))
        }
    }
}

/// One tier's kernels, as function pointers.
///
/// The pointers are `unsafe fn`: they require the tier's CPU features and valid memory.
/// A `KernelSet` is only reachable through [`Kernels`], which is only built for a tier
/// that [`Isa::check_supported`] accepted, and whose methods check every length.
pub(crate) struct KernelSet {
    pub isa: Isa,
    pub lanes: usize,
    pub scale_shift: unsafe fn(*const f32, *mut f32, usize, f32, f32),
    pub scale_shift_relu: unsafe fn(*const f32, *mut f32, usize, f32, f32),
    /// Rows at one pitch to rows at another, copied or normalised (`body::copy_rows`;
    /// [`KernelSet::copy_rows`] checks the bounds).
    pub copy_rows: CopyRowsFn,
    pub relu: unsafe fn(*const f32, *mut f32, usize),
    pub add: unsafe fn(*const f32, *const f32, *mut f32, usize),
    pub add_relu: unsafe fn(*const f32, *const f32, *mut f32, usize),
    pub relu_backward: unsafe fn(*const f32, *const f32, *mut f32, usize),
    pub bn_backward_sums: BnSumsFn,
    pub bn_backward_apply: BnApplyFn,
    pub sum: unsafe fn(*const f32, usize) -> f32,
    pub sum_sq_dev: unsafe fn(*const f32, usize, f32) -> f32,
    pub softmax_row: unsafe fn(*const f32, *mut f32, usize),
    pub log_softmax_row: unsafe fn(*const f32, *mut f32, usize),
    #[allow(clippy::type_complexity)]
    pub max_pool_plane:
        unsafe fn(*const f32, usize, usize, *mut f32, usize, usize, &Pool2d, *mut f32),
    /// Max pooling with each output's winner (`body::max_pool_plane_indices`).
    pub max_pool_plane_indices: MaxPoolIndicesFn,
    #[allow(clippy::type_complexity)]
    pub avg_pool_plane:
        unsafe fn(*const f32, usize, usize, *mut f32, usize, usize, &AvgPool2d, *mut f32),
    /// The peak-FMA probe (see [`crate::peak`]); not an operation.
    pub fma_chains: unsafe fn(usize, f32) -> f32,
    /// Rows of the GEMM microkernel's tile.
    pub gemm_mr: usize,
    /// The GEMM microkernels by width: `gemm_tiles[v - 1]` computes `MR x (v * lanes)`.
    /// The last is the full tile; the narrower ones finish ragged right edges.
    pub gemm_tiles: &'static [GemmTileFn],
    /// The narrow tile for right edges of at most `gemm_narrow_max` valid columns
    /// (0: this tier does not use it), vectorised along the rows
    /// (`microkernel::gemm_narrow_tile`).
    pub gemm_narrow_max: usize,
    pub gemm_narrow: GemmTileFn,
    /// Output channels of the direct-convolution tile.
    pub direct_ob: usize,
    /// The direct-convolution microkernels by width: `direct_tiles[v - 1]` computes
    /// `direct_ob` channels by `v` vectors of pixels.
    pub direct_tiles: &'static [DirectTileFn],
    /// Rows of `A` and of `B` in the row-dot (weight-gradient) tile.
    pub dot_mi: usize,
    pub dot_nj: usize,
    /// The row-dot microkernel (`kernels::dot`).
    pub dot_tile: unsafe fn(&dot::DotTile),
    /// Output-channel blocks per tile of the blocked-layout convolution
    /// (`blocked_tile::blocked_tile`), and its microkernels by pixel count:
    /// `blocked_tiles[p - 1]` computes `blocked_f` blocks by `p` pixels.
    pub blocked_f: usize,
    pub blocked_tiles: &'static [BlockedTileFn],
    /// The same kernel for a single output block (`F = 1`), by up to
    /// `blocked1_tiles.len()` pixels: grouped convolutions in the blocked layout, whose
    /// output blocks each read their own group's input blocks.
    pub blocked1_tiles: &'static [BlockedTileFn],
    /// The narrow-group tile (`blocked_tile::narrow_tile`) by up to
    /// `grouped_tiles.len()` pixels: one output block whose groups are at most a block
    /// wide, each lane multiplying only its own group's inputs.
    pub grouped_tiles: &'static [BlockedTileFn],
    /// Winograd F(4x4, 3x3)'s input and output transforms of one tile and channel block
    /// (`winograd::input_tile`, `winograd::output_tile`).
    pub winograd_input: unsafe fn(&winograd::WinogradIn),
    pub winograd_output: unsafe fn(&winograd::WinogradOut),
    /// The same for F(2x2, 3x3) (`winograd::input_tile2`, `winograd::output_tile2`).
    pub winograd2_input: unsafe fn(&winograd::WinogradIn),
    pub winograd2_output: unsafe fn(&winograd::WinogradOut),
    /// The weight gradient's transforms: of a tile of `dY`, and back from the summed
    /// products to `dW` (`winograd::grad_output_tile`, `winograd::grad_kernel_tile`).
    pub winograd_grad_dy: unsafe fn(&winograd::WinogradIn),
    pub winograd_grad_dw: unsafe fn(&winograd::WinogradGrad),
    /// The kernel transform of `LANES` output channels' kernels for one input channel,
    /// in `f32` (`winograd::kernel_tile`), for weights transformed on the fly.
    pub winograd_kernel: unsafe fn(&winograd::WinogradKernel),
    /// Transposes a `lanes x lanes` block: `(src, src row stride, dst, dst row stride)`.
    pub transpose_block: unsafe fn(*const f32, usize, *mut f32, usize),
    /// The tier's vector registers (`Simd::REGISTERS`): how many pixels a kernel that
    /// keeps its weights in registers can take.
    pub vector_registers: usize,
    /// The weight gradient's outer-product microkernels (`outer::outer_tile`) as
    /// `(F, P, tile)`: `F` output blocks by `P` taps, in increasing `F`.
    pub outer_tiles: &'static [(usize, usize, OuterTileFn)],
    /// Every microkernel's function name (`avx2_f32_6x16`, `avx2_f32_4x24_direct`, ...).
    pub tile_names: &'static [&'static str],
}

impl KernelSet {
    /// Copies `rows` rows of `width` floats from `src` (row `r` at `r * src_pitch`) to
    /// `dst` (at `r * dst_pitch`), each value `relu(scale x + shift)` with `affine =
    /// Some([scale, shift])`. Panics if a row would reach past either slice.
    pub(crate) fn copy_rows(
        &self,
        src: &[f32],
        src_pitch: usize,
        dst: &mut [f32],
        dst_pitch: usize,
        [rows, width]: [usize; 2],
        affine: Option<[f32; 2]>,
    ) {
        if rows == 0 || width == 0 {
            return;
        }
        let reach = |pitch: usize| (rows - 1) * pitch + width;
        assert!(reach(src_pitch) <= src.len(), "copy_rows: source too short");
        assert!(
            reach(dst_pitch) <= dst.len(),
            "copy_rows: destination too short"
        );
        // SAFETY: every row lies inside its slice (checked above); the kernel set's
        // features were checked when it was handed out.
        unsafe {
            (self.copy_rows)(
                src.as_ptr(),
                src_pitch,
                dst.as_mut_ptr(),
                dst_pitch,
                [rows, width],
                affine,
            )
        };
    }

    /// The weight gradient's outer-product tile for `o` output channels: the widest
    /// whose `F` vectors divide the channels, as `(F, taps, kernel)`, or `None` when `o`
    /// is not a whole number of vectors (then only the row-dot kernel runs it).
    pub(crate) fn outer_tile(&self, o: usize) -> Option<(usize, usize, OuterTileFn)> {
        if !o.is_multiple_of(self.lanes) {
            return None;
        }
        let blocks = o / self.lanes;
        self.outer_tiles
            .iter()
            .rev()
            .find(|(f, _, _)| blocks.is_multiple_of(*f))
            .copied()
    }
}

/// An outer-product (weight-gradient) microkernel entry point (`outer::outer_tile`).
pub(crate) type OuterTileFn = unsafe fn(&outer::OuterTile);

/// A blocked-layout convolution microkernel entry point (`blocked_tile::blocked_tile`).
pub(crate) type BlockedTileFn = unsafe fn(&blocked_tile::BlockedTile);

/// A direct-convolution microkernel entry point:
/// `(k, offsets, weights, input, vector offsets, output)`.
pub(crate) type DirectTileFn =
    unsafe fn(usize, *const usize, *const f32, *const f32, *const usize, &microkernel::TileOut);

/// Batch norm's backward sums over a plane: `(dy, x, n, mean, ReLU's [scale, shift])`
/// (`body::bn_backward_sums`).
pub(crate) type BnSumsFn =
    unsafe fn(*const f32, *const f32, usize, f32, Option<[f32; 2]>) -> [f32; 2];

/// Batch norm's input gradient over a plane: `(dy, x, dx, n, [a, b, c], ReLU's [scale,
/// shift])` (`body::bn_backward_apply`).
pub(crate) type BnApplyFn =
    unsafe fn(*const f32, *const f32, *mut f32, usize, [f32; 3], Option<[f32; 2]>);

/// A GEMM microkernel entry point: `(kc, packed A panel, B panel, B row stride, output)`.
pub(crate) type GemmTileFn = unsafe fn(usize, *const f32, *const f32, usize, &microkernel::TileOut);

/// Asks for the cache line holding `p` in the level-2 cache (a hint: it reads nothing
/// and never faults, whatever the address; a no-op off x86-64 and under Miri).
#[inline(always)]
pub(crate) fn prefetch_l2(p: *const f32) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: a prefetch reads nothing and cannot fault; SSE is part of x86-64.
    unsafe {
        core::arch::x86_64::_mm_prefetch(p as *const i8, core::arch::x86_64::_MM_HINT_T1)
    };
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = p;
}

/// Share `i` of `shares` equal runs of `data`'s cache lines (16 floats each): its first
/// line and how many lines it has (none past the end). A loop of `shares` steps that
/// prefetches its share each spreads the whole of `data` over them.
#[inline]
pub(crate) fn line_share(data: &[f32], i: usize, shares: usize) -> (*const f32, usize) {
    let lines = data.len().div_ceil(16);
    if lines == 0 || shares == 0 {
        return (data.as_ptr(), 0);
    }
    let per = lines.div_ceil(shares);
    let start = (i * per).min(lines);
    let end = (start + per).min(lines);
    (data.as_ptr().wrapping_add(start * 16), end - start)
}

/// Prefetches share `i` of `shares` of `data`'s lines into L2 ([`line_share`],
/// [`prefetch_l2`]).
#[inline]
pub(crate) fn prefetch_share(data: &[f32], i: usize, shares: usize) {
    let (first, lines) = line_share(data, i, shares);
    for line in 0..lines {
        prefetch_l2(first.wrapping_add(line * 16));
    }
}

/// `(src, src pitch, dst, dst pitch, [rows, width], affine)` (`body::copy_rows`).
pub(crate) type CopyRowsFn =
    unsafe fn(*const f32, usize, *mut f32, usize, [usize; 2], Option<[f32; 2]>);

/// Max pooling of a plane with its winners: `(src, h, w, dst, indices, oh, ow, pool,
/// scratch)` (`body::max_pool_plane_indices`).
pub(crate) type MaxPoolIndicesFn =
    unsafe fn(*const f32, usize, usize, *mut f32, *mut u32, usize, usize, &Pool2d, *mut f32);

/// The operations a `KernelSet` provides, for [`Kernels::kernel_names`].
pub const OPERATIONS: [&str; 15] = [
    "scale_shift",
    "scale_shift_relu",
    "relu",
    "add",
    "add_relu",
    "relu_backward",
    "bn_backward_sums",
    "bn_backward_apply",
    "sum",
    "sum_sq_dev",
    "softmax_row",
    "log_softmax_row",
    "max_pool_plane",
    "max_pool_plane_indices",
    "avg_pool_plane",
];

/// Stamps out a tier's `#[target_feature]` entry points and its `static KERNELS`.
///
/// `tier_entry_points!(Isa::X, SimdType, gemm_mr = 8, gemm_nv = [(1, x_f32_8x16), ..],
/// gemm_narrow = (4, x_f32_8x4_narrow), direct_ob = 8, direct_xv = [(1, x_f32_8x16_direct),
/// ..], dot = [4, 6, x_f32_4x6_rowdot], blocked = [4; (1, x_f32_4x16x1_blocked), ..],
/// outer = [(2, 12, x_f32_2x16x12_outer), ..], #[target_feature(enable = "...")])`:
/// the GEMM tile is `gemm_mr` rows by up to the
/// last `gemm_nv` vectors, and right edges of up to `gemm_narrow` valid columns take
/// the narrow tile (0: never); the direct-convolution tile is `direct_ob` channels by up to
/// the last `direct_xv` vectors of pixels; the row-dot tile is `dot[0] x dot[1]` vector
/// sums; the blocked-layout convolution tile is `F` channel blocks by up to the last
/// of `blocked = [F; 1, 2, ..]` pixels; the weight gradient's outer-product tiles are
/// `outer = [(F, P), ..]`, `F` output blocks by `P` taps, in increasing `F` (a layer
/// takes the widest whose `F` divides its output blocks). Each tile is named by an
/// identifier, its function's name. The last argument is the attribute every entry
/// point gets: the tier's `target_feature` (the generic tier passes `#[inline]`, which
/// asks for nothing).
macro_rules! tier_entry_points {
    ($isa:expr, $S:ty, gemm_mr = $mr:literal, gemm_nv = [$(($nv:literal, $gemm:ident)),+],
     gemm_narrow = ($narrow:literal, $narrow_name:ident), direct_ob = $ob:literal,
     direct_xv = [$(($xv:literal, $direct:ident)),+],
     dot = [$mi:literal, $nj:literal, $dot:ident],
     blocked = [$bf:literal; $(($bp:literal, $blocked:ident)),+],
     blocked1 = [$(($bp1:literal, $blocked1:ident)),+],
     grouped = [$(($gp:literal, $grouped:ident)),+],
     outer = [$(($of:literal, $op:literal, $outer:ident)),+],
     #[$attr:meta]) => {
        mod entry {
            use super::*;
            use $crate::kernels::{
                blocked_tile, body, direct_tile, dot, microkernel, outer, winograd, BlockedTileFn, DirectTileFn,
                GemmTileFn, KernelSet, OuterTileFn, Pool2d, AvgPool2d,
            };

            // Every microkernel is its own function named by tier, type, tile and
            // family (`avx2_f32_6x16`, `avx2_f32_4x24_direct`), so a profile or a
            // failing test names the tile; `Kernels::kernel_names` lists the same names
            // (a test checks that they agree).
            $(
                #[$attr]
                unsafe fn $blocked(t: &blocked_tile::BlockedTile) {
                    blocked_tile::blocked_tile::<$S, $bf, $bp>(t)
                }
            )+
            static BLOCKED_TILES: &[BlockedTileFn] = &[$($blocked),+];

            $(
                #[$attr]
                unsafe fn $blocked1(t: &blocked_tile::BlockedTile) {
                    blocked_tile::blocked_tile::<$S, 1, $bp1>(t)
                }
            )+
            static BLOCKED1_TILES: &[BlockedTileFn] = &[$($blocked1),+];

            $(
                #[$attr]
                unsafe fn $grouped(t: &blocked_tile::BlockedTile) {
                    blocked_tile::narrow_tile_any::<$S, $gp>(t)
                }
            )+
            static GROUPED_TILES: &[BlockedTileFn] = &[$($grouped),+];

            $(
                #[$attr]
                unsafe fn $outer(t: &outer::OuterTile) {
                    outer::outer_tile::<$S, $of, $op>(t)
                }
            )+
            static OUTER_TILES: &[(usize, usize, OuterTileFn)] = &[$(($of, $op, $outer)),+];

            #[$attr]
            unsafe fn $dot(t: &dot::DotTile) {
                dot::dot_tile::<$S, $mi, $nj>(t)
            }

            $(
                #[$attr]
                unsafe fn $direct(
                    k: usize, offs: *const usize, w: *const f32, x: *const f32,
                    vo: *const usize, out: &microkernel::TileOut,
                ) {
                    direct_tile::direct_tile::<$S, $ob, $xv>(k, offs, w, x, vo, out)
                }
            )+
            static DIRECT_TILES: &[DirectTileFn] = &[$($direct),+];

            $(
                #[$attr]
                unsafe fn $gemm(
                    kc: usize, a: *const f32, b: *const f32, ldb: usize,
                    out: &microkernel::TileOut,
                ) {
                    microkernel::gemm_tile::<$S, $mr, $nv>(kc, a, b, ldb, out)
                }
            )+
            static GEMM_TILES: &[GemmTileFn] = &[$($gemm),+];

            /// Every microkernel's name, as its function is named.
            static TILE_NAMES: &[&str] = &[
                $(stringify!($gemm)),+, stringify!($narrow_name), $(stringify!($direct)),+,
                stringify!($dot), $(stringify!($blocked)),+, $(stringify!($blocked1)),+,
                $(stringify!($grouped)),+,
                $(stringify!($outer)),+
            ];

            #[$attr]
            unsafe fn $narrow_name(
                kc: usize, a: *const f32, b: *const f32, ldb: usize, out: &microkernel::TileOut,
            ) {
                match out.n {
                    1 => microkernel::gemm_narrow_tile::<$mr, 1>(kc, a, b, ldb, out),
                    2 => microkernel::gemm_narrow_tile::<$mr, 2>(kc, a, b, ldb, out),
                    3 => microkernel::gemm_narrow_tile::<$mr, 3>(kc, a, b, ldb, out),
                    _ => microkernel::gemm_narrow_tile::<$mr, 4>(kc, a, b, ldb, out),
                }
            }

            // SAFETY (all entry points): the caller guarantees the CPU features of the
            // tier (a KernelSet is only handed out after detection) and pointers valid
            // for the given lengths (checked by the safe wrappers in `kernels`).
            #[$attr]
            unsafe fn scale_shift(s: *const f32, d: *mut f32, n: usize, a: f32, b: f32) {
                body::scale_shift::<$S>(s, d, n, a, b)
            }
            #[$attr]
            unsafe fn scale_shift_relu(s: *const f32, d: *mut f32, n: usize, a: f32, b: f32) {
                body::scale_shift_relu::<$S>(s, d, n, a, b)
            }
            #[$attr]
            unsafe fn copy_rows(
                s: *const f32, sp: usize, d: *mut f32, dp: usize, shape: [usize; 2],
                affine: Option<[f32; 2]>,
            ) {
                body::copy_rows::<$S>(s, sp, d, dp, shape, affine)
            }
            #[$attr]
            unsafe fn relu(s: *const f32, d: *mut f32, n: usize) {
                body::relu::<$S>(s, d, n)
            }
            #[$attr]
            unsafe fn add(a: *const f32, b: *const f32, d: *mut f32, n: usize) {
                body::add::<$S>(a, b, d, n)
            }
            #[$attr]
            unsafe fn add_relu(a: *const f32, b: *const f32, d: *mut f32, n: usize) {
                body::add_relu::<$S>(a, b, d, n)
            }
            #[$attr]
            unsafe fn relu_backward(dy: *const f32, y: *const f32, dx: *mut f32, n: usize) {
                body::relu_backward::<$S>(dy, y, dx, n)
            }
            #[$attr]
            unsafe fn bn_backward_sums(
                dy: *const f32, x: *const f32, n: usize, mean: f32, relu: Option<[f32; 2]>,
            ) -> [f32; 2] {
                body::bn_backward_sums::<$S>(dy, x, n, mean, relu)
            }
            #[$attr]
            unsafe fn bn_backward_apply(
                dy: *const f32, x: *const f32, dx: *mut f32, n: usize, coef: [f32; 3],
                relu: Option<[f32; 2]>,
            ) {
                body::bn_backward_apply::<$S>(dy, x, dx, n, coef, relu)
            }
            #[$attr]
            unsafe fn sum(s: *const f32, n: usize) -> f32 {
                body::sum::<$S>(s, n)
            }
            #[$attr]
            unsafe fn sum_sq_dev(s: *const f32, n: usize, mean: f32) -> f32 {
                body::sum_sq_dev::<$S>(s, n, mean)
            }
            #[$attr]
            unsafe fn softmax_row(s: *const f32, d: *mut f32, n: usize) {
                body::softmax_row::<$S>(s, d, n)
            }
            #[$attr]
            unsafe fn log_softmax_row(s: *const f32, d: *mut f32, n: usize) {
                body::log_softmax_row::<$S>(s, d, n)
            }
            #[allow(clippy::too_many_arguments)]
            #[$attr]
            unsafe fn max_pool_plane(
                s: *const f32, h: usize, w: usize, d: *mut f32, oh: usize, ow: usize,
                p: &Pool2d, scratch: *mut f32,
            ) {
                body::max_pool_plane::<$S>(s, h, w, d, oh, ow, p, scratch)
            }
            #[allow(clippy::too_many_arguments)]
            #[$attr]
            unsafe fn max_pool_plane_indices(
                s: *const f32, h: usize, w: usize, d: *mut f32, i: *mut u32, oh: usize,
                ow: usize, p: &Pool2d, scratch: *mut f32,
            ) {
                body::max_pool_plane_indices::<$S>(s, h, w, d, i, oh, ow, p, scratch)
            }
            #[allow(clippy::too_many_arguments)]
            #[$attr]
            unsafe fn avg_pool_plane(
                s: *const f32, h: usize, w: usize, d: *mut f32, oh: usize, ow: usize,
                p: &AvgPool2d, scratch: *mut f32,
            ) {
                body::avg_pool_plane::<$S>(s, h, w, d, oh, ow, p, scratch)
            }
            #[$attr]
            unsafe fn transpose_block(s: *const f32, ss: usize, d: *mut f32, ds: usize) {
                <$S as $crate::kernels::simd::Simd>::transpose_block(s, ss, d, ds)
            }
            #[$attr]
            unsafe fn winograd_input(t: &winograd::WinogradIn) {
                winograd::input_tile::<$S>(t)
            }
            #[$attr]
            unsafe fn winograd_output(t: &winograd::WinogradOut) {
                winograd::output_tile::<$S>(t)
            }
            #[$attr]
            unsafe fn winograd2_input(t: &winograd::WinogradIn) {
                winograd::input_tile2::<$S>(t)
            }
            #[$attr]
            unsafe fn winograd2_output(t: &winograd::WinogradOut) {
                winograd::output_tile2::<$S>(t)
            }
            #[$attr]
            unsafe fn winograd_grad_dy(t: &winograd::WinogradIn) {
                winograd::grad_output_tile::<$S>(t)
            }
            #[$attr]
            unsafe fn winograd_grad_dw(t: &winograd::WinogradGrad) {
                winograd::grad_kernel_tile::<$S>(t)
            }
            #[$attr]
            unsafe fn winograd_kernel(t: &winograd::WinogradKernel) {
                winograd::kernel_tile::<$S>(t)
            }
            #[$attr]
            unsafe fn fma_chains(iters: usize, seed: f32) -> f32 {
                body::fma_chains::<$S>(iters, seed)
            }

            pub(crate) static KERNELS: KernelSet = KernelSet {
                isa: $isa,
                lanes: <$S as $crate::kernels::simd::Simd>::LANES,
                scale_shift,
                scale_shift_relu,
                copy_rows,
                relu,
                add,
                add_relu,
                relu_backward,
                bn_backward_sums,
                bn_backward_apply,
                sum,
                sum_sq_dev,
                softmax_row,
                log_softmax_row,
                max_pool_plane,
                max_pool_plane_indices,
                avg_pool_plane,
                fma_chains,
                gemm_mr: $mr,
                gemm_tiles: GEMM_TILES,
                gemm_narrow_max: $narrow,
                gemm_narrow: $narrow_name,
                direct_ob: $ob,
                direct_tiles: DIRECT_TILES,
                dot_mi: $mi,
                dot_nj: $nj,
                dot_tile: $dot,
                tile_names: TILE_NAMES,
                blocked_f: $bf,
                blocked_tiles: BLOCKED_TILES,
                blocked1_tiles: BLOCKED1_TILES,
                grouped_tiles: GROUPED_TILES,
                outer_tiles: OUTER_TILES,
                winograd_input,
                winograd_output,
                winograd2_input,
                winograd2_output,
                winograd_grad_dy,
                winograd_grad_dw,
                winograd_kernel,
                transpose_block,
                vector_registers: <$S as $crate::kernels::simd::Simd>::REGISTERS,
            };
        }
        pub(crate) use entry::KERNELS;
    };
}
pub(crate) use tier_entry_points;

/// The kernel set compiled for `isa` on this target, if any.
fn compiled_set(isa: Isa) -> Option<&'static KernelSet> {
    match isa {
        Isa::Generic => Some(&generic::KERNELS),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(&x86_64::avx2::KERNELS),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Some(&x86_64::avx512::KERNELS),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => Some(&aarch64::neon::KERNELS),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Below this many elements an operation runs on the calling thread: splitting it
/// would cost more in rayon's hand-off (a few microseconds) than the work itself.
const PARALLEL_MIN: usize = 1 << 16;
/// The least work, in elements, one rayon task is given.
const TASK_GRAIN: usize = 1 << 14;
/// The chunk length for operations with no natural plane (plain elementwise ops).
pub(crate) const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// Calls `f(index, chunk)` for each `plane`-long chunk of `data` (the last may be
/// shorter), in parallel when the data is large.
/// ReLU of one float, as the vector tiers compute it (`max(0, v)` with `v` second): NaN
/// stays NaN, as in PyTorch.
#[inline(always)]
pub(crate) fn relu1(v: f32) -> f32 {
    if 0.0 > v {
        0.0
    } else {
        v
    }
}

pub(crate) fn for_each_chunk<T: Send>(
    data: &mut [T],
    plane: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    if data.is_empty() || plane == 0 {
        return;
    }
    if data.len() < PARALLEL_MIN {
        data.chunks_mut(plane)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        let min_len = (TASK_GRAIN / plane).max(1);
        data.par_chunks_mut(plane)
            .enumerate()
            .with_min_len(min_len)
            .for_each(|(i, c)| f(i, c));
    }
}

/// Like [`for_each_chunk`], with a read-only companion slice chunked the same way.
pub(crate) fn for_each_chunk_with(
    data: &mut [f32],
    other: &[f32],
    plane: usize,
    f: impl Fn(usize, &mut [f32], &[f32]) + Sync + Send,
) {
    if data.is_empty() || plane == 0 {
        return;
    }
    if data.len() < PARALLEL_MIN {
        data.chunks_mut(plane)
            .zip(other.chunks(plane))
            .enumerate()
            .for_each(|(i, (d, o))| f(i, d, o));
    } else {
        let min_len = (TASK_GRAIN / plane).max(1);
        data.par_chunks_mut(plane)
            .zip(other.par_chunks(plane))
            .enumerate()
            .with_min_len(min_len)
            .for_each(|(i, (d, o))| f(i, d, o));
    }
}

/// A new tensor of `like`'s shape whose elements `fill` writes, chunk by chunk (over
/// rayon's pool when it is large): `fill(i, out, len)` must write all `len` floats at
/// `out`, chunk `i` of `chunk` elements (the last may be shorter). Unlike
/// `Tensor::zeros` and then a kernel, nothing is written twice: the output starts as
/// `Tensor::for_overwrite` (a recycled buffer, or the allocator's zeroed pages).
pub(crate) fn new_written(
    like: &Tensor,
    chunk: usize,
    fill: impl Fn(usize, *mut f32, usize) + Sync + Send,
) -> Result<Tensor> {
    let mut out = Tensor::for_overwrite(like.shape())?;
    for_each_chunk(out.data_mut(), chunk.max(1), |i, c| {
        fill(i, c.as_mut_ptr(), c.len())
    });
    Ok(out)
}

/// Per-channel batch statistics: the mean and the biased (population) variance over
/// N, H and W, as batch norm normalises with.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStats {
    /// Per channel, the mean.
    pub mean: Vec<f32>,
    /// Per channel, the biased variance (divided by the count).
    pub var: Vec<f32>,
    /// Elements per channel (`N * H * W`), for the unbiased variance
    /// `var * count / (count - 1)` that updates `running_var`.
    pub count: usize,
}

/// A tier's kernels behind a safe, checked API. Cheap to copy.
#[derive(Clone, Copy)]
pub struct Kernels {
    set: &'static KernelSet,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kernels({})", self.set.isa)
    }
}

/// The channel count and per-channel plane length of a tensor of rank >= 2 laid out as
/// `[N, C, ...]`.
pub(crate) fn channels_and_plane(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    match x.shape() {
        [_, c, rest @ ..] => Ok((*c, rest.iter().product())),
        _ => Err(TensorError::Rank {
            op,
            expected: 2,
            got: x.shape().to_vec(),
        }),
    }
}

pub(crate) fn expect_channel_params(
    op: &'static str,
    c: usize,
    params: &[(&'static str, &[f32])],
) -> Result<()> {
    for &(arg, p) in params {
        if p.len() != c {
            return Err(TensorError::ShapeMismatch {
                op,
                arg,
                expected: vec![c],
                got: vec![p.len()],
            });
        }
    }
    Ok(())
}

impl Kernels {
    /// The kernels of `isa`, if this CPU can run them.
    pub fn for_isa(isa: Isa) -> Result<Self, IsaError> {
        isa.check_supported()?;
        let set = compiled_set(isa).ok_or(IsaError::Unsupported {
            isa,
            cpu_features: isa::cpu_features(),
        })?;
        Ok(Kernels { set })
    }

    /// The kernels of the process's active tier (see [`isa::active`]).
    pub fn active() -> Result<Self> {
        Ok(Self::for_isa(isa::active()?.isa())?)
    }

    /// The tier.
    pub fn isa(&self) -> Isa {
        self.set.isa
    }

    /// The `f32` lanes of the tier's vectors.
    pub fn lanes(&self) -> usize {
        self.set.lanes
    }

    /// Runs the peak-FMA probe: `iters * FMA_CHAINS * lanes * 2` flops in registers.
    pub(crate) fn fma_chains(&self, iters: usize, seed: f32) -> f32 {
        // SAFETY: no memory is touched; the tier is supported (checked at construction).
        unsafe { (self.set.fma_chains)(iters, seed) }
    }

    /// The kernel that runs each operation, named by tier, vector shape and operation
    /// (`avx512_f32x16_softmax_row`; the GEMM microkernel by its tile,
    /// `avx512_f32_8x48`), so that a profile or a failing test says exactly which code
    /// ran.
    pub fn kernel_names(&self) -> Vec<(&'static str, String)> {
        let mut names: Vec<_> = OPERATIONS
            .iter()
            .map(|op| (*op, format!("{}_f32x{}_{op}", self.set.isa, self.set.lanes)))
            .collect();
        // Every microkernel, as its function is named (the tier's `tier_entry_points!`).
        for name in self.set.tile_names {
            let family = match name.rsplit('_').next() {
                Some("direct") => "direct_conv_microkernel",
                Some("blocked") => "blocked_conv_microkernel",
                Some("outer") | Some("rowdot") => "weight_grad_microkernel",
                Some("narrow") if self.set.gemm_narrow_max == 0 => continue, // never runs
                Some("narrow") => "gemm_narrow_microkernel",
                _ => "gemm_microkernel",
            };
            names.push((family, name.to_string()));
        }
        names
    }

    /// The direct convolution's microkernel: `OB` output channels by up to `XV`
    /// vectors of pixels.
    pub fn direct_kernel_name(&self) -> String {
        let (ob, xv) = (self.set.direct_ob, self.set.direct_tiles.len());
        format!("{}_f32_{ob}x{}_direct", self.set.isa, xv * self.set.lanes)
    }

    /// The blocked layout's microkernel: `F` output blocks of `L` lanes by up to `P`
    /// pixels.
    pub fn blocked_kernel_name(&self) -> String {
        let (f, p) = (self.set.blocked_f, self.set.blocked_tiles.len());
        format!("{}_f32_{f}x{}x{p}_blocked", self.set.isa, self.set.lanes)
    }

    /// The blocked layout's single-block microkernel (grouped convolutions): one output
    /// block of `L` lanes by up to `P` pixels.
    pub fn blocked1_kernel_name(&self) -> String {
        let p = self.set.blocked1_tiles.len();
        format!("{}_f32_1x{}x{p}_blocked", self.set.isa, self.set.lanes)
    }

    /// The blocked layout's narrow-group microkernel: one output block of `L` lanes in
    /// groups at most the block wide, by up to `P` pixels.
    pub fn grouped_kernel_name(&self) -> String {
        let p = self.set.grouped_tiles.len();
        format!("{}_f32_1x{}x{p}_grouped", self.set.isa, self.set.lanes)
    }

    /// The weight gradient's outer-product microkernel of `f` vectors of output
    /// channels by `p` taps.
    pub(crate) fn outer_kernel_name(&self, f: usize, p: usize) -> String {
        format!("{}_f32_{f}x{}x{p}_outer", self.set.isa, self.set.lanes)
    }

    /// The weight gradient's row-dot microkernel: `MI` rows of `dY` by `NJ` taps.
    pub fn dot_kernel_name(&self) -> String {
        format!(
            "{}_f32_{}x{}_rowdot",
            self.set.isa, self.set.dot_mi, self.set.dot_nj
        )
    }

    /// The name of the full GEMM microkernel: tier, type and tile.
    pub fn gemm_kernel_name(&self) -> String {
        let (mr, nr) = self.gemm_tile();
        format!("{}_f32_{mr}x{nr}", self.set.isa)
    }

    /// The GEMM microkernel's full tile, `(MR, NR)`.
    pub fn gemm_tile(&self) -> (usize, usize) {
        (self.set.gemm_mr, self.set.gemm_tiles.len() * self.set.lanes)
    }

    pub(crate) fn set(&self) -> &'static KernelSet {
        self.set
    }

    // ---- Batch statistics ----

    /// Per-channel mean and biased variance of `[N, C, ...]` over every axis but C,
    /// by two passes (mean, then squared deviations from it), each plane summed by the
    /// SIMD kernel and the planes combined in `f64`.
    pub fn channel_stats(&self, x: &Tensor) -> Result<ChannelStats> {
        let op = "channel_stats";
        let (c, plane) = channels_and_plane(op, x)?;
        let n = x.shape()[0];
        let count = n * plane;
        if count == 0 {
            return Err(TensorError::InvalidArgument {
                op,
                reason: format!("no elements per channel in shape {:?}", x.shape()),
            });
        }
        let (sum, sum_sq_dev) = (self.set.sum, self.set.sum_sq_dev);
        let data = x.data();
        let channel_plane = |b: usize, ch: usize| &data[(b * c + ch) * plane..][..plane];
        let stats_of = |ch: usize| {
            // SAFETY: every plane is an in-bounds slice of `data`.
            let total: f64 = (0..n)
                .map(|b| unsafe { sum(channel_plane(b, ch).as_ptr(), plane) } as f64)
                .sum();
            let mean = (total / count as f64) as f32;
            let ss: f64 = (0..n)
                .map(|b| unsafe { sum_sq_dev(channel_plane(b, ch).as_ptr(), plane, mean) } as f64)
                .sum();
            (mean, (ss / count as f64) as f32)
        };
        let pairs: Vec<(f32, f32)> = if data.len() < PARALLEL_MIN {
            (0..c).map(stats_of).collect()
        } else {
            (0..c).into_par_iter().map(stats_of).collect()
        };
        let (mean, var) = pairs.into_iter().unzip();
        Ok(ChannelStats { mean, var, count })
    }

    // ---- Softmax ----

    fn rows_impl(&self, op: &'static str, x: &Tensor, log: bool) -> Result<Tensor> {
        let Some(&cols) = x.shape().last() else {
            return Err(TensorError::Rank {
                op,
                expected: 1,
                got: x.shape().to_vec(),
            });
        };
        let mut y = Tensor::for_overwrite(x.shape())?;
        let kernel = if log {
            self.set.log_softmax_row
        } else {
            self.set.softmax_row
        };
        for_each_chunk_with(y.data_mut(), x.data(), cols, |_, d, s| {
            // SAFETY: one row of each of two equally shaped tensors.
            unsafe { kernel(s.as_ptr(), d.as_mut_ptr(), d.len().min(s.len())) }
        });
        Ok(y)
    }

    /// Softmax over the last axis.
    pub fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        self.rows_impl("softmax", x, false)
    }

    /// Log-softmax over the last axis (computed directly, not as `ln(softmax)`, so it
    /// stays finite where softmax underflows to 0).
    pub fn log_softmax(&self, x: &Tensor) -> Result<Tensor> {
        self.rows_impl("log_softmax", x, true)
    }

    // ---- Pooling ----

    /// 2-D max pooling of an NCHW tensor.
    pub fn max_pool2d(&self, x: &Tensor, pool: &Pool2d) -> Result<Tensor> {
        let [n, c, h, w] = x.dims4("max_pool2d")?;
        let [oh, ow] = pool.output_size(h, w)?;
        let mut y = Tensor::for_overwrite(&[n, c, oh, ow])?;
        self.max_pool2d_into(x, pool, &mut y)?;
        Ok(y)
    }

    /// [`Kernels::max_pool2d`] into an existing `[N, C, OH, OW]` tensor.
    pub fn max_pool2d_into(&self, x: &Tensor, pool: &Pool2d, y: &mut Tensor) -> Result<()> {
        let [n, c, h, w] = x.dims4("max_pool2d")?;
        let [oh, ow] = pool.output_size(h, w)?;
        if y.shape() != [n, c, oh, ow] {
            return Err(TensorError::ShapeMismatch {
                op: "max_pool2d_into",
                arg: "y",
                expected: vec![n, c, oh, ow],
                got: y.shape().to_vec(),
            });
        }
        if h * w == 0 || oh * ow == 0 {
            return Ok(());
        }
        let kernel = self.set.max_pool_plane;
        pool_planes(
            x,
            y,
            [h, w],
            [oh, ow],
            pool.padded_row_len(w, ow),
            |s, d, scratch| {
                // SAFETY: `s` is one h x w input plane, `d` one oh x ow output plane, the
                // geometry was validated by `output_size`, and `scratch` holds the padded row.
                unsafe {
                    kernel(
                        s.as_ptr(),
                        h,
                        w,
                        d.as_mut_ptr(),
                        oh,
                        ow,
                        pool,
                        scratch.as_mut_ptr(),
                    )
                }
            },
        );
        Ok(())
    }

    /// [`Kernels::max_pool2d`] that also says where each output came from (what a
    /// training tape keeps for the backward pass, [`Kernels::max_pool2d_backward_from_indices`]).
    /// The output equals `max_pool2d`'s.
    pub fn max_pool2d_with_indices(
        &self,
        x: &Tensor,
        pool: &Pool2d,
    ) -> Result<(Tensor, MaxPoolIndices)> {
        self.max_pool2d_with_indices_normalised(x, pool, None)
    }

    /// [`Kernels::max_pool2d_with_indices`] of `relu(scale[c] x + shift[c])` when
    /// `input_affine` is `Some([scale, shift])` (a training batch norm and its ReLU
    /// before the pool, as the stem has them): each plane is normalised into a buffer
    /// of the task's as it is pooled, so the normalised tensor is never stored and read
    /// back. The same floats and winners as pooling `Kernels::scale_shift` with
    /// `[Epilogue::Relu]` of `x`.
    pub fn max_pool2d_with_indices_normalised(
        &self,
        x: &Tensor,
        pool: &Pool2d,
        input_affine: Option<[&[f32]; 2]>,
    ) -> Result<(Tensor, MaxPoolIndices)> {
        let [n, c, h, w] = x.dims4("max_pool2d_with_indices")?;
        if let Some(affine) = input_affine {
            normalise::check_affine("max_pool2d_with_indices", affine, c)?;
        }
        let norm = input_affine.map(|affine| normalise::Normalise::new(self.set, affine));
        let [oh, ow] = pool.output_size(h, w)?;
        if h * w > u32::MAX as usize {
            return Err(TensorError::InvalidArgument {
                op: "max_pool2d_with_indices",
                reason: format!("a plane of {h} x {w} has more cells than u32 offsets reach"),
            });
        }
        let mut y = Tensor::for_overwrite(&[n, c, oh, ow])?;
        let mut idx = vec![0u32; n * c * oh * ow];
        let plane = oh * ow;
        if plane == 0 || h * w == 0 {
            return Ok((
                y,
                MaxPoolIndices {
                    input: [n, c, h, w],
                    output: [oh, ow],
                    data: idx,
                },
            ));
        }
        let src = x.data();
        let kernel = self.set.max_pool_plane_indices;
        let vector = h * w <= body::POOL_INDEX_MAX_PLANE;
        let scratch_len = 2 * (h + 1) * ow;
        // `scratch`: the vector kernel's, then (normalising) a plane's.
        let run = |scratch: &mut Vec<f32>, i: usize, d: &mut [f32], at: &mut [u32]| {
            let mut s = &src[i * h * w..(i + 1) * h * w];
            let (scratch, normed) = scratch.split_at_mut(scratch_len);
            if let Some(norm) = &norm {
                norm.apply(i % c, s, normed);
                s = normed;
            }
            if vector {
                // SAFETY: `s` is one h x w input plane of at most 2^24 cells, `d` and
                // `at` one oh x ow output plane each, the geometry was validated by
                // `output_size`, and `scratch` holds `2 (h + 1) ow` floats.
                unsafe {
                    kernel(
                        s.as_ptr(),
                        h,
                        w,
                        d.as_mut_ptr(),
                        at.as_mut_ptr(),
                        oh,
                        ow,
                        pool,
                        scratch.as_mut_ptr(),
                    )
                }
            } else {
                max_pool_plane_indices_scalar(s, [h, w], d, at, [oh, ow], pool);
            }
        };
        let scratch_len = if vector { scratch_len } else { 0 };
        let task_len = scratch_len + if norm.is_some() { h * w } else { 0 };
        if n * c * (plane + h * w) < PARALLEL_MIN {
            let mut scratch = vec![0.0; task_len];
            y.data_mut()
                .chunks_mut(plane)
                .zip(idx.chunks_mut(plane))
                .enumerate()
                .for_each(|(i, (d, at))| run(&mut scratch, i, d, at));
        } else {
            y.data_mut()
                .par_chunks_mut(plane)
                .zip(idx.par_chunks_mut(plane))
                .enumerate()
                .with_min_len((TASK_GRAIN / (h * w)).max(1))
                .for_each_init(
                    || vec![0.0; task_len],
                    |scratch, (i, (d, at))| run(scratch, i, d, at),
                );
        }
        Ok((
            y,
            MaxPoolIndices {
                input: [n, c, h, w],
                output: [oh, ow],
                data: idx,
            },
        ))
    }

    /// 2-D average pooling of an NCHW tensor (PyTorch's `AvgPool2d`, see [`AvgPool2d`]).
    pub fn avg_pool2d(&self, x: &Tensor, pool: &AvgPool2d) -> Result<Tensor> {
        let [n, c, h, w] = x.dims4("avg_pool2d")?;
        let [oh, ow] = pool.output_size(h, w)?;
        let mut y = Tensor::for_overwrite(&[n, c, oh, ow])?;
        self.avg_pool2d_into(x, pool, &mut y)?;
        Ok(y)
    }

    /// [`Kernels::avg_pool2d`] into an existing `[N, C, OH, OW]` tensor.
    pub fn avg_pool2d_into(&self, x: &Tensor, pool: &AvgPool2d, y: &mut Tensor) -> Result<()> {
        let [n, c, h, w] = x.dims4("avg_pool2d")?;
        let [oh, ow] = pool.output_size(h, w)?;
        if y.shape() != [n, c, oh, ow] {
            return Err(TensorError::ShapeMismatch {
                op: "avg_pool2d_into",
                arg: "y",
                expected: vec![n, c, oh, ow],
                got: y.shape().to_vec(),
            });
        }
        if oh * ow == 0 || n * c == 0 {
            return Ok(());
        }
        if h * w == 0 {
            return Err(TensorError::InvalidArgument {
                op: "avg_pool2d",
                reason: format!("cannot average an empty plane, shape {:?}", x.shape()),
            });
        }
        let kernel = self.set.avg_pool_plane;
        let scratch_len = pool.window.padded_row_len(w, ow) + ow;
        pool_planes(x, y, [h, w], [oh, ow], scratch_len, |s, d, scratch| {
            // SAFETY: `s` is one h x w input plane, `d` one oh x ow output plane, the
            // geometry was validated by `output_size`, and `scratch` holds the padded
            // row and a row of divisors.
            unsafe {
                kernel(
                    s.as_ptr(),
                    h,
                    w,
                    d.as_mut_ptr(),
                    oh,
                    ow,
                    pool,
                    scratch.as_mut_ptr(),
                )
            }
        });
        Ok(())
    }

    /// Global average pooling: `[N, C, H, W]` to `[N, C]`, the mean of each plane.
    pub fn global_avg_pool(&self, x: &Tensor) -> Result<Tensor> {
        let [n, c, h, w] = x.dims4("global_avg_pool")?;
        let plane = h * w;
        if plane == 0 {
            return Err(TensorError::InvalidArgument {
                op: "global_avg_pool",
                reason: format!("cannot average an empty plane, shape {:?}", x.shape()),
            });
        }
        let sum = self.set.sum;
        let src = x.data();
        let mut y = Tensor::zeros(&[n, c])?;
        let inv = 1.0 / plane as f32;
        let mean_of = |i: usize| {
            // SAFETY: plane `i` is in bounds of `src`.
            let total = unsafe { sum(src[i * plane..].as_ptr(), plane) };
            total * inv
        };
        if src.len() < PARALLEL_MIN {
            y.data_mut()
                .iter_mut()
                .enumerate()
                .for_each(|(i, o)| *o = mean_of(i));
        } else {
            y.data_mut()
                .par_iter_mut()
                .enumerate()
                .for_each(|(i, o)| *o = mean_of(i));
        }
        Ok(y)
    }
}

/// [`body::max_pool_plane_indices`] one output at a time, for planes too large for its
/// float-carried offsets: each window scanned in row-major order.
fn max_pool_plane_indices_scalar(
    s: &[f32],
    [h, w]: [usize; 2],
    d: &mut [f32],
    at: &mut [u32],
    [oh, ow]: [usize; 2],
    p: &Pool2d,
) {
    let taps = |o: usize, axis: usize, size: usize| {
        (0..p.kernel[axis])
            .map(move |t| {
                (o * p.stride[axis] + t * p.dilation[axis]) as isize - p.padding[axis] as isize
            })
            .filter(move |&i| i >= 0 && (i as usize) < size)
            .map(|i| i as usize)
    };
    for oy in 0..oh {
        for ox in 0..ow {
            let (mut m, mut best) = (f32::NEG_INFINITY, u32::MAX);
            for iy in taps(oy, 0, h) {
                for ix in taps(ox, 1, w) {
                    let v = s[iy * w + ix];
                    if best == u32::MAX || v > m || v.is_nan() {
                        m = v;
                        best = (iy * w + ix) as u32;
                    }
                }
            }
            d[oy * ow + ox] = m;
            at[oy * ow + ox] = best;
        }
    }
}

/// Runs a pooling kernel plane by plane: each `h x w` plane of `x` into the `oh x ow`
/// plane of `y` at the same index, `plane(src, dst, scratch)` with a scratch buffer of
/// `scratch_len` floats per thread; over rayon's threads past `PARALLEL_MIN`.
fn pool_planes(
    x: &Tensor,
    y: &mut Tensor,
    [h, w]: [usize; 2],
    [oh, ow]: [usize; 2],
    scratch_len: usize,
    plane: impl Fn(&[f32], &mut [f32], &mut [f32]) + Sync,
) {
    let src = x.data();
    let run = |scratch: &mut Vec<f32>, i: usize, d: &mut [f32]| {
        debug_assert_eq!(d.len(), oh * ow);
        plane(&src[i * h * w..(i + 1) * h * w], d, scratch)
    };
    let planes = y.data_mut();
    if planes.len() + src.len() < PARALLEL_MIN {
        let mut scratch = vec![0.0; scratch_len];
        planes
            .chunks_mut(oh * ow)
            .enumerate()
            .for_each(|(i, d)| run(&mut scratch, i, d));
    } else {
        planes
            .par_chunks_mut(oh * ow)
            .enumerate()
            .with_min_len((TASK_GRAIN / (h * w)).max(1))
            .for_each_init(
                || vec![0.0; scratch_len],
                |scratch, (i, d)| run(scratch, i, d),
            );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names the plan and `resnet info` print are the microkernels' own function
    /// names, in every tier compiled for this target (whether or not this CPU runs it).
    #[test]
    fn microkernel_names_are_their_function_names() {
        for isa in Isa::ALL {
            let Some(set) = compiled_set(isa) else {
                continue;
            };
            let k = Kernels { set };
            let mut computed = vec![
                k.gemm_kernel_name(),
                k.direct_kernel_name(),
                k.blocked_kernel_name(),
                k.blocked1_kernel_name(),
                k.grouped_kernel_name(),
                k.dot_kernel_name(),
            ];
            computed.extend(
                set.outer_tiles
                    .iter()
                    .map(|&(f, p, _)| k.outer_kernel_name(f, p)),
            );
            for name in &computed {
                assert!(
                    set.tile_names.contains(&name.as_str()),
                    "{isa}: {name} is not one of {:?}",
                    set.tile_names
                );
            }
            let prefix = format!("{isa}_f32_");
            assert!(set.tile_names.iter().all(|n| n.starts_with(&prefix)));
            let counts = set.gemm_tiles.len()
                + 1
                + set.direct_tiles.len()
                + 1
                + set.blocked_tiles.len()
                + set.blocked1_tiles.len()
                + set.grouped_tiles.len()
                + set.outer_tiles.len();
            assert_eq!(
                set.tile_names.len(),
                counts,
                "{isa}: one name per microkernel"
            );
        }
    }
}
