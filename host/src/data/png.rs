//! PNG input and output with checks that name the file: 8-bit RGB images, 16-bit depth maps,
//! 16-bit instance masks. Writes go to a temporary name and are renamed into place.

use std::path::Path;

use image::{ColorType, DynamicImage, ImageBuffer, ImageReader, Luma, Rgb};

use crate::error::{Error, Result};

fn open(path: &Path) -> Result<DynamicImage> {
    if !path.exists() {
        return Err(Error::bad_input(path, "file not found"));
    }
    let reader = ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    reader
        .decode()
        .map_err(|e| Error::bad_input(path, format!("not a readable PNG image ({e})")))
}

/// An RGB image as `(width, height, bytes)`; gray and RGBA inputs are converted.
pub fn read_rgb(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let img = open(path)?;
    match img.color() {
        ColorType::Rgb8 | ColorType::Rgba8 | ColorType::L8 | ColorType::La8 => {}
        other => {
            return Err(Error::bad_input(
                path,
                format!("expected an 8-bit RGB image, found {other:?}"),
            ))
        }
    }
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::bad_input(path, "image has zero size"));
    }
    Ok((w as usize, h as usize, rgb.into_raw()))
}

/// A 16-bit single-channel PNG as `(width, height, values)`.
pub fn read_u16(path: &Path, what: &str) -> Result<(usize, usize, Vec<u16>)> {
    let img = open(path)?;
    match img {
        DynamicImage::ImageLuma16(buf) => {
            let (w, h) = buf.dimensions();
            Ok((w as usize, h as usize, buf.into_raw()))
        }
        other => Err(Error::bad_input(
            path,
            format!(
                "{what} PNG must be 16-bit single-channel, found {:?}",
                other.color()
            ),
        )),
    }
}

/// Depth in metres from a 16-bit PNG with `depth_scale` units per metre (0 = invalid).
pub fn read_depth(path: &Path, depth_scale: f32) -> Result<(usize, usize, Vec<f32>)> {
    let (w, h, raw) = read_u16(path, "depth")?;
    Ok((w, h, raw.iter().map(|&v| v as f32 / depth_scale).collect()))
}

/// Writes through a temporary file in the same folder, then renames: never a half-written file.
fn atomic_save(path: &Path, save: impl FnOnce(&Path) -> image::ImageResult<()>) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}.png", std::process::id()));
    save(&tmp).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::Runtime(format!("{}: cannot write PNG: {e}", path.display()))
    })?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

pub fn write_rgb(path: &Path, width: usize, height: usize, rgb: &[u8]) -> Result<()> {
    let buf: ImageBuffer<Rgb<u8>, &[u8]> = ImageBuffer::from_raw(width as u32, height as u32, rgb)
        .ok_or_else(|| Error::Runtime(format!("{}: buffer size mismatch", path.display())))?;
    atomic_save(path, |p| buf.save_with_format(p, image::ImageFormat::Png))
}

pub fn write_u16(path: &Path, width: usize, height: usize, values: &[u16]) -> Result<()> {
    let buf: ImageBuffer<Luma<u16>, &[u16]> =
        ImageBuffer::from_raw(width as u32, height as u32, values)
            .ok_or_else(|| Error::Runtime(format!("{}: buffer size mismatch", path.display())))?;
    atomic_save(path, |p| buf.save_with_format(p, image::ImageFormat::Png))
}

/// Depth in metres to 16-bit units (`round(d · scale)`, saturating; invalid stays 0).
pub fn encode_depth(depth: &[f32], depth_scale: f32) -> Vec<u16> {
    depth
        .iter()
        .map(|&d| {
            if d > 0.0 && d.is_finite() {
                (d * depth_scale).round().clamp(1.0, 65535.0) as u16
            } else {
                0
            }
        })
        .collect()
}

pub fn write_depth(
    path: &Path,
    width: usize,
    height: usize,
    depth: &[f32],
    depth_scale: f32,
) -> Result<()> {
    write_u16(path, width, height, &encode_depth(depth, depth_scale))
}

/// The turbo colour map (Google, 2019), polynomial approximation, `t` in [0, 1].
pub fn turbo(t: f32) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0) as f64;
    let r = 0.13572138
        + t * (4.61539260
            + t * (-42.66032258 + t * (132.13108234 + t * (-152.94239396 + t * 59.28637943))));
    let g = 0.09140261
        + t * (2.19418839
            + t * (4.84296658 + t * (-14.18503333 + t * (4.27729857 + t * 2.82956604))));
    let b = 0.10667330
        + t * (12.64194608
            + t * (-60.58204836 + t * (110.36276771 + t * (-89.90310912 + t * 27.34824973))));
    [r, g, b].map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
}

/// Colourises depth (near = warm, far = cool) over `[min, max]`; invalid pixels are black.
pub fn colorize_depth(depth: &[f32], min: f32, max: f32) -> Vec<u8> {
    let span = (max - min).max(1e-6);
    depth
        .iter()
        .flat_map(|&d| {
            if d > 0.0 && d.is_finite() {
                turbo(1.0 - (d - min) / span)
            } else {
                [0, 0, 0]
            }
        })
        .collect()
}

/// 2nd and 98th percentile of the valid depths (a robust colour range).
pub fn depth_range(depth: &[f32]) -> (f32, f32) {
    let mut v: Vec<f32> = depth
        .iter()
        .copied()
        .filter(|d| *d > 0.0 && d.is_finite())
        .collect();
    if v.is_empty() {
        return (0.0, 1.0);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f32| v[((v.len() - 1) as f32 * q) as usize];
    (at(0.02), at(0.98).max(at(0.02) + 1e-3))
}
