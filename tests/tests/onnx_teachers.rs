//! ONNX teachers exported from PyTorch (`scripts/make_onnx_teachers.py`, committed under
//! `host/tests/fixtures/teachers/`): the imported forward pass equals onnxruntime's, gradients
//! through the import match finite differences, DDD's BatchNorm-statistics loss falls through an
//! imported teacher, and broken files are errors, never panics.
//!
//! onnxruntime comes from `DEPTHLING_ORT_PYTHON` (the test venv of `scripts/test.sh`); without it
//! the comparison skips with a message, or fails under CI.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use candle_core::{Device, Tensor, Var};
use depthling_host::teacher::onnx::{OnnxTeacher, TeacherOptions};
use depthling_host::teacher::Teacher;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../host/tests/fixtures/teachers")
        .join(name)
}

/// Deterministic noise in [0, 1), smoothed a little so that images look like images.
fn images(n: usize, h: usize, w: usize, seed: u32) -> Vec<f32> {
    let mut v = seed;
    let raw: Vec<f32> = (0..n * 3 * h * w)
        .map(|_| {
            v = v.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (v >> 8) as f32 / (1u32 << 24) as f32
        })
        .collect();
    let mut out = raw.clone();
    for p in 0..n * 3 {
        for y in 0..h {
            for x in 1..w - 1 {
                let i = p * h * w + y * w + x;
                out[i] = (raw[i - 1] + raw[i] + raw[i + 1]) / 3.0;
            }
        }
    }
    out
}

/// max |a − b| and max |b|: two depth maps agree when the first is ≤ 1e-4 of the second.
fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let top = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    (worst, top)
}

const ORT: &str = r#"
import sys, numpy as np, onnxruntime as ort
model, inp, out, n, h, w = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
x = np.fromfile(inp, dtype="<f4").reshape(n, 3, h, w)
name = s.get_inputs()[0].name
static = isinstance(s.get_inputs()[0].shape[0], int)
ys = [s.run(None, {name: x[i:i + 1]})[0] for i in range(n)] if static else [s.run(None, {name: x})[0]]
np.concatenate(ys, 0).astype("<f4").tofile(out)
"#;

fn python() -> Option<String> {
    depthling_tests::hil::python_with(
        "onnxruntime, numpy",
        "onnxruntime check of the ONNX teacher import",
    )
}

fn onnxruntime(
    python: &str,
    model: &std::path::Path,
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let (inp, out) = (dir.path().join("x.f32"), dir.path().join("y.f32"));
    std::fs::write(
        &inp,
        x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
    let o = Command::new(python)
        .args(["-c", ORT])
        .arg(model)
        .arg(&inp)
        .arg(&out)
        .args([n.to_string(), h.to_string(), w.to_string()])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "onnxruntime: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read(&out)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Every fixture's depth equals onnxruntime's to 1e-4 of its largest value, for a batch of two
/// (and for the dynamic-size one, at a second size).
#[test]
fn imported_teachers_match_onnxruntime() {
    let Some(python) = python() else { return };
    let dev = Device::Cpu;
    for (name, w, h) in [
        ("resnet_mff.onnx", 64, 48),
        ("resnet_folded.onnx", 64, 48),
        ("mbv2_unet.onnx", 64, 48),
        ("mbv2_unet.onnx", 32, 32),
        ("deconv.onnx", 64, 48),
        ("tiny_vit.onnx", 64, 48),
    ] {
        let path = fixture(name);
        let t = OnnxTeacher::load(&path, TeacherOptions::default(), (w, h), &dev).unwrap();
        let x = images(2, h, w, 7);
        let ours = t
            .predict(&Tensor::from_vec(x.clone(), (2, 3, h, w), &dev).unwrap())
            .unwrap();
        assert_eq!(ours.dims(), [2, 1, h, w], "{name}");
        let ours = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let theirs = onnxruntime(&python, &path, &x, 2, h, w);
        let (worst, top) = max_diff(&ours, &theirs);
        assert!(
            worst <= 1e-4 * top,
            "{name} at {w}×{h}: max |ours − onnxruntime| {worst} (largest {top})"
        );
    }
}

/// ∂(Σ r·depth)/∂x through the import matches central differences at a few pixels (r weighs a
/// 9×9 window of the output around the pixel, so that the f32 sum is precise enough).
#[test]
fn gradients_through_the_import_match_finite_differences() {
    let dev = Device::Cpu;
    let (w, h) = (64, 48);
    for name in ["resnet_mff.onnx", "deconv.onnx", "tiny_vit.onnx"] {
        let t = OnnxTeacher::load(&fixture(name), TeacherOptions::default(), (w, h), &dev).unwrap();
        let x0 = images(1, h, w, 3);
        let weights = images(1, h, w, 9);
        for (c, py, px) in [
            (0usize, 5usize, 7usize),
            (1, 24, 11),
            (2, 30, 40),
            (2, 44, 60),
        ] {
            let mut r = vec![0f32; h * w];
            for y in py.saturating_sub(4)..(py + 5).min(h) {
                for x in px.saturating_sub(4)..(px + 5).min(w) {
                    r[y * w + x] = weights[y * w + x] - 0.5;
                }
            }
            let r = Tensor::from_vec(r, (1, 1, h, w), &dev).unwrap();
            let loss = |x: &Tensor| t.predict(x).unwrap().mul(&r).unwrap().sum_all().unwrap();
            let x = Var::from_tensor(&Tensor::from_vec(x0.clone(), (1, 3, h, w), &dev).unwrap())
                .unwrap();
            let grads = loss(x.as_tensor()).backward().unwrap();
            let g = grads
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let i = c * h * w + py * w + px;
            let eps = 1e-2f32;
            let at = |d: f32| {
                let mut v = x0.clone();
                v[i] += d;
                loss(&Tensor::from_vec(v, (1, 3, h, w), &dev).unwrap())
                    .to_scalar::<f32>()
                    .unwrap() as f64
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            let an = g[i] as f64;
            assert!(
                (fd - an).abs() <= 0.05 * fd.abs().max(an.abs()) + 2e-3,
                "{name}, pixel {i}: analytic {an}, finite differences {fd}"
            );
        }
    }
}

/// DDD's transformation network trains through an imported teacher: its BatchNorm inputs come
/// with the running statistics of the file, and the statistics loss falls.
#[test]
fn batch_norm_statistics_loss_falls_through_an_imported_teacher() {
    use depthling_host::distill::ddd::TransformStage;
    let dev = Device::Cpu;
    let (w, h) = (64, 48);
    let t = OnnxTeacher::load(
        &fixture("resnet_mff.onnx"),
        TeacherOptions::default(),
        (w, h),
        &dev,
    )
    .unwrap();
    assert_eq!(t.batch_norm_layers(), 11);
    let x = Tensor::from_vec(images(4, h, w, 5), (4, 3, h, w), &dev).unwrap();
    let bn = t.batch_norm_inputs(&x).unwrap();
    assert_eq!(bn.len(), 11);
    let mut stage = TransformStage::new(&t, &dev, 1, 1e-3).unwrap();
    for step in 0..30 {
        stage.apply(step, &x).unwrap();
    }
    let (a, b) = (stage.losses[0], *stage.losses.last().unwrap());
    assert!(b < 0.9 * a, "BatchNorm loss {a} → {b}");
    // a folded export has no BatchNorm: the loss refuses it, naming the fix
    let folded = OnnxTeacher::load(
        &fixture("resnet_folded.onnx"),
        TeacherOptions::default(),
        (w, h),
        &dev,
    )
    .unwrap();
    assert_eq!(folded.batch_norm_layers(), 0);
}

/// Truncated and bit-flipped files are errors naming the file, never panics.
#[test]
fn broken_onnx_files_are_errors() {
    let dev = Device::Cpu;
    let good = std::fs::read(fixture("mbv2_unet.onnx")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.onnx");
    let mut cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        good[..good.len() / 3].to_vec(),
        good[..100].to_vec(),
    ];
    let mut v = 12345u32;
    for _ in 0..60 {
        let mut b = good.clone();
        for _ in 0..4 {
            v = v.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let i = (v as usize) % b.len();
            b[i] ^= 1 << (v >> 29);
        }
        cases.push(b);
    }
    let mut errors = 0;
    for bytes in cases {
        std::fs::write(&path, &bytes).unwrap();
        let r = std::panic::catch_unwind(|| {
            OnnxTeacher::load(&path, TeacherOptions::default(), (32, 32), &dev).map(|_| ())
        });
        match r {
            Ok(Err(e)) => {
                assert!(e.to_string().contains("broken.onnx"), "{e}");
                errors += 1;
            }
            Ok(Ok(())) => {} // a flip in a weight leaves a valid model
            Err(_) => panic!("the importer panicked on a corrupt file"),
        }
    }
    assert!(errors >= 3, "only {errors} corrupt files were refused");
}

/// depthling's own teachers, exported to ONNX and imported again, give the native network's
/// depth (BatchNorm folded by the export): the import reads what the exporter writes.
#[test]
fn native_teachers_survive_export_and_import() {
    use depthling_host::nets::{preset, Net};
    let dev = Device::Cpu;
    let (w, h) = (64, 64);
    let dir = tempfile::tempdir().unwrap();
    for (arch, width) in [
        ("resnet18-mff", 0.25),
        ("demo-teacher", 0.5),
        ("micro", 1.0),
    ] {
        let net = Net::new(preset(arch, width).unwrap(), &dev, 3).unwrap();
        // BatchNorm statistics away from their initial values
        for seed in 0..3 {
            let x = Tensor::from_vec(images(2, h, w, seed), (2, 3, h, w), &dev).unwrap();
            net.net.forward_t(&x, true).unwrap();
        }
        let path = dir.path().join(format!("{arch}.onnx"));
        std::fs::write(&path, depthling_host::onnx::export(&net.net, w, h).unwrap()).unwrap();
        let t = OnnxTeacher::load(&path, TeacherOptions::default(), (w, h), &dev).unwrap();
        let x = Tensor::from_vec(images(2, h, w, 11), (2, 3, h, w), &dev).unwrap();
        let a = net
            .net
            .predict(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = t
            .predict(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let (worst, top) = max_diff(&b, &a);
        assert!(
            worst <= 1e-4 * top,
            "{arch}: max |native − imported| {worst} (largest {top})"
        );
    }
}
