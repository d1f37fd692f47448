//! Upsampling by a power of two: nearest, and bilinear with half-pixel centres in exact integer
//! arithmetic (the weights are multiples of `1 / (2f)`, so the result is a rounded integer ratio).
//! Both equal TFLite's integer kernels (`RESIZE_NEAREST_NEIGHBOR`, and `RESIZE_BILINEAR` with
//! `half_pixel_centers`: `ResizeBilinearInteger`, whose weights in units of 1/1024 are the same
//! ratios, rounding half away from zero).

use super::Shape;

pub fn nearest_reference(input: &[i8], shape: Shape, factor: usize, out: &mut [i8]) {
    let (w, c) = (shape.width, shape.channels);
    let ow = w * factor;
    for oy in 0..shape.height * factor {
        let y = oy / factor;
        for ox in 0..ow {
            let x = ox / factor;
            let src = &input[(y * w + x) * c..(y * w + x) * c + c];
            out[(oy * ow + ox) * c..(oy * ow + ox) * c + c].copy_from_slice(src);
        }
    }
}

/// [`nearest_reference`] a row at a time: one output row is built by repeating pixels, then
/// copied for the other `factor − 1` rows.
pub fn nearest_optimized(input: &[i8], shape: Shape, factor: usize, out: &mut [i8]) {
    let (w, c) = (shape.width, shape.channels);
    let row = w * factor * c;
    for (y, src) in input.chunks_exact(w * c).take(shape.height).enumerate() {
        let first = y * factor * row;
        for (x, px) in src.chunks_exact(c).enumerate() {
            for r in 0..factor {
                let at = first + (x * factor + r) * c;
                out[at..at + c].copy_from_slice(px);
            }
        }
        for r in 1..factor {
            out.copy_within(first..first + row, first + r * row);
        }
    }
}

/// `sum / 2^shift` rounded half away from zero: [`round_div`] by a power of two with shifts, for
/// `shift` ≥ 1 (the divisors here are `(2f)²` ≥ 4).
#[inline(always)]
fn round_shift(sum: i32, shift: u32) -> i32 {
    // for sum ≤ 0, −⌊(half − sum) / 2ˢ⌋ = ⌊(sum + half − 1) / 2ˢ⌋ (2ˢ = 2·half): no branch
    let half = (1i32 << shift) >> 1;
    (sum + half - (sum <= 0) as i32) >> shift
}

/// `sum / den2` rounded half away from zero (division truncating toward zero, as in C++).
#[inline]
fn round_div(sum: i32, den2: i32) -> i32 {
    if sum > 0 {
        (sum + den2 / 2) / den2
    } else {
        (sum - den2 / 2) / den2
    }
}

/// Source index pair and weight (of the second, out of `2 · factor`) for output coordinate `o`.
#[inline]
fn taps(o: usize, factor: usize, n: usize) -> (usize, usize, i32) {
    let den = 2 * factor as isize;
    // source coordinate (o + 0.5) / f − 0.5, in units of 1 / (2f)
    let num = 2 * o as isize + 1 - factor as isize;
    if num < 0 {
        return (0, 0, 0);
    }
    let i0 = (num / den) as usize;
    let frac = (num % den) as i32;
    let i0c = i0.min(n - 1);
    let i1 = (i0 + 1).min(n - 1);
    (i0c, i1, frac)
}

pub fn bilinear_reference(input: &[i8], shape: Shape, factor: usize, out: &mut [i8]) {
    let (h, w, c) = (shape.height, shape.width, shape.channels);
    let ow = w * factor;
    let den = 2 * factor as i32;
    let den2 = den * den;
    for oy in 0..h * factor {
        let (y0, y1, fy) = taps(oy, factor, h);
        for ox in 0..ow {
            let (x0, x1, fx) = taps(ox, factor, w);
            let w00 = (den - fy) * (den - fx);
            let w01 = (den - fy) * fx;
            let w10 = fy * (den - fx);
            let w11 = fy * fx;
            for ch in 0..c {
                let at = |y: usize, x: usize| input[(y * w + x) * c + ch] as i32;
                let sum = w00 * at(y0, x0) + w01 * at(y0, x1) + w10 * at(y1, x0) + w11 * at(y1, x1);
                let v = round_div(sum, den2);
                out[(oy * ow + ox) * c + ch] = v.clamp(-128, 127) as i8;
            }
        }
    }
}

/// [`bilinear_with`] the fastest kernel table this build and CPU have.
pub fn bilinear_optimized(input: &[i8], shape: Shape, factor: usize, out: &mut [i8]) {
    bilinear_with(super::KernelSet::detect(), input, shape, factor, out)
}

/// [`bilinear_with`] the portable table (no SIMD beyond what LLVM finds).
pub fn bilinear_portable(input: &[i8], shape: Shape, factor: usize, out: &mut [i8]) {
    bilinear_with(super::KernelSet::Portable, input, shape, factor, out)
}

/// [`bilinear_reference`] with kernel table `set`: the reference itself for
/// [`super::KernelSet::Reference`]; AVX2 ×2 … ×32 for the x86-64 AVX2 and AVX-512 tables; the
/// separable kernel on 32-bit Arm; elsewhere the four weights per output pixel formed once,
/// the channels innermost over contiguous slices, and the rounding division by `(2f)²` as
/// shifts.
pub fn bilinear_with(
    set: super::KernelSet,
    input: &[i8],
    shape: Shape,
    factor: usize,
    out: &mut [i8],
) {
    if set == super::KernelSet::Reference {
        return bilinear_reference(input, shape, factor, out);
    }
    let (h, w, c) = (shape.height, shape.width, shape.channels);
    let ow = w * factor;
    let den = 2 * factor as i32;
    let den2 = den * den;
    if den2.count_ones() != 1 {
        // the IR's factors are powers of two; anything else divides
        return bilinear_reference(input, shape, factor, out);
    }
    let shift = den2.trailing_zeros();
    #[cfg(target_arch = "arm")]
    if bilinear_separable(input, shape, factor, out) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `avx2::bilinear` needs AVX2, which `has_avx2` checked.
    if matches!(
        set,
        super::KernelSet::X86Avx2 | super::KernelSet::X86AvxVnni | super::KernelSet::X86Avx512Vnni
    ) && super::conv::has_avx2()
        && unsafe { avx2::bilinear(input, shape, factor, out) }
    {
        return;
    }
    let px = |y: usize, x: usize| &input[(y * w + x) * c..(y * w + x) * c + c];
    for oy in 0..h * factor {
        let (y0, y1, fy) = taps(oy, factor, h);
        for ox in 0..ow {
            let (x0, x1, fx) = taps(ox, factor, w);
            let weights = [
                (den - fy) * (den - fx),
                (den - fy) * fx,
                fy * (den - fx),
                fy * fx,
            ];
            let (a, b, cc, d) = (px(y0, x0), px(y0, x1), px(y1, x0), px(y1, x1));
            let dst = &mut out[(oy * ow + ox) * c..(oy * ow + ox) * c + c];
            for (ch, o) in dst.iter_mut().enumerate() {
                let sum = weights[0] * a[ch] as i32
                    + weights[1] * b[ch] as i32
                    + weights[2] * cc[ch] as i32
                    + weights[3] * d[ch] as i32;
                *o = round_shift(sum, shift).clamp(-128, 127) as i8;
            }
        }
    }
}

/// Calls `emit(ox, left, right, fx)` for every output column `ox` of a bilinear ×`F` (`F` a
/// power of two ≥ 2) upsampling of `w` columns, in order, with the column values `vert(x)` of
/// its two source columns and the weight `fx` of the right one (out of `2F`). With half-pixel
/// centres the columns fall in a fixed pattern: the first and last `F / 2` outputs copy the edge
/// column (`fx` = 0), and between columns `x` and `x + 1` lie `F` outputs with `fx` = 1, 3, …,
/// 2F − 1: each source column is formed once. `F` is a constant so that the `F` outputs unroll
/// with constant weights.
#[inline(always)]
fn for_columns<const F: usize, V: Copy>(
    w: usize,
    mut vert: impl FnMut(usize) -> V,
    mut emit: impl FnMut(usize, V, V, u32),
) {
    let mut prev = vert(0);
    let mut ox = 0;
    for _ in 0..F / 2 {
        emit(ox, prev, prev, 0);
        ox += 1;
    }
    for x in 1..w {
        let next = vert(x);
        for r in 0..F {
            emit(ox, prev, next, 2 * r as u32 + 1);
            ox += 1;
        }
        prev = next;
    }
    for _ in 0..F / 2 {
        emit(ox, prev, prev, 0);
        ox += 1;
    }
}

/// [`bilinear_optimized`] separably, for cores without a vector unit (Cortex-M): per output row,
/// each source column's vertical sum `gy·a + fy·c` is formed once and shared by the `factor`
/// output columns around it ([`for_columns`]), which add `gx·left + fx·right`: the same exact
/// integer sum as the reference, so the same rounding. Four channels go in one 32-bit word where
/// `factor` ≤ 4: the input made unsigned (`x + 128`, the sign bit flipped) and split into two
/// words of two 16-bit lanes (channels 0, 2 and 1, 3); a lane holds at most `(2f)² · 255 < 2¹⁵`,
/// so no carry crosses lanes and the test `lane ≤ 128·(2f)²` is the sign bit of
/// `2¹⁵ + 128·(2f)² − lane`. With `v = lane − 128·(2f)²` the reference's rounding half away from
/// zero is `⌊(v + half − [v ≤ 0]) / (2f)²⌋`, and that plus 128 is the lane's byte with the sign
/// bit flipped back. The other channels (all of them for `factor` ≥ 8) go one at a time in
/// 32-bit arithmetic. Returns `false`, having written nothing, unless `factor` is a power of two
/// from 2 to 16 (the IR's factors) and the buffers are the sizes the shape says.
pub fn bilinear_separable(input: &[i8], shape: Shape, factor: usize, out: &mut [i8]) -> bool {
    let (h, w, c) = (shape.height, shape.width, shape.channels);
    if c == 0
        || h == 0
        || w == 0
        || input.len() < h * w * c
        || out.len() < h * factor * w * factor * c
    {
        return false;
    }
    match factor {
        2 => separable::<2>(input, shape, out),
        4 => separable::<4>(input, shape, out),
        8 => separable::<8>(input, shape, out),
        16 => separable::<16>(input, shape, out),
        _ => return false,
    }
    true
}

/// [`bilinear_separable`] for factor `F`, the shapes checked.
fn separable<const F: usize>(input: &[i8], shape: Shape, out: &mut [i8]) {
    let (h, w, c, factor) = (shape.height, shape.width, shape.channels, F);
    const LOW: u32 = 0x00ff_00ff;
    const FLIP: u32 = 0x8080_8080;
    let den = 2 * factor as u32;
    let shift = (den * den).trailing_zeros();
    let half = 1u32 << (shift - 1);
    let (half2, zero_test) = (half * 0x0001_0001, (0x8000 + (128 << shift)) * 0x0001_0001);
    let log_den = den.trailing_zeros();
    let words = if factor <= 4 { c / 4 } else { 0 };
    let ow = w * factor;
    let (src, dst) = (input.as_ptr() as *const u8, out.as_mut_ptr() as *mut u8);
    for oy in 0..h * factor {
        // the source rows and the weight of the second, as `taps` with shifts
        let (y0, y1, fy) = match (2 * oy + 1).checked_sub(factor) {
            None => (0, 0, 0),
            Some(num) => {
                let i0 = num >> log_den;
                (
                    i0.min(h - 1),
                    (i0 + 1).min(h - 1),
                    (num & (den as usize - 1)) as u32,
                )
            }
        };
        let gy = den - fy;
        let (r0, r1, o) = (y0 * w * c, y1 * w * c, oy * ow * c);
        for j in 0..words {
            // SAFETY: x < w and y0, y1 < h, so both source words lie in `input`; ox < ow and
            // 4j + 4 ≤ c, so the output word lies in `out` (sizes checked above); unaligned.
            let load = |at: usize| unsafe { (src.add(at) as *const u32).read_unaligned() ^ FLIP };
            let vert = |x: usize| {
                let (a, b) = (load(r0 + x * c + 4 * j), load(r1 + x * c + 4 * j));
                (
                    gy * (a & LOW) + fy * (b & LOW),
                    gy * ((a >> 8) & LOW) + fy * ((b >> 8) & LOW),
                )
            };
            let lanes = |sum: u32| {
                let flag = ((zero_test - sum) >> 15) & 0x0001_0001;
                ((sum + half2 - flag) >> shift) & LOW
            };
            for_columns::<F, _>(w, vert, |ox, (le, lo), (re, ro), fx| {
                let gx = den - fx;
                let v = (lanes(gx * le + fx * re) | lanes(gx * lo + fx * ro) << 8) ^ FLIP;
                // SAFETY: as above.
                unsafe { (dst.add(o + ox * c + 4 * j) as *mut u32).write_unaligned(v.to_le()) };
            });
        }
        let (den, shift) = (den as i32, shift);
        let (gy, fy) = (gy as i32, fy as i32);
        for ch in 4 * words..c {
            let vert =
                |x: usize| gy * input[r0 + x * c + ch] as i32 + fy * input[r1 + x * c + ch] as i32;
            for_columns::<F, _>(w, vert, |ox, left, right, fx| {
                let sum = (den - fx as i32) * left + fx as i32 * right;
                // a bilinear mix of int8 stays int8
                out[o + ox * c + ch] = round_shift(sum, shift) as i8;
            });
        }
    }
}

/// Bilinear ×2 and ×4 on x86-64 with AVX2, separably as [`bilinear_separable`]: per output row,
/// each source column's vertical sum `gy·a + fy·c` for 16 channels in int16 lanes (at most
/// `2f·128`), then `gx·left + fx·right` per output column (at most `(2f)²·128 = 8192` for
/// f ≤ 4, so int16 holds it) and the rounding division by `(2f)²` half away from zero as
/// `(sum + half − [sum ≤ 0]) >> shift`, 16 channels at a time; 8 with SSE4.1 after that, the
/// rest one by one.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{for_columns, round_shift, Shape};
    use core::arch::x86_64::*;

    /// Returns `false`, having written nothing, unless `factor` is 2, 4, 8, 16 or 32 and the
    /// buffers are the sizes the shape says.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn bilinear(
        input: &[i8],
        shape: Shape,
        factor: usize,
        out: &mut [i8],
    ) -> bool {
        let (h, w, c) = (shape.height, shape.width, shape.channels);
        if c == 0
            || h == 0
            || w == 0
            || input.len() < h * w * c
            || out.len() < h * factor * w * factor * c
        {
            return false;
        }
        // SAFETY: AVX2 as the caller guarantees; the shapes checked.
        unsafe {
            match factor {
                2 => rows::<2>(input, shape, out),
                4 => rows::<4>(input, shape, out),
                8 => rows_wide::<8>(input, shape, out),
                16 => rows_wide::<16>(input, shape, out),
                32 => rows_wide::<32>(input, shape, out),
                _ => return false,
            }
        }
        true
    }

    /// [`rows`] for factors whose sums outgrow int16 (`(2f)²·128 > 2¹⁵` from f = 16; f = 8 too,
    /// for simplicity): 8 channels at a time in int32 lanes, the rest one by one.
    ///
    /// # Safety
    /// AVX2; the buffers checked by [`bilinear`].
    #[target_feature(enable = "avx2")]
    unsafe fn rows_wide<const F: usize>(input: &[i8], shape: Shape, out: &mut [i8]) {
        let (h, w, c) = (shape.height, shape.width, shape.channels);
        let den = 2 * F as i32;
        let shift = (den * den).trailing_zeros();
        let half = 1i32 << (shift - 1);
        let ow = w * F;
        let (src, dst) = (input.as_ptr(), out.as_mut_ptr());
        let eights = c / 8;
        for oy in 0..h * F {
            let (y0, y1, fy) = super::taps(oy, F, h);
            let gy = den - fy;
            let (r0, r1, o) = (y0 * w * c, y1 * w * c, oy * ow * c);
            // SAFETY: x < w and y0, y1 < h: the 8-byte source loads lie in `input`; ox < ow:
            // the 8-byte stores in `out` (sizes checked by `bilinear`); unaligned.
            unsafe {
                let (gyv, fyv) = (_mm256_set1_epi32(gy), _mm256_set1_epi32(fy));
                let halfv = _mm256_set1_epi32(half);
                let one = _mm256_set1_epi32(1);
                let zero = _mm256_setzero_si256();
                let count = _mm_cvtsi32_si128(shift as i32);
                for b in 0..eights {
                    let ch = 8 * b;
                    let ld = |at: usize| {
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64(src.add(at) as *const __m128i))
                    };
                    let vert = |x: usize| {
                        let (a, d) = (ld(r0 + x * c + ch), ld(r1 + x * c + ch));
                        _mm256_add_epi32(_mm256_mullo_epi32(a, gyv), _mm256_mullo_epi32(d, fyv))
                    };
                    for_columns::<F, _>(w, vert, |ox, l, r, fx| {
                        let (gx, fx) = (
                            _mm256_set1_epi32(den - fx as i32),
                            _mm256_set1_epi32(fx as i32),
                        );
                        let sum =
                            _mm256_add_epi32(_mm256_mullo_epi32(l, gx), _mm256_mullo_epi32(r, fx));
                        // [sum ≤ 0] as 1 or 0: (sum > 0) is −1 or 0
                        let nonpos = _mm256_add_epi32(_mm256_cmpgt_epi32(sum, zero), one);
                        let v = _mm256_sub_epi32(_mm256_add_epi32(sum, halfv), nonpos);
                        let v = _mm256_sra_epi32(v, count);
                        let words = _mm_packs_epi32(
                            _mm256_castsi256_si128(v),
                            _mm256_extracti128_si256::<1>(v),
                        );
                        let bytes = _mm_packs_epi16(words, words);
                        _mm_storel_epi64(dst.add(o + ox * c + ch) as *mut __m128i, bytes);
                    });
                }
            }
            for ch in 8 * eights..c {
                let vert = |x: usize| {
                    gy * input[r0 + x * c + ch] as i32 + fy * input[r1 + x * c + ch] as i32
                };
                for_columns::<F, _>(w, vert, |ox, left, right, fx| {
                    let sum = (den - fx as i32) * left + fx as i32 * right;
                    out[o + ox * c + ch] = round_shift(sum, shift) as i8;
                });
            }
        }
    }

    /// # Safety
    /// AVX2; the buffers checked by [`bilinear`].
    #[target_feature(enable = "avx2")]
    unsafe fn rows<const F: usize>(input: &[i8], shape: Shape, out: &mut [i8]) {
        let (h, w, c) = (shape.height, shape.width, shape.channels);
        let den = 2 * F as i32;
        let shift = (den * den).trailing_zeros();
        let half = 1i32 << (shift - 1);
        let ow = w * F;
        let (src, dst) = (input.as_ptr(), out.as_mut_ptr());
        let blocks = c / 16;
        let eights = (c % 16) / 8;
        let done = 16 * blocks + 8 * eights;
        for oy in 0..h * F {
            let (y0, y1, fy) = super::taps(oy, F, h);
            let gy = den - fy;
            let (r0, r1, o) = (y0 * w * c, y1 * w * c, oy * ow * c);
            // SAFETY: x < w and y0, y1 < h: the source loads lie in `input`; ox < ow: the
            // stores in `out` (sizes checked by `bilinear`); unaligned.
            unsafe {
                let (gyv, fyv) = (_mm256_set1_epi16(gy as i16), _mm256_set1_epi16(fy as i16));
                let halfv = _mm256_set1_epi16(half as i16);
                let one = _mm256_set1_epi16(1);
                let zero = _mm256_setzero_si256();
                for b in 0..blocks {
                    let ch = 16 * b;
                    let ld = |at: usize| {
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(src.add(at) as *const __m128i))
                    };
                    let vert = |x: usize| {
                        let (a, d) = (ld(r0 + x * c + ch), ld(r1 + x * c + ch));
                        _mm256_add_epi16(_mm256_mullo_epi16(a, gyv), _mm256_mullo_epi16(d, fyv))
                    };
                    for_columns::<F, _>(w, vert, |ox, l, r, fx| {
                        let (gx, fx) = (
                            _mm256_set1_epi16((den - fx as i32) as i16),
                            _mm256_set1_epi16(fx as i16),
                        );
                        let sum =
                            _mm256_add_epi16(_mm256_mullo_epi16(l, gx), _mm256_mullo_epi16(r, fx));
                        // [sum ≤ 0] as 1 or 0: (sum > 0) is −1 or 0
                        let nonpos = _mm256_add_epi16(_mm256_cmpgt_epi16(sum, zero), one);
                        let v = _mm256_sub_epi16(_mm256_add_epi16(sum, halfv), nonpos);
                        let v = _mm256_sra_epi16(v, _mm_cvtsi32_si128(shift as i32));
                        let bytes = _mm_packs_epi16(
                            _mm256_castsi256_si128(v),
                            _mm256_extracti128_si256::<1>(v),
                        );
                        _mm_storeu_si128(dst.add(o + ox * c + ch) as *mut __m128i, bytes);
                    });
                }
                if eights > 0 {
                    let ch = 16 * blocks;
                    let (gyv, fyv) = (_mm_set1_epi16(gy as i16), _mm_set1_epi16(fy as i16));
                    let (halfv, one, zero) = (
                        _mm_set1_epi16(half as i16),
                        _mm_set1_epi16(1),
                        _mm_setzero_si128(),
                    );
                    let ld = |at: usize| {
                        _mm_cvtepi8_epi16(_mm_loadl_epi64(src.add(at) as *const __m128i))
                    };
                    let vert = |x: usize| {
                        let (a, d) = (ld(r0 + x * c + ch), ld(r1 + x * c + ch));
                        _mm_add_epi16(_mm_mullo_epi16(a, gyv), _mm_mullo_epi16(d, fyv))
                    };
                    for_columns::<F, _>(w, vert, |ox, l, r, fx| {
                        let (gx, fx) = (
                            _mm_set1_epi16((den - fx as i32) as i16),
                            _mm_set1_epi16(fx as i16),
                        );
                        let sum = _mm_add_epi16(_mm_mullo_epi16(l, gx), _mm_mullo_epi16(r, fx));
                        let nonpos = _mm_add_epi16(_mm_cmpgt_epi16(sum, zero), one);
                        let v = _mm_sub_epi16(_mm_add_epi16(sum, halfv), nonpos);
                        let v = _mm_sra_epi16(v, _mm_cvtsi32_si128(shift as i32));
                        let bytes = _mm_packs_epi16(v, v);
                        _mm_storel_epi64(dst.add(o + ox * c + ch) as *mut __m128i, bytes);
                    });
                }
            }
            for ch in done..c {
                let vert = |x: usize| {
                    gy * input[r0 + x * c + ch] as i32 + fy * input[r1 + x * c + ch] as i32
                };
                for_columns::<F, _>(w, vert, |ox, left, right, fx| {
                    let sum = (den - fx as i32) * left + fx as i32 * right;
                    out[o + ox * c + ch] = round_shift(sum, shift) as i8;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    /// Every optimized upsampling equals the reference bit for bit, for both modes.
    macro_rules! upsample_family_matches_reference {
        ($($name:ident: $reference:path, $kernel:path,)*) => {$(
            #[test]
            fn $name() {
                let mut rng = super::super::TestRng(0x0b5e);
                let mut next = || rng.next();
                for case in 0..300 {
                    let shape = Shape { height: 1 + next() as usize % 9, width: 1 + next() as usize % 9, channels: 1 + next() as usize % 40 };
                    let factor = [1usize, 2, 4, 8, 16][case % 5];
                    let data: std::vec::Vec<i8> = (0..shape.elements()).map(|_| next() as i8).collect();
                    let n = shape.elements() * factor * factor;
                    let (mut r, mut o) = (std::vec![0i8; n], std::vec![0i8; n]);
                    $reference(&data, shape, factor, &mut r);
                    $kernel(&data, shape, factor, &mut o);
                    assert_eq!(r, o, "case {case}: {shape:?} ×{factor}");
                }
            }
        )*};
    }

    upsample_family_matches_reference! {
        nearest_optimized_matches_reference: nearest_reference, nearest_optimized,
        bilinear_optimized_matches_reference: bilinear_reference, bilinear_optimized,
        bilinear_separable_matches_reference: bilinear_reference, bilinear_separable_only,
        bilinear_avx2_matches_reference: bilinear_reference, bilinear_avx2_only,
    }

    /// The AVX2 kernel alone where it applies (×2 … ×16 on a CPU with AVX2), else the reference.
    fn bilinear_avx2_only(input: &[i8], shape: Shape, factor: usize, out: &mut [i8]) {
        #[cfg(target_arch = "x86_64")]
        if super::super::conv::has_avx2() && matches!(factor, 2 | 4 | 8 | 16) {
            // SAFETY: AVX2 checked.
            assert!(
                unsafe { avx2::bilinear(input, shape, factor, out) },
                "declined"
            );
            return;
        }
        bilinear_reference(input, shape, factor, out)
    }

    /// [`bilinear_separable`] alone where it applies (f ≥ 2), else the reference.
    fn bilinear_separable_only(input: &[i8], shape: Shape, factor: usize, out: &mut [i8]) {
        if factor < 2 {
            return bilinear_reference(input, shape, factor, out);
        }
        assert!(
            bilinear_separable(input, shape, factor, out),
            "declined {shape:?} x{factor}"
        );
    }
}
