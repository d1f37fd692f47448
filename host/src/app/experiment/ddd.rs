//! The `ddd` preset: the DDD paper's claims.

use std::time::Instant;

use candle_core::Device;

use super::{
    progress, target_sets, write_report, write_results, Budget, Claim, ExperimentConfig,
    PresetTeacher, Results, Table,
};
use crate::distill::{budget, distill, DddOptions};
use crate::error::{Error, Result};
use crate::nets::{preset, Net};
use crate::sim::{render_many, Domain};

/// DDD's table: teacher, student_gt, kd, ddd_mix, ddd_transform, ddd, kd_1of6, ddd_1of6.
pub(super) fn run(cfg: &ExperimentConfig) -> Result<Results> {
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
    let mut table = Table::new(cfg, &test, &b, "ddd");
    // the teacher: trained here on the target labels, or given (`--teacher`)
    let teacher =
        PresetTeacher::trained_or_given(cfg, &mut table, "teacher", (w, h), 3, |table| {
            let t = Net::new(preset("demo-teacher", 1.0)?, &device, cfg.seed)?;
            table.supervised(
                "teacher",
                &t,
                &target,
                &train_cfg(b.teacher_steps, cfg.seed),
                "train-teacher --arch demo-teacher on indoor labels",
            )?;
            Ok(t)
        })?;
    let teacher = teacher.teacher();

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
            distill(&s, teacher, &images, &sc, &options, bar)
        })?;
    }

    let setup = format!(
        "Simulated indoor target domain at {w}×{h}; {} labeled target images (teacher, `student_gt`), {} held-out target images (NYU protocol), {} unlabeled OOD images; {}, every student row {} steps of batch {}.",
        b.target_train,
        b.target_test,
        b.ood_images,
        match &cfg.teacher {
            None => format!("teacher {} steps", b.teacher_steps),
            Some(p) => format!("the given teacher `{}`", p.display()),
        },
        b.student_steps,
        b.batch_size
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
