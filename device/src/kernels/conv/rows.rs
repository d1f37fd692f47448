//! The ring of padded input rows that the x86-64 AVX-512 and aarch64 NEON convolutions read:
//! converted once per input row, the padding included, so that a pixel's taps in one kernel
//! row are one run of `k·C_in` bytes for every pixel.

use super::ConvParams;

/// Bytes of the ring of padded input rows (on the stack), including 64 bytes of slack that the
/// last run's whole-vector reads may touch.
pub(super) const RING: usize = 64 * 1024;

/// The ring of `k` padded input rows: input row `y` in slot `y mod k`, each slot
/// `(pad + W_in + pad)·C_in` bytes of `x ^ flip`, the padding `z ^ flip` (`flip` 0x80 for the
/// unsigned bytes of `VPDPBUSD`, 0 for the depthwise kernel's signed ones).
pub(super) struct Rows {
    pub(super) bytes: [u8; RING],
    pub(super) held: [i32; 7],
    pub(super) slot: usize,
    flip: u8,
    pad: u8,
}

impl Rows {
    /// An empty ring for `p` (its slots fitting: the caller checked `k·slot + 64 ≤ RING`).
    pub(super) fn new(p: &ConvParams<'_>, flip: u8) -> Self {
        Rows {
            bytes: [0; RING],
            held: [i32::MIN; 7],
            slot: (p.input.width + 2 * (p.kernel / 2)) * p.input.channels,
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
        let row = &mut self.bytes[slot * self.slot..(slot + 1) * self.slot];
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
        self.bytes[slot * self.slot..].as_ptr()
    }
}
