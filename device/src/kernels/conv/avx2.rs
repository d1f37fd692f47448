//! Depth heads (dense convolutions to one output channel) on x86-64 with AVX2, from the ring of
//! padded input rows ([`super::rows`]) as signed bytes: the padding holds the zero point, so
//! `Σ (x − z)·w = Σ x·w − z·Σ w` with the second term folded into the bias, and every pixel is an
//! inner one. Each pixel's `k` runs of `k·C_in` bytes meet the weight rows (int16, zero past each
//! run) 16 values a step: `VPMOVSXBW` of 16 input bytes, `VPMADDWD` against the weights
//! (`|x|·|w| ≤ 128·128`, two products per lane: no overflow), `VPADDD`; four pixels share each
//! weight load; one horizontal sum per pixel. The general GEMM would fill one lane of eight.

use super::rows::{band_fits, folded, ring_fits, Rows};
use super::ConvParams;
use core::arch::x86_64::*;
use core::ops::Range;

/// Most int16 weights of a head (`k` rows of whole 16-value chunks): 14 KiB on the stack.
const WEIGHTS: usize = 7 * 1024;
/// Pixels per step.
const PIXELS: usize = 4;

/// Runs output rows `band` of `p` into `out` (that band's bytes) if it is a dense convolution
/// to one output channel whose padded rows fit the ring
/// and whose weights fit [`WEIGHTS`] (returns `false`, having written nothing, otherwise).
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn head(
    p: &ConvParams<'_>,
    input: &[i8],
    out: &mut [u8],
    band: Range<usize>,
) -> bool {
    let (ih, iw, ic) = (p.input.height, p.input.width, p.input.channels);
    let (oh, ow) = (p.output.height, p.output.width);
    let (k, s) = (p.kernel, p.stride);
    let run = k * ic;
    let chunks = run.div_ceil(16);
    if p.depthwise
        || p.output.channels != 1
        || ic == 0
        || k == 0
        || s == 0
        || !ring_fits(p)
        || k * chunks * 16 > WEIGHTS
        || (oh, ow) != (ih.div_ceil(s), iw.div_ceil(s))
        || input.len() < ih * iw * ic
        || p.weights.len() < k * run
        || !band_fits(p, &band, out.len())
    {
        return false;
    }
    let mut wbuf = [0i16; WEIGHTS];
    for ky in 0..k {
        for (d, &w) in wbuf[ky * chunks * 16..][..run]
            .iter_mut()
            .zip(&p.weights[ky * run..(ky + 1) * run])
        {
            *d = w as i16;
        }
    }
    let finish = folded(p, 0, p.input_zero_point);
    let mut rows = Rows::new(p, 0);
    for oy in band.clone() {
        let runs = rows.output_row(p, input, oy);
        let mut ox = 0;
        while ox < ow {
            let m = PIXELS.min(ow - ox);
            // SAFETY: AVX2 as the caller guarantees. Pixel ox + i's run in row ky is `run`
            // bytes from runs[ky] + (ox + i)·s·C_in, inside its slot (padded column
            // (ox + i)·s + k − 1 < W_in + 2·pad); the 16-byte loads read at most 15 bytes past
            // it, into the next slot or the ring's 64 bytes of slack, against zero weights.
            let sums = unsafe {
                let mut acc = [_mm256_setzero_si256(); PIXELS];
                for (ky, &row) in runs[..k].iter().enumerate() {
                    let x: [*const u8; PIXELS] =
                        core::array::from_fn(|i| row.add((ox + i.min(m - 1)) * s * ic));
                    let w = wbuf.as_ptr().add(ky * chunks * 16);
                    for c in 0..chunks {
                        let wv = _mm256_loadu_si256(w.add(16 * c) as *const __m256i);
                        for (a, &xp) in acc.iter_mut().zip(&x) {
                            let xv = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                                xp.add(16 * c) as *const __m128i
                            ));
                            *a = _mm256_add_epi32(*a, _mm256_madd_epi16(xv, wv));
                        }
                    }
                }
                acc.map(|a| {
                    let v =
                        _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a));
                    let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
                    let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b10_11_00_01>(v));
                    _mm_cvtsi128_si32(v)
                })
            };
            for (i, &sum) in sums.iter().enumerate().take(m) {
                finish.store(out, (oy - band.start) * ow + ox + i, sum);
            }
            ox += m;
        }
    }
    true
}
