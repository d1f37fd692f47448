//! TFLite int8 integer arithmetic, shared by the host quantizer and the device engine so that both
//! compute the same bits (gemmlowp's `SaturatingRoundingDoublingHighMul` and
//! `RoundingDivideByPOT`, as in tflite-micro's `MultiplyByQuantizedMultiplier`).

use serde::{Deserialize, Serialize};

/// A real multiplier `m ≈ multiplier · 2^(shift − 31)` with `multiplier` in `[2^30, 2^31)` (or 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requant {
    pub multiplier: i32,
    pub shift: i32,
}

impl Requant {
    /// Largest left shift accepted (TFLite allows up to 31; we keep products in range).
    pub const MAX_SHIFT: i32 = 30;
    /// Smallest (most negative) shift accepted.
    pub const MIN_SHIFT: i32 = -31;

    /// Quantizes a positive real multiplier (TFLite's `QuantizeMultiplier`). Returns `None` for a
    /// non-finite, negative, or out-of-range value.
    pub fn from_real(m: f64) -> Option<Requant> {
        if !m.is_finite() || m < 0.0 {
            return None;
        }
        if m == 0.0 {
            return Some(Requant {
                multiplier: 0,
                shift: 0,
            });
        }
        let (q, mut shift) = frexp(m);
        let mut q_fixed = libm_round(q * (1i64 << 31) as f64) as i64;
        if q_fixed == 1i64 << 31 {
            q_fixed /= 2;
            shift += 1;
        }
        if shift < Self::MIN_SHIFT {
            return Some(Requant {
                multiplier: 0,
                shift: 0,
            });
        }
        if shift > Self::MAX_SHIFT {
            return None;
        }
        Some(Requant {
            multiplier: q_fixed as i32,
            shift,
        })
    }

    /// Whether the fields are in the range `apply` is defined for.
    pub fn is_valid(&self) -> bool {
        self.multiplier >= 0 && (Self::MIN_SHIFT..=Self::MAX_SHIFT).contains(&self.shift)
    }

    /// `round(x · m)` in TFLite's fixed point.
    #[inline]
    pub fn apply(&self, x: i32) -> i32 {
        multiply_by_quantized_multiplier(x, self.multiplier, self.shift)
    }

    /// The real multiplier this stands for.
    pub fn to_real(&self) -> f64 {
        self.multiplier as f64 * pow2(self.shift - 31)
    }
}

fn pow2(e: i32) -> f64 {
    let mut v = 1.0f64;
    if e >= 0 {
        for _ in 0..e {
            v *= 2.0;
        }
    } else {
        for _ in 0..(-e) {
            v *= 0.5;
        }
    }
    v
}

/// Round half away from zero without `std`.
fn libm_round(x: f64) -> f64 {
    let t = x as i64 as f64; // truncation
    let frac = x - t;
    if frac >= 0.5 {
        t + 1.0
    } else if frac <= -0.5 {
        t - 1.0
    } else {
        t
    }
}

/// `x = q · 2^e` with `q` in `[0.5, 1)` for positive finite `x`.
fn frexp(x: f64) -> (f64, i32) {
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    if exp == 0 {
        // subnormal: scale up first
        let (q, e) = frexp(x * pow2(64));
        return (q, e - 64);
    }
    let e = exp - 1022;
    let q = f64::from_bits((bits & !(0x7ffu64 << 52)) | (1022u64 << 52));
    (q, e)
}

/// gemmlowp `SaturatingRoundingDoublingHighMul`.
#[inline]
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == b && a == i32::MIN {
        return i32::MAX;
    }
    let ab = a as i64 * b as i64;
    let nudge: i64 = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
    // Division truncating toward zero, as in the reference.
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// gemmlowp `RoundingDivideByPOT`: `x / 2^exponent` rounded to nearest, ties away from zero.
#[inline]
pub fn rounding_divide_by_pot(x: i32, exponent: i32) -> i32 {
    debug_assert!((0..=31).contains(&exponent));
    let mask = ((1i64 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + ((x < 0) as i32);
    (x >> exponent) + ((remainder > threshold) as i32)
}

/// tflite `MultiplyByQuantizedMultiplier`: `x · multiplier · 2^(shift − 31)`, rounded. The left
/// shift saturates where C++ would overflow, so every target agrees even on absurd inputs.
#[inline]
pub fn multiply_by_quantized_multiplier(x: i32, multiplier: i32, shift: i32) -> i32 {
    let left_shift = if shift > 0 { shift } else { 0 };
    let right_shift = if shift > 0 { 0 } else { -shift };
    rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(x.saturating_mul(1i32 << left_shift), multiplier),
        right_shift,
    )
}

/// Quantizes a real value to int8 with round-half-away-from-zero and saturation.
pub fn quantize_i8(x: f32, scale: f32, zero_point: i32) -> i8 {
    let q = libm_round((x / scale) as f64) as i64 + zero_point as i64;
    q.clamp(-128, 127) as i8
}

/// The real value of an int8.
#[inline]
pub fn dequantize_i8(q: i8, scale: f32, zero_point: i32) -> f32 {
    (q as i32 - zero_point) as f32 * scale
}

/// Left shift applied to both addends before rescaling (TFLite's `left_shift` for int8 add).
pub const ADD_LEFT_SHIFT: i32 = 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srdhm_reference_cases() {
        // 0.5 * 0.5 in Q31 = 0.25
        assert_eq!(
            saturating_rounding_doubling_high_mul(1 << 30, 1 << 30),
            1 << 29
        );
        // the one overflow case saturates
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MIN, i32::MIN),
            i32::MAX
        );
        // rounding: (3 * 2^30) / 2^31 = 1.5 -> 2 ; negative -1.5 -> -2 (away from zero)
        assert_eq!(saturating_rounding_doubling_high_mul(3, 1 << 30), 2);
        assert_eq!(saturating_rounding_doubling_high_mul(-3, 1 << 30), -1);
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MIN, i32::MAX),
            -i32::MAX
        );
    }

    #[test]
    fn rounding_divide_ties_away_from_zero() {
        assert_eq!(rounding_divide_by_pot(5, 1), 3); // 2.5 -> 3
        assert_eq!(rounding_divide_by_pot(-5, 1), -3); // -2.5 -> -3
        assert_eq!(rounding_divide_by_pot(7, 2), 2); // 1.75 -> 2
        assert_eq!(rounding_divide_by_pot(-7, 2), -2);
        assert_eq!(rounding_divide_by_pot(6, 2), 2); // 1.5 -> 2
        assert_eq!(rounding_divide_by_pot(-6, 2), -2); // -1.5 -> -2
        assert_eq!(rounding_divide_by_pot(5, 0), 5);
        assert_eq!(rounding_divide_by_pot(i32::MIN, 31), -1);
    }

    #[test]
    fn quantize_multiplier_matches_tflite() {
        // QuantizeMultiplier(0.5) = (1<<30, 0); (1.0) = (1<<30, 1); (0.25) = (1<<30, -1)
        assert_eq!(
            Requant::from_real(0.5),
            Some(Requant {
                multiplier: 1 << 30,
                shift: 0
            })
        );
        assert_eq!(
            Requant::from_real(1.0),
            Some(Requant {
                multiplier: 1 << 30,
                shift: 1
            })
        );
        assert_eq!(
            Requant::from_real(0.25),
            Some(Requant {
                multiplier: 1 << 30,
                shift: -1
            })
        );
        // 0.75 = 0.75 * 2^0 -> round(0.75 * 2^31)
        assert_eq!(
            Requant::from_real(0.75),
            Some(Requant {
                multiplier: 1610612736,
                shift: 0
            })
        );
        assert_eq!(Requant::from_real(-1.0), None);
        assert_eq!(Requant::from_real(f64::NAN), None);
        for &m in &[1e-6, 0.0031, 0.7, 1.9, 123.4] {
            let r = Requant::from_real(m).unwrap();
            assert!(((r.to_real() - m) / m).abs() < 1e-8, "{m}");
        }
    }

    #[test]
    fn multiply_by_quantized_multiplier_rounds_like_reference() {
        let half = Requant::from_real(0.5).unwrap();
        assert_eq!(half.apply(3), 2); // 1.5 -> 2
                                      // shift 0: only the high multiply rounds, and gemmlowp's nudge rounds ties upward
        assert_eq!(half.apply(-3), -1); // -1.5 -> -1
        assert_eq!(half.apply(4), 2);
        let quarter = Requant::from_real(0.25).unwrap();
        assert_eq!(quarter.apply(6), 2); // 1.5 -> 2
        assert_eq!(quarter.apply(-6), -2);
        // 1.25 -> 2: the reference rounds twice (high multiply 2.5 -> 3, then 3/2 = 1.5 -> 2)
        assert_eq!(quarter.apply(5), 2);
        let three = Requant::from_real(3.0).unwrap();
        assert_eq!(three.apply(1000), 3000);
        assert_eq!(three.apply(-7), -21);
    }

    #[test]
    fn quantize_and_dequantize() {
        assert_eq!(quantize_i8(0.0, 0.1, -128), -128);
        assert_eq!(quantize_i8(0.25, 0.1, 0), 3); // 2.5 -> 3 (ties away)
        assert_eq!(quantize_i8(-0.25, 0.1, 0), -3);
        assert_eq!(quantize_i8(1e9, 0.1, 0), 127);
        assert_eq!(quantize_i8(-1e9, 0.1, 0), -128);
        assert!((dequantize_i8(10, 0.5, 4) - 3.0).abs() < 1e-7);
    }
}
