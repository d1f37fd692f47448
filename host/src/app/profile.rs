//! `depthling profile`: parameters, MACs, flash and arena of a `.dlm` or of an architecture,
//! optionally checked against a board.

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
    /// The int8 engine's arena; `None` where there is no `.dlm` (teachers, ONNX).
    pub arena_bytes: Option<u64>,
    pub board: Option<String>,
    pub fits: Option<bool>,
    /// Why flash and arena are missing, if they are.
    pub note: Option<String>,
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "params {}{}  MACs {}  flash {}  arena {}",
            self.params,
            self.train_params
                .map(|t| format!(" ({t} counting BatchNorm γ/β)"))
                .unwrap_or_default(),
            self.macs,
            bytes_or_dash(self.flash_bytes),
            bytes_or_dash(self.arena_bytes)
        )?;
        if let Some(n) = &self.note {
            write!(f, "\n{n}")?;
        }
        Ok(())
    }
}

/// `depthling profile`.
pub fn profile(cfg: &ProfileConfig) -> Result<Profile> {
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
    if let Some(b) = &cfg.board {
        let b = crate::boards::Board::find(b)?;
        if let (Some(f), Some(a)) = (p.flash_bytes, p.arena_bytes) {
            p.fits = Some(b.check(f, a).is_ok());
        }
        p.board = Some(b.name);
    }
    Ok(p)
}

/// Profile of a `.dlm`.
pub fn profile_model(path: &Path) -> Result<Profile> {
    let file = DlmFile::read(path)?;
    let model = file.model()?;
    profile_dlm(&model, file.bytes.len())
}

/// Profile of a loaded `.dlm` of `file_bytes` bytes.
pub fn profile_dlm(m: &Model<'_>, file_bytes: usize) -> Result<Profile> {
    Ok(Profile {
        params: m.params(),
        train_params: None,
        macs: m.macs(),
        flash_bytes: Some(file_bytes as u64),
        arena_bytes: Some(m.arena_bytes as u64),
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
    Ok(profile)
}
