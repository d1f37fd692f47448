//! Tensor lifetimes and the greedy-by-size arena plan (tflite-micro's `GreedyMemoryPlanner`).

use crate::{LoadError, Op, TensorInfo, MAX_TENSORS};

/// Lifetime of each tensor as `(first, last)` op indices, inclusive: the input is alive from op 0,
/// a tensor from the op that writes it to the last op that reads it (the output to the end).
/// `None` for a tensor nothing writes or reads. Fails on an out-of-range id.
pub fn lifetimes(
    tensors: &[TensorInfo],
    ops: &[Op],
    input: u16,
) -> Result<heapless::Vec<Option<(u16, u16)>, MAX_TENSORS>, LoadError> {
    let mut life: heapless::Vec<Option<(u16, u16)>, MAX_TENSORS> = heapless::Vec::new();
    for _ in tensors {
        life.push(None).map_err(|_| LoadError::Graph {
            reason: "too many tensors",
        })?;
    }
    let slot =
        |life: &mut heapless::Vec<Option<(u16, u16)>, MAX_TENSORS>, id: u16, at: u16, op: u16| {
            let entry = life.get_mut(id as usize).ok_or(LoadError::Op {
                index: op,
                reason: "tensor index out of range",
            })?;
            *entry = Some(match *entry {
                None => (at, at),
                Some((first, last)) => (first.min(at), last.max(at)),
            });
            Ok::<(), LoadError>(())
        };
    slot(&mut life, input, 0, 0).map_err(|_| LoadError::Graph {
        reason: "input tensor index out of range",
    })?;
    for (i, op) in ops.iter().enumerate() {
        let i = i as u16;
        for id in op.inputs() {
            slot(&mut life, id, i, i)?;
        }
        if let Some(id) = op.output() {
            slot(&mut life, id, i, i)?;
        }
    }
    Ok(life)
}

fn overlaps(a: (u16, u16), b: (u16, u16)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// Checks that no two simultaneously alive tensors share bytes and every tensor fits the arena.
pub(crate) fn check_plan(
    tensors: &[TensorInfo],
    life: &[Option<(u16, u16)>],
    arena_bytes: u32,
) -> Result<(), LoadError> {
    for (i, t) in tensors.iter().enumerate() {
        let end = t.offset as u64 + t.size_bytes();
        if end > arena_bytes as u64 {
            return Err(LoadError::Tensor {
                index: i as u16,
                reason: "lies outside the arena",
            });
        }
    }
    for (i, a) in tensors.iter().enumerate() {
        let Some(la) = life.get(i).copied().flatten() else {
            continue;
        };
        for (j, b) in tensors.iter().enumerate().skip(i + 1) {
            let Some(lb) = life.get(j).copied().flatten() else {
                continue;
            };
            if !overlaps(la, lb) {
                continue;
            }
            let (a0, a1) = (a.offset as u64, a.offset as u64 + a.size_bytes());
            let (b0, b1) = (b.offset as u64, b.offset as u64 + b.size_bytes());
            if a0 < b1 && b0 < a1 {
                return Err(LoadError::ArenaOverlap {
                    a: i as u16,
                    b: j as u16,
                });
            }
        }
    }
    Ok(())
}

/// Assigns arena offsets greedily by size (largest first, lowest gap that fits among tensors alive
/// at the same time) and returns the arena size. Offsets are multiples of [`crate::ARENA_ALIGN`].
#[cfg(feature = "alloc")]
pub fn plan_arena(tensors: &mut [TensorInfo], ops: &[Op], input: u16) -> Result<u32, LoadError> {
    use alloc::vec::Vec;
    let life = lifetimes(tensors, ops, input)?;
    let align = crate::ARENA_ALIGN as u64;
    let mut order: Vec<usize> = (0..tensors.len()).filter(|&i| life[i].is_some()).collect();
    order.sort_by_key(|&i| (core::cmp::Reverse(tensors[i].size_bytes()), i));
    let mut placed: Vec<(usize, u64, u64)> = Vec::new(); // (tensor, start, end)
    let mut peak = 0u64;
    for &i in &order {
        let li = life[i].ok_or(LoadError::Graph {
            reason: "unplanned tensor",
        })?;
        let size = tensors[i].size_bytes();
        let mut busy: Vec<(u64, u64)> = placed
            .iter()
            .filter(|(j, _, _)| life[*j].is_some_and(|lj| overlaps(li, lj)))
            .map(|&(_, s, e)| (s, e))
            .collect();
        busy.sort_unstable();
        let mut offset = 0u64;
        for (s, e) in busy {
            if offset + size <= s {
                break;
            }
            offset = offset.max(e.div_ceil(align) * align);
        }
        placed.push((i, offset, offset + size));
        peak = peak.max(offset + size);
        tensors[i].offset = u32::try_from(offset).map_err(|_| LoadError::Graph {
            reason: "arena larger than 4 GiB",
        })?;
    }
    u32::try_from(peak.div_ceil(align) * align).map_err(|_| LoadError::Graph {
        reason: "arena larger than 4 GiB",
    })
}
