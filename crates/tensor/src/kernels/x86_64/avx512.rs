//! The AVX-512F tier: sixteen lanes in a `__m512`, with masked loads and stores for the
//! ragged tails.

use std::arch::x86_64::*;

use crate::kernels::simd::Simd;

/// Sixteen lanes of AVX-512F.
pub(crate) struct Avx512;

/// The mask of the first `n < 16` lanes.
#[inline(always)]
fn first_lanes(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

impl Simd for Avx512 {
    const LANES: usize = 16;
    type V = __m512;

    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_or_zero(p: *const f32, valid: bool) -> __m512 {
        // Masked-off lanes are not read (no fault, whatever `p` is).
        _mm512_maskz_loadu_ps(0u16.wrapping_sub(u16::from(valid)), p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max(a: __m512, b: __m512) -> __m512 {
        _mm512_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max_nan(a: __m512, b: __m512) -> __m512 {
        // `maxps` gives `b` when either is NaN: put `a` back where it is the NaN.
        let nan_a = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, a);
        _mm512_mask_blend_ps(nan_a, _mm512_max_ps(a, b), a)
    }
    #[inline(always)]
    unsafe fn pool_take(m: __m512, mi: __m512, v: __m512, vi: __m512) -> (__m512, __m512) {
        let take =
            _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, m) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        (
            _mm512_mask_blend_ps(take, m, v),
            _mm512_mask_blend_ps(take, mi, vi),
        )
    }
    #[inline(always)]
    unsafe fn min(a: __m512, b: __m512) -> __m512 {
        _mm512_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul_add(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn reduce_add(v: __m512) -> f32 {
        // Whole-register shuffles only: `_mm512_reduce_add_ps` works on 256- and 128-bit
        // halves, whose VEX encodings (without AVX-512VL) reach only registers 0-15, and
        // that constraint made the row-dot kernel spill its 24 accumulators.
        let v = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0b01_00_11_10>(v, v));
        let v = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0b10_11_00_01>(v, v));
        let v = _mm512_add_ps(v, _mm512_permute_ps::<0b01_00_11_10>(v));
        let v = _mm512_add_ps(v, _mm512_permute_ps::<0b10_11_00_01>(v));
        _mm512_cvtss_f32(v)
    }
    #[inline(always)]
    unsafe fn reduce_max(v: __m512) -> f32 {
        _mm512_reduce_max_ps(v)
    }
    #[inline(always)]
    unsafe fn round(v: __m512) -> __m512 {
        _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v)
    }
    #[inline(always)]
    unsafe fn pow2i(n: __m512) -> __m512 {
        let biased = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
        _mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased))
    }
    #[inline(always)]
    unsafe fn select_positive(m: __m512, a: __m512) -> __m512 {
        let positive = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m, _mm512_setzero_ps());
        _mm512_maskz_mov_ps(positive, a)
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize, fill: f32) -> __m512 {
        // Masked-off lanes are not read, so this never faults past `p + n`.
        _mm512_mask_loadu_ps(_mm512_set1_ps(fill), first_lanes(n), p)
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, v: __m512, n: usize) {
        _mm512_mask_storeu_ps(p, first_lanes(n), v)
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
        // Four rounds of 16 two-register shuffles. Rows `a, b, c, d, ..` of the block;
        // `[..]` is one 128-bit lane.
        let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(src.add(i * src_stride)));
        // [a0 b0 a1 b1] and [a2 b2 a3 b3] in each lane, for each pair of rows.
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let (x, y) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(x, y)
            } else {
                _mm512_unpackhi_ps(x, y)
            }
        });
        // [a0 b0 c0 d0] .. [a3 b3 c3 d3] for each group of four rows: register
        // `4 g + j` holds column `4 lane + j` of rows `4 g .. 4 g + 4`.
        let u: [__m512; 16] = std::array::from_fn(|i| {
            let (g, j) = (i / 4 * 4, i % 4);
            let (x, y) = if j < 2 {
                (t[g], t[g + 2])
            } else {
                (t[g + 1], t[g + 3])
            };
            if j % 2 == 0 {
                _mm512_shuffle_ps::<0x44>(x, y)
            } else {
                _mm512_shuffle_ps::<0xEE>(x, y)
            }
        });
        // Lanes 0 and 2 (0x88) or 1 and 3 (0xDD) of two registers.
        let v: [__m512; 16] = std::array::from_fn(|i| {
            let (h, j) = (i / 8 * 8, i % 4);
            let (x, y) = (u[h + j], u[h + 4 + j]);
            if i % 8 < 4 {
                _mm512_shuffle_f32x4::<0x88>(x, y)
            } else {
                _mm512_shuffle_f32x4::<0xDD>(x, y)
            }
        });
        for i in 0..16 {
            let (j, hi) = (i % 8, i >= 8);
            let (x, y) = (v[j], v[8 + j]);
            let col = if hi {
                _mm512_shuffle_f32x4::<0xDD>(x, y)
            } else {
                _mm512_shuffle_f32x4::<0x88>(x, y)
            };
            _mm512_storeu_ps(dst.add(i * dst_stride), col);
        }
    }
    #[inline(always)]
    unsafe fn group_rotate<const G: usize>(v: __m512, r: usize) -> __m512 {
        match (G, r) {
            // Within each 128-bit lane: one `vpermilps` by immediate.
            (2, _) => _mm512_permute_ps::<0b10_11_00_01>(v),
            (4, 1) => _mm512_permute_ps::<0b00_11_10_01>(v),
            (4, 2) => _mm512_permute_ps::<0b01_00_11_10>(v),
            (4, _) => _mm512_permute_ps::<0b10_01_00_11>(v),
            // Across 128-bit lanes: one `vpermps` by an index vector (a constant).
            _ => {
                let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
                let g = G as i32 - 1;
                let within = _mm512_and_si512(
                    _mm512_add_epi32(lane, _mm512_set1_epi32(r as i32)),
                    _mm512_set1_epi32(g),
                );
                let base = _mm512_andnot_si512(_mm512_set1_epi32(g), lane);
                _mm512_permutexvar_ps(_mm512_or_si512(base, within), v)
            }
        }
    }
    #[inline(always)]
    unsafe fn load_strided(p: *const f32, stride: usize) -> __m512 {
        if stride == 2 {
            // Two loads and a shuffle instead of a gather (the ResNet stem pool's
            // stride): the even lanes of `p[0..32)`, the second load masked to the 15
            // floats it needs, so nothing past `p[30]` is read.
            let a = _mm512_loadu_ps(p);
            let b = _mm512_maskz_loadu_ps(0x7fff, p.add(16));
            let evens =
                _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            return _mm512_permutex2var_ps(a, evens, b);
        }
        // Callers keep `15 * stride` far below `i32::MAX` (strides are pooling strides).
        let idx = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(stride as i32),
        );
        _mm512_i32gather_ps::<4>(idx, p)
    }
}

crate::kernels::tier_entry_points!(
    crate::isa::Isa::Avx512,
    Avx512,
    gemm_mr = 8,
    gemm_nv = [(1, avx512_f32_8x16), (2, avx512_f32_8x32), (3, avx512_f32_8x48)],
    // Edges of up to 4 columns take the narrow tile. Measured (in-process A/B, 1
    // thread, ResNet-50's 7 x 7 layers at batch 1, whose 49 columns end in one): 512->512
    // 3x3 76 -> 86, 512->2048 1x1 82 -> 93, 2048->512 1x1 79 -> 122 GFLOP/s; the 14 x 14
    // layers' 4-column edges unchanged (88-97 either way).
    gemm_narrow = (4, avx512_f32_8x4_narrow),
    direct_ob = 8,
    direct_xv = [(1, avx512_f32_8x16_direct), (2, avx512_f32_8x32_direct), (3, avx512_f32_8x48_direct)],
    dot = [4, 6, avx512_f32_4x6_rowdot],
    blocked = [4; (1, avx512_f32_4x16x1_blocked), (2, avx512_f32_4x16x2_blocked), (3, avx512_f32_4x16x3_blocked), (4, avx512_f32_4x16x4_blocked), (5, avx512_f32_4x16x5_blocked), (6, avx512_f32_4x16x6_blocked)],
    // One output block by up to 12 pixels: grouped convolutions in the blocked layout
    // (12 accumulators, a weight vector and a broadcast fit every tier's registers).
    blocked1 = [(1, avx512_f32_1x16x1_blocked), (2, avx512_f32_1x16x2_blocked), (3, avx512_f32_1x16x3_blocked), (4, avx512_f32_1x16x4_blocked), (5, avx512_f32_1x16x5_blocked), (6, avx512_f32_1x16x6_blocked), (7, avx512_f32_1x16x7_blocked), (8, avx512_f32_1x16x8_blocked), (9, avx512_f32_1x16x9_blocked), (10, avx512_f32_1x16x10_blocked), (11, avx512_f32_1x16x11_blocked), (12, avx512_f32_1x16x12_blocked)],
    grouped = [(1, avx512_f32_1x16x1_grouped), (2, avx512_f32_1x16x2_grouped), (3, avx512_f32_1x16x3_grouped), (4, avx512_f32_1x16x4_grouped), (5, avx512_f32_1x16x5_grouped), (6, avx512_f32_1x16x6_grouped), (7, avx512_f32_1x16x7_grouped), (8, avx512_f32_1x16x8_grouped), (9, avx512_f32_1x16x9_grouped), (10, avx512_f32_1x16x10_grouped), (11, avx512_f32_1x16x11_grouped), (12, avx512_f32_1x16x12_grouped)],
    // The weight gradient's outer-product tiles: 2 x 12 (24 accumulators) for two
    // vectors of output channels, 4 x 6 for four or more. Measured (in-process A/B,
    // ResNet-20's layers at batch 128, 2 threads): 2 x 12 over 2 x 8 0.93-0.99.
    outer = [(2, 12, avx512_f32_2x16x12_outer), (4, 6, avx512_f32_4x16x6_outer)],
    #[target_feature(enable = "avx512f,avx2,fma")]
);
