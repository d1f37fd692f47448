//! Depth heads (dense convolutions to one output channel) on x86-64 with AVX2, from the ring of
//! padded input rows ([`super::rows`]) as signed bytes: the padding holds the zero point, so
//! `Σ (x − z)·w = Σ x·w − z·Σ w` with the second term folded into the bias, and every pixel is an
//! inner one. Each pixel's `k` runs of `k·C_in` bytes meet the weight rows (int16, zero past each
//! run) 16 values a step: `VPMOVSXBW` of 16 input bytes, `VPMADDWD` against the weights
//! (`|x|·|w| ≤ 128·128`, two products per lane: no overflow), `VPADDD`; eight pixels share each
//! weight load, and their eight accumulators are reduced together into one vector that the
//! output stage finishes at once ([`hsum8`], [`store_head`]). The general GEMM would fill one
//! lane of eight.
//!
//! Dense convolutions to several channels ([`gemm`]) read a ring of padded rows of int16
//! `x − z` (the padding 0), so that a pixel's taps in one kernel row are one run of `k·C_in`
//! values: a GEMM of pixels × blocks of 8 output channels, `VPMADDWD` of a broadcast input pair
//! against the block's weight pairs (packed once, in the plan: [`super::pack`]), in tiles of
//! 4 pixels × 2 blocks; no gather, no receptive-field limit, every kernel size and stride. The
//! requantization is [`Requant8`]'s, 16 channels stored as one 16-byte vector.
//!
//! Depthwise convolutions ([`depthwise`]) read the byte ring: blocks of 16 channels in two
//! registers of eight int32 lanes; a tap is two `VPMOVSXBD` of 8 input bytes and two `VPMADDWD`
//! against the tap's weights as int16 pairs `(w, 0)` (the lane's low half, the input, times
//! `w`; its high half, the input's sign, times 0), so every pixel is an inner one and the only
//! branch is the loop's.

use super::pack::{packed, packs, ring16_shape, Layout, RING16};
use super::pointwise::Requant8;
use super::rows::{
    band_fits, dense_buffers_fit, depthwise_blocks, folded, planned_taps, ring_fits, widen_taps,
    Rows, RING,
};
use super::stage::{block, finish};
use super::{ConvKernel, ConvParams, Finish};
use crate::kernels::KernelSet;
use core::arch::x86_64::*;
use core::mem::MaybeUninit;
use core::ops::Range;

/// Most int16 weights of a head (`k` rows of whole 16-value chunks): 14 KiB on the stack.
const WEIGHTS: usize = 7 * 1024;
/// Pixels per step.
pub(super) const PIXELS: usize = 4;

/// Whether [`head`] takes `p` (given buffers of the sizes its shapes say).
pub(super) fn takes_head(p: &ConvParams<'_>) -> bool {
    let (ih, iw, ic) = (p.input.height, p.input.width, p.input.channels);
    let (k, s) = (p.kernel, p.stride);
    !p.depthwise
        && p.output.channels == 1
        && ic > 0
        && k > 0
        && s > 0
        && ring_fits(p)
        && k * (k * ic).div_ceil(16) * 16 <= WEIGHTS
        && (p.output.height, p.output.width) == (ih.div_ceil(s), iw.div_ceil(s))
}

/// Whether [`gemm`] takes `p` (given buffers of the sizes its shapes say).
pub(super) fn takes_gemm(p: &ConvParams<'_>) -> bool {
    ring16_shape(p)
        && p.output.channels > 1
        && Layout::of(KernelSet::X86Avx2, p).is_some_and(|l| l.rows == p.kernel)
        && packs(KernelSet::X86Avx2, p, PACKED)
}

/// Whether [`depthwise`] takes `p` (given buffers of the sizes its shapes say).
pub(super) fn takes_depthwise(p: &ConvParams<'_>) -> bool {
    super::depthwise_fits(p, usize::MAX, usize::MAX, 7) && ring_fits(p)
}

/// Runs output rows `band` of `p` into `out` (that band's bytes) if it is a dense convolution
/// to one output channel whose padded rows fit the ring
/// and whose weights fit [`WEIGHTS`] (returns `false`, having written nothing, otherwise).
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn head(
    p: &ConvParams<'_>,
    input: &[i8],
    out: &mut [u8],
    band: Range<usize>,
) -> bool {
    let (ih, iw, ic) = (p.input.height, p.input.width, p.input.channels);
    let k = p.kernel;
    let run = k * ic;
    let chunks = run.div_ceil(16);
    if !takes_head(p)
        || input.len() < ih * iw * ic
        || p.weights.len() < k * run
        || !band_fits(p, &band, out.len())
    {
        return false;
    }
    let mut wbuf = [0i16; WEIGHTS];
    for ky in 0..k {
        for (d, &w) in wbuf[ky * chunks * 16..][..run]
            .iter_mut()
            .zip(&p.weights[ky * run..(ky + 1) * run])
        {
            *d = w as i16;
        }
    }
    // SAFETY: AVX2 as the caller guarantees. Pixel ox + i's run in row ky is `run` bytes
    // from runs[ky] + (ox + i)·s·C_in, inside its slot (padded column (ox + i)·s + k − 1 <
    // W_in + 2·pad); the 16-byte loads read at most 15 bytes past it, into the next slot or the
    // ring's 64 bytes of slack, against zero weights.
    unsafe {
        head_rows(
            p,
            input,
            out,
            &band,
            (0, p.input_zero_point),
            ConvKernel::Avx2Head,
            |runs, x0, step, m| head_tile(&runs[..k], x0, step, m, chunks, wbuf.as_ptr()),
        )
    };
    true
}

/// The loop of the AVX2 and AVX-VNNI depth heads over output rows `band` of `p`: the ring of
/// padded rows with the inputs `x ^ xor` (0: signed, `0x80`: unsigned), [`HEAD_PIXELS`] pixels
/// a step, their sums from `tile(runs, x0, step, m)` (`m` pixels from input offset `x0`, `step`
/// apart) finished by `kernel`'s vector stage, else the scalar one with `−z·Σw` folded.
///
/// # Safety
/// AVX2; `tile` reads only what the ring's rows hold for the pixels it is given; `out` holds
/// the band's rows (checked by the caller).
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn head_rows(
    p: &ConvParams<'_>,
    input: &[i8],
    out: &mut [u8],
    band: &Range<usize>,
    (xor, z): (u8, i32),
    kernel: ConvKernel,
    tile: impl Fn(&[*const u8; 7], usize, usize, usize) -> __m256i,
) {
    let (ow, ic, s) = (p.output.width, p.input.channels, p.stride);
    let finish = folded(p, 0, z);
    // the one channel's constants in all 8 lanes (`block` repeats the last channel)
    let vector = block::<8>(p, kernel, 0);
    let mut ring = [MaybeUninit::uninit(); RING];
    let mut rows = Rows::new(p, xor, &mut ring);
    for oy in band.clone() {
        let runs = rows.output_row(p, input, oy);
        let mut ox = 0;
        while ox < ow {
            let m = HEAD_PIXELS.min(ow - ox);
            let sums = tile(&runs, ox * s * ic, s * ic, m);
            // SAFETY: AVX2 as the caller guarantees.
            unsafe { store_head(&vector, &finish, sums, out, (oy - band.start) * ow + ox, m) };
            ox += m;
        }
    }
}

/// Pixels per step of [`head`] and of the AVX-VNNI head ([`head_rows`]).
pub(super) const HEAD_PIXELS: usize = 8;

/// The outputs `at .. at + m` (`m ≤ 8`) of a depth head from their sums (pixel `i` in lane
/// `i`): the vector stage where the channel takes it (int8), else the scalar `finish` (int8 or
/// f32 elements of `out`).
///
/// # Safety
/// AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store_head(
    vector: &Option<Requant8>,
    finish: &Finish<'_>,
    sums: __m256i,
    out: &mut [u8],
    at: usize,
    m: usize,
) {
    let mut lanes = [0i32; HEAD_PIXELS];
    // SAFETY: AVX2 as the caller guarantees; 8 × i32 into an 8-element array.
    unsafe {
        let q = match vector {
            Some(v) => v.apply_v(sums),
            None => sums,
        };
        _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, q);
    }
    match vector {
        Some(_) => {
            for (o, &q) in out[at..at + m].iter_mut().zip(&lanes) {
                *o = q as i8 as u8;
            }
        }
        None => {
            for (i, &sum) in lanes.iter().enumerate().take(m) {
                finish.store(out, at + i, sum);
            }
        }
    }
}

/// Lane `i` the sum of `acc[i]`'s 8 lanes: `VPHADDD` twice (per 128-bit half the partials of
/// four registers), then the halves added.
///
/// # Safety
/// AVX2.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn hsum8(acc: &[__m256i; HEAD_PIXELS]) -> __m256i {
    let h01 = _mm256_hadd_epi32(acc[0], acc[1]);
    let h23 = _mm256_hadd_epi32(acc[2], acc[3]);
    let h45 = _mm256_hadd_epi32(acc[4], acc[5]);
    let h67 = _mm256_hadd_epi32(acc[6], acc[7]);
    let lo = _mm256_hadd_epi32(h01, h23);
    let hi = _mm256_hadd_epi32(h45, h67);
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(lo, hi),
        _mm256_permute2x128_si256::<0x31>(lo, hi),
    )
}

/// The sums of `m ≤ 8` pixels of a depth head, pixel `i` in lane `i`: its run in kernel row
/// `r` at `runs[r] + x0 + i·step` against weight row `r` (`chunks` vectors of 16 int16 at
/// `w + r·chunks·16`), each weight vector loaded once for the 8; pixels past `m` repeat the
/// last one. The 8 accumulators are reduced together ([`hsum8`]).
///
/// # Safety
/// AVX2; the reads as [`head`] says.
#[target_feature(enable = "avx2")]
unsafe fn head_tile(
    runs: &[*const u8],
    x0: usize,
    step: usize,
    m: usize,
    chunks: usize,
    w: *const i16,
) -> __m256i {
    let mut acc = [_mm256_setzero_si256(); HEAD_PIXELS];
    // SAFETY: by the contract; unaligned loads.
    unsafe {
        for (r, &row) in runs.iter().enumerate() {
            let x: [*const u8; HEAD_PIXELS] =
                core::array::from_fn(|i| row.add(x0 + i.min(m - 1) * step));
            for c in 0..chunks {
                let wv = _mm256_loadu_si256(w.add((r * chunks + c) * 16) as *const __m256i);
                for (a, &xp) in acc.iter_mut().zip(&x) {
                    let xv =
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(xp.add(16 * c) as *const __m128i));
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(xv, wv));
                }
            }
        }
        hsum8(&acc)
    }
}

/// Runs output rows `band` of `p` into `out` (that band's bytes) if it is a depthwise
/// convolution (`k ≤ 7`) whose padded rows fit the ring (returns `false`, having written
/// nothing, otherwise). The zero point's share, `z·Σw`, leaves the bias; the output stage is
/// [`Requant8`]'s per eight channels.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn depthwise(
    p: &ConvParams<'_>,
    input: &[i8],
    out: &mut [u8],
    band: Range<usize>,
) -> bool {
    const LANES: usize = 16;
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
    // the taps' weights as (w, 0) int16 pairs, zero past the channels: the plan's, else every
    // block's at once where they fit (`depthwise_blocks`)
    let planned = if p.prepared.kernel == Some(ConvKernel::Avx2Depthwise) {
        planned_taps::<i32, LANES>(p.prepared.depthwise)
    } else {
        &[]
    };
    let vectors = |b: usize| -> [Option<Requant8>; 2] {
        [0, 8].map(|h| block(p, ConvKernel::Avx2Depthwise, b * LANES + h))
    };
    depthwise_blocks::<_, _, WIDE, MAX_BLOCKS>(
        p,
        input,
        &mut rows,
        &band,
        c.div_ceil(LANES),
        planned,
        |b, dst| widen_taps::<i32, LANES>(p, b, dst),
        vectors,
        // SAFETY: AVX2 as the caller guarantees; `runs` holds the row's k input rows.
        |oy, runs, b, w, v| unsafe { depthwise_row(p, out, &band, oy, runs, b, w, v) },
    );
    true
}

/// Rows of 16 weight words in [`depthwise`]'s buffer of every block's taps (48 KiB).
pub(super) const WIDE: usize = 768;
/// Most blocks of 16 channels whose weights and constants [`depthwise`] holds at once.
pub(super) const MAX_BLOCKS: usize = 64;

/// Output row `oy` of block `b` (16 channels) of the depthwise `p` into `out` (band `band`'s
/// bytes), from the `k` ring rows `runs`, the block's taps `w` and its two output stages
/// (`None`: the scalar one, derived here).
///
/// # Safety
/// AVX2; `runs` as [`Rows::output_row`] returned them for `oy`; `w` holds `k²` rows.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn depthwise_row(
    p: &ConvParams<'_>,
    out: &mut [u8],
    band: &Range<usize>,
    oy: usize,
    runs: &[*const u8; 7],
    b: usize,
    w: &[[i32; 16]],
    vector: &[Option<Requant8>; 2],
) {
    let c = p.input.channels;
    let (ow, k, s) = (p.output.width, p.kernel, p.stride);
    let (c0, n) = (16 * b, 16.min(c - 16 * b));
    for ox in 0..ow {
        // SAFETY: AVX2 as the caller guarantees; tap (ky, kx) reads 16 bytes at
        // runs[ky] + ((ox·s + kx)·C + c0), within the slot's padded columns plus at most 15
        // bytes past the block (the next pixel, another slot or the slack); `w` rows hold 16
        // words.
        let sums = unsafe {
            let x = runs.map(|r| r.wrapping_add(ox * s * c + c0));
            if k == 3 {
                taps::<3>(&x, c, w)
            } else {
                taps_k(&x, k, c, w)
            }
        };
        let base = ((oy - band.start) * ow + ox) * c + c0;
        for (h, sums) in sums.iter().enumerate() {
            let lanes = n.saturating_sub(8 * h).min(8);
            if lanes == 0 {
                break;
            }
            let at = base + 8 * h;
            match &vector[h] {
                Some(v) => {
                    // SAFETY: AVX2 as the caller guarantees.
                    let q = unsafe { v.apply(sums) };
                    for (o, &q) in out[at..at + lanes].iter_mut().zip(&q) {
                        *o = q as i8 as u8;
                    }
                }
                None => {
                    for (j, &sum) in sums.iter().enumerate().take(lanes) {
                        folded(p, c0 + 8 * h + j, p.input_zero_point).store(out, at + j, sum);
                    }
                }
            }
        }
    }
}

/// The sums of one pixel's 16 channels over the `K × K` taps of a depthwise kernel: tap
/// `(ky, kx)` reads 16 bytes at `x[ky] + kx·c`, against `w[ky·K + kx]`.
///
/// # Safety
/// AVX2; the reads as [`depthwise`] says.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn taps<const K: usize>(x: &[*const u8; 7], c: usize, w: &[[i32; 16]]) -> [[i32; 8]; 2] {
    // SAFETY: by the contract; unaligned loads.
    unsafe { tap_sums(x, K, c, w) }
}

/// [`taps`] for a kernel size known at run time.
///
/// # Safety
/// As [`taps`].
#[target_feature(enable = "avx2")]
unsafe fn taps_k(x: &[*const u8; 7], k: usize, c: usize, w: &[[i32; 16]]) -> [[i32; 8]; 2] {
    // SAFETY: by the contract.
    unsafe { tap_sums(x, k, c, w) }
}

/// The loops of [`taps`] and [`taps_k`] (inlined into each: with `K` known the taps unroll).
///
/// # Safety
/// As [`taps`].
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn tap_sums(x: &[*const u8; 7], k: usize, c: usize, w: &[[i32; 16]]) -> [[i32; 8]; 2] {
    // SAFETY: by the callers' contract; unaligned loads.
    unsafe {
        let mut acc = [_mm256_setzero_si256(); 2];
        for (ky, &row) in x.iter().enumerate().take(k) {
            for kx in 0..k {
                let xp = row.add(kx * c);
                let wp = w.as_ptr().add(ky * k + kx) as *const i32;
                for (h, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_cvtepi8_epi32(_mm_loadl_epi64(xp.add(8 * h) as *const __m128i));
                    let wv = _mm256_loadu_si256(wp.add(8 * h) as *const __m256i);
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(xv, wv));
                }
            }
        }
        let mut sums = [[0i32; 8]; 2];
        for (v, &a) in sums.iter_mut().zip(&acc) {
            _mm256_storeu_si256(v.as_mut_ptr() as *mut __m256i, a);
        }
        sums
    }
}

/// The ring of `k` padded input rows as int16 `x − z` for [`gemm`]: input row `y` in slot
/// `y mod k`, each slot `(pad + W_in + pad)·C_in` values, the padding 0.
struct Ring16<'b> {
    /// Initialised up to `k·slot + 32` values (what the kernel touches); the caller's stack
    /// buffer, borrowed (as [`Rows`]).
    vals: &'b mut [MaybeUninit<i16>; RING16],
    held: [i32; 7],
    slot: usize,
}

impl<'b> Ring16<'b> {
    /// An empty ring for `p` in `vals` (its slots fitting: [`ring16_shape`]).
    fn new(p: &ConvParams<'_>, vals: &'b mut [MaybeUninit<i16>; RING16]) -> Self {
        let slot = (p.input.width + 2 * (p.kernel / 2)) * p.input.channels;
        for v in vals.iter_mut().take(p.kernel * slot + 32) {
            v.write(0);
        }
        Ring16 {
            vals,
            held: [i32::MIN; 7],
            slot,
        }
    }

    /// Loads the `k` input rows output row `oy` reads and returns where each starts (tap row
    /// `ky` at index `ky`; the rest null).
    fn output_row(&mut self, p: &ConvParams<'_>, input: &[i8], oy: usize) -> [*const i16; 7] {
        let (ih, iw, ic, k) = (p.input.height, p.input.width, p.input.channels, p.kernel);
        let y0 = (oy * p.stride) as i32 - (k / 2) as i32;
        let z = p.input_zero_point as i16;
        let mut runs = [core::ptr::null(); 7];
        for (y, r) in (y0..y0 + k as i32).zip(&mut runs) {
            let slot = y.rem_euclid(k as i32) as usize;
            // SAFETY: slot < k, and the first k·slot + 32 values are initialised (`new`).
            let row = unsafe {
                core::slice::from_raw_parts_mut(
                    self.vals.as_mut_ptr().add(slot * self.slot) as *mut i16,
                    self.slot,
                )
            };
            if self.held[slot] != y {
                self.held[slot] = y;
                if y < 0 || y as usize >= ih {
                    row.fill(0);
                } else {
                    let pad = (k / 2) * ic;
                    row[..pad].fill(0);
                    row[pad + iw * ic..].fill(0);
                    let src = &input[y as usize * iw * ic..][..iw * ic];
                    for (d, &x) in row[pad..pad + iw * ic].iter_mut().zip(src) {
                        *d = x as i16 - z;
                    }
                }
            }
            *r = row.as_ptr();
        }
        runs
    }
}

/// Most packed weight words of one convolution without a plan (128 KiB on the stack).
const PACKED: usize = 32 * 1024;
/// Blocks of 8 channels whose output constants are decoded at a time.
const CHUNK: usize = 16;

/// Runs output rows `band` of `p` into `out` (that band's bytes) if it is a dense convolution
/// to two or more channels whose int16 padded rows fit the ring and whose packed weights are in
/// the plan or fit the stack (returns `false`, having written nothing, otherwise).
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn gemm(
    p: &ConvParams<'_>,
    input: &[i8],
    out: &mut [u8],
    band: Range<usize>,
) -> bool {
    let ic = p.input.channels;
    let (k, s) = (p.kernel, p.stride);
    if !takes_gemm(p) || !dense_buffers_fit(p, input.len(), &band, out.len()) {
        return false;
    }
    let Some(layout) = Layout::of(KernelSet::X86Avx2, p) else {
        return false;
    };
    let (blocks, per_block, groups) = (layout.blocks, layout.per_block(), layout.groups);
    // the plan's packed weights, else packed here (when they fit the stack buffer)
    let mut storage = [MaybeUninit::<i32>::uninit(); PACKED];
    let storage = &mut storage[..if layout.words() <= PACKED { PACKED } else { 0 }];
    let Some(packed) = packed(&layout, p, storage) else {
        return false;
    };
    let mut vals = [MaybeUninit::uninit(); RING16];
    let mut ring = Ring16::new(p, &mut vals);
    let shape = (blocks, per_block);
    // SAFETY: AVX2 as the caller guarantees; pixel ox + i's run in row ky is k·C_in values from
    // runs[ky] + (ox + i)·s·C_in, within the slot (padded column (ox + i)·s + k − 1 <
    // W_in + 2·pad), the last pair reading at most one value past it (the next slot or the
    // slack); the block(s) hold per_block words each.
    unsafe {
        gemm_blocks(
            p,
            out,
            &band,
            ConvKernel::Avx2Gemm,
            0,
            packed,
            shape,
            |oy| ring.output_row(p, input, oy),
            |runs, ox, m, w, two| {
                let (x0, step) = (ox * s * ic, s * ic);
                if two {
                    tile::<2>(&runs[..k], x0, step, m, groups, w, per_block)
                } else {
                    tile::<1>(&runs[..k], x0, step, m, groups, w, per_block)
                }
            },
        )
    };
    true
}

/// The block loop of the ring GEMMs on blocks of 8 channels ([`gemm`]: int16 rows and
/// `VPMADDWD`; [`super::avxvnni::gemm`]: byte rows and `VPDPBUSD`), packed weights `packed` of
/// `(blocks, per_block)`: the output constants of up to [`CHUNK`] blocks at a time (`kernel`'s
/// vector stage, else the scalar one with `−z·Σw` folded), then for each output row of `band`
/// the ring rows `row(oy)`, tiles of up to 4 pixels × 2 blocks from
/// `tile(runs, ox, m, w, two)` (`m` pixels from `ox`, the block(s) at `w`, two of them when
/// `two`) and the finished bytes.
///
/// # Safety
/// AVX2; `tile` computes the sums from what `row` returns, `packed` holds `blocks·per_block`
/// words and `out` the band's `rows·W_out·C_out` bytes.
#[target_feature(enable = "avx2")]
#[inline]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_blocks<R: Copy>(
    p: &ConvParams<'_>,
    out: &mut [u8],
    band: &Range<usize>,
    kernel: ConvKernel,
    z: i32,
    packed: &[i32],
    (blocks, per_block): (usize, usize),
    mut row: impl FnMut(usize) -> [R; 7],
    tile: impl Fn(&[R; 7], usize, usize, *const i32, bool) -> [[__m256i; 2]; PIXELS],
) {
    let (ow, oc) = (p.output.width, p.output.channels);
    let mut finishes = [[Finish::F32 {
        bias: 0,
        scale: 0.0,
    }; 8]; CHUNK];
    let mut vectors: [Option<Requant8>; CHUNK] = Default::default();
    for b0 in (0..blocks).step_by(CHUNK) {
        let nb = CHUNK.min(blocks - b0);
        for b in 0..nb {
            let c0 = (b0 + b) * 8;
            vectors[b] = block(p, kernel, c0);
            // the scalar constants only where the vector form declines
            if vectors[b].is_none() {
                finishes[b] = core::array::from_fn(|j| finish(p, (c0 + j).min(oc - 1), z));
            }
        }
        for oy in band.clone() {
            let runs = row(oy);
            let mut ox = 0;
            while ox < ow {
                let m = PIXELS.min(ow - ox);
                let mut b = 0;
                while b < nb {
                    let two = b + 1 < nb;
                    let sums = tile(&runs, ox, m, packed[(b0 + b) * per_block..].as_ptr(), two);
                    for (i, px) in sums.iter().enumerate().take(m) {
                        let base = ((oy - band.start) * ow + ox + i) * oc;
                        let c0 = (b0 + b) * 8;
                        let n = (if two { 16 } else { 8 }).min(oc - c0);
                        // SAFETY: AVX2 as the caller guarantees.
                        unsafe {
                            finish_pixel(&finishes[b..], &vectors[b..], px, out, base + c0, n)
                        };
                    }
                    b += if two { 2 } else { 1 };
                }
                ox += m;
            }
        }
    }
}

/// Writes the finished values of one pixel's sums `px` (two blocks of 8 channels) for `n ≤ 16`
/// channels into `out` from element `at` on: one vector store where the blocks' stages are
/// vector ones (int8) and whole, the scalar stage elsewhere.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn finish_pixel(
    finishes: &[[Finish<'_>; 8]],
    vectors: &[Option<Requant8>],
    px: &[__m256i; 2],
    out: &mut [u8],
    at: usize,
    n: usize,
) {
    // SAFETY: AVX2; the vector stores write into `dst`, which has the 16 or 8 bytes.
    unsafe {
        let halves = |q: __m256i| {
            _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q))
        };
        match (vectors.first(), vectors.get(1)) {
            (Some(Some(v0)), Some(Some(v1))) if n == 16 => {
                // the values lie in act_min..=act_max ⊂ int8: the saturating packs are exact
                let a = halves(v0.apply_v(px[0]));
                let b = halves(v1.apply_v(px[1]));
                let dst = &mut out[at..at + 16];
                _mm_storeu_si128(dst.as_mut_ptr() as *mut __m128i, _mm_packs_epi16(a, b));
                return;
            }
            (Some(Some(v0)), _) if n == 8 => {
                let a = halves(v0.apply_v(px[0]));
                let dst = &mut out[at..at + 8];
                _mm_storel_epi64(dst.as_mut_ptr() as *mut __m128i, _mm_packs_epi16(a, a));
                return;
            }
            _ => {}
        }
        for (h, acc) in px.iter().enumerate() {
            let lanes = n.saturating_sub(8 * h).min(8);
            if lanes == 0 {
                break;
            }
            let mut sums = [0i32; 8];
            _mm256_storeu_si256(sums.as_mut_ptr() as *mut __m256i, *acc);
            let at = at + 8 * h;
            match vectors.get(h) {
                Some(Some(v)) => {
                    let q = v.apply(&sums);
                    for (o, &q) in out[at..at + lanes].iter_mut().zip(&q) {
                        *o = q as i8 as u8;
                    }
                }
                _ => {
                    for (j, f) in finishes[h].iter().enumerate().take(lanes) {
                        f.store(out, at + j, sums[j]);
                    }
                }
            }
        }
    }
}

/// The sums of `m ≤ 4` pixels × `B` blocks of 8 channels: pixel `i`'s run in kernel row `r` at
/// `runs[r] + x0 + i·step` (int16 values), block `b`'s weights at `w + b·per_block`, row `r`
/// pair `g` at `(r·groups + g)·8` words; pixels past `m` repeat the last one.
///
/// # Safety
/// AVX2; the reads as [`gemm`] says.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const B: usize>(
    runs: &[*const i16],
    x0: usize,
    step: usize,
    m: usize,
    groups: usize,
    w: *const i32,
    per_block: usize,
) -> [[__m256i; 2]; PIXELS] {
    let mut acc = [[_mm256_setzero_si256(); B]; PIXELS];
    // SAFETY: by the contract; unaligned loads.
    unsafe {
        for (r, &row) in runs.iter().enumerate() {
            let x: [*const i16; PIXELS] =
                core::array::from_fn(|i| row.add(x0 + i.min(m - 1) * step));
            let wr = w.add(r * groups * 8);
            for g in 0..groups {
                let wv: [__m256i; B] = core::array::from_fn(|b| {
                    _mm256_loadu_si256(wr.add(b * per_block + g * 8) as *const __m256i)
                });
                for (a, &xp) in acc.iter_mut().zip(&x) {
                    let xv = _mm256_set1_epi32((xp.add(2 * g) as *const i32).read_unaligned());
                    for (a, &wv) in a.iter_mut().zip(&wv) {
                        *a = _mm256_add_epi32(*a, _mm256_madd_epi16(xv, wv));
                    }
                }
            }
        }
        let mut out = [[_mm256_setzero_si256(); 2]; PIXELS];
        for (o, a) in out.iter_mut().zip(&acc) {
            o[..B].copy_from_slice(a);
        }
        out
    }
}
