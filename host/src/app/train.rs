//! `depthling train-teacher`, and the training settings it shares with `distill`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

use super::{checkpoint_path, parse_arg, training_progress, Compute};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::losses::Loss;
use crate::nets::{preset, Net};
use crate::train::{train, Schedule, TrainConfig};

/// Training settings shared by `train-teacher` and `distill`.
#[derive(Clone, Debug, clap::Args)]
pub struct TrainOptions {
    /// Width multiplier of the architecture.
    #[arg(long, default_value_t = 1.0)]
    pub width: f32,
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Learning-rate schedule: step (×0.1 after 75 % of the steps) or cosine (5 % linear
    /// warm-up, then a half cosine towards 0).
    #[arg(long, default_value = "step", value_parser = parse_arg::<Schedule>)]
    pub schedule: Schedule,
    /// Share of the steps, from the start, trained on batches downsampled 2× (progressive
    /// resizing: cheap coarse steps first), e.g. 0.5.
    #[arg(long, default_value_t = 0.0, value_parser = parse_coarse)]
    pub coarse: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Depth units per metre of CSV lists (dataset folders carry theirs).
    #[arg(long, default_value_t = 1000.0)]
    pub depth_scale: f32,
    /// Depth loss: l1, logl1 (L1 of ln depth), berhu, silog or hu (Hu et al.: depth + Sobel gradient + normal).
    #[arg(long, default_value = "l1", value_parser = parse_arg::<Loss>)]
    pub loss: Loss,
    /// Steps between checkpoints (OUT.ckpt.safetensors: weights, Adam state, step, RNG);
    /// 0 means a tenth of the run.
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Continue from OUT.ckpt.safetensors where an earlier run stopped (same settings), with
    /// the same result as an uninterrupted run.
    #[arg(long)]
    pub resume: bool,
    /// cpu, or cuda (a build with `--features cuda`; GPU 0).
    #[arg(long, default_value = "cpu", value_parser = parse_arg::<Compute>)]
    pub device: Compute,
    /// Only horizontal flips: no small rotations (±5°) or colour jitter (±20 %).
    #[arg(long = "no-augment", action = clap::ArgAction::SetFalse)]
    pub augment: bool,
    #[arg(skip)]
    pub quiet: bool,
}

fn parse_coarse(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    TrainConfig::check_coarse(v).map_err(|e| e.to_string())?;
    Ok(v)
}

impl TrainOptions {
    /// Steps for `epochs` passes over `n` images; checkpoints beside `out`.
    pub fn config(&self, n: usize, out: &Path) -> TrainConfig {
        let steps = (self.epochs * n.div_ceil(self.batch_size.max(1))).max(1);
        let every = match self.checkpoint_every {
            0 => steps.div_ceil(10),
            e => e,
        };
        TrainConfig {
            steps,
            batch_size: self.batch_size,
            lr: self.lr,
            schedule: self.schedule,
            coarse: self.coarse,
            seed: self.seed,
            loss: self.loss,
            augment: self.augment,
            checkpoint: Some(crate::train::Checkpointing {
                path: checkpoint_path(out),
                every,
                resume: self.resume,
            }),
            ..Default::default()
        }
    }

    /// A fresh network of architecture `arch`, checked against the image size.
    pub fn network(&self, arch: &str, width: usize, height: usize, device: &Device) -> Result<Net> {
        let spec = preset(arch, self.width)?;
        spec.shapes(width, height)?;
        Net::new(spec, device, self.seed)
    }
}

/// Settings of `depthling train-teacher`.
#[derive(Clone, Debug, clap::Args)]
pub struct TrainTeacherConfig {
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value = "demo-teacher")]
    pub arch: String,
    /// A stereo teacher: left and right views in six channels (the `-stereo` variant of --arch).
    #[arg(long)]
    pub stereo: bool,
    /// Share of the dataset held out and evaluated at the end.
    #[arg(long, default_value_t = 0.1)]
    pub test_fraction: f32,
    #[command(flatten)]
    pub options: TrainOptions,
    #[arg(long)]
    pub out: PathBuf,
}

/// What `train-teacher` and `distill` report (`--json`).
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub out: PathBuf,
    pub arch: String,
    pub params: u64,
    /// Training images (after `--images-fraction`; without the held-out split).
    pub images: usize,
    pub steps: usize,
    pub seconds: f64,
    pub loss_first: f32,
    pub loss_last: f32,
    /// `train-teacher`: metrics on the held-out split (none when it is empty).
    pub test: Option<crate::eval::EvalReport>,
    /// `teacher` or `student`, for the line printed on the terminal.
    #[serde(skip)]
    pub kind: &'static str,
}

impl TrainReport {
    pub(crate) fn new(
        kind: &'static str,
        arch: &str,
        net: &Net,
        images: usize,
        losses: &[f32],
        start: Instant,
        out: &Path,
    ) -> Self {
        TrainReport {
            out: out.to_path_buf(),
            arch: arch.to_string(),
            params: net.net.spec().params() as u64,
            images,
            steps: losses.len(),
            seconds: start.elapsed().as_secs_f64(),
            loss_first: losses.first().copied().unwrap_or(f32::NAN),
            loss_last: losses.last().copied().unwrap_or(f32::NAN),
            test: None,
            kind,
        }
    }
}

impl std::fmt::Display for TrainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kind == "teacher" {
            write!(
                f,
                "teacher written to {} ({} steps, loss {:.4} → {:.4}, {:.0} s)",
                self.out.display(),
                self.steps,
                self.loss_first,
                self.loss_last,
                self.seconds
            )?;
        } else {
            write!(
                f,
                "student written to {} ({} steps on {} images, loss {:.4} → {:.4}, {:.0} s)",
                self.out.display(),
                self.steps,
                self.images,
                self.loss_first,
                self.loss_last,
                self.seconds
            )?;
        }
        if let Some(m) = &self.test {
            write!(
                f,
                "\nheld-out {} images: abs_rel {:.4}  rmse {:.4}  δ1 {:.4}",
                m.images, m.abs_rel, m.rmse, m.delta1
            )?;
        }
        Ok(())
    }
}

/// `depthling train-teacher`: supervised training on a labeled dataset; a deterministic share is
/// held out and evaluated at the end (`test` is `None` when the dataset is too small to hold any
/// out).
pub fn train_teacher(cfg: &TrainTeacherConfig) -> Result<TrainReport> {
    let start = Instant::now();
    let o = &cfg.options;
    let arch = if cfg.stereo {
        format!("{}-stereo", cfg.arch)
    } else {
        cfg.arch.clone()
    };
    let samples = Dataset::open(&cfg.data, o.depth_scale)?
        .require_labels("train-teacher")?
        .load_all(None)?;
    let (train_idx, test_idx) = crate::data::batch::split(samples.len(), cfg.test_fraction, o.seed);
    let pick = |idx: &[usize]| idx.iter().map(|&i| samples[i].clone()).collect::<Vec<_>>();
    let (train_set, test_set) = (pick(&train_idx), pick(&test_idx));
    if train_set.is_empty() {
        return Err(Error::bad_input(
            &cfg.data,
            "no images left for training after the test split",
        ));
    }
    let (w, h) = (train_set[0].width, train_set[0].height);
    let device = o.device.device()?;
    let net = o.network(&arch, w, h, &device)?;
    let tc = o.config(train_set.len(), &cfg.out);
    let losses = train(
        &net,
        &train_set,
        &mut crate::train::Supervised,
        &tc,
        training_progress(o.quiet, "train-teacher", tc.steps, tc.batch_size),
    )?;
    net.save(
        &cfg.out,
        &[("kind", "teacher".into()), ("size", format!("{w}x{h}"))],
    )?;
    let mut report = TrainReport::new(
        "teacher",
        &arch,
        &net,
        train_set.len(),
        &losses,
        start,
        &cfg.out,
    );
    if !test_set.is_empty() {
        let preds = crate::train::predict(&net.net, &test_set, &device)?;
        report.test = Some(crate::eval::evaluate(
            &preds,
            &test_set,
            &depthling_metrics::EvalConfig::default(),
        )?);
    }
    Ok(report)
}
