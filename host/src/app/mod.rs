//! The app layer: one file per `depthling` subcommand. Each takes a typed config (clap parses it
//! straight into the config's fields: choices are enums, sizes are [`Size`]) and returns a typed
//! report (`Serialize` for `--json`, `Display` for the terminal). The binary only parses, calls
//! and maps errors to exit codes; tests call these functions exactly as the binary does.
//!
//! Nothing below this layer imports it.

pub mod bench;
pub mod config;
pub mod demo;
pub mod distill;
pub mod eval;
pub mod experiment;
pub mod export;
pub mod profile;
pub mod quantize;
pub mod run;
pub mod simulate;
pub mod train;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::Device;

use crate::error::{Error, Result};

/// An image size `WxH` (1 to 4096 each way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub width: usize,
    pub height: usize,
}

impl Size {
    pub fn new(width: usize, height: usize) -> Size {
        Size { width, height }
    }
}

impl FromStr for Size {
    type Err = Error;

    fn from_str(s: &str) -> Result<Size> {
        let (width, height) = parse_size(s)?;
        Ok(Size { width, height })
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// Parses `WxH`.
pub fn parse_size(s: &str) -> Result<(usize, usize)> {
    let bad = || {
        Error::Usage(format!(
            "size must be WIDTHxHEIGHT with positive numbers, got {s:?}"
        ))
    };
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h): (usize, usize) = (
        w.trim().parse().map_err(|_| bad())?,
        h.trim().parse().map_err(|_| bad())?,
    );
    if w == 0 || h == 0 || w > 4096 || h > 4096 {
        return Err(bad());
    }
    Ok((w, h))
}

/// Where training runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compute {
    #[default]
    Cpu,
    /// GPU 0, in a build with `--features cuda`.
    Cuda,
}

impl FromStr for Compute {
    type Err = Error;

    fn from_str(s: &str) -> Result<Compute> {
        match s {
            "cpu" => Ok(Compute::Cpu),
            "cuda" => Ok(Compute::Cuda),
            other => Err(Error::Usage(format!(
                "unknown device {other:?}; known: cpu, cuda"
            ))),
        }
    }
}

impl Compute {
    /// The candle device.
    pub fn device(self) -> Result<Device> {
        match self {
            Compute::Cpu => Ok(Device::Cpu),
            Compute::Cuda => Device::new_cuda(0).map_err(|e| {
                Error::Usage(format!(
                    "--device cuda: {e} (build with `cargo build --release --features cuda` on a machine with CUDA)"
                ))
            }),
        }
    }
}

/// Where a run writing `out` keeps its checkpoint: `T.safetensors` → `T.ckpt.safetensors`.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.with_extension("ckpt.safetensors")
}

/// Prints training progress (step, loss, images per second, ETA) on stderr, unless quiet.
pub fn training_progress(
    quiet: bool,
    label: &str,
    steps: usize,
    batch_size: usize,
) -> impl FnMut(crate::train::StepInfo) {
    let mut bar = Some(crate::progress::Progress::new(quiet, label, steps, "steps"));
    let mut first_loss = None;
    move |s| {
        let Some(p) = bar.as_mut() else { return };
        first_loss.get_or_insert(s.loss);
        let ips = (p.done() + 1) as f64 * batch_size as f64 / p.elapsed().max(1e-9);
        p.advance(1, Some(format!("loss {:.4}, {ips:.0} img/s", s.loss)));
        if s.step + 1 >= steps {
            if let Some(p) = bar.take() {
                p.finish(&format!(
                    "{steps} steps, loss {:.4} → {:.4}, {ips:.0} img/s",
                    first_loss.unwrap_or(s.loss),
                    s.loss
                ));
            }
        }
    }
}

/// `clap` value parser for the types whose `FromStr` error is ours (so the message names the
/// known values).
pub(crate) fn parse_arg<T: FromStr<Err = Error>>(s: &str) -> std::result::Result<T, String> {
    s.parse::<T>().map_err(|e| e.to_string())
}

/// Formats a number of bytes, or `-` when there is none.
pub(crate) fn bytes_or_dash(v: Option<u64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v} bytes"))
}
