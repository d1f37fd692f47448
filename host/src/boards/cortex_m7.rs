//! The Cortex-M7 firmware (`boards/cortex-m7`) built around a model and a frame and run on QEMU's
//! mps2-an500 with `-icount shift=0`, so that SysTick counts instructions deterministically: the
//! depth checksum (to compare with the host's int8 engine bit for bit) and the instructions of
//! one inference. Used by `depthling demo` (frames per second at a board's clock) and by the
//! hardware-in-the-loop test.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// What the firmware printed for one inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub checksum: u64,
    pub instructions: u64,
    pub macs: u64,
}

/// Why the firmware cannot run on this machine (a tool is missing), as opposed to a failure of
/// the firmware itself (an [`Error`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable(pub String);

/// The firmware's source: `boards/cortex-m7` of the checkout this binary was built from.
pub fn firmware_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("boards")
        .join("cortex-m7")
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

/// Whether the tools are there: QEMU's Arm system emulator, the firmware's source, and the
/// `thumbv7em-none-eabihf` target.
pub fn available() -> std::result::Result<(), Unavailable> {
    if !succeeds(Command::new("qemu-system-arm").arg("--version")) {
        return Err(Unavailable(
            "qemu-system-arm not found (Debian package qemu-system-arm)".into(),
        ));
    }
    if !firmware_dir().join("Cargo.toml").exists() {
        return Err(Unavailable(format!(
            "the firmware source {} is not there (run from a checkout)",
            firmware_dir().display()
        )));
    }
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == "thumbv7em-none-eabihf")
        });
    if !installed {
        return Err(Unavailable(
            "rust target thumbv7em-none-eabihf not installed (rustup target add thumbv7em-none-eabihf)"
                .into(),
        ));
    }
    Ok(())
}

/// The value of `key=…` in a line (decimal, or hexadecimal after `0x`).
fn field(line: &str, key: &str) -> Option<u64> {
    let pattern = format!("{key}=");
    let start = line.find(&pattern)? + pattern.len();
    let value: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    }
}

/// Builds the firmware with `model` (a `.dlm`) and `frame` (raw RGB of the model's input size)
/// embedded, into `target_dir`, and runs it once under QEMU (at most `timeout_s` seconds).
/// `Ok(Err(_))` when a tool is missing; `Err(_)` when the build or the run fails.
pub fn run(
    model: &Path,
    frame: &Path,
    target_dir: &Path,
    timeout_s: u32,
) -> Result<std::result::Result<Run, Unavailable>> {
    if let Err(why) = available() {
        return Ok(Err(why));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = Command::new(&cargo)
        .args(["build", "--release", "--quiet"])
        .current_dir(firmware_dir())
        .env("CARGO_TARGET_DIR", target_dir)
        .env("DEPTHLING_MODEL", model)
        .env("DEPTHLING_FRAME", frame)
        .output()
        .map_err(|e| Error::Runtime(format!("{cargo} does not run: {e}")))?;
    if !build.status.success() {
        return Err(Error::Runtime(format!(
            "the Cortex-M7 firmware does not build with {}:\n{}",
            model.display(),
            String::from_utf8_lossy(&build.stderr)
        )));
    }
    let firmware = target_dir.join("thumbv7em-none-eabihf/release/depthling-cortex-m7");
    let out = Command::new("timeout")
        .arg(timeout_s.to_string())
        .args([
            "qemu-system-arm",
            "-cpu",
            "cortex-m7",
            "-machine",
            "mps2-an500",
        ])
        .args([
            "-nographic",
            "-semihosting-config",
            "enable=on,target=native",
        ])
        .args(["-icount", "shift=0", "-kernel"])
        .arg(&firmware)
        .output()
        .map_err(|e| Error::Runtime(format!("qemu-system-arm does not run: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("depthling: checksum="));
    let parsed = line.and_then(|l| {
        Some(Run {
            checksum: field(l, "checksum")?,
            instructions: field(l, "instructions")?,
            macs: field(l, "macs")?,
        })
    });
    match parsed {
        Some(r) if out.status.success() && stdout.contains("Test OK") => Ok(Ok(r)),
        _ => Err(Error::Runtime(format!(
            "the Cortex-M7 firmware failed on QEMU with {} (status {:?}):\n{stdout}{}",
            model.display(),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_parse_decimal_and_hex() {
        let l = "depthling: checksum=0x00ab instructions=123 macs=45 arena=9";
        assert_eq!(field(l, "checksum"), Some(0xab));
        assert_eq!(field(l, "instructions"), Some(123));
        assert_eq!(field(l, "macs"), Some(45));
        assert_eq!(field(l, "flash"), None);
    }
}
