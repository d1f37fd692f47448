//! A network as a list of nodes that map 1:1 onto IR ops (DESIGN §2, §5): convolution (+ folded
//! BatchNorm at export) with a fused activation, add, concat, nearest upsample, global average pool,
//! per-channel multiply. The same [`GraphSpec`] drives the candle module, the parameter and MAC
//! counts, and the int8 export, so export is a walk, not a translation.

use candle_core::{DType, Module, ModuleT, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, Init, VarBuilder};
use depthling_model::QuantParams;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Act {
    None,
    Relu,
    Relu6,
    Sigmoid,
}

/// Upsampling interpolation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Interp {
    #[default]
    Nearest,
    /// Half-pixel centres, clamped edges (PyTorch `align_corners=False`, the engine's rule).
    Bilinear,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Node {
    /// The RGB image in [0, 1], N×3×H×W.
    Input,
    Conv {
        input: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        depthwise: bool,
        batch_norm: bool,
        act: Act,
    },
    Add {
        a: usize,
        b: usize,
        act: Act,
    },
    Concat {
        inputs: Vec<usize>,
    },
    /// Upsampling by an integer factor (power of two). With `like`, the result is cropped to
    /// that node's height and width (top-left): a stride-32 feature map of an image whose size is
    /// not a multiple of 32 covers slightly more than the image, and the crop drops the part that
    /// lies over the padding. Exports need the uncropped form (sizes divisible by the stride).
    Upsample {
        input: usize,
        factor: usize,
        #[serde(default)]
        mode: Interp,
        #[serde(default)]
        like: Option<usize>,
    },
    /// 3×3 max pooling, stride 2, padding 1 (the ResNet stem; teachers only, not an int8 op).
    MaxPool {
        input: usize,
    },
    GlobalAvgPool {
        input: usize,
    },
    /// `input · scale` with `scale` N×C×1×1.
    Mul {
        input: usize,
        scale: usize,
    },
}

/// An architecture: nodes in execution order; the last node is the depth output (1 channel).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphSpec {
    pub name: String,
    pub nodes: Vec<Node>,
    /// Initial bias of the output convolution (a typical depth in metres).
    pub output_bias: f32,
    /// Channels of the input: 3 (RGB), or 6 for a stereo teacher (left RGB, right RGB).
    #[serde(default = "rgb_channels")]
    pub input_channels: usize,
}

fn rgb_channels() -> usize {
    3
}

/// Shape of one node's output for a given input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl GraphSpec {
    /// Output shapes of every node for an input of `width × height`, checking the graph.
    pub fn shapes(&self, width: usize, height: usize) -> Result<Vec<NodeShape>> {
        let bad = |i: usize, msg: &str| {
            Error::Usage(format!("architecture {}: node {i}: {msg}", self.name))
        };
        // an input size the layer list cannot take: say which sizes it can
        let size_bad = |i: usize, msg: &str| {
            let m = self.stride();
            let near = |v: usize| ((v + m / 2) / m * m).max(m);
            Error::Usage(format!(
                "architecture {} cannot run at {width}×{height} (node {i}: {msg}): it downsamples by {m}, so sizes that are multiples of {m} work, e.g. {}×{}",
                self.name,
                near(width),
                near(height)
            ))
        };
        let mut shapes: Vec<NodeShape> = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let get = |j: usize| {
                shapes
                    .get(j)
                    .copied()
                    .ok_or_else(|| bad(i, "refers to a later node"))
            };
            let s = match node {
                Node::Input => {
                    if i != 0 {
                        return Err(bad(i, "input must be the first node"));
                    }
                    NodeShape {
                        channels: self.input_channels,
                        height,
                        width,
                    }
                }
                Node::Conv {
                    input,
                    out_channels,
                    kernel,
                    stride,
                    depthwise,
                    ..
                } => {
                    let x = get(*input)?;
                    if *depthwise && *out_channels != x.channels {
                        return Err(bad(i, "depthwise conv must keep the channel count"));
                    }
                    if !matches!(kernel, 1 | 3 | 5 | 7) || !matches!(stride, 1 | 2) {
                        return Err(bad(i, "kernel must be 1, 3, 5 or 7 and stride 1 or 2"));
                    }
                    NodeShape {
                        channels: *out_channels,
                        height: x.height.div_ceil(*stride),
                        width: x.width.div_ceil(*stride),
                    }
                }
                Node::Add { a, b, .. } => {
                    let (x, y) = (get(*a)?, get(*b)?);
                    if x.channels != y.channels {
                        return Err(bad(
                            i,
                            &format!("add of {} and {} channels", x.channels, y.channels),
                        ));
                    }
                    if x != y {
                        return Err(size_bad(
                            i,
                            &format!(
                                "adds maps of {}×{} and {}×{}",
                                x.width, x.height, y.width, y.height
                            ),
                        ));
                    }
                    x
                }
                Node::Concat { inputs } => {
                    let first = get(*inputs.first().ok_or_else(|| bad(i, "empty concat"))?)?;
                    let mut c = 0;
                    for &j in inputs {
                        let s = get(j)?;
                        if (s.height, s.width) != (first.height, first.width) {
                            return Err(size_bad(
                                i,
                                &format!(
                                    "concatenates maps of {}×{} and {}×{}",
                                    first.width, first.height, s.width, s.height
                                ),
                            ));
                        }
                        c += s.channels;
                    }
                    NodeShape {
                        channels: c,
                        ..first
                    }
                }
                Node::Upsample {
                    input,
                    factor,
                    like,
                    ..
                } => {
                    let x = get(*input)?;
                    if !matches!(factor, 2 | 4 | 8 | 16) {
                        return Err(bad(i, "upsampling factor must be 2, 4, 8 or 16"));
                    }
                    let (height, width) = (x.height * factor, x.width * factor);
                    match like {
                        None => NodeShape {
                            channels: x.channels,
                            height,
                            width,
                        },
                        Some(j) => {
                            let t = get(*j)?;
                            if t.height > height || t.width > width {
                                return Err(size_bad(i, "upsampled map is smaller than its crop"));
                            }
                            NodeShape {
                                channels: x.channels,
                                height: t.height,
                                width: t.width,
                            }
                        }
                    }
                }
                Node::MaxPool { input } => {
                    let x = get(*input)?;
                    NodeShape {
                        height: x.height.div_ceil(2),
                        width: x.width.div_ceil(2),
                        ..x
                    }
                }
                Node::GlobalAvgPool { input } => NodeShape {
                    channels: get(*input)?.channels,
                    height: 1,
                    width: 1,
                },
                Node::Mul { input, scale } => {
                    let (x, s) = (get(*input)?, get(*scale)?);
                    if s.channels != x.channels || s.height != 1 || s.width != 1 {
                        return Err(bad(i, "mul scale must be C×1×1"));
                    }
                    x
                }
            };
            shapes.push(s);
        }
        let last = shapes.last().ok_or_else(|| bad(0, "empty graph"))?;
        if last.channels != 1 {
            return Err(bad(
                shapes.len() - 1,
                &format!("output has {} channels, a depth map has 1", last.channels),
            ));
        }
        if (last.height, last.width) != (height, width) {
            return Err(size_bad(
                shapes.len() - 1,
                &format!("output is {}×{}", last.width, last.height),
            ));
        }
        Ok(shapes)
    }

    /// The deepest downsampling in the graph (product of strides and pools on the way to any
    /// node): input sizes that are multiples of it always work.
    pub fn stride(&self) -> usize {
        let mut down: Vec<usize> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let at = |j: usize| down.get(j).copied().unwrap_or(1);
            let d = match node {
                Node::Input => 1,
                Node::Conv { input, stride, .. } => at(*input) * stride,
                Node::MaxPool { input } => at(*input) * 2,
                Node::Upsample { input, .. }
                | Node::GlobalAvgPool { input }
                | Node::Mul { input, .. } => at(*input),
                Node::Add { a, b, .. } => at(*a).max(at(*b)),
                Node::Concat { inputs } => inputs.iter().map(|&j| at(j)).max().unwrap_or(1),
            };
            down.push(d);
        }
        down.into_iter().max().unwrap_or(1)
    }

    /// The encoder's feature maps, one per downsampling factor, as `(factor, node)` sorted by
    /// factor (no image size needed): at each factor s below the deepest, the map that feeds the
    /// first node downsampling to 2s (the end of the stage at s; through an inverted residual's
    /// 1×1 expansion to the block's output); at the deepest factor, the last map before the
    /// decoder's first upsampling. These are the taps ADU-Depth's feature distillation reads, on
    /// teacher and student alike.
    pub fn encoder_taps(&self) -> Vec<(usize, usize)> {
        // downsampling factor of every node; None for globally pooled maps (and what reads them)
        let mut scale: Vec<Option<usize>> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let at = |j: usize| scale.get(j).copied().flatten();
            let s = match node {
                Node::Input => Some(1),
                Node::Conv { input, stride, .. } => at(*input).map(|s| s * stride),
                Node::MaxPool { input } => at(*input).map(|s| s * 2),
                Node::Upsample { input, factor, .. } => at(*input).map(|s| (s / factor).max(1)),
                Node::GlobalAvgPool { .. } => None,
                Node::Mul { input, .. } => at(*input),
                Node::Add { a, .. } => at(*a),
                Node::Concat { inputs } => inputs.first().and_then(|&j| at(j)),
            };
            scale.push(s);
        }
        let first_up = self
            .nodes
            .iter()
            .position(|n| matches!(n, Node::Upsample { .. }))
            .unwrap_or(self.nodes.len());
        let deepest = scale[..first_up]
            .iter()
            .flatten()
            .copied()
            .max()
            .unwrap_or(1);
        let channels = self.channels();
        let expansion_input = |i: usize| match &self.nodes[i] {
            Node::Conv {
                input,
                kernel: 1,
                stride: 1,
                depthwise: false,
                out_channels,
                ..
            } if *out_channels > channels[*input] => Some(*input),
            _ => None,
        };
        let mut taps = Vec::new();
        let mut s = 2;
        while s < deepest {
            let feeder = self.nodes[..first_up]
                .iter()
                .enumerate()
                .find_map(|(i, n)| match n {
                    Node::Conv { input, .. } | Node::MaxPool { input }
                        if scale[i] == Some(2 * s) && scale[*input] == Some(s) =>
                    {
                        Some(expansion_input(*input).unwrap_or(*input))
                    }
                    _ => None,
                });
            if let Some(j) = feeder {
                taps.push((s, j));
            }
            s *= 2;
        }
        let last = (0..first_up).rfind(|&i| scale[i] == Some(deepest));
        if let Some(j) = last.filter(|_| deepest > 1) {
            taps.push((deepest, j));
        }
        taps
    }

    /// Output channels of every node (no image size needed). Nodes refer only to earlier nodes
    /// in a valid spec; an out-of-range reference counts as 0 channels here and is reported by
    /// [`GraphSpec::shapes`].
    pub fn channels(&self) -> Vec<usize> {
        let mut channels: Vec<usize> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let at = |j: usize| channels.get(j).copied().unwrap_or(0);
            let c = match node {
                Node::Input => self.input_channels,
                Node::Conv { out_channels, .. } => *out_channels,
                Node::Add { a, .. } => at(*a),
                Node::Concat { inputs } => inputs.iter().map(|&j| at(j)).sum(),
                Node::Upsample { input, .. }
                | Node::MaxPool { input }
                | Node::GlobalAvgPool { input }
                | Node::Mul { input, .. } => at(*input),
            };
            channels.push(c);
        }
        channels
    }

    /// Every node reads only earlier nodes, the input is node 0 and only node 0, and the graph
    /// is not empty (a spec can come from a checkpoint's metadata: checked, never trusted).
    pub fn check_references(&self) -> Result<()> {
        let bad = |i: usize, msg: &str| {
            Error::Usage(format!("architecture {}: node {i}: {msg}", self.name))
        };
        if !matches!(self.nodes.first(), Some(Node::Input)) {
            return Err(bad(0, "the first node must be the input"));
        }
        for (i, node) in self.nodes.iter().enumerate().skip(1) {
            let refs: Vec<usize> = match node {
                Node::Input => return Err(bad(i, "only node 0 may be the input")),
                Node::Conv { input, .. }
                | Node::Upsample {
                    input, like: None, ..
                }
                | Node::MaxPool { input }
                | Node::GlobalAvgPool { input } => vec![*input],
                Node::Upsample {
                    input,
                    like: Some(like),
                    ..
                } => vec![*input, *like],
                Node::Add { a, b, .. } => vec![*a, *b],
                Node::Concat { inputs } if inputs.is_empty() => return Err(bad(i, "empty concat")),
                Node::Concat { inputs } => inputs.clone(),
                Node::Mul { input, scale } => vec![*input, *scale],
            };
            if refs.iter().any(|&j| j >= i) {
                return Err(bad(i, "reads a node that does not come before it"));
            }
        }
        Ok(())
    }

    /// Refuses what the int8 IR cannot express (`what` names the export in the message): 7×7
    /// kernels, max pooling, cropped upsampling and stereo input belong to teachers only.
    pub fn check_int8(&self, shapes: &[NodeShape]) -> Result<()> {
        let bad = |i: usize, msg: &str| {
            Error::Usage(format!(
                "architecture {}: node {i}: {msg}; the int8 engine runs students (mbv2-mff, micro, demo-student)",
                self.name
            ))
        };
        if self.input_channels != 3 {
            return Err(bad(0, "stereo input"));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            match node {
                Node::Conv { kernel: 7, .. } => return Err(bad(i, "7×7 convolution")),
                Node::MaxPool { .. } => return Err(bad(i, "max pooling")),
                _ => {}
            }
            self.check_uncropped(i, shapes)?;
        }
        Ok(())
    }

    /// A cropping upsample (input size not a multiple of the network's stride) has no export.
    pub fn check_uncropped(&self, i: usize, shapes: &[NodeShape]) -> Result<()> {
        if let Node::Upsample { input, factor, .. } = &self.nodes[i] {
            let (x, y) = (shapes[*input], shapes[i]);
            if (y.height, y.width) != (x.height * factor, x.width * factor) {
                return Err(Error::Usage(format!(
                    "architecture {}: node {i} crops its upsampled map because the input size is not a multiple of the network's stride; export at a size divisible by 32 (e.g. 320x224 or 128x96)",
                    self.name
                )));
            }
        }
        Ok(())
    }

    /// Trainable parameters (BatchNorm folded away: weights + one bias per output channel).
    pub fn params(&self) -> usize {
        let channels = self.channels();
        self.nodes
            .iter()
            .map(|node| match node {
                Node::Conv {
                    input,
                    out_channels,
                    kernel,
                    depthwise,
                    ..
                } => {
                    let cin = if *depthwise {
                        1
                    } else {
                        channels.get(*input).copied().unwrap_or(0)
                    };
                    out_channels * cin * kernel * kernel + out_channels
                }
                _ => 0,
            })
            .sum()
    }

    /// Parameters as PyTorch counts them while training: convolution weights, biases where there
    /// is no BatchNorm, and BatchNorm's γ and β (running statistics are buffers, not parameters).
    pub fn train_params(&self) -> usize {
        let bn: usize = self
            .nodes
            .iter()
            .map(|node| match node {
                Node::Conv {
                    out_channels,
                    batch_norm: true,
                    ..
                } => *out_channels,
                _ => 0,
            })
            .sum();
        // params() counts one bias per channel; BatchNorm has two (γ, β)
        self.params() + bn
    }

    /// Multiply-accumulates at `width × height` (convolutions and multiplies).
    pub fn macs(&self, width: usize, height: usize) -> Result<u64> {
        let shapes = self.shapes(width, height)?;
        let mut total = 0u64;
        for (i, node) in self.nodes.iter().enumerate() {
            let out = shapes[i];
            let elems = (out.channels * out.height * out.width) as u64;
            total += match node {
                Node::Conv {
                    input,
                    kernel,
                    depthwise,
                    ..
                } => {
                    let cin = if *depthwise {
                        1
                    } else {
                        shapes[*input].channels
                    } as u64;
                    elems * (kernel * kernel) as u64 * cin
                }
                Node::Mul { .. } => elems,
                _ => 0,
            };
        }
        Ok(total)
    }
}

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
        let mean = bn.running_mean().detach();
        let var = bn.running_var().detach();
        let (gamma, beta) = match bn.weight_and_bias() {
            Some((g, b)) => (g.clone(), b.clone()),
            None => (mean.ones_like()?, mean.zeros_like()?),
        };
        let f = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let weight = self.weight.broadcast_mul(&f.reshape((oc, 1, 1, 1))?)?;
        let bias = (beta + ((bias - mean)? * &f)?)?;
        Ok((weight, bias))
    }
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

    fn forward_impl(
        &self,
        x: &Tensor,
        train: bool,
        mut capture: Option<&mut Vec<(Tensor, Tensor, Tensor)>>,
        fq: Option<&FakeQuant>,
    ) -> Result<Vec<(Tensor, Option<Tensor>)>> {
        let mut values: Vec<(Tensor, Option<Tensor>)> = Vec::with_capacity(self.spec.nodes.len());
        for (i, node) in self.spec.nodes.iter().enumerate() {
            let v = |j: usize| values[j].0.clone();
            let out = match node {
                Node::Input => (x.clone(), None),
                Node::Conv { input, act, .. } => {
                    let layer = self.convs[i]
                        .as_ref()
                        .ok_or_else(|| Error::Runtime(format!("node {i} has no weights")))?;
                    let (folded, bn) = match fq {
                        Some(_) => {
                            let (w, b) = layer.folded()?;
                            ((fake_quant_weights(&w)?, Some(b)), None)
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
fn max_pool_3x3_s2(x: &Tensor) -> candle_core::Result<Tensor> {
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

pub use crate::data::batch::images_to_tensor;

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
