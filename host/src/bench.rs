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

/// Dispatches `depthling bench WHAT`.
pub fn run(what: &str) -> Result<serde_json::Value> {
    let json =
        |v: serde_json::Result<serde_json::Value>| v.map_err(|e| Error::Runtime(e.to_string()));
    match what {
        "sim" => json(serde_json::to_value(sim(2.0)?)),
        "train" | "infer" => Err(Error::NotAvailable(
            "this benchmark (arrives with the training and device releases)",
        )),
        other => Err(Error::Usage(format!(
            "unknown benchmark {other:?}; known: sim, train, infer"
        ))),
    }
}
