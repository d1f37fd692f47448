//! The candle module of a [`GraphSpec`]: one forward walk over the nodes (training, eval,
//! BatchNorm capture for DDD, fake quantization for QAT), with BatchNorm folded on demand for the
//! int8 and ONNX exports.

use candle_core::{DType, Module, ModuleT, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, Init, VarBuilder};
use depthling_model::QuantParams;

use super::graph::{Act, GraphSpec, Interp, Node};
use crate::error::{Error, Result};

struct ConvLayer {
    weight: Tensor,
    bias: Option<Tensor>,
    bn: Option<BatchNorm>,
    stride: usize,
    padding: usize,
    groups: usize,
}

impl ConvLayer {
    /// `(weight, bias)` with the BatchNorm folded in (`w·γ/√(σ²+ε)`, `β + (b − μ)·γ/√(σ²+ε)`),
    /// differentiable in the weights, γ and β; the running statistics are constants.
    fn folded(&self) -> candle_core::Result<(Tensor, Tensor)> {
        let oc = self.weight.dim(0)?;
        let bias = match &self.bias {
            Some(b) => b.clone(),
            None => Tensor::zeros(oc, self.weight.dtype(), self.weight.device())?,
        };
        let Some(bn) = &self.bn else {
            return Ok((self.weight.clone(), bias));
        };
        let (mean, f, beta) = bn_factor(bn, false)?;
        let weight = self.weight.broadcast_mul(&f.reshape((oc, 1, 1, 1))?)?;
        let bias = (beta + ((bias - mean)? * &f)?)?;
        Ok((weight, bias))
    }
}

/// `(μ, γ/√(σ²+ε), β)` of a BatchNorm (running statistics detached; γ and β too if `detach`,
/// else differentiable).
fn bn_factor(bn: &BatchNorm, detach: bool) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let mean = bn.running_mean().detach();
    let var = bn.running_var().detach();
    let (gamma, beta) = match bn.weight_and_bias() {
        Some((g, b)) if detach => (g.detach(), b.detach()),
        Some((g, b)) => (g.clone(), b.clone()),
        None => (mean.ones_like()?, mean.zeros_like()?),
    };
    let f = (gamma / (var + BN_EPS)?.sqrt()?)?;
    Ok((mean, f, beta))
}

/// A BatchNorm in eval mode as `y·scale + shift` per channel (`scale = γ/√(σ²+ε)`,
/// `shift = β − μ·scale`), detached, shaped `[1, C, 1, 1]`.
fn frozen_affine(bn: &BatchNorm) -> candle_core::Result<(Tensor, Tensor)> {
    let (mean, scale, beta) = bn_factor(bn, true)?;
    let shift = (beta - (&mean * &scale)?)?;
    Ok((scale.reshape((1, (), 1, 1))?, shift.reshape((1, (), 1, 1))?))
}

/// The candle module of a [`GraphSpec`]. Variables live under `n{index}.` in the `VarBuilder`.
pub struct GraphNet {
    spec: GraphSpec,
    convs: Vec<Option<ConvLayer>>,
    /// Dense convolutions through [`super::ops::conv2d`] (im2col + gemm, fast backward) instead of
    /// candle's `conv2d`. On by default; off only to measure the difference.
    custom_ops: bool,
}

pub const BN_EPS: f64 = 1e-5;

/// The int8 grids a quantization-aware forward pass rounds to ([`GraphNet::forward_fake_quant`]):
/// `post[i]` for node `i`'s output (`None`: left in f32), `pre[i]` for a sigmoid conv's input.
/// Made by `quant::ActPlan::fake_quant` from the same calibration the `.dlm` gets.
#[derive(Clone, Debug)]
pub struct FakeQuant {
    pub post: Vec<Option<QuantParams>>,
    pub pre: Vec<Option<QuantParams>>,
}

/// `x` rounded to the int8 grid of `q` and clipped to its 256 levels; the gradient passes
/// straight through inside the levels and is zero outside (clipped straight-through estimator).
pub fn fake_quant(x: &Tensor, q: QuantParams) -> candle_core::Result<Tensor> {
    let s = q.scale as f64;
    let z = q.zero_point as f64;
    let clipped = x.clamp(((-128.0 - z) * s) as f32, ((127.0 - z) * s) as f32)?;
    let rounded = ((&clipped * (1.0 / s))?.round()? * s)?;
    &clipped + (rounded - &clipped)?.detach()
}

/// Weights `[O, …]` rounded per output channel to the symmetric grid `max|w|/127 · [−127, 127]`
/// the quantizer uses, with a straight-through gradient.
pub fn fake_quant_weights(w: &Tensor) -> candle_core::Result<Tensor> {
    let flat = w.flatten_from(1)?;
    let scale =
        (flat.abs()?.max_keepdim(1)?.detach() * (1.0 / 127.0))?.clamp(1e-12f32, f32::MAX)?;
    let rounded = flat.broadcast_div(&scale)?.round()?.broadcast_mul(&scale)?;
    (&flat + (rounded - &flat)?.detach())?.reshape(w.shape())
}

/// Momentum of the BatchNorm running statistics (candle-nn's default, PyTorch's).
const BN_MOMENTUM: f64 = 0.1;

/// Training-mode BatchNorm + activation through the fused op, updating `bn`'s running statistics
/// as candle-nn's `forward_train` does (the variance unbiased, momentum [`BN_MOMENTUM`]).
fn batch_norm_train(
    bn: &BatchNorm,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    act: super::ops::BnAct,
) -> Result<Tensor> {
    let (n, _, h, w) = x.dims4()?;
    let (y, mean, var) = super::ops::batch_norm_act(x, gamma, beta, BN_EPS, act)?;
    let m = (n * h * w) as f64;
    let unbiased = if m > 1.0 { m / (m - 1.0) } else { 1.0 };
    let (rm, rv) = (
        candle_core::Var::from_tensor(bn.running_mean())?,
        candle_core::Var::from_tensor(bn.running_var())?,
    );
    rm.set(&((rm.as_tensor() * (1.0 - BN_MOMENTUM))? + (mean * BN_MOMENTUM)?)?)?;
    rv.set(&((rv.as_tensor() * (1.0 - BN_MOMENTUM))? + (var * (BN_MOMENTUM * unbiased))?)?)?;
    Ok(y)
}

fn activate(x: Tensor, act: Act) -> candle_core::Result<Tensor> {
    match act {
        Act::None => Ok(x),
        Act::Relu => x.relu(),
        Act::Relu6 => x.clamp(0f32, 6f32),
        Act::Sigmoid => candle_nn::ops::sigmoid(&x),
    }
}

impl GraphNet {
    pub fn new(spec: GraphSpec, vb: VarBuilder) -> Result<GraphNet> {
        spec.check_references()?;
        let channels = spec.channels();
        let mut convs = Vec::with_capacity(spec.nodes.len());
        let last = spec.nodes.len().saturating_sub(1);
        for (i, node) in spec.nodes.iter().enumerate() {
            let vb = vb.pp(format!("n{i}"));
            let conv = match node {
                Node::Conv {
                    input,
                    out_channels,
                    kernel,
                    stride,
                    depthwise,
                    batch_norm,
                    ..
                } => {
                    let cin = channels[*input];
                    let groups = if *depthwise { cin } else { 1 };
                    let fan_in = (cin / groups) * kernel * kernel;
                    let weight = vb.get_with_hints(
                        (*out_channels, cin / groups, *kernel, *kernel),
                        "weight",
                        Init::Randn {
                            mean: 0.0,
                            stdev: (2.0 / fan_in as f64).sqrt(),
                        },
                    )?;
                    let bn = if *batch_norm {
                        Some(candle_nn::batch_norm(
                            *out_channels,
                            BatchNormConfig {
                                eps: BN_EPS,
                                momentum: BN_MOMENTUM,
                                ..Default::default()
                            },
                            vb.pp("bn"),
                        )?)
                    } else {
                        None
                    };
                    let bias = if *batch_norm {
                        None
                    } else {
                        let init = if i == last {
                            spec.output_bias as f64
                        } else {
                            0.0
                        };
                        Some(vb.get_with_hints(*out_channels, "bias", Init::Const(init))?)
                    };
                    Some(ConvLayer {
                        weight,
                        bias,
                        bn,
                        stride: *stride,
                        padding: kernel / 2,
                        groups,
                    })
                }
                _ => None,
            };
            convs.push(conv);
        }
        Ok(GraphNet {
            spec,
            convs,
            custom_ops: true,
        })
    }

    pub fn spec(&self) -> &GraphSpec {
        &self.spec
    }

    /// Chooses the convolution kernels (see [`GraphNet`]).
    pub fn set_custom_ops(&mut self, on: bool) {
        self.custom_ops = on;
    }

    /// Runs the graph; returns every node's output (post-activation) and, for convolutions with a
    /// sigmoid, the pre-activation value (needed to calibrate the sigmoid's LUT input).
    pub fn forward_nodes(&self, x: &Tensor, train: bool) -> Result<Vec<(Tensor, Option<Tensor>)>> {
        self.forward_impl(x, train, None, None)
    }

    /// Depth in metres as the int8 model computes it, approximately and differentiably: BatchNorm
    /// folded with its running statistics, weights rounded per channel, every activation rounded
    /// to its grid in `fq` (quantization-aware training).
    pub fn forward_fake_quant(&self, x: &Tensor, fq: &FakeQuant) -> Result<Tensor> {
        if fq.post.len() != self.spec.nodes.len() || fq.pre.len() != self.spec.nodes.len() {
            return Err(Error::Runtime(format!(
                "fake-quantization plan has {} nodes, the network {}",
                fq.post.len(),
                self.spec.nodes.len()
            )));
        }
        let mut values = self.forward_impl(x, false, None, Some(fq))?;
        values
            .pop()
            .map(|(t, _)| t)
            .ok_or_else(|| Error::Runtime("empty graph".into()))
    }

    /// Runs the graph in eval mode and returns, for every BatchNorm layer, its input (the
    /// convolution's output) with the layer's running mean and variance: what DDD's
    /// transformation network matches.
    pub fn batch_norm_inputs(&self, x: &Tensor) -> Result<Vec<(Tensor, Tensor, Tensor)>> {
        let mut captured = Vec::new();
        self.forward_impl(x, false, Some(&mut captured), None)?;
        Ok(captured)
    }

    /// The network as a fixed teacher (eval mode, no gradients for its own weights): BatchNorm
    /// folded into the convolution (or, where its input is captured, applied as one per-channel
    /// affine map), every weight detached, so a backward pass through it computes input
    /// gradients only (DDD's transformation network) and none of the teacher's.
    pub fn forward_frozen(
        &self,
        x: &Tensor,
        capture: Option<&mut Vec<(Tensor, Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let mut values = self.forward_impl_with(x, false, capture, None, true)?;
        values
            .pop()
            .map(|(t, _)| t)
            .ok_or_else(|| Error::Runtime("empty graph".into()))
    }

    fn forward_impl(
        &self,
        x: &Tensor,
        train: bool,
        capture: Option<&mut Vec<(Tensor, Tensor, Tensor)>>,
        fq: Option<&FakeQuant>,
    ) -> Result<Vec<(Tensor, Option<Tensor>)>> {
        self.forward_impl_with(x, train, capture, fq, false)
    }

    fn forward_impl_with(
        &self,
        x: &Tensor,
        train: bool,
        mut capture: Option<&mut Vec<(Tensor, Tensor, Tensor)>>,
        fq: Option<&FakeQuant>,
        frozen: bool,
    ) -> Result<Vec<(Tensor, Option<Tensor>)>> {
        let frozen = frozen && !train && fq.is_none();
        let mut values: Vec<(Tensor, Option<Tensor>)> = Vec::with_capacity(self.spec.nodes.len());
        for (i, node) in self.spec.nodes.iter().enumerate() {
            let v = |j: usize| values[j].0.clone();
            let out = match node {
                Node::Input => (x.clone(), None),
                Node::Conv { input, act, .. } => {
                    let layer = self.convs[i]
                        .as_ref()
                        .ok_or_else(|| Error::Runtime(format!("node {i} has no weights")))?;
                    // a frozen BatchNorm whose input is captured: applied after the capture
                    let mut affine: Option<(Tensor, Tensor)> = None;
                    let (folded, bn) = match fq {
                        Some(_) => {
                            let (w, b) = layer.folded()?;
                            ((fake_quant_weights(&w)?, Some(b)), None)
                        }
                        None if frozen && layer.bn.is_some() && capture.is_none() => {
                            let (w, b) = layer.folded()?;
                            ((w.detach(), Some(b.detach())), None)
                        }
                        None if frozen => {
                            if let Some(bn) = &layer.bn {
                                affine = Some(frozen_affine(bn)?);
                            }
                            (
                                (
                                    layer.weight.detach(),
                                    layer.bias.as_ref().map(Tensor::detach),
                                ),
                                None,
                            )
                        }
                        None => (
                            (layer.weight.clone(), layer.bias.clone()),
                            layer.bn.as_ref(),
                        ),
                    };
                    let (weight, bias) = folded;
                    let (o, cin, k, _) = weight.dims4()?;
                    let mut y = if self.custom_ops
                        && layer.groups == 1
                        && o == 1
                        && layer.stride == 1
                    {
                        // one output channel (a depth head): a depthwise pass and a channel sum,
                        // without im2col's C·k² copies of a full-resolution map
                        let w = weight.reshape((cin, 1, k, k))?;
                        super::ops::depthwise_conv2d(&v(*input), &w, layer.padding, 1)?
                            .sum_keepdim(1)?
                    } else if self.custom_ops && layer.groups == 1 {
                        super::ops::conv2d(&v(*input), &weight, layer.padding, layer.stride)?
                    } else if self.custom_ops {
                        super::ops::depthwise_conv2d(
                            &v(*input),
                            &weight,
                            layer.padding,
                            layer.stride,
                        )?
                    } else {
                        v(*input).conv2d(&weight, layer.padding, layer.stride, 1, layer.groups)?
                    };
                    if let Some(b) = &bias {
                        y = y.broadcast_add(&b.reshape((1, (), 1, 1))?)?;
                    }
                    // training-mode BatchNorm and its activation in one op (CPU)
                    let fused = match act {
                        _ if !(train && self.custom_ops && y.device().is_cpu()) => None,
                        Act::None => Some(super::ops::BnAct::None),
                        Act::Relu => Some(super::ops::BnAct::Relu),
                        Act::Relu6 => Some(super::ops::BnAct::Relu6),
                        Act::Sigmoid => None,
                    };
                    let mut activated = false;
                    if let (Some((scale, shift)), Some(bn)) = (&affine, &layer.bn) {
                        if let Some(c) = capture.as_deref_mut() {
                            c.push((
                                y.clone(),
                                bn.running_mean().detach(),
                                bn.running_var().detach(),
                            ));
                        }
                        y = y.broadcast_mul(scale)?.broadcast_add(shift)?;
                    }
                    if let Some(bn) = bn {
                        if let Some(c) = capture.as_deref_mut() {
                            c.push((
                                y.clone(),
                                bn.running_mean().clone(),
                                bn.running_var().clone(),
                            ));
                        }
                        match (fused, bn.weight_and_bias()) {
                            (Some(a), Some((gamma, beta))) => {
                                y = batch_norm_train(bn, &y, gamma, beta, a)?;
                                activated = true;
                            }
                            _ => y = bn.forward_t(&y, train)?,
                        }
                    }
                    if let Some(p) = fq.and_then(|f| f.pre[i]) {
                        y = fake_quant(&y, p)?;
                    }
                    let pre = (*act == Act::Sigmoid).then(|| y.clone());
                    if activated {
                        (y, pre)
                    } else {
                        (activate(y, *act)?, pre)
                    }
                }
                Node::Add { a, b, act } => (activate((v(*a) + v(*b))?, *act)?, None),
                Node::Concat { inputs } => {
                    let xs: Vec<Tensor> = inputs.iter().map(|&j| v(j)).collect();
                    (Tensor::cat(&xs, 1)?, None)
                }
                Node::Upsample {
                    input,
                    factor,
                    mode,
                    like,
                } => {
                    let t = v(*input);
                    let (_, _, h, w) = t.dims4()?;
                    let mut y = match mode {
                        Interp::Nearest => t.upsample_nearest2d(h * factor, w * factor)?,
                        Interp::Bilinear => super::ops::upsample_bilinear(&t, *factor)?,
                    };
                    if let Some(j) = like {
                        let (_, _, th, tw) = values[*j].0.dims4()?;
                        if (th, tw) != (h * factor, w * factor) {
                            y = y.narrow(2, 0, th)?.narrow(3, 0, tw)?;
                        }
                    }
                    (y, None)
                }
                Node::MaxPool { input } => (max_pool_3x3_s2(&v(*input))?, None),
                Node::GlobalAvgPool { input } => {
                    (v(*input).mean_keepdim(2)?.mean_keepdim(3)?, None)
                }
                Node::Mul { input, scale } => (v(*input).broadcast_mul(&v(*scale))?, None),
            };
            let out = match fq.and_then(|f| f.post[i]) {
                Some(q) => (fake_quant(&out.0, q)?, out.1),
                None => out,
            };
            values.push(out);
        }
        Ok(values)
    }

    /// Depth in metres, N×1×H×W.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut values = self.forward_nodes(x, train)?;
        values
            .pop()
            .map(|(t, _)| t)
            .ok_or_else(|| Error::Runtime("empty graph".into()))
    }

    /// Folded convolution parameters of node `i` as `(weight [O, I/g, k, k], bias [O])` in f32:
    /// BatchNorm folded in (`w·γ/√(σ²+ε)`, `β − μ·γ/√(σ²+ε)`).
    pub fn folded_conv(&self, i: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let layer = self
            .convs
            .get(i)
            .and_then(|c| c.as_ref())
            .ok_or_else(|| Error::Runtime(format!("node {i} is not a convolution")))?;
        let (w, b) = layer.folded()?;
        Ok((
            w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
            b.to_dtype(DType::F32)?.to_vec1::<f32>()?,
        ))
    }
}

impl Module for GraphNet {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_t(x, false)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

/// 3×3 max pooling with stride 2 and padding 1 as maxima of strided views (candle's max pool has
/// no backward unless the kernel equals the stride). Zero padding stands in for −∞: the input is
/// post-ReLU.
pub(crate) fn max_pool_3x3_s2(x: &Tensor) -> candle_core::Result<Tensor> {
    // along `dim` (size n, output ⌈n/2⌉ = m): pad to 2m + 2, then the window of output o is
    // padded positions 2o, 2o + 1, 2o + 2
    let along = |x: &Tensor, dim: usize| -> candle_core::Result<Tensor> {
        let n = x.dim(dim)?;
        let m = n.div_ceil(2);
        let p = x.pad_with_zeros(dim, 1, 2 * m + 1 - n)?;
        let pick = |start: usize, phase: usize| -> candle_core::Result<Tensor> {
            let mut dims = p.dims().to_vec();
            dims[dim] = 2;
            dims.insert(dim, m);
            p.narrow(dim, start, 2 * m)?
                .reshape(dims)?
                .narrow(dim + 1, phase, 1)?
                .squeeze(dim + 1)
        };
        pick(0, 0)?.maximum(&pick(0, 1)?)?.maximum(&pick(2, 0)?)
    };
    along(&along(x, 2)?, 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A training-mode forward and backward through the custom ops (im2col convolution,
    /// depthwise, bilinear, fused BatchNorm + activation) computes what candle's own ops compute:
    /// outputs, every gradient, and the running statistics the step leaves behind.
    #[test]
    fn custom_ops_train_as_candle_does() {
        let dev = Device::Cpu;
        for (name, width) in [
            ("demo-student", 0.5),
            ("micro", 0.5),
            ("resnet18-mff", 0.125),
        ] {
            let nets: Vec<crate::nets::Net> = [true, false]
                .into_iter()
                .map(|on| {
                    let mut n =
                        crate::nets::Net::new(crate::nets::preset(name, width).unwrap(), &dev, 3)
                            .unwrap();
                    n.net.set_custom_ops(on);
                    n
                })
                .collect();
            let mut rng = crate::rng::Rng::new(11);
            let x: Vec<f32> = (0..2 * 3 * 64 * 64).map(|_| rng.f32()).collect();
            let x = Tensor::from_vec(x, (2, 3, 64, 64), &dev).unwrap();
            let r: Vec<f32> = (0..2 * 64 * 64).map(|_| rng.normal()).collect();
            let r = Tensor::from_vec(r, (2, 1, 64, 64), &dev).unwrap();
            let mut results = Vec::new();
            for n in &nets {
                let y = n.net.forward_t(&x, true).unwrap();
                let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let mut named: Vec<(String, Vec<f32>)> = crate::nets::vars_by_name(&n.vars)
                    .unwrap()
                    .into_iter()
                    .map(|(k, v)| {
                        // a gradient where the variable has one, else its value (running stats)
                        let t = grads
                            .get(v.as_tensor())
                            .cloned()
                            .unwrap_or_else(|| v.as_tensor().clone());
                        (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                    })
                    .collect();
                named.sort_by(|a, b| a.0.cmp(&b.0));
                let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                results.push((y, named));
            }
            // float rounding differs between the kernels; deep nets with BatchNorm over few
            // values amplify it (and can flip a ReLU near 0), so each tensor is compared relative
            // to its own largest value plus a floor relative to the network's largest gradient;
            // a wrong kernel is off by its whole scale
            let global = results[1]
                .1
                .iter()
                .flat_map(|(_, v)| v.iter())
                .fold(0f32, |m, v| m.max(v.abs()));
            let close = |a: &[f32], b: &[f32], what: &str| {
                let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(
                    d <= 3e-2 * scale + 1e-5 * global,
                    "{name} {what}: {d} (scale {scale}, network {global})"
                );
            };
            close(&results[0].0, &results[1].0, "output");
            for ((k, a), (_, b)) in results[0].1.iter().zip(&results[1].1) {
                close(a, b, k);
            }
        }
    }

    /// The frozen teacher's forward (BatchNorm folded, or applied as one affine map where its
    /// input is captured) gives the eval-mode output and the same captured BatchNorm inputs; a
    /// backward through it reaches the input with the gradient of the unfrozen net, and none of
    /// the teacher's own weights.
    #[test]
    fn frozen_forward_matches_eval_and_leaves_weights_without_gradients() {
        let dev = Device::Cpu;
        let n = crate::nets::Net::new(crate::nets::preset("demo-teacher", 0.5).unwrap(), &dev, 5)
            .unwrap();
        let mut rng = crate::rng::Rng::new(4);
        let x: Vec<f32> = (0..2 * 3 * 32 * 48).map(|_| rng.f32()).collect();
        let x = candle_core::Var::from_vec(x, (2, 3, 32, 48), &dev).unwrap();
        let max_diff = |a: &Tensor, b: &Tensor| -> (f32, f32) {
            let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(a.len(), b.len());
            let d = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            (d, b.iter().fold(0f32, |m, v| m.max(v.abs())))
        };
        let eval = n.net.forward_t(x.as_tensor(), false).unwrap();
        let frozen = n.net.forward_frozen(x.as_tensor(), None).unwrap();
        let (d, scale) = max_diff(&frozen, &eval);
        assert!(
            d <= 1e-4 * scale.max(1.0),
            "output differs by {d} (scale {scale})"
        );

        let plain = n.net.batch_norm_inputs(x.as_tensor()).unwrap();
        let mut captured = Vec::new();
        let with_capture = n
            .net
            .forward_frozen(x.as_tensor(), Some(&mut captured))
            .unwrap();
        let (d, scale) = max_diff(&with_capture, &eval);
        assert!(d <= 1e-4 * scale.max(1.0), "captured output differs by {d}");
        assert_eq!(captured.len(), plain.len());
        assert!(!captured.is_empty());
        for ((a, ma, va), (b, mb, vb)) in captured.iter().zip(&plain) {
            // later layers' inputs differ by the rounding of the affine BatchNorm before them
            let (d, scale) = max_diff(a, b);
            assert!(d <= 1e-4 * scale.max(1.0), "captured input differs by {d}");
            assert_eq!(max_diff(ma, mb).0, 0.0);
            assert_eq!(max_diff(va, vb).0, 0.0);
        }

        let loss = |y: &Tensor| y.sqr().unwrap().sum_all().unwrap();
        let g_frozen = loss(&with_capture).backward().unwrap();
        let g_eval = loss(&eval).backward().unwrap();
        let (d, scale) = max_diff(
            g_frozen.get(x.as_tensor()).unwrap(),
            g_eval.get(x.as_tensor()).unwrap(),
        );
        assert!(scale > 0.0);
        assert!(
            d <= 1e-3 * scale,
            "input gradient differs by {d} (scale {scale})"
        );
        for (name, v) in crate::nets::vars_by_name(&n.vars).unwrap() {
            assert!(
                g_frozen.get(v.as_tensor()).is_none(),
                "the frozen forward gave {name} a gradient"
            );
        }
        assert!(crate::nets::vars_by_name(&n.vars)
            .unwrap()
            .iter()
            .any(|(_, v)| g_eval.get(v.as_tensor()).is_some()));
    }

    /// The strided-view max pool equals candle's padded max pool, and its gradient reaches
    /// exactly the window maxima.
    #[test]
    fn max_pool_matches_candle_and_routes_gradients_to_maxima() {
        let dev = Device::Cpu;
        for (h, w) in [(7usize, 6usize), (4, 4), (1, 3), (5, 1)] {
            let mut rng = crate::rng::Rng::new((h * 10 + w) as u64);
            let values: Vec<f32> = (0..2 * 3 * h * w).map(|_| rng.f32()).collect();
            let x = candle_core::Var::from_vec(values, (2, 3, h, w), &dev).unwrap();
            let ours = max_pool_3x3_s2(&x).unwrap();
            let padded = x
                .pad_with_zeros(2, 1, 1)
                .unwrap()
                .pad_with_zeros(3, 1, 1)
                .unwrap();
            let theirs = padded.max_pool2d_with_stride(3, 2).unwrap();
            assert_eq!(ours.dims(), &[2, 3, h.div_ceil(2), w.div_ceil(2)]);
            let (a, b) = (
                ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(a, b, "{h}x{w}");
            let g = ours.sum_all().unwrap().backward().unwrap();
            let g = g.get(x.as_tensor()).unwrap();
            // one unit of gradient per output (values are distinct, so no ties)
            let total = g.sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(total as usize, a.len(), "{h}x{w}");
        }
    }
}
