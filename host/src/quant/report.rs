//! What quantization costs: per-layer SQNR of int8 against f32, and int8 predictions.

use candle_core::Device;
use depthling_model::DType;

use crate::data::batch::images_to_tensor;
use crate::data::Sample;
use crate::error::Result;
use crate::nets::graph::GraphNet;

/// Quantization error of one layer: signal-to-quantization-noise ratio of the int8 tensor
/// (dequantized) against the f32 network's value, over the report images.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerError {
    pub op: usize,
    pub kind: String,
    pub sqnr_db: f64,
}

/// Per-layer SQNR of `model` (quantized from `net`) on up to 8 of `samples`.
pub fn layer_report(
    net: &GraphNet,
    model: &depthling_model::Model<'_>,
    samples: &[Sample],
    device: &Device,
) -> Result<Vec<LayerError>> {
    let outputs: Vec<usize> = (0..model.ops.len())
        .filter(|&i| model.ops[i].output().is_some())
        .collect();
    let mut signal = vec![0f64; model.ops.len()];
    let mut noise = vec![0f64; model.ops.len()];
    let mut arena = vec![0u8; depthling_device::Engine::arena_needed(model)?];
    let mut engine = depthling_device::Engine::new(model, &mut arena)?;
    for s in samples.iter().take(8) {
        let x = images_to_tensor(&[s.rgb.as_slice()], s.width, s.height, device)?;
        // op i computes graph node i + 1 (node 0 is the input)
        let reference: Vec<Vec<f32>> = net
            .forward_nodes(&x, false)?
            .iter()
            .map(|(t, _)| t.flatten_all()?.to_vec1::<f32>())
            .collect::<candle_core::Result<_>>()?;
        engine.run_observed(&s.rgb, |i, t, bytes| {
            let Some(f) = reference.get(i + 1) else {
                return;
            };
            let (h, w, c) = (t.height as usize, t.width as usize, t.channels as usize);
            for (k, chunk) in bytes.chunks_exact(t.dtype.size() as usize).enumerate() {
                let (pix, ch) = (k / c, k % c);
                let q = match t.dtype {
                    DType::I8 => {
                        (chunk[0] as i8 as i32 - t.quant.zero_point) as f32 * t.quant.scale
                    }
                    DType::F32 => f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                };
                // NHWC (engine) against NCHW (candle)
                let v = f[ch * h * w + pix];
                signal[i] += (v as f64).powi(2);
                noise[i] += ((v - q) as f64).powi(2);
            }
        })?;
    }
    Ok(outputs
        .into_iter()
        .map(|i| LayerError {
            op: i,
            kind: model.ops[i].kind().into(),
            sqnr_db: 10.0 * (signal[i] / noise[i].max(1e-30)).log10(),
        })
        .collect())
}

/// Runs a `.dlm` on samples with the int8 engine (one arena per worker thread).
pub fn run_int8(model: &depthling_model::Model<'_>, samples: &[Sample]) -> Result<Vec<Vec<f32>>> {
    use rayon::prelude::*;
    samples
        .par_chunks(8)
        .map(|chunk| {
            let mut arena = vec![0u8; depthling_device::Engine::arena_needed(model)?];
            let mut engine = depthling_device::Engine::new(model, &mut arena)?;
            chunk
                .iter()
                .map(|s| Ok(engine.run(&s.rgb)?.iter().collect()))
                .collect::<Result<Vec<Vec<f32>>>>()
        })
        .collect::<Result<Vec<_>>>()
        .map(|v| v.into_iter().flatten().collect())
}
