//! Supervised and distillation training of a [`Net`] on in-memory samples.

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::data::batch::{to_tensors, Batcher, HorizontalFlip};
use crate::data::Sample;
use crate::error::{Error, Result};
use crate::nets::graph::{images_to_tensor, GraphNet};
use crate::nets::Net;

/// What the network learns to predict.
pub enum Target<'a> {
    /// Ground-truth depth of the samples (invalid pixels masked out).
    Labels,
    /// The teacher's prediction on the same (augmented) image: knowledge distillation.
    Teacher(&'a GraphNet),
}

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Fraction of the steps after which the learning rate drops ×0.1.
    pub decay_at: f64,
    /// Random horizontal flips.
    pub flip: bool,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 300,
            batch_size: 8,
            lr: 1e-3,
            weight_decay: 1e-4,
            decay_at: 0.75,
            flip: true,
            seed: 0,
        }
    }
}

/// Per-step record.
#[derive(Clone, Copy, Debug)]
pub struct StepInfo {
    pub step: usize,
    pub loss: f32,
}

/// Masked L1: mean |d − g| over pixels with `mask = 1`.
pub fn masked_l1(pred: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let diff = ((pred - target)?.abs()? * mask)?;
    let count = mask.sum_all()?.maximum(1f32)?;
    Ok(diff.sum_all()?.div(&count)?)
}

/// Trains `net` for `cfg.steps` steps. `on_step` sees every step (for progress and loss curves).
pub fn train(
    net: &Net,
    data: &[Sample],
    target: Target<'_>,
    cfg: &TrainConfig,
    mut on_step: impl FnMut(StepInfo),
) -> Result<Vec<f32>> {
    if data.is_empty() {
        return Err(Error::Runtime("no training images".into()));
    }
    let mut opt = AdamW::new(
        net.vars.all_vars(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let mut batches = Batcher::new(data, cfg.batch_size, cfg.seed)?;
    if cfg.flip {
        batches = batches.with(HorizontalFlip { p: 0.5 });
    }
    let mut losses = Vec::with_capacity(cfg.steps);
    let decay_step = (cfg.steps as f64 * cfg.decay_at) as usize;
    for step in 0..cfg.steps {
        if step == decay_step {
            opt.set_learning_rate(cfg.lr * 0.1);
        }
        let (x, gt, mask) = to_tensors(&batches.next_samples(), &net.device)?;
        let (target, mask) = match &target {
            Target::Labels => (gt, mask),
            Target::Teacher(t) => (t.forward_t(&x, false)?.detach(), mask.ones_like()?),
        };
        let pred = net.net.forward_t(&x, true)?;
        let loss = masked_l1(&pred, &target, &mask)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(Error::Runtime(format!(
                "training diverged at step {step}: loss is {value}"
            )));
        }
        opt.backward_step(&loss)?;
        losses.push(value);
        on_step(StepInfo { step, loss: value });
    }
    Ok(losses)
}

/// f32 predictions (eval mode) for every sample, row-major H×W each.
pub fn predict(net: &GraphNet, samples: &[Sample], device: &Device) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(16) {
        let refs: Vec<&[u8]> = chunk.iter().map(|s| s.rgb.as_slice()).collect();
        let x = images_to_tensor(&refs, chunk[0].width, chunk[0].height, device)?;
        let y = net.forward_t(&x, false)?;
        let y = y.flatten_from(1)?;
        for row in 0..chunk.len() {
            out.push(y.get(row)?.to_vec1::<f32>()?);
        }
    }
    Ok(out)
}
