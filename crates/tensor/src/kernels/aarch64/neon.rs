//! The NEON tier: four lanes in a `float32x4_t`, with fused multiply-add and across-lane
//! reductions.

use std::arch::aarch64::*;

use crate::kernels::simd::Simd;

/// Four lanes of AArch64 Advanced SIMD.
pub(crate) struct Neon;

impl Simd for Neon {
    const LANES: usize = 4;
    type V = float32x4_t;

    #[inline(always)]
    unsafe fn splat(x: f32) -> float32x4_t {
        vdupq_n_f32(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> float32x4_t {
        vld1q_f32(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: float32x4_t) {
        vst1q_f32(p, v)
    }
    #[inline(always)]
    unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vaddq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vsubq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vmulq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn max(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vmaxq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn max_nan(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // `fmax` returns NaN when either lane is NaN.
        vmaxq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn pool_take(
        m: float32x4_t,
        mi: float32x4_t,
        v: float32x4_t,
        vi: float32x4_t,
    ) -> (float32x4_t, float32x4_t) {
        // `v > m`, or `v` unequal to itself (NaN).
        let take = vorrq_u32(vcgtq_f32(v, m), vmvnq_u32(vceqq_f32(v, v)));
        (vbslq_f32(take, v, m), vbslq_f32(take, vi, mi))
    }
    #[inline(always)]
    unsafe fn min(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vminq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn mul_add(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        // vfmaq_f32(c, a, b) = c + a * b, one rounding.
        vfmaq_f32(c, a, b)
    }
    #[inline(always)]
    unsafe fn reduce_add(v: float32x4_t) -> f32 {
        vaddvq_f32(v)
    }
    #[inline(always)]
    unsafe fn reduce_max(v: float32x4_t) -> f32 {
        vmaxvq_f32(v)
    }
    #[inline(always)]
    unsafe fn round(v: float32x4_t) -> float32x4_t {
        vrndnq_f32(v)
    }
    #[inline(always)]
    unsafe fn pow2i(n: float32x4_t) -> float32x4_t {
        let biased = vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127));
        vreinterpretq_f32_s32(vshlq_n_s32::<23>(biased))
    }
    #[inline(always)]
    unsafe fn select_positive(m: float32x4_t, a: float32x4_t) -> float32x4_t {
        // The compare gives all-ones lanes where m > 0 (false for NaN), zero elsewhere.
        let positive = vcgtq_f32(m, vdupq_n_f32(0.0));
        vreinterpretq_f32_u32(vandq_u32(positive, vreinterpretq_u32_f32(a)))
    }
    #[inline(always)]
    unsafe fn group_rotate<const G: usize>(v: float32x4_t, r: usize) -> float32x4_t {
        match (G, r) {
            // [v1 v0 v3 v2].
            (2, _) => vrev64q_f32(v),
            (_, 1) => vextq_f32::<1>(v, v),
            (_, 2) => vextq_f32::<2>(v, v),
            _ => vextq_f32::<3>(v, v),
        }
    }
}

crate::kernels::tier_entry_points!(
    crate::isa::Isa::Neon,
    Neon,
    gemm_mr = 8,
    gemm_nv = [(1, neon_f32_8x4), (2, neon_f32_8x8), (3, neon_f32_8x12)],
    gemm_narrow = (0, neon_f32_8x0_narrow),
    direct_ob = 8,
    direct_xv = [(1, neon_f32_8x4_direct), (2, neon_f32_8x8_direct), (3, neon_f32_8x12_direct)],
    dot = [4, 6, neon_f32_4x6_rowdot],
    blocked = [4; (1, neon_f32_4x4x1_blocked), (2, neon_f32_4x4x2_blocked), (3, neon_f32_4x4x3_blocked), (4, neon_f32_4x4x4_blocked), (5, neon_f32_4x4x5_blocked), (6, neon_f32_4x4x6_blocked)],
    // One output block by up to 12 pixels: grouped convolutions in the blocked layout
    // (12 accumulators, a weight vector and a broadcast fit every tier's registers).
    blocked1 = [(1, neon_f32_1x4x1_blocked), (2, neon_f32_1x4x2_blocked), (3, neon_f32_1x4x3_blocked), (4, neon_f32_1x4x4_blocked), (5, neon_f32_1x4x5_blocked), (6, neon_f32_1x4x6_blocked), (7, neon_f32_1x4x7_blocked), (8, neon_f32_1x4x8_blocked), (9, neon_f32_1x4x9_blocked), (10, neon_f32_1x4x10_blocked), (11, neon_f32_1x4x11_blocked), (12, neon_f32_1x4x12_blocked)],
    grouped = [(1, neon_f32_1x4x1_grouped), (2, neon_f32_1x4x2_grouped), (3, neon_f32_1x4x3_grouped), (4, neon_f32_1x4x4_grouped), (5, neon_f32_1x4x5_grouped), (6, neon_f32_1x4x6_grouped), (7, neon_f32_1x4x7_grouped), (8, neon_f32_1x4x8_grouped), (9, neon_f32_1x4x9_grouped), (10, neon_f32_1x4x10_grouped), (11, neon_f32_1x4x11_grouped), (12, neon_f32_1x4x12_grouped)],
    outer = [(2, 12, neon_f32_2x4x12_outer), (4, 6, neon_f32_4x4x6_outer)],
    #[target_feature(enable = "neon")]);
