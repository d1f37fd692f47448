//! The `depthling` binary: parse, build a config, call the library, map errors to exit codes
//! (0 success, 1 run-time failure, 2 bad usage or bad input).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;

// candle allocates fresh buffers for every op; glibc's mmap/munmap round trips for large ones cost
// a fifth of a training step in page faults. mimalloc keeps and reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` and `mi_option_allow_large_os_pages` (same values in its v2
/// and v3 headers).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const MI_OPTION_ALLOW_LARGE_OS_PAGES: libmimalloc_sys::mi_option_t = 6;

/// Freed memory stays with the process instead of going back to the OS after 10 ms: a training
/// step frees and re-allocates the same multi-megabyte buffers, and returning them meant the
/// kernel zeroed fresh pages on every step (a third of the step time on mbv2-mff). Large OS
/// pages cut the page faults further where the kernel offers them.
fn keep_freed_memory() {
    // SAFETY: setting an option is allowed at any time; both are plain integers.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_LARGE_OS_PAGES, 1);
    }
}

/// candle runs its elementwise ops on a pool of its own, whose workers spin 25 000 times after each
/// op waiting for the next one. On two cores that spinning takes a core from the rayon threads
/// doing the convolutions (5–10 % of an mbv2-mff training step), so the workers park at once,
/// unless the user has set the limit.
fn park_idle_pool_workers() {
    const SPIN_LIMIT: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(SPIN_LIMIT).is_none() {
        // first thing in main: no other thread reads the environment yet
        std::env::set_var(SPIN_LIMIT, "0");
    }
}

use depthling_host::app::*;
use depthling_host::{Error, Result};

#[derive(Parser)]
#[command(
    name = "depthling",
    version,
    about = "Distill a tiny monocular-depth student from a big teacher using simulated images, quantize it to int8, and run it on edge boards.",
    after_help = "Any flag can come from a TOML file: `depthling <command> --config file.toml` (keys are flag names; flags on the command line win). Examples in docs/configs/."
)]
struct Cli {
    /// No progress on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render a simulated RGB-D dataset.
    #[command(
        after_help = "Example: depthling simulate --domain indoor --count 100 --size 128x96 --seed 1 --preview --out data/indoor"
    )]
    Simulate(simulate::SimulateConfig),
    /// Train a teacher on a labeled dataset.
    #[command(
        name = "train-teacher",
        after_help = "Example: depthling train-teacher --data data/indoor --epochs 5 --out teacher.safetensors"
    )]
    TrainTeacher(train::TrainTeacherConfig),
    /// Distill a student from a teacher.
    #[command(
        after_help = "Example: depthling distill --method kd --teacher teacher.safetensors --images data/ood --out student.safetensors\nWith labels and auxiliary images (LW, X∪U): depthling distill --method aux --teacher teacher.safetensors --labeled data/indoor --images data/indoor-alt --out student.safetensors\nFrom a stereo teacher (ADU-Depth): depthling train-teacher --arch demo-teacher --stereo --data data/outdoor --out stereo.safetensors, then depthling distill --method adu --teacher stereo.safetensors --labeled data/outdoor --images data/outdoor-pairs --out student.safetensors"
    )]
    Distill(distill::DistillConfig),
    /// Quantize a student to int8 and write a .dlm.
    #[command(
        after_help = "Example: depthling quantize --model student.safetensors --calib data/ood --out student.dlm\nWith a QAT fine-tune: depthling quantize --model student.safetensors --calib data/ood --calibration mse --qat-epochs 2 --out student.dlm"
    )]
    Quantize(quantize::QuantizeConfig),
    /// Export a model as ONNX, .dlm or .tflite, optionally checked against a board.
    #[command(
        after_help = "Example: depthling export --model student.safetensors --format onnx --out student.onnx"
    )]
    Export(export::ExportConfig),
    /// Convert an int8 .tflite (within the IR's op set) into a .dlm for depthling's engine.
    #[command(after_help = "Example: depthling import model.tflite --out model.dlm")]
    Import(export::ImportConfig),
    /// Evaluate predictions against ground truth (16-bit PNG folders matched by name).
    #[command(
        after_help = "Example: depthling eval --pred out/depth --gt data/indoor --protocol nyu --json\nA model with an HTML report: depthling eval --model student.dlm --data data/indoor-test --protocol nyu --report eval-report"
    )]
    Eval(eval::EvalConfig),
    /// Run a model on a PNG or a folder of PNGs.
    #[command(
        after_help = "Example: depthling run --model student.dlm --input data/indoor/rgb --out depth/"
    )]
    Run(run::RunConfig),
    /// Parameters, MACs, flash and arena of a model or an architecture.
    #[command(after_help = "Example: depthling profile --arch demo-student --size 128x96 --json")]
    Profile(profile::ProfileConfig),
    /// Benchmarks: train, infer or sim.
    #[command(
        after_help = "Example: depthling bench infer --json\nOne student, to set beside PyTorch: depthling bench train --arch mbv2-mff --json"
    )]
    Bench(bench::BenchConfig),
    /// Re-measure a paper's claims: ddd, lw or adu.
    #[command(after_help = "Example: depthling experiment --preset ddd --quick --out results/ddd")]
    Experiment(experiment::ExperimentConfig),
    /// The whole pipeline on built-in defaults.
    #[command(after_help = "Example: depthling demo --quick --out demo-out")]
    Demo(demo::DemoArgs),
}

/// Prints a report: one JSON object with `--json`, else its table.
fn emit<T: Serialize>(report: &T, json: bool, table: impl std::fmt::Display) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string(report).map_err(|e| Error::Runtime(e.to_string()))?
        );
    } else {
        println!("{table}");
    }
    Ok(())
}

fn dispatch(cli: Cli) -> Result<()> {
    let (quiet, json) = (cli.quiet, cli.json);
    match cli.command {
        Command::Simulate(mut c) => {
            c.quiet = quiet;
            let r = simulate::simulate(&c)?;
            emit(&r, json, &r)
        }
        Command::TrainTeacher(mut c) => {
            c.options.quiet = quiet;
            let r = train::train_teacher(&c)?;
            emit(&r, json, &r)
        }
        Command::Distill(mut c) => {
            c.options.quiet = quiet;
            let r = distill::distill(&c)?;
            emit(&r, json, &r)
        }
        Command::Quantize(mut c) => {
            c.quiet = quiet;
            let r = quantize::quantize(&c)?;
            emit(&r, json, &r)
        }
        Command::Export(c) => {
            let p = export::export(&c)?;
            emit(
                &p,
                json,
                export::Exported {
                    out: &c.out,
                    profile: &p,
                },
            )
        }
        Command::Import(c) => {
            let p = export::import(&c)?;
            emit(
                &p,
                json,
                export::Exported {
                    out: &c.out,
                    profile: &p,
                },
            )
        }
        Command::Eval(mut c) => {
            c.quiet = quiet;
            let r = eval::eval(&c)?;
            emit(&r, json, r)
        }
        Command::Run(mut c) => {
            c.quiet = quiet;
            let r = run::run(&c)?;
            emit(&r, json, &r)
        }
        Command::Profile(c) => {
            let p = profile::profile(&c)?;
            emit(&p, json, &p)
        }
        Command::Bench(c) => {
            let v = bench::bench(&c)?;
            let pretty =
                serde_json::to_string_pretty(&v).map_err(|e| Error::Runtime(e.to_string()))?;
            emit(&v, json, pretty)
        }
        Command::Experiment(mut c) => {
            c.quiet = quiet;
            let r = experiment::run(&c)?;
            emit(
                &r,
                json,
                format!("{}results in {}", r.markdown(), c.out.display()),
            )
        }
        Command::Demo(a) => {
            let cfg = a.config(quiet);
            let r = demo::run(&cfg)?;
            let table = format!(
                "{}wall time {:.0} s; outputs in {}",
                r.table(),
                r.wall_seconds,
                cfg.out.display()
            );
            emit(&r, json, table)
        }
    }
}

fn main() -> ExitCode {
    park_idle_pool_workers();
    keep_freed_memory();
    let args = match depthling_host::app::config::expand(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
