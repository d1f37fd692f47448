//! Depth heads (dense convolutions to one output channel) on x86-64 with AVX2, from the ring of
//! padded input rows ([`super::rows`]) as signed bytes: the padding holds the zero point, so
//! `Σ (x − z)·w = Σ x·w − z·Σ w` with the second term folded into the bias, and every pixel is an
//! inner one. Each pixel's `k` runs of `k·C_in` bytes meet the weight rows (int16, zero past each
//! run) 16 values a step: `VPMOVSXBW` of 16 input bytes, `VPMADDWD` against the weights
//! (`|x|·|w| ≤ 128·128`, two products per lane: no overflow), `VPADDD`; four pixels share each
//! weight load; one horizontal sum per pixel. The general GEMM would fill one lane of eight.
//!
//! Depthwise convolutions ([`depthwise`]) read the same ring: blocks of 16 channels in two
//! registers of eight int32 lanes; a tap is two `VPMOVSXBD` of 8 input bytes and two `VPMADDWD`
//! against the tap's weights as int16 pairs `(w, 0)` (the lane's low half, the input, times
//! `w`; its high half, the input's sign, times 0), so every pixel is an inner one and the only
//! branch is the loop's.

use super::pointwise::Requant8;
use super::rows::{band_fits, folded, ring_fits, Rows};
use super::{ConvParams, Finish};
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

/// Runs output rows `band` of `p` into `out` (that band's bytes) if it is a depthwise
/// convolution (`k ≤ 7`) whose padded rows fit the ring (returns `false`, having written
/// nothing, otherwise). The zero point's share, `z·Σw`, leaves the bias; the output stage is
/// [`Requant8`]'s per eight channels.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn depthwise(
    p: &ConvParams<'_>,
    input: &[i8],
    out: &mut [u8],
    band: Range<usize>,
) -> bool {
    const LANES: usize = 16;
    let c = p.input.channels;
    let ow = p.output.width;
    let (k, s) = (p.kernel, p.stride);
    // the shapes and the input as `depthwise_fits` checks them; the output is the band's
    if !super::depthwise_fits(p, input.len(), usize::MAX, 7)
        || !ring_fits(p)
        || !band_fits(p, &band, out.len())
    {
        return false;
    }
    let zp = p.input_zero_point;
    let mut rows = Rows::new(p, 0);
    for c0 in (0..c).step_by(LANES) {
        let n = LANES.min(c - c0);
        // the taps' weights as (w, 0) int16 pairs, zero past the block's channels
        let mut wbuf = [[0i32; LANES]; 49];
        for (t, row) in wbuf.iter_mut().enumerate().take(k * k) {
            for (j, v) in row.iter_mut().enumerate().take(n) {
                *v = p.weights[t * c + c0 + j] as i16 as u16 as i32;
            }
        }
        let finishes: [[Finish; 8]; 2] = core::array::from_fn(|h| {
            core::array::from_fn(|j| folded(p, (c0 + 8 * h + j).min(c - 1), zp))
        });
        let vector = [Requant8::new(&finishes[0]), Requant8::new(&finishes[1])];
        rows.held = [i32::MIN; 7];
        for oy in band.clone() {
            let runs = rows.output_row(p, input, oy);
            for ox in 0..ow {
                // SAFETY: AVX2 as the caller guarantees; tap (ky, kx) reads 16 bytes at
                // runs[ky] + ((ox·s + kx)·C + c0), within the slot's padded columns plus at
                // most 15 bytes past the block (the next pixel, another slot or the slack);
                // `wbuf` rows hold 16 words.
                let sums = unsafe {
                    let x = runs.map(|r| r.wrapping_add(ox * s * c + c0));
                    if k == 3 {
                        taps::<3>(&x, c, &wbuf)
                    } else {
                        taps_k(&x, k, c, &wbuf)
                    }
                };
                let base = ((oy - band.start) * ow + ox) * c + c0;
                for (h, sums) in sums.iter().enumerate() {
                    let lanes = n.saturating_sub(8 * h).min(8);
                    if lanes == 0 {
                        break;
                    }
                    let at = base + 8 * h;
                    match &vector[h] {
                        Some(v) => {
                            // SAFETY: AVX2 as the caller guarantees.
                            let q = unsafe { v.apply(sums) };
                            for (o, &q) in out[at..at + lanes].iter_mut().zip(&q) {
                                *o = q as i8 as u8;
                            }
                        }
                        None => {
                            for (j, f) in finishes[h].iter().enumerate().take(lanes) {
                                f.store(out, at + j, sums[j]);
                            }
                        }
                    }
                }
            }
        }
    }
    true
}

/// The sums of one pixel's 16 channels over the `K × K` taps of a depthwise kernel: tap
/// `(ky, kx)` reads 16 bytes at `x[ky] + kx·c`, against `w[ky·K + kx]`.
///
/// # Safety
/// AVX2; the reads as [`depthwise`] says.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn taps<const K: usize>(x: &[*const u8; 7], c: usize, w: &[[i32; 16]; 49]) -> [[i32; 8]; 2] {
    // SAFETY: by the contract; unaligned loads.
    unsafe { tap_sums(x, K, c, w) }
}

/// [`taps`] for a kernel size known at run time.
///
/// # Safety
/// As [`taps`].
#[target_feature(enable = "avx2")]
unsafe fn taps_k(x: &[*const u8; 7], k: usize, c: usize, w: &[[i32; 16]; 49]) -> [[i32; 8]; 2] {
    // SAFETY: by the contract.
    unsafe { tap_sums(x, k, c, w) }
}

/// The loops of [`taps`] and [`taps_k`] (inlined into each: with `K` known the taps unroll).
///
/// # Safety
/// As [`taps`].
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn tap_sums(x: &[*const u8; 7], k: usize, c: usize, w: &[[i32; 16]; 49]) -> [[i32; 8]; 2] {
    // SAFETY: by the callers' contract; unaligned loads.
    unsafe {
        let mut acc = [_mm256_setzero_si256(); 2];
        for (ky, &row) in x.iter().enumerate().take(k) {
            for kx in 0..k {
                let xp = row.add(kx * c);
                let wp = w.as_ptr().add(ky * k + kx) as *const i32;
                for (h, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_cvtepi8_epi32(_mm_loadl_epi64(xp.add(8 * h) as *const __m128i));
                    let wv = _mm256_loadu_si256(wp.add(8 * h) as *const __m256i);
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(xv, wv));
                }
            }
        }
        acc.map(|a| {
            let mut v = [0i32; 8];
            _mm256_storeu_si256(v.as_mut_ptr() as *mut __m256i, a);
            v
        })
    }
}
