//! Calibration: activation ranges from representative images (min–max, percentile, MSE) and the
//! int8 grid of every node.

use candle_core::Device;
use depthling_model::{QuantParams, INPUT_SCALE, INPUT_ZERO_POINT, SIGMOID_OUTPUT};

use crate::data::batch::images_to_tensor;
use crate::data::Sample;
use crate::error::{Error, Result};
use crate::nets::graph::{Act, GraphNet, Node};

/// How activation ranges are chosen from calibration data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Calibration {
    /// The observed minimum and maximum.
    MinMax,
    /// The 0.01 % and 99.99 % quantiles: outliers are clipped.
    Percentile,
    /// The clip range minimising the expected squared error (rounding inside, clipping outside)
    /// over the observed value histogram.
    Mse,
}

impl std::str::FromStr for Calibration {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> crate::error::Result<Calibration> {
        Calibration::parse(s)
    }
}

impl Calibration {
    pub fn parse(s: &str) -> Result<Calibration> {
        match s {
            "minmax" => Ok(Calibration::MinMax),
            "percentile" => Ok(Calibration::Percentile),
            "mse" => Ok(Calibration::Mse),
            other => Err(Error::Usage(format!(
                "unknown calibration {other:?}; known: minmax, percentile, mse"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Calibration::MinMax => "minmax",
            Calibration::Percentile => "percentile",
            Calibration::Mse => "mse",
        }
    }
}

const BINS: usize = 2048;

/// Value counts over `[lo, hi]` in equal bins.
#[derive(Clone, Debug)]
pub(super) struct Histogram {
    lo: f32,
    hi: f32,
    counts: Vec<u64>,
}

impl Histogram {
    pub(super) fn new(lo: f32, hi: f32) -> Self {
        Histogram {
            lo,
            hi: hi.max(lo + 1e-6),
            counts: vec![0; BINS],
        }
    }
    pub(super) fn width(&self) -> f32 {
        (self.hi - self.lo) / BINS as f32
    }
    pub(super) fn add(&mut self, values: &[f32]) {
        let inv = 1.0 / self.width();
        for &v in values {
            let b = (((v - self.lo) * inv).max(0.0) as usize).min(BINS - 1);
            self.counts[b] += 1;
        }
    }
    pub(super) fn centre(&self, b: usize) -> f32 {
        self.lo + (b as f32 + 0.5) * self.width()
    }
    /// Value below which a share `q` of the mass lies.
    pub(super) fn quantile(&self, q: f64) -> f32 {
        let total: u64 = self.counts.iter().sum();
        let target = (q * total as f64) as u64;
        let mut acc = 0u64;
        for (b, &c) in self.counts.iter().enumerate() {
            acc += c;
            if acc > target {
                return self.lo + (b + 1) as f32 * self.width();
            }
        }
        self.hi
    }
    /// Expected squared error of int8 quantization clipped to `[a, b]`.
    pub(super) fn quant_error(&self, a: f32, b: f32) -> f64 {
        let scale = ((b - a) / 255.0).max(1e-12) as f64;
        let rounding = scale * scale / 12.0;
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| {
                let v = self.centre(i);
                let e = if v < a {
                    (a - v) as f64
                } else if v > b {
                    (v - b) as f64
                } else {
                    0.0
                };
                c as f64 * (e * e + rounding)
            })
            .sum()
    }
}

/// The range a calibrator picks from the min–max range and the histogram.
pub(super) fn choose_range(
    calibration: Calibration,
    minmax: (f32, f32),
    hist: Option<&Histogram>,
) -> (f32, f32) {
    let (lo, hi) = minmax;
    let Some(h) = hist else { return minmax };
    match calibration {
        Calibration::MinMax => minmax,
        Calibration::Percentile => {
            let a = if lo >= 0.0 { lo } else { h.quantile(1e-4) };
            (a, h.quantile(1.0 - 1e-4))
        }
        Calibration::Mse => {
            // clip the upper end (and the lower one when values go negative) at fractions of the
            // observed extremes
            let mut best = (f64::INFINITY, minmax);
            for i in 0..=60 {
                let f = 1.0 - i as f32 / 80.0;
                let b = hi * f;
                let a = if lo < 0.0 { lo * f } else { lo };
                let e = h.quant_error(a.min(0.0), b.max(0.0));
                if e < best.0 {
                    best = (e, (a, b));
                }
            }
            best.1
        }
    }
}

/// `(min, max)` per graph node.
type Ranges = Vec<(f32, f32)>;

/// Histograms of every node (post-activation, and pre-activation for sigmoid convs) over the
/// min–max ranges from a first pass.
fn observe_histograms(
    net: &GraphNet,
    calib: &[Sample],
    device: &Device,
    post: &Ranges,
    pre: &Ranges,
    on_images: &mut impl FnMut(usize),
) -> Result<(Vec<Histogram>, Vec<Option<Histogram>>)> {
    let mut hp: Vec<Histogram> = post.iter().map(|&(a, b)| Histogram::new(a, b)).collect();
    let mut hq: Vec<Option<Histogram>> = pre
        .iter()
        .map(|&(a, b)| (a <= b).then(|| Histogram::new(a, b)))
        .collect();
    for chunk in calib.chunks(16) {
        let refs: Vec<&[u8]> = chunk.iter().map(|s| s.rgb.as_slice()).collect();
        let x = images_to_tensor(&refs, chunk[0].width, chunk[0].height, device)?;
        for (i, (out, pre_act)) in net.forward_nodes(&x, false)?.iter().enumerate() {
            hp[i].add(&out.flatten_all()?.to_vec1::<f32>()?);
            if let (Some(p), Some(h)) = (pre_act, hq[i].as_mut()) {
                h.add(&p.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        on_images(chunk.len());
    }
    Ok((hp, hq))
}

/// Observed value range of every node (post-activation) and, for sigmoid convs, pre-activation.
fn observe_ranges(
    net: &GraphNet,
    calib: &[Sample],
    device: &Device,
    on_images: &mut impl FnMut(usize),
) -> Result<(Ranges, Ranges)> {
    let n = net.spec().nodes.len();
    let mut post = vec![(f32::INFINITY, f32::NEG_INFINITY); n];
    let mut pre = vec![(f32::INFINITY, f32::NEG_INFINITY); n];
    let widen = |r: &mut (f32, f32), t: &candle_core::Tensor| -> Result<()> {
        let lo = t.flatten_all()?.min(0)?.to_scalar::<f32>()?;
        let hi = t.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        r.0 = r.0.min(lo);
        r.1 = r.1.max(hi);
        Ok(())
    };
    for chunk in calib.chunks(16) {
        let refs: Vec<&[u8]> = chunk.iter().map(|s| s.rgb.as_slice()).collect();
        let x = images_to_tensor(&refs, chunk[0].width, chunk[0].height, device)?;
        for (i, (out, pre_act)) in net.forward_nodes(&x, false)?.iter().enumerate() {
            widen(&mut post[i], out)?;
            if let Some(p) = pre_act {
                widen(&mut pre[i], p)?;
            }
        }
        on_images(chunk.len());
    }
    Ok((post, pre))
}

/// The narrowest range an activation grid covers.
pub const MIN_SPAN: f32 = 1e-3;

/// Asymmetric int8 parameters covering `[lo, hi]` and zero (at least [`MIN_SPAN`] wide).
pub fn params_for_range(lo: f32, hi: f32) -> QuantParams {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    // a dead channel's range is (0, 0): any grid holds its zeros, but a vanishing scale makes the
    // producing conv's multiplier s_in·s_w/s_out huge, which XNNPACK refuses (it needs < 256)
    let span = (hi - lo).max(MIN_SPAN);
    let scale = span / 255.0;
    let zero_point = (-128.0 - lo / scale).round().clamp(-128.0, 127.0) as i32;
    QuantParams { scale, zero_point }
}

/// The int8 parameters of every graph node as the `.dlm` stores them: `post[i]` for node `i`'s
/// output (the last node's output is f32 metres: its entry is the calibrated depth range, which
/// sizes the `.tflite` export's int16 depth), and for sigmoid convs
/// `pre[i]`, the grid of the LUT's input. Quantization-aware training fakes the same grids.
#[derive(Clone, Debug)]
pub struct ActPlan {
    pub post: Vec<QuantParams>,
    pub pre: Vec<Option<QuantParams>>,
}

impl ActPlan {
    /// The grids to fake in a quantization-aware forward pass: none for the input (uint8 pixels
    /// are exact) and none for the output (dequantized from int32).
    pub fn fake_quant(&self) -> crate::nets::graph::FakeQuant {
        let last = self.post.len().saturating_sub(1);
        crate::nets::graph::FakeQuant {
            post: (0..self.post.len())
                .map(|i| (i != 0 && i != last).then_some(self.post[i]))
                .collect(),
            pre: self.pre.clone(),
        }
    }
}

/// Calibrates `net` on `calib` (all of one size): every node's activation range, chosen by
/// `calibration`, turned into int8 parameters.
pub fn calibrate(
    net: &GraphNet,
    calib: &[Sample],
    calibration: Calibration,
    device: &Device,
) -> Result<ActPlan> {
    calibrate_observed(net, calib, calibration, device, |_| {})
}

/// Passes over the images [`calibrate_observed`] makes: one for the ranges, and a second for the
/// histograms unless `minmax`.
pub fn calibration_passes(calibration: Calibration) -> usize {
    if calibration == Calibration::MinMax {
        1
    } else {
        2
    }
}

/// Gives every concatenation's inputs the concatenation's own range (the union of theirs), as
/// TFLite's converter does: TFLite's int8 CONCATENATION needs its inputs at the output's
/// quantization, so the concat becomes a copy instead of a requantization (and the `.tflite`
/// export needs no QUANTIZE before it). An input is followed back through upsamplings (which
/// keep their input's quantization) to the node that produced it; nodes in several
/// concatenations share one range. The image input and sigmoid outputs have fixed grids and keep
/// them (their concat then requantizes them).
fn share_concat_ranges(spec: &crate::nets::graph::GraphSpec, mut post: Ranges) -> Ranges {
    let n = spec.nodes.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let fixed = |i: usize| {
        matches!(
            spec.nodes[i],
            Node::Input
                | Node::Conv {
                    act: Act::Sigmoid,
                    ..
                }
        )
    };
    for (i, node) in spec.nodes.iter().enumerate() {
        let Node::Concat { inputs } = node else {
            continue;
        };
        for &j in inputs {
            let mut root = j;
            while let Node::Upsample { input, .. } = spec.nodes[root] {
                root = input;
            }
            if fixed(root) {
                continue;
            }
            let (a, b) = (find(&mut parent, i), find(&mut parent, root));
            parent[a] = b;
        }
    }
    let mut union: Vec<(f32, f32)> = vec![(f32::INFINITY, f32::NEG_INFINITY); n];
    for (i, &(lo, hi)) in post.iter().enumerate() {
        let r = find(&mut parent, i);
        union[r] = (union[r].0.min(lo), union[r].1.max(hi));
    }
    for (i, range) in post.iter_mut().enumerate() {
        *range = union[find(&mut parent, i)];
    }
    post
}

/// [`calibrate`], calling `on_images(n)` as each batch of `n` images is done (for progress).
pub fn calibrate_observed(
    net: &GraphNet,
    calib: &[Sample],
    calibration: Calibration,
    device: &Device,
    mut on_images: impl FnMut(usize),
) -> Result<ActPlan> {
    let first = calib
        .first()
        .ok_or_else(|| Error::Runtime("no calibration images".into()))?;
    let spec = net.spec();
    let shapes = spec.shapes(first.width, first.height)?;
    spec.check_int8(&shapes)?;
    let (post, pre) = observe_ranges(net, calib, device, &mut on_images)?;
    let (post, pre): (Ranges, Ranges) = if calibration == Calibration::MinMax {
        (post, pre)
    } else {
        let (hp, hq) = observe_histograms(net, calib, device, &post, &pre, &mut on_images)?;
        let post = post
            .iter()
            .zip(&hp)
            .map(|(&r, h)| choose_range(calibration, r, Some(h)))
            .collect();
        let pre = pre
            .iter()
            .zip(&hq)
            .map(|(&r, h)| choose_range(calibration, r, h.as_ref()))
            .collect();
        (post, pre)
    };
    let post = share_concat_ranges(spec, post);
    let mut plan = ActPlan {
        post: Vec::with_capacity(spec.nodes.len()),
        pre: vec![None; spec.nodes.len()],
    };
    for (i, node) in spec.nodes.iter().enumerate() {
        let q = match node {
            Node::Input => QuantParams {
                scale: INPUT_SCALE,
                zero_point: INPUT_ZERO_POINT,
            },
            Node::Upsample { input, .. } => plan.post[*input],
            Node::Conv {
                act: Act::Sigmoid, ..
            } => {
                plan.pre[i] = Some(params_for_range(pre[i].0, pre[i].1));
                SIGMOID_OUTPUT
            }
            // f32 metres in the engine; the calibrated range sizes the `.tflite` export's
            // int16 depth
            _ => params_for_range(post[i].0, post[i].1),
        };
        plan.post.push(q);
    }
    Ok(plan)
}
