//! `depthling run`: depth for a PNG or a folder of PNGs, through the same runner as the Linux
//! boards' `depthling-runner`.

use std::path::PathBuf;
use std::time::Instant;

use depthling_device::runner::{Backend, Loaded, RunnerError};
use serde::Serialize;

use crate::data::png;
use crate::error::{Error, Result};
use crate::io::FileKind;

/// Settings of `depthling run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunConfig {
    /// A .dlm (int8 engine) or an ONNX export (tract).
    #[arg(long)]
    pub model: PathBuf,
    /// A PNG, or a folder of PNGs.
    #[arg(long)]
    pub input: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// int8 (a .dlm) or tract (an ONNX export, f32).
    #[arg(long, default_value = "int8")]
    pub backend: Backend,
    #[arg(skip)]
    pub quiet: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub images: usize,
    pub mean_ms: f64,
    pub backend: String,
    pub out: PathBuf,
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} images, {:.2} ms per frame ({}) → {}",
            self.images,
            self.mean_ms,
            self.backend,
            self.out.display()
        )
    }
}

/// `depthling run`: writes `NAME.png` (16-bit millimetres) and `NAME_color.png` per input.
/// `int8` runs a `.dlm` on the int8 engine, `tract` an ONNX export; every input is read and
/// checked before anything is written.
pub fn run(cfg: &RunConfig) -> Result<RunSummary> {
    let model_path = &cfg.model;
    let kind = FileKind::of_file(model_path)?;
    match (cfg.backend, kind) {
        (Backend::Int8, FileKind::Onnx) => {
            return Err(Error::Usage(format!(
                "{} is an ONNX model: run it with --backend tract (the int8 engine runs .dlm files)",
                model_path.display()
            )))
        }
        (Backend::Tract, FileKind::Dlm) => {
            return Err(Error::Usage(format!(
                "--backend tract runs an ONNX export (.onnx), not {}; make one with `depthling export --format onnx`",
                model_path.display()
            )))
        }
        (_, FileKind::Safetensors) => {
            return Err(Error::bad_input(
                model_path,
                "is a checkpoint: run a .dlm (`depthling quantize`) or an ONNX export (`depthling export --format onnx`)",
            ))
        }
        _ => {}
    }
    let bytes = crate::io::read(model_path, "model file")?;
    let failed = |e: RunnerError| match e {
        RunnerError::Model(m) => Error::bad_input(model_path, m),
        RunnerError::Run(m) => Error::Runtime(format!("{}: {m}", model_path.display())),
    };
    let loaded = Loaded::new(&bytes, cfg.backend).map_err(failed)?;
    let mut arena = loaded.arena();
    let mut runner = loaded.runner(&mut arena).map_err(failed)?;
    let (mh, mw) = runner.input_size();
    let inputs = crate::io::list_pngs(&cfg.input)?;
    let mut frames = Vec::with_capacity(inputs.len());
    for p in &inputs {
        let (w, h, rgb) = png::read_rgb(p)?;
        if (w, h) != (mw, mh) {
            return Err(Error::bad_input(
                p,
                format!("image is {w}×{h}, the model takes {mw}×{mh}"),
            ));
        }
        frames.push(rgb);
    }
    let out = &cfg.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut total = 0.0;
    let mut bar = crate::progress::Progress::new(cfg.quiet, "run", inputs.len(), "frames");
    for (p, rgb) in inputs.iter().zip(&frames) {
        let t = Instant::now();
        let (depth, _) = runner
            .infer(rgb)
            .map_err(|e| Error::Runtime(format!("{}: {e}", model_path.display())))?;
        total += t.elapsed().as_secs_f64();
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        png::write_depth(&out.join(format!("{stem}.png")), mw, mh, &depth, 1000.0)?;
        let (lo, hi) = png::depth_range(&depth);
        png::write_rgb(
            &out.join(format!("{stem}_color.png")),
            mw,
            mh,
            &png::colorize_depth(&depth, lo, hi),
        )?;
        bar.advance(1, Some(p.display().to_string()));
    }
    bar.finish(&format!(
        "{} frames, {:.2} ms each",
        inputs.len(),
        1e3 * total / inputs.len() as f64
    ));
    Ok(RunSummary {
        images: inputs.len(),
        mean_ms: 1e3 * total / inputs.len() as f64,
        backend: cfg.backend.name().into(),
        out: out.to_path_buf(),
    })
}
