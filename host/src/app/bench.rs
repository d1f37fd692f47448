//! `depthling bench`: throughput figures, measured in one run, printed as JSON.

use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::sim::{render_many, Domain};

/// Images per second of one domain at one size.
#[derive(Clone, Debug, Serialize)]
pub struct SimFigure {
    pub domain: String,
    pub width: usize,
    pub height: usize,
    pub images: usize,
    pub seconds: f64,
    pub images_per_second: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SimBench {
    pub threads: usize,
    pub results: Vec<SimFigure>,
}

/// Renders each domain at 128×96 and 304×228 with all threads (rayon across images), after one
/// warm-up batch, for at least `min_seconds` each.
pub fn sim(min_seconds: f64) -> Result<SimBench> {
    let mut results = Vec::new();
    for (width, height) in [(128, 96), (304, 228)] {
        for domain in [Domain::Indoor, Domain::Outdoor, Domain::Ood] {
            render_many(domain, width, height, 99, 0, 4, false);
            let start = Instant::now();
            let mut images = 0;
            let batch = if width > 200 { 8 } else { 32 };
            while images == 0 || start.elapsed().as_secs_f64() < min_seconds {
                render_many(domain, width, height, 7, images as u64, batch, false);
                images += batch;
            }
            let seconds = start.elapsed().as_secs_f64();
            results.push(SimFigure {
                domain: domain.name().into(),
                width,
                height,
                images,
                seconds,
                images_per_second: images as f64 / seconds,
            });
        }
    }
    Ok(SimBench {
        threads: rayon::current_num_threads(),
        results,
    })
}

/// One training-step timing.
#[derive(Clone, Debug, Serialize)]
pub struct TrainFigure {
    pub arch: String,
    pub params: usize,
    pub custom_ops: bool,
    pub width: usize,
    pub height: usize,
    pub batch: usize,
    pub step_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TrainBench {
    pub threads: usize,
    pub results: Vec<TrainFigure>,
    /// mbv2-mff student step time without / with the custom ops (absent when `--arch` timed
    /// one architecture with the custom ops only).
    pub student_speedup: Option<f64>,
}

/// Architectures timed by `bench train`: the LW student, the microcontroller student, the demo's
/// teacher and a half-width ResNet-18 teacher.
pub const TRAIN_ARCHS: [(&str, f32); 4] = [
    ("mbv2-mff", 1.0),
    ("micro", 1.0),
    ("demo-teacher", 1.0),
    ("resnet18-mff", 0.5),
];

/// Steps run before `bench train` starts its clock, as in `bench/pytorch_reference.py`.
const TRAIN_WARM_UP: usize = 2;

/// Training-step time (forward, loss, backward, Adam update) on simulated indoor images, batch 8,
/// with and without the custom convolution ops (dense im2col/gemm and depthwise; bilinear
/// upsampling always uses ours: candle's has no backward). With `only`, one architecture (at
/// width 1) with the custom ops only: the quick figure to set beside PyTorch's step.
pub fn train(width: usize, height: usize, steps: usize, only: Option<&str>) -> Result<TrainBench> {
    use crate::nets::{preset, Net};
    use crate::train::{train as train_steps, Supervised, TrainConfig};
    let device = candle_core::Device::Cpu;
    let (archs, modes): (Vec<(&str, f32)>, &[bool]) = match only {
        Some(arch) => {
            preset(arch, 1.0)?; // an unknown name fails before any rendering
            (vec![(arch, 1.0)], &[true])
        }
        None => (TRAIN_ARCHS.to_vec(), &[false, true]),
    };
    let data = render_many(Domain::Indoor, width, height, 5, 0, 16, false);
    let mut results = Vec::new();
    for (arch, width_mult) in archs {
        for &custom_ops in modes {
            let spec = preset(arch, width_mult)?;
            let params = spec.params();
            let mut net = Net::new(spec, &device, 0)?;
            net.net.set_custom_ops(custom_ops);
            // Like bench/pytorch_reference.py: one run, the clock starts after the warm-up steps
            // (the first steps also pay for touching fresh memory).
            let cfg = TrainConfig {
                steps: TRAIN_WARM_UP + steps,
                batch_size: 8,
                ..TrainConfig::default()
            };
            let mut start = Instant::now();
            train_steps(&net, &data, &mut Supervised, &cfg, |info| {
                if info.step + 1 == TRAIN_WARM_UP {
                    start = Instant::now();
                }
            })?;
            let step_ms = 1e3 * start.elapsed().as_secs_f64() / steps as f64;
            eprintln!(
                "bench train: {arch}@{width_mult}, custom ops {}: {step_ms:.0} ms/step",
                if custom_ops { "on" } else { "off" }
            );
            results.push(TrainFigure {
                arch: format!("{arch}@{width_mult}"),
                params,
                custom_ops,
                width,
                height,
                batch: 8,
                step_ms,
            });
        }
    }
    let speedup = match &results[..] {
        [off, on, ..] if !off.custom_ops && on.custom_ops => Some(off.step_ms / on.step_ms),
        _ => None,
    };
    Ok(TrainBench {
        threads: rayon::current_num_threads(),
        results,
        student_speedup: speedup,
    })
}

/// `bench teacher`: one teacher built natively and the same network exported to ONNX and
/// imported, forward and backward (to the input, as DDD's transformation network needs).
#[derive(Clone, Debug, Serialize)]
pub struct TeacherBench {
    pub arch: String,
    pub width: usize,
    pub height: usize,
    pub batch: usize,
    /// Median of `rounds` interleaved passes each.
    pub native_ms: f64,
    pub imported_ms: f64,
    /// imported / native.
    pub ratio: f64,
    pub rounds: usize,
}

/// Forward + backward through `resnet18-mff` (width `width_mult`) at `width × height`, batch 8,
/// native against its ONNX export imported (BatchNorm folded by the export), interleaved.
pub fn teacher(
    width: usize,
    height: usize,
    width_mult: f32,
    rounds: usize,
) -> Result<TeacherBench> {
    use crate::nets::{preset, Net};
    use crate::teacher::onnx::{OnnxTeacher, TeacherOptions};
    use crate::teacher::Teacher;
    let device = candle_core::Device::Cpu;
    let net = Net::new(preset("resnet18-mff", width_mult)?, &device, 0)?;
    let bytes = crate::onnx::export(&net.net, width, height)?;
    let dir = std::env::temp_dir().join(format!("depthling-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join("resnet18-mff.onnx");
    crate::io::write_atomic(&path, &bytes)?;
    let imported = OnnxTeacher::load(&path, TeacherOptions::default(), (width, height), &device);
    let _ = std::fs::remove_dir_all(&dir);
    let imported = imported?;
    let data = render_many(Domain::Indoor, width, height, 5, 0, 8, false);
    let x = crate::data::batch::input_tensor(&data, 3, &device)?;
    let pass = |t: &dyn Teacher| -> Result<f64> {
        let v = candle_core::Var::from_tensor(&x)?;
        let start = Instant::now();
        let y = t.predict(v.as_tensor())?;
        let g = y.sum_all()?.backward()?;
        let _ = g.get(v.as_tensor());
        Ok(1e3 * start.elapsed().as_secs_f64())
    };
    pass(&net.net)?;
    pass(&imported)?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        a.push(pass(&net.net)?);
        b.push(pass(&imported)?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (native_ms, imported_ms) = (median(&mut a), median(&mut b));
    Ok(TeacherBench {
        arch: format!("resnet18-mff@{width_mult}"),
        width,
        height,
        batch: 8,
        native_ms,
        imported_ms,
        ratio: imported_ms / native_ms,
        rounds,
    })
}

/// `bench infer`: the int8 engine on the demo student at 128×96, one thread.
#[derive(Clone, Debug, Serialize)]
pub struct InferBench {
    pub int8_ms: f64,
    pub int8_reference_ms: f64,
    /// The kernel table the engine picks on this machine (`int8_ms`).
    pub kernels: String,
    /// The median of every kernel table this build and CPU can run, by name.
    pub int8_ms_by_kernels: std::collections::BTreeMap<String, f64>,
    /// `--threads`, and the default table's median with that many threads.
    pub threads: usize,
    pub int8_threads_ms: f64,
    /// The same student's ONNX export through tract (f32), same frame, one thread.
    pub tract_ms: f64,
    /// `tract_ms / int8_ms`.
    pub int8_speedup_over_tract: f64,
    pub arena_bytes: u64,
    pub macs: u64,
    pub params: u64,
    pub width: usize,
    pub height: usize,
}

/// Times the int8 engine (optimized and reference kernels) on the demo student, quantized from
/// seeded weights and calibrated on simulated OOD images, and tract on the student's ONNX export,
/// on one core with the same input.
pub fn infer(width: usize, height: usize, runs: usize, threads: usize) -> Result<InferBench> {
    use crate::nets::{preset, Net};
    use crate::quant::{quantize, Calibration, Provenance};
    use depthling_device::{Engine, KernelSet, Kernels};
    let device = candle_core::Device::Cpu;
    let net = Net::new(preset("demo-student", 1.0)?, &device, 0)?;
    let calib = render_many(Domain::Ood, width, height, 3, 0, 8, false);
    let bytes = quantize(
        &net.net,
        &calib,
        Calibration::MinMax,
        &Provenance::default(),
        &device,
    )?;
    let model =
        depthling_model::Model::from_bytes(&bytes).map_err(|e| Error::Runtime(e.to_string()))?;
    let frame = calib[0].rgb.as_slice();
    let mut arena = vec![0u8; Engine::arena_needed(&model)?];
    let mut engine = Engine::new(&model, &mut arena)?;
    let int8_ms = median_ms(runs, || {
        engine.set_kernels(Kernels::Optimized);
        engine.run(frame).map(|_| ()).map_err(Error::from)
    })?;
    let int8_reference_ms = median_ms(runs, || {
        engine.set_kernels(Kernels::Reference);
        engine.run(frame).map(|_| ()).map_err(Error::from)
    })?;
    let mut int8_ms_by_kernels = std::collections::BTreeMap::new();
    for set in KernelSet::available() {
        engine.select_kernels(set);
        let ms = median_ms(runs, || engine.run(frame).map(|_| ()).map_err(Error::from))?;
        int8_ms_by_kernels.insert(set.name().to_string(), ms);
    }
    engine.select_kernels(KernelSet::detect());
    engine.set_threads(threads);
    let int8_threads_ms = median_ms(runs, || engine.run(frame).map(|_| ()).map_err(Error::from))?;
    engine.set_threads(1);
    let tract = depthling_device::tract::TractModel::from_bytes(&crate::onnx::export(
        &net.net, width, height,
    )?)
    .map_err(|e| Error::Runtime(format!("tract: {e}")))?;
    let tract_ms = median_ms(runs, || {
        tract
            .run(frame)
            .map(|_| ())
            .map_err(|e| Error::Runtime(format!("tract: {e}")))
    })?;
    Ok(InferBench {
        int8_ms,
        int8_reference_ms,
        kernels: KernelSet::detect().name().to_string(),
        int8_ms_by_kernels,
        threads,
        int8_threads_ms,
        tract_ms,
        int8_speedup_over_tract: tract_ms / int8_ms,
        arena_bytes: model.arena_bytes as u64,
        macs: model.macs(),
        params: model.params(),
        width,
        height,
    })
}

/// Median wall time of `runs` calls of `f` in milliseconds, after one warm-up call (the median
/// shrugs off the other tenants of a shared machine better than the mean).
fn median_ms(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        f()?;
        times.push(1e3 * start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Which benchmark `depthling bench` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    Sim,
    Train,
    Infer,
    /// An imported ONNX teacher against the same network built natively.
    Teacher,
}

impl std::str::FromStr for What {
    type Err = Error;

    fn from_str(s: &str) -> Result<What> {
        match s {
            "sim" => Ok(What::Sim),
            "train" => Ok(What::Train),
            "infer" => Ok(What::Infer),
            "teacher" => Ok(What::Teacher),
            other => Err(Error::Usage(format!(
                "unknown benchmark {other:?}; known: sim, train, infer, teacher"
            ))),
        }
    }
}

/// Settings of `depthling bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchConfig {
    /// sim, train, infer or teacher.
    #[arg(value_parser = super::parse_arg::<What>)]
    pub what: What,
    /// `bench train` only: time this architecture alone, with the custom ops (e.g. mbv2-mff,
    /// to set beside bench/pytorch_reference.py)
    #[arg(long)]
    pub arch: Option<String>,
    /// `bench infer` only: also time the engine with large convolutions split over this many
    /// threads (`int8_threads_ms`; the same bits as one thread)
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// Dispatches `depthling bench WHAT`; one JSON object.
pub fn bench(cfg: &BenchConfig) -> Result<serde_json::Value> {
    if cfg.threads != 1 && cfg.what != What::Infer {
        return Err(Error::Usage(
            "--threads only applies to `bench infer`".into(),
        ));
    }
    if cfg.threads == 0 {
        return Err(Error::Usage("--threads needs at least 1".into()));
    }
    run(cfg.what, cfg.arch.as_deref(), cfg.threads)
}

fn run(what: What, arch: Option<&str>, threads: usize) -> Result<serde_json::Value> {
    let json =
        |v: serde_json::Result<serde_json::Value>| v.map_err(|e| Error::Runtime(e.to_string()));
    if arch.is_some() && what != What::Train {
        return Err(Error::Usage(format!(
            "--arch only applies to `bench train`, not `bench {}`",
            format!("{what:?}").to_lowercase()
        )));
    }
    match what {
        What::Sim => json(serde_json::to_value(sim(2.0)?)),
        What::Train => json(serde_json::to_value(train(128, 96, 10, arch)?)),
        What::Infer => json(serde_json::to_value(infer(128, 96, 40, threads)?)),
        What::Teacher => json(serde_json::to_value(teacher(128, 96, 1.0, 7)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_with_one_arch_times_it_with_the_custom_ops_only() {
        let b = train(64, 48, 1, Some("micro")).unwrap();
        assert_eq!(b.results.len(), 1);
        let r = &b.results[0];
        assert_eq!(r.arch, "micro@1");
        assert!(r.custom_ops);
        assert!(r.params > 0 && r.step_ms > 0.0 && r.step_ms.is_finite());
        assert!(b.student_speedup.is_none());
    }

    #[test]
    fn bad_arch_requests_are_usage_errors() {
        assert!(matches!(
            train(32, 24, 1, Some("no-such-net")),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            run(What::Infer, Some("micro"), 1),
            Err(Error::Usage(_))
        ));
    }
}
