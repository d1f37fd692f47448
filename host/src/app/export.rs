//! `depthling export`: a `.dlm` checked against a board, or the ONNX graph of a checkpoint.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::Device;

use super::profile::{profile_dlm, Profile};
use super::{parse_arg, parse_size, Size};
use crate::boards::Board;
use crate::error::{Error, Result};
use crate::io::{write_atomic, DlmFile, FileKind};
use crate::nets::Net;

/// What `export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The int8 model file (from a `.dlm`: validated, checked against `--board`, copied).
    Dlm,
    /// The f32 ONNX graph (from a `.safetensors` checkpoint).
    Onnx,
    /// The full-integer TFLite model of a `.dlm` (for LiteRT and TFLite Micro).
    Tflite,
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Format> {
        match s {
            "dlm" => Ok(Format::Dlm),
            "onnx" => Ok(Format::Onnx),
            "tflite" => Ok(Format::Tflite),
            other => Err(Error::Usage(format!(
                "unknown format {other:?}; known: dlm, onnx, tflite"
            ))),
        }
    }
}

/// Settings of `depthling export`.
#[derive(Clone, Debug, clap::Args)]
pub struct ExportConfig {
    #[arg(long)]
    pub model: PathBuf,
    /// onnx (from a .safetensors checkpoint), dlm or tflite (from a .dlm)
    #[arg(long, value_parser = parse_arg::<Format>)]
    pub format: Format,
    #[arg(long)]
    pub board: Option<String>,
    /// Input size of the ONNX graph (default: the size the checkpoint was trained at)
    #[arg(long, value_parser = parse_arg::<Size>)]
    pub size: Option<Size>,
    #[arg(long)]
    pub out: PathBuf,
}

/// `depthling export`. `--format onnx` writes the f32 ONNX graph of a checkpoint (input size from
/// `size`, else from the checkpoint's `size` metadata); `--format dlm` takes a `.dlm` (validated,
/// checked against `--board`, copied); `--format tflite` converts a `.dlm` to a full-integer
/// `.tflite` (checked against `--board` by its size and the int8 engine's arena). A `.dlm` is
/// made from a checkpoint by `depthling quantize`, which needs calibration images.
pub fn export(cfg: &ExportConfig) -> Result<Profile> {
    let board = cfg.board.as_deref().map(Board::find).transpose()?;
    let model = cfg.model.as_path();
    match cfg.format {
        Format::Onnx => export_onnx(model, board, cfg.size, &cfg.out),
        Format::Dlm | Format::Tflite => {
            if FileKind::of_file(model)? != FileKind::Dlm {
                return Err(Error::Usage(format!(
                    "{}: a .dlm is made from a checkpoint by `depthling quantize --model {} --calib DIR --out S.dlm` (int8 needs calibration images)",
                    model.display(),
                    model.display()
                )));
            }
            let file = DlmFile::read(model)?;
            let m = file.model()?;
            let bytes = match cfg.format {
                Format::Tflite => {
                    crate::tflite::export(&m).map_err(|e| Error::bad_input(model, e.to_string()))?
                }
                _ => file.bytes.clone(),
            };
            let mut p = profile_dlm(&m, bytes.len())?;
            if let Some(b) = board {
                if let Err(m) = b.check(p.flash_bytes.unwrap_or(0), p.ram_on(&b)) {
                    return Err(Error::bad_input(model, b.explain(&m)));
                }
                p.fits = Some(true);
                p.board = Some(b.name);
            }
            write_atomic(&cfg.out, &bytes)?;
            Ok(p)
        }
    }
}

fn export_onnx(
    model: &Path,
    board: Option<Board>,
    size: Option<Size>,
    out: &Path,
) -> Result<Profile> {
    if let Some(b) = &board {
        if !b.target.contains("linux") {
            return Err(Error::Usage(format!(
                "board {} ({}) has no tract: it runs .dlm models on the int8 engine; use --format dlm",
                b.name, b.target
            )));
        }
    }
    if FileKind::of_file(model)? == FileKind::Dlm {
        return Err(Error::Usage(format!(
            "{}: ONNX is exported from the f32 checkpoint (.safetensors), not from an int8 .dlm",
            model.display()
        )));
    }
    let (net, meta) = Net::load(model, &Device::Cpu)?;
    let (width, height) = match (size, meta.get(crate::io::meta::SIZE)) {
        (Some(s), _) => (s.width, s.height),
        (None, Some(s)) => parse_size(s).map_err(|e| Error::bad_input(model, e.to_string()))?,
        (None, None) => {
            return Err(Error::Usage(format!(
                "{}: the checkpoint does not record its input size; give --size WxH",
                model.display()
            )))
        }
    };
    let bytes = crate::onnx::export(&net.net, width, height)?;
    if let Some(b) = &board {
        if let Err(m) = b.check(bytes.len() as u64, 0) {
            return Err(Error::bad_input(model, b.explain(&m)));
        }
    }
    let spec = net.net.spec();
    let profile = Profile {
        params: spec.params() as u64,
        train_params: Some(spec.train_params() as u64),
        macs: spec.macs(width, height)?,
        flash_bytes: Some(bytes.len() as u64),
        // tract plans its own memory; the arena is the int8 engine's
        arena_bytes: None,
        plan_bytes: Default::default(),
        tflm_arena_bytes: None,
        // checked above: a misfit never gets here
        fits: board.as_ref().map(|_| true),
        board: board.map(|b| b.name),
        note: None,
    };
    write_atomic(out, &bytes)?;
    Ok(profile)
}

/// What `export` prints: the file and its figures.
pub struct Exported<'a> {
    pub out: &'a Path,
    pub profile: &'a Profile,
}

impl std::fmt::Display for Exported<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.profile;
        write!(
            f,
            "{} written: {} bytes, {} params, {} MACs{}{}",
            self.out.display(),
            p.flash_bytes.unwrap_or(0),
            p.params,
            p.macs,
            p.arena_bytes
                .map(|a| format!(", arena {a} bytes"))
                .unwrap_or_default(),
            p.board
                .as_ref()
                .map(|b| format!(", fits {b}"))
                .unwrap_or_default()
        )
    }
}

/// Settings of `depthling import`.
#[derive(Clone, Debug, clap::Args)]
pub struct ImportConfig {
    /// An int8 `.tflite` model within the IR's op set.
    pub model: PathBuf,
    #[arg(long)]
    pub board: Option<String>,
    /// The `.dlm` to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// `depthling import M.tflite --out M.dlm`: converts an int8 `.tflite` (see
/// [`crate::tflite::import`]) into a validated `.dlm`, checked against `--board`; nothing is
/// written on failure.
pub fn import(cfg: &ImportConfig) -> Result<Profile> {
    let board = cfg.board.as_deref().map(Board::find).transpose()?;
    let path = cfg.model.as_path();
    let kind = FileKind::of_file(path)?;
    if kind != FileKind::Tflite {
        return Err(Error::bad_input(
            path,
            format!("is not a .tflite model (it looks like {kind:?})"),
        ));
    }
    let bytes = crate::io::read(path, "model file")?;
    let name = path.file_stem().map_or_else(
        || "imported".to_string(),
        |s| s.to_string_lossy().to_string(),
    );
    let dlm =
        crate::tflite::import(&bytes, &name).map_err(|e| Error::bad_input(path, e.to_string()))?;
    let model = depthling_model::Model::from_bytes(&dlm)
        .map_err(|e| Error::bad_input(path, format!("the imported model is invalid: {e}")))?;
    let mut p = profile_dlm(&model, dlm.len())?;
    if let Some(b) = board {
        if let Err(m) = b.check(p.flash_bytes.unwrap_or(0), p.ram_on(&b)) {
            return Err(Error::bad_input(path, b.explain(&m)));
        }
        p.fits = Some(true);
        p.board = Some(b.name);
    }
    write_atomic(&cfg.out, &dlm)?;
    Ok(p)
}
