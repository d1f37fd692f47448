//! Arena budget of the demo student (as tflite-micro's arena tests do): the plan may not grow by
//! more than 3 %, and must stay close to the lower bound of any plan (the peak of simultaneously
//! live tensor bytes).

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use depthling_host::nets::{preset, Net};
use depthling_host::quant::{quantize, Calibration, Provenance};
use depthling_host::sim::{render_many, Domain};
use depthling_model::{lifetimes, Model};

/// Arena of the demo student at 64×48 when this budget was set (bytes).
const DEMO_STUDENT_64X48_ARENA: u64 = 61_440;

fn demo_student(width: usize, height: usize) -> Vec<u8> {
    let device = candle_core::Device::Cpu;
    let net = Net::new(preset("demo-student", 1.0).unwrap(), &device, 0).unwrap();
    let calib = render_many(Domain::Ood, width, height, 3, 0, 2, false);
    quantize(
        &net.net,
        &calib,
        Calibration::MinMax,
        &Provenance::default(),
        &device,
    )
    .unwrap()
}

/// The largest total size of tensors alive during one op: no plan can use less.
fn live_peak(m: &Model<'_>) -> u64 {
    let life = lifetimes(&m.tensors, &m.ops, m.input).unwrap();
    (0..m.ops.len() as u16)
        .map(|op| {
            m.tensors
                .iter()
                .zip(life.iter())
                .filter(|(_, l)| l.is_some_and(|(a, b)| a <= op && op <= b))
                .map(|(t, _)| t.size_bytes())
                .sum::<u64>()
        })
        .max()
        .unwrap()
}

#[test]
fn demo_student_arena_stays_within_budget() {
    let bytes = demo_student(64, 48);
    let m = Model::from_bytes(&bytes).unwrap();
    let arena = m.arena_bytes as u64;
    assert!(
        arena as f64 <= DEMO_STUDENT_64X48_ARENA as f64 * 1.03,
        "arena grew from {DEMO_STUDENT_64X48_ARENA} to {arena} bytes (> 3 %)"
    );
    let bound = live_peak(&m);
    assert!(
        arena >= bound,
        "plan {arena} below the live peak {bound}: overlapping tensors"
    );
    assert!(
        arena as f64 <= 1.25 * bound as f64,
        "greedy plan {arena} is far above the live peak {bound}"
    );
}
