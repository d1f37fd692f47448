//! `depthling-runner --model M.dlm --input PNG|DIR [--out DIR] [--repeat N]`
//!
//! Runs a `.dlm` on PNG frames with the int8 engine and prints, per frame, the depth checksum
//! (FNV-1a over the f32 depth, as every depthling target prints it) and the latency, then the
//! mean latency and frame rate. With `--out`, writes 16-bit depth PNGs (millimetres).
//! Exit codes: 0 success, 1 run-time failure, 2 bad usage or bad input.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use depthling_device::Engine;
use depthling_model::Model;

struct Args {
    model: PathBuf,
    input: PathBuf,
    out: Option<PathBuf>,
    repeat: usize,
}

/// An error with its exit code.
struct Failure(u8, String);

fn bad(msg: impl Into<String>) -> Failure {
    Failure(2, msg.into())
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, Failure> {
    let (mut model, mut input, mut out, mut repeat) = (None, None, None, 1usize);
    while let Some(flag) = argv.next() {
        let mut value = || {
            argv.next()
                .ok_or_else(|| bad(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--input" => input = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--repeat" => {
                repeat = value()?
                    .parse()
                    .map_err(|_| bad("--repeat needs a positive number"))?
            }
            "-h" | "--help" => return Err(Failure(
                0,
                "usage: depthling-runner --model M.dlm --input PNG|DIR [--out DIR] [--repeat N]"
                    .into(),
            )),
            other => return Err(bad(format!("unknown argument {other:?} (see --help)"))),
        }
    }
    Ok(Args {
        model: model.ok_or_else(|| bad("--model is required"))?,
        input: input.ok_or_else(|| bad("--input is required"))?,
        out,
        repeat: repeat.max(1),
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

fn run(args: &Args) -> Result<(), Failure> {
    let bytes =
        std::fs::read(&args.model).map_err(|e| bad(format!("{}: {e}", args.model.display())))?;
    let model =
        Model::from_bytes(&bytes).map_err(|e| bad(format!("{}: {e}", args.model.display())))?;
    let (h, w) = model
        .input_size()
        .ok_or_else(|| bad("model has no input"))?;
    let mut arena = vec![0u8; model.arena_bytes as usize];
    let mut engine = Engine::new(&model, &mut arena).map_err(|e| Failure(1, e.to_string()))?;
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).map_err(|e| Failure(1, format!("{}: {e}", out.display())))?;
    }
    let (mut total, mut runs) = (0.0f64, 0usize);
    for path in frames(&args.input)? {
        let img = image::open(&path)
            .map_err(|e| bad(format!("{}: not a readable image ({e})", path.display())))?
            .to_rgb8();
        if img.dimensions() != (w as u32, h as u32) {
            let (iw, ih) = img.dimensions();
            return Err(bad(format!(
                "{}: image is {iw}×{ih}, the model takes {w}×{h}",
                path.display()
            )));
        }
        let rgb = img.into_raw();
        let mut checksum = 0;
        let mut depth_mm = Vec::new();
        for _ in 0..args.repeat {
            let start = Instant::now();
            let depth = engine
                .run(&rgb)
                .map_err(|e| Failure(1, format!("{}: {e}", path.display())))?;
            total += start.elapsed().as_secs_f64();
            runs += 1;
            checksum = depth.checksum();
            if args.out.is_some() {
                depth_mm = depth
                    .iter()
                    .map(|d| (d.max(0.0) * 1000.0).round().min(65535.0) as u16)
                    .collect();
            }
        }
        println!("frame {} checksum=0x{checksum:016x}", path.display());
        if let Some(out) = &args.out {
            let name = path.file_name().unwrap_or_default();
            let buf: image::ImageBuffer<image::Luma<u16>, Vec<u16>> =
                image::ImageBuffer::from_raw(w as u32, h as u32, depth_mm)
                    .ok_or_else(|| Failure(1, "depth buffer size".into()))?;
            buf.save(out.join(name))
                .map_err(|e| Failure(1, format!("{}: {e}", out.display())))?;
        }
    }
    let mean_ms = 1e3 * total / runs as f64;
    println!(
        "runs={runs} mean_ms={mean_ms:.3} fps={:.1} arena={} macs={}",
        1e3 / mean_ms,
        model.arena_bytes,
        model.macs()
    );
    Ok(())
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
