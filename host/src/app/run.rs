//! `depthling run`: depth for a PNG or a folder of PNGs, through the same runner as the Linux
//! boards' `depthling-runner`.

use std::path::PathBuf;
use std::time::Instant;

use depthling_device::runner::{Backend, Loaded, RunnerError};
use serde::Serialize;

use crate::data::png;
use crate::error::{Error, Result};
use crate::io::FileKind;

/// Which engine `depthling run` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunBackend {
    /// A `.dlm` on the int8 engine.
    Int8,
    /// depthling's ONNX export through tract (f32).
    Tract,
    /// Any ONNX depth network (a PyTorch teacher) through depthling's importer (f32), with the
    /// `--teacher-*` flags.
    Teacher,
}

impl std::str::FromStr for RunBackend {
    type Err = Error;

    fn from_str(s: &str) -> Result<RunBackend> {
        match s {
            "int8" => Ok(RunBackend::Int8),
            "tract" => Ok(RunBackend::Tract),
            "teacher" => Ok(RunBackend::Teacher),
            other => Err(Error::Usage(format!(
                "unknown backend {other:?}; known: int8, tract, teacher"
            ))),
        }
    }
}

impl RunBackend {
    fn name(self) -> &'static str {
        match self {
            RunBackend::Int8 => "int8",
            RunBackend::Tract => "tract",
            RunBackend::Teacher => "teacher",
        }
    }
}

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
    /// int8 (a .dlm), tract (depthling's ONNX export, f32) or teacher (any ONNX depth
    /// network, e.g. a PyTorch teacher, through depthling's importer, f32).
    #[arg(long, default_value = "int8", value_parser = super::parse_arg::<RunBackend>)]
    pub backend: RunBackend,
    /// How a `--backend teacher` model is fed and read.
    #[command(flatten)]
    pub teacher: super::distill::TeacherArgs,
    /// int8 only: also write every op's output tensor under DIR/<image>/ as `.npy` (int8
    /// NHWC, or f32 depth) with a JSON sidecar (op index and kind, scale, zero point, and the
    /// tensor's name in the `.tflite` export), to find where two runtimes part ways.
    #[arg(long, value_name = "DIR")]
    pub dump: Option<PathBuf>,
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
/// `int8` runs a `.dlm` on the int8 engine, `tract` depthling's ONNX export, `teacher` any ONNX
/// depth network through the importer; every input is read and checked before anything is
/// written.
pub fn run(cfg: &RunConfig) -> Result<RunSummary> {
    let model_path = &cfg.model;
    let kind = FileKind::of_file(model_path)?;
    match (cfg.backend, kind) {
        (RunBackend::Int8, FileKind::Onnx) => {
            return Err(Error::Usage(format!(
                "{} is an ONNX model: run it with --backend tract (depthling's export) or --backend teacher (any ONNX depth network); the int8 engine runs .dlm files",
                model_path.display()
            )))
        }
        (RunBackend::Tract | RunBackend::Teacher, FileKind::Dlm) => {
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
    let failed = |e: RunnerError| match e {
        RunnerError::Model(m) => Error::bad_input(model_path, m),
        RunnerError::Run(m) => Error::Runtime(format!("{}: {m}", model_path.display())),
    };
    let inputs = crate::io::list_pngs(&cfg.input)?;
    // every input is read before anything is written
    let images = inputs
        .iter()
        .map(|p| png::read_rgb(p))
        .collect::<Result<Vec<_>>>()?;
    // the engines fix their input size; the importer takes the first image's (every frame is
    // checked against it below)
    let first_size = (images[0].0, images[0].1);
    let (bytes, teacher) = match cfg.backend {
        RunBackend::Teacher => (
            Vec::new(),
            Some(super::distill::LoadedTeacher::load(
                model_path,
                &cfg.teacher,
                first_size,
                &candle_core::Device::Cpu,
                cfg.quiet,
            )?),
        ),
        _ => (crate::io::read(model_path, "model file")?, None),
    };
    let loaded = match cfg.backend {
        RunBackend::Int8 => Some(Loaded::new(&bytes, Backend::Int8).map_err(failed)?),
        RunBackend::Tract => Some(Loaded::new(&bytes, Backend::Tract).map_err(failed)?),
        RunBackend::Teacher => None,
    };
    if cfg.dump.is_some() && cfg.backend != RunBackend::Int8 {
        return Err(Error::Usage(
            "--dump writes the int8 engine's tensors: it needs --backend int8 and a .dlm".into(),
        ));
    }
    let mut arena = loaded.as_ref().map(|l| l.arena()).unwrap_or_default();
    type Infer<'r> = Box<dyn FnMut(&[u8]) -> Result<Vec<f32>> + 'r>;
    let ((mh, mw), mut infer): ((usize, usize), Infer) = match (&loaded, &teacher) {
        (Some(l), _) => {
            let mut runner = l.runner(&mut arena).map_err(failed)?;
            (
                runner.input_size(),
                Box::new(move |rgb| {
                    runner
                        .infer(rgb)
                        .map(|(d, _)| d)
                        .map_err(|e| Error::Runtime(format!("{}: {e}", model_path.display())))
                }),
            )
        }
        (None, Some(t)) => {
            let (w, h) = first_size;
            let t = t.teacher();
            (
                (h, w),
                Box::new(move |rgb| {
                    let x = crate::data::batch::images_to_tensor(
                        &[rgb],
                        w,
                        h,
                        &candle_core::Device::Cpu,
                    )?;
                    Ok(t.predict(&x)?.flatten_all()?.to_vec1::<f32>()?)
                }),
            )
        }
        (None, None) => return Err(Error::Runtime("no backend".into())),
    };
    let mut frames = Vec::with_capacity(inputs.len());
    for (p, (w, h, rgb)) in inputs.iter().zip(images) {
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
    if let (Some(dir), Some(Loaded::Int8(model))) = (&cfg.dump, &loaded) {
        for (p, rgb) in inputs.iter().zip(&frames) {
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            dump(model, rgb, &dir.join(stem))?;
        }
    }
    let mut total = 0.0;
    let mut bar = crate::progress::Progress::new(cfg.quiet, "run", inputs.len(), "frames");
    for (p, rgb) in inputs.iter().zip(&frames) {
        let t = Instant::now();
        let depth = infer(rgb)?;
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

/// Writes the input and every op's output of one inference under `dir`: `input.npy`, and
/// `NNN_kind.npy` with `NNN_kind.json` (op index, kind, IR tensor id and its `.tflite` name,
/// dtype, NHWC shape, scale and zero point).
pub fn dump(model: &depthling_model::Model<'_>, rgb: &[u8], dir: &std::path::Path) -> Result<()> {
    use crate::io::{npy, write_atomic};
    use depthling_model::DType;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let invalid = |e| Error::Runtime(format!("invalid model: {e}"));
    let mut arena = vec![0u8; depthling_device::Engine::arena_needed(model).map_err(invalid)?];
    let mut engine = depthling_device::Engine::new(model, &mut arena).map_err(invalid)?;
    let input = model
        .tensor(model.input)
        .ok_or_else(|| Error::Runtime("model has no input".into()))?;
    let shape = |t: &depthling_model::TensorInfo| {
        [1, t.height as usize, t.width as usize, t.channels as usize]
    };
    let q: Vec<u8> = rgb.iter().map(|p| p ^ 0x80).collect();
    write_atomic(
        &dir.join("input.npy"),
        &npy::encode(npy::Dtype::I8, &shape(input), &q),
    )?;
    let mut written: Vec<(String, Vec<u8>)> = Vec::new();
    engine
        .run_observed(rgb, |i, t, bytes| {
            let kind = model.ops.get(i).map_or("op", |o| o.kind());
            let id = model.ops.get(i).and_then(|o| o.output()).unwrap_or(0);
            let stem = format!("{i:03}_{kind}");
            let dtype = match t.dtype {
                DType::I8 => npy::Dtype::I8,
                DType::F32 => npy::Dtype::F32,
            };
            written.push((format!("{stem}.npy"), npy::encode(dtype, &shape(t), bytes)));
            let side = serde_json::json!({
                "op": i,
                "kind": kind,
                "tensor": id,
                "tflite_name": if t.dtype == DType::F32 { "depth".to_string() } else { crate::tflite::tensor_name(id) },
                "dtype": if t.dtype == DType::F32 { "float32" } else { "int8" },
                "shape": shape(t),
                "scale": if t.dtype == DType::F32 { None } else { Some(t.quant.scale) },
                "zero_point": if t.dtype == DType::F32 { None } else { Some(t.quant.zero_point) },
            });
            written.push((format!("{stem}.json"), side.to_string().into_bytes()));
        })
        .map_err(|e| Error::Runtime(format!("inference failed: {e}")))?;
    for (name, bytes) in written {
        write_atomic(&dir.join(name), &bytes)?;
    }
    Ok(())
}
