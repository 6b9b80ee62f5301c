//! Learning curves as PNG (plotters' bitmap backend): one chart per game, one coloured line
//! per method (the mean over seeds), each seed's own curve faint behind it.
//!
//! Text is drawn with a TrueType font read at run time (ab_glyph, no fontconfig): DejaVu Sans
//! from Debian's fonts-dejavu-core, which `make setup` installs, or the file RL_DARTS_FONT
//! names.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::SweepError;

/// One seed's curve: (env step, value), sorted by step.
pub type Curve = Vec<(i64, f64)>;

/// A method's curves on one game.
pub struct Series {
    pub method: String,
    pub runs: Vec<Curve>,
}

const FONT_CANDIDATES: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers the font once per process; Err names what to install.
fn ensure_font() -> Result<(), String> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let from_env = std::env::var("RL_DARTS_FONT").ok();
        let path = from_env
            .iter()
            .map(String::as_str)
            .chain(FONT_CANDIDATES)
            .find(|p| Path::new(p).is_file())
            .ok_or_else(|| {
                "no TrueType font found: install Debian's fonts-dejavu-core (make setup does) or set RL_DARTS_FONT=/path/to/font.ttf".to_string()
            })?;
        let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
        // plotters keeps registered fonts for the whole process and wants 'static bytes;
        // this happens once.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is not a usable TrueType font"))
    })
    .clone()
}

/// The mean over runs on a grid of `points` steps from 0 to the longest run; each run
/// contributes its latest value at or before a grid step (a step function, as TensorBoard's
/// "step" x-axis shows it) and only once it has started.
pub fn mean_curve(runs: &[Curve], points: usize) -> Curve {
    let max_step = runs
        .iter()
        .filter_map(|c| c.last().map(|p| p.0))
        .max()
        .unwrap_or(0);
    if max_step <= 0 || points < 2 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(points);
    for i in 0..points {
        let step = max_step * i as i64 / (points - 1) as i64;
        let values: Vec<f64> = runs
            .iter()
            .filter_map(|c| c.iter().take_while(|p| p.0 <= step).last().map(|p| p.1))
            .collect();
        if let Some(m) = super::stats::mean(&values) {
            out.push((step, m));
        }
    }
    out
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
        for run in &s.runs {
            chart
                .draw_series(LineSeries::new(run.iter().copied(), color.mix(0.25)))
                .map_err(|e| err(e.to_string()))?;
        }
        let mean = mean_curve(&s.runs, 60);
        let label = format!("{} ({} seeds)", s.method, s.runs.len());
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
    fn mean_curve_is_a_step_function_mean() {
        // Run a: 0 at step 0, 10 at step 100. Run b: 2 at step 0, 4 at step 50.
        let a = vec![(0, 0.0), (100, 10.0)];
        let b = vec![(0, 2.0), (50, 4.0)];
        let m = mean_curve(&[a, b], 3); // steps 0, 50, 100
        assert_eq!(m, vec![(0, 1.0), (50, 2.0), (100, 7.0)]);
    }
}
