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
            *o = requant
                .apply(centred)
                .saturating_add(out_zero_point)
                .clamp(-128, 127) as i8;
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
                    let requant = Requant::from_real(1.0 / (shape.height * shape.width) as f64 * (0.5 + (next() % 100) as f64 / 50.0)).unwrap();
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
