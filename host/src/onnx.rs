//! ONNX export (DESIGN §10): f32, opset 13, NCHW; input `image` float32 `[1, 3, H, W]` RGB in
//! [0, 1], output `depth` float32 `[1, 1, H, W]` in metres.
//!
//! The graph is written from the same [`GraphSpec`] walk as the int8 export, with BatchNorm folded
//! into its convolution. Only ops that tract and onnxruntime both run well are used: `Conv`,
//! `Relu`, `Clip`, `Sigmoid`, `Add`, `Concat`, `GlobalAveragePool`, `Mul`, and for nearest
//! upsampling `Reshape` → `Expand` → `Reshape` instead of `Resize` (exact, and no `Resize`
//! attribute combinations to get wrong). The network takes [0, 1] RGB as it is, so the
//! normalization is the graph itself.
//!
//! The protobuf encoding is written here (a few dozen lines for the handful of messages ONNX
//! needs), so the export does not depend on the runtime that reads it back in the tests.

use crate::error::{Error, Result};
use crate::nets::graph::{Act, GraphNet, Interp, Node};

/// ONNX IR version 7 goes with opset 13.
const IR_VERSION: u64 = 7;
const OPSET: u64 = 13;

/// `TensorProto.DataType`.
const FLOAT: u64 = 1;
const INT64: u64 = 7;

/// A protobuf message being written (proto3 wire format).
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }

    fn uint(&mut self, field: u32, v: u64) -> &mut Self {
        self.key(field, 0);
        self.varint(v);
        self
    }

    fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.uint(field, v as u64)
    }

    fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    fn string(&mut self, field: u32, s: &str) -> &mut Self {
        self.bytes(field, s.as_bytes())
    }

    fn message(&mut self, field: u32, m: Pb) -> &mut Self {
        self.bytes(field, &m.0)
    }

    fn packed_ints(&mut self, field: u32, vs: &[i64]) -> &mut Self {
        let mut inner = Pb::default();
        for &v in vs {
            inner.varint(v as u64);
        }
        self.bytes(field, &inner.0)
    }
}

/// `AttributeProto` of type INT (2) or INTS (7).
fn attr_int(name: &str, v: i64) -> Pb {
    let mut a = Pb::default();
    a.string(1, name).int(3, v).uint(20, 2);
    a
}

/// `AttributeProto` of type STRING (3).
fn attr_string(name: &str, v: &str) -> Pb {
    let mut a = Pb::default();
    a.string(1, name).string(4, v).uint(20, 3);
    a
}

fn attr_ints(name: &str, vs: &[i64]) -> Pb {
    let mut a = Pb::default();
    a.string(1, name).packed_ints(8, vs).uint(20, 7);
    a
}

/// `TensorProto` with little-endian raw data.
fn tensor_f32(name: &str, dims: &[i64], data: &[f32]) -> Pb {
    let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut t = Pb::default();
    t.packed_ints(1, dims)
        .uint(2, FLOAT)
        .string(8, name)
        .bytes(9, &raw);
    t
}

fn tensor_i64(name: &str, data: &[i64]) -> Pb {
    let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut t = Pb::default();
    t.packed_ints(1, &[data.len() as i64])
        .uint(2, INT64)
        .string(8, name)
        .bytes(9, &raw);
    t
}

/// `ValueInfoProto` of a float32 tensor with a fixed shape.
fn value_info(name: &str, dims: &[usize]) -> Pb {
    let mut shape = Pb::default();
    for &d in dims {
        let mut dim = Pb::default();
        dim.int(1, d as i64);
        shape.message(1, dim);
    }
    let mut tensor = Pb::default();
    tensor.uint(1, FLOAT).message(2, shape);
    let mut ty = Pb::default();
    ty.message(1, tensor);
    let mut v = Pb::default();
    v.string(1, name).message(2, ty);
    v
}

/// The graph being assembled: nodes and initializers.
#[derive(Default)]
struct Graph {
    nodes: Vec<Pb>,
    initializers: Vec<Pb>,
    counter: usize,
}

impl Graph {
    fn fresh(&mut self, stem: &str) -> String {
        self.counter += 1;
        format!("{stem}_{}", self.counter)
    }

    fn node(&mut self, op: &str, inputs: &[&str], output: &str, attrs: Vec<Pb>) {
        let mut n = Pb::default();
        for i in inputs {
            n.string(1, i);
        }
        n.string(2, output);
        let name = self.fresh(op);
        n.string(3, &name).string(4, op);
        for a in attrs {
            n.message(5, a);
        }
        self.nodes.push(n);
    }

    /// `act(x)` into a fresh name (or `x` itself for no activation).
    fn activation(&mut self, x: String, act: Act) -> String {
        let op = match act {
            Act::None => return x,
            Act::Relu => "Relu",
            Act::Relu6 => "Clip",
            Act::Sigmoid => "Sigmoid",
        };
        let y = self.fresh("act");
        if act == Act::Relu6 {
            let (lo, hi) = (self.fresh("clip_min"), self.fresh("clip_max"));
            self.initializers.push(tensor_f32(&lo, &[], &[0.0]));
            self.initializers.push(tensor_f32(&hi, &[], &[6.0]));
            self.node(op, &[&x, &lo, &hi], &y, vec![]);
        } else {
            self.node(op, &[&x], &y, vec![]);
        }
        y
    }
}

/// The network as an ONNX model for `width × height` inputs.
pub fn export(net: &GraphNet, width: usize, height: usize) -> Result<Vec<u8>> {
    let spec = net.spec();
    let shapes = spec.shapes(width, height)?;
    if spec.input_channels != 3 {
        return Err(Error::Usage(format!(
            "architecture {} takes a stereo pair; the ONNX export takes one RGB image",
            spec.name
        )));
    }
    for i in 0..spec.nodes.len() {
        spec.check_uncropped(i, &shapes)?;
    }
    let channels = spec.channels();
    let last = spec.nodes.len() - 1;
    let mut g = Graph::default();
    let mut names: Vec<String> = Vec::with_capacity(spec.nodes.len());
    for (i, node) in spec.nodes.iter().enumerate() {
        let name = match node {
            Node::Input => "image".to_string(),
            Node::Conv {
                input,
                out_channels,
                kernel,
                stride,
                depthwise,
                act,
                ..
            } => {
                let (w, b) = net.folded_conv(i)?;
                let cin = channels[*input];
                let group = if *depthwise { cin } else { 1 };
                let (k, p) = (*kernel as i64, (*kernel / 2) as i64);
                let (wn, bn) = (format!("n{i}.weight"), format!("n{i}.bias"));
                g.initializers.push(tensor_f32(
                    &wn,
                    &[*out_channels as i64, (cin / group) as i64, k, k],
                    &w,
                ));
                g.initializers
                    .push(tensor_f32(&bn, &[*out_channels as i64], &b));
                let y = g.fresh("conv");
                g.node(
                    "Conv",
                    &[&names[*input], &wn, &bn],
                    &y,
                    vec![
                        attr_ints("kernel_shape", &[k, k]),
                        attr_ints("strides", &[*stride as i64, *stride as i64]),
                        attr_ints("pads", &[p, p, p, p]),
                        attr_ints("dilations", &[1, 1]),
                        attr_int("group", group as i64),
                    ],
                );
                g.activation(y, *act)
            }
            Node::Add { a, b, act } => {
                let y = g.fresh("add");
                g.node("Add", &[&names[*a], &names[*b]], &y, vec![]);
                g.activation(y, *act)
            }
            Node::Concat { inputs } => {
                let y = g.fresh("concat");
                let ins: Vec<&str> = inputs.iter().map(|&j| names[j].as_str()).collect();
                g.node("Concat", &ins, &y, vec![attr_int("axis", 1)]);
                y
            }
            Node::Upsample {
                input,
                factor,
                mode: Interp::Bilinear,
                ..
            } => {
                let scales = g.fresh("scales");
                let f = *factor as f32;
                g.initializers
                    .push(tensor_f32(&scales, &[4], &[1.0, 1.0, f, f]));
                let y = g.fresh("up");
                g.node(
                    "Resize",
                    &[&names[*input], "", &scales],
                    &y,
                    vec![
                        attr_string("mode", "linear"),
                        attr_string("coordinate_transformation_mode", "half_pixel"),
                    ],
                );
                y
            }
            Node::MaxPool { input } => {
                let y = g.fresh("pool");
                g.node(
                    "MaxPool",
                    &[&names[*input]],
                    &y,
                    vec![
                        attr_ints("kernel_shape", &[3, 3]),
                        attr_ints("strides", &[2, 2]),
                        attr_ints("pads", &[1, 1, 1, 1]),
                    ],
                );
                y
            }
            Node::Upsample { input, factor, .. } => {
                let s = shapes[*input];
                let (c, h, w, f) = (
                    s.channels as i64,
                    s.height as i64,
                    s.width as i64,
                    *factor as i64,
                );
                let (s1, s2, s3) = (g.fresh("shape"), g.fresh("shape"), g.fresh("shape"));
                g.initializers.push(tensor_i64(&s1, &[1, c, h, 1, w, 1]));
                g.initializers.push(tensor_i64(&s2, &[1, c, h, f, w, f]));
                g.initializers.push(tensor_i64(&s3, &[1, c, h * f, w * f]));
                let (a, b, y) = (g.fresh("up"), g.fresh("up"), g.fresh("up"));
                g.node("Reshape", &[&names[*input], &s1], &a, vec![]);
                g.node("Expand", &[&a, &s2], &b, vec![]);
                g.node("Reshape", &[&b, &s3], &y, vec![]);
                y
            }
            Node::GlobalAvgPool { input } => {
                let y = g.fresh("gap");
                g.node("GlobalAveragePool", &[&names[*input]], &y, vec![]);
                y
            }
            Node::Mul { input, scale } => {
                let y = g.fresh("mul");
                g.node("Mul", &[&names[*input], &names[*scale]], &y, vec![]);
                y
            }
        };
        names.push(name);
    }
    // the last node's value is named `depth`
    let out = &names[last];
    g.node("Identity", &[out], "depth", vec![]);

    let mut graph = Pb::default();
    for n in g.nodes {
        graph.message(1, n);
    }
    graph.string(2, &spec.name);
    for t in g.initializers {
        graph.message(5, t);
    }
    graph.message(11, value_info("image", &[1, 3, height, width]));
    graph.message(12, value_info("depth", &[1, 1, height, width]));

    let mut opset = Pb::default();
    opset.string(1, "").uint(2, OPSET);
    let mut model = Pb::default();
    model
        .uint(1, IR_VERSION)
        .string(2, "depthling")
        .string(3, env!("CARGO_PKG_VERSION"))
        .message(7, graph)
        .message(8, opset);
    Ok(model.0)
}
