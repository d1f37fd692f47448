//! int8 post-training quantization with TFLite semantics (DESIGN §7): BatchNorm folded, weights
//! symmetric per output channel in [−127, 127], activations asymmetric per tensor, bias int32 at
//! `s_in · s_w`, Q31 requantization (the arithmetic in `depthling_model::quant`, shared with the
//! engine), the last conv dequantizing straight to metres. The result is a validated `.dlm`.

use candle_core::Device;
use depthling_model::quant::{quantize_i8, ADD_LEFT_SHIFT};
use depthling_model::{
    Activation, ConstRef, Conv2d, DType, ModelBuilder, Op, QuantParams, Requant, TensorId,
    UpsampleMode, INPUT_SCALE, INPUT_ZERO_POINT, SIGMOID_OUTPUT,
};

use crate::data::Sample;
use crate::error::{Error, Result};
use crate::nets::graph::{images_to_tensor, Act, GraphNet, Interp, Node};

pub mod qat;
pub use qat::QatConfig;

/// How activation ranges are chosen from calibration data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Calibration {
    /// The observed minimum and maximum.
    MinMax,
    /// The 0.01 % and 99.99 % quantiles: outliers are clipped.
    Percentile,
    /// The clip range minimising the expected squared error (rounding inside, clipping outside)
    /// over the observed value histogram.
    Mse,
}

impl std::str::FromStr for Calibration {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> crate::error::Result<Calibration> {
        Calibration::parse(s)
    }
}

impl Calibration {
    pub fn parse(s: &str) -> Result<Calibration> {
        match s {
            "minmax" => Ok(Calibration::MinMax),
            "percentile" => Ok(Calibration::Percentile),
            "mse" => Ok(Calibration::Mse),
            other => Err(Error::Usage(format!(
                "unknown calibration {other:?}; known: minmax, percentile, mse"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Calibration::MinMax => "minmax",
            Calibration::Percentile => "percentile",
            Calibration::Mse => "mse",
        }
    }
}

const BINS: usize = 2048;

/// Value counts over `[lo, hi]` in equal bins.
#[derive(Clone, Debug)]
struct Histogram {
    lo: f32,
    hi: f32,
    counts: Vec<u64>,
}

impl Histogram {
    fn new(lo: f32, hi: f32) -> Self {
        Histogram {
            lo,
            hi: hi.max(lo + 1e-6),
            counts: vec![0; BINS],
        }
    }
    fn width(&self) -> f32 {
        (self.hi - self.lo) / BINS as f32
    }
    fn add(&mut self, values: &[f32]) {
        let inv = 1.0 / self.width();
        for &v in values {
            let b = (((v - self.lo) * inv).max(0.0) as usize).min(BINS - 1);
            self.counts[b] += 1;
        }
    }
    fn centre(&self, b: usize) -> f32 {
        self.lo + (b as f32 + 0.5) * self.width()
    }
    /// Value below which a share `q` of the mass lies.
    fn quantile(&self, q: f64) -> f32 {
        let total: u64 = self.counts.iter().sum();
        let target = (q * total as f64) as u64;
        let mut acc = 0u64;
        for (b, &c) in self.counts.iter().enumerate() {
            acc += c;
            if acc > target {
                return self.lo + (b + 1) as f32 * self.width();
            }
        }
        self.hi
    }
    /// Expected squared error of int8 quantization clipped to `[a, b]`.
    fn quant_error(&self, a: f32, b: f32) -> f64 {
        let scale = ((b - a) / 255.0).max(1e-12) as f64;
        let rounding = scale * scale / 12.0;
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| {
                let v = self.centre(i);
                let e = if v < a {
                    (a - v) as f64
                } else if v > b {
                    (v - b) as f64
                } else {
                    0.0
                };
                c as f64 * (e * e + rounding)
            })
            .sum()
    }
}

/// The range a calibrator picks from the min–max range and the histogram.
fn choose_range(
    calibration: Calibration,
    minmax: (f32, f32),
    hist: Option<&Histogram>,
) -> (f32, f32) {
    let (lo, hi) = minmax;
    let Some(h) = hist else { return minmax };
    match calibration {
        Calibration::MinMax => minmax,
        Calibration::Percentile => {
            let a = if lo >= 0.0 { lo } else { h.quantile(1e-4) };
            (a, h.quantile(1.0 - 1e-4))
        }
        Calibration::Mse => {
            // clip the upper end (and the lower one when values go negative) at fractions of the
            // observed extremes
            let mut best = (f64::INFINITY, minmax);
            for i in 0..=60 {
                let f = 1.0 - i as f32 / 80.0;
                let b = hi * f;
                let a = if lo < 0.0 { lo * f } else { lo };
                let e = h.quant_error(a.min(0.0), b.max(0.0));
                if e < best.0 {
                    best = (e, (a, b));
                }
            }
            best.1
        }
    }
}

/// Provenance written into the `.dlm`.
#[derive(Clone, Debug, Default)]
pub struct Provenance {
    pub name: String,
    pub teacher: String,
    pub method: String,
    pub metrics: Vec<(String, f32)>,
}

/// `(min, max)` per graph node.
type Ranges = Vec<(f32, f32)>;

/// Histograms of every node (post-activation, and pre-activation for sigmoid convs) over the
/// min–max ranges from a first pass.
fn observe_histograms(
    net: &GraphNet,
    calib: &[Sample],
    device: &Device,
    post: &Ranges,
    pre: &Ranges,
    on_images: &mut impl FnMut(usize),
) -> Result<(Vec<Histogram>, Vec<Option<Histogram>>)> {
    let mut hp: Vec<Histogram> = post.iter().map(|&(a, b)| Histogram::new(a, b)).collect();
    let mut hq: Vec<Option<Histogram>> = pre
        .iter()
        .map(|&(a, b)| (a <= b).then(|| Histogram::new(a, b)))
        .collect();
    for chunk in calib.chunks(16) {
        let refs: Vec<&[u8]> = chunk.iter().map(|s| s.rgb.as_slice()).collect();
        let x = images_to_tensor(&refs, chunk[0].width, chunk[0].height, device)?;
        for (i, (out, pre_act)) in net.forward_nodes(&x, false)?.iter().enumerate() {
            hp[i].add(&out.flatten_all()?.to_vec1::<f32>()?);
            if let (Some(p), Some(h)) = (pre_act, hq[i].as_mut()) {
                h.add(&p.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        on_images(chunk.len());
    }
    Ok((hp, hq))
}

/// Observed value range of every node (post-activation) and, for sigmoid convs, pre-activation.
fn observe_ranges(
    net: &GraphNet,
    calib: &[Sample],
    device: &Device,
    on_images: &mut impl FnMut(usize),
) -> Result<(Ranges, Ranges)> {
    let n = net.spec().nodes.len();
    let mut post = vec![(f32::INFINITY, f32::NEG_INFINITY); n];
    let mut pre = vec![(f32::INFINITY, f32::NEG_INFINITY); n];
    let widen = |r: &mut (f32, f32), t: &candle_core::Tensor| -> Result<()> {
        let lo = t.flatten_all()?.min(0)?.to_scalar::<f32>()?;
        let hi = t.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        r.0 = r.0.min(lo);
        r.1 = r.1.max(hi);
        Ok(())
    };
    for chunk in calib.chunks(16) {
        let refs: Vec<&[u8]> = chunk.iter().map(|s| s.rgb.as_slice()).collect();
        let x = images_to_tensor(&refs, chunk[0].width, chunk[0].height, device)?;
        for (i, (out, pre_act)) in net.forward_nodes(&x, false)?.iter().enumerate() {
            widen(&mut post[i], out)?;
            if let Some(p) = pre_act {
                widen(&mut pre[i], p)?;
            }
        }
        on_images(chunk.len());
    }
    Ok((post, pre))
}

/// Asymmetric int8 parameters covering `[lo, hi]` and zero.
pub fn params_for_range(lo: f32, hi: f32) -> QuantParams {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let span = (hi - lo).max(1e-6);
    let scale = span / 255.0;
    let zero_point = (-128.0 - lo / scale).round().clamp(-128.0, 127.0) as i32;
    QuantParams { scale, zero_point }
}

fn act_ir(a: Act) -> Activation {
    match a {
        Act::None => Activation::None,
        Act::Relu => Activation::Relu,
        Act::Relu6 => Activation::Relu6,
        Act::Sigmoid => Activation::Sigmoid,
    }
}

fn requant(real: f64, node: usize, what: &str) -> Result<Requant> {
    Requant::from_real(real).ok_or_else(|| {
        Error::Runtime(format!(
            "node {node}: {what} multiplier {real} cannot be represented"
        ))
    })
}

/// The int8 parameters of every graph node as the `.dlm` stores them: `post[i]` for node `i`'s
/// output (the last node's output is f32 metres, so its entry is unused), and for sigmoid convs
/// `pre[i]`, the grid of the LUT's input. Quantization-aware training fakes the same grids.
#[derive(Clone, Debug)]
pub struct ActPlan {
    pub post: Vec<QuantParams>,
    pub pre: Vec<Option<QuantParams>>,
}

impl ActPlan {
    /// The grids to fake in a quantization-aware forward pass: none for the input (uint8 pixels
    /// are exact) and none for the output (dequantized from int32).
    pub fn fake_quant(&self) -> crate::nets::graph::FakeQuant {
        let last = self.post.len().saturating_sub(1);
        crate::nets::graph::FakeQuant {
            post: (0..self.post.len())
                .map(|i| (i != 0 && i != last).then_some(self.post[i]))
                .collect(),
            pre: self.pre.clone(),
        }
    }
}

/// Calibrates `net` on `calib` (all of one size): every node's activation range, chosen by
/// `calibration`, turned into int8 parameters.
pub fn calibrate(
    net: &GraphNet,
    calib: &[Sample],
    calibration: Calibration,
    device: &Device,
) -> Result<ActPlan> {
    calibrate_observed(net, calib, calibration, device, |_| {})
}

/// Passes over the images [`calibrate_observed`] makes: one for the ranges, and a second for the
/// histograms unless `minmax`.
pub fn calibration_passes(calibration: Calibration) -> usize {
    if calibration == Calibration::MinMax {
        1
    } else {
        2
    }
}

/// [`calibrate`], calling `on_images(n)` as each batch of `n` images is done (for progress).
pub fn calibrate_observed(
    net: &GraphNet,
    calib: &[Sample],
    calibration: Calibration,
    device: &Device,
    mut on_images: impl FnMut(usize),
) -> Result<ActPlan> {
    let first = calib
        .first()
        .ok_or_else(|| Error::Runtime("no calibration images".into()))?;
    let spec = net.spec();
    let shapes = spec.shapes(first.width, first.height)?;
    spec.check_int8(&shapes)?;
    let (post, pre) = observe_ranges(net, calib, device, &mut on_images)?;
    let (post, pre): (Ranges, Ranges) = if calibration == Calibration::MinMax {
        (post, pre)
    } else {
        let (hp, hq) = observe_histograms(net, calib, device, &post, &pre, &mut on_images)?;
        let post = post
            .iter()
            .zip(&hp)
            .map(|(&r, h)| choose_range(calibration, r, Some(h)))
            .collect();
        let pre = pre
            .iter()
            .zip(&hq)
            .map(|(&r, h)| choose_range(calibration, r, h.as_ref()))
            .collect();
        (post, pre)
    };
    let last = spec.nodes.len() - 1;
    let mut plan = ActPlan {
        post: Vec::with_capacity(spec.nodes.len()),
        pre: vec![None; spec.nodes.len()],
    };
    for (i, node) in spec.nodes.iter().enumerate() {
        let q = match node {
            Node::Input => QuantParams {
                scale: INPUT_SCALE,
                zero_point: INPUT_ZERO_POINT,
            },
            Node::Upsample { input, .. } => plan.post[*input],
            Node::Conv {
                act: Act::Sigmoid, ..
            } => {
                plan.pre[i] = Some(params_for_range(pre[i].0, pre[i].1));
                SIGMOID_OUTPUT
            }
            _ if i == last => QuantParams {
                scale: 1.0,
                zero_point: 0,
            },
            _ => params_for_range(post[i].0, post[i].1),
        };
        plan.post.push(q);
    }
    Ok(plan)
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
                    let lut = (*act == Act::Sigmoid).then(|| {
                        let table: Vec<i8> = (-128i32..=127)
                            .map(|v| {
                                let x = (v - target.zero_point) as f32 * target.scale;
                                quantize_i8(
                                    1.0 / (1.0 + (-x).exp()),
                                    SIGMOID_OUTPUT.scale,
                                    SIGMOID_OUTPUT.zero_point,
                                )
                            })
                            .collect();
                        depthling_model::Lut {
                            table: b.constant_i8(&table),
                            zero_point: target.zero_point,
                        }
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
                let si = shapes[*input];
                let real =
                    qp[*input].scale as f64 / (q.scale as f64 * (si.height * si.width) as f64);
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

/// Quantization error of one layer: signal-to-quantization-noise ratio of the int8 tensor
/// (dequantized) against the f32 network's value, over the report images.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerError {
    pub op: usize,
    pub kind: String,
    pub sqnr_db: f64,
}

/// Per-layer SQNR of `model` (quantized from `net`) on up to 8 of `samples`.
pub fn layer_report(
    net: &GraphNet,
    model: &depthling_model::Model<'_>,
    samples: &[Sample],
    device: &Device,
) -> Result<Vec<LayerError>> {
    let outputs: Vec<usize> = (0..model.ops.len())
        .filter(|&i| model.ops[i].output().is_some())
        .collect();
    let mut signal = vec![0f64; model.ops.len()];
    let mut noise = vec![0f64; model.ops.len()];
    let mut arena = vec![0u8; model.arena_bytes as usize];
    let mut engine = depthling_device::Engine::new(model, &mut arena)?;
    for s in samples.iter().take(8) {
        let x = images_to_tensor(&[s.rgb.as_slice()], s.width, s.height, device)?;
        // op i computes graph node i + 1 (node 0 is the input)
        let reference: Vec<Vec<f32>> = net
            .forward_nodes(&x, false)?
            .iter()
            .map(|(t, _)| t.flatten_all()?.to_vec1::<f32>())
            .collect::<candle_core::Result<_>>()?;
        engine.run_observed(&s.rgb, |i, t, bytes| {
            let Some(f) = reference.get(i + 1) else {
                return;
            };
            let (h, w, c) = (t.height as usize, t.width as usize, t.channels as usize);
            for (k, chunk) in bytes.chunks_exact(t.dtype.size() as usize).enumerate() {
                let (pix, ch) = (k / c, k % c);
                let q = match t.dtype {
                    DType::I8 => {
                        (chunk[0] as i8 as i32 - t.quant.zero_point) as f32 * t.quant.scale
                    }
                    DType::F32 => f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                };
                // NHWC (engine) against NCHW (candle)
                let v = f[ch * h * w + pix];
                signal[i] += (v as f64).powi(2);
                noise[i] += ((v - q) as f64).powi(2);
            }
        })?;
    }
    Ok(outputs
        .into_iter()
        .map(|i| LayerError {
            op: i,
            kind: model.ops[i].kind().into(),
            sqnr_db: 10.0 * (signal[i] / noise[i].max(1e-30)).log10(),
        })
        .collect())
}

/// Runs a `.dlm` on samples with the int8 engine (one arena per worker thread).
pub fn run_int8(model: &depthling_model::Model<'_>, samples: &[Sample]) -> Result<Vec<Vec<f32>>> {
    use rayon::prelude::*;
    samples
        .par_chunks(8)
        .map(|chunk| {
            let mut arena = vec![0u8; model.arena_bytes as usize];
            let mut engine = depthling_device::Engine::new(model, &mut arena)?;
            chunk
                .iter()
                .map(|s| Ok(engine.run(&s.rgb)?.iter().collect()))
                .collect::<Result<Vec<Vec<f32>>>>()
        })
        .collect::<Result<Vec<_>>>()
        .map(|v| v.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::mean_abs_diff;
    use crate::nets::graph::GraphSpec;
    use crate::nets::Net;
    use crate::sim::{render_many, Domain};
    use crate::train::predict;

    fn conv(input: usize, oc: usize, k: usize, s: usize, bn: bool, act: Act) -> Node {
        Node::Conv {
            input,
            out_channels: oc,
            kernel: k,
            stride: s,
            depthwise: false,
            batch_norm: bn,
            act,
        }
    }

    #[test]
    fn fake_quant_rounds_clips_and_passes_gradient_inside_the_grid() {
        use crate::nets::graph::fake_quant;
        let dev = Device::Cpu;
        // scale 0.5, zero point −128: levels 0, 0.5, …, 127.5
        let q = QuantParams {
            scale: 0.5,
            zero_point: -128,
        };
        let x = candle_core::Var::new(&[-1.0f32, 0.2, 0.3, 0.74, 200.0], &dev).unwrap();
        let y = fake_quant(x.as_tensor(), q).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), [0.0, 0.0, 0.5, 0.5, 127.5]);
        let g = y.sum_all().unwrap().backward().unwrap();
        let g = g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g, [0.0, 1.0, 1.0, 1.0, 0.0]);

        // weights: channel 0 max 1.27 → step 0.01; channel 1 max 127 → step 1
        let w =
            candle_core::Var::new(&[[0.004f32, -0.016, 1.27], [0.4, 0.6, -127.0]], &dev).unwrap();
        let y = crate::nets::graph::fake_quant_weights(w.as_tensor()).unwrap();
        let v = y.to_vec2::<f32>().unwrap();
        let want = [[0.0f32, -0.02, 1.27], [0.0, 1.0, -127.0]];
        for (a, b) in v.iter().flatten().zip(want.iter().flatten()) {
            assert!((a - b).abs() < 1e-6, "{v:?} != {want:?}");
        }
        let g = y.sum_all().unwrap().backward().unwrap();
        let g = g.get(w.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(g, [[1.0; 3], [1.0; 3]]);
    }

    /// The fake-quantized forward pass is a model of the int8 engine: much closer to what the
    /// engine computes than the f32 network is. And a QAT fine-tune moves the int8 model closer to
    /// the f32 network it started from than post-training quantization gets.
    #[test]
    fn fake_quant_tracks_the_engine_and_qat_beats_ptq() {
        let dev = Device::Cpu;
        let data = render_many(Domain::Ood, 32, 32, 3, 0, 24, false);
        let net = Net::new(crate::nets::preset("micro", 1.0).unwrap(), &dev, 4).unwrap();
        let f32_pred = predict(&net.net, &data, &dev).unwrap();
        let plan = calibrate(&net.net, &data, Calibration::MinMax, &dev).unwrap();
        let prov = Provenance::default();
        let ptq = quantize_with(&net.net, &plan, (32, 32), &prov).unwrap();
        let ptq_pred = run_int8(&depthling_model::Model::from_bytes(&ptq).unwrap(), &data).unwrap();

        let fq = plan.fake_quant();
        let mut fq_pred = Vec::new();
        for s in &data {
            let x = images_to_tensor(&[s.rgb.as_slice()], 32, 32, &dev).unwrap();
            let y = net.net.forward_fake_quant(&x, &fq).unwrap();
            fq_pred.push(y.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        let f32_err = mean_abs_diff(&f32_pred, &ptq_pred);
        let fq_err = mean_abs_diff(&fq_pred, &ptq_pred);
        assert!(
            fq_err < 0.8 * f32_err,
            "fake-quant vs int8 {fq_err}, f32 vs int8 {f32_err}"
        );

        let cfg = QatConfig {
            epochs: 6,
            lr: 2e-5,
            batch_size: 4,
            seed: 1,
        };
        let losses = qat::finetune(&net, &plan, &data, &cfg, |_, _, _| {}).unwrap();
        assert_eq!(losses.len(), 6 * 6);
        let qat = quantize_with(&net.net, &plan, (32, 32), &prov).unwrap();
        let qat_pred = run_int8(&depthling_model::Model::from_bytes(&qat).unwrap(), &data).unwrap();
        let (ptq_err, qat_err) = (
            mean_abs_diff(&ptq_pred, &f32_pred),
            mean_abs_diff(&qat_pred, &f32_pred),
        );
        eprintln!("int8 vs f32: PTQ {ptq_err}, QAT {qat_err}; losses {losses:?}");
        assert!(qat_err < 0.8 * ptq_err, "PTQ {ptq_err}, QAT {qat_err}");
    }

    /// Every node kind, quantized, stays within a few percent of its f32 graph on the calibration
    /// images (this caught a sigmoid LUT indexed with the wrong zero point: 95 % error).
    #[test]
    fn each_node_kind_quantizes_close_to_f32() {
        let dev = Device::Cpu;
        let data = render_many(Domain::Ood, 32, 24, 5, 0, 6, false);
        let cases: Vec<(&str, Vec<Node>, f64)> = vec![
            (
                "conv",
                vec![
                    Node::Input,
                    conv(0, 8, 3, 1, false, Act::Relu),
                    conv(1, 1, 3, 1, false, Act::None),
                ],
                0.10,
            ),
            (
                "conv+bn 5x5 relu6",
                vec![
                    Node::Input,
                    conv(0, 8, 5, 1, true, Act::Relu6),
                    conv(1, 1, 3, 1, false, Act::None),
                ],
                0.10,
            ),
            (
                "stride2+upsample",
                vec![
                    Node::Input,
                    conv(0, 8, 3, 2, false, Act::Relu),
                    Node::Upsample {
                        input: 1,
                        factor: 2,
                        mode: Interp::Nearest,
                        like: None,
                    },
                    conv(2, 1, 3, 1, false, Act::None),
                ],
                0.10,
            ),
            (
                "add",
                vec![
                    Node::Input,
                    conv(0, 8, 3, 1, false, Act::Relu),
                    conv(1, 8, 3, 1, false, Act::None),
                    Node::Add {
                        a: 2,
                        b: 1,
                        act: Act::Relu,
                    },
                    conv(3, 1, 3, 1, false, Act::None),
                ],
                0.10,
            ),
            (
                "sigmoid",
                vec![
                    Node::Input,
                    conv(0, 8, 3, 1, false, Act::Sigmoid),
                    conv(1, 1, 3, 1, false, Act::None),
                ],
                0.10,
            ),
            (
                "squeeze-excitation",
                vec![
                    Node::Input,
                    conv(0, 8, 3, 1, false, Act::Relu),
                    Node::GlobalAvgPool { input: 1 },
                    conv(2, 8, 1, 1, false, Act::Sigmoid),
                    Node::Mul { input: 1, scale: 3 },
                    conv(4, 1, 3, 1, false, Act::None),
                ],
                0.10,
            ),
            (
                "concat",
                vec![
                    Node::Input,
                    conv(0, 8, 3, 1, false, Act::Relu),
                    conv(1, 4, 1, 1, false, Act::Relu6),
                    Node::Concat { inputs: vec![2, 1] },
                    conv(3, 1, 3, 1, false, Act::None),
                ],
                0.10,
            ),
        ];
        for (name, nodes, tolerance) in cases {
            let net = Net::new(
                GraphSpec {
                    name: name.into(),
                    nodes,
                    output_bias: 0.5,
                    input_channels: 3,
                },
                &dev,
                3,
            )
            .unwrap();
            let bytes = quantize(
                &net.net,
                &data,
                Calibration::MinMax,
                &Provenance::default(),
                &dev,
            )
            .unwrap();
            let model = depthling_model::Model::from_bytes(&bytes).unwrap();
            let f = predict(&net.net, &data, &dev).unwrap();
            let q = run_int8(&model, &data).unwrap();
            let (mut err, mut mag) = (0.0f64, 0.0f64);
            for (a, b) in f.iter().zip(&q) {
                for (x, y) in a.iter().zip(b) {
                    err += (x - y).abs() as f64;
                    mag += x.abs() as f64;
                }
            }
            let rel = err / mag;
            assert!(
                rel < tolerance,
                "{name}: int8 differs from f32 by {rel:.3} (relative)"
            );
        }
    }

    /// The student presets (depthwise convolutions, squeeze-excitation, bilinear upsampling, a
    /// full-resolution head) quantize and run in the int8 engine close to f32; the teachers and a
    /// cropping size are refused with the reason.
    #[test]
    fn student_presets_quantize_and_teachers_are_refused() {
        let dev = Device::Cpu;
        let data = render_many(Domain::Ood, 64, 32, 9, 0, 4, false);
        for arch in ["micro", "mbv2-mff"] {
            let net = Net::new(crate::nets::preset(arch, 1.0).unwrap(), &dev, 4).unwrap();
            // BatchNorm statistics from a few training-mode passes, as after training
            for chunk in data.chunks(2) {
                let (x, _, _) = crate::data::batch::to_tensors(chunk, 3, &dev).unwrap();
                net.net.forward_t(&x, true).unwrap();
            }
            let bytes = quantize(
                &net.net,
                &data,
                Calibration::MinMax,
                &Provenance::default(),
                &dev,
            )
            .unwrap();
            let model = depthling_model::Model::from_bytes(&bytes).unwrap();
            let (f, q) = (
                predict(&net.net, &data, &dev).unwrap(),
                run_int8(&model, &data).unwrap(),
            );
            let (mut err, mut mag) = (0.0f64, 0.0f64);
            for (a, b) in f.iter().zip(&q) {
                for (x, y) in a.iter().zip(b) {
                    err += (x - y).abs() as f64;
                    mag += x.abs() as f64;
                }
            }
            assert!(
                err / mag < 0.05,
                "{arch}: int8 differs from f32 by {:.3}",
                err / mag
            );
        }
        let teacher =
            Net::new(crate::nets::preset("resnet18-mff", 0.25).unwrap(), &dev, 4).unwrap();
        let e = quantize(
            &teacher.net,
            &data,
            Calibration::MinMax,
            &Provenance::default(),
            &dev,
        )
        .unwrap_err();
        assert!(e.to_string().contains("7×7"), "{e}");
        let odd = render_many(Domain::Ood, 40, 36, 9, 0, 1, false);
        let micro = Net::new(crate::nets::preset("micro", 1.0).unwrap(), &dev, 4).unwrap();
        let e = quantize(
            &micro.net,
            &odd,
            Calibration::MinMax,
            &Provenance::default(),
            &dev,
        )
        .unwrap_err();
        assert!(e.to_string().contains("divisible by 32"), "{e}");
    }

    #[test]
    fn calibrators_clip_outliers_and_stay_inside_the_observed_range() {
        // 10 000 values in [0, 1] and one outlier at 100
        let mut values: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0).collect();
        values.push(100.0);
        let mut h = Histogram::new(0.0, 100.0);
        h.add(&values);
        let mm = (0.0, 100.0);
        assert_eq!(choose_range(Calibration::MinMax, mm, Some(&h)), mm);
        let (a, b) = choose_range(Calibration::Percentile, mm, Some(&h));
        assert_eq!(a, 0.0);
        assert!(b < 2.0, "percentile kept the outlier: {b}");
        let (a, b) = choose_range(Calibration::Mse, mm, Some(&h));
        assert_eq!(a, 0.0);
        assert!(b < 100.0 && b > 0.0, "mse range {b}");
        assert!(h.quant_error(0.0, b) <= h.quant_error(0.0, 100.0));
        assert!((h.quantile(0.5) - 0.5).abs() < 0.1);
        for c in ["minmax", "percentile", "mse"] {
            assert_eq!(Calibration::parse(c).unwrap().name(), c);
        }
        assert!(Calibration::parse("kl").is_err());
    }

    #[test]
    fn layer_report_covers_every_op_with_an_output() {
        let dev = Device::Cpu;
        let data = render_many(Domain::Ood, 32, 24, 5, 0, 4, false);
        let nodes = vec![
            Node::Input,
            conv(0, 8, 3, 2, true, Act::Relu),
            Node::Upsample {
                input: 1,
                factor: 2,
                mode: Interp::Bilinear,
                like: None,
            },
            conv(2, 1, 3, 1, false, Act::None),
        ];
        let net = Net::new(
            GraphSpec {
                name: "r".into(),
                nodes,
                output_bias: 0.5,
                input_channels: 3,
            },
            &dev,
            1,
        )
        .unwrap();
        for calibration in [
            Calibration::MinMax,
            Calibration::Percentile,
            Calibration::Mse,
        ] {
            let bytes =
                quantize(&net.net, &data, calibration, &Provenance::default(), &dev).unwrap();
            let model = depthling_model::Model::from_bytes(&bytes).unwrap();
            let report = layer_report(&net.net, &model, &data, &dev).unwrap();
            assert_eq!(
                report.iter().map(|l| l.op).collect::<Vec<_>>(),
                vec![0, 1, 2]
            );
            for l in &report {
                assert!(
                    l.sqnr_db > 15.0,
                    "{calibration:?}: op {} ({}) SQNR {:.1} dB",
                    l.op,
                    l.kind,
                    l.sqnr_db
                );
            }
        }
    }

    #[test]
    fn range_parameters_cover_zero_and_the_range() {
        let q = params_for_range(0.0, 6.0);
        assert_eq!(q.zero_point, -128);
        assert!((q.scale - 6.0 / 255.0).abs() < 1e-7);
        let q = params_for_range(-1.0, 1.0);
        assert!((q.zero_point as f32 - (-0.5)).abs() <= 0.5 + 1e-6);
        let q = params_for_range(2.0, 3.0); // zero must stay representable
        assert_eq!(q.zero_point, -128);
    }
}
