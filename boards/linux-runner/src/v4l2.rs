//! A V4L2 camera as a frame source (Linux): memory-mapped streaming capture in YUYV or RGB24,
//! the two formats USB (UVC) and CSI cameras on Jetson and Raspberry Pi boards offer without a
//! decoder. Frames come out as packed RGB at the size the driver chose; the runner resizes them to
//! the model's input.
//!
//! The structures and request numbers are those of `<linux/videodev2.h>`; their sizes are checked
//! against the kernel's in the tests (the request numbers encode them).

use std::ffi::c_void;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

const V4L2_BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
const V4L2_MEMORY_MMAP: u32 = 1;
const V4L2_FIELD_NONE: u32 = 1;
const V4L2_CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
const V4L2_CAP_STREAMING: u32 = 0x0400_0000;
const V4L2_CAP_DEVICE_CAPS: u32 = 0x8000_0000;

/// `v4l2_fourcc(a, b, c, d)`.
const fn fourcc(code: &[u8; 4]) -> u32 {
    code[0] as u32 | (code[1] as u32) << 8 | (code[2] as u32) << 16 | (code[3] as u32) << 24
}

const PIX_YUYV: u32 = fourcc(b"YUYV");
const PIX_RGB24: u32 = fourcc(b"RGB3");

#[repr(C)]
struct Capability {
    driver: [u8; 16],
    card: [u8; 32],
    bus_info: [u8; 32],
    version: u32,
    capabilities: u32,
    device_caps: u32,
    reserved: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct PixFormat {
    width: u32,
    height: u32,
    pixelformat: u32,
    field: u32,
    bytesperline: u32,
    sizeimage: u32,
    colorspace: u32,
    private: u32,
    flags: u32,
    ycbcr_enc: u32,
    quantization: u32,
    xfer_func: u32,
}

/// The union of `v4l2_format`: 200 bytes, aligned like a pointer (its `v4l2_window` member holds
/// pointers), which makes the struct 208 bytes on 64-bit and 204 on 32-bit ARM, as the kernel's.
#[repr(C)]
union FormatUnion {
    pix: PixFormat,
    raw: [u8; 200],
    _align: *mut c_void,
}

#[repr(C)]
struct Format {
    kind: u32,
    fmt: FormatUnion,
}

#[repr(C)]
struct RequestBuffers {
    count: u32,
    kind: u32,
    memory: u32,
    capabilities: u32,
    flags: u8,
    reserved: [u8; 3],
}

#[repr(C)]
struct Timecode {
    kind: u32,
    flags: u32,
    frames: u8,
    seconds: u8,
    minutes: u8,
    hours: u8,
    userbits: [u8; 4],
}

#[repr(C)]
union BufferM {
    offset: u32,
    userptr: std::ffi::c_ulong,
    planes: *mut c_void,
    fd: i32,
}

#[repr(C)]
struct Buffer {
    index: u32,
    kind: u32,
    bytesused: u32,
    flags: u32,
    field: u32,
    timestamp: libc::timeval,
    timecode: Timecode,
    sequence: u32,
    memory: u32,
    m: BufferM,
    length: u32,
    reserved2: u32,
    request_fd: i32,
}

/// `_IOC(dir, 'V', nr, size)`.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | ((b'V' as u64) << 8) | nr
}
const READ: u64 = 2;
const WRITE: u64 = 1;
const VIDIOC_QUERYCAP: u64 = ioc(READ, 0, std::mem::size_of::<Capability>());
const VIDIOC_S_FMT: u64 = ioc(READ | WRITE, 5, std::mem::size_of::<Format>());
const VIDIOC_REQBUFS: u64 = ioc(READ | WRITE, 8, std::mem::size_of::<RequestBuffers>());
const VIDIOC_QUERYBUF: u64 = ioc(READ | WRITE, 9, std::mem::size_of::<Buffer>());
const VIDIOC_QBUF: u64 = ioc(READ | WRITE, 15, std::mem::size_of::<Buffer>());
const VIDIOC_DQBUF: u64 = ioc(READ | WRITE, 17, std::mem::size_of::<Buffer>());
const VIDIOC_STREAMON: u64 = ioc(WRITE, 18, std::mem::size_of::<i32>());
const VIDIOC_STREAMOFF: u64 = ioc(WRITE, 19, std::mem::size_of::<i32>());

/// Pixel layouts the camera can deliver that we convert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// 4:2:2 Y0 U Y1 V, BT.601 limited range.
    Yuyv,
    Rgb24,
}

/// A mapped capture buffer.
struct Mapped {
    ptr: *mut c_void,
    len: usize,
}

/// An open camera streaming into memory-mapped buffers.
pub struct Camera {
    file: File,
    buffers: Vec<Mapped>,
    pub width: usize,
    pub height: usize,
    pub format: PixelFormat,
    bytes_per_line: usize,
    streaming: bool,
}

fn ioctl<T>(file: &File, request: u64, arg: &mut T, what: &str) -> Result<(), String> {
    loop {
        // SAFETY: `arg` is the `repr(C)` structure `request` encodes (size checked in the tests),
        // exclusively borrowed for the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), request as _, arg as *mut T) };
        if r != -1 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("{what}: {e}"));
        }
    }
}

fn zeroed<T>() -> T {
    // SAFETY: used only for the plain-data `repr(C)` structures above, for which all-zero bytes
    // are a valid value (as the V4L2 API expects them to be cleared).
    unsafe { std::mem::zeroed() }
}

impl Camera {
    /// Opens `path` and starts streaming, asking for `width × height` in YUYV (else RGB24); the
    /// driver may choose another size, which [`Camera::width`]/[`Camera::height`] report.
    pub fn open(path: &Path, width: usize, height: usize) -> Result<Camera, String> {
        let name = path.display();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| format!("{name}: {e}"))?;
        let mut cap: Capability = zeroed();
        ioctl(&file, VIDIOC_QUERYCAP, &mut cap, "VIDIOC_QUERYCAP")
            .map_err(|e| format!("{name}: not a V4L2 device ({e})"))?;
        let caps = if cap.capabilities & V4L2_CAP_DEVICE_CAPS != 0 {
            cap.device_caps
        } else {
            cap.capabilities
        };
        if caps & V4L2_CAP_VIDEO_CAPTURE == 0 || caps & V4L2_CAP_STREAMING == 0 {
            return Err(format!(
                "{name}: {} cannot stream video capture",
                String::from_utf8_lossy(&cap.card).trim_end_matches('\0')
            ));
        }
        let mut chosen = None;
        for (fourcc, format) in [
            (PIX_YUYV, PixelFormat::Yuyv),
            (PIX_RGB24, PixelFormat::Rgb24),
        ] {
            let mut fmt: Format = zeroed();
            fmt.kind = V4L2_BUF_TYPE_VIDEO_CAPTURE;
            fmt.fmt.pix = PixFormat {
                width: width as u32,
                height: height as u32,
                pixelformat: fourcc,
                field: V4L2_FIELD_NONE,
                ..zeroed()
            };
            ioctl(&file, VIDIOC_S_FMT, &mut fmt, "VIDIOC_S_FMT")
                .map_err(|e| format!("{name}: {e}"))?;
            // SAFETY: the driver filled the `pix` member for a capture format.
            let pix = unsafe { fmt.fmt.pix };
            if pix.pixelformat == fourcc {
                chosen = Some((pix, format));
                break;
            }
        }
        let (pix, format) = chosen.ok_or_else(|| {
            format!("{name}: the camera offers neither YUYV nor RGB24 (compressed-only cameras are not supported)")
        })?;
        let min_line = pix.width as usize * if format == PixelFormat::Yuyv { 2 } else { 3 };
        let mut camera = Camera {
            file,
            buffers: Vec::new(),
            width: pix.width as usize,
            height: pix.height as usize,
            format,
            bytes_per_line: (pix.bytesperline as usize).max(min_line),
            streaming: false,
        };
        camera.start(4).map_err(|e| format!("{name}: {e}"))?;
        Ok(camera)
    }

    fn start(&mut self, count: u32) -> Result<(), String> {
        let mut req = RequestBuffers {
            count,
            kind: V4L2_BUF_TYPE_VIDEO_CAPTURE,
            memory: V4L2_MEMORY_MMAP,
            ..zeroed()
        };
        ioctl(&self.file, VIDIOC_REQBUFS, &mut req, "VIDIOC_REQBUFS")?;
        if req.count == 0 {
            return Err("the driver gave no capture buffers".into());
        }
        for index in 0..req.count {
            let mut buf = self.buffer(index);
            ioctl(&self.file, VIDIOC_QUERYBUF, &mut buf, "VIDIOC_QUERYBUF")?;
            // SAFETY: maps the driver's buffer `index` at the offset it reported, shared and
            // read-only; unmapped in `Drop`.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    buf.length as usize,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    self.file.as_raw_fd(),
                    buf.m.offset as libc::off_t,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(format!("mmap: {}", std::io::Error::last_os_error()));
            }
            self.buffers.push(Mapped {
                ptr,
                len: buf.length as usize,
            });
            ioctl(&self.file, VIDIOC_QBUF, &mut buf, "VIDIOC_QBUF")?;
        }
        let mut kind = V4L2_BUF_TYPE_VIDEO_CAPTURE as i32;
        ioctl(&self.file, VIDIOC_STREAMON, &mut kind, "VIDIOC_STREAMON")?;
        self.streaming = true;
        Ok(())
    }

    fn buffer(&self, index: u32) -> Buffer {
        let mut buf: Buffer = zeroed();
        buf.index = index;
        buf.kind = V4L2_BUF_TYPE_VIDEO_CAPTURE;
        buf.memory = V4L2_MEMORY_MMAP;
        buf
    }

    /// Waits for the next frame and converts it into `rgb` (resized to `width·height·3`).
    pub fn next_frame(&mut self, rgb: &mut Vec<u8>) -> Result<(), String> {
        let mut buf = self.buffer(0);
        ioctl(&self.file, VIDIOC_DQBUF, &mut buf, "VIDIOC_DQBUF")?;
        let mapped = self
            .buffers
            .get(buf.index as usize)
            .ok_or_else(|| format!("driver returned unknown buffer {}", buf.index))?;
        let used = (buf.bytesused as usize).min(mapped.len);
        // SAFETY: the buffer is mapped for `mapped.len` bytes and dequeued: the driver does not
        // write it until it is queued again below.
        let data = unsafe { std::slice::from_raw_parts(mapped.ptr as *const u8, used) };
        let converted = convert(
            data,
            self.format,
            self.width,
            self.height,
            self.bytes_per_line,
            rgb,
        );
        ioctl(&self.file, VIDIOC_QBUF, &mut buf, "VIDIOC_QBUF")?;
        converted
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        if self.streaming {
            let mut kind = V4L2_BUF_TYPE_VIDEO_CAPTURE as i32;
            let _ = ioctl(&self.file, VIDIOC_STREAMOFF, &mut kind, "VIDIOC_STREAMOFF");
        }
        for b in &self.buffers {
            // SAFETY: each was mapped by `start` with this length and is not used after this.
            unsafe { libc::munmap(b.ptr, b.len) };
        }
    }
}

/// Converts one captured frame (`stride` bytes per row) to packed RGB.
pub fn convert(
    data: &[u8],
    format: PixelFormat,
    width: usize,
    height: usize,
    stride: usize,
    rgb: &mut Vec<u8>,
) -> Result<(), String> {
    let line = width * if format == PixelFormat::Yuyv { 2 } else { 3 };
    if width == 0 || height == 0 {
        return Err(format!(
            "the driver reports an empty {width}×{height} frame"
        ));
    }
    if stride < line || data.len() < stride * (height - 1) + line {
        return Err(format!(
            "short frame: {} bytes for {width}×{height} ({format:?}, {stride} bytes per row)",
            data.len()
        ));
    }
    rgb.clear();
    rgb.reserve(width * height * 3);
    for y in 0..height {
        let row = &data[y * stride..y * stride + line];
        match format {
            PixelFormat::Rgb24 => rgb.extend_from_slice(row),
            PixelFormat::Yuyv => {
                for px in row.chunks_exact(4) {
                    let (u, v) = (px[1], px[3]);
                    rgb.extend_from_slice(&yuv_to_rgb(px[0], u, v));
                    rgb.extend_from_slice(&yuv_to_rgb(px[2], u, v));
                }
            }
        }
    }
    Ok(())
}

/// BT.601 limited-range YCbCr to RGB in fixed point (the integer form libv4l and most drivers
/// use).
pub fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = (y as i32 - 16) * 298;
    let d = u as i32 - 128;
    let e = v as i32 - 128;
    let clip = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
    [
        clip(c + 409 * e),
        clip(c - 100 * d - 208 * e),
        clip(c + 516 * d),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request numbers encode the structure sizes, so equal numbers mean equal layouts.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn request_numbers_match_the_kernel_headers() {
        assert_eq!(VIDIOC_QUERYCAP, 0x8068_5600);
        assert_eq!(VIDIOC_S_FMT, 0xc0d0_5605);
        assert_eq!(VIDIOC_REQBUFS, 0xc014_5608);
        assert_eq!(VIDIOC_QUERYBUF, 0xc058_5609);
        assert_eq!(VIDIOC_QBUF, 0xc058_560f);
        assert_eq!(VIDIOC_DQBUF, 0xc058_5611);
        assert_eq!(VIDIOC_STREAMON, 0x4004_5612);
        assert_eq!(VIDIOC_STREAMOFF, 0x4004_5613);
        assert_eq!(std::mem::size_of::<Format>(), 208);
        assert_eq!(std::mem::size_of::<Buffer>(), 88);
        assert_eq!(PIX_YUYV, 0x5659_5559);
    }

    #[test]
    fn yuv_conversion_hits_the_reference_colours() {
        // limited-range black and white, and the BT.601 primaries (their 8-bit YCbCr codes are
        // rounded, so within one level)
        assert_eq!(yuv_to_rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(235, 128, 128), [255, 255, 255]);
        for (yuv, want) in [
            ((81, 90, 240), [255, 0, 0]),
            ((145, 54, 34), [0, 255, 0]),
            ((41, 240, 110), [0, 0, 255]),
        ] {
            let got = yuv_to_rgb(yuv.0, yuv.1, yuv.2);
            for c in 0..3 {
                assert!(
                    got[c].abs_diff(want[c]) <= 1,
                    "{yuv:?} → {got:?}, want {want:?}"
                );
            }
        }
    }

    #[test]
    fn yuyv_rows_share_chroma_and_skip_padding() {
        // 2×2 frame, 6 bytes of row padding: (Y0 U Y1 V) per pixel pair
        let mut data = vec![16, 128, 235, 128, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA];
        data.extend([81, 90, 81, 240]);
        let mut rgb = Vec::new();
        convert(&data, PixelFormat::Yuyv, 2, 2, 10, &mut rgb).unwrap();
        assert_eq!(
            rgb,
            [0, 0, 0, 255, 255, 255, 255, 0, 0, 255, 0, 0],
            "black, white, then two red pixels"
        );
        let err = convert(&data[..8], PixelFormat::Yuyv, 2, 2, 10, &mut rgb).unwrap_err();
        assert!(err.contains("short frame"), "{err}");
        let err = convert(&data, PixelFormat::Yuyv, 2, 0, 10, &mut rgb).unwrap_err();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_camera_is_refused() {
        let err = Camera::open(Path::new("/dev/null"), 64, 48).err().unwrap();
        assert!(err.contains("/dev/null: not a V4L2 device"), "{err}");
        let err = Camera::open(Path::new("/dev/video-none"), 64, 48)
            .err()
            .unwrap();
        assert!(err.contains("/dev/video-none"), "{err}");
    }
}
