//! Dense convolutions on x86-64 with AVX-512 VNNI: `VPDPBUSD` multiplies 64 unsigned input
//! bytes by 64 signed weights and adds each group of four products into one of 16 int32
//! lanes, 64 MACs per instruction, exactly (no saturation: four products of at most 255·128).
//!
//! The input is read as unsigned bytes `u = x + 128` (`x ^ 0x80`), so
//! `Σ (x − z)·w = Σ u·w − (z + 128)·Σ w`: the second term is a per-channel constant folded into
//! the bias, and padding is the byte `z + 128`, whose products cancel in it. The `k` input rows
//! an output row reads are held in a ring of padded rows (converted once, padding included), so
//! a pixel's taps in one kernel row are one run of `k·C_in` bytes, for every pixel: no border
//! cases and no gather. Weights are packed once, in the engine's prepared plan
//! ([`super::pack`]; per call into a stack buffer without one): for each block of 16 output
//! channels, each kernel row and each group of four values of its run (padded with zero weights
//! to a multiple of four), the 16 channels' four weights. A tile of 4 pixels × 2 blocks then costs,
//! per group of four values, two weight loads, four broadcasts and eight `VPDPBUSD`s for 512
//! MACs. One output channel (a depth head) instead vectorises along the run. Depthwise
//! convolutions use the same ring with signed bytes and `VPDPWSSD`, 16 channels a step
//! ([`depthwise`]). The sums are
//! exact, so the bits are [`super::reference`]'s; the requantization is
//! [`super::stage::Requant`]'s in 16 lanes ([`apply16`]).

use super::avx2::{hsum8, MAX_BLOCKS, WIDE};
use super::pack::{packed, packs, ring_shape, Layout};
use super::rows::{
    band_fits, dense_buffers_fit, depthwise_blocks, folded, planned_taps, ring_fits, widen_taps,
    Rows, RING,
};
use super::stage::{block, Requant};
use super::{ConvKernel, ConvParams, Finish};
use crate::kernels::KernelSet;
use core::arch::x86_64::*;
use core::mem::MaybeUninit;
use core::ops::Range;

const LANES: usize = 16;
/// Most packed weight words of one convolution (128 KiB on the stack).
const PACKED: usize = 32 * 1024;
/// Pixels per tile.
const PIXELS: usize = 4;
/// Bytes of a depth head's weight rows (one run each).
const HEAD: usize = 4096;

/// Whether the CPU has AVX-512 F, BW and VNNI: detected at run time with `std`, else what the
/// build targets.
pub(super) fn available() -> bool {
    #[cfg(any(feature = "std", test))]
    {
        extern crate std;
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(any(feature = "std", test)))]
    {
        cfg!(all(
            target_feature = "avx512f",
            target_feature = "avx512bw",
            target_feature = "avx512vl",
            target_feature = "avx512vnni"
        ))
    }
}

/// Whether [`run`] takes `p` (given buffers of the sizes its shapes say): a dense map whose ring
/// fits, and for several channels the packed weights in the plan or fitting the stack buffer,
/// for one a run (in whole 32-byte chunks) within the head's weight rows.
pub(super) fn takes(p: &ConvParams<'_>) -> bool {
    ring_shape(p)
        && if p.output.channels == 1 {
            (p.kernel * p.input.channels).div_ceil(32) * 32 <= HEAD
        } else {
            packs(KernelSet::X86Avx512Vnni, p, PACKED)
        }
}

/// Whether [`depthwise`] takes `p` (given buffers of the sizes its shapes say).
pub(super) fn takes_depthwise(p: &ConvParams<'_>) -> bool {
    super::depthwise_fits(p, usize::MAX, usize::MAX, 7) && ring_fits(p)
}

/// Runs `p` if it is a dense convolution whose ring and packed weights fit the stack buffers
/// (returns `false`, having written nothing, otherwise: [`takes`]).
///
/// # Safety
/// The CPU has AVX-512 F, BW and VNNI ([`available`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
pub(super) unsafe fn run(
    p: &ConvParams<'_>,
    input: &[i8],
    out: &mut [u8],
    band: Range<usize>,
) -> bool {
    let ic = p.input.channels;
    let (ow, oc) = (p.output.width, p.output.channels);
    let (k, s) = (p.kernel, p.stride);
    if !ring_shape(p) || !dense_buffers_fit(p, input.len(), &band, out.len()) {
        return false;
    }
    let groups = (k * ic).div_ceil(4);
    let zp = p.input_zero_point;
    // Σ (x − z)·w = Σ u·w − (z + 128)·Σ w: the second term joins the bias
    let finish = |c: usize| folded(p, c, zp + 128);
    let mut ring = [MaybeUninit::uninit(); RING];
    let mut rows = Rows::new(p, 0x80, &mut ring);
    if oc == 1 {
        // SAFETY: AVX-512 as the caller guarantees; the ring holds k slots of `slot` bytes
        // plus 64 of slack.
        return unsafe { head(p, input, out, band, &mut rows, finish(0)) };
    }
    let Some(layout) = Layout::of(KernelSet::X86Avx512Vnni, p) else {
        return false;
    };
    let (blocks, per_block) = (layout.blocks, layout.per_block());
    // the plan's packed weights, else packed here (when they fit the stack buffer)
    let mut storage = [MaybeUninit::<i32>::uninit(); PACKED];
    let storage = &mut storage[..if layout.words() <= PACKED { PACKED } else { 0 }];
    let Some(packed) = packed(&layout, p, storage) else {
        return false;
    };
    let mut finishes = [[Finish::F32 {
        bias: 0,
        scale: 0.0,
    }; LANES]; 8];
    let mut vectors: [Option<Requant<16>>; 8] = Default::default();
    // at most 8 blocks of constants at a time (128 channels), decoded once per call
    for b0 in (0..blocks).step_by(8) {
        let nb = 8.min(blocks - b0);
        for b in 0..nb {
            let c0 = (b0 + b) * LANES;
            vectors[b] = block(p, ConvKernel::VnniGemm, c0);
            // the scalar constants only where the vector form declines
            if vectors[b].is_none() {
                finishes[b] = core::array::from_fn(|j| finish((c0 + j).min(oc - 1)));
            }
        }
        for oy in band.clone() {
            let runs = rows.output_row(p, input, oy);
            let mut ox = 0;
            while ox < ow {
                let m = PIXELS.min(ow - ox);
                let mut b = 0;
                while b < nb {
                    let w = packed[(b0 + b) * per_block..].as_ptr();
                    let two = b + 1 < nb;
                    // SAFETY: AVX-512 as the caller guarantees; pixel ox + i's run in row ky
                    // is `run` bytes from runs[ky] + (ox + i)·s·C_in, within the slot (padded
                    // column (ox + i)·s + k − 1 < W_in + 2·pad), whole groups reading at most
                    // 3 bytes past it (inside the ring's slack); the block(s) hold per_block
                    // words each.
                    let sums = unsafe {
                        if two {
                            tile::<2>(&runs[..k], ox * s * ic, s * ic, m, groups, w, per_block)
                        } else {
                            tile::<1>(&runs[..k], ox * s * ic, s * ic, m, groups, w, per_block)
                        }
                    };
                    for (i, px) in sums.iter().enumerate().take(m) {
                        let base = ((oy - band.start) * ow + ox + i) * oc;
                        for (bb, acc) in px.iter().enumerate().take(if two { 2 } else { 1 }) {
                            let c0 = (b0 + b + bb) * LANES;
                            let n = LANES.min(oc - c0);
                            match &vectors[b + bb] {
                                // SAFETY: AVX-512 as the caller guarantees; the n bytes at
                                // base + c0 lie in `out` (checked ≥ oh·ow·oc).
                                Some(v) => unsafe {
                                    let o = out[base + c0..base + c0 + n].as_mut_ptr();
                                    apply16(v, _mm512_loadu_si512(acc.as_ptr() as *const _), o, n)
                                },
                                None => {
                                    for (j, &a) in acc.iter().enumerate().take(n) {
                                        finishes[b + bb][j].store(out, base + c0 + j, a);
                                    }
                                }
                            }
                        }
                    }
                    b += if two { 2 } else { 1 };
                }
                ox += m;
            }
        }
    }
    true
}

/// The int8 outputs of 16 sums, as [`super::pointwise::Requant8::apply`] computes them for 8,
/// the first `n` stored at `dst`.
///
/// # Safety
/// AVX-512 F, BW and VL; `dst` has `n ≤ 16` writable bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn apply16(v: &Requant<16>, acc: __m512i, dst: *mut u8, n: usize) {
    // SAFETY: unaligned loads of 16 × i32 from 16-element arrays; the masked store as the
    // contract allows.
    unsafe {
        let ld = |a: &[i32; 16]| _mm512_loadu_si512(a.as_ptr() as *const _);
        let x = _mm512_add_epi32(acc, ld(&v.bias));
        let m = ld(&v.multiplier);
        let round = _mm512_set1_epi64(1 << 30);
        let even = _mm512_add_epi64(_mm512_mul_epi32(x, m), round);
        let odd = _mm512_add_epi64(
            _mm512_mul_epi32(_mm512_srli_epi64::<32>(x), _mm512_srli_epi64::<32>(m)),
            round,
        );
        // bits 31..62 of each 64-bit product: the low words of a logical shift
        let high = _mm512_mask_blend_epi32(
            0xaaaa,
            _mm512_srli_epi64::<31>(even),
            _mm512_slli_epi64::<1>(odd),
        );
        // RoundingDivideByPOT: (x >> e) + (remainder > (mask >> 1) + (x < 0))
        let threshold = _mm512_sub_epi32(ld(&v.half), _mm512_srai_epi32::<31>(high));
        let up = _mm512_cmpgt_epi32_mask(_mm512_and_si512(high, ld(&v.mask)), threshold);
        let q = _mm512_srav_epi32(high, ld(&v.shift));
        let q = _mm512_mask_add_epi32(q, up, q, _mm512_set1_epi32(1));
        // keep the zero point's addition from overflowing; the clamp is int8 anyway
        let q = _mm512_max_epi32(
            _mm512_min_epi32(q, _mm512_set1_epi32(1 << 24)),
            _mm512_set1_epi32(-(1 << 24)),
        );
        let q = _mm512_add_epi32(q, _mm512_set1_epi32(v.zero_point));
        let q = _mm512_max_epi32(
            _mm512_min_epi32(q, _mm512_set1_epi32(v.act_max)),
            _mm512_set1_epi32(v.act_min),
        );
        let mask = ((1u32 << n) - 1) as u16;
        _mm_mask_storeu_epi8(dst as *mut i8, mask, _mm512_cvtepi32_epi8(q));
    }
}

/// The sums of `m ≤ 4` pixels × `B` blocks of 16 channels: pixel `i`'s run in kernel row `r`
/// at `runs[r] + x0 + i·step`, block `b`'s weights at `w + b·per_block`, row `r` group `g` at
/// `(r·groups + g)·16` words.
///
/// # Safety
/// AVX-512 F, BW and VNNI; the reads as [`run`] says.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const B: usize>(
    runs: &[*const u8],
    x0: usize,
    step: usize,
    m: usize,
    groups: usize,
    w: *const i32,
    per_block: usize,
) -> [[[i32; LANES]; 2]; PIXELS] {
    let mut acc = [[_mm512_setzero_si512(); B]; PIXELS];
    // SAFETY: by the contract; unaligned loads.
    unsafe {
        for (r, &row) in runs.iter().enumerate() {
            let x: [*const u8; PIXELS] =
                core::array::from_fn(|i| row.add(x0 + i.min(m - 1) * step));
            let wr = w.add(r * groups * LANES);
            for g in 0..groups {
                let wv: [__m512i; B] = core::array::from_fn(|b| {
                    _mm512_loadu_si512(wr.add(b * per_block + g * LANES) as *const _)
                });
                for (a, &xp) in acc.iter_mut().zip(&x) {
                    let xv = _mm512_set1_epi32((xp.add(4 * g) as *const i32).read_unaligned());
                    for (a, &wv) in a.iter_mut().zip(&wv) {
                        *a = _mm512_dpbusd_epi32(*a, xv, wv);
                    }
                }
            }
        }
        let mut out = [[[0i32; LANES]; 2]; PIXELS];
        for (o, a) in out.iter_mut().zip(&acc) {
            for (o, a) in o.iter_mut().zip(a) {
                _mm512_storeu_si512(o.as_mut_ptr() as *mut _, *a);
            }
        }
        out
    }
}

/// One output channel (`false`, having written nothing, where a run is longer than 4 KiB):
/// each pixel's `k` runs against the weight rows in 32-byte vectors (zero weights past each
/// run, so the bytes read past it add nothing; 256-bit `VPDPBUSD` runs at twice the rate of
/// the 512-bit one where the CPU splits or fuses ports, and wastes less of a run that is not a
/// multiple of 64 bytes: `micro`'s 3×3 over 32 channels is 96), 16 pixels a step, each weight
/// vector loaded once for the 16; the accumulators are reduced eight at a time
/// ([`super::avx2::hsum8`]) and finished as one vector of 16 outputs ([`apply16`], the
/// channel's constants in every lane).
///
/// # Safety
/// AVX-512 F, BW and VNNI; `rows` holds `k` slots with 64 bytes of slack after them.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
unsafe fn head(
    p: &ConvParams<'_>,
    input: &[i8],
    out: &mut [u8],
    band: Range<usize>,
    rows: &mut Rows,
    finish: Finish<'_>,
) -> bool {
    let (ow, ic) = (p.output.width, p.input.channels);
    let (k, s) = (p.kernel, p.stride);
    let run = k * ic;
    let chunks = run.div_ceil(32);
    if chunks * 32 > HEAD {
        // a run longer than the weight buffer's rows: the AVX2 kernels take it
        return false;
    }
    // the weight rows, each zero-padded to whole vectors (7 rows × 4 KiB at most)
    let mut wbuf = [0i8; 7 * 4096];
    for ky in 0..k {
        wbuf[ky * chunks * 32..][..run].copy_from_slice(&p.weights[ky * run..(ky + 1) * run]);
    }
    // the one channel's constants in all 16 lanes (`block` repeats the last channel)
    let vector = block::<16>(p, ConvKernel::VnniGemm, 0);
    for oy in band.clone() {
        let runs = rows.output_row(p, input, oy);
        let mut ox = 0;
        while ox < ow {
            let m = LANES.min(ow - ox);
            let at = (oy - band.start) * ow + ox;
            // SAFETY: AVX-512 as the caller guarantees; each run's chunks lie in its slot or
            // the slack after the ring's last slot (a run ends inside its slot, and a slot is
            // followed by another slot or the slack); the m bytes at `at` lie in `out`
            // (checked ≥ rows·W_out).
            unsafe {
                let sums = head_tile(&runs[..k], ox * s * ic, s * ic, m, chunks, wbuf.as_ptr());
                match &vector {
                    Some(v) => apply16(v, sums, out[at..at + m].as_mut_ptr(), m),
                    None => {
                        let mut lanes = [0i32; LANES];
                        _mm512_storeu_si512(lanes.as_mut_ptr() as *mut _, sums);
                        for (i, &sum) in lanes.iter().enumerate().take(m) {
                            finish.store(out, at + i, sum);
                        }
                    }
                }
            }
            ox += m;
        }
    }
    true
}

/// The sums of `m ≤ 16` pixels of a depth head, pixel `i` in lane `i`: its run in kernel row
/// `r` at `runs[r] + x0 + i·step` against weight row `r` (`chunks` vectors of 32 bytes at
/// `w + r·chunks·32`); pixels past `m` repeat the last one.
///
/// # Safety
/// AVX-512 F, VL and VNNI; the reads as [`head`] says.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
unsafe fn head_tile(
    runs: &[*const u8],
    x0: usize,
    step: usize,
    m: usize,
    chunks: usize,
    w: *const i8,
) -> __m512i {
    let mut acc = [_mm256_setzero_si256(); LANES];
    // SAFETY: by the contract; unaligned loads.
    unsafe {
        for (r, &row) in runs.iter().enumerate() {
            let x: [*const u8; LANES] = core::array::from_fn(|i| row.add(x0 + i.min(m - 1) * step));
            for c in 0..chunks {
                let wv = _mm256_loadu_si256(w.add((r * chunks + c) * 32) as *const __m256i);
                for (a, &xp) in acc.iter_mut().zip(&x) {
                    let xv = _mm256_loadu_si256(xp.add(32 * c) as *const __m256i);
                    *a = _mm256_dpbusd_epi32(*a, xv, wv);
                }
            }
        }
        let lo = hsum8(&core::array::from_fn(|i| acc[i]));
        let hi = hsum8(&core::array::from_fn(|i| acc[8 + i]));
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }
}

/// Runs `p` if it is a depthwise convolution whose padded rows fit the ring (returns `false`,
/// having written nothing, otherwise): blocks of 16 channels, one int32 lane each; a tap is one
/// `VPMOVSXBD` of 16 input bytes from the ring (the padding holds the zero point, so every
/// pixel is an inner one) and one `VPDPWSSD` against the tap's weights as int16 pairs `(w, 0)`:
/// the lane's low half times `w`, its high half (the input's sign) times 0. The zero point's
/// share, `z·Σw`, leaves the bias; the output stage is [`apply16`]'s.
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI ([`available`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
pub(super) unsafe fn depthwise(
    p: &ConvParams<'_>,
    input: &[i8],
    out: &mut [u8],
    band: Range<usize>,
) -> bool {
    let c = p.input.channels;
    let ow = p.output.width;
    let (k, s) = (p.kernel, p.stride);
    // the shapes and the input as `depthwise_fits` checks them; the output is the band's
    if !takes_depthwise(p)
        || !super::depthwise_fits(p, input.len(), usize::MAX, 7)
        || !band_fits(p, &band, out.len())
    {
        return false;
    }
    let mut ring = [MaybeUninit::uninit(); RING];
    let mut rows = Rows::new(p, 0, &mut ring);
    // the taps' weights as (w, 0) int16 pairs, zero past the channels: the plan's (the AVX2
    // table's layout), else every block's at once where they fit (`depthwise_blocks`)
    let planned = if p.prepared.kernel == Some(ConvKernel::VnniDepthwise) {
        planned_taps::<i32, LANES>(p.prepared.depthwise)
    } else {
        &[]
    };
    depthwise_blocks::<_, _, WIDE, MAX_BLOCKS>(
        p,
        input,
        &mut rows,
        &band,
        c.div_ceil(LANES),
        planned,
        |b, dst| widen_taps::<i32, LANES>(p, b, dst),
        |b| block::<16>(p, ConvKernel::VnniDepthwise, b * LANES),
        |oy, runs, b, w, vector| {
            let c0 = b * LANES;
            let n = LANES.min(c - c0);
            for ox in 0..ow {
                // SAFETY: AVX-512 as the caller guarantees; tap (ky, kx) reads 16 bytes at
                // runs[ky] + ((ox·s + kx)·C + c0), within the slot's padded columns plus at
                // most 15 bytes past the block (the next pixel, another slot or the slack);
                // `w` holds k² rows of 16 words.
                let acc = unsafe {
                    let mut acc = _mm512_setzero_si512();
                    for (ky, &r) in runs[..k].iter().enumerate() {
                        let x = r.add(ox * s * c + c0);
                        for kx in 0..k {
                            let xv =
                                _mm512_cvtepi8_epi32(_mm_loadu_si128(x.add(kx * c) as *const _));
                            let wv = _mm512_loadu_si512(w[ky * k + kx].as_ptr() as *const _);
                            acc = _mm512_dpwssd_epi32(acc, xv, wv);
                        }
                    }
                    acc
                };
                let base = ((oy - band.start) * ow + ox) * c + c0;
                match vector {
                    // SAFETY: AVX-512; the n bytes at `base` lie in `out` (checked).
                    Some(v) => unsafe { apply16(v, acc, out[base..base + n].as_mut_ptr(), n) },
                    None => {
                        let mut sums = [0i32; LANES];
                        // SAFETY: 16 × i32 into a 16-element array.
                        unsafe { _mm512_storeu_si512(sums.as_mut_ptr() as *mut _, acc) };
                        for (j, &sum) in sums.iter().enumerate().take(n) {
                            folded(p, c0 + j, p.input_zero_point).store(out, base + j, sum);
                        }
                    }
                }
            }
        },
    );
    true
}
