//! Add, concat and per-channel multiply. Add and multiply have a plain vector loop on x86-64
//! with AVX2 (eight lanes a step through [`super::vrequant`], the same integer steps as the
//! scalar code), taken by the x86 tables above SSE2 ([`add_with`], [`mul_with`]).

use super::KernelSet;
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

/// [`add_with`] the fastest table this build and CPU have.
#[allow(clippy::too_many_arguments)]
pub fn add_optimized(
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
    add_with(
        KernelSet::detect(),
        a,
        b,
        a_requant,
        b_requant,
        out_requant,
        out_zero_point,
        act_min,
        act_max,
        out,
    )
}

/// [`add_reference`]'s bits with table `set`: the AVX2 loop where the table has AVX2 and the
/// multipliers are below one, else [`add_portable`].
#[allow(clippy::too_many_arguments)]
pub fn add_with(
    set: KernelSet,
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
    #[cfg(target_arch = "x86_64")]
    if matches!(
        set,
        KernelSet::X86Avx2 | KernelSet::X86AvxVnni | KernelSet::X86Avx512Vnni
    ) && set.is_available()
    {
        // SAFETY: the table is available: the CPU has AVX2.
        let done = unsafe {
            avx2::add(
                a,
                b,
                [a_requant, b_requant, out_requant],
                out_zero_point,
                (act_min, act_max),
                out,
            )
        };
        if done {
            return;
        }
    }
    let _ = set;
    add_portable(
        a,
        b,
        a_requant,
        b_requant,
        out_requant,
        out_zero_point,
        act_min,
        act_max,
        out,
    )
}

/// [`add_reference`] with each operand's rescaling `((v − z) << 20)·m` read from a 256-entry
/// table (it depends on the int8 value alone), so one requantization per element remains.
#[allow(clippy::too_many_arguments)]
pub fn add_portable(
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
    let table = |o: Operand<'_>, r: Requant| {
        let mut t = [0i32; 256];
        for (i, v) in t.iter_mut().enumerate() {
            *v = r.apply(((i as i32 - 128) - o.zero_point) << ADD_LEFT_SHIFT);
        }
        t
    };
    let (ta, tb) = (table(a, a_requant), table(b, b_requant));
    for ((o, &x), &y) in out.iter_mut().zip(a.data).zip(b.data) {
        let sum = ta[(x as i32 + 128) as usize] + tb[(y as i32 + 128) as usize];
        let v = out_requant.apply(sum).saturating_add(out_zero_point);
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

/// [`concat_reference`] with the requantization of each int8 value from a 256-entry table, and a
/// plain copy where the table is the identity.
pub fn concat_optimized(
    input: Operand<'_>,
    shape: Shape,
    requant: Requant,
    out_zero_point: i32,
    channel_offset: usize,
    out_channels: usize,
    out: &mut [i8],
) {
    let mut table = [0i8; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let v = requant
            .apply((i as i32 - 128) - input.zero_point)
            .saturating_add(out_zero_point);
        *t = v.clamp(-128, 127) as i8;
    }
    let identity = table
        .iter()
        .enumerate()
        .all(|(i, &t)| t as i32 == i as i32 - 128);
    let c = shape.channels;
    let pixels = shape.height * shape.width;
    for (pix, src) in input.data.chunks_exact(c).take(pixels).enumerate() {
        let at = pix * out_channels + channel_offset;
        let dst = &mut out[at..at + c];
        if identity {
            dst.copy_from_slice(src);
        } else {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = table[(s as i32 + 128) as usize];
            }
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

/// [`mul_with`] the fastest table this build and CPU have.
pub fn mul_optimized(
    input: Operand<'_>,
    scale: Operand<'_>,
    channels: usize,
    requant: Requant,
    out_zero_point: i32,
    out: &mut [i8],
) {
    mul_with(
        KernelSet::detect(),
        input,
        scale,
        channels,
        requant,
        out_zero_point,
        out,
    )
}

/// [`mul_reference`]'s bits with table `set`: the AVX2 loop where the table has AVX2 and the
/// multiplier is below one, else [`mul_portable`].
pub fn mul_with(
    set: KernelSet,
    input: Operand<'_>,
    scale: Operand<'_>,
    channels: usize,
    requant: Requant,
    out_zero_point: i32,
    out: &mut [i8],
) {
    #[cfg(target_arch = "x86_64")]
    if matches!(
        set,
        KernelSet::X86Avx2 | KernelSet::X86AvxVnni | KernelSet::X86Avx512Vnni
    ) && set.is_available()
    {
        // SAFETY: the table is available: the CPU has AVX2.
        if unsafe { avx2::mul(input, scale, channels, requant, out_zero_point, out) } {
            return;
        }
    }
    let _ = set;
    mul_portable(input, scale, channels, requant, out_zero_point, out)
}

/// [`mul_reference`] with `s[c] − zs` formed once per block of channels instead of per element.
pub fn mul_portable(
    input: Operand<'_>,
    scale: Operand<'_>,
    channels: usize,
    requant: Requant,
    out_zero_point: i32,
    out: &mut [i8],
) {
    const BLOCK: usize = 64;
    let mut c0 = 0;
    while c0 < channels {
        let n = BLOCK.min(channels - c0);
        let mut s = [0i32; BLOCK];
        for (v, &q) in s.iter_mut().zip(&scale.data[c0..c0 + n]) {
            *v = q as i32 - scale.zero_point;
        }
        for (o, x) in out
            .chunks_exact_mut(channels)
            .zip(input.data.chunks_exact(channels))
        {
            for ((o, &x), &s) in o[c0..c0 + n].iter_mut().zip(&x[c0..c0 + n]).zip(&s[..n]) {
                *o = requant
                    .apply((x as i32 - input.zero_point) * s)
                    .saturating_add(out_zero_point)
                    .clamp(-128, 127) as i8;
            }
        }
        c0 += n;
    }
}

/// The AVX2 loops of add and multiply: eight elements a step, each the scalar code's integer
/// steps ([`super::vrequant`]); a tail of fewer than eight goes through the scalar code.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Operand, Requant, ADD_LEFT_SHIFT};
    use crate::kernels::vrequant::{finish, multiply, store8, Lanes};
    use core::arch::x86_64::*;

    /// Eight int8 values at `p` as int32 lanes.
    ///
    /// # Safety
    /// AVX2; 8 readable bytes at `p`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn load8(p: *const i8) -> __m256i {
        // SAFETY: by the contract.
        unsafe { _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)) }
    }

    /// `false`, having written nothing, where a multiplier is one or more (or the operands are
    /// shorter than `out`).
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn add(
        a: Operand<'_>,
        b: Operand<'_>,
        requants: [Requant; 3],
        out_zero_point: i32,
        (act_min, act_max): (i32, i32),
        out: &mut [i8],
    ) -> bool {
        let n = out.len();
        // SAFETY: AVX2 as the caller guarantees.
        let lanes = unsafe { requants.map(|r| Lanes::uniform(r)) };
        let [Some(la), Some(lb), Some(lo)] = lanes else {
            return false;
        };
        if a.data.len() < n || b.data.len() < n || !(-128..=127).contains(&act_min) || act_max > 127
        {
            return false;
        }
        let (za, zb) = (
            _mm256_set1_epi32(a.zero_point),
            _mm256_set1_epi32(b.zero_point),
        );
        let whole = n / 8 * 8;
        for i in (0..whole).step_by(8) {
            // SAFETY: AVX2; elements i..i + 8 lie in a, b and out (n ≤ their lengths).
            unsafe {
                let x = _mm256_slli_epi32::<ADD_LEFT_SHIFT>(_mm256_sub_epi32(
                    load8(a.data.as_ptr().add(i)),
                    za,
                ));
                let y = _mm256_slli_epi32::<ADD_LEFT_SHIFT>(_mm256_sub_epi32(
                    load8(b.data.as_ptr().add(i)),
                    zb,
                ));
                let sum = _mm256_add_epi32(multiply(x, &la), multiply(y, &lb));
                let q = finish(multiply(sum, &lo), out_zero_point, act_min, act_max);
                store8(q, out.as_mut_ptr().add(i));
            }
        }
        let [ra, rb, ro] = requants;
        super::add_portable(
            Operand {
                data: &a.data[whole..n],
                zero_point: a.zero_point,
            },
            Operand {
                data: &b.data[whole..n],
                zero_point: b.zero_point,
            },
            ra,
            rb,
            ro,
            out_zero_point,
            act_min,
            act_max,
            &mut out[whole..],
        );
        true
    }

    /// `false`, having written nothing, where the multiplier is one or more (or the buffers do
    /// not hold whole pixels of `channels`).
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn mul(
        input: Operand<'_>,
        scale: Operand<'_>,
        channels: usize,
        requant: Requant,
        out_zero_point: i32,
        out: &mut [i8],
    ) -> bool {
        const BLOCK: usize = 64;
        // SAFETY: AVX2 as the caller guarantees.
        let Some(lanes) = (unsafe { Lanes::uniform(requant) }) else {
            return false;
        };
        if channels == 0 || scale.data.len() < channels || input.data.len() < out.len() {
            return false;
        }
        let zx = _mm256_set1_epi32(input.zero_point);
        let mut c0 = 0;
        while c0 < channels {
            let n = BLOCK.min(channels - c0);
            let whole = n / 8 * 8;
            let mut s = [0i32; BLOCK];
            for (v, &q) in s.iter_mut().zip(&scale.data[c0..c0 + n]) {
                *v = q as i32 - scale.zero_point;
            }
            for (o, x) in out
                .chunks_exact_mut(channels)
                .zip(input.data.chunks_exact(channels))
            {
                for j in (0..whole).step_by(8) {
                    // SAFETY: AVX2; channels c0 + j .. + 8 lie in the pixel and in `s`.
                    unsafe {
                        let xv = _mm256_sub_epi32(load8(x.as_ptr().add(c0 + j)), zx);
                        let sv = _mm256_loadu_si256(s.as_ptr().add(j) as *const __m256i);
                        let q = multiply(_mm256_mullo_epi32(xv, sv), &lanes);
                        store8(
                            finish(q, out_zero_point, -128, 127),
                            o.as_mut_ptr().add(c0 + j),
                        );
                    }
                }
                for ((o, &x), &s) in o[c0 + whole..c0 + n]
                    .iter_mut()
                    .zip(&x[c0 + whole..c0 + n])
                    .zip(&s[whole..n])
                {
                    *o = requant
                        .apply((x as i32 - input.zero_point) * s)
                        .saturating_add(out_zero_point)
                        .clamp(-128, 127) as i8;
                }
            }
            c0 += n;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    /// Every optimized add, concat and multiply equals the reference bit for bit on random
    /// shapes, values, zero points and multipliers (identity concats included).
    macro_rules! elementwise_family_matches_reference {
        ($($name:ident: $add:path, $concat:path, $mul:path;)*) => {$(
            #[test]
            fn $name() {
                let mut rng = super::super::TestRng(0xadd);
                for case in 0..300 {
                    let (h, w, c) = (1 + rng.next() as usize % 9, 1 + rng.next() as usize % 9, 1 + rng.next() as usize % 80);
                    let n = h * w * c;
                    let (xa, xb) = (rng.bytes(n), rng.bytes(n));
                    let (a, b) = (Operand { data: &xa, zero_point: rng.zero_point() }, Operand { data: &xb, zero_point: rng.zero_point() });
                    let (ra, rb, ro) = (rng.requant(1e-4, 0.9), rng.requant(1e-4, 0.9), rng.requant(1e-7, 1e-5));
                    let (zo, lo) = (rng.zero_point(), rng.zero_point());
                    let hi = lo + (rng.next() % (128 - lo.max(0) as u32).max(1)) as i32;
                    let (mut r, mut o) = (std::vec![0i8; n], std::vec![0i8; n]);
                    add_reference(a, b, ra, rb, ro, zo, lo, hi, &mut r);
                    $add(a, b, ra, rb, ro, zo, lo, hi, &mut o);
                    assert_eq!(r, o, "add case {case}");

                    let shape = Shape { height: h, width: w, channels: c };
                    let (extra, offset) = (rng.next() as usize % 5, rng.next() as usize % 3);
                    let oc = c + extra + offset;
                    let (rq, zq) = if case % 4 == 0 {
                        (Requant::from_real(1.0).unwrap(), a.zero_point)
                    } else {
                        (rng.requant(0.2, 3.0), rng.zero_point())
                    };
                    let (mut r, mut o) = (std::vec![7i8; h * w * oc], std::vec![7i8; h * w * oc]);
                    concat_reference(a, shape, rq, zq, offset, oc, &mut r);
                    $concat(a, shape, rq, zq, offset, oc, &mut o);
                    assert_eq!(r, o, "concat case {case}");

                    let sc = rng.bytes(c);
                    let s = Operand { data: &sc, zero_point: rng.zero_point() };
                    let rm = rng.requant(1e-6, 1e-3);
                    let (mut r, mut o) = (std::vec![0i8; n], std::vec![0i8; n]);
                    mul_reference(a, s, c, rm, zo, &mut r);
                    $mul(a, s, c, rm, zo, &mut o);
                    assert_eq!(r, o, "mul case {case}");
                }
            }
        )*};
    }

    /// The AVX2 loops alone (the reference where the CPU has no AVX2); the test's multipliers
    /// are all below one, so a decline fails.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    fn add_avx2(
        a: Operand<'_>,
        b: Operand<'_>,
        ra: Requant,
        rb: Requant,
        ro: Requant,
        zo: i32,
        lo: i32,
        hi: i32,
        out: &mut [i8],
    ) {
        if !crate::kernels::conv::has_avx2() {
            return add_reference(a, b, ra, rb, ro, zo, lo, hi, out);
        }
        // SAFETY: the CPU has AVX2 (checked above).
        assert!(
            unsafe { avx2::add(a, b, [ra, rb, ro], zo, (lo, hi), out) },
            "add declined"
        );
    }

    #[cfg(target_arch = "x86_64")]
    fn mul_avx2(x: Operand<'_>, s: Operand<'_>, c: usize, r: Requant, zo: i32, out: &mut [i8]) {
        if !crate::kernels::conv::has_avx2() {
            return mul_reference(x, s, c, r, zo, out);
        }
        // SAFETY: the CPU has AVX2 (checked above).
        assert!(unsafe { avx2::mul(x, s, c, r, zo, out) }, "mul declined");
    }

    elementwise_family_matches_reference! {
        optimized_matches_reference: add_optimized, concat_optimized, mul_optimized;
        portable_matches_reference: add_portable, concat_optimized, mul_portable;
    }

    #[cfg(target_arch = "x86_64")]
    elementwise_family_matches_reference! {
        avx2_matches_reference: add_avx2, concat_optimized, mul_avx2;
    }
}
