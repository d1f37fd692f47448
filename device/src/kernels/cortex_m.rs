//! The Cortex-M convolutions (Armv7E-M DSP extension: `SMLAD`, `SXTB16`), CMSIS-NN's approach:
//! every input value is widened to int16 (zero point subtracted) once per use of a whole block
//! of output channels, products go two at a time through `SMLAD` in blocks of 2 pixels × 2
//! output channels, and the requantization runs once per output with each channel's constants
//! decoded once per block.
//!
//! The code is compiled on every target: the intrinsics are inline assembly on Arm with the
//! feature `cortex-m-dsp` and portable stand-ins elsewhere (`intrinsics`), so the host tests
//! replay the very kernels the firmware runs against the reference, bit for bit.

use super::conv::{taps, ConvParams, Finish, OutputStage};
use depthling_model::{read_i32, read_requant};
use intrinsics::{smlabb, smlad, smlatt, ssub16, sxtb16, sxtb16_ror8};

/// The DSP instructions the kernels use: inline assembly on Armv7E-M, the same integer
/// functions in portable Rust elsewhere (for the host tests).
pub(crate) mod intrinsics {
    #[cfg(all(feature = "cortex-m-dsp", target_arch = "arm"))]
    mod imp {
        use core::arch::asm;

        /// Bytes 0 and 2 of `x`, sign-extended to two halfwords.
        #[inline(always)]
        pub fn sxtb16(x: u32) -> u32 {
            let r;
            // SAFETY: a register-only DSP instruction (Armv7E-M).
            unsafe {
                asm!("sxtb16 {r}, {x}", r = lateout(reg) r, x = in(reg) x, options(pure, nomem, nostack, preserves_flags))
            };
            r
        }

        /// Bytes 1 and 3 of `x`, sign-extended to two halfwords.
        #[inline(always)]
        pub fn sxtb16_ror8(x: u32) -> u32 {
            let r;
            // SAFETY: as above.
            unsafe {
                asm!("sxtb16 {r}, {x}, ror #8", r = lateout(reg) r, x = in(reg) x, options(pure, nomem, nostack, preserves_flags))
            };
            r
        }

        /// Halfword-wise `a − b` (wrapping; sets the GE flags, which nothing reads).
        #[inline(always)]
        pub fn ssub16(a: u32, b: u32) -> u32 {
            let r;
            // SAFETY: as above.
            unsafe {
                asm!("ssub16 {r}, {a}, {b}", r = lateout(reg) r, a = in(reg) a, b = in(reg) b, options(pure, nomem, nostack))
            };
            r
        }

        /// `acc + a.lo·b.lo + a.hi·b.hi` (wrapping; sets the sticky Q flag, which nothing reads).
        #[inline(always)]
        pub fn smlad(a: u32, b: u32, acc: i32) -> i32 {
            let r;
            // SAFETY: as above.
            unsafe {
                asm!("smlad {r}, {a}, {b}, {c}", r = lateout(reg) r, a = in(reg) a, b = in(reg) b, c = in(reg) acc, options(pure, nomem, nostack))
            };
            r
        }

        /// `acc + a.lo·b.lo`.
        #[inline(always)]
        pub fn smlabb(a: u32, b: u32, acc: i32) -> i32 {
            let r;
            // SAFETY: as above.
            unsafe {
                asm!("smlabb {r}, {a}, {b}, {c}", r = lateout(reg) r, a = in(reg) a, b = in(reg) b, c = in(reg) acc, options(pure, nomem, nostack))
            };
            r
        }

        /// `acc + a.hi·b.hi`.
        #[inline(always)]
        pub fn smlatt(a: u32, b: u32, acc: i32) -> i32 {
            let r;
            // SAFETY: as above.
            unsafe {
                asm!("smlatt {r}, {a}, {b}, {c}", r = lateout(reg) r, a = in(reg) a, b = in(reg) b, c = in(reg) acc, options(pure, nomem, nostack))
            };
            r
        }
    }

    #[cfg(not(all(feature = "cortex-m-dsp", target_arch = "arm")))]
    mod imp {
        #[inline(always)]
        fn lo(x: u32) -> i32 {
            x as u16 as i16 as i32
        }
        #[inline(always)]
        fn hi(x: u32) -> i32 {
            (x >> 16) as u16 as i16 as i32
        }
        #[inline(always)]
        fn pack(lo: i32, hi: i32) -> u32 {
            (lo as u32 & 0xffff) | ((hi as u32) << 16)
        }
        pub fn sxtb16(x: u32) -> u32 {
            pack(x as u8 as i8 as i32, (x >> 16) as u8 as i8 as i32)
        }
        pub fn sxtb16_ror8(x: u32) -> u32 {
            sxtb16(x.rotate_right(8))
        }
        pub fn ssub16(a: u32, b: u32) -> u32 {
            pack(lo(a).wrapping_sub(lo(b)), hi(a).wrapping_sub(hi(b)))
        }
        pub fn smlad(a: u32, b: u32, acc: i32) -> i32 {
            acc.wrapping_add(lo(a) * lo(b)).wrapping_add(hi(a) * hi(b))
        }
        pub fn smlabb(a: u32, b: u32, acc: i32) -> i32 {
            acc.wrapping_add(lo(a) * lo(b))
        }
        pub fn smlatt(a: u32, b: u32, acc: i32) -> i32 {
            acc.wrapping_add(hi(a) * hi(b))
        }
    }

    pub use imp::*;
}

/// One output channel's constants, decoded once for many outputs: the common case (an int8
/// output without a LUT, a multiplier below one) inline, anything else through [`Finish`].
#[derive(Clone, Copy)]
struct Chan<'a> {
    bias: i32,
    multiplier: i32,
    /// The rounding terms of the fused requantization ([`Chan::fast`]) for `x ≥ 0` and `x < 0`.
    round_pos: i64,
    round_neg: i64,
    /// `e − 1`, where `e` ≥ 1 is the right shift of the rounding division.
    high_shift: u32,
    zero_point: i32,
    min: i32,
    max: i32,
    general: Option<Finish<'a>>,
}

impl<'a> Chan<'a> {
    #[inline(always)]
    fn new(stage: &OutputStage<'a>, bias: &[u8], channel: usize) -> Self {
        let general = Finish::new(stage, bias, channel);
        let mut c = Chan {
            bias: read_i32(bias, channel).unwrap_or(0),
            multiplier: 0,
            round_pos: 0,
            round_neg: 0,
            high_shift: 0,
            zero_point: 0,
            min: 0,
            max: 0,
            general: Some(general),
        };
        if let OutputStage::Int8 {
            requant,
            zero_point,
            act_min,
            act_max,
            lut: None,
        } = *stage
        {
            if let Some(r) = read_requant(requant, channel) {
                // TFLite's doubling high multiply is ⌊(x·m + 2³⁰) / 2³¹⌋ for every m ≥ 0 (its
                // nudge and truncating division agree with this floor), and gemmlowp's rounding
                // division by 2ᵉ is ⌊(h + 2ᵉ⁻¹ − [h < 0]) / 2ᵉ⌋; since ⌊(⌊a/b⌋ + c)/d⌋ =
                // ⌊(a + c·b)/(b·d)⌋, both are one rounding of x·m plus a constant by 2³¹⁺ᵉ (with
                // m ≥ 0, h < 0 only where x < 0, and where x < 0 but h = 0 both constants give
                // 0 for e ≥ 1). A left shift, e = 0 or a negative multiplier take the general
                // path.
                if r.multiplier >= 0 && (-31..=-1).contains(&r.shift) {
                    let e = (-r.shift) as u32;
                    c.multiplier = r.multiplier;
                    c.round_pos = (1i64 << 30) + (1i64 << (e + 30));
                    c.round_neg = c.round_pos - (1i64 << 31);
                    c.high_shift = e - 1;
                    c.zero_point = zero_point;
                    c.min = act_min;
                    c.max = act_max;
                    c.general = None;
                }
            }
        }
        c
    }

    /// Adds `f` to the bias (the folded zero-point term −z·Σw), on either path.
    fn fold(&mut self, f: i32) {
        self.bias = self.bias.wrapping_add(f);
        if let Some(Finish::Int8 { bias, .. } | Finish::F32 { bias, .. }) = &mut self.general {
            *bias = bias.wrapping_add(f);
        }
    }

    /// Writes `bias + acc`, finished, at element `index`, as [`Finish::store`] does.
    #[inline(always)]
    fn store(&self, out: &mut [u8], index: usize, acc: i32) {
        match self.general {
            None => out[index] = self.fast(acc),
            Some(f) => f.store(out, index, acc),
        }
    }

    /// The int8 output of `bias + acc` on the fast path (`general` is `None`).
    #[inline(always)]
    fn fast(&self, acc: i32) -> u8 {
        let x = self.bias.wrapping_add(acc);
        let round = if x < 0 {
            self.round_neg
        } else {
            self.round_pos
        };
        // |x·m| ≤ 2⁶², the rounding term < 2⁶¹ + 2³¹: no overflow; the shift by 31 + e is the
        // high word shifted by e − 1
        let sum = x as i64 * self.multiplier as i64 + round;
        let v = ((sum >> 32) as i32) >> self.high_shift;
        // max then min, not clamp: no min ≤ max assertion per output (the reference clamps the
        // same way for every valid model, where act_min ≤ act_max)
        v.saturating_add(self.zero_point)
            .max(self.min)
            .min(self.max) as i8 as u8
    }

    /// [`Self::store`] where `FAST` says every channel of the block is on the fast path, without
    /// the bounds test.
    ///
    /// # Safety
    /// `index < out.len()`; with `FAST`, `self.general` is `None`.
    #[inline(always)]
    unsafe fn put<const FAST: bool>(&self, out: &mut [u8], index: usize, acc: i32) {
        if FAST {
            // SAFETY: by the contract.
            unsafe { *out.get_unchecked_mut(index) = self.fast(acc) }
        } else {
            self.store(out, index, acc)
        }
    }
}

/// Four int8 values as one little-endian word, for `SXTB16`.
#[inline(always)]
fn word(v: &[i8]) -> u32 {
    u32::from_le_bytes([v[0] as u8, v[1] as u8, v[2] as u8, v[3] as u8])
}

/// Whether every tap of output row or column `o` lies inside an input of `n` rows or columns.
#[inline(always)]
fn all_taps_inside(o: usize, stride: usize, k: usize, n: usize) -> bool {
    let pad = k / 2;
    o * stride >= pad && o * stride + k - pad <= n
}

/// Most output channels whose constants are decoded together (on the stack).
const CHANNELS: usize = 32;
/// Most values in one receptive field, `k·k·C_in`, padded to a multiple of 4: two pixels' int16
/// copies (`Fields`, 1×1) or four channels' int16 weights (`Quad`, larger kernels) take 9 KiB
/// of stack, one at a time.
pub(crate) const MAX_DEPTH: usize = 1152;

/// The inputs of two output pixels of a 1×1 convolution as int16 (input − zero point),
/// interleaved for [`gemm2`]: for each group of four values `g`, pixel `i`'s words at
/// `4g + 2i` = (v₀, v₂) and `4g + 2i + 1` = (v₁, v₃), the order in which `SXTB16` and
/// `SXTB16 ROR #8` split a word of four int8 weights.
struct Fields {
    words: [u64; MAX_DEPTH],
}

impl Fields {
    /// Writes output pixel `(oy, ox)`'s input as pixel `slot` (0 or 1), for a 1×1 convolution
    /// with `C_in` a multiple of four (the only case [`dense`] sends here): one word of input
    /// becomes the two int16 words of its group.
    #[inline(always)]
    fn gather(&mut self, p: &ConvParams<'_>, input: &[i8], slot: usize, oy: usize, ox: usize) {
        let (ic, s) = (p.input.channels, p.stride);
        let zp = p.input_zero_point;
        let zp2 = ((zp as u32) & 0xffff) | ((zp as u32) << 16);
        let at = (oy * s * p.input.width + ox * s) * ic;
        let words = self.words_mut();
        for (g, c) in input[at..at + ic].chunks_exact(4).enumerate() {
            let w = word(c);
            words[4 * g + 2 * slot] = ssub16(sxtb16(w), zp2);
            words[4 * g + 2 * slot + 1] = ssub16(sxtb16_ror8(w), zp2);
        }
    }

    fn words_mut(&mut self) -> &mut [u32] {
        // SAFETY: as above, as u32.
        unsafe {
            core::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u32>(), 2 * MAX_DEPTH)
        }
    }

    fn clear_slot(&mut self, slot: usize, depth: usize) {
        let words = self.words_mut();
        for g in 0..depth.div_ceil(4) {
            words[4 * g + 2 * slot] = 0;
            words[4 * g + 2 * slot + 1] = 0;
        }
    }
}

/// One group of four values of two pixels (`x0`, `x1`: their two int16 words each) times one
/// weight word: the four `SMLAD`s into `a0`, `a1`.
#[inline(always)]
fn group(x0: u64, x1: u64, ww: u32, a0: &mut i32, a1: &mut i32) {
    let (we, wo) = (sxtb16(ww), sxtb16_ror8(ww));
    *a0 = smlad((x0 >> 32) as u32, wo, smlad(x0 as u32, we, *a0));
    *a1 = smlad((x1 >> 32) as u32, wo, smlad(x1 as u32, we, *a1));
}

/// The sums of two pixels' fields (interleaved, `groups` groups of four values) with two
/// weight rows `w0`, `w1`: `[pixel][channel]`. The
/// accumulators are plain locals so that they stay in registers.
///
/// # Safety
/// `w0`, `w1` point at `4·groups` readable bytes, `x` at `2·groups` u64s.
#[inline(always)]
unsafe fn gemm2(x: *const u64, w0: *const i8, w1: *const i8, groups: usize) -> [[i32; 2]; 2] {
    let (mut a00, mut a01, mut a10, mut a11) = (0i32, 0i32, 0i32, 0i32);
    let (xp, p0, p1) = (x, w0 as *const u32, w1 as *const u32);
    #[cfg(all(feature = "cortex-m-dsp", target_arch = "arm"))]
    if groups > 0 {
        // The loop below in assembly with its twelve registers allocated by hand (four
        // accumulators, three pointers, the count, four temporaries: all a Thumb function may
        // give an `asm!` block): compiled from Rust, LLVM spills three accumulators per group.
        // The first pixel's words are read a second time instead of being kept.
        // SAFETY: reads as the contract allows (the fields 8-aligned for `ldrd`, the weight words
        // unaligned, which Cortex-M7 loads); registers only otherwise.
        unsafe {
            core::arch::asm!(
                "2:",
                "ldr {t0}, [{p0}], #4",
                "sxtb16 {t1}, {t0}",
                "sxtb16 {t0}, {t0}, ror #8",
                "ldrd {t2}, {t3}, [{xp}]",
                "smlad {a00}, {t2}, {t1}, {a00}",
                "smlad {a00}, {t3}, {t0}, {a00}",
                "ldrd {t2}, {t3}, [{xp}, #8]",
                "smlad {a10}, {t2}, {t1}, {a10}",
                "smlad {a10}, {t3}, {t0}, {a10}",
                "ldr {t0}, [{p1}], #4",
                "sxtb16 {t1}, {t0}",
                "sxtb16 {t0}, {t0}, ror #8",
                "smlad {a11}, {t2}, {t1}, {a11}",
                "smlad {a11}, {t3}, {t0}, {a11}",
                "ldrd {t2}, {t3}, [{xp}], #16",
                "smlad {a01}, {t2}, {t1}, {a01}",
                "smlad {a01}, {t3}, {t0}, {a01}",
                "subs {n}, {n}, #1",
                "bne 2b",
                a00 = inout(reg) a00,
                a01 = inout(reg) a01,
                a10 = inout(reg) a10,
                a11 = inout(reg) a11,
                xp = inout(reg) xp => _,
                p0 = inout(reg) p0 => _,
                p1 = inout(reg) p1 => _,
                n = inout(reg) groups => _,
                t0 = out(reg) _,
                t1 = out(reg) _,
                t2 = out(reg) _,
                t3 = out(reg) _,
                options(nostack, readonly),
            );
        }
    }
    #[cfg(not(all(feature = "cortex-m-dsp", target_arch = "arm")))]
    for i in 0..groups {
        // SAFETY: in bounds by the contract; the fields are 8-aligned, the weights read
        // unaligned.
        unsafe {
            let (x0, x1) = (xp.add(2 * i).read(), xp.add(2 * i + 1).read());
            let (u, v) = (p0.add(i).read_unaligned(), p1.add(i).read_unaligned());
            group(x0, x1, u, &mut a00, &mut a10);
            group(x0, x1, v, &mut a01, &mut a11);
        }
    }
    [[a00, a01], [a10, a11]]
}

/// [`gemm2`] with one weight row: `[pixel]`.
///
/// # Safety
/// As [`gemm2`].
#[inline(always)]
unsafe fn gemm1(x: *const u64, w0: *const i8, groups: usize) -> [i32; 2] {
    let (mut a0, mut a1) = (0i32, 0i32);
    let (mut xp, mut p0) = (x, w0 as *const u32);
    for _ in 0..groups {
        // SAFETY: as in `gemm2`.
        unsafe {
            let (x0, x1) = (xp.read(), xp.add(1).read());
            let u = p0.read_unaligned();
            xp = xp.add(2);
            p0 = p0.add(1);
            group(x0, x1, u, &mut a0, &mut a1);
        }
    }
    [a0, a1]
}

/// A dense convolution (any kernel size and stride). One output channel: `single`. Kernels
/// larger than 1×1: `quads`. 1×1, where the receptive field is a few words and each costs as
/// much to widen as to use: a GEMM of pixel pairs × channel pairs, for each block of up to
/// `CHANNELS` output channels (constants decoded once), each pair of output pixels' inputs
/// widened once (`Fields`) and multiplied with every weight row of the block (`gemm2`).
/// Returns `false`, having written nothing, where the
/// shapes and buffers do not agree or a receptive field is larger than `MAX_DEPTH` (with
/// more than one output channel).
pub fn dense(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) -> bool {
    let (ih, iw, ic) = (p.input.height, p.input.width, p.input.channels);
    let (oh, ow, oc) = (p.output.height, p.output.width, p.output.channels);
    let (k, s) = (p.kernel, p.stride);
    let depth = k * k * ic;
    let elem = match p.stage {
        OutputStage::Int8 { .. } => 1,
        OutputStage::F32 { .. } => 4,
    };
    if p.depthwise
        || ic == 0
        || oc == 0
        || k == 0
        || s == 0
        || (depth > MAX_DEPTH && !(oc == 1 && ic % 4 == 0))
        || (oh, ow) != (ih.div_ceil(s), iw.div_ceil(s))
        || input.len() < ih * iw * ic
        || p.weights.len() < oc * depth
        || out.len() < oh * ow * oc * elem
    {
        return false;
    }
    if oc == 1 && ic % 4 == 0 {
        if !single_ring(p, input, out) {
            single(p, input, out);
        }
        return true;
    }
    if k > 1 || ic % 4 != 0 {
        quads(p, input, out);
        return true;
    }
    let mut fields = Fields {
        words: [0; MAX_DEPTH],
    };
    let mut c0 = 0;
    while c0 < oc {
        let n = CHANNELS.min(oc - c0);
        let chans: [Chan; CHANNELS] =
            core::array::from_fn(|j| Chan::new(&p.stage, p.bias, c0 + j.min(n - 1)));
        let quads: [Option<Requant4>; CHANNELS / 4] = core::array::from_fn(|q| {
            if 4 * q + 4 <= n {
                Requant4::new(p, c0 + 4 * q, depth)
            } else {
                None
            }
        });
        let block = Block {
            chans: &chans[..n],
            quads: &quads,
            c0,
            depth,
        };
        if block.chans.iter().all(|c| c.general.is_none()) {
            block.run::<true>(p, input, out, &mut fields);
        } else {
            block.run::<false>(p, input, out, &mut fields);
        }
        c0 += n;
    }
    true
}

/// Four output channels' weights, sign-extended once: for each group `g` of four values of the
/// receptive field, channel `j`'s words at `8g + 2j` = (w₀, w₂) and `8g + 2j + 1` = (w₁, w₃),
/// the order in which `SXTB16` and `SXTB16 ROR #8` split a word of four int8 inputs. Channels
/// past the last and values past the depth are 0.
struct Quad {
    words: [u32; 2 * MAX_DEPTH],
}

/// One group of four input values times a [`Quad`]'s four channels, in Thumb assembly: one word
/// of input split by `SXTB16`, each channel's two weight words by `LDRD`, two `SMLAD`s each.
#[cfg(all(feature = "cortex-m-dsp", target_arch = "arm"))]
macro_rules! quad_group {
    () => {
        concat!(
            "ldr {t0}, [{xp}], #4\n",
            "sxtb16 {t1}, {t0}\n",
            "sxtb16 {t0}, {t0}, ror #8\n",
            "ldrd {t2}, {t3}, [{wp}], #8\n",
            "smlad {a0}, {t1}, {t2}, {a0}\n",
            "smlad {a0}, {t0}, {t3}, {a0}\n",
            "ldrd {t2}, {t3}, [{wp}], #8\n",
            "smlad {a1}, {t1}, {t2}, {a1}\n",
            "smlad {a1}, {t0}, {t3}, {a1}\n",
            "ldrd {t2}, {t3}, [{wp}], #8\n",
            "smlad {a2}, {t1}, {t2}, {a2}\n",
            "smlad {a2}, {t0}, {t3}, {a2}\n",
            "ldrd {t2}, {t3}, [{wp}], #8\n",
            "smlad {a3}, {t1}, {t2}, {a3}\n",
            "smlad {a3}, {t0}, {t3}, {a3}",
        )
    };
}

/// The sums of one pixel's receptive field, `rows` runs of `groups` words of int8 input `row`
/// bytes apart from `x`, with a [`Quad`]'s four channels from `w`: `[channel]`.
///
/// # Safety
/// `x + r·row` has `4·groups` readable bytes for `r < rows`; `w` has `8·rows·groups` words.
#[inline(always)]
unsafe fn quad_sums(
    x: *const i8,
    row: usize,
    rows: usize,
    groups: usize,
    w: *const u32,
) -> [i32; 4] {
    let (mut a0, mut a1, mut a2, mut a3) = (0i32, 0i32, 0i32, 0i32);
    let mut wp = w;
    for r in 0..rows {
        // SAFETY: by the contract.
        let xp = unsafe { x.add(r * row) } as *const u32;
        #[cfg(all(feature = "cortex-m-dsp", target_arch = "arm"))]
        if groups > 0 {
            // The loop in assembly with its registers allocated by hand (four accumulators,
            // two pointers, the count, four temporaries), as in `gemm2`; two groups per
            // iteration, an odd one first.
            // SAFETY: reads as the contract allows (the weights 4-aligned for `ldrd`, the input
            // unaligned, which Cortex-M7 loads); registers only otherwise.
            unsafe {
                core::arch::asm!(
                    "tst {n}, #1",
                    "beq 3f",
                    quad_group!(),
                    "3:",
                    "lsrs {n}, {n}, #1",
                    "beq 4f",
                    "2:",
                    quad_group!(),
                    quad_group!(),
                    "subs {n}, {n}, #1",
                    "bne 2b",
                    "4:",
                    a0 = inout(reg) a0,
                    a1 = inout(reg) a1,
                    a2 = inout(reg) a2,
                    a3 = inout(reg) a3,
                    xp = inout(reg) xp => _,
                    wp = inout(reg) wp,
                    n = inout(reg) groups => _,
                    t0 = out(reg) _,
                    t1 = out(reg) _,
                    t2 = out(reg) _,
                    t3 = out(reg) _,
                    options(nostack, readonly),
                );
            }
        }
        #[cfg(not(all(feature = "cortex-m-dsp", target_arch = "arm")))]
        for i in 0..groups {
            // SAFETY: in bounds by the contract.
            unsafe {
                let xw = xp.add(i).read_unaligned();
                let (xe, xo) = (sxtb16(xw), sxtb16_ror8(xw));
                let q = |j: usize| (wp.add(2 * j).read(), wp.add(2 * j + 1).read());
                let ((e0, o0), (e1, o1)) = (q(0), q(1));
                let ((e2, o2), (e3, o3)) = (q(2), q(3));
                a0 = smlad(xo, o0, smlad(xe, e0, a0));
                a1 = smlad(xo, o1, smlad(xe, e1, a1));
                a2 = smlad(xo, o2, smlad(xe, e2, a2));
                a3 = smlad(xo, o3, smlad(xe, e3, a3));
                wp = wp.add(8);
            }
        }
    }
    [a0, a1, a2, a3]
}

/// Words of [`quads`]' ring of widened input rows (16 KiB) and of [`single`]'s (25 KiB: a
/// depth head's 3×3 rows of 32 channels at 128 columns).
const ROW_WORDS: usize = 4096;
const HEAD_ROW_WORDS: usize = 6400;

/// The `k` input rows that a row of outputs of a dense `k×k` convolution with `C_in` a multiple
/// of four reads, widened once: input row `y` in slot `y mod k`, each slot a padded row of
/// `pad + W_in + pad` pixels, each pixel's `C_in` values minus the zero point as int16 pairs,
/// per group of four (c₀, c₂), (c₁, c₃) (the order of a [`Quad`]'s weights), zeros in the
/// padding. The taps of a pixel in one kernel row are then `k·C_in / 2` consecutive words, for
/// every pixel: no border pixels, no zero-point fold.
#[repr(C, align(8))]
struct Rows<const N: usize> {
    words: [u32; N],
    /// The input row each slot holds (`i32::MIN`: none yet).
    held: [i32; 7],
    /// Words per slot.
    slot: usize,
}

impl<const N: usize> Rows<N> {
    /// The ring for `p`, or `None` where `C_in` is not a multiple of four, `k > 7` or `k` padded
    /// rows do not fit.
    fn new(p: &ConvParams<'_>) -> Option<Self> {
        let (iw, ic, k) = (p.input.width, p.input.channels, p.kernel);
        let slot = (iw + 2 * (k / 2)) * ic / 2;
        if ic % 4 != 0 || k > 7 || k * slot > N {
            return None;
        }
        Some(Rows {
            words: [0; N],
            held: [i32::MIN; 7],
            slot,
        })
    }

    /// Makes slot `y mod k` hold input row `y` (zeros outside the input); nothing if it does.
    fn load(&mut self, p: &ConvParams<'_>, input: &[i8], y: i32) {
        let (ih, iw, ic, k) = (p.input.height, p.input.width, p.input.channels, p.kernel);
        let slot = y.rem_euclid(k as i32) as usize;
        if self.held[slot] == y {
            return;
        }
        self.held[slot] = y;
        let words = &mut self.words[slot * self.slot..(slot + 1) * self.slot];
        if y < 0 || y as usize >= ih {
            words.fill(0);
            return;
        }
        let zp = p.input_zero_point;
        let zp2 = ((zp as u32) & 0xffff) | ((zp as u32) << 16);
        let row = &input[y as usize * iw * ic..][..iw * ic];
        // the padding columns stay zero from the ring's creation or a row outside the input
        let inside = &mut words[(k / 2) * ic / 2..][..iw * ic / 2];
        for (pair, v) in inside.chunks_exact_mut(2).zip(row.chunks_exact(4)) {
            let v = word(v);
            pair[0] = ssub16(sxtb16(v), zp2);
            pair[1] = ssub16(sxtb16_ror8(v), zp2);
        }
    }

    /// The first word of input row `y`'s padded column `x` (the row loaded); a pixel's column
    /// `x + i` is `i·C_in / 2` words on, within the slot.
    fn at(&self, p: &ConvParams<'_>, y: i32, x: usize) -> *const u32 {
        let slot = y.rem_euclid(p.kernel as i32) as usize;
        self.words[slot * self.slot + x * p.input.channels / 2..].as_ptr()
    }
}

/// One group of four widened input values (`LDRD` of its two words) times a [`Quad`]'s four
/// channels (an `LDRD` and two `SMLAD`s each): 13 instructions for 16 MACs.
#[cfg(all(feature = "cortex-m-dsp", target_arch = "arm"))]
macro_rules! wide_group {
    () => {
        concat!(
            "ldrd {x0}, {x1}, [{xp}], #8\n",
            "ldrd {t0}, {t1}, [{wp}], #8\n",
            "smlad {a0}, {x0}, {t0}, {a0}\n",
            "smlad {a0}, {x1}, {t1}, {a0}\n",
            "ldrd {t0}, {t1}, [{wp}], #8\n",
            "smlad {a1}, {x0}, {t0}, {a1}\n",
            "smlad {a1}, {x1}, {t1}, {a1}\n",
            "ldrd {t0}, {t1}, [{wp}], #8\n",
            "smlad {a2}, {x0}, {t0}, {a2}\n",
            "smlad {a2}, {x1}, {t1}, {a2}\n",
            "ldrd {t0}, {t1}, [{wp}], #8\n",
            "smlad {a3}, {x0}, {t0}, {a3}\n",
            "smlad {a3}, {x1}, {t1}, {a3}",
        )
    };
}

/// Adds `groups` groups of widened input from `x` (as [`Rows`] holds them) times a [`Quad`]'s
/// four channels from `w` to `acc`; returns `w` past them.
///
/// # Safety
/// `x` has `2·groups` readable words, `w` `8·groups`, both 8-aligned.
#[inline(always)]
unsafe fn wide_sums(x: *const u32, groups: usize, w: *const u32, acc: &mut [i32; 4]) -> *const u32 {
    let [mut a0, mut a1, mut a2, mut a3] = *acc;
    let mut wp = w;
    #[cfg(all(feature = "cortex-m-dsp", target_arch = "arm"))]
    if groups > 0 {
        // two groups per iteration, an odd one first, as in `quad_sums`
        // SAFETY: reads as the contract allows; registers only otherwise.
        unsafe {
            core::arch::asm!(
                "tst {n}, #1",
                "beq 3f",
                wide_group!(),
                "3:",
                "lsrs {n}, {n}, #1",
                "beq 4f",
                "2:",
                wide_group!(),
                wide_group!(),
                "subs {n}, {n}, #1",
                "bne 2b",
                "4:",
                a0 = inout(reg) a0,
                a1 = inout(reg) a1,
                a2 = inout(reg) a2,
                a3 = inout(reg) a3,
                xp = inout(reg) x => _,
                wp = inout(reg) wp,
                n = inout(reg) groups => _,
                x0 = out(reg) _,
                x1 = out(reg) _,
                t0 = out(reg) _,
                t1 = out(reg) _,
                options(nostack, readonly),
            );
        }
    }
    #[cfg(not(all(feature = "cortex-m-dsp", target_arch = "arm")))]
    for i in 0..groups {
        // SAFETY: in bounds by the contract.
        unsafe {
            let (xe, xo) = (x.add(2 * i).read(), x.add(2 * i + 1).read());
            let q = |j: usize| (wp.add(2 * j).read(), wp.add(2 * j + 1).read());
            let ((e0, o0), (e1, o1)) = (q(0), q(1));
            let ((e2, o2), (e3, o3)) = (q(2), q(3));
            a0 = smlad(xo, o0, smlad(xe, e0, a0));
            a1 = smlad(xo, o1, smlad(xe, e1, a1));
            a2 = smlad(xo, o2, smlad(xe, e2, a2));
            a3 = smlad(xo, o3, smlad(xe, e3, a3));
            wp = wp.add(8);
        }
    }
    *acc = [a0, a1, a2, a3];
    wp
}

/// One block of [`quads`] (channels `b0..b0 + nb`, their weights in `quad`) through `rows`:
/// each pixel's taps are `k` runs of widened words; each full quad of channels that
/// [`Requant4`] takes is stored as one word, the others channel by channel through `chans`
/// (not folded: the ring has the zero point subtracted).
#[allow(clippy::too_many_arguments)]
fn ring_block(
    p: &ConvParams<'_>,
    input: &[i8],
    out: &mut [u8],
    rows: &mut Rows<ROW_WORDS>,
    quad: &Quad,
    chans: &[Chan<'_>],
    b0: usize,
    nb: usize,
) {
    let (oh, ow, oc) = (p.output.height, p.output.width, p.output.channels);
    let (k, s, ic) = (p.kernel, p.stride, p.input.channels);
    let (depth, per_run) = (k * k * ic, k * ic / 4);
    let quad_words = 8 * k * per_run;
    let quads = nb.div_ceil(4);
    let rq: [Option<Requant4>; 8] = core::array::from_fn(|q| {
        (4 * q + 4 <= nb)
            .then(|| Requant4::new(p, b0 + 4 * q, depth))
            .flatten()
    });
    let step = s * ic / 2;
    for oy in 0..oh {
        let y0 = (oy * s) as i32 - (k / 2) as i32;
        let mut runs = [core::ptr::null(); 7];
        for (y, run) in (y0..y0 + k as i32).zip(&mut runs) {
            rows.load(p, input, y);
            *run = rows.at(p, y, 0);
        }
        for ox in 0..ow {
            let base = (oy * ow + ox) * oc + b0;
            for (q, rq) in rq.iter().enumerate().take(quads) {
                let mut acc = [0i32; 4];
                let mut w = quad.words[q * quad_words..].as_ptr();
                for &run in &runs[..k] {
                    // SAFETY: padded column ox·s + k − 1 ≤ W_in + 2·pad − 1 (W_out =
                    // ⌈W_in / s⌉), so the run's 2·per_run words from column ox·s lie in the
                    // slot; quad q holds 8·k·per_run words; the ring and the quads are 4-aligned.
                    w = unsafe { wide_sums(run.add(ox * step), per_run, w, &mut acc) };
                }
                match rq {
                    Some(r) => out[base + 4 * q..base + 4 * q + 4]
                        .copy_from_slice(&requant4(r, acc).to_le_bytes()),
                    None => {
                        for (j, &a) in acc.iter().enumerate().take(nb - 4 * q) {
                            chans[4 * q + j].store(out, base + 4 * q + j, a);
                        }
                    }
                }
            }
        }
    }
}

/// A dense convolution four output channels at a time, weights-stationary: each [`Quad`] of
/// weights is sign-extended once, the input is read as int8 words and split by `SXTB16` (one
/// load and two extends per four values, shared by the four channels), and the zero point is
/// folded into the bias (−z·Σw). Where a pixel's taps are whole words of the input (`C_in` a
/// multiple of four, every tap inside) its rows are read in place; elsewhere (the borders, other
/// `C_in`) its receptive field is first copied into a contiguous buffer with the zero point in
/// the padding. The caller ([`dense`]) has checked the shapes and sizes (depth ≤ [`MAX_DEPTH`]).
/// Not inlined, so that its buffers and [`dense`]'s [`Fields`] never share a stack frame.
#[inline(never)]
fn quads(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
    let (ih, iw, ic) = (p.input.height, p.input.width, p.input.channels);
    let (oh, ow, oc) = (p.output.height, p.output.width, p.output.channels);
    let (k, s, pad) = (p.kernel, p.stride, p.kernel / 2);
    let depth = k * k * ic;
    let groups = depth.div_ceil(4);
    let zp = p.input_zero_point;
    let direct = ic % 4 == 0;
    let inner = |o: usize, n: usize| all_taps_inside(o, s, k, n);
    let mut quad = Quad {
        words: [0; 2 * MAX_DEPTH],
    };
    let mut field = [0i8; MAX_DEPTH + 4];
    let xp = input.as_ptr();
    // as many quads per block as their weights fit in `Quad` (at most 8: 32 channels), so that
    // a pixel's tap checks and copied field serve the whole block
    let per_block = (2 * MAX_DEPTH / (8 * groups)).clamp(1, 8);
    let quad_words = 8 * groups;
    let mut rows = if direct {
        Rows::<ROW_WORDS>::new(p)
    } else {
        None
    };
    for b0 in (0..oc).step_by(4 * per_block) {
        let nb = (4 * per_block).min(oc - b0);
        let mut chans: [Chan; 32] =
            core::array::from_fn(|j| Chan::new(&p.stage, p.bias, b0 + j.min(nb - 1)));
        let fill = |quad: &mut Quad| {
            for j in 0..nb.div_ceil(4) * 4 {
                let (q, lane) = (j / 4, j % 4);
                let words = &mut quad.words[q * quad_words..(q + 1) * quad_words];
                let w: &[i8] = if j < nb {
                    &p.weights[(b0 + j) * depth..(b0 + j + 1) * depth]
                } else {
                    &[]
                };
                for g in 0..groups {
                    // the last group padded with zero weights
                    let mut v = [0i8; 4];
                    let tail = w.get(4 * g..).unwrap_or(&[]);
                    let n = tail.len().min(4);
                    v[..n].copy_from_slice(&tail[..n]);
                    words[8 * g + 2 * lane] = sxtb16(word(&v));
                    words[8 * g + 2 * lane + 1] = sxtb16_ror8(word(&v));
                }
            }
        };
        fill(&mut quad);
        if let Some(rows) = &mut rows {
            ring_block(p, input, out, rows, &quad, &chans[..nb], b0, nb);
            continue;
        }
        for (j, ch) in chans.iter_mut().enumerate().take(nb) {
            ch.fold(zp.wrapping_mul(p.weight_sum(b0 + j)).wrapping_neg());
        }
        let fast = chans[..nb].iter().all(|c| c.general.is_none());
        for oy in 0..oh {
            let row_inside = inner(oy, ih);
            let (ky0, ky1, y0) = taps(oy, s, pad, k, ih);
            for ox in 0..ow {
                let in_place = direct && row_inside && inner(ox, iw);
                let (x, row, rows, per_row) = if in_place {
                    // SAFETY: every tap inside the input (checked ≥ ih·iw·ic by `dense`): k
                    // rows of k·ic bytes, `iw·ic` apart.
                    let x = unsafe { xp.add((y0 * iw + ox * s - pad) * ic) };
                    (x, iw * ic, k, k * ic / 4)
                } else {
                    field[..groups * 4].fill(zp as i8);
                    let (kx0, kx1, x0) = taps(ox, s, pad, k, iw);
                    for (ky, y) in (ky0..ky1).zip(y0..) {
                        let n = (kx1 - kx0) * ic;
                        let at = (ky * k + kx0) * ic;
                        field[at..at + n].copy_from_slice(&input[(y * iw + x0) * ic..][..n]);
                    }
                    (field.as_ptr(), 0, 1, groups)
                };
                let base = (oy * ow + ox) * oc + b0;
                for q in 0..nb.div_ceil(4) {
                    // SAFETY: `x` has `rows` runs of `per_row` words (in place, or the field's
                    // 4·groups bytes); quad q holds rows·per_row·8 = 8·groups words.
                    let acc = unsafe {
                        quad_sums(
                            x,
                            row,
                            rows,
                            per_row,
                            quad.words.as_ptr().add(q * quad_words),
                        )
                    };
                    let n = 4.min(nb - 4 * q);
                    let chans = &chans[4 * q..4 * q + n];
                    if fast {
                        for (j, ch) in chans.iter().enumerate() {
                            // SAFETY: base + 4q + j < oh·ow·oc ≤ out.len() (checked by `dense`).
                            unsafe { ch.put::<true>(out, base + 4 * q + j, acc[j]) };
                        }
                    } else {
                        for (j, ch) in chans.iter().enumerate() {
                            ch.store(out, base + 4 * q + j, acc[j]);
                        }
                    }
                }
            }
        }
    }
}

/// Adds `groups` groups of widened input of two pixels, from `xa` and `xb` (as [`Rows`] holds
/// them), times one channel's widened weights from `w` to `acc`; returns `w` past them. Each
/// weight pair serves both pixels: 7 instructions for 8 MACs.
///
/// # Safety
/// `xa`, `xb`, `w` have `2·groups` readable words each, 4-aligned.
#[inline(always)]
unsafe fn wide_pair(
    xa: *const u32,
    xb: *const u32,
    groups: usize,
    w: *const u32,
    acc: &mut [i32; 2],
) -> *const u32 {
    let [mut a, mut b] = *acc;
    let mut wp = w;
    #[cfg(all(feature = "cortex-m-dsp", target_arch = "arm"))]
    if groups > 0 {
        // SAFETY: reads as the contract allows; registers only otherwise.
        unsafe {
            core::arch::asm!(
                "2:",
                "ldrd {x0}, {x1}, [{xa}], #8",
                "ldrd {w0}, {w1}, [{wp}], #8",
                "smlad {a}, {x0}, {w0}, {a}",
                "smlad {a}, {x1}, {w1}, {a}",
                "ldrd {x0}, {x1}, [{xb}], #8",
                "smlad {b}, {x0}, {w0}, {b}",
                "smlad {b}, {x1}, {w1}, {b}",
                "subs {n}, {n}, #1",
                "bne 2b",
                a = inout(reg) a,
                b = inout(reg) b,
                xa = inout(reg) xa => _,
                xb = inout(reg) xb => _,
                wp = inout(reg) wp,
                n = inout(reg) groups => _,
                x0 = out(reg) _,
                x1 = out(reg) _,
                w0 = out(reg) _,
                w1 = out(reg) _,
                options(nostack, readonly),
            );
        }
    }
    #[cfg(not(all(feature = "cortex-m-dsp", target_arch = "arm")))]
    for i in 0..groups {
        // SAFETY: in bounds by the contract.
        unsafe {
            let (we, wo) = (wp.read(), wp.add(1).read());
            a = smlad(
                xa.add(2 * i + 1).read(),
                wo,
                smlad(xa.add(2 * i).read(), we, a),
            );
            b = smlad(
                xb.add(2 * i + 1).read(),
                wo,
                smlad(xb.add(2 * i).read(), we, b),
            );
            wp = wp.add(2);
        }
    }
    *acc = [a, b];
    wp
}

/// [`single`] through a ring of widened rows, two pixels at a time (the second pixel of an odd
/// row's last pair is the first again, its result dropped). Returns `false`, having written
/// nothing, where the ring does not fit or the weights do not fit the widened table.
#[inline(never)]
fn single_ring(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) -> bool {
    let (oh, ow, ic) = (p.output.height, p.output.width, p.input.channels);
    let (k, s) = (p.kernel, p.stride);
    let weights = &p.weights[..k * k * ic];
    if weights.len() > MAX_DEPTH {
        return false;
    }
    let Some(mut rows) = Rows::<HEAD_ROW_WORDS>::new(p) else {
        return false;
    };
    let chan = Chan::new(&p.stage, p.bias, 0);
    let mut wide = [0u32; MAX_DEPTH / 2];
    for (g, w) in weights.chunks_exact(4).enumerate() {
        (wide[2 * g], wide[2 * g + 1]) = (sxtb16(word(w)), sxtb16_ror8(word(w)));
    }
    let (per_run, step) = (k * ic / 4, s * ic / 2);
    for oy in 0..oh {
        let y0 = (oy * s) as i32 - (k / 2) as i32;
        let mut runs = [core::ptr::null(); 7];
        for (y, run) in (y0..y0 + k as i32).zip(&mut runs) {
            rows.load(p, input, y);
            *run = rows.at(p, y, 0);
        }
        for ox in (0..ow).step_by(2) {
            let ob = if ox + 1 < ow { ox + 1 } else { ox };
            let mut acc = [0i32; 2];
            let mut w = wide.as_ptr();
            for &run in &runs[..k] {
                // SAFETY: both pixels' runs of 2·per_run words lie in their slot (as in
                // `ring_block`); `wide` holds 2·k·per_run words.
                w = unsafe {
                    wide_pair(run.add(ox * step), run.add(ob * step), per_run, w, &mut acc)
                };
            }
            chan.store(out, oy * ow + ox, acc[0]);
            if ob != ox {
                chan.store(out, oy * ow + ob, acc[1]);
            }
        }
    }
    true
}

/// A dense convolution with one output channel (a depth head) and `C_in` a multiple of four,
/// pixel by pixel straight from the int8 input: with one weight row, widening each receptive
/// field to int16 would cost more than the products it feeds. Inside the map every tap is valid
/// and the zero point is folded into the bias (−z·Σw); at the borders it is subtracted per tap.
/// The caller ([`dense`]) has checked the shapes and buffer sizes.
fn single(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
    let (ih, iw, ic) = (p.input.height, p.input.width, p.input.channels);
    let (oh, ow) = (p.output.height, p.output.width);
    let (k, s) = (p.kernel, p.stride);
    let (pad, zp) = (k / 2, p.input_zero_point);
    let chan = Chan::new(&p.stage, p.bias, 0);
    let weights = &p.weights[..k * k * ic];
    let mut inside = chan;
    inside.fold(zp.wrapping_mul(p.weight_sum(0)).wrapping_neg());
    let inner = |o: usize, n: usize| all_taps_inside(o, s, k, n);
    let (row, words) = (iw * ic, k * ic / 4);
    let (xp, wp) = (input.as_ptr(), weights.as_ptr());
    // the weights sign-extended once, (w₀, w₂) and (w₁, w₃) per word, where they fit
    let widened = weights.len() <= MAX_DEPTH;
    let mut wide = [0u32; MAX_DEPTH / 2];
    if widened {
        for (g, w) in weights.chunks_exact(4).enumerate() {
            (wide[2 * g], wide[2 * g + 1]) = (sxtb16(word(w)), sxtb16_ror8(word(w)));
        }
    }
    for oy in 0..oh {
        let (ky0, ky1, y0) = taps(oy, s, pad, k, ih);
        let row_inside = inner(oy, ih);
        let mut ox = 0;
        while ox < ow {
            let index = oy * ow + ox;
            if widened && row_inside && ox + 1 < ow && inner(ox, iw) && inner(ox + 1, iw) {
                // two neighbouring inner pixels share each widened weight word
                let x0 = ox * s - pad;
                let (mut a, mut b) = (0i32, 0i32);
                for ky in 0..k {
                    // SAFETY: every tap of both inner pixels lies inside the input (checked by
                    // `dense`): `words` words per row from each pixel's first tap, the second
                    // pixel's `s·C_in` bytes on; `wide` holds 2·k·words words.
                    unsafe {
                        let x = xp.add((y0 + ky) * row + x0 * ic);
                        let (xa, xb) = (x as *const u32, x.add(s * ic) as *const u32);
                        let w = wide.as_ptr().add(2 * ky * words);
                        for j in 0..words {
                            let (u, v) = (xa.add(j).read_unaligned(), xb.add(j).read_unaligned());
                            let (we, wo) = (w.add(2 * j).read(), w.add(2 * j + 1).read());
                            a = smlad(sxtb16_ror8(u), wo, smlad(sxtb16(u), we, a));
                            b = smlad(sxtb16_ror8(v), wo, smlad(sxtb16(v), we, b));
                        }
                    }
                }
                inside.store(out, index, a);
                inside.store(out, index + 1, b);
                ox += 2;
                continue;
            }
            if row_inside && inner(ox, iw) {
                let x0 = ox * s - pad;
                let mut acc = 0i32;
                for ky in 0..k {
                    // SAFETY: every tap of an inner pixel lies inside the input (checked by
                    // `dense`), a row of taps is `k·C_in` bytes, `words` words; weights likewise.
                    unsafe {
                        let x = xp.add((y0 + ky) * row + x0 * ic) as *const u32;
                        let w = wp.add(ky * k * ic) as *const u32;
                        for j in 0..words {
                            let (xw, ww) = (x.add(j).read_unaligned(), w.add(j).read_unaligned());
                            acc = smlad(sxtb16(xw), sxtb16(ww), acc);
                            acc = smlad(sxtb16_ror8(xw), sxtb16_ror8(ww), acc);
                        }
                    }
                }
                inside.store(out, index, acc);
                ox += 1;
                continue;
            }
            let (kx0, kx1, x0) = taps(ox, s, pad, k, iw);
            let mut acc = 0i32;
            for (ky, y) in (ky0..ky1).zip(y0..) {
                let n = (kx1 - kx0) * ic;
                let x = &input[y * row + x0 * ic..][..n];
                let w = &weights[(ky * k + kx0) * ic..][..n];
                for (&xv, &wv) in x.iter().zip(w) {
                    acc += (xv as i32 - zp) * wv as i32;
                }
            }
            chan.store(out, index, acc);
            ox += 1;
        }
    }
}

/// One block of output channels of [`dense`]: their decoded constants, the first channel and
/// the receptive-field depth.
struct Block<'c, 'a> {
    chans: &'c [Chan<'a>],
    /// Each full quad of channels that [`Requant4`] takes: requantized four at a time.
    quads: &'c [Option<Requant4>],
    c0: usize,
    depth: usize,
}

impl Block<'_, '_> {
    /// Every output pixel of the block's channels, two pixels at a time; `FAST`: every channel
    /// on [`Chan`]'s fast path. The caller ([`dense`]) has checked the buffer sizes.
    #[inline(always)]
    fn run<const FAST: bool>(
        &self,
        p: &ConvParams<'_>,
        input: &[i8],
        out: &mut [u8],
        fields: &mut Fields,
    ) {
        let (ow, oc) = (p.output.width, p.output.channels);
        let pixels = p.output.height * ow;
        let (depth, n, c0) = (self.depth, self.chans.len(), self.c0);
        let groups = depth / 4;
        let wp = p.weights.as_ptr();
        let mut px = 0;
        while px < pixels {
            let pair = px + 1 < pixels;
            fields.gather(p, input, 0, px / ow, px % ow);
            if pair {
                fields.gather(p, input, 1, (px + 1) / ow, (px + 1) % ow);
            } else {
                fields.clear_slot(1, depth);
            }
            let x = fields.words.as_ptr();
            let (o0, o1) = (px * oc + c0, (px + 1) * oc + c0);
            let mut j = 0;
            while j + 1 < n {
                if let Some(Some(q)) = self.quads.get(j / 4).filter(|_| j % 4 == 0) {
                    // a quad of channels: two GEMMs, then one word per pixel
                    // SAFETY: rows c0 + j .. c0 + j + 4 have `depth` bytes (checked by `dense`,
                    // the quad is full); the fields as below.
                    let ([[a0, a1], [b0, b1]], [[a2, a3], [b2, b3]]) = unsafe {
                        let w = |i: usize| wp.add((c0 + j + i) * depth);
                        (gemm2(x, w(0), w(1), groups), gemm2(x, w(2), w(3), groups))
                    };
                    out[o0 + j..o0 + j + 4]
                        .copy_from_slice(&requant4(q, [a0, a1, a2, a3]).to_le_bytes());
                    if pair {
                        out[o1 + j..o1 + j + 4]
                            .copy_from_slice(&requant4(q, [b0, b1, b2, b3]).to_le_bytes());
                    }
                    j += 4;
                    continue;
                }
                // SAFETY: rows c0 + j and c0 + j + 1 have `depth` bytes (checked by `dense`);
                // the fields hold 2·ceil(depth / 4) u64s.
                let [[a00, a01], [a10, a11]] = unsafe {
                    gemm2(
                        x,
                        wp.add((c0 + j) * depth),
                        wp.add((c0 + j + 1) * depth),
                        groups,
                    )
                };
                let (c, d) = (&self.chans[j], &self.chans[j + 1]);
                // SAFETY: pixels px (and px + 1 with `pair`) and channels c0 + j + 1 < oc lie
                // in `out` (checked by `dense`); `FAST` as the caller says.
                unsafe {
                    c.put::<FAST>(out, o0 + j, a00);
                    d.put::<FAST>(out, o0 + j + 1, a01);
                    if pair {
                        c.put::<FAST>(out, o1 + j, a10);
                        d.put::<FAST>(out, o1 + j + 1, a11);
                    }
                }
                j += 2;
            }
            if j < n {
                // SAFETY: as above, one row.
                let [a0, a1] = unsafe { gemm1(x, wp.add((c0 + j) * depth), groups) };
                let c = &self.chans[j];
                // SAFETY: as above.
                unsafe {
                    c.put::<FAST>(out, o0 + j, a0);
                    if pair {
                        c.put::<FAST>(out, o1 + j, a1);
                    }
                }
            }
            px += 2;
        }
    }
}

/// A depthwise convolution four channels at a time over the whole map: each group's constants
/// are decoded once and its four accumulators stay in registers; a tap is one word of input and
/// one of weights (`SMLABB`/`SMLATT`, one product each). Inside the map, where every tap is
/// valid, the zero point is folded into the bias (−z·Σw), so the input is only sign-extended;
/// at the borders it is subtracted per tap. 3×3 kernels of stride 1 or 2 go through
/// [`depthwise3`] instead, for each group whose constants [`Fused`] takes. Channels past a multiple of four run one at a time.
/// Returns `false` (nothing written) where the buffers are not the sizes the shapes say.
pub fn depthwise(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) -> bool {
    let (ih, iw, c) = (p.input.height, p.input.width, p.input.channels);
    let (oh, ow) = (p.output.height, p.output.width);
    let (k, s) = (p.kernel, p.stride);
    if !super::conv::depthwise_fits(p, input.len(), out.len(), 7) {
        return false;
    }
    let (pad, zp) = (k / 2, p.input_zero_point);
    let zp2 = ((zp as u32) & 0xffff) | ((zp as u32) << 16);
    let xp = input.as_ptr();
    // the output rows and columns whose taps all lie inside the input
    let inner = |o: usize, n: usize| all_taps_inside(o, s, k, n);
    let groups = c / 4;
    // the byte offset of each tap from a pixel's first tap, for every inner pixel and group
    let mut offsets = [0u32; 49];
    for (t, o) in offsets.iter_mut().enumerate().take(k * k) {
        *o = (((t / k) * iw + t % k) * c) as u32;
    }
    let fits = k == 3 && s <= 2 && ow > 0 && (ow - 1) * s + 3 <= RING_COLUMNS;
    // (zeroed only where used: 6 KiB)
    let mut ring = if fits && groups > 0 {
        Some(Ring {
            words: [[0; 6]; RING_COLUMNS],
            rows: [i32::MIN; 3],
        })
    } else {
        None
    };
    for g in 0..groups {
        let c0 = 4 * g;
        if let Some(ring) = &mut ring {
            if let Some(f) = Fused::new(p, g) {
                depthwise3(p, input, out, ring, &f, c0);
                continue;
            }
        }
        let chans: [Chan; 4] = core::array::from_fn(|j| Chan::new(&p.stage, p.bias, c0 + j));
        // the group's weights sign-extended once: (w₀, w₂) and (w₁, w₃) at 2t, 2t + 1
        let mut pairs = [0u32; 98];
        for t in 0..k * k {
            let w = &p.weights[t * c + c0..t * c + c0 + 4];
            (pairs[2 * t], pairs[2 * t + 1]) = (sxtb16(word(w)), sxtb16_ror8(word(w)));
        }
        let folded: [i32; 4] =
            core::array::from_fn(|j| zp.wrapping_mul(p.weight_sum(c0 + j)).wrapping_neg());
        let fast = chans.iter().all(|c| c.general.is_none());
        let mut inside = chans;
        for (ch, f) in inside.iter_mut().zip(folded) {
            ch.fold(f);
        }
        for oy in 0..oh {
            let (ky0, ky1, y0) = taps(oy, s, pad, k, ih);
            let row_inside = inner(oy, ih);
            for ox in 0..ow {
                let base = (oy * ow + ox) * c + c0;
                let mut acc = [0i32; 4];
                if row_inside && inner(ox, iw) {
                    // SAFETY: every tap of an inner pixel lies inside the input (checked
                    // ≥ ih·iw·c), and c0 + 4 ≤ c.
                    let first = unsafe { xp.add((y0 * iw + ox * s - pad) * c + c0) };
                    // SAFETY: as above: `offsets` are the k² taps' byte offsets from the first.
                    let acc = unsafe { inner_taps(first, &offsets[..k * k], &pairs) };
                    if fast {
                        for (j, ch) in inside.iter().enumerate() {
                            // SAFETY: base + j < oh·ow·c ≤ out.len() (checked above); every
                            // channel of the group is on the fast path.
                            unsafe { ch.put::<true>(out, base + j, acc[j]) };
                        }
                    } else {
                        for (j, ch) in inside.iter().enumerate() {
                            ch.store(out, base + j, acc[j]);
                        }
                    }
                    continue;
                }
                let (kx0, kx1, x0) = taps(ox, s, pad, k, iw);
                for (ky, y) in (ky0..ky1).zip(y0..) {
                    for (kx, x) in (kx0..kx1).zip(x0..) {
                        let t = ky * k + kx;
                        // SAFETY: y < ih, x < iw (valid taps) and c0 + 4 ≤ c.
                        let xw = unsafe {
                            (xp.add((y * iw + x) * c + c0) as *const u32).read_unaligned()
                        };
                        let (xe, xo) = (ssub16(sxtb16(xw), zp2), ssub16(sxtb16_ror8(xw), zp2));
                        let (we, wo) = (pairs[2 * t], pairs[2 * t + 1]);
                        acc[0] = smlabb(xe, we, acc[0]);
                        acc[2] = smlatt(xe, we, acc[2]);
                        acc[1] = smlabb(xo, wo, acc[1]);
                        acc[3] = smlatt(xo, wo, acc[3]);
                    }
                }
                for (j, ch) in chans.iter().enumerate() {
                    ch.store(out, base + j, acc[j]);
                }
            }
        }
    }
    for ch in 4 * groups..c {
        let chan = Chan::new(&p.stage, p.bias, ch);
        for oy in 0..oh {
            let (ky0, ky1, y0) = taps(oy, s, pad, k, ih);
            for ox in 0..ow {
                let (kx0, kx1, x0) = taps(ox, s, pad, k, iw);
                let mut acc = 0i32;
                for (ky, y) in (ky0..ky1).zip(y0..) {
                    for (kx, x) in (kx0..kx1).zip(x0..) {
                        let xv = input[(y * iw + x) * c + ch] as i32 - zp;
                        acc += xv * p.weights[(ky * k + kx) * c + ch] as i32;
                    }
                }
                chan.store(out, (oy * ow + ox) * c + ch, acc);
            }
        }
    }
    true
}

/// Most padded input columns (`(W_out − 1)·stride + 3`, at most the input width + 2) of
/// [`depthwise3`]'s ring: 6 KiB of stack.
const RING_COLUMNS: usize = 258;

/// The three input rows of one group of four channels that a row of a 3×3 depthwise
/// convolution reads, widened once: for each padded column `xx` (input column `xx − 1`), three
/// slots of two words, input row `y` in slot `y mod 3`, its four channels minus the zero point
/// as int16 pairs (c₀, c₂), (c₁, c₃) (the order of `SXTB16`, `SXTB16 ROR #8`), zeros where the
/// tap lies in the padding. A tap of an output pixel is then one `LDRD` at an offset fixed by
/// the tap and the slot rotation, and no pixel is a border pixel.
#[repr(C, align(8))]
struct Ring {
    words: [[u32; 6]; RING_COLUMNS],
    /// The input row each slot holds (`i32::MIN`: none yet).
    rows: [i32; 3],
}

impl Ring {
    /// Makes slot `y mod 3` hold input row `y` (zeros outside the input) of channels
    /// `c0..c0 + 4`, for the first `columns` padded columns; nothing if it already does.
    #[inline(always)]
    fn load(&mut self, p: &ConvParams<'_>, input: &[i8], c0: usize, y: i32, columns: usize) {
        let slot = y.rem_euclid(3) as usize;
        if self.rows[slot] == y {
            return;
        }
        self.rows[slot] = y;
        let (ih, iw, c) = (p.input.height, p.input.width, p.input.channels);
        // padded columns 1..=xs hold input columns 0..xs; column 0 and any past the input stay
        // zero from the ring's creation
        let xs = (columns - 1).min(iw);
        let cols = &mut self.words[1..=xs];
        if y < 0 || y as usize >= ih {
            for col in cols {
                col[2 * slot] = 0;
                col[2 * slot + 1] = 0;
            }
            return;
        }
        let zp = p.input_zero_point;
        let zp2 = ((zp as u32) & 0xffff) | ((zp as u32) << 16);
        let row = &input[y as usize * iw * c..][..iw * c];
        for (col, px) in cols.iter_mut().zip(row.chunks_exact(c)) {
            let w = word(&px[c0..c0 + 4]);
            col[2 * slot] = ssub16(sxtb16(w), zp2);
            col[2 * slot + 1] = ssub16(sxtb16_ror8(w), zp2);
        }
    }
}

/// Four output channels' requantization for one word of four int8 outputs, laid out for the
/// assembly that uses it: per channel `2·bias`, the multiplier `m`, `2ᵉ⁻¹ + z_out·2ᵉ` and the
/// right shift `e`, then the activation's minimum and maximum in each byte.
///
/// For `x = acc + bias` and `m ≥ 0` the channel's int8 output is
/// `(⌊(x·m + 2³⁰)/2³¹⌋ + 2ᵉ⁻¹ − [x < 0]) >> e` plus the zero point, clamped (TFLite's doubling
/// high multiply and gemmlowp's rounding division; [`Chan::new`] has the derivation, and
/// `[x < 0]` may stand for `[h < 0]` there since both give 0 where they differ). With
/// `|x| < 2³⁰` the first term is `SMMULR(2x, m)`, so one `SMMLAR` gives it plus the rounding
/// constant, and with `e ≤ 22` the zero point folds into that constant (`z·2ᵉ` passes through
/// the shift exactly; `|h| < 2³⁰` leaves no overflow). The clamp to int8 is an `SSAT`, the
/// activation's a byte-wise `SSUB8`/`SEL` on the four outputs at once: 37 instructions for
/// four outputs ([`requant4`]).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Requant4 {
    chan: [[i32; 4]; 4],
    mins: u32,
    maxs: u32,
}

impl Requant4 {
    /// Channels `c0..c0 + 4` of `p`, whose accumulators sum `depth` products, or `None` where
    /// one is outside the path: an f32 or LUT output, a negative multiplier, `e` outside
    /// 1..=22, or a bias that could take `|acc + bias|` to 2³⁰ (|acc| ≤ depth·255·128: input
    /// minus zero point within ±255, weights within ±128).
    fn new(p: &ConvParams<'_>, c0: usize, depth: usize) -> Option<Self> {
        let OutputStage::Int8 {
            requant,
            zero_point,
            act_min,
            act_max,
            lut: None,
        } = p.stage
        else {
            return None;
        };
        let limit = (1i64 << 30) - 1 - depth as i64 * 255 * 128;
        let byte = |v: i32| (v.clamp(-128, 127) as u8 as u32) * 0x0101_0101;
        let mut q = Requant4 {
            chan: [[0; 4]; 4],
            mins: byte(act_min),
            maxs: byte(act_max),
        };
        for (j, ch) in q.chan.iter_mut().enumerate() {
            let r = read_requant(requant, c0 + j)?;
            let bias = read_i32(p.bias, c0 + j).unwrap_or(0);
            let e = r.shift.checked_neg()?;
            if r.multiplier < 0 || !(1..=22).contains(&e) || (bias as i64).abs() > limit {
                return None;
            }
            *ch = [
                2 * bias,
                r.multiplier,
                (1 << (e - 1)) + zero_point * (1 << e),
                e,
            ];
        }
        Some(q)
    }

    /// The four outputs of accumulators `acc` as one little-endian word: what the assembly
    /// computes, in portable Rust.
    #[cfg(not(all(feature = "cortex-m-dsp", target_arch = "arm")))]
    fn requantize(&self, acc: [i32; 4]) -> u32 {
        let mut w = [0u8; 4];
        for ((o, a), &[bias2, m, round, e]) in w.iter_mut().zip(acc).zip(&self.chan) {
            // ADD x, bias2, acc, LSL #1; SMMLAR; SUB …, x, LSR #31; ASR; SSAT #8
            let x = bias2.wrapping_add(a.wrapping_shl(1));
            let h = ((((round as i64) << 32) + x as i64 * m as i64 + (1 << 31)) >> 32) as i32;
            *o = ((h - (x < 0) as i32) >> e).clamp(-128, 127) as i8 as u8;
        }
        // SSUB8/SEL with the minimums, then with the maximums
        let (lo, hi) = (self.mins.to_le_bytes(), self.maxs.to_le_bytes());
        for ((o, &l), &h) in w.iter_mut().zip(&lo).zip(&hi) {
            *o = (*o as i8).max(l as i8).min(h as i8) as u8;
        }
        u32::from_le_bytes(w)
    }
}

/// [`Requant4::requantize`]: in assembly on Armv7E-M (the sequence [`ring_row`] inlines).
#[inline(always)]
fn requant4(q: &Requant4, acc: [i32; 4]) -> u32 {
    #[cfg(all(feature = "cortex-m-dsp", target_arch = "arm"))]
    {
        let [mut a0, a1, a2, a3] = acc;
        // SAFETY: reads the 72 bytes of `q` (8-aligned for `LDRD`); registers only otherwise.
        unsafe {
            core::arch::asm!(
                "ldrd {x0}, {x1}, [{q}, #0]",
                "add {a0}, {x0}, {a0}, lsl #1",
                "ldrd {w0}, {w1}, [{q}, #8]",
                "smmlar {w0}, {a0}, {x1}, {w0}",
                "sub {w0}, {w0}, {a0}, lsr #31",
                "asr {w0}, {w0}, {w1}",
                "ssat {w0}, #8, {w0}",
                "uxtb {a0}, {w0}",
                "ldrd {x0}, {x1}, [{q}, #16]",
                "add {a1}, {x0}, {a1}, lsl #1",
                "ldrd {w0}, {w1}, [{q}, #24]",
                "smmlar {w0}, {a1}, {x1}, {w0}",
                "sub {w0}, {w0}, {a1}, lsr #31",
                "asr {w0}, {w0}, {w1}",
                "ssat {w0}, #8, {w0}",
                "bfi {a0}, {w0}, #8, #8",
                "ldrd {x0}, {x1}, [{q}, #32]",
                "add {a2}, {x0}, {a2}, lsl #1",
                "ldrd {w0}, {w1}, [{q}, #40]",
                "smmlar {w0}, {a2}, {x1}, {w0}",
                "sub {w0}, {w0}, {a2}, lsr #31",
                "asr {w0}, {w0}, {w1}",
                "ssat {w0}, #8, {w0}",
                "bfi {a0}, {w0}, #16, #8",
                "ldrd {x0}, {x1}, [{q}, #48]",
                "add {a3}, {x0}, {a3}, lsl #1",
                "ldrd {w0}, {w1}, [{q}, #56]",
                "smmlar {w0}, {a3}, {x1}, {w0}",
                "sub {w0}, {w0}, {a3}, lsr #31",
                "asr {w0}, {w0}, {w1}",
                "ssat {w0}, #8, {w0}",
                "bfi {a0}, {w0}, #24, #8",
                "ldrd {x0}, {x1}, [{q}, #64]",
                "ssub8 {w0}, {a0}, {x0}",
                "sel {a0}, {a0}, {x0}",
                "ssub8 {w0}, {a0}, {x1}",
                "sel {a0}, {x1}, {a0}",
                q = in(reg) q as *const Requant4,
                a0 = inout(reg) a0,
                a1 = inout(reg) a1 => _,
                a2 = inout(reg) a2 => _,
                a3 = inout(reg) a3 => _,
                x0 = out(reg) _,
                x1 = out(reg) _,
                w0 = out(reg) _,
                w1 = out(reg) _,
                options(nostack, readonly),
            );
        }
        a0 as u32
    }
    #[cfg(not(all(feature = "cortex-m-dsp", target_arch = "arm")))]
    q.requantize(acc)
}

/// One group of four channels of a 3×3 depthwise convolution, laid out for [`ring_row`]'s
/// assembly: the weights as [`Ring`] holds its inputs (tap `t` at words `2t`, `2t + 1`), the
/// group's [`Requant4`] (bytes 72..144) and the output's pixel stride in bytes (at 144).
#[repr(C, align(8))]
struct Fused {
    pairs: [u32; 18],
    q: Requant4,
    stride: u32,
}

// the offsets the assembly reads at
const _: () = assert!(core::mem::size_of::<Requant4>() == 72);
const _: () = assert!(core::mem::offset_of!(Fused, q) == 72);
const _: () = assert!(core::mem::offset_of!(Fused, stride) == 144);

impl Fused {
    /// Group `g`'s constants, or `None` where [`Requant4::new`] declines a channel.
    fn new(p: &ConvParams<'_>, g: usize) -> Option<Self> {
        let (c, c0) = (p.input.channels, 4 * g);
        let mut f = Fused {
            pairs: [0; 18],
            q: Requant4::new(p, c0, 9)?,
            stride: c as u32,
        };
        for t in 0..9 {
            let w = word(&p.weights[t * c + c0..t * c + c0 + 4]);
            (f.pairs[2 * t], f.pairs[2 * t + 1]) = (sxtb16(w), sxtb16_ror8(w));
        }
        Some(f)
    }
}

/// One output row of one group of [`depthwise`] through a [`Ring`]: for `n` pixels, the first
/// padded column of pixel `i` at `col + 6·stride·i` words, its four outputs as one word at
/// `out + i·f.stride`; `base` is the slot of tap row 0 (tap row `ky` is in slot
/// `(base + ky) mod 3`).
///
/// # Safety
/// `col` has `6·((n − 1)·stride + 3)` readable words, 8-aligned; `out + i·f.stride` 4 writable
/// bytes for every `i < n`; `n ≥ 1`, `base < 3`, `stride` 1 or 2.
#[inline(always)]
unsafe fn ring_row(col: *const u32, f: &Fused, out: *mut u8, n: usize, base: usize, stride: usize) {
    #[cfg(all(feature = "cortex-m-dsp", target_arch = "arm"))]
    {
        // SAFETY: by the contract.
        unsafe {
            match (base, stride) {
                (0, 1) => ring_row_0_1(col, f, out, n),
                (1, 1) => ring_row_1_1(col, f, out, n),
                (2, 1) => ring_row_2_1(col, f, out, n),
                (0, _) => ring_row_0_2(col, f, out, n),
                (1, _) => ring_row_1_2(col, f, out, n),
                _ => ring_row_2_2(col, f, out, n),
            }
        }
    }
    #[cfg(not(all(feature = "cortex-m-dsp", target_arch = "arm")))]
    for i in 0..n {
        // SAFETY: by the contract.
        let c = unsafe { col.add(6 * stride * i) };
        let mut a = [0i32; 4];
        for ky in 0..3 {
            let slot = (base + ky) % 3;
            for kx in 0..3 {
                let t = 3 * ky + kx;
                // SAFETY: by the contract: column kx of the pixel.
                let (xe, xo) =
                    unsafe { (*c.add(6 * kx + 2 * slot), *c.add(6 * kx + 2 * slot + 1)) };
                let (we, wo) = (f.pairs[2 * t], f.pairs[2 * t + 1]);
                a[0] = smlabb(xe, we, a[0]);
                a[2] = smlatt(xe, we, a[2]);
                a[1] = smlabb(xo, wo, a[1]);
                a[3] = smlatt(xo, wo, a[3]);
            }
        }
        // SAFETY: by the contract.
        unsafe {
            (out.add(i * f.stride as usize) as *mut u32).write_unaligned(f.q.requantize(a).to_le())
        };
    }
}

/// [`ring_row`] for one slot rotation `$b` and stride `$s` in assembly: the nine taps unrolled,
/// each an `LDRD` of the input pair and one of the weight pair at immediate offsets and four
/// multiply-accumulates (the first tap multiplies), then the four channels requantized as
/// [`Fused`] says with the constants loaded by `LDRD` from the same table: 97 instructions per
/// pixel and group, 36 MACs.
#[cfg(all(feature = "cortex-m-dsp", target_arch = "arm"))]
macro_rules! ring_row_asm {
    ($($name:ident: $b:literal, $s:literal;)*) => {$(
        /// See [`ring_row_asm`].
        ///
        /// # Safety
        /// As [`ring_row`].
        #[inline(always)]
        unsafe fn $name(col: *const u32, f: &Fused, out: *mut u8, n: usize) {
            // SAFETY: reads and writes as the contract allows (the ring and the table 8-aligned
            // for `LDRD`, the output word unaligned, which Cortex-M7 stores); registers only
            // otherwise.
            unsafe {
                core::arch::asm!(
                    "2:",
                    "ldrd {x0}, {x1}, [{col}, #{o0}]",
                    "ldrd {w0}, {w1}, [{f}, #0]",
                    "smulbb {a0}, {x0}, {w0}",
                    "smultt {a2}, {x0}, {w0}",
                    "smulbb {a1}, {x1}, {w1}",
                    "smultt {a3}, {x1}, {w1}",
                    "ldrd {x0}, {x1}, [{col}, #{o1}]",
                    "ldrd {w0}, {w1}, [{f}, #8]",
                    "smlabb {a0}, {x0}, {w0}, {a0}",
                    "smlatt {a2}, {x0}, {w0}, {a2}",
                    "smlabb {a1}, {x1}, {w1}, {a1}",
                    "smlatt {a3}, {x1}, {w1}, {a3}",
                    "ldrd {x0}, {x1}, [{col}, #{o2}]",
                    "ldrd {w0}, {w1}, [{f}, #16]",
                    "smlabb {a0}, {x0}, {w0}, {a0}",
                    "smlatt {a2}, {x0}, {w0}, {a2}",
                    "smlabb {a1}, {x1}, {w1}, {a1}",
                    "smlatt {a3}, {x1}, {w1}, {a3}",
                    "ldrd {x0}, {x1}, [{col}, #{o3}]",
                    "ldrd {w0}, {w1}, [{f}, #24]",
                    "smlabb {a0}, {x0}, {w0}, {a0}",
                    "smlatt {a2}, {x0}, {w0}, {a2}",
                    "smlabb {a1}, {x1}, {w1}, {a1}",
                    "smlatt {a3}, {x1}, {w1}, {a3}",
                    "ldrd {x0}, {x1}, [{col}, #{o4}]",
                    "ldrd {w0}, {w1}, [{f}, #32]",
                    "smlabb {a0}, {x0}, {w0}, {a0}",
                    "smlatt {a2}, {x0}, {w0}, {a2}",
                    "smlabb {a1}, {x1}, {w1}, {a1}",
                    "smlatt {a3}, {x1}, {w1}, {a3}",
                    "ldrd {x0}, {x1}, [{col}, #{o5}]",
                    "ldrd {w0}, {w1}, [{f}, #40]",
                    "smlabb {a0}, {x0}, {w0}, {a0}",
                    "smlatt {a2}, {x0}, {w0}, {a2}",
                    "smlabb {a1}, {x1}, {w1}, {a1}",
                    "smlatt {a3}, {x1}, {w1}, {a3}",
                    "ldrd {x0}, {x1}, [{col}, #{o6}]",
                    "ldrd {w0}, {w1}, [{f}, #48]",
                    "smlabb {a0}, {x0}, {w0}, {a0}",
                    "smlatt {a2}, {x0}, {w0}, {a2}",
                    "smlabb {a1}, {x1}, {w1}, {a1}",
                    "smlatt {a3}, {x1}, {w1}, {a3}",
                    "ldrd {x0}, {x1}, [{col}, #{o7}]",
                    "ldrd {w0}, {w1}, [{f}, #56]",
                    "smlabb {a0}, {x0}, {w0}, {a0}",
                    "smlatt {a2}, {x0}, {w0}, {a2}",
                    "smlabb {a1}, {x1}, {w1}, {a1}",
                    "smlatt {a3}, {x1}, {w1}, {a3}",
                    "ldrd {x0}, {x1}, [{col}, #{o8}]",
                    "ldrd {w0}, {w1}, [{f}, #64]",
                    "smlabb {a0}, {x0}, {w0}, {a0}",
                    "smlatt {a2}, {x0}, {w0}, {a2}",
                    "smlabb {a1}, {x1}, {w1}, {a1}",
                    "smlatt {a3}, {x1}, {w1}, {a3}",
                    // channel 0: x = 2·(acc + bias); SMMLAR = rounding constant + SMMULR(x, m);
                    // minus [x < 0]; >> e; to int8; the byte of the output word
                    "ldrd {x0}, {x1}, [{f}, #72]",
                    "add {a0}, {x0}, {a0}, lsl #1",
                    "ldrd {w0}, {w1}, [{f}, #80]",
                    "smmlar {w0}, {a0}, {x1}, {w0}",
                    "sub {w0}, {w0}, {a0}, lsr #31",
                    "asr {w0}, {w0}, {w1}",
                    "ssat {w0}, #8, {w0}",
                    "uxtb {a0}, {w0}",
                    "ldrd {x0}, {x1}, [{f}, #88]",
                    "add {a1}, {x0}, {a1}, lsl #1",
                    "ldrd {w0}, {w1}, [{f}, #96]",
                    "smmlar {w0}, {a1}, {x1}, {w0}",
                    "sub {w0}, {w0}, {a1}, lsr #31",
                    "asr {w0}, {w0}, {w1}",
                    "ssat {w0}, #8, {w0}",
                    "bfi {a0}, {w0}, #8, #8",
                    "ldrd {x0}, {x1}, [{f}, #104]",
                    "add {a2}, {x0}, {a2}, lsl #1",
                    "ldrd {w0}, {w1}, [{f}, #112]",
                    "smmlar {w0}, {a2}, {x1}, {w0}",
                    "sub {w0}, {w0}, {a2}, lsr #31",
                    "asr {w0}, {w0}, {w1}",
                    "ssat {w0}, #8, {w0}",
                    "bfi {a0}, {w0}, #16, #8",
                    "ldrd {x0}, {x1}, [{f}, #120]",
                    "add {a3}, {x0}, {a3}, lsl #1",
                    "ldrd {w0}, {w1}, [{f}, #128]",
                    "smmlar {w0}, {a3}, {x1}, {w0}",
                    "sub {w0}, {w0}, {a3}, lsr #31",
                    "asr {w0}, {w0}, {w1}",
                    "ssat {w0}, #8, {w0}",
                    "bfi {a0}, {w0}, #24, #8",
                    // the activation: byte-wise max with the minimums, min with the maximums
                    "ldrd {x0}, {x1}, [{f}, #136]",
                    "ssub8 {w0}, {a0}, {x0}",
                    "sel {a0}, {a0}, {x0}",
                    "ssub8 {w0}, {a0}, {x1}",
                    "sel {a0}, {x1}, {a0}",
                    "ldr {x0}, [{f}, #144]",
                    "str {a0}, [{out}]",
                    "add {out}, {out}, {x0}",
                    "add {col}, {col}, #{step}",
                    "subs {n}, {n}, #1",
                    "bne 2b",
                    // tap (ky, kx): padded column kx, slot (b + ky) mod 3, two words each
                    o0 = const 4 * (2 * (($b + 0) % 3)),
                    o1 = const 4 * (6 + 2 * (($b + 0) % 3)),
                    o2 = const 4 * (12 + 2 * (($b + 0) % 3)),
                    o3 = const 4 * (2 * (($b + 1) % 3)),
                    o4 = const 4 * (6 + 2 * (($b + 1) % 3)),
                    o5 = const 4 * (12 + 2 * (($b + 1) % 3)),
                    o6 = const 4 * (2 * (($b + 2) % 3)),
                    o7 = const 4 * (6 + 2 * (($b + 2) % 3)),
                    o8 = const 4 * (12 + 2 * (($b + 2) % 3)),
                    step = const 24 * $s,
                    col = inout(reg) col => _,
                    f = in(reg) f as *const Fused,
                    out = inout(reg) out => _,
                    n = inout(reg) n => _,
                    x0 = out(reg) _,
                    x1 = out(reg) _,
                    w0 = out(reg) _,
                    w1 = out(reg) _,
                    a0 = out(reg) _,
                    a1 = out(reg) _,
                    a2 = out(reg) _,
                    a3 = out(reg) _,
                    options(nostack),
                );
            }
        }
    )*};
}

#[cfg(all(feature = "cortex-m-dsp", target_arch = "arm"))]
ring_row_asm! {
    ring_row_0_1: 0, 1;
    ring_row_1_1: 1, 1;
    ring_row_2_1: 2, 1;
    ring_row_0_2: 0, 2;
    ring_row_1_2: 1, 2;
    ring_row_2_2: 2, 2;
}

/// Group `f` (channels `c0..c0 + 4`) of a 3×3 depthwise convolution of stride 1 or 2 through
/// `ring`: per output row, the input rows the ring does not hold yet are widened (one for
/// stride 1, two for stride 2) and [`ring_row`] writes the row's outputs. The caller
/// ([`depthwise`]) has checked the shapes and buffers, `W_out ≥ 1` and that the padded columns
/// fit the ring.
fn depthwise3(
    p: &ConvParams<'_>,
    input: &[i8],
    out: &mut [u8],
    ring: &mut Ring,
    f: &Fused,
    c0: usize,
) {
    let (c, s) = (p.input.channels, p.stride);
    let (oh, ow) = (p.output.height, p.output.width);
    let columns = (ow - 1) * s + 3;
    ring.rows = [i32::MIN; 3];
    for oy in 0..oh {
        let y0 = (oy * s) as i32 - 1;
        for y in y0..y0 + 3 {
            ring.load(p, input, c0, y, columns);
        }
        // SAFETY: the ring has `columns` ≤ RING_COLUMNS columns of 6 words for `ow` pixels;
        // pixel i's word is at (oy·ow + i)·c + c0, and c0 + 4 ≤ c, inside `out` (checked ≥
        // oh·ow·c by `depthwise`); `ow ≥ 1`; base < 3; s is 1 or 2.
        unsafe {
            ring_row(
                ring.words.as_ptr().cast::<u32>(),
                f,
                out.as_mut_ptr().add(oy * ow * c + c0),
                ow,
                y0.rem_euclid(3) as usize,
                s,
            )
        };
    }
}

/// The four accumulators of one group of channels at an inner pixel of [`depthwise`]: one word
/// of input per tap at `first + offsets[t]` (sign-extended, the zero point folded into the
/// bias) times the group's pre-extended weights `pairs[2t]` = (w₀, w₂), `pairs[2t + 1]` =
/// (w₁, w₃).
///
/// # Safety
/// `first + offsets[t]` has 4 readable bytes for every `t`; `pairs` has `2·offsets.len()` words.
#[inline(always)]
unsafe fn inner_taps(first: *const i8, offsets: &[u32], pairs: &[u32; 98]) -> [i32; 4] {
    let (mut a0, mut a1, mut a2, mut a3) = (0i32, 0i32, 0i32, 0i32);
    #[cfg(all(feature = "cortex-m-dsp", target_arch = "arm"))]
    if !offsets.is_empty() {
        // The tap loop in assembly (four accumulators, three pointers, the count, four
        // temporaries): from Rust, LLVM spills the accumulators.
        // SAFETY: reads as the contract allows (the tables 4-aligned for `ldrd`, the input
        // unaligned, which Cortex-M7 loads); registers only otherwise.
        unsafe {
            core::arch::asm!(
                "2:",
                "ldr {t0}, [{op}], #4",
                "ldr {t0}, [{xp}, {t0}]",
                "ldrd {t2}, {t3}, [{wp}], #8",
                "sxtb16 {t1}, {t0}",
                "smlabb {a0}, {t1}, {t2}, {a0}",
                "smlatt {a2}, {t1}, {t2}, {a2}",
                "sxtb16 {t1}, {t0}, ror #8",
                "smlabb {a1}, {t1}, {t3}, {a1}",
                "smlatt {a3}, {t1}, {t3}, {a3}",
                "subs {n}, {n}, #1",
                "bne 2b",
                a0 = inout(reg) a0,
                a1 = inout(reg) a1,
                a2 = inout(reg) a2,
                a3 = inout(reg) a3,
                xp = in(reg) first,
                op = inout(reg) offsets.as_ptr() => _,
                wp = inout(reg) pairs.as_ptr() => _,
                n = inout(reg) offsets.len() => _,
                t0 = out(reg) _,
                t1 = out(reg) _,
                t2 = out(reg) _,
                t3 = out(reg) _,
                options(nostack, readonly),
            );
        }
    }
    #[cfg(not(all(feature = "cortex-m-dsp", target_arch = "arm")))]
    for (t, &o) in offsets.iter().enumerate() {
        // SAFETY: by the contract.
        let xw = unsafe { (first.add(o as usize) as *const u32).read_unaligned() };
        let (we, wo) = (pairs[2 * t], pairs[2 * t + 1]);
        let (xe, xo) = (sxtb16(xw), sxtb16_ror8(xw));
        a0 = smlabb(xe, we, a0);
        a2 = smlatt(xe, we, a2);
        a1 = smlabb(xo, wo, a1);
        a3 = smlatt(xo, wo, a3);
    }
    [a0, a1, a2, a3]
}

/// The Cortex-M convolution: [`dense`] or [`depthwise`], else the portable kernel.
pub fn conv(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
    let done = if p.depthwise {
        depthwise(p, input, out)
    } else {
        dense(p, input, out)
    };
    if !done {
        super::conv::portable(p, input, out);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// The inline requantization of [`Chan`] writes what [`Finish::store`] writes, at the
    /// extremes of the accumulator, the multiplier and the shift (where the fast path applies and
    /// where it must hand over to the general one).
    #[test]
    fn channel_requantization_matches_finish_at_the_extremes() {
        let mut rng = super::super::TestRng(0xc0de);
        let accs = [
            i32::MIN,
            i32::MIN + 1,
            -(1 << 30),
            -(1 << 16) - 1,
            -3,
            -1,
            0,
            1,
            3,
            (1 << 16) + 1,
            1 << 30,
            i32::MAX - 1,
            i32::MAX,
        ];
        let mut fast = 0;
        for case in 0..3000usize {
            let multiplier = match case % 6 {
                0 => i32::MAX,
                1 => 1 << 30,
                2 => 0,
                3 => -((rng.next() >> 1) as i32),
                _ => (rng.next() >> 1) as i32,
            };
            let shift = match case % 5 {
                0 => 0,
                1 => -31,
                2 => 1 + (rng.next() % 4) as i32,
                _ => -((rng.next() % 32) as i32),
            };
            let bias = match case % 4 {
                0 => 0,
                1 => i32::MAX,
                2 => i32::MIN,
                _ => (rng.next() % 20001) as i32 - 10000,
            };
            let requant: Vec<u8> = [multiplier.to_le_bytes(), shift.to_le_bytes()].concat();
            let stage = OutputStage::Int8 {
                requant: &requant,
                zero_point: (case % 256) as i32 - 128,
                act_min: -128 + (case % 7) as i32,
                act_max: 127 - (case % 5) as i32,
                lut: None,
            };
            let bias_bytes = bias.to_le_bytes();
            let chan = Chan::new(&stage, &bias_bytes, 0);
            fast += chan.general.is_none() as usize;
            let finish = Finish::new(&stage, &bias_bytes, 0);
            for acc in accs
                .iter()
                .copied()
                .chain((0..8).map(|_| rng.next() as i32))
            {
                if bias.checked_add(acc).is_none() {
                    continue; // the reference's accumulator would overflow too
                }
                let (mut a, mut b) = ([0u8], [0u8]);
                finish.store(&mut a, 0, acc);
                chan.store(&mut b, 0, acc);
                assert_eq!(a, b, "m {multiplier} shift {shift} bias {bias} acc {acc}");
            }
        }
        // the fast path must be the one tested most, not skipped
        assert!(fast > 1000, "{fast} fast channels");
    }
}
