//! `depthling quantize`: int8 quantization of a student checkpoint into a `.dlm`.

use std::path::PathBuf;

use candle_core::Device;
use depthling_model::Model;
use serde::Serialize;

use super::parse_arg;
use super::profile::{profile_dlm, Profile};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::io::{meta, write_atomic};
use crate::nets::Net;
use crate::progress::Progress;
use crate::quant::{
    calibrate_observed, calibration_passes, quantize_with, run_int8, Calibration, Provenance,
};

/// Settings of `depthling quantize`.
#[derive(Clone, Debug, clap::Args)]
pub struct QuantizeConfig {
    #[arg(long)]
    pub model: PathBuf,
    /// Calibration images: a dataset folder, a CSV list, or a folder of PNG images.
    #[arg(long)]
    pub calib: PathBuf,
    /// Depth units per metre of a CSV calibration list.
    #[arg(long, default_value_t = 1000.0)]
    pub depth_scale: f32,
    /// minmax, percentile (0.01 %/99.99 % quantiles) or mse (clip range with the least
    /// expected squared error).
    #[arg(long, default_value = "minmax", value_parser = parse_arg::<Calibration>)]
    pub calibration: Calibration,
    /// Quantization-aware fine-tune: passes over the calibration images with int8 rounding
    /// simulated (straight-through gradients), matching the f32 model's own depth; 0 = none.
    #[arg(long, default_value_t = 0)]
    pub qat_epochs: usize,
    /// Adam learning rate of the QAT fine-tune.
    #[arg(long, default_value_t = 2e-5, value_parser = parse_positive)]
    pub qat_lr: f64,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(skip)]
    pub quiet: bool,
}

fn parse_positive(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("--qat-lr must be a positive number, got {s}")),
    }
}

/// What `depthling quantize` reports.
#[derive(Clone, Debug, Serialize)]
pub struct QuantizeReport {
    #[serde(flatten)]
    pub profile: Profile,
    pub calibration: String,
    /// Per-layer SQNR of int8 against f32 (after QAT: the fine-tuned f32 network) on calibration
    /// images.
    pub layers: Vec<crate::quant::LayerError>,
    /// Mean |int8 depth − f32 depth| in metres over the calibration images (f32: the network as
    /// loaded, before any QAT).
    pub int8_vs_f32_m: f64,
    /// Metrics of the f32 and int8 models on the calibration images, where they have depth.
    pub metrics_f32: Option<crate::eval::EvalReport>,
    pub metrics_int8: Option<crate::eval::EvalReport>,
    /// The QAT fine-tune, when `--qat-epochs` > 0, with the post-training result it replaced.
    pub qat: Option<QatReport>,
    #[serde(skip)]
    pub out: PathBuf,
}

/// A QAT fine-tune inside `depthling quantize`.
#[derive(Clone, Debug, Serialize)]
pub struct QatReport {
    pub epochs: usize,
    pub lr: f64,
    pub steps: usize,
    /// Mean |fake-quantized − f32| depth (metres) of the first and last step.
    pub loss_first: f32,
    pub loss_last: f32,
    /// The post-training-quantized model before QAT: mean |int8 − f32| (metres) and metrics.
    pub ptq_int8_vs_f32_m: f64,
    pub ptq_metrics_int8: Option<crate::eval::EvalReport>,
}

impl std::fmt::Display for QuantizeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{:>4} {:<18} {:>9}", "op", "kind", "SQNR dB")?;
        for l in &self.layers {
            writeln!(f, "{:>4} {:<18} {:>9.1}", l.op, l.kind, l.sqnr_db)?;
        }
        if let Some(qat) = &self.qat {
            writeln!(
                f,
                "QAT: {} epochs, {} steps: mean |int8 − f32| {:.4} m (post-training) → {:.4} m",
                qat.epochs, qat.steps, qat.ptq_int8_vs_f32_m, self.int8_vs_f32_m
            )?;
            if let (Some(p), Some(q)) = (&qat.ptq_metrics_int8, &self.metrics_int8) {
                writeln!(
                    f,
                    "QAT on the calibration images: δ1 {:.4} (post-training) → {:.4}",
                    p.delta1, q.delta1
                )?;
            }
        } else {
            writeln!(f, "mean |int8 − f32| {:.4} m", self.int8_vs_f32_m)?;
        }
        if let (Some(a), Some(q)) = (&self.metrics_f32, &self.metrics_int8) {
            writeln!(
                f,
                "on the calibration images: AbsRel {:.4} → {:.4}, δ1 {:.4} → {:.4} (f32 → int8)",
                a.abs_rel, q.abs_rel, a.delta1, q.delta1
            )?;
        }
        let p = &self.profile;
        write!(
            f,
            "{} written ({} calibration): {} params, {} bytes, arena {} bytes",
            self.out.display(),
            self.calibration,
            p.params,
            p.flash_bytes.unwrap_or(0),
            p.arena_bytes.unwrap_or(0)
        )
    }
}

/// `depthling quantize`: int8 quantization of a student checkpoint, calibrated on images,
/// optionally fine-tuned quantization-aware; reports per-layer SQNR and the end-to-end change.
pub fn quantize(o: &QuantizeConfig) -> Result<QuantizeReport> {
    let device = Device::Cpu;
    let (net, metadata) = Net::load(&o.model, &device)?;
    let ds = Dataset::open(&o.calib, o.depth_scale)?;
    let samples = ds.load_all(None)?;
    let size = (samples[0].width, samples[0].height);
    net.net.spec().shapes(size.0, size.1)?;
    let prov = Provenance {
        name: net.net.spec().name.clone(),
        teacher: metadata.get(meta::TEACHER).cloned().unwrap_or_default(),
        method: metadata.get(meta::METHOD).cloned().unwrap_or_default(),
        metrics: vec![],
    };
    let passes = calibration_passes(o.calibration);
    let mut p = Progress::new(
        o.quiet,
        &format!("quantize: calibrate ({})", o.calibration.name()),
        passes * samples.len(),
        "img",
    );
    let plan = calibrate_observed(&net.net, &samples, o.calibration, &device, |n| {
        p.advance(n, None)
    })?;
    p.finish(&format!("{} images, {passes} pass(es)", samples.len()));
    let cfg = depthling_metrics::EvalConfig::default();
    let f32_pred = crate::train::predict(&net.net, &samples, &device)?;
    let qat_cfg = crate::quant::QatConfig {
        epochs: o.qat_epochs,
        lr: o.qat_lr,
        ..Default::default()
    };
    let qat = if qat_cfg.epochs > 0 {
        let ptq = quantize_with(&net.net, &plan, size, &prov)?;
        let ptq = Model::from_bytes(&ptq)
            .map_err(|e| Error::Runtime(format!("quantized model invalid: {e}")))?;
        let ptq_pred = run_int8(&ptq, &samples)?;
        let steps = qat_cfg.epochs * samples.len().div_ceil(qat_cfg.batch_size.max(1));
        let mut p = Progress::new(o.quiet, "quantize: QAT", steps, "steps");
        let losses = crate::quant::qat::finetune(&net, &plan, &samples, &qat_cfg, |_, _, loss| {
            p.advance(1, Some(format!("loss {loss:.4} m")))
        })?;
        let (first, last) = (losses[0], losses[losses.len() - 1]);
        p.finish(&format!("{steps} steps, loss {first:.4} → {last:.4} m"));
        Some(QatReport {
            epochs: qat_cfg.epochs,
            lr: qat_cfg.lr,
            steps,
            loss_first: first,
            loss_last: last,
            ptq_int8_vs_f32_m: crate::eval::mean_abs_diff(&ptq_pred, &f32_pred),
            ptq_metrics_int8: crate::eval::evaluate(&ptq_pred, &samples, &cfg).ok(),
        })
    } else {
        None
    };
    let bytes = quantize_with(&net.net, &plan, size, &prov)?;
    let m = Model::from_bytes(&bytes)
        .map_err(|e| Error::Runtime(format!("quantized model invalid: {e}")))?;
    let layers = crate::quant::layer_report(&net.net, &m, &samples, &device)?;
    let int8_pred = run_int8(&m, &samples)?;
    let metrics_f32 = crate::eval::evaluate(&f32_pred, &samples, &cfg).ok();
    let metrics_int8 = crate::eval::evaluate(&int8_pred, &samples, &cfg).ok();
    write_atomic(&o.out, &bytes)?;
    Ok(QuantizeReport {
        profile: profile_dlm(&m, bytes.len())?,
        calibration: o.calibration.name().into(),
        layers,
        int8_vs_f32_m: crate::eval::mean_abs_diff(&int8_pred, &f32_pred),
        metrics_f32,
        metrics_int8,
        qat,
        out: o.out.clone(),
    })
}
