//! `depthling eval`: metrics of predictions against ground truth, or of a model on a dataset
//! (with an optional HTML report).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use depthling_metrics::Protocol;

use crate::data::{Dataset, Sample};
use crate::error::{Error, Result};
use crate::eval::EvalReport;
use crate::io::{DlmFile, FileKind};
use crate::nets::Net;

/// Settings of `depthling eval`: `--pred DIR --gt DIR`, or `--model M --data DIR`.
#[derive(Clone, Debug, clap::Args)]
pub struct EvalConfig {
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long)]
    pub pred: Option<PathBuf>,
    #[arg(long)]
    pub gt: Option<PathBuf>,
    /// nyu (cap 10 m, Eigen crop), kitti (cap 80 m, Garg crop) or none.
    #[arg(long, default_value = "none", value_parser = parse_protocol)]
    pub protocol: Protocol,
    /// Units per metre of PNG folders without a manifest.json.
    #[arg(long, default_value_t = 1000.0)]
    pub depth_scale: f32,
    #[arg(long)]
    pub median_scaling: bool,
    /// With --model: also write an HTML report (index.html, samples, charts) into this folder.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// How an ONNX model (a teacher) is fed and read.
    #[command(flatten)]
    pub teacher: super::distill::TeacherArgs,
    #[arg(skip)]
    pub quiet: bool,
}

/// `clap` value parser of `--protocol`.
pub fn parse_protocol(s: &str) -> std::result::Result<Protocol, String> {
    Protocol::parse(s).ok_or_else(|| format!("unknown protocol {s:?}; known: nyu, kitti, none"))
}

/// `depthling eval`: the metrics (and, with `--report`, the report written).
pub fn eval(cfg: &EvalConfig) -> Result<EvalReport> {
    match (&cfg.model, &cfg.data, &cfg.pred, &cfg.gt) {
        (None, None, Some(pred), Some(gt)) => {
            if cfg.report.is_some() {
                return Err(Error::Usage(
                    "--report needs --model and --data (it shows the model's predictions)".into(),
                ));
            }
            crate::eval::eval_folders(pred, gt, cfg.protocol, cfg.depth_scale, cfg.median_scaling)
        }
        (Some(model), Some(data), None, None) => {
            let e = eval_model(
                model,
                data,
                cfg.depth_scale,
                cfg.protocol,
                cfg.median_scaling,
                &cfg.teacher,
                cfg.quiet,
            )?;
            if let Some(dir) = &cfg.report {
                write_eval_report(dir, model, data, &e)?;
                crate::progress::line(
                    cfg.quiet,
                    &format!("report: {}", dir.join("index.html").display()),
                );
            }
            Ok(e.report)
        }
        _ => Err(Error::Usage(
            "give either --pred DIR --gt DIR or --model M --data DIR".into(),
        )),
    }
}

/// What `eval --model` computed: the metrics, and what its report shows.
pub struct ModelEval {
    pub report: EvalReport,
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

/// `depthling eval --model M --data DIR`: runs a `.dlm` (int8 engine), a checkpoint (f32) or an
/// ONNX teacher (f32, imported) on a dataset and evaluates it, with progress over the images.
pub fn eval_model(
    model: &Path,
    data: &Path,
    depth_scale: f32,
    protocol: depthling_metrics::Protocol,
    median_scaling: bool,
    teacher: &super::distill::TeacherArgs,
    quiet: bool,
) -> Result<ModelEval> {
    let ds = Dataset::open(data, depth_scale)?.require_labels("eval")?;
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
    let kind_of_file = FileKind::of_file(model)?;
    let mut p = crate::progress::Progress::new(quiet, "eval", samples.len(), "img");
    let start = Instant::now();
    let mut preds = Vec::with_capacity(samples.len());
    let (kind, params, arena_bytes);
    if kind_of_file == FileKind::Dlm {
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
    } else if kind_of_file == FileKind::Onnx {
        let device = Device::Cpu;
        let size = (samples[0].width, samples[0].height);
        let loaded = super::distill::LoadedTeacher::load(model, teacher, size, &device, quiet)?;
        let t = loaded.teacher();
        for chunk in samples.chunks(16) {
            preds.extend(crate::teacher::predict_samples(t, chunk, &device)?);
            p.advance(chunk.len(), None);
        }
        (kind, params, arena_bytes) = ("f32 (onnx)", loaded.params(), None);
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
