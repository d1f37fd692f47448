//! Datasets (DESIGN §4): the on-disk format the simulator writes and users bring, CSV lists of
//! `rgb_path,depth_path`, and in-memory samples with batching for training.

pub mod batch;
pub mod png;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One RGB-D image (row-major; depth in metres, 0 = invalid).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
    pub depth: Vec<f32>,
    /// Per-pixel instance ids (OOD domain; 0 = background).
    pub instance: Option<Vec<u16>>,
    /// Right view of a stereo pair.
    pub right: Option<Vec<u8>>,
}

pub const DATASET_FORMAT: &str = "depthling-dataset";
pub const DATASET_VERSION: u32 = 1;

/// `manifest.json` of a dataset folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub domain: String,
    pub width: usize,
    pub height: usize,
    pub count: usize,
    /// Depth PNG units per metre.
    pub depth_scale: f32,
    pub max_depth: f32,
    pub fx: f32,
    pub fy: f32,
    pub cx: f32,
    pub cy: f32,
    /// Stereo baseline in metres (0 without a right view).
    pub baseline: f32,
    pub seed: u64,
    pub generator: String,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::bad_input(
                path,
                "manifest.json not found (not a depthling dataset folder)",
            ),
            _ => Error::io(path, e),
        })?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::bad_input(path, format!("unreadable manifest: {e}")))?;
        if m.format != DATASET_FORMAT {
            return Err(Error::bad_input(
                path,
                format!("format is {:?}, expected {DATASET_FORMAT:?}", m.format),
            ));
        }
        if m.version != DATASET_VERSION {
            return Err(Error::bad_input(
                path,
                format!(
                    "dataset version {} is not supported (expected {DATASET_VERSION})",
                    m.version
                ),
            ));
        }
        if m.width == 0 || m.height == 0 {
            return Err(Error::bad_input(path, "width and height must be positive"));
        }
        if !(m.depth_scale.is_finite() && m.depth_scale > 0.0) {
            return Err(Error::bad_input(
                path,
                "depth_scale must be a positive number",
            ));
        }
        Ok(m)
    }
}

fn file_name(i: usize) -> String {
    format!("{i:06}.png")
}

/// Writes samples as a dataset folder. Everything goes to a temporary sibling folder that is
/// renamed into place at the end, so an interrupted run leaves nothing half-written. An existing
/// `out` is replaced only if it is empty or a depthling dataset.
pub fn write_dataset(out: &Path, manifest: &Manifest, samples: &[Sample]) -> Result<()> {
    if out.exists() {
        let is_dataset = out.join("manifest.json").exists();
        let is_empty = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_none();
        if !is_dataset && !is_empty {
            return Err(Error::bad_input(
                out,
                "exists and is not a depthling dataset; refusing to overwrite",
            ));
        }
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = out
        .file_name()
        .ok_or_else(|| Error::bad_input(out, "not a folder name"))?;
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = write_dataset_into(&tmp, manifest, samples);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
}

fn write_dataset_into(dir: &Path, manifest: &Manifest, samples: &[Sample]) -> Result<()> {
    use rayon::prelude::*;
    let stereo = samples.iter().any(|s| s.right.is_some());
    let instances = samples.iter().any(|s| s.instance.is_some());
    let mut subdirs = vec!["rgb", "depth"];
    if stereo {
        subdirs.push("right");
    }
    if instances {
        subdirs.push("instance");
    }
    for sub in &subdirs {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    }
    samples
        .par_iter()
        .enumerate()
        .try_for_each(|(i, s)| -> Result<()> {
            let name = file_name(i);
            png::write_rgb(&dir.join("rgb").join(&name), s.width, s.height, &s.rgb)?;
            png::write_depth(
                &dir.join("depth").join(&name),
                s.width,
                s.height,
                &s.depth,
                manifest.depth_scale,
            )?;
            if let Some(r) = &s.right {
                png::write_rgb(&dir.join("right").join(&name), s.width, s.height, r)?;
            }
            if let Some(m) = &s.instance {
                png::write_u16(&dir.join("instance").join(&name), s.width, s.height, m)?;
            }
            Ok(())
        })?;
    let path = dir.join("manifest.json");
    let text = serde_json::to_string_pretty(manifest).map_err(|e| Error::Runtime(e.to_string()))?;
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))
}

/// Where the files of one sample are.
#[derive(Clone, Debug)]
pub struct SampleFiles {
    pub rgb: PathBuf,
    /// `None` for a plain image folder: the sample has no labels (depth 0 everywhere).
    pub depth: Option<PathBuf>,
    pub right: Option<PathBuf>,
    pub instance: Option<PathBuf>,
}

/// A dataset on disk: a depthling dataset folder, a CSV list, or a plain folder of PNG images
/// (unlabeled: for distillation and calibration, which need no depth).
#[derive(Clone, Debug)]
pub struct Dataset {
    pub root: PathBuf,
    pub depth_scale: f32,
    pub manifest: Option<Manifest>,
    pub files: Vec<SampleFiles>,
}

impl Dataset {
    /// Opens a dataset folder (with `manifest.json`) or a `.csv` list of `rgb_path,depth_path`
    /// (paths relative to the CSV's folder; `depth_scale` units per metre). Checks that every
    /// listed file exists.
    pub fn open(path: &Path, depth_scale: f32) -> Result<Dataset> {
        if !path.exists() {
            return Err(Error::bad_input(path, "dataset not found"));
        }
        if !(depth_scale.is_finite() && depth_scale > 0.0) {
            return Err(Error::Usage(format!(
                "--depth-scale must be a positive number, got {depth_scale}"
            )));
        }
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        {
            return Self::open_csv(path, depth_scale);
        }
        if path.is_dir() && !path.join("manifest.json").exists() {
            return Self::open_images(path, depth_scale);
        }
        let manifest = Manifest::read(&path.join("manifest.json"))?;
        if manifest.count == 0 {
            return Err(Error::bad_input(
                path.join("manifest.json"),
                "the dataset has no images (count is 0)",
            ));
        }
        let mut files = Vec::with_capacity(manifest.count);
        for i in 0..manifest.count {
            let name = file_name(i);
            let opt = |sub: &str| {
                let p = path.join(sub).join(&name);
                p.exists().then_some(p)
            };
            let f = SampleFiles {
                rgb: path.join("rgb").join(&name),
                depth: Some(path.join("depth").join(&name)),
                right: opt("right"),
                instance: opt("instance"),
            };
            for p in [Some(&f.rgb), f.depth.as_ref()].into_iter().flatten() {
                if !p.exists() {
                    return Err(Error::bad_input(
                        p,
                        format!("missing (the manifest lists {} images)", manifest.count),
                    ));
                }
            }
            files.push(f);
        }
        Ok(Dataset {
            root: path.to_path_buf(),
            depth_scale: manifest.depth_scale,
            manifest: Some(manifest),
            files,
        })
    }

    fn open_csv(path: &Path, depth_scale: f32) -> Result<Dataset> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut files = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || (n == 0 && line.starts_with("rgb_path"))
            {
                continue;
            }
            let mut cols = line.split(',').map(str::trim);
            let (Some(rgb), Some(depth)) = (cols.next(), cols.next()) else {
                return Err(Error::bad_input(
                    path,
                    format!("line {}: expected rgb_path,depth_path", n + 1),
                ));
            };
            let f = SampleFiles {
                rgb: base.join(rgb),
                depth: Some(base.join(depth)),
                right: None,
                instance: None,
            };
            for p in [Some(&f.rgb), f.depth.as_ref()].into_iter().flatten() {
                if !p.exists() {
                    return Err(Error::bad_input(
                        p,
                        format!("missing (listed on line {} of {})", n + 1, path.display()),
                    ));
                }
            }
            files.push(f);
        }
        if files.is_empty() {
            return Err(Error::bad_input(path, "lists no images"));
        }
        Ok(Dataset {
            root: path.to_path_buf(),
            depth_scale,
            manifest: None,
            files,
        })
    }

    /// A folder of PNG images without a manifest: unlabeled samples, one per image (the
    /// `NAME_color.png` previews of `depthling run` left out), in name order.
    fn open_images(path: &Path, depth_scale: f32) -> Result<Dataset> {
        let files = crate::io::list_pngs(path)
            .map_err(|_| {
                Error::bad_input(
                    path,
                    "neither a dataset folder (no manifest.json) nor a folder of PNG images",
                )
            })?
            .into_iter()
            .map(|rgb| SampleFiles {
                rgb,
                depth: None,
                right: None,
                instance: None,
            })
            .collect();
        Ok(Dataset {
            root: path.to_path_buf(),
            depth_scale,
            manifest: None,
            files,
        })
    }

    /// Whether the samples carry ground-truth depth.
    pub fn is_labeled(&self) -> bool {
        self.files.iter().all(|f| f.depth.is_some())
    }

    /// Refuses an unlabeled dataset where `what` needs ground truth.
    pub fn require_labels(self, what: &str) -> Result<Dataset> {
        if self.is_labeled() {
            Ok(self)
        } else {
            Err(Error::bad_input(
                &self.root,
                format!("is a folder of images without depth; {what} needs a labeled dataset (a dataset folder or a CSV list of rgb_path,depth_path)"),
            ))
        }
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Loads sample `i`, checking that RGB, depth (and right/instance) sizes agree. With
    /// `size = Some((w, h))` the sample is resized (RGB bilinear, depth and masks nearest).
    pub fn load(&self, i: usize, size: Option<(usize, usize)>) -> Result<Sample> {
        let f = self
            .files
            .get(i)
            .ok_or_else(|| Error::bad_input(&self.root, format!("no sample {i}")))?;
        let (w, h, rgb) = png::read_rgb(&f.rgb)?;
        let depth = match &f.depth {
            Some(dp) => {
                let (dw, dh, depth) = png::read_depth(dp, self.depth_scale)?;
                if (dw, dh) != (w, h) {
                    return Err(Error::bad_input(
                        dp,
                        format!("depth is {dw}×{dh} but its RGB image is {w}×{h}"),
                    ));
                }
                depth
            }
            None => vec![0.0; w * h],
        };
        let right = match &f.right {
            Some(p) => {
                let (rw, rh, r) = png::read_rgb(p)?;
                if (rw, rh) != (w, h) {
                    return Err(Error::bad_input(
                        p,
                        format!("right view is {rw}×{rh}, left is {w}×{h}"),
                    ));
                }
                Some(r)
            }
            None => None,
        };
        let instance = match &f.instance {
            Some(p) => {
                let (iw, ih, m) = png::read_u16(p, "instance mask")?;
                if (iw, ih) != (w, h) {
                    return Err(Error::bad_input(
                        p,
                        format!("instance mask is {iw}×{ih}, image is {w}×{h}"),
                    ));
                }
                Some(m)
            }
            None => None,
        };
        let sample = Sample {
            width: w,
            height: h,
            rgb,
            depth,
            instance,
            right,
        };
        Ok(match size {
            Some((tw, th)) if (tw, th) != (w, h) => resize(&sample, tw, th),
            _ => sample,
        })
    }

    /// Loads every sample (in parallel), optionally resized.
    pub fn load_all(&self, size: Option<(usize, usize)>) -> Result<Vec<Sample>> {
        use rayon::prelude::*;
        (0..self.len())
            .into_par_iter()
            .map(|i| self.load(i, size))
            .collect()
    }
}

/// Resizes RGB bilinearly and depth/masks by nearest neighbour (depth must not be blended across
/// edges).
pub fn resize(s: &Sample, width: usize, height: usize) -> Sample {
    use image::imageops::{resize as img_resize, FilterType};
    let rgb_img: image::RgbImage =
        image::ImageBuffer::from_raw(s.width as u32, s.height as u32, s.rgb.clone())
            .unwrap_or_else(|| image::ImageBuffer::new(s.width as u32, s.height as u32));
    let rgb = img_resize(&rgb_img, width as u32, height as u32, FilterType::Triangle).into_raw();
    let nearest = |y: usize, x: usize| (y * s.height / height) * s.width + x * s.width / width;
    let pick = |src: &Vec<f32>| {
        (0..height)
            .flat_map(|y| (0..width).map(move |x| (y, x)))
            .map(|(y, x)| src[nearest(y, x)])
            .collect::<Vec<_>>()
    };
    let depth = pick(&s.depth);
    let instance = s.instance.as_ref().map(|m| {
        (0..height)
            .flat_map(|y| (0..width).map(move |x| (y, x)))
            .map(|(y, x)| m[nearest(y, x)])
            .collect()
    });
    let right = s.right.as_ref().map(|r| {
        let img: image::RgbImage =
            image::ImageBuffer::from_raw(s.width as u32, s.height as u32, r.clone())
                .unwrap_or_else(|| image::ImageBuffer::new(s.width as u32, s.height as u32));
        img_resize(&img, width as u32, height as u32, FilterType::Triangle).into_raw()
    });
    Sample {
        width,
        height,
        rgb,
        depth,
        instance,
        right,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{manifest as sim_manifest, render_many, Domain};

    #[test]
    fn dataset_round_trip_and_bad_inputs_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ds");
        let samples = render_many(Domain::Ood, 24, 16, 4, 0, 3, true);
        let manifest = sim_manifest(Domain::Ood, 24, 16, 3, 4, true);
        write_dataset(&out, &manifest, &samples).unwrap();
        let ds = Dataset::open(&out, 1.0).unwrap();
        assert_eq!(ds.len(), 3);
        let back = ds.load(1, None).unwrap();
        assert_eq!(back.rgb, samples[1].rgb);
        assert_eq!(back.right, samples[1].right);
        assert_eq!(back.instance, samples[1].instance);
        for (a, b) in back.depth.iter().zip(&samples[1].depth) {
            assert!((a - b).abs() <= 0.5 / manifest.depth_scale + 1e-6);
        }
        let resized = ds.load(0, Some((12, 8))).unwrap();
        assert_eq!(
            (resized.width, resized.height, resized.rgb.len()),
            (12, 8, 12 * 8 * 3)
        );

        // 8-bit depth PNG
        let depth1 = out.join("depth").join("000001.png");
        png::write_rgb(&depth1, 24, 16, &samples[1].rgb).unwrap();
        let e = ds.load(1, None).unwrap_err().to_string();
        assert!(e.contains("000001.png") && e.contains("16-bit"), "{e}");
        // truncated PNG
        let bytes = std::fs::read(out.join("rgb").join("000002.png")).unwrap();
        std::fs::write(
            out.join("rgb").join("000002.png"),
            &bytes[..bytes.len() / 2],
        )
        .unwrap();
        let e = ds.load(2, None).unwrap_err().to_string();
        assert!(e.contains("000002.png"), "{e}");
        // missing file
        std::fs::remove_file(out.join("rgb").join("000000.png")).unwrap();
        let e = Dataset::open(&out, 1.0).unwrap_err().to_string();
        assert!(e.contains("000000.png") && e.contains("missing"), "{e}");
        // unreadable manifest
        std::fs::write(out.join("manifest.json"), "{ not json").unwrap();
        let e = Dataset::open(&out, 1.0).unwrap_err();
        assert!(e.to_string().contains("manifest.json"), "{e}");
        assert_eq!(e.exit_code(), 2);
        // refusing to overwrite a non-dataset folder
        let other = dir.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("keep.txt"), "precious").unwrap();
        assert!(write_dataset(&other, &manifest, &samples).is_err());
        assert_eq!(
            std::fs::read_to_string(other.join("keep.txt")).unwrap(),
            "precious"
        );
    }

    /// A folder of plain PNGs loads as unlabeled samples (depth 0), in name order; a folder
    /// with neither a manifest nor images is refused naming it.
    #[test]
    fn image_folders_load_unlabeled() {
        let dir = tempfile::tempdir().unwrap();
        let s = render_many(Domain::Ood, 16, 12, 2, 0, 2, false);
        png::write_rgb(&dir.path().join("b.png"), 16, 12, &s[1].rgb).unwrap();
        png::write_rgb(&dir.path().join("a.png"), 16, 12, &s[0].rgb).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
        let ds = Dataset::open(dir.path(), 1000.0).unwrap();
        assert_eq!(ds.len(), 2);
        assert!(!ds.is_labeled());
        let all = ds.load_all(None).unwrap();
        assert_eq!(all[0].rgb, s[0].rgb);
        assert_eq!(all[1].rgb, s[1].rgb);
        assert!(all[0].depth.iter().all(|&d| d == 0.0));
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let e = Dataset::open(&empty, 1000.0).unwrap_err().to_string();
        assert!(e.contains("empty") && e.contains("PNG"), "{e}");
    }

    #[test]
    fn csv_lists_load() {
        let dir = tempfile::tempdir().unwrap();
        let s = &render_many(Domain::Indoor, 16, 12, 2, 0, 1, false)[0];
        png::write_rgb(&dir.path().join("a.png"), 16, 12, &s.rgb).unwrap();
        png::write_depth(&dir.path().join("a_d.png"), 16, 12, &s.depth, 5000.0).unwrap();
        let csv = dir.path().join("list.csv");
        std::fs::write(&csv, "rgb_path,depth_path\na.png,a_d.png\n").unwrap();
        let ds = Dataset::open(&csv, 5000.0).unwrap();
        let back = ds.load(0, None).unwrap();
        assert!((back.depth[7] - s.depth[7]).abs() < 1e-3);
        std::fs::write(&csv, "a.png,missing.png\n").unwrap();
        let e = Dataset::open(&csv, 5000.0).unwrap_err().to_string();
        assert!(e.contains("missing.png"), "{e}");
    }
}
