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
//! The messages are ONNX's own schema as `tract-onnx` generates it with `prost` (`tract_onnx::pb`),
//! encoded by `prost`: the same definitions the importer of ONNX teachers reads.

use prost::Message;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::error::{Error, Result};
use crate::nets::graph::{Act, GraphNet, Interp, Node};

/// ONNX IR version 7 goes with opset 13.
const IR_VERSION: i64 = 7;
const OPSET: i64 = 13;

/// `AttributeProto` of type INT.
fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i: v,
        r#type: AttributeType::Int as i32,
        ..Default::default()
    }
}

/// `AttributeProto` of type STRING.
fn attr_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        s: v.as_bytes().to_vec(),
        r#type: AttributeType::String as i32,
        ..Default::default()
    }
}

/// `AttributeProto` of type INTS.
fn attr_ints(name: &str, vs: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: vs.to_vec(),
        r#type: AttributeType::Ints as i32,
        ..Default::default()
    }
}

/// `TensorProto` with little-endian raw data.
fn tensor_f32(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        name: name.into(),
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn tensor_i64(name: &str, data: &[i64]) -> TensorProto {
    TensorProto {
        dims: vec![data.len() as i64],
        data_type: DataType::Int64 as i32,
        name: name.into(),
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// `ValueInfoProto` of a float32 tensor with a fixed shape.
fn value_info(name: &str, dims: &[usize]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The graph being assembled: nodes and initializers.
#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    counter: usize,
}

impl Graph {
    fn fresh(&mut self, stem: &str) -> String {
        self.counter += 1;
        format!("{stem}_{}", self.counter)
    }

    fn node(&mut self, op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) {
        let name = self.fresh(op);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|i| i.to_string()).collect(),
            output: vec![output.to_string()],
            name,
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        });
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

    let graph = GraphProto {
        node: g.nodes,
        name: spec.name.clone(),
        initializer: g.initializers,
        input: vec![value_info("image", &[1, 3, height, width])],
        output: vec![value_info("depth", &[1, 1, height, width])],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: IR_VERSION,
        producer_name: "depthling".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}
