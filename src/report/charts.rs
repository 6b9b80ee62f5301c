//! The report's plots, drawn with plotters' SVG backend into strings: line charts of scalar
//! series and the alpha trajectories (small multiples) read back from TensorBoard tags.

use std::collections::BTreeMap;

use plotters::prelude::*;

use crate::plots::{Series, Trajectories};

/// One named line of a chart.
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line chart (640 x 320) as an SVG document string. Err when no font is available or the
/// lines hold no finite point.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[Line],
) -> Result<String, String> {
    crate::plots::ensure_font()?;
    let finite = lines
        .iter()
        .flat_map(|l| l.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in finite {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Err(format!("{title}: no finite points"));
    }
    // A flat or single-point series still gets a visible range.
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    // A flat series (all returns 0 in a short run) gets a unit range around its value.
    let pad = if y1 - y0 < 1e-12 {
        1.0
    } else {
        (y1 - y0) * 0.05
    };
    let (y0, y1) = (y0 - pad, y1 + pad);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 320)).into_drawing_area();
        draw_lines(&root, title, x_label, y_label, lines, (x0, x1), (y0, y1))
            .map_err(|e| format!("{title}: {e}"))?;
        root.present().map_err(|e| format!("{title}: {e}"))?;
    }
    Ok(svg)
}

fn draw_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[Line],
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(90)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    // Enough decimals to tell the tick labels of a narrow range apart (an eigenvalue of
    // 1e-5, an entropy that moves in the 6th digit), none for steps.
    let decimals = |span: f64| ((-span.log10()).ceil() as i64 + 2).clamp(0, 10) as usize;
    let (x_dec, y_dec) = (decimals(x1 - x0), decimals(y1 - y0));
    let x_fmt = move |v: &f64| format!("{v:.x_dec$}");
    let y_fmt = move |v: &f64| format!("{v:.y_dec$}");
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style(("sans-serif", 12))
        .draw()?;
    for (i, line) in lines.iter().enumerate() {
        let color = crate::plots::series_colour(i);
        let points: Vec<(f64, f64)> = line
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let single = points.len() == 1;
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(line.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        if single {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()?;
    Ok(())
}

/// The alpha trajectories of every cell type found under `arch/{cell}/{edge}/{op}` in
/// `scalars`, as SVG strings (one small-multiples picture per cell type, one panel per edge),
/// with edges ordered by their target node, then source (`c_{k-2}`, `c_{k-1}`, `0`, ...) and
/// named by their endpoints as the run's heatmaps name them.
pub fn alpha_trajectories(
    scalars: &BTreeMap<String, Vec<(i64, f64)>>,
    scratch: &std::path::Path,
) -> Vec<(String, Result<String, String>)> {
    // cell -> edge tag -> op -> series
    let mut cells: BTreeMap<String, BTreeMap<String, BTreeMap<String, Series>>> = BTreeMap::new();
    for (tag, points) in scalars {
        let parts: Vec<&str> = tag.split('/').collect();
        if let ["arch", cell, edge, op] = parts.as_slice() {
            if edge.contains("_to_") {
                cells
                    .entry(cell.to_string())
                    .or_default()
                    .entry(edge.to_string())
                    .or_default()
                    .insert(op.to_string(), last_per_step(points));
            }
        }
    }
    let mut out = Vec::new();
    for (cell, edges) in cells {
        let mut edge_tags: Vec<&String> = edges.keys().collect();
        edge_tags.sort_by_key(|t| edge_order(t));
        let ops: Vec<String> = edges
            .values()
            .next()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        let labels: Vec<String> = edge_tags.iter().map(|t| edge_label(t)).collect();
        let series: Vec<Vec<Series>> = edge_tags
            .iter()
            .map(|t| {
                ops.iter()
                    .map(|op| edges[*t].get(op).cloned().unwrap_or_default())
                    .collect()
            })
            .collect();
        let title = format!("{cell} cell: op weights per edge over the search");
        let stem = scratch.join(format!("report_alpha_trajectories_{cell}"));
        let result = crate::plots::write_trajectories(
            &stem,
            &Trajectories {
                title: &title,
                edge_labels: &labels,
                op_labels: &ops,
                series: &series,
            },
        )
        .and_then(|()| {
            let svg =
                std::fs::read_to_string(stem.with_extension("svg")).map_err(|e| e.to_string());
            let _ = std::fs::remove_file(stem.with_extension("svg"));
            let _ = std::fs::remove_file(stem.with_extension("png"));
            svg
        });
        out.push((cell, result));
    }
    out
}

/// One value per step, the last written (a resumed run may log a step twice).
fn last_per_step(points: &[(i64, f64)]) -> Series {
    let mut out: Series = Vec::new();
    for &(step, value) in points {
        match out.last_mut() {
            Some(last) if last.0 == step => last.1 = value,
            _ => out.push((step, value)),
        }
    }
    out
}

/// Sort key of an edge tag `c_k-1_to_0` / `0_to_2`: target node, then source (inputs first,
/// the furthest input first).
fn edge_order(tag: &str) -> (usize, i64) {
    let (from, to) = tag.split_once("_to_").unwrap_or((tag, ""));
    let node = to.parse().unwrap_or(usize::MAX);
    let source = match from.strip_prefix("c_k-") {
        Some(back) => -back.parse::<i64>().unwrap_or(0),
        None => from.parse().unwrap_or(i64::MAX),
    };
    (node, source)
}

/// `c_k-1_to_0` -> `c_{k-1} -> 0` (the heatmaps' row names).
fn edge_label(tag: &str) -> String {
    let (from, to) = tag.split_once("_to_").unwrap_or((tag, "?"));
    let from = match from.strip_prefix("c_") {
        Some(rest) => format!("c_{{{rest}}}"),
        None => from.to_string(),
    };
    format!("{from} -> {to}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_tags_turn_back_into_heatmap_labels_in_cell_order() {
        assert_eq!(edge_label("c_k-1_to_0"), "c_{k-1} -> 0");
        assert_eq!(edge_label("0_to_2"), "0 -> 2");
        let mut tags = vec!["1_to_2", "c_k-1_to_2", "c_k-2_to_0", "c_k-1_to_0", "0_to_1"];
        tags.sort_by_key(|t| edge_order(t));
        assert_eq!(
            tags,
            ["c_k-2_to_0", "c_k-1_to_0", "0_to_1", "c_k-1_to_2", "1_to_2"]
        );
    }
}
