//! The ring of padded input rows that the x86-64 AVX-512 and aarch64 NEON convolutions read:
//! converted once per input row, the padding included, so that a pixel's taps in one kernel
//! row are one run of `k·C_in` bytes for every pixel.

use super::{ConvParams, Finish, OutputStage};
use core::mem::MaybeUninit;

/// Bytes of the ring of padded input rows (on the stack), including 64 bytes of slack that the
/// last run's whole-vector reads may touch.
pub(super) const RING: usize = 64 * 1024;

/// The ring of `k` padded input rows: input row `y` in slot `y mod k`, each slot
/// `(pad + W_in + pad)·C_in` bytes of `x ^ flip`, the padding `z ^ flip` (`flip` 0x80 for the
/// unsigned bytes of `VPDPBUSD`, 0 for the depthwise kernel's signed ones).
pub(super) struct Rows<'b> {
    /// Initialised up to `k·slot + 64` bytes (only what the kernels touch: zeroing the whole
    /// 64 KiB per convolution cost more than small layers). The caller's stack buffer, borrowed:
    /// a ring held by value was copied (64 KiB) into place on every call.
    bytes: &'b mut [MaybeUninit<u8>; RING],
    pub(super) held: [i32; 7],
    slot: usize,
    flip: u8,
    pad: u8,
}

impl<'b> Rows<'b> {
    /// An empty ring for `p` in `bytes` (its slots fitting: the caller checked
    /// `k·slot + 64 ≤ RING`).
    pub(super) fn new(
        p: &ConvParams<'_>,
        flip: u8,
        bytes: &'b mut [MaybeUninit<u8>; RING],
    ) -> Self {
        let slot = (p.input.width + 2 * (p.kernel / 2)) * p.input.channels;
        for b in bytes.iter_mut().take(p.kernel * slot + 64) {
            b.write(0);
        }
        Rows {
            bytes,
            held: [i32::MIN; 7],
            slot,
            flip,
            pad: (p.input_zero_point as i8 as u8) ^ flip,
        }
    }

    /// Makes slot `y mod k` hold input row `y` (padding outside the input); nothing if it does.
    pub(super) fn load(&mut self, p: &ConvParams<'_>, input: &[i8], y: i32) {
        let (pad_byte, flip) = (self.pad, self.flip);
        let (ih, iw, ic, k) = (p.input.height, p.input.width, p.input.channels, p.kernel);
        let slot = y.rem_euclid(k as i32) as usize;
        if self.held[slot] == y {
            return;
        }
        self.held[slot] = y;
        // SAFETY: slot < k, and the first k·slot + 64 bytes are initialised (`new`).
        let row = unsafe {
            core::slice::from_raw_parts_mut(
                self.bytes.as_mut_ptr().add(slot * self.slot) as *mut u8,
                self.slot,
            )
        };
        if y < 0 || y as usize >= ih {
            row.fill(pad_byte);
            return;
        }
        let pad = (k / 2) * ic;
        row[..pad].fill(pad_byte);
        row[pad + iw * ic..].fill(pad_byte);
        let src = &input[y as usize * iw * ic..][..iw * ic];
        for (d, &s) in row[pad..pad + iw * ic].iter_mut().zip(src) {
            *d = s as u8 ^ flip;
        }
    }

    pub(super) fn at(&self, p: &ConvParams<'_>, y: i32) -> *const u8 {
        let slot = y.rem_euclid(p.kernel as i32) as usize;
        self.bytes[slot * self.slot..].as_ptr() as *const u8
    }
}

impl Rows<'_> {
    /// Loads the `k` input rows output row `oy` reads and returns where each starts (tap row
    /// `ky` at index `ky`; the rest null).
    pub(super) fn output_row(
        &mut self,
        p: &ConvParams<'_>,
        input: &[i8],
        oy: usize,
    ) -> [*const u8; 7] {
        let k = p.kernel;
        let y0 = (oy * p.stride) as i32 - (k / 2) as i32;
        let mut runs = [core::ptr::null(); 7];
        for (y, r) in (y0..y0 + k as i32).zip(&mut runs) {
            self.load(p, input, y);
            *r = self.at(p, y);
        }
        runs
    }
}

/// Whether `p`'s `k` padded input rows fit the ring (with its slack), for `k ≤ 7`.
pub(super) fn ring_fits(p: &ConvParams<'_>) -> bool {
    let k = p.kernel;
    k <= 7 && k * (p.input.width + 2 * (k / 2)) * p.input.channels + 64 <= RING
}

/// Whether `band` is a range of `p`'s output rows and `out_len` bytes hold them.
pub(super) fn band_fits(
    p: &ConvParams<'_>,
    band: &core::ops::Range<usize>,
    out_len: usize,
) -> bool {
    let elem = match p.stage {
        OutputStage::Int8 { .. } => 1,
        OutputStage::F32 { .. } => 4,
    };
    band.start <= band.end
        && band.end <= p.output.height
        && out_len >= band.len() * p.output.width * p.output.channels * elem
}

/// Whether a dense convolution's input and weights hold what `p`'s shapes say and `out_len`
/// bytes hold `band`'s rows: what the ring GEMMs check besides their shapes.
pub(super) fn dense_buffers_fit(
    p: &ConvParams<'_>,
    input_len: usize,
    band: &core::ops::Range<usize>,
    out_len: usize,
) -> bool {
    let (ih, iw, ic) = (p.input.height, p.input.width, p.input.channels);
    let (oc, k) = (p.output.channels, p.kernel);
    input_len >= ih * iw * ic && p.weights.len() >= oc * k * k * ic && band_fits(p, band, out_len)
}

/// Channel `c`'s output stage with `−z·Σw` added to its bias (`Σw` from the plan where it has
/// it), for kernels whose sums run over raw inputs `x` where the reference has `x − z`.
pub(super) fn folded<'a>(p: &ConvParams<'a>, c: usize, z: i32) -> Finish<'a> {
    let mut f = Finish::new(&p.stage, p.bias, c);
    let sum = p.weight_sum(c);
    let (Finish::Int8 { bias, .. } | Finish::F32 { bias, .. }) = &mut f;
    *bias = bias.wrapping_sub(z.wrapping_mul(sum));
    f
}

/// The block order of the ring depthwise kernels (AVX2, NEON): every block's taps (`fill` writes
/// block `b`'s `k²` rows of widened weights) and output stages (`stage(b)`) held at once where
/// `blocks·k² ≤ W` and `blocks ≤ B`, so that each input row is loaded into the ring once and
/// `row(oy, runs, b, taps, stage)` runs for every block of it; else a block at a time, the rows
/// reloaded for each.
#[allow(clippy::too_many_arguments)]
pub(super) fn depthwise_blocks<T, S, const W: usize, const B: usize>(
    p: &ConvParams<'_>,
    input: &[i8],
    rows: &mut Rows<'_>,
    band: &core::ops::Range<usize>,
    blocks: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]),
    stage: impl Fn(usize) -> S,
    mut row: impl FnMut(usize, &[*const u8; 7], usize, &[T], &S),
) {
    let taps = p.kernel * p.kernel;
    // left uninitialised past what `fill` writes (zeroing 48 KiB per call showed under perf)
    let mut wbuf = [const { MaybeUninit::<T>::uninit() }; W];
    // SAFETY: the first `n` rows, which `fill` wrote.
    let written = |wbuf: &[MaybeUninit<T>], n: usize| unsafe {
        core::slice::from_raw_parts(wbuf.as_ptr() as *const T, n)
    };
    if blocks * taps <= W && blocks <= B {
        let mut stages: [Option<S>; B] = core::array::from_fn(|_| None);
        for (b, s) in stages.iter_mut().enumerate().take(blocks) {
            fill(b, &mut wbuf[b * taps..(b + 1) * taps]);
            *s = Some(stage(b));
        }
        let w = written(&wbuf, blocks * taps);
        for oy in band.clone() {
            let runs = rows.output_row(p, input, oy);
            for (b, s) in stages.iter().enumerate().take(blocks) {
                if let Some(s) = s {
                    row(oy, &runs, b, &w[b * taps..(b + 1) * taps], s);
                }
            }
        }
    } else {
        for b in 0..blocks {
            fill(b, &mut wbuf[..taps]);
            let w = written(&wbuf, taps);
            let s = stage(b);
            rows.held = [i32::MIN; 7];
            for oy in band.clone() {
                let runs = rows.output_row(p, input, oy);
                row(oy, &runs, b, w, &s);
            }
        }
    }
}
