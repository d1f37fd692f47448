//! The tract backend (feature `tract`): runs depthling's ONNX export in f32 on Linux boards.
//!
//! The export's contract (DESIGN §10): input `image` float32 `[1, 3, H, W]`, RGB in [0, 1];
//! output `depth` float32 `[1, 1, H, W]` in metres. [`TractModel`] takes the same interleaved
//! RGB bytes as the int8 [`crate::Engine`], so a board runner can switch backends without
//! touching its frame path.
//!
//! ```no_run
//! # fn main() -> Result<(), depthling_device::tract::TractError> {
//! let bytes = std::fs::read("student.onnx").unwrap();
//! let model = depthling_device::tract::TractModel::from_bytes(&bytes)?;
//! let (height, width) = model.input_size();
//! let depth = model.run(&vec![128u8; height * width * 3])?;
//! assert_eq!(depth.len(), height * width);
//! # Ok(()) }
//! ```

use std::string::{String, ToString};
use std::sync::Arc;
use std::vec::Vec;

use tract_onnx::prelude::*;

/// Why the tract backend refused a model or a frame.
#[derive(Debug)]
pub enum TractError {
    /// tract could not read, type or optimise the ONNX file.
    Model(String),
    /// The graph is not depthling's image → depth contract (which input/output shape it has).
    Contract(String),
    /// The frame does not have `height × width × 3` bytes.
    InputShape { expected: usize, got: usize },
    /// tract failed while running.
    Run(String),
}

impl core::fmt::Display for TractError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TractError::Model(m) => write!(f, "not a usable ONNX model: {m}"),
            TractError::Contract(m) => write!(f, "not a depthling depth model: {m}"),
            TractError::InputShape { expected, got } => write!(
                f,
                "input frame has {got} bytes, the model expects {expected} (height × width × 3 RGB)"
            ),
            TractError::Run(m) => write!(f, "tract failed: {m}"),
        }
    }
}

impl std::error::Error for TractError {}

/// An optimised, runnable ONNX depth model.
pub struct TractModel {
    plan: Arc<TypedRunnableModel>,
    height: usize,
    width: usize,
}

/// Concrete `[1, C, H, W]` of a fact, if it has one.
fn nchw(fact: &TypedFact) -> Option<[usize; 4]> {
    <[usize; 4]>::try_from(fact.shape.as_concrete()?).ok()
}

impl TractModel {
    /// Reads, checks and optimises an ONNX model. The input size is taken from the file (the
    /// export writes a fixed `[1, 3, H, W]`).
    pub fn from_bytes(bytes: &[u8]) -> Result<TractModel, TractError> {
        let inference = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .map_err(|e| TractError::Model(format!("{e:#}")))?;
        let typed = inference
            .into_typed()
            .map_err(|e| TractError::Model(format!("{e:#}")))?;
        if typed.inputs.len() != 1 || typed.outputs.len() != 1 {
            return Err(TractError::Contract(format!(
                "{} inputs and {} outputs, expected one image and one depth map",
                typed.inputs.len(),
                typed.outputs.len()
            )));
        }
        let fact = |outlet| {
            typed
                .outlet_fact(outlet)
                .map_err(|e| TractError::Model(format!("{e:#}")))
        };
        let input = fact(typed.inputs[0])?;
        let output = fact(typed.outputs[0])?;
        if input.datum_type != f32::datum_type() || output.datum_type != f32::datum_type() {
            return Err(TractError::Contract(format!(
                "input is {:?} and output {:?}, expected float32",
                input.datum_type, output.datum_type
            )));
        }
        let Some([1, 3, height, width]) = nchw(input) else {
            return Err(TractError::Contract(format!(
                "input shape {:?}, expected [1, 3, H, W]",
                input.shape
            )));
        };
        if nchw(output) != Some([1, 1, height, width]) {
            return Err(TractError::Contract(format!(
                "output shape {:?}, expected [1, 1, {height}, {width}]",
                output.shape
            )));
        }
        let plan = typed
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| TractError::Model(format!("{e:#}")))?;
        Ok(TractModel {
            plan,
            height,
            width,
        })
    }

    /// `(height, width)` of the frames the model takes.
    pub fn input_size(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// Depth in metres, row-major `height × width`, for an interleaved RGB frame.
    pub fn run(&self, rgb: &[u8]) -> Result<Vec<f32>, TractError> {
        let plane = self.height * self.width;
        if rgb.len() != plane * 3 {
            return Err(TractError::InputShape {
                expected: plane * 3,
                got: rgb.len(),
            });
        }
        let mut chw = vec![0f32; plane * 3];
        for (p, px) in rgb.chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                chw[c * plane + p] = v as f32 / 255.0;
            }
        }
        self.run_chw(chw)
    }

    /// Depth for a planar `[3, H, W]` image already in [0, 1] (what the host's f32 models take).
    pub fn run_chw(&self, chw: Vec<f32>) -> Result<Vec<f32>, TractError> {
        let shape = [1, 3, self.height, self.width];
        if chw.len() != shape.iter().product::<usize>() {
            return Err(TractError::InputShape {
                expected: shape.iter().product(),
                got: chw.len(),
            });
        }
        let input = Tensor::from_shape(&shape, &chw).map_err(|e| TractError::Run(e.to_string()))?;
        let out = self
            .plan
            .run(tvec!(input.into()))
            .map_err(|e| TractError::Run(format!("{e:#}")))?;
        let depth = out
            .first()
            .ok_or_else(|| TractError::Run("no output".into()))?
            .try_as_plain_ram()
            .and_then(|view| view.as_slice::<f32>().map(|s| s.to_vec()))
            .map_err(|e| TractError::Run(e.to_string()))?;
        Ok(depth)
    }
}
