//! The quick demo end to end: every stage runs, the outputs are there, and the distilled student
//! (f32 and int8) beats a constant mean-depth predictor on held-out indoor images by a clear
//! margin, although it never saw an indoor image.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use depthling_host::app::demo::{run, DemoConfig};

#[test]
fn quick_demo_student_beats_mean_depth() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = DemoConfig::quick(dir.path().join("demo"));
    cfg.quiet = true;
    let r = run(&cfg).expect("demo runs");
    for f in [
        "teacher.safetensors",
        "student.safetensors",
        "student.dlm",
        "student.tflite",
        "student.onnx",
        "frame.rgb",
        "metrics.json",
        "report/index.html",
        "report/samples.png",
        "report/loss.png",
        "report/metrics.png",
    ] {
        assert!(cfg.out.join(f).exists(), "{f} missing");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cfg.out.join("metrics.json")).unwrap()).unwrap();
    let names: Vec<&str> = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["teacher", "student_f32", "student_int8"]);
    for key in [
        "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3", "silog",
        "images", "params",
    ] {
        assert!(
            json["rows"][2].get(key).is_some(),
            "metrics.json lacks {key}"
        );
    }

    let base = r.mean_depth_baseline;
    for name in ["teacher", "student_f32", "student_int8"] {
        let m = r.row(name).unwrap().metrics;
        assert!(
            m.abs_rel < 0.85 * base.abs_rel,
            "{name}: AbsRel {:.3} vs mean-depth {:.3}",
            m.abs_rel,
            base.abs_rel
        );
        assert!(
            m.delta1 > base.delta1 + 0.05,
            "{name}: δ1 {:.3} vs mean-depth {:.3}",
            m.delta1,
            base.delta1
        );
    }
    let (f, q) = (
        r.row("student_f32").unwrap().metrics,
        r.row("student_int8").unwrap().metrics,
    );
    assert!(
        (f.abs_rel - q.abs_rel).abs() < 0.02,
        "int8 AbsRel {:.3} drifts from f32 {:.3}",
        q.abs_rel,
        f.abs_rel
    );
    assert!(
        (f.delta1 - q.delta1).abs() < 0.03,
        "int8 δ1 {:.3} drifts from f32 {:.3}",
        q.delta1,
        f.delta1
    );
    // the .dlm on disk is what the int8 row measured
    let bytes = std::fs::read(cfg.out.join("student.dlm")).unwrap();
    let model = depthling_model::Model::from_bytes(&bytes).unwrap();
    assert_eq!(model.params(), r.row("student_int8").unwrap().params);
    assert_eq!(
        model.input_size(),
        Some((cfg.height as u16, cfg.width as u16))
    );
    // and the .tflite is that model's export
    let tflite = std::fs::read(cfg.out.join("student.tflite")).unwrap();
    assert_eq!(tflite, depthling_host::tflite::export(&model).unwrap());
    assert_eq!(r.tflite_bytes, tflite.len() as u64);

    // the board table: the student fits the STM32H747 (flash and arena), and the Cortex-M7
    // firmware ran it on QEMU with the host's bits where QEMU is there (required in CI)
    let h7 = r.boards.iter().find(|b| b.board == "stm32h747").unwrap();
    assert!(h7.fits, "{:?}", h7.misfit);
    assert_eq!(r.boards.len(), 5, "this machine and four profiles");
    let local = &r.boards[0];
    assert!(local.frames_per_second.unwrap() > 0.0);
    match &r.cortex_m7 {
        Ok(m7) => {
            assert!(m7.bit_exact);
            assert_eq!(m7.macs, model.macs());
            let fps = h7.frames_per_second.unwrap();
            assert!((fps - 480e6 / m7.instructions as f64).abs() < 1e-6 * fps);
        }
        Err(why) => depthling_tests::hil::skip_or_fail("the demo's Cortex-M7 run", why),
    }
    assert!(r.table().contains("stm32h747"));
}
