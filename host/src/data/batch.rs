//! Train/test split, augmentation hooks and batching over in-memory samples.

use candle_core::{Device, Tensor};

use super::Sample;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// A deterministic split of `n` indices: `(train, test)` with `round(n · test_fraction)` test
/// indices chosen by `seed`.
pub fn split(n: usize, test_fraction: f32, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        idx.swap(i, rng.int(0, i));
    }
    let n_test = ((n as f32 * test_fraction.clamp(0.0, 1.0)).round() as usize).min(n);
    let test = idx[..n_test].to_vec();
    let mut train = idx[n_test..].to_vec();
    train.sort_unstable();
    let mut test = test;
    test.sort_unstable();
    (train, test)
}

/// An augmentation: a new sample from a sample and the batch RNG.
pub trait Augment: Send + Sync {
    fn apply(&self, sample: &Sample, rng: &mut Rng) -> Sample;
}

/// Mirrors image, depth and mask left–right with probability `p`. Stereo pairs are left alone
/// (mirroring swaps the roles of the two views).
#[derive(Clone, Copy, Debug)]
pub struct HorizontalFlip {
    pub p: f32,
}

fn mirror<T: Copy>(v: &[T], w: usize, channels: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len());
    for row in v.chunks_exact(w * channels) {
        for x in (0..w).rev() {
            out.extend_from_slice(&row[x * channels..(x + 1) * channels]);
        }
    }
    out
}

impl Augment for HorizontalFlip {
    fn apply(&self, s: &Sample, rng: &mut Rng) -> Sample {
        if s.right.is_some() || !rng.chance(self.p) {
            return s.clone();
        }
        Sample {
            width: s.width,
            height: s.height,
            rgb: mirror(&s.rgb, s.width, 3),
            depth: mirror(&s.depth, s.width, 1),
            instance: s.instance.as_ref().map(|m| mirror(m, s.width, 1)),
            right: None,
        }
    }
}

/// Colour jitter: brightness, contrast and saturation each scaled by a factor in
/// `[1 − amount, 1 + amount]` (depth unchanged).
#[derive(Clone, Copy, Debug)]
pub struct ColourJitter {
    pub amount: f32,
}

impl Augment for ColourJitter {
    fn apply(&self, s: &Sample, rng: &mut Rng) -> Sample {
        let mut f = || rng.range(1.0 - self.amount, 1.0 + self.amount);
        let (brightness, contrast, saturation) = (f(), f(), f());
        let n = (s.rgb.len() / 3).max(1) as f32;
        let mean = s.rgb.iter().map(|&v| v as f32).sum::<f32>() / (3.0 * n);
        let jitter = |rgb: &[u8]| -> Vec<u8> {
            let mut out = Vec::with_capacity(rgb.len());
            for px in rgb.chunks_exact(3) {
                let grey = 0.299 * px[0] as f32 + 0.587 * px[1] as f32 + 0.114 * px[2] as f32;
                for &c in px {
                    let v = grey + (c as f32 - grey) * saturation;
                    let v = mean + (v - mean) * contrast;
                    out.push((v * brightness).round().clamp(0.0, 255.0) as u8);
                }
            }
            out
        };
        Sample {
            rgb: jitter(&s.rgb),
            right: s.right.as_deref().map(jitter),
            ..s.clone()
        }
    }
}

/// A small rotation about the image centre by up to `max_degrees` (nearest neighbour): pixels
/// that come from outside the image are black with invalid (0) depth, so losses skip them.
#[derive(Clone, Copy, Debug)]
pub struct SmallRotation {
    pub max_degrees: f32,
}

impl Augment for SmallRotation {
    fn apply(&self, s: &Sample, rng: &mut Rng) -> Sample {
        let angle = rng.range(-self.max_degrees, self.max_degrees).to_radians();
        if s.right.is_some() {
            // a rotated pair is no longer rectified: leave stereo samples alone
            return s.clone();
        }
        let (w, h) = (s.width, s.height);
        let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
        let (sin, cos) = angle.sin_cos();
        let mut out = Sample {
            rgb: vec![0; w * h * 3],
            depth: vec![0.0; w * h],
            instance: s.instance.as_ref().map(|_| vec![0; w * h]),
            ..s.clone()
        };
        for y in 0..h {
            for x in 0..w {
                // inverse map: where in the source does output (x, y) come from
                let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                let sx = (cos * dx + sin * dy + cx).round();
                let sy = (-sin * dx + cos * dy + cy).round();
                if sx < 0.0 || sy < 0.0 || sx >= w as f32 || sy >= h as f32 {
                    continue;
                }
                let (src, dst) = (sy as usize * w + sx as usize, y * w + x);
                out.rgb[dst * 3..dst * 3 + 3].copy_from_slice(&s.rgb[src * 3..src * 3 + 3]);
                out.depth[dst] = s.depth[src];
                if let (Some(o), Some(i)) = (out.instance.as_mut(), s.instance.as_ref()) {
                    o[dst] = i[src];
                }
            }
        }
        out
    }
}

/// Draws random batches (with replacement) and applies the augmentations in order.
pub struct Batcher<'a> {
    samples: &'a [Sample],
    batch_size: usize,
    augment: Vec<Box<dyn Augment>>,
    rng: Rng,
}

impl<'a> Batcher<'a> {
    pub fn new(samples: &'a [Sample], batch_size: usize, seed: u64) -> Result<Self> {
        if samples.is_empty() {
            return Err(Error::Runtime("no training images".into()));
        }
        let (w, h) = (samples[0].width, samples[0].height);
        if let Some(s) = samples.iter().find(|s| (s.width, s.height) != (w, h)) {
            return Err(Error::Runtime(format!(
                "samples mix sizes {}×{} and {w}×{h}; resize when loading",
                s.width, s.height
            )));
        }
        Ok(Batcher {
            samples,
            batch_size: batch_size.max(1),
            augment: Vec::new(),
            rng: Rng::new(seed),
        })
    }

    pub fn with(mut self, augment: impl Augment + 'static) -> Self {
        self.augment.push(Box::new(augment));
        self
    }

    pub fn with_boxed(mut self, augment: Box<dyn Augment>) -> Self {
        self.augment.push(augment);
        self
    }

    /// The random state (for checkpoints): batches drawn after [`Batcher::set_rng_state`] with it
    /// are the ones an uninterrupted run would have drawn.
    pub fn rng_state(&self) -> u64 {
        self.rng.state()
    }

    pub fn set_rng_state(&mut self, state: u64) {
        self.rng = Rng::from_state(state);
    }

    /// The next batch of (augmented) samples.
    pub fn next_samples(&mut self) -> Vec<Sample> {
        (0..self.batch_size)
            .map(|_| {
                let i = self.rng.int(0, self.samples.len() - 1);
                let mut s = self.samples[i].clone();
                for a in &self.augment {
                    s = a.apply(&s, &mut self.rng);
                }
                s
            })
            .collect()
    }
}

/// Tensors of a batch: images N×C×H×W in [0, 1] (C = 3, or 6 with the right view stacked after
/// the left for a stereo network), depth N×1×H×W in metres, valid mask N×1×H×W.
pub fn to_tensors(
    samples: &[Sample],
    channels: usize,
    device: &Device,
) -> Result<(Tensor, Tensor, Tensor)> {
    let first = samples
        .first()
        .ok_or_else(|| Error::Runtime("empty batch".into()))?;
    let (w, h) = (first.width, first.height);
    let x = input_tensor(samples, channels, device)?;
    let depth: Vec<f32> = samples
        .iter()
        .flat_map(|s| s.depth.iter().copied())
        .collect();
    let d = Tensor::from_vec(depth, (samples.len(), 1, h, w), device)?;
    let mask = d.gt(0f32)?.to_dtype(candle_core::DType::F32)?;
    Ok((x, d, mask))
}

/// The network input of `samples`: RGB (3 channels) or left and right RGB (6 channels).
pub fn input_tensor(samples: &[Sample], channels: usize, device: &Device) -> Result<Tensor> {
    let first = samples
        .first()
        .ok_or_else(|| Error::Runtime("empty batch".into()))?;
    let (w, h) = (first.width, first.height);
    let left: Vec<&[u8]> = samples.iter().map(|s| s.rgb.as_slice()).collect();
    let x = images_to_tensor(&left, w, h, device)?;
    match channels {
        3 => Ok(x),
        6 => {
            let right = samples
                .iter()
                .map(|s| s.right.as_deref())
                .collect::<Option<Vec<&[u8]>>>()
                .ok_or_else(|| {
                    Error::Usage(
                        "a stereo network needs right views: simulate with --stereo".into(),
                    )
                })?;
            let r = images_to_tensor(&right, w, h, device)?;
            Ok(Tensor::cat(&[&x, &r], 1)?)
        }
        c => Err(Error::Runtime(format!(
            "networks take 3 or 6 channels, not {c}"
        ))),
    }
}

/// Input tensor from RGB samples: N×3×H×W in [0, 1].
pub fn images_to_tensor(
    images: &[&[u8]],
    width: usize,
    height: usize,
    device: &Device,
) -> Result<Tensor> {
    let n = images.len();
    let mut data = vec![0f32; n * 3 * height * width];
    let plane = height * width;
    for (b, img) in images.iter().enumerate() {
        if img.len() != plane * 3 {
            return Err(Error::Runtime(format!(
                "image {b} has {} bytes, expected {}",
                img.len(),
                plane * 3
            )));
        }
        for p in 0..plane {
            for c in 0..3 {
                data[b * 3 * plane + c * plane + p] = img[p * 3 + c] as f32 / 255.0;
            }
        }
    }
    Ok(Tensor::from_vec(data, (n, 3, height, width), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(w: usize, h: usize) -> Sample {
        Sample {
            width: w,
            height: h,
            rgb: (0..w * h * 3).map(|i| i as u8).collect(),
            depth: (0..w * h).map(|i| i as f32 + 1.0).collect(),
            instance: Some((0..w * h).map(|i| i as u16).collect()),
            right: None,
        }
    }

    #[test]
    fn split_is_deterministic_disjoint_and_complete() {
        let (tr, te) = split(100, 0.2, 5);
        assert_eq!((tr.len(), te.len()), (80, 20));
        assert_eq!(split(100, 0.2, 5), (tr.clone(), te.clone()));
        assert_ne!(split(100, 0.2, 6).1, te);
        let mut all = [tr, te].concat();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn flip_mirrors_every_plane_consistently() {
        let s = sample(3, 2);
        let f = HorizontalFlip { p: 1.0 }.apply(&s, &mut Rng::new(0));
        assert_eq!(f.depth, vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
        assert_eq!(&f.rgb[..3], &s.rgb[6..9]);
        assert_eq!(f.instance.unwrap(), vec![2, 1, 0, 5, 4, 3]);
        let same = HorizontalFlip { p: 0.0 }.apply(&s, &mut Rng::new(0));
        assert_eq!(same, s);
    }

    #[test]
    fn batcher_rejects_mixed_sizes_and_builds_tensors() {
        let data = [sample(4, 2), sample(4, 2)];
        let mut b = Batcher::new(&data, 3, 1)
            .unwrap()
            .with(HorizontalFlip { p: 0.5 });
        let batch = b.next_samples();
        let (x, d, m) = to_tensors(&batch, 3, &Device::Cpu).unwrap();
        assert_eq!(x.dims(), &[3, 3, 2, 4]);
        assert_eq!(d.dims(), &[3, 1, 2, 4]);
        assert_eq!(m.sum_all().unwrap().to_scalar::<f32>().unwrap(), 24.0);
        assert!(Batcher::new(&[sample(4, 2), sample(2, 2)], 2, 0).is_err());
    }

    /// Jitter keeps depth and size; rotation keeps every pixel it moves (values come from the
    /// source) and marks what came from outside as invalid; zero rotation is the identity.
    #[test]
    fn jitter_and_rotation_keep_labels_consistent() {
        let s = sample(9, 7);
        let mut rng = Rng::new(3);
        let j = ColourJitter { amount: 0.2 }.apply(&s, &mut rng);
        assert_eq!(
            (j.depth.clone(), j.rgb.len()),
            (s.depth.clone(), s.rgb.len())
        );
        assert_ne!(j.rgb, s.rgb);
        let still = SmallRotation { max_degrees: 0.0 }.apply(&s, &mut rng);
        assert_eq!((still.rgb, still.depth), (s.rgb.clone(), s.depth.clone()));
        let r = SmallRotation { max_degrees: 10.0 }.apply(&s, &mut rng);
        for (i, &d) in r.depth.iter().enumerate() {
            if d == 0.0 {
                assert_eq!(r.rgb[i * 3..i * 3 + 3], [0, 0, 0]);
            } else {
                // a source pixel: its depth value exists in the original, with its colour
                let src = s.depth.iter().position(|&v| v == d).unwrap();
                assert_eq!(r.rgb[i * 3..i * 3 + 3], s.rgb[src * 3..src * 3 + 3]);
            }
        }
    }
}
