//! The multi-scale feature fusion decoder of Hu et al. (2019) as the LW paper uses it: every
//! encoder tap is gated by squeeze-excitation, reduced to a few channels by one convolution at its
//! own resolution, and upsampled bilinearly to stride 2; the four results are concatenated, fused
//! by one convolution, refined by another (R), and a biased convolution gives depth.
//!
//! One change from the paper: the paper's head runs at stride 2 and its one-channel output is
//! upsampled to the input size; here R's output is upsampled and the head runs at full resolution,
//! so that the head is the graph's last convolution and its int32 accumulators dequantize straight
//! to metres (DESIGN §7). Same parameters; about 2 % more MACs at 304×228.

use super::graph::{Act, Interp, Node};
use super::Builder;

/// Sizes of an MFF decoder.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mff {
    /// Channels each tap is reduced to (16 in the paper; four taps concatenate to 4×).
    pub features: usize,
    /// Kernel of every decoder convolution (5 in the paper).
    pub kernel: usize,
    /// Squeeze-excitation reduction (16 in the paper).
    pub reduction: usize,
}

impl Mff {
    /// Appends the decoder to `b`. `taps` are `(node, channels)` at strides 4, 8, 16 and 32;
    /// `stride2` is a node at stride 2 whose size the upsampled taps are cropped to.
    pub fn build(&self, b: &mut Builder, taps: [(usize, usize); 4], stride2: usize) -> usize {
        let mut fused = Vec::with_capacity(4);
        for (i, (tap, channels)) in taps.into_iter().enumerate() {
            let pooled = b.push(Node::GlobalAvgPool { input: tap });
            let squeezed = b.biased(pooled, (channels / self.reduction).max(1), 1, Act::Relu);
            let gate = b.biased(squeezed, channels, 1, Act::Sigmoid);
            let gated = b.push(Node::Mul {
                input: tap,
                scale: gate,
            });
            let reduced = b.conv(gated, self.features, self.kernel, 1, Act::Relu);
            fused.push(b.upsample(reduced, 2 << i, Interp::Bilinear, Some(stride2)));
        }
        let all = b.push(Node::Concat { inputs: fused });
        let x = b.conv(all, 4 * self.features, self.kernel, 1, Act::Relu);
        let x = b.conv(x, 4 * self.features, self.kernel, 1, Act::Relu);
        // crop to the input (node 0) when the size is not a multiple of the stride
        let x = b.upsample(x, 2, Interp::Bilinear, Some(0));
        b.biased(x, 1, self.kernel, Act::None)
    }
}
