//! Convolutions on aarch64 (Jetson, Raspberry Pi) with NEON, from the ring of padded input
//! rows ([`super::rows`]) as signed bytes: the padding holds the zero point, so
//! `Σ (x − z)·w = Σ x·w − z·Σ w` with the second term folded into the bias, and every pixel is
//! an inner one.
//!
//! Dense convolutions are a GEMM of 4 pixels × 8 output channels; depth heads (one output
//! channel) run 8 pixels a step along the run instead ([`head`]). Weights are packed once, in
//! the prepared plan ([`super::pack`]; per call on the stack without one), in blocks of 4
//! channels: for each kernel row and each group of four values of its run (padded with zero
//! weights to a multiple of 16 values), the 4 channels' four weights in one 16-byte vector.
//! Where the CPU has the dot-product extension (Cortex-A76/A78, Jetson Orin:
//! `-cpu max` under QEMU) each vector meets a group of the input with one `SDOT` by element
//! (16 MACs); with the int8 matrix multiply extension (Neoverse V1/N2, Cortex-A710: QEMU's `max`)
//! the weights are packed two channels' eight values to a vector and `SMMLA` multiplies two
//! pixels' eight inputs by them (a 2 × 2 block of sums, 32 MACs); without either (Cortex-A72,
//! Raspberry Pi 4) the same sums come from `SMULL`/`SMULL2` and `SADALP`. Depthwise convolutions go 8 channels a step in int16 (`SMLAL`/`SMLAL2`). The
//! output stage is TFLite's NEON one, 4 lanes a step: `SQRDMULH` (the doubling high multiply),
//! the sign fixup and `SRSHL` (the rounding division), the zero point, the clamp. The sums are
//! exact, so the bits are [`super::reference`]'s.

use super::pack::{packed, packs, ring_shape, Layout};
use super::rows::{
    band_fits, dense_buffers_fit, depthwise_blocks, folded, planned_taps, ring_fits, widen_taps,
    Rows, RING,
};
use super::stage::{block, Requant};
use super::{ConvKernel, ConvParams};
use crate::kernels::KernelSet;
use core::arch::aarch64::*;
use core::mem::MaybeUninit;
use core::ops::Range;

/// Most bytes of packed weights of one convolution (128 KiB on the stack).
const PACKED: usize = 128 * 1024;
/// Pixels per tile.
const PIXELS: usize = 4;

/// Whether the CPU has the dot-product extension: detected at run time with `std`, else what
/// the build targets.
pub(super) fn dotprod() -> bool {
    #[cfg(any(feature = "std", test))]
    {
        extern crate std;
        std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(any(feature = "std", test)))]
    {
        cfg!(target_feature = "dotprod")
    }
}

/// Whether the CPU has the int8 matrix multiply extension (and the dot-product one): detected
/// at run time with `std`, else what the build targets.
pub(super) fn i8mm() -> bool {
    #[cfg(any(feature = "std", test))]
    {
        extern crate std;
        std::arch::is_aarch64_feature_detected!("i8mm") && dotprod()
    }
    #[cfg(not(any(feature = "std", test)))]
    {
        cfg!(all(target_feature = "i8mm", target_feature = "dotprod"))
    }
}

/// The multiply instructions of the dense GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// `SMULL`/`SADALP` (every NEON CPU).
    Plain,
    /// `SDOT` by element (the dot-product extension).
    Dot,
    /// `SMMLA` (the int8 matrix multiply extension).
    Mmla,
}

/// Four channels' int8 output stage in NEON ([`Requant`] with the shift negated).
struct Requant4 {
    bias: [i32; 4],
    multiplier: [i32; 4],
    /// `−e`: `SRSHL` shifts right by a negative amount.
    shift: [i32; 4],
    zero_point: i32,
    act_min: i32,
    act_max: i32,
}

impl Requant4 {
    /// The block `v` in NEON's form (`SRSHL` shifts right by the negated `e`).
    fn of(v: Requant<4>) -> Self {
        Requant4 {
            bias: v.bias,
            multiplier: v.multiplier,
            shift: v.shift.map(|e| -e),
            zero_point: v.zero_point,
            act_min: v.act_min,
            act_max: v.act_max,
        }
    }

    /// The int8 outputs of four sums: `SQRDMULH` is ⌊(x·m + 2³⁰) / 2³¹⌋ for m ≥ 0 (it saturates
    /// only for x = m = −2³¹), and `SRSHL` by −e of `h − [h < 0]` is gemmlowp's rounding
    /// division (`h − 1` cannot saturate: |h| < 2³¹ − 1 for m < 2³¹).
    #[inline(always)]
    fn apply(&self, acc: int32x4_t) -> [i8; 4] {
        // SAFETY: NEON is baseline on aarch64; loads of 4 × i32 from 4-element arrays.
        unsafe {
            let x = vaddq_s32(acc, vld1q_s32(self.bias.as_ptr()));
            let h = vqrdmulhq_s32(x, vld1q_s32(self.multiplier.as_ptr()));
            let shift = vld1q_s32(self.shift.as_ptr());
            let fixup = vshrq_n_s32::<31>(vandq_s32(h, shift));
            let q = vrshlq_s32(vqaddq_s32(h, fixup), shift);
            let q = vqaddq_s32(q, vdupq_n_s32(self.zero_point));
            let q = vminq_s32(
                vmaxq_s32(q, vdupq_n_s32(self.act_min)),
                vdupq_n_s32(self.act_max),
            );
            let mut out = [0i32; 4];
            vst1q_s32(out.as_mut_ptr(), q);
            out.map(|v| v as i8)
        }
    }
}

/// Whether [`dense`] takes `p` for table `set` (given buffers of the sizes its shapes say): a
/// dense map whose ring fits, to several channels with the packed weights (in `set`'s layout)
/// in the plan or fitting the stack buffer, or to one (a depth head) whose weight rows fit
/// [`HEAD`].
pub(super) fn takes_dense(set: KernelSet, p: &ConvParams<'_>) -> bool {
    let (k, ic) = (p.kernel, p.input.channels);
    ring_shape(p)
        && if p.output.channels == 1 {
            k * (k * ic).div_ceil(16) * 16 <= HEAD
        } else {
            packs(set, p, PACKED / 4)
        }
}

/// Bytes of a depth head's weight rows (`k` rows of whole 16-byte chunks).
const HEAD: usize = 7 * 1024;
/// Pixels per step of a depth head.
const HEAD_PIXELS: usize = 8;

/// Whether [`depthwise`] takes `p` (given buffers of the sizes its shapes say).
pub(super) fn takes_depthwise(p: &ConvParams<'_>) -> bool {
    super::depthwise_fits(p, usize::MAX, usize::MAX, 7) && ring_fits(p)
}

/// Runs `p` if it is a dense convolution whose ring and packed weights fit the stack buffers
/// (returns `false`, having written nothing, otherwise) with the multiplies of `mode` (the CPU
/// has its extension).
pub(super) fn dense(
    p: &ConvParams<'_>,
    input: &[i8],
    out: &mut [u8],
    mode: Mode,
    band: Range<usize>,
) -> bool {
    let ic = p.input.channels;
    let (ow, oc) = (p.output.width, p.output.channels);
    let (k, s) = (p.kernel, p.stride);
    if !ring_shape(p) || !dense_buffers_fit(p, input.len(), &band, out.len()) {
        return false;
    }
    let set = match mode {
        Mode::Mmla => KernelSet::Aarch64NeonI8mm,
        _ => KernelSet::Aarch64Neon,
    };
    let kernel = match mode {
        Mode::Plain => ConvKernel::NeonGemm,
        Mode::Dot => ConvKernel::NeonDotGemm,
        Mode::Mmla => ConvKernel::NeonMmlaGemm,
    };
    if !takes_dense(set, p) {
        return false;
    }
    if oc == 1 {
        head(p, input, out, mode != Mode::Plain, kernel, band);
        return true;
    }
    let Some(layout) = Layout::of(set, p) else {
        return false;
    };
    let (blocks, per_block, groups) = (layout.blocks, 4 * layout.per_block(), layout.groups);
    let zp = p.input_zero_point;
    // the plan's packed weights, else packed here (when they fit the stack buffer): bytes
    // `4·j + i` of a group's 16 are channel j's weight i
    let mut storage = [core::mem::MaybeUninit::<i32>::uninit(); PACKED / 4];
    let storage = &mut storage[..if 4 * layout.words() <= PACKED {
        PACKED / 4
    } else {
        0
    }];
    let Some(words) = packed(&layout, p, storage) else {
        return false;
    };
    // SAFETY: the same memory as bytes (little-endian words: byte i of a word is weight i).
    let packed: &[i8] =
        unsafe { core::slice::from_raw_parts(words.as_ptr() as *const i8, 4 * words.len()) };
    let finish = |c: usize| folded(p, c, zp);
    let mut ring = [MaybeUninit::uninit(); RING];
    let mut rows = Rows::new(p, 0, &mut ring);
    let mut b = 0;
    while b < blocks {
        // two blocks (8 channels) at a time, the last one alone
        let two = b + 1 < blocks;
        let nb = if two { 2 } else { 1 };
        let vectors: [Option<Requant4>; 2] =
            [0, 1].map(|bb| block(p, kernel, 4 * (b + bb)).map(Requant4::of));
        rows.held = [i32::MIN; 7];
        for oy in band.clone() {
            let runs = rows.output_row(p, input, oy);
            let mut ox = 0;
            while ox < ow {
                let m = PIXELS.min(ow - ox);
                let w = packed[b * per_block..].as_ptr();
                // SAFETY: pixel ox + i's run in row ky is `run` bytes from runs[ky] +
                // (ox + i)·s·C_in, within the slot, and the 16-byte loads read at most 15 past
                // it (the next slot or the ring's slack); the blocks hold per_block bytes each.
                let sums = unsafe {
                    let (x0, step) = (ox * s * ic, s * ic);
                    match (mode, two) {
                        (Mode::Mmla, true) => {
                            tile_mmla::<2>(&runs[..k], x0, step, m, groups, w, per_block)
                        }
                        (Mode::Mmla, false) => {
                            tile_mmla::<1>(&runs[..k], x0, step, m, groups, w, per_block)
                        }
                        (Mode::Dot, true) => {
                            tile_dot::<2>(&runs[..k], x0, step, m, groups, w, per_block)
                        }
                        (Mode::Dot, false) => {
                            tile_dot::<1>(&runs[..k], x0, step, m, groups, w, per_block)
                        }
                        (Mode::Plain, true) => {
                            tile::<2>(&runs[..k], x0, step, m, groups, w, per_block)
                        }
                        (Mode::Plain, false) => {
                            tile::<1>(&runs[..k], x0, step, m, groups, w, per_block)
                        }
                    }
                };
                for (i, px) in sums.iter().enumerate().take(m) {
                    let base = ((oy - band.start) * ow + ox + i) * oc;
                    for (bb, &acc) in px.iter().enumerate().take(nb) {
                        let c0 = 4 * (b + bb);
                        let n = 4.min(oc - c0);
                        match &vectors[bb] {
                            Some(v) => {
                                for (o, q) in
                                    out[base + c0..base + c0 + n].iter_mut().zip(v.apply(acc))
                                {
                                    *o = q as u8;
                                }
                            }
                            None => {
                                let mut sums = [0i32; 4];
                                // SAFETY: 4 × i32 into a 4-element array.
                                unsafe { vst1q_s32(sums.as_mut_ptr(), acc) };
                                for (j, &a) in sums.iter().enumerate().take(n) {
                                    finish(c0 + j).store(out, base + c0 + j, a);
                                }
                            }
                        }
                    }
                }
                ox += m;
            }
        }
        b += nb;
    }
    true
}

/// A depth head (one output channel, [`takes_dense`]'s shapes, buffers as [`dense`] checked
/// them): 8 pixels a step along the run, 16 bytes of each pixel's run against 16 weights per
/// `SDOT` (with `dot`: the dot-product extension) or `SMULL`/`SMULL2` + `SADALP`, each weight
/// vector loaded once for the 8; the accumulators reduced four at a time (`ADDP` twice) and
/// finished four outputs at once by the output stage (`kernel`'s, the channel's constants in
/// every lane).
fn head(
    p: &ConvParams<'_>,
    input: &[i8],
    out: &mut [u8],
    dot: bool,
    kernel: ConvKernel,
    band: Range<usize>,
) {
    let (ow, ic) = (p.output.width, p.input.channels);
    let (k, s) = (p.kernel, p.stride);
    let run = k * ic;
    let chunks = run.div_ceil(16);
    let mut wbuf = [0i8; HEAD];
    for ky in 0..k {
        wbuf[ky * chunks * 16..][..run].copy_from_slice(&p.weights[ky * run..(ky + 1) * run]);
    }
    let finish = folded(p, 0, p.input_zero_point);
    let vector = block::<4>(p, kernel, 0).map(Requant4::of);
    let mut ring = [MaybeUninit::uninit(); RING];
    let mut rows = Rows::new(p, 0, &mut ring);
    for oy in band.clone() {
        let runs = rows.output_row(p, input, oy);
        let mut ox = 0;
        while ox < ow {
            let m = HEAD_PIXELS.min(ow - ox);
            let at = (oy - band.start) * ow + ox;
            let (x0, step) = (ox * s * ic, s * ic);
            // SAFETY: pixel ox + i's run in row ky is `run` bytes from runs[ky] +
            // (ox + i)·s·C_in, inside its slot; the 16-byte loads read at most 15 bytes past
            // it (the next slot or the ring's slack), against zero weights; `SDOT` only where
            // the caller's mode says the CPU has it.
            let sums = unsafe {
                if dot {
                    head_dot(&runs[..k], x0, step, m, chunks, wbuf.as_ptr())
                } else {
                    head_plain(&runs[..k], x0, step, m, chunks, wbuf.as_ptr())
                }
            };
            for (q, sums) in sums.iter().enumerate() {
                let (from, n) = (4 * q, m.saturating_sub(4 * q).min(4));
                if n == 0 {
                    break;
                }
                match &vector {
                    Some(v) => {
                        for (o, q) in out[at + from..at + from + n].iter_mut().zip(v.apply(*sums)) {
                            *o = q as u8;
                        }
                    }
                    None => {
                        let mut lanes = [0i32; 4];
                        // SAFETY: 4 × i32 into a 4-element array.
                        unsafe { vst1q_s32(lanes.as_mut_ptr(), *sums) };
                        for (i, &sum) in lanes.iter().enumerate().take(n) {
                            finish.store(out, at + from + i, sum);
                        }
                    }
                }
            }
            ox += m;
        }
    }
}

/// Four accumulators' totals in one vector (lane `i` the sum of `a[i]`'s lanes).
#[inline(always)]
fn hsum4(a: &[int32x4_t]) -> int32x4_t {
    // SAFETY: NEON is baseline on aarch64.
    unsafe { vpaddq_s32(vpaddq_s32(a[0], a[1]), vpaddq_s32(a[2], a[3])) }
}

/// The sums of `m ≤ 8` pixels of a depth head with `SDOT`, pixels 0–3 and 4–7 in the two
/// vectors: pixel `i`'s run in kernel row `r` at `runs[r] + x0 + i·step` against weight row
/// `r` (`chunks` vectors of 16 bytes at `w + r·chunks·16`); pixels past `m` repeat the last.
///
/// # Safety
/// The CPU has the dot-product extension; the reads as [`head`] says.
#[target_feature(enable = "dotprod")]
unsafe fn head_dot(
    runs: &[*const u8],
    x0: usize,
    step: usize,
    m: usize,
    chunks: usize,
    w: *const i8,
) -> [int32x4_t; 2] {
    // SAFETY: by the contract.
    unsafe {
        let mut acc = [vdupq_n_s32(0); HEAD_PIXELS];
        for (r, &row) in runs.iter().enumerate() {
            let x: [*const i8; HEAD_PIXELS] =
                core::array::from_fn(|i| row.add(x0 + i.min(m - 1) * step) as *const i8);
            for c in 0..chunks {
                let wv = vld1q_s8(w.add((r * chunks + c) * 16));
                for (a, &xp) in acc.iter_mut().zip(&x) {
                    let xv = vld1q_s8(xp.add(16 * c));
                    // `vdotq_s32` is not stable Rust yet: the instruction itself
                    core::arch::asm!(
                        "sdot {a:v}.4s, {x:v}.16b, {w:v}.16b",
                        a = inout(vreg) *a,
                        x = in(vreg) xv,
                        w = in(vreg) wv,
                        options(pure, nomem, nostack, preserves_flags),
                    );
                }
            }
        }
        [hsum4(&acc[..4]), hsum4(&acc[4..])]
    }
}

/// [`head_dot`] without the extension: `SMULL`/`SMULL2` into int16 and `SADALP` into int32.
///
/// # Safety
/// The reads as [`head`] says.
unsafe fn head_plain(
    runs: &[*const u8],
    x0: usize,
    step: usize,
    m: usize,
    chunks: usize,
    w: *const i8,
) -> [int32x4_t; 2] {
    // SAFETY: by the contract.
    unsafe {
        let mut acc = [vdupq_n_s32(0); HEAD_PIXELS];
        for (r, &row) in runs.iter().enumerate() {
            let x: [*const i8; HEAD_PIXELS] =
                core::array::from_fn(|i| row.add(x0 + i.min(m - 1) * step) as *const i8);
            for c in 0..chunks {
                let wv = vld1q_s8(w.add((r * chunks + c) * 16));
                for (a, &xp) in acc.iter_mut().zip(&x) {
                    let xv = vld1q_s8(xp.add(16 * c));
                    *a = vpadalq_s16(*a, vmull_s8(vget_low_s8(xv), vget_low_s8(wv)));
                    *a = vpadalq_s16(*a, vmull_high_s8(xv, wv));
                }
            }
        }
        [hsum4(&acc[..4]), hsum4(&acc[4..])]
    }
}

/// The sums of `m ≤ 4` pixels × `B` blocks of 4 channels with `SDOT` by element: pixel `i`'s
/// run in kernel row `r` at `runs[r] + x0 + i·step`, block `b`'s weights at `w + b·per_block`,
/// row `r` group `g` at `(r·groups + g)·16` bytes.
///
/// # Safety
/// The CPU has the dot-product extension; the reads as [`dense`] says.
#[target_feature(enable = "dotprod")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_dot<const B: usize>(
    runs: &[*const u8],
    x0: usize,
    step: usize,
    m: usize,
    groups: usize,
    w: *const i8,
    per_block: usize,
) -> [[int32x4_t; 2]; PIXELS] {
    // SAFETY: by the contract.
    unsafe {
        let mut acc = [[vdupq_n_s32(0); B]; PIXELS];
        for (r, &row) in runs.iter().enumerate() {
            let x: [*const i8; PIXELS] =
                core::array::from_fn(|i| row.add(x0 + i.min(m - 1) * step) as *const i8);
            let wr = w.add(r * groups * 16);
            for g in (0..groups).step_by(4) {
                let xv: [int8x16_t; PIXELS] = core::array::from_fn(|i| vld1q_s8(x[i].add(4 * g)));
                for b in 0..B {
                    let wb = wr.add(b * per_block + g * 16);
                    let (w0, w1) = (vld1q_s8(wb), vld1q_s8(wb.add(16)));
                    let (w2, w3) = (vld1q_s8(wb.add(32)), vld1q_s8(wb.add(48)));
                    for (a, &xv) in acc.iter_mut().zip(&xv) {
                        core::arch::asm!(
                            "sdot {a:v}.4s, {w0:v}.16b, {x:v}.4b[0]",
                            "sdot {a:v}.4s, {w1:v}.16b, {x:v}.4b[1]",
                            "sdot {a:v}.4s, {w2:v}.16b, {x:v}.4b[2]",
                            "sdot {a:v}.4s, {w3:v}.16b, {x:v}.4b[3]",
                            a = inout(vreg) a[b],
                            w0 = in(vreg) w0,
                            w1 = in(vreg) w1,
                            w2 = in(vreg) w2,
                            w3 = in(vreg) w3,
                            x = in(vreg) xv,
                            options(pure, nomem, nostack, preserves_flags),
                        );
                    }
                }
            }
        }
        let mut out = [[vdupq_n_s32(0); 2]; PIXELS];
        for (o, a) in out.iter_mut().zip(&acc) {
            o[..B].copy_from_slice(a);
        }
        out
    }
}

/// [`tile_dot`] with `SMMLA`: per pair of groups (8 values of the run), pixels 0, 1 and 2, 3 in
/// two vectors (8 bytes each) against each block's two vectors of two channels' 8 weights
/// (the [`Layout`]'s `mmla` order): four 2 × 2 sums per block, 32 MACs an instruction, which two
/// `ZIP`s of 64-bit halves turn into each pixel's four channels.
///
/// # Safety
/// The CPU has the int8 matrix multiply extension; the reads as [`dense`] says (8-byte loads
/// within the 16-byte ones [`tile_dot`] makes).
#[target_feature(enable = "i8mm")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_mmla<const B: usize>(
    runs: &[*const u8],
    x0: usize,
    step: usize,
    m: usize,
    groups: usize,
    w: *const i8,
    per_block: usize,
) -> [[int32x4_t; 2]; PIXELS] {
    // SAFETY: by the contract.
    unsafe {
        // [pixel pair][block][channel pair]: (pixel 2q + a, channel 2c + b) at lane 2a + b
        let mut acc = [[[vdupq_n_s32(0); 2]; B]; 2];
        for (r, &row) in runs.iter().enumerate() {
            let x: [*const i8; PIXELS] =
                core::array::from_fn(|i| row.add(x0 + i.min(m - 1) * step) as *const i8);
            let wr = w.add(r * groups * 16);
            for h in 0..groups / 2 {
                let xv = [
                    vcombine_s8(vld1_s8(x[0].add(8 * h)), vld1_s8(x[1].add(8 * h))),
                    vcombine_s8(vld1_s8(x[2].add(8 * h)), vld1_s8(x[3].add(8 * h))),
                ];
                for b in 0..B {
                    let wb = wr.add(b * per_block + h * 32);
                    let wv = [vld1q_s8(wb), vld1q_s8(wb.add(16))];
                    for (a, &xv) in acc.iter_mut().zip(&xv) {
                        for (a, &wv) in a[b].iter_mut().zip(&wv) {
                            core::arch::asm!(
                                "smmla {a:v}.4s, {x:v}.16b, {w:v}.16b",
                                a = inout(vreg) *a,
                                x = in(vreg) xv,
                                w = in(vreg) wv,
                                options(pure, nomem, nostack, preserves_flags),
                            );
                        }
                    }
                }
            }
        }
        let mut out = [[vdupq_n_s32(0); 2]; PIXELS];
        for (q, pair) in acc.iter().enumerate() {
            for (b, halves) in pair.iter().enumerate() {
                let (lo, hi) = (
                    vreinterpretq_s64_s32(halves[0]),
                    vreinterpretq_s64_s32(halves[1]),
                );
                out[2 * q][b] = vreinterpretq_s32_s64(vzip1q_s64(lo, hi));
                out[2 * q + 1][b] = vreinterpretq_s32_s64(vzip2q_s64(lo, hi));
            }
        }
        out
    }
}

/// [`tile_dot`] without the dot-product extension: per group, the input's four values
/// repeated across the vector (`DUP` by element), `SMULL`/`SMULL2` against the block's 16
/// weights (int16 products, |x·w| ≤ 2¹⁴) and `SADALP` into int32 pairs per channel, which one
/// `ADDP` folds at the end.
///
/// # Safety
/// As [`tile_dot`], without the extension.
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const B: usize>(
    runs: &[*const u8],
    x0: usize,
    step: usize,
    m: usize,
    groups: usize,
    w: *const i8,
    per_block: usize,
) -> [[int32x4_t; 2]; PIXELS] {
    // SAFETY: by the contract.
    unsafe {
        // per pixel and block: channels 0, 1 and channels 2, 3, two partial sums each
        let mut lo = [[vdupq_n_s32(0); B]; PIXELS];
        let mut hi = [[vdupq_n_s32(0); B]; PIXELS];
        for (r, &row) in runs.iter().enumerate() {
            let x: [*const i8; PIXELS] =
                core::array::from_fn(|i| row.add(x0 + i.min(m - 1) * step) as *const i8);
            let wr = w.add(r * groups * 16);
            for g in 0..groups {
                let xv: [int8x16_t; PIXELS] = core::array::from_fn(|i| {
                    vreinterpretq_s8_s32(vld1q_dup_s32(x[i].add(4 * g) as *const i32))
                });
                for b in 0..B {
                    let wv = vld1q_s8(wr.add(b * per_block + g * 16));
                    for i in 0..PIXELS {
                        lo[i][b] =
                            vpadalq_s16(lo[i][b], vmull_s8(vget_low_s8(wv), vget_low_s8(xv[i])));
                        hi[i][b] = vpadalq_s16(hi[i][b], vmull_high_s8(wv, xv[i]));
                    }
                }
            }
        }
        let mut out = [[vdupq_n_s32(0); 2]; PIXELS];
        for i in 0..PIXELS {
            for b in 0..B {
                out[i][b] = vpaddq_s32(lo[i][b], hi[i][b]);
            }
        }
        out
    }
}

/// Runs `p` if it is a depthwise convolution whose padded rows fit the ring (returns `false`,
/// having written nothing, otherwise): 8 channels a step, per tap the input widened to int16
/// (`SXTL`) and multiplied into int32 by the tap's int16 weights (`SMLAL`, `SMLAL2`).
pub(super) fn depthwise(
    p: &ConvParams<'_>,
    input: &[i8],
    out: &mut [u8],
    band: Range<usize>,
) -> bool {
    let c = p.input.channels;
    // the shapes and the input as `depthwise_fits` checks them; the output is the band's
    if !takes_depthwise(p)
        || !super::depthwise_fits(p, input.len(), usize::MAX, 7)
        || !band_fits(p, &band, out.len())
    {
        return false;
    }
    let mut ring = [MaybeUninit::uninit(); RING];
    let mut rows = Rows::new(p, 0, &mut ring);
    // the taps' int16 weights, zero past the channels: the plan's, else every block's at once
    // where they fit (`depthwise_blocks`)
    let planned = if p.prepared.kernel == Some(ConvKernel::NeonDepthwise) {
        planned_taps::<i16, 8>(p.prepared.depthwise)
    } else {
        &[]
    };
    let vectors = |b: usize| -> [Option<Requant4>; 2] {
        [0, 4].map(|h| block(p, ConvKernel::NeonDepthwise, 8 * b + h).map(Requant4::of))
    };
    depthwise_blocks::<_, _, WIDE, MAX_BLOCKS>(
        p,
        input,
        &mut rows,
        &band,
        c.div_ceil(8),
        planned,
        |b, dst| widen_taps::<i16, 8>(p, b, dst),
        vectors,
        |oy, runs, b, w, v| depthwise_row(p, out, &band, oy, runs, b, w, v),
    );
    true
}

/// Rows of 8 int16 weights in [`depthwise`]'s buffer of every block's taps (24 KiB).
const WIDE: usize = 1536;
/// Most blocks of 8 channels whose weights and constants [`depthwise`] holds at once.
const MAX_BLOCKS: usize = 128;

/// Output row `oy` of block `b` (8 channels) of the depthwise `p` into `out` (band `band`'s
/// bytes), from the `k` ring rows `runs`, the block's taps `w` (at least `k²` rows) and its two
/// output stages (`None`: the scalar one, derived here).
#[allow(clippy::too_many_arguments)]
fn depthwise_row(
    p: &ConvParams<'_>,
    out: &mut [u8],
    band: &Range<usize>,
    oy: usize,
    runs: &[*const u8; 7],
    b: usize,
    w: &[[i16; 8]],
    vectors: &[Option<Requant4>; 2],
) {
    let c = p.input.channels;
    let (ow, k, s) = (p.output.width, p.kernel, p.stride);
    let (c0, n) = (8 * b, 8.min(c - 8 * b));
    let w = &w[..k * k];
    for ox in 0..ow {
        // SAFETY: tap (ky, kx) reads 8 bytes at runs[ky] + (ox·s + kx)·C + c0, within the
        // slot's padded columns plus at most 7 bytes past the block (the next pixel, another
        // slot or the ring's slack); `runs` holds the row's k ring rows; 8-element weight rows.
        let acc = unsafe {
            let (mut lo, mut hi) = (vdupq_n_s32(0), vdupq_n_s32(0));
            for (ky, &r) in runs[..k].iter().enumerate() {
                let x = r.add(ox * s * c + c0) as *const i8;
                for kx in 0..k {
                    let xv = vmovl_s8(vld1_s8(x.add(kx * c)));
                    let wv = vld1q_s16(w[ky * k + kx].as_ptr());
                    lo = vmlal_s16(lo, vget_low_s16(xv), vget_low_s16(wv));
                    hi = vmlal_high_s16(hi, xv, wv);
                }
            }
            [lo, hi]
        };
        let base = ((oy - band.start) * ow + ox) * c + c0;
        for (h, (v, acc)) in vectors.iter().zip(acc).enumerate() {
            let lanes = n.saturating_sub(4 * h).min(4);
            if lanes == 0 {
                break;
            }
            let at = base + 4 * h;
            match v {
                Some(v) => {
                    for (o, q) in out[at..at + lanes].iter_mut().zip(v.apply(acc)) {
                        *o = q as u8;
                    }
                }
                None => {
                    let mut sums = [0i32; 4];
                    // SAFETY: 4 × i32 into a 4-element array.
                    unsafe { vst1q_s32(sums.as_mut_ptr(), acc) };
                    for (j, &a) in sums.iter().enumerate().take(lanes) {
                        folded(p, c0 + 4 * h + j, p.input_zero_point).store(out, at + j, a);
                    }
                }
            }
        }
    }
}
