//! `depthling simulate`: renders a simulated RGB-D dataset folder.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::{parse_arg, Size};
use crate::data::{png, write_dataset, Sample};
use crate::error::{Error, Result};
use crate::sim::{render_many, Domain};

/// Settings of `depthling simulate`.
#[derive(Clone, Debug, clap::Args)]
pub struct SimulateConfig {
    /// indoor (the target stand-in), indoor-alt (rooms in another style: auxiliary data),
    /// outdoor, or ood (random primitives with instance masks, for data-free KD).
    #[arg(long, value_parser = parse_arg::<Domain>)]
    pub domain: Domain,
    #[arg(long)]
    pub count: usize,
    #[arg(long, default_value = "128x96", value_parser = parse_arg::<Size>)]
    pub size: Size,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also render the right view of a stereo pair.
    #[arg(long)]
    pub stereo: bool,
    /// Also write preview.png: RGB beside colourised depth for the first images.
    #[arg(long)]
    pub preview: bool,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(skip)]
    pub quiet: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct SimulateSummary {
    pub domain: String,
    pub count: usize,
    pub width: usize,
    pub height: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    pub out: PathBuf,
}

impl std::fmt::Display for SimulateSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} images at {}×{} in {:.1}s ({:.0} images/s) → {}",
            self.count,
            self.domain,
            self.width,
            self.height,
            self.seconds,
            self.images_per_second,
            self.out.display()
        )
    }
}

/// Renders a dataset folder (and optionally `preview.png`, a contact sheet of RGB beside
/// colourised depth).
pub fn simulate(cfg: &SimulateConfig) -> Result<SimulateSummary> {
    if cfg.count == 0 {
        return Err(Error::Usage("--count must be at least 1".into()));
    }
    let Size { width, height } = cfg.size;
    let start = Instant::now();
    let mut samples: Vec<Sample> = Vec::with_capacity(cfg.count);
    let chunk = 64;
    let mut done = 0;
    let mut bar = crate::progress::Progress::new(
        cfg.quiet,
        &format!("simulate {}", cfg.domain.name()),
        cfg.count,
        "img",
    );
    while done < cfg.count {
        let n = chunk.min(cfg.count - done);
        samples.extend(render_many(
            cfg.domain,
            width,
            height,
            cfg.seed,
            done as u64,
            n,
            cfg.stereo,
        ));
        done += n;
        bar.advance(n, None);
    }
    let seconds = start.elapsed().as_secs_f64();
    bar.finish(&format!(
        "{} images at {}×{} ({:.0} img/s)",
        cfg.count,
        width,
        height,
        cfg.count as f64 / seconds.max(1e-9)
    ));
    let manifest = crate::sim::manifest(cfg.domain, width, height, cfg.count, cfg.seed, cfg.stereo);
    write_dataset(&cfg.out, &manifest, &samples)?;
    if cfg.preview {
        let sheet = contact_sheet(&samples[..samples.len().min(8)]);
        png::write_rgb(&cfg.out.join("preview.png"), sheet.0, sheet.1, &sheet.2)?;
    }
    Ok(SimulateSummary {
        domain: cfg.domain.name().into(),
        count: cfg.count,
        width,
        height,
        seconds,
        images_per_second: cfg.count as f64 / seconds.max(1e-9),
        out: cfg.out.clone(),
    })
}

/// Rows of `RGB | colourised depth`, one per sample.
pub fn contact_sheet(samples: &[Sample]) -> (usize, usize, Vec<u8>) {
    let Some(first) = samples.first() else {
        return (1, 1, vec![0, 0, 0]);
    };
    let (w, h) = (first.width, first.height);
    let (sw, sh) = (2 * w + 4, samples.len() * (h + 4));
    let mut sheet = vec![255u8; sw * sh * 3];
    for (row, s) in samples.iter().enumerate() {
        let (lo, hi) = png::depth_range(&s.depth);
        let colour = png::colorize_depth(&s.depth, lo, hi);
        for (col, img) in [&s.rgb, &colour].into_iter().enumerate() {
            for y in 0..h {
                let dst = ((row * (h + 4) + y) * sw + col * (w + 4)) * 3;
                sheet[dst..dst + w * 3].copy_from_slice(&img[y * w * 3..(y + 1) * w * 3]);
            }
        }
    }
    (sw, sh, sheet)
}
