//! depthling host side: simulator, datasets, networks, training, quantization, evaluation and the
//! library functions behind every `depthling` subcommand.

pub mod data;
pub mod error;
pub mod nets;
pub mod rng;
pub mod sim;

pub use error::{Error, Result};
pub mod adu;
pub mod bench;
pub mod boards;
pub mod commands;
pub mod demo;
pub mod distill;
pub mod eval;
pub mod experiment;
pub mod losses;
pub mod onnx;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod quant;
pub mod report;
pub mod train;
