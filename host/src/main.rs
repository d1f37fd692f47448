//! The `depthling` binary: parse, build a config, call the library, map errors to exit codes
//! (0 success, 1 run-time failure, 2 bad usage or bad input).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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

use depthling_host::commands::{self, Backend};
use depthling_host::{demo, eval, quant, sim, Error, Result};

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
    #[command(subcommand)]
    command: Command,
}

/// Training flags shared by `train-teacher` and `distill`.
#[derive(clap::Args)]
struct TrainFlags {
    /// Width multiplier of the architecture.
    #[arg(long, default_value_t = 1.0)]
    width: f32,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Learning-rate schedule: step (×0.1 after 75 % of the steps) or cosine (5 % linear
    /// warm-up, then a half cosine towards 0).
    #[arg(long, default_value = "step")]
    schedule: String,
    /// Share of the steps, from the start, trained on batches downsampled 2× (progressive
    /// resizing: cheap coarse steps first), e.g. 0.5.
    #[arg(long, default_value_t = 0.0)]
    coarse: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Depth units per metre of CSV lists (dataset folders carry theirs).
    #[arg(long, default_value_t = 1000.0)]
    depth_scale: f32,
    /// Depth loss: l1, logl1 (L1 of ln depth), berhu, silog or hu (Hu et al.: depth + Sobel gradient + normal).
    #[arg(long, default_value = "l1")]
    loss: String,
    /// Steps between checkpoints (OUT.ckpt.safetensors: weights, Adam state, step, RNG);
    /// 0 means a tenth of the run.
    #[arg(long, default_value_t = 0)]
    checkpoint_every: usize,
    /// Continue from OUT.ckpt.safetensors where an earlier run stopped (same settings), with
    /// the same result as an uninterrupted run.
    #[arg(long)]
    resume: bool,
    /// cpu, or cuda (a build with `--features cuda`; GPU 0).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Only horizontal flips: no small rotations (±5°) or colour jitter (±20 %).
    #[arg(long)]
    no_augment: bool,
}

/// DDD's switches (`distill --method ddd`).
#[derive(clap::Args)]
struct DddFlags {
    /// No object-wise mixing.
    #[arg(long)]
    no_mix: bool,
    /// Up to this many objects pasted into each image.
    #[arg(long, default_value_t = 3)]
    max_objects: usize,
    /// No transformation network.
    #[arg(long)]
    no_transform: bool,
    /// Weight of mean|x′ − x| in the transformation network's loss.
    #[arg(long, default_value_t = 0.1)]
    identity_weight: f64,
    /// The transformation network is updated once every this many student steps.
    #[arg(long, default_value_t = 1)]
    transform_every: usize,
    /// Share of the images used, e.g. 1/6 (the image budget).
    #[arg(long, default_value = "1")]
    images_fraction: String,
}

/// ADU-Depth's switches (`distill --method adu`).
#[derive(clap::Args)]
struct AduFlags {
    /// No response distillation (focal-depth and uncertainty weighted).
    #[arg(long)]
    no_response: bool,
    /// No attention-weighted feature distillation at the encoder taps.
    #[arg(long)]
    no_feature: bool,
    /// γ of the focal-depth weight (|d_s − d_t|/d_t)^γ.
    #[arg(long, default_value_t = depthling_host::adu::AduOptions::default().gamma)]
    focal_gamma: f64,
    /// Weight of the feature-distillation term.
    #[arg(long, default_value_t = depthling_host::adu::AduOptions::default().feature_weight)]
    feature_weight: f64,
}

impl AduFlags {
    fn options(&self, kd_weight: f64) -> depthling_host::adu::AduOptions {
        depthling_host::adu::AduOptions {
            response: !self.no_response,
            feature: !self.no_feature,
            gamma: self.focal_gamma,
            response_weight: kd_weight,
            feature_weight: self.feature_weight,
        }
    }
}

impl DddFlags {
    fn options(&self) -> depthling_host::distill::DddOptions {
        depthling_host::distill::DddOptions {
            mix: !self.no_mix,
            max_objects: self.max_objects,
            transform: !self.no_transform,
            identity_weight: self.identity_weight,
            transform_every: self.transform_every,
            ..Default::default()
        }
    }
}

impl TrainFlags {
    fn options(self, arch: String, quiet: bool) -> Result<commands::TrainOptions> {
        // before the dataset is read
        depthling_host::train::TrainConfig::check_coarse(self.coarse)?;
        Ok(commands::TrainOptions {
            arch,
            width: self.width,
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            schedule: depthling_host::train::Schedule::parse(&self.schedule)?,
            coarse: self.coarse,
            seed: self.seed,
            depth_scale: self.depth_scale,
            quiet,
            loss: depthling_host::losses::Loss::parse(&self.loss)?,
            checkpoint_every: self.checkpoint_every,
            resume: self.resume,
            device: self.device,
            augment: !self.no_augment,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Render a simulated RGB-D dataset.
    #[command(
        after_help = "Example: depthling simulate --domain indoor --count 100 --size 128x96 --seed 1 --preview --out data/indoor"
    )]
    Simulate {
        /// indoor (the target stand-in), indoor-alt (rooms in another style: auxiliary data),
        /// outdoor, or ood (random primitives with instance masks, for data-free KD).
        #[arg(long)]
        domain: String,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value = "128x96")]
        size: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        stereo: bool,
        #[arg(long)]
        preview: bool,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Train a teacher on a labeled dataset.
    #[command(
        name = "train-teacher",
        after_help = "Example: depthling train-teacher --data data/indoor --epochs 5 --out teacher.safetensors"
    )]
    TrainTeacher {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "demo-teacher")]
        arch: String,
        #[arg(long)]
        stereo: bool,
        /// Share of the dataset held out and evaluated at the end.
        #[arg(long, default_value_t = 0.1)]
        test_fraction: f32,
        #[command(flatten)]
        train: TrainFlags,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Distill a student from a teacher.
    #[command(
        after_help = "Example: depthling distill --method kd --teacher teacher.safetensors --images data/ood --out student.safetensors\nWith labels and auxiliary images (LW, X∪U): depthling distill --method aux --teacher teacher.safetensors --labeled data/indoor --images data/indoor-alt --out student.safetensors\nFrom a stereo teacher (ADU-Depth): depthling train-teacher --arch demo-teacher --stereo --data data/outdoor --out stereo.safetensors, then depthling distill --method adu --teacher stereo.safetensors --labeled data/outdoor --images data/outdoor-pairs --out student.safetensors"
    )]
    Distill {
        /// kd (teacher's predictions on --images), ddd (kd + object mixing + transformation
        /// network), aux (ground truth of --labeled + KD on --labeled and --images), adu (ground
        /// truth of --labeled + a stereo teacher's features and depth, weighted by attention,
        /// focal depth and the student's uncertainty, on --labeled and --images).
        #[arg(long)]
        method: String,
        #[arg(long)]
        teacher: PathBuf,
        /// Unlabeled images (depth, if present, is not used): kd and ddd need them; for aux the
        /// auxiliary set U.
        #[arg(long)]
        images: Option<PathBuf>,
        /// aux: a labeled dataset, the target set X; give it again for a labeled auxiliary set
        /// (the X∪U′ setting).
        #[arg(long)]
        labeled: Vec<PathBuf>,
        /// aux: weight of the KD term against the ground-truth term; adu: of the response term.
        #[arg(long, default_value_t = 1.0)]
        kd_weight: f64,
        #[arg(long, default_value = "demo-student")]
        arch: String,
        #[command(flatten)]
        train: TrainFlags,
        #[command(flatten)]
        ddd: DddFlags,
        #[command(flatten)]
        adu: AduFlags,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Quantize a student to int8 and write a .dlm.
    #[command(
        after_help = "Example: depthling quantize --model student.safetensors --calib data/ood --out student.dlm\nWith a QAT fine-tune: depthling quantize --model student.safetensors --calib data/ood --calibration mse --qat-epochs 2 --out student.dlm"
    )]
    Quantize {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        calib: PathBuf,
        /// Depth units per metre of a CSV calibration list.
        #[arg(long, default_value_t = 1000.0)]
        depth_scale: f32,
        /// minmax, percentile (0.01 %/99.99 % quantiles) or mse (clip range with the least
        /// expected squared error).
        #[arg(long, default_value = "minmax")]
        calibration: String,
        /// Quantization-aware fine-tune: passes over the calibration images with int8 rounding
        /// simulated (straight-through gradients), matching the f32 model's own depth; 0 = none.
        #[arg(long, default_value_t = 0)]
        qat_epochs: usize,
        /// Adam learning rate of the QAT fine-tune.
        #[arg(long, default_value_t = 2e-5)]
        qat_lr: f64,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Export a model as ONNX or .dlm, optionally checked against a board.
    #[command(
        after_help = "Example: depthling export --model student.safetensors --format onnx --out student.onnx"
    )]
    Export {
        #[arg(long)]
        model: PathBuf,
        /// onnx (from a .safetensors checkpoint) or dlm (from a .dlm)
        #[arg(long)]
        format: String,
        #[arg(long)]
        board: Option<String>,
        /// Input size of the ONNX graph (default: the size the checkpoint was trained at)
        #[arg(long)]
        size: Option<String>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Evaluate predictions against ground truth (16-bit PNG folders matched by name).
    #[command(
        after_help = "Example: depthling eval --pred out/depth --gt data/indoor --protocol nyu --json\nA model with an HTML report: depthling eval --model student.dlm --data data/indoor-test --protocol nyu --report eval-report"
    )]
    Eval {
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        pred: Option<PathBuf>,
        #[arg(long)]
        gt: Option<PathBuf>,
        #[arg(long)]
        protocol: Option<String>,
        /// Units per metre of PNG folders without a manifest.json.
        #[arg(long, default_value_t = 1000.0)]
        depth_scale: f32,
        #[arg(long)]
        median_scaling: bool,
        /// With --model: also write an HTML report (index.html, samples, charts) into this folder.
        #[arg(long)]
        report: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Run a model on a PNG or a folder of PNGs.
    #[command(
        after_help = "Example: depthling run --model student.dlm --input data/indoor/rgb --out depth/"
    )]
    Run {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "int8")]
        backend: String,
        #[arg(long)]
        json: bool,
    },
    /// Parameters, MACs, flash and arena of a model or an architecture.
    #[command(after_help = "Example: depthling profile --arch demo-student --size 128x96 --json")]
    Profile {
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        arch: Option<String>,
        #[arg(long, default_value_t = 1.0)]
        width: f32,
        #[arg(long, default_value = "128x96")]
        size: String,
        #[arg(long)]
        board: Option<String>,
        /// Also write the architecture (with --arch) as JSON to this file: the layer list that
        /// bench/pytorch_reference.py builds in PyTorch.
        #[arg(long)]
        graph: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks: train, infer or sim.
    #[command(
        after_help = "Example: depthling bench infer --json\nOne student, to set beside PyTorch: depthling bench train --arch mbv2-mff --json"
    )]
    Bench {
        what: String,
        /// `bench train` only: time this architecture alone, with the custom ops (e.g. mbv2-mff,
        /// to set beside bench/pytorch_reference.py)
        #[arg(long)]
        arch: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Re-measure a paper's claims: ddd, lw or adu.
    #[command(after_help = "Example: depthling experiment --preset ddd --quick --out results/ddd")]
    Experiment {
        #[arg(long)]
        preset: String,
        /// A small run of every row (for tests and a first look).
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The whole pipeline on built-in defaults.
    #[command(after_help = "Example: depthling demo --quick --out demo-out")]
    Demo {
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value = "demo-out")]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string(v).map_err(|e| Error::Runtime(e.to_string()))?
    );
    Ok(())
}

fn protocol(s: Option<&str>) -> Result<depthling_metrics::Protocol> {
    let s = s.unwrap_or("none");
    depthling_metrics::Protocol::parse(s)
        .ok_or_else(|| Error::Usage(format!("unknown protocol {s:?}; known: nyu, kitti, none")))
}

fn dispatch(cli: Cli) -> Result<()> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Simulate {
            domain,
            count,
            size,
            seed,
            stereo,
            preview,
            out,
            json,
        } => {
            let domain = sim::Domain::parse(&domain).ok_or_else(|| {
                Error::Usage(format!(
                    "unknown domain {domain:?}; known: indoor, indoor-alt, outdoor, ood"
                ))
            })?;
            let (width, height) = commands::parse_size(&size)?;
            let s = commands::simulate(&commands::SimulateConfig {
                domain,
                count,
                width,
                height,
                seed,
                stereo,
                preview,
                out,
                quiet,
            })?;
            if json {
                print_json(&s)?;
            } else {
                println!(
                    "{} {} images at {}×{} in {:.1}s ({:.0} images/s) → {}",
                    s.count,
                    s.domain,
                    s.width,
                    s.height,
                    s.seconds,
                    s.images_per_second,
                    s.out.display()
                );
            }
        }
        Command::TrainTeacher {
            data,
            arch,
            stereo,
            test_fraction,
            train,
            out,
            json,
        } => {
            let arch = if stereo {
                format!("{arch}-stereo")
            } else {
                arch
            };
            let cfg = commands::TrainTeacherConfig {
                data,
                options: train.options(arch, quiet)?,
                test_fraction,
                out: out.clone(),
            };
            let report = commands::train_teacher(&cfg)?;
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "teacher written to {} ({} steps, loss {:.4} → {:.4}, {:.0} s)",
                    out.display(),
                    report.steps,
                    report.loss_first,
                    report.loss_last,
                    report.seconds
                );
                if let Some(m) = &report.test {
                    println!(
                        "held-out {} images: abs_rel {:.4}  rmse {:.4}  δ1 {:.4}",
                        m.images, m.abs_rel, m.rmse, m.delta1
                    );
                }
            }
        }
        Command::Distill {
            method,
            teacher,
            images,
            labeled,
            kd_weight,
            arch,
            train,
            ddd,
            adu,
            out,
            json,
        } => {
            let r = commands::distill(&commands::DistillConfig {
                adu: adu.options(kd_weight),
                method,
                teacher,
                images,
                labeled,
                kd_weight,
                options: train.options(arch, quiet)?,
                out: out.clone(),
                ddd: ddd.options(),
                images_fraction: depthling_host::distill::parse_fraction(&ddd.images_fraction)?,
            })?;
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "student written to {} ({} steps on {} images, loss {:.4} → {:.4}, {:.0} s)",
                    out.display(),
                    r.steps,
                    r.images,
                    r.loss_first,
                    r.loss_last,
                    r.seconds
                );
            }
        }
        Command::Quantize {
            model,
            calib,
            depth_scale,
            calibration,
            qat_epochs,
            qat_lr,
            out,
            json,
        } => {
            if !(qat_lr > 0.0 && qat_lr.is_finite()) {
                return Err(Error::Usage(format!(
                    "--qat-lr must be a positive number, got {qat_lr}"
                )));
            }
            let o = commands::QuantizeOptions {
                calibration: quant::Calibration::parse(&calibration)?,
                depth_scale,
                qat: quant::QatConfig {
                    epochs: qat_epochs,
                    lr: qat_lr,
                    ..Default::default()
                },
                quiet,
            };
            let r = commands::quantize_file(&model, &calib, &out, &o)?;
            if json {
                print_json(&r)?;
            } else {
                println!("{:>4} {:<18} {:>9}", "op", "kind", "SQNR dB");
                for l in &r.layers {
                    println!("{:>4} {:<18} {:>9.1}", l.op, l.kind, l.sqnr_db);
                }
                if let Some(qat) = &r.qat {
                    println!(
                        "QAT: {} epochs, {} steps: mean |int8 − f32| {:.4} m (post-training) → {:.4} m",
                        qat.epochs, qat.steps, qat.ptq_int8_vs_f32_m, r.int8_vs_f32_m
                    );
                    if let (Some(f), Some(q)) = (&qat.ptq_metrics_int8, &r.metrics_int8) {
                        println!(
                            "QAT on the calibration images: δ1 {:.4} (post-training) → {:.4}",
                            f.delta1, q.delta1
                        );
                    }
                } else {
                    println!("mean |int8 − f32| {:.4} m", r.int8_vs_f32_m);
                }
                if let (Some(f), Some(q)) = (&r.metrics_f32, &r.metrics_int8) {
                    println!("on the calibration images: AbsRel {:.4} → {:.4}, δ1 {:.4} → {:.4} (f32 → int8)", f.abs_rel, q.abs_rel, f.delta1, q.delta1);
                }
                let p = &r.profile;
                println!(
                    "{} written ({} calibration): {} params, {} bytes, arena {} bytes",
                    out.display(),
                    r.calibration,
                    p.params,
                    p.flash_bytes.unwrap_or(0),
                    p.arena_bytes.unwrap_or(0)
                );
            }
        }
        Command::Export {
            model,
            format,
            board,
            size,
            out,
            json,
        } => {
            let size = size.as_deref().map(commands::parse_size).transpose()?;
            let p = commands::export(&model, &format, board.as_deref(), size, &out)?;
            if json {
                print_json(&p)?;
            } else {
                println!(
                    "{} written: {} bytes, {} params, {} MACs{}{}",
                    out.display(),
                    p.flash_bytes.unwrap_or(0),
                    p.params,
                    p.macs,
                    p.arena_bytes
                        .map(|a| format!(", arena {a} bytes"))
                        .unwrap_or_default(),
                    p.board.map(|b| format!(", fits {b}")).unwrap_or_default()
                );
            }
        }
        Command::Eval {
            model,
            data,
            pred,
            gt,
            protocol: proto,
            depth_scale,
            median_scaling,
            report: report_dir,
            json,
        } => {
            let proto = protocol(proto.as_deref())?;
            let report = match (model, data, pred, gt) {
                (None, None, Some(pred), Some(gt)) => {
                    if report_dir.is_some() {
                        return Err(Error::Usage(
                            "--report needs --model and --data (it shows the model's predictions)"
                                .into(),
                        ));
                    }
                    eval::eval_folders(&pred, &gt, proto, depth_scale, median_scaling)?
                }
                (Some(model), Some(data), None, None) => {
                    let e = commands::eval_model(
                        &model,
                        &data,
                        depth_scale,
                        proto,
                        median_scaling,
                        quiet,
                    )?;
                    if let Some(dir) = &report_dir {
                        commands::write_eval_report(dir, &model, &data, &e)?;
                        if !json {
                            println!("report: {}", dir.join("index.html").display());
                        }
                    }
                    e.report
                }
                _ => {
                    return Err(Error::Usage(
                        "give either --pred DIR --gt DIR or --model M --data DIR".into(),
                    ))
                }
            };
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "{} images  abs_rel {:.4}  sq_rel {:.4}  rmse {:.4}  rmse_log {:.4}  log10 {:.4}  δ1 {:.4}  δ2 {:.4}  δ3 {:.4}  silog {:.3}",
                    report.images, report.abs_rel, report.sq_rel, report.rmse, report.rmse_log, report.log10, report.delta1, report.delta2, report.delta3, report.silog
                );
            }
        }
        Command::Run {
            model,
            input,
            out,
            backend,
            json,
        } => {
            let backend = match backend.as_str() {
                "int8" => Backend::Int8,
                "tract" => Backend::Tract,
                other => {
                    return Err(Error::Usage(format!(
                        "unknown backend {other:?}; known: int8, tract"
                    )))
                }
            };
            let s = commands::run(&model, &input, &out, backend, quiet)?;
            if json {
                print_json(&s)?;
            } else {
                println!(
                    "{} images, {:.2} ms per frame ({}) → {}",
                    s.images,
                    s.mean_ms,
                    s.backend,
                    s.out.display()
                );
            }
        }
        Command::Profile {
            model,
            arch,
            width,
            size,
            board,
            graph,
            json,
        } => {
            let mut p = match (model, arch) {
                (Some(m), None) => commands::profile_model(&m)?,
                (None, Some(a)) => {
                    let (w, h) = commands::parse_size(&size)?;
                    if let Some(path) = &graph {
                        let spec = depthling_host::nets::preset(&a, width)?;
                        let text = serde_json::to_string_pretty(&spec)
                            .map_err(|e| Error::Runtime(e.to_string()))?;
                        commands::write_atomic(path, text.as_bytes())?;
                    }
                    commands::profile_arch(&a, width, w, h)?
                }
                _ => return Err(Error::Usage("give either --model M.dlm or --arch A".into())),
            };
            if let Some(b) = board {
                let b = depthling_host::boards::Board::find(&b)?;
                if let (Some(f), Some(a)) = (p.flash_bytes, p.arena_bytes) {
                    p.fits = Some(b.check(f, a).is_ok());
                }
                p.board = Some(b.name);
            }
            if json {
                print_json(&p)?;
            } else {
                let bytes = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} bytes"));
                println!(
                    "params {}{}  MACs {}  flash {}  arena {}",
                    p.params,
                    p.train_params
                        .map(|t| format!(" ({t} counting BatchNorm γ/β)"))
                        .unwrap_or_default(),
                    p.macs,
                    bytes(p.flash_bytes),
                    bytes(p.arena_bytes)
                );
                if let Some(n) = &p.note {
                    println!("{n}");
                }
            }
        }
        Command::Bench { what, arch, json } => {
            let v = depthling_host::bench::run(&what, arch.as_deref())?;
            if json {
                print_json(&v)?;
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).map_err(|e| Error::Runtime(e.to_string()))?
                );
            }
        }
        Command::Experiment {
            preset,
            quick,
            out,
            json,
        } => {
            let r =
                depthling_host::experiment::run(&depthling_host::experiment::ExperimentConfig {
                    preset,
                    quick,
                    out: out.clone(),
                    seed: 1,
                    quiet,
                })?;
            if json {
                print_json(&r)?;
            } else {
                print!("{}", r.markdown());
                println!("results in {}", out.display());
            }
        }
        Command::Demo { quick, out, json } => {
            let mut cfg = if quick {
                demo::DemoConfig::quick(out)
            } else {
                demo::DemoConfig::full(out)
            };
            cfg.quiet = quiet;
            let r = demo::run(&cfg)?;
            if json {
                print_json(&r)?;
            } else {
                print!("{}", r.table());
                println!(
                    "wall time {:.0} s; outputs in {}",
                    r.wall_seconds,
                    cfg.out.display()
                );
            }
        }
    }
    Ok(())
}

/// Expands `--config FILE.toml`: each `key = value` becomes `--key value` (`true` becomes a bare
/// `--key`, `false` is dropped) right after the subcommand, unless the command line already gives
/// that flag, so flags typed by hand win over the file.
fn expand_config(args: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>> {
    let mut args = args;
    let Some(pos) = args
        .iter()
        .position(|a| a == "--config" || a.to_string_lossy().starts_with("--config="))
    else {
        return Ok(args);
    };
    let flag = args.remove(pos).to_string_lossy().into_owned();
    let path = match flag.strip_prefix("--config=") {
        Some(p) => PathBuf::from(p),
        None if pos < args.len() => PathBuf::from(args.remove(pos)),
        None => return Err(Error::Usage("--config needs a file".into())),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::bad_input(&path, "config file not found"),
        _ => Error::io(&path, e),
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| Error::bad_input(&path, format!("not valid TOML: {e}")))?;
    let given: Vec<String> = args
        .iter()
        .map(|a| {
            a.to_string_lossy()
                .split('=')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    let mut extra: Vec<std::ffi::OsString> = Vec::new();
    for (key, value) in &table {
        let flag = format!("--{}", key.replace('_', "-"));
        if given.contains(&flag) {
            continue;
        }
        match value {
            toml::Value::Boolean(true) => extra.push(flag.into()),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => extra.extend([flag.into(), s.into()]),
            toml::Value::Integer(i) => extra.extend([flag.into(), i.to_string().into()]),
            toml::Value::Float(f) => extra.extend([flag.into(), f.to_string().into()]),
            // a flag given several times (`labeled = ["data/indoor", "data/indoor-alt"]`)
            toml::Value::Array(items) => {
                for item in items {
                    match item {
                        toml::Value::String(s) => extra.extend([flag.clone().into(), s.into()]),
                        _ => {
                            return Err(Error::bad_input(
                                &path,
                                format!("{key}: lists may hold only strings"),
                            ))
                        }
                    }
                }
            }
            _ => {
                return Err(Error::bad_input(
                    &path,
                    format!(
                        "{key}: only strings, numbers, booleans and lists of strings are supported"
                    ),
                ))
            }
        }
    }
    // after the subcommand: the first argument that is not a flag
    let at = args
        .iter()
        .skip(1)
        .position(|a| !a.to_string_lossy().starts_with('-'))
        .map_or(args.len(), |i| i + 2);
    args.splice(at..at, extra);
    Ok(args)
}

fn main() -> ExitCode {
    park_idle_pool_workers();
    keep_freed_memory();
    let args = match expand_config(std::env::args_os().collect()) {
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
