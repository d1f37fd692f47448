//! The packed weight layouts of the dense AVX-512 VNNI, AVX-VNNI, NEON and AVX2 kernels
//! ([`super::vnni`], [`super::avxvnni`], [`super::neon`], the AVX2 GEMM): their sizes and the packing itself, on every target, so that
//! a plan for any table can be sized on the host (`depthling profile`) and built once at
//! `Engine::new`; without a plan the kernels pack per call into a stack buffer with the same
//! functions.
//!
//! Every layout is words of consecutive weights of one row's run (four int8 values, or two
//! int16 for AVX2's `VPMADDWD`), zero past the run: for each block of `lanes` output channels,
//! each row `r` and each group `g`, the block's `lanes` words, channel `j` at
//! `((block·rows + r)·groups + g)·lanes + j` (for aarch64's `SMMLA`, within each pair of groups
//! `g = 2h + i`, channel `j`'s two words next to each other: `((block·rows + r)·groups + 2h)·lanes
//! + 2j + i`); channels past `C_out` are zero. The ring GEMMs'
//! rows are the kernel rows (`k·C_in` values each, OHWI); the AVX2 GEMM of gathered receptive
//! fields (for rows too wide for its ring) has one row, the whole field (`k·k·C_in`).

use super::rows::RING;
use super::ConvParams;
use crate::kernels::KernelSet;
use core::mem::MaybeUninit;

/// Whether `p` is a dense convolution of the shape the ring GEMMs take (channels, `1 ≤ k ≤ 7`, a
/// stride, the output map the input's divided by it, the `k` padded rows fitting the ring); the
/// kernels check their buffers besides.
pub(crate) fn ring_shape(p: &ConvParams<'_>) -> bool {
    let (ih, iw, ic) = (p.input.height, p.input.width, p.input.channels);
    let (oh, ow, oc) = (p.output.height, p.output.width, p.output.channels);
    let (k, s) = (p.kernel, p.stride);
    !p.depthwise
        && ic > 0
        && oc > 0
        && (1..=7).contains(&k)
        && s > 0
        && (oh, ow) == (ih.div_ceil(s), iw.div_ceil(s))
        && k * (iw + 2 * (k / 2)) * ic + 64 <= RING
}

/// int16 values in the AVX2 GEMM's ring of padded rows (64 KiB on the stack), including 32 of
/// slack that the last pair of a row's last run may touch.
pub(crate) const RING16: usize = 32 * 1024;

/// Whether `p` is a dense convolution of the shape the AVX2 ring GEMM takes (as [`ring_shape`],
/// its `k` padded rows of int16 fitting [`RING16`]).
pub(crate) fn ring16_shape(p: &ConvParams<'_>) -> bool {
    let (ih, iw, ic) = (p.input.height, p.input.width, p.input.channels);
    let (k, s) = (p.kernel, p.stride);
    !p.depthwise
        && ic > 0
        && p.output.channels > 0
        && (1..=7).contains(&k)
        && s > 0
        && (p.output.height, p.output.width) == (ih.div_ceil(s), iw.div_ceil(s))
        && k * (iw + 2 * (k / 2)) * ic + 32 <= RING16
}

/// A dense kernel's packed layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Output channels per block.
    pub lanes: usize,
    /// Words per row and lane.
    pub groups: usize,
    /// Blocks of `lanes` channels.
    pub blocks: usize,
    /// Rows of each channel's weights.
    pub rows: usize,
    /// Values of one row.
    pub run: usize,
    /// Two int16 values a word (else four int8).
    pub wide: bool,
    /// `SMMLA` order: within each pair of groups, each channel's two words (its eight values)
    /// next to each other, so that 16 bytes hold two channels' eight values.
    pub mmla: bool,
}

/// Most values in one receptive field (`k·k·C_in`) the AVX2 GEMM takes.
pub(crate) const AVX2_DEPTH: usize = 1152;

impl Layout {
    /// The layout of table `set`'s dense kernel for `p`, where that kernel packs and takes `p`
    /// (its shape checks that do not depend on the buffers: a dense map, the ring of padded rows
    /// fitting, the receptive field not too deep); `None` elsewhere.
    pub(crate) fn of(set: KernelSet, p: &ConvParams<'_>) -> Option<Layout> {
        let (ic, oc, k) = (p.input.channels, p.output.channels, p.kernel);
        if set == KernelSet::X86Avx2 {
            // one output channel is the depth head (where its ring fits)
            if oc > 1 && ring16_shape(p) {
                // the ring GEMM: one row per kernel row
                return Some(Layout {
                    lanes: 8,
                    groups: (k * ic).div_ceil(2),
                    blocks: oc.div_ceil(8),
                    rows: k,
                    run: k * ic,
                    wide: true,
                    mmla: false,
                });
            }
            // the GEMM of gathered receptive fields: one row
            let depth = k * k * ic;
            return (!p.depthwise
                && ic > 0
                && oc > 1
                && k > 0
                && p.stride > 0
                && depth <= AVX2_DEPTH
                && (p.output.height, p.output.width)
                    == (
                        p.input.height.div_ceil(p.stride),
                        p.input.width.div_ceil(p.stride),
                    ))
                .then_some(Layout {
                    lanes: 8,
                    groups: depth.div_ceil(2),
                    blocks: oc.div_ceil(8),
                    rows: 1,
                    run: depth,
                    wide: true,
                    mmla: false,
                });
        }
        if !ring_shape(p) {
            return None;
        }
        let run = k * ic;
        match set {
            // 8-channel blocks for the 256-bit `VPDPBUSD` (one output channel is AVX2's head)
            KernelSet::X86AvxVnni if oc > 1 => Some(Layout {
                lanes: 8,
                groups: run.div_ceil(4),
                blocks: oc.div_ceil(8),
                rows: k,
                run,
                wide: false,
                mmla: false,
            }),
            // one output channel is the depth head, which vectorises along the run instead
            KernelSet::X86Avx512Vnni if oc > 1 => Some(Layout {
                lanes: 16,
                groups: run.div_ceil(4),
                blocks: oc.div_ceil(16),
                rows: k,
                run,
                wide: false,
                mmla: false,
            }),
            // groups a multiple of four (one 16-byte input load each); one output channel is
            // the depth head, which vectorises along the run instead
            KernelSet::Aarch64Neon | KernelSet::Aarch64NeonDot | KernelSet::Aarch64NeonI8mm
                if oc > 1 =>
            {
                Some(Layout {
                    lanes: 4,
                    groups: run.div_ceil(16) * 4,
                    blocks: oc.div_ceil(4),
                    rows: k,
                    run,
                    wide: false,
                    mmla: set == KernelSet::Aarch64NeonI8mm,
                })
            }
            _ => None,
        }
    }

    /// Words of one block.
    pub(crate) fn per_block(&self) -> usize {
        self.rows * self.groups * self.lanes
    }

    /// Words of all blocks.
    pub(crate) fn words(&self) -> usize {
        self.blocks * self.per_block()
    }

    /// Writes `p`'s weights in this layout into the first [`Layout::words`] words of `dst`
    /// (`false`, having written nothing, where `dst` is shorter or the weights are).
    pub(crate) fn pack(&self, p: &ConvParams<'_>, dst: &mut [MaybeUninit<i32>]) -> bool {
        let (oc, run) = (p.output.channels, self.run);
        let depth = self.rows * run;
        if dst.len() < self.words() || p.weights.len() < oc * depth {
            return false;
        }
        let per_word = if self.wide { 2 } else { 4 };
        // the words in order: (group, channel), or for SMMLA (group pair, channel, group)
        let (outer, inner) = if self.mmla {
            (self.groups.div_ceil(2), 2)
        } else {
            (self.groups, 1)
        };
        let mut at = 0;
        for b in 0..self.blocks {
            for r in 0..self.rows {
                for (go, j, gi) in (0..outer).flat_map(|go| {
                    (0..self.lanes).flat_map(move |j| (0..inner).map(move |gi| (go, j, gi)))
                }) {
                    let g = go * inner + gi;
                    let c = b * self.lanes + j;
                    let value = |i: usize| {
                        let row = &p.weights[c * depth + r * run..c * depth + (r + 1) * run];
                        row.get(per_word * g + i).copied().unwrap_or(0)
                    };
                    let word = match (c < oc, self.wide) {
                        (false, _) => 0,
                        (true, true) => {
                            (value(0) as i16 as u16 as u32 | (value(1) as i16 as u32) << 16) as i32
                        }
                        (true, false) => {
                            i32::from_le_bytes(core::array::from_fn(|i| value(i) as u8))
                        }
                    };
                    dst[at].write(word);
                    at += 1;
                }
            }
        }
        true
    }
}

/// Whether `p`'s prepared plan holds its weights in `layout` (what [`packed`] then returns).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn planned(p: &ConvParams<'_>, layout: &Layout) -> bool {
    p.prepared.layout == Some(*layout) && p.prepared.packed.len() == layout.words()
}

/// Whether the weights of `p` in table `set`'s layout are in its plan or fit a stack buffer of
/// `words` words: what a kernel that packs needs besides the shapes.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn packs(set: KernelSet, p: &ConvParams<'_>, words: usize) -> bool {
    Layout::of(set, p).is_some_and(|l| planned(p, &l) || l.words() <= words)
}

/// Packed weights: `p`'s prepared ones where the plan has this layout's, else packed into
/// `storage` (`None` where they do not fit it).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(super) fn packed<'s>(
    layout: &Layout,
    p: &'s ConvParams<'_>,
    storage: &'s mut [MaybeUninit<i32>],
) -> Option<&'s [i32]> {
    let words = layout.words();
    if planned(p, layout) {
        return Some(p.prepared.packed);
    }
    if !layout.pack(p, storage) {
        return None;
    }
    // SAFETY: `pack` wrote the first `words` words.
    Some(unsafe { core::slice::from_raw_parts(storage.as_ptr() as *const i32, words) })
}
