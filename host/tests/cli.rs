//! The `depthling` binary as a user drives it: outputs, JSON, exit codes, messages.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::path::Path;

mod common;
use common::{depthling, json, row_names, stderr};

fn write_depth_png(path: &Path, w: u32, h: u32, mm: &[u16]) {
    let buf: image::ImageBuffer<image::Luma<u16>, Vec<u16>> =
        image::ImageBuffer::from_raw(w, h, mm.to_vec()).unwrap();
    buf.save(path).unwrap();
}

/// The standard formulas written out independently of depthling-metrics: per image, then mean.
fn reference_metrics(
    preds: &[Vec<f64>],
    gts: &[Vec<f64>],
    cap: f64,
    crop: Option<(usize, usize, usize, usize)>,
    w: usize,
) -> Vec<(&'static str, f64)> {
    let mut sums = [0.0f64; 9];
    for (p, g) in preds.iter().zip(gts) {
        let mut v = Vec::new();
        for (i, (&d, &g)) in p.iter().zip(g).enumerate() {
            let (r, c) = (i / w, i % w);
            if let Some((r0, r1, c0, c1)) = crop {
                if r < r0 || r >= r1 || c < c0 || c >= c1 {
                    continue;
                }
            }
            if g > 0.0 && g <= cap {
                v.push((d.clamp(1e-3, cap), g));
            }
        }
        let n = v.len() as f64;
        let mean = |f: &dyn Fn(f64, f64) -> f64| v.iter().map(|&(d, g)| f(d, g)).sum::<f64>() / n;
        let e_mean = mean(&|d, g| d.ln() - g.ln());
        let vals = [
            mean(&|d, g| (g - d).abs() / g),
            mean(&|d, g| (g - d).powi(2) / g),
            mean(&|d, g| (g - d).powi(2)).sqrt(),
            mean(&|d, g| (g.ln() - d.ln()).powi(2)).sqrt(),
            mean(&|d, g| (d.log10() - g.log10()).abs()),
            mean(&|d, g| ((g / d).max(d / g) < 1.25) as u8 as f64),
            mean(&|d, g| ((g / d).max(d / g) < 1.25f64.powi(2)) as u8 as f64),
            mean(&|d, g| ((g / d).max(d / g) < 1.25f64.powi(3)) as u8 as f64),
            100.0 * (mean(&|d, g| (d.ln() - g.ln()).powi(2)) - e_mean * e_mean).sqrt(),
        ];
        for (s, v) in sums.iter_mut().zip(vals) {
            *s += v;
        }
    }
    let keys = [
        "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3", "silog",
    ];
    keys.into_iter()
        .zip(sums.map(|s| s / preds.len() as f64))
        .collect()
}

#[test]
fn eval_matches_an_independent_computation() {
    let dir = tempfile::tempdir().unwrap();
    let (pd, gd) = (dir.path().join("pred"), dir.path().join("gt"));
    std::fs::create_dir_all(&pd).unwrap();
    std::fs::create_dir_all(&gd).unwrap();
    let (w, h) = (64usize, 48usize);
    let mut preds = Vec::new();
    let mut gts = Vec::new();
    for img in 0..3u32 {
        let gt: Vec<u16> = (0..w * h)
            .map(|i| {
                if i % 17 == 3 {
                    0
                } else {
                    500 + ((i as u32 * 7919 + img * 131) % 14000) as u16
                }
            })
            .collect();
        let pr: Vec<u16> = gt
            .iter()
            .enumerate()
            .map(|(i, &g)| {
                ((g as f64 * (0.7 + 0.6 * ((i * 31 % 100) as f64 / 100.0))) as u16).max(1)
            })
            .collect();
        let name = format!("{img:03}.png");
        write_depth_png(&gd.join(&name), w as u32, h as u32, &gt);
        write_depth_png(&pd.join(&name), w as u32, h as u32, &pr);
        gts.push(gt.iter().map(|&v| v as f64 / 1000.0).collect::<Vec<_>>());
        preds.push(pr.iter().map(|&v| v as f64 / 1000.0).collect::<Vec<_>>());
    }
    let check = |proto: &str, cap: f64, crop| {
        let out = json(&depthling(&[
            "eval",
            "--pred",
            pd.to_str().unwrap(),
            "--gt",
            gd.to_str().unwrap(),
            "--protocol",
            proto,
            "--json",
        ]));
        assert_eq!(out["images"], 3);
        for (k, v) in reference_metrics(&preds, &gts, cap, crop, w) {
            let got = out[k].as_f64().unwrap_or_else(|| panic!("missing key {k}"));
            // depths pass through f32 (PNG units / scale), accumulation is f64
            assert!(
                (got - v).abs() <= 1e-6 * v.abs().max(1e-3),
                "{proto} {k}: depthling {got} vs reference {v}"
            );
        }
    };
    check("none", f64::INFINITY, None);
    // NYU: cap 10 m and the Eigen crop scaled to 64×48: rows 4.5→5..47.1→47, cols 4.1→4..60.1→60
    check("nyu", 10.0, Some((5, 47, 4, 60)));
}

#[test]
fn simulate_run_eval_profile_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("indoor");
    let o = depthling(&[
        "simulate",
        "--domain",
        "indoor",
        "--count",
        "4",
        "--size",
        "32x24",
        "--seed",
        "3",
        "--preview",
        "--out",
        data.to_str().unwrap(),
        "--json",
    ]);
    let s = json(&o);
    assert_eq!(s["count"], 4);
    for f in [
        "manifest.json",
        "rgb/000003.png",
        "depth/000003.png",
        "preview.png",
    ] {
        assert!(data.join(f).exists(), "{f} missing");
    }
    let model = dir.path().join("m.dlm");
    std::fs::write(&model, depthling_model::example_model(24, 32, 1).unwrap()).unwrap();
    let out = dir.path().join("depth");
    let r = json(&depthling(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--input",
        data.join("rgb").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(r["images"], 4);
    assert!(out.join("000000.png").exists() && out.join("000000_color.png").exists());
    let e = json(&depthling(&[
        "eval",
        "--pred",
        out.to_str().unwrap(),
        "--gt",
        data.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(e["images"], 4);
    let p = json(&depthling(&[
        "profile",
        "--model",
        model.to_str().unwrap(),
        "--json",
    ]));
    for k in [
        "params",
        "macs",
        "flash_bytes",
        "arena_bytes",
        "board",
        "fits",
    ] {
        assert!(p.get(k).is_some(), "profile lacks {k}");
    }
    assert_eq!(p["flash_bytes"], std::fs::metadata(&model).unwrap().len());
    let a = json(&depthling(&[
        "profile",
        "--arch",
        "demo-student",
        "--size",
        "64x48",
        "--json",
    ]));
    assert!(a["params"].as_u64().unwrap() > 10_000);
    assert!(a["macs"].as_u64().unwrap() > a["params"].as_u64().unwrap());
}

/// Every way of breaking a model file ends in exit 1 or 2 with a message naming the file.
#[test]
fn corrupt_models_are_rejected_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("frame.png");
    image::RgbImage::from_pixel(32, 24, image::Rgb([90, 120, 200]))
        .save(&img)
        .unwrap();
    let good = depthling_model::example_model(24, 32, 2).unwrap();
    let mut variants: Vec<(String, Vec<u8>)> = vec![
        ("truncated".into(), good[..good.len() / 2].to_vec()),
        ("empty".into(), vec![]),
        (
            "junk appended".into(),
            [good.clone(), b"junk".to_vec()].concat(),
        ),
        ("png as model".into(), std::fs::read(&img).unwrap()),
    ];
    for i in (0..good.len()).step_by(good.len() / 40 + 1) {
        let mut b = good.clone();
        b[i] ^= 0x10;
        variants.push((format!("bit flip at {i}"), b));
    }
    for (what, bytes) in variants {
        let path = dir.path().join("bad.dlm");
        std::fs::write(&path, &bytes).unwrap();
        let out = dir.path().join("out-bad");
        let o = depthling(&[
            "run",
            "--model",
            path.to_str().unwrap(),
            "--input",
            img.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let code = o.status.code();
        assert!(
            matches!(code, Some(1) | Some(2)),
            "{what}: exit {code:?}, stderr {}",
            stderr(&o)
        );
        assert!(
            stderr(&o).contains("bad.dlm"),
            "{what}: message does not name the file: {}",
            stderr(&o)
        );
        assert!(!out.exists(), "{what}: output written for a bad model");
    }
}

/// The stage commands chained as a user would, on tiny data: train-teacher (with a held-out
/// split), distill, quantize, then eval on a CSV list whose depth scale must be honoured.
#[test]
fn stage_commands_chain_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let sim = |domain: &str, out: &str| {
        let o = depthling(&[
            "simulate",
            "--domain",
            domain,
            "--count",
            "12",
            "--size",
            "32x16",
            "--seed",
            "4",
            "--out",
            &p(out),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    sim("indoor", "indoor");
    sim("ood", "ood");
    sim("indoor-alt", "alt");
    let o = depthling(&[
        "train-teacher",
        "--data",
        &p("indoor"),
        "--epochs",
        "1",
        "--test-fraction",
        "0.25",
        "--out",
        &p("t.safetensors"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("held-out 3 images"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = depthling(&[
        "distill",
        "--method",
        "kd",
        "--teacher",
        &p("t.safetensors"),
        "--images",
        &p("ood"),
        "--epochs",
        "1",
        "--out",
        &p("s.safetensors"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // DDD (mixing + transformation network) on a sixth of the images, with the Hu loss; a
    // resume of the finished run leaves the same student
    let ddd = |out: &str, resume: bool| {
        let mut args = vec![
            "distill",
            "--method",
            "ddd",
            "--teacher",
            &p("t.safetensors"),
            "--images",
            &p("ood"),
            "--images-fraction",
            "1/6",
            "--epochs",
            "2",
            "--loss",
            "hu",
            "--out",
            out,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if resume {
            args.push("--resume".into());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = depthling(&refs);
        assert!(o.status.success(), "{}", stderr(&o));
        // the weights (the file's metadata order may differ between writes)
        let (net, _) =
            depthling_host::nets::Net::load(Path::new(out), &candle_core::Device::Cpu).unwrap();
        net.named_tensors()
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect::<Vec<_>>()
    };
    let first = ddd(&p("ddd.safetensors"), false);
    assert!(dir.path().join("ddd.ckpt.safetensors").exists());
    assert_eq!(ddd(&p("ddd.safetensors"), true), first);
    // object mixing needs instance masks: indoor datasets have none
    let o = depthling(&[
        "distill",
        "--method",
        "ddd",
        "--teacher",
        &p("t.safetensors"),
        "--images",
        &p("indoor"),
        "--out",
        &p("never.safetensors"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("instance masks"), "{}", stderr(&o));
    assert!(!dir.path().join("never.safetensors").exists());
    // aux (LW, X∪U): ground truth of the labeled set plus KD on it and on the auxiliary images
    let aux = json(&depthling(&[
        "distill",
        "--method",
        "aux",
        "--teacher",
        &p("t.safetensors"),
        "--labeled",
        &p("indoor"),
        "--images",
        &p("alt"),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--out",
        &p("s-aux.safetensors"),
        "--json",
    ]));
    assert_eq!(aux["images"], 24, "{aux}");
    assert_eq!(aux["steps"], 6, "{aux}");
    assert!(aux["loss_last"].as_f64().unwrap().is_finite());
    assert!(dir.path().join("s-aux.safetensors").exists());
    for (args, needle) in [
        (
            vec![
                "--method",
                "kd",
                "--labeled",
                &p("indoor"),
                "--images",
                &p("ood"),
            ],
            "--labeled is for --method aux",
        ),
        (vec!["--method", "aux"], "needs --labeled DIR"),
        (vec!["--method", "kd"], "needs --images DIR"),
    ] {
        let (teacher, never) = (p("t.safetensors"), p("never.safetensors"));
        let mut all = vec!["distill", "--teacher", &teacher];
        all.extend(args);
        all.extend(["--out", &never]);
        let o = depthling(&all);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{}", stderr(&o));
        assert!(!dir.path().join("never.safetensors").exists());
    }
    let q = json(&depthling(&[
        "quantize",
        "--model",
        &p("s.safetensors"),
        "--calib",
        &p("ood"),
        "--calibration",
        "mse",
        "--out",
        &p("s.dlm"),
        "--json",
    ]));
    assert_eq!(q["calibration"], "mse");
    assert!(!q["layers"].as_array().unwrap().is_empty());
    assert!(q["qat"].is_null());
    // the same int8 graph as .tflite, and back: the re-imported .dlm computes the same depth
    let t = json(&depthling(&[
        "export",
        "--model",
        &p("s.dlm"),
        "--format",
        "tflite",
        "--board",
        "stm32h747",
        "--out",
        &p("s.tflite"),
        "--json",
    ]));
    assert_eq!(t["fits"], true, "{t}");
    let tfl = std::fs::read(p("s.tflite")).unwrap();
    assert_eq!(&tfl[4..8], b"TFL3");
    let o = depthling(&["import", &p("s.tflite"), "--out", &p("s-back.dlm")]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (model, out) in [("s.dlm", "run-a"), ("s-back.dlm", "run-b")] {
        let o = depthling(&[
            "run",
            "--model",
            &p(model),
            "--input",
            &p("indoor/rgb"),
            "--out",
            &p(out),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(
        std::fs::read(p("run-a/000000.png")).unwrap(),
        std::fs::read(p("run-b/000000.png")).unwrap()
    );
    // --dump: every op's tensor with its sidecar, named as in the .tflite
    let o = depthling(&[
        "run",
        "--model",
        &p("s.dlm"),
        "--input",
        &p("indoor/rgb/000000.png"),
        "--out",
        &p("run-d"),
        "--dump",
        &p("dump"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dump = dir.path().join("dump/000000");
    let input = std::fs::read(dump.join("input.npy")).unwrap();
    assert_eq!(&input[..6], b"\x93NUMPY");
    let sides: Vec<_> = std::fs::read_dir(&dump)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    let model = depthling_model::Model::from_bytes(&std::fs::read(p("s.dlm")).unwrap())
        .unwrap()
        .ops
        .len();
    // one per op but the graph's Output marker
    assert_eq!(sides.len(), model - 1);
    let first: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dump.join("000_conv2d.json")).unwrap()).unwrap();
    assert_eq!(first["tflite_name"], "t1", "{first}");
    let npy = std::fs::read(dump.join("000_conv2d.npy")).unwrap();
    let shape: Vec<usize> = first["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(
        npy.len() % 64,
        shape.iter().product::<usize>() % 64,
        "a 64-byte aligned header"
    );
    // profile reads a .tflite as depthling imports it; --compare-tflm needs TFLite Micro's Python
    let pt = json(&depthling(&[
        "profile",
        "--model",
        &p("s.tflite"),
        "--json",
    ]));
    let pd = json(&depthling(&["profile", "--model", &p("s.dlm"), "--json"]));
    assert_eq!(pt["arena_bytes"], pd["arena_bytes"]);
    assert_eq!(pt["flash_bytes"].as_u64(), Some(tfl.len() as u64));
    let o = depthling(&[
        "profile",
        "--model",
        &p("s.dlm"),
        "--compare-tflm",
        "--python",
        "/nonexistent/python",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("tflite-micro"), "{}", stderr(&o));
    // refusals: --dump needs the int8 engine; import needs a .tflite
    let o = depthling(&[
        "run",
        "--model",
        &p("s.dlm"),
        "--input",
        &p("indoor/rgb"),
        "--out",
        &p("run-x"),
        "--backend",
        "tract",
        "--dump",
        &p("dump-x"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = depthling(&["import", &p("s.dlm"), "--out", &p("never.dlm")]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a .tflite"), "{}", stderr(&o));
    let mut cut = tfl.clone();
    cut.truncate(tfl.len() / 3);
    std::fs::write(p("cut.tflite"), &cut).unwrap();
    let o = depthling(&["import", &p("cut.tflite"), "--out", &p("never.dlm")]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("cut.tflite"), "{}", stderr(&o));
    assert!(!dir.path().join("never.dlm").exists());
    // QAT: a fine-tune through the fake-quantized network, reported beside the PTQ result it
    // replaced; the model it writes is a valid .dlm
    let qat = json(&depthling(&[
        "quantize",
        "--model",
        &p("s.safetensors"),
        "--calib",
        &p("ood"),
        "--qat-epochs",
        "1",
        "--out",
        &p("s-qat.dlm"),
        "--json",
    ]));
    assert!(qat["qat"]["steps"].as_u64().unwrap() > 0, "{qat}");
    assert!(
        qat["qat"]["ptq_int8_vs_f32_m"].as_f64().unwrap() > 0.0,
        "{qat}"
    );
    assert!(qat["int8_vs_f32_m"].as_f64().unwrap() > 0.0, "{qat}");
    let e = json(&depthling(&[
        "eval",
        "--model",
        &p("s-qat.dlm"),
        "--data",
        &p("indoor"),
        "--json",
    ]));
    assert!(e["rmse"].as_f64().unwrap().is_finite());
    // eval's HTML report: table, charts and a sample grid of RGB | GT | prediction | error
    let report = dir.path().join("eval-report");
    let r = json(&depthling(&[
        "eval",
        "--model",
        &p("s-qat.dlm"),
        "--data",
        &p("indoor"),
        "--report",
        report.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(r, e, "--report does not change the numbers");
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.contains("int8") && html.contains("arena"), "{html}");
    let sheet = image::open(report.join("samples.png")).unwrap();
    assert!(
        sheet.width() > 0 && sheet.width().is_multiple_of(4),
        "four columns: RGB, ground truth, prediction, error"
    );
    for png in ["metrics.png", "error_by_depth.png"] {
        assert!(image::open(report.join(png)).is_ok(), "{png}");
    }
    let o = depthling(&[
        "quantize",
        "--model",
        &p("s.safetensors"),
        "--calib",
        &p("ood"),
        "--qat-epochs",
        "1",
        "--qat-lr",
        "0",
        "--out",
        &p("never.dlm"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--qat-lr"), "{}", stderr(&o));
    assert!(!dir.path().join("never.dlm").exists());
    // a CSV list over the indoor dataset: depth PNGs are in millimetres
    let rows: String = (0..12)
        .map(|i| format!("indoor/rgb/{i:06}.png,indoor/depth/{i:06}.png\n"))
        .collect();
    std::fs::write(
        dir.path().join("list.csv"),
        format!("rgb_path,depth_path\n{rows}"),
    )
    .unwrap();
    let mm = json(&depthling(&[
        "eval",
        "--model",
        &p("s.dlm"),
        "--data",
        &p("list.csv"),
        "--depth-scale",
        "1000",
        "--json",
    ]));
    let folder = json(&depthling(&[
        "eval",
        "--model",
        &p("s.dlm"),
        "--data",
        &p("indoor"),
        "--json",
    ]));
    assert_eq!(
        mm["abs_rel"], folder["abs_rel"],
        "CSV at the right scale must equal the dataset folder"
    );
    let wrong = json(&depthling(&[
        "eval",
        "--model",
        &p("s.dlm"),
        "--data",
        &p("list.csv"),
        "--depth-scale",
        "1",
        "--json",
    ]));
    assert_ne!(wrong["abs_rel"], mm["abs_rel"], "--depth-scale ignored");
    // an empty dataset is bad input, not a panic
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let manifest = std::fs::read_to_string(dir.path().join("indoor/manifest.json"))
        .unwrap()
        .replace("\"count\": 12", "\"count\": 0");
    std::fs::write(empty.join("manifest.json"), manifest).unwrap();
    let o = depthling(&[
        "train-teacher",
        "--data",
        empty.to_str().unwrap(),
        "--out",
        &p("never.safetensors"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no images"), "{}", stderr(&o));
}

#[test]
fn boards_fit_or_refuse_naming_the_excess() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.dlm");
    std::fs::write(&small, depthling_model::example_model(24, 32, 1).unwrap()).unwrap();
    let p = json(&depthling(&[
        "profile",
        "--model",
        small.to_str().unwrap(),
        "--board",
        "stm32h747",
        "--json",
    ]));
    assert_eq!(p["board"], "stm32h747");
    assert_eq!(p["fits"], true);
    let out = dir.path().join("exported.dlm");
    let o = depthling(&[
        "export",
        "--model",
        small.to_str().unwrap(),
        "--format",
        "dlm",
        "--board",
        "stm32h747",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&small).unwrap());
    // a model whose arena cannot fit 1 MB of SRAM: 512×512 input
    let big = dir.path().join("big.dlm");
    std::fs::write(&big, depthling_model::example_model(512, 512, 1).unwrap()).unwrap();
    let p = json(&depthling(&[
        "profile",
        "--model",
        big.to_str().unwrap(),
        "--board",
        "stm32h747",
        "--json",
    ]));
    assert_eq!(p["fits"], false);
    let refused = dir.path().join("refused.dlm");
    let o = depthling(&[
        "export",
        "--model",
        big.to_str().unwrap(),
        "--format",
        "dlm",
        "--board",
        "stm32h747",
        "--out",
        refused.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("over the RAM budget") && stderr(&o).contains("stm32h747"),
        "{}",
        stderr(&o)
    );
    assert!(!refused.exists());
    let o = depthling(&[
        "profile",
        "--model",
        small.to_str().unwrap(),
        "--board",
        "nope",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown board"));
}

#[test]
fn config_file_supplies_flags_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sim.toml");
    std::fs::write(
        &cfg,
        "domain = \"ood\"\ncount = 3\nsize = \"32x24\"\nseed = 5\npreview = true\n",
    )
    .unwrap();
    let out = dir.path().join("ds");
    let o = depthling(&[
        "simulate",
        "--config",
        cfg.to_str().unwrap(),
        "--count",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    let s = json(&o);
    assert_eq!(s["domain"], "ood");
    assert_eq!(s["count"], 2, "the command line must override the file");
    assert!(out.join("preview.png").exists());
    std::fs::write(&cfg, "count = [1, 2]").unwrap();
    let o = depthling(&[
        "simulate",
        "--config",
        cfg.to_str().unwrap(),
        "--domain",
        "ood",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("sim.toml"), "{}", stderr(&o));
}

#[test]
fn bad_input_exits_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.dlm");
    std::fs::write(&model, depthling_model::example_model(24, 32, 1).unwrap()).unwrap();
    let big = dir.path().join("big.png");
    image::RgbImage::new(64, 48).save(&big).unwrap();
    let out = dir.path().join("never");
    let ckpt = dir.path().join("s.safetensors");
    depthling_host::nets::Net::new(
        depthling_host::nets::preset("demo-student", 1.0).unwrap(),
        &candle_core::Device::Cpu,
        0,
    )
    .unwrap()
    .save(&ckpt, &[("size", "64x48".into())])
    .unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "run".into(),
                "--model".into(),
                model.display().to_string(),
                "--input".into(),
                big.display().to_string(),
                "--out".into(),
                out.display().to_string(),
            ],
            "the model takes 32×24",
        ),
        (
            vec![
                "eval".into(),
                "--pred".into(),
                "/nonexistent/p".into(),
                "--gt".into(),
                "/nonexistent/g".into(),
            ],
            "not found",
        ),
        (
            vec![
                "eval".into(),
                "--model".into(),
                model.display().to_string(),
                "--data".into(),
                "/nonexistent/ds".into(),
            ],
            "dataset not found",
        ),
        (
            vec![
                "simulate".into(),
                "--domain".into(),
                "mars".into(),
                "--count".into(),
                "1".into(),
                "--out".into(),
                out.display().to_string(),
            ],
            "unknown domain",
        ),
        (
            vec![
                "simulate".into(),
                "--domain".into(),
                "indoor".into(),
                "--count".into(),
                "1".into(),
                "--size".into(),
                "0x5".into(),
                "--out".into(),
                out.display().to_string(),
            ],
            "size",
        ),
        (
            vec!["profile".into(), "--arch".into(), "nope".into()],
            "unknown architecture",
        ),
        (
            vec![
                "train-teacher".into(),
                "--data".into(),
                "/nonexistent/ds".into(),
                "--schedule".into(),
                "linear".into(),
                "--out".into(),
                out.display().to_string(),
            ],
            "unknown learning-rate schedule",
        ),
        (
            vec![
                "train-teacher".into(),
                "--data".into(),
                "/nonexistent/ds".into(),
                "--coarse".into(),
                "1.5".into(),
                "--out".into(),
                out.display().to_string(),
            ],
            "is not a share of the steps",
        ),
        (
            // a size the layer list cannot take: say which sizes it can
            vec![
                "export".into(),
                "--model".into(),
                ckpt.display().to_string(),
                "--format".into(),
                "onnx".into(),
                "--size".into(),
                "65x47".into(),
                "--out".into(),
                out.display().to_string(),
            ],
            "multiples of 8 work, e.g. 64×48",
        ),
        (
            // a .dlm where a checkpoint is needed, and the other way round
            vec![
                "distill".into(),
                "--method".into(),
                "kd".into(),
                "--teacher".into(),
                model.display().to_string(),
                "--images".into(),
                dir.path().display().to_string(),
                "--out".into(),
                out.display().to_string(),
            ],
            "is an int8 .dlm model",
        ),
        (
            vec![
                "profile".into(),
                "--model".into(),
                ckpt.display().to_string(),
            ],
            "is a checkpoint, not a .dlm",
        ),
        (
            vec![
                "distill".into(),
                "--method".into(),
                "adu".into(),
                "--teacher".into(),
                ckpt.display().to_string(),
                "--images".into(),
                dir.path().display().to_string(),
                "--focal-gamma=-1".into(),
                "--out".into(),
                out.display().to_string(),
            ],
            "--focal-gamma must be a non-negative number",
        ),
        (vec!["frobnicate".into()], "unrecognized subcommand"),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = depthling(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(needle),
            "{args:?}: message {:?} lacks {needle:?}",
            stderr(&o)
        );
        assert!(!out.exists(), "{args:?} wrote output");
    }
    // an 8-bit depth map in a ground-truth folder
    let (pd, gd) = (dir.path().join("p"), dir.path().join("g"));
    std::fs::create_dir_all(&pd).unwrap();
    std::fs::create_dir_all(&gd).unwrap();
    image::GrayImage::new(8, 8).save(gd.join("a.png")).unwrap();
    write_depth_png(&pd.join("a.png"), 8, 8, &[1000; 64]);
    let o = depthling(&[
        "eval",
        "--pred",
        pd.to_str().unwrap(),
        "--gt",
        gd.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("a.png") && stderr(&o).contains("16-bit"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn experiment_lw_quick_runs_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lw");
    let r = json(&depthling(&[
        "experiment",
        "--preset",
        "lw",
        "--quick",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]));
    let names = row_names(&r);
    assert_eq!(
        names,
        [
            "teacher",
            "student_no_kd",
            "kd_X",
            "kd_U",
            "kd_XU",
            "kd_XU_labeled"
        ]
    );
    // X = 24 labeled, U = 48 auxiliary images in the quick budget
    let images: Vec<u64> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["images"].as_u64().unwrap())
        .collect();
    assert_eq!(images, [24, 24, 24, 48, 72, 72]);
    assert_eq!(r["claims"].as_array().unwrap().len(), 3);
    assert_eq!(
        r["claims"][2]["holds"], true,
        "student ≤ 10 % of the teacher"
    );
    assert!(out.join("results.md").exists() && out.join("report/index.html").exists());
}

#[test]
fn experiment_quick_runs_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ddd");
    let o = depthling(&[
        "experiment",
        "--preset",
        "ddd",
        "--quick",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json(&o), r, "--json prints what results.json holds");
    let names = row_names(&r);
    assert_eq!(
        names,
        [
            "teacher",
            "student_gt",
            "kd",
            "ddd_mix",
            "ddd_transform",
            "ddd",
            "kd_1of6",
            "ddd_1of6"
        ]
    );
    for row in r["rows"].as_array().unwrap() {
        let rmse = row["rmse"].as_f64().unwrap();
        assert!(rmse.is_finite() && rmse > 0.0, "{row}");
        assert!(row["params"].as_u64().unwrap() > 0);
    }
    // a sixth of the OOD images for the 1/6 rows
    assert_eq!(r["rows"][6]["images"], 8);
    assert_eq!(r["claims"].as_array().unwrap().len(), 4);
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(
        md.contains("| ddd_1of6 |") && md.contains("## Claims"),
        "{md}"
    );
    // the HTML report: every row in the table, each claim, and the PNGs it shows
    let html = std::fs::read_to_string(out.join("report/index.html")).unwrap();
    for name in ["ddd_1of6", "student_gt", "Claims"] {
        assert!(html.contains(name), "{name} missing from the report");
    }
    for png in ["samples.png", "metrics.png", "loss.png"] {
        assert!(html.contains(png), "{png} not shown");
        let img = image::open(out.join("report").join(png)).unwrap();
        assert!(img.width() > 0, "{png}");
    }
    // --resume: every row is loaded from OUT/rows (trained weights, losses, seconds) and
    // evaluated again, with the same numbers; a row whose file is gone is trained again
    let modified = |row: &str| {
        std::fs::metadata(out.join(format!("rows/{row}.safetensors")))
            .and_then(|m| m.modified())
            .unwrap()
    };
    let before = modified("ddd");
    std::fs::remove_file(out.join("rows/kd_1of6.safetensors")).unwrap();
    // the teacher's row file gone but its in-row checkpoint kept: training resumes from the
    // checkpoint (here at its last step) instead of starting over
    let ckpt: Vec<_> = std::fs::read_dir(out.join("rows"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .filter(|n| n.starts_with("teacher.") && n.ends_with(".ckpt.safetensors"))
        .collect();
    assert_eq!(ckpt.len(), 1, "{ckpt:?}");
    std::fs::remove_file(out.join("rows/teacher.safetensors")).unwrap();
    let o = depthling(&[
        "experiment",
        "--preset",
        "ddd",
        "--quick",
        "--resume",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let again = json(&o);
    // resumed rows are read, not written again
    assert_eq!(modified("ddd"), before, "the ddd row was trained again");
    assert!(
        again["wall_seconds"].as_f64().unwrap() < r["wall_seconds"].as_f64().unwrap(),
        "resuming took as long as the first run"
    );
    for (a, b) in r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .zip(again["rows"].as_array().unwrap())
    {
        assert_eq!(a["name"], b["name"]);
        assert_eq!(
            a["rmse"], b["rmse"],
            "{} resumed with other numbers",
            a["name"]
        );
        assert_eq!(a["delta1"], b["delta1"]);
    }
    assert!(out.join("rows/kd_1of6.safetensors").exists());
    assert!(out.join("rows/teacher.safetensors").exists());
    let o = depthling(&[
        "experiment",
        "--preset",
        "nope",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
}

/// ADU end to end: a stereo teacher trained on stereo pairs, a monocular student distilled from
/// it with ground truth on the labeled pairs, and the refusals that name the problem.
#[test]
fn distill_adu_from_a_stereo_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    for (out, seed, stereo) in [("x", "1", true), ("u", "2", true), ("mono", "3", false)] {
        let mut args = vec![
            "simulate", "--domain", "outdoor", "--count", "8", "--size", "32x32", "--seed", seed,
        ];
        if stereo {
            args.push("--stereo");
        }
        let target = p(out);
        args.extend(["--out", &target]);
        let o = depthling(&args);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let t = json(&depthling(&[
        "train-teacher",
        "--arch",
        "demo-teacher",
        "--stereo",
        "--data",
        &p("x"),
        "--epochs",
        "1",
        "--out",
        &p("stereo.safetensors"),
        "--json",
    ]));
    assert_eq!(t["arch"], "demo-teacher-stereo", "{t}");
    let adu = |out: &str, extra: &[&str]| {
        let (teacher, x, u, out) = (p("stereo.safetensors"), p("x"), p("u"), p(out));
        let mut args = vec![
            "distill",
            "--method",
            "adu",
            "--teacher",
            &teacher,
            "--labeled",
            &x,
            "--images",
            &u,
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--out",
            &out,
            "--json",
        ];
        args.extend(extra);
        depthling(&args)
    };
    let r = json(&adu("s.safetensors", &[]));
    assert_eq!(r["images"], 16, "{r}");
    assert_eq!(r["arch"], "demo-student", "{r}");
    assert!(r["loss_last"].as_f64().unwrap().is_finite(), "{r}");
    // the student is monocular: it profiles and quantizes like any other
    let (net, meta) =
        depthling_host::nets::Net::load(Path::new(&p("s.safetensors")), &candle_core::Device::Cpu)
            .unwrap();
    assert_eq!(net.net.spec().input_channels, 3);
    assert_eq!(meta["depthling.method"], "adu");
    // the switches change the run
    let response = json(&adu("r.safetensors", &["--no-feature"]));
    assert_ne!(response["loss_first"], r["loss_first"], "{response} vs {r}");
    // a stereo teacher needs right views
    let o = depthling(&[
        "distill",
        "--method",
        "adu",
        "--teacher",
        &p("stereo.safetensors"),
        "--labeled",
        &p("mono"),
        "--out",
        &p("never.safetensors"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("right views"), "{}", stderr(&o));
    // plain KD cannot feed a stereo teacher the student's images
    let o = depthling(&[
        "distill",
        "--method",
        "kd",
        "--teacher",
        &p("stereo.safetensors"),
        "--images",
        &p("u"),
        "--out",
        &p("never.safetensors"),
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("adu method"), "{}", stderr(&o));
    assert!(!dir.path().join("never.safetensors").exists());
}

#[test]
fn experiment_adu_quick_runs_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adu");
    let r = json(&depthling(&[
        "experiment",
        "--preset",
        "adu",
        "--quick",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]));
    let names = row_names(&r);
    assert_eq!(
        names,
        [
            "stereo_teacher",
            "mono_teacher",
            "student_no_kd",
            "kd_mono",
            "adu_response",
            "adu_feature",
            "adu"
        ]
    );
    for row in r["rows"].as_array().unwrap() {
        let rmse = row["rmse"].as_f64().unwrap();
        assert!(rmse.is_finite() && rmse > 0.0, "{row}");
    }
    // the stereo teacher reads six channels: a few more first-layer weights than the mono one
    let params = |i: usize| r["rows"][i]["params"].as_u64().unwrap();
    assert!(params(0) > params(1), "{r}");
    assert_eq!(r["claims"].as_array().unwrap().len(), 2);
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(
        md.contains("KITTI protocol") && md.contains("| adu |"),
        "{md}"
    );
    assert!(out.join("report/index.html").exists());
}

/// Unlabeled images need no fake depth: a plain folder of PNGs (here a dataset's `rgb/`) is what
/// `distill --images` and `quantize --calib` take; commands that need labels refuse it by name.
#[test]
fn plain_image_folders_are_unlabeled_data() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let o = depthling(&[
        "simulate",
        "--domain",
        "ood",
        "--count",
        "6",
        "--size",
        "32x32",
        "--seed",
        "3",
        "--out",
        &p("ood"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    depthling_host::nets::Net::new(
        depthling_host::nets::preset("demo-teacher", 0.25).unwrap(),
        &candle_core::Device::Cpu,
        0,
    )
    .unwrap()
    .save(&dir.path().join("t.safetensors"), &[])
    .unwrap();
    let images = p("ood/rgb");
    let r = json(&depthling(&[
        "distill",
        "--method",
        "kd",
        "--teacher",
        &p("t.safetensors"),
        "--images",
        &images,
        "--arch",
        "demo-student",
        "--width",
        "0.5",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--out",
        &p("s.safetensors"),
        "--json",
    ]));
    assert_eq!(r["images"], 6);
    assert!(r["loss_last"].as_f64().unwrap().is_finite());
    let q = json(&depthling(&[
        "quantize",
        "--model",
        &p("s.safetensors"),
        "--calib",
        &images,
        "--out",
        &p("s.dlm"),
        "--json",
    ]));
    assert!(q["arena_bytes"].as_u64().unwrap() > 0);
    // DDD's mixing needs instance masks, which plain images do not have
    let o = depthling(&[
        "distill",
        "--method",
        "ddd",
        "--teacher",
        &p("t.safetensors"),
        "--images",
        &images,
        "--out",
        &p("never.safetensors"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("instance masks"), "{}", stderr(&o));
    for args in [
        vec![
            "train-teacher",
            "--data",
            &images,
            "--out",
            &p("never.safetensors"),
        ],
        vec!["eval", "--model", &p("s.dlm"), "--data", &images],
    ] {
        let o = depthling(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("rgb") && stderr(&o).contains("without depth"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    assert!(!dir.path().join("never.safetensors").exists());
}
