//! Training checkpoints: the network's weights and BatchNorm statistics, Adam's moments, the
//! objective's own state, the step, the data order's random state and the loss history, in one
//! safetensors file that is also loadable as a network (`Net::load`).

use std::collections::HashMap;
use std::path::Path;

use super::Objective;
use crate::error::{Error, Result};
use crate::io::meta;
use crate::nets::Net;
use crate::optim::Adam;

/// Writes a checkpoint (through a temporary name: an interrupted write never replaces the last
/// good one).
pub(super) fn save(
    net: &Net,
    opt: &Adam,
    objective: &dyn Objective,
    path: &Path,
    extra: &[(&str, String)],
    losses: &[f32],
) -> Result<()> {
    let mut tensors = net.named_tensors()?;
    tensors.extend(opt.state()?);
    tensors.extend(objective.state()?);
    let mut all: Vec<(&str, String)> = extra.to_vec();
    // loadable as a network too (`Net::load`), e.g. to evaluate the last good state
    all.push((
        meta::ARCH,
        serde_json::to_string(net.net.spec()).map_err(|e| Error::Runtime(e.to_string()))?,
    ));
    all.push((
        meta::TRAIN_LOSSES,
        serde_json::to_string(losses).map_err(|e| Error::Runtime(e.to_string()))?,
    ));
    crate::nets::write_safetensors(path, &tensors, &all)
}

/// Restores a checkpoint written by [`save`]; returns `(step, rng state, losses)`.
pub(super) fn load(
    net: &Net,
    opt: &mut Adam,
    objective: &mut dyn Objective,
    path: &Path,
    fingerprint: &str,
) -> Result<(usize, u64, Vec<f32>)> {
    let bad = |m: String| Error::bad_input(path, m);
    let bytes = crate::io::read(path, "checkpoint")?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a checkpoint ({e})")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let get = |k: &str| {
        metadata
            .get(k)
            .cloned()
            .ok_or_else(|| bad(format!("not a training checkpoint (no {k})")))
    };
    let theirs = get(meta::TRAIN_CONFIG)?;
    if theirs != fingerprint {
        return Err(bad(format!(
            "written by a run with other settings ({theirs}); this run has {fingerprint}"
        )));
    }
    let parse = |k: &str| -> Result<u64> {
        get(k)?
            .parse::<u64>()
            .map_err(|_| bad(format!("unreadable {k}")))
    };
    let (step, rng) = (parse(meta::TRAIN_STEP)? as usize, parse(meta::TRAIN_RNG)?);
    let losses: Vec<f32> = serde_json::from_str(&get(meta::TRAIN_LOSSES)?)
        .map_err(|_| bad(format!("unreadable {}", meta::TRAIN_LOSSES)))?;
    let tensors: HashMap<_, _> = candle_core::safetensors::load_buffer(&bytes, &net.device)?;
    net.restore(&tensors).map_err(|e| bad(e.to_string()))?;
    opt.restore(&tensors, step)
        .map_err(|e| bad(e.to_string()))?;
    objective
        .restore(&tensors)
        .map_err(|e| bad(e.to_string()))?;
    Ok((step, rng, losses))
}
