//! Dense convolutions on x86-64 with AVX-VNNI (the VEX encoding of `VPDPBUSD` on 256-bit
//! registers: Alder Lake and later Intel cores, AMD Zen 5; CPUs with AVX2 and VNNI but no
//! AVX-512, or with AVX-512 where 512-bit operations run as two halves): 32 unsigned input bytes
//! times 32 signed weights, each group of four products added into one of 8 int32 lanes, exactly
//! (four products of at most 255·128 per lane and step).
//!
//! The scheme is [`super::vnni`]'s on 8 lanes: the input read as unsigned bytes `u = x + 128`
//! from the byte ring of padded rows ([`super::rows`], the padding the byte `z + 128`), so
//! `Σ (x − z)·w = Σ u·w − (z + 128)·Σ w` with the second term folded into the bias; a pixel's
//! taps in one kernel row are one run of `k·C_in` bytes. Weights are packed once, in the plan
//! ([`super::pack`], per call into a stack buffer without one): for each block of 8 output
//! channels, each kernel row and each group of four values of its run, the 8 channels' four
//! weights. A tile of 4 pixels × 2 blocks takes, per group of four values, two weight loads,
//! four broadcasts and eight `VPDPBUSD`s for 256 MACs, in 11 of the 16 registers AVX2 has
//! (`VPMADDWD` does 128 in the AVX2 GEMM's tile, from a ring twice as large). The output stage
//! is the AVX2 GEMM's ([`super::avx2`]), one 16-byte store per pixel and pair of blocks. Depth
//! heads (one output channel) run 8 pixels a step along the run, 32 bytes a `VPDPBUSD`. The
//! table's other kernels (depthwise, convolutions whose rows are too wide for the ring) are
//! AVX2's.

use super::avx2::{gemm_blocks, head_rows, hsum8, HEAD_PIXELS, PIXELS};
use super::pack::{packed, packs, ring_shape, Layout};
use super::rows::{dense_buffers_fit, Rows, RING};
use super::{ConvKernel, ConvParams};
use crate::kernels::KernelSet;
use core::arch::x86_64::*;
use core::mem::MaybeUninit;
use core::ops::Range;

/// Most packed weight words of one convolution without a plan (128 KiB on the stack).
const PACKED: usize = 32 * 1024;

/// Whether the CPU has AVX2 and AVX-VNNI: detected at run time with `std`, else what the build
/// targets.
pub(super) fn available() -> bool {
    #[cfg(any(feature = "std", test))]
    {
        extern crate std;
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(any(feature = "std", test)))]
    {
        cfg!(all(target_feature = "avx2", target_feature = "avxvnni"))
    }
}

/// Bytes of a depth head's weight rows (`k` rows of whole 32-byte chunks).
const HEAD: usize = 7 * 1024;

/// Whether [`gemm`] takes `p` (given buffers of the sizes its shapes say): a dense map whose
/// ring fits, to two or more channels with the packed weights in the plan or fitting the stack
/// buffer, or to one (a depth head) whose weight rows fit [`HEAD`].
pub(super) fn takes(p: &ConvParams<'_>) -> bool {
    let (k, ic) = (p.kernel, p.input.channels);
    ring_shape(p)
        && if p.output.channels == 1 {
            k * (k * ic).div_ceil(32) * 32 <= HEAD
        } else {
            packs(KernelSet::X86AvxVnni, p, PACKED)
        }
}

/// Runs output rows `band` of `p` into `out` (that band's bytes) if [`takes`] does (returns
/// `false`, having written nothing, otherwise).
///
/// # Safety
/// The CPU has AVX2 and AVX-VNNI ([`available`]).
#[target_feature(enable = "avx2,avxvnni")]
pub(super) unsafe fn gemm(
    p: &ConvParams<'_>,
    input: &[i8],
    out: &mut [u8],
    band: Range<usize>,
) -> bool {
    let ic = p.input.channels;
    let (k, s) = (p.kernel, p.stride);
    if !takes(p) || !dense_buffers_fit(p, input.len(), &band, out.len()) {
        return false;
    }
    if p.output.channels == 1 {
        // SAFETY: AVX2 and AVX-VNNI as the caller guarantees; the shapes as `takes` checked.
        unsafe { head(p, input, out, band) };
        return true;
    }
    let Some(layout) = Layout::of(KernelSet::X86AvxVnni, p) else {
        return false;
    };
    let (blocks, per_block, groups) = (layout.blocks, layout.per_block(), layout.groups);
    // the plan's packed weights, else packed here (when they fit the stack buffer)
    let mut storage = [MaybeUninit::<i32>::uninit(); PACKED];
    let storage = &mut storage[..if layout.words() <= PACKED { PACKED } else { 0 }];
    let Some(packed) = packed(&layout, p, storage) else {
        return false;
    };
    let mut ring = [MaybeUninit::uninit(); RING];
    let mut rows = Rows::new(p, 0x80, &mut ring);
    let shape = (blocks, per_block);
    // Σ (x − z)·w = Σ u·w − (z + 128)·Σ w: the scalar stage folds the second term too
    let z = p.input_zero_point + 128;
    // SAFETY: AVX2 and AVX-VNNI as the caller guarantees; pixel ox + i's run in row ky is
    // k·C_in bytes from runs[ky] + (ox + i)·s·C_in, within the slot (padded column
    // (ox + i)·s + k − 1 < W_in + 2·pad), whole groups reading at most 3 bytes past it (the
    // next slot or the ring's slack); the block(s) hold per_block words each.
    unsafe {
        gemm_blocks(
            p,
            out,
            &band,
            ConvKernel::AvxVnniGemm,
            z,
            packed,
            shape,
            |oy| rows.output_row(p, input, oy),
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

/// A depth head (one output channel, [`takes`]'s shapes) over the byte ring of unsigned inputs:
/// 8 pixels a step, each pixel's `k` runs against the weight rows in 32-byte vectors (zero past
/// each run, so the bytes read past it add nothing), each weight vector loaded once for the 8;
/// the 8 accumulators reduced together and finished as one vector ([`head_rows`]).
///
/// # Safety
/// AVX2 and AVX-VNNI; `p` as [`takes`] and [`dense_buffers_fit`] checked it.
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn head(p: &ConvParams<'_>, input: &[i8], out: &mut [u8], band: Range<usize>) {
    let (ic, k) = (p.input.channels, p.kernel);
    let run = k * ic;
    let chunks = run.div_ceil(32);
    let mut wbuf = [0i8; HEAD];
    for ky in 0..k {
        wbuf[ky * chunks * 32..][..run].copy_from_slice(&p.weights[ky * run..(ky + 1) * run]);
    }
    // Σ (x − z)·w = Σ u·w − (z + 128)·Σ w, the second term in the bias.
    // SAFETY: AVX2 and AVX-VNNI as the caller guarantees. Pixel ox + i's run in row ky is `run`
    // bytes from runs[ky] + (ox + i)·s·C_in, inside its slot; the 32-byte loads read at most 31
    // bytes past it, into the next slot or the ring's 64 bytes of slack, against zero weights.
    unsafe {
        head_rows(
            p,
            input,
            out,
            &band,
            (0x80, p.input_zero_point + 128),
            ConvKernel::AvxVnniGemm,
            |runs, x0, step, m| head_tile(&runs[..k], x0, step, m, chunks, wbuf.as_ptr()),
        )
    };
}

/// The sums of `m ≤ 8` pixels of a depth head, pixel `i` in lane `i`: its run in kernel row
/// `r` at `runs[r] + x0 + i·step` (unsigned bytes) against weight row `r` (`chunks` vectors of
/// 32 bytes at `w + r·chunks·32`); pixels past `m` repeat the last one.
///
/// # Safety
/// AVX2 and AVX-VNNI; the reads as [`head`] says.
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn head_tile(
    runs: &[*const u8],
    x0: usize,
    step: usize,
    m: usize,
    chunks: usize,
    w: *const i8,
) -> __m256i {
    let mut acc = [_mm256_setzero_si256(); HEAD_PIXELS];
    // SAFETY: by the contract; unaligned loads.
    unsafe {
        for (r, &row) in runs.iter().enumerate() {
            let x: [*const u8; HEAD_PIXELS] =
                core::array::from_fn(|i| row.add(x0 + i.min(m - 1) * step));
            for c in 0..chunks {
                let wv = _mm256_loadu_si256(w.add((r * chunks + c) * 32) as *const __m256i);
                for (a, &xp) in acc.iter_mut().zip(&x) {
                    let xv = _mm256_loadu_si256(xp.add(32 * c) as *const __m256i);
                    *a = _mm256_dpbusd_avx_epi32(*a, xv, wv);
                }
            }
        }
        hsum8(&acc)
    }
}

/// The sums of `m ≤ 4` pixels × `B` blocks of 8 channels: pixel `i`'s run in kernel row `r` at
/// `runs[r] + x0 + i·step` (unsigned bytes), block `b`'s weights at `w + b·per_block`, row `r`
/// group `g` at `(r·groups + g)·8` words; pixels past `m` repeat the last one.
///
/// # Safety
/// AVX2 and AVX-VNNI; the reads as [`gemm`] says.
#[target_feature(enable = "avx2,avxvnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const B: usize>(
    runs: &[*const u8],
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
            let x: [*const u8; PIXELS] =
                core::array::from_fn(|i| row.add(x0 + i.min(m - 1) * step));
            let wr = w.add(r * groups * 8);
            for g in 0..groups {
                let wv: [__m256i; B] = core::array::from_fn(|b| {
                    _mm256_loadu_si256(wr.add(b * per_block + g * 8) as *const __m256i)
                });
                for (a, &xp) in acc.iter_mut().zip(&x) {
                    let xv = _mm256_set1_epi32((xp.add(4 * g) as *const i32).read_unaligned());
                    for (a, &wv) in a.iter_mut().zip(&wv) {
                        *a = _mm256_dpbusd_avx_epi32(*a, xv, wv);
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
