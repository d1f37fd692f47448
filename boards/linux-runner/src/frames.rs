//! The runner's frame sources, behind the device crate's `FrameSource` seam (the one the
//! Cortex-M7 firmware and the SPI camera use): PNG files, and a V4L2 camera resized to the
//! model's input.

use std::path::PathBuf;

use depthling_device::frame::{FrameError, FrameErrorKind, FrameSource};

/// A frame source's failure: its kind and what happened, naming the file or device.
#[derive(Debug)]
pub struct SourceError {
    pub kind: FrameErrorKind,
    pub msg: String,
}

impl FrameError for SourceError {
    fn kind(&self) -> FrameErrorKind {
        self.kind
    }
}

/// The caller's buffer must hold one frame of `source`.
fn check_buffer<S: FrameSource>(source: &S, frame: &[u8]) -> Result<(), SourceError> {
    if frame.len() == source.frame_bytes() {
        return Ok(());
    }
    Err(SourceError {
        kind: FrameErrorKind::Format,
        msg: format!(
            "frame buffer holds {} bytes, not {}",
            frame.len(),
            source.frame_bytes()
        ),
    })
}

/// A source that can say what its last frame is called (for the checksum lines and outputs).
pub trait Named {
    fn name(&self) -> String;
}

/// PNG files in order; each is decoded and checked against the model's size when it is taken.
pub struct PngFrames {
    files: Vec<PathBuf>,
    next: usize,
    height: usize,
    width: usize,
}

impl PngFrames {
    pub fn new(files: Vec<PathBuf>, height: usize, width: usize) -> PngFrames {
        PngFrames {
            files,
            next: 0,
            height,
            width,
        }
    }
}

impl Named for PngFrames {
    fn name(&self) -> String {
        self.next
            .checked_sub(1)
            .and_then(|i| self.files.get(i))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }
}

impl FrameSource for PngFrames {
    type Error = SourceError;

    fn size(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    fn next_frame(&mut self, frame: &mut [u8]) -> Result<(), SourceError> {
        let Some(path) = self.files.get(self.next) else {
            return Err(SourceError {
                kind: FrameErrorKind::Exhausted,
                msg: "no more frames".into(),
            });
        };
        self.next += 1;
        let img = image::open(path)
            .map_err(|e| SourceError {
                kind: FrameErrorKind::Format,
                msg: format!("{}: not a readable image ({e})", path.display()),
            })?
            .to_rgb8();
        let (w, h) = (self.width as u32, self.height as u32);
        if img.dimensions() != (w, h) {
            let (iw, ih) = img.dimensions();
            return Err(SourceError {
                kind: FrameErrorKind::Format,
                msg: format!(
                    "{}: image is {iw}×{ih}, the model takes {w}×{h}",
                    path.display()
                ),
            });
        }
        check_buffer(self, frame)?;
        frame.copy_from_slice(img.as_raw());
        Ok(())
    }
}

/// `count` frames of a V4L2 camera, resized to the model's input where the driver chose
/// another size.
#[cfg(target_os = "linux")]
pub struct CameraFrames {
    camera: crate::v4l2::Camera,
    device: PathBuf,
    raw: Vec<u8>,
    height: usize,
    width: usize,
    count: usize,
    taken: usize,
}

#[cfg(target_os = "linux")]
impl CameraFrames {
    pub fn new(
        camera: crate::v4l2::Camera,
        device: PathBuf,
        count: usize,
        height: usize,
        width: usize,
    ) -> CameraFrames {
        CameraFrames {
            camera,
            device,
            raw: Vec::new(),
            height,
            width,
            count,
            taken: 0,
        }
    }
}

#[cfg(target_os = "linux")]
impl Named for CameraFrames {
    fn name(&self) -> String {
        format!("frame_{:06}.png", self.taken.saturating_sub(1))
    }
}

#[cfg(target_os = "linux")]
impl FrameSource for CameraFrames {
    type Error = SourceError;

    fn size(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    fn next_frame(&mut self, frame: &mut [u8]) -> Result<(), SourceError> {
        if self.taken >= self.count {
            return Err(SourceError {
                kind: FrameErrorKind::Exhausted,
                msg: "no more frames".into(),
            });
        }
        let fail = |msg: String| SourceError {
            kind: FrameErrorKind::Other,
            msg,
        };
        self.camera
            .next_frame(&mut self.raw)
            .map_err(|e| fail(format!("{}: {e}", self.device.display())))?;
        self.taken += 1;
        let (cw, ch) = (self.camera.width, self.camera.height);
        check_buffer(self, frame)?;
        if (cw, ch) == (self.width, self.height) {
            frame.copy_from_slice(&self.raw);
            return Ok(());
        }
        let img = image::RgbImage::from_raw(cw as u32, ch as u32, std::mem::take(&mut self.raw))
            .ok_or_else(|| fail("camera frame size".into()))?;
        let small = image::imageops::resize(
            &img,
            self.width as u32,
            self.height as u32,
            image::imageops::FilterType::Triangle,
        );
        frame.copy_from_slice(small.as_raw());
        self.raw = img.into_raw();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PNG frames arrive in order, named by file, then report exhaustion; a frame of the wrong
    /// size is a format error naming the file.
    #[test]
    fn png_frames_deliver_check_and_end() {
        let dir =
            std::env::temp_dir().join(format!("depthling-runner-frames-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let a = dir.join("a.png");
        let b = dir.join("b.png");
        image::RgbImage::from_pixel(4, 2, image::Rgb([1, 2, 3]))
            .save(&a)
            .expect("png");
        image::RgbImage::from_pixel(3, 2, image::Rgb([9, 9, 9]))
            .save(&b)
            .expect("png");
        let mut src = PngFrames::new(vec![a.clone(), b], 2, 4);
        let mut frame = vec![0u8; src.frame_bytes()];
        src.next_frame(&mut frame).expect("first frame");
        assert_eq!(&frame[..3], &[1, 2, 3]);
        assert_eq!(src.name(), a.display().to_string());
        let e = src.next_frame(&mut frame).expect_err("wrong size");
        assert_eq!(e.kind(), FrameErrorKind::Format);
        assert!(
            e.msg.contains("b.png") && e.msg.contains("3×2"),
            "{}",
            e.msg
        );
        let e = src.next_frame(&mut frame).expect_err("end");
        assert_eq!(e.kind(), FrameErrorKind::Exhausted);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
