//! `.tflite` → `.dlm`: int8 TFLite models within the IR's op set (the forms
//! [`super::export`] writes, and the same ops from other converters), so that a TFLite user can
//! run a model on depthling's engine and boards. Anything else is refused, naming the operator
//! and its index.
//!
//! Requantizations are derived from the tensors' scales with TFLite's own formulas, so the
//! engine computes what TFLite's reference kernels compute. A `LOGISTIC` after a convolution
//! becomes the convolution's sigmoid, a `QUANTIZE` (int8→int8) feeding a `CONCATENATION` the
//! concat's own requantization, a `PAD` of `k/2` before a `VALID` convolution the IR's padding, and
//! the 16×8 output convolution (`QUANTIZE` int8→int16, `CONV_2D`, `DEQUANTIZE`), or an int8 one
//! followed by `DEQUANTIZE`, the IR's dequantizing output convolution (f32 straight from the
//! int32 accumulators: at least as precise as the file's int16 or int8 depth).

use std::collections::HashMap;

use tract_tflite::tflite as fb;

use depthling_model::quant::ADD_LEFT_SHIFT;
use depthling_model::{
    Activation, ConstRef, Conv2d, DType, Lut, ModelBuilder, Op, QuantParams, Requant, TensorId,
    UpsampleMode, INPUT_SCALE, INPUT_ZERO_POINT, SIGMOID_OUTPUT,
};

use crate::error::{Error, Result};

/// One TFLite tensor as the importer sees it.
#[derive(Clone, Debug)]
struct TensorView {
    name: String,
    shape: Vec<i32>,
    ty: fb::TensorType,
    scales: Vec<f32>,
    zero_points: Vec<i64>,
    dim: i32,
    data: Option<Vec<u8>>,
}

impl TensorView {
    fn per_tensor(&self) -> Option<QuantParams> {
        match (self.scales.as_slice(), self.zero_points.as_slice()) {
            ([s], [z]) if s.is_finite() && *s > 0.0 && (-32768..=32767).contains(z) => {
                Some(QuantParams {
                    scale: *s,
                    zero_point: *z as i32,
                })
            }
            _ => None,
        }
    }

    /// `[1, H, W, C]` as `(H, W, C)`.
    fn nhwc(&self) -> Option<(u16, u16, u16)> {
        match self.shape.as_slice() {
            [1, h, w, c] => Some((
                u16::try_from(*h).ok()?,
                u16::try_from(*w).ok()?,
                u16::try_from(*c).ok()?,
            )),
            _ => None,
        }
    }
}

fn builtin(code: &fb::OperatorCode<'_>) -> fb::BuiltinOperator {
    // TFLite's GetBuiltinCode: the larger of the two fields
    let deprecated = fb::BuiltinOperator(code.deprecated_builtin_code() as i32);
    if code.builtin_code().0 > deprecated.0 {
        code.builtin_code()
    } else {
        deprecated
    }
}

fn op_name(code: fb::BuiltinOperator) -> String {
    code.variant_name()
        .map_or_else(|| format!("builtin {}", code.0), str::to_string)
}

/// One operator: its code, inputs, outputs and options, with the index in the subgraph.
struct OpView<'a> {
    index: usize,
    code: fb::BuiltinOperator,
    inputs: Vec<i32>,
    outputs: Vec<i32>,
    op: fb::Operator<'a>,
}

/// The importer's state: the TFLite tensors and the IR under construction.
struct Importer {
    tensors: Vec<TensorView>,
    b: ModelBuilder,
    /// TFLite tensor → IR tensor.
    ids: HashMap<i32, TensorId>,
    /// TFLite tensor written by an int8→int8 QUANTIZE → its source (only a concat may read it).
    requantized: HashMap<i32, i32>,
    /// TFLite tensor written by a PAD → (source, padding on every side).
    padded: HashMap<i32, (i32, i32)>,
    /// TFLite tensor written by an int8→int16 QUANTIZE → its int8 source.
    widened: HashMap<i32, i32>,
}

/// Converts `.tflite` bytes (named `what` in errors) into `.dlm` bytes.
pub fn import(bytes: &[u8], name: &str) -> Result<Vec<u8>> {
    let model = fb::root_as_model(bytes)
        .map_err(|e| Error::Runtime(format!("not a valid TFLite flatbuffer: {e}")))?;
    if !fb::model_buffer_has_identifier(bytes) {
        return Err(Error::Runtime(
            "not a TFLite model (no TFL3 identifier)".into(),
        ));
    }
    let subgraphs = model
        .subgraphs()
        .ok_or_else(|| Error::Runtime("the model has no subgraph".into()))?;
    if subgraphs.len() != 1 {
        return Err(Error::Runtime(format!(
            "the model has {} subgraphs; depthling imports single-subgraph models",
            subgraphs.len()
        )));
    }
    let g = subgraphs.get(0);
    let buffers = model.buffers();
    let codes = model.operator_codes();
    let tensors: Vec<TensorView> = g
        .tensors()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    let q = t.quantization();
                    let data = buffers
                        .filter(|b| (t.buffer() as usize) < b.len())
                        .and_then(|b| b.get(t.buffer() as usize).data())
                        .map(|d| d.bytes().to_vec())
                        .filter(|d| !d.is_empty());
                    TensorView {
                        name: t.name().unwrap_or("").to_string(),
                        shape: t.shape().map(|s| s.iter().collect()).unwrap_or_default(),
                        ty: t.type_(),
                        scales: q
                            .and_then(|q| q.scale())
                            .map(|s| s.iter().collect())
                            .unwrap_or_default(),
                        zero_points: q
                            .and_then(|q| q.zero_point())
                            .map(|s| s.iter().collect())
                            .unwrap_or_default(),
                        dim: q.map_or(0, |q| q.quantized_dimension()),
                        data,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let list = |v: Option<flatbuffers::Vector<'_, i32>>| -> Vec<i32> {
        v.map(|v| v.iter().collect()).unwrap_or_default()
    };
    let (inputs, outputs) = (list(g.inputs()), list(g.outputs()));
    let mut ops = Vec::new();
    for (index, op) in g.operators().into_iter().flatten().enumerate() {
        let code = codes
            .filter(|c| (op.opcode_index() as usize) < c.len())
            .map(|c| builtin(&c.get(op.opcode_index() as usize)))
            .ok_or_else(|| {
                Error::Runtime(format!(
                    "operator {index}: opcode index {} out of range",
                    op.opcode_index()
                ))
            })?;
        let (i, o) = (list(op.inputs()), list(op.outputs()));
        for &t in i.iter().chain(&o) {
            if t < -1 || t as i64 >= tensors.len() as i64 {
                return Err(Error::Runtime(format!(
                    "operator {index} ({}): tensor index {t} out of range",
                    op_name(code)
                )));
            }
        }
        ops.push(OpView {
            index,
            code,
            inputs: i,
            outputs: o,
            op,
        });
    }
    let [input] = inputs.as_slice() else {
        return Err(Error::Runtime(format!(
            "the model has {} inputs; depthling's models take one RGB image",
            inputs.len()
        )));
    };
    let [output] = outputs.as_slice() else {
        return Err(Error::Runtime(format!(
            "the model has {} outputs; depthling's models give one depth map",
            outputs.len()
        )));
    };
    if *input < 0
        || *input as usize >= tensors.len()
        || *output < 0
        || *output as usize >= tensors.len()
    {
        return Err(Error::Runtime("graph input or output out of range".into()));
    }
    let mut im = Importer {
        tensors,
        b: ModelBuilder::new(name),
        ids: HashMap::new(),
        requantized: HashMap::new(),
        padded: HashMap::new(),
        widened: HashMap::new(),
    };
    im.b.generator = format!(
        "depthling {} (imported from TFLite)",
        env!("CARGO_PKG_VERSION")
    );
    im.input(*input)?;
    let mut done_output = false;
    let mut k = 0;
    while k < ops.len() {
        let consumed = im.op(&ops, k, *output, &mut done_output)?;
        k += consumed;
    }
    if !done_output {
        return Err(Error::Runtime(
            "the graph output is not a depth map from a DEQUANTIZE after the last convolution"
                .into(),
        ));
    }
    im.b.to_bytes()
        .map_err(|e| Error::Runtime(format!("the imported model is invalid: {e}")))
}

fn unsupported(o: &OpView<'_>, why: &str) -> Error {
    Error::Runtime(format!("operator {} ({}): {why}", o.index, op_name(o.code)))
}

fn requant(o: &OpView<'_>, real: f64) -> Result<Requant> {
    Requant::from_real(real).ok_or_else(|| {
        unsupported(
            o,
            &format!("a rescaling by {real} is outside the IR's fixed-point range"),
        )
    })
}

fn act(o: &OpView<'_>, a: fb::ActivationFunctionType) -> Result<Activation> {
    match a {
        fb::ActivationFunctionType::NONE => Ok(Activation::None),
        fb::ActivationFunctionType::RELU => Ok(Activation::Relu),
        fb::ActivationFunctionType::RELU6 => Ok(Activation::Relu6),
        other => Err(unsupported(
            o,
            &format!(
                "fused activation {} is not in the IR",
                other.variant_name().unwrap_or("?")
            ),
        )),
    }
}

impl Importer {
    fn t(&self, i: i32) -> &TensorView {
        &self.tensors[i as usize]
    }

    fn input(&mut self, i: i32) -> Result<()> {
        let t = self.t(i).clone();
        let q = t.per_tensor();
        let (h, w, c) = t.nhwc().ok_or_else(|| {
            Error::Runtime(format!(
                "input {:?}: shape {:?} is not [1, H, W, 3]",
                t.name, t.shape
            ))
        })?;
        if t.ty != fb::TensorType::INT8
            || c != 3
            || q != Some(QuantParams {
                scale: INPUT_SCALE,
                zero_point: INPUT_ZERO_POINT,
            })
        {
            return Err(Error::Runtime(format!(
                "input {:?}: depthling's models take int8 RGB [1, H, W, 3] with scale 1/255 and zero point −128 (a pixel p is p ^ 0x80); this one is {:?} {:?} {:?}",
                t.name,
                t.ty.variant_name().unwrap_or("?"),
                t.shape,
                q
            )));
        }
        let id = self.b.tensor(
            h,
            w,
            c,
            DType::I8,
            q.unwrap_or(QuantParams {
                scale: INPUT_SCALE,
                zero_point: INPUT_ZERO_POINT,
            }),
        );
        self.b.input = id;
        self.ids.insert(i, id);
        Ok(())
    }

    /// The IR tensor of an int8 activation `i` read by `o`.
    fn read(&self, o: &OpView<'_>, i: i32) -> Result<TensorId> {
        if self.requantized.contains_key(&i) {
            return Err(unsupported(
                o,
                "reads a QUANTIZE (int8→int8) output: the IR requantizes only inside a concatenation",
            ));
        }
        self.ids.get(&i).copied().ok_or_else(|| {
            unsupported(
                o,
                &format!(
                    "reads tensor {:?}, which no supported op wrote",
                    self.t(i).name
                ),
            )
        })
    }

    /// A new int8 IR tensor for TFLite tensor `i`.
    fn write(&mut self, o: &OpView<'_>, i: i32) -> Result<TensorId> {
        let t = self.t(i).clone();
        let (h, w, c) = t.nhwc().ok_or_else(|| {
            unsupported(
                o,
                &format!("output shape {:?} is not [1, H, W, C]", t.shape),
            )
        })?;
        let q = t
            .per_tensor()
            .filter(|q| (-128..=127).contains(&q.zero_point))
            .filter(|_| t.ty == fb::TensorType::INT8)
            .ok_or_else(|| unsupported(o, "output is not per-tensor quantized int8"))?;
        let id = self.b.tensor(h, w, c, DType::I8, q);
        self.ids.insert(i, id);
        Ok(id)
    }

    fn quant_of(&self, id: TensorId) -> QuantParams {
        self.b.tensors[id as usize].quant
    }

    /// Imports the operator at `k` (with the LOGISTIC or DEQUANTIZE it absorbs); returns how
    /// many operators it consumed.
    fn op(&mut self, ops: &[OpView<'_>], k: usize, output: i32, done: &mut bool) -> Result<usize> {
        let o = &ops[k];
        if *done {
            return Err(unsupported(o, "comes after the depth output"));
        }
        let one_out = || -> Result<i32> {
            match o.outputs.as_slice() {
                [x] if *x >= 0 => Ok(*x),
                _ => Err(unsupported(o, "needs exactly one output")),
            }
        };
        let arg = |n: usize| -> Result<i32> {
            o.inputs
                .get(n)
                .copied()
                .filter(|&x| x >= 0)
                .ok_or_else(|| unsupported(o, &format!("input {n} missing")))
        };
        match o.code {
            fb::BuiltinOperator::CONV_2D | fb::BuiltinOperator::DEPTHWISE_CONV_2D => {
                return self.conv(ops, k, output, done)
            }
            fb::BuiltinOperator::PAD => {
                let (x, pads) = (arg(0)?, arg(1)?);
                let p = self.t(pads).data.clone().unwrap_or_default();
                let v: Vec<i32> = p
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                match v.as_slice() {
                    [0, 0, a, b, c, d, 0, 0] if a == b && b == c && c == d && *a > 0 => {
                        self.padded.insert(one_out()?, (x, *a));
                    }
                    _ => {
                        return Err(unsupported(
                            o,
                            &format!("paddings {v:?}: only the same spatial padding on every side, before a convolution, is in the IR"),
                        ))
                    }
                }
            }
            fb::BuiltinOperator::QUANTIZE => {
                let x = arg(0)?;
                let y = one_out()?;
                let (ti, to) = (self.t(x).clone(), self.t(y).clone());
                match (ti.ty, to.ty) {
                    (fb::TensorType::INT8, fb::TensorType::INT8) => {
                        self.read(o, x)?;
                        self.requantized.insert(y, x);
                    }
                    (fb::TensorType::INT8, fb::TensorType::INT16)
                        if to.per_tensor().map(|q| q.zero_point) == Some(0)
                            && to.per_tensor().map(|q| q.scale) == ti.per_tensor().map(|q| q.scale) =>
                    {
                        self.read(o, x)?;
                        self.widened.insert(y, x);
                    }
                    _ => return Err(unsupported(o, "only int8→int8 before a concatenation, and the exact int8→int16 before the 16×8 output convolution, are in the IR")),
                }
            }
            fb::BuiltinOperator::ADD => {
                let (a, bb) = (self.read(o, arg(0)?)?, self.read(o, arg(1)?)?);
                let opts = o.op.builtin_options_as_add_options();
                let a_act = act(
                    o,
                    opts.map_or(fb::ActivationFunctionType::NONE, |p| {
                        p.fused_activation_function()
                    }),
                )?;
                let y = self.write(o, one_out()?)?;
                let (sa, sb, so) = (
                    self.quant_of(a).scale as f64,
                    self.quant_of(bb).scale as f64,
                    self.quant_of(y).scale as f64,
                );
                if self.b.tensors[a as usize].elements() != self.b.tensors[y as usize].elements()
                    || self.b.tensors[bb as usize].elements()
                        != self.b.tensors[y as usize].elements()
                {
                    return Err(unsupported(o, "broadcasting ADD is not in the IR"));
                }
                let twice_max = 2.0 * sa.max(sb);
                let op = Op::Add {
                    a,
                    b: bb,
                    output: y,
                    a_requant: requant(o, sa / twice_max)?,
                    b_requant: requant(o, sb / twice_max)?,
                    out_requant: requant(o, twice_max / ((1i64 << ADD_LEFT_SHIFT) as f64 * so))?,
                    act: a_act,
                };
                self.b.push(op);
            }
            fb::BuiltinOperator::MUL => {
                let (x, s) = (self.read(o, arg(0)?)?, self.read(o, arg(1)?)?);
                let opts = o.op.builtin_options_as_mul_options();
                if act(
                    o,
                    opts.map_or(fb::ActivationFunctionType::NONE, |p| {
                        p.fused_activation_function()
                    }),
                )? != Activation::None
                {
                    return Err(unsupported(o, "a fused activation on MUL is not in the IR"));
                }
                let y = self.write(o, one_out()?)?;
                let (tx, ts) = (self.b.tensors[x as usize], self.b.tensors[s as usize]);
                if ts.height != 1 || ts.width != 1 || ts.channels != tx.channels {
                    return Err(unsupported(
                        o,
                        "only [1,H,W,C] × [1,1,1,C] (squeeze-excitation) is in the IR",
                    ));
                }
                let real =
                    tx.quant.scale as f64 * ts.quant.scale as f64 / self.quant_of(y).scale as f64;
                let op = Op::Mul {
                    input: x,
                    scale: s,
                    output: y,
                    requant: requant(o, real)?,
                };
                self.b.push(op);
            }
            fb::BuiltinOperator::CONCATENATION => {
                let opts = o.op.builtin_options_as_concatenation_options();
                let axis = opts.map_or(0, |p| p.axis());
                if axis != 3 && axis != -1 {
                    return Err(unsupported(
                        o,
                        &format!("axis {axis}: only channel concatenation is in the IR"),
                    ));
                }
                if act(
                    o,
                    opts.map_or(fb::ActivationFunctionType::NONE, |p| {
                        p.fused_activation_function()
                    }),
                )? != Activation::None
                {
                    return Err(unsupported(
                        o,
                        "a fused activation on CONCATENATION is not in the IR",
                    ));
                }
                if o.inputs.len() > depthling_model::MAX_CONCAT_INPUTS {
                    return Err(unsupported(
                        o,
                        &format!(
                            "{} inputs; the IR concatenates at most {}",
                            o.inputs.len(),
                            depthling_model::MAX_CONCAT_INPUTS
                        ),
                    ));
                }
                let y = one_out()?;
                let yq = self.t(y).per_tensor();
                let mut srcs = Vec::new();
                for n in 0..o.inputs.len() {
                    let mut x = arg(n)?;
                    if let Some(&src) = self.requantized.get(&x) {
                        if self.t(x).per_tensor() != yq {
                            return Err(unsupported(
                                o,
                                "a QUANTIZE before it does not produce its output's quantization",
                            ));
                        }
                        x = src;
                    }
                    srcs.push(self.read(o, x)?);
                }
                let y = self.write(o, y)?;
                let so = self.quant_of(y).scale as f64;
                let mut inputs = heapless::Vec::new();
                let mut rq = heapless::Vec::new();
                for id in srcs {
                    let r = requant(o, self.quant_of(id).scale as f64 / so)?;
                    let _ = inputs.push(id);
                    let _ = rq.push(r);
                }
                self.b.push(Op::Concat {
                    inputs,
                    requant: rq,
                    output: y,
                });
            }
            fb::BuiltinOperator::RESIZE_NEAREST_NEIGHBOR | fb::BuiltinOperator::RESIZE_BILINEAR => {
                let x = self.read(o, arg(0)?)?;
                let bilinear = o.code == fb::BuiltinOperator::RESIZE_BILINEAR;
                let (align, half) = if bilinear {
                    o.op.builtin_options_as_resize_bilinear_options()
                        .map_or((false, false), |p| {
                            (p.align_corners(), p.half_pixel_centers())
                        })
                } else {
                    o.op.builtin_options_as_resize_nearest_neighbor_options()
                        .map_or((false, false), |p| {
                            (p.align_corners(), p.half_pixel_centers())
                        })
                };
                if align || (bilinear && !half) {
                    return Err(unsupported(o, "only half-pixel bilinear (PyTorch's align_corners=False) and plain nearest resizing are in the IR"));
                }
                let y = self.write(o, one_out()?)?;
                let (ti, to) = (self.b.tensors[x as usize], self.b.tensors[y as usize]);
                let factor = to.height / ti.height.max(1);
                if ti.height == 0
                    || to.height != ti.height * factor
                    || to.width != ti.width * factor
                    || ![2, 4, 8, 16].contains(&factor)
                    || ti.quant != to.quant
                {
                    return Err(unsupported(o, "only upsampling by 2, 4, 8 or 16 on both axes, keeping the quantization, is in the IR"));
                }
                self.b.push(Op::Upsample {
                    input: x,
                    output: y,
                    mode: if bilinear {
                        UpsampleMode::Bilinear
                    } else {
                        UpsampleMode::Nearest
                    },
                    factor: factor as u8,
                });
            }
            fb::BuiltinOperator::MEAN => {
                let x = self.read(o, arg(0)?)?;
                let axes = self.t(arg(1)?).data.clone().unwrap_or_default();
                let axes: Vec<i32> = axes
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                let keep =
                    o.op.builtin_options_as_reducer_options()
                        .is_some_and(|p| p.keep_dims());
                let mut sorted = axes.clone();
                sorted.sort_unstable();
                if sorted != [1, 2] || !keep {
                    return Err(unsupported(
                        o,
                        &format!(
                            "axes {axes:?}: only the mean over H and W with keep_dims is in the IR"
                        ),
                    ));
                }
                let y = self.write(o, one_out()?)?;
                let real = self.quant_of(x).scale as f64 / self.quant_of(y).scale as f64;
                let op = Op::GlobalAvgPool {
                    input: x,
                    output: y,
                    requant: requant(o, real)?,
                };
                self.b.push(op);
            }
            _ => return Err(unsupported(o, "not in depthling's IR op set")),
        }
        Ok(1)
    }

    /// A convolution, with the LOGISTIC after it (a sigmoid) or the DEQUANTIZE after it (the
    /// depth output).
    fn conv(
        &mut self,
        ops: &[OpView<'_>],
        k: usize,
        output: i32,
        done: &mut bool,
    ) -> Result<usize> {
        let o = &ops[k];
        let depthwise = o.code == fb::BuiltinOperator::DEPTHWISE_CONV_2D;
        let (padding, sh, sw, dh, dw, fused, mult) = if depthwise {
            let p =
                o.op.builtin_options_as_depthwise_conv_2_doptions()
                    .ok_or_else(|| unsupported(o, "options missing"))?;
            (
                p.padding(),
                p.stride_h(),
                p.stride_w(),
                p.dilation_h_factor(),
                p.dilation_w_factor(),
                p.fused_activation_function(),
                p.depth_multiplier(),
            )
        } else {
            let p =
                o.op.builtin_options_as_conv_2_doptions()
                    .ok_or_else(|| unsupported(o, "options missing"))?;
            (
                p.padding(),
                p.stride_h(),
                p.stride_w(),
                p.dilation_h_factor(),
                p.dilation_w_factor(),
                p.fused_activation_function(),
                1,
            )
        };
        if sh != sw || !(1..=2).contains(&sh) || dh != 1 || dw != 1 {
            return Err(unsupported(o, &format!("strides {sh}×{sw}, dilation {dh}×{dw}: the IR has equal strides of 1 or 2 and no dilation")));
        }
        let (x0, wi, bi) = match o.inputs.as_slice() {
            [x, w, b] if *x >= 0 && *w >= 0 && *b >= 0 => (*x, *w, *b),
            _ => return Err(unsupported(o, "needs input, weights and bias")),
        };
        let y = match o.outputs.as_slice() {
            [y] if *y >= 0 => *y,
            _ => return Err(unsupported(o, "needs exactly one output")),
        };
        // undo the export's explicit PAD and int16 widening
        let (x1, pad) = match self.padded.get(&x0) {
            Some(&(src, p)) if padding == fb::Padding::VALID => (src, Some(p)),
            Some(_) => {
                return Err(unsupported(
                    o,
                    "a PAD before a SAME convolution is not in the IR",
                ))
            }
            None => (x0, None),
        };
        let (x, wide) = match self.widened.get(&x1) {
            Some(&src) => (src, true),
            None => (x1, false),
        };
        let input = self.read(o, x)?;
        let ti = self.b.tensors[input as usize];
        let wt = self.t(wi).clone();
        let bt = self.t(bi).clone();
        let (kh, kw, wc, oc) = match wt.shape.as_slice() {
            // OHWI (depthwise: 1HWC): the last axis is the input channels, or the channels
            [a, b, c, d] => (*b, *c, *d, if depthwise { *d } else { *a }),
            _ => return Err(unsupported(o, "weights are not 4-D")),
        };
        if kh != kw || ![1, 3, 5].contains(&kh) {
            return Err(unsupported(
                o,
                &format!("kernel {kh}×{kw}: the IR has square 1, 3 and 5"),
            ));
        }
        let kernel = kh;
        if depthwise && (mult != 1 || wt.shape[0] != 1 || oc != ti.channels as i32) {
            return Err(unsupported(
                o,
                "only depth multiplier 1 (one filter per channel) is in the IR",
            ));
        }
        if !depthwise && wc != ti.channels as i32 {
            return Err(unsupported(o, "grouped convolution is not in the IR"));
        }
        if wt.ty != fb::TensorType::INT8
            || wt.scales.len() != oc as usize
            || wt.zero_points.iter().any(|&z| z != 0)
            || wt.dim != if depthwise { 3 } else { 0 }
        {
            return Err(unsupported(
                o,
                "weights must be int8, symmetric, quantized per output channel",
            ));
        }
        if wt.scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(unsupported(o, "a weight scale is not a positive number"));
        }
        let weights = wt
            .data
            .clone()
            .ok_or_else(|| unsupported(o, "weights are not constant"))?;
        let per = if depthwise {
            kernel * kernel
        } else {
            kernel * kernel * ti.channels as i32
        };
        if weights.len() != (oc * per) as usize || weights.iter().any(|&w| w as i8 == -128) {
            return Err(unsupported(o, "weights have the wrong size or use −128"));
        }
        let bias_bytes = bt.data.clone().unwrap_or_default();
        let bias: Vec<i32> = match (bt.ty, wide) {
            (fb::TensorType::INT32, false) => bias_bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            (fb::TensorType::INT64, true) => bias_bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .map(|v| {
                    i32::try_from(v).map_err(|_| unsupported(o, "an int64 bias exceeds int32"))
                })
                .collect::<Result<_>>()?,
            _ => {
                return Err(unsupported(
                    o,
                    "bias must be int32 (int64 for the 16×8 output convolution)",
                ))
            }
        };
        if bias.len() != oc as usize {
            return Err(unsupported(o, "bias has the wrong length"));
        }
        // padding: the IR pads k/2 on every side
        let (oh, ow) = {
            let t = self.t(y);
            match t.shape.as_slice() {
                [1, h, w, c] if *c == oc => (*h, *w),
                _ => return Err(unsupported(o, "output shape does not fit")),
            }
        };
        let expect = |n: u16| (n as i32 + sh - 1) / sh;
        let agrees = match pad {
            Some(p) => p == kernel / 2,
            None if padding == fb::Padding::SAME => {
                let before = |inp: i32, out: i32| ((out - 1) * sh + kernel - inp).max(0) / 2;
                before(ti.height as i32, oh) == kernel / 2
                    && before(ti.width as i32, ow) == kernel / 2
            }
            None => kernel == 1,
        };
        if !agrees || oh != expect(ti.height) || ow != expect(ti.width) {
            return Err(unsupported(
                o,
                "its padding is not k/2 on every side (the IR's PyTorch convention)",
            ));
        }
        let s_in = ti.quant.scale as f64;
        let weights_ref = self.b.constant(&weights);
        let bias_ref = self.b.constant_i32(&bias);
        let scales_ref = self.b.constant_f32(&wt.scales);
        let conv = |output: TensorId, act: Activation, requant: ConstRef, lut: Option<Lut>| {
            Op::Conv2d(Conv2d {
                input,
                output,
                kernel: kernel as u8,
                stride: sh as u8,
                depthwise,
                act,
                weights: weights_ref,
                bias: bias_ref,
                requant,
                weight_scales: scales_ref,
                lut,
            })
        };
        let next = ops.get(k + 1);
        if wide || self.t(y).ty == fb::TensorType::INT16 {
            // the depth output: the 16×8 conv, then DEQUANTIZE to the graph output
            let n = next.filter(|n| {
                n.code == fb::BuiltinOperator::DEQUANTIZE && n.inputs.first() == Some(&y)
            });
            let Some(n) = n else {
                return Err(unsupported(
                    o,
                    "an int16 convolution must be the depth output, followed by DEQUANTIZE",
                ));
            };
            return self
                .output_conv(o, n, y, output, done, oc, oh, ow, conv)
                .map(|_| 2);
        }
        if let Some(n) = next
            .filter(|n| n.code == fb::BuiltinOperator::DEQUANTIZE && n.inputs.first() == Some(&y))
        {
            return self
                .output_conv(o, n, y, output, done, oc, oh, ow, conv)
                .map(|_| 2);
        }
        let yq = self
            .t(y)
            .per_tensor()
            .ok_or_else(|| unsupported(o, "output is not per-tensor quantized"))?;
        let requants = |q: QuantParams| -> Result<Vec<Requant>> {
            wt.scales
                .iter()
                .map(|&s| requant(o, s_in * s as f64 / q.scale as f64))
                .collect()
        };
        let a = act(o, fused)?;
        if let Some(n) =
            next.filter(|n| n.code == fb::BuiltinOperator::LOGISTIC && n.inputs.first() == Some(&y))
        {
            // a sigmoid: the conv's output is the LUT's input, the LOGISTIC's the op's output
            let used_elsewhere = ops[k + 2..].iter().any(|m| m.inputs.contains(&y)) || y == output;
            if a != Activation::None || used_elsewhere {
                return Err(unsupported(o, "a convolution before LOGISTIC must have no activation and feed only the LOGISTIC"));
            }
            let z = match n.outputs.as_slice() {
                [z] if *z >= 0 => *z,
                _ => return Err(unsupported(n, "needs exactly one output")),
            };
            let out = self.write(n, z)?;
            if self.quant_of(out) != SIGMOID_OUTPUT {
                return Err(unsupported(
                    n,
                    "the output must have scale 1/256 and zero point −128",
                ));
            }
            let rq = requants(yq)?;
            let table = crate::quant::sigmoid_table(yq);
            let requant_ref = self.b.constant_requant(&rq);
            let lut = Lut {
                table: self.b.constant_i8(&table),
                zero_point: yq.zero_point,
                scale: yq.scale,
            };
            let op = conv(out, Activation::Sigmoid, requant_ref, Some(lut));
            self.b.push(op);
            return Ok(2);
        }
        let out = self.write(o, y)?;
        let rq = requants(yq)?;
        let requant_ref = self.b.constant_requant(&rq);
        let op = conv(out, a, requant_ref, None);
        self.b.push(op);
        Ok(1)
    }

    #[allow(clippy::too_many_arguments)]
    fn output_conv(
        &mut self,
        o: &OpView<'_>,
        n: &OpView<'_>,
        y: i32,
        output: i32,
        done: &mut bool,
        oc: i32,
        oh: i32,
        ow: i32,
        conv: impl Fn(TensorId, Activation, ConstRef, Option<Lut>) -> Op,
    ) -> Result<()> {
        let z = match n.outputs.as_slice() {
            [z] if *z == output => *z,
            _ => {
                return Err(unsupported(
                    n,
                    "a DEQUANTIZE is in the IR only as the graph's depth output",
                ))
            }
        };
        if oc != 1 || self.t(z).ty != fb::TensorType::FLOAT32 {
            return Err(unsupported(
                n,
                "the depth output must be float32 [1, H, W, 1]",
            ));
        }
        let yq = self
            .t(y)
            .per_tensor()
            .ok_or_else(|| unsupported(o, "output is not per-tensor quantized"))?;
        // record the file's depth range (the IR computes f32 depth from the accumulators)
        let range = match self.t(y).ty {
            fb::TensorType::INT16 => yq.scale as f64 * 32767.0 / 2.0,
            _ => yq.scale as f64 * 255.0,
        };
        let q = QuantParams {
            scale: (range / 255.0) as f32,
            zero_point: -128,
        };
        let (h, w) = (
            u16::try_from(oh).map_err(|_| unsupported(o, "too large"))?,
            u16::try_from(ow).map_err(|_| unsupported(o, "too large"))?,
        );
        let out = self.b.tensor(h, w, 1, DType::F32, q);
        let op = conv(out, Activation::None, ConstRef::EMPTY, None);
        self.b.push(op);
        self.b.push(Op::Output { input: out });
        *done = true;
        Ok(())
    }
}
