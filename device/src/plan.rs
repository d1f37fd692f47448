//! The prepared plan (tflite-micro's prepare/eval split): what [`crate::Engine::new`] derives
//! from the model's constants once, for the kernel table it runs with, so that a run only
//! computes. It lives without heap in the arena, after the activations the model plans
//! ([`Model::arena_bytes`](depthling_model::Model)), as 32-bit words:
//!
//! - word 0: the table it was made for ([`KernelSet::ALL`] index), word 1: the op count `n`;
//! - words `2 ..= n + 2`: where each op's record starts and the last one ends (word offsets
//!   from the first record);
//! - a convolution's record: the kernel it runs with ([`ConvKernel`] index, [`choose`]'s pick
//!   for the table and the shape, with this plan), the lengths `L`, `S`, `D` of its last three
//!   parts, `Σw` per output channel (the `−z·Σw` the kernels that sum raw inputs fold into the
//!   bias), then `L` words of packed weights where the table's dense kernel packs them (AVX-512
//!   VNNI: blocks of 16 channels, four int8 a word; AVX-VNNI: blocks of 8, four int8 a word;
//!   NEON: blocks of 4; AVX2: blocks of 8, int16
//!   pairs), `S` words of the vector output stage for the chosen kernel where the table has one
//!   and every channel takes it ([`stage`]: biases with `−z·Σw` folded, multipliers, shifts,
//!   masks; the run copies a block's instead of decoding the model's bytes), and `D` words of a
//!   ring depthwise kernel's widened taps (AVX2: `(w, 0)` words, NEON: int16). Other ops have
//!   empty records.
//!
//! A plan for a table without packing or vector stages (reference, portable, SSE2, Cortex-M
//! DSP) is `Σ (C_out + 4) + n + 3` words; on Cortex-M the widened int16 weights stay a
//! per-call stack copy and the output constants are read from the model's bytes (in flash):
//! a plan in RAM would hold what flash already does, at 20 bytes a channel.

use depthling_model::{Model, Op};

use crate::kernels::conv::pack::Layout;
use crate::kernels::conv::rows::{widened_words, write_widened};
use crate::kernels::conv::{choose, stage, weight_sum, ConvKernel, ConvParams, Prepared};
use crate::kernels::KernelSet;
use crate::{conv_params, Error};

/// Words before the first record: the table, the op count and `n + 1` offsets.
fn header_words(model: &Model<'_>) -> usize {
    2 + model.ops.len() + 1
}

/// Words of a convolution's record before its `Σw`: the kernel and three lengths.
const RECORD_HEAD: usize = 4;

/// The lengths of `p`'s packed weights, vector stage and widened taps in a plan for `set`.
fn parts(set: KernelSet, p: &ConvParams<'_>) -> [usize; 3] {
    [
        Layout::of(set, p).map_or(0, |l| l.words()),
        stage::words(set, p),
        widened_words(set, p),
    ]
}

/// Words of convolution `p`'s record in a plan for `set`.
pub(crate) fn record_words(set: KernelSet, p: &ConvParams<'_>) -> usize {
    RECORD_HEAD + p.output.channels + parts(set, p).iter().sum::<usize>()
}

/// Words of `model`'s plan for table `set`.
pub fn words(model: &Model<'_>, set: KernelSet) -> Result<usize, Error> {
    let mut total = header_words(model);
    for (i, op) in model.ops.iter().enumerate() {
        if let Op::Conv2d(c) = op {
            total += record_words(set, &conv_params(model, c, i as u16)?);
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
    if dst.len() < need {
        return Err(Error::Internal { op: 0 });
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
            let len = record_words(set, &p);
            if !write_record(set, &p, &mut dst[at..at + len]) {
                return Err(Error::Internal { op: i as u16 });
            }
            at += len;
        }
    }
    dst[2 + n] = (at - head) as i32;
    Ok(at)
}

/// Writes convolution `p`'s record for `set` into `dst` (exactly [`record_words`] long):
/// `false` where it is not that long or a part cannot be made (a bug: the lengths come from the
/// same functions).
pub(crate) fn write_record(set: KernelSet, p: &ConvParams<'_>, dst: &mut [i32]) -> bool {
    let oc = p.output.channels;
    let [packed, stages, widened] = parts(set, p);
    if dst.len() != record_words(set, p) {
        return false;
    }
    for (w, len) in dst[1..RECORD_HEAD]
        .iter_mut()
        .zip([packed, stages, widened])
    {
        *w = len as i32;
    }
    let sums = RECORD_HEAD..RECORD_HEAD + oc;
    for (ch, w) in dst[sums.clone()].iter_mut().enumerate() {
        *w = weight_sum(p, ch);
    }
    let packed = sums.end..sums.end + packed;
    let layout = Layout::of(set, p);
    if let Some(layout) = layout {
        let words = &mut dst[packed.clone()];
        // SAFETY: i32 and MaybeUninit<i32> have the same layout; `pack` only writes.
        let slots = unsafe {
            core::slice::from_raw_parts_mut(
                words.as_mut_ptr() as *mut core::mem::MaybeUninit<i32>,
                words.len(),
            )
        };
        if !layout.pack(p, slots) {
            return false;
        }
    }
    // the kernel, chosen with what the record holds so far; then its output stage (the bias
    // folded as it sums) and the widened taps
    let (written, tail) = dst.split_at_mut(packed.end);
    let prepared = Prepared {
        weight_sums: &written[sums],
        packed: &written[packed],
        layout,
        ..Prepared::default()
    };
    let with = ConvParams { prepared, ..*p };
    let kernel = choose(set, &with);
    let (stage_words, widened_words) = tail.split_at_mut(stages);
    if stages > 0 && !stage::write(&with, kernel, stage_words) {
        return false;
    }
    if widened > 0 && !write_widened(set, p, widened_words) {
        return false;
    }
    written[0] = kernel.index() as i32;
    true
}

/// Convolution `p`'s record `r` for `set` as the kernels take it, and the kernel it records;
/// empty and `None` where its lengths do not add up.
pub(crate) fn parse<'p>(
    r: &'p [i32],
    set: KernelSet,
    p: &ConvParams<'_>,
) -> (Prepared<'p>, Option<ConvKernel>) {
    let len = |i: usize| r.get(i).and_then(|&n| usize::try_from(n).ok());
    let (Some(packed), Some(stages), Some(widened)) = (len(1), len(2), len(3)) else {
        return (Prepared::default(), None);
    };
    let sums = RECORD_HEAD..RECORD_HEAD + p.output.channels;
    if r.len() != sums.end + packed + stages + widened {
        return (Prepared::default(), None);
    }
    let (packed, rest) = r[sums.end..].split_at(packed);
    let (stage, widened) = rest.split_at(stages);
    let kernel = usize::try_from(r[0])
        .ok()
        .and_then(|k| ConvKernel::ALL.get(k).copied());
    (
        Prepared {
            weight_sums: &r[sums],
            packed,
            layout: Layout::of(set, p),
            kernel,
            stage,
            depthwise: widened,
        },
        kernel,
    )
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
        Some(r) => parse(r, set, p),
        None => none,
    }
}
