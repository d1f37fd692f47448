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
    /// Unlabeled OOD images for distillation.
    pub ood_images: usize,
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
                teacher_steps: 1500,
                student_steps: 1500,
                batch_size: 8,
            }
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
        let b = &self.budget;
        let mut s = format!(
            "# `{}` preset\n\nReproduce: `{}`\n\nSimulated indoor target domain at {}×{}; {} labeled target images (teacher, `student_gt`), {} held-out target images (NYU protocol), {} unlabeled OOD images; teacher {} steps, every student row {} steps of batch {}. Wall time {:.0} s.\n\n",
            self.preset,
            self.command,
            b.width,
            b.height,
            b.target_train,
            b.target_test,
            b.ood_images,
            b.teacher_steps,
            b.student_steps,
            b.batch_size,
            self.wall_seconds
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

/// Runs `cfg.preset` and writes `results.json` and `results.md` into `cfg.out`.
pub fn run(cfg: &ExperimentConfig) -> Result<Results> {
    match cfg.preset.as_str() {
        "ddd" => ddd(cfg),
        "lw" | "adu" => Err(Error::NotAvailable(
            "this preset (arrives with the aux and adu methods)",
        )),
        other => Err(Error::Usage(format!(
            "unknown preset {other:?}; known: ddd, lw, adu"
        ))),
    }
}

fn eval(net: &Net, test: &[Sample], device: &Device) -> Result<EvalReport> {
    let preds = predict(&net.net, test, device)?;
    evaluate(&preds, test, &Protocol::Nyu.config())
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
    let target = render_many(Domain::Indoor, w, h, cfg.seed, 0, b.target_train, false);
    let test = render_many(
        Domain::Indoor,
        w,
        h,
        cfg.seed ^ 0x7E57,
        0,
        b.target_test,
        false,
    );
    let ood = render_many(Domain::Ood, w, h, cfg.seed + 101, 0, b.ood_images, false);
    let train_cfg = |steps: usize, seed: u64| TrainConfig {
        steps,
        batch_size: b.batch_size,
        seed,
        ..TrainConfig::default()
    };
    let mut rows = Vec::new();
    // predictions on the first test images (the report's sample grid) and losses, per row
    let preview = &test[..test.len().min(6)];
    let mut previews: Vec<(String, Vec<Vec<f32>>)> = Vec::new();
    let mut curves: Vec<(String, Vec<f32>)> = Vec::new();
    let bar = |name: &str, steps: usize| {
        training_progress(
            cfg.quiet,
            &format!("experiment ddd: {name}"),
            steps,
            b.batch_size,
        )
    };
    let mut row = |name: &str, net: &Net, images: usize, t: Instant, setting: String| {
        let metrics = eval(net, &test, &device)?;
        previews.push((name.into(), predict(&net.net, preview, &device)?));
        note(&format!(
            "{name}: RMSE {:.4}, δ1 {:.4} ({:.0} s)",
            metrics.rmse,
            metrics.delta1,
            t.elapsed().as_secs_f64()
        ));
        rows.push(ResultRow {
            name: name.into(),
            metrics,
            params: net.net.spec().params() as u64,
            images,
            seconds: t.elapsed().as_secs_f64(),
            setting,
        });
        Result::<()>::Ok(())
    };

    let t = Instant::now();
    let teacher = Net::new(preset("demo-teacher", 1.0)?, &device, cfg.seed)?;
    curves.push((
        "teacher".into(),
        train(
            &teacher,
            &target,
            Target::Labels,
            &train_cfg(b.teacher_steps, cfg.seed),
            bar("teacher", b.teacher_steps),
        )?,
    ));
    row(
        "teacher",
        &teacher,
        target.len(),
        t,
        "train-teacher --arch demo-teacher on indoor labels".into(),
    )?;

    let student = |seed: u64| Net::new(preset("demo-student", 1.0)?, &device, seed);
    let t = Instant::now();
    let gt = student(cfg.seed + 1)?;
    curves.push((
        "student_gt".into(),
        train(
            &gt,
            &target,
            Target::Labels,
            &train_cfg(b.student_steps, cfg.seed + 1),
            bar("student_gt", b.student_steps),
        )?,
    ));
    row(
        "student_gt",
        &gt,
        target.len(),
        t,
        "student on indoor labels (upper bound)".into(),
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
        let t = Instant::now();
        let images = budget(ood.clone(), fraction)?;
        // every student row starts from the same weights and sees the same number of steps
        let s = student(cfg.seed + 1)?;
        let losses = distill(
            &s,
            &teacher.net,
            &images,
            &train_cfg(b.student_steps, cfg.seed + 1),
            &options,
            bar(name, b.student_steps),
        )?;
        curves.push((name.into(), losses));
        row(name, &s, images.len(), t, setting.into())?;
    }

    let mut results = Results {
        preset: "ddd".into(),
        command: format!(
            "depthling experiment --preset ddd{} --out {}",
            if cfg.quick { " --quick" } else { "" },
            cfg.out.display()
        ),
        budget: b,
        rows,
        claims: Vec::new(),
        wall_seconds: start.elapsed().as_secs_f64(),
    };
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
    write_report(&cfg.out, &results, preview, &previews, &curves)?;
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
) -> Result<()> {
    use crate::report::{esc, metrics_table, sample_sheet, sheet_img, write_page, MetricRow};
    let dir = out.join("report");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let shown = ["teacher", "kd", "ddd"];
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
        "<p>Reproduce: <code>{cmd}</code> ({w}×{h}, wall time {wall:.0} s; the budget is in <code>results.json</code>).</p>\n\
<h2>Claims</h2>{claims}<h2>Results</h2>{table}{settings}\
<h2>Metrics</h2><img src=\"metrics.png\" width=\"720\">\n<h2>Training</h2><img src=\"loss.png\" width=\"720\">\n\
<h2>Samples</h2><p>RGB | ground truth | {cols} | error of {last} ({cap})</p>{img}\n",
        cmd = esc(&r.command),
        w = r.budget.width,
        h = r.budget.height,
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
