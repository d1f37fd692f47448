//! The shape plumbing of an ONNX graph (integer arithmetic, Reshape, Slice, Gather, Split,
//! Transpose of shape data) and Pad.

use candle_core::{Device, Tensor};

use super::ops::{axis, bad, need, opt, Ctx, OpNode};
use super::value::{Ints, Value};
use crate::error::Result;

/// Numpy broadcasting of two integer tensors: the result shape and the value pairs.
/// A broadcast shape and the element pairs under it.
type Broadcast = (Vec<usize>, Vec<(i64, i64)>);

pub(super) fn broadcast_ints(a: &Ints, b: &Ints) -> Result<Broadcast> {
    let r = a.shape.len().max(b.shape.len());
    let dim = |s: &[usize], i: usize| (i + s.len()).checked_sub(r).map_or(1, |j| s[j]);
    let mut shape = Vec::with_capacity(r);
    for i in 0..r {
        let (x, y) = (dim(&a.shape, i), dim(&b.shape, i));
        if x != y && x != 1 && y != 1 {
            return Err(bad(format!(
                "shapes {:?} and {:?} do not broadcast",
                a.shape, b.shape
            )));
        }
        shape.push(x.max(y));
    }
    let count: usize = shape.iter().product();
    let index = |s: &[usize], mut flat: usize| {
        // flat index into the broadcast shape → flat index into s
        let mut idx = 0;
        let mut stride = 1;
        for i in (0..r).rev() {
            let coord = flat % shape[i];
            flat /= shape[i];
            let d = dim(s, i);
            if d != 1 {
                idx += coord * stride;
            }
            stride *= d;
        }
        idx
    };
    let pairs = (0..count)
        .map(|f| (a.data[index(&a.shape, f)], b.data[index(&b.shape, f)]))
        .collect();
    Ok((shape, pairs))
}

pub(super) fn concat_ints(parts: &[Ints], axis: usize) -> Result<Ints> {
    if axis != 0 || parts.iter().any(|p| p.shape.len() > 1) {
        return Err(bad(
            "Concat of integer tensors is supported for vectors only",
        ));
    }
    let data: Vec<i64> = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
    Ok(Ints::vector(data))
}

pub(super) fn transpose_ints(i: &Ints, perm: &[usize]) -> Result<Ints> {
    let r = i.shape.len();
    if perm.len() != r {
        return Err(bad("Transpose: perm does not match the rank"));
    }
    let shape: Vec<usize> = perm.iter().map(|&p| i.shape[p]).collect();
    let mut strides = vec![1usize; r];
    for k in (0..r.saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * i.shape[k + 1];
    }
    let count: usize = shape.iter().product();
    let mut data = Vec::with_capacity(count);
    for f in 0..count {
        let mut rem = f;
        let mut src = 0;
        for k in (0..r).rev() {
            let c = rem % shape[k];
            rem /= shape[k];
            src += c * strides[perm[k]];
        }
        data.push(i.data[src]);
    }
    Ok(Ints { shape, data })
}

/// ONNX Reshape's target: 0 copies the input's dimension (unless `allowzero`), −1 is inferred.
pub(super) fn reshape_dims(
    shape: &[usize],
    target: &[i64],
    allow_zero: bool,
) -> Result<Vec<usize>> {
    let total: usize = shape.iter().product();
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allow_zero => out.push(*shape.get(i).ok_or_else(|| {
                bad(format!(
                    "Reshape copies dimension {i}, which the input lacks"
                ))
            })?),
            t if t >= 0 => out.push(t as usize),
            _ => return Err(bad(format!("Reshape target {target:?} is not valid"))),
        }
    }
    if let Some(i) = infer {
        let known: usize = out.iter().product();
        if known == 0 || !total.is_multiple_of(known) {
            return Err(bad(format!("cannot reshape {shape:?} to {target:?}")));
        }
        out[i] = total / known;
    }
    if out.iter().product::<usize>() != total {
        return Err(bad(format!("cannot reshape {shape:?} to {target:?}")));
    }
    Ok(out)
}

pub(super) fn reshape_value(v: &Value, shape: Vec<usize>) -> Result<Value> {
    match v {
        Value::F(t) => Ok(Value::F(t.reshape(shape)?)),
        Value::I(i) => {
            if shape.iter().product::<usize>() != i.data.len() {
                return Err(bad(format!("cannot reshape {:?} to {shape:?}", i.shape)));
            }
            Ok(Value::I(Ints {
                shape,
                data: i.data.clone(),
            }))
        }
    }
}

pub(super) fn gather(n: &OpNode, data: &Value, idx: &Ints, dev: &Device) -> Result<Vec<Value>> {
    let shape = data.shape();
    let a = axis(n.int("axis", 0), shape.len())?;
    let len = shape[a] as i64;
    let ids: Vec<usize> = idx
        .data
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + len } else { i };
            if j < 0 || j >= len {
                Err(bad(format!("Gather index {i} out of range for {len}")))
            } else {
                Ok(j as usize)
            }
        })
        .collect::<Result<_>>()?;
    let mut out_shape: Vec<usize> = shape[..a].to_vec();
    out_shape.extend(&idx.shape);
    out_shape.extend(&shape[a + 1..]);
    match data {
        Value::I(d) => {
            let outer: usize = shape[..a].iter().product();
            let inner: usize = shape[a + 1..].iter().product();
            let mut out = Vec::with_capacity(outer * ids.len() * inner);
            for o in 0..outer {
                for &j in &ids {
                    let base = (o * shape[a] + j) * inner;
                    out.extend_from_slice(&d.data[base..base + inner]);
                }
            }
            Ok(vec![Value::I(Ints {
                shape: out_shape,
                data: out,
            })])
        }
        Value::F(t) => {
            let index = Tensor::new(ids.iter().map(|&i| i as u32).collect::<Vec<_>>(), dev)?;
            let y = t.index_select(&index, a)?;
            Ok(vec![Value::F(y.reshape(out_shape)?)])
        }
    }
}

pub(super) fn split(n: &OpNode, inputs: &[Option<Value>], cx: &Ctx<'_>) -> Result<Vec<Value>> {
    let t = need(inputs, 0)?.float(cx.device)?;
    let a = axis(n.int("axis", 0), t.rank())?;
    let len = t.dim(a)?;
    let parts = n.outputs.len().max(1);
    let sizes: Vec<usize> = match (cx.opset >= 13, opt(inputs, 1), n.ints("split")) {
        (true, Some(s), _) => s.ints()?.data.iter().map(|&v| v.max(0) as usize).collect(),
        (false, _, Some(s)) => s.iter().map(|&v| v.max(0) as usize).collect(),
        _ => {
            let each = len.div_ceil(parts);
            (0..parts)
                .map(|i| each.min(len.saturating_sub(i * each)))
                .collect()
        }
    };
    if sizes.iter().sum::<usize>() != len {
        return Err(bad(format!("Split sizes {sizes:?} do not add up to {len}")));
    }
    let mut start = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for s in sizes {
        out.push(Value::F(t.narrow(a, start, s)?));
        start += s;
    }
    Ok(out)
}

pub(super) fn slice(n: &OpNode, inputs: &[Option<Value>], cx: &Ctx<'_>) -> Result<Vec<Value>> {
    let v = need(inputs, 0)?;
    let (starts, ends, axes, steps) = if cx.opset >= 10 {
        let get = |i: usize| opt(inputs, i).map(|v| v.ints().map(|x| x.data)).transpose();
        (
            get(1)?.ok_or_else(|| bad("Slice needs starts"))?,
            get(2)?.ok_or_else(|| bad("Slice needs ends"))?,
            get(3)?,
            get(4)?,
        )
    } else {
        (
            n.ints("starts").unwrap_or_default(),
            n.ints("ends").unwrap_or_default(),
            n.ints("axes"),
            None,
        )
    };
    let shape = v.shape();
    let r = shape.len();
    let axes: Vec<usize> = match axes {
        Some(a) => a.iter().map(|&a| axis(a, r)).collect::<Result<_>>()?,
        None => (0..starts.len()).collect(),
    };
    // the indices kept along every axis
    let mut keep: Vec<Option<Vec<usize>>> = vec![None; r];
    for (k, &a) in axes.iter().enumerate() {
        let step = steps.as_ref().and_then(|s| s.get(k)).copied().unwrap_or(1);
        if step == 0 {
            return Err(bad("Slice with step 0"));
        }
        let d = shape[a] as i64;
        let start = *starts
            .get(k)
            .ok_or_else(|| bad("Slice: fewer starts than axes"))?;
        let end = *ends
            .get(k)
            .ok_or_else(|| bad("Slice: fewer ends than axes"))?;
        let wrap = |x: i64| if x < 0 { x + d } else { x };
        let idx: Vec<usize> = if step > 0 {
            let (s0, e0) = (wrap(start).clamp(0, d), wrap(end).clamp(0, d));
            (s0..e0)
                .step_by(step as usize)
                .map(|i| i as usize)
                .collect()
        } else {
            let (s0, e0) = (wrap(start).clamp(-1, d - 1), wrap(end).clamp(-1, d - 1));
            let mut v = Vec::new();
            let mut i = s0;
            while i > e0 {
                v.push(i as usize);
                i += step;
            }
            v
        };
        keep[a] = Some(idx);
    }
    match v {
        Value::F(t) => {
            let mut y = t.clone();
            for (a, idx) in keep.iter().enumerate() {
                let Some(idx) = idx else { continue };
                let contiguous = idx.windows(2).all(|p| p[1] == p[0] + 1);
                if contiguous && !idx.is_empty() {
                    if (idx[0], idx.len()) != (0, shape[a]) {
                        y = y.narrow(a, idx[0], idx.len())?;
                    }
                } else {
                    let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
                    y = y.index_select(&Tensor::new(ids, cx.device)?, a)?;
                }
            }
            Ok(vec![Value::F(y)])
        }
        Value::I(i) => {
            let mut cur = i.clone();
            for (a, idx) in keep.iter().enumerate() {
                let Some(idx) = idx else { continue };
                let outer: usize = cur.shape[..a].iter().product();
                let inner: usize = cur.shape[a + 1..].iter().product();
                let len = cur.shape[a];
                let mut data = Vec::with_capacity(outer * idx.len() * inner);
                for o in 0..outer {
                    for &j in idx {
                        let base = (o * len + j) * inner;
                        data.extend_from_slice(&cur.data[base..base + inner]);
                    }
                }
                cur.shape[a] = idx.len();
                cur.data = data;
            }
            Ok(vec![Value::I(cur)])
        }
    }
}

pub(super) fn pad(n: &OpNode, inputs: &[Option<Value>], cx: &Ctx<'_>) -> Result<Vec<Value>> {
    let t = need(inputs, 0)?.float(cx.device)?;
    let mode = n.string("mode", "constant");
    let (pads, value) = if cx.opset >= 11 {
        let p = need(inputs, 1)?.ints()?.data;
        let v = match opt(inputs, 2) {
            Some(v) => v
                .float(cx.device)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .first()
                .copied()
                .unwrap_or(0.0),
            None => 0.0,
        };
        (p, v)
    } else {
        (n.ints("pads").unwrap_or_default(), n.float("value", 0.0))
    };
    let r = t.rank();
    let axes: Vec<usize> = match opt(inputs, 3) {
        Some(a) => a
            .ints()?
            .data
            .iter()
            .map(|&a| axis(a, r))
            .collect::<Result<_>>()?,
        None => (0..r).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(bad(format!(
            "Pad: {} pads for {} axes",
            pads.len(),
            axes.len()
        )));
    }
    if mode != "constant" && mode != "edge" && mode != "reflect" {
        return Err(bad(format!("Pad mode {mode:?} is not supported")));
    }
    let mut y = t;
    for (k, &a) in axes.iter().enumerate() {
        let (before, after) = (pads[k], pads[k + axes.len()]);
        if before < 0 || after < 0 {
            return Err(bad("Pad with negative pads (cropping) is not supported"));
        }
        y = pad_axis(&y, a, before as usize, after as usize, &mode, value)?;
    }
    Ok(vec![Value::F(y)])
}

/// Pads one axis with a constant, by repeating the edge, or by reflection.
pub fn pad_axis(
    x: &Tensor,
    a: usize,
    before: usize,
    after: usize,
    mode: &str,
    value: f32,
) -> Result<Tensor> {
    if before == 0 && after == 0 {
        return Ok(x.clone());
    }
    let len = x.dim(a)?;
    let block = |n: usize, from_start: bool| -> Result<Option<Tensor>> {
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(match mode {
            "edge" => {
                let edge = x.narrow(a, if from_start { 0 } else { len - 1 }, 1)?;
                let mut shape = x.dims().to_vec();
                shape[a] = n;
                edge.broadcast_as(shape)?.contiguous()?
            }
            "reflect" => {
                if n >= len {
                    return Err(bad("reflect padding wider than the tensor"));
                }
                let idx: Vec<u32> = if from_start {
                    (1..=n).rev().map(|i| i as u32).collect()
                } else {
                    (0..n).map(|i| (len - 2 - i) as u32).collect()
                };
                x.index_select(&Tensor::new(idx, x.device())?, a)?
            }
            _ => {
                let mut shape = x.dims().to_vec();
                shape[a] = n;
                Tensor::full(value, shape, x.device())?
            }
        }))
    };
    let mut parts = Vec::with_capacity(3);
    if let Some(b) = block(before, true)? {
        parts.push(b);
    }
    parts.push(x.clone());
    if let Some(b) = block(after, false)? {
        parts.push(b);
    }
    Ok(Tensor::cat(&parts, a)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_targets_copy_and_infer() {
        assert_eq!(reshape_dims(&[2, 3, 4], &[0, -1], false).unwrap(), [2, 12]);
        assert_eq!(
            reshape_dims(&[2, 3, 4], &[4, 0, 2], false).unwrap(),
            [4, 3, 2]
        );
        assert!(reshape_dims(&[2, 3, 4], &[5, -1], false).is_err());
    }

    #[test]
    fn integer_broadcasting_and_transpose() {
        let a = Ints {
            shape: vec![2, 1],
            data: vec![1, 2],
        };
        let b = Ints::vector(vec![10, 20, 30]);
        let (shape, pairs) = broadcast_ints(&a, &b).unwrap();
        assert_eq!(shape, [2, 3]);
        assert_eq!(pairs[4], (2, 20));
        let t = transpose_ints(
            &Ints {
                shape: vec![2, 3],
                data: vec![0, 1, 2, 3, 4, 5],
            },
            &[1, 0],
        )
        .unwrap();
        assert_eq!((t.shape, t.data), (vec![3, 2], vec![0, 3, 1, 4, 2, 5]));
    }
}
