//! Where frames come from: the [`FrameSource`] seam between a camera and the engine.
//!
//! A source fills a caller-owned `height × width × 3` RGB buffer (the engine's input), so nothing
//! is allocated per frame. Errors follow embedded-hal: each source has its own error type, and
//! every such type says what kind of failure it was ([`FrameError::kind`]) so generic code can
//! react (retry on a timeout, give up on a bus fault) without knowing the driver.
//!
//! Two sources ship here: [`MemoryFrames`] (frames from a byte slice: tests, replay, firmware
//! that embeds its test images) and [`SpiCamera`] (an ArduCAM-style module: sensor registers over
//! I2C, frames out of an SPI FIFO, timed with an embedded-hal delay).

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;
use embedded_hal::spi::{Operation, SpiDevice};

/// What kind of failure a frame source had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameErrorKind {
    /// The bus (SPI, I2C, …) to the camera failed.
    Bus,
    /// The camera did not deliver a frame in time.
    Timeout,
    /// The frame does not have the size or format the caller's buffer expects.
    Format,
    /// No more frames (a finite source).
    Exhausted,
    /// Anything else.
    Other,
}

/// An error of a [`FrameSource`].
pub trait FrameError: core::fmt::Debug {
    fn kind(&self) -> FrameErrorKind;
}

/// A camera or any other supplier of RGB frames.
pub trait FrameSource {
    type Error: FrameError;

    /// `(height, width)` of the frames this source delivers.
    fn size(&self) -> (usize, usize);

    /// Writes the next frame into `frame` (`height × width × 3` bytes, RGB, row-major).
    fn next_frame(&mut self, frame: &mut [u8]) -> Result<(), Self::Error>;

    /// Bytes of one frame.
    fn frame_bytes(&self) -> usize {
        let (h, w) = self.size();
        h * w * 3
    }
}

/// The error of [`MemoryFrames`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryFramesError {
    /// Every frame has been delivered (and the source does not loop).
    Exhausted,
    /// The caller's buffer is not one frame long.
    WrongBuffer { expected: usize, got: usize },
}

impl FrameError for MemoryFramesError {
    fn kind(&self) -> FrameErrorKind {
        match self {
            MemoryFramesError::Exhausted => FrameErrorKind::Exhausted,
            MemoryFramesError::WrongBuffer { .. } => FrameErrorKind::Format,
        }
    }
}

/// Frames stored back to back in a byte slice (in RAM or flash).
#[derive(Clone, Debug)]
pub struct MemoryFrames<'a> {
    bytes: &'a [u8],
    height: usize,
    width: usize,
    next: usize,
    looping: bool,
}

impl<'a> MemoryFrames<'a> {
    /// `bytes` must hold a whole number (≥ 1) of `height × width × 3` frames; `None` otherwise.
    pub fn new(bytes: &'a [u8], height: usize, width: usize) -> Option<Self> {
        let frame = height.checked_mul(width)?.checked_mul(3)?;
        if frame == 0 || bytes.is_empty() || !bytes.len().is_multiple_of(frame) {
            return None;
        }
        Some(MemoryFrames {
            bytes,
            height,
            width,
            next: 0,
            looping: false,
        })
    }

    /// Starts again from the first frame after the last, instead of reporting `Exhausted`.
    pub fn looping(mut self) -> Self {
        self.looping = true;
        self
    }

    /// Number of frames held.
    pub fn len(&self) -> usize {
        self.bytes.len() / (self.height * self.width * 3)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FrameSource for MemoryFrames<'_> {
    type Error = MemoryFramesError;

    fn size(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    fn next_frame(&mut self, frame: &mut [u8]) -> Result<(), MemoryFramesError> {
        let n = self.frame_bytes();
        if frame.len() != n {
            return Err(MemoryFramesError::WrongBuffer {
                expected: n,
                got: frame.len(),
            });
        }
        if self.next >= self.len() {
            if !self.looping {
                return Err(MemoryFramesError::Exhausted);
            }
            self.next = 0;
        }
        let start = self.next * n;
        frame.copy_from_slice(&self.bytes[start..start + n]);
        self.next += 1;
        Ok(())
    }
}

/// How the camera module's FIFO holds pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// 2 bytes per pixel, big endian, `RRRRRGGG GGGBBBBB`.
    Rgb565,
    /// 3 bytes per pixel, R, G, B.
    Rgb888,
}

impl PixelFormat {
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Rgb565 => 2,
            PixelFormat::Rgb888 => 3,
        }
    }
}

/// The ArduCAM Mini's SPI register protocol (ArduChip): register address with bit 7 set to
/// write, the FIFO control, trigger/status and size registers, and the burst-read command.
pub mod arduchip {
    pub const WRITE: u8 = 0x80;
    pub const FIFO_CONTROL: u8 = 0x04;
    pub const FIFO_CLEAR: u8 = 0x01;
    pub const FIFO_START: u8 = 0x02;
    pub const STATUS: u8 = 0x41;
    pub const CAPTURE_DONE: u8 = 0x08;
    pub const FIFO_SIZE: [u8; 3] = [0x42, 0x43, 0x44];
    pub const BURST_READ: u8 = 0x3C;
}

/// The error of [`SpiCamera`], generic over the bus errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CameraError<S, I> {
    Spi(S),
    I2c(I),
    /// No capture completed within the configured time.
    Timeout,
    /// The FIFO holds `got` bytes where a frame needs `expected` (or the buffer is the wrong size).
    Size {
        expected: usize,
        got: usize,
    },
}

impl<S: core::fmt::Debug, I: core::fmt::Debug> FrameError for CameraError<S, I> {
    fn kind(&self) -> FrameErrorKind {
        match self {
            CameraError::Spi(_) | CameraError::I2c(_) => FrameErrorKind::Bus,
            CameraError::Timeout => FrameErrorKind::Timeout,
            CameraError::Size { .. } => FrameErrorKind::Format,
        }
    }
}

/// Settings of an [`SpiCamera`].
#[derive(Clone, Copy, Debug)]
pub struct CameraConfig {
    pub height: usize,
    pub width: usize,
    pub format: PixelFormat,
    /// 7-bit I2C address of the image sensor (e.g. 0x30 for an OV2640).
    pub sensor_address: u8,
    /// Give up on a capture after this long.
    pub timeout_us: u32,
    /// Time between polls of the capture-done flag.
    pub poll_us: u32,
}

/// A camera module with its image sensor on I2C and its frame FIFO on SPI (ArduCAM Mini style).
/// The sensor must already output `height × width` in `format` (see [`SpiCamera::configure`]).
pub struct SpiCamera<SPI, I2C, D> {
    spi: SPI,
    i2c: I2C,
    delay: D,
    config: CameraConfig,
}

type CameraResult<T, SPI, I2C> = core::result::Result<
    T,
    CameraError<
        <SPI as embedded_hal::spi::ErrorType>::Error,
        <I2C as embedded_hal::i2c::ErrorType>::Error,
    >,
>;

impl<SPI: SpiDevice, I2C: I2c, D: DelayNs> SpiCamera<SPI, I2C, D> {
    pub fn new(spi: SPI, i2c: I2C, delay: D, config: CameraConfig) -> Self {
        SpiCamera {
            spi,
            i2c,
            delay,
            config,
        }
    }

    /// Writes the sensor's `(register, value)` list over I2C (resolution, format, exposure: the
    /// sensor vendor's table).
    pub fn configure(&mut self, registers: &[(u8, u8)]) -> CameraResult<(), SPI, I2C> {
        for &(reg, value) in registers {
            self.i2c
                .write(self.config.sensor_address, &[reg, value])
                .map_err(CameraError::I2c)?;
        }
        Ok(())
    }

    /// Gives the buses and the delay back.
    pub fn release(self) -> (SPI, I2C, D) {
        (self.spi, self.i2c, self.delay)
    }

    fn write_reg(&mut self, reg: u8, value: u8) -> CameraResult<(), SPI, I2C> {
        self.spi
            .write(&[reg | arduchip::WRITE, value])
            .map_err(CameraError::Spi)
    }

    fn read_reg(&mut self, reg: u8) -> CameraResult<u8, SPI, I2C> {
        let mut v = [0u8];
        self.spi
            .transaction(&mut [Operation::Write(&[reg]), Operation::Read(&mut v)])
            .map_err(CameraError::Spi)?;
        Ok(v[0])
    }
}

impl<SPI: SpiDevice, I2C: I2c, D: DelayNs> FrameSource for SpiCamera<SPI, I2C, D> {
    type Error = CameraError<SPI::Error, I2C::Error>;

    fn size(&self) -> (usize, usize) {
        (self.config.height, self.config.width)
    }

    fn next_frame(&mut self, frame: &mut [u8]) -> core::result::Result<(), Self::Error> {
        let pixels = self.config.height * self.config.width;
        if frame.len() != pixels * 3 {
            return Err(CameraError::Size {
                expected: pixels * 3,
                got: frame.len(),
            });
        }
        use arduchip::*;
        self.write_reg(FIFO_CONTROL, FIFO_CLEAR)?;
        self.write_reg(FIFO_CONTROL, FIFO_START)?;
        let mut waited = 0u32;
        while self.read_reg(STATUS)? & CAPTURE_DONE == 0 {
            if waited >= self.config.timeout_us {
                return Err(CameraError::Timeout);
            }
            self.delay.delay_us(self.config.poll_us);
            waited = waited.saturating_add(self.config.poll_us.max(1));
        }
        let mut size = 0usize;
        for (i, reg) in FIFO_SIZE.into_iter().enumerate() {
            size |= (self.read_reg(reg)? as usize) << (8 * i);
        }
        let bpp = self.config.format.bytes_per_pixel();
        if size != pixels * bpp {
            return Err(CameraError::Size {
                expected: pixels * bpp,
                got: size,
            });
        }
        // One burst read with chip select held (the FIFO streams while CS stays low): RGB888
        // straight into the frame; RGB565 into its last two thirds, then widened in place
        // front to back (pixel i's output ends at 3i + 3 ≤ pixels + 2(i + 1), where pixel i + 1's
        // input starts, so nothing is overwritten before it is read).
        let raw_start = match self.config.format {
            PixelFormat::Rgb888 => 0,
            PixelFormat::Rgb565 => pixels,
        };
        self.spi
            .transaction(&mut [
                Operation::Write(&[BURST_READ]),
                Operation::Read(&mut frame[raw_start..]),
            ])
            .map_err(CameraError::Spi)?;
        if self.config.format == PixelFormat::Rgb565 {
            for i in 0..pixels {
                let at = raw_start + 2 * i;
                let v = u16::from_be_bytes([frame[at], frame[at + 1]]);
                let (r, g, b) = ((v >> 11) & 0x1f, (v >> 5) & 0x3f, v & 0x1f);
                // widen by replicating the top bits, so 0x1f → 0xff
                frame[3 * i] = ((r << 3) | (r >> 2)) as u8;
                frame[3 * i + 1] = ((g << 2) | (g >> 4)) as u8;
                frame[3 * i + 2] = ((b << 3) | (b >> 2)) as u8;
            }
        }
        self.write_reg(FIFO_CONTROL, FIFO_CLEAR)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    #[test]
    fn memory_frames_deliver_in_order_then_stop_or_loop() {
        let bytes: Vec<u8> = (0..2 * 2 * 3 * 3).map(|i| i as u8).collect();
        assert!(MemoryFrames::new(&bytes[..35], 2, 2).is_none());
        assert!(MemoryFrames::new(&[], 2, 2).is_none());
        let mut src = MemoryFrames::new(&bytes, 2, 2).unwrap();
        assert_eq!(src.len(), 3);
        let mut f = [0u8; 12];
        for i in 0..3 {
            src.next_frame(&mut f).unwrap();
            assert_eq!(f[0], 12 * i);
        }
        let e = src.next_frame(&mut f).unwrap_err();
        assert_eq!(e.kind(), FrameErrorKind::Exhausted);
        let e = src.next_frame(&mut [0u8; 5]).unwrap_err();
        assert_eq!(e.kind(), FrameErrorKind::Format);
        let mut looping = MemoryFrames::new(&bytes, 2, 2).unwrap().looping();
        for i in 0..7u8 {
            looping.next_frame(&mut f).unwrap();
            assert_eq!(f[0], 12 * (i % 3));
        }
    }

    /// An ArduCAM-like module: registers and a FIFO behind SPI, the capture done after a few
    /// polls (or never).
    struct FakeModule {
        regs: [u8; 256],
        fifo: Vec<u8>,
        read_at: usize,
        polls_until_done: Option<usize>,
        fail: bool,
    }

    #[derive(Debug, PartialEq)]
    struct BusFault;
    impl embedded_hal::spi::Error for BusFault {
        fn kind(&self) -> embedded_hal::spi::ErrorKind {
            embedded_hal::spi::ErrorKind::Other
        }
    }
    impl embedded_hal::spi::ErrorType for FakeModule {
        type Error = BusFault;
    }
    impl SpiDevice for FakeModule {
        fn transaction(
            &mut self,
            ops: &mut [Operation<'_, u8>],
        ) -> core::result::Result<(), BusFault> {
            if self.fail {
                return Err(BusFault);
            }
            let mut reg = None;
            for op in ops {
                match op {
                    Operation::Write(&[r, v]) if r & arduchip::WRITE != 0 => {
                        let r = r & !arduchip::WRITE;
                        if r == arduchip::FIFO_CONTROL && v & arduchip::FIFO_START != 0 {
                            self.read_at = 0;
                        }
                        self.regs[r as usize] = v;
                    }
                    Operation::Write(&[r]) => reg = Some(r),
                    Operation::Read(buf) => match reg {
                        Some(arduchip::BURST_READ) | None => {
                            buf.copy_from_slice(&self.fifo[self.read_at..self.read_at + buf.len()]);
                            self.read_at += buf.len();
                        }
                        Some(arduchip::STATUS) => {
                            buf[0] = match &mut self.polls_until_done {
                                Some(0) => arduchip::CAPTURE_DONE,
                                Some(n) => {
                                    *n -= 1;
                                    0
                                }
                                None => 0,
                            };
                        }
                        Some(r) if arduchip::FIFO_SIZE.contains(&r) => {
                            let i = (r - arduchip::FIFO_SIZE[0]) as usize;
                            buf[0] = (self.fifo.len() >> (8 * i)) as u8;
                        }
                        Some(r) => buf[0] = self.regs[r as usize],
                    },
                    _ => return Err(BusFault),
                }
            }
            Ok(())
        }
    }

    #[derive(Default)]
    struct FakeSensor(Vec<(u8, u8, u8)>);
    impl embedded_hal::i2c::ErrorType for FakeSensor {
        type Error = core::convert::Infallible;
    }
    impl I2c for FakeSensor {
        fn transaction(
            &mut self,
            address: u8,
            ops: &mut [embedded_hal::i2c::Operation<'_>],
        ) -> core::result::Result<(), Self::Error> {
            for op in ops {
                if let embedded_hal::i2c::Operation::Write(&[r, v]) = op {
                    self.0.push((address, r, v));
                }
            }
            Ok(())
        }
    }

    struct CountingDelay(u64);
    impl DelayNs for CountingDelay {
        fn delay_ns(&mut self, ns: u32) {
            self.0 += ns as u64;
        }
    }

    fn camera(
        fifo: Vec<u8>,
        polls: Option<usize>,
        format: PixelFormat,
    ) -> SpiCamera<FakeModule, FakeSensor, CountingDelay> {
        SpiCamera::new(
            FakeModule {
                regs: [0; 256],
                fifo,
                read_at: 0,
                polls_until_done: polls,
                fail: false,
            },
            FakeSensor::default(),
            CountingDelay(0),
            CameraConfig {
                height: 9,
                width: 10,
                format,
                sensor_address: 0x30,
                timeout_us: 1000,
                poll_us: 100,
            },
        )
    }

    #[test]
    fn spi_camera_reads_and_converts_a_frame() {
        // RGB565 pixels whose channels are known: r = i % 32, g = (3i) % 64, b = 31 − i % 32
        let pixels = 90;
        let fifo: Vec<u8> = (0..pixels)
            .flat_map(|i| {
                let v = (((i % 32) << 11) | (((3 * i) % 64) << 5) | (31 - i % 32)) as u16;
                v.to_be_bytes()
            })
            .collect();
        let mut cam = camera(fifo, Some(3), PixelFormat::Rgb565);
        cam.configure(&[(0xff, 0x01), (0x12, 0x80)]).unwrap();
        let mut frame = [0u8; 270];
        cam.next_frame(&mut frame).unwrap();
        for i in 0..pixels {
            let (r, g, b) = (i % 32, (3 * i) % 64, 31 - i % 32);
            let want = [
                ((r << 3) | (r >> 2)) as u8,
                ((g << 2) | (g >> 4)) as u8,
                ((b << 3) | (b >> 2)) as u8,
            ];
            assert_eq!(frame[3 * i..3 * i + 3], want, "pixel {i}");
        }
        let (_, sensor, delay) = cam.release();
        assert_eq!(sensor.0, [(0x30, 0xff, 0x01), (0x30, 0x12, 0x80)]);
        assert_eq!(delay.0, 3 * 100_000, "three polls of 100 µs");

        let rgb: Vec<u8> = (0..270).map(|i| (i * 7) as u8).collect();
        let mut cam = camera(rgb.clone(), Some(0), PixelFormat::Rgb888);
        cam.next_frame(&mut frame).unwrap();
        assert_eq!(frame[..], rgb[..]);
    }

    #[test]
    fn spi_camera_reports_timeouts_sizes_and_bus_faults_by_kind() {
        let mut frame = [0u8; 270];
        let mut cam = camera(std::vec![0; 180], None, PixelFormat::Rgb565);
        assert_eq!(
            cam.next_frame(&mut frame).unwrap_err().kind(),
            FrameErrorKind::Timeout
        );
        let mut cam = camera(std::vec![0; 100], Some(0), PixelFormat::Rgb565);
        let e = cam.next_frame(&mut frame).unwrap_err();
        assert_eq!(
            e,
            CameraError::Size {
                expected: 180,
                got: 100
            }
        );
        assert_eq!(e.kind(), FrameErrorKind::Format);
        let mut cam = camera(std::vec![0; 180], Some(0), PixelFormat::Rgb565);
        assert_eq!(
            cam.next_frame(&mut [0u8; 12]).unwrap_err().kind(),
            FrameErrorKind::Format
        );
        let (mut module, sensor, delay) = cam.release();
        module.fail = true;
        let mut cam = SpiCamera::new(
            module,
            sensor,
            delay,
            CameraConfig {
                height: 9,
                width: 10,
                format: PixelFormat::Rgb565,
                sensor_address: 0x30,
                timeout_us: 1000,
                poll_us: 100,
            },
        );
        assert_eq!(
            cam.next_frame(&mut frame).unwrap_err().kind(),
            FrameErrorKind::Bus
        );
    }

    #[test]
    fn frames_feed_the_engine() {
        let bytes = depthling_model::example_model(16, 16, 1).unwrap();
        let model = depthling_model::Model::from_bytes(&bytes).unwrap();
        let mut arena = std::vec![0u8; crate::Engine::arena_needed(&model).unwrap()];
        let mut engine = crate::Engine::new(&model, &mut arena).unwrap();
        let stored: Vec<u8> = (0..2 * 16 * 16 * 3).map(|i| (i % 251) as u8).collect();
        let mut src = MemoryFrames::new(&stored, 16, 16).unwrap();
        let mut frame = std::vec![0u8; src.frame_bytes()];
        let mut sums = Vec::new();
        while src.next_frame(&mut frame).is_ok() {
            sums.push(engine.run(&frame).unwrap().checksum());
        }
        assert_eq!(sums.len(), 2);
        assert_ne!(sums[0], sums[1], "different frames, different depth");
    }
}
