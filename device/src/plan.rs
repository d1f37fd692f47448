//! The prepared plan (tflite-micro's prepare/eval split): what [`crate::Engine::new`] derives
//! from the model's constants once, for the kernel table it runs with, so that a run only
//! computes. It lives without heap in the arena, after the activations the model plans
//! ([`Model::arena_bytes`](depthling_model::Model)), as 32-bit words:
//!
//! - word 0: the table it was made for ([`KernelSet::ALL`] index), word 1: the op count `n`;
//! - words `2 ..= n + 2`: where each op's record starts and the last one ends (word offsets
//!   from the first record);
//! - a convolution's record: the kernel it runs with ([`ConvKernel`] index, [`choose`]'s pick
//!   for the table and the shape, with this plan), `Σw` per output channel (the `−z·Σw` the
//!   kernels that sum raw inputs fold into the bias), then, where the table's dense kernel packs its weights (AVX-512
//!   VNNI: blocks of 16 channels, four int8 a word; NEON: blocks of 4; AVX2: blocks of 8, int16
//!   pairs), the packed weights. Other ops have empty records.
//!
//! A plan for a table without packing (reference, portable, SSE2, Cortex-M DSP) is
//! `Σ (C_out + 1) + n + 3` words; on Cortex-M the widened int16 weights stay a per-call stack copy,
//! since RAM, not flash, would hold them.

use depthling_model::{Model, Op};

use crate::kernels::conv::pack::Layout;
use crate::kernels::conv::{choose, weight_sum, ConvKernel, ConvParams, Prepared};
use crate::kernels::KernelSet;
use crate::{conv_params, Error};

/// Words before the first record: the table, the op count and `n + 1` offsets.
fn header_words(model: &Model<'_>) -> usize {
    2 + model.ops.len() + 1
}

/// Words of `model`'s plan for table `set`.
pub fn words(model: &Model<'_>, set: KernelSet) -> Result<usize, Error> {
    let mut total = header_words(model);
    for (i, op) in model.ops.iter().enumerate() {
        if let Op::Conv2d(c) = op {
            let p = conv_params(model, c, i as u16)?;
            total += 1 + p.output.channels + Layout::of(set, &p).map_or(0, |l| l.words());
        }
    }
    Ok(total)
}

/// Bytes of arena `model`'s plan for table `set` needs: its words and up to 3 bytes to align
/// them.
pub fn bytes(model: &Model<'_>, set: KernelSet) -> Result<usize, Error> {
    Ok(4 * words(model, set)? + 3)
}

/// Writes `model`'s plan for `set` into `dst` (at least [`words`] long), returning the words
/// written.
pub(crate) fn build(model: &Model<'_>, set: KernelSet, dst: &mut [i32]) -> Result<usize, Error> {
    let need = words(model, set)?;
    let n = model.ops.len();
    let too_small = Error::Internal { op: 0 };
    if dst.len() < need {
        return Err(too_small);
    }
    let table = KernelSet::ALL.iter().position(|&s| s == set).unwrap_or(0);
    dst[0] = table as i32;
    dst[1] = n as i32;
    let head = header_words(model);
    let mut at = head;
    for (i, op) in model.ops.iter().enumerate() {
        dst[2 + i] = (at - head) as i32;
        if let Op::Conv2d(c) = op {
            let p = conv_params(model, c, i as u16)?;
            let oc = p.output.channels;
            let record = at;
            at += 1;
            for (ch, w) in dst[at..at + oc].iter_mut().enumerate() {
                *w = weight_sum(&p, ch);
            }
            at += oc;
            let layout = Layout::of(set, &p);
            if let Some(layout) = layout {
                let words = layout.words();
                // SAFETY: i32 and MaybeUninit<i32> have the same layout; `pack` only writes.
                let slots = unsafe {
                    core::slice::from_raw_parts_mut(
                        dst[at..at + words].as_mut_ptr() as *mut core::mem::MaybeUninit<i32>,
                        words,
                    )
                };
                if !layout.pack(&p, slots) {
                    return Err(Error::Internal { op: i as u16 });
                }
                at += words;
            }
            // the kernel, chosen with what this record holds
            let kernel = {
                let prepared = Prepared {
                    weight_sums: &dst[record + 1..record + 1 + oc],
                    packed: &dst[record + 1 + oc..at],
                    layout,
                };
                choose(set, &ConvParams { prepared, ..p })
            };
            dst[record] = kernel.index() as i32;
        }
    }
    dst[2 + n] = (at - head) as i32;
    Ok(at)
}

/// The record of op `op` (convolution `p`) in a plan `words` for `set`, as the conv kernels
/// take it, and the kernel the plan chose for it; empty and `None` where the plan is for
/// another table or model (a plan is rebuilt whenever the table changes, so that is a bug,
/// answered by choosing and deriving per call).
pub(crate) fn conv<'p>(
    words: &'p [i32],
    set: KernelSet,
    op: usize,
    p: &ConvParams<'_>,
) -> (Prepared<'p>, Option<ConvKernel>) {
    let out_channels = p.output.channels;
    let table = KernelSet::ALL.iter().position(|&s| s == set).unwrap_or(0);
    let none = (Prepared::default(), None);
    let n = match words.get(1) {
        Some(&n) if words.first() == Some(&(table as i32)) && n >= 0 => n as usize,
        _ => return none,
    };
    let head = 2 + n + 1;
    let (Some(&start), Some(&end)) = (words.get(2 + op), words.get(3 + op)) else {
        return none;
    };
    let record = (start >= 0 && end >= start)
        .then(|| words.get(head + start as usize..head + end as usize))
        .flatten();
    match record {
        Some(r) if r.len() > out_channels => (
            Prepared {
                weight_sums: &r[1..1 + out_channels],
                packed: &r[1 + out_channels..],
                layout: Layout::of(set, p),
            },
            usize::try_from(r[0])
                .ok()
                .and_then(|k| ConvKernel::ALL.get(k).copied()),
        ),
        _ => none,
    }
}
