//! The ONNX operators an imported teacher runs, each on candle tensors with autograd (float data)
//! or on host integers (shape data). Convolutions, depthwise convolutions and 2× bilinear resizes
//! go through depthling's fast custom ops where the node's attributes match them.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use tract_onnx::pb::AttributeProto;

use super::value::{from_proto, Ints, Value};
use crate::error::{Error, Result};

/// The operators the importer runs (opsets 11–18 of the default domain).
pub const SUPPORTED: &[&str] = &[
    "Abs",
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvTranspose",
    "Div",
    "Elu",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LayerNormalization",
    "LeakyRelu",
    "Log",
    "MatMul",
    "MaxPool",
    "Mul",
    "Neg",
    "Pad",
    "Pow",
    "PRelu",
    "Reciprocal",
    "ReduceMean",
    "Relu",
    "Reshape",
    "Resize",
    "Shape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Softplus",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
    "Upsample",
];

/// One node of the graph, as read from the file.
#[derive(Clone, Debug)]
pub struct OpNode {
    pub name: String,
    pub op: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: HashMap<String, AttributeProto>,
}

impl OpNode {
    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attrs.get(name)
    }

    fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map_or(default, |a| a.i)
    }

    fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map_or(default, |a| a.f)
    }

    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.attr(name).map_or(default.to_string(), |a| {
            String::from_utf8_lossy(&a.s).into_owned()
        })
    }
}

/// What a node needs besides its inputs.
pub struct Ctx<'a> {
    pub device: &'a Device,
    pub opset: i64,
    /// Use depthling's custom convolution and bilinear ops where they apply.
    pub custom_ops: bool,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Runtime(msg.into())
}

/// Input `i`, which must be present.
fn need(inputs: &[Option<Value>], i: usize) -> Result<&Value> {
    inputs
        .get(i)
        .and_then(|v| v.as_ref())
        .ok_or_else(|| bad(format!("input {i} is missing")))
}

fn opt(inputs: &[Option<Value>], i: usize) -> Option<&Value> {
    inputs.get(i).and_then(|v| v.as_ref())
}

/// An axis attribute (possibly negative) for a tensor of `rank` dimensions.
fn axis(a: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if v < 0 || v >= r.max(1) {
        return Err(bad(format!("axis {a} out of range for rank {rank}")));
    }
    Ok(v as usize)
}

/// Runs one node; returns its outputs in order.
pub fn eval(n: &OpNode, inputs: &[Option<Value>], cx: &Ctx<'_>) -> Result<Vec<Value>> {
    let dev = cx.device;
    let x = |i: usize| -> Result<Tensor> { need(inputs, i)?.float(dev) };
    let one = |t: Tensor| Ok(vec![Value::F(t)]);
    match n.op.as_str() {
        "Identity" => Ok(vec![need(inputs, 0)?.clone()]),
        "Constant" => constant(n, dev),
        "Relu" => one(x(0)?.relu()?),
        "Sigmoid" => one(candle_nn::ops::sigmoid(&x(0)?)?),
        "Tanh" => one(x(0)?.tanh()?),
        "Exp" => one(x(0)?.exp()?),
        "Log" => one(x(0)?.log()?),
        "Sqrt" => one(x(0)?.sqrt()?),
        "Abs" => one(x(0)?.abs()?),
        "Neg" => one(x(0)?.neg()?),
        "Reciprocal" => one(x(0)?.recip()?),
        "Erf" => one(x(0)?.erf()?),
        "Gelu" => match n.string("approximate", "none").as_str() {
            "tanh" => one(x(0)?.gelu()?),
            _ => one(x(0)?.gelu_erf()?),
        },
        "LeakyRelu" => {
            let t = x(0)?;
            let a = n.float("alpha", 0.01) as f64;
            one((t.relu()? - (t.neg()?.relu()? * a)?)?)
        }
        "Elu" => {
            let t = x(0)?;
            let a = n.float("alpha", 1.0) as f64;
            // x for x > 0, α(eˣ − 1) otherwise
            let neg = ((t.minimum(0f32)?.exp()? - 1.0)? * a)?;
            one((t.relu()? + neg)?)
        }
        "PRelu" => {
            let t = x(0)?;
            let slope = x(1)?;
            let slope = unidirectional(&slope, t.rank())?;
            one((t.relu()? - t.neg()?.relu()?.broadcast_mul(&slope)?)?)
        }
        "HardSigmoid" => {
            let (a, b) = (n.float("alpha", 0.2) as f64, n.float("beta", 0.5) as f64);
            one(x(0)?.affine(a, b)?.clamp(0f32, 1f32)?)
        }
        "HardSwish" => {
            let t = x(0)?;
            one((&t * t.affine(1.0 / 6.0, 0.5)?.clamp(0f32, 1f32)?)?)
        }
        "Softplus" => {
            // ln(1 + eˣ) = max(x, 0) + ln(1 + e^−|x|): no overflow for large x
            let t = x(0)?;
            one((t.relu()? + (t.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
        }
        "Clip" => {
            let t = x(0)?;
            let (lo, hi) = if cx.opset < 11 {
                (
                    Some(n.float("min", f32::MIN)),
                    Some(n.float("max", f32::MAX)),
                )
            } else {
                let scalar = |i: usize| -> Result<Option<f32>> {
                    match opt(inputs, i) {
                        None => Ok(None),
                        Some(v) => Ok(Some(
                            v.float(dev)?
                                .flatten_all()?
                                .to_vec1::<f32>()?
                                .first()
                                .copied()
                                .ok_or_else(|| bad("Clip bound is empty"))?,
                        )),
                    }
                };
                (scalar(1)?, scalar(2)?)
            };
            let mut y = t;
            if let Some(lo) = lo {
                y = y.maximum(lo)?;
            }
            if let Some(hi) = hi {
                y = y.minimum(hi)?;
            }
            one(y)
        }
        "Add" | "Sub" | "Mul" | "Div" => binary(n, need(inputs, 0)?, need(inputs, 1)?, dev),
        "Pow" => {
            let (a, b) = (x(0)?, need(inputs, 1)?);
            match b.shape().iter().product::<usize>() {
                1 => {
                    let e = b.float(dev)?.flatten_all()?.to_vec1::<f32>()?[0] as f64;
                    if e == 2.0 {
                        one(a.sqr()?)
                    } else if e == 1.0 {
                        one(a)
                    } else if e == 0.5 {
                        one(a.sqrt()?)
                    } else {
                        one(a.powf(e)?)
                    }
                }
                _ => one(a.log()?.broadcast_mul(&b.float(dev)?)?.exp()?),
            }
        }
        "MatMul" => one(x(0)?.broadcast_matmul(&x(1)?)?),
        "Gemm" => {
            let (mut a, mut b) = (x(0)?, x(1)?);
            if n.int("transA", 0) != 0 {
                a = a.t()?;
            }
            if n.int("transB", 0) != 0 {
                b = b.t()?;
            }
            let mut y = (a.matmul(&b)? * n.float("alpha", 1.0) as f64)?;
            if let Some(c) = opt(inputs, 2) {
                y = y.broadcast_add(&(c.float(dev)? * n.float("beta", 1.0) as f64)?)?;
            }
            one(y)
        }
        "Softmax" => {
            let t = x(0)?;
            let default = if cx.opset >= 13 { -1 } else { 1 };
            let a = axis(n.int("axis", default), t.rank())?;
            if cx.opset < 13 && a + 1 != t.rank() {
                return Err(bad(format!(
                    "Softmax before opset 13 over axis {a} of a rank-{} tensor (coerced to 2-D) is not supported",
                    t.rank()
                )));
            }
            one(candle_nn::ops::softmax(&t, a)?)
        }
        "LayerNormalization" => {
            let t = x(0)?;
            let a = axis(n.int("axis", -1), t.rank())?;
            let eps = n.float("epsilon", 1e-5) as f64;
            let dims: Vec<usize> = (a..t.rank()).collect();
            let mut mean = t.clone();
            for &d in dims.iter().rev() {
                mean = mean.mean_keepdim(d)?;
            }
            let c = t.broadcast_sub(&mean)?;
            let mut var = c.sqr()?;
            for &d in dims.iter().rev() {
                var = var.mean_keepdim(d)?;
            }
            let mut y = c.broadcast_div(&(var + eps)?.sqrt()?)?;
            y = y.broadcast_mul(&x(1)?)?;
            if let Some(b) = opt(inputs, 2) {
                y = y.broadcast_add(&b.float(dev)?)?;
            }
            one(y)
        }
        "BatchNormalization" => {
            let t = x(0)?;
            let (scale, bias, mean, var) = (x(1)?, x(2)?, x(3)?, x(4)?);
            let eps = n.float("epsilon", 1e-5) as f64;
            let c = scale.elem_count();
            let shape = channel_shape(t.rank(), c);
            let k = scale.div(&(var + eps)?.sqrt()?)?;
            let shift = (bias - mean.mul(&k)?)?;
            one(t
                .broadcast_mul(&k.reshape(shape.clone())?)?
                .broadcast_add(&shift.reshape(shape)?)?)
        }
        "GlobalAveragePool" => {
            let t = x(0)?;
            let mut y = t.clone();
            for d in (2..t.rank()).rev() {
                y = y.mean_keepdim(d)?;
            }
            one(y)
        }
        "ReduceMean" => {
            let t = x(0)?;
            let axes = if cx.opset >= 18 {
                opt(inputs, 1)
                    .map(|v| v.ints())
                    .transpose()?
                    .map(|i| i.data)
            } else {
                n.ints("axes")
            };
            let keep = n.int("keepdims", 1) != 0;
            let mut axes: Vec<usize> = match axes {
                Some(a) if !a.is_empty() => a
                    .iter()
                    .map(|&a| axis(a, t.rank()))
                    .collect::<Result<_>>()?,
                _ if n.int("noop_with_empty_axes", 0) != 0 => return one(t),
                _ => (0..t.rank()).collect(),
            };
            axes.sort_unstable();
            let mut y = t;
            for &a in axes.iter().rev() {
                y = if keep { y.mean_keepdim(a)? } else { y.mean(a)? };
            }
            one(y)
        }
        "Conv" => conv(n, &x(0)?, &x(1)?, opt(inputs, 2), cx),
        "ConvTranspose" => conv_transpose(n, &x(0)?, &x(1)?, opt(inputs, 2), dev),
        "MaxPool" | "AveragePool" => pool(n, &x(0)?, dev),
        "Resize" | "Upsample" => super::resize::resize(n, inputs, cx),
        "Concat" => {
            let vals: Vec<&Value> = inputs.iter().flatten().collect();
            let rank = vals.first().map(|v| v.shape().len()).unwrap_or(1);
            let a = axis(n.int("axis", 0), rank)?;
            if vals.iter().all(|v| matches!(v, Value::I(_))) {
                let ints: Vec<Ints> = vals.iter().map(|v| v.ints()).collect::<Result<_>>()?;
                return Ok(vec![Value::I(concat_ints(&ints, a)?)]);
            }
            let ts: Vec<Tensor> = vals.iter().map(|v| v.float(dev)).collect::<Result<_>>()?;
            one(Tensor::cat(&ts, a)?)
        }
        "Split" => split(n, inputs, cx),
        "Slice" => slice(n, inputs, cx),
        "Pad" => pad(n, inputs, cx),
        "Shape" => {
            let s: Vec<i64> = need(inputs, 0)?.shape().iter().map(|&d| d as i64).collect();
            let r = s.len() as i64;
            let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let start = clampi(n.int("start", 0));
            let end = n.attr("end").map_or(s.len(), |a| clampi(a.i));
            Ok(vec![Value::I(Ints::vector(
                s.get(start..end.max(start)).unwrap_or(&[]).to_vec(),
            ))])
        }
        "Gather" => gather(n, need(inputs, 0)?, &need(inputs, 1)?.ints()?, dev),
        "Unsqueeze" | "Squeeze" => {
            let v = need(inputs, 0)?;
            let axes = if cx.opset >= 13 {
                opt(inputs, 1)
                    .map(|a| a.ints())
                    .transpose()?
                    .map(|a| a.data)
            } else {
                n.ints("axes")
            };
            let shape = v.shape();
            let new = if n.op == "Unsqueeze" {
                let axes = axes.ok_or_else(|| bad("Unsqueeze needs axes"))?;
                let r = shape.len() + axes.len();
                let mut ax: Vec<usize> = axes.iter().map(|&a| axis(a, r)).collect::<Result<_>>()?;
                ax.sort_unstable();
                let mut out = shape.clone();
                for a in ax {
                    out.insert(a, 1);
                }
                out
            } else {
                match axes {
                    Some(a) if !a.is_empty() => {
                        let ax: Vec<usize> = a
                            .iter()
                            .map(|&a| axis(a, shape.len()))
                            .collect::<Result<_>>()?;
                        shape
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| !ax.contains(i))
                            .map(|(_, &d)| d)
                            .collect()
                    }
                    _ => shape.iter().copied().filter(|&d| d != 1).collect(),
                }
            };
            Ok(vec![reshape_value(v, new)?])
        }
        "Reshape" => {
            let v = need(inputs, 0)?;
            let target = need(inputs, 1)?.ints()?.data;
            let allow_zero = n.int("allowzero", 0) != 0;
            let new = reshape_dims(&v.shape(), &target, allow_zero)?;
            Ok(vec![reshape_value(v, new)?])
        }
        "Flatten" => {
            let v = need(inputs, 0)?;
            let s = v.shape();
            let a = if n.int("axis", 1) < 0 {
                (n.int("axis", 1) + s.len() as i64).max(0) as usize
            } else {
                (n.int("axis", 1) as usize).min(s.len())
            };
            let outer: usize = s[..a].iter().product();
            let inner: usize = s[a..].iter().product();
            Ok(vec![reshape_value(v, vec![outer, inner])?])
        }
        "Transpose" => {
            let v = need(inputs, 0)?;
            let r = v.shape().len();
            let perm: Vec<usize> = match n.ints("perm") {
                Some(p) => p.iter().map(|&a| axis(a, r)).collect::<Result<_>>()?,
                None => (0..r).rev().collect(),
            };
            match v {
                Value::F(t) => one(t.permute(perm)?.contiguous()?),
                Value::I(i) => Ok(vec![Value::I(transpose_ints(i, &perm)?)]),
            }
        }
        "Cast" => {
            let to = n.int("to", 1);
            // FLOAT, FLOAT16, DOUBLE, BFLOAT16 → float; every other type → integers
            match to {
                1 | 10 | 11 | 16 => one(need(inputs, 0)?.float(dev)?),
                _ => Ok(vec![Value::I(need(inputs, 0)?.ints()?)]),
            }
        }
        "ConstantOfShape" => {
            let shape: Vec<usize> = need(inputs, 0)?
                .ints()?
                .data
                .iter()
                .map(|&d| d.max(0) as usize)
                .collect();
            let fill = match n.attr("value").and_then(|a| a.t.as_ref()) {
                Some(t) => from_proto(t, dev)?,
                None => Value::F(Tensor::zeros(1, DType::F32, dev)?),
            };
            let count: usize = shape.iter().product();
            match fill {
                Value::F(t) => {
                    let v = t
                        .flatten_all()?
                        .to_vec1::<f32>()?
                        .first()
                        .copied()
                        .unwrap_or(0.0);
                    one(Tensor::full(v, shape, dev)?)
                }
                Value::I(i) => Ok(vec![Value::I(Ints {
                    shape,
                    data: vec![i.data.first().copied().unwrap_or(0); count],
                })]),
            }
        }
        "Expand" => {
            let v = need(inputs, 0)?;
            let target = need(inputs, 1)?.ints()?.data;
            let s = v.shape();
            let r = s.len().max(target.len());
            let mut out = vec![1usize; r];
            for (i, o) in out.iter_mut().enumerate() {
                let a = (i + s.len()).checked_sub(r).map_or(1, |j| s[j]);
                let b = (i + target.len())
                    .checked_sub(r)
                    .map_or(1, |j| target[j].max(0) as usize);
                *o = if a == 1 { b } else { a };
            }
            one(v.float(dev)?.broadcast_as(out)?.contiguous()?)
        }
        other => Err(bad(format!("operator {other} is not supported"))),
    }
}

/// `[1, C, 1, 1]`-like shape for per-channel parameters of a rank-`rank` tensor.
fn channel_shape(rank: usize, c: usize) -> Vec<usize> {
    let mut s = vec![1; rank.max(2)];
    s[1] = c;
    s
}

/// A per-channel slope (`[C]`, `[C,1,1]`) shaped to broadcast against an `N×C×…` tensor.
fn unidirectional(slope: &Tensor, rank: usize) -> Result<Tensor> {
    if slope.rank() == 1 && rank > 2 && slope.elem_count() > 1 {
        Ok(slope.reshape(channel_shape(rank, slope.elem_count()))?)
    } else {
        Ok(slope.clone())
    }
}

fn constant(n: &OpNode, dev: &Device) -> Result<Vec<Value>> {
    if let Some(t) = n.attr("value").and_then(|a| a.t.as_ref()) {
        return Ok(vec![from_proto(t, dev)?]);
    }
    if let Some(a) = n.attr("value_float") {
        return Ok(vec![Value::F(Tensor::new(a.f, dev)?)]);
    }
    if let Some(a) = n.attr("value_floats") {
        return Ok(vec![Value::F(Tensor::new(a.floats.as_slice(), dev)?)]);
    }
    if let Some(a) = n.attr("value_int") {
        return Ok(vec![Value::I(Ints::scalar(a.i))]);
    }
    if let Some(a) = n.attr("value_ints") {
        return Ok(vec![Value::I(Ints::vector(a.ints.clone()))]);
    }
    Err(bad("Constant without a value the importer reads"))
}

/// Elementwise arithmetic with broadcasting; on integers (shape arithmetic) the host computes it.
fn binary(n: &OpNode, a: &Value, b: &Value, dev: &Device) -> Result<Vec<Value>> {
    if let (Value::I(a), Value::I(b)) = (a, b) {
        let (shape, pairs) = broadcast_ints(a, b)?;
        let data = pairs
            .into_iter()
            .map(|(x, y)| match n.op.as_str() {
                "Add" => Ok(x.wrapping_add(y)),
                "Sub" => Ok(x.wrapping_sub(y)),
                "Mul" => Ok(x.wrapping_mul(y)),
                _ if y == 0 => Err(bad("integer division by zero")),
                _ => Ok(x.div_euclid(y)),
            })
            .collect::<Result<_>>()?;
        return Ok(vec![Value::I(Ints { shape, data })]);
    }
    let (a, b) = (a.float(dev)?, b.float(dev)?);
    let y = match n.op.as_str() {
        "Add" => a.broadcast_add(&b)?,
        "Sub" => a.broadcast_sub(&b)?,
        "Mul" => a.broadcast_mul(&b)?,
        _ => a.broadcast_div(&b)?,
    };
    Ok(vec![Value::F(y)])
}

/// Numpy broadcasting of two integer tensors: the result shape and the value pairs.
/// A broadcast shape and the element pairs under it.
type Broadcast = (Vec<usize>, Vec<(i64, i64)>);

fn broadcast_ints(a: &Ints, b: &Ints) -> Result<Broadcast> {
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

fn concat_ints(parts: &[Ints], axis: usize) -> Result<Ints> {
    if axis != 0 || parts.iter().any(|p| p.shape.len() > 1) {
        return Err(bad(
            "Concat of integer tensors is supported for vectors only",
        ));
    }
    let data: Vec<i64> = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
    Ok(Ints::vector(data))
}

fn transpose_ints(i: &Ints, perm: &[usize]) -> Result<Ints> {
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
fn reshape_dims(shape: &[usize], target: &[i64], allow_zero: bool) -> Result<Vec<usize>> {
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

fn reshape_value(v: &Value, shape: Vec<usize>) -> Result<Value> {
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

fn gather(n: &OpNode, data: &Value, idx: &Ints, dev: &Device) -> Result<Vec<Value>> {
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

fn split(n: &OpNode, inputs: &[Option<Value>], cx: &Ctx<'_>) -> Result<Vec<Value>> {
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

fn slice(n: &OpNode, inputs: &[Option<Value>], cx: &Ctx<'_>) -> Result<Vec<Value>> {
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

fn pad(n: &OpNode, inputs: &[Option<Value>], cx: &Ctx<'_>) -> Result<Vec<Value>> {
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

/// Pads of a 2-D spatial op as `(top, left, bottom, right)` from `pads` or `auto_pad`.
fn spatial_pads(
    n: &OpNode,
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    (sh, sw): (usize, usize),
    (dh, dw): (usize, usize),
) -> Result<[usize; 4]> {
    let auto = n.string("auto_pad", "NOTSET");
    match auto.as_str() {
        "NOTSET" => {
            let p = n.ints("pads").unwrap_or_else(|| vec![0; 4]);
            if p.len() != 4 || p.iter().any(|&v| v < 0) {
                return Err(bad(format!(
                    "pads {p:?} are not 2-D (top, left, bottom, right)"
                )));
            }
            Ok([p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize])
        }
        "VALID" => Ok([0; 4]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let total = |len: usize, k: usize, s: usize, d: usize| {
                let out = len.div_ceil(s);
                ((out - 1) * s + (k - 1) * d + 1).saturating_sub(len)
            };
            let (th, tw) = (total(h, kh, sh, dh), total(w, kw, sw, dw));
            let upper = auto == "SAME_UPPER";
            let split = |t: usize| {
                if upper {
                    (t / 2, t - t / 2)
                } else {
                    (t - t / 2, t / 2)
                }
            };
            let ((t, b), (l, r)) = (split(th), split(tw));
            Ok([t, l, b, r])
        }
        other => Err(bad(format!("auto_pad {other:?} is not supported"))),
    }
}

fn pair(v: Option<Vec<i64>>, default: usize, what: &str) -> Result<(usize, usize)> {
    match v.as_deref() {
        None => Ok((default, default)),
        Some([a, b]) if *a > 0 && *b > 0 => Ok((*a as usize, *b as usize)),
        Some(other) => Err(bad(format!(
            "{what} {other:?} are not two positive numbers (2-D)"
        ))),
    }
}

fn conv(n: &OpNode, x: &Tensor, w: &Tensor, b: Option<&Value>, cx: &Ctx<'_>) -> Result<Vec<Value>> {
    if x.rank() != 4 || w.rank() != 4 {
        return Err(bad(format!(
            "only 2-D convolutions are supported (input {:?}, weight {:?})",
            x.dims(),
            w.dims()
        )));
    }
    let (_, c, h, wd) = x.dims4()?;
    let (o, ci, kh, kw) = w.dims4()?;
    let groups = n.int("group", 1).max(1) as usize;
    if ci * groups != c || o % groups != 0 {
        return Err(bad(format!(
            "input has {c} channels, weight {:?} with {groups} groups",
            w.dims()
        )));
    }
    let (sh, sw) = pair(n.ints("strides"), 1, "strides")?;
    let (dh, dw) = pair(n.ints("dilations"), 1, "dilations")?;
    let [t, l, bo, r] = spatial_pads(n, (h, wd), (kh, kw), (sh, sw), (dh, dw))?;
    if sh != sw || dh != dw {
        return Err(bad(format!(
            "strides ({sh}, {sw}) and dilations ({dh}, {dw}) must be equal along both axes"
        )));
    }
    let symmetric = t == l && t == bo && t == r;
    let (mut xin, pad) = if symmetric {
        (x.clone(), t)
    } else {
        (
            pad_axis(
                &pad_axis(x, 2, t, bo, "constant", 0.0)?,
                3,
                l,
                r,
                "constant",
                0.0,
            )?,
            0,
        )
    };
    xin = xin.contiguous()?;
    let w = w.contiguous()?;
    let fast = cx.custom_ops && dh == 1 && kh == kw && xin.device().is_cpu();
    let mut y = if fast && groups == 1 {
        crate::nets::ops::conv2d(&xin, &w, pad, sh)?
    } else if fast && groups == c && o == c && ci == 1 {
        crate::nets::ops::depthwise_conv2d(&xin, &w, pad, sh)?
    } else {
        xin.conv2d(&w, pad, sh, dh, groups)?
    };
    if let Some(b) = b {
        y = y.broadcast_add(&b.float(cx.device)?.reshape((1, o, 1, 1))?)?;
    }
    Ok(vec![Value::F(y)])
}

fn conv_transpose(
    n: &OpNode,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Value>,
    dev: &Device,
) -> Result<Vec<Value>> {
    if x.rank() != 4 || w.rank() != 4 {
        return Err(bad("only 2-D transposed convolutions are supported"));
    }
    if n.int("group", 1) != 1 {
        return Err(bad("ConvTranspose with groups is not supported"));
    }
    if n.attr("output_shape").is_some() || n.string("auto_pad", "NOTSET") != "NOTSET" {
        return Err(bad(
            "ConvTranspose with output_shape or auto_pad is not supported: give pads",
        ));
    }
    let (_, _, kh, kw) = w.dims4()?;
    let (sh, sw) = pair(n.ints("strides"), 1, "strides")?;
    let (dh, dw) = pair(n.ints("dilations"), 1, "dilations")?;
    let (oph, opw) = match n.ints("output_padding").as_deref() {
        None => (0, 0),
        Some([a, b]) if *a >= 0 && *b >= 0 => (*a as usize, *b as usize),
        Some(o) => return Err(bad(format!("output_padding {o:?} is not 2-D"))),
    };
    let p = n.ints("pads").unwrap_or_else(|| vec![0; 4]);
    if p.len() != 4 || p.iter().any(|&v| v < 0) {
        return Err(bad(format!("pads {p:?} are not 2-D")));
    }
    if sh != sw || dh != dw || kh != kw {
        return Err(bad(
            "ConvTranspose needs square kernels and equal strides and dilations",
        ));
    }
    // run without padding (full output), then crop begin/end pads and add output padding
    let full = x
        .contiguous()?
        .conv_transpose2d(&w.contiguous()?, 0, 0, sh, dh)?;
    let (_, _, fh, fw) = full.dims4()?;
    let crop =
        |len: usize, begin: i64, end: i64, extra: usize, a: usize, t: Tensor| -> Result<Tensor> {
            let (begin, end) = (begin as usize, end as usize);
            // output padding adds zeros beyond the full output at the end
            let t = if extra > 0 {
                pad_axis(&t, a, 0, extra, "constant", 0.0)?
            } else {
                t
            };
            let total = len + extra;
            if begin + end >= total {
                return Err(bad("ConvTranspose pads remove the whole output"));
            }
            Ok(t.narrow(a, begin, total - begin - end)?)
        };
    let mut y = crop(fh, p[0], p[2], oph, 2, full)?;
    y = crop(fw, p[1], p[3], opw, 3, y)?;
    if let Some(b) = b {
        let b = b.float(dev)?;
        let o = b.elem_count();
        y = y.broadcast_add(&b.reshape((1, o, 1, 1))?)?;
    }
    Ok(vec![Value::F(y)])
}

/// Max and average pooling as the maximum or sum of k² strided views, so that the backward pass
/// is candle's (its own max pool has none unless the kernel equals the stride).
fn pool(n: &OpNode, x: &Tensor, dev: &Device) -> Result<Vec<Value>> {
    if x.rank() != 4 {
        return Err(bad("only 2-D pooling is supported"));
    }
    let (_, _, h, w) = x.dims4()?;
    let (kh, kw) = pair(n.ints("kernel_shape"), 0, "kernel_shape")?;
    let (sh, sw) = pair(n.ints("strides"), 1, "strides")?;
    let (dh, dw) = pair(n.ints("dilations"), 1, "dilations")?;
    let [t, l, b, r] = spatial_pads(n, (h, w), (kh, kw), (sh, sw), (dh, dw))?;
    let ceil = n.int("ceil_mode", 0) != 0;
    let out_len =
        |len: usize, k: usize, s: usize, d: usize, pb: usize, pe: usize| -> Result<usize> {
            let span = (k - 1) * d + 1;
            if len + pb + pe < span {
                return Err(bad("pooling window larger than the padded input"));
            }
            let num = len + pb + pe - span;
            let mut o = if ceil { num.div_ceil(s) } else { num / s } + 1;
            // a last window starting in the end padding is dropped (ONNX and PyTorch)
            if ceil && (o - 1) * s >= len + pb {
                o -= 1;
            }
            Ok(o)
        };
    let (oh, ow) = (out_len(h, kh, sh, dh, t, b)?, out_len(w, kw, sw, dw, l, r)?);
    let is_max = n.op == "MaxPool";
    // enough padding at the end for every window
    let need_h = (oh - 1) * sh + (kh - 1) * dh + 1;
    let need_w = (ow - 1) * sw + (kw - 1) * dw + 1;
    let (eb, er) = (need_h.saturating_sub(h + t), need_w.saturating_sub(w + l));
    let fill = if is_max { f32::MIN } else { 0.0 };
    let xp = pad_axis(
        &pad_axis(x, 2, t, eb.max(b), "constant", fill)?,
        3,
        l,
        er.max(r),
        "constant",
        fill,
    )?;
    let rows = |ky: usize| -> Vec<u32> { (0..oh).map(|o| (o * sh + ky * dh) as u32).collect() };
    let cols = |kx: usize| -> Vec<u32> { (0..ow).map(|o| (o * sw + kx * dw) as u32).collect() };
    let mut acc: Option<Tensor> = None;
    for ky in 0..kh {
        let rsel = xp.index_select(&Tensor::new(rows(ky), dev)?, 2)?;
        for kx in 0..kw {
            let v = rsel.index_select(&Tensor::new(cols(kx), dev)?, 3)?;
            acc = Some(match acc {
                None => v,
                Some(a) if is_max => a.maximum(&v)?,
                Some(a) => (a + v)?,
            });
        }
    }
    let acc = acc.ok_or_else(|| bad("empty pooling window"))?;
    if is_max {
        return Ok(vec![Value::F(acc)]);
    }
    let count_pad = n.int("count_include_pad", 0) != 0;
    // the number of counted positions under every window
    let counted = |o: usize, s: usize, k: usize, d: usize, (pb, pe): (usize, usize), len: usize| {
        (0..k)
            .filter(|&i| {
                let pos = (o * s + i * d) as i64 - pb as i64;
                if count_pad {
                    pos >= -(pb as i64) && pos < (len + pe) as i64
                } else {
                    pos >= 0 && pos < len as i64
                }
            })
            .count() as f32
    };
    let mut counts = vec![0f32; oh * ow];
    for oy in 0..oh {
        for ox in 0..ow {
            counts[oy * ow + ox] =
                counted(oy, sh, kh, dh, (t, b), h) * counted(ox, sw, kw, dw, (l, r), w);
        }
    }
    let counts = Tensor::from_vec(counts, (1, 1, oh, ow), dev)?;
    Ok(vec![Value::F(acc.broadcast_div(&counts)?)])
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
