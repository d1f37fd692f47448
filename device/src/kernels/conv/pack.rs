//! The packed weight layouts of the dense AVX-512 VNNI and NEON kernels ([`super::vnni`],
//! [`super::neon`]): their sizes and the packing itself, on every target, so that a plan for any
//! table can be sized on the host (`depthling profile`) and built once at `Engine::new`; without
//! a plan the kernels pack per call into a stack buffer with the same functions.
//!
//! Both layouts are words of four consecutive weights of one kernel row's run (`k·C_in` values,
//! OHWI), zero past the run: for each block of `lanes` output channels, each kernel row `ky` and
//! each group `g`, the block's `lanes` words, channel `j` at
//! `((block·k + ky)·groups + g)·lanes + j`; channels past `C_out` are zero.

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

/// A dense kernel's packed layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Output channels per block.
    pub lanes: usize,
    /// Groups of four values per kernel row.
    pub groups: usize,
    /// Blocks of `lanes` channels.
    pub blocks: usize,
    pub kernel: usize,
}

impl Layout {
    /// The layout of table `set`'s dense kernel for `p`, where that kernel packs and takes `p`
    /// (its shape checks that do not depend on the buffers: a dense map, the ring of padded rows
    /// fitting); `None` elsewhere.
    pub(crate) fn of(set: KernelSet, p: &ConvParams<'_>) -> Option<Layout> {
        if !ring_shape(p) {
            return None;
        }
        let (ic, oc, k) = (p.input.channels, p.output.channels, p.kernel);
        let run = k * ic;
        match set {
            // one output channel is the depth head, which vectorises along the run instead
            KernelSet::X86Avx512Vnni if oc > 1 => Some(Layout {
                lanes: 16,
                groups: run.div_ceil(4),
                blocks: oc.div_ceil(16),
                kernel: k,
            }),
            // groups a multiple of four (one 16-byte input load each)
            KernelSet::Aarch64Neon | KernelSet::Aarch64NeonDot => Some(Layout {
                lanes: 4,
                groups: run.div_ceil(16) * 4,
                blocks: oc.div_ceil(4),
                kernel: k,
            }),
            _ => None,
        }
    }

    /// Words of one block.
    pub(crate) fn per_block(&self) -> usize {
        self.kernel * self.groups * self.lanes
    }

    /// Words of all blocks.
    pub(crate) fn words(&self) -> usize {
        self.blocks * self.per_block()
    }

    /// Writes `p`'s weights in this layout into the first [`Layout::words`] words of `dst`
    /// (`false`, having written nothing, where `dst` is shorter or the weights are).
    pub(crate) fn pack(&self, p: &ConvParams<'_>, dst: &mut [MaybeUninit<i32>]) -> bool {
        let (k, oc) = (self.kernel, p.output.channels);
        let run = k * p.input.channels;
        let depth = k * run;
        if dst.len() < self.words() || p.weights.len() < oc * depth {
            return false;
        }
        let mut at = 0;
        for b in 0..self.blocks {
            for ky in 0..k {
                for g in 0..self.groups {
                    for j in 0..self.lanes {
                        let c = b * self.lanes + j;
                        let mut v = [0u8; 4];
                        if c < oc {
                            let row = &p.weights[c * depth + ky * run..c * depth + (ky + 1) * run];
                            for (i, v) in v.iter_mut().enumerate() {
                                if let Some(&w) = row.get(4 * g + i) {
                                    *v = w as u8;
                                }
                            }
                        }
                        dst[at].write(i32::from_le_bytes(v));
                        at += 1;
                    }
                }
            }
        }
        true
    }
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
    if p.prepared.packed.len() == words {
        return Some(p.prepared.packed);
    }
    if !layout.pack(p, storage) {
        return None;
    }
    // SAFETY: `pack` wrote the first `words` words.
    Some(unsafe { core::slice::from_raw_parts(storage.as_ptr() as *const i32, words) })
}
