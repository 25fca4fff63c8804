//! The portable tier: plain Rust over `[f32; 4]`, which any target compiles (and which
//! the compiler turns into the baseline SIMD of the target where it can: SSE2 on
//! x86-64). It is always available, is the fallback when no wider tier is, and is what
//! `RESNET_ISA=generic` selects to compare against the hand-vectorised tiers.

use super::simd::Simd;

/// Four lanes of portable Rust.
pub(crate) struct Portable;

type V4 = [f32; 4];

#[inline(always)]
fn lanes(f: impl Fn(usize) -> f32) -> V4 {
    [f(0), f(1), f(2), f(3)]
}

impl Simd for Portable {
    const LANES: usize = 4;
    type V = V4;

    #[inline(always)]
    unsafe fn splat(x: f32) -> V4 {
        [x; 4]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> V4 {
        (p as *const V4).read_unaligned()
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: V4) {
        (p as *mut V4).write_unaligned(v)
    }
    #[inline(always)]
    unsafe fn add(a: V4, b: V4) -> V4 {
        lanes(|i| a[i] + b[i])
    }
    #[inline(always)]
    unsafe fn sub(a: V4, b: V4) -> V4 {
        lanes(|i| a[i] - b[i])
    }
    #[inline(always)]
    unsafe fn mul(a: V4, b: V4) -> V4 {
        lanes(|i| a[i] * b[i])
    }
    #[inline(always)]
    unsafe fn max(a: V4, b: V4) -> V4 {
        // `if` rather than `f32::max`, which handles NaN specially and then does not
        // compile to a single `maxps`.
        lanes(|i| if a[i] > b[i] { a[i] } else { b[i] })
    }
    #[inline(always)]
    unsafe fn max_nan(a: V4, b: V4) -> V4 {
        lanes(|i| {
            if a[i] > b[i] || a[i].is_nan() {
                a[i]
            } else {
                b[i]
            }
        })
    }
    #[inline(always)]
    unsafe fn pool_take(m: V4, mi: V4, v: V4, vi: V4) -> (V4, V4) {
        let take = |i: usize| v[i] > m[i] || v[i].is_nan();
        (
            lanes(|i| if take(i) { v[i] } else { m[i] }),
            lanes(|i| if take(i) { vi[i] } else { mi[i] }),
        )
    }
    #[inline(always)]
    unsafe fn min(a: V4, b: V4) -> V4 {
        lanes(|i| if a[i] < b[i] { a[i] } else { b[i] })
    }
    #[inline(always)]
    unsafe fn mul_add(a: V4, b: V4, c: V4) -> V4 {
        // Unfused: `f32::mul_add` would call a slow software FMA on targets without one.
        lanes(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    unsafe fn reduce_add(v: V4) -> f32 {
        (v[0] + v[1]) + (v[2] + v[3])
    }
    #[inline(always)]
    unsafe fn reduce_max(v: V4) -> f32 {
        v[0].max(v[1]).max(v[2].max(v[3]))
    }
    #[inline(always)]
    unsafe fn round(v: V4) -> V4 {
        lanes(|i| v[i].round_ties_even())
    }
    #[inline(always)]
    unsafe fn pow2i(n: V4) -> V4 {
        lanes(|i| f32::from_bits(((n[i] as i32 + 127) as u32) << 23))
    }
    #[inline(always)]
    unsafe fn select_positive(m: V4, a: V4) -> V4 {
        lanes(|i| if m[i] > 0.0 { a[i] } else { 0.0 })
    }
    const REGISTERS: usize = 16;
    #[inline(always)]
    unsafe fn group_rotate<const G: usize>(v: V4, r: usize) -> V4 {
        lanes(|i| v[i / G * G + (i % G + r) % G])
    }
}

super::tier_entry_points!(
    crate::isa::Isa::Generic,
    Portable,
    gemm_mr = 4,
        gemm_nv = [(1, generic_f32_4x4), (2, generic_f32_4x8)],
    gemm_narrow = (0, generic_f32_4x0_narrow),
    direct_ob = 4,
    direct_xv = [(1, generic_f32_4x4_direct), (2, generic_f32_4x8_direct)],
    dot = [2, 4, generic_f32_2x4_rowdot],
    blocked = [2; (1, generic_f32_2x4x1_blocked), (2, generic_f32_2x4x2_blocked), (3, generic_f32_2x4x3_blocked), (4, generic_f32_2x4x4_blocked)],
    // One output block by up to 8 pixels: grouped convolutions in the blocked layout
    // (8 accumulators, a weight vector and a broadcast fit every tier's registers).
    blocked1 = [(1, generic_f32_1x4x1_blocked), (2, generic_f32_1x4x2_blocked), (3, generic_f32_1x4x3_blocked), (4, generic_f32_1x4x4_blocked), (5, generic_f32_1x4x5_blocked), (6, generic_f32_1x4x6_blocked), (7, generic_f32_1x4x7_blocked), (8, generic_f32_1x4x8_blocked)],
    grouped = [(1, generic_f32_1x4x1_grouped), (2, generic_f32_1x4x2_grouped), (3, generic_f32_1x4x3_grouped), (4, generic_f32_1x4x4_grouped), (5, generic_f32_1x4x5_grouped), (6, generic_f32_1x4x6_grouped), (7, generic_f32_1x4x7_grouped), (8, generic_f32_1x4x8_grouped)],
    outer = [(2, 4, generic_f32_2x4x4_outer)],
    #[inline]
);
