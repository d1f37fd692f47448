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

/// Lane values a plan's words may be read as (every bit pattern is one).
pub(super) trait Lane: Copy + Default {
    /// A weight, widened as the kernel reads it.
    fn widen(w: i8) -> Self;
}

impl Lane for i16 {
    /// NEON's `SMLAL` operand.
    fn widen(w: i8) -> Self {
        w as i16
    }
}

impl Lane for i32 {
    /// AVX2's `VPMADDWD` operand: the pair `(w, 0)`, the input's low half times `w`, its sign
    /// times 0.
    fn widen(w: i8) -> Self {
        w as i16 as u16 as i32
    }
}

/// Block `b`'s (`L` channels from `b·L`) `k²` taps of the depthwise `p` into `dst` (one row of
/// `L` lanes a tap), widened, zero past the channels: what the ring depthwise kernels multiply.
pub(super) fn widen_taps<T: Lane, const L: usize>(
    p: &ConvParams<'_>,
    b: usize,
    dst: &mut [MaybeUninit<[T; L]>],
) {
    let c = p.input.channels;
    let (c0, n) = (b * L, L.min(c.saturating_sub(b * L)));
    for (t, row) in dst.iter_mut().enumerate().take(p.kernel * p.kernel) {
        row.write(core::array::from_fn(|j| {
            match (j < n).then(|| p.weights.get(t * c + c0 + j)).flatten() {
                Some(&w) => T::widen(w),
                None => T::default(),
            }
        }));
    }
}

/// Words of the depthwise `p`'s widened taps in a plan for `set` (the ring depthwise kernels'
/// layout, [`widen_taps`] of every block in order): AVX2 blocks of 16 `(w, 0)` words, NEON
/// blocks of 8 int16 (the AVX-512 VNNI depthwise reads AVX2's); 0 for other tables and shapes
/// those kernels do not take.
pub(crate) fn widened_words(set: crate::kernels::KernelSet, p: &ConvParams<'_>) -> usize {
    use crate::kernels::KernelSet;
    if !super::depthwise_fits(p, usize::MAX, usize::MAX, 7) || !ring_fits(p) {
        return 0;
    }
    let (c, taps) = (p.input.channels, p.kernel * p.kernel);
    match set {
        KernelSet::X86Avx2 | KernelSet::X86AvxVnni | KernelSet::X86Avx512Vnni => {
            c.div_ceil(16) * taps * 16
        }
        KernelSet::Aarch64Neon | KernelSet::Aarch64NeonDot | KernelSet::Aarch64NeonI8mm => {
            c.div_ceil(8) * taps * 4
        }
        _ => 0,
    }
}

/// Writes the widened taps of every block of `p` for `set` into `dst` (exactly
/// [`widened_words`] long); `false` otherwise.
pub(crate) fn write_widened(
    set: crate::kernels::KernelSet,
    p: &ConvParams<'_>,
    dst: &mut [i32],
) -> bool {
    use crate::kernels::KernelSet;
    fn all<T: Lane, const L: usize>(p: &ConvParams<'_>, dst: &mut [i32]) {
        let taps = p.kernel * p.kernel;
        let rows = dst.len() * 4 / core::mem::size_of::<[T; L]>();
        // SAFETY: `[T; L]` (T an integer of 2 or 4 bytes) is no more aligned than i32 and
        // `rows` of it fit `dst`'s bytes; `widen_taps` only writes.
        let rows = unsafe {
            core::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut MaybeUninit<[T; L]>, rows)
        };
        for (b, block) in rows.chunks_mut(taps).enumerate() {
            widen_taps::<T, L>(p, b, block);
        }
    }
    if dst.len() != widened_words(set, p) || dst.is_empty() {
        return false;
    }
    match set {
        KernelSet::X86Avx2 | KernelSet::X86AvxVnni | KernelSet::X86Avx512Vnni => {
            all::<i32, 16>(p, dst)
        }
        _ => all::<i16, 8>(p, dst),
    }
    true
}

/// A plan's widened taps as the rows of `L` lanes [`widen_taps`] wrote.
pub(super) fn planned_taps<T: Lane, const L: usize>(words: &[i32]) -> &[[T; L]] {
    let rows = words.len() * 4 / core::mem::size_of::<[T; L]>();
    // SAFETY: as in `write_widened`: within `words`' bytes, alignment at most i32's, and every
    // bit pattern is a `T`.
    unsafe { core::slice::from_raw_parts(words.as_ptr() as *const [T; L], rows) }
}

/// The block order of the ring depthwise kernels (AVX2, NEON): every block's taps (the plan's,
/// `planned`, where it holds `blocks·k²` rows; else `fill` writes block `b`'s `k²` rows of
/// widened weights) and output stages (`stage(b)`) held at once where they fit (`blocks·k² ≤ W`
/// or in the plan, and `blocks ≤ B`), so that each input row is loaded into the ring once and
/// `row(oy, runs, b, taps, stage)` runs for every block of it; else a block at a time, the rows
/// reloaded for each.
#[allow(clippy::too_many_arguments)]
pub(super) fn depthwise_blocks<T, S, const W: usize, const B: usize>(
    p: &ConvParams<'_>,
    input: &[i8],
    rows: &mut Rows<'_>,
    band: &core::ops::Range<usize>,
    blocks: usize,
    planned: &[T],
    fill: impl Fn(usize, &mut [MaybeUninit<T>]),
    stage: impl Fn(usize) -> S,
    mut row: impl FnMut(usize, &[*const u8; 7], usize, &[T], &S),
) {
    let taps = p.kernel * p.kernel;
    if planned.len() == blocks * taps && blocks <= B {
        let stages: [Option<S>; B] = core::array::from_fn(|b| (b < blocks).then(|| stage(b)));
        for oy in band.clone() {
            let runs = rows.output_row(p, input, oy);
            for (b, s) in stages.iter().enumerate().take(blocks) {
                if let Some(s) = s {
                    row(oy, &runs, b, &planned[b * taps..(b + 1) * taps], s);
                }
            }
        }
        return;
    }
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
