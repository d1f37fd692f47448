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

/// `sum / 2^shift` rounded half away from zero: [`round_div`] by a power of two with shifts.
#[inline(always)]
fn round_shift(sum: i32, shift: u32) -> i32 {
    let half = (1i32 << shift) >> 1;
    if sum > 0 {
        (sum + half) >> shift
    } else {
        -((half - sum) >> shift)
    }
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

/// [`bilinear_reference`] with the four weights per output pixel formed once, the channels
/// innermost over contiguous slices, and the rounding division by `(2f)²` as shifts.
pub fn bilinear_optimized(input: &[i8], shape: Shape, factor: usize, out: &mut [i8]) {
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
    if bilinear_swar(input, shape, factor, out) {
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

/// [`bilinear_optimized`] four channels per 32-bit word, for cores without a vector unit
/// (Cortex-M): each input word is made unsigned (`x + 128`, the sign bit flipped) and split into
/// two words of two 16-bit lanes (channels 0, 2 and 1, 3), so that one 32-bit multiply-add forms
/// two channels' weighted sums at once: a lane holds at most `(2f)² · 255 < 2¹⁶`, no carry
/// crosses lanes. With `v = lane − 128·(2f)²` the reference's rounding half away from zero is
/// `⌊(v + half − [v ≤ 0]) / (2f)²⌋`, and that plus 128 is the lane's byte with the sign bit
/// flipped back. Returns `false`, having written nothing, unless `C` is a multiple of four and
/// `f` a power of two up to 8 with the buffers the sizes the shape says.
pub fn bilinear_swar(input: &[i8], shape: Shape, factor: usize, out: &mut [i8]) -> bool {
    let (h, w, c) = (shape.height, shape.width, shape.channels);
    if c % 4 != 0
        || c == 0
        || h == 0
        || w == 0
        || !factor.is_power_of_two()
        || factor > 8
        || input.len() < h * w * c
        || out.len() < h * factor * w * factor * c
    {
        return false;
    }
    const LOW: u32 = 0x00ff_00ff;
    const FLIP: u32 = 0x8080_8080;
    let den = 2 * factor as u32;
    let shift = (den * den).trailing_zeros();
    let half = 1u32 << (shift - 1);
    let zero = 128u32 << shift;
    let byte = |lane: u32| (((lane + half - (lane <= zero) as u32) >> shift) & 0xff) ^ 0x80;
    let log_den = den.trailing_zeros();
    // `taps` with the division by the power of two 2f as shifts
    let taps2 = |o: usize, n: usize| -> (usize, usize, u32) {
        let num = 2 * o + 1;
        if num < factor {
            return (0, 0, 0);
        }
        let num = num - factor;
        let i0 = num >> log_den;
        (
            i0.min(n - 1),
            (i0 + 1).min(n - 1),
            (num & (den as usize - 1)) as u32,
        )
    };
    let (words, ow) = (c / 4, w * factor);
    let (src, dst) = (input.as_ptr() as *const u8, out.as_mut_ptr() as *mut u8);
    for oy in 0..h * factor {
        let (y0, y1, fy) = taps2(oy, h);
        let gy = den - fy;
        let (r0, r1) = (y0 * w * c, y1 * w * c);
        for ox in 0..ow {
            let (x0, x1, fx) = taps2(ox, w);
            let gx = den - fx;
            let (w00, w01, w10, w11) = (gy * gx, gy * fx, fy * gx, fy * fx);
            // SAFETY: y0, y1 < h and x0, x1 < w, so the four source pixels lie in `input`, the
            // destination pixel in `out` (both sizes checked above); unaligned word access.
            unsafe {
                let (a, b) = (src.add(r0 + x0 * c), src.add(r0 + x1 * c));
                let (cc, d) = (src.add(r1 + x0 * c), src.add(r1 + x1 * c));
                let o = dst.add((oy * ow + ox) * c);
                let load =
                    |p: *const u8, j: usize| (p.add(4 * j) as *const u32).read_unaligned() ^ FLIP;
                for j in 0..words {
                    let (a, b, cc, d) = (load(a, j), load(b, j), load(cc, j), load(d, j));
                    let even =
                        w00 * (a & LOW) + w01 * (b & LOW) + w10 * (cc & LOW) + w11 * (d & LOW);
                    let odd = w00 * ((a >> 8) & LOW)
                        + w01 * ((b >> 8) & LOW)
                        + w10 * ((cc >> 8) & LOW)
                        + w11 * ((d >> 8) & LOW);
                    let v = byte(even & 0xffff)
                        | byte(odd & 0xffff) << 8
                        | byte(even >> 16) << 16
                        | byte(odd >> 16) << 24;
                    (o.add(4 * j) as *mut u32).write_unaligned(v.to_le());
                }
            }
        }
    }
    true
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
        bilinear_swar_matches_reference: bilinear_reference, bilinear_swar_only,
    }

    /// [`bilinear_swar`] alone where it applies (C a multiple of four, f ≤ 8), else the reference.
    fn bilinear_swar_only(input: &[i8], shape: Shape, factor: usize, out: &mut [i8]) {
        if !shape.channels.is_multiple_of(4) || factor > 8 {
            return bilinear_reference(input, shape, factor, out);
        }
        assert!(
            bilinear_swar(input, shape, factor, out),
            "declined {shape:?} x{factor}"
        );
    }
}
