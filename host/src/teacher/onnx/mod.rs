//! ONNX teachers (exported from PyTorch with `torch.onnx.export`) imported into the trainable
//! graph: every node runs on candle tensors with autograd, so DDD's transformation network
//! backpropagates through the teacher, its `BatchNormalization` nodes report their inputs and
//! running statistics, and ADU reads feature maps by ONNX tensor name.
//!
//! The teacher's contract, with PyTorch's habits as defaults: input `[N, 3, H, W]` float RGB in
//! [0, 1] (or normalised with `mean`/`std` given here when the graph does not do it); output depth
//! in metres `[N, 1, H, W]` or `[N, H, W]` (or inverse depth / disparity, turned into depth as
//! `scale / output`). Static sizes come from the file, dynamic axes from the images; a teacher
//! whose static size differs from the images' runs on resized images, and its depth is resized
//! back.

mod ops;
mod resize;
mod shape;
mod spatial;
mod value;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use prost::Message;
use serde::Serialize;
use tract_onnx::pb;

use super::{BatchNormInput, FeatureTap, Teacher};
use crate::error::{Error, Result};
use ops::{Ctx, OpNode};
use value::Value;

pub use ops::SUPPORTED;

/// What the teacher's output is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TeacherOutput {
    /// Depth in metres.
    #[default]
    Depth,
    /// Inverse depth or disparity: depth = scale / output.
    Inverse,
}

impl std::str::FromStr for TeacherOutput {
    type Err = Error;

    fn from_str(s: &str) -> Result<TeacherOutput> {
        match s {
            "depth" => Ok(TeacherOutput::Depth),
            "inverse" => Ok(TeacherOutput::Inverse),
            other => Err(Error::Usage(format!(
                "unknown teacher output {other:?}; known: depth, inverse"
            ))),
        }
    }
}

/// How to feed an ONNX teacher and read its output.
#[derive(Clone, Debug, PartialEq)]
pub struct TeacherOptions {
    /// Per-channel mean and standard deviation applied to [0, 1] RGB before the graph (when the
    /// normalisation is not inside it), e.g. ImageNet's.
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    pub output: TeacherOutput,
    /// Depth = scale / output for [`TeacherOutput::Inverse`]; a factor on depth otherwise.
    pub scale: f32,
    /// ONNX tensor names of the feature maps ADU distils (empty: the encoder's last map at each
    /// downsampling factor).
    pub taps: Vec<String>,
}

impl Default for TeacherOptions {
    fn default() -> Self {
        TeacherOptions {
            mean: None,
            std: None,
            output: TeacherOutput::Depth,
            scale: 1.0,
            taps: Vec::new(),
        }
    }
}

/// A tensor of the graph at the size in use (for `profile --model T.onnx`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// The op that writes it.
    pub op: String,
    pub shape: Vec<usize>,
    /// Downsampling factor against the input, for 4-D maps.
    pub factor: Option<usize>,
    /// Whether a BatchNormalization node reads it.
    pub batch_norm_input: bool,
}

/// An imported ONNX teacher.
pub struct OnnxTeacher {
    path: PathBuf,
    name: String,
    opset: i64,
    nodes: Vec<OpNode>,
    initializers: HashMap<String, Value>,
    input: String,
    /// `(channels, height, width)` of the input as the file fixes them (`None`: dynamic).
    input_dims: [Option<usize>; 3],
    /// The batch size the file fixes (PyTorch exports without dynamic axes fix 1): larger
    /// batches run image by image.
    fixed_batch: Option<usize>,
    output: String,
    options: TeacherOptions,
    device: Device,
    /// Node index after which each value is no longer read.
    last_use: HashMap<String, usize>,
    /// The size in use: the images' `(width, height)`, and the teacher's own where it differs.
    size: (usize, usize),
    run_size: (usize, usize),
    taps: Vec<FeatureTap>,
    tensors: Vec<TensorInfo>,
    batch_norm_layers: usize,
    params: u64,
}

/// What one forward pass returns.
struct Forward {
    depth: Tensor,
    batch_norm: Vec<BatchNormInput>,
    features: Vec<Tensor>,
}

fn opset_of(m: &pb::ModelProto) -> i64 {
    m.opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(1, |o| o.version)
}

fn dims_of(v: &pb::ValueInfoProto) -> Option<Vec<Option<usize>>> {
    let t = match v.r#type.as_ref()?.value.as_ref()? {
        pb::type_proto::Value::TensorType(t) => t,
        #[allow(unreachable_patterns)]
        _ => return None,
    };
    Some(
        t.shape
            .as_ref()?
            .dim
            .iter()
            .map(|d| match d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                    Some(v as usize)
                }
                _ => None,
            })
            .collect(),
    )
}

impl OnnxTeacher {
    /// Reads `path` and prepares it for images of `width × height` on `device`: every node is
    /// checked against the supported operators, then the graph runs once on a grey frame so
    /// that shapes, feature taps and the output contract are known before training starts.
    pub fn load(
        path: &Path,
        options: TeacherOptions,
        (width, height): (usize, usize),
        device: &Device,
    ) -> Result<OnnxTeacher> {
        let bytes = crate::io::read(path, "teacher")?;
        let bad = |m: String| Error::bad_input(path, m);
        let model = pb::ModelProto::decode(bytes.as_slice())
            .map_err(|e| bad(format!("not a readable ONNX model ({e})")))?;
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| bad("the ONNX model has no graph".into()))?;
        let opset = opset_of(&model);
        for n in &graph.node {
            let domain_ok = n.domain.is_empty() || n.domain == "ai.onnx";
            if !domain_ok || !SUPPORTED.contains(&n.op_type.as_str()) {
                return Err(bad(format!(
                    "node {:?} ({}{}, inputs {:?}, opset {opset}) is an operator the importer does not support; supported: {}",
                    n.name,
                    if domain_ok { String::new() } else { format!("{}.", n.domain) },
                    n.op_type,
                    n.input,
                    SUPPORTED.join(", ")
                )));
            }
        }
        let mut initializers = HashMap::new();
        let mut params = 0u64;
        for t in &graph.initializer {
            let v = value::from_proto(t, device).map_err(|e| bad(e.to_string()))?;
            if let Value::F(f) = &v {
                params += f.elem_count() as u64;
            }
            initializers.insert(t.name.clone(), v);
        }
        let inputs: Vec<&pb::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !initializers.contains_key(&i.name))
            .collect();
        let input = match inputs.as_slice() {
            [one] => *one,
            [] => return Err(bad("the graph has no input".into())),
            more => {
                return Err(bad(format!(
                    "the graph has {} inputs ({}); a teacher takes one image",
                    more.len(),
                    more.iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        };
        let dims = dims_of(input).unwrap_or_else(|| vec![None; 4]);
        if dims.len() != 4 {
            return Err(bad(format!(
                "input {:?} has rank {}; a teacher takes [N, 3, H, W]",
                input.name,
                dims.len()
            )));
        }
        let channels = dims[1].unwrap_or(3);
        if channels != 3 && channels != 6 {
            return Err(bad(format!(
                "input {:?} has {channels} channels; a teacher takes RGB [N, 3, H, W] (or a stereo pair, 6)",
                input.name
            )));
        }
        let output = graph
            .output
            .first()
            .ok_or_else(|| bad("the graph has no output".into()))?;
        let mut nodes = Vec::with_capacity(graph.node.len());
        for (i, n) in graph.node.iter().enumerate() {
            nodes.push(OpNode {
                name: if n.name.is_empty() {
                    format!("{}_{i}", n.op_type)
                } else {
                    n.name.clone()
                },
                op: n.op_type.clone(),
                inputs: n.input.clone(),
                outputs: n.output.clone(),
                attrs: n
                    .attribute
                    .iter()
                    .map(|a| (a.name.clone(), a.clone()))
                    .collect(),
            });
        }
        let mut last_use = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            for inp in &n.inputs {
                last_use.insert(inp.clone(), i);
            }
        }
        let run_size = (dims[3].unwrap_or(width), dims[2].unwrap_or(height));
        let mut t = OnnxTeacher {
            path: path.to_path_buf(),
            name: path.display().to_string(),
            opset,
            nodes,
            initializers,
            input: input.name.clone(),
            input_dims: [dims[1], dims[2], dims[3]],
            fixed_batch: dims[0],
            output: output.name.clone(),
            options,
            device: device.clone(),
            last_use,
            size: (width, height),
            run_size,
            taps: Vec::new(),
            tensors: Vec::new(),
            batch_norm_layers: 0,
            params,
        };
        t.prepare()?;
        Ok(t)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// Float parameters in the file's initializers.
    pub fn params(&self) -> u64 {
        self.params
    }

    /// Every float tensor of the graph at the size in use.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The size the teacher itself runs at, `(width, height)` (differs from the images' when
    /// the file fixes another).
    pub fn run_size(&self) -> (usize, usize) {
        self.run_size
    }

    /// Whether images are resized for the teacher.
    pub fn resized(&self) -> bool {
        self.run_size != self.size
    }

    /// The dry run: shapes of every tensor, the taps, the output contract.
    fn prepare(&mut self) -> Result<()> {
        let (w, h) = self.run_size;
        let c = self.input_dims[0].unwrap_or(3);
        let probe = Tensor::full(0.5f32, (1, c, h, w), &self.device)?;
        let mut shapes: Vec<TensorInfo> = Vec::new();
        let mut bn_inputs = HashSet::new();
        for n in &self.nodes {
            if n.op == "BatchNormalization" {
                if let Some(i) = n.inputs.first() {
                    bn_inputs.insert(i.clone());
                }
            }
        }
        self.batch_norm_layers = self
            .nodes
            .iter()
            .filter(|n| n.op == "BatchNormalization")
            .count();
        let out = self.run(&probe, false, &[], |node, name, v| {
            if let Value::F(t) = v {
                let shape = t.dims().to_vec();
                let factor = (shape.len() == 4 && shape[2] > 0 && h % shape[2] == 0)
                    .then(|| h / shape[2])
                    .filter(|&f| shape[3] > 0 && w == shape[3] * f);
                shapes.push(TensorInfo {
                    name: name.to_string(),
                    op: node.op.clone(),
                    shape,
                    factor,
                    batch_norm_input: bn_inputs.contains(name),
                });
            }
        })?;
        let (_, _, oh, ow) = out.depth.dims4()?;
        if (ow, oh) != (w, h) {
            return Err(Error::bad_input(
                &self.path,
                format!(
                    "output {:?} is {ow}×{oh} for a {w}×{h} input; a teacher gives depth at its input's size",
                    self.output
                ),
            ));
        }
        self.tensors = shapes;
        self.taps = self.choose_taps()?;
        Ok(())
    }

    /// The named taps, or by default the encoder's last map at each downsampling factor (the
    /// maps before the first one at a finer factor than one already seen).
    fn choose_taps(&self) -> Result<Vec<FeatureTap>> {
        let tap = |t: &TensorInfo| {
            t.factor.map(|factor| FeatureTap {
                name: t.name.clone(),
                factor,
                channels: t.shape[1],
            })
        };
        if !self.options.taps.is_empty() {
            return self
                .options
                .taps
                .iter()
                .map(|name| {
                    let t = self.tensors.iter().find(|t| &t.name == name).ok_or_else(|| {
                        Error::bad_input(
                            &self.path,
                            format!(
                                "--teacher-taps: no float tensor {name:?} in the graph (`depthling profile --model {}` lists them)",
                                self.path.display()
                            ),
                        )
                    })?;
                    tap(t).ok_or_else(|| {
                        Error::bad_input(
                            &self.path,
                            format!(
                                "--teacher-taps: {name:?} has shape {:?}, not an N×C×H×W map at a whole downsampling factor",
                                t.shape
                            ),
                        )
                    })
                })
                .collect();
        }
        let mut best: Vec<FeatureTap> = Vec::new();
        let mut deepest = 1;
        for t in &self.tensors {
            let Some(f) = tap(t) else { continue };
            if f.factor < deepest {
                break; // the decoder has begun
            }
            deepest = deepest.max(f.factor);
            if f.factor > 1 {
                best.retain(|b| b.factor != f.factor);
                best.push(f);
            }
        }
        Ok(best)
    }

    /// Runs the graph on `x` (already in the teacher's size and normalisation); `observe` sees
    /// every node output.
    fn run(
        &self,
        x: &Tensor,
        capture_bn: bool,
        taps: &[FeatureTap],
        mut observe: impl FnMut(&OpNode, &str, &Value),
    ) -> Result<Forward> {
        let cx = Ctx {
            device: &self.device,
            opset: self.opset,
        };
        let mut values: HashMap<String, Value> = HashMap::new();
        values.insert(self.input.clone(), Value::F(x.clone()));
        let mut batch_norm = Vec::new();
        let mut features: Vec<Option<Tensor>> = vec![None; taps.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            let inputs: Vec<Option<Value>> = n
                .inputs
                .iter()
                .map(|name| {
                    if name.is_empty() {
                        return Ok(None);
                    }
                    values
                        .get(name)
                        .or_else(|| self.initializers.get(name))
                        .cloned()
                        .map(Some)
                        .ok_or_else(|| {
                            Error::bad_input(
                                &self.path,
                                format!(
                                    "node {:?} ({}) reads {name:?}, which nothing writes",
                                    n.name, n.op
                                ),
                            )
                        })
                })
                .collect::<Result<_>>()?;
            let outs = ops::eval(n, &inputs, &cx).map_err(|e| {
                let shapes: Vec<String> = inputs
                    .iter()
                    .map(|v| {
                        v.as_ref()
                            .map_or("-".into(), |v| format!("{:?}", v.shape()))
                    })
                    .collect();
                Error::bad_input(
                    &self.path,
                    format!(
                        "node {:?} ({}, inputs {:?} of shapes [{}], opset {}): {e}",
                        n.name,
                        n.op,
                        n.inputs,
                        shapes.join(", "),
                        self.opset
                    ),
                )
            })?;
            if capture_bn && n.op == "BatchNormalization" {
                let f = |k: usize| -> Result<Tensor> {
                    inputs
                        .get(k)
                        .and_then(|v| v.as_ref())
                        .ok_or_else(|| Error::Runtime("BatchNormalization input missing".into()))?
                        .float(&self.device)
                };
                batch_norm.push(BatchNormInput {
                    input: f(0)?,
                    mean: f(3)?.flatten_all()?,
                    var: f(4)?.flatten_all()?,
                });
            }
            for (name, v) in n.outputs.iter().zip(outs) {
                observe(n, name, &v);
                if let Some(k) = taps.iter().position(|t| &t.name == name) {
                    features[k] = Some(v.float(&self.device)?);
                }
                values.insert(name.clone(), v);
            }
            // values read for the last time here are dropped (the autograd graph keeps what
            // the backward pass needs)
            for name in &n.inputs {
                if self.last_use.get(name) == Some(&i) && name != &self.output {
                    values.remove(name);
                }
            }
        }
        let out = values
            .remove(&self.output)
            .ok_or_else(|| {
                Error::bad_input(
                    &self.path,
                    format!("nothing writes the output {:?}", self.output),
                )
            })?
            .float(&self.device)?;
        let depth = match out.rank() {
            3 => out.unsqueeze(1)?,
            4 if out.dim(1)? == 1 => out,
            _ => {
                return Err(Error::bad_input(
                    &self.path,
                    format!(
                        "output {:?} has shape {:?}; a teacher gives depth as [N, 1, H, W] or [N, H, W]",
                        self.output,
                        out.dims()
                    ),
                ))
            }
        };
        let features = features
            .into_iter()
            .zip(taps)
            .map(|(f, t)| {
                f.ok_or_else(|| {
                    Error::Runtime(format!("feature tap {:?} was not computed", t.name))
                })
            })
            .collect::<Result<_>>()?;
        Ok(Forward {
            depth,
            batch_norm,
            features,
        })
    }

    /// The images as the graph takes them: resized to the teacher's size, normalised.
    fn input_for(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let mut x = x.clone();
        if (w, h) != self.run_size {
            x = resize::bilinear(&x, self.run_size.1, self.run_size.0)?;
        }
        if let (Some(m), Some(s)) = (self.options.mean, self.options.std) {
            let reps = c / 3;
            let m: Vec<f32> = (0..reps).flat_map(|_| m).collect();
            let s: Vec<f32> = (0..reps).flat_map(|_| s).collect();
            let m = Tensor::from_vec(m, (1, c, 1, 1), &self.device)?;
            let s = Tensor::from_vec(s, (1, c, 1, 1), &self.device)?;
            x = x.broadcast_sub(&m)?.broadcast_div(&s)?;
        }
        Ok(x)
    }

    /// The graph's output as depth in metres at the images' size.
    fn depth_for(&self, out: Tensor, (w, h): (usize, usize)) -> Result<Tensor> {
        let d = match self.options.output {
            TeacherOutput::Depth => (out * self.options.scale as f64)?,
            TeacherOutput::Inverse => out
                .maximum(1e-6f32)?
                .recip()?
                .affine(self.options.scale as f64, 0.0)?,
        };
        let (_, _, dh, dw) = d.dims4()?;
        if (dw, dh) != (w, h) {
            return resize::bilinear(&d, h, w);
        }
        Ok(d)
    }

    fn forward(&self, x: &Tensor, capture_bn: bool, features: bool) -> Result<Forward> {
        let (n, _, h, w) = x.dims4()?;
        if let Some(b) = self.fixed_batch.filter(|&b| b != n) {
            if b != 1 {
                return Err(Error::Usage(format!(
                    "{} fixes its batch size at {b}; export it with a dynamic batch axis or batch 1",
                    self.path.display()
                )));
            }
            // image by image, joined along the batch (BatchNorm inputs too: their batch
            // statistics are those of the whole batch)
            let parts: Vec<Forward> = (0..n)
                .map(|i| self.forward(&x.narrow(0, i, 1)?, capture_bn, features))
                .collect::<Result<_>>()?;
            let cat = |pick: &dyn Fn(&Forward) -> Tensor| -> Result<Tensor> {
                let ts: Vec<Tensor> = parts.iter().map(pick).collect();
                Ok(Tensor::cat(&ts, 0)?)
            };
            let depth = cat(&|f| f.depth.clone())?;
            let layers = parts.first().map_or(0, |f| f.batch_norm.len());
            let batch_norm = (0..layers)
                .map(|l| {
                    Ok(BatchNormInput {
                        input: cat(&|f| f.batch_norm[l].input.clone())?,
                        mean: parts[0].batch_norm[l].mean.clone(),
                        var: parts[0].batch_norm[l].var.clone(),
                    })
                })
                .collect::<Result<_>>()?;
            let taps = parts.first().map_or(0, |f| f.features.len());
            let features = (0..taps)
                .map(|k| cat(&|f| f.features[k].clone()))
                .collect::<Result<_>>()?;
            return Ok(Forward {
                depth,
                batch_norm,
                features,
            });
        }
        let input = self.input_for(x)?;
        let taps = if features {
            self.taps.clone()
        } else {
            Vec::new()
        };
        let mut f = self.run(&input, capture_bn, &taps, |_, _, _| {})?;
        f.depth = self.depth_for(f.depth, (w, h))?;
        Ok(f)
    }
}

impl Teacher for OnnxTeacher {
    fn name(&self) -> &str {
        &self.name
    }

    fn input_channels(&self) -> usize {
        self.input_dims[0].unwrap_or(3)
    }

    fn check_size(&self, width: usize, height: usize) -> Result<()> {
        if (width, height) != self.size {
            return Err(Error::Usage(format!(
                "{} was prepared for {}×{} images, not {width}×{height}",
                self.path.display(),
                self.size.0,
                self.size.1
            )));
        }
        Ok(())
    }

    fn predict(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward(x, false, false)?.depth)
    }

    fn batch_norm_inputs(&self, x: &Tensor) -> Result<Vec<BatchNormInput>> {
        Ok(self.forward(x, true, false)?.batch_norm)
    }

    fn batch_norm_layers(&self) -> usize {
        self.batch_norm_layers
    }

    fn feature_taps(&self) -> Vec<FeatureTap> {
        self.taps.clone()
    }

    fn predict_with_features(&self, x: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let f = self.forward(x, false, true)?;
        Ok((f.depth, f.features))
    }
}
