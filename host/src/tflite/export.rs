//! `.dlm` → `.tflite` (see the table in [`super`]).
//!
//! Before writing, every requantization the IR stores is checked against the one TFLite derives
//! from the tensors' scales (`QuantizeMultiplier` of the same real multiplier): a model whose
//! numbers TFLite would compute differently is refused, naming the op, instead of exported to
//! give other bits.

use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use tract_tflite::tflite as fb;

use depthling_model::quant::ADD_LEFT_SHIFT;
use depthling_model::{
    read_f32, read_i32, read_requant, Activation, Conv2d, DType, Model, Op, QuantParams, Requant,
    TensorInfo, UpsampleMode, SIGMOID_OUTPUT,
};

use super::tensor_name;
use crate::error::{Error, Result};

/// Quantization of one tensor: per-tensor, or per channel along `dim`.
struct Quant {
    scales: Vec<f32>,
    zero_points: Vec<i64>,
    dim: i32,
}

impl Quant {
    fn tensor(q: QuantParams) -> Quant {
        Quant {
            scales: vec![q.scale],
            zero_points: vec![q.zero_point as i64],
            dim: 0,
        }
    }

    fn per_channel(scales: Vec<f32>, dim: i32) -> Quant {
        let zero_points = vec![0; scales.len()];
        Quant {
            scales,
            zero_points,
            dim,
        }
    }
}

/// The flatbuffer under construction: buffers, tensors, operators and the opcode table.
struct Writer<'f> {
    fbb: FlatBufferBuilder<'f>,
    buffers: Vec<WIPOffset<fb::Buffer<'f>>>,
    tensors: Vec<WIPOffset<fb::Tensor<'f>>>,
    operators: Vec<WIPOffset<fb::Operator<'f>>>,
    codes: Vec<(fb::BuiltinOperator, i32)>,
}

impl<'f> Writer<'f> {
    fn new() -> Self {
        let mut fbb = FlatBufferBuilder::with_capacity(1 << 16);
        // buffer 0 is the empty buffer of every tensor without data (TFLite's convention)
        let empty = fb::Buffer::create(&mut fbb, &fb::BufferArgs { data: None });
        Writer {
            fbb,
            buffers: vec![empty],
            tensors: Vec::new(),
            operators: Vec::new(),
            codes: Vec::new(),
        }
    }

    fn buffer(&mut self, data: &[u8]) -> u32 {
        let data = self.fbb.create_vector(data);
        let b = fb::Buffer::create(&mut self.fbb, &fb::BufferArgs { data: Some(data) });
        self.buffers.push(b);
        (self.buffers.len() - 1) as u32
    }

    /// A tensor (with `data` when constant); returns its index.
    fn tensor(
        &mut self,
        name: &str,
        shape: &[i32],
        ty: fb::TensorType,
        quant: Option<Quant>,
        data: Option<&[u8]>,
    ) -> i32 {
        let buffer = data.map_or(0, |d| self.buffer(d));
        let quantization = quant.map(|q| {
            let scale = self.fbb.create_vector(&q.scales);
            let zero_point = self.fbb.create_vector(&q.zero_points);
            fb::QuantizationParameters::create(
                &mut self.fbb,
                &fb::QuantizationParametersArgs {
                    scale: Some(scale),
                    zero_point: Some(zero_point),
                    quantized_dimension: q.dim,
                    ..Default::default()
                },
            )
        });
        let shape = self.fbb.create_vector(shape);
        let name = self.fbb.create_string(name);
        let t = fb::Tensor::create(
            &mut self.fbb,
            &fb::TensorArgs {
                shape: Some(shape),
                type_: ty,
                buffer,
                name: Some(name),
                quantization,
                ..Default::default()
            },
        );
        self.tensors.push(t);
        (self.tensors.len() - 1) as i32
    }

    /// The int8 activation tensor of IR tensor `id` (named as in the dump).
    fn activation(&mut self, id: u16, t: &TensorInfo) -> i32 {
        self.tensor(
            &tensor_name(id),
            &nhwc(t),
            fb::TensorType::INT8,
            Some(Quant::tensor(t.quant)),
            None,
        )
    }

    fn op(
        &mut self,
        code: fb::BuiltinOperator,
        version: i32,
        inputs: &[i32],
        outputs: &[i32],
        options: Option<(fb::BuiltinOptions, WIPOffset<UnionWIPOffset>)>,
    ) {
        let opcode_index = match self.codes.iter().position(|&(c, _)| c == code) {
            Some(i) => {
                self.codes[i].1 = self.codes[i].1.max(version);
                i
            }
            None => {
                self.codes.push((code, version));
                self.codes.len() - 1
            }
        } as u32;
        let inputs = self.fbb.create_vector(inputs);
        let outputs = self.fbb.create_vector(outputs);
        let (builtin_options_type, builtin_options) = match options {
            Some((t, o)) => (t, Some(o)),
            None => (fb::BuiltinOptions::NONE, None),
        };
        let o = fb::Operator::create(
            &mut self.fbb,
            &fb::OperatorArgs {
                opcode_index,
                inputs: Some(inputs),
                outputs: Some(outputs),
                builtin_options_type,
                builtin_options,
                ..Default::default()
            },
        );
        self.operators.push(o);
    }

    fn finish(mut self, description: &str, input: i32, output: i32) -> Vec<u8> {
        let codes: Vec<_> = self
            .codes
            .iter()
            .map(|&(code, version)| {
                fb::OperatorCode::create(
                    &mut self.fbb,
                    &fb::OperatorCodeArgs {
                        // readers before schema 2.4 look only at the deprecated byte
                        deprecated_builtin_code: code.0.min(127) as i8,
                        custom_code: None,
                        version,
                        builtin_code: code,
                    },
                )
            })
            .collect();
        let tensors = self.fbb.create_vector(&self.tensors);
        let inputs = self.fbb.create_vector(&[input]);
        let outputs = self.fbb.create_vector(&[output]);
        let operators = self.fbb.create_vector(&self.operators);
        let name = self.fbb.create_string("main");
        let subgraph = fb::SubGraph::create(
            &mut self.fbb,
            &fb::SubGraphArgs {
                tensors: Some(tensors),
                inputs: Some(inputs),
                outputs: Some(outputs),
                operators: Some(operators),
                name: Some(name),
            },
        );
        let subgraphs = self.fbb.create_vector(&[subgraph]);
        let codes = self.fbb.create_vector(&codes);
        let buffers = self.fbb.create_vector(&self.buffers);
        let description = self.fbb.create_string(description);
        let model = fb::Model::create(
            &mut self.fbb,
            &fb::ModelArgs {
                version: 3,
                operator_codes: Some(codes),
                subgraphs: Some(subgraphs),
                description: Some(description),
                buffers: Some(buffers),
                ..Default::default()
            },
        );
        fb::finish_model_buffer(&mut self.fbb, model);
        self.fbb.finished_data().to_vec()
    }
}

fn nhwc(t: &TensorInfo) -> [i32; 4] {
    [1, t.height as i32, t.width as i32, t.channels as i32]
}

fn fused(act: Activation) -> fb::ActivationFunctionType {
    match act {
        Activation::Relu => fb::ActivationFunctionType::RELU,
        Activation::Relu6 => fb::ActivationFunctionType::RELU6,
        Activation::None | Activation::Sigmoid => fb::ActivationFunctionType::NONE,
    }
}

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Converts a validated model.
pub fn export(model: &Model<'_>) -> Result<Vec<u8>> {
    model
        .validate()
        .map_err(|e| Error::Runtime(format!("invalid model: {e}")))?;
    let op_err = |i: usize, what: &str| {
        Error::Runtime(format!(
            "op {i} ({}): {what}",
            model.ops.get(i).map_or("?", |o| o.kind())
        ))
    };
    let info = |id: u16| model.tensor(id).copied();
    let mut w = Writer::new();
    // IR tensor id → TFLite tensor index (int8 activations only)
    let mut index: Vec<Option<i32>> = vec![None; model.tensors.len()];
    let input = info(model.input).ok_or_else(|| op_err(0, "no input tensor"))?;
    let tin = w.activation(model.input, &input);
    index[model.input as usize] = Some(tin);
    let mut output: Option<i32> = None;
    for (i, op) in model.ops.iter().enumerate() {
        let src = |id: u16| -> Result<(i32, TensorInfo)> {
            match (index.get(id as usize).copied().flatten(), info(id)) {
                (Some(x), Some(t)) => Ok((x, t)),
                _ => Err(op_err(
                    i,
                    &format!("reads tensor {id} before it is written"),
                )),
            }
        };
        match op {
            Op::Conv2d(c) => {
                let (x, ti) = src(c.input)?;
                let to = info(c.output).ok_or_else(|| op_err(i, "no output tensor"))?;
                match to.dtype {
                    DType::I8 => {
                        let out = conv_int8(&mut w, model, i, c, x, ti, to)?;
                        index[c.output as usize] = Some(out);
                    }
                    DType::F32 => {
                        output = Some(conv_output(&mut w, model, i, c, x, ti, to)?);
                    }
                }
            }
            Op::Add {
                a,
                b,
                output: o,
                a_requant,
                b_requant,
                out_requant,
                act,
            } => {
                let ((xa, ta), (xb, tb)) = (src(*a)?, src(*b)?);
                let to = info(*o).ok_or_else(|| op_err(i, "no output tensor"))?;
                let (sa, sb, so) = (
                    ta.quant.scale as f64,
                    tb.quant.scale as f64,
                    to.quant.scale as f64,
                );
                let twice_max = 2.0 * sa.max(sb);
                let expected = [
                    Requant::from_real(sa / twice_max),
                    Requant::from_real(sb / twice_max),
                    Requant::from_real(twice_max / ((1i64 << ADD_LEFT_SHIFT) as f64 * so)),
                ];
                if expected != [Some(*a_requant), Some(*b_requant), Some(*out_requant)] {
                    return Err(op_err(i, "its requantization is not TFLite ADD's (2·max of the input scales, left shift 20): re-quantize the model"));
                }
                let y = w.activation(*o, &to);
                let opts = fb::AddOptions::create(
                    &mut w.fbb,
                    &fb::AddOptionsArgs {
                        fused_activation_function: fused(*act),
                        pot_scale_int16: false,
                    },
                );
                w.op(
                    fb::BuiltinOperator::ADD,
                    2,
                    &[xa, xb],
                    &[y],
                    Some((fb::BuiltinOptions::AddOptions, opts.as_union_value())),
                );
                index[*o as usize] = Some(y);
            }
            Op::Concat {
                inputs,
                requant,
                output: o,
            } => {
                let to = info(*o).ok_or_else(|| op_err(i, "no output tensor"))?;
                let mut xs = Vec::with_capacity(inputs.len());
                for (&id, r) in inputs.iter().zip(requant) {
                    let (x, ti) = src(id)?;
                    if Requant::from_real(ti.quant.scale as f64 / to.quant.scale as f64) != Some(*r)
                    {
                        return Err(op_err(i, "its requantization is not TFLite's (input scale / output scale): re-quantize the model"));
                    }
                    if ti.quant == to.quant {
                        xs.push(x);
                        continue;
                    }
                    // CONCATENATION needs its inputs at the output's quantization: requantize
                    // first (the same arithmetic as our concat's)
                    let shape = nhwc(&ti);
                    let q = w.tensor(
                        &format!("{}_as_{}", tensor_name(id), tensor_name(*o)),
                        &shape,
                        fb::TensorType::INT8,
                        Some(Quant::tensor(to.quant)),
                        None,
                    );
                    w.op(fb::BuiltinOperator::QUANTIZE, 2, &[x], &[q], None);
                    xs.push(q);
                }
                let y = w.activation(*o, &to);
                let opts = fb::ConcatenationOptions::create(
                    &mut w.fbb,
                    &fb::ConcatenationOptionsArgs {
                        axis: 3,
                        fused_activation_function: fb::ActivationFunctionType::NONE,
                    },
                );
                w.op(
                    fb::BuiltinOperator::CONCATENATION,
                    2,
                    &xs,
                    &[y],
                    Some((
                        fb::BuiltinOptions::ConcatenationOptions,
                        opts.as_union_value(),
                    )),
                );
                index[*o as usize] = Some(y);
            }
            Op::Upsample {
                input: a,
                output: o,
                mode,
                factor: _,
            } => {
                let (x, _) = src(*a)?;
                let to = info(*o).ok_or_else(|| op_err(i, "no output tensor"))?;
                let size = w.tensor(
                    &format!("{}_size", tensor_name(*o)),
                    &[2],
                    fb::TensorType::INT32,
                    None,
                    Some(&i32_bytes(&[to.height as i32, to.width as i32])),
                );
                let y = w.activation(*o, &to);
                match mode {
                    UpsampleMode::Nearest => {
                        let opts = fb::ResizeNearestNeighborOptions::create(
                            &mut w.fbb,
                            &fb::ResizeNearestNeighborOptionsArgs {
                                align_corners: false,
                                half_pixel_centers: false,
                            },
                        );
                        w.op(
                            fb::BuiltinOperator::RESIZE_NEAREST_NEIGHBOR,
                            2,
                            &[x, size],
                            &[y],
                            Some((
                                fb::BuiltinOptions::ResizeNearestNeighborOptions,
                                opts.as_union_value(),
                            )),
                        );
                    }
                    UpsampleMode::Bilinear => {
                        let opts = fb::ResizeBilinearOptions::create(
                            &mut w.fbb,
                            &fb::ResizeBilinearOptionsArgs {
                                align_corners: false,
                                half_pixel_centers: true,
                            },
                        );
                        w.op(
                            fb::BuiltinOperator::RESIZE_BILINEAR,
                            3,
                            &[x, size],
                            &[y],
                            Some((
                                fb::BuiltinOptions::ResizeBilinearOptions,
                                opts.as_union_value(),
                            )),
                        );
                    }
                }
                index[*o as usize] = Some(y);
            }
            Op::GlobalAvgPool {
                input: a,
                output: o,
                requant,
            } => {
                let (x, ti) = src(*a)?;
                let to = info(*o).ok_or_else(|| op_err(i, "no output tensor"))?;
                if Requant::from_real(ti.quant.scale as f64 / to.quant.scale as f64)
                    != Some(*requant)
                {
                    return Err(op_err(i, "its requantization is not TFLite MEAN's (input scale / output scale): re-quantize the model"));
                }
                let axes = w.tensor(
                    &format!("{}_axes", tensor_name(*o)),
                    &[2],
                    fb::TensorType::INT32,
                    None,
                    Some(&i32_bytes(&[1, 2])),
                );
                let y = w.activation(*o, &to);
                let opts = fb::ReducerOptions::create(
                    &mut w.fbb,
                    &fb::ReducerOptionsArgs { keep_dims: true },
                );
                w.op(
                    fb::BuiltinOperator::MEAN,
                    2,
                    &[x, axes],
                    &[y],
                    Some((fb::BuiltinOptions::ReducerOptions, opts.as_union_value())),
                );
                index[*o as usize] = Some(y);
            }
            Op::Mul {
                input: a,
                scale,
                output: o,
                requant,
            } => {
                let ((x, ti), (s, ts)) = (src(*a)?, src(*scale)?);
                let to = info(*o).ok_or_else(|| op_err(i, "no output tensor"))?;
                let real = ti.quant.scale as f64 * ts.quant.scale as f64 / to.quant.scale as f64;
                if Requant::from_real(real) != Some(*requant) {
                    return Err(op_err(
                        i,
                        "its requantization is not TFLite MUL's: re-quantize the model",
                    ));
                }
                let y = w.activation(*o, &to);
                let opts = fb::MulOptions::create(
                    &mut w.fbb,
                    &fb::MulOptionsArgs {
                        fused_activation_function: fb::ActivationFunctionType::NONE,
                    },
                );
                w.op(
                    fb::BuiltinOperator::MUL,
                    2,
                    &[x, s],
                    &[y],
                    Some((fb::BuiltinOptions::MulOptions, opts.as_union_value())),
                );
                index[*o as usize] = Some(y);
            }
            Op::Output { .. } => {}
        }
    }
    let output = output
        .ok_or_else(|| Error::Runtime("the model has no dequantizing output convolution".into()))?;
    Ok(w.finish(
        &format!("depthling {}: {}", env!("CARGO_PKG_VERSION"), model.name),
        tin,
        output,
    ))
}

/// `(pad, SAME?)`: TFLite's `SAME` pads `max((out − 1)·s + k − in, 0) / 2` before; the IR pads
/// `k / 2` on every side. Where the two agree on both axes the conv says `SAME`, else an explicit
/// `PAD` of `k / 2` goes first and the conv is `VALID`.
fn same_padding_agrees(ti: &TensorInfo, to: &TensorInfo, k: i32, s: i32) -> bool {
    let before = |inp: i32, out: i32| ((out - 1) * s + k - inp).max(0) / 2;
    before(ti.height as i32, to.height as i32) == k / 2
        && before(ti.width as i32, to.width as i32) == k / 2
}

/// The conv's input, padded explicitly where `SAME` would differ; returns (tensor, padding).
fn padded_input(
    w: &mut Writer<'_>,
    c: &Conv2d,
    x: i32,
    ti: &TensorInfo,
    to: &TensorInfo,
    ty: fb::TensorType,
    quant: QuantParams,
) -> (i32, fb::Padding) {
    let (k, s) = (c.kernel as i32, c.stride as i32);
    if same_padding_agrees(ti, to, k, s) {
        return (x, fb::Padding::SAME);
    }
    let p = k / 2;
    let paddings = w.tensor(
        &format!("{}_pads", tensor_name(c.output)),
        &[4, 2],
        fb::TensorType::INT32,
        None,
        Some(&i32_bytes(&[0, 0, p, p, p, p, 0, 0])),
    );
    let shape = [
        1,
        ti.height as i32 + 2 * p,
        ti.width as i32 + 2 * p,
        ti.channels as i32,
    ];
    let y = w.tensor(
        &format!("{}_padded", tensor_name(c.input)),
        &shape,
        ty,
        Some(Quant::tensor(quant)),
        None,
    );
    let opts = fb::PadOptions::create(&mut w.fbb, &fb::PadOptionsArgs {});
    w.op(
        fb::BuiltinOperator::PAD,
        2,
        &[x, paddings],
        &[y],
        Some((fb::BuiltinOptions::PadOptions, opts.as_union_value())),
    );
    (y, fb::Padding::VALID)
}

/// Weight and bias tensors of `c`, with `bias_bytes` (int32 or int64) as given.
fn conv_constants(
    w: &mut Writer<'_>,
    model: &Model<'_>,
    i: usize,
    c: &Conv2d,
    ti: &TensorInfo,
    to: &TensorInfo,
    bias_64: bool,
) -> Result<(i32, i32, Vec<f32>)> {
    let err = |what: &str| Error::Runtime(format!("op {i} (conv2d): {what}"));
    let oc = to.channels as usize;
    let k = c.kernel as i32;
    let weights = c
        .weights
        .get(model.weights)
        .ok_or_else(|| err("weights out of range"))?;
    let scales_raw = c
        .weight_scales
        .get(model.weights)
        .ok_or_else(|| err("weight scales out of range"))?;
    let scales: Vec<f32> = (0..oc)
        .map(|ch| read_f32(scales_raw, ch).ok_or_else(|| err("weight scales truncated")))
        .collect::<Result<_>>()?;
    let bias_raw = c
        .bias
        .get(model.weights)
        .ok_or_else(|| err("bias out of range"))?;
    let bias: Vec<i32> = (0..oc)
        .map(|ch| read_i32(bias_raw, ch).ok_or_else(|| err("bias truncated")))
        .collect::<Result<_>>()?;
    let (wshape, dim) = if c.depthwise {
        ([1, k, k, oc as i32], 3)
    } else {
        ([oc as i32, k, k, ti.channels as i32], 0)
    };
    let wt = w.tensor(
        &format!("{}_weights", tensor_name(c.output)),
        &wshape,
        fb::TensorType::INT8,
        Some(Quant::per_channel(scales.clone(), dim)),
        Some(weights),
    );
    let bias_scales: Vec<f32> = scales.iter().map(|&s| ti.quant.scale * s).collect();
    let (ty, bytes) = if bias_64 {
        (
            fb::TensorType::INT64,
            bias.iter()
                .flat_map(|&b| (b as i64).to_le_bytes())
                .collect::<Vec<u8>>(),
        )
    } else {
        (fb::TensorType::INT32, i32_bytes(&bias))
    };
    let bt = w.tensor(
        &format!("{}_bias", tensor_name(c.output)),
        &[oc as i32],
        ty,
        Some(Quant::per_channel(bias_scales, 0)),
        Some(&bytes),
    );
    Ok((wt, bt, scales))
}

/// The conv op itself (`CONV_2D` or `DEPTHWISE_CONV_2D`).
#[allow(clippy::too_many_arguments)]
fn conv_op(
    w: &mut Writer<'_>,
    c: &Conv2d,
    inputs: [i32; 3],
    y: i32,
    padding: fb::Padding,
    act: fb::ActivationFunctionType,
    version: i32,
) {
    let s = c.stride as i32;
    if c.depthwise {
        let opts = fb::DepthwiseConv2DOptions::create(
            &mut w.fbb,
            &fb::DepthwiseConv2DOptionsArgs {
                padding,
                stride_w: s,
                stride_h: s,
                depth_multiplier: 1,
                fused_activation_function: act,
                dilation_w_factor: 1,
                dilation_h_factor: 1,
            },
        );
        w.op(
            fb::BuiltinOperator::DEPTHWISE_CONV_2D,
            version,
            &inputs,
            &[y],
            Some((
                fb::BuiltinOptions::DepthwiseConv2DOptions,
                opts.as_union_value(),
            )),
        );
    } else {
        let opts = fb::Conv2DOptions::create(
            &mut w.fbb,
            &fb::Conv2DOptionsArgs {
                padding,
                stride_w: s,
                stride_h: s,
                fused_activation_function: act,
                dilation_w_factor: 1,
                dilation_h_factor: 1,
            },
        );
        w.op(
            fb::BuiltinOperator::CONV_2D,
            version,
            &inputs,
            &[y],
            Some((fb::BuiltinOptions::Conv2DOptions, opts.as_union_value())),
        );
    }
}

fn conv_int8(
    w: &mut Writer<'_>,
    model: &Model<'_>,
    i: usize,
    c: &Conv2d,
    x: i32,
    ti: TensorInfo,
    to: TensorInfo,
) -> Result<i32> {
    let err = |what: &str| Error::Runtime(format!("op {i} (conv2d): {what}"));
    let (x, padding) = padded_input(w, c, x, &ti, &to, fb::TensorType::INT8, ti.quant);
    let (wt, bt, scales) = conv_constants(w, model, i, c, &ti, &to, false)?;
    // the conv's own output: the pre-activation of a sigmoid, else the tensor itself
    let conv_out = match &c.lut {
        Some(l) => QuantParams {
            scale: l.scale,
            zero_point: l.zero_point,
        },
        None => to.quant,
    };
    let rq = c
        .requant
        .get(model.weights)
        .ok_or_else(|| err("requantization out of range"))?;
    for (ch, &s_w) in scales.iter().enumerate() {
        let expected =
            Requant::from_real(ti.quant.scale as f64 * s_w as f64 / conv_out.scale as f64);
        if expected != read_requant(rq, ch) {
            return Err(err(&format!("channel {ch}'s requantization is not TFLite's (input scale · weight scale / output scale): re-quantize the model")));
        }
    }
    let name = tensor_name(c.output);
    let y = w.tensor(
        &if c.lut.is_some() {
            format!("{name}_preact")
        } else {
            name.clone()
        },
        &nhwc(&to),
        fb::TensorType::INT8,
        Some(Quant::tensor(conv_out)),
        None,
    );
    conv_op(w, c, [x, wt, bt], y, padding, fused(c.act), 3);
    if c.lut.is_none() {
        return Ok(y);
    }
    if to.quant != SIGMOID_OUTPUT {
        return Err(err(
            "a sigmoid's output must have scale 1/256 and zero point −128",
        ));
    }
    let z = w.tensor(
        &name,
        &nhwc(&to),
        fb::TensorType::INT8,
        Some(Quant::tensor(to.quant)),
        None,
    );
    w.op(fb::BuiltinOperator::LOGISTIC, 2, &[y], &[z], None);
    Ok(z)
}

/// The last conv: int8 → int16 (exact), a 16×8 conv to int16 depth, and a DEQUANTIZE to float.
/// The int16 depth's scale covers twice the calibrated output range.
fn conv_output(
    w: &mut Writer<'_>,
    model: &Model<'_>,
    i: usize,
    c: &Conv2d,
    x: i32,
    ti: TensorInfo,
    to: TensorInfo,
) -> Result<i32> {
    let err = |what: &str| Error::Runtime(format!("op {i} (conv2d, output): {what}"));
    let q16_in = QuantParams {
        scale: ti.quant.scale,
        zero_point: 0,
    };
    let x16 = w.tensor(
        &format!("{}_i16", tensor_name(c.input)),
        &nhwc(&ti),
        fb::TensorType::INT16,
        Some(Quant::tensor(q16_in)),
        None,
    );
    w.op(fb::BuiltinOperator::QUANTIZE, 3, &[x], &[x16], None);
    let (x16, padding) = padded_input(w, c, x16, &ti, &to, fb::TensorType::INT16, q16_in);
    let (wt, bt, _) = conv_constants(w, model, i, c, &ti, &to, true)?;
    let scale16 = output_scale16(&to).ok_or_else(|| {
        err("the output tensor records no calibrated range (scale) to size the int16 depth by")
    })?;
    let y16 = w.tensor(
        &format!("{}_i16", tensor_name(c.output)),
        &nhwc(&to),
        fb::TensorType::INT16,
        Some(Quant::tensor(QuantParams {
            scale: scale16,
            zero_point: 0,
        })),
        None,
    );
    conv_op(
        w,
        c,
        [x16, wt, bt],
        y16,
        padding,
        fb::ActivationFunctionType::NONE,
        4,
    );
    let depth = w.tensor("depth", &nhwc(&to), fb::TensorType::FLOAT32, None, None);
    w.op(fb::BuiltinOperator::DEQUANTIZE, 3, &[y16], &[depth], None);
    Ok(depth)
}

/// Scale of the int16 depth: twice the largest magnitude of the calibrated output range, over
/// 32767 (a step of about 0.6 mm for a 10 m range).
pub fn output_scale16(to: &TensorInfo) -> Option<f32> {
    let q = to.quant;
    if !(q.scale.is_finite() && q.scale > 0.0) {
        return None;
    }
    let lo = (q.scale as f64 * (-128 - q.zero_point) as f64).abs();
    let hi = (q.scale as f64 * (127 - q.zero_point) as f64).abs();
    Some((2.0 * lo.max(hi) / 32767.0) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_whose_requantization_tflite_would_not_compute_is_refused() {
        // the example model's multipliers are arbitrary, not derived from its scales
        let bytes = depthling_model::example_model(32, 24, 1).expect("example");
        let model = Model::from_bytes(&bytes).expect("valid");
        let e = export(&model).expect_err("refused").to_string();
        assert!(
            e.contains("op 0 (conv2d)") && e.contains("not TFLite's"),
            "{e}"
        );
    }
}
