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
//!   ring depthwise kernel's widened taps (AVX2 and AVX-512 VNNI: `(w, 0)` words, NEON:
//!   int16);
//! - a global average pool's record: one word, how many of the ops after it run fused with it
//!   (where it starts a squeeze-excitation, [`squeeze_excitation`]: pool → 1×1 convolutions →
//!   mul in one step, the pooled vector, the hidden layers and the gate in stack buffers instead
//!   of the arena; 0 on the reference table, which runs every op on its own). Other ops have
//!   empty records.
//!
//! A plan for a table without packing or vector stages (reference, portable, SSE2, Cortex-M
//! DSP) is `Σ (C_out + 4) + P + n + 3` words (`P` the global average pools); on Cortex-M the
//! widened int16 weights stay a per-call stack copy and the output constants are read from the model's bytes (in flash):
//! a plan in RAM would hold what flash already does, at 20 bytes a channel.

use depthling_model::{DType, Model, Op, TensorId};

use crate::kernels::conv::pack::Layout;
use crate::kernels::conv::rows::{widened_words, write_widened};
use crate::kernels::conv::{choose, matvec, stage, weight_sum, ConvKernel, ConvParams, Prepared};
use crate::kernels::KernelSet;
use crate::{conv_params, Error};

/// Words before the first record: the table, the op count and `n + 1` offsets.
fn header_words(model: &Model<'_>) -> usize {
    2 + model.ops.len() + 1
}

/// Words of a convolution's record before its `Σw`: the kernel and three lengths.
const RECORD_HEAD: usize = 4;

/// The layout of `p`'s packed weights in a plan for `set`: the table's dense kernel's, none for
/// a convolution the table runs as a matrix-vector product ([`matvec`]).
fn layout(set: KernelSet, p: &ConvParams<'_>) -> Option<Layout> {
    (!matvec(set, p)).then(|| Layout::of(set, p)).flatten()
}

/// The lengths of `p`'s packed weights, vector stage and widened taps in a plan for `set`
/// (none for a convolution the table runs as a matrix-vector product, [`matvec`]).
fn parts(set: KernelSet, p: &ConvParams<'_>) -> [usize; 3] {
    if matvec(set, p) {
        return [0; 3];
    }
    [
        layout(set, p).map_or(0, |l| l.words()),
        stage::words(set, p),
        widened_words(set, p),
    ]
}

/// Words of convolution `p`'s record in a plan for `set`.
pub(crate) fn record_words(set: KernelSet, p: &ConvParams<'_>) -> usize {
    RECORD_HEAD + p.output.channels + parts(set, p).iter().sum::<usize>()
}

/// Most channels of a fused squeeze-excitation's pooled vector, hidden layer and gate: each
/// is a stack buffer of this many bytes while it runs.
pub(crate) const SE_CHANNELS: usize = 1024;

/// Most 1×1 convolutions between the pool and the multiply of a fused squeeze-excitation.
const SE_CONVS: usize = 3;

/// How many ops after op `i` of `model` run fused with it as a squeeze-excitation (0: none): a
/// global average pool of `x`, one to three 1×1 convolutions in a chain from the pooled vector
/// (the last one's output the gate), and `x` multiplied by the gate, where every intermediate
/// is an int8 1×1 map of at most [`SE_CHANNELS`] channels that no other op reads and that is
/// not the model's output. The count is the convolutions and the multiply.
pub(crate) fn squeeze_excitation(model: &Model<'_>, i: usize) -> usize {
    let ops = &model.ops;
    let Some(Op::GlobalAvgPool {
        input: x,
        output: pooled,
        ..
    }) = ops.get(i)
    else {
        return 0;
    };
    let small = |id: TensorId| {
        model.tensor(id).is_some_and(|t| {
            (t.height, t.width, t.dtype) == (1, 1, DType::I8) && t.channels as usize <= SE_CHANNELS
        })
    };
    let mut gate = *pooled;
    let mut intermediates = [*pooled; SE_CONVS + 1];
    let mut convs = 0;
    while let Some(Op::Conv2d(c)) = ops.get(i + 1 + convs) {
        let pointwise = c.kernel == 1 && c.stride == 1 && !c.depthwise;
        if convs == SE_CONVS || c.input != gate || !pointwise {
            return 0;
        }
        gate = c.output;
        convs += 1;
        intermediates[convs] = gate;
    }
    let last = i + 1 + convs;
    let Some(Op::Mul { input, scale, .. }) = ops.get(last) else {
        return 0;
    };
    let private = |id: TensorId| {
        model.output() != Some(id)
            && ops
                .iter()
                .enumerate()
                .all(|(j, op)| (i + 1..=last).contains(&j) || !op.inputs().any(|t| t == id))
    };
    let fused = convs > 0
        && input == x
        && *scale == gate
        && intermediates[..=convs]
            .iter()
            .all(|&t| small(t) && private(t));
    if fused {
        convs + 1
    } else {
        0
    }
}

/// The record of op `i` when it is not a convolution: a global average pool's one word of fused
/// ops (0 on the reference table), nothing for the others.
fn other_record(model: &Model<'_>, set: KernelSet, i: usize) -> Option<i32> {
    match model.ops.get(i) {
        Some(Op::GlobalAvgPool { .. }) => Some(if set == KernelSet::Reference {
            0
        } else {
            squeeze_excitation(model, i) as i32
        }),
        _ => None,
    }
}

/// Words of `model`'s plan for table `set`.
pub fn words(model: &Model<'_>, set: KernelSet) -> Result<usize, Error> {
    let mut total = header_words(model);
    for (i, op) in model.ops.iter().enumerate() {
        if let Op::Conv2d(c) = op {
            total += record_words(set, &conv_params(model, c, i as u16)?);
        } else if other_record(model, set, i).is_some() {
            total += 1;
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
        } else if let Some(word) = other_record(model, set, i) {
            dst[at] = word;
            at += 1;
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
    let layout = layout(set, p);
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
            layout: layout(set, p),
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
    match record(words, set, op) {
        Some(r) => parse(r, set, p),
        None => (Prepared::default(), None),
    }
}

/// How many of the ops after op `op` run fused with it, as the plan `words` for `set` records
/// (2 to 4 where it starts a squeeze-excitation); 0 where it records none or is for another
/// table.
pub(crate) fn fused(words: &[i32], set: KernelSet, op: usize) -> usize {
    match record(words, set, op) {
        Some(&[n]) if (2..=SE_CONVS as i32 + 1).contains(&n) => n as usize,
        _ => 0,
    }
}

/// Op `op`'s record in a plan `words` for `set`; `None` where the plan is for another table or
/// its offsets do not hold.
fn record(words: &[i32], set: KernelSet, op: usize) -> Option<&[i32]> {
    let table = KernelSet::ALL.iter().position(|&s| s == set).unwrap_or(0);
    let n = match words.get(1) {
        Some(&n) if words.first() == Some(&(table as i32)) && n >= 0 => n as usize,
        _ => return None,
    };
    let head = 2 + n + 1;
    let (&start, &end) = (words.get(2 + op)?, words.get(3 + op)?);
    (start >= 0 && end >= start)
        .then(|| words.get(head + start as usize..head + end as usize))
        .flatten()
}
