//! The trainer: runs an [`Objective`] over in-memory samples for a number of steps, with
//! augmentation, progressive resizing, a learning-rate schedule, Adam, checkpoints that resume bit
//! for bit, and a clear stop when the loss diverges. It knows no distillation method: each method
//! (`crate::distill::{kd, ddd, aux, adu}`) is an objective of its own.

mod checkpoint;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor, Var};

use crate::data::batch::{
    input_tensor, to_tensors, Augment, Batcher, ColourJitter, HorizontalFlip, SmallRotation,
};
use crate::data::Sample;
use crate::error::{Error, Result};
use crate::losses::Loss;
use crate::nets::graph::{GraphNet, GraphSpec};
use crate::nets::Net;
use crate::optim::Adam;

/// One training step's batch, as an objective sees it.
pub struct Batch<'a> {
    /// The samples after augmentation (an objective may read more of them, e.g. right views).
    pub samples: &'a [Sample],
    /// The network input after the objective's input stage, `N×C×H×W`.
    pub x: Tensor,
    /// Ground-truth depth and its validity mask (0 where a sample has no label), `N×1×H×W`.
    pub gt: Tensor,
    pub mask: Tensor,
    /// Whether the batch was downsampled 2× ([`TrainConfig::coarse`]).
    pub coarse: bool,
    /// The base loss of the run.
    pub loss: Loss,
}

/// What a run trains for: the batch loss, and what a method adds around it. Supervised training
/// ([`Supervised`]) only has the loss; DDD adds an augmentation and an input stage, ADU trainable
/// heads. Everything an objective keeps between steps is in its checkpoint state.
pub trait Objective {
    /// Settings a resumed run must share with the checkpoint (part of its fingerprint).
    fn tag(&self) -> String {
        String::new()
    }

    /// Checked once before training, against the network being trained.
    fn check(&self, _student: &GraphSpec) -> Result<()> {
        Ok(())
    }

    /// Augmentations applied after the flips, rotations and jitter (DDD's object mixing).
    fn augmentations(&self) -> Result<Vec<Box<dyn Augment>>> {
        Ok(Vec::new())
    }

    /// Variables trained with the network by its optimizer (ADU's adapters and uncertainty
    /// head), by the names they have in checkpoints.
    fn trained_vars(&self) -> Result<HashMap<String, Var>> {
        Ok(HashMap::new())
    }

    /// The stage between the batch and the networks (DDD's transformation network, which trains
    /// itself here on schedule); `step` is 0-based.
    fn input(&mut self, _step: usize, x: Tensor) -> Result<Tensor> {
        Ok(x)
    }

    /// The loss of one batch for the network being trained (`student`, in training mode).
    fn loss(&mut self, student: &GraphNet, batch: &Batch<'_>) -> Result<Tensor>;

    /// What a checkpoint keeps of the objective besides [`Objective::trained_vars`]' Adam
    /// moments: its own weights and state, by checkpoint name.
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }

    /// Restores [`Objective::state`] from all of a checkpoint's tensors.
    fn restore(&mut self, _tensors: &HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
}

/// Supervised training on the samples' ground truth (invalid pixels masked out).
pub struct Supervised;

impl Objective for Supervised {
    fn loss(&mut self, student: &GraphNet, b: &Batch<'_>) -> Result<Tensor> {
        let pred = student.forward_t(&b.x, true)?;
        b.loss.compute(&pred, &b.gt, &b.mask)
    }
}

/// Periodic checkpoints of a run: weights, BatchNorm statistics, Adam moments, the step, the data
/// order's random state and the loss history, so that `resume` continues bit for bit.
#[derive(Clone, Debug)]
pub struct Checkpointing {
    pub path: PathBuf,
    /// Steps between checkpoints (the last step always writes one).
    pub every: usize,
    /// Continue from `path` if it exists.
    pub resume: bool,
}

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub schedule: Schedule,
    /// Random horizontal flips.
    pub flip: bool,
    /// Small rotations (±5°) and colour jitter (±20 %), after the flip.
    pub augment: bool,
    pub seed: u64,
    pub loss: Loss,
    pub checkpoint: Option<Checkpointing>,
    /// Share of the run, from the start, trained on batches downsampled 2× (images averaged over
    /// 2×2 pixels, depth over the valid pixels of each 2×2 block): progressive resizing, where
    /// cheap coarse steps learn the layout of the scenes first. 0: every step at full size.
    pub coarse: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 300,
            batch_size: 8,
            lr: 1e-3,
            weight_decay: 1e-4,
            schedule: Schedule::default(),
            flip: true,
            augment: false,
            seed: 0,
            loss: Loss::L1,
            checkpoint: None,
            coarse: 0.0,
        }
    }
}

/// How the learning rate moves over a run of `steps` steps from the base rate `lr`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// `lr` until this fraction of the steps, then `lr`·0.1.
    Step { at: f64 },
    /// A linear warm-up over the first 5 % of the steps, then a half cosine from `lr` towards 0
    /// at the end of the run.
    Cosine,
}

impl Default for Schedule {
    /// ×0.1 after 75 % of the steps.
    fn default() -> Self {
        Schedule::Step { at: 0.75 }
    }
}

impl std::str::FromStr for Schedule {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> crate::error::Result<Schedule> {
        Schedule::parse(s)
    }
}

impl Schedule {
    pub const NAMES: &'static str = "step, cosine";

    pub fn parse(s: &str) -> Result<Schedule> {
        match s {
            "step" => Ok(Schedule::default()),
            "cosine" => Ok(Schedule::Cosine),
            other => Err(Error::Usage(format!(
                "unknown learning-rate schedule {other:?}; known: {}",
                Self::NAMES
            ))),
        }
    }

    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, lr: f64, step: usize, steps: usize) -> f64 {
        match *self {
            Schedule::Step { at } => {
                if step >= (steps as f64 * at) as usize {
                    lr * 0.1
                } else {
                    lr
                }
            }
            Schedule::Cosine => {
                let warmup = (steps / 20).max(1);
                if step < warmup {
                    lr * (step + 1) as f64 / warmup as f64
                } else {
                    let t = (step - warmup) as f64 / (steps - warmup).max(1) as f64;
                    lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
                }
            }
        }
    }

    /// Its part of a checkpoint's fingerprint (a step schedule keeps the form older checkpoints
    /// were written with).
    fn fingerprint(&self) -> String {
        match self {
            Schedule::Step { at } => format!("decay_at={at}"),
            Schedule::Cosine => "schedule=cosine".into(),
        }
    }
}

impl TrainConfig {
    /// What a checkpoint must agree on to be resumed by this run; `tag` is the objective's.
    fn fingerprint(&self, tag: &str) -> String {
        // written only when set, so that older checkpoints stay resumable
        let coarse = if self.coarse > 0.0 {
            format!(" coarse={}", self.coarse)
        } else {
            String::new()
        };
        format!(
            "steps={} batch={} lr={} wd={} {} flip={} augment={} seed={} loss={:?} {}",
            self.steps,
            self.batch_size,
            self.lr,
            self.weight_decay,
            self.schedule.fingerprint(),
            self.flip,
            self.augment,
            self.seed,
            self.loss,
            tag
        ) + &coarse
    }

    /// `coarse` must be a share of the steps, 0 to 1.
    pub fn check_coarse(coarse: f64) -> Result<()> {
        if (0.0..=1.0).contains(&coarse) {
            Ok(())
        } else {
            Err(Error::Usage(format!(
                "--coarse {coarse} is not a share of the steps (0 to 1)"
            )))
        }
    }

    /// Whether step `step` (0-based) trains on downsampled batches.
    pub fn is_coarse(&self, step: usize) -> bool {
        step < (self.steps as f64 * self.coarse) as usize
    }
}

/// A batch downsampled 2×: inputs averaged over 2×2 pixels, depth averaged over the valid pixels
/// of each 2×2 block (a block with none stays invalid). Odd last rows and columns are dropped.
pub fn halve_batch(x: &Tensor, gt: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let x = x.avg_pool2d(2)?;
    let valid = mask.avg_pool2d(2)?;
    let sum = gt.mul(mask)?.avg_pool2d(2)?;
    let gt = sum.div(&valid.clamp(1e-6f32, 1f32)?)?;
    let mask = valid.gt(0f32)?.to_dtype(candle_core::DType::F32)?;
    Ok((x, gt, mask))
}

/// Per-step record.
#[derive(Clone, Copy, Debug)]
pub struct StepInfo {
    pub step: usize,
    pub loss: f32,
}

/// Trains `net` for `cfg.steps` steps towards `objective`. `on_step` sees every step (for
/// progress and loss curves). Returns the loss of every step (including those before a resume).
pub fn train(
    net: &Net,
    data: &[Sample],
    objective: &mut dyn Objective,
    cfg: &TrainConfig,
    mut on_step: impl FnMut(StepInfo),
) -> Result<Vec<f32>> {
    if data.is_empty() {
        return Err(Error::Runtime("no training images".into()));
    }
    let mut trained = crate::nets::vars_by_name(&net.vars)?;
    trained.extend(objective.trained_vars()?);
    let mut opt = Adam::new(trained, cfg.lr, cfg.weight_decay)?;
    let mut batches = Batcher::new(data, cfg.batch_size, cfg.seed)?;
    if cfg.flip {
        batches = batches.with(HorizontalFlip { p: 0.5 });
    }
    if cfg.augment {
        batches = batches
            .with(SmallRotation { max_degrees: 5.0 })
            .with(ColourJitter { amount: 0.2 });
    }
    for a in objective.augmentations()? {
        batches = batches.with_boxed(a);
    }
    let fingerprint = cfg.fingerprint(&objective.tag());
    let channels = net.net.spec().input_channels;
    TrainConfig::check_coarse(cfg.coarse)?;
    if cfg.coarse > 0.0 {
        let (w, h) = (data[0].width / 2, data[0].height / 2);
        net.net.spec().shapes(w, h).map_err(|e| {
            Error::Usage(format!(
                "coarse steps train on {w}×{h} batches, half the images' size, which the network cannot take: {e}"
            ))
        })?;
    }
    objective.check(net.net.spec())?;
    let mut losses = Vec::with_capacity(cfg.steps);
    let mut start = 0;
    if let Some(c) = cfg
        .checkpoint
        .as_ref()
        .filter(|c| c.resume && c.path.exists())
    {
        let (step, rng, before) =
            checkpoint::load(net, &mut opt, objective, &c.path, &fingerprint)?;
        batches.set_rng_state(rng);
        (start, losses) = (step, before);
    }
    let mut last_good: Option<(usize, PathBuf)> = None;
    for step in start..cfg.steps {
        opt.lr = cfg.schedule.lr(cfg.lr, step, cfg.steps);
        let samples = batches.next_samples();
        let coarse = cfg.is_coarse(step);
        let (x, gt, mask) = to_tensors(&samples, channels, &net.device)?;
        let (x, gt, mask) = if coarse {
            halve_batch(&x, &gt, &mask)?
        } else {
            (x, gt, mask)
        };
        let x = objective.input(step, x)?;
        let batch = Batch {
            samples: &samples,
            x,
            gt,
            mask,
            coarse,
            loss: cfg.loss,
        };
        let loss = objective.loss(&net.net, &batch)?;
        let value = loss.to_scalar::<f32>()?;
        let step_result = if value.is_finite() {
            loss.backward()
                .map_err(Error::from)
                .and_then(|g| opt.step(&g))
        } else {
            Err(Error::Runtime(format!("the loss is {value}")))
        };
        if let Err(e) = step_result {
            let kept = match &last_good {
                Some((s, p)) => format!(
                    "; the last good checkpoint is {} (step {s}): resume from it with a lower --lr",
                    p.display()
                ),
                None => "; no checkpoint was written yet".into(),
            };
            return Err(Error::Runtime(format!(
                "training diverged at step {}: {e}{kept}",
                step + 1
            )));
        }
        losses.push(value);
        on_step(StepInfo { step, loss: value });
        if let Some(c) = &cfg.checkpoint {
            let done = step + 1;
            if done % c.every.max(1) == 0 || done == cfg.steps {
                let meta = [
                    (crate::io::meta::TRAIN_CONFIG, fingerprint.clone()),
                    (crate::io::meta::TRAIN_STEP, done.to_string()),
                    (crate::io::meta::TRAIN_RNG, batches.rng_state().to_string()),
                ];
                checkpoint::save(net, &opt, objective, &c.path, &meta, &losses)?;
                last_good = Some((done, c.path.clone()));
            }
        }
    }
    Ok(losses)
}

/// The network input of a batch for a teacher taking `channels` (a stereo teacher reads the
/// right views as well), downsampled like the batch.
pub fn teacher_input(batch: &Batch<'_>, channels: usize) -> Result<Tensor> {
    if channels == batch.x.dim(1)? {
        return Ok(batch.x.clone());
    }
    let x = input_tensor(batch.samples, channels, batch.x.device())?;
    Ok(if batch.coarse { x.avg_pool2d(2)? } else { x })
}

/// `distill` plus the ground-truth loss of `pred` where `mask` marks labeled pixels; a batch of
/// unlabeled images only (depth 0, mask 0) has no ground-truth term.
pub fn with_labels(
    loss: &Loss,
    distill: Tensor,
    pred: &Tensor,
    gt: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    if mask.sum_all()?.to_scalar::<f32>()? > 0.0 {
        Ok((loss.compute(pred, gt, mask)? + distill)?)
    } else {
        Ok(distill)
    }
}

/// f32 predictions (eval mode) for every sample, row-major H×W each (stereo networks read each
/// sample's right view too).
pub fn predict(net: &GraphNet, samples: &[Sample], device: &Device) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(16) {
        let x = input_tensor(chunk, net.spec().input_channels, device)?;
        let y = net.forward_t(&x, false)?;
        let y = y.flatten_from(1)?;
        for row in 0..chunk.len() {
            out.push(y.get(row)?.to_vec1::<f32>()?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::preset;
    use crate::sim::{render_many, Domain};
    use std::path::Path;

    fn weights(net: &Net) -> Vec<(String, Vec<f32>)> {
        net.named_tensors()
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect()
    }

    #[test]
    fn schedules_give_the_documented_rates() {
        let step = Schedule::parse("step").unwrap();
        // 100 steps: 1e-3 through step 74, 1e-4 from step 75
        assert_eq!(step.lr(1e-3, 74, 100), 1e-3);
        assert_eq!(step.lr(1e-3, 75, 100), 1e-3 * 0.1);
        let cos = Schedule::parse("cosine").unwrap();
        // 100 steps: warm-up over steps 0..5 (0.2, 0.4, … of lr), then ½(1 + cos πt)
        assert!((cos.lr(1.0, 0, 100) - 0.2).abs() < 1e-12);
        assert!((cos.lr(1.0, 4, 100) - 1.0).abs() < 1e-12);
        assert!((cos.lr(1.0, 5, 100) - 1.0).abs() < 1e-12);
        let half = 5 + 95 / 2; // t = 47/95, just under the half-way point
        let want = 0.5 * (1.0 + (std::f64::consts::PI * 47.0 / 95.0).cos());
        assert!((cos.lr(1.0, half, 100) - want).abs() < 1e-12);
        assert!(cos.lr(1.0, 99, 100) < 1e-3);
        let rates: Vec<f64> = (5..100).map(|s| cos.lr(1.0, s, 100)).collect();
        assert!(rates.windows(2).all(|w| w[1] < w[0]), "falls after warm-up");
        assert!(Schedule::parse("linear").is_err());
    }

    /// 2×2 averages of the image, and of depth over only the valid pixels of each block.
    #[test]
    fn halved_batches_average_valid_depth() {
        let dev = Device::Cpu;
        // one 4×2 image: x = 0..8; depth with two invalid pixels (0)
        let x = Tensor::arange(0f32, 8.0, &dev)
            .unwrap()
            .reshape((1, 1, 2, 4))
            .unwrap();
        let gt = Tensor::new(&[[[[2f32, 0.0, 0.0, 0.0], [4.0, 6.0, 0.0, 0.0]]]], &dev).unwrap();
        let mask = gt
            .gt(0f32)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let (x2, gt2, mask2) = halve_batch(&x, &gt, &mask).unwrap();
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(
            v(&x2),
            [(0.0 + 1.0 + 4.0 + 5.0) / 4.0, (2.0 + 3.0 + 6.0 + 7.0) / 4.0]
        );
        // (2 + 4 + 6) / 3, not / 4; the all-invalid block stays invalid
        assert!((v(&gt2)[0] - 4.0).abs() < 1e-6, "{:?}", v(&gt2));
        assert_eq!(v(&gt2)[1], 0.0);
        assert_eq!(v(&mask2), [1.0, 0.0]);
    }

    /// The first `coarse` share of the steps runs on halved batches; a coarse run trains, is
    /// resumable only with the same share, and ends with a net for the full size.
    #[test]
    fn coarse_steps_come_first_and_are_part_of_the_fingerprint() {
        let cfg = TrainConfig {
            steps: 10,
            coarse: 0.5,
            ..TrainConfig::default()
        };
        let coarse: Vec<bool> = (0..10).map(|s| cfg.is_coarse(s)).collect();
        assert_eq!(
            coarse,
            [true, true, true, true, true, false, false, false, false, false]
        );
        assert!(!TrainConfig::default().is_coarse(0));
        assert_ne!(
            cfg.fingerprint(""),
            TrainConfig {
                coarse: 0.0,
                ..cfg.clone()
            }
            .fingerprint("")
        );
        assert!(!TrainConfig::default().fingerprint("").contains("coarse"));

        let dir = tempfile::tempdir().unwrap();
        let data = render_many(Domain::Indoor, 64, 64, 5, 0, 4, false);
        let net = Net::new(preset("demo-teacher", 0.25).unwrap(), &Device::Cpu, 1).unwrap();
        let run = TrainConfig {
            coarse: 0.5,
            loss: Loss::L1,
            ..config(4, &dir.path().join("c.ckpt"), false)
        };
        let losses = train(&net, &data, &mut Supervised, &run, |_| {}).unwrap();
        assert_eq!(losses.len(), 4);
        assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
        // the same first batch and weights at full size give another loss: the step was halved
        let fresh = Net::new(preset("demo-teacher", 0.25).unwrap(), &Device::Cpu, 1).unwrap();
        let full = TrainConfig {
            coarse: 0.0,
            checkpoint: None,
            ..run.clone()
        };
        let full_losses = train(&fresh, &data, &mut Supervised, &full, |_| {}).unwrap();
        assert_ne!(losses[0], full_losses[0]);
        let e = train(
            &fresh,
            &data,
            &mut Supervised,
            &TrainConfig {
                coarse: -0.5,
                ..full
            },
            |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a share of the steps"), "{e}");
        let pred = predict(&net.net, &data[..1], &Device::Cpu).unwrap();
        assert_eq!(pred[0].len(), 64 * 64);
        // a size whose half the network cannot take is refused before training, naming it
        let odd = render_many(Domain::Indoor, 64, 48, 5, 0, 2, false);
        let e = train(&net, &odd, &mut Supervised, &run, |_| {}).unwrap_err();
        assert!(e.to_string().contains("32×24"), "{e}");
        let other = TrainConfig {
            coarse: 0.25,
            ..run.clone()
        };
        let resumed = TrainConfig {
            checkpoint: Some(Checkpointing {
                resume: true,
                ..run.checkpoint.clone().unwrap()
            }),
            ..other
        };
        let e = train(&net, &data, &mut Supervised, &resumed, |_| {}).unwrap_err();
        assert!(e.to_string().contains("c.ckpt"), "{e}");
    }

    fn config(steps: usize, path: &Path, resume: bool) -> TrainConfig {
        TrainConfig {
            steps,
            batch_size: 2,
            lr: 1e-3,
            seed: 3,
            loss: Loss::Hu,
            checkpoint: Some(Checkpointing {
                path: path.to_path_buf(),
                every: 3,
                resume,
            }),
            ..TrainConfig::default()
        }
    }

    /// A run stopped after its step-3 checkpoint and resumed ends with the same weights, BatchNorm
    /// statistics and losses, bit for bit, as the run that was never stopped.
    #[test]
    fn resume_reproduces_the_uninterrupted_run() {
        let dir = tempfile::tempdir().unwrap();
        let data = render_many(Domain::Indoor, 32, 24, 5, 0, 6, false);
        let dev = Device::Cpu;
        let (full, saved) = (
            dir.path().join("full.ckpt"),
            dir.path().join("stopped.ckpt"),
        );
        let net = Net::new(preset("demo-student", 0.5).unwrap(), &dev, 1).unwrap();
        let losses = train(
            &net,
            &data,
            &mut Supervised,
            &config(7, &full, false),
            |s| {
                if s.step == 3 {
                    // the file now holds the checkpoint written after step 3
                    std::fs::copy(&full, &saved).unwrap();
                }
            },
        )
        .unwrap();
        let resumed = Net::new(preset("demo-student", 0.5).unwrap(), &dev, 1).unwrap();
        let mut seen = Vec::new();
        let again = train(
            &resumed,
            &data,
            &mut Supervised,
            &config(7, &saved, true),
            |s| seen.push(s.step),
        )
        .unwrap();
        assert_eq!(seen, vec![3, 4, 5, 6], "resumed at the wrong step");
        assert_eq!(again, losses);
        assert_eq!(weights(&resumed), weights(&net));
        // a checkpoint of a run with other settings is refused, naming the file
        let other = TrainConfig {
            lr: 2e-3,
            ..config(7, &saved, true)
        };
        let e = train(&resumed, &data, &mut Supervised, &other, |_| {}).unwrap_err();
        assert!(e.to_string().contains("stopped.ckpt"), "{e}");
    }

    /// A run whose loss blows up stops with a message naming the step and the last good
    /// checkpoint, which is left intact and loadable.
    #[test]
    fn divergence_stops_and_keeps_the_last_good_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let data = render_many(Domain::Indoor, 32, 24, 5, 0, 4, false);
        let path = dir.path().join("run.ckpt");
        let net = Net::new(preset("demo-student", 0.5).unwrap(), &Device::Cpu, 1).unwrap();
        let mut cfg = TrainConfig {
            loss: Loss::L1,
            ..config(40, &path, false)
        };
        // sane for 3 steps, then absurd: the step-3 checkpoint is the last good one
        train(
            &net,
            &data,
            &mut Supervised,
            &TrainConfig {
                steps: 3,
                ..cfg.clone()
            },
            |_| {},
        )
        .unwrap();
        cfg.lr = 1e38;
        cfg.checkpoint = Some(Checkpointing {
            path: dir.path().join("wild.ckpt"),
            every: 1,
            resume: false,
        });
        let e = train(&net, &data, &mut Supervised, &cfg, |_| {}).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("training diverged at step"), "{msg}");
        assert!(
            msg.contains("wild.ckpt") || msg.contains("no checkpoint"),
            "{msg}"
        );
        let (loaded, _) = Net::load(&path, &Device::Cpu).unwrap();
        assert!(!weights(&loaded).is_empty());
    }
}
