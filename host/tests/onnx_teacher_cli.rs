//! `--teacher FILE.onnx` from the command line: every method takes one, `eval` and `profile`
//! read one, and each refusal names the file and the problem, writing nothing.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

mod common;
use common::{depthling, json, stderr};

use prost::Message;
use std::path::PathBuf;

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/teachers")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn onnx_teachers_drive_every_method_and_refusals_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    for (domain, name, stereo) in [("ood", "ood", false), ("outdoor", "outdoor", true)] {
        let mut args = vec![
            "simulate", "--domain", domain, "--count", "8", "--size", "64x48", "--out",
        ];
        let out = p(name);
        args.push(&out);
        if stereo {
            args.push("--stereo");
        }
        assert!(depthling(&args).status.success());
    }
    let resnet = fixture("resnet_mff.onnx");
    let base = |method: &str, teacher: &str, out: &str| -> Vec<String> {
        [
            "distill",
            "--method",
            method,
            "--teacher",
            teacher,
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--out",
            out,
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |args: &[String]| depthling(&args.iter().map(String::as_str).collect::<Vec<_>>());
    for method in ["kd", "ddd"] {
        let mut a = base(method, &resnet, &p(&format!("{method}.safetensors")));
        a.extend(["--images".into(), p("ood")]);
        let r = json(&run(&a));
        assert_eq!(r["images"], 8, "{method}");
        assert!(r["loss_last"].as_f64().unwrap().is_finite(), "{method}");
    }
    for method in ["aux", "adu"] {
        let mut a = base(method, &resnet, &p(&format!("{method}.safetensors")));
        a.extend(["--labeled".into(), p("outdoor")]);
        let r = json(&run(&a));
        assert!(r["loss_last"].as_f64().unwrap().is_finite(), "{method}");
    }
    // ADU with named taps, as `profile` lists them
    let listing = json(&depthling(&[
        "profile", "--model", &resnet, "--size", "64x48", "--json",
    ]));
    assert_eq!(listing["batch_norm_layers"], 11);
    let tensors = listing["tensors"].as_array().unwrap();
    assert!(tensors.iter().any(|t| t["batch_norm_input"] == true));
    let taps: Vec<&str> = listing["default_taps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(taps.len() >= 3, "{taps:?}");
    let mut a = base("adu", &resnet, &p("adu-taps.safetensors"));
    a.extend([
        "--labeled".into(),
        p("outdoor"),
        "--teacher-taps".into(),
        taps[..2].join(","),
    ]);
    json(&run(&a));
    // the teacher itself run on images, and evaluated on labeled ones
    let r = json(&depthling(&[
        "run",
        "--model",
        &resnet,
        "--backend",
        "teacher",
        "--input",
        &p("ood/rgb"),
        "--out",
        &p("teacher-depth"),
        "--json",
    ]));
    assert_eq!(r["images"], 8);
    assert!(dir.path().join("teacher-depth/000007.png").exists());
    let e = json(&depthling(&[
        "eval",
        "--model",
        &resnet,
        "--data",
        &p("outdoor"),
        "--json",
    ]));
    assert!(e["rmse"].as_f64().unwrap().is_finite());

    // refusals: exit 2, the file and the problem named, nothing written
    let mut unsupported = tract_onnx::pb::ModelProto::decode(
        std::fs::read(fixture("resnet_mff.onnx"))
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    let node = unsupported
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.op_type == "Softplus")
        .unwrap();
    node.op_type = "Einsum".into();
    let node_name = node.name.clone();
    let bad_op = p("einsum.onnx");
    std::fs::write(&bad_op, unsupported.encode_to_vec()).unwrap();
    let never = p("never.safetensors");
    let with_images = |mut a: Vec<String>, extra: &[&str]| {
        a.extend(["--images".into(), p("ood")]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            with_images(base("kd", &bad_op, &never), &[]),
            vec!["einsum.onnx", &node_name, "Einsum", "opset 17"],
        ),
        (
            with_images(base("ddd", &fixture("resnet_folded.onnx"), &never), &[]),
            vec![
                "resnet_folded.onnx",
                "no BatchNormalization nodes",
                "TrainingMode.PRESERVE",
            ],
        ),
        (
            with_images(base("ddd", &fixture("tiny_vit.onnx"), &never), &[]),
            vec!["tiny_vit.onnx", "no BatchNormalization nodes"],
        ),
        (
            with_images(base("kd", &resnet, &never), &["--teacher-taps", "nope"]),
            vec!["resnet_mff.onnx", "nope"],
        ),
        (
            with_images(
                base("kd", &resnet, &never),
                &["--teacher-mean", "0.5,0.5,0.5"],
            ),
            vec!["--teacher-std"],
        ),
    ];
    for (args, needles) in cases {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        for needle in needles {
            assert!(
                stderr(&o).contains(needle),
                "{args:?}: {:?} lacks {needle:?}",
                stderr(&o)
            );
        }
        assert!(
            !dir.path().join("never.safetensors").exists(),
            "{args:?} wrote output"
        );
    }
    // mixing alone works with a teacher without BatchNorm (a transformer)
    let a = with_images(
        base("ddd", &fixture("tiny_vit.onnx"), &p("vit.safetensors")),
        &["--no-transform"],
    );
    json(&run(&a));
}

/// `experiment --preset ddd --teacher T.onnx`: every distillation row from the given teacher
/// (here a 64×48 export on the quick run's 32×32 images: resized for it), the teacher row its
/// evaluation; `lw` takes it for the X teacher's rows, and `adu` refuses an RGB teacher (it
/// needs a stereo one).
#[test]
fn experiment_ddd_takes_a_given_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ddd");
    let r = json(&depthling(&[
        "experiment",
        "--preset",
        "ddd",
        "--quick",
        "--teacher",
        &fixture("resnet_mff.onnx"),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]));
    let rows: Vec<&str> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        rows,
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
    assert!(r["command"].as_str().unwrap().contains("--teacher"));
    assert!(r["rows"][0]["setting"]
        .as_str()
        .unwrap()
        .contains("resnet_mff.onnx"));
    assert!(out.join("results.md").exists());
    // lw: the given teacher takes the X teacher's rows; the X∪U′ row keeps its own teacher
    let lw = json(&depthling(&[
        "experiment",
        "--preset",
        "lw",
        "--quick",
        "--teacher",
        &fixture("resnet_mff.onnx"),
        "--out",
        dir.path().join("lw").to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(lw["rows"][0]["name"], "teacher");
    assert!(lw["rows"][0]["setting"]
        .as_str()
        .unwrap()
        .contains("resnet_mff.onnx"));
    assert_eq!(lw["rows"].as_array().unwrap().len(), 6, "{lw}");
    // adu needs a stereo (6-channel) teacher: an RGB one is refused by name, nothing written
    let o = depthling(&[
        "experiment",
        "--preset",
        "adu",
        "--quick",
        "--teacher",
        &fixture("resnet_mff.onnx"),
        "--out",
        dir.path().join("adu").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("resnet_mff.onnx") && stderr(&o).contains("6"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.path().join("adu").join("results.json").exists());
}
