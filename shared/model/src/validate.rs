//! Everything the engine relies on, checked once at load time.

use crate::arena::{check_plan, lifetimes};
use crate::{
    read_f32, read_requant, Activation, ConstRef, DType, LoadError, Model, Op, QuantParams,
    TensorId, TensorInfo, FORMAT_VERSION, INPUT_SCALE, INPUT_ZERO_POINT, MAGIC, MAX_TENSORS,
};

fn op_err(index: usize, reason: &'static str) -> LoadError {
    LoadError::Op {
        index: index as u16,
        reason,
    }
}

fn check_quant(q: &QuantParams) -> bool {
    q.scale.is_finite() && q.scale > 0.0 && (-128..=127).contains(&q.zero_point)
}

/// The bytes of `r`, checked against the blob and the expected length.
fn const_bytes<'a>(
    blob: &'a [u8],
    r: &ConstRef,
    expected: u64,
    op: usize,
    what: &'static str,
) -> Result<&'a [u8], LoadError> {
    if r.len as u64 != expected {
        return Err(op_err(op, what));
    }
    r.get(blob)
        .ok_or(op_err(op, "constant lies outside the weights"))
}

pub(crate) fn validate(m: &Model<'_>) -> Result<(), LoadError> {
    if m.magic != MAGIC {
        return Err(LoadError::BadMagic);
    }
    if m.format_version != FORMAT_VERSION {
        return Err(LoadError::UnsupportedVersion {
            found: m.format_version,
            supported: FORMAT_VERSION,
        });
    }
    for (i, t) in m.tensors.iter().enumerate() {
        let bad = |reason| LoadError::Tensor {
            index: i as u16,
            reason,
        };
        if t.height == 0 || t.width == 0 || t.channels == 0 {
            return Err(bad("has a zero dimension"));
        }
        if t.dtype == DType::I8 && !check_quant(&t.quant) {
            return Err(bad("quantization scale or zero point out of range"));
        }
    }
    let input = m.tensor(m.input).ok_or(LoadError::Graph {
        reason: "input tensor index out of range",
    })?;
    if input.dtype != DType::I8
        || input.channels != 3
        || input.quant.zero_point != INPUT_ZERO_POINT
        || (input.quant.scale - INPUT_SCALE).abs() > 1e-9
    {
        return Err(LoadError::Graph {
            reason: "input must be int8 RGB with scale 1/255 and zero point -128",
        });
    }
    let output_id = m.output().ok_or(LoadError::Graph {
        reason: "the last op must be Output",
    })?;

    // Single assignment in execution order: each tensor is written once, after nothing reads it.
    let mut written = [false; MAX_TENSORS];
    let tensor_count = m.tensors.len();
    if tensor_count > MAX_TENSORS {
        return Err(LoadError::Graph {
            reason: "too many tensors",
        });
    }
    written[m.input as usize] = true;
    for (i, op) in m.ops.iter().enumerate() {
        for id in op.inputs() {
            if id as usize >= tensor_count {
                return Err(op_err(i, "input tensor index out of range"));
            }
            if !written[id as usize] {
                return Err(op_err(i, "reads a tensor before it is written"));
            }
        }
        if let Some(id) = op.output() {
            if id as usize >= tensor_count {
                return Err(op_err(i, "output tensor index out of range"));
            }
            if written[id as usize] {
                return Err(op_err(i, "writes a tensor that is already written"));
            }
            written[id as usize] = true;
        }
        if matches!(op, Op::Output { .. }) && i + 1 != m.ops.len() {
            return Err(op_err(i, "Output must be the last op"));
        }
        validate_op(m, i, op)?;
    }
    if let Some(i) = (0..tensor_count).find(|&i| !written[i]) {
        return Err(LoadError::Tensor {
            index: i as u16,
            reason: "is never written",
        });
    }
    let out = m.tensor(output_id).ok_or(LoadError::Graph {
        reason: "output tensor index out of range",
    })?;
    if out.dtype != DType::F32
        || out.channels != 1
        || out.height != input.height
        || out.width != input.width
    {
        return Err(LoadError::Graph {
            reason: "output must be an f32 depth map of the input's height and width",
        });
    }
    let life = lifetimes(&m.tensors, &m.ops, m.input)?;
    check_plan(&m.tensors, &life, m.arena_bytes)
}

fn tensor<'m>(m: &'m Model<'_>, id: TensorId, op: usize) -> Result<&'m TensorInfo, LoadError> {
    m.tensor(id).ok_or(op_err(op, "tensor index out of range"))
}

fn same_shape(a: &TensorInfo, b: &TensorInfo) -> bool {
    a.height == b.height && a.width == b.width && a.channels == b.channels
}

fn validate_op(m: &Model<'_>, i: usize, op: &Op) -> Result<(), LoadError> {
    let i8_tensor = |id: TensorId| -> Result<&TensorInfo, LoadError> {
        let t = tensor(m, id, i)?;
        if t.dtype != DType::I8 {
            return Err(op_err(i, "expects int8 tensors"));
        }
        Ok(t)
    };
    let check_requant = |r: &crate::Requant| {
        if r.is_valid() {
            Ok(())
        } else {
            Err(op_err(i, "requantization multiplier or shift out of range"))
        }
    };
    match op {
        Op::Conv2d(c) => {
            let inp = i8_tensor(c.input)?;
            let out = tensor(m, c.output, i)?;
            if !matches!(c.kernel, 1 | 3 | 5) {
                return Err(op_err(i, "kernel size must be 1, 3 or 5"));
            }
            if !matches!(c.stride, 1 | 2) {
                return Err(op_err(i, "stride must be 1 or 2"));
            }
            let s = c.stride as u16;
            if out.height != inp.height.div_ceil(s) || out.width != inp.width.div_ceil(s) {
                return Err(op_err(i, "output size is not ceil(input / stride)"));
            }
            let (oc, k2) = (out.channels as u64, (c.kernel as u64).pow(2));
            let weights_len = if c.depthwise {
                if out.channels != inp.channels {
                    return Err(op_err(i, "depthwise conv must keep the channel count"));
                }
                k2 * oc
            } else {
                oc * k2 * inp.channels as u64
            };
            let weights = const_bytes(
                m.weights,
                &c.weights,
                weights_len,
                i,
                "weights have the wrong length",
            )?;
            let bias = const_bytes(m.weights, &c.bias, 4 * oc, i, "bias has the wrong length")?;
            // The int32 accumulator must not overflow for any input: |x − zp| ≤ 255, so
            // |acc| ≤ |bias| + 255 · Σ|w| per output channel.
            let per = (weights_len / oc.max(1)) as usize;
            for ch in 0..oc as usize {
                let abs_sum: i64 = if c.depthwise {
                    (0..per)
                        .map(|j| (weights[j * oc as usize + ch] as i8 as i64).abs())
                        .sum()
                } else {
                    weights[ch * per..(ch + 1) * per]
                        .iter()
                        .map(|&w| (w as i8 as i64).abs())
                        .sum()
                };
                let b = crate::read_i32(bias, ch).ok_or(op_err(i, "bias truncated"))? as i64;
                if b.abs() + 255 * abs_sum > i32::MAX as i64 {
                    return Err(op_err(
                        i,
                        "weights and bias can overflow the int32 accumulator",
                    ));
                }
            }
            let scales = const_bytes(
                m.weights,
                &c.weight_scales,
                4 * oc,
                i,
                "weight scales have the wrong length",
            )?;
            for ch in 0..oc as usize {
                let s = read_f32(scales, ch).ok_or(op_err(i, "weight scales truncated"))?;
                if !(s.is_finite() && s > 0.0) {
                    return Err(op_err(i, "weight scale is not a positive number"));
                }
            }
            match out.dtype {
                DType::F32 => {
                    if c.act != Activation::None || c.lut.is_some() || c.requant.len != 0 {
                        return Err(op_err(
                            i,
                            "a dequantizing conv takes no activation, LUT or requantization",
                        ));
                    }
                }
                DType::I8 => {
                    let rq = const_bytes(
                        m.weights,
                        &c.requant,
                        8 * oc,
                        i,
                        "requantization has the wrong length",
                    )?;
                    for ch in 0..oc as usize {
                        let r =
                            read_requant(rq, ch).ok_or(op_err(i, "requantization truncated"))?;
                        check_requant(&r)?;
                    }
                    match (c.act, &c.lut) {
                        (Activation::Sigmoid, Some(lut)) => {
                            const_bytes(
                                m.weights,
                                &lut.table,
                                256,
                                i,
                                "sigmoid LUT must have 256 entries",
                            )?;
                            if !(-128..=127).contains(&lut.zero_point) {
                                return Err(op_err(i, "LUT zero point out of range"));
                            }
                            if !(lut.scale.is_finite() && lut.scale > 0.0) {
                                return Err(op_err(i, "LUT scale is not a positive number"));
                            }
                        }
                        (Activation::Sigmoid, None) => {
                            return Err(op_err(i, "sigmoid needs a LUT"))
                        }
                        (_, Some(_)) => return Err(op_err(i, "LUT given without sigmoid")),
                        (_, None) => {}
                    }
                }
            }
        }
        Op::Add {
            a,
            b,
            output,
            a_requant,
            b_requant,
            out_requant,
            act,
        } => {
            let (ta, tb, to) = (i8_tensor(*a)?, i8_tensor(*b)?, i8_tensor(*output)?);
            if !same_shape(ta, tb) || !same_shape(ta, to) {
                return Err(op_err(i, "add operands and output differ in shape"));
            }
            check_requant(a_requant)?;
            check_requant(b_requant)?;
            check_requant(out_requant)?;
            if *act == Activation::Sigmoid {
                return Err(op_err(i, "add cannot fuse sigmoid"));
            }
        }
        Op::Concat {
            inputs,
            requant,
            output,
        } => {
            let to = i8_tensor(*output)?;
            if inputs.is_empty() || inputs.len() != requant.len() {
                return Err(op_err(i, "concat needs one requantization per input"));
            }
            let mut channels = 0u32;
            for id in inputs {
                let t = i8_tensor(*id)?;
                if t.height != to.height || t.width != to.width {
                    return Err(op_err(i, "concat inputs differ in height or width"));
                }
                channels += t.channels as u32;
            }
            if channels != to.channels as u32 {
                return Err(op_err(
                    i,
                    "concat output channels are not the sum of the inputs",
                ));
            }
            for r in requant {
                check_requant(r)?;
            }
        }
        Op::Upsample {
            input,
            output,
            factor,
            ..
        } => {
            let (ti, to) = (i8_tensor(*input)?, i8_tensor(*output)?);
            if !matches!(factor, 2 | 4 | 8 | 16) {
                return Err(op_err(i, "upsample factor must be 2, 4, 8 or 16"));
            }
            let f = *factor as u32;
            if to.height as u32 != ti.height as u32 * f
                || to.width as u32 != ti.width as u32 * f
                || to.channels != ti.channels
            {
                return Err(op_err(i, "upsample output is not input × factor"));
            }
            if to.quant != ti.quant {
                return Err(op_err(i, "upsample must keep the quantization"));
            }
        }
        Op::GlobalAvgPool {
            input,
            output,
            requant,
        } => {
            let (ti, to) = (i8_tensor(*input)?, i8_tensor(*output)?);
            if to.height != 1 || to.width != 1 || to.channels != ti.channels {
                return Err(op_err(i, "global average pool output must be 1×1×C"));
            }
            if ti.height as i64 * ti.width as i64 * 255 > i32::MAX as i64 {
                return Err(op_err(
                    i,
                    "global average pool input too large for an int32 sum",
                ));
            }
            check_requant(requant)?;
        }
        Op::Mul {
            input,
            scale,
            output,
            requant,
        } => {
            let (ti, ts, to) = (i8_tensor(*input)?, i8_tensor(*scale)?, i8_tensor(*output)?);
            if ts.height != 1 || ts.width != 1 || ts.channels != ti.channels || !same_shape(ti, to)
            {
                return Err(op_err(i, "mul needs H×W×C by 1×1×C into H×W×C"));
            }
            check_requant(requant)?;
        }
        Op::Output { input } => {
            tensor(m, *input, i)?;
        }
    }
    Ok(())
}
