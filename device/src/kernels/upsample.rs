//! Upsampling by a power of two: nearest, and bilinear with half-pixel centres in exact integer
//! arithmetic (the weights are multiples of `1 / (2f)`, so the result is a rounded integer ratio).

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
                // round half up
                let v = (sum + den2 / 2).div_euclid(den2);
                out[(oy * ow + ox) * c + ch] = v.clamp(-128, 127) as i8;
            }
        }
    }
}
