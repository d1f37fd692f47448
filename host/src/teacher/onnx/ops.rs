//! The ONNX operators an imported teacher runs, each on candle tensors with autograd (float data)
//! or on host integers (shape data). Convolutions, depthwise convolutions and 2× bilinear resizes
//! go through depthling's fast custom ops where the node's attributes match them.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use tract_onnx::pb::AttributeProto;

use super::shape::{
    broadcast_ints, concat_ints, gather, pad, reshape_dims, reshape_value, slice, split,
    transpose_ints,
};
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
    pub(super) fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attrs.get(name)
    }

    pub(super) fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map_or(default, |a| a.i)
    }

    pub(super) fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map_or(default, |a| a.f)
    }

    pub(super) fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    pub(super) fn string(&self, name: &str, default: &str) -> String {
        self.attr(name).map_or(default.to_string(), |a| {
            String::from_utf8_lossy(&a.s).into_owned()
        })
    }
}

/// What a node needs besides its inputs.
pub struct Ctx<'a> {
    pub device: &'a Device,
    pub opset: i64,
}

pub(super) fn bad(msg: impl Into<String>) -> Error {
    Error::Runtime(msg.into())
}

/// Input `i`, which must be present.
pub(super) fn need(inputs: &[Option<Value>], i: usize) -> Result<&Value> {
    inputs
        .get(i)
        .and_then(|v| v.as_ref())
        .ok_or_else(|| bad(format!("input {i} is missing")))
}

pub(super) fn opt(inputs: &[Option<Value>], i: usize) -> Option<&Value> {
    inputs.get(i).and_then(|v| v.as_ref())
}

/// An axis attribute (possibly negative) for a tensor of `rank` dimensions.
pub(super) fn axis(a: i64, rank: usize) -> Result<usize> {
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
        "Conv" => super::spatial::conv(n, &x(0)?, &x(1)?, opt(inputs, 2), cx),
        "ConvTranspose" => super::spatial::conv_transpose(n, &x(0)?, &x(1)?, opt(inputs, 2), dev),
        "MaxPool" | "AveragePool" => super::spatial::pool(n, &x(0)?, dev),
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
