//! Convolution (dense OHWI and depthwise HWC), padding `k / 2`, stride 1 or 2.

use super::Shape;
use depthling_model::{read_f32, read_i32, read_requant};

/// What happens to each int32 accumulator.
#[derive(Clone, Copy, Debug)]
pub enum OutputStage<'a> {
    /// Requantize per channel to int8, add the zero point, clamp; with a LUT (fused sigmoid),
    /// `zero_point` is the pre-activation one and `pre + 128` indexes the table.
    Int8 {
        /// `(multiplier, shift)` per channel, little endian.
        requant: &'a [u8],
        zero_point: i32,
        act_min: i32,
        act_max: i32,
        lut: Option<&'a [i8]>,
    },
    /// Dequantize to f32: `acc · s_in · s_w[c]` (little-endian f32 bytes out).
    F32 {
        input_scale: f32,
        /// f32 per channel, little endian.
        weight_scales: &'a [u8],
    },
}

/// Geometry and constants of one convolution.
#[derive(Clone, Copy, Debug)]
pub struct ConvParams<'a> {
    pub input: Shape,
    pub output: Shape,
    pub kernel: usize,
    pub stride: usize,
    pub depthwise: bool,
    pub input_zero_point: i32,
    pub weights: &'a [i8],
    /// int32 per output channel, little endian.
    pub bias: &'a [u8],
    pub stage: OutputStage<'a>,
}

/// Finishes one accumulator into `out` at element `index`.
#[inline]
fn store(stage: &OutputStage<'_>, out: &mut [u8], index: usize, channel: usize, acc: i32) {
    match *stage {
        OutputStage::Int8 {
            requant,
            zero_point,
            act_min,
            act_max,
            lut,
        } => {
            let r = read_requant(requant, channel).unwrap_or(depthling_model::Requant {
                multiplier: 0,
                shift: 0,
            });
            let v = r.apply(acc).saturating_add(zero_point);
            let q = match lut {
                Some(lut) => lut[(v.clamp(-128, 127) + 128) as usize],
                None => v.clamp(act_min, act_max) as i8,
            };
            out[index] = q as u8;
        }
        OutputStage::F32 {
            input_scale,
            weight_scales,
        } => {
            let s = read_f32(weight_scales, channel).unwrap_or(0.0);
            let v = acc as f32 * (input_scale * s);
            out[4 * index..4 * index + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// The reference convolution: direct loops, int32 accumulation.
pub fn reference(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
    let (ih, iw, ic) = (
        p.input.height as isize,
        p.input.width as isize,
        p.input.channels,
    );
    let oc = p.output.channels;
    let k = p.kernel as isize;
    let pad = k / 2;
    for oy in 0..p.output.height {
        for ox in 0..p.output.width {
            let y0 = (oy * p.stride) as isize - pad;
            let x0 = (ox * p.stride) as isize - pad;
            for co in 0..oc {
                let mut acc = read_i32(p.bias, co).unwrap_or(0);
                for ky in 0..k {
                    let y = y0 + ky;
                    if y < 0 || y >= ih {
                        continue;
                    }
                    for kx in 0..k {
                        let x = x0 + kx;
                        if x < 0 || x >= iw {
                            continue;
                        }
                        let pix = ((y * iw + x) as usize) * ic;
                        if p.depthwise {
                            let w = p.weights[((ky * k + kx) as usize) * oc + co] as i32;
                            acc += (input[pix + co] as i32 - p.input_zero_point) * w;
                        } else {
                            let wbase = ((co as isize * k + ky) * k + kx) as usize * ic;
                            for ci in 0..ic {
                                let w = p.weights[wbase + ci] as i32;
                                acc += (input[pix + ci] as i32 - p.input_zero_point) * w;
                            }
                        }
                    }
                }
                store(&p.stage, out, (oy * p.output.width + ox) * oc + co, co, acc);
            }
        }
    }
}

/// Output indices `o` of `0..n_out` whose window `o·s − pad + tap` for some tap in `0..k` stays
/// inside `0..n_in`, as the first tap and one past the last valid tap for output `o`.
#[inline]
fn taps(o: usize, stride: usize, pad: usize, k: usize, n_in: usize) -> (usize, usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    let lo = (-start).max(0) as usize;
    let hi = ((n_in as isize - start).min(k as isize)).max(0) as usize;
    // first input coordinate of tap `lo`
    (lo, hi.max(lo), (start + lo as isize) as usize)
}

/// The optimized convolution: the same integer result as [`reference`], with the valid tap
/// range computed once per output row/column (no per-tap bounds tests) and inner loops over
/// contiguous slices that LLVM vectorizes (dense: the input channels of one tap; depthwise: a
/// block of channels).
pub fn optimized(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
    let (iw, ic) = (p.input.width, p.input.channels);
    let oc = p.output.channels;
    let (k, s, pad) = (p.kernel, p.stride, p.kernel / 2);
    let zp = p.input_zero_point;
    for oy in 0..p.output.height {
        let (ky0, ky1, y0) = taps(oy, s, pad, k, p.input.height);
        for ox in 0..p.output.width {
            let (kx0, kx1, x0) = taps(ox, s, pad, k, iw);
            let base = (oy * p.output.width + ox) * oc;
            if p.depthwise {
                // blocks of channels with stack accumulators (no heap)
                const BLOCK: usize = 64;
                let mut c0 = 0;
                while c0 < oc {
                    let n = BLOCK.min(oc - c0);
                    let mut acc = [0i32; BLOCK];
                    for (ky, y) in (ky0..ky1).zip(y0..) {
                        for (kx, x) in (kx0..kx1).zip(x0..) {
                            let src = &input[(y * iw + x) * ic + c0..(y * iw + x) * ic + c0 + n];
                            let w =
                                &p.weights[(ky * k + kx) * oc + c0..(ky * k + kx) * oc + c0 + n];
                            for ((a, &xv), &wv) in acc[..n].iter_mut().zip(src).zip(w) {
                                *a += (xv as i32 - zp) * wv as i32;
                            }
                        }
                    }
                    for (j, a) in acc[..n].iter().enumerate() {
                        let co = c0 + j;
                        store(
                            &p.stage,
                            out,
                            base + co,
                            co,
                            read_i32(p.bias, co).unwrap_or(0) + a,
                        );
                    }
                    c0 += n;
                }
            } else {
                for co in 0..oc {
                    let mut acc = read_i32(p.bias, co).unwrap_or(0);
                    for (ky, y) in (ky0..ky1).zip(y0..) {
                        let wrow =
                            &p.weights[((co * k + ky) * k) * ic..((co * k + ky + 1) * k) * ic];
                        let xrow = &input[y * iw * ic..(y + 1) * iw * ic];
                        let span = (kx1 - kx0) * ic;
                        let w = &wrow[kx0 * ic..kx0 * ic + span];
                        let x = &xrow[x0 * ic..x0 * ic + span];
                        acc += x
                            .iter()
                            .zip(w)
                            .map(|(&xv, &wv)| (xv as i32 - zp) * wv as i32)
                            .sum::<i32>();
                    }
                    store(&p.stage, out, base + co, co, acc);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        fn i8(&mut self) -> i8 {
            self.next() as i8
        }
    }

    /// Every optimized convolution equals the reference bit for bit, on random shapes, values,
    /// strides, kernels, zero points and both output stages.
    macro_rules! conv_family_matches_reference {
        ($($name:ident: $kernel:path,)*) => {$(
            #[test]
            fn $name() {
                let mut rng = Lcg(0x5eed);
                for case in 0..300 {
                    let k = [1usize, 3, 5][case % 3];
                    let stride = 1 + (case / 3) % 2;
                    let depthwise = case % 4 == 3;
                    let (h, w) = (1 + rng.next() as usize % 9, 1 + rng.next() as usize % 9);
                    let ic = 1 + rng.next() as usize % 70;
                    let oc = if depthwise { ic } else { 1 + rng.next() as usize % 9 };
                    let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
                    let input: Vec<i8> = (0..h * w * ic).map(|_| rng.i8()).collect();
                    let n_w = if depthwise { k * k * oc } else { oc * k * k * ic };
                    let weights: Vec<i8> = (0..n_w).map(|_| rng.i8()).collect();
                    let bias: Vec<u8> = (0..oc).flat_map(|_| ((rng.next() % 20001) as i32 - 10000).to_le_bytes()).collect();
                    let requant: Vec<u8> = (0..oc)
                        .flat_map(|_| {
                            let r = depthling_model::Requant::from_real(1e-4 + (rng.next() % 1000) as f64 * 1e-5).unwrap();
                            [r.multiplier.to_le_bytes(), r.shift.to_le_bytes()].concat()
                        })
                        .collect();
                    let scales: Vec<u8> = (0..oc).flat_map(|i| (0.01f32 + i as f32 * 1e-3).to_le_bytes()).collect();
                    let f32_out = case % 5 == 0;
                    let stage = if f32_out {
                        OutputStage::F32 { input_scale: 0.02, weight_scales: &scales }
                    } else {
                        OutputStage::Int8 { requant: &requant, zero_point: (rng.next() % 256) as i32 - 128, act_min: -128, act_max: 127, lut: None }
                    };
                    let p = ConvParams {
                        input: super::super::Shape { height: h, width: w, channels: ic },
                        output: super::super::Shape { height: oh, width: ow, channels: oc },
                        kernel: k,
                        stride,
                        depthwise,
                        input_zero_point: (rng.next() % 256) as i32 - 128,
                        weights: &weights,
                        bias: &bias,
                        stage,
                    };
                    let size = oh * ow * oc * if f32_out { 4 } else { 1 };
                    let (mut a, mut b) = (std::vec![0u8; size], std::vec![0u8; size]);
                    reference(&p, &input, &mut a);
                    $kernel(&p, &input, &mut b);
                    assert_eq!(a, b, "case {case}: {h}x{w}x{ic} -> {oc}, k{k} s{stride} dw {depthwise}");
                }
            }
        )*};
    }

    conv_family_matches_reference! {
        optimized_matches_reference: optimized,
    }
}
