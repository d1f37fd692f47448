//! The HTML reports of `demo`, `eval --model --report` and `experiment`: one self-contained
//! `index.html` (inline style, no scripts, nothing fetched) with its PNGs beside it — sample grids,
//! charts drawn by [`crate::plot`], and tables.

use std::path::Path;

use crate::data::{png, Sample};
use crate::error::{Error, Result};
use crate::eval::EvalReport;
use crate::io::write_atomic;

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A whole page: title, inline style, body.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title>\
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}\
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}\
.ok{{color:#176117}}.no{{color:#a31515}}img{{max-width:100%}}</style></head><body>\n<h1>{t}</h1>\n{body}</body></html>\n",
        t = esc(title)
    )
}

/// One row of a metrics table.
pub struct MetricRow<'a> {
    pub name: &'a str,
    pub metrics: &'a EvalReport,
    pub params: Option<u64>,
}

/// The metrics table (AbsRel, SqRel, RMSE, RMSElog, δ1–3, and params where given).
pub fn metrics_table(rows: &[MetricRow<'_>]) -> String {
    let with_params = rows.iter().any(|r| r.params.is_some());
    let mut s = String::from(
        "<table><tr><th>model</th><th>AbsRel</th><th>SqRel</th><th>RMSE</th><th>RMSElog</th><th>δ1</th><th>δ2</th><th>δ3</th>",
    );
    if with_params {
        s += "<th>params</th>";
    }
    s += "</tr>\n";
    for r in rows {
        let m = r.metrics;
        s += &format!(
            "<tr><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td>",
            esc(r.name),
            m.abs_rel,
            m.sq_rel,
            m.rmse,
            m.rmse_log,
            m.delta1,
            m.delta2,
            m.delta3
        );
        if with_params {
            s += &format!(
                "<td>{}</td>",
                r.params.map_or("–".into(), |p| p.to_string())
            );
        }
        s += "</tr>\n";
    }
    s + "</table>\n"
}

/// The error column's colour scale: |error| at this share of the row's depth range is full red.
pub const ERROR_SCALE: f32 = 0.25;

/// How the sample grids' error column reads, for the pages' captions.
pub const ERROR_CAPTION: &str =
    "|error|: blue = 0, red ≥ a quarter of the row's depth range, black = no ground truth";

/// Writes a sample grid to `path`: one row per sample (up to `max_rows`), columns RGB | ground
/// truth | each of `preds` | |error| of the last prediction ([`ERROR_CAPTION`]). Depths share the
/// ground truth's colour range per row (near = red, far = blue). Returns the sheet's width in
/// pixels.
pub fn sample_sheet(
    path: &Path,
    samples: &[Sample],
    preds: &[&[Vec<f32>]],
    max_rows: usize,
) -> Result<usize> {
    let Some(first) = samples.first() else {
        return Err(Error::Runtime("no samples for the report".into()));
    };
    let (w, h) = (first.width, first.height);
    let n = samples.len().min(max_rows);
    let cols = preds.len() + 3;
    let (sw, sh) = (cols * (w + 2), n * (h + 2));
    let mut sheet = vec![255u8; sw * sh * 3];
    for (row, s) in samples.iter().take(n).enumerate() {
        let (lo, hi) = png::depth_range(&s.depth);
        let mut tiles = vec![s.rgb.clone(), png::colorize_depth(&s.depth, lo, hi)];
        for p in preds {
            let p = p
                .get(row)
                .ok_or_else(|| Error::Runtime(format!("report: no prediction for sample {row}")))?;
            tiles.push(png::colorize_depth(p, lo, hi));
        }
        // |error| on turbo from 0 (dark blue) to a quarter of the row's depth range (dark red)
        let scale = ERROR_SCALE * (hi - lo).max(1e-3);
        let last = preds.last().and_then(|p| p.get(row));
        let error: Vec<u8> = s
            .depth
            .iter()
            .enumerate()
            .flat_map(|(i, &g)| match last {
                Some(p) if g > 0.0 => png::turbo(((p[i] - g).abs() / scale).min(1.0)),
                _ => [0, 0, 0],
            })
            .collect();
        tiles.push(error);
        for (col, tile) in tiles.iter().enumerate() {
            for y in 0..h {
                let dst = ((row * (h + 2) + y) * sw + col * (w + 2)) * 3;
                sheet[dst..dst + w * 3].copy_from_slice(&tile[y * w * 3..(y + 1) * w * 3]);
            }
        }
    }
    png::write_rgb(path, sw, sh, &sheet)?;
    Ok(sw)
}

/// Mean |prediction − ground truth| per ground-truth depth bin: `bins` equal bins over the
/// valid depths' range. Returns `(bin labels, mean error in metres)`; empty bins report 0.
pub fn error_by_depth(
    samples: &[Sample],
    preds: &[Vec<f32>],
    bins: usize,
) -> (Vec<String>, Vec<f64>) {
    let valid = samples
        .iter()
        .flat_map(|s| s.depth.iter())
        .filter(|&&g| g > 0.0);
    let lo = valid.clone().fold(f32::INFINITY, |m, &g| m.min(g));
    let hi = valid.fold(0f32, |m, &g| m.max(g));
    if !lo.is_finite() || hi <= lo || bins == 0 {
        return (Vec::new(), Vec::new());
    }
    let width = (hi - lo) / bins as f32;
    let mut sum = vec![0f64; bins];
    let mut count = vec![0u64; bins];
    for (s, p) in samples.iter().zip(preds) {
        for (&g, &d) in s.depth.iter().zip(p) {
            if g > 0.0 {
                let b = (((g - lo) / width) as usize).min(bins - 1);
                sum[b] += (d - g).abs() as f64;
                count[b] += 1;
            }
        }
    }
    let labels = (0..bins)
        .map(|b| {
            format!(
                "{:.1}-{:.1} m",
                lo + b as f32 * width,
                lo + (b + 1) as f32 * width
            )
        })
        .collect();
    let means = sum
        .iter()
        .zip(&count)
        .map(|(s, &c)| if c > 0 { s / c as f64 } else { 0.0 })
        .collect();
    (labels, means)
}

/// Writes `index.html` into `dir` (created) from `body`.
pub fn write_page(dir: &Path, title: &str, body: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_atomic(&dir.join("index.html"), page(title, body).as_bytes())
}

/// The `<img>` of a sample sheet `sheet_width` pixels wide, shown at twice its size.
pub fn sheet_img(file: &str, sheet_width: usize) -> String {
    format!(
        "<img src=\"{file}\" style=\"image-rendering:pixelated;width:{}px\">",
        sheet_width * 2
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(depth: Vec<f32>) -> Sample {
        Sample {
            width: depth.len(),
            height: 1,
            rgb: vec![0; depth.len() * 3],
            depth,
            instance: None,
            right: None,
        }
    }

    #[test]
    fn error_by_depth_bins_the_ground_truth() {
        // depths 1..=4 m in two bins [1, 2.5) and [2.5, 4]; 0 is invalid and ignored
        let s = sample(vec![1.0, 2.0, 3.0, 4.0, 0.0]);
        let p = vec![vec![1.5, 2.0, 3.0, 5.0, 9.0]];
        let (labels, means) = error_by_depth(&[s], &p, 2);
        assert_eq!(labels, ["1.0-2.5 m", "2.5-4.0 m"]);
        assert_eq!(means, [0.25, 0.5]);
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(esc("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
        assert!(page("x<y", "").contains("<title>x&lt;y</title>"));
    }

    #[test]
    fn sample_sheet_has_one_column_per_prediction_plus_three() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample(vec![1.0, 2.0]);
        let p = vec![vec![1.0, 2.0]];
        let w = sample_sheet(&dir.path().join("s.png"), &[s], &[&p, &p], 6).unwrap();
        assert_eq!(w, 5 * (2 + 2));
        let img = image::open(dir.path().join("s.png")).unwrap();
        assert_eq!((img.width(), img.height()), (20, 3));
    }
}
