//! `depthling experiment`: re-measures a paper's comparative claims on the simulated benchmark,
//! every row with the same budget, and writes `results.json` and `results.md` (DESIGN §10).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use depthling_metrics::Protocol;
use serde::Serialize;

use super::training_progress;
use crate::data::Sample;
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalReport};
use crate::io::write_atomic;
use crate::nets::Net;
use crate::progress::line as progress;
use crate::sim::{render_many, Domain};
use crate::train::{predict, train, Supervised, TrainConfig};

mod adu;
mod ddd;
mod lw;

/// Which paper's claims an experiment measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    Ddd,
    Lw,
    Adu,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Ddd => "ddd",
            Preset::Lw => "lw",
            Preset::Adu => "adu",
        }
    }
}

impl std::str::FromStr for Preset {
    type Err = Error;

    fn from_str(s: &str) -> Result<Preset> {
        match s {
            "ddd" => Ok(Preset::Ddd),
            "lw" => Ok(Preset::Lw),
            "adu" => Ok(Preset::Adu),
            other => Err(Error::Usage(format!(
                "unknown preset {other:?}; known: ddd, lw, adu"
            ))),
        }
    }
}

/// Settings of `depthling experiment`.
#[derive(Clone, Debug, clap::Args)]
pub struct ExperimentConfig {
    /// ddd, lw or adu.
    #[arg(long, value_parser = super::parse_arg::<Preset>)]
    pub preset: Preset,
    /// A small run of every row (for tests and a first look).
    #[arg(long)]
    pub quick: bool,
    #[arg(long)]
    pub out: PathBuf,
    /// Distil the preset's student rows from this teacher (a depthling checkpoint or an ONNX
    /// export) instead of training one, and evaluate it in the teacher's row: `ddd` every
    /// distillation row; `lw` the rows of the teacher trained on X (kd_X, kd_U, kd_XU; the
    /// X∪U′ setting keeps its own teacher, trained here on X∪U′); `adu` the stereo teacher's rows
    /// (a 6-channel teacher: left and right RGB stacked).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    #[command(flatten)]
    pub teacher_args: super::distill::TeacherArgs,
    /// Reuse every row an earlier run into the same --out finished (each run keeps a row's
    /// trained weights in OUT/rows/NAME.safetensors, with its setting, steps and losses) and
    /// train only the rest: a preset longer than one sitting finishes over several runs. A row
    /// whose setting or budget changed is trained again.
    #[arg(long)]
    pub resume: bool,
    #[arg(skip = 1u64)]
    pub seed: u64,
    #[arg(skip)]
    pub quiet: bool,
}

/// Sizes of one run of a preset.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Budget {
    pub width: usize,
    pub height: usize,
    /// Labeled target-domain images (teacher training, the `student_gt` upper bound).
    pub target_train: usize,
    pub target_test: usize,
    /// Unlabeled OOD images for distillation (`ddd`).
    pub ood_images: usize,
    /// Images of the related auxiliary domain, `indoor-alt` (`lw`: U, and U′ with its labels).
    pub aux_images: usize,
    pub teacher_steps: usize,
    /// Steps of every student row.
    pub student_steps: usize,
    pub batch_size: usize,
    /// Share of every row's steps, from the start, on batches at half the size
    /// ([`TrainConfig::coarse`]).
    pub coarse: f64,
}

impl Budget {
    fn for_run(quick: bool) -> Budget {
        if quick {
            Budget {
                width: 32,
                height: 32,
                target_train: 48,
                target_test: 12,
                ood_images: 48,
                aux_images: 0,
                teacher_steps: 12,
                student_steps: 12,
                batch_size: 4,
                coarse: 0.0,
            }
        } else {
            // the STM32H747 profile's input size; the teacher gets the demo's recipe (8192
            // images, 4096 steps), the students 1500 steps, every row the first half coarse
            Budget {
                width: 128,
                height: 96,
                target_train: 8192,
                target_test: 200,
                ood_images: 1200,
                aux_images: 0,
                teacher_steps: 4096,
                student_steps: 1500,
                batch_size: 8,
                coarse: 0.5,
            }
        }
    }
}

impl Budget {
    /// Training settings of one row: `steps` of this budget's batch size.
    fn train_cfg(&self, steps: usize, seed: u64) -> TrainConfig {
        TrainConfig {
            steps,
            batch_size: self.batch_size,
            coarse: self.coarse,
            seed,
            ..TrainConfig::default()
        }
    }

    /// A labeled set X of `labeled` images and a larger set U of 1024 (`aux_images`; quick: 24
    /// and 48): `lw`'s target and auxiliary sets, `adu`'s labeled and unlabeled stereo pairs.
    fn labeled_and_aux(quick: bool, labeled: usize) -> Budget {
        let b = Budget::for_run(quick);
        let (target_train, aux_images) = if quick { (24, 48) } else { (labeled, 1024) };
        Budget {
            target_train,
            ood_images: 0,
            aux_images,
            ..b
        }
    }
}

/// One row of `results.json`.
#[derive(Clone, Debug, Serialize)]
pub struct ResultRow {
    pub name: String,
    #[serde(flatten)]
    pub metrics: EvalReport,
    pub params: u64,
    /// Training images the row saw (labeled or not).
    pub images: usize,
    pub seconds: f64,
    /// What the row is, in `depthling` flags.
    pub setting: String,
}

/// A paper's claim and whether this run reproduces it.
#[derive(Clone, Debug, Serialize)]
pub struct Claim {
    pub claim: String,
    pub holds: bool,
    pub numbers: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub preset: String,
    pub command: String,
    /// The data and budget in words.
    pub setup: String,
    pub budget: Budget,
    pub rows: Vec<ResultRow>,
    pub claims: Vec<Claim>,
    pub wall_seconds: f64,
}

impl Results {
    fn rmse(&self, name: &str) -> f64 {
        self.rows
            .iter()
            .find(|r| r.name == name)
            .map_or(f64::NAN, |r| r.metrics.rmse)
    }

    /// `results.md`: the table, the claims, and how to reproduce.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# `{}` preset\n\nReproduce: `{}`\n\n{} Wall time {:.0} s.\n\n",
            self.preset, self.command, self.setup, self.wall_seconds
        );
        s += "| row | AbsRel | RMSE | δ1 | params | images | seconds | setting |\n";
        s += "|---|---:|---:|---:|---:|---:|---:|---|\n";
        for r in &self.rows {
            s += &format!(
                "| {} | {:.4} | {:.4} | {:.4} | {} | {} | {:.0} | {} |\n",
                r.name,
                r.metrics.abs_rel,
                r.metrics.rmse,
                r.metrics.delta1,
                r.params,
                r.images,
                r.seconds,
                r.setting
            );
        }
        s += "\n## Claims\n\n";
        for c in &self.claims {
            s += &format!(
                "- {} **{}**: {}\n",
                c.claim,
                if c.holds {
                    "reproduced"
                } else {
                    "not reproduced"
                },
                c.numbers
            );
        }
        s
    }
}

/// The labeled indoor training set and the held-out indoor test set of a run.
fn target_sets(cfg: &ExperimentConfig, b: &Budget) -> (Vec<Sample>, Vec<Sample>) {
    let (w, h) = (b.width, b.height);
    let train = render_many(Domain::Indoor, w, h, cfg.seed, 0, b.target_train, false);
    let test = render_many(
        Domain::Indoor,
        w,
        h,
        cfg.seed ^ 0x7E57,
        0,
        b.target_test,
        false,
    );
    (train, test)
}

/// A preset's teacher: trained here, or the `--teacher` file.
enum PresetTeacher {
    Native(Net),
    Given(Box<crate::app::distill::LoadedTeacher>),
}

impl PresetTeacher {
    fn teacher(&self) -> &dyn crate::teacher::Teacher {
        match self {
            PresetTeacher::Native(n) => &n.net,
            PresetTeacher::Given(g) => g.teacher(),
        }
    }

    /// Row `name`: the given `--teacher` evaluated (it must take `channels` input channels), or
    /// `train` building and training one (recording the row itself).
    fn trained_or_given(
        cfg: &ExperimentConfig,
        table: &mut Table<'_>,
        name: &str,
        (w, h): (usize, usize),
        channels: usize,
        train: impl FnOnce(&mut Table<'_>) -> Result<Net>,
    ) -> Result<PresetTeacher> {
        let Some(path) = &cfg.teacher else {
            return Ok(PresetTeacher::Native(train(table)?));
        };
        let loaded = crate::app::distill::LoadedTeacher::load(
            path,
            &cfg.teacher_args,
            (w, h),
            &table.device.clone(),
            cfg.quiet,
        )?;
        let got = loaded.teacher().input_channels();
        if got != channels {
            return Err(Error::bad_input(
                path,
                format!(
                    "takes {got} input channels; the {} preset's {name} takes {channels}{}",
                    cfg.preset.name(),
                    if channels == 6 {
                        " (left and right RGB stacked: a stereo teacher)"
                    } else {
                        " (RGB)"
                    }
                ),
            ));
        }
        table.teacher_row(
            name,
            loaded.teacher(),
            loaded.params(),
            &format!("given teacher {}", path.display()),
        )?;
        Ok(PresetTeacher::Given(Box::new(loaded)))
    }
}

/// Runs `cfg.preset` and writes `results.json` and `results.md` into `cfg.out`.
pub fn run(cfg: &ExperimentConfig) -> Result<Results> {
    match cfg.preset {
        Preset::Ddd => ddd::run(cfg),
        Preset::Lw => lw::run(cfg),
        Preset::Adu => adu::run(cfg),
    }
}

/// How a row's model predicts depth for samples.
type PredictRows<'p> = dyn Fn(&[Sample]) -> Result<Vec<Vec<f32>>> + 'p;

/// Each row's predictions on the first test images.
type Previews = Vec<(String, Vec<Vec<f32>>)>;
/// Each row's training losses.
type Curves = Vec<(String, Vec<f32>)>;

/// The rows of a run as they finish: metrics on the test set, predictions on the first test
/// images (the report's sample grid), loss curves, and a progress bar per row.
struct Table<'a> {
    cfg: &'a ExperimentConfig,
    test: &'a [Sample],
    batch_size: usize,
    /// The budget's size, batch and coarse share (part of every row's tag).
    size_tag: String,
    preset: &'static str,
    device: Device,
    /// NYU (indoor, 10 m cap) unless the preset's target domain is outdoor.
    protocol: Protocol,
    rows: Vec<ResultRow>,
    previews: Previews,
    curves: Curves,
}

impl<'a> Table<'a> {
    fn new(
        cfg: &'a ExperimentConfig,
        test: &'a [Sample],
        budget: &Budget,
        preset: &'static str,
    ) -> Self {
        Table {
            cfg,
            test,
            batch_size: budget.batch_size,
            size_tag: format!(
                "{}x{} batch {} coarse {}",
                budget.width, budget.height, budget.batch_size, budget.coarse
            ),
            preset,
            device: Device::Cpu,
            protocol: Protocol::Nyu,
            rows: Vec::new(),
            previews: Vec::new(),
            curves: Vec::new(),
        }
    }

    /// Training progress for row `name`.
    fn bar(&self, name: &str, steps: usize) -> impl FnMut(crate::train::StepInfo) {
        training_progress(
            self.cfg.quiet,
            &format!("experiment {}: {name}", self.preset),
            steps,
            self.batch_size,
        )
    }

    /// Trains `net` on the labels of `data` and records it as row `name`.
    fn supervised(
        &mut self,
        name: &str,
        net: &Net,
        data: &[Sample],
        train_cfg: &TrainConfig,
        setting: &str,
    ) -> Result<()> {
        // checkpoints inside the row (the teachers are the longest rows): `--resume` continues
        // an interrupted one where it stopped, bit for bit
        // named by the row's setting, so that a changed budget never resumes another's
        let tag = self.row_tag(setting, train_cfg.steps);
        let fnv = tag.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let mut cfg = train_cfg.clone();
        cfg.checkpoint = Some(crate::train::Checkpointing {
            path: self
                .cfg
                .out
                .join("rows")
                .join(format!("{name}.{fnv:016x}.ckpt.safetensors")),
            every: (train_cfg.steps / 10).max(1),
            resume: self.cfg.resume,
        });
        self.row(name, net, data.len(), setting, train_cfg.steps, |bar| {
            train(net, data, &mut Supervised, &cfg, bar)
        })
    }

    /// Runs `run` (training `net` for `steps` steps, reporting to the progress bar it is given)
    /// and records `net` as row `name` with its wall time and losses; with `--resume`, a row an
    /// earlier run finished is loaded instead of trained.
    fn row(
        &mut self,
        name: &str,
        net: &Net,
        images: usize,
        setting: &str,
        steps: usize,
        run: impl FnOnce(&mut dyn FnMut(crate::train::StepInfo)) -> Result<Vec<f32>>,
    ) -> Result<()> {
        let t = Instant::now();
        let (losses, earlier) = self.trained(name, net, setting, steps, run)?;
        let device = self.device.clone();
        let predict_net = |s: &[Sample]| predict(&net.net, s, &device);
        let params = net.net.spec().params() as u64;
        self.record_with(
            name,
            &predict_net,
            params,
            images,
            (t, earlier),
            setting,
            losses,
        )
    }

    /// What a kept row must agree on to be reused: its setting, budget, seed and teacher.
    fn row_tag(&self, setting: &str, steps: usize) -> String {
        format!(
            "{setting} | {steps} steps | {} {} | seed {} | teacher {:?} {:?}",
            if self.cfg.quick { "quick" } else { "full" },
            self.size_tag,
            self.cfg.seed,
            self.cfg.teacher,
            self.cfg.teacher_args
        )
    }

    /// Where row (or network) `name`'s trained weights are kept.
    fn row_path(&self, name: &str) -> PathBuf {
        self.cfg
            .out
            .join("rows")
            .join(format!("{name}.safetensors"))
    }

    /// Trains `net` with `run` and keeps its weights under `--out`, or with `--resume` loads the
    /// weights an earlier run kept for the same `name`, setting, budget and seed. Returns the
    /// losses and the seconds an earlier run spent (0 for a fresh one).
    fn trained(
        &self,
        name: &str,
        net: &Net,
        setting: &str,
        steps: usize,
        run: impl FnOnce(&mut dyn FnMut(crate::train::StepInfo)) -> Result<Vec<f32>>,
    ) -> Result<(Vec<f32>, f64)> {
        let path = self.row_path(name);
        let tag = self.row_tag(setting, steps);
        if self.cfg.resume && path.exists() {
            let (saved, meta) = Net::load(&path, &self.device)?;
            let same =
                meta.get("depthling.row") == Some(&tag) && saved.net.spec() == net.net.spec();
            if same {
                let tensors: std::collections::HashMap<_, _> =
                    saved.named_tensors()?.into_iter().collect();
                net.restore(&tensors)?;
                let losses = meta
                    .get("depthling.losses")
                    .and_then(|l| serde_json::from_str::<Vec<f32>>(l).ok())
                    .unwrap_or_default();
                let seconds = meta
                    .get("depthling.seconds")
                    .and_then(|s| s.parse::<f64>().ok())
                    .unwrap_or(0.0);
                progress(
                    self.cfg.quiet,
                    &format!(
                        "experiment {}: {name}: resumed from {}",
                        self.preset,
                        path.display()
                    ),
                );
                return Ok((losses, seconds));
            }
        }
        let t = Instant::now();
        let losses = run(&mut self.bar(name, steps))?;
        let losses_json =
            serde_json::to_string(&losses).map_err(|e| Error::Runtime(e.to_string()))?;
        net.save(
            &path,
            &[
                ("row", tag),
                ("losses", losses_json),
                ("seconds", t.elapsed().as_secs_f64().to_string()),
            ],
        )?;
        Ok((losses, 0.0))
    }

    /// Records a given teacher as row `name` (no training: no losses).
    fn teacher_row(
        &mut self,
        name: &str,
        teacher: &dyn crate::teacher::Teacher,
        params: u64,
        setting: &str,
    ) -> Result<()> {
        let device = self.device.clone();
        let predict_teacher = |s: &[Sample]| crate::teacher::predict_samples(teacher, s, &device);
        self.record_with(
            name,
            &predict_teacher,
            params,
            0,
            (Instant::now(), 0.0),
            setting,
            Vec::new(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn record_with(
        &mut self,
        name: &str,
        predict_rows: &PredictRows<'_>,
        params: u64,
        images: usize,
        // when this run started the row, and the seconds an earlier run spent on it
        (t, earlier): (Instant, f64),
        setting: &str,
        losses: Vec<f32>,
    ) -> Result<()> {
        let preds = predict_rows(self.test)?;
        let metrics = evaluate(&preds, self.test, &self.protocol.config())?;
        progress(
            self.cfg.quiet,
            &format!(
                "experiment {}: {name}: RMSE {:.4}, δ1 {:.4} ({:.0} s)",
                self.preset,
                metrics.rmse,
                metrics.delta1,
                earlier + t.elapsed().as_secs_f64()
            ),
        );
        let preview = &self.test[..self.test.len().min(6)];
        self.previews.push((name.into(), predict_rows(preview)?));
        self.curves.push((name.into(), losses));
        self.rows.push(ResultRow {
            name: name.into(),
            metrics,
            params,
            images,
            seconds: earlier + t.elapsed().as_secs_f64(),
            setting: setting.into(),
        });
        Ok(())
    }

    /// The results (claims still empty), the previews and the curves.
    #[allow(clippy::type_complexity)]
    fn finish(
        self,
        budget: Budget,
        setup: String,
        start: Instant,
    ) -> (
        Results,
        Vec<(String, Vec<Vec<f32>>)>,
        Vec<(String, Vec<f32>)>,
    ) {
        let results = Results {
            preset: self.preset.into(),
            command: format!(
                "depthling experiment --preset {}{}{}{} --out {}",
                self.preset,
                if self.cfg.quick { " --quick" } else { "" },
                if self.cfg.resume { " --resume" } else { "" },
                self.cfg
                    .teacher
                    .as_ref()
                    .map(|t| format!(" --teacher {}", t.display()))
                    .unwrap_or_default(),
                self.cfg.out.display()
            ),
            setup,
            budget,
            rows: self.rows,
            claims: Vec::new(),
            wall_seconds: start.elapsed().as_secs_f64(),
        };
        (results, self.previews, self.curves)
    }
}

/// `report/index.html`: the table, the claims, RMSE and δ1 per row, every row's loss curve, and a
/// sample grid (RGB | ground truth | teacher | kd | ddd | error of ddd).
fn write_report(
    out: &Path,
    r: &Results,
    samples: &[Sample],
    previews: &[(String, Vec<Vec<f32>>)],
    curves: &[(String, Vec<f32>)],
    shown: &[&str],
) -> Result<()> {
    use crate::report::{esc, metrics_table, sample_sheet, sheet_img, write_page, MetricRow};
    let dir = out.join("report");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let preds: Vec<&[Vec<f32>]> = shown
        .iter()
        .filter_map(|n| previews.iter().find(|(m, _)| m == n))
        .map(|(_, p)| p.as_slice())
        .collect();
    let sheet = sample_sheet(&dir.join("samples.png"), samples, &preds, 6)?;
    let series: Vec<(&str, Vec<f64>)> = r
        .rows
        .iter()
        .map(|row| {
            (
                row.name.as_str(),
                vec![row.metrics.rmse, row.metrics.delta1],
            )
        })
        .collect();
    crate::plot::bar_chart(
        "held-out target images",
        "value",
        &["RMSE m (lower)", "δ1 (higher)"],
        &series,
    )
    .save(&dir.join("metrics.png"))?;
    let lines: Vec<(&str, &[f32])> = curves
        .iter()
        .map(|(n, l)| (n.as_str(), l.as_slice()))
        .collect();
    let smooth = (curves.iter().map(|(_, l)| l.len()).max().unwrap_or(0) / 50).max(1);
    crate::plot::line_chart("training loss", "step", "loss", &lines, smooth)
        .save(&dir.join("loss.png"))?;
    let rows: Vec<MetricRow> = r
        .rows
        .iter()
        .map(|row| MetricRow {
            name: &row.name,
            metrics: &row.metrics,
            params: Some(row.params),
        })
        .collect();
    let mut claims = String::from("<ul>\n");
    for c in &r.claims {
        claims += &format!(
            "<li class=\"{}\">{} {}: {}</li>\n",
            if c.holds { "ok" } else { "no" },
            if c.holds { "✓" } else { "✗" },
            esc(&c.claim.replace('`', "")),
            esc(&c.numbers)
        );
    }
    claims += "</ul>\n";
    let mut settings = String::from(
        "<table><tr><th>row</th><th>images</th><th>seconds</th><th>setting</th></tr>\n",
    );
    for row in &r.rows {
        settings += &format!(
            "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td></tr>\n",
            esc(&row.name),
            row.images,
            row.seconds,
            esc(&row.setting)
        );
    }
    settings += "</table>\n";
    let body = format!(
        "<p>Reproduce: <code>{cmd}</code>. {setup} Wall time {wall:.0} s.</p>\n\
<h2>Claims</h2>{claims}<h2>Results</h2>{table}{settings}\
<h2>Metrics</h2><img src=\"metrics.png\" width=\"720\">\n<h2>Training</h2><img src=\"loss.png\" width=\"720\">\n\
<h2>Samples</h2><p>RGB | ground truth | {cols} | error of {last} ({cap})</p>{img}\n",
        cmd = esc(&r.command),
        setup = esc(&r.setup.replace('`', "")),
        wall = r.wall_seconds,
        table = metrics_table(&rows),
        cols = shown.join(" | "),
        last = shown[shown.len() - 1],
        img = sheet_img("samples.png", sheet),
        cap = crate::report::ERROR_CAPTION,
    );
    write_page(&dir, &format!("depthling experiment: {}", r.preset), &body)
}

fn write_results(out: &Path, r: &Results) -> Result<()> {
    let json = serde_json::to_string_pretty(r).map_err(|e| Error::Runtime(e.to_string()))?;
    write_atomic(&out.join("results.json"), json.as_bytes())?;
    write_atomic(&out.join("results.md"), r.markdown().as_bytes())
}
