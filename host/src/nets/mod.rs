//! Networks (DESIGN §5): architectures as [`graph::GraphSpec`]s with named presets, and their
//! checkpoints (safetensors with the architecture in the metadata).

pub mod graph;
pub mod graph_net;
mod mff;
mod mobilenet;
pub mod ops;
mod resnet;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use graph::{Act, GraphNet, GraphSpec, Interp, Node};

use crate::error::{Error, Result};

/// Architectures this build knows.
pub const PRESETS: &[&str] = &[
    "demo-teacher",
    "demo-teacher-stereo",
    "demo-student",
    "resnet18-mff",
    "resnet34-mff",
    "resnet18-mff-stereo",
    "resnet34-mff-stereo",
    "mbv2-mff",
    "micro",
];

/// Builds node lists with running indices.
pub(crate) struct Builder {
    nodes: Vec<Node>,
}

impl Builder {
    fn new() -> Self {
        Builder {
            nodes: vec![Node::Input],
        }
    }
    fn push(&mut self, n: Node) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }
    /// Convolution + BatchNorm + activation.
    fn conv(
        &mut self,
        input: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        act: Act,
    ) -> usize {
        self.push(Node::Conv {
            input,
            out_channels,
            kernel,
            stride,
            depthwise: false,
            batch_norm: true,
            act,
        })
    }
    /// Depthwise convolution + BatchNorm + activation (`channels` = the input's).
    fn depthwise(
        &mut self,
        input: usize,
        channels: usize,
        kernel: usize,
        stride: usize,
        act: Act,
    ) -> usize {
        self.push(Node::Conv {
            input,
            out_channels: channels,
            kernel,
            stride,
            depthwise: true,
            batch_norm: true,
            act,
        })
    }
    /// Convolution with a bias and no BatchNorm.
    fn biased(&mut self, input: usize, out_channels: usize, kernel: usize, act: Act) -> usize {
        self.push(Node::Conv {
            input,
            out_channels,
            kernel,
            stride: 1,
            depthwise: false,
            batch_norm: false,
            act,
        })
    }
    fn up(&mut self, input: usize) -> usize {
        self.upsample(input, 2, Interp::Nearest, None)
    }
    fn upsample(
        &mut self,
        input: usize,
        factor: usize,
        mode: Interp,
        like: Option<usize>,
    ) -> usize {
        self.push(Node::Upsample {
            input,
            factor,
            mode,
            like,
        })
    }
    fn add(&mut self, a: usize, b: usize, act: Act) -> usize {
        self.push(Node::Add { a, b, act })
    }
    /// The depth head: a biased conv without BatchNorm or activation.
    fn head(&mut self, input: usize) -> usize {
        self.biased(input, 1, 3, Act::None)
    }
    fn finish(self, name: &str, output_bias: f32, input_channels: usize) -> GraphSpec {
        GraphSpec {
            name: name.into(),
            nodes: self.nodes,
            output_bias,
            input_channels,
        }
    }
}

/// A compact ResNet-style encoder (strides 2–16, residual blocks with BatchNorm) and a decoder that
/// upsamples and adds the encoder's skip features: the demo's indoor teacher. The stereo variant
/// (ADU-Depth's teacher) reads the left and right images stacked into six channels.
fn demo_teacher(width: f32, stereo: bool) -> GraphSpec {
    let ch = |c: f32| ((c * width).round() as usize).max(4);
    let (c1, c2, c3, c4) = (ch(16.0), ch(32.0), ch(48.0), ch(64.0));
    let mut b = Builder::new();
    let residual = |b: &mut Builder, x: usize, c: usize| {
        let y = b.conv(x, c, 3, 1, Act::Relu);
        let y = b.conv(y, c, 3, 1, Act::None);
        b.push(Node::Add {
            a: y,
            b: x,
            act: Act::Relu,
        })
    };
    let s1 = b.conv(0, c1, 3, 2, Act::Relu);
    let s1 = residual(&mut b, s1, c1);
    let s2 = b.conv(s1, c2, 3, 2, Act::Relu);
    let s2 = residual(&mut b, s2, c2);
    let s3 = b.conv(s2, c3, 3, 2, Act::Relu);
    let s3 = residual(&mut b, s3, c3);
    let s4 = b.conv(s3, c4, 3, 2, Act::Relu);
    let s4 = residual(&mut b, s4, c4);
    let mut x = s4;
    for (skip, c) in [(s3, c3), (s2, c2), (s1, c1)] {
        let u = b.up(x);
        let u = b.conv(u, c, 3, 1, Act::Relu);
        x = b.push(Node::Add {
            a: u,
            b: skip,
            act: Act::Relu,
        });
    }
    let u = b.up(x);
    let u = b.conv(u, c1, 3, 1, Act::Relu);
    b.head(u);
    if stereo {
        b.finish("demo-teacher-stereo", 3.0, 6)
    } else {
        b.finish("demo-teacher", 3.0, 3)
    }
}

/// A small student (stride 8) with squeeze-excitation at the bottleneck, an add skip and a concat
/// skip: every IR op kind of the int8 engine appears in it.
fn demo_student(width: f32) -> GraphSpec {
    let ch = |c: f32| ((c * width).round() as usize).max(4);
    let (c1, c2, c3) = (ch(16.0), ch(32.0), ch(48.0));
    let mut b = Builder::new();
    let x = b.conv(0, c1, 3, 2, Act::Relu);
    let s1 = b.conv(x, c1, 3, 1, Act::Relu);
    let x = b.conv(s1, c2, 3, 2, Act::Relu);
    let s2 = b.conv(x, c2, 3, 1, Act::Relu6);
    let x = b.conv(s2, c3, 3, 2, Act::Relu);
    let x = b.conv(x, c3, 3, 1, Act::Relu);
    let pooled = b.push(Node::GlobalAvgPool { input: x });
    let gate = b.push(Node::Conv {
        input: pooled,
        out_channels: c3,
        kernel: 1,
        stride: 1,
        depthwise: false,
        batch_norm: false,
        act: Act::Sigmoid,
    });
    let x = b.push(Node::Mul {
        input: x,
        scale: gate,
    });
    let x = b.up(x);
    let x = b.conv(x, c2, 3, 1, Act::Relu6);
    let x = b.push(Node::Add {
        a: x,
        b: s2,
        act: Act::Relu,
    });
    let x = b.up(x);
    let x = b.conv(x, c1, 3, 1, Act::Relu);
    let x = b.push(Node::Concat {
        inputs: vec![x, s1],
    });
    let x = b.conv(x, c1, 3, 1, Act::Relu);
    let x = b.up(x);
    b.head(x);
    b.finish("demo-student", 3.0, 3)
}

/// The architecture named `name` at width multiplier `width`.
pub fn preset(name: &str, width: f32) -> Result<GraphSpec> {
    if !(width.is_finite() && width > 0.0 && width <= 4.0) {
        return Err(Error::Usage(format!(
            "width multiplier must be in (0, 4], got {width}"
        )));
    }
    match name {
        "demo-teacher" => Ok(demo_teacher(width, false)),
        "demo-teacher-stereo" => Ok(demo_teacher(width, true)),
        "demo-student" => Ok(demo_student(width)),
        "resnet18-mff" => Ok(resnet::resnet_mff(18, width, false)),
        "resnet34-mff" => Ok(resnet::resnet_mff(34, width, false)),
        "resnet18-mff-stereo" => Ok(resnet::resnet_mff(18, width, true)),
        "resnet34-mff-stereo" => Ok(resnet::resnet_mff(34, width, true)),
        "mbv2-mff" => Ok(mobilenet::mbv2_mff(width)),
        "micro" => Ok(mobilenet::micro(width)),
        other => Err(Error::Usage(format!(
            "unknown architecture {other:?}; known: {}",
            PRESETS.join(", ")
        ))),
    }
}

/// Writes named tensors and string metadata to a safetensors file through a temporary name (an
/// interrupted write leaves the previous file intact).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, candle_core::Tensor)],
    meta: &[(&str, String)],
) -> Result<()> {
    let meta: HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    safetensors::serialize_to_file(
        tensors.iter().map(|(k, t)| (k.as_str(), t)),
        Some(meta),
        &tmp,
    )
    .map_err(|e| Error::Runtime(format!("{}: cannot write checkpoint: {e}", path.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The variables of `vars` by name (what an optimizer updates).
pub fn vars_by_name(vars: &VarMap) -> Result<HashMap<String, candle_core::Var>> {
    Ok(vars
        .data()
        .lock()
        .map_err(|_| Error::Runtime("variable store poisoned".into()))?
        .clone())
}

/// The values of `vars` by name, sorted (what a checkpoint stores).
pub fn var_tensors(vars: &VarMap) -> Result<Vec<(String, candle_core::Tensor)>> {
    let mut out: Vec<(String, candle_core::Tensor)> = vars_by_name(vars)?
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Sets every variable of `vars` from `tensors`; all must be present with their shapes.
pub fn set_vars(vars: &VarMap, tensors: &HashMap<String, candle_core::Tensor>) -> Result<()> {
    for (name, var) in vars_by_name(vars)? {
        let t = tensors
            .get(&name)
            .ok_or_else(|| Error::Runtime(format!("checkpoint lacks {name}")))?;
        if t.dims() != var.as_tensor().dims() {
            return Err(Error::Runtime(format!(
                "checkpoint's {name} is {:?}, the network's {:?}",
                t.dims(),
                var.as_tensor().dims()
            )));
        }
        var.set(&t.to_device(var.device())?)?;
    }
    Ok(())
}

/// A network with its variables.
pub struct Net {
    pub net: GraphNet,
    pub vars: VarMap,
    pub device: Device,
}

impl Net {
    /// Fresh weights from `seed`: convolution weights are He-normal from our own RNG (candle's
    /// CPU generator cannot be seeded), so the same seed gives the same network everywhere.
    pub fn new(spec: GraphSpec, device: &Device, seed: u64) -> Result<Net> {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, device);
        let net = GraphNet::new(spec, vb)?;
        let data = vars
            .data()
            .lock()
            .map_err(|_| Error::Runtime("variable store poisoned".into()))?;
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        let mut rng = crate::rng::Rng::new(seed);
        for name in names {
            let var = &data[name];
            let dims = var.as_tensor().dims().to_vec();
            if dims.len() == 4 {
                let fan_in = dims[1] * dims[2] * dims[3];
                let std = (2.0 / fan_in as f32).sqrt();
                let values: Vec<f32> = (0..dims.iter().product::<usize>())
                    .map(|_| rng.normal() * std)
                    .collect();
                var.set(&candle_core::Tensor::from_vec(values, dims, device)?)?;
            }
        }
        drop(data);
        Ok(Net {
            net,
            vars,
            device: device.clone(),
        })
    }

    /// Every variable (weights and BatchNorm statistics) by name.
    pub fn named_tensors(&self) -> Result<Vec<(String, candle_core::Tensor)>> {
        var_tensors(&self.vars)
    }

    /// Sets every variable from `tensors` (a checkpoint); all must be present with their shapes.
    pub fn restore(&self, tensors: &HashMap<String, candle_core::Tensor>) -> Result<()> {
        set_vars(&self.vars, tensors)
    }

    /// Writes weights, BatchNorm statistics and the architecture (metadata `depthling.arch`) to a
    /// safetensors file, through a temporary name.
    pub fn save(&self, path: &Path, extra: &[(&str, String)]) -> Result<()> {
        let tensors = self.named_tensors()?;
        let mut meta: Vec<(&str, String)> = extra.to_vec();
        let arch =
            serde_json::to_string(self.net.spec()).map_err(|e| Error::Runtime(e.to_string()))?;
        meta.push(("arch", arch));
        let meta: Vec<(String, String)> = meta
            .into_iter()
            .map(|(k, v)| (format!("depthling.{k}"), v))
            .collect();
        let meta: Vec<(&str, String)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        write_safetensors(path, &tensors, &meta)
    }

    /// Loads a checkpoint written by [`Net::save`].
    pub fn load(path: &Path, device: &Device) -> Result<(Net, HashMap<String, String>)> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::bad_input(path, "checkpoint not found"),
            _ => Error::io(path, e),
        })?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
            let what = if bytes.starts_with(b"DLM1") {
                "is an int8 .dlm model; this needs the f32 .safetensors checkpoint it came from"
                    .to_string()
            } else if path
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("onnx"))
            {
                "is an ONNX export (run it with `depthling run --backend tract`); this needs a .safetensors checkpoint".to_string()
            } else {
                format!("not a depthling .safetensors checkpoint ({e})")
            };
            Error::bad_input(path, what)
        })?;
        let meta: HashMap<String, String> = meta.metadata().clone().unwrap_or_default();
        let arch = meta.get("depthling.arch").ok_or_else(|| {
            Error::bad_input(path, "no depthling architecture in the checkpoint metadata")
        })?;
        let spec: GraphSpec = serde_json::from_str(arch)
            .map_err(|e| Error::bad_input(path, format!("unreadable architecture: {e}")))?;
        let mut net = Net::new(spec, device, 0)?;
        net.vars.load(path).map_err(|e| {
            Error::bad_input(path, format!("weights do not match the architecture ({e})"))
        })?;
        Ok((net, meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_count_parameters_consistently() {
        for name in PRESETS {
            let spec = preset(name, 1.0).unwrap();
            let net = Net::new(spec.clone(), &Device::Cpu, 0).unwrap();
            let vars: usize = net
                .vars
                .all_vars()
                .iter()
                .filter(|v| {
                    v.as_tensor().rank() == 4
                        || v.as_tensor().dims() == [v.as_tensor().elem_count()]
                })
                .map(|v| v.as_tensor().elem_count())
                .sum();
            // folded count: conv weights + one bias per output channel; the variable store also
            // holds BatchNorm's γ, β, mean and var, so it can only be larger
            assert!(
                spec.params() > 0 && vars >= spec.params(),
                "{name}: {vars} < {}",
                spec.params()
            );
        }
    }

    #[test]
    fn malformed_architectures_are_errors_not_panics() {
        let bad = [
            vec![
                graph::Node::Input,
                graph::Node::Add {
                    a: 0,
                    b: 5,
                    act: graph::Act::None,
                },
            ],
            vec![graph::Node::Upsample {
                input: 0,
                factor: 2,
                mode: Interp::Nearest,
                like: None,
            }],
            vec![graph::Node::Input, graph::Node::Input],
            vec![graph::Node::Input, graph::Node::Concat { inputs: vec![] }],
        ];
        for nodes in bad {
            let spec = GraphSpec {
                name: "bad".into(),
                nodes,
                output_bias: 0.0,
                input_channels: 3,
            };
            assert!(Net::new(spec, &Device::Cpu, 0).is_err());
        }
    }

    /// The papers' sizes: the LW student has 1.67–1.70 M parameters (PyTorch's count) and about
    /// 4.0 GMACs at 304×228; ResNet-34-MFF about 21.9 M; MobileNetV2's taps are 24/32/96/160
    /// channels at strides 4/8/16/32.
    #[test]
    fn presets_match_the_papers_sizes() {
        let mbv2 = preset("mbv2-mff", 1.0).unwrap();
        let p = mbv2.train_params();
        assert!((1_670_000..=1_700_000).contains(&p), "mbv2-mff: {p} params");
        let macs = mbv2.macs(304, 228).unwrap();
        assert!(
            (3.8e9..4.3e9).contains(&(macs as f64)),
            "mbv2-mff: {macs} MACs"
        );
        let r34 = preset("resnet34-mff", 1.0).unwrap().train_params();
        assert!(
            (21_700_000..=22_100_000).contains(&r34),
            "resnet34-mff: {r34}"
        );
        let r18 = preset("resnet18-mff", 1.0).unwrap().train_params();
        assert!(r18 < r34 && r18 > 11_000_000, "resnet18-mff: {r18}");
        // the four sigmoid gates of the MFF sit on the taps: their channel counts and strides
        let shapes = mbv2.shapes(128, 96).unwrap();
        let taps: Vec<(usize, usize)> = mbv2
            .nodes
            .iter()
            .filter_map(|n| match n {
                Node::Mul { input, .. } => {
                    Some((shapes[*input].channels, 128 / shapes[*input].width))
                }
                _ => None,
            })
            .collect();
        assert_eq!(taps, vec![(24, 4), (32, 8), (96, 16), (160, 32)]);
        // the micro student is a tenth of the LW student and runs in 1 MB of SRAM (see profile)
        let micro = preset("micro", 1.0).unwrap();
        assert!(
            micro.train_params() * 5 < p,
            "micro: {}",
            micro.train_params()
        );
    }

    /// The encoder taps ADU's feature distillation reads: the end of every stage, by factor.
    #[test]
    fn encoder_taps_are_the_ends_of_the_stages() {
        let taps = |name: &str| {
            let spec = preset(name, 1.0).unwrap();
            let c = spec.channels();
            spec.encoder_taps()
                .into_iter()
                .map(|(f, i)| (f, c[i]))
                .collect::<Vec<_>>()
        };
        assert_eq!(taps("demo-teacher"), [(2, 16), (4, 32), (8, 48), (16, 64)]);
        assert_eq!(taps("demo-teacher-stereo"), taps("demo-teacher"));
        assert_eq!(taps("demo-student"), [(2, 16), (4, 32), (8, 48)]);
        // the LW student's taps: MobileNetV2's 24/32/96/160 channels at strides 4/8/16/32
        let mbv2 = taps("mbv2-mff");
        assert_eq!(mbv2[1..], [(4, 24), (8, 32), (16, 96), (32, 160)]);
        assert_eq!(
            taps("resnet18-mff")[1..],
            [(4, 64), (8, 128), (16, 256), (32, 512)]
        );
    }

    /// Every preset runs forward at a size that is not a multiple of 32 (cropped upsampling) and
    /// at one that is; the stereo teacher takes six channels.
    #[test]
    fn presets_run_forward_at_any_size() {
        let dev = Device::Cpu;
        for name in PRESETS {
            let width = if name.starts_with("resnet") {
                0.125
            } else {
                1.0
            };
            let spec = preset(name, width).unwrap();
            let c = spec.input_channels;
            let net = Net::new(spec, &dev, 1).unwrap();
            for (w, h) in [(64usize, 32usize), (40, 36)] {
                if name.starts_with("demo") && (w, h) == (40, 36) {
                    continue; // the demo nets need multiples of their stride
                }
                let x = candle_core::Tensor::zeros((2, c, h, w), DType::F32, &dev).unwrap();
                let y = net.net.forward_t(&x, true).unwrap();
                assert_eq!(y.dims(), &[2, 1, h, w], "{name} at {w}x{h}");
            }
        }
    }
}
