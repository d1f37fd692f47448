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
