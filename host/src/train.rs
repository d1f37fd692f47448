//! Supervised and distillation training of a [`Net`] on in-memory samples.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::adu::AduHeads;
use crate::data::batch::{
    input_tensor, to_tensors, Augment, Batcher, ColourJitter, HorizontalFlip, SmallRotation,
};
use crate::data::Sample;
use crate::distill::TransformStage;
use crate::error::{Error, Result};
use crate::losses::Loss;
use crate::nets::graph::GraphNet;
use crate::nets::Net;
use crate::optim::Adam;

/// What the network learns to predict.
pub enum Target<'a> {
    /// Ground-truth depth of the samples (invalid pixels masked out).
    Labels,
    /// The teacher's prediction on the same (augmented) image: knowledge distillation.
    Teacher(&'a GraphNet),
    /// Both (the LW paper's auxiliary-data KD): the ground-truth loss where a sample has labels
    /// (unlabeled samples carry depth 0 everywhere) plus `kd_weight` × the loss against the
    /// teacher's prediction on every sample.
    Aux {
        teacher: &'a GraphNet,
        kd_weight: f64,
    },
    /// ADU-Depth: the ground-truth loss where a sample has labels, plus the distillation terms
    /// of `heads` against a teacher that may be stereo (it then reads the right views too).
    Adu {
        teacher: &'a GraphNet,
        heads: &'a AduHeads,
    },
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
    /// Further settings a resumed run must share (e.g. DDD's switches).
    pub tag: String,
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
            tag: String::new(),
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
    /// What a checkpoint must agree on to be resumed by this run.
    fn fingerprint(&self) -> String {
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
            self.tag
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

/// What DDD adds to a run: augmentations after the flip (object mixing) and an input stage
/// (the transformation network) between the batch and the networks.
#[derive(Default)]
pub struct Extras<'a> {
    pub augment: Vec<Box<dyn Augment>>,
    pub stage: Option<&'a mut TransformStage<'a>>,
}

/// Per-step record.
#[derive(Clone, Copy, Debug)]
pub struct StepInfo {
    pub step: usize,
    pub loss: f32,
}

/// Writes a checkpoint (through a temporary name: an interrupted write never replaces the last
/// good one).
fn save_checkpoint(
    net: &Net,
    opt: &Adam,
    stage: Option<&TransformStage>,
    heads: Option<&AduHeads>,
    path: &Path,
    meta: &[(&str, String)],
    losses: &[f32],
) -> Result<()> {
    let mut tensors = net.named_tensors()?;
    tensors.extend(opt.state()?);
    if let Some(h) = heads {
        tensors.extend(h.state()?);
    }
    if let Some(st) = stage {
        tensors.extend(
            st.state()?
                .into_iter()
                .map(|(k, t)| (format!("transform.{k}"), t)),
        );
    }
    let mut all: Vec<(&str, String)> = meta.to_vec();
    // loadable as a network too (`Net::load`), e.g. to evaluate the last good state
    all.push((
        "depthling.arch",
        serde_json::to_string(net.net.spec()).map_err(|e| Error::Runtime(e.to_string()))?,
    ));
    all.push((
        "train.losses",
        serde_json::to_string(losses).map_err(|e| Error::Runtime(e.to_string()))?,
    ));
    crate::nets::write_safetensors(path, &tensors, &all)
}

/// Restores a checkpoint written by [`save_checkpoint`]; returns `(step, rng state, losses)`.
fn load_checkpoint(
    net: &Net,
    opt: &mut Adam,
    stage: Option<&mut TransformStage>,
    heads: Option<&AduHeads>,
    path: &Path,
    fingerprint: &str,
) -> Result<(usize, u64, Vec<f32>)> {
    let bad = |m: String| Error::bad_input(path, m);
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a checkpoint ({e})")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let get = |k: &str| {
        meta.get(k)
            .cloned()
            .ok_or_else(|| bad(format!("not a training checkpoint (no {k})")))
    };
    let theirs = get("train.config")?;
    if theirs != fingerprint {
        return Err(bad(format!(
            "written by a run with other settings ({theirs}); this run has {fingerprint}"
        )));
    }
    let parse = |k: &str| -> Result<u64> {
        get(k)?
            .parse::<u64>()
            .map_err(|_| bad(format!("unreadable {k}")))
    };
    let (step, rng) = (parse("train.step")? as usize, parse("train.rng")?);
    let losses: Vec<f32> = serde_json::from_str(&get("train.losses")?)
        .map_err(|_| bad("unreadable train.losses".into()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &net.device)?;
    net.restore(&tensors).map_err(|e| bad(e.to_string()))?;
    if let Some(h) = heads {
        h.restore(&tensors).map_err(|e| bad(e.to_string()))?;
    }
    opt.restore(&tensors, step)
        .map_err(|e| bad(e.to_string()))?;
    if let Some(st) = stage {
        let own: std::collections::HashMap<String, Tensor> = tensors
            .iter()
            .filter_map(|(k, t)| {
                k.strip_prefix("transform.")
                    .map(|k| (k.to_string(), t.clone()))
            })
            .collect();
        st.restore(&own).map_err(|e| bad(e.to_string()))?;
    }
    Ok((step, rng, losses))
}

/// Trains `net` for `cfg.steps` steps. `on_step` sees every step (for progress and loss curves).
/// Returns the loss of every step (including those before a resume).
pub fn train(
    net: &Net,
    data: &[Sample],
    target: Target<'_>,
    cfg: &TrainConfig,
    on_step: impl FnMut(StepInfo),
) -> Result<Vec<f32>> {
    train_with(net, data, target, cfg, Extras::default(), on_step)
}

/// [`train`] with DDD's augmentations and input stage.
pub fn train_with(
    net: &Net,
    data: &[Sample],
    target: Target<'_>,
    cfg: &TrainConfig,
    extras: Extras<'_>,
    mut on_step: impl FnMut(StepInfo),
) -> Result<Vec<f32>> {
    let Extras { augment, mut stage } = extras;
    if data.is_empty() {
        return Err(Error::Runtime("no training images".into()));
    }
    let heads = match &target {
        Target::Adu { heads, .. } => Some(*heads),
        _ => None,
    };
    let mut trained = crate::nets::vars_by_name(&net.vars)?;
    if let Some(h) = heads {
        trained.extend(h.named_vars()?);
    }
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
    for a in augment {
        batches = batches.with_boxed(a);
    }
    let fingerprint = cfg.fingerprint();
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
    if let Target::Adu { teacher: t, .. } = &target {
        let tc = t.spec().input_channels;
        if tc != channels && tc != 2 * channels {
            return Err(Error::Usage(format!(
                "the teacher takes {tc} input channels and the student {channels}: ADU needs a monocular or stereo teacher of the student's images"
            )));
        }
    } else if let Target::Teacher(t) | Target::Aux { teacher: t, .. } = &target {
        if t.spec().input_channels != channels {
            return Err(Error::Usage(format!(
                "the teacher takes {} input channels and the student {channels}; a stereo teacher's predictions are distilled by the adu method",
                t.spec().input_channels
            )));
        }
    }
    let mut losses = Vec::with_capacity(cfg.steps);
    let mut start = 0;
    if let Some(c) = cfg
        .checkpoint
        .as_ref()
        .filter(|c| c.resume && c.path.exists())
    {
        let (step, rng, before) = load_checkpoint(
            net,
            &mut opt,
            stage.as_deref_mut(),
            heads,
            &c.path,
            &fingerprint,
        )?;
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
        let x = match stage.as_deref_mut() {
            Some(st) => st.apply(step, &x)?,
            None => x,
        };
        let loss = match &target {
            Target::Labels => {
                let pred = net.net.forward_t(&x, true)?;
                cfg.loss.compute(&pred, &gt, &mask)?
            }
            Target::Teacher(t) => {
                let y = t.forward_t(&x, false)?.detach();
                let pred = net.net.forward_t(&x, true)?;
                cfg.loss.compute(&pred, &y, &mask.ones_like()?)?
            }
            Target::Aux { teacher, kd_weight } => {
                let y = teacher.forward_t(&x, false)?.detach();
                let pred = net.net.forward_t(&x, true)?;
                let kd = (cfg.loss.compute(&pred, &y, &mask.ones_like()?)? * *kd_weight)?;
                with_labels(&cfg.loss, kd, &pred, &gt, &mask)?
            }
            Target::Adu { teacher, heads } => {
                let tc = teacher.spec().input_channels;
                let xt = if tc == channels {
                    x.clone()
                } else if coarse {
                    input_tensor(&samples, tc, &net.device)?.avg_pool2d(2)?
                } else {
                    input_tensor(&samples, tc, &net.device)?
                };
                let t = teacher.forward_nodes(&xt, false)?;
                let s = net.net.forward_nodes(&x, true)?;
                let distill = heads.loss(&s, &t)?;
                with_labels(&cfg.loss, distill, &s[s.len() - 1].0, &gt, &mask)?
            }
        };
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
                    ("train.config", fingerprint.clone()),
                    ("train.step", done.to_string()),
                    ("train.rng", batches.rng_state().to_string()),
                ];
                save_checkpoint(net, &opt, stage.as_deref(), heads, &c.path, &meta, &losses)?;
                last_good = Some((done, c.path.clone()));
            }
        }
    }
    Ok(losses)
}

/// `distill` plus the ground-truth loss of `pred` where `mask` marks labeled pixels; a batch of
/// unlabeled images only (depth 0, mask 0) has no ground-truth term.
fn with_labels(
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
            cfg.fingerprint(),
            TrainConfig {
                coarse: 0.0,
                ..cfg.clone()
            }
            .fingerprint()
        );
        assert!(!TrainConfig::default().fingerprint().contains("coarse"));

        let dir = tempfile::tempdir().unwrap();
        let data = render_many(Domain::Indoor, 64, 64, 5, 0, 4, false);
        let net = Net::new(preset("demo-teacher", 0.25).unwrap(), &Device::Cpu, 1).unwrap();
        let run = TrainConfig {
            coarse: 0.5,
            loss: Loss::L1,
            ..config(4, &dir.path().join("c.ckpt"), false)
        };
        let losses = train(&net, &data, Target::Labels, &run, |_| {}).unwrap();
        assert_eq!(losses.len(), 4);
        assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
        // the same first batch and weights at full size give another loss: the step was halved
        let fresh = Net::new(preset("demo-teacher", 0.25).unwrap(), &Device::Cpu, 1).unwrap();
        let full = TrainConfig {
            coarse: 0.0,
            checkpoint: None,
            ..run.clone()
        };
        let full_losses = train(&fresh, &data, Target::Labels, &full, |_| {}).unwrap();
        assert_ne!(losses[0], full_losses[0]);
        let e = train(
            &fresh,
            &data,
            Target::Labels,
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
        let e = train(&net, &odd, Target::Labels, &run, |_| {}).unwrap_err();
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
        let e = train(&net, &data, Target::Labels, &resumed, |_| {}).unwrap_err();
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
        let losses = train(&net, &data, Target::Labels, &config(7, &full, false), |s| {
            if s.step == 3 {
                // the file now holds the checkpoint written after step 3
                std::fs::copy(&full, &saved).unwrap();
            }
        })
        .unwrap();
        let resumed = Net::new(preset("demo-student", 0.5).unwrap(), &dev, 1).unwrap();
        let mut seen = Vec::new();
        let again = train(
            &resumed,
            &data,
            Target::Labels,
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
        let e = train(&resumed, &data, Target::Labels, &other, |_| {}).unwrap_err();
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
            Target::Labels,
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
        let e = train(&net, &data, Target::Labels, &cfg, |_| {}).unwrap_err();
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
