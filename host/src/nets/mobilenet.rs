//! MobileNetV2 students: `mbv2-mff` is the LW paper's student (torchvision's MobileNetV2
//! `features[:17]`, taps after blocks 3, 6, 13 and 16 with 24/32/96/160 channels at strides
//! 4/8/16/32, and the [`Mff`] decoder with 16 channels per tap and 5×5 kernels): 1.68 M parameters.
//! `micro` is the same design at 0.35 width with 8 channels per tap and 3×3 kernels, sized for
//! microcontrollers with 1 MB of SRAM.

use super::graph::{Act, GraphSpec};
use super::mff::Mff;
use super::Builder;

/// torchvision's `_make_divisible(v, 8)`: the nearest multiple of 8, at least 8, never more than
/// 10 % below `v`.
fn make_divisible(v: f32) -> usize {
    let rounded = (((v + 4.0) as usize) / 8 * 8).max(8);
    if (rounded as f32) < 0.9 * v {
        rounded + 8
    } else {
        rounded
    }
}

/// Inverted-residual settings `(expansion t, channels c, repeats n, first stride s)` up to
/// `features[16]`.
const SETTINGS: [(usize, usize, usize, usize); 6] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
];

/// The encoder: returns the stride-2 stem and the four `(node, channels)` taps.
fn encoder(b: &mut Builder, width: f32) -> (usize, [(usize, usize); 4]) {
    let stem_channels = make_divisible(32.0 * width);
    let stem = b.conv(0, stem_channels, 3, 2, Act::Relu6);
    let (mut x, mut cin) = (stem, stem_channels);
    let mut taps = Vec::with_capacity(4);
    for (t, c, n, s) in SETTINGS {
        let cout = make_divisible(c as f32 * width);
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let hidden = cin * t;
            let mut y = x;
            if t != 1 {
                y = b.conv(y, hidden, 1, 1, Act::Relu6);
            }
            y = b.depthwise(y, hidden, 3, stride, Act::Relu6);
            y = b.conv(y, cout, 1, 1, Act::None);
            if stride == 1 && cin == cout {
                y = b.add(y, x, Act::None);
            }
            (x, cin) = (y, cout);
        }
        if matches!(c, 24 | 32 | 96 | 160) {
            taps.push((x, cout));
        }
    }
    (stem, [taps[0], taps[1], taps[2], taps[3]])
}

fn build(name: &str, width: f32, mff: Mff) -> GraphSpec {
    let mut b = Builder::new();
    let (stem, taps) = encoder(&mut b, width);
    mff.build(&mut b, taps, stem);
    b.finish(name, 3.0, 3)
}

/// The LW paper's student at width multiplier `width` (1.0 in the paper).
pub(crate) fn mbv2_mff(width: f32) -> GraphSpec {
    let mff = Mff {
        features: 16,
        kernel: 5,
        reduction: 16,
    };
    build("mbv2-mff", width, mff)
}

/// The microcontroller student: MobileNetV2 at `0.35 · width`, 8 channels per tap, 3×3 decoder.
pub(crate) fn micro(width: f32) -> GraphSpec {
    let mff = Mff {
        features: 8,
        kernel: 3,
        reduction: 8,
    };
    build("micro", 0.35 * width, mff)
}
