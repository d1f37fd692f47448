//! Hardware-in-the-loop for Linux ARM boards (Jetson, Raspberry Pi): `depthling-runner`,
//! cross-compiled for aarch64, runs under `qemu-aarch64 -cpu cortex-a72` (NEON without the
//! dot-product extension), `-cpu cortex-a76` (with it) and `-cpu max` (with the int8 matrix
//! multiply extension too) and must print the same depth checksums as
//! the host's int8 engine, bit for bit; it also counts the instructions of one inference on each
//! core with a QEMU plugin built here (`tests/qemu/insn.c`). Skips with a message when the cross
//! toolchain, the target or QEMU is missing; fails instead when `DEPTHLING_REQUIRE_HIL=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::process::Command;

use depthling_tests::hil::{have, have_target, hex_field, root};

fn skip_or_fail(why: &str) {
    depthling_tests::hil::skip_or_fail("aarch64 HIL test", why);
}

#[test]
fn aarch64_runner_matches_the_host_bit_for_bit() {
    for (cmd, package) in [
        ("qemu-aarch64", "qemu-user"),
        ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    ] {
        if !have(cmd, "--version") {
            return skip_or_fail(&format!("{cmd} not found (Debian package {package})"));
        }
    }
    if !have_target("aarch64-unknown-linux-gnu") {
        return skip_or_fail("rust target aarch64-unknown-linux-gnu not installed");
    }
    let target_dir = root().join("target/aarch64");
    let build = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "depthling-runner",
            "--target",
            "aarch64-unknown-linux-gnu",
        ])
        .current_dir(root())
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .expect("cargo runs");
    assert!(
        build.status.success(),
        "cross build failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (64usize, 32usize);
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let mut samples = Vec::new();
    for i in 0..3u64 {
        let s = depthling_host::sim::render_sample(
            depthling_host::sim::Domain::Indoor,
            w,
            h,
            40 + i,
            i,
            false,
        );
        image::RgbImage::from_raw(w as u32, h as u32, s.rgb.clone())
            .unwrap()
            .save(frames.join(format!("{i:03}.png")))
            .unwrap();
        samples.push(s);
    }
    let runner = target_dir.join("aarch64-unknown-linux-gnu/release/depthling-runner");
    // the demo student (dense convolutions) and `micro` (depthwise, squeeze-excitation,
    // bilinear upsampling), each on a core without the dot-product extension (Cortex-A72:
    // Raspberry Pi 4, the SMULL kernels), on one with it (Cortex-A76: Raspberry Pi 5, SDOT, as
    // the Cortex-A78 of a Jetson Orin) and on QEMU's `max` (SMMLA, as Neoverse V1/N2)
    for arch in ["demo-student", "micro"] {
        let (model, _) = depthling_tests::student_and_frame(arch, w, h).unwrap();
        let model_path = dir.path().join(format!("{arch}.dlm"));
        std::fs::write(&model_path, &model).unwrap();
        let expected: Vec<(String, u64)> = samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    format!("{i:03}.png"),
                    depthling_tests::host_checksum(&model, &s.rgb).unwrap(),
                )
            })
            .collect();
        // the last run splits large convolutions over three threads (NEON bands)
        for (cpu, threads) in [
            ("cortex-a72", "1"),
            ("cortex-a76", "1"),
            ("max", "1"),
            ("max", "3"),
        ] {
            let run = on_qemu(
                cpu,
                &runner,
                &[
                    "--model".as_ref(),
                    model_path.as_ref(),
                    "--input".as_ref(),
                    frames.as_ref(),
                    "--threads".as_ref(),
                    threads.as_ref(),
                ],
            );
            let stdout = String::from_utf8_lossy(&run.stdout);
            assert!(
                run.status.success(),
                "{arch} on {cpu} × {threads}: runner failed:\n{stdout}\n{}",
                String::from_utf8_lossy(&run.stderr)
            );
            for (name, want) in &expected {
                let line = stdout
                    .lines()
                    .find(|l| l.starts_with("frame ") && l.contains(name.as_str()))
                    .unwrap_or_else(|| panic!("{arch} on {cpu}: no line for {name}:\n{stdout}"));
                let got = hex_field(line, "checksum").expect("checksum value");
                assert_eq!(
                    got, *want,
                    "{arch} on {cpu}, {name}: aarch64 {got:#018x} != host {want:#018x}"
                );
            }
            let summary = stdout.lines().last().unwrap_or("");
            eprintln!("{arch} on {cpu} × {threads}: {summary}");
            // the NEON table the engine chose: SDOT and SMMLA only where the CPU has them
            let want = match cpu {
                "max" => "aarch64-neon-i8mm",
                "cortex-a76" => "aarch64-neon-dotprod",
                _ => "aarch64-neon",
            };
            assert!(
                summary
                    .split_whitespace()
                    .any(|f| f == format!("kernels={want}")),
                "{arch} on {cpu}: expected kernels={want}: {summary}"
            );
        }
    }

    // Instructions per inference on each core, from the counting plugin (tests/qemu/insn.c):
    // one frame run 1, 2 and 3 times, so that loading the model and decoding the PNG cancel;
    // the emulation is deterministic, so every inference costs the same
    let plugin = match depthling_tests::hil::qemu_insn_plugin() {
        Ok(p) => p,
        Err(why) => return skip_or_fail(&why),
    };
    let frame = frames.join("000.png");
    for arch in ["demo-student", "micro"] {
        let model_path = dir.path().join(format!("{arch}.dlm"));
        let macs = depthling_model::Model::from_bytes(&std::fs::read(&model_path).unwrap())
            .unwrap()
            .macs();
        let mut per_core = Vec::new();
        for cpu in ["cortex-a72", "cortex-a76", "max"] {
            let counts: Vec<u64> = (1..=3)
                .map(|repeat: u32| {
                    let run = Command::new("timeout")
                        .args(["300", "qemu-aarch64", "-cpu", cpu])
                        .args(["-L", "/usr/aarch64-linux-gnu", "-plugin"])
                        .arg(&plugin)
                        .arg(&runner)
                        .args(["--model".as_ref(), model_path.as_os_str()])
                        .args(["--input".as_ref(), frame.as_os_str()])
                        .args(["--repeat", &repeat.to_string()])
                        .output()
                        .expect("qemu runs");
                    assert!(
                        run.status.success(),
                        "{arch} on {cpu} with the plugin failed"
                    );
                    depthling_tests::hil::qemu_instructions(&run.stderr).unwrap_or_else(|| {
                        panic!(
                            "{arch} on {cpu}: no count from the plugin:\n{}",
                            String::from_utf8_lossy(&run.stderr)
                        )
                    })
                })
                .collect();
            let (first, second) = (counts[1] - counts[0], counts[2] - counts[1]);
            assert!(
                first > 0 && first.abs_diff(second) * 1000 <= first,
                "{arch} on {cpu}: inferences of {first} and {second} instructions"
            );
            let per = (counts[2] - counts[0]) / 2;
            eprintln!(
                "{arch} on {cpu}: {per} instructions per inference at {w}x{h} ({:.3} per MAC)",
                per as f64 / macs as f64
            );
            per_core.push(per);
        }
        // SDOT and SMMLA do in one instruction what SMULL/SADALP do in several
        assert!(
            per_core[0] > per_core[1] && per_core[0] > per_core[2],
            "{arch}: instructions per inference on a72/a76/max {per_core:?}"
        );
    }

    // The tract path: the f32 ONNX export on aarch64 against candle on the host (f32 sums run in
    // another order there, so within tolerance: 1 mm in the millimetre PNGs, ≈ 3e-4 relative).
    let net = depthling_host::nets::Net::new(
        depthling_host::nets::preset("demo-student", 1.0).unwrap(),
        &candle_core::Device::Cpu,
        5,
    )
    .unwrap();
    let onnx_path = dir.path().join("model.onnx");
    std::fs::write(
        &onnx_path,
        depthling_host::onnx::export(&net.net, w, h).unwrap(),
    )
    .unwrap();
    let out = dir.path().join("tract-out");
    let run = on_qemu(
        "cortex-a72",
        &runner,
        &[
            "--backend".as_ref(),
            "tract".as_ref(),
            "--model".as_ref(),
            onnx_path.as_ref(),
            "--input".as_ref(),
            frames.as_ref(),
            "--out".as_ref(),
            out.as_ref(),
        ],
    );
    assert!(
        run.status.success(),
        "runner (tract) failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let reference =
        depthling_host::train::predict(&net.net, &samples, &candle_core::Device::Cpu).unwrap();
    for (i, reference) in reference.iter().enumerate() {
        let name = format!("{i:03}.png");
        let got = image::open(out.join(&name)).unwrap().into_luma16();
        assert_eq!(got.as_raw().len(), reference.len(), "{name}: depth size");
        let worst = got
            .as_raw()
            .iter()
            .zip(reference)
            .map(|(&mm, &r)| (mm as f32 - (r * 1000.0).round().clamp(0.0, 65535.0)).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1.0,
            "{name}: tract on aarch64 is {worst} mm off candle"
        );
    }
    eprintln!(
        "{}",
        String::from_utf8_lossy(&run.stdout)
            .lines()
            .last()
            .unwrap_or("")
    );
}

/// Runs `runner args` under `qemu-aarch64 -cpu CPU` (at most 300 s).
fn on_qemu(cpu: &str, runner: &std::path::Path, args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new("timeout")
        .args([
            "300",
            "qemu-aarch64",
            "-cpu",
            cpu,
            "-L",
            "/usr/aarch64-linux-gnu",
        ])
        .arg(runner)
        .args(args)
        .output()
        .expect("qemu runs")
}
