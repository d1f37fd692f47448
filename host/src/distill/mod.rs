//! Distillation methods, each an [`crate::train::Objective`] in its own file: `kd` (plain KD),
//! `ddd` (data-free KD with object mixing and the BatchNorm-statistics transformation network),
//! `aux` (the LW paper's KD with auxiliary data) and `adu` (ADU-Depth from a stereo teacher).
//! They take any [`crate::teacher::Teacher`]. What they share — the image budget, mixing labeled
//! and unlabeled sets — is here.

pub mod adu;
pub mod aux;
pub mod ddd;
pub mod kd;

pub use ddd::{distill, DddOptions};

use crate::data::Sample;
use crate::error::{Error, Result};

/// The first `⌈fraction · n⌉` images (at least one): DDD's image budget (`--images-fraction`).
pub fn budget(samples: Vec<Sample>, fraction: f64) -> Result<Vec<Sample>> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(Error::Usage(format!(
            "--images-fraction must be in (0, 1], got {fraction}"
        )));
    }
    let keep = ((samples.len() as f64 * fraction).ceil() as usize).clamp(1, samples.len().max(1));
    Ok(samples.into_iter().take(keep).collect())
}

/// Parses `1/6` or `0.1667`.
pub fn parse_fraction(s: &str) -> Result<f64> {
    let bad = || {
        Error::Usage(format!(
            "--images-fraction: {s:?} is not a fraction like 1/6 or 0.5"
        ))
    };
    let v = match s.split_once('/') {
        Some((a, b)) => {
            let (a, b): (f64, f64) = (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            );
            if b == 0.0 {
                return Err(bad());
            }
            a / b
        }
        None => s.trim().parse().map_err(|_| bad())?,
    };
    if !(v > 0.0 && v <= 1.0) {
        return Err(bad());
    }
    Ok(v)
}

/// The training set of a run with labeled and unlabeled images: the unlabeled images' depth
/// set to 0 (no ground truth), every set [`balanced`]; all images must be of one size.
pub fn labeled_and_unlabeled(labeled: &[&[Sample]], unlabeled: &[Sample]) -> Result<Vec<Sample>> {
    let blank: Vec<Sample> = unlabeled
        .iter()
        .map(|s| Sample {
            depth: vec![0.0; s.depth.len()],
            ..s.clone()
        })
        .collect();
    let data = balanced(labeled.iter().copied().chain([blank.as_slice()]));
    if let Some(b) = data
        .iter()
        .find(|s| (s.width, s.height) != (data[0].width, data[0].height))
    {
        return Err(Error::Usage(format!(
            "labeled and unlabeled images differ in size ({}×{} and {}×{})",
            data[0].width, data[0].height, b.width, b.height
        )));
    }
    Ok(data)
}

/// The non-empty `sets` concatenated, each repeated `round(largest / its size)` times (at least
/// once), so that every set contributes about equally to the batches.
pub fn balanced<'s>(sets: impl IntoIterator<Item = &'s [Sample]>) -> Vec<Sample> {
    let sets: Vec<&[Sample]> = sets.into_iter().filter(|s| !s.is_empty()).collect();
    let largest = sets.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = Vec::new();
    for set in sets {
        let times = ((largest as f64 / set.len() as f64).round() as usize).max(1);
        for _ in 0..times {
            out.extend_from_slice(set);
        }
    }
    out
}
