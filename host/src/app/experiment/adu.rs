//! The `adu` preset: ADU-Depth's claims.

use std::time::Instant;

use candle_core::Device;
use depthling_metrics::Protocol;

use super::{
    progress, write_report, write_results, Budget, Claim, ExperimentConfig, PresetTeacher, Results,
    Table,
};
use crate::error::{Error, Result};
use crate::nets::{preset, Net};
use crate::sim::{render_many, Domain};

/// ADU-Depth's table on the outdoor domain: stereo_teacher, mono_teacher (same network on the
/// left image only), student_no_kd, kd_mono (ground truth + plain KD from the monocular teacher),
/// adu_response, adu_feature and adu (ground truth + ADU's terms from the stereo teacher). The
/// teachers learn the labeled pairs X; the students also see the unlabeled pairs U.
pub(super) fn run(cfg: &ExperimentConfig) -> Result<Results> {
    use crate::distill::adu::AduOptions;
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
    let mut table = Table::new(cfg, &test, &b, "adu");
    table.protocol = Protocol::Kitti;

    // the stereo teacher: trained here, or given (`--teacher`, 6 input channels)
    let stereo =
        PresetTeacher::trained_or_given(cfg, &mut table, "stereo_teacher", (w, h), 6, |table| {
            let t = Net::new(preset("demo-teacher-stereo", 1.0)?, &device, cfg.seed)?;
            table.supervised(
                "stereo_teacher",
                &t,
                &x,
                &train_cfg(b.teacher_steps, cfg.seed),
                "train-teacher --arch demo-teacher --stereo on X",
            )?;
            Ok(t)
        })?;
    let stereo = stereo.teacher();
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
        |bar| crate::distill::aux::aux(&s, &mono.net, &[&x], &u, &sc, 1.0, bar),
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
            |bar| crate::distill::adu::adu(&s, stereo, &[&x], &u, &sc, &options, bar),
        )?;
    }

    let setup = format!(
        "Simulated outdoor domain at {w}×{h} (stereo baseline {} m): X = {} labeled stereo pairs, U = {} unlabeled stereo pairs, {} held-out pairs (KITTI protocol, 80 m cap); sets are balanced (X repeated to about U's size). Teachers `demo-teacher` (stereo: left and right stacked into 6 channels; mono: left only), {} steps on X; student `demo-student`, every student row {} steps of batch {}; ADU γ = {}, response weight {}, feature weight {}.",
        Domain::Outdoor.baseline(),
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
