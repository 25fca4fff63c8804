//! The AVX2 + FMA tier: eight lanes in a `__m256`.

use std::arch::x86_64::*;

use crate::kernels::simd::Simd;

/// Eight lanes of AVX2 with FMA.
pub(crate) struct Avx2;

impl Simd for Avx2 {
    const LANES: usize = 8;
    type V = __m256;

    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_or_zero(p: *const f32, valid: bool) -> __m256 {
        // Masked-off lanes are not read (no fault, whatever `p` is).
        _mm256_maskload_ps(p, _mm256_set1_epi32(-i32::from(valid)))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        _mm256_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max(a: __m256, b: __m256) -> __m256 {
        _mm256_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max_nan(a: __m256, b: __m256) -> __m256 {
        // `maxps` gives `b` when either is NaN: put `a` back where it is the NaN.
        let m = _mm256_max_ps(a, b);
        _mm256_blendv_ps(m, a, _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a))
    }
    #[inline(always)]
    unsafe fn pool_take(m: __m256, mi: __m256, v: __m256, vi: __m256) -> (__m256, __m256) {
        let take = _mm256_or_ps(
            _mm256_cmp_ps::<_CMP_GT_OQ>(v, m),
            _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v),
        );
        (_mm256_blendv_ps(m, v, take), _mm256_blendv_ps(mi, vi, take))
    }
    #[inline(always)]
    unsafe fn min(a: __m256, b: __m256) -> __m256 {
        _mm256_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul_add(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn reduce_add(v: __m256) -> f32 {
        // 8 -> 4 -> 2 -> 1 lanes.
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }
    #[inline(always)]
    unsafe fn reduce_max(v: __m256) -> f32 {
        let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_max_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }
    #[inline(always)]
    unsafe fn round(v: __m256) -> __m256 {
        _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v)
    }
    #[inline(always)]
    unsafe fn pow2i(n: __m256) -> __m256 {
        let biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased))
    }
    #[inline(always)]
    unsafe fn select_positive(m: __m256, a: __m256) -> __m256 {
        // The compare gives all-ones lanes where m > 0 (false for NaN), zero elsewhere.
        _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(m, _mm256_setzero_ps()), a)
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
    }
    #[inline(always)]
    unsafe fn prefetch_l2(p: *const f32) {
        _mm_prefetch::<_MM_HINT_T1>(p as *const i8)
    }
    #[inline(always)]
    unsafe fn transpose_block(
        src: *const f32,
        src_stride: usize,
        dst: *mut f32,
        dst_stride: usize,
    ) {
        // Three rounds of 8 two-register shuffles; `[..]` is one 128-bit lane.
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * src_stride)));
        // [a0 b0 a1 b1] and [a2 b2 a3 b3] in each lane, for each pair of rows.
        let t: [__m256; 8] = std::array::from_fn(|i| {
            let (x, y) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(x, y)
            } else {
                _mm256_unpackhi_ps(x, y)
            }
        });
        // Register `4 g + j` holds column `4 lane + j` of rows `4 g .. 4 g + 4`.
        let u: [__m256; 8] = std::array::from_fn(|i| {
            let (g, j) = (i / 4 * 4, i % 4);
            let (x, y) = if j < 2 {
                (t[g], t[g + 2])
            } else {
                (t[g + 1], t[g + 3])
            };
            if j % 2 == 0 {
                _mm256_shuffle_ps::<0x44>(x, y)
            } else {
                _mm256_shuffle_ps::<0xEE>(x, y)
            }
        });
        // Column j: the low lanes of registers j and 4 + j; column 4 + j: their high ones.
        for i in 0..8 {
            let (x, y) = (u[i % 4], u[4 + i % 4]);
            let col = if i < 4 {
                _mm256_permute2f128_ps::<0x20>(x, y)
            } else {
                _mm256_permute2f128_ps::<0x31>(x, y)
            };
            _mm256_storeu_ps(dst.add(i * dst_stride), col);
        }
    }
    const REGISTERS: usize = 16;
    #[inline(always)]
    unsafe fn group_rotate<const G: usize>(v: __m256, r: usize) -> __m256 {
        match (G, r) {
            // Within each 128-bit lane: one `vpermilps` by immediate.
            (2, _) => _mm256_permute_ps::<0b10_11_00_01>(v),
            (4, 1) => _mm256_permute_ps::<0b00_11_10_01>(v),
            (4, 2) => _mm256_permute_ps::<0b01_00_11_10>(v),
            (4, _) => _mm256_permute_ps::<0b10_01_00_11>(v),
            // The whole register (G = 8): one `vpermps`.
            _ => {
                let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let idx = _mm256_and_si256(
                    _mm256_add_epi32(lane, _mm256_set1_epi32(r as i32)),
                    _mm256_set1_epi32(7),
                );
                _mm256_permutevar8x32_ps(v, idx)
            }
        }
    }
    #[inline(always)]
    unsafe fn load_strided(p: *const f32, stride: usize) -> __m256 {
        if stride == 2 {
            // Two loads and two shuffles instead of a gather (the ResNet stem pool's
            // stride): the even lanes of `p[0..16)`, the second load masked to the 7
            // floats it needs, so nothing past `p[14]` is read.
            let a = _mm256_loadu_ps(p);
            let b = _mm256_maskload_ps(p.add(8), _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, -1, 0));
            // [a0 a2 b0 b2 | a4 a6 b4 b6], then the middle 64-bit pairs swapped.
            let v = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
            return _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)));
        }
        // Callers keep `7 * stride` far below `i32::MAX` (strides are pooling strides).
        let s = stride as i32;
        let idx = _mm256_setr_epi32(0, s, 2 * s, 3 * s, 4 * s, 5 * s, 6 * s, 7 * s);
        _mm256_i32gather_ps::<4>(p, idx)
    }
}

crate::kernels::tier_entry_points!(
    crate::isa::Isa::Avx2,
    Avx2,
    gemm_mr = 6,
    gemm_nv = [(1, avx2_f32_6x8), (2, avx2_f32_6x16)],
    // Measured as AVX-512's: the 7 x 7 layers' 1-column edge gains (54 -> 61, 61 -> 69,
    // 59 -> 68 GFLOP/s), a 4-column edge loses (66 -> 62), so only the narrowest.
    gemm_narrow = (2, avx2_f32_6x2_narrow),
    direct_ob = 4,
    direct_xv = [(1, avx2_f32_4x8_direct), (2, avx2_f32_4x16_direct), (3, avx2_f32_4x24_direct)],
    dot = [3, 4, avx2_f32_3x4_rowdot],
    // 2 x 6 accumulators + 2 weight vectors + a broadcast: 15 of 16 registers.
    blocked = [2; (1, avx2_f32_2x8x1_blocked), (2, avx2_f32_2x8x2_blocked), (3, avx2_f32_2x8x3_blocked), (4, avx2_f32_2x8x4_blocked), (5, avx2_f32_2x8x5_blocked), (6, avx2_f32_2x8x6_blocked)],
    // One output block by up to 12 pixels: grouped convolutions in the blocked layout
    // (12 accumulators, a weight vector and a broadcast fit every tier's registers).
    blocked1 = [(1, avx2_f32_1x8x1_blocked), (2, avx2_f32_1x8x2_blocked), (3, avx2_f32_1x8x3_blocked), (4, avx2_f32_1x8x4_blocked), (5, avx2_f32_1x8x5_blocked), (6, avx2_f32_1x8x6_blocked), (7, avx2_f32_1x8x7_blocked), (8, avx2_f32_1x8x8_blocked), (9, avx2_f32_1x8x9_blocked), (10, avx2_f32_1x8x10_blocked), (11, avx2_f32_1x8x11_blocked), (12, avx2_f32_1x8x12_blocked)],
    grouped = [(1, avx2_f32_1x8x1_grouped), (2, avx2_f32_1x8x2_grouped), (3, avx2_f32_1x8x3_grouped), (4, avx2_f32_1x8x4_grouped), (5, avx2_f32_1x8x5_grouped), (6, avx2_f32_1x8x6_grouped), (7, avx2_f32_1x8x7_grouped), (8, avx2_f32_1x8x8_grouped), (9, avx2_f32_1x8x9_grouped), (10, avx2_f32_1x8x10_grouped), (11, avx2_f32_1x8x11_grouped), (12, avx2_f32_1x8x12_grouped)],
    outer = [(2, 6, avx2_f32_2x8x6_outer)],
    #[target_feature(enable = "avx2,fma")]);
