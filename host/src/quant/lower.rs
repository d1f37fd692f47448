//! Lowering a calibrated network to the IR: BatchNorm folded, weights and biases quantized,
//! requantization multipliers, one validated `.dlm`.

use candle_core::Device;
use depthling_model::quant::{quantize_i8, ADD_LEFT_SHIFT};
use depthling_model::{
    Activation, ConstRef, Conv2d, DType, ModelBuilder, Op, QuantParams, Requant, TensorId,
    UpsampleMode, SIGMOID_OUTPUT,
};

use super::*;
use crate::data::Sample;
use crate::error::{Error, Result};
use crate::nets::graph::{Act, GraphNet, Interp, Node};

/// Provenance written into the `.dlm`.
#[derive(Clone, Debug, Default)]
pub struct Provenance {
    pub name: String,
    pub teacher: String,
    pub method: String,
    pub metrics: Vec<(String, f32)>,
}

fn act_ir(a: Act) -> Activation {
    match a {
        Act::None => Activation::None,
        Act::Relu => Activation::Relu,
        Act::Relu6 => Activation::Relu6,
        Act::Sigmoid => Activation::Sigmoid,
    }
}

/// The sigmoid's 256-entry table from the pre-activation int8 `q` (index `q + 128`) to the
/// output (scale 1/256, zero point −128): LiteRT's int8 LOGISTIC (`LUTPopulate`: f32 dequantize,
/// 1/(1+e^−x), round(y·256) − 128). TFLite Micro computes the same function in gemmlowp fixed
/// point, which can differ by one in rare entries.
pub fn sigmoid_table(pre: QuantParams) -> Vec<i8> {
    (-128i32..=127)
        .map(|v| {
            let x = (v - pre.zero_point) as f32 * pre.scale;
            quantize_i8(
                1.0 / (1.0 + (-x).exp()),
                SIGMOID_OUTPUT.scale,
                SIGMOID_OUTPUT.zero_point,
            )
        })
        .collect()
}

fn requant(real: f64, node: usize, what: &str) -> Result<Requant> {
    Requant::from_real(real).ok_or_else(|| {
        Error::Runtime(format!(
            "node {node}: {what} multiplier {real} cannot be represented"
        ))
    })
}

/// Quantizes `net` (calibrated on `calib`, all of one size) into `.dlm` bytes.
pub fn quantize(
    net: &GraphNet,
    calib: &[Sample],
    calibration: Calibration,
    provenance: &Provenance,
    device: &Device,
) -> Result<Vec<u8>> {
    let plan = calibrate(net, calib, calibration, device)?;
    let first = &calib[0];
    quantize_with(net, &plan, (first.width, first.height), provenance)
}

/// Quantizes `net` at `width × height` with the activation grids of `plan` into `.dlm` bytes.
pub fn quantize_with(
    net: &GraphNet,
    plan: &ActPlan,
    (width, height): (usize, usize),
    provenance: &Provenance,
) -> Result<Vec<u8>> {
    let spec = net.spec();
    let shapes = spec.shapes(width, height)?;
    spec.check_int8(&shapes)?;
    if plan.post.len() != spec.nodes.len() {
        return Err(Error::Runtime(format!(
            "activation plan has {} nodes, the network {}",
            plan.post.len(),
            spec.nodes.len()
        )));
    }
    let last = spec.nodes.len() - 1;

    let mut b = ModelBuilder::new(&provenance.name);
    b.teacher = provenance.teacher.clone();
    b.method = provenance.method.clone();
    b.generator = format!("depthling {}", env!("CARGO_PKG_VERSION"));
    b.metrics = provenance.metrics.clone();

    let dim = |v: usize, what: &str| {
        u16::try_from(v)
            .map_err(|_| Error::Runtime(format!("{what} {v} exceeds the IR's 16-bit dimensions")))
    };
    let mut ids: Vec<TensorId> = Vec::with_capacity(spec.nodes.len());
    let mut qp: Vec<QuantParams> = Vec::with_capacity(spec.nodes.len());
    for (i, node) in spec.nodes.iter().enumerate() {
        let s = shapes[i];
        let q = plan.post[i];
        let dtype = if i == last { DType::F32 } else { DType::I8 };
        let id = b.tensor(
            dim(s.height, "height")?,
            dim(s.width, "width")?,
            dim(s.channels, "channels")?,
            dtype,
            q,
        );
        if i == 0 {
            b.input = id;
        }
        ids.push(id);
        qp.push(q);
        match node {
            Node::Input => {}
            Node::Conv {
                input,
                out_channels,
                kernel,
                depthwise,
                act,
                stride,
                ..
            } => {
                let (w, bias) = net.folded_conv(i)?;
                let (oc, k) = (*out_channels, *kernel);
                let cin = shapes[*input].channels;
                let per = if *depthwise { k * k } else { cin * k * k };
                let s_in = qp[*input].scale as f64;
                let mut scales = Vec::with_capacity(oc);
                let mut w_q = vec![0i8; oc * per];
                let mut b_q = Vec::with_capacity(oc);
                for c in 0..oc {
                    let wc = &w[c * per..(c + 1) * per];
                    let max_abs = wc.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                    // keep the int32 bias representable even for a dead channel
                    let s_w = (max_abs / 127.0)
                        .max(bias[c].abs() as f64 / (s_in * (1u64 << 30) as f64))
                        .max(1e-12);
                    scales.push(s_w as f32);
                    for (j, &v) in wc.iter().enumerate() {
                        // candle OIHW (depthwise C1HW) → OHWI (depthwise HWC)
                        let (ci, ky, kx) = if *depthwise {
                            (0, j / k, j % k)
                        } else {
                            (j / (k * k), (j / k) % k, j % k)
                        };
                        let dst = if *depthwise {
                            (ky * k + kx) * oc + c
                        } else {
                            ((c * k + ky) * k + kx) * cin + ci
                        };
                        w_q[dst] = (v as f64 / s_w).round().clamp(-127.0, 127.0) as i8;
                    }
                    b_q.push(
                        (bias[c] as f64 / (s_in * s_w))
                            .round()
                            .clamp(i32::MIN as f64, i32::MAX as f64) as i32,
                    );
                }
                let weights = b.constant_i8(&w_q);
                let bias_ref = b.constant_i32(&b_q);
                let weight_scales = b.constant_f32(&scales);
                let (req, lut) = if i == last {
                    (ConstRef::EMPTY, None)
                } else {
                    let target = match (act, plan.pre[i]) {
                        (Act::Sigmoid, Some(p)) => p,
                        (Act::Sigmoid, None) => {
                            return Err(Error::Runtime(format!(
                                "node {i}: sigmoid without a calibrated input range"
                            )))
                        }
                        _ => q,
                    };
                    let r = scales
                        .iter()
                        .map(|&s_w| requant(s_in * s_w as f64 / target.scale as f64, i, "conv"))
                        .collect::<Result<Vec<_>>>()?;
                    let lut = (*act == Act::Sigmoid).then(|| depthling_model::Lut {
                        table: b.constant_i8(&sigmoid_table(target)),
                        zero_point: target.zero_point,
                        scale: target.scale,
                    });
                    (b.constant_requant(&r), lut)
                };
                if i == last && *act != Act::None {
                    return Err(Error::Runtime(
                        "the output convolution must not have an activation".into(),
                    ));
                }
                b.push(Op::Conv2d(Conv2d {
                    input: ids[*input],
                    output: id,
                    kernel: k as u8,
                    stride: *stride as u8,
                    depthwise: *depthwise,
                    act: act_ir(*act),
                    weights,
                    bias: bias_ref,
                    requant: req,
                    weight_scales,
                    lut,
                }));
            }
            Node::Add { a, b: rhs, act } => {
                let (sa, sb, so) = (qp[*a].scale as f64, qp[*rhs].scale as f64, q.scale as f64);
                let twice_max = 2.0 * sa.max(sb);
                b.push(Op::Add {
                    a: ids[*a],
                    b: ids[*rhs],
                    output: id,
                    a_requant: requant(sa / twice_max, i, "add input")?,
                    b_requant: requant(sb / twice_max, i, "add input")?,
                    out_requant: requant(
                        twice_max / ((1i64 << ADD_LEFT_SHIFT) as f64 * so),
                        i,
                        "add output",
                    )?,
                    act: act_ir(*act),
                });
            }
            Node::Concat { inputs } => {
                let mut ins = heapless::Vec::new();
                let mut rq = heapless::Vec::new();
                for &j in inputs {
                    let r = requant(qp[j].scale as f64 / q.scale as f64, i, "concat")?;
                    ins.push(ids[j]).map_err(|_| {
                        Error::Runtime(format!(
                            "node {i}: concat of more than {} inputs",
                            depthling_model::MAX_CONCAT_INPUTS
                        ))
                    })?;
                    let _ = rq.push(r);
                }
                b.push(Op::Concat {
                    inputs: ins,
                    requant: rq,
                    output: id,
                });
            }
            Node::Upsample {
                input,
                factor,
                mode,
                ..
            } => {
                b.push(Op::Upsample {
                    input: ids[*input],
                    output: id,
                    mode: match mode {
                        Interp::Nearest => UpsampleMode::Nearest,
                        Interp::Bilinear => UpsampleMode::Bilinear,
                    },
                    factor: *factor as u8,
                });
            }
            Node::MaxPool { .. } => {
                return Err(Error::Runtime(format!(
                    "node {i}: max pooling has no int8 op"
                )))
            }
            Node::GlobalAvgPool { input } => {
                // TFLite's MEAN: requantize the sum, then divide by the pixel count
                let real = qp[*input].scale as f64 / q.scale as f64;
                b.push(Op::GlobalAvgPool {
                    input: ids[*input],
                    output: id,
                    requant: requant(real, i, "pool")?,
                });
            }
            Node::Mul { input, scale } => {
                let real = qp[*input].scale as f64 * qp[*scale].scale as f64 / q.scale as f64;
                b.push(Op::Mul {
                    input: ids[*input],
                    scale: ids[*scale],
                    output: id,
                    requant: requant(real, i, "mul")?,
                });
            }
        }
    }
    b.push(Op::Output { input: ids[last] });
    b.to_bytes()
        .map_err(|e| Error::Runtime(format!("quantized model is invalid: {e}")))
}
