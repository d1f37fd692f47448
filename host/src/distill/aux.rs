//! The LW paper's KD with auxiliary data (DESIGN §6 `aux`): the ground truth of labeled sets plus
//! the teacher's predictions on every image, labeled or not.

use candle_core::Tensor;

use super::kd::{check_monocular, Kd};
use super::labeled_and_unlabeled;
use crate::data::Sample;
use crate::error::{Error, Result};
use crate::nets::graph::{GraphNet, GraphSpec};
use crate::teacher::Teacher;
use crate::train::{with_labels, Batch, Objective, StepInfo, TrainConfig};

/// The `aux` objective: the ground-truth loss where a sample has labels (unlabeled samples carry
/// depth 0 everywhere) plus `kd_weight` × the loss against the teacher's prediction on every
/// sample.
pub struct Aux<'t> {
    kd: Kd<'t>,
    kd_weight: f64,
    /// Sizes of the sets, for the checkpoint tag.
    sets: String,
}

impl<'t> Aux<'t> {
    pub fn new(teacher: &'t dyn Teacher, kd_weight: f64, set_sizes: &[usize]) -> Result<Self> {
        if !(kd_weight.is_finite() && kd_weight >= 0.0) {
            return Err(Error::Usage(format!(
                "--kd-weight must be a non-negative number, got {kd_weight}"
            )));
        }
        let sets: Vec<String> = set_sizes.iter().map(usize::to_string).collect();
        Ok(Aux {
            kd: Kd::new(teacher),
            kd_weight,
            sets: sets.join("+"),
        })
    }
}

impl Objective for Aux<'_> {
    fn tag(&self) -> String {
        format!("aux kd_weight={} sets={}", self.kd_weight, self.sets)
    }

    fn check(&self, student: &GraphSpec) -> Result<()> {
        check_monocular(self.kd.teacher, student)
    }

    fn loss(&mut self, student: &GraphNet, b: &Batch<'_>) -> Result<Tensor> {
        let y = self.kd.target(b)?;
        let pred = student.forward_t(&b.x, true)?;
        let kd = (b.loss.compute(&pred, &y, &b.mask.ones_like()?)? * self.kd_weight)?;
        with_labels(&b.loss, kd, &pred, &b.gt, &b.mask)
    }
}

/// The LW paper's KD with auxiliary data: `student` learns the ground truth of the `labeled`
/// sets and the teacher's predictions (weight `kd_weight`) on every image. The unlabeled images'
/// depth, if any, is dropped. Its four settings are which sets are given: X (`labeled` = [target
/// set]), U (`unlabeled` = auxiliary set), X∪U (both), X∪U′ (`labeled` = [X, U′], with a teacher
/// trained on X∪U′).
///
/// The sets are balanced: each is repeated until it is about as large as the largest, so a large
/// auxiliary set does not dilute the target set's labels (one image in five for 256 X and 1024 U).
pub fn aux(
    student: &crate::nets::Net,
    teacher: &dyn Teacher,
    labeled: &[&[Sample]],
    unlabeled: &[Sample],
    cfg: &TrainConfig,
    kd_weight: f64,
    on_step: impl FnMut(StepInfo),
) -> Result<Vec<f32>> {
    let sizes: Vec<usize> = labeled
        .iter()
        .map(|l| l.len())
        .chain([unlabeled.len()])
        .collect();
    let mut objective = Aux::new(teacher, kd_weight, &sizes)?;
    let data = labeled_and_unlabeled(labeled, unlabeled)?;
    crate::train::train(student, &data, &mut objective, cfg, on_step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distill::balanced;
    use crate::distill::kd::Kd;
    use crate::nets::{preset, Net};
    use crate::sim::{render_many, Domain};
    use candle_core::Device;

    /// The aux objective reduces to its parts: on labeled images with no KD weight it is plain
    /// supervised training, and on unlabeled images it is plain KD (same losses, same weights,
    /// bit for bit). With both, unlabeled images change the result only through the KD term.
    #[test]
    fn aux_reduces_to_supervised_and_to_kd() {
        use crate::train::{train, Supervised, TrainConfig};
        let dev = Device::Cpu;
        let teacher = Net::new(preset("demo-teacher", 0.5).unwrap(), &dev, 2).unwrap();
        let x = render_many(Domain::Indoor, 32, 32, 5, 0, 8, false);
        let u = render_many(Domain::IndoorAlt, 32, 32, 6, 0, 8, false);
        let cfg = TrainConfig {
            steps: 4,
            batch_size: 4,
            seed: 3,
            ..TrainConfig::default()
        };
        let weights = |n: &Net| -> Vec<Vec<f32>> {
            n.named_tensors()
                .unwrap()
                .iter()
                .map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .collect()
        };
        let fresh = || Net::new(preset("demo-student", 0.5).unwrap(), &dev, 7).unwrap();

        let (a, b) = (fresh(), fresh());
        let la = aux(&a, &teacher.net, &[&x], &[], &cfg, 0.0, |_| {}).unwrap();
        let lb = train(&b, &x, &mut Supervised, &cfg, |_| {}).unwrap();
        assert_eq!(la, lb, "labeled only, no KD: supervised training");
        assert_eq!(weights(&a), weights(&b));

        let (a, b) = (fresh(), fresh());
        let la = aux(&a, &teacher.net, &[], &u, &cfg, 1.0, |_| {}).unwrap();
        let lb = train(&b, &u, &mut Kd::new(&teacher.net), &cfg, |_| {}).unwrap();
        assert_eq!(la, lb, "unlabeled only: KD");
        assert_eq!(weights(&a), weights(&b));

        // the unlabeled images' depth is dropped: giving U with or without its labels is the
        // same run
        let mut u_blank = u.clone();
        for s in &mut u_blank {
            s.depth.iter_mut().for_each(|d| *d = 0.0);
        }
        let (a, b) = (fresh(), fresh());
        let la = aux(&a, &teacher.net, &[&x], &u, &cfg, 0.5, |_| {}).unwrap();
        let lb = aux(&b, &teacher.net, &[&x], &u_blank, &cfg, 0.5, |_| {}).unwrap();
        assert_eq!(la, lb);
        assert!(aux(&fresh(), &teacher.net, &[&x], &u, &cfg, -1.0, |_| {}).is_err());

        // balancing: 2 + 6 images → the 2 repeated 3 times; an empty set is left out
        let b = balanced([&x[..2], &u[..6], &[][..]]);
        assert_eq!(b.len(), 12);
        assert!(b[..6]
            .iter()
            .zip(x[..2].iter().cycle())
            .all(|(s, t)| s.rgb == t.rgb));
        assert!(b[6..].iter().zip(&u[..6]).all(|(s, t)| s.rgb == t.rgb));
    }
}
