//! ADU-Depth (DESIGN §6): a stereo teacher distilled into a monocular student. The student gets
//! two train-time heads that are not part of the exported network: 1×1 adapters that map its
//! encoder maps onto the teacher's (feature distillation weighted by the teacher's spatial
//! attention), and an uncertainty head u = log b on the features its depth head reads (response
//! distillation with a focal-depth weight and a Laplacian likelihood). The ground-truth loss
//! applies where labels exist.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use crate::data::Sample;
use crate::error::{Error, Result};
use crate::losses::{attention_feature_loss, focal_uncertainty_loss};
use crate::nets::graph::{GraphNet, GraphSpec, Node};
use crate::rng::Rng;
use crate::teacher::Teacher;
use crate::train::{teacher_input, with_labels, Batch, Objective, StepInfo, TrainConfig};

/// ADU's switches and weights.
#[derive(Clone, Debug, PartialEq)]
pub struct AduOptions {
    /// Response distillation: mean(w·(|d_s − d_t|·e^(−u) + u)), w = (|d_s − d_t|/d_t)^γ.
    pub response: bool,
    /// Attention-weighted feature distillation at the encoder taps.
    pub feature: bool,
    /// γ of the focal-depth weight (0: every pixel counts alike).
    pub gamma: f64,
    pub response_weight: f64,
    pub feature_weight: f64,
}

impl Default for AduOptions {
    fn default() -> Self {
        AduOptions {
            response: true,
            feature: true,
            gamma: 1.0,
            response_weight: 1.0,
            feature_weight: 0.1,
        }
    }
}

impl AduOptions {
    /// Refuses weights that are not finite non-negative numbers.
    pub fn check(&self) -> Result<()> {
        for (flag, v) in [
            ("--focal-gamma", self.gamma),
            ("--kd-weight", self.response_weight),
            ("--feature-weight", self.feature_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Usage(format!(
                    "{flag} must be a non-negative number, got {v}"
                )));
            }
        }
        Ok(())
    }

    /// What a checkpoint must agree on.
    pub fn tag(&self) -> String {
        format!("adu {self:?}")
    }
}

/// One feature tap: the student's and the teacher's encoder maps at one downsampling factor, and
/// the 1×1 adapter (weight `[C_t, C_s, 1, 1]`, bias `[C_t]`) between them.
#[derive(Clone, Debug)]
pub struct Tap {
    pub factor: usize,
    pub student: usize,
    /// Index into the teacher's [`Teacher::feature_taps`].
    pub teacher: usize,
    weight: Tensor,
    bias: Tensor,
}

/// The student's train-time heads (adapters and uncertainty head), under `vars`.
pub struct AduHeads {
    pub vars: VarMap,
    pub options: AduOptions,
    pub taps: Vec<Tap>,
    /// The student node its depth head reads, and the uncertainty head on it (3×3, one output).
    head_input: usize,
    uncertainty: (Tensor, Tensor),
}

/// u = log b is kept in [−6, 6]: b from 2.5 mm to 400 m.
const LOG_B_RANGE: f32 = 6.0;

impl AduHeads {
    /// Adapters for every downsampling factor where both networks have an encoder map, and the
    /// uncertainty head. Adapter weights are He-normal from `seed`; the uncertainty head starts at
    /// zero (b = 1 everywhere).
    pub fn new(
        student: &GraphSpec,
        teacher: &dyn Teacher,
        options: AduOptions,
        device: &Device,
        seed: u64,
    ) -> Result<AduHeads> {
        options.check()?;
        let cs = student.channels();
        let teacher_taps = teacher.feature_taps();
        let pairs: Vec<(usize, usize, usize)> = student
            .encoder_taps()
            .into_iter()
            .filter_map(|(f, s)| {
                teacher_taps
                    .iter()
                    .position(|t| t.factor == f)
                    .map(|t| (f, s, t))
            })
            .collect();
        if options.feature && pairs.is_empty() {
            return Err(Error::Usage(format!(
                "feature distillation: {} and {} have no encoder maps at a common downsampling factor",
                student.name,
                teacher.name()
            )));
        }
        let head_input = match student.nodes.last() {
            Some(Node::Conv {
                input, stride: 1, ..
            }) => *input,
            _ => {
                return Err(Error::Usage(format!(
                    "{}: the uncertainty head needs a network whose last node is a stride-1 convolution",
                    student.name
                )))
            }
        };
        let vars = VarMap::new();
        // a trained variable named `name` with initial value `t`; returns its tensor
        let var = |name: String, t: Tensor| -> Result<Tensor> {
            let v = Var::from_tensor(&t)?;
            let tensor = v.as_tensor().clone();
            vars.data()
                .lock()
                .map_err(|_| Error::Runtime("variable store poisoned".into()))?
                .insert(name, v);
            Ok(tensor)
        };
        let mut rng = Rng::new(seed);
        let mut taps = Vec::with_capacity(pairs.len());
        for (factor, s, t) in pairs {
            let (cin, cout) = (cs[s], teacher_taps[t].channels);
            let name = format!("adapter{factor}");
            let std = (2.0 / cin as f32).sqrt();
            let values: Vec<f32> = (0..cout * cin).map(|_| rng.normal() * std).collect();
            let weight = var(
                format!("{name}.weight"),
                Tensor::from_vec(values, (cout, cin, 1, 1), device)?,
            )?;
            let bias = var(
                format!("{name}.bias"),
                Tensor::zeros(cout, DType::F32, device)?,
            )?;
            taps.push(Tap {
                factor,
                student: s,
                teacher: t,
                weight,
                bias,
            });
        }
        let uncertainty = (
            var(
                "uncertainty.weight".into(),
                Tensor::zeros((1, cs[head_input], 3, 3), DType::F32, device)?,
            )?,
            var(
                "uncertainty.bias".into(),
                Tensor::zeros(1, DType::F32, device)?,
            )?,
        );
        Ok(AduHeads {
            vars,
            options,
            taps,
            head_input,
            uncertainty,
        })
    }

    /// The heads' variables, named `adu.NAME` (trained by the student's optimizer).
    pub fn named_vars(&self) -> Result<HashMap<String, Var>> {
        Ok(crate::nets::vars_by_name(&self.vars)?
            .into_iter()
            .map(|(k, v)| (format!("adu.{k}"), v))
            .collect())
    }

    /// The heads' weights, named `adu.NAME` (for checkpoints).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(crate::nets::var_tensors(&self.vars)?
            .into_iter()
            .map(|(k, t)| (format!("adu.{k}"), t))
            .collect())
    }

    /// Restores [`AduHeads::state`] from a checkpoint's tensors.
    pub fn restore(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let own: HashMap<String, Tensor> = tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix("adu.").map(|k| (k.to_string(), t.clone())))
            .collect();
        crate::nets::set_vars(&self.vars, &own)
    }

    /// u = log b per pixel, N×1×H×W, from the student's node outputs.
    pub fn log_b(&self, student: &[(Tensor, Option<Tensor>)]) -> Result<Tensor> {
        let h = &student
            .get(self.head_input)
            .ok_or_else(|| Error::Runtime("student outputs are missing nodes".into()))?
            .0;
        let (w, b) = &self.uncertainty;
        let u = crate::nets::ops::conv2d(h, w, 1, 1)?.broadcast_add(&b.reshape((1, 1, 1, 1))?)?;
        Ok(u.clamp(-LOG_B_RANGE, LOG_B_RANGE)?)
    }

    /// The distillation part of the loss (weighted response + weighted feature terms) from the
    /// node outputs of the student (training mode) and the teacher's depth and feature taps.
    pub fn loss(
        &self,
        student: &[(Tensor, Option<Tensor>)],
        teacher_depth: &Tensor,
        teacher_features: &[Tensor],
    ) -> Result<Tensor> {
        let o = &self.options;
        let Some(ds) = student.last() else {
            return Err(Error::Runtime("empty network outputs".into()));
        };
        let mut total = Tensor::zeros((), DType::F32, ds.0.device())?;
        if o.response {
            // both losses detach the teacher's side themselves
            let r = focal_uncertainty_loss(&ds.0, teacher_depth, &self.log_b(student)?, o.gamma)?;
            total = (total + (r * o.response_weight)?)?;
        }
        if o.feature {
            for tap in &self.taps {
                let fs = &student[tap.student].0;
                let adapted = crate::nets::ops::conv2d(fs, &tap.weight, 0, 1)?
                    .broadcast_add(&tap.bias.reshape((1, (), 1, 1))?)?;
                let ft = teacher_features.get(tap.teacher).ok_or_else(|| {
                    Error::Runtime(format!(
                        "the teacher returned no feature map {}",
                        tap.teacher
                    ))
                })?;
                let f = attention_feature_loss(&adapted, ft)?;
                total = (total + (f * o.feature_weight)?)?;
            }
        }
        Ok(total)
    }
}

/// Distills `student` from `teacher` (stereo or monocular) with ADU's losses on the `labeled`
/// sets (ground truth too) and the `unlabeled` images, balanced like [`crate::distill::aux`].
/// Stereo teachers read each sample's right view; the student only the left. Returns the
/// per-step losses; the heads are trained alongside and kept in the run's checkpoints.
pub fn adu(
    student: &crate::nets::Net,
    teacher: &dyn Teacher,
    labeled: &[&[Sample]],
    unlabeled: &[Sample],
    cfg: &TrainConfig,
    options: &AduOptions,
    on_step: impl FnMut(StepInfo),
) -> Result<Vec<f32>> {
    let data = crate::distill::labeled_and_unlabeled(labeled, unlabeled)?;
    let heads = AduHeads::new(
        student.net.spec(),
        teacher,
        options.clone(),
        &student.device,
        cfg.seed ^ 0xAD0,
    )?;
    let sizes: Vec<usize> = labeled
        .iter()
        .map(|l| l.len())
        .chain([unlabeled.len()])
        .collect();
    let mut objective = Adu::new(teacher, heads, &sizes);
    crate::train::train(student, &data, &mut objective, cfg, on_step)
}

/// The `adu` objective: the ground-truth loss where a sample has labels, plus the distillation
/// terms of its heads against a teacher that may be stereo (it then reads the right views too).
pub struct Adu<'t> {
    teacher: &'t dyn Teacher,
    pub heads: AduHeads,
    sets: String,
}

impl<'t> Adu<'t> {
    pub fn new(teacher: &'t dyn Teacher, heads: AduHeads, set_sizes: &[usize]) -> Self {
        let sets: Vec<String> = set_sizes.iter().map(usize::to_string).collect();
        Adu {
            teacher,
            heads,
            sets: sets.join("+"),
        }
    }
}

impl Objective for Adu<'_> {
    fn tag(&self) -> String {
        format!("{} sets={}", self.heads.options.tag(), self.sets)
    }

    fn check(&self, student: &GraphSpec) -> Result<()> {
        let (tc, channels) = (self.teacher.input_channels(), student.input_channels);
        if tc != channels && tc != 2 * channels {
            return Err(Error::Usage(format!(
                "the teacher takes {tc} input channels and the student {channels}: ADU needs a monocular or stereo teacher of the student's images"
            )));
        }
        Ok(())
    }

    fn trained_vars(&self) -> Result<HashMap<String, Var>> {
        self.heads.named_vars()
    }

    fn loss(&mut self, student: &GraphNet, b: &Batch<'_>) -> Result<Tensor> {
        let xt = teacher_input(b, self.teacher.input_channels())?;
        let (depth, features) = self.teacher.predict_with_features(&xt)?;
        let s = student.forward_nodes(&b.x, true)?;
        let distill = self.heads.loss(&s, &depth, &features)?;
        with_labels(&b.loss, distill, &s[s.len() - 1].0, &b.gt, &b.mask)
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        self.heads.state()
    }

    fn restore(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        self.heads.restore(tensors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::{preset, Net};
    use crate::sim::{render_many, Domain};
    use crate::train::{train, Checkpointing, Supervised};

    fn values(tensors: Vec<(String, Tensor)>) -> Vec<(String, Vec<f32>)> {
        tensors
            .into_iter()
            .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect()
    }

    fn nets() -> (Net, Net) {
        let dev = Device::Cpu;
        let teacher = Net::new(preset("demo-teacher-stereo", 0.5).unwrap(), &dev, 7).unwrap();
        let student = Net::new(preset("demo-student", 0.5).unwrap(), &dev, 8).unwrap();
        (teacher, student)
    }

    fn config(steps: usize) -> TrainConfig {
        TrainConfig {
            steps,
            batch_size: 2,
            seed: 5,
            ..TrainConfig::default()
        }
    }

    /// Adapters join the student's and the stereo teacher's encoder maps at every common factor,
    /// mapping the student's channels onto the teacher's.
    #[test]
    fn adapters_join_maps_of_one_factor() {
        let (teacher, student) = nets();
        let heads = AduHeads::new(
            student.net.spec(),
            &teacher.net,
            AduOptions::default(),
            &Device::Cpu,
            1,
        )
        .unwrap();
        let (cs, ct) = (student.net.spec().channels(), teacher.net.spec().channels());
        let teacher_nodes: Vec<usize> = teacher
            .net
            .spec()
            .encoder_taps()
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        let factors: Vec<usize> = heads.taps.iter().map(|t| t.factor).collect();
        assert_eq!(factors, [2, 4, 8]);
        let shapes = student.net.spec().shapes(32, 32).unwrap();
        let tshapes = teacher.net.spec().shapes(32, 32).unwrap();
        for tap in &heads.taps {
            let t = teacher_nodes[tap.teacher];
            assert_eq!(tap.weight.dims(), [ct[t], cs[tap.student], 1, 1]);
            assert_eq!(shapes[tap.student].width, 32 / tap.factor);
            assert_eq!(tshapes[t].width, 32 / tap.factor);
        }
    }

    /// With both of its terms off, ADU is supervised training on the labeled images, bit for bit.
    #[test]
    fn without_its_terms_adu_is_supervised_training() {
        let x = render_many(Domain::Outdoor, 32, 32, 3, 0, 4, true);
        let (teacher, student) = nets();
        let options = AduOptions {
            response: false,
            feature: false,
            ..AduOptions::default()
        };
        let losses = adu(
            &student,
            &teacher.net,
            &[&x],
            &[],
            &config(4),
            &options,
            |_| {},
        )
        .unwrap();
        let (_, plain) = nets();
        let expected = train(&plain, &x, &mut Supervised, &config(4), |_| {}).unwrap();
        assert_eq!(losses, expected);
        assert_eq!(
            values(student.named_tensors().unwrap()),
            values(plain.named_tensors().unwrap())
        );
    }

    /// The heads train with the student: the adapters move under the feature term, the
    /// uncertainty head under the response term and not without it.
    #[test]
    fn heads_learn_only_from_their_terms() {
        let x = render_many(Domain::Outdoor, 32, 32, 3, 0, 4, true);
        let u = render_many(Domain::Outdoor, 32, 32, 4, 0, 4, true);
        for (response, feature) in [(true, false), (false, true)] {
            let (teacher, student) = nets();
            let options = AduOptions {
                response,
                feature,
                ..AduOptions::default()
            };
            let heads =
                AduHeads::new(student.net.spec(), &teacher.net, options, &Device::Cpu, 9).unwrap();
            let before = values(heads.state().unwrap());
            let data = crate::distill::labeled_and_unlabeled(&[&x], &u).unwrap();
            let mut objective = Adu::new(&teacher.net, heads, &[x.len(), u.len()]);
            let losses = train(&student, &data, &mut objective, &config(3), |_| {}).unwrap();
            assert!(losses.iter().all(|l| l.is_finite()));
            let after = values(objective.heads.state().unwrap());
            for ((name, a), (_, b)) in before.iter().zip(after) {
                let moved = *a != b;
                let should = if name.contains("uncertainty") {
                    response
                } else {
                    feature
                };
                assert_eq!(
                    moved, should,
                    "{name} (response {response}, feature {feature})"
                );
            }
        }
    }

    /// A run stopped after its step-3 checkpoint and resumed ends where the uninterrupted run
    /// ends: student, heads and losses, bit for bit.
    #[test]
    fn adu_resumes_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let x = render_many(Domain::Outdoor, 32, 32, 3, 0, 4, true);
        let u = render_many(Domain::Outdoor, 32, 32, 4, 0, 4, true);
        let (full, stopped) = (
            dir.path().join("full.ckpt"),
            dir.path().join("stopped.ckpt"),
        );
        let cfg = |path: &std::path::Path, resume: bool| TrainConfig {
            checkpoint: Some(Checkpointing {
                path: path.to_path_buf(),
                every: 3,
                resume,
            }),
            ..config(6)
        };
        let (teacher, student) = nets();
        let o = AduOptions::default();
        let losses = adu(
            &student,
            &teacher.net,
            &[&x],
            &u,
            &cfg(&full, false),
            &o,
            |s| {
                if s.step == 3 {
                    std::fs::copy(&full, &stopped).unwrap();
                }
            },
        )
        .unwrap();
        let (_, resumed) = nets();
        let again = adu(
            &resumed,
            &teacher.net,
            &[&x],
            &u,
            &cfg(&stopped, true),
            &o,
            |_| {},
        )
        .unwrap();
        assert_eq!(again, losses);
        assert_eq!(
            values(resumed.named_tensors().unwrap()),
            values(student.named_tensors().unwrap())
        );
        // the heads are in the checkpoint too: both files end with the same ones
        let heads = |p: &std::path::Path| {
            let t = candle_core::safetensors::load(p, &Device::Cpu).unwrap();
            let mut v: Vec<(String, Vec<f32>)> = t
                .into_iter()
                .filter(|(k, _)| k.starts_with("adu."))
                .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let h = heads(&full);
        assert!(
            h.iter().any(|(k, _)| k.contains("adapter")),
            "{:?}",
            h.len()
        );
        assert_eq!(heads(&stopped), h);
        // other switches: the checkpoint is refused
        let other = AduOptions {
            feature: false,
            ..AduOptions::default()
        };
        let e = adu(
            &resumed,
            &teacher.net,
            &[&x],
            &u,
            &cfg(&stopped, true),
            &other,
            |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("stopped.ckpt"), "{e}");
    }
}
