//! Global average pooling.

use super::elementwise::Operand;
use super::Shape;
use depthling_model::Requant;

/// TFLite's int8 MEAN over H and W (LiteRT's `reference_ops::QuantizedMeanOrSum`): `requant`
/// (input scale / output scale, TFLite's `QuantizeMultiplier`) with `1 / N` folded in as TFLite
/// folds it: the multiplier shifted left by `⌊log₂ N⌋` (at most 32, and at most `31 + shift`),
/// divided by `N` truncating, and the shift lowered by as much.
pub fn mean_requant(requant: Requant, pixels: usize) -> Requant {
    let n = pixels as i64;
    if n <= 0 {
        return requant;
    }
    let shift = (63 - (n as u64).leading_zeros() as i32)
        .min(32)
        .min(31 + requant.shift)
        .max(0);
    Requant {
        multiplier: (((requant.multiplier as i64) << shift) / n) as i32,
        shift: requant.shift - shift,
    }
}

#[inline]
fn mean_of(sum: i32, requant: Requant, out_zero_point: i32) -> i8 {
    requant
        .apply(sum)
        .saturating_add(out_zero_point)
        .clamp(-128, 127) as i8
}

/// `out[c]` = the mean of channel `c` (see [`mean_of`]).
pub fn global_avg_pool_reference(
    input: Operand<'_>,
    shape: Shape,
    requant: Requant,
    out_zero_point: i32,
    out: &mut [i8],
) {
    let c = shape.channels;
    let requant = mean_requant(requant, shape.height * shape.width);
    for (ch, o) in out.iter_mut().enumerate().take(c) {
        let mut sum = 0i32;
        for pix in 0..shape.height * shape.width {
            sum += input.data[pix * c + ch] as i32 - input.zero_point;
        }
        *o = mean_of(sum, requant, out_zero_point);
    }
}

/// [`global_avg_pool_reference`] with the channels innermost (contiguous, vectorizable) and the
/// sums of a block of channels on the stack.
pub fn global_avg_pool_optimized(
    input: Operand<'_>,
    shape: Shape,
    requant: Requant,
    out_zero_point: i32,
    out: &mut [i8],
) {
    const BLOCK: usize = 64;
    let c = shape.channels;
    let pixels = shape.height * shape.width;
    let requant = mean_requant(requant, pixels);
    let mut c0 = 0;
    while c0 < c {
        let n = BLOCK.min(c - c0);
        let mut sum = [0i32; BLOCK];
        for px in input.data.chunks_exact(c).take(pixels) {
            for (s, &v) in sum[..n].iter_mut().zip(&px[c0..c0 + n]) {
                *s += v as i32;
            }
        }
        // Σ(x − z) = Σx − N·z, exactly (validation bounds the sum)
        for (o, &s) in out[c0..c0 + n].iter_mut().zip(&sum[..n]) {
            let centred = s - pixels as i32 * input.zero_point;
            *o = mean_of(centred, requant, out_zero_point);
        }
        c0 += n;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    /// Every optimized global average pool equals the reference bit for bit.
    macro_rules! pool_family_matches_reference {
        ($($name:ident: $kernel:path,)*) => {$(
            #[test]
            fn $name() {
                let mut rng = super::super::TestRng(0x9001);
                let mut next = || rng.next();
                for case in 0..300 {
                    let shape = Shape { height: 1 + next() as usize % 12, width: 1 + next() as usize % 12, channels: 1 + next() as usize % 150 };
                    let data: std::vec::Vec<i8> = (0..shape.elements()).map(|_| next() as i8).collect();
                    let input = Operand { data: &data, zero_point: (next() % 256) as i32 - 128 };
                    let requant = Requant::from_real(0.5 + (next() % 100) as f64 / 50.0).unwrap();
                    let zo = (next() % 256) as i32 - 128;
                    let (mut r, mut o) = (std::vec![0i8; shape.channels], std::vec![0i8; shape.channels]);
                    global_avg_pool_reference(input, shape, requant, zo, &mut r);
                    $kernel(input, shape, requant, zo, &mut o);
                    assert_eq!(r, o, "case {case}");
                }
            }
        )*};
    }

    pool_family_matches_reference! {
        optimized_matches_reference: global_avg_pool_optimized,
    }
}
