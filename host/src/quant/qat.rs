//! Quantization-aware fine-tuning (DESIGN §7, optional QAT): a short fine-tune in which the
//! network computes as the int8 model will — BatchNorm folded with its running statistics, weights
//! rounded per output channel, every activation rounded to the grid calibration chose — with a
//! straight-through gradient, so the weights learn to sit well on the int8 grids.
//!
//! The target is the f32 network's own depth on the calibration images (self-distillation), so QAT
//! needs no labels and works on the same data-free images as calibration. The activation grids stay
//! those of the calibration ([`ActPlan`]); the `.dlm` is then written with the same plan
//! ([`super::quantize_with`]).

use candle_core::Tensor;

use super::ActPlan;
use crate::data::batch::images_to_tensor;
use crate::data::Sample;
use crate::error::{Error, Result};
use crate::nets::{vars_by_name, Net};
use crate::optim::Adam;
use crate::rng::Rng;

/// Settings of a QAT fine-tune.
#[derive(Clone, Debug)]
pub struct QatConfig {
    /// Passes over the calibration images.
    pub epochs: usize,
    /// Adam's learning rate (small: the network is already trained).
    pub lr: f64,
    pub batch_size: usize,
    /// Seed of the batch order.
    pub seed: u64,
}

impl Default for QatConfig {
    fn default() -> Self {
        QatConfig {
            epochs: 2,
            lr: 2e-5,
            batch_size: 8,
            seed: 0,
        }
    }
}

/// Fine-tunes `net` in place through the fake-quantized forward pass of `plan` on `samples`
/// (RGB images of one size); `on_step(step, total, loss)` after each update. Returns the loss per
/// step: mean |fake-quantized depth − f32 depth| in metres.
pub fn finetune(
    net: &Net,
    plan: &ActPlan,
    samples: &[Sample],
    cfg: &QatConfig,
    mut on_step: impl FnMut(usize, usize, f32),
) -> Result<Vec<f32>> {
    let first = samples
        .first()
        .ok_or_else(|| Error::Runtime("QAT needs calibration images".into()))?;
    let (w, h) = (first.width, first.height);
    if net.net.spec().input_channels != 3 {
        return Err(Error::Runtime(
            "QAT is for int8 students with an RGB input".into(),
        ));
    }
    let fq = plan.fake_quant();
    let device = &net.device;
    let targets = crate::train::predict(&net.net, samples, device)?;
    let mut opt = Adam::new(vars_by_name(&net.vars)?, cfg.lr, 0.0)?;
    let mut rng = Rng::new(cfg.seed);
    let batch = cfg.batch_size.max(1);
    let total = cfg.epochs * samples.len().div_ceil(batch);
    let mut losses = Vec::with_capacity(total);
    let mut order: Vec<usize> = (0..samples.len()).collect();
    for _ in 0..cfg.epochs {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.int(0, i));
        }
        for chunk in order.chunks(batch) {
            let images: Vec<&[u8]> = chunk.iter().map(|&k| samples[k].rgb.as_slice()).collect();
            let x = images_to_tensor(&images, w, h, device)?;
            let target: Vec<f32> = chunk
                .iter()
                .flat_map(|&k| targets[k].iter().copied())
                .collect();
            let target = Tensor::from_vec(target, (chunk.len(), 1, h, w), device)?;
            let y = net.net.forward_fake_quant(&x, &fq)?;
            let loss = (y - target)?.abs()?.mean_all()?;
            let value = loss.to_scalar::<f32>()?;
            if !value.is_finite() {
                return Err(Error::Runtime(format!(
                    "QAT loss is {value} at step {}; lower --qat-lr",
                    losses.len() + 1
                )));
            }
            opt.step(&loss.backward()?)?;
            losses.push(value);
            on_step(losses.len(), total, value);
        }
    }
    Ok(losses)
}
