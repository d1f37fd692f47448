//! Depth-estimation metrics and evaluation protocols (DESIGN §3).
//!
//! Every metric is computed per image over its valid pixels, then averaged over images, as BTS and
//! monodepth2 do. Accumulation is in `f64`. The crate is `no_std` and allocation-free: median
//! scaling finds medians by bisection over the ordered bit patterns of positive `f32`s.
//!
//! ```
//! use depthling_metrics::{image_metrics, EvalConfig};
//! let gt = [1.0f32, 2.0, 4.0, 0.0];
//! let pred = [1.0f32, 2.0, 5.0, 3.0];
//! let m = image_metrics(&pred, &gt, 2, 2, &EvalConfig::default()).unwrap();
//! assert_eq!(m.valid_pixels, 3);
//! assert!((m.abs_rel - 0.25 / 3.0).abs() < 1e-12);
//! ```
#![cfg_attr(not(feature = "std"), no_std)]

use libm::{fabs, log, log10, sqrt};

/// The standard metrics of one image, or their mean over images.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DepthMetrics {
    pub abs_rel: f64,
    pub sq_rel: f64,
    pub rmse: f64,
    pub rmse_log: f64,
    pub log10: f64,
    pub delta1: f64,
    pub delta2: f64,
    pub delta3: f64,
    pub silog: f64,
    /// Valid pixels that entered the metrics (summed over images in a mean).
    pub valid_pixels: u64,
}

/// Which rectangle of the image is evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crop {
    /// The whole image.
    None,
    /// Eigen et al.'s NYUv2 crop, rows 45..471 and columns 41..601 of 480×640, scaled to the image.
    NyuEigen,
    /// Garg et al.'s KITTI crop (fractions 0.408–0.992 of the height, 0.036–0.964 of the width).
    KittiGarg,
    /// Eigen et al.'s KITTI crop (fractions 0.332–0.914 of the height, 0.036–0.964 of the width).
    KittiEigen,
}

impl Crop {
    /// `(row_start, row_end, col_start, col_end)`, half-open, for an image of `width`×`height`.
    pub fn rect(self, width: usize, height: usize) -> (usize, usize, usize, usize) {
        let (h, w) = (height as f64, width as f64);
        let scaled = |frac: f64, n: f64| -> usize { libm::round(frac * n) as usize };
        let (r0, r1, c0, c1) = match self {
            Crop::None => return (0, height, 0, width),
            Crop::NyuEigen => (45.0 / 480.0, 471.0 / 480.0, 41.0 / 640.0, 601.0 / 640.0),
            Crop::KittiGarg => (0.408_108_11, 0.991_891_89, 0.035_947_71, 0.964_052_29),
            Crop::KittiEigen => (0.332_432_4, 0.913_513_51, 0.035_947_71, 0.964_052_29),
        };
        let clamp = |v: usize, n: usize| v.min(n);
        (
            clamp(scaled(r0, h), height),
            clamp(scaled(r1, h), height),
            clamp(scaled(c0, w), width),
            clamp(scaled(c1, w), width),
        )
    }
}

/// Named evaluation protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// No cap, no crop.
    None,
    /// NYUv2: cap 10 m, Eigen crop.
    Nyu,
    /// KITTI: cap 80 m, Garg crop.
    Kitti,
}

impl Protocol {
    pub fn config(self) -> EvalConfig {
        match self {
            Protocol::None => EvalConfig::default(),
            Protocol::Nyu => EvalConfig {
                max_depth: Some(10.0),
                crop: Crop::NyuEigen,
                ..EvalConfig::default()
            },
            Protocol::Kitti => EvalConfig {
                max_depth: Some(80.0),
                crop: Crop::KittiGarg,
                ..EvalConfig::default()
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::None => "none",
            Protocol::Nyu => "nyu",
            Protocol::Kitti => "kitti",
        }
    }

    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "none" => Some(Protocol::None),
            "nyu" => Some(Protocol::Nyu),
            "kitti" => Some(Protocol::Kitti),
            _ => None,
        }
    }
}

/// How one image is evaluated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalConfig {
    /// Valid ground truth is `0 < g ≤ max_depth`; predictions are clamped to `[min_depth, max_depth]`.
    pub max_depth: Option<f64>,
    /// Lower clamp of predictions.
    pub min_depth: f64,
    pub crop: Crop,
    /// Scale each prediction by median(g)/median(d) over the valid pixels before clamping.
    pub median_scaling: bool,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            max_depth: None,
            min_depth: 1e-3,
            crop: Crop::None,
            median_scaling: false,
        }
    }
}

/// Why an image could not be evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsError {
    /// `pred`, `gt` and `width × height` disagree.
    SizeMismatch,
    /// No pixel of the (cropped) ground truth is valid.
    NoValidPixels,
}

impl core::fmt::Display for MetricsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MetricsError::SizeMismatch => f.write_str("prediction and ground truth sizes differ"),
            MetricsError::NoValidPixels => f.write_str("no valid ground-truth pixel"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for MetricsError {}

fn is_valid(g: f32, cfg: &EvalConfig) -> bool {
    let g = g as f64;
    g > 0.0 && g.is_finite() && cfg.max_depth.is_none_or(|cap| g <= cap)
}

/// Visits the valid pixels of the crop as `(pred, gt)` pairs.
fn for_valid(
    pred: &[f32],
    gt: &[f32],
    width: usize,
    height: usize,
    cfg: &EvalConfig,
    mut f: impl FnMut(f32, f32),
) {
    let (r0, r1, c0, c1) = cfg.crop.rect(width, height);
    for row in r0..r1 {
        let base = row * width;
        for (&d, &g) in pred[base + c0..base + c1]
            .iter()
            .zip(&gt[base + c0..base + c1])
        {
            if is_valid(g, cfg) {
                f(d, g);
            }
        }
    }
}

/// Maps an `f32` to a `u32` whose unsigned order is the numeric order (NaN excluded).
fn ordered_bits(v: f32) -> u32 {
    let b = v.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

fn from_ordered_bits(o: u32) -> f32 {
    if o & 0x8000_0000 != 0 {
        f32::from_bits(o & 0x7fff_ffff)
    } else {
        f32::from_bits(!o)
    }
}

/// The k-th smallest (0-based) of the values `select` yields for valid pixels, without allocating:
/// bisection over the 32-bit ordered keys, one pass per bit.
fn kth_smallest(
    pred: &[f32],
    gt: &[f32],
    width: usize,
    height: usize,
    cfg: &EvalConfig,
    k: u64,
    select: impl Fn(f32, f32) -> f32,
) -> f32 {
    let (mut lo, mut hi) = (0u32, u32::MAX);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let mut count = 0u64;
        for_valid(pred, gt, width, height, cfg, |d, g| {
            if ordered_bits(select(d, g)) <= mid {
                count += 1;
            }
        });
        if count > k {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    from_ordered_bits(lo)
}

fn median(
    pred: &[f32],
    gt: &[f32],
    width: usize,
    height: usize,
    cfg: &EvalConfig,
    n: u64,
    select: impl Fn(f32, f32) -> f32 + Copy,
) -> f64 {
    let upper = kth_smallest(pred, gt, width, height, cfg, n / 2, select) as f64;
    if n % 2 == 1 {
        upper
    } else {
        let lower = kth_smallest(pred, gt, width, height, cfg, n / 2 - 1, select) as f64;
        0.5 * (lower + upper)
    }
}

/// Metrics of one image. `pred` and `gt` are row-major depth in metres; ground truth `≤ 0` is
/// invalid. Non-finite predictions are treated as the lower clamp.
pub fn image_metrics(
    pred: &[f32],
    gt: &[f32],
    width: usize,
    height: usize,
    cfg: &EvalConfig,
) -> Result<DepthMetrics, MetricsError> {
    let n_pixels = width
        .checked_mul(height)
        .ok_or(MetricsError::SizeMismatch)?;
    if pred.len() != n_pixels || gt.len() != n_pixels {
        return Err(MetricsError::SizeMismatch);
    }
    let mut n = 0u64;
    for_valid(pred, gt, width, height, cfg, |_, _| n += 1);
    if n == 0 {
        return Err(MetricsError::NoValidPixels);
    }
    let scale = if cfg.median_scaling {
        let med_g = median(pred, gt, width, height, cfg, n, |_, g| g);
        let med_d = median(pred, gt, width, height, cfg, n, |d, _| {
            if d.is_finite() {
                d
            } else {
                0.0
            }
        });
        if med_d > 0.0 {
            med_g / med_d
        } else {
            1.0
        }
    } else {
        1.0
    };
    let hi = cfg.max_depth.unwrap_or(f64::INFINITY);
    let (mut abs_rel, mut sq_rel, mut sq, mut sq_log, mut l10) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut d1, mut d2, mut d3) = (0u64, 0u64, 0u64);
    let (mut e_sum, mut e_sq) = (0.0, 0.0);
    for_valid(pred, gt, width, height, cfg, |d, g| {
        let d = d as f64 * scale;
        let d = if d.is_finite() { d } else { cfg.min_depth };
        let d = d.max(cfg.min_depth).min(hi);
        let g = g as f64;
        let diff = g - d;
        abs_rel += fabs(diff) / g;
        sq_rel += diff * diff / g;
        sq += diff * diff;
        let e = log(d) - log(g);
        sq_log += e * e;
        l10 += fabs(log10(d) - log10(g));
        let ratio = if g / d > d / g { g / d } else { d / g };
        d1 += (ratio < 1.25) as u64;
        d2 += (ratio < 1.25 * 1.25) as u64;
        d3 += (ratio < 1.25 * 1.25 * 1.25) as u64;
        e_sum += e;
        e_sq += e * e;
    });
    let nf = n as f64;
    let mean_e = e_sum / nf;
    Ok(DepthMetrics {
        abs_rel: abs_rel / nf,
        sq_rel: sq_rel / nf,
        rmse: sqrt(sq / nf),
        rmse_log: sqrt(sq_log / nf),
        log10: l10 / nf,
        delta1: d1 as f64 / nf,
        delta2: d2 as f64 / nf,
        delta3: d3 as f64 / nf,
        silog: 100.0 * sqrt((e_sq / nf - mean_e * mean_e).max(0.0)),
        valid_pixels: n,
    })
}

/// Averages per-image metrics over images.
#[derive(Clone, Copy, Debug, Default)]
pub struct MetricsAccumulator {
    sum: DepthMetrics,
    images: u64,
}

impl MetricsAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, m: &DepthMetrics) {
        let s = &mut self.sum;
        s.abs_rel += m.abs_rel;
        s.sq_rel += m.sq_rel;
        s.rmse += m.rmse;
        s.rmse_log += m.rmse_log;
        s.log10 += m.log10;
        s.delta1 += m.delta1;
        s.delta2 += m.delta2;
        s.delta3 += m.delta3;
        s.silog += m.silog;
        s.valid_pixels += m.valid_pixels;
        self.images += 1;
    }

    /// Evaluates one image and adds it.
    pub fn add_image(
        &mut self,
        pred: &[f32],
        gt: &[f32],
        width: usize,
        height: usize,
        cfg: &EvalConfig,
    ) -> Result<DepthMetrics, MetricsError> {
        let m = image_metrics(pred, gt, width, height, cfg)?;
        self.add(&m);
        Ok(m)
    }

    pub fn images(&self) -> u64 {
        self.images
    }

    /// The mean over the images added so far (`None` before the first).
    pub fn mean(&self) -> Option<DepthMetrics> {
        if self.images == 0 {
            return None;
        }
        let n = self.images as f64;
        let s = &self.sum;
        Some(DepthMetrics {
            abs_rel: s.abs_rel / n,
            sq_rel: s.sq_rel / n,
            rmse: s.rmse / n,
            rmse_log: s.rmse_log / n,
            log10: s.log10 / n,
            delta1: s.delta1 / n,
            delta2: s.delta2 / n,
            delta3: s.delta3 / n,
            silog: s.silog / n,
            valid_pixels: s.valid_pixels,
        })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    #[test]
    fn hand_checked_single_image() {
        // gt: 1, 2, 4, (invalid 0); pred: 1, 2.5, 2, 7
        let gt = [1.0f32, 2.0, 4.0, 0.0];
        let pred = [1.0f32, 2.5, 2.0, 7.0];
        let m = image_metrics(&pred, &gt, 4, 1, &EvalConfig::default()).unwrap();
        assert_eq!(m.valid_pixels, 3);
        close(m.abs_rel, (0.0 + 0.5 / 2.0 + 2.0 / 4.0) / 3.0);
        close(m.sq_rel, (0.0 + 0.25 / 2.0 + 4.0 / 4.0) / 3.0);
        close(m.rmse, ((0.0 + 0.25 + 4.0) / 3.0f64).sqrt());
        let e = [0.0, (2.5f64 / 2.0).ln(), (2.0f64 / 4.0).ln()];
        close(
            m.rmse_log,
            (e.iter().map(|v| v * v).sum::<f64>() / 3.0).sqrt(),
        );
        close(
            m.log10,
            e.iter().map(|v| v.abs()).sum::<f64>() / 3.0 / 10f64.ln(),
        );
        // ratios 1, 1.25 (not < 1.25), 2
        close(m.delta1, 1.0 / 3.0);
        close(m.delta2, 2.0 / 3.0);
        close(m.delta3, 2.0 / 3.0);
        let mean = e.iter().sum::<f64>() / 3.0;
        let var = e.iter().map(|v| v * v).sum::<f64>() / 3.0 - mean * mean;
        close(m.silog, 100.0 * var.sqrt());
    }

    #[test]
    fn perfect_prediction_scores_perfectly() {
        let gt = [0.7f32, 3.0, 9.5, 12.0];
        let m = image_metrics(&gt, &gt, 2, 2, &EvalConfig::default()).unwrap();
        close(m.abs_rel, 0.0);
        close(m.rmse, 0.0);
        close(m.delta1, 1.0);
        close(m.silog, 0.0);
    }

    #[test]
    fn cap_excludes_far_ground_truth_and_clamps_predictions() {
        let gt = [5.0f32, 20.0];
        let pred = [50.0f32, 20.0];
        let cfg = Protocol::Nyu.config();
        let cfg = EvalConfig {
            crop: Crop::None,
            ..cfg
        };
        let m = image_metrics(&pred, &gt, 2, 1, &cfg).unwrap();
        assert_eq!(m.valid_pixels, 1);
        // 50 is clamped to the 10 m cap.
        close(m.abs_rel, 1.0);
    }

    #[test]
    fn predictions_clamped_from_below() {
        let gt = [1.0f32];
        let m = image_metrics(&[-3.0], &gt, 1, 1, &EvalConfig::default()).unwrap();
        close(m.abs_rel, 1.0 - 1e-3);
        let m = image_metrics(&[f32::NAN], &gt, 1, 1, &EvalConfig::default()).unwrap();
        close(m.abs_rel, 1.0 - 1e-3);
    }

    #[test]
    fn median_scaling_removes_global_scale() {
        let gt = [1.0f32, 2.0, 3.0, 4.0];
        let pred: [f32; 4] = [0.5, 1.0, 1.5, 2.0];
        let cfg = EvalConfig {
            median_scaling: true,
            ..EvalConfig::default()
        };
        let m = image_metrics(&pred, &gt, 4, 1, &cfg).unwrap();
        assert!(m.abs_rel < 1e-7, "{}", m.abs_rel);
        // odd count with an outlier: median(g)=2, median(d)=1 -> x2
        let gt = [1.0f32, 2.0, 3.0];
        let pred: [f32; 3] = [0.5, 1.0, 100.0];
        let m = image_metrics(&pred, &gt, 3, 1, &cfg).unwrap();
        close(m.delta1, 2.0 / 3.0);
    }

    #[test]
    fn kth_smallest_matches_sorting() {
        let vals = [3.5f32, -1.0, 0.0, 7.25, 2.0, 2.0, 1e-6];
        let gt = [1.0f32; 7];
        let mut sorted = vals;
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        for (k, want) in sorted.iter().enumerate() {
            let got = kth_smallest(&vals, &gt, 7, 1, &EvalConfig::default(), k as u64, |d, _| d);
            assert_eq!(got, *want);
        }
    }

    #[test]
    fn crops_scale_with_the_image() {
        assert_eq!(Crop::NyuEigen.rect(640, 480), (45, 471, 41, 601));
        assert_eq!(Crop::NyuEigen.rect(320, 240), (23, 236, 21, 301));
        assert_eq!(Crop::None.rect(5, 3), (0, 3, 0, 5));
        let (r0, r1, c0, c1) = Crop::KittiGarg.rect(1216, 352);
        assert_eq!((r0, r1, c0, c1), (144, 349, 44, 1172));
    }

    #[test]
    fn crop_limits_the_evaluated_pixels() {
        let gt = vec![1.0f32; 640 * 480];
        let pred = vec![2.0f32; 640 * 480];
        let cfg = Protocol::Nyu.config();
        let m = image_metrics(&pred, &gt, 640, 480, &cfg).unwrap();
        assert_eq!(m.valid_pixels, (471 - 45) * (601 - 41));
    }

    #[test]
    fn errors_for_bad_input() {
        assert_eq!(
            image_metrics(&[1.0], &[1.0, 2.0], 2, 1, &EvalConfig::default()),
            Err(MetricsError::SizeMismatch)
        );
        assert_eq!(
            image_metrics(&[1.0, 1.0], &[0.0, -1.0], 2, 1, &EvalConfig::default()),
            Err(MetricsError::NoValidPixels)
        );
    }

    #[test]
    fn accumulator_averages_per_image() {
        let mut acc = MetricsAccumulator::new();
        assert!(acc.mean().is_none());
        let cfg = EvalConfig::default();
        // image A: abs_rel 0; image B (4 pixels): abs_rel 1 -> mean 0.5 regardless of pixel counts.
        acc.add_image(&[1.0], &[1.0], 1, 1, &cfg).unwrap();
        acc.add_image(&[2.0; 4], &[1.0; 4], 2, 2, &cfg).unwrap();
        let m = acc.mean().unwrap();
        close(m.abs_rel, 0.5);
        assert_eq!(acc.images(), 2);
        assert_eq!(m.valid_pixels, 5);
    }
}
