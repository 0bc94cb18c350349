//! The plot: latency percentiles (p50 dashed-thin, p99 solid) against the
//! delivered rate, one colour per configuration and system, as a PNG.
//!
//! plotters' bitmap backend draws text with `ab_glyph` from a font we
//! register at run time (DejaVu Sans from the system), so nothing needs a
//! system font library at build time.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::SweepResult;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

const COLORS: [RGBColor; 8] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    });
    if ok { Ok(()) } else { Err(anyhow!("no TrueType font found (looked in {FONT_PATHS:?}); plot skipped")) }
}

/// Write the plot; a missing font is reported, not fatal.
pub fn latency_vs_rate(path: &Path, results: &[SweepResult]) -> Result<()> {
    if let Err(e) = register_font() {
        eprintln!("plot: {e}");
        return Ok(());
    }
    draw(path, results).map_err(|e| anyhow!("plot {}: {e}", path.display()))
}

/// A named line: (delivered rate, p50 ms, p99 ms) points.
type Series = (String, Vec<(f64, f64, f64)>);

/// The unicast sweeps (and fixed phases) of pushmesh and the per-message
/// ceiling: latency against delivered sends/s.
pub fn msg_latency_vs_rate(path: &Path, run: &crate::report::MsgRun) -> Result<()> {
    if let Err(e) = register_font() {
        eprintln!("plot: {e}");
        return Ok(());
    }
    let series: Vec<Series> = ["pushmesh", "per-message ceiling"]
        .iter()
        .map(|system| {
            let mut pts: Vec<(f64, f64, f64)> = run
                .fixed
                .iter()
                .chain(run.sweeps.iter().flat_map(|s| &s.steps))
                .filter(|p| p.system == *system && p.delivered > 0)
                .map(|p| (p.delivered_rate, p.latency_ms.p50.max(0.01), p.latency_ms.p99.max(0.01)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            pts.dedup_by(|a, b| a.0 == b.0);
            (format!("{} — {system}", run.config), pts)
        })
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let caption = "targeted sends: end-to-end latency vs delivered rate (p99 solid, p50 thin)";
    draw_series(path, caption, "delivered sends per second", series)
        .map_err(|e| anyhow!("plot {}: {e}", path.display()))
}

fn draw(path: &Path, results: &[SweepResult]) -> Result<(), Box<dyn std::error::Error>> {
    let series: Vec<Series> = results
        .iter()
        .map(|r| {
            let mut pts: Vec<(f64, f64, f64)> = r
                .steps
                .iter()
                .filter(|p| p.delivered > 0)
                .map(|p| (p.delivered_rate, p.latency_ms.p50.max(0.01), p.latency_ms.p99.max(0.01)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (format!("{} — {}", r.config, r.system), pts)
        })
        .filter(|(_, p)| !p.is_empty())
        .collect();
    draw_series(
        path,
        "pushmesh: end-to-end latency vs delivered rate (p99 solid, p50 thin)",
        "delivered messages per second",
        series,
    )
}

fn draw_series(
    path: &Path,
    caption: &str,
    x_desc: &str,
    series: Vec<Series>,
) -> Result<(), Box<dyn std::error::Error>> {
    let max_x = series.iter().flat_map(|(_, p)| p.iter().map(|v| v.0)).fold(1.0, f64::max) * 1.05;
    let max_y = series.iter().flat_map(|(_, p)| p.iter().map(|v| v.2)).fold(1.0, f64::max) * 2.0;
    let min_y = series.iter().flat_map(|(_, p)| p.iter().map(|v| v.1)).fold(f64::MAX, f64::min).max(0.01) / 2.0;

    let root = BitMapBackend::new(path, (1280, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_x, (min_y..max_y).log_scale())?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("latency, ms (log scale)")
        .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
        .y_label_formatter(&|y| format!("{y}"))
        .label_style(("sans-serif", 16))
        .draw()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()].to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.2)), color.stroke_width(3)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        chart.draw_series(pts.iter().map(|p| Circle::new((p.0, p.2), 4, color.filled())))?;
        chart.draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), color.stroke_width(1)))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    root.present()?;
    Ok(())
}
