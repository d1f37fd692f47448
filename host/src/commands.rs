//! The library functions behind the `depthling` subcommands. Each takes a plain config and returns
//! a typed result, so tests call exactly what the binary calls.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use depthling_model::Model;
use serde::Serialize;

use crate::data::{png, write_dataset, Dataset, Manifest, Sample};
use crate::error::{Error, Result};
use crate::nets::{preset, Net};
use crate::quant::{quantize, Calibration, Provenance};
use crate::sim::{render_many, Domain};
use crate::train::{train, Target, TrainConfig};

/// Prints one line on stderr unless quiet (stages with a count use [`crate::progress::Progress`]).
pub fn progress(quiet: bool, msg: &str) {
    if !quiet {
        eprintln!("{msg}");
    }
}

/// Parses `WxH`.
pub fn parse_size(s: &str) -> Result<(usize, usize)> {
    let bad = || {
        Error::Usage(format!(
            "size must be WIDTHxHEIGHT with positive numbers, got {s:?}"
        ))
    };
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h): (usize, usize) = (
        w.trim().parse().map_err(|_| bad())?,
        h.trim().parse().map_err(|_| bad())?,
    );
    if w == 0 || h == 0 || w > 4096 || h > 4096 {
        return Err(bad());
    }
    Ok((w, h))
}

#[derive(Clone, Debug)]
pub struct SimulateConfig {
    pub domain: Domain,
    pub count: usize,
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    pub stereo: bool,
    pub preview: bool,
    pub out: PathBuf,
    pub quiet: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct SimulateSummary {
    pub domain: String,
    pub count: usize,
    pub width: usize,
    pub height: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    pub out: PathBuf,
}

/// Renders a dataset folder (and optionally `preview.png`, a contact sheet of RGB beside
/// colourised depth).
pub fn simulate(cfg: &SimulateConfig) -> Result<SimulateSummary> {
    if cfg.count == 0 {
        return Err(Error::Usage("--count must be at least 1".into()));
    }
    let start = Instant::now();
    let mut samples: Vec<Sample> = Vec::with_capacity(cfg.count);
    let chunk = 64;
    let mut done = 0;
    let mut bar = crate::progress::Progress::new(
        cfg.quiet,
        &format!("simulate {}", cfg.domain.name()),
        cfg.count,
        "img",
    );
    while done < cfg.count {
        let n = chunk.min(cfg.count - done);
        samples.extend(render_many(
            cfg.domain,
            cfg.width,
            cfg.height,
            cfg.seed,
            done as u64,
            n,
            cfg.stereo,
        ));
        done += n;
        bar.advance(n, None);
    }
    let seconds = start.elapsed().as_secs_f64();
    bar.finish(&format!(
        "{} images at {}×{} ({:.0} img/s)",
        cfg.count,
        cfg.width,
        cfg.height,
        cfg.count as f64 / seconds.max(1e-9)
    ));
    let manifest = Manifest::simulated(
        cfg.domain, cfg.width, cfg.height, cfg.count, cfg.seed, cfg.stereo,
    );
    write_dataset(&cfg.out, &manifest, &samples)?;
    if cfg.preview {
        let sheet = contact_sheet(&samples[..samples.len().min(8)]);
        png::write_rgb(&cfg.out.join("preview.png"), sheet.0, sheet.1, &sheet.2)?;
    }
    Ok(SimulateSummary {
        domain: cfg.domain.name().into(),
        count: cfg.count,
        width: cfg.width,
        height: cfg.height,
        seconds,
        images_per_second: cfg.count as f64 / seconds.max(1e-9),
        out: cfg.out.clone(),
    })
}

/// Rows of `RGB | colourised depth`, one per sample.
pub fn contact_sheet(samples: &[Sample]) -> (usize, usize, Vec<u8>) {
    let Some(first) = samples.first() else {
        return (1, 1, vec![0, 0, 0]);
    };
    let (w, h) = (first.width, first.height);
    let (sw, sh) = (2 * w + 4, samples.len() * (h + 4));
    let mut sheet = vec![255u8; sw * sh * 3];
    for (row, s) in samples.iter().enumerate() {
        let (lo, hi) = png::depth_range(&s.depth);
        let colour = png::colorize_depth(&s.depth, lo, hi);
        for (col, img) in [&s.rgb, &colour].into_iter().enumerate() {
            for y in 0..h {
                let dst = ((row * (h + 4) + y) * sw + col * (w + 4)) * 3;
                sheet[dst..dst + w * 3].copy_from_slice(&img[y * w * 3..(y + 1) * w * 3]);
            }
        }
    }
    (sw, sh, sheet)
}

/// A loaded `.dlm`: the bytes and the path they came from (the model borrows from the bytes).
pub struct DlmFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

impl DlmFile {
    pub fn read(path: &Path) -> Result<DlmFile> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::bad_input(path, "model file not found"),
            _ => Error::io(path, e),
        })?;
        if !bytes.starts_with(b"DLM1")
            && path
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("safetensors"))
        {
            return Err(Error::bad_input(
                path,
                "is a checkpoint, not a .dlm: make one with `depthling quantize`, or profile the architecture with `depthling profile --arch A --size WxH`",
            ));
        }
        let file = DlmFile {
            path: path.to_path_buf(),
            bytes,
        };
        file.model()?;
        Ok(file)
    }

    pub fn model(&self) -> Result<Model<'_>> {
        Model::from_bytes(&self.bytes).map_err(|source| Error::Model {
            path: self.path.clone(),
            source,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Int8,
    Tract,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub images: usize,
    pub mean_ms: f64,
    pub backend: String,
    pub out: PathBuf,
}

fn list_pngs(input: &Path) -> Result<Vec<PathBuf>> {
    if input.is_file() {
        return Ok(vec![input.to_path_buf()]);
    }
    if !input.is_dir() {
        return Err(Error::bad_input(input, "input not found"));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(input)
        .map_err(|e| Error::io(input, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .filter(|p| {
            !p.file_stem()
                .is_some_and(|s| s.to_string_lossy().ends_with("_color"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::bad_input(input, "contains no PNG images"));
    }
    Ok(files)
}

/// Reads and prepares an ONNX export for the tract backend; a file tract cannot use is bad input.
pub fn load_onnx(path: &Path) -> Result<depthling_device::tract::TractModel> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    depthling_device::tract::TractModel::from_bytes(&bytes)
        .map_err(|e| Error::bad_input(path, e.to_string()))
}

fn is_onnx(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// `depthling run`: depth for a PNG or a folder of PNGs; writes `NAME.png` (16-bit millimetres) and
/// `NAME_color.png` per input. `int8` runs a `.dlm` on the int8 engine, `tract` an `.onnx` export.
pub fn run(
    model_path: &Path,
    input: &Path,
    out: &Path,
    backend: Backend,
    quiet: bool,
) -> Result<RunSummary> {
    match (backend, is_onnx(model_path)) {
        (Backend::Int8, true) => {
            return Err(Error::Usage(format!(
                "{} is an ONNX model: run it with --backend tract (the int8 engine runs .dlm files)",
                model_path.display()
            )))
        }
        (Backend::Tract, false) => {
            return Err(Error::Usage(format!(
                "--backend tract runs an ONNX export (.onnx), not {}; make one with `depthling export --format onnx`",
                model_path.display()
            )))
        }
        _ => {}
    }
    // Load the model; `infer` maps one RGB frame to depth in metres.
    let dlm = match backend {
        Backend::Int8 => Some(DlmFile::read(model_path)?),
        Backend::Tract => None,
    };
    let model = dlm.as_ref().map(|f| f.model()).transpose()?;
    let mut arena = vec![0u8; model.as_ref().map_or(0, |m| m.arena_bytes as usize)];
    type Infer<'a> = Box<dyn FnMut(&[u8]) -> Result<Vec<f32>> + 'a>;
    let ((mh, mw), mut infer): ((usize, usize), Infer) = match &model {
        Some(m) => {
            let (h, w) = m
                .input_size()
                .ok_or_else(|| Error::bad_input(model_path, "model has no input"))?;
            let mut engine = depthling_device::Engine::new(m, &mut arena)?;
            (
                (h as usize, w as usize),
                Box::new(move |rgb| Ok(engine.run(rgb)?.iter().collect())),
            )
        }
        None => {
            let tract = load_onnx(model_path)?;
            (
                tract.input_size(),
                Box::new(move |rgb| {
                    tract
                        .run(rgb)
                        .map_err(|e| Error::Runtime(format!("{}: {e}", model_path.display())))
                }),
            )
        }
    };
    let inputs = list_pngs(input)?;
    // Check every input before writing anything.
    let mut frames = Vec::with_capacity(inputs.len());
    for p in &inputs {
        let (w, h, rgb) = png::read_rgb(p)?;
        if (w, h) != (mw, mh) {
            return Err(Error::bad_input(
                p,
                format!("image is {w}×{h}, the model takes {mw}×{mh}"),
            ));
        }
        frames.push(rgb);
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut total = 0.0;
    let mut bar = crate::progress::Progress::new(quiet, "run", inputs.len(), "frames");
    for (p, rgb) in inputs.iter().zip(&frames) {
        let t = Instant::now();
        let depth = infer(rgb)?;
        total += t.elapsed().as_secs_f64();
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        png::write_depth(&out.join(format!("{stem}.png")), mw, mh, &depth, 1000.0)?;
        let (lo, hi) = png::depth_range(&depth);
        png::write_rgb(
            &out.join(format!("{stem}_color.png")),
            mw,
            mh,
            &png::colorize_depth(&depth, lo, hi),
        )?;
        bar.advance(1, Some(p.display().to_string()));
    }
    bar.finish(&format!(
        "{} frames, {:.2} ms each",
        inputs.len(),
        1e3 * total / inputs.len() as f64
    ));
    Ok(RunSummary {
        images: inputs.len(),
        mean_ms: 1e3 * total / inputs.len() as f64,
        backend: match backend {
            Backend::Int8 => "int8",
            Backend::Tract => "tract",
        }
        .into(),
        out: out.to_path_buf(),
    })
}

/// DESIGN §10 `profile --json`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Profile {
    pub params: u64,
    pub macs: u64,
    /// Parameters as PyTorch counts them (BatchNorm's γ and β separate): the papers' figure.
    /// `None` for a `.dlm`, whose BatchNorm is folded away.
    pub train_params: Option<u64>,
    /// Size of the int8 `.dlm` (or of the ONNX file from `export --format onnx`); `None` for an
    /// architecture the int8 engine does not run (teachers) or a size it cannot export.
    pub flash_bytes: Option<u64>,
    /// The int8 engine's arena; `None` where there is no `.dlm` (teachers, ONNX).
    pub arena_bytes: Option<u64>,
    pub board: Option<String>,
    pub fits: Option<bool>,
    /// Why flash and arena are missing, if they are.
    pub note: Option<String>,
}

/// Profile of a `.dlm`.
pub fn profile_model(path: &Path) -> Result<Profile> {
    let file = DlmFile::read(path)?;
    let m = file.model()?;
    Ok(Profile {
        params: m.params(),
        train_params: None,
        macs: m.macs(),
        flash_bytes: Some(file.bytes.len() as u64),
        arena_bytes: Some(m.arena_bytes as u64),
        board: None,
        fits: None,
        note: None,
    })
}

/// Profile of an architecture at `width × height`: counts from the spec, and flash and arena from
/// a real int8 export of randomly initialised weights where the int8 engine runs the architecture.
pub fn profile_arch(arch: &str, width_mult: f32, width: usize, height: usize) -> Result<Profile> {
    let spec = preset(arch, width_mult)?;
    let macs = spec.macs(width, height)?;
    let (params, train_params) = (spec.params() as u64, spec.train_params() as u64);
    let shapes = spec.shapes(width, height)?;
    let mut profile = Profile {
        params,
        train_params: Some(train_params),
        macs,
        flash_bytes: None,
        arena_bytes: None,
        board: None,
        fits: None,
        note: None,
    };
    if let Err(e) = spec.check_int8(&shapes) {
        profile.note = Some(format!("no int8 export: {e}"));
        return Ok(profile);
    }
    let device = Device::Cpu;
    let net = Net::new(spec, &device, 0)?;
    let probe = Sample {
        width,
        height,
        rgb: (0..width * height * 3)
            .map(|i| (i * 31 % 256) as u8)
            .collect(),
        depth: vec![1.0; width * height],
        instance: None,
        right: None,
    };
    let bytes = quantize(
        &net.net,
        &[probe],
        Calibration::MinMax,
        &Provenance {
            name: arch.into(),
            ..Default::default()
        },
        &device,
    )?;
    let m = Model::from_bytes(&bytes)
        .map_err(|e| Error::Runtime(format!("profile export invalid: {e}")))?;
    profile.flash_bytes = Some(bytes.len() as u64);
    profile.arena_bytes = Some(m.arena_bytes as u64);
    Ok(profile)
}

/// Where a run writing `out` keeps its checkpoint: `T.safetensors` → `T.ckpt.safetensors`.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.with_extension("ckpt.safetensors")
}

/// Training options shared by `train-teacher` and `distill`.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub arch: String,
    pub width: f32,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub schedule: crate::train::Schedule,
    /// Share of the steps trained on 2×-downsampled batches first ([`TrainConfig::coarse`]).
    pub coarse: f64,
    pub seed: u64,
    /// Depth units per metre of CSV lists (dataset folders carry theirs in the manifest).
    pub depth_scale: f32,
    pub quiet: bool,
    pub loss: crate::losses::Loss,
    /// Steps between checkpoints (`OUT` with the extension `.ckpt.safetensors`); 0: a tenth of
    /// the run.
    pub checkpoint_every: usize,
    /// Continue from the checkpoint if there is one.
    pub resume: bool,
    /// `cpu` or `cuda`.
    pub device: String,
    /// Small rotations and colour jitter on top of the flips.
    pub augment: bool,
}

/// The candle device named `name`.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).map_err(|e| {
            Error::Usage(format!(
                "--device cuda: {e} (build with `cargo build --release --features cuda` on a machine with CUDA)"
            ))
        }),
        other => Err(Error::Usage(format!(
            "unknown device {other:?}; known: cpu, cuda"
        ))),
    }
}

impl TrainOptions {
    /// Steps for `epochs` passes over `n` images; checkpoints beside `out`.
    fn config(&self, n: usize, out: &Path) -> TrainConfig {
        let steps = (self.epochs * n.div_ceil(self.batch_size.max(1))).max(1);
        let every = match self.checkpoint_every {
            0 => steps.div_ceil(10),
            e => e,
        };
        TrainConfig {
            steps,
            batch_size: self.batch_size,
            lr: self.lr,
            schedule: self.schedule,
            coarse: self.coarse,
            seed: self.seed,
            loss: self.loss,
            augment: self.augment,
            checkpoint: Some(crate::train::Checkpointing {
                path: checkpoint_path(out),
                every,
                resume: self.resume,
            }),
            ..Default::default()
        }
    }

    /// A fresh network of the chosen architecture, checked against the image size.
    fn network(&self, width: usize, height: usize, device: &Device) -> Result<Net> {
        let spec = preset(&self.arch, self.width)?;
        spec.shapes(width, height)?;
        Net::new(spec, device, self.seed)
    }
}

#[derive(Clone, Debug)]
pub struct TrainTeacherConfig {
    pub data: PathBuf,
    pub options: TrainOptions,
    /// Share of the dataset held out and evaluated at the end.
    pub test_fraction: f32,
    pub out: PathBuf,
}

/// Prints training progress (step, loss, ETA) on stderr about 20 times per run, unless quiet.
pub fn training_progress(
    quiet: bool,
    label: &str,
    steps: usize,
    batch_size: usize,
) -> impl FnMut(crate::train::StepInfo) {
    let mut bar = Some(crate::progress::Progress::new(quiet, label, steps, "steps"));
    let mut first_loss = None;
    move |s| {
        let Some(p) = bar.as_mut() else { return };
        first_loss.get_or_insert(s.loss);
        let ips = (p.done() + 1) as f64 * batch_size as f64 / p.elapsed().max(1e-9);
        p.advance(1, Some(format!("loss {:.4}, {ips:.0} img/s", s.loss)));
        if s.step + 1 >= steps {
            if let Some(p) = bar.take() {
                p.finish(&format!(
                    "{steps} steps, loss {:.4} → {:.4}, {ips:.0} img/s",
                    first_loss.unwrap_or(s.loss),
                    s.loss
                ));
            }
        }
    }
}

/// What `train-teacher` and `distill` report (`--json`).
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub out: PathBuf,
    pub arch: String,
    pub params: u64,
    /// Training images (after `--images-fraction`; without the held-out split).
    pub images: usize,
    pub steps: usize,
    pub seconds: f64,
    pub loss_first: f32,
    pub loss_last: f32,
    /// `train-teacher`: metrics on the held-out split (none when it is empty).
    pub test: Option<crate::eval::EvalReport>,
}

impl TrainReport {
    fn new(
        o: &TrainOptions,
        net: &Net,
        images: usize,
        losses: &[f32],
        start: Instant,
        out: &Path,
    ) -> Self {
        TrainReport {
            out: out.to_path_buf(),
            arch: o.arch.clone(),
            params: net.net.spec().params() as u64,
            images,
            steps: losses.len(),
            seconds: start.elapsed().as_secs_f64(),
            loss_first: losses.first().copied().unwrap_or(f32::NAN),
            loss_last: losses.last().copied().unwrap_or(f32::NAN),
            test: None,
        }
    }
}

/// `depthling train-teacher`: supervised training on a labeled dataset; a deterministic share is
/// held out and evaluated at the end (`test` is `None` when the dataset is too small to hold any
/// out).
pub fn train_teacher(cfg: &TrainTeacherConfig) -> Result<TrainReport> {
    let start = Instant::now();
    let o = &cfg.options;
    let samples = Dataset::open(&cfg.data, o.depth_scale)?.load_all(None)?;
    let (train_idx, test_idx) = crate::data::batch::split(samples.len(), cfg.test_fraction, o.seed);
    let pick = |idx: &[usize]| idx.iter().map(|&i| samples[i].clone()).collect::<Vec<_>>();
    let (train_set, test_set) = (pick(&train_idx), pick(&test_idx));
    if train_set.is_empty() {
        return Err(Error::bad_input(
            &cfg.data,
            "no images left for training after the test split",
        ));
    }
    let (w, h) = (train_set[0].width, train_set[0].height);
    let device = device(&o.device)?;
    let net = o.network(w, h, &device)?;
    let tc = o.config(train_set.len(), &cfg.out);
    let losses = train(
        &net,
        &train_set,
        Target::Labels,
        &tc,
        training_progress(o.quiet, "train-teacher", tc.steps, tc.batch_size),
    )?;
    net.save(
        &cfg.out,
        &[("kind", "teacher".into()), ("size", format!("{w}x{h}"))],
    )?;
    let mut report = TrainReport::new(o, &net, train_set.len(), &losses, start, &cfg.out);
    if !test_set.is_empty() {
        let preds = crate::train::predict(&net.net, &test_set, &device)?;
        report.test = Some(crate::eval::evaluate(
            &preds,
            &test_set,
            &depthling_metrics::EvalConfig::default(),
        )?);
    }
    Ok(report)
}

#[derive(Clone, Debug)]
pub struct DistillConfig {
    pub method: String,
    pub teacher: PathBuf,
    /// Unlabeled images (their depth, if any, is not used): required by `kd` and `ddd`; `aux`'s
    /// auxiliary set U.
    pub images: Option<PathBuf>,
    /// Labeled datasets (`aux` only): the target set X, and for the X∪U′ setting the labeled
    /// auxiliary set too.
    pub labeled: Vec<PathBuf>,
    /// Weight of the KD term against the ground-truth term (`aux`).
    pub kd_weight: f64,
    pub options: TrainOptions,
    pub out: PathBuf,
    /// DDD's switches (method `ddd`).
    pub ddd: crate::distill::DddOptions,
    /// Share of the images used (DDD's image budget).
    pub images_fraction: f64,
    /// ADU-Depth's switches and weights (method `adu`; the CLI's `--kd-weight` sets its
    /// response weight).
    pub adu: crate::adu::AduOptions,
}

/// `depthling distill --method kd|ddd|aux|adu`: the student learns the teacher's predictions on
/// (unlabeled) images; `ddd` adds object mixing and the transformation network; `aux` adds the
/// ground truth of labeled sets (the LW paper's settings X, U, X∪U, X∪U′); `adu` distills a
/// stereo teacher's features and depth with ADU-Depth's weighting, plus the ground truth.
pub fn distill(cfg: &DistillConfig) -> Result<TrainReport> {
    let start = Instant::now();
    let ddd = match cfg.method.as_str() {
        "kd" => Some(crate::distill::DddOptions::kd()),
        "ddd" => Some(cfg.ddd.clone()),
        "aux" | "adu" => None,
        other => {
            return Err(Error::Usage(format!(
                "unknown method {other:?}; known: kd, ddd, aux, adu"
            )))
        }
    };
    if cfg.method == "adu" {
        cfg.adu.check()?;
    }
    if ddd.is_some() && !cfg.labeled.is_empty() {
        return Err(Error::Usage(format!(
            "--labeled is for --method aux or adu (ground truth plus distillation); {} distills from unlabeled --images only",
            cfg.method
        )));
    }
    let o = &cfg.options;
    let device = device(&o.device)?;
    let (teacher, _) = Net::load(&cfg.teacher, &device)?;
    let open = |p: &Path| Dataset::open(p, o.depth_scale)?.load_all(None);
    let unlabeled = match &cfg.images {
        Some(p) => crate::distill::budget(open(p)?, cfg.images_fraction)?,
        None if ddd.is_some() => {
            return Err(Error::Usage(format!(
                "--method {} needs --images DIR",
                cfg.method
            )))
        }
        None => Vec::new(),
    };
    let labeled = cfg
        .labeled
        .iter()
        .map(|p| open(p))
        .collect::<Result<Vec<_>>>()?;
    let Some(first) = labeled.iter().flatten().next().or(unlabeled.first()) else {
        return Err(Error::Usage(format!(
            "--method {} needs --labeled DIR (labeled images), --images DIR (unlabeled images), or both",
            cfg.method
        )));
    };
    let (w, h) = (first.width, first.height);
    teacher.net.spec().shapes(w, h)?;
    let student = o.network(w, h, &device)?;
    let images = labeled.iter().map(Vec::len).sum::<usize>() + unlabeled.len();
    let tc = o.config(images, &cfg.out);
    let progress = training_progress(o.quiet, "distill", tc.steps, tc.batch_size);
    let losses = match &ddd {
        Some(ddd) => {
            crate::distill::distill(&student, &teacher.net, &unlabeled, &tc, ddd, progress)?
        }
        None if cfg.method == "adu" => crate::adu::adu(
            &student,
            &teacher.net,
            &labeled.iter().map(Vec::as_slice).collect::<Vec<_>>(),
            &unlabeled,
            &tc,
            &cfg.adu,
            progress,
        )?,
        None => crate::distill::aux(
            &student,
            &teacher.net,
            &labeled.iter().map(Vec::as_slice).collect::<Vec<_>>(),
            &unlabeled,
            &tc,
            cfg.kd_weight,
            progress,
        )?,
    };
    student.save(
        &cfg.out,
        &[
            ("kind", "student".into()),
            ("size", format!("{w}x{h}")),
            ("method", cfg.method.clone()),
            ("teacher", cfg.teacher.display().to_string()),
        ],
    )?;
    Ok(TrainReport::new(
        o, &student, images, &losses, start, &cfg.out,
    ))
}

/// What `depthling quantize` reports.
#[derive(Clone, Debug, Serialize)]
pub struct QuantizeReport {
    #[serde(flatten)]
    pub profile: Profile,
    pub calibration: String,
    /// Per-layer SQNR of int8 against f32 (after QAT: the fine-tuned f32 network) on calibration
    /// images.
    pub layers: Vec<crate::quant::LayerError>,
    /// Mean |int8 depth − f32 depth| in metres over the calibration images (f32: the network as
    /// loaded, before any QAT).
    pub int8_vs_f32_m: f64,
    /// Metrics of the f32 and int8 models on the calibration images, where they have depth.
    pub metrics_f32: Option<crate::eval::EvalReport>,
    pub metrics_int8: Option<crate::eval::EvalReport>,
    /// The QAT fine-tune, when `--qat-epochs` > 0, with the post-training result it replaced.
    pub qat: Option<QatReport>,
}

/// A QAT fine-tune inside `depthling quantize`.
#[derive(Clone, Debug, Serialize)]
pub struct QatReport {
    pub epochs: usize,
    pub lr: f64,
    pub steps: usize,
    /// Mean |fake-quantized − f32| depth (metres) of the first and last step.
    pub loss_first: f32,
    pub loss_last: f32,
    /// The post-training-quantized model before QAT: mean |int8 − f32| (metres) and metrics.
    pub ptq_int8_vs_f32_m: f64,
    pub ptq_metrics_int8: Option<crate::eval::EvalReport>,
}

/// Settings of `depthling quantize`.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub calibration: Calibration,
    /// Depth units per metre of a CSV calibration list.
    pub depth_scale: f32,
    /// QAT fine-tune epochs over the calibration images (0: post-training quantization only).
    pub qat: crate::quant::QatConfig,
    pub quiet: bool,
}

/// `depthling quantize`: int8 quantization of a student checkpoint, calibrated on a dataset's
/// images, optionally fine-tuned quantization-aware; reports per-layer SQNR and the end-to-end
/// change.
pub fn quantize_file(
    model: &Path,
    calib: &Path,
    out: &Path,
    o: &QuantizeOptions,
) -> Result<QuantizeReport> {
    use crate::progress::Progress;
    use crate::quant::{calibrate_observed, calibration_passes, quantize_with, run_int8};
    let device = Device::Cpu;
    let (net, meta) = Net::load(model, &device)?;
    let ds = Dataset::open(calib, o.depth_scale)?;
    let samples = ds.load_all(None)?;
    let size = (samples[0].width, samples[0].height);
    net.net.spec().shapes(size.0, size.1)?;
    let prov = Provenance {
        name: net.net.spec().name.clone(),
        teacher: meta.get("depthling.teacher").cloned().unwrap_or_default(),
        method: meta.get("depthling.method").cloned().unwrap_or_default(),
        metrics: vec![],
    };
    let passes = calibration_passes(o.calibration);
    let mut p = Progress::new(
        o.quiet,
        &format!("quantize: calibrate ({})", o.calibration.name()),
        passes * samples.len(),
        "img",
    );
    let plan = calibrate_observed(&net.net, &samples, o.calibration, &device, |n| {
        p.advance(n, None)
    })?;
    p.finish(&format!("{} images, {passes} pass(es)", samples.len()));
    let cfg = depthling_metrics::EvalConfig::default();
    let f32_pred = crate::train::predict(&net.net, &samples, &device)?;
    let qat = if o.qat.epochs > 0 {
        let ptq = quantize_with(&net.net, &plan, size, &prov)?;
        let ptq = Model::from_bytes(&ptq)
            .map_err(|e| Error::Runtime(format!("quantized model invalid: {e}")))?;
        let ptq_pred = run_int8(&ptq, &samples)?;
        let steps = o.qat.epochs * samples.len().div_ceil(o.qat.batch_size.max(1));
        let mut p = Progress::new(o.quiet, "quantize: QAT", steps, "steps");
        let losses = crate::quant::qat::finetune(&net, &plan, &samples, &o.qat, |_, _, loss| {
            p.advance(1, Some(format!("loss {loss:.4} m")))
        })?;
        let (first, last) = (losses[0], losses[losses.len() - 1]);
        p.finish(&format!("{steps} steps, loss {first:.4} → {last:.4} m"));
        Some(QatReport {
            epochs: o.qat.epochs,
            lr: o.qat.lr,
            steps,
            loss_first: first,
            loss_last: last,
            ptq_int8_vs_f32_m: crate::eval::mean_abs_diff(&ptq_pred, &f32_pred),
            ptq_metrics_int8: crate::eval::evaluate(&ptq_pred, &samples, &cfg).ok(),
        })
    } else {
        None
    };
    let bytes = quantize_with(&net.net, &plan, size, &prov)?;
    let m = Model::from_bytes(&bytes)
        .map_err(|e| Error::Runtime(format!("quantized model invalid: {e}")))?;
    let layers = crate::quant::layer_report(&net.net, &m, &samples, &device)?;
    let int8_pred = run_int8(&m, &samples)?;
    let metrics_f32 = crate::eval::evaluate(&f32_pred, &samples, &cfg).ok();
    let metrics_int8 = crate::eval::evaluate(&int8_pred, &samples, &cfg).ok();
    write_atomic(out, &bytes)?;
    Ok(QuantizeReport {
        profile: profile_model(out)?,
        calibration: o.calibration.name().into(),
        layers,
        int8_vs_f32_m: crate::eval::mean_abs_diff(&int8_pred, &f32_pred),
        metrics_f32,
        metrics_int8,
        qat,
    })
}

/// `depthling export`. `--format onnx` writes the f32 ONNX graph of a checkpoint (input size from
/// `size`, else from the checkpoint's `size` metadata); `--format dlm` takes a `.dlm` (validated,
/// checked against `--board`, copied). A `.dlm` is made from a checkpoint by `depthling quantize`,
/// which needs calibration images.
pub fn export(
    model: &Path,
    format: &str,
    board: Option<&str>,
    size: Option<(usize, usize)>,
    out: &Path,
) -> Result<Profile> {
    let board = board.map(crate::boards::Board::find).transpose()?;
    match format {
        "dlm" => {}
        "onnx" => return export_onnx(model, board, size, out),
        other => {
            return Err(Error::Usage(format!(
                "unknown format {other:?}; known: dlm, onnx"
            )))
        }
    }
    if !model
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("dlm"))
    {
        return Err(Error::Usage(format!(
            "{}: a .dlm is made from a checkpoint by `depthling quantize --model {} --calib DIR --out S.dlm` (int8 needs calibration images)",
            model.display(),
            model.display()
        )));
    }
    let mut p = profile_model(model)?;
    if let Some(b) = board {
        if let Err(m) = b.check(p.flash_bytes.unwrap_or(0), p.arena_bytes.unwrap_or(0)) {
            return Err(Error::bad_input(model, b.explain(&m)));
        }
        p.fits = Some(true);
        p.board = Some(b.name);
    }
    let file = DlmFile::read(model)?;
    write_atomic(out, &file.bytes)?;
    Ok(p)
}

fn export_onnx(
    model: &Path,
    board: Option<crate::boards::Board>,
    size: Option<(usize, usize)>,
    out: &Path,
) -> Result<Profile> {
    if let Some(b) = &board {
        if !b.target.contains("linux") {
            return Err(Error::Usage(format!(
                "board {} ({}) has no tract: it runs .dlm models on the int8 engine; use --format dlm",
                b.name, b.target
            )));
        }
    }
    if model
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("dlm"))
    {
        return Err(Error::Usage(format!(
            "{}: ONNX is exported from the f32 checkpoint (.safetensors), not from an int8 .dlm",
            model.display()
        )));
    }
    let (net, meta) = Net::load(model, &Device::Cpu)?;
    let (width, height) = match (size, meta.get("depthling.size")) {
        (Some(s), _) => s,
        (None, Some(s)) => parse_size(s).map_err(|e| Error::bad_input(model, e.to_string()))?,
        (None, None) => {
            return Err(Error::Usage(format!(
                "{}: the checkpoint does not record its input size; give --size WxH",
                model.display()
            )))
        }
    };
    let bytes = crate::onnx::export(&net.net, width, height)?;
    if let Some(b) = &board {
        if let Err(m) = b.check(bytes.len() as u64, 0) {
            return Err(Error::bad_input(model, b.explain(&m)));
        }
    }
    let spec = net.net.spec();
    let profile = Profile {
        params: spec.params() as u64,
        train_params: Some(spec.train_params() as u64),
        macs: spec.macs(width, height)?,
        flash_bytes: Some(bytes.len() as u64),
        // tract plans its own memory; the arena is the int8 engine's
        arena_bytes: None,
        // checked above: a misfit never gets here
        fits: board.as_ref().map(|_| true),
        board: board.map(|b| b.name),
        note: None,
    };
    write_atomic(out, &bytes)?;
    Ok(profile)
}

/// Writes bytes through a temporary name and renames.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// What `eval --model` computed: the metrics, and what its report shows.
pub struct ModelEval {
    pub report: crate::eval::EvalReport,
    /// `int8` (a `.dlm` through the engine) or `f32` (a checkpoint through candle).
    pub kind: &'static str,
    pub params: u64,
    pub file_bytes: u64,
    /// The int8 engine's arena (`.dlm` only).
    pub arena_bytes: Option<u64>,
    /// Wall time per image of the predictions on this machine (all cores).
    pub ms_per_image: f64,
    pub samples: Vec<Sample>,
    pub preds: Vec<Vec<f32>>,
}

/// `depthling eval --model M --data DIR`: runs a `.dlm` (int8 engine) or a checkpoint (f32) on a
/// dataset and evaluates it, with progress over the images.
pub fn eval_model(
    model: &Path,
    data: &Path,
    depth_scale: f32,
    protocol: depthling_metrics::Protocol,
    median_scaling: bool,
    quiet: bool,
) -> Result<ModelEval> {
    let ds = Dataset::open(data, depth_scale)?;
    let samples = ds.load_all(None)?;
    let cfg = depthling_metrics::EvalConfig {
        median_scaling,
        ..protocol.config()
    };
    let file_bytes = std::fs::metadata(model)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::bad_input(model, "model file not found"),
            _ => Error::io(model, e),
        })?
        .len();
    let mut p = crate::progress::Progress::new(quiet, "eval", samples.len(), "img");
    let start = Instant::now();
    let mut preds = Vec::with_capacity(samples.len());
    let (kind, params, arena_bytes);
    if model
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("dlm"))
    {
        let file = DlmFile::read(model)?;
        let m = file.model()?;
        let (mh, mw) = m
            .input_size()
            .ok_or_else(|| Error::bad_input(model, "model has no input"))?;
        if (samples[0].width, samples[0].height) != (mw as usize, mh as usize) {
            return Err(Error::bad_input(
                model,
                format!(
                    "model takes {mw}×{mh}, the dataset is {}×{}",
                    samples[0].width, samples[0].height
                ),
            ));
        }
        for chunk in samples.chunks(32) {
            preds.extend(crate::quant::run_int8(&m, chunk)?);
            p.advance(chunk.len(), None);
        }
        (kind, params, arena_bytes) = ("int8", m.params(), Some(m.arena_bytes as u64));
    } else {
        let device = Device::Cpu;
        let (net, _) = Net::load(model, &device)?;
        net.net.spec().shapes(samples[0].width, samples[0].height)?;
        for chunk in samples.chunks(32) {
            preds.extend(crate::train::predict(&net.net, chunk, &device)?);
            p.advance(chunk.len(), None);
        }
        (kind, params, arena_bytes) = ("f32", net.net.spec().params() as u64, None);
    }
    let ms_per_image = start.elapsed().as_secs_f64() * 1e3 / samples.len() as f64;
    let report = crate::eval::evaluate(&preds, &samples, &cfg)?;
    p.finish(&format!(
        "{} images ({kind}), RMSE {:.4}, δ1 {:.4}",
        samples.len(),
        report.rmse,
        report.delta1
    ));
    Ok(ModelEval {
        report,
        kind,
        params,
        file_bytes,
        arena_bytes,
        ms_per_image,
        samples,
        preds,
    })
}

/// `eval --model … --report DIR`: `DIR/index.html` with the metrics table, a metrics chart, the
/// error by ground-truth depth, a sample grid (RGB | ground truth | prediction | error), model
/// size, arena and speed.
pub fn write_eval_report(dir: &Path, model: &Path, data: &Path, e: &ModelEval) -> Result<()> {
    use crate::report::{
        error_by_depth, esc, metrics_table, sample_sheet, sheet_img, write_page, MetricRow,
    };
    std::fs::create_dir_all(dir).map_err(|err| Error::io(dir, err))?;
    let sheet = sample_sheet(&dir.join("samples.png"), &e.samples, &[&e.preds], 8)?;
    let m = &e.report;
    crate::plot::bar_chart(
        "metrics",
        "value",
        &[
            "AbsRel (lower)",
            "RMSE m (lower)",
            "δ1 (higher)",
            "δ2 (higher)",
        ],
        &[(e.kind, vec![m.abs_rel, m.rmse, m.delta1, m.delta2])],
    )
    .save(&dir.join("metrics.png"))?;
    let (labels, errors) = error_by_depth(&e.samples, &e.preds, 8);
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    crate::plot::bar_chart(
        "mean |error| by ground-truth depth",
        "metres",
        &labels,
        &[("mean |d - g|", errors)],
    )
    .save(&dir.join("error_by_depth.png"))?;
    let name = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let first = &e.samples[0];
    let body = format!(
        "<p><code>{model}</code> ({kind}) on <code>{data}</code>: {n} images at {w}×{h}.</p>
{table}<p>{params} parameters, file {bytes} bytes{arena}, {ms:.2} ms per image on this machine.</p>
<h2>Metrics</h2><img src=\"metrics.png\" width=\"720\">
<h2>Error by depth</h2><img src=\"error_by_depth.png\" width=\"720\">
<h2>Samples</h2><p>RGB | ground truth | prediction | error ({cap})</p>{img}
",
        model = esc(&model.display().to_string()),
        kind = e.kind,
        data = esc(&data.display().to_string()),
        n = m.images,
        w = first.width,
        h = first.height,
        table = metrics_table(&[MetricRow {
            name: &name,
            metrics: m,
            params: Some(e.params),
        }]),
        params = e.params,
        bytes = e.file_bytes,
        arena = e
            .arena_bytes
            .map(|a| format!(", arena {a} bytes"))
            .unwrap_or_default(),
        ms = e.ms_per_image,
        img = sheet_img("samples.png", sheet),
        cap = crate::report::ERROR_CAPTION,
    );
    write_page(dir, &format!("depthling eval: {name}"), &body)
}
