//! depthling host side: simulator, datasets, networks, training, distillation, quantization,
//! evaluation, and the app layer behind every `depthling` subcommand.
//!
//! Modules depend downwards only, in this order (each may use those above it in the list, never
//! one below): `error`, `rng`, `io`, `progress` → `data` → `sim` → `nets`, `losses`, `optim` →
//! `train` → `teacher` → `distill` → `quant`, `onnx`, `tflite`, `eval`, `plot`, `report`, `boards` → `app`.

pub mod error;
pub mod io;
pub mod progress;
pub mod rng;

pub mod data;
pub mod sim;

pub mod losses;
pub mod nets;
pub mod optim;

pub mod teacher;
pub mod train;

pub mod distill;

pub mod boards;
pub mod eval;
pub mod onnx;
pub mod plot;
pub mod quant;
pub mod report;
pub mod tflite;

pub mod app;

pub use error::{Error, Result};
