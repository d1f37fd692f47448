//! Small PNG charts for the reports: line charts (loss curves) and grouped bar charts (metrics),
//! drawn on an RGB canvas with the public-domain 8×8 font of `font8x8` (no system fonts needed).

use std::path::Path;

use crate::data::png;
use crate::error::Result;

pub type Rgb = [u8; 3];

/// Colours of series, in order (colour-blind-safe Okabe–Ito, with grey for its black).
pub const PALETTE: [Rgb; 8] = [
    [0, 114, 178],
    [230, 159, 0],
    [0, 158, 115],
    [204, 121, 167],
    [86, 180, 233],
    [213, 94, 0],
    [110, 110, 110],
    [240, 228, 66],
];

const BLACK: Rgb = [30, 30, 30];
const GRID: Rgb = [225, 225, 225];

/// An RGB image to draw on.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize) -> Canvas {
        Canvas {
            width,
            height,
            rgb: vec![255; width * height * 3],
        }
    }

    fn put(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    pub fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for y in y0.min(y1)..y0.max(y1) {
            for x in x0.min(x1)..x0.max(x1) {
                self.put(x, y, c);
            }
        }
    }

    /// A line `thickness` pixels wide (Bresenham, thickened with a square brush).
    pub fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: Rgb, thickness: i64) {
        let (mut x, mut y) = (x0.round() as i64, y0.round() as i64);
        let (xe, ye) = (x1.round() as i64, y1.round() as i64);
        let (dx, dy) = ((xe - x).abs(), -(ye - y).abs());
        let (sx, sy) = (if x < xe { 1 } else { -1 }, if y < ye { 1 } else { -1 });
        let mut err = dx + dy;
        let r = thickness / 2;
        loop {
            self.fill_rect(x - r, y - r, x - r + thickness, y - r + thickness, c);
            if x == xe && y == ye {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text with its top-left corner at `(x, y)`, 8×8 glyphs scaled by `scale`.
    pub fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        for (i, ch) in s.chars().enumerate() {
            let glyph = glyph(ch);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 1 {
                        let (px, py) = (x + (i as i64 * 8 + col) * scale, y + row as i64 * scale);
                        self.fill_rect(px, py, px + scale, py + scale, c);
                    }
                }
            }
        }
    }

    pub fn text_width(s: &str, scale: i64) -> i64 {
        s.chars().count() as i64 * 8 * scale
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        png::write_rgb(path, self.width, self.height, &self.rgb)
    }
}

fn glyph(c: char) -> [u8; 8] {
    let code = c as u32;
    match c {
        'δ' => font8x8::legacy::GREEK_LEGACY[(code - 0x390) as usize],
        '×' => font8x8::legacy::LATIN_LEGACY[(code - 0xA0) as usize],
        _ if code < 128 => font8x8::legacy::BASIC_LEGACY[code as usize],
        _ => font8x8::legacy::BASIC_LEGACY[b'?' as usize],
    }
}

/// A short label for an axis value.
fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if a >= 10.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// "Nice" tick values covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= n as f64)
        .unwrap_or(10.0 * mag);
    let mut v = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while v <= hi + 1e-9 * span {
        out.push(v);
        v += step;
    }
    out
}

/// Plot area and the frame, title and legend common to both charts.
struct Frame {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

/// Colour of series `i`.
fn colour(i: usize) -> Rgb {
    PALETTE[i % PALETTE.len()]
}

/// A 720×400 canvas with the title, a legend of the series `names` in their colours, and the
/// plot area below them.
fn framed<'a>(title: &str, names: impl Iterator<Item = &'a str>) -> (Canvas, Frame) {
    let mut c = Canvas::new(720, 400);
    c.text(
        (c.width as i64 - Canvas::text_width(title, 2)) / 2,
        10,
        title,
        2,
        BLACK,
    );
    // the legend wraps onto more lines when the names do not fit on one
    let (mut x, mut y) = (70, 36);
    for (i, name) in names.enumerate() {
        let w = 18 + Canvas::text_width(name, 1) + 20;
        if x + w > c.width as i64 - 8 && x > 70 {
            (x, y) = (70, y + 14);
        }
        c.fill_rect(x, y, x + 14, y + 8, colour(i));
        c.text(x + 18, y, name, 1, BLACK);
        x += w;
    }
    let f = Frame {
        left: 64.0,
        right: c.width as f64 - 16.0,
        top: (y + 34) as f64,
        bottom: c.height as f64 - 40.0,
    };
    (c, f)
}

fn axes(c: &mut Canvas, f: &Frame, y_lo: f64, y_hi: f64, y_label: &str) -> impl Fn(f64) -> f64 {
    let (top, bottom) = (f.top, f.bottom);
    let to_y = move |v: f64| bottom - (v - y_lo) / (y_hi - y_lo).max(1e-12) * (bottom - top);
    for t in ticks(y_lo, y_hi, 5) {
        let y = to_y(t);
        c.line((f.left, y), (f.right, y), GRID, 1);
        let label = tick_label(t);
        c.text(
            f.left as i64 - 6 - Canvas::text_width(&label, 1),
            y as i64 - 4,
            &label,
            1,
            BLACK,
        );
    }
    c.line((f.left, f.top), (f.left, f.bottom), BLACK, 1);
    c.line((f.left, f.bottom), (f.right, f.bottom), BLACK, 1);
    c.text(6, f.top as i64 - 16, y_label, 1, BLACK);
    to_y
}

/// Line chart of several series against their index (e.g. loss per training step), each
/// smoothed by a centred moving average of `smooth` points.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, &[f32])],
    smooth: usize,
) -> Canvas {
    let (mut c, f) = framed(title, series.iter().map(|(n, _)| *n));
    let smoothed: Vec<Vec<f64>> = series
        .iter()
        .map(|(_, v)| {
            let h = smooth / 2;
            (0..v.len())
                .map(|i| {
                    let (a, b) = (i.saturating_sub(h), (i + h + 1).min(v.len()));
                    v[a..b].iter().map(|x| *x as f64).sum::<f64>() / (b - a) as f64
                })
                .filter(|x| x.is_finite())
                .collect()
        })
        .collect();
    let all = smoothed.iter().flatten();
    let hi = all.clone().fold(f64::NEG_INFINITY, |m, v| m.max(*v));
    let hi = if hi.is_finite() { hi * 1.05 } else { 1.0 };
    let to_y = axes(&mut c, &f, 0.0, hi, y_label);
    let n = smoothed.iter().map(Vec::len).max().unwrap_or(0).max(2);
    let to_x = |i: usize| f.left + i as f64 / (n - 1) as f64 * (f.right - f.left);
    for t in ticks(0.0, (n - 1) as f64, 6) {
        let x = to_x(t as usize);
        // x is an index (a step): whole numbers
        let label = if t >= 1000.0 {
            tick_label(t)
        } else {
            format!("{t:.0}")
        };
        c.text(
            x as i64 - Canvas::text_width(&label, 1) / 2,
            f.bottom as i64 + 6,
            &label,
            1,
            BLACK,
        );
    }
    c.text(
        (f.left + f.right) as i64 / 2 - Canvas::text_width(x_label, 1) / 2,
        c.height as i64 - 16,
        x_label,
        1,
        BLACK,
    );
    for (k, s) in smoothed.iter().enumerate() {
        let colour = colour(k);
        for (i, pair) in s.windows(2).enumerate() {
            c.line(
                (to_x(i), to_y(pair[0])),
                (to_x(i + 1), to_y(pair[1])),
                colour,
                2,
            );
        }
    }
    c
}

/// Grouped bar chart: one group per entry of `groups`, one bar per series, value on top.
pub fn bar_chart(
    title: &str,
    y_label: &str,
    groups: &[&str],
    series: &[(&str, Vec<f64>)],
) -> Canvas {
    let (mut c, f) = framed(title, series.iter().map(|(n, _)| *n));
    let hi = series
        .iter()
        .flat_map(|(_, v)| v.iter())
        .fold(0f64, |m, v| m.max(*v))
        .max(1e-9)
        * 1.15;
    let to_y = axes(&mut c, &f, 0.0, hi, y_label);
    let group_w = (f.right - f.left) / groups.len().max(1) as f64;
    let bar_w = group_w * 0.8 / series.len().max(1) as f64;
    for (g, name) in groups.iter().enumerate() {
        let gx = f.left + g as f64 * group_w + group_w * 0.1;
        for (k, (_, values)) in series.iter().enumerate() {
            let Some(&v) = values.get(g) else { continue };
            let x0 = gx + k as f64 * bar_w;
            let colour = colour(k);
            c.fill_rect(
                x0 as i64 + 1,
                to_y(v) as i64,
                (x0 + bar_w) as i64 - 1,
                f.bottom as i64,
                colour,
            );
            let label = format!("{v:.3}");
            if (Canvas::text_width(&label, 1) as f64) > bar_w + 2.0 {
                // too narrow for its value: the report's table has the numbers
                continue;
            }
            c.text(
                (x0 + bar_w / 2.0) as i64 - Canvas::text_width(&label, 1) / 2,
                to_y(v) as i64 - 11,
                &label,
                1,
                BLACK,
            );
        }
        c.text(
            (gx + group_w * 0.4) as i64 - Canvas::text_width(name, 1) / 2,
            f.bottom as i64 + 8,
            name,
            1,
            BLACK,
        );
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ink(c: &Canvas, colour: Rgb) -> usize {
        c.rgb.chunks_exact(3).filter(|p| *p == colour).count()
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let t = ticks(0.0, 1.0, 5);
        let want = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
        assert_eq!(t.len(), want.len(), "{t:?}");
        assert!(
            t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-9),
            "{t:?}"
        );
        let t = ticks(0.0, 1499.0, 6);
        assert_eq!(t.first(), Some(&0.0));
        assert!(t.iter().all(|v| v % 250.0 == 0.0), "{t:?}");
    }

    #[test]
    fn bars_are_as_tall_as_their_values() {
        let c = bar_chart("t", "y", &["a"], &[("x", vec![1.0]), ("y", vec![0.5])]);
        // the second bar has half the height of the first: its tallest column, below the legend
        let height_of = |colour: Rgb| {
            (0..c.width)
                .map(|x| {
                    (50..c.height)
                        .filter(|&y| c.rgb[(y * c.width + x) * 3..][..3] == colour)
                        .count()
                })
                .max()
                .unwrap_or(0) as f64
        };
        let ratio = height_of(PALETTE[1]) / height_of(PALETTE[0]);
        assert!((ratio - 0.5).abs() < 0.03, "{ratio}");
    }

    #[test]
    fn line_chart_draws_each_series() {
        let a: Vec<f32> = (0..100).map(|i| 1.0 / (1.0 + i as f32)).collect();
        let b: Vec<f32> = (0..100)
            .map(|i| 0.5 + (i as f32 * 0.1).sin() * 0.1)
            .collect();
        let c = line_chart("loss", "step", "L1", &[("a", &a), ("b", &b)], 5);
        assert!(ink(&c, PALETTE[0]) > 200 && ink(&c, PALETTE[1]) > 200);
        let text = Canvas::new(100, 20);
        let mut t = text;
        t.text(0, 0, "δ1 AbsRel", 1, BLACK);
        assert!(ink(&t, BLACK) > 40, "glyphs are drawn");
    }
}
