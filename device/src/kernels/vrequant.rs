//! TFLite's `MultiplyByQuantizedMultiplier` on eight int32 lanes with AVX2, for multipliers
//! below one (`shift ≤ 0`): the doubling high multiply is ⌊(x·m + 2³⁰) / 2³¹⌋ exactly (gemmlowp's
//! nudged, truncating division, for `m ≥ 0`), then `RoundingDivideByPOT`. One definition for the
//! convolutions' per-channel output stage and the element-wise kernels' uniform ones.

use core::arch::x86_64::*;

/// One multiplier's constants as lanes: `multiplier`, the right shift `e = −shift`, `mask =
/// 2^e − 1` and `half = mask >> 1`.
#[derive(Clone, Copy)]
pub(crate) struct Lanes {
    pub multiplier: __m256i,
    pub shift: __m256i,
    pub mask: __m256i,
    pub half: __m256i,
}

impl Lanes {
    /// The same multiplier in every lane; `None` for a multiplier of one or more (a left
    /// shift) or a negative one, which the vector form does not take.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn uniform(r: depthling_model::Requant) -> Option<Lanes> {
        if r.shift > 0 || r.shift < -31 || r.multiplier < 0 {
            return None;
        }
        let e = -r.shift;
        let mask = ((1i64 << e) - 1) as i32;
        Some(Lanes {
            multiplier: _mm256_set1_epi32(r.multiplier),
            shift: _mm256_set1_epi32(e),
            mask: _mm256_set1_epi32(mask),
            half: _mm256_set1_epi32(mask >> 1),
        })
    }
}

/// `MultiplyByQuantizedMultiplier(x, m, −e)` per lane (the constants as [`Lanes`] holds them).
///
/// # Safety
/// The CPU has AVX2; every lane's multiplier is in `0..2³¹` and its shift in `0..=31`.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) unsafe fn multiply(x: __m256i, c: &Lanes) -> __m256i {
    let m = c.multiplier;
    let round = _mm256_set1_epi64x(1 << 30);
    let even = _mm256_add_epi64(_mm256_mul_epi32(x, m), round);
    let odd = _mm256_add_epi64(
        _mm256_mul_epi32(_mm256_srli_epi64::<32>(x), _mm256_srli_epi64::<32>(m)),
        round,
    );
    // bits 31..62 of each 64-bit product: the low words of a logical shift
    let high = _mm256_blend_epi32::<0b1010_1010>(
        _mm256_srli_epi64::<31>(even),
        _mm256_slli_epi64::<1>(odd),
    );
    // RoundingDivideByPOT: (x >> e) + (remainder > (mask >> 1) + (x < 0))
    let negative = _mm256_cmpgt_epi32(_mm256_setzero_si256(), high);
    let remainder = _mm256_and_si256(high, c.mask);
    let threshold = _mm256_sub_epi32(c.half, negative);
    let up = _mm256_cmpgt_epi32(remainder, threshold);
    _mm256_sub_epi32(_mm256_srav_epi32(high, c.shift), up)
}

/// `clamp(q + zero_point, lo, hi)` per lane, as the scalar `q.saturating_add(z).clamp(lo, hi)`
/// for an int8 range: `q` is first held within ±2²⁴, which keeps the addition from overflowing
/// and changes nothing after the clamp.
///
/// # Safety
/// The CPU has AVX2; `lo..=hi` within int8.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) unsafe fn finish(q: __m256i, zero_point: i32, lo: i32, hi: i32) -> __m256i {
    let q = _mm256_max_epi32(
        _mm256_min_epi32(q, _mm256_set1_epi32(1 << 24)),
        _mm256_set1_epi32(-(1 << 24)),
    );
    let q = _mm256_add_epi32(q, _mm256_set1_epi32(zero_point));
    _mm256_max_epi32(
        _mm256_min_epi32(q, _mm256_set1_epi32(hi)),
        _mm256_set1_epi32(lo),
    )
}

/// Eight int32 lanes holding int8 values, stored as 8 bytes at `dst`.
///
/// # Safety
/// The CPU has AVX2; every lane in int8; `dst` has 8 writable bytes.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) unsafe fn store8(q: __m256i, dst: *mut i8) {
    // SAFETY: by the contract.
    unsafe {
        let w = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
        _mm_storel_epi64(dst as *mut __m128i, _mm_packs_epi16(w, w));
    }
}
