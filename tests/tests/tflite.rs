//! The `.tflite` export against TFLite itself: for the demo student, `micro` and `mbv2-mff`
//! (seeded weights, and the demo student also after some training steps), every int8 tensor of
//! depthling's engine equals LiteRT's reference kernels (`OpResolverType.BUILTIN_REF` with all
//! tensors kept) bit for bit, both LiteRT's and TFLite Micro's depth are within the int16
//! output step of ours, and LiteRT's default XNNPACK path accepts the model
//! (`scripts/tflite_check.py` does the Python side).
//!
//! Python comes from `DEPTHLING_ORT_PYTHON` (`scripts/test.sh` makes a virtual environment with
//! ai-edge-litert and tflite-micro) or `python3`; without them the test skips with a message, or
//! fails under `DEPTHLING_REQUIRE_HIL=1` (CI).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use candle_core::Device;
use depthling_host::nets::{preset, Net};
use depthling_host::quant::{quantize, Calibration, Provenance};
use depthling_host::sim::{render_many, render_sample, Domain};
use depthling_host::train::{train, Supervised, TrainConfig};
use depthling_tests::hil::root;

fn python() -> Option<String> {
    depthling_tests::hil::python_with(
        "numpy, ai_edge_litert.interpreter, tflite_micro",
        "TFLite check of the .tflite export",
    )
}

/// Exports `model`, dumps the engine's tensors on `frame`, and runs the comparison; returns its
/// JSON report.
fn check(python: &str, name: &str, model: &[u8], frame: &[u8]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let m = depthling_model::Model::from_bytes(model).unwrap();
    let tfl = dir.path().join(format!("{name}.tflite"));
    std::fs::write(&tfl, depthling_host::tflite::export(&m).unwrap()).unwrap();
    let dump = dir.path().join("dump");
    depthling_host::app::run::dump(&m, frame, &dump).unwrap();
    let out = Command::new(python)
        .arg(root().join("scripts/tflite_check.py"))
        .arg(&tfl)
        .arg(&dump)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{name}: no report ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    report
}

/// How many ops of `model` write an int8 tensor.
fn int8_outputs(model: &[u8]) -> usize {
    let m = depthling_model::Model::from_bytes(model).unwrap();
    m.ops
        .iter()
        .filter_map(|o| o.output().and_then(|t| m.tensor(t)))
        .filter(|t| t.dtype == depthling_model::DType::I8)
        .count()
}

fn assert_identical(name: &str, report: &serde_json::Value, int8_tensors: usize) {
    let tensors = report["tensors"].as_array().unwrap();
    // every int8 op output was compared
    assert_eq!(tensors.len(), int8_tensors, "{name}: {report}");
    for t in tensors {
        assert_eq!(
            t["differing"], 0,
            "{name}: tensor {t} differs from LiteRT's"
        );
        assert_eq!(t["same_quantization"], true, "{name}: {t}");
    }
    let depth = &report["depth"];
    let tol = depth["tolerance_m"].as_f64().unwrap();
    assert!(
        tol < 0.002,
        "{name}: the int16 depth step is too coarse: {depth}"
    );
    for k in ["litert_max_abs_diff_m", "tflm_max_abs_diff_m"] {
        assert!(depth[k].as_f64().unwrap() <= tol, "{name}: {k}: {depth}");
    }
    // LiteRT's default (XNNPACK) accepts the model too
    assert_eq!(depth["xnnpack_runs"], true, "{name}: {depth}");
    assert_eq!(report["ok"], true, "{name}: {report}");
}

#[test]
fn every_int8_tensor_equals_litert_reference_kernels() {
    let Some(python) = python() else { return };
    // stride-2 3×3 convs on even sizes go through an explicit PAD (TFLite's SAME would pad
    // after only), stride 1 through SAME; micro and mbv2-mff need a multiple of 32
    for (arch, w, h) in [
        ("demo-student", 64usize, 48usize),
        ("micro", 64, 64),
        ("mbv2-mff", 64, 32),
    ] {
        let (model, frame) = depthling_tests::student_and_frame(arch, w, h).unwrap();
        let ops = int8_outputs(&model);
        let report = check(&python, arch, &model, &frame);
        assert_identical(&format!("{arch} {w}x{h}"), &report, ops);
        // and a frame of random pixels (saturating activations the simulated scene does not)
        let mut state = 0x9e37_79b9u32;
        let noise: Vec<u8> = (0..frame.len())
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
            .collect();
        let report = check(&python, arch, &model, &noise);
        assert_identical(&format!("{arch} {w}x{h}, random frame"), &report, ops);
        // depthling's arena is not larger than TFLite Micro's for the same graph
        let m = depthling_model::Model::from_bytes(&model).unwrap();
        let tflm = depthling_host::app::profile::tflm_arena(
            &depthling_host::tflite::export(&m).unwrap(),
            std::path::Path::new(&python),
        )
        .unwrap();
        // with the prepared plan the Cortex-M engine keeps after the activations (TFLite
        // Micro's arena holds its own per-op data too)
        let plan =
            depthling_device::plan::bytes(&m, depthling_device::KernelSet::CortexMDsp).unwrap();
        assert!(
            m.arena_bytes as u64 + plan as u64 <= tflm,
            "{arch}: arena {} + plan {plan} > TFLite Micro's {tflm}",
            m.arena_bytes
        );
    }
}

#[test]
fn a_trained_student_equals_litert_too() {
    let Some(python) = python() else { return };
    let device = Device::Cpu;
    // trained weights: ranges and dead channels that seeded weights do not have
    for (arch, w, h, steps) in [
        ("demo-student", 64usize, 48usize, 40usize),
        ("micro", 64, 64, 20),
        ("mbv2-mff", 64, 32, 10),
    ] {
        let net = Net::new(preset(arch, 1.0).unwrap(), &device, 3).unwrap();
        let data = render_many(Domain::Indoor, w, h, 16, 5, 8, false);
        let cfg = TrainConfig {
            steps,
            ..Default::default()
        };
        let losses = train(&net, &data, &mut Supervised, &cfg, |_| {}).unwrap();
        assert!(
            losses.last() < losses.first(),
            "{arch}: training made progress"
        );
        let model = quantize(
            &net.net,
            &data,
            Calibration::MinMax,
            &Provenance::default(),
            &device,
        )
        .unwrap();
        let frame = render_sample(Domain::Indoor, w, h, 99, 0, false).rgb;
        let ops = int8_outputs(&model);
        let report = check(&python, "trained", &model, &frame);
        assert_identical(&format!("trained {arch}"), &report, ops);
    }
}

/// `.dlm` → `.tflite` → `.dlm` keeps every op and the output bits; the second `.tflite` is
/// byte-identical to the first.
#[test]
fn dlm_to_tflite_to_dlm_keeps_the_ops_and_the_bits() {
    for (arch, w, h) in [
        ("demo-student", 64usize, 48usize),
        ("micro", 64, 64),
        ("mbv2-mff", 64, 32),
    ] {
        let (model, frame) = depthling_tests::student_and_frame(arch, w, h).unwrap();
        let m = depthling_model::Model::from_bytes(&model).unwrap();
        // the quantizer gives a concatenation's inputs its own grid (TFLite's requirement), so
        // the export needs no requantizing QUANTIZE before it
        for op in &m.ops {
            if let depthling_model::Op::Concat { inputs, output, .. } = op {
                let q = m.tensor(*output).unwrap().quant;
                for &i in inputs {
                    assert_eq!(m.tensor(i).unwrap().quant, q, "{arch}: concat input {i}");
                }
            }
        }
        let tfl = depthling_host::tflite::export(&m).unwrap();
        let back = depthling_host::tflite::import(&tfl, arch).unwrap();
        let m2 = depthling_model::Model::from_bytes(&back).unwrap();
        let kinds = |m: &depthling_model::Model<'_>| -> Vec<&'static str> {
            m.ops.iter().map(|o| o.kind()).collect()
        };
        assert_eq!(kinds(&m), kinds(&m2), "{arch}");
        assert_eq!(m.arena_bytes, m2.arena_bytes, "{arch}");
        assert_eq!(
            depthling_tests::host_checksum(&model, &frame).unwrap(),
            depthling_tests::host_checksum(&back, &frame).unwrap(),
            "{arch}: output bits"
        );
        assert_eq!(
            depthling_host::tflite::export(&m2).unwrap(),
            tfl,
            "{arch}: second export"
        );
    }
}

/// Truncated and bit-flipped `.tflite` files: an error for every truncation, and never a panic
/// for a flipped bit (one in the weights may still be a valid model).
#[test]
fn corrupt_tflite_files_are_errors_never_panics() {
    let (model, _) = depthling_tests::student_and_frame("demo-student", 32, 24).unwrap();
    let m = depthling_model::Model::from_bytes(&model).unwrap();
    let tfl = depthling_host::tflite::export(&m).unwrap();
    let mut cut = 0;
    for len in (0..tfl.len())
        .step_by(97)
        .chain([tfl.len() - 1, tfl.len() / 2])
    {
        assert!(
            depthling_host::tflite::import(&tfl[..len], "cut").is_err(),
            "truncated to {len} bytes"
        );
        cut += 1;
    }
    let (mut errors, mut valid) = (0, 0);
    let mut state = 0x2545_f491u64;
    for _ in 0..3000 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let bit = (state >> 33) as usize % (tfl.len() * 8);
        let mut bad = tfl.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        match depthling_host::tflite::import(&bad, "flipped") {
            Err(_) => errors += 1,
            Ok(dlm) => {
                // what comes out is a valid model
                depthling_model::Model::from_bytes(&dlm).unwrap();
                valid += 1;
            }
        }
    }
    assert!(
        cut > 10 && errors > 100,
        "{cut} cuts, {errors} errors, {valid} valid"
    );
}
