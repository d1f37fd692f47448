//! Data-free distillation from out-of-distribution images (DDD, DESIGN §6): object-wise mixing
//! of instance-masked objects between simulated images, and a transformation network trained so
//! that the teacher's BatchNorm layers see their training statistics on x′ = x + T(x).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::kd::Kd;
use crate::data::batch::Augment;
use crate::data::Sample;
use crate::error::{Error, Result};
use crate::nets::graph::{GraphNet, GraphSpec};
use crate::optim::Adam;
use crate::rng::Rng;
use crate::teacher::Teacher;
use crate::train::{Batch, Objective};

/// Where and how big one pasted object is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    /// The donor's instance id (≥ 1).
    pub instance: u16,
    /// Scale of the pasted object relative to the donor.
    pub scale: f32,
    /// Shift of the object's bounding box corner, in base-image pixels.
    pub dx: isize,
    pub dy: isize,
}

/// The bounding box `(x0, y0, x1, y1)` (exclusive ends) of instance `id` in `mask`.
fn bounding_box(mask: &[u16], width: usize, id: u16) -> Option<(usize, usize, usize, usize)> {
    let mut b: Option<(usize, usize, usize, usize)> = None;
    for (i, _) in mask.iter().enumerate().filter(|(_, &m)| m == id) {
        let (x, y) = (i % width, i / width);
        b = Some(match b {
            None => (x, y, x + 1, y + 1),
            Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1)),
        });
    }
    b
}

/// Pastes instance `p.instance` of `donor` onto `base`: the object's pixels (RGB, depth, and a
/// new instance id) replace the base's where the scaled object lands; every other pixel of the
/// base is left as it was. Nearest-neighbour scaling keeps pasted pixels exact donor pixels.
pub fn paste(base: &Sample, donor: &Sample, p: Placement) -> Result<Sample> {
    if (base.width, base.height) != (donor.width, donor.height) {
        return Err(Error::Runtime(
            "object mixing needs images of one size".into(),
        ));
    }
    let mask = donor
        .instance
        .as_ref()
        .ok_or_else(|| Error::Usage("object mixing needs instance masks (OOD images from `depthling simulate --domain ood`)".into()))?;
    let (w, h) = (base.width, base.height);
    let mut out = base.clone();
    let Some((x0, y0, x1, y1)) = bounding_box(mask, w, p.instance) else {
        return Ok(out);
    };
    let new_id = base.instance.as_ref().map_or(1, |m| {
        m.iter().copied().max().unwrap_or(0).saturating_add(1)
    });
    let mut inst = base.instance.clone().unwrap_or_else(|| vec![0; w * h]);
    let (bw, bh) = (x1 - x0, y1 - y0);
    let (sw, sh) = (
        ((bw as f32 * p.scale).round() as usize).max(1),
        ((bh as f32 * p.scale).round() as usize).max(1),
    );
    for ty in 0..sh {
        let y = y0 as isize + p.dy + ty as isize;
        if y < 0 || y >= h as isize {
            continue;
        }
        let sy = y0 + (ty * bh / sh).min(bh - 1);
        for tx in 0..sw {
            let x = x0 as isize + p.dx + tx as isize;
            if x < 0 || x >= w as isize {
                continue;
            }
            let sx = x0 + (tx * bw / sw).min(bw - 1);
            let (src, dst) = (sy * w + sx, y as usize * w + x as usize);
            if mask[src] != p.instance {
                continue;
            }
            out.rgb[dst * 3..dst * 3 + 3].copy_from_slice(&donor.rgb[src * 3..src * 3 + 3]);
            out.depth[dst] = donor.depth[src];
            inst[dst] = new_id;
        }
    }
    out.instance = Some(inst);
    out.right = None;
    Ok(out)
}

/// Object-wise mixing as a batch augmentation: pastes 1–`max_objects` objects from other images
/// of the set at random scale (0.5–1.5) and position.
pub struct ObjectMix {
    pub donors: Arc<Vec<Sample>>,
    pub max_objects: usize,
}

impl Augment for ObjectMix {
    fn apply(&self, sample: &Sample, rng: &mut Rng) -> Sample {
        let mut out = sample.clone();
        if self.donors.is_empty() {
            return out;
        }
        let n = rng.int(1, self.max_objects.max(1));
        for _ in 0..n {
            let donor = &self.donors[rng.int(0, self.donors.len() - 1)];
            let Some(mask) = &donor.instance else {
                continue;
            };
            let top = mask.iter().copied().max().unwrap_or(0);
            if top == 0 {
                continue;
            }
            let instance = rng.int(1, top as usize) as u16;
            let p = Placement {
                instance,
                scale: rng.range(0.5, 1.5),
                dx: rng.int(0, out.width) as isize - out.width as isize / 2,
                dy: rng.int(0, out.height) as isize - out.height as isize / 2,
            };
            if let Ok(mixed) = paste(&out, donor, p) {
                out = mixed;
            }
        }
        out
    }
}

/// The transformation network T: three 3×3 convolutions (3→16→16→3, ReLU between), the last
/// initialised to zero so that x + T(x) starts as the identity.
pub struct Transform {
    pub vars: VarMap,
    convs: Vec<(Tensor, Tensor)>,
}

impl Transform {
    pub fn new(device: &Device, seed: u64) -> Result<Transform> {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, device);
        let mut rng = Rng::new(seed);
        let mut convs = Vec::new();
        for (i, (cin, cout)) in [(3usize, 16usize), (16, 16), (16, 3)]
            .into_iter()
            .enumerate()
        {
            let w = vb.get_with_hints(
                (cout, cin, 3, 3),
                &format!("t{i}.weight"),
                candle_nn::Init::Const(0.0),
            )?;
            let b = vb.get_with_hints(cout, &format!("t{i}.bias"), candle_nn::Init::Const(0.0))?;
            convs.push((w, b));
        }
        // He-normal for the first two from our seeded RNG; the last stays zero
        let data = vars
            .data()
            .lock()
            .map_err(|_| Error::Runtime("variable store poisoned".into()))?;
        for i in 0..2 {
            let var = &data[&format!("t{i}.weight")];
            let dims = var.as_tensor().dims().to_vec();
            let std = (2.0 / (dims[1] * 9) as f32).sqrt();
            let v: Vec<f32> = (0..dims.iter().product::<usize>())
                .map(|_| rng.normal() * std)
                .collect();
            var.set(&Tensor::from_vec(v, dims, device)?)?;
        }
        drop(data);
        Ok(Transform { vars, convs })
    }

    /// x′ = clamp(x + T(x), 0, 1): a transformed image is still an image in the teacher's input
    /// range (unclamped, T shifts colours far outside it to match the statistics).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        for (i, (w, b)) in self.convs.iter().enumerate() {
            y = crate::nets::ops::conv2d(&y, w, 1, 1)?.broadcast_add(&b.reshape((
                1,
                (),
                1,
                1,
            ))?)?;
            if i + 1 < self.convs.len() {
                y = y.relu()?;
            }
        }
        Ok((x + y)?.clamp(0f32, 1f32)?)
    }
}

/// How the BatchNorm-statistics loss weighs its layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BnLoss {
    /// DeepInversion's Σ_l ‖μ_l − μ̂_l‖₂ + ‖σ²_l − σ̂²_l‖₂ in the layers' own units: wide, deep
    /// layers with large activations dominate and the identity term weighs almost nothing.
    Raw,
    /// Each layer in units of its running statistics, root-mean over channels:
    /// ‖(μ_l − μ̂_l)/σ̂_l‖₂/√C_l + ‖σ²_l/σ̂²_l − 1‖₂/√C_l, so that every layer counts alike.
    #[default]
    Normalized,
}

impl std::str::FromStr for BnLoss {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "raw" => Ok(BnLoss::Raw),
            "normalized" => Ok(BnLoss::Normalized),
            other => Err(Error::Usage(format!(
                "unknown BatchNorm loss {other:?}; known: normalized, raw"
            ))),
        }
    }
}

/// The DeepInversion-form loss over the inputs of the teacher's BatchNorm layers (batch
/// statistics of x′ against the running ones, weighed as `form` says), plus
/// `identity · mean|x′ − x|`.
pub fn bn_statistics_loss(
    teacher: &dyn Teacher,
    x: &Tensor,
    x_prime: &Tensor,
    identity: f64,
    form: BnLoss,
) -> Result<Tensor> {
    let captured = teacher.batch_norm_inputs(x_prime)?;
    if captured.is_empty() {
        return Err(Error::Usage(
            "the teacher has no BatchNorm layers: the transformation network has nothing to match (pass --no-transform)"
                .into(),
        ));
    }
    let mut total = Tensor::zeros((), DType::F32, x.device())?;
    for crate::teacher::BatchNormInput { input, mean, var } in captured {
        // per-channel moments through sums over the contiguous H·W rows first (candle's
        // strided reductions, and the gradient of a broadcast mean, cost more than the rest of
        // the update): σ² = E[x²] − μ²
        let (n, c, h, w) = input.dims4()?;
        let rows = input.reshape((n, c, h * w))?;
        let count = (n * h * w) as f64;
        let moment = |t: &Tensor| -> Result<Tensor> {
            Ok((t.sum_keepdim(2)?.sum_keepdim(0)?.flatten_all()? / count)?)
        };
        let mu = moment(&rows)?;
        let sigma2 = (moment(&rows.sqr()?)? - mu.sqr()?)?.relu()?;
        let (dm, dv) = match form {
            BnLoss::Raw => (
                (mu - mean)?.sqr()?.sum_all()?.sqrt()?,
                (sigma2 - var)?.sqr()?.sum_all()?.sqrt()?,
            ),
            BnLoss::Normalized => {
                let var = (var + 1e-5)?;
                let root_c = (mu.dims1()? as f64).sqrt();
                let dm = (mu - mean)?.div(&var.sqrt()?)?.sqr()?.sum_all()?.sqrt()?;
                let dv = (sigma2.div(&var)? - 1.0)?.sqr()?.sum_all()?.sqrt()?;
                ((dm / root_c)?, (dv / root_c)?)
            }
        };
        total = ((total + dm)? + dv)?;
    }
    let keep = ((x_prime - x)?.abs()?.mean_all()? * identity)?;
    Ok((total + keep)?)
}

/// DDD's input stage: every `every` student steps, one Adam step of T on the batch; the student
/// then trains on x′ = x + T(x) (detached) against the teacher's prediction on x′.
pub struct TransformStage<'a> {
    pub transform: Transform,
    pub teacher: &'a dyn Teacher,
    pub opt: Adam,
    pub identity: f64,
    pub every: usize,
    pub form: BnLoss,
    /// BatchNorm-statistics loss of every T update (falls as T learns).
    pub losses: Vec<f32>,
}

impl<'a> TransformStage<'a> {
    pub fn new(teacher: &'a dyn Teacher, device: &Device, seed: u64, lr: f64) -> Result<Self> {
        let transform = Transform::new(device, seed)?;
        Ok(TransformStage {
            opt: Adam::new(crate::nets::vars_by_name(&transform.vars)?, lr, 0.0)?,
            transform,
            teacher,
            identity: 0.1,
            every: 1,
            form: BnLoss::default(),
            losses: Vec::new(),
        })
    }

    /// T's weights and Adam moments (for checkpoints).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = crate::nets::var_tensors(&self.transform.vars)?;
        out.extend(self.opt.state()?);
        out.push((
            "losses".into(),
            Tensor::new(self.losses.as_slice(), &Device::Cpu)?,
        ));
        Ok(out)
    }

    /// Restores [`TransformStage::state`].
    pub fn restore(&mut self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        crate::nets::set_vars(&self.transform.vars, tensors)?;
        let losses = tensors
            .get("losses")
            .ok_or_else(|| Error::Runtime("checkpoint lacks transform.losses".into()))?;
        self.losses = losses.to_vec1::<f32>()?;
        self.opt.restore(tensors, self.losses.len())
    }

    /// Updates T (on schedule) and returns x′ for the student.
    pub fn apply(&mut self, step: usize, x: &Tensor) -> Result<Tensor> {
        if step.is_multiple_of(self.every.max(1)) {
            let xp = self.transform.forward(x)?;
            let loss = bn_statistics_loss(self.teacher, x, &xp, self.identity, self.form)?;
            let value = loss.to_scalar::<f32>()?;
            if !value.is_finite() {
                return Err(Error::Runtime(format!(
                    "the transformation network diverged at step {}: BatchNorm loss {value}",
                    step + 1
                )));
            }
            self.opt.step(&loss.backward()?)?;
            self.losses.push(value);
        }
        Ok(self.transform.forward(x)?.detach())
    }
}

/// DDD's switches (DESIGN §6, §10).
#[derive(Clone, Debug, PartialEq)]
pub struct DddOptions {
    /// Object-wise mixing.
    pub mix: bool,
    /// Up to this many pasted objects per image.
    pub max_objects: usize,
    /// The transformation network.
    pub transform: bool,
    /// Weight of mean|x′ − x| in T's loss.
    pub identity_weight: f64,
    /// T is updated once every this many student steps.
    pub transform_every: usize,
    pub transform_lr: f64,
    /// How the statistics loss weighs the teacher's layers.
    pub bn_loss: BnLoss,
}

impl Default for DddOptions {
    fn default() -> Self {
        DddOptions {
            mix: true,
            max_objects: 3,
            transform: true,
            identity_weight: 0.1,
            transform_every: 1,
            transform_lr: 1e-3,
            bn_loss: BnLoss::default(),
        }
    }
}

impl DddOptions {
    /// Plain KD: neither mixing nor the transformation network.
    pub fn kd() -> Self {
        DddOptions {
            mix: false,
            transform: false,
            ..Default::default()
        }
    }

    /// What a checkpoint must agree on (see `TrainConfig::tag`).
    pub fn tag(&self) -> String {
        format!("{self:?}")
    }
}

/// The `ddd` objective: plain KD on images mixed object-wise ([`ObjectMix`]) and passed through
/// the transformation network ([`TransformStage`]), each switchable.
pub struct Ddd<'t> {
    kd: Kd<'t>,
    options: DddOptions,
    donors: Option<Arc<Vec<Sample>>>,
    stage: Option<TransformStage<'t>>,
}

impl<'t> Ddd<'t> {
    /// `images` are the donors of object mixing (they need instance masks when mixing is on);
    /// the transformation network starts from `seed`.
    pub fn new(
        teacher: &'t dyn Teacher,
        images: &[Sample],
        options: &DddOptions,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let donors = if options.mix {
            if images.iter().any(|s| s.instance.is_none()) {
                return Err(Error::Usage(
                    "object mixing needs instance masks: distill on OOD images from `depthling simulate --domain ood`, or pass --no-mix".into(),
                ));
            }
            Some(Arc::new(images.to_vec()))
        } else {
            None
        };
        if options.transform && teacher.batch_norm_layers() == 0 {
            return Err(Error::Usage(format!(
                "{}: no BatchNormalization nodes: the transformation network needs them; export with `training=torch.onnx.TrainingMode.PRESERVE` (and `do_constant_folding=False`), or pass --no-transform",
                teacher.name()
            )));
        }
        let stage = if options.transform {
            let mut st = TransformStage::new(teacher, device, seed ^ 0x7A, options.transform_lr)?;
            st.identity = options.identity_weight;
            st.every = options.transform_every;
            st.form = options.bn_loss;
            Some(st)
        } else {
            None
        };
        Ok(Ddd {
            kd: Kd::new(teacher),
            options: options.clone(),
            donors,
            stage,
        })
    }

    /// The BatchNorm-statistics loss of every transformation-network update so far.
    pub fn transform_losses(&self) -> &[f32] {
        self.stage.as_ref().map_or(&[], |s| s.losses.as_slice())
    }
}

impl Objective for Ddd<'_> {
    fn tag(&self) -> String {
        self.options.tag()
    }

    fn check(&self, student: &GraphSpec) -> Result<()> {
        self.kd.check(student)
    }

    fn augmentations(&self) -> Result<Vec<Box<dyn Augment>>> {
        Ok(match &self.donors {
            Some(donors) => vec![Box::new(ObjectMix {
                donors: donors.clone(),
                max_objects: self.options.max_objects,
            })],
            None => Vec::new(),
        })
    }

    fn input(&mut self, step: usize, x: Tensor) -> Result<Tensor> {
        match &mut self.stage {
            Some(st) => st.apply(step, &x),
            None => Ok(x),
        }
    }

    fn loss(&mut self, student: &GraphNet, b: &Batch<'_>) -> Result<Tensor> {
        self.kd.loss(student, b)
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(match &self.stage {
            Some(st) => st
                .state()?
                .into_iter()
                .map(|(k, t)| (format!("transform.{k}"), t))
                .collect(),
            None => Vec::new(),
        })
    }

    fn restore(&mut self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        if let Some(st) = &mut self.stage {
            let own: std::collections::HashMap<String, Tensor> = tensors
                .iter()
                .filter_map(|(k, t)| {
                    k.strip_prefix("transform.")
                        .map(|k| (k.to_string(), t.clone()))
                })
                .collect();
            st.restore(&own)?;
        }
        Ok(())
    }
}

/// Distills `student` from `teacher` on `images` with DDD's switches (all off: plain KD).
/// Returns the student's per-step losses.
pub fn distill(
    student: &crate::nets::Net,
    teacher: &dyn Teacher,
    images: &[Sample],
    cfg: &crate::train::TrainConfig,
    ddd: &DddOptions,
    on_step: impl FnMut(crate::train::StepInfo),
) -> Result<Vec<f32>> {
    let mut objective = Ddd::new(teacher, images, ddd, &student.device, cfg.seed)?;
    crate::train::train(student, images, &mut objective, cfg, on_step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::{preset, Net};
    use crate::sim::{render_many, Domain};

    /// Pasted pixels are exactly the donor object's pixels; every other pixel of the base
    /// (RGB, depth, instance id) is unchanged.
    #[test]
    fn mixing_pastes_the_object_and_leaves_the_rest_unchanged() {
        let imgs = render_many(Domain::Ood, 48, 32, 3, 0, 2, false);
        let (base, donor) = (&imgs[0], &imgs[1]);
        let mask = donor.instance.as_ref().unwrap();
        let id = *mask.iter().filter(|&&m| m > 0).max().unwrap();
        let p = Placement {
            instance: id,
            scale: 1.0,
            dx: 3,
            dy: -2,
        };
        let out = paste(base, donor, p).unwrap();
        let new_id = base.instance.as_ref().unwrap().iter().max().unwrap() + 1;
        let (w, h) = (48usize, 32usize);
        let mut pasted = 0;
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                let (sx, sy) = (x as isize - 3, y as isize + 2);
                let from_donor = sx >= 0
                    && sy >= 0
                    && (sx as usize) < w
                    && (sy as usize) < h
                    && mask[sy as usize * w + sx as usize] == id;
                if from_donor {
                    let s = sy as usize * w + sx as usize;
                    assert_eq!(out.rgb[i * 3..i * 3 + 3], donor.rgb[s * 3..s * 3 + 3]);
                    assert_eq!(out.depth[i], donor.depth[s]);
                    assert_eq!(out.instance.as_ref().unwrap()[i], new_id);
                    pasted += 1;
                } else {
                    assert_eq!(out.rgb[i * 3..i * 3 + 3], base.rgb[i * 3..i * 3 + 3]);
                    assert_eq!(out.depth[i], base.depth[i]);
                    assert_eq!(
                        out.instance.as_ref().unwrap()[i],
                        base.instance.as_ref().unwrap()[i]
                    );
                }
            }
        }
        assert!(pasted > 0, "nothing was pasted");
        // the augmentation pastes something somewhere and keeps the image size
        let mix = ObjectMix {
            donors: Arc::new(imgs.clone()),
            max_objects: 3,
        };
        let mut rng = Rng::new(5);
        let changed = (0..8)
            .map(|_| mix.apply(base, &mut rng))
            .filter(|m| m.rgb != base.rgb)
            .count();
        assert!(
            changed >= 6,
            "only {changed} of 8 mixed images differ from the base"
        );
    }

    /// The statistics loss equals DeepInversion's form computed directly, in f64, from the
    /// captured BatchNorm inputs (batch mean and population variance per channel), both forms.
    #[test]
    fn bn_statistics_loss_matches_a_direct_computation() {
        let dev = Device::Cpu;
        let teacher = Net::new(preset("demo-teacher", 0.5).unwrap(), &dev, 2).unwrap();
        let indoor = render_many(Domain::Indoor, 32, 32, 4, 0, 4, false);
        let (xi, _, _) = crate::data::batch::to_tensors(&indoor, 3, &dev).unwrap();
        for _ in 0..5 {
            teacher.net.forward_t(&xi, true).unwrap();
        }
        let ood = render_many(Domain::Ood, 32, 32, 6, 0, 4, false);
        let (x, _, _) = crate::data::batch::to_tensors(&ood, 3, &dev).unwrap();
        let captured = Teacher::batch_norm_inputs(&teacher.net, &x).unwrap();
        for form in [BnLoss::Raw, BnLoss::Normalized] {
            let mut expected = 0f64;
            for c in &captured {
                let (n, ch, h, w) = c.input.dims4().unwrap();
                let v = c.input.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let mean = c.mean.to_vec1::<f32>().unwrap();
                let var = c.var.to_vec1::<f32>().unwrap();
                let (mut dm, mut dv) = (0f64, 0f64);
                for k in 0..ch {
                    let vals: Vec<f64> = (0..n)
                        .flat_map(|i| (0..h * w).map(move |j| (i, j)))
                        .map(|(i, j)| v[(i * ch + k) * h * w + j] as f64)
                        .collect();
                    let mu = vals.iter().sum::<f64>() / vals.len() as f64;
                    let s2 = vals.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / vals.len() as f64;
                    let (m, r) = (mean[k] as f64, var[k] as f64);
                    match form {
                        BnLoss::Raw => {
                            dm += (mu - m).powi(2);
                            dv += (s2 - r).powi(2);
                        }
                        BnLoss::Normalized => {
                            dm += (mu - m).powi(2) / (r + 1e-5);
                            dv += (s2 / (r + 1e-5) - 1.0).powi(2);
                        }
                    }
                }
                let root_c = match form {
                    BnLoss::Raw => 1.0,
                    BnLoss::Normalized => (ch as f64).sqrt(),
                };
                expected += (dm.sqrt() + dv.sqrt()) / root_c;
            }
            let got = bn_statistics_loss(&teacher.net, &x, &x, 0.0, form)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            assert!(
                (got - expected).abs() <= 1e-3 * expected.abs().max(1.0),
                "{form:?}: {got} vs {expected}"
            );
        }
    }

    /// T starts at the identity, and the BatchNorm-statistics loss falls while T trains.
    #[test]
    fn bn_statistics_loss_falls_while_the_transform_trains() {
        let dev = Device::Cpu;
        let teacher = Net::new(preset("demo-teacher", 0.5).unwrap(), &dev, 2).unwrap();
        // give the teacher indoor BatchNorm statistics: training-mode passes on indoor images
        let indoor = render_many(Domain::Indoor, 32, 32, 4, 0, 8, false);
        let (xi, _, _) = crate::data::batch::to_tensors(&indoor, 3, &dev).unwrap();
        for _ in 0..30 {
            teacher.net.forward_t(&xi, true).unwrap();
        }
        let ood = render_many(Domain::Ood, 32, 32, 6, 0, 8, false);
        let (x, _, _) = crate::data::batch::to_tensors(&ood, 3, &dev).unwrap();
        let mut stage = TransformStage::new(&teacher.net, &dev, 1, 1e-3).unwrap();
        let first = stage.transform.forward(&x).unwrap();
        let same = (first - &x).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(
            same.to_scalar::<f32>().unwrap(),
            0.0,
            "T does not start at identity"
        );
        for step in 0..40 {
            stage.apply(step, &x).unwrap();
        }
        let (a, b) = (stage.losses[0], *stage.losses.last().unwrap());
        assert!(b < 0.8 * a, "BatchNorm loss {a} → {b}");
    }
}
