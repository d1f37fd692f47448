//! The `lw` preset: the LW paper's claims.

use std::time::Instant;

use candle_core::Device;

use super::{
    progress, target_sets, write_report, write_results, Budget, Claim, ExperimentConfig,
    PresetTeacher, Results, Table,
};
use crate::data::Sample;
use crate::error::{Error, Result};
use crate::nets::{preset, Net};
use crate::sim::{render_many, Domain};
use crate::train::{train, Supervised};

/// The LW paper's table: teacher, student_no_kd, kd_X, kd_U, kd_XU, kd_XU_labeled. X is a small
/// labeled indoor set, U the related `indoor-alt` domain (U′: with its labels); the teacher is
/// 12× the student.
pub(super) fn run(cfg: &ExperimentConfig) -> Result<Results> {
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
    let mut table = Table::new(cfg, &test, &b, "lw");
    // the student at ≤ 10 % of the teacher, both small enough for a CPU run
    let (teacher_arch, teacher_width, student_width) = ("demo-teacher", 1.5, 0.75);

    // the teacher on X: trained here, or given (`--teacher`)
    let teacher =
        PresetTeacher::trained_or_given(cfg, &mut table, "teacher", (w, h), 3, |table| {
            let t = Net::new(preset(teacher_arch, teacher_width)?, &device, cfg.seed)?;
            table.supervised(
                "teacher",
                &t,
                &x,
                &train_cfg(b.teacher_steps, cfg.seed),
                "train-teacher --arch demo-teacher --width 1.5 on X",
            )?;
            Ok(t)
        })?;
    // the X∪U′ setting's teacher also learns the auxiliary labels (not a row of its own)
    // balanced like the students' sets (X repeated to about U's size)
    let xu = crate::distill::balanced([x.as_slice(), u.as_slice()]);
    let teacher_xu = Net::new(preset(teacher_arch, teacher_width)?, &device, cfg.seed)?;
    table.trained(
        "teacher_xu",
        &teacher_xu,
        "train-teacher --arch demo-teacher --width 1.5 on X∪U′",
        b.teacher_steps,
        |bar| {
            train(
                &teacher_xu,
                &xu,
                &mut Supervised,
                &train_cfg(b.teacher_steps, cfg.seed),
                bar,
            )
        },
    )?;
    let teachers: [&dyn crate::teacher::Teacher; 2] = [teacher.teacher(), &teacher_xu.net];

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
            crate::distill::aux::aux(&s, teachers[teacher], &labeled, unlabeled, &sc, 1.0, bar)
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
