//! Evaluation: metrics of predictions against samples, and `depthling eval --pred --gt` over
//! folders of 16-bit depth PNGs matched by file name.

use std::path::{Path, PathBuf};

use depthling_metrics::{DepthMetrics, EvalConfig, MetricsAccumulator, Protocol};
use serde::Serialize;

use crate::data::{png, Manifest, Sample};
use crate::error::{Error, Result};

/// The eval keys of DESIGN §10.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct EvalReport {
    pub abs_rel: f64,
    pub sq_rel: f64,
    pub rmse: f64,
    pub rmse_log: f64,
    pub log10: f64,
    pub delta1: f64,
    pub delta2: f64,
    pub delta3: f64,
    pub silog: f64,
    pub images: u64,
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} images  abs_rel {:.4}  sq_rel {:.4}  rmse {:.4}  rmse_log {:.4}  log10 {:.4}  δ1 {:.4}  δ2 {:.4}  δ3 {:.4}  silog {:.3}",
            self.images, self.abs_rel, self.sq_rel, self.rmse, self.rmse_log, self.log10, self.delta1, self.delta2, self.delta3, self.silog
        )
    }
}

impl EvalReport {
    pub fn from_metrics(m: &DepthMetrics, images: u64) -> Self {
        EvalReport {
            abs_rel: m.abs_rel,
            sq_rel: m.sq_rel,
            rmse: m.rmse,
            rmse_log: m.rmse_log,
            log10: m.log10,
            delta1: m.delta1,
            delta2: m.delta2,
            delta3: m.delta3,
            silog: m.silog,
            images,
        }
    }
}

/// Mean metrics of `preds` (one H×W map per sample) against the samples' ground truth.
pub fn evaluate(preds: &[Vec<f32>], samples: &[Sample], cfg: &EvalConfig) -> Result<EvalReport> {
    if preds.len() != samples.len() {
        return Err(Error::Runtime(format!(
            "{} predictions for {} images",
            preds.len(),
            samples.len()
        )));
    }
    let mut acc = MetricsAccumulator::new();
    for (p, s) in preds.iter().zip(samples) {
        match acc.add_image(p, &s.depth, s.width, s.height, cfg) {
            Ok(_) | Err(depthling_metrics::MetricsError::NoValidPixels) => {}
            Err(e) => return Err(Error::Runtime(format!("evaluation: {e}"))),
        }
    }
    let mean = acc
        .mean()
        .ok_or_else(|| Error::Runtime("no image with valid ground truth".into()))?;
    Ok(EvalReport::from_metrics(&mean, acc.images()))
}

/// A folder of depth PNGs and its depth scale: a dataset root (uses `depth/` and the manifest's
/// scale), a dataset's `depth/` folder (the parent's manifest), or a plain folder (`fallback`).
fn depth_folder(dir: &Path, fallback: f32) -> Result<(PathBuf, f32)> {
    if !dir.is_dir() {
        return Err(Error::bad_input(dir, "folder not found"));
    }
    if dir.join("manifest.json").exists() {
        let m = Manifest::read(&dir.join("manifest.json"))?;
        let depth = dir.join("depth");
        return Ok((
            if depth.is_dir() {
                depth
            } else {
                dir.to_path_buf()
            },
            m.depth_scale,
        ));
    }
    if let Some(parent) = dir.parent() {
        if parent.join("manifest.json").exists() && dir.file_name().is_some_and(|n| n == "depth") {
            return Ok((
                dir.to_path_buf(),
                Manifest::read(&parent.join("manifest.json"))?.depth_scale,
            ));
        }
    }
    Ok((dir.to_path_buf(), fallback))
}

/// `depthling eval --pred DIR --gt DIR`: every `NAME.png` of the ground truth is matched with
/// `NAME.png` of the predictions.
pub fn eval_folders(
    pred: &Path,
    gt: &Path,
    protocol: Protocol,
    depth_scale: f32,
    median_scaling: bool,
) -> Result<EvalReport> {
    if !(depth_scale.is_finite() && depth_scale > 0.0) {
        return Err(Error::Usage(format!(
            "--depth-scale must be a positive number, got {depth_scale}"
        )));
    }
    let (gt_dir, gt_scale) = depth_folder(gt, depth_scale)?;
    let (pred_dir, pred_scale) = depth_folder(pred, depth_scale)?;
    let mut names: Vec<PathBuf> = std::fs::read_dir(&gt_dir)
        .map_err(|e| Error::io(&gt_dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Error::bad_input(&gt_dir, "contains no PNG depth maps"));
    }
    let cfg = EvalConfig {
        median_scaling,
        ..protocol.config()
    };
    let mut acc = MetricsAccumulator::new();
    for g in &names {
        let name = g
            .file_name()
            .ok_or_else(|| Error::bad_input(g, "no file name"))?;
        let p = pred_dir.join(name);
        if !p.exists() {
            return Err(Error::bad_input(
                &p,
                format!("missing prediction for ground truth {}", g.display()),
            ));
        }
        let (gw, gh, gd) = png::read_depth(g, gt_scale)?;
        let (pw, ph, pd) = png::read_depth(&p, pred_scale)?;
        if (pw, ph) != (gw, gh) {
            return Err(Error::bad_input(
                &p,
                format!("prediction is {pw}×{ph}, ground truth is {gw}×{gh}"),
            ));
        }
        match acc.add_image(&pd, &gd, gw, gh, &cfg) {
            Ok(_) | Err(depthling_metrics::MetricsError::NoValidPixels) => {}
            Err(e) => return Err(Error::bad_input(&p, e.to_string())),
        }
    }
    let mean = acc
        .mean()
        .ok_or_else(|| Error::bad_input(&gt_dir, "no image has a valid ground-truth pixel"))?;
    Ok(EvalReport::from_metrics(&mean, acc.images()))
}

/// Mean |a − b| over every pixel of two sets of depth maps (metres): how far two models' outputs
/// are apart, e.g. int8 against f32.
pub fn mean_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let (mut sum, mut n) = (0f64, 0usize);
    for (x, y) in a.iter().zip(b) {
        for (u, v) in x.iter().zip(y) {
            sum += (u - v).abs() as f64;
            n += 1;
        }
    }
    sum / n.max(1) as f64
}
