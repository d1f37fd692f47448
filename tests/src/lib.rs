//! depthling end-to-end and hardware-in-the-loop tests live in `tests/`; this library holds what
//! they share.

/// The demo student at `width × height` (seeded weights, calibrated on simulated OOD images) as
/// `.dlm` bytes, and one simulated indoor frame (raw RGB).
pub fn demo_student_and_frame(
    width: usize,
    height: usize,
) -> Result<(Vec<u8>, Vec<u8>), depthling_host::Error> {
    student_and_frame("demo-student", width, height)
}

/// A freshly quantized student of architecture `arch` (e.g. `micro`) and an indoor frame.
pub fn student_and_frame(
    arch: &str,
    width: usize,
    height: usize,
) -> Result<(Vec<u8>, Vec<u8>), depthling_host::Error> {
    use depthling_host::nets::{preset, Net};
    use depthling_host::quant::{quantize, Calibration, Provenance};
    use depthling_host::sim::{render_many, render_sample, Domain};
    let device = candle_core::Device::Cpu;
    let net = Net::new(preset(arch, 1.0)?, &device, 0)?;
    let calib = render_many(Domain::Ood, width, height, 3, 0, 8, false);
    let prov = Provenance {
        name: arch.into(),
        ..Default::default()
    };
    let model = quantize(&net.net, &calib, Calibration::MinMax, &prov, &device)?;
    let frame = render_sample(Domain::Indoor, width, height, 77, 0, false).rgb;
    Ok((model, frame))
}

/// The host int8 engine's checksum of `model` on `frame`: what every board must print.
pub fn host_checksum(model: &[u8], frame: &[u8]) -> Result<u64, Box<dyn std::error::Error>> {
    let m = depthling_model::Model::from_bytes(model)?;
    let mut arena = vec![0u8; depthling_device::Engine::arena_needed(&m)?];
    let mut e = depthling_device::Engine::new(&m, &mut arena)?;
    Ok(e.run(frame)?.checksum())
}

/// Hardware-in-the-loop helpers: skip with a message when a tool is missing, unless
/// `DEPTHLING_REQUIRE_HIL=1`, where a missing tool fails the test.
pub mod hil {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Skips (prints `SKIP: what: why`) or, with `DEPTHLING_REQUIRE_HIL=1`, panics.
    pub fn skip_or_fail(what: &str, why: &str) {
        if std::env::var("DEPTHLING_REQUIRE_HIL").as_deref() == Ok("1") {
            panic!("{what} cannot run: {why} (DEPTHLING_REQUIRE_HIL=1)");
        }
        eprintln!("SKIP: {what}: {why}");
    }

    /// The test venv's Python (`DEPTHLING_ORT_PYTHON`, made by `scripts/test.sh`; else
    /// `python3`) if it can run `import {modules}`; otherwise skips `what` (or fails, as
    /// [`skip_or_fail`]) and gives `None`.
    pub fn python_with(modules: &str, what: &str) -> Option<String> {
        let python = std::env::var("DEPTHLING_ORT_PYTHON").unwrap_or_else(|_| "python3".into());
        let usable = Command::new(&python)
            .args(["-c", &format!("import {modules}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if usable {
            return Some(python);
        }
        skip_or_fail(
            what,
            &format!("{python} cannot import {modules} (scripts/test.sh installs them in a virtual environment)"),
        );
        None
    }

    /// Whether `cmd arg` runs and succeeds.
    pub fn have(cmd: &str, arg: &str) -> bool {
        Command::new(cmd)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Whether rustup has the target installed.
    pub fn have_target(triple: &str) -> bool {
        Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l == triple)
            })
    }

    /// The repository root.
    pub fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// Builds the instruction-counting QEMU plugin (`tests/qemu/insn.c`) with the host's C
    /// compiler (`$CC`, else `cc`) into `target/qemu-plugin/libinsn.so` and returns its path;
    /// `Err(why)` where there is no compiler or it fails.
    pub fn qemu_insn_plugin() -> Result<PathBuf, String> {
        let src = root().join("tests/qemu/insn.c");
        let dir = root().join("target/qemu-plugin");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let out = dir.join("libinsn.so");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let built = Command::new(&cc)
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .output()
            .map_err(|e| format!("{cc} (a C compiler for the QEMU plugin) does not run: {e}"))?;
        if !built.status.success() {
            return Err(format!(
                "{cc} cannot build {}:\n{}",
                src.display(),
                String::from_utf8_lossy(&built.stderr)
            ));
        }
        Ok(out)
    }

    /// The guest instructions the plugin of [`qemu_insn_plugin`] printed on a run's stderr.
    pub fn qemu_instructions(stderr: &[u8]) -> Option<u64> {
        String::from_utf8_lossy(stderr)
            .lines()
            .find_map(|l| l.strip_prefix("qemu-insn: instructions="))
            .and_then(|n| n.trim().parse().ok())
    }

    /// The value of `key=0x…` in a line, as a number.
    pub fn hex_field(line: &str, key: &str) -> Option<u64> {
        let pattern = format!("{key}=0x");
        let start = line.find(&pattern)? + pattern.len();
        let hex: String = line[start..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect();
        u64::from_str_radix(&hex, 16).ok()
    }
}
