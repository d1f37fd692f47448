//! Add, concat and per-channel multiply.

use super::Shape;
use depthling_model::quant::ADD_LEFT_SHIFT;
use depthling_model::Requant;

/// One int8 operand: data and zero point.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    pub data: &'a [i8],
    pub zero_point: i32,
}

/// TFLite int8 add: `((a − za) << 20)·ma + ((b − zb) << 20)·mb`, then `·mo + zo`, clamped.
#[allow(clippy::too_many_arguments)]
pub fn add_reference(
    a: Operand<'_>,
    b: Operand<'_>,
    a_requant: Requant,
    b_requant: Requant,
    out_requant: Requant,
    out_zero_point: i32,
    act_min: i32,
    act_max: i32,
    out: &mut [i8],
) {
    for ((o, &x), &y) in out.iter_mut().zip(a.data).zip(b.data) {
        let xa = a_requant.apply((x as i32 - a.zero_point) << ADD_LEFT_SHIFT);
        let yb = b_requant.apply((y as i32 - b.zero_point) << ADD_LEFT_SHIFT);
        let v = out_requant.apply(xa + yb).saturating_add(out_zero_point);
        *o = v.clamp(act_min, act_max) as i8;
    }
}

/// Copies `input` (`shape`) into channels `channel_offset..` of `out` (`out_channels` wide),
/// requantizing each value.
pub fn concat_reference(
    input: Operand<'_>,
    shape: Shape,
    requant: Requant,
    out_zero_point: i32,
    channel_offset: usize,
    out_channels: usize,
    out: &mut [i8],
) {
    let c = shape.channels;
    for pix in 0..shape.height * shape.width {
        let src = &input.data[pix * c..pix * c + c];
        let dst =
            &mut out[pix * out_channels + channel_offset..pix * out_channels + channel_offset + c];
        for (d, &s) in dst.iter_mut().zip(src) {
            let v = requant
                .apply(s as i32 - input.zero_point)
                .saturating_add(out_zero_point);
            *d = v.clamp(-128, 127) as i8;
        }
    }
}

/// `out[p, c] = (x[p, c] − zx)·(s[c] − zs)·m + zo`, clamped.
pub fn mul_reference(
    input: Operand<'_>,
    scale: Operand<'_>,
    channels: usize,
    requant: Requant,
    out_zero_point: i32,
    out: &mut [i8],
) {
    for (o, x) in out
        .chunks_exact_mut(channels)
        .zip(input.data.chunks_exact(channels))
    {
        for ((o, &x), &s) in o.iter_mut().zip(x).zip(scale.data) {
            let acc = (x as i32 - input.zero_point) * (s as i32 - scale.zero_point);
            *o = requant
                .apply(acc)
                .saturating_add(out_zero_point)
                .clamp(-128, 127) as i8;
        }
    }
}
