//! Hardware-in-the-loop: the Cortex-M7 firmware (`boards/cortex-m7`) runs the demo student on
//! QEMU's mps2-an500 and must print the same depth checksum as the host's int8 engine, bit for
//! bit. Skips with a message when QEMU or the target is missing; fails instead when
//! `DEPTHLING_REQUIRE_HIL=1` (as `.ci/run` sets).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use depthling_tests::hil::root;

fn skip_or_fail(why: &str) {
    depthling_tests::hil::skip_or_fail("Cortex-M7 HIL test", why);
}

#[test]
fn cortex_m7_firmware_matches_the_host_bit_for_bit() {
    use depthling_host::boards::cortex_m7;
    if let Err(why) = cortex_m7::available() {
        return skip_or_fail(&why.0);
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
        let target_dir = root().join("target/cortex-m7");
        let run = cortex_m7::run(&model_path, &frame_path, &target_dir, 300)
            .unwrap()
            .unwrap();
        eprintln!(
            "{arch} {w}x{h}: checksum={:#018x} instructions={} macs={}",
            run.checksum, run.instructions, run.macs
        );
        assert_eq!(
            run.checksum, expected,
            "{arch}: Cortex-M7 checksum {:#018x} != host {expected:#018x}",
            run.checksum
        );
        let m = depthling_model::Model::from_bytes(&model).unwrap();
        assert_eq!(run.macs, m.macs());
    }
}
