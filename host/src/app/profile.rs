//! `depthling profile`: parameters, MACs, flash and arena of a `.dlm` or of an architecture,
//! optionally checked against a board.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use depthling_model::Model;
use serde::Serialize;

use super::{bytes_or_dash, parse_arg, Size};
use crate::data::Sample;
use crate::error::{Error, Result};
use crate::io::DlmFile;
use crate::nets::{preset, Net};
use crate::quant::{quantize, Calibration, Provenance};

/// Settings of `depthling profile`: a model file or an architecture.
#[derive(Clone, Debug, clap::Args)]
pub struct ProfileConfig {
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub arch: Option<String>,
    #[arg(long, default_value_t = 1.0)]
    pub width: f32,
    #[arg(long, default_value = "128x96", value_parser = parse_arg::<Size>)]
    pub size: Size,
    #[arg(long)]
    pub board: Option<String>,
    /// Also write the architecture (with --arch) as JSON to this file: the layer list that
    /// bench/pytorch_reference.py builds in PyTorch.
    #[arg(long)]
    pub graph: Option<PathBuf>,
    /// With a .dlm or .tflite: also find the smallest arena TFLite Micro runs the model's
    /// `.tflite` in (its Python interpreter from PyPI's `tflite-micro`, 1 KiB steps).
    #[arg(long)]
    pub compare_tflm: bool,
    /// The Python with `tflite-micro` for --compare-tflm (default: $DEPTHLING_PYTHON, else
    /// python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
}

/// DESIGN §10 `profile --json`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Profile {
    pub params: u64,
    pub macs: u64,
    /// Parameters as PyTorch counts them (BatchNorm's γ and β separate): the papers' figure.
    /// `None` for a `.dlm`, whose BatchNorm is folded away.
    pub train_params: Option<u64>,
    /// Size of the int8 `.dlm` (or of the ONNX file from `export --format onnx`); `None` for an
    /// architecture the int8 engine does not run (teachers) or a size it cannot export.
    pub flash_bytes: Option<u64>,
    /// The int8 engine's arena for the activations; `None` where there is no `.dlm` (teachers,
    /// ONNX).
    pub arena_bytes: Option<u64>,
    /// The prepared plan `Engine::new` keeps after the activations, by kernel table (the
    /// per-channel `Σw` everywhere; the packed weights where the table's GEMM packs them, the
    /// decoded output stages and the widened depthwise taps on the x86 AVX2/VNNI and NEON
    /// tables); empty where there is no `.dlm`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub plan_bytes: BTreeMap<String, u64>,
    /// The smallest arena TFLite Micro runs the same model's `.tflite` in (`--compare-tflm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tflm_arena_bytes: Option<u64>,
    pub board: Option<String>,
    pub fits: Option<bool>,
    /// Why flash and arena are missing, if they are.
    pub note: Option<String>,
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "params {}{}  MACs {}  flash {}  arena {}{}",
            self.params,
            self.train_params
                .map(|t| format!(" ({t} counting BatchNorm γ/β)"))
                .unwrap_or_default(),
            self.macs,
            bytes_or_dash(self.flash_bytes),
            bytes_or_dash(self.arena_bytes),
            {
                let host = depthling_device::KernelSet::detect().name();
                self.plan_bytes
                    .get(host)
                    .map(|b| format!(" + plan {b} bytes ({host})"))
                    .unwrap_or_default()
            }
        )?;
        if let Some(t) = self.tflm_arena_bytes {
            write!(f, "  (TFLite Micro arena {t} bytes)")?;
        }
        if let Some(n) = &self.note {
            write!(f, "\n{n}")?;
        }
        Ok(())
    }
}

impl Profile {
    /// RAM the int8 engine needs on `board`: the activations and the largest plan of the
    /// board's kernel tables ([`crate::boards::Board::kernel_sets`]).
    pub fn ram_on(&self, board: &crate::boards::Board) -> u64 {
        self.arena_bytes.unwrap_or(0)
            + board
                .kernel_sets()
                .iter()
                .filter_map(|s| self.plan_bytes.get(s.name()))
                .copied()
                .max()
                .unwrap_or(0)
    }
}

/// The prepared plan's bytes for every kernel table ([`Profile::plan_bytes`]).
pub fn plan_bytes(m: &Model<'_>) -> Result<BTreeMap<String, u64>> {
    depthling_device::KernelSet::ALL
        .iter()
        .map(|&set| {
            let b = depthling_device::plan::bytes(m, set)
                .map_err(|e| Error::Runtime(format!("plan: {e}")))?;
            Ok((set.name().to_string(), b as u64))
        })
        .collect()
}

/// An ONNX teacher at the size in use: what DDD and ADU can read of it.
#[derive(Clone, Debug, Serialize)]
pub struct TeacherProfile {
    pub file: PathBuf,
    pub opset: i64,
    pub params: u64,
    /// `[width, height]` the teacher runs at.
    pub size: (usize, usize),
    pub batch_norm_layers: usize,
    /// The feature maps ADU distils by default (`--teacher-taps` chooses others).
    pub default_taps: Vec<crate::teacher::FeatureTap>,
    /// Every float tensor of the graph, with its shape.
    pub tensors: Vec<crate::teacher::onnx::TensorInfo>,
}

impl std::fmt::Display for TeacherProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: ONNX opset {}, {} parameters, runs at {}×{}, {} BatchNormalization layers",
            self.file.display(),
            self.opset,
            self.params,
            self.size.0,
            self.size.1,
            self.batch_norm_layers
        )?;
        writeln!(
            f,
            "{:<48} {:<20} {:<20} {:>6}  note",
            "tensor", "op", "shape", "factor"
        )?;
        for t in &self.tensors {
            let note = match (
                t.batch_norm_input,
                self.default_taps.iter().any(|d| d.name == t.name),
            ) {
                (true, true) => "BatchNorm input, default tap",
                (true, false) => "BatchNorm input",
                (false, true) => "default tap",
                _ => "",
            };
            writeln!(
                f,
                "{:<48} {:<20} {:<20} {:>6}  {note}",
                t.name,
                t.op,
                format!("{:?}", t.shape),
                t.factor.map_or("-".into(), |v| v.to_string())
            )?;
        }
        Ok(())
    }
}

/// What `profile` reports: a model's size and fit, or an ONNX teacher's tensors.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum ProfileReport {
    Model(Profile),
    Teacher(Box<TeacherProfile>),
}

impl std::fmt::Display for ProfileReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProfileReport::Model(p) => p.fmt(f),
            ProfileReport::Teacher(t) => t.fmt(f),
        }
    }
}

/// `depthling profile`: a `.dlm`, an architecture, or an ONNX teacher (its tensors, to choose
/// `--teacher-taps`).
pub fn profile(cfg: &ProfileConfig) -> Result<ProfileReport> {
    if let Some(m) = &cfg.model {
        if crate::io::FileKind::of_file(m)? == crate::io::FileKind::Onnx {
            if cfg.board.is_some() {
                return Err(Error::Usage(
                    "--board checks int8 models; an ONNX teacher is not deployed".into(),
                ));
            }
            use crate::teacher::Teacher;
            let t = crate::teacher::onnx::OnnxTeacher::load(
                m,
                Default::default(),
                (cfg.size.width, cfg.size.height),
                &Device::Cpu,
            )?;
            return Ok(ProfileReport::Teacher(Box::new(TeacherProfile {
                file: m.clone(),
                opset: t.opset(),
                params: t.params(),
                size: t.run_size(),
                batch_norm_layers: t.batch_norm_layers(),
                default_taps: t.feature_taps(),
                tensors: t.tensors().to_vec(),
            })));
        }
    }
    profile_dlm_or_arch(cfg).map(ProfileReport::Model)
}

fn profile_dlm_or_arch(cfg: &ProfileConfig) -> Result<Profile> {
    let mut p = match (&cfg.model, &cfg.arch) {
        (Some(m), None) => profile_model(m)?,
        (None, Some(a)) => {
            if let Some(path) = &cfg.graph {
                let spec = preset(a, cfg.width)?;
                let text = serde_json::to_string_pretty(&spec)
                    .map_err(|e| Error::Runtime(e.to_string()))?;
                crate::io::write_atomic(path, text.as_bytes())?;
            }
            profile_arch(a, cfg.width, cfg.size.width, cfg.size.height)?
        }
        _ => return Err(Error::Usage("give either --model M.dlm or --arch A".into())),
    };
    if cfg.compare_tflm {
        let Some(path) = &cfg.model else {
            return Err(Error::Usage(
                "--compare-tflm compares a model's arenas: give --model M.dlm or M.tflite".into(),
            ));
        };
        let tflite = match crate::io::FileKind::of_file(path)? {
            crate::io::FileKind::Tflite => crate::io::read(path, "model file")?,
            _ => {
                let file = DlmFile::read(path)?;
                let model = file.model()?;
                crate::tflite::export(&model).map_err(|e| Error::bad_input(path, e.to_string()))?
            }
        };
        let python = cfg.python.clone().unwrap_or_else(|| {
            std::env::var_os("DEPTHLING_PYTHON")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("python3"))
        });
        p.tflm_arena_bytes = Some(tflm_arena(&tflite, &python)?);
    }
    if let Some(b) = &cfg.board {
        let b = crate::boards::Board::find(b)?;
        if let (Some(f), Some(_)) = (p.flash_bytes, p.arena_bytes) {
            p.fits = Some(b.check(f, p.ram_on(&b)).is_ok());
        }
        p.board = Some(b.name);
    }
    Ok(p)
}

/// Profile of a `.dlm`, or of a `.tflite` as depthling imports it (flash: the `.tflite`'s size).
pub fn profile_model(path: &Path) -> Result<Profile> {
    if crate::io::FileKind::of_file(path)? == crate::io::FileKind::Tflite {
        let bytes = crate::io::read(path, "model file")?;
        let dlm = crate::tflite::import(&bytes, "profile")
            .map_err(|e| Error::bad_input(path, e.to_string()))?;
        let model = Model::from_bytes(&dlm)
            .map_err(|e| Error::bad_input(path, format!("the imported model is invalid: {e}")))?;
        return profile_dlm(&model, bytes.len());
    }
    let file = DlmFile::read(path)?;
    let model = file.model()?;
    profile_dlm(&model, file.bytes.len())
}

/// Finds the smallest arena (1 KiB steps, by bisection) TFLite Micro's Python interpreter
/// allocates and runs the model in.
const TFLM_ARENA: &str = r#"
import sys
import numpy as np
from tflite_micro.python.tflite_micro import runtime
model = open(sys.argv[1], "rb").read()
def ok(n):
    try:
        it = runtime.Interpreter.from_bytes(model, arena_size=n)
        d = it.get_input_details(0)
        it.set_input(np.zeros(d["shape"], dtype=d["dtype"]), 0)
        it.invoke()
        return True
    except Exception:
        return False
hi = 64 << 20
if not ok(hi):
    sys.exit("TFLite Micro does not run the model in 64 MiB")
lo = 0
while hi - lo > 1024:
    mid = (lo + hi) // 2 // 1024 * 1024
    if ok(mid):
        hi = mid
    else:
        lo = mid
print(hi)
"#;

/// TFLite Micro's smallest arena for the `.tflite` bytes `tflite`, through `python`.
pub fn tflm_arena(tflite: &[u8], python: &Path) -> Result<u64> {
    // unique per call: tests run several in one process
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp =
        std::env::temp_dir().join(format!("depthling-tflm-{}-{n}.tflite", std::process::id()));
    std::fs::write(&tmp, tflite).map_err(|e| Error::io(&tmp, e))?;
    let out = std::process::Command::new(python)
        .args(["-c", TFLM_ARENA])
        .arg(&tmp)
        .output();
    let _ = std::fs::remove_file(&tmp);
    let out = out.map_err(|e| {
        Error::Usage(format!(
            "--compare-tflm: cannot run {}: {e} (give --python, a Python with `pip install tflite-micro numpy`)",
            python.display()
        ))
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    match (out.status.success(), text.trim().parse::<u64>()) {
        (true, Ok(n)) => Ok(n),
        _ => {
            Err(Error::Usage(format!(
            "--compare-tflm: {} could not run TFLite Micro (`pip install tflite-micro numpy`): {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("")
        )))
        }
    }
}

/// Profile of a loaded `.dlm` of `file_bytes` bytes.
pub fn profile_dlm(m: &Model<'_>, file_bytes: usize) -> Result<Profile> {
    Ok(Profile {
        params: m.params(),
        train_params: None,
        macs: m.macs(),
        flash_bytes: Some(file_bytes as u64),
        arena_bytes: Some(m.arena_bytes as u64),
        plan_bytes: plan_bytes(m)?,
        tflm_arena_bytes: None,
        board: None,
        fits: None,
        note: None,
    })
}

/// Profile of an architecture at `width × height`: counts from the spec, and flash and arena from
/// a real int8 export of randomly initialised weights where the int8 engine runs the architecture.
pub fn profile_arch(arch: &str, width_mult: f32, width: usize, height: usize) -> Result<Profile> {
    let spec = preset(arch, width_mult)?;
    let macs = spec.macs(width, height)?;
    let (params, train_params) = (spec.params() as u64, spec.train_params() as u64);
    let shapes = spec.shapes(width, height)?;
    let mut profile = Profile {
        params,
        train_params: Some(train_params),
        macs,
        flash_bytes: None,
        arena_bytes: None,
        plan_bytes: BTreeMap::new(),
        tflm_arena_bytes: None,
        board: None,
        fits: None,
        note: None,
    };
    if let Err(e) = spec.check_int8(&shapes) {
        profile.note = Some(format!("no int8 export: {e}"));
        return Ok(profile);
    }
    let device = Device::Cpu;
    let net = Net::new(spec, &device, 0)?;
    let probe = Sample {
        width,
        height,
        rgb: (0..width * height * 3)
            .map(|i| (i * 31 % 256) as u8)
            .collect(),
        depth: vec![1.0; width * height],
        instance: None,
        right: None,
    };
    let bytes = quantize(
        &net.net,
        &[probe],
        Calibration::MinMax,
        &Provenance {
            name: arch.into(),
            ..Default::default()
        },
        &device,
    )?;
    let m = Model::from_bytes(&bytes)
        .map_err(|e| Error::Runtime(format!("profile export invalid: {e}")))?;
    profile.flash_bytes = Some(bytes.len() as u64);
    profile.arena_bytes = Some(m.arena_bytes as u64);
    profile.plan_bytes = plan_bytes(&m)?;
    Ok(profile)
}
