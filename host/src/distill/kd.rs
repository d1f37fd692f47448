//! Plain knowledge distillation (DESIGN §6 `kd`): the student learns the teacher's prediction on
//! the same (augmented) image with the run's base loss, every pixel counted.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::nets::graph::{GraphNet, GraphSpec};
use crate::teacher::Teacher;
use crate::train::{Batch, Objective};

/// The `kd` objective.
pub struct Kd<'t> {
    pub teacher: &'t dyn Teacher,
}

impl<'t> Kd<'t> {
    pub fn new(teacher: &'t dyn Teacher) -> Self {
        Kd { teacher }
    }

    /// The teacher's depth on the batch input (no gradient into the student's target).
    pub fn target(&self, b: &Batch<'_>) -> Result<Tensor> {
        Ok(self.teacher.predict(&b.x)?.detach())
    }
}

/// A monocular teacher must take the student's images.
pub fn check_monocular(teacher: &dyn Teacher, student: &GraphSpec) -> Result<()> {
    let channels = student.input_channels;
    if teacher.input_channels() != channels {
        return Err(Error::Usage(format!(
            "the teacher takes {} input channels and the student {channels}; a stereo teacher's predictions are distilled by the adu method",
            teacher.input_channels()
        )));
    }
    Ok(())
}

impl Objective for Kd<'_> {
    fn tag(&self) -> String {
        "kd".into()
    }

    fn check(&self, student: &GraphSpec) -> Result<()> {
        check_monocular(self.teacher, student)
    }

    fn loss(&mut self, student: &GraphNet, b: &Batch<'_>) -> Result<Tensor> {
        let y = self.target(b)?;
        let pred = student.forward_t(&b.x, true)?;
        b.loss.compute(&pred, &y, &b.mask.ones_like()?)
    }
}
