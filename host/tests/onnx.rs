//! BatchNorm folding and the ONNX export: the folded graph and the ONNX file run through tract
//! must compute what the candle model computes (≤ 1e-4 relative), and the CLI paths that make and
//! run an ONNX file work and refuse what they cannot do.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use depthling_device::tract::TractModel;
use depthling_host::nets::graph::{Act, Node};
use depthling_host::nets::{preset, Net};

/// Small deterministic generator for test data.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / (1u64 << 24) as f32
    }
}

/// A preset network whose BatchNorm statistics, scales, shifts and biases are random (fresh
/// networks have mean 0, variance 1, scale 1: folding them would prove nothing).
fn randomized(arch: &str, seed: u64) -> Net {
    let net = Net::new(preset(arch, 1.0).unwrap(), &Device::Cpu, seed).unwrap();
    let mut rng = Lcg(seed);
    let data = net.vars.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let dims = var.as_tensor().dims().to_vec();
        if dims.len() != 1 {
            continue;
        }
        let values: Vec<f32> = (0..dims[0])
            .map(|_| {
                let u = rng.next();
                if name.ends_with("running_var") {
                    0.3 + 2.0 * u
                } else if name.ends_with("bn.weight") {
                    0.5 + u
                } else {
                    (u - 0.5) * 0.4
                }
            })
            .collect();
        var.set(&Tensor::from_vec(values, dims, &Device::Cpu).unwrap())
            .unwrap();
    }
    drop(data);
    net
}

fn image(width: usize, height: usize, seed: u64) -> Vec<f32> {
    let mut rng = Lcg(seed);
    (0..3 * width * height).map(|_| rng.next()).collect()
}

/// max |a − b| / max |b|.
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn candle_depth(net: &Net, chw: &[f32], width: usize, height: usize) -> Vec<f32> {
    let x = Tensor::from_vec(chw.to_vec(), (1, 3, height, width), &Device::Cpu).unwrap();
    net.net
        .forward_t(&x, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn folded_convolutions_compute_what_conv_plus_batchnorm_computes() {
    for (arch, w, h) in [
        ("demo-student", 64, 48),
        ("demo-teacher", 32, 32),
        ("micro", 64, 32),
        ("mbv2-mff", 64, 32),
        ("resnet18-mff", 64, 32),
    ] {
        let net = randomized(arch, 11);
        let x = Tensor::from_vec(image(w, h, 5), (1, 3, h, w), &Device::Cpu).unwrap();
        let values = net.net.forward_nodes(&x, false).unwrap();
        let channels = net.net.spec().channels();
        let mut checked = 0;
        for (i, node) in net.net.spec().nodes.iter().enumerate() {
            let Node::Conv {
                input,
                out_channels,
                kernel,
                stride,
                depthwise,
                batch_norm,
                act,
            } = node
            else {
                continue;
            };
            let (wf, bf) = net.net.folded_conv(i).unwrap();
            let groups = if *depthwise { channels[*input] } else { 1 };
            let weight = Tensor::from_vec(
                wf,
                (*out_channels, channels[*input] / groups, *kernel, *kernel),
                &Device::Cpu,
            )
            .unwrap();
            let bias = Tensor::from_vec(bf, (1, *out_channels, 1, 1), &Device::Cpu).unwrap();
            let y = values[*input]
                .0
                .conv2d(&weight, kernel / 2, *stride, 1, groups)
                .unwrap()
                .broadcast_add(&bias)
                .unwrap();
            let y = match act {
                Act::None => y,
                Act::Relu => y.relu().unwrap(),
                Act::Relu6 => y.clamp(0f32, 6f32).unwrap(),
                Act::Sigmoid => candle_nn::ops::sigmoid(&y).unwrap(),
            };
            let folded: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            let reference: Vec<f32> = values[i].0.flatten_all().unwrap().to_vec1().unwrap();
            let err = relative_error(&folded, &reference);
            assert!(
                err <= 1e-5,
                "{arch} node {i} (batch norm {batch_norm}): folded differs by {err:e}"
            );
            checked += 1;
        }
        assert!(checked >= 5, "{arch}: only {checked} convolutions checked");
    }
}

#[test]
fn onnx_export_runs_in_tract_as_candle_computes() {
    for (arch, w, h) in [
        ("demo-student", 64, 48),
        ("demo-teacher", 32, 32),
        ("micro", 64, 32),
        ("mbv2-mff", 64, 32),
        ("resnet18-mff", 64, 32),
    ] {
        let net = randomized(arch, 3);
        let bytes = depthling_host::onnx::export(&net.net, w, h).unwrap();
        let model = TractModel::from_bytes(&bytes).unwrap();
        assert_eq!(model.input_size(), (h, w));
        for seed in [1, 2] {
            let chw = image(w, h, seed);
            let reference = candle_depth(&net, &chw, w, h);
            let got = model.run_chw(chw).unwrap();
            let err = relative_error(&got, &reference);
            assert!(err <= 1e-4, "{arch}: tract differs from candle by {err:e}");
            // the outputs are not trivially equal (a constant map would pass any tolerance)
            let spread = reference.iter().fold(0f32, |m, v| m.max(*v))
                - reference.iter().fold(f32::INFINITY, |m, v| m.min(*v));
            assert!(spread > 1e-3, "{arch}: output is flat ({spread})");
        }
        // the interleaved-bytes path normalises as the host does
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 256) as u8).collect();
        let mut chw = vec![0f32; w * h * 3];
        for (p, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * w * h + p] = px[c] as f32 / 255.0;
            }
        }
        let err = relative_error(&model.run(&rgb).unwrap(), &candle_depth(&net, &chw, w, h));
        assert!(err <= 1e-4, "{arch}: byte input differs by {err:e}");
    }
}

#[test]
fn tract_refuses_what_is_not_a_depth_model() {
    let net = randomized("demo-student", 4);
    let bytes = depthling_host::onnx::export(&net.net, 32, 24).unwrap();
    for cut in [0, 10, bytes.len() / 2, bytes.len() - 3] {
        assert!(
            TractModel::from_bytes(&bytes[..cut]).is_err(),
            "truncated at {cut}"
        );
    }
    assert!(TractModel::from_bytes(b"\x89PNG\r\n\x1a\nnot a model").is_err());
    let model = TractModel::from_bytes(&bytes).unwrap();
    assert!(matches!(
        model.run(&[0u8; 10]),
        Err(depthling_device::tract::TractError::InputShape { .. })
    ));
}

fn depthling(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_depthling"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn export_onnx_then_run_with_tract() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let (w, h) = (64, 48);
    let net = randomized("demo-student", 9);
    net.save(
        &dir.path().join("s.safetensors"),
        &[("size", format!("{w}x{h}"))],
    )
    .unwrap();
    let o = depthling(&[
        "export",
        "--model",
        &p("s.safetensors"),
        "--format",
        "onnx",
        "--board",
        "raspberry-pi-5",
        "--json",
        "--out",
        &p("s.onnx"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        report["params"],
        preset("demo-student", 1.0).unwrap().params() as u64
    );
    assert_eq!(report["fits"], true);

    // a frame through `run --backend tract` agrees with candle (to the millimetre PNG)
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 13 % 251) as u8).collect();
    image::RgbImage::from_raw(w as u32, h as u32, rgb.clone())
        .unwrap()
        .save(frames.join("f.png"))
        .unwrap();
    let o = depthling(&[
        "run",
        "--model",
        &p("s.onnx"),
        "--input",
        frames.to_str().unwrap(),
        "--backend",
        "tract",
        "--out",
        &p("out"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let depth = image::open(dir.path().join("out/f.png"))
        .unwrap()
        .into_luma16();
    let mut chw = vec![0f32; w * h * 3];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            chw[c * w * h + i] = px[c] as f32 / 255.0;
        }
    }
    let reference = candle_depth(&net, &chw, w, h);
    for (mm, r) in depth.as_raw().iter().zip(&reference) {
        let expected = (r * 1000.0).round().clamp(0.0, 65535.0);
        assert!(
            (*mm as f32 - expected).abs() <= 1.0,
            "{mm} mm vs {expected}"
        );
    }
    assert!(dir.path().join("out/f_color.png").exists());

    // what cannot be done is refused with exit 2, a message, and nothing written
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "export".into(),
                "--model".into(),
                p("s.safetensors"),
                "--format".into(),
                "onnx".into(),
                "--board".into(),
                "stm32h747".into(),
                "--out".into(),
                p("x.onnx"),
            ],
            "int8 engine",
        ),
        (
            vec![
                "run".into(),
                "--model".into(),
                p("s.onnx"),
                "--input".into(),
                frames.display().to_string(),
                "--out".into(),
                p("x"),
            ],
            "--backend tract",
        ),
        (
            vec![
                "run".into(),
                "--model".into(),
                p("s.safetensors"),
                "--input".into(),
                frames.display().to_string(),
                "--backend".into(),
                "tract".into(),
                "--out".into(),
                p("x"),
            ],
            "ONNX export",
        ),
        (
            vec![
                "export".into(),
                "--model".into(),
                p("s.safetensors"),
                "--format".into(),
                "dlm".into(),
                "--out".into(),
                p("x.dlm"),
            ],
            "depthling quantize",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = depthling(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    for name in ["x", "x.onnx", "x.dlm"] {
        assert!(!dir.path().join(name).exists(), "{name} was written");
    }

    // a damaged ONNX file is named and refused
    let bytes = std::fs::read(dir.path().join("s.onnx")).unwrap();
    std::fs::write(dir.path().join("bad.onnx"), &bytes[..bytes.len() / 3]).unwrap();
    let o = depthling(&[
        "run",
        "--model",
        &p("bad.onnx"),
        "--input",
        frames.to_str().unwrap(),
        "--backend",
        "tract",
        "--out",
        &p("x"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("bad.onnx"), "{}", stderr(&o));
    assert!(!dir.path().join("x").exists());
}
