//! The vector vocabulary every tier implements.
//!
//! A kernel body (in [`super::body`]) is written once against this trait; each tier
//! supplies the vector type and a handful of operations in its own intrinsics
//! (`__m512` on AVX-512, `__m256` on AVX2, `float32x4_t` on NEON, `[f32; 4]` in portable
//! Rust). The tier's `#[target_feature]` entry points then instantiate the bodies, and
//! because every method here is `#[inline(always)]`, the compiler sees one straight-line
//! function per kernel and per tier, with the intrinsics inlined into it.
//!
//! # Safety
//!
//! Every method is `unsafe` for two reasons: the pointer methods read or write memory the
//! caller vouches for, and all methods may only run on a CPU with the tier's features.
//! Both obligations are discharged by the tier's entry points, which are only reachable
//! through a [`super::KernelSet`] that was handed out after feature detection, and by the
//! safe wrappers in [`super`], which check every length before calling in.

/// One tier's vector type and operations (lane-wise unless said otherwise).
pub(crate) trait Simd {
    /// Number of `f32` lanes in a vector.
    const LANES: usize;
    /// The register type.
    type V: Copy;

    /// Every lane equal to `x`.
    unsafe fn splat(x: f32) -> Self::V;
    /// Loads `LANES` floats from `p` (no alignment needed).
    unsafe fn load(p: *const f32) -> Self::V;
    /// Stores `LANES` floats to `p` (no alignment needed).
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// The larger of `a` and `b`, lane by lane. Where either is NaN, the result is `b`
    /// (x86's `maxps` and the generic tier) or NaN (NEON's `fmax`): a NaN in `b` always
    /// comes out. So ReLU is `max(0, x)`, the value that may be NaN second, and NaN
    /// propagates as in PyTorch.
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// The larger of `a` and `b`, or NaN where either is NaN (a max pool's window: a
    /// NaN anywhere in it is the result, as in PyTorch).
    unsafe fn max_nan(a: Self::V, b: Self::V) -> Self::V;
    /// The smaller; where either is NaN, `b` or NaN, as [`Simd::max`].
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, fused (one rounding) where the tier has FMA.
    unsafe fn mul_add(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// The sum of the lanes.
    unsafe fn reduce_add(v: Self::V) -> f32;
    /// The largest lane.
    unsafe fn reduce_max(v: Self::V) -> f32;
    /// Rounds each lane to the nearest integer (ties to even), as a float.
    unsafe fn round(v: Self::V) -> Self::V;
    /// `2^n` for lanes holding integers `n` in `-126..=127`.
    unsafe fn pow2i(n: Self::V) -> Self::V;
    /// `a` where `m > 0`, else `0` (ReLU's backward: `m` is the ReLU's output). A NaN in
    /// `m` selects `0`.
    unsafe fn select_positive(m: Self::V, a: Self::V) -> Self::V;

    /// Loads the `n < LANES` floats at `p`; the other lanes hold `fill`. Never touches
    /// memory past `p + n`.
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize, fill: f32) -> Self::V {
        debug_assert!(n < Self::LANES);
        let mut buf = [fill; 16];
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
        Self::load(buf.as_ptr())
    }

    /// Stores the first `n < LANES` lanes of `v` to `p`; nothing past `p + n` is written.
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, v: Self::V, n: usize) {
        debug_assert!(n < Self::LANES);
        let mut buf = [0.0f32; 16];
        Self::store(buf.as_mut_ptr(), v);
        std::ptr::copy_nonoverlapping(buf.as_ptr(), p, n);
    }

    /// Hints that the cache line holding `p` will be read soon (no-op where the tier
    /// has no prefetch instruction). Never faults, whatever `p` is.
    #[inline(always)]
    unsafe fn prefetch(_p: *const f32) {}

    /// As [`Simd::prefetch`], into the level-2 cache only: for data wanted after the
    /// current working set, which a level-1 prefetch would evict.
    #[inline(always)]
    unsafe fn prefetch_l2(_p: *const f32) {}

    /// Transposes the `LANES x LANES` block at `src` (rows `src_stride` floats apart)
    /// into `dst` (rows `dst_stride` apart): `dst[j][i] = src[i][j]`.
    #[inline(always)]
    unsafe fn transpose_block(
        src: *const f32,
        src_stride: usize,
        dst: *mut f32,
        dst_stride: usize,
    ) {
        for i in 0..Self::LANES {
            for j in 0..Self::LANES {
                *dst.add(j * dst_stride + i) = *src.add(i * src_stride + j);
            }
        }
    }

    /// `LANES` floats from `p` if `valid`, else zeros without reading `p`, which may then
    /// point anywhere (the narrow-group tile's columns in the padding). Tiers with
    /// masked loads override it without a branch.
    #[inline(always)]
    unsafe fn load_or_zero(p: *const f32, valid: bool) -> Self::V {
        if valid {
            Self::load(p)
        } else {
            Self::splat(0.0)
        }
    }

    /// Each group of `G` lanes rotated by `r`: lane `i` of the result is lane
    /// `(i / G) G + (i % G + r) mod G` of `v` (`G` divides `LANES`, `0 < r < G`). A
    /// grouped convolution whose groups are at most a vector wide multiplies every
    /// output lane by the inputs of its own group this way, one rotation at a time
    /// (`blocked_tile::narrow_tile`). Tiers override it with one shuffle; `G` and `r` are
    /// constants once the caller's loop is unrolled.
    #[inline(always)]
    unsafe fn group_rotate<const G: usize>(v: Self::V, r: usize) -> Self::V {
        let mut buf = [0.0f32; 16];
        Self::store(buf.as_mut_ptr(), v);
        let mut out = [0.0f32; 16];
        for (i, o) in out.iter_mut().take(Self::LANES).enumerate() {
            *o = buf[i / G * G + (i % G + r) % G];
        }
        Self::load(out.as_ptr())
    }

    /// One step of a max pool's search with its winner: `(v, vi)` in the lanes where `v >
    /// m` or `v` is NaN, `(m, mi)` elsewhere. Scanning a window's taps in order from
    /// `(-inf, first tap)` leaves the first maximum, or the last NaN (PyTorch's rule),
    /// with its position (`vi`, `mi`: positions carried as exact integers in floats).
    #[inline(always)]
    unsafe fn pool_take(m: Self::V, mi: Self::V, v: Self::V, vi: Self::V) -> (Self::V, Self::V) {
        let mut bufs = [[0.0f32; 16]; 4];
        for (b, x) in bufs.iter_mut().zip([m, mi, v, vi]) {
            Self::store(b.as_mut_ptr(), x);
        }
        let [mut m, mut mi, v, vi] = bufs;
        for i in 0..Self::LANES {
            if v[i] > m[i] || v[i].is_nan() {
                m[i] = v[i];
                mi[i] = vi[i];
            }
        }
        (Self::load(m.as_ptr()), Self::load(mi.as_ptr()))
    }

    /// Vector registers the tier has (a kernel keeps its operands in them only where
    /// they fit).
    const REGISTERS: usize = 32;

    /// Loads `p[0], p[stride], ..., p[(LANES - 1) * stride]`.
    #[inline(always)]
    unsafe fn load_strided(p: *const f32, stride: usize) -> Self::V {
        let mut buf = [0.0f32; 16];
        for (i, b) in buf.iter_mut().take(Self::LANES).enumerate() {
            *b = *p.add(i * stride);
        }
        Self::load(buf.as_ptr())
    }
}
