//! Global average pooling.

use super::elementwise::Operand;
use super::Shape;
use depthling_model::Requant;

/// `out[c] = Σ_p (x[p, c] − zx) · m + zo` where `m` includes the `1 / (H·W)`.
pub fn global_avg_pool_reference(
    input: Operand<'_>,
    shape: Shape,
    requant: Requant,
    out_zero_point: i32,
    out: &mut [i8],
) {
    let c = shape.channels;
    for (ch, o) in out.iter_mut().enumerate().take(c) {
        let mut sum = 0i32;
        for pix in 0..shape.height * shape.width {
            sum += input.data[pix * c + ch] as i32 - input.zero_point;
        }
        *o = requant
            .apply(sum)
            .saturating_add(out_zero_point)
            .clamp(-128, 127) as i8;
    }
}
