//! `depthling experiment`: re-measures a paper's comparative claims on the simulated benchmark,
//! every row with the same budget, and writes `results.json` and `results.md` (DESIGN §10).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use depthling_metrics::Protocol;
use serde::Serialize;

use crate::commands::{progress, training_progress, write_atomic};
use crate::data::Sample;
use crate::distill::{budget, distill, DddOptions};
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalReport};
use crate::nets::{preset, Net};
use crate::sim::{render_many, Domain};
use crate::train::{predict, train, Target, TrainConfig};

#[derive(Clone, Debug)]
pub struct ExperimentConfig {
    pub preset: String,
    pub quick: bool,
    pub out: PathBuf,
    pub seed: u64,
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
            }
        } else {
            Budget {
                width: 64,
                height: 48,
                target_train: 1024,
                target_test: 200,
                ood_images: 1200,
                aux_images: 0,
                teacher_steps: 1500,
                student_steps: 1500,
                batch_size: 8,
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

/// Runs `cfg.preset` and writes `results.json` and `results.md` into `cfg.out`.
pub fn run(cfg: &ExperimentConfig) -> Result<Results> {
    match cfg.preset.as_str() {
        "ddd" => ddd(cfg),
        "lw" => lw(cfg),
        "adu" => adu(cfg),
        other => Err(Error::Usage(format!(
            "unknown preset {other:?}; known: ddd, lw, adu"
        ))),
    }
}

fn eval(net: &Net, test: &[Sample], device: &Device, protocol: Protocol) -> Result<EvalReport> {
    let preds = predict(&net.net, test, device)?;
    evaluate(&preds, test, &protocol.config())
}

/// DDD's table: teacher, student_gt, kd, ddd_mix, ddd_transform, ddd, kd_1of6, ddd_1of6.
fn ddd(cfg: &ExperimentConfig) -> Result<Results> {
    let start = Instant::now();
    let b = Budget::for_run(cfg.quick);
    let device = Device::Cpu;
    let (w, h) = (b.width, b.height);
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let note = |m: &str| progress(cfg.quiet, &format!("experiment ddd: {m}"));
    note(&format!(
        "rendering {} indoor and {} OOD images at {w}×{h}",
        b.target_train + b.target_test,
        b.ood_images
    ));
    let (target, test) = target_sets(cfg, &b);
    let ood = render_many(Domain::Ood, w, h, cfg.seed + 101, 0, b.ood_images, false);
    let train_cfg = |steps: usize, seed: u64| b.train_cfg(steps, seed);
    let mut table = Table::new(cfg, &test, b.batch_size, "ddd");
    let teacher = Net::new(preset("demo-teacher", 1.0)?, &device, cfg.seed)?;
    table.supervised(
        "teacher",
        &teacher,
        &target,
        &train_cfg(b.teacher_steps, cfg.seed),
        "train-teacher --arch demo-teacher on indoor labels",
    )?;

    let student = |seed: u64| Net::new(preset("demo-student", 1.0)?, &device, seed);
    table.supervised(
        "student_gt",
        &student(cfg.seed + 1)?,
        &target,
        &train_cfg(b.student_steps, cfg.seed + 1),
        "student on indoor labels (upper bound)",
    )?;

    let kd = DddOptions::kd();
    let full = DddOptions::default();
    let variants: [(&str, DddOptions, f64, &str); 6] = [
        ("kd", kd.clone(), 1.0, "distill --method kd"),
        (
            "ddd_mix",
            DddOptions {
                transform: false,
                ..full.clone()
            },
            1.0,
            "distill --method ddd --no-transform",
        ),
        (
            "ddd_transform",
            DddOptions {
                mix: false,
                ..full.clone()
            },
            1.0,
            "distill --method ddd --no-mix",
        ),
        ("ddd", full.clone(), 1.0, "distill --method ddd"),
        (
            "kd_1of6",
            kd,
            1.0 / 6.0,
            "distill --method kd --images-fraction 1/6",
        ),
        (
            "ddd_1of6",
            full,
            1.0 / 6.0,
            "distill --method ddd --images-fraction 1/6",
        ),
    ];
    for (name, options, fraction, setting) in variants {
        let images = budget(ood.clone(), fraction)?;
        // every student row starts from the same weights and sees the same number of steps
        let s = student(cfg.seed + 1)?;
        let sc = train_cfg(b.student_steps, cfg.seed + 1);
        table.row(name, &s, images.len(), setting, b.student_steps, |bar| {
            distill(&s, &teacher.net, &images, &sc, &options, bar)
        })?;
    }

    let setup = format!(
        "Simulated indoor target domain at {w}×{h}; {} labeled target images (teacher, `student_gt`), {} held-out target images (NYU protocol), {} unlabeled OOD images; teacher {} steps, every student row {} steps of batch {}.",
        b.target_train, b.target_test, b.ood_images, b.teacher_steps, b.student_steps, b.batch_size
    );
    let (mut results, previews, curves) = table.finish(b, setup, start);
    let (kd, ddd) = (results.rmse("kd"), results.rmse("ddd"));
    let (mix, tr, ddd6) = (
        results.rmse("ddd_mix"),
        results.rmse("ddd_transform"),
        results.rmse("ddd_1of6"),
    );
    results.claims = vec![
        Claim {
            claim: "`ddd` RMSE ≤ 0.95 × `kd` RMSE".into(),
            holds: ddd <= 0.95 * kd,
            numbers: format!("{ddd:.4} vs 0.95 × {kd:.4} = {:.4}", 0.95 * kd),
        },
        Claim {
            claim: "`ddd_mix` below `kd`".into(),
            holds: mix < kd,
            numbers: format!("{mix:.4} vs {kd:.4}"),
        },
        Claim {
            claim: "`ddd_transform` below `kd`".into(),
            holds: tr < kd,
            numbers: format!("{tr:.4} vs {kd:.4}"),
        },
        Claim {
            claim: "`ddd_1of6` ≤ `kd` (a sixth of the images)".into(),
            holds: ddd6 <= kd,
            numbers: format!("{ddd6:.4} vs {kd:.4}"),
        },
    ];
    write_results(&cfg.out, &results)?;
    write_report(
        &cfg.out,
        &results,
        &test,
        &previews,
        &curves,
        &["teacher", "kd", "ddd"],
    )?;
    Ok(results)
}

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
        batch_size: usize,
        preset: &'static str,
    ) -> Self {
        Table {
            cfg,
            test,
            batch_size,
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
        self.row(name, net, data.len(), setting, train_cfg.steps, |bar| {
            train(net, data, Target::Labels, train_cfg, bar)
        })
    }

    /// Runs `run` (training `net` for `steps` steps, reporting to the progress bar it is given)
    /// and records `net` as row `name` with its wall time and losses.
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
        let losses = run(&mut self.bar(name, steps))?;
        self.record(name, net, images, t, setting, losses)
    }

    fn record(
        &mut self,
        name: &str,
        net: &Net,
        images: usize,
        t: Instant,
        setting: &str,
        losses: Vec<f32>,
    ) -> Result<()> {
        let metrics = eval(net, self.test, &self.device, self.protocol)?;
        progress(
            self.cfg.quiet,
            &format!(
                "experiment {}: {name}: RMSE {:.4}, δ1 {:.4} ({:.0} s)",
                self.preset,
                metrics.rmse,
                metrics.delta1,
                t.elapsed().as_secs_f64()
            ),
        );
        let preview = &self.test[..self.test.len().min(6)];
        self.previews
            .push((name.into(), predict(&net.net, preview, &self.device)?));
        self.curves.push((name.into(), losses));
        self.rows.push(ResultRow {
            name: name.into(),
            metrics,
            params: net.net.spec().params() as u64,
            images,
            seconds: t.elapsed().as_secs_f64(),
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
                "depthling experiment --preset {}{} --out {}",
                self.preset,
                if self.cfg.quick { " --quick" } else { "" },
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

/// The LW paper's table: teacher, student_no_kd, kd_X, kd_U, kd_XU, kd_XU_labeled. X is a small
/// labeled indoor set, U the related `indoor-alt` domain (U′: with its labels); the teacher is
/// 12× the student.
fn lw(cfg: &ExperimentConfig) -> Result<Results> {
    let start = Instant::now();
    let b = Budget::labeled_and_aux(cfg.quick, 256);
    let device = Device::Cpu;
    let (w, h) = (b.width, b.height);
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    progress(
        cfg.quiet,
        &format!(
            "experiment lw: rendering {} indoor and {} indoor-alt images at {w}×{h}",
            b.target_train + b.target_test,
            b.aux_images
        ),
    );
    let (x, test) = target_sets(cfg, &b);
    let u = render_many(
        Domain::IndoorAlt,
        w,
        h,
        cfg.seed + 202,
        0,
        b.aux_images,
        false,
    );
    let train_cfg = |steps: usize, seed: u64| b.train_cfg(steps, seed);
    let mut table = Table::new(cfg, &test, b.batch_size, "lw");
    // the student at ≤ 10 % of the teacher, both small enough for a CPU run
    let (teacher_arch, teacher_width, student_width) = ("demo-teacher", 1.5, 0.75);

    let teacher = Net::new(preset(teacher_arch, teacher_width)?, &device, cfg.seed)?;
    table.supervised(
        "teacher",
        &teacher,
        &x,
        &train_cfg(b.teacher_steps, cfg.seed),
        "train-teacher --arch demo-teacher --width 1.5 on X",
    )?;
    // the X∪U′ setting's teacher also learns the auxiliary labels (not a row of its own)
    // balanced like the students' sets (X repeated to about U's size)
    let xu = crate::distill::balanced([x.as_slice(), u.as_slice()]);
    let teacher_xu = Net::new(preset(teacher_arch, teacher_width)?, &device, cfg.seed)?;
    train(
        &teacher_xu,
        &xu,
        Target::Labels,
        &train_cfg(b.teacher_steps, cfg.seed),
        table.bar("teacher on X∪U′", b.teacher_steps),
    )?;
    let teachers = [teacher, teacher_xu];

    let student = || {
        Net::new(
            preset("demo-student", student_width)?,
            &device,
            cfg.seed + 1,
        )
    };
    table.supervised(
        "student_no_kd",
        &student()?,
        &x,
        &train_cfg(b.student_steps, cfg.seed + 1),
        "train-teacher --arch demo-student --width 0.75 on X (no teacher)",
    )?;
    let none: &[Sample] = &[];
    // (name, labeled sets, unlabeled, teacher index, setting)
    type AuxRow<'s> = (
        &'static str,
        Vec<&'s [Sample]>,
        &'s [Sample],
        usize,
        &'static str,
    );
    let rows: [AuxRow; 4] = [
        (
            "kd_X",
            vec![&x],
            none,
            0,
            "distill --method aux --labeled X",
        ),
        ("kd_U", vec![], &u, 0, "distill --method aux --images U"),
        (
            "kd_XU",
            vec![&x],
            &u,
            0,
            "distill --method aux --labeled X --images U",
        ),
        (
            "kd_XU_labeled",
            vec![&x, &u],
            none,
            1,
            "distill --method aux --labeled X --labeled U′ (teacher trained on X∪U′)",
        ),
    ];
    for (name, labeled, unlabeled, teacher, setting) in rows {
        let s = student()?;
        let sc = train_cfg(b.student_steps, cfg.seed + 1);
        let images = labeled.iter().map(|l| l.len()).sum::<usize>() + unlabeled.len();
        table.row(name, &s, images, setting, b.student_steps, |bar| {
            crate::distill::aux(
                &s,
                &teachers[teacher].net,
                &labeled,
                unlabeled,
                &sc,
                1.0,
                bar,
            )
        })?;
    }

    let setup = format!(
        "Simulated indoor target domain at {w}×{h}: X = {} labeled indoor images, U = {} images of the related `indoor-alt` domain (rooms in another style; U′ = the same with labels), {} held-out indoor images (NYU protocol); sets are balanced (X repeated to about U's size). Teacher `demo-teacher` at width 1.5 ({} steps), student `demo-student` at width 0.75; every student row {} steps of batch {}, KD weight 1.",
        b.target_train, b.aux_images, b.target_test, b.teacher_steps, b.student_steps, b.batch_size
    );
    let (mut results, previews, curves) = table.finish(b, setup, start);
    let rmse = |n: &str| results.rmse(n);
    let (none_, kx, kxu, kxul) = (
        rmse("student_no_kd"),
        rmse("kd_X"),
        rmse("kd_XU"),
        rmse("kd_XU_labeled"),
    );
    let params = |n: &str| {
        results
            .rows
            .iter()
            .find(|r| r.name == n)
            .map_or(0, |r| r.params)
    };
    let (pt, ps) = (params("teacher"), params("kd_X"));
    results.claims = vec![
        Claim {
            claim: "`kd_XU` < `kd_X` < `student_no_kd` (RMSE)".into(),
            holds: kxu < kx && kx < none_,
            numbers: format!("{kxu:.4} < {kx:.4} < {none_:.4}"),
        },
        Claim {
            claim: "`kd_XU_labeled` at least as good as `kd_XU`".into(),
            holds: kxul <= kxu,
            numbers: format!("{kxul:.4} vs {kxu:.4}"),
        },
        Claim {
            claim: "the student has ≤ 10 % of the teacher's parameters".into(),
            holds: ps as f64 <= 0.1 * pt as f64,
            numbers: format!(
                "{ps} vs {pt} ({:.1} %)",
                100.0 * ps as f64 / pt.max(1) as f64
            ),
        },
    ];
    write_results(&cfg.out, &results)?;
    write_report(
        &cfg.out,
        &results,
        &test,
        &previews,
        &curves,
        &["teacher", "student_no_kd", "kd_XU"],
    )?;
    Ok(results)
}

/// ADU-Depth's table on the outdoor domain: stereo_teacher, mono_teacher (same network on the
/// left image only), student_no_kd, kd_mono (ground truth + plain KD from the monocular teacher),
/// adu_response, adu_feature and adu (ground truth + ADU's terms from the stereo teacher). The
/// teachers learn the labeled pairs X; the students also see the unlabeled pairs U.
fn adu(cfg: &ExperimentConfig) -> Result<Results> {
    use crate::adu::AduOptions;
    let start = Instant::now();
    let b = Budget::labeled_and_aux(cfg.quick, 512);
    let device = Device::Cpu;
    let (w, h) = (b.width, b.height);
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    progress(
        cfg.quiet,
        &format!(
            "experiment adu: rendering {} outdoor stereo pairs at {w}×{h}",
            b.target_train + b.aux_images + b.target_test
        ),
    );
    let outdoor = |seed: u64, n: usize| render_many(Domain::Outdoor, w, h, seed, 0, n, true);
    let x = outdoor(cfg.seed + 303, b.target_train);
    let u = outdoor(cfg.seed + 304, b.aux_images);
    let test = outdoor(cfg.seed ^ 0x7E57, b.target_test);
    let train_cfg = |steps: usize, seed: u64| b.train_cfg(steps, seed);
    let mut table = Table::new(cfg, &test, b.batch_size, "adu");
    table.protocol = Protocol::Kitti;

    let stereo = Net::new(preset("demo-teacher-stereo", 1.0)?, &device, cfg.seed)?;
    table.supervised(
        "stereo_teacher",
        &stereo,
        &x,
        &train_cfg(b.teacher_steps, cfg.seed),
        "train-teacher --arch demo-teacher --stereo on X",
    )?;
    let mono = Net::new(preset("demo-teacher", 1.0)?, &device, cfg.seed)?;
    table.supervised(
        "mono_teacher",
        &mono,
        &x,
        &train_cfg(b.teacher_steps, cfg.seed),
        "train-teacher --arch demo-teacher on X (left images)",
    )?;
    let student = || Net::new(preset("demo-student", 1.0)?, &device, cfg.seed + 1);
    table.supervised(
        "student_no_kd",
        &student()?,
        &x,
        &train_cfg(b.student_steps, cfg.seed + 1),
        "train-teacher --arch demo-student on X (no teacher)",
    )?;
    let sc = train_cfg(b.student_steps, cfg.seed + 1);
    let images = x.len() + u.len();
    let s = student()?;
    table.row(
        "kd_mono",
        &s,
        images,
        "distill --method aux --teacher mono --labeled X --images U",
        b.student_steps,
        |bar| crate::distill::aux(&s, &mono.net, &[&x], &u, &sc, 1.0, bar),
    )?;
    let full = AduOptions::default();
    let defaults = full.clone();
    let rows = [
        (
            "adu_response",
            AduOptions {
                feature: false,
                ..full.clone()
            },
            "distill --method adu --no-feature",
        ),
        (
            "adu_feature",
            AduOptions {
                response: false,
                ..full.clone()
            },
            "distill --method adu --no-response",
        ),
        ("adu", full, "distill --method adu"),
    ];
    for (name, options, setting) in rows {
        let s = student()?;
        table.row(
            name,
            &s,
            images,
            &format!("{setting} --teacher stereo --labeled X --images U"),
            b.student_steps,
            |bar| crate::adu::adu(&s, &stereo.net, &[&x], &u, &sc, &options, bar),
        )?;
    }

    let setup = format!(
        "Simulated outdoor domain at {w}×{h} (stereo baseline 0.54 m): X = {} labeled stereo pairs, U = {} unlabeled stereo pairs, {} held-out pairs (KITTI protocol, 80 m cap); sets are balanced (X repeated to about U's size). Teachers `demo-teacher` (stereo: left and right stacked into 6 channels; mono: left only), {} steps on X; student `demo-student`, every student row {} steps of batch {}; ADU γ = {}, response weight {}, feature weight {}.",
        b.target_train,
        b.aux_images,
        b.target_test,
        b.teacher_steps,
        b.student_steps,
        b.batch_size,
        defaults.gamma,
        defaults.response_weight,
        defaults.feature_weight,
    );
    let (mut results, previews, curves) = table.finish(b, setup, start);
    let rmse = |n: &str| results.rmse(n);
    let (st, mt, kd, full) = (
        rmse("stereo_teacher"),
        rmse("mono_teacher"),
        rmse("kd_mono"),
        rmse("adu"),
    );
    results.claims = vec![
        Claim {
            claim: "`stereo_teacher` better than `mono_teacher` (RMSE)".into(),
            holds: st < mt,
            numbers: format!("{st:.4} vs {mt:.4}"),
        },
        Claim {
            claim: "`adu` better than `kd_mono` (RMSE)".into(),
            holds: full < kd,
            numbers: format!("{full:.4} vs {kd:.4}"),
        },
    ];
    write_results(&cfg.out, &results)?;
    write_report(
        &cfg.out,
        &results,
        &test,
        &previews,
        &curves,
        &["stereo_teacher", "kd_mono", "adu"],
    )?;
    Ok(results)
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
