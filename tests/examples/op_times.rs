//! Per-op wall time of the int8 engine on this machine (one thread): the ops that take the
//! most time first, with their shapes, MACs and (convolutions) the kernel the plan chose. For finding where a network's time goes; the
//! comparison with other runtimes is `bench/infer_anchors.sh`.
//! Usage: op_times DIR [RUNS [TABLE]]   (DIR holds `model.dlm` and `frame.rgb`, as
//! `write_board_assets` writes them; TABLE a kernel table's name, e.g. `x86-avx2`, else the
//! fastest this CPU has)
use depthling_model::{Model, Op};
use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: op_times DIR [RUNS [TABLE]]")?,
    );
    let runs: usize = std::env::args().nth(2).map_or(Ok(200), |r| r.parse())?;
    let read = |name: &str| {
        std::fs::read(dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    let (model, frame) = (read("model.dlm")?, read("frame.rgb")?);
    let m = Model::from_bytes(&model).map_err(|e| format!("model.dlm: {e:?}"))?;
    let mut arena =
        vec![0u8; depthling_device::Engine::arena_needed(&m).map_err(|e| format!("{e:?}"))?];
    let mut engine = depthling_device::Engine::new(&m, &mut arena).map_err(|e| format!("{e:?}"))?;
    if let Some(name) = std::env::args().nth(3) {
        let set = depthling_device::KernelSet::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| format!("no kernel table {name}"))?;
        if !engine.select_kernels(set) {
            return Err(format!("kernel table {name} does not run on this CPU").into());
        }
    }
    let mut time = vec![0f64; m.ops.len()];
    // ten runs to warm up, then `runs` timed ones
    for r in 0..runs + 10 {
        let mut last = std::time::Instant::now();
        engine
            .run_observed(&frame, |i, _, _| {
                if r >= 10 {
                    time[i] += last.elapsed().as_secs_f64();
                }
                last = std::time::Instant::now();
            })
            .map_err(|e| format!("frame.rgb: {e:?}"))?;
    }
    let total: f64 = time.iter().sum();
    // a closed pipe (`| head`) ends the listing instead of panicking
    let mut stdout = std::io::stdout().lock();
    if writeln!(
        stdout,
        "total {:.3} ms per frame, table {}",
        1e3 * total / runs as f64,
        engine.kernel_set().name()
    )
    .is_err()
    {
        return Ok(());
    }
    let mut order: Vec<usize> = (0..time.len()).collect();
    order.sort_by(|&a, &b| time[b].total_cmp(&time[a]));
    for i in order {
        let what = match &m.ops[i] {
            Op::Conv2d(c) => {
                let (a, o) = (&m.tensors[c.input as usize], &m.tensors[c.output as usize]);
                let kind = if c.depthwise { "depthwise" } else { "conv" };
                format!(
                    "{kind} {k}x{k} s{s} {}x{}x{} -> {} [{}]",
                    a.height,
                    a.width,
                    a.channels,
                    o.channels,
                    engine.conv_kernel(i).map_or("?", |k| k.name()),
                    k = c.kernel,
                    s = c.stride
                )
            }
            Op::Add { .. } => "add".into(),
            Op::Concat { .. } => "concat".into(),
            Op::Upsample {
                input,
                mode,
                factor,
                ..
            } => {
                let a = &m.tensors[*input as usize];
                format!(
                    "upsample {mode:?} x{factor} {}x{}x{}",
                    a.height, a.width, a.channels
                )
            }
            Op::GlobalAvgPool { .. } => match engine.fused_ops(i) {
                0 => "pool".into(),
                n => format!("pool (squeeze-excitation: fused with the next {n} ops)"),
            },
            Op::Mul { .. } => "mul".into(),
            _ => "other".into(),
        };
        if writeln!(
            stdout,
            "op {i:3} {:8.4} ms {:5.1} % macs {:9} {what}",
            1e3 * time[i] / runs as f64,
            100.0 * time[i] / total,
            m.op_macs(i)
        )
        .is_err()
        {
            break;
        }
    }
    Ok(())
}
