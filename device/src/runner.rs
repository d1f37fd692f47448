//! One runner for every std target (feature `std`): `depthling run` on the host and
//! `depthling-runner` on Linux boards load a model through it, run frames through the same
//! backend code and print the same checksum.
//!
//! ```no_run
//! # fn main() -> Result<(), depthling_device::runner::RunnerError> {
//! use depthling_device::runner::{Backend, Loaded};
//! let bytes = std::fs::read("student.dlm").unwrap();
//! let model = Loaded::new(&bytes, Backend::Int8)?;
//! let mut arena = model.arena();
//! let mut runner = model.runner(&mut arena)?;
//! let (h, w) = runner.input_size();
//! let (depth, checksum) = runner.infer(&vec![128u8; h * w * 3])?;
//! # Ok(()) }
//! ```

use std::boxed::Box;
use std::string::{String, ToString};
use std::vec::Vec;

use depthling_model::Model;

use crate::Engine;

/// Which engine runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A `.dlm` on the int8 engine: bit-identical on every target.
    Int8,
    /// depthling's f32 ONNX export through tract (feature `tract`).
    Tract,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Int8 => "int8",
            Backend::Tract => "tract",
        }
    }
}

impl core::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "int8" => Ok(Backend::Int8),
            "tract" => Ok(Backend::Tract),
            other => Err(std::format!(
                "unknown backend {other:?}; known: int8, tract"
            )),
        }
    }
}

/// Why a model could not be loaded or a frame not run.
#[derive(Debug)]
pub enum RunnerError {
    /// The model file is not one the backend runs (corrupt, or the wrong kind): bad input.
    Model(String),
    /// The model loaded but running it failed.
    Run(String),
}

impl core::fmt::Display for RunnerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RunnerError::Model(m) | RunnerError::Run(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for RunnerError {}

/// FNV-1a (64-bit) over the little-endian f32 bytes of a depth map: what every target prints,
/// the same as [`crate::DepthView::checksum`].
pub fn checksum(depth: &[f32]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in depth.iter().flat_map(|d| d.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

type Infer<'a> = Box<dyn FnMut(&[u8]) -> Result<(Vec<f32>, u64), RunnerError> + 'a>;

/// A model loaded and validated once for a backend.
pub enum Loaded<'b> {
    /// Boxed: the model's fixed-capacity tables are about 22 KB.
    Int8(Box<Model<'b>>),
    #[cfg(feature = "tract")]
    Tract(crate::tract::TractModel),
}

impl<'b> Loaded<'b> {
    /// Loads `bytes` for `backend`.
    pub fn new(bytes: &'b [u8], backend: Backend) -> Result<Loaded<'b>, RunnerError> {
        match backend {
            Backend::Int8 => {
                let model =
                    Model::from_bytes(bytes).map_err(|e| RunnerError::Model(e.to_string()))?;
                if model.input_size().is_none() {
                    return Err(RunnerError::Model("model has no input".into()));
                }
                Ok(Loaded::Int8(Box::new(model)))
            }
            #[cfg(feature = "tract")]
            Backend::Tract => crate::tract::TractModel::from_bytes(bytes)
                .map(Loaded::Tract)
                .map_err(|e| RunnerError::Model(e.to_string())),
            #[cfg(not(feature = "tract"))]
            Backend::Tract => Err(RunnerError::Model(
                "this build has no tract backend (feature `tract`)".into(),
            )),
        }
    }

    /// An arena of the size the int8 model plans, its prepared plan included
    /// ([`Engine::arena_needed`]; empty for tract, which plans its own, and for a model whose
    /// plan cannot be sized, which [`Loaded::runner`] then reports).
    pub fn arena(&self) -> Vec<u8> {
        match self {
            Loaded::Int8(m) => std::vec![0u8; Engine::arena_needed(m).unwrap_or(0)],
            #[cfg(feature = "tract")]
            Loaded::Tract(_) => Vec::new(),
        }
    }

    /// A runner over this model, with `arena` (from [`Loaded::arena`]) as the engine's memory.
    pub fn runner<'m>(&'m self, arena: &'m mut [u8]) -> Result<Runner<'m>, RunnerError> {
        self.runner_with_threads(arena, 1)
    }

    /// [`Loaded::runner`] with large int8 convolutions split over `threads` threads
    /// ([`Engine::set_threads`]; tract plans its own threads).
    pub fn runner_with_threads<'m>(
        &'m self,
        arena: &'m mut [u8],
        threads: usize,
    ) -> Result<Runner<'m>, RunnerError> {
        match self {
            Loaded::Int8(model) => {
                let (h, w) = model
                    .input_size()
                    .ok_or_else(|| RunnerError::Model("model has no input".into()))?;
                let mut engine =
                    Engine::new(model, arena).map_err(|e| RunnerError::Model(e.to_string()))?;
                engine.set_threads(threads);
                Ok(Runner {
                    size: (h as usize, w as usize),
                    backend: Backend::Int8,
                    infer: Box::new(move |rgb| {
                        let depth = engine
                            .run(rgb)
                            .map_err(|e| RunnerError::Run(e.to_string()))?;
                        Ok((depth.iter().collect(), depth.checksum()))
                    }),
                })
            }
            #[cfg(feature = "tract")]
            Loaded::Tract(model) => Ok(Runner {
                size: model.input_size(),
                backend: Backend::Tract,
                infer: Box::new(move |rgb| {
                    let depth = model
                        .run(rgb)
                        .map_err(|e| RunnerError::Run(e.to_string()))?;
                    let sum = checksum(&depth);
                    Ok((depth, sum))
                }),
            }),
        }
    }
}

/// A loaded model ready to run frames of interleaved RGB bytes.
pub struct Runner<'m> {
    size: (usize, usize),
    backend: Backend,
    infer: Infer<'m>,
}

impl Runner<'_> {
    /// `(height, width)` of the frames it takes.
    pub fn input_size(&self) -> (usize, usize) {
        self.size
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Depth in metres (row-major) and its [`checksum`] for one frame.
    pub fn infer(&mut self, rgb: &[u8]) -> Result<(Vec<f32>, u64), RunnerError> {
        (self.infer)(rgb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The int8 runner gives the engine's own depth and checksum; a corrupt model is a model
    /// error, never a panic.
    #[test]
    fn int8_runner_matches_the_engine() {
        let bytes = depthling_model::example_model(12, 16, 3).expect("example model");
        let model = Model::from_bytes(&bytes).expect("valid");
        let mut arena = std::vec![0u8; Engine::arena_needed(&model).expect("plan")];
        let mut engine = Engine::new(&model, &mut arena).expect("engine");
        let frame: Vec<u8> = (0..12 * 16 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let view = engine.run(&frame).expect("run");
        let (want, want_sum) = (view.to_vec(), view.checksum());
        assert_eq!(checksum(&want), want_sum);
        let loaded = Loaded::new(&bytes, Backend::Int8).expect("load");
        let mut arena = loaded.arena();
        let mut runner = loaded.runner(&mut arena).expect("runner");
        assert_eq!(runner.input_size(), (12, 16));
        assert_eq!(runner.infer(&frame).expect("infer"), (want, want_sum));
        assert!(matches!(
            runner.infer(&frame[1..]),
            Err(RunnerError::Run(_))
        ));
        let mut broken = bytes.clone();
        broken[10] ^= 0x40;
        assert!(matches!(
            Loaded::new(&broken, Backend::Int8),
            Err(RunnerError::Model(_))
        ));
    }
}
