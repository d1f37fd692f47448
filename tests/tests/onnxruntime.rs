//! The ONNX export under onnxruntime (from PyPI) agrees with the candle model to ≤ 1e-4 relative.
//!
//! Python comes from `DEPTHLING_ORT_PYTHON` (`scripts/test.sh` makes a virtual environment with
//! onnxruntime and numpy) or `python3`. Without onnxruntime the test skips with a message, or
//! fails under `DEPTHLING_REQUIRE_HIL=1` (CI).
#![allow(clippy::unwrap_used)]

use std::process::Command;

use candle_core::{Device, Tensor};
use depthling_host::nets::{preset, Net};

const SCRIPT: &str = r#"
import sys, numpy as np, onnxruntime as ort
model, inp, out, h, w = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
assert [i.name for i in session.get_inputs()] == ["image"], session.get_inputs()
assert [o.name for o in session.get_outputs()] == ["depth"], session.get_outputs()
x = np.fromfile(inp, dtype="<f4").reshape(1, 3, h, w)
(y,) = session.run(["depth"], {"image": x})
assert y.shape == (1, 1, h, w), y.shape
y.astype("<f4").tofile(out)
"#;

#[test]
fn onnxruntime_agrees_with_candle() {
    let Some(python) = depthling_tests::hil::python_with(
        "onnxruntime, numpy",
        "onnxruntime check of the ONNX export",
    ) else {
        return;
    };
    // the demo student (nearest upsampling) and the micro student (depthwise convolutions,
    // bilinear Resize)
    for (arch, w, h) in [("demo-student", 64usize, 48usize), ("micro", 64, 32)] {
        let device = Device::Cpu;
        let net = Net::new(preset(arch, 1.0).unwrap(), &device, 21).unwrap();
        // move the BatchNorm statistics away from their initial values, so folding is exercised
        let mut v = 0u32;
        let mut noise = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    v = v.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (v >> 8) as f32 / (1u32 << 24) as f32
                })
                .collect()
        };
        for _ in 0..3 {
            let x = Tensor::from_vec(noise(2 * 3 * h * w), (2, 3, h, w), &device).unwrap();
            net.net.forward_t(&x, true).unwrap();
        }
        let image = noise(3 * h * w);
        let x = Tensor::from_vec(image.clone(), (1, 3, h, w), &device).unwrap();
        let reference: Vec<f32> = net
            .net
            .forward_t(&x, false)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("s.onnx");
        std::fs::write(
            &model,
            depthling_host::onnx::export(&net.net, w, h).unwrap(),
        )
        .unwrap();
        let (inp, out) = (dir.path().join("x.f32"), dir.path().join("y.f32"));
        let bytes: Vec<u8> = image.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&inp, bytes).unwrap();
        let o = Command::new(&python)
            .args(["-c", SCRIPT])
            .arg(&model)
            .arg(&inp)
            .arg(&out)
            .arg(h.to_string())
            .arg(w.to_string())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "onnxruntime failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let got: Vec<f32> = std::fs::read(&out)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(got.len(), reference.len());
        let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(&reference)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        eprintln!("{arch}: onnxruntime vs candle: max relative difference {err:e}");
        assert!(
            err <= 1e-4,
            "{arch}: onnxruntime differs from candle by {err:e}"
        );
    }
}
