//! ResNet-18/34 teachers with the [`Mff`] decoder (the LW paper's teacher design): a 7×7 stem
//! and 3×3 max pool, four stages of basic blocks (3×3, 3×3, identity or 1×1 projection shortcut)
//! tapped at strides 4/8/16/32, channels 64/128/256/512 times the width multiplier. The stereo
//! variant takes the left and right images stacked into six channels.

use super::graph::{Act, GraphSpec, Node};
use super::mff::Mff;
use super::Builder;

/// `resnet{depth}-mff` (`depth` 18 or 34) at width multiplier `width`.
pub(crate) fn resnet_mff(depth: usize, width: f32, stereo: bool) -> GraphSpec {
    let ch = |c: usize| ((c as f32 * width).round() as usize).max(4);
    let blocks: [usize; 4] = if depth == 18 {
        [2, 2, 2, 2]
    } else {
        [3, 4, 6, 3]
    };
    let mut b = Builder::new();
    let stem = b.conv(0, ch(64), 7, 2, Act::Relu);
    let mut x = b.push(Node::MaxPool { input: stem });
    let mut cin = ch(64);
    let mut taps = Vec::with_capacity(4);
    for (stage, n) in blocks.into_iter().enumerate() {
        let cout = ch(64 << stage);
        for i in 0..n {
            let stride = if i == 0 && stage > 0 { 2 } else { 1 };
            let y = b.conv(x, cout, 3, stride, Act::Relu);
            let y = b.conv(y, cout, 3, 1, Act::None);
            let shortcut = if stride != 1 || cin != cout {
                b.conv(x, cout, 1, stride, Act::None)
            } else {
                x
            };
            x = b.add(y, shortcut, Act::Relu);
            cin = cout;
        }
        taps.push((x, cout));
    }
    let mff = Mff {
        features: 16,
        kernel: 5,
        reduction: 16,
    };
    mff.build(&mut b, [taps[0], taps[1], taps[2], taps[3]], stem);
    let name = format!("resnet{depth}-mff{}", if stereo { "-stereo" } else { "" });
    b.finish(&name, 3.0, if stereo { 6 } else { 3 })
}
