//! What distillation needs from a teacher, whatever it was built with: depth for a batch, the
//! inputs of its BatchNorm layers with their running statistics (DDD's transformation network
//! matches them), and named feature maps (ADU's feature distillation reads them). depthling's
//! own networks implement it here; an imported teacher implements it next to its importer.

pub mod onnx;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::nets::graph::GraphNet;

/// One BatchNorm layer as a batch reaches it: its input, and the running mean and variance it was
/// trained with (per channel).
pub struct BatchNormInput {
    pub input: Tensor,
    pub mean: Tensor,
    pub var: Tensor,
}

/// A feature map a teacher offers for feature distillation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FeatureTap {
    /// How the teacher names it (a node of depthling's graph, or an ONNX tensor).
    pub name: String,
    /// Downsampling factor against the input.
    pub factor: usize,
    pub channels: usize,
}

/// A frozen teacher: it is never trained, but gradients flow through it (to DDD's
/// transformation network).
pub trait Teacher {
    /// For messages.
    fn name(&self) -> &str;

    /// Channels of its input: 3 (RGB), or 6 for a stereo teacher (left then right).
    fn input_channels(&self) -> usize;

    /// Refuses an input size it cannot take, saying which it can.
    fn check_size(&self, width: usize, height: usize) -> Result<()>;

    /// Depth in metres, `N×1×H×W`, for `x` (`N×C×H×W`, RGB in [0, 1]), in eval mode.
    fn predict(&self, x: &Tensor) -> Result<Tensor>;

    /// The inputs of its BatchNorm layers for `x` (eval mode), with their running statistics;
    /// empty when it has none.
    fn batch_norm_inputs(&self, x: &Tensor) -> Result<Vec<BatchNormInput>>;

    /// How many BatchNorm layers it has (DDD's transformation network needs at least one).
    fn batch_norm_layers(&self) -> usize;

    /// The feature maps [`Teacher::predict_with_features`] returns, in that order.
    fn feature_taps(&self) -> Vec<FeatureTap>;

    /// Depth and the [`Teacher::feature_taps`] maps, from one forward pass.
    fn predict_with_features(&self, x: &Tensor) -> Result<(Tensor, Vec<Tensor>)>;
}

/// A teacher's depth (eval mode) for every sample, row-major `H×W` each (a stereo teacher reads
/// the right views too).
pub fn predict_samples(
    teacher: &dyn Teacher,
    samples: &[crate::data::Sample],
    device: &candle_core::Device,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(16) {
        let x = crate::data::batch::input_tensor(chunk, teacher.input_channels(), device)?;
        let y = teacher.predict(&x)?.flatten_from(1)?;
        for row in 0..chunk.len() {
            out.push(y.get(row)?.to_vec1::<f32>()?);
        }
    }
    Ok(out)
}

impl Teacher for GraphNet {
    fn name(&self) -> &str {
        &self.spec().name
    }

    fn input_channels(&self) -> usize {
        self.spec().input_channels
    }

    fn check_size(&self, width: usize, height: usize) -> Result<()> {
        self.spec().shapes(width, height).map(|_| ())
    }

    fn predict(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_frozen(x, None)
    }

    fn batch_norm_inputs(&self, x: &Tensor) -> Result<Vec<BatchNormInput>> {
        let mut captured = Vec::new();
        self.forward_frozen(x, Some(&mut captured))?;
        Ok(captured
            .into_iter()
            .map(|(input, mean, var)| BatchNormInput { input, mean, var })
            .collect())
    }

    fn batch_norm_layers(&self) -> usize {
        self.spec()
            .nodes
            .iter()
            .filter(|n| {
                matches!(
                    n,
                    crate::nets::graph::Node::Conv {
                        batch_norm: true,
                        ..
                    }
                )
            })
            .count()
    }

    /// The encoder maps, one per downsampling factor ([`crate::nets::graph::GraphSpec::encoder_taps`]).
    fn feature_taps(&self) -> Vec<FeatureTap> {
        let channels = self.spec().channels();
        self.spec()
            .encoder_taps()
            .into_iter()
            .map(|(factor, node)| FeatureTap {
                name: format!("node{node}"),
                factor,
                channels: channels[node],
            })
            .collect()
    }

    fn predict_with_features(&self, x: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let nodes = self.forward_nodes(x, false)?;
        let depth = nodes
            .last()
            .map(|(t, _)| t.clone())
            .ok_or_else(|| Error::Runtime("empty graph".into()))?;
        let features = self
            .spec()
            .encoder_taps()
            .into_iter()
            .map(|(_, node)| nodes[node].0.clone())
            .collect();
        Ok((depth, features))
    }
}
