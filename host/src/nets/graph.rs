//! A network as a list of nodes that map 1:1 onto IR ops (DESIGN §2, §5): convolution (+ folded
//! BatchNorm at export) with a fused activation, add, concat, nearest upsample, global average pool,
//! per-channel multiply. The same [`GraphSpec`] drives the candle module, the parameter and MAC
//! counts, and the int8 export, so export is a walk, not a translation.

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

pub use super::graph_net::{fake_quant, fake_quant_weights, FakeQuant, GraphNet, BN_EPS};
