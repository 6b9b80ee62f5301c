//! Learning curves as PNG (plotters' bitmap backend): one chart per game, one coloured line
//! per method (the mean over seeds), each seed's own curve faint behind it.
//!
//! Text is drawn with a TrueType font read at run time (ab_glyph, no fontconfig): DejaVu Sans
//! from Debian's fonts-dejavu-core, which `make setup` installs, or the file RL_DARTS_FONT
//! names.

use std::path::Path;

use plotters::prelude::*;

use super::SweepError;
use crate::plots::ensure_font;

/// One seed's curve: (env step, value), sorted by step.
pub type Curve = Vec<(i64, f64)>;

/// A method's curves on one game.
pub struct Series {
    pub method: String,
    pub runs: Vec<Curve>,
}

/// One run on a grid of `points` steps from 0 to `max_step`: each grid step holds the mean of
/// the run's values logged since the previous grid step (several episodes end per PPO
/// iteration), or carries the previous value when none were; None before the run's first
/// value.
fn binned(run: &Curve, max_step: i64, points: usize) -> Vec<Option<f64>> {
    let mut out = Vec::with_capacity(points);
    let mut last = None;
    let mut i = 0;
    for k in 0..points {
        let step = max_step * k as i64 / (points - 1) as i64;
        let mut sum = 0.0;
        let mut n = 0usize;
        while i < run.len() && run[i].0 <= step {
            sum += run[i].1;
            n += 1;
            i += 1;
        }
        if n > 0 {
            last = Some(sum / n as f64);
        }
        out.push(last);
    }
    out
}

fn grid(runs: &[Curve], points: usize) -> Option<(i64, usize)> {
    let max_step = runs
        .iter()
        .filter_map(|c| c.last().map(|p| p.0))
        .max()
        .unwrap_or(0);
    (max_step > 0 && points >= 2).then_some((max_step, points))
}

/// Each run binned on the common grid (see `binned`), as drawable points.
pub fn binned_curves(runs: &[Curve], points: usize) -> Vec<Curve> {
    let Some((max_step, points)) = grid(runs, points) else {
        return Vec::new();
    };
    runs.iter()
        .map(|r| {
            binned(r, max_step, points)
                .into_iter()
                .enumerate()
                .filter_map(|(k, v)| v.map(|v| (max_step * k as i64 / (points - 1) as i64, v)))
                .collect()
        })
        .collect()
}

/// The mean over runs of their binned curves, over the runs that have started at each step.
pub fn mean_curve(runs: &[Curve], points: usize) -> Curve {
    let Some((max_step, points)) = grid(runs, points) else {
        return Vec::new();
    };
    let per_run: Vec<Vec<Option<f64>>> = runs.iter().map(|r| binned(r, max_step, points)).collect();
    (0..points)
        .filter_map(|k| {
            let values: Vec<f64> = per_run.iter().filter_map(|r| r[k]).collect();
            super::stats::mean(&values).map(|m| (max_step * k as i64 / (points - 1) as i64, m))
        })
        .collect()
}

/// Draws `series` of one game into `path` (PNG, 900x560).
pub fn plot_curves(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), SweepError> {
    let err = |reason: String| SweepError::Plot {
        path: path.to_path_buf(),
        reason,
    };
    ensure_font().map_err(err)?;
    let all = series.iter().flat_map(|s| s.runs.iter().flatten());
    let (mut x_max, mut y_min, mut y_max) = (1i64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if !y_min.is_finite() {
        return Err(err("no data points".into()));
    }
    if y_max - y_min < 1e-9 {
        y_min -= 0.5;
        y_max += 0.5;
    }
    let pad = (y_max - y_min) * 0.05;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0i64..x_max, (y_min - pad)..(y_max + pad))
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("env steps")
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i);
        for run in binned_curves(&s.runs, 60) {
            chart
                .draw_series(LineSeries::new(run, color.mix(0.3)))
                .map_err(|e| err(e.to_string()))?;
        }
        let mean = mean_curve(&s.runs, 60);
        let label = format!("{} ({} runs)", s.method, s.runs.len());
        chart
            .draw_series(LineSeries::new(mean, color.stroke_width(3)))
            .map_err(|e| err(e.to_string()))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_curve_bins_then_averages_runs() {
        // Grid steps 0, 50, 100. Run a: episodes 0 and 2 end at step 0 (bin mean 1), then 10
        // at step 100 (the empty bin at 50 carries 1). Run b starts at step 50 with 4 and 6.
        let a = vec![(0, 0.0), (0, 2.0), (100, 10.0)];
        let b = vec![(50, 4.0), (50, 6.0)];
        let m = mean_curve(&[a.clone(), b.clone()], 3);
        // Step 0: only a has started: 1. Step 50: (1 + 5) / 2. Step 100: (10 + 5) / 2.
        assert_eq!(m, vec![(0, 1.0), (50, 3.0), (100, 7.5)]);
        assert_eq!(
            binned_curves(&[a, b], 3),
            vec![
                vec![(0, 1.0), (50, 1.0), (100, 10.0)],
                vec![(50, 5.0), (100, 5.0)]
            ]
        );
    }
}
