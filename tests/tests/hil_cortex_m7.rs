//! Hardware-in-the-loop: the Cortex-M7 firmware (`boards/cortex-m7`) runs the demo student on
//! QEMU's mps2-an500 and must print the same depth checksum as the host's int8 engine, bit for
//! bit. Skips with a message when QEMU or the target is missing; fails instead when
//! `DEPTHLING_REQUIRE_HIL=1` (as `.ci/run` sets).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::process::Command;

use depthling_tests::hil::{have, have_target, hex_field, root};

fn skip_or_fail(why: &str) {
    depthling_tests::hil::skip_or_fail("Cortex-M7 HIL test", why);
}

#[test]
fn cortex_m7_firmware_matches_the_host_bit_for_bit() {
    if !have("qemu-system-arm", "--version") {
        return skip_or_fail("qemu-system-arm not found (Debian package qemu-system-arm)");
    }
    if !have_target("thumbv7em-none-eabihf") {
        return skip_or_fail("rust target thumbv7em-none-eabihf not installed (rustup target add thumbv7em-none-eabihf)");
    }
    // the demo student at a different size from the committed assets (so the embedding path is
    // exercised), and the micro student: depthwise convolutions, squeeze-excitation and bilinear
    // upsampling through the Cortex-M DSP kernels
    for (arch, w, h) in [("demo-student", 48usize, 32usize), ("micro", 64, 32)] {
        let dir = tempfile::tempdir().unwrap();
        let (model, frame) = depthling_tests::student_and_frame(arch, w, h).unwrap();
        let (model_path, frame_path) = (dir.path().join("model.dlm"), dir.path().join("frame.rgb"));
        std::fs::write(&model_path, &model).unwrap();
        std::fs::write(&frame_path, &frame).unwrap();
        let expected = depthling_tests::host_checksum(&model, &frame).unwrap();

        let board = root().join("boards/cortex-m7");
        let target_dir = root().join("target/cortex-m7");
        let build = Command::new(env!("CARGO"))
            .args(["build", "--release"])
            .current_dir(&board)
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("DEPTHLING_MODEL", &model_path)
            .env("DEPTHLING_FRAME", &frame_path)
            .output()
            .expect("cargo runs");
        assert!(
            build.status.success(),
            "firmware build failed:\n{}",
            String::from_utf8_lossy(&build.stderr)
        );

        let firmware = target_dir.join("thumbv7em-none-eabihf/release/depthling-cortex-m7");
        let run = Command::new("timeout")
            .args([
                "300",
                "qemu-system-arm",
                "-cpu",
                "cortex-m7",
                "-machine",
                "mps2-an500",
                "-nographic",
            ])
            .args([
                "-semihosting-config",
                "enable=on,target=native",
                "-icount",
                "shift=0",
                "-kernel",
            ])
            .arg(&firmware)
            .output()
            .expect("qemu runs");
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "firmware failed (status {:?}):\n{stdout}\n{}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(stdout.contains("Test OK"), "no Test OK marker:\n{stdout}");
        let line = stdout
            .lines()
            .find(|l| l.starts_with("depthling: checksum="))
            .expect("checksum line");
        eprintln!("{arch} {w}x{h}: {line}");
        let got = hex_field(line, "checksum").expect("checksum value");
        assert_eq!(
            got, expected,
            "{arch}: Cortex-M7 checksum {got:#018x} != host {expected:#018x}"
        );
    }
}
