//! The vector output stage of a block of `N` output channels ([`Requant`]): decoded once, at
//! `Engine::new`, into the prepared plan ([`crate::plan`]) for the kernel the plan chose, so a
//! run copies a block's constants instead of reading each channel's `(multiplier, shift)`
//! bytes, checking them and deriving masks; without a plan (or with one made for another
//! kernel) [`block`] derives them per call as before. The same bits either way.
//!
//! A plan's stage ([`words`], [`write`]) is `3 + 5·P` words, `P` the output channels rounded up
//! to a multiple of 16 (the widest block; channels past the last repeat it): the zero point,
//! `act_min`, `act_max`, then `P` biases (with `−z·Σw` folded in for the `z` the kernel sums raw
//! inputs against, [`fold`]), `P` multipliers, `P` right shifts `e`, `P` masks `2^e − 1` and
//! `P` halves `mask >> 1`. It exists where the table has vector output stages (AVX2,
//! AVX-VNNI, AVX-512 VNNI, NEON) and every channel takes one (int8 without a LUT, multiplier below one):
//! elsewhere it is empty and the kernels take the scalar path as before.

use super::rows::folded;
use super::{ConvKernel, ConvParams, Finish, OutputStage};
use crate::kernels::KernelSet;

/// Channels a plan's stage is padded to a multiple of (the widest block, AVX-512's).
const PAD: usize = 16;

/// A block of `N` channels' int8 output stage: `bias + acc`, TFLite's
/// `MultiplyByQuantizedMultiplier` for multipliers below one (the right shift `e = −shift`, with
/// `mask = 2^e − 1` and `half = mask >> 1` for the rounding division), the zero point and the
/// activation clamp, per lane.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Requant<const N: usize> {
    pub(crate) bias: [i32; N],
    pub(crate) multiplier: [i32; N],
    pub(crate) shift: [i32; N],
    pub(crate) mask: [i32; N],
    pub(crate) half: [i32; N],
    pub(crate) zero_point: i32,
    pub(crate) act_min: i32,
    pub(crate) act_max: i32,
}

/// One channel's vector constants: `(bias, multiplier, e, mask, half)` and the block's
/// `(zero_point, act_min, act_max)`; `None` for f32 outputs, a LUT, or a multiplier of one or
/// more or a negative one (which the vector forms do not take).
fn lane(f: &Finish<'_>) -> Option<([i32; 5], [i32; 3])> {
    let Finish::Int8 {
        bias,
        requant,
        zero_point,
        act_min,
        act_max,
        lut: None,
    } = *f
    else {
        return None;
    };
    if requant.shift > 0 || requant.shift < -31 || requant.multiplier < 0 {
        return None;
    }
    let e = -requant.shift;
    let mask = ((1i64 << e) - 1) as i32;
    Some((
        [bias, requant.multiplier, e, mask, mask >> 1],
        [zero_point, act_min, act_max],
    ))
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
impl<const N: usize> Requant<N> {
    /// The block of `finish`'s channels; `None` (the scalar path) where one does not take the
    /// vector form.
    pub(in crate::kernels) fn new(finish: &[Finish<'_>; N]) -> Option<Self> {
        let mut v = Requant {
            bias: [0; N],
            multiplier: [0; N],
            shift: [0; N],
            mask: [0; N],
            half: [0; N],
            zero_point: 0,
            act_min: 0,
            act_max: 0,
        };
        for (j, f) in finish.iter().enumerate() {
            let ([bias, m, e, mask, half], uniform) = lane(f)?;
            (v.bias[j], v.multiplier[j], v.shift[j], v.mask[j], v.half[j]) =
                (bias, m, e, mask, half);
            (v.zero_point, v.act_min, v.act_max) = (uniform[0], uniform[1], uniform[2]);
        }
        Some(v)
    }

    /// Channels `c0 .. c0 + N` from a plan's stage `words` for `channels` outputs; `None` where
    /// `words` is not such a stage or the block runs past its padding.
    fn planned(words: &[i32], channels: usize, c0: usize) -> Option<Self> {
        let padded = channels.div_ceil(PAD) * PAD;
        if words.len() != 3 + 5 * padded || c0 + N > padded {
            return None;
        }
        let part = |i: usize| -> [i32; N] {
            let at = 3 + i * padded + c0;
            core::array::from_fn(|j| words[at + j])
        };
        Some(Requant {
            bias: part(0),
            multiplier: part(1),
            shift: part(2),
            mask: part(3),
            half: part(4),
            zero_point: words[0],
            act_min: words[1],
            act_max: words[2],
        })
    }
}

/// The `z` whose `−z·Σw` `kernel` folds into its vector stage's bias (0: it sums `x − z` itself),
/// or `None` where it has no per-channel vector stage.
pub(crate) fn fold(kernel: ConvKernel, p: &ConvParams<'_>) -> Option<i32> {
    let z = p.input_zero_point;
    match kernel {
        // unsigned inputs `x + 128`
        ConvKernel::VnniGemm | ConvKernel::AvxVnniGemm => Some(z.wrapping_add(128)),
        ConvKernel::VnniDepthwise
        | ConvKernel::Avx2Depthwise
        | ConvKernel::NeonGemm
        | ConvKernel::NeonDotGemm
        | ConvKernel::NeonMmlaGemm
        | ConvKernel::NeonDepthwise
        | ConvKernel::Avx2Head => Some(z),
        ConvKernel::Avx2Gemm | ConvKernel::Avx2Gathered | ConvKernel::Avx2DepthwiseWide => Some(0),
        ConvKernel::Reference
        | ConvKernel::Portable
        | ConvKernel::X86Blocks
        | ConvKernel::X86Avx2Blocks
        | ConvKernel::CortexM => None,
    }
}

/// Channel `c`'s output stage with `−z·Σw` in its bias (`z = 0`: the model's bias as it is).
pub(in crate::kernels) fn finish<'a>(p: &ConvParams<'a>, c: usize, z: i32) -> Finish<'a> {
    if z == 0 {
        Finish::new(&p.stage, p.bias, c)
    } else {
        folded(p, c, z)
    }
}

/// Channels `c0 .. c0 + N` of `p`'s vector output stage for `kernel` (past the last channel,
/// the last one's): the plan's where it holds the stage made for this kernel, else decoded;
/// `None` (the scalar path) where a channel does not take the vector form.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn block<const N: usize>(
    p: &ConvParams<'_>,
    kernel: ConvKernel,
    c0: usize,
) -> Option<Requant<N>> {
    let oc = p.output.channels;
    if p.prepared.kernel == Some(kernel) {
        if let Some(v) = Requant::planned(p.prepared.stage, oc, c0) {
            return Some(v);
        }
    }
    let z = fold(kernel, p)?;
    let f: [Finish<'_>; N] =
        core::array::from_fn(|j| finish(p, (c0 + j).min(oc.saturating_sub(1)), z));
    Requant::new(&f)
}

/// Words of `p`'s stage in a plan for `set`: `3 + 5·P` where the table has vector output
/// stages and every channel takes one, else 0.
pub(crate) fn words(set: KernelSet, p: &ConvParams<'_>) -> usize {
    let vector = matches!(
        set,
        KernelSet::X86Avx2
            | KernelSet::X86AvxVnni
            | KernelSet::X86Avx512Vnni
            | KernelSet::Aarch64Neon
            | KernelSet::Aarch64NeonDot
            | KernelSet::Aarch64NeonI8mm
    );
    let oc = p.output.channels;
    let int8 = matches!(p.stage, OutputStage::Int8 { lut: None, .. });
    if !vector || !int8 || oc == 0 || !(0..oc).all(|c| lane(&finish(p, c, 0)).is_some()) {
        return 0;
    }
    3 + 5 * oc.div_ceil(PAD) * PAD
}

/// Writes `p`'s stage for `kernel` into `dst` (exactly [`words`] long); the bias of a kernel
/// without a vector stage is the model's. `false` where `dst` is not that long or a channel
/// does not take the vector form.
pub(crate) fn write(p: &ConvParams<'_>, kernel: ConvKernel, dst: &mut [i32]) -> bool {
    let oc = p.output.channels;
    let padded = oc.div_ceil(PAD) * PAD;
    if oc == 0 || dst.len() != 3 + 5 * padded {
        return false;
    }
    let z = fold(kernel, p).unwrap_or(0);
    for c in 0..padded {
        let Some((lanes, uniform)) = lane(&finish(p, c.min(oc - 1), z)) else {
            return false;
        };
        dst[..3].copy_from_slice(&uniform);
        for (i, v) in lanes.into_iter().enumerate() {
            dst[3 + i * padded + c] = v;
        }
    }
    true
}
