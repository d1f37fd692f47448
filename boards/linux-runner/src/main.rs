//! `depthling-runner --model M.dlm|M.onnx (--input PNG|DIR | --camera /dev/videoN [--frames N])
//! [--backend int8|tract] [--out DIR] [--repeat N]`
//!
//! Runs a model on PNG frames, or on a V4L2 camera's frames (resized to the model's input), and
//! prints, per frame, the depth checksum (FNV-1a over the f32
//! depth, as every depthling target prints it), then the mean latency and frame rate. `int8` (the
//! default) runs a `.dlm` on the int8 engine, bit-identical on every target; `tract` runs the f32
//! ONNX export (feature `tract`, on by default). With `--out`, writes 16-bit depth PNGs
//! (millimetres). Exit codes: 0 success, 1 run-time failure, 2 bad usage or bad input.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use depthling_device::runner::{Backend, Loaded, RunnerError};

mod frames;
#[cfg(target_os = "linux")]
mod v4l2;

use depthling_device::frame::{FrameError, FrameErrorKind, FrameSource};
use frames::{Named, PngFrames};

/// Where frames come from.
enum Source {
    /// A PNG or a folder of PNGs.
    Files(PathBuf),
    /// A V4L2 device and the number of frames to take from it.
    Camera(PathBuf, usize),
}

struct Args {
    model: PathBuf,
    source: Source,
    backend: Backend,
    out: Option<PathBuf>,
    repeat: usize,
    threads: usize,
}

const USAGE: &str = "usage: depthling-runner --model M.dlm|M.onnx (--input PNG|DIR | --camera /dev/videoN [--frames N]) [--backend int8|tract] [--out DIR] [--repeat N] [--threads N]";

/// An error with its exit code.
struct Failure(u8, String);

fn bad(msg: impl Into<String>) -> Failure {
    Failure(2, msg.into())
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, Failure> {
    let (mut model, mut input, mut out, mut repeat) = (None, None, None, 1usize);
    let mut threads = 1usize;
    let (mut camera, mut frames) = (None, 100usize);
    let mut backend = Backend::Int8;
    while let Some(flag) = argv.next() {
        let mut value = || {
            argv.next()
                .ok_or_else(|| bad(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--input" => input = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--camera" => camera = Some(PathBuf::from(value()?)),
            "--frames" => {
                frames = value()?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad("--frames needs a positive number"))?
            }
            "--backend" => backend = value()?.parse().map_err(bad)?,
            "--threads" => {
                threads = value()?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad("--threads needs a positive number"))?
            }
            "--repeat" => {
                repeat = value()?
                    .parse()
                    .map_err(|_| bad("--repeat needs a positive number"))?
            }
            "-h" | "--help" => return Err(Failure(0, USAGE.into())),
            other => return Err(bad(format!("unknown argument {other:?} (see --help)"))),
        }
    }
    let source = match (input, camera) {
        (Some(i), None) => Source::Files(i),
        (None, Some(c)) => Source::Camera(c, frames),
        (Some(_), Some(_)) => return Err(bad("give --input or --camera, not both")),
        (None, None) => return Err(bad("--input PNG|DIR or --camera /dev/videoN is required")),
    };
    Ok(Args {
        model: model.ok_or_else(|| bad("--model is required"))?,
        source,
        backend,
        out,
        repeat: repeat.max(1),
        threads,
    })
}

fn frames(input: &Path) -> Result<Vec<PathBuf>, Failure> {
    if input.is_file() {
        return Ok(vec![input.to_path_buf()]);
    }
    let dir = std::fs::read_dir(input).map_err(|e| bad(format!("{}: {e}", input.display())))?;
    let mut files: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(bad(format!("{}: no PNG frames", input.display())));
    }
    Ok(files)
}

/// What the runner does with one frame: its name and RGB bytes.
type Process<'a> = dyn FnMut(&str, &[u8]) -> Result<(), Failure> + 'a;

/// Takes every frame of `source` and hands it to `process`, until the source is exhausted.
fn drain<S>(source: &mut S, process: &mut Process<'_>) -> Result<(), Failure>
where
    S: FrameSource<Error = frames::SourceError> + Named,
{
    let mut frame = vec![0u8; source.frame_bytes()];
    loop {
        match source.next_frame(&mut frame) {
            Ok(()) => process(&source.name(), &frame)?,
            Err(e) if e.kind() == FrameErrorKind::Exhausted => return Ok(()),
            Err(e) if e.kind() == FrameErrorKind::Format => return Err(bad(e.msg)),
            Err(e) => return Err(Failure(1, e.msg)),
        }
    }
}

fn run(args: &Args) -> Result<(), Failure> {
    let bytes =
        std::fs::read(&args.model).map_err(|e| bad(format!("{}: {e}", args.model.display())))?;
    let failed = |e: RunnerError| match e {
        RunnerError::Model(m) => bad(format!("{}: {m}", args.model.display())),
        RunnerError::Run(m) => Failure(1, format!("{}: {m}", args.model.display())),
    };
    let loaded = Loaded::new(&bytes, args.backend).map_err(failed)?;
    let mut arena = loaded.arena();
    let mut runner = loaded
        .runner_with_threads(&mut arena, args.threads)
        .map_err(failed)?;
    let (h, w) = runner.input_size();
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).map_err(|e| Failure(1, format!("{}: {e}", out.display())))?;
    }
    let (mut total, mut runs) = (0.0f64, 0usize);
    let mut process = |name: &str, rgb: &[u8]| -> Result<(), Failure> {
        let (mut depth, mut sum) = (Vec::new(), 0);
        for _ in 0..args.repeat {
            let start = Instant::now();
            (depth, sum) = runner
                .infer(rgb)
                .map_err(|e| Failure(1, format!("{name}: {e}")))?;
            total += start.elapsed().as_secs_f64();
            runs += 1;
        }
        println!("frame {name} checksum=0x{sum:016x}");
        if let Some(out) = &args.out {
            let file = Path::new(name).file_name().unwrap_or_default();
            let depth_mm: Vec<u16> = depth
                .iter()
                .map(|d| (d.max(0.0) * 1000.0).round().min(65535.0) as u16)
                .collect();
            let buf: image::ImageBuffer<image::Luma<u16>, Vec<u16>> =
                image::ImageBuffer::from_raw(w as u32, h as u32, depth_mm)
                    .ok_or_else(|| Failure(1, "depth buffer size".into()))?;
            buf.save(out.join(file))
                .map_err(|e| Failure(1, format!("{}: {e}", out.display())))?;
        }
        Ok(())
    };
    match &args.source {
        Source::Files(input) => drain(&mut PngFrames::new(frames(input)?, h, w), &mut process)?,
        Source::Camera(device, count) => camera_frames(device, *count, (w, h), &mut process)?,
    }
    let mean_ms = 1e3 * total / runs as f64;
    let backend = args.backend.name();
    match &loaded {
        Loaded::Int8(model) => println!(
            "backend={backend} runs={runs} mean_ms={mean_ms:.3} fps={:.1} arena={} plan={} macs={} kernels={} threads={}",
            1e3 / mean_ms,
            model.arena_bytes,
            depthling_device::plan::bytes(model, depthling_device::KernelSet::detect()).unwrap_or(0),
            model.macs(),
            // the table the engine picked (Engine::new: KernelSet::detect)
            depthling_device::KernelSet::detect().name(),
            args.threads
        ),
        #[allow(unreachable_patterns)]
        _ => println!(
            "backend={backend} runs={runs} mean_ms={mean_ms:.3} fps={:.1}",
            1e3 / mean_ms
        ),
    }
    Ok(())
}

/// Takes `count` frames from a V4L2 camera through its frame source (resized to the model's
/// `(width, height)` where the driver chose another size), named `frame_NNNNNN.png`.
#[cfg(target_os = "linux")]
fn camera_frames(
    device: &Path,
    count: usize,
    (w, h): (usize, usize),
    process: &mut Process<'_>,
) -> Result<(), Failure> {
    let camera = v4l2::Camera::open(device, w, h).map_err(bad)?;
    eprintln!(
        "camera {}: {}×{} {:?}{}",
        device.display(),
        camera.width,
        camera.height,
        camera.format,
        if (camera.width, camera.height) != (w, h) {
            format!(", resized to {w}×{h}")
        } else {
            String::new()
        }
    );
    let mut source = frames::CameraFrames::new(camera, device.to_path_buf(), count, h, w);
    drain(&mut source, process)
}

#[cfg(not(target_os = "linux"))]
fn camera_frames(
    device: &Path,
    _: usize,
    _: (usize, usize),
    _: &mut Process<'_>,
) -> Result<(), Failure> {
    Err(bad(format!(
        "{}: cameras are read through V4L2, which needs Linux",
        device.display()
    )))
}

fn main() -> ExitCode {
    match parse(std::env::args().skip(1)).and_then(|a| run(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(0, msg)) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(Failure(code, msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(code)
        }
    }
}
