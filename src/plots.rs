//! Pictures a researcher reads: labelled architecture heatmaps (rows = edges named by their
//! endpoints, columns = ops, the value printed in each cell, a colour scale), drawn with
//! plotters' bitmap backend.
//!
//! Text is drawn with a TrueType font read at run time (ab_glyph, no fontconfig): DejaVu Sans
//! from Debian's fonts-dejavu-core, which `make setup` installs, or the file RL_DARTS_FONT
//! names.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

const FONT_CANDIDATES: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers the font once per process; Err names what to install.
pub fn ensure_font() -> Result<(), String> {
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

/// Where a heatmap's parts go, in pixels: a title band, a band of column labels, a column of
/// row labels, the grid, and a colour scale on the right. Sized so that TensorBoard's
/// default zoom reads the labels and the printed values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeatmapLayout {
    pub width: u32,
    pub height: u32,
    pub title_h: u32,
    pub header_h: u32,
    pub label_w: u32,
    pub cell_w: u32,
    pub cell_h: u32,
    /// Left edge of the colour scale.
    pub scale_x: u32,
}

impl HeatmapLayout {
    pub const TITLE_H: u32 = 34;
    pub const HEADER_H: u32 = 30;
    pub const CELL_H: u32 = 26;
    pub const SCALE_W: u32 = 70;
    const CHAR_W: u32 = 8;

    /// The layout of a grid with these row and column labels: columns as wide as the longest
    /// op name (at least a printed value), the label column as wide as the longest edge name.
    pub fn new(row_labels: &[String], col_labels: &[String]) -> Self {
        let longest =
            |labels: &[String]| labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
        let cell_w = (longest(col_labels) as u32 * Self::CHAR_W + 12).max(48);
        let label_w = longest(row_labels) as u32 * Self::CHAR_W + 20;
        let grid_w = cell_w * col_labels.len() as u32;
        let grid_h = Self::CELL_H * row_labels.len() as u32;
        let scale_x = label_w + grid_w + 16;
        Self {
            width: scale_x + Self::SCALE_W,
            height: Self::TITLE_H + Self::HEADER_H + grid_h + 10,
            title_h: Self::TITLE_H,
            header_h: Self::HEADER_H,
            label_w,
            cell_w,
            cell_h: Self::CELL_H,
            scale_x,
        }
    }

    /// Top-left pixel of grid cell (`row`, `col`).
    pub fn cell_origin(&self, row: usize, col: usize) -> (i32, i32) {
        (
            (self.label_w + self.cell_w * col as u32) as i32,
            (self.title_h + self.header_h + self.cell_h * row as u32) as i32,
        )
    }
}

/// White (0) to dark blue (1); values outside [0, 1] are clamped.
fn shade(p: f64) -> RGBColor {
    let p = p.clamp(0.0, 1.0);
    RGBColor(
        (255.0 * (1.0 - 0.92 * p)) as u8,
        (255.0 * (1.0 - 0.75 * p)) as u8,
        (255.0 * (1.0 - 0.45 * p)) as u8,
    )
}

/// `values[row][col]` in [0, 1] (op probabilities; NaN for a cell that does not exist) as a
/// labelled heatmap: packed HWC RGB
/// bytes with the height and width. Err when no font is available or the shapes disagree.
pub fn heatmap_rgb(
    title: &str,
    row_labels: &[String],
    col_labels: &[String],
    values: &[Vec<f64>],
) -> Result<(Vec<u8>, usize, usize), String> {
    if values.len() != row_labels.len() || values.iter().any(|r| r.len() != col_labels.len()) {
        return Err(format!(
            "heatmap: {} rows of {:?} values for {} row and {} column labels",
            values.len(),
            values.iter().map(Vec::len).collect::<Vec<_>>(),
            row_labels.len(),
            col_labels.len()
        ));
    }
    ensure_font()?;
    let layout = HeatmapLayout::new(row_labels, col_labels);
    let (w, h) = (layout.width as usize, layout.height as usize);
    let mut rgb = vec![255u8; w * h * 3];
    {
        let root =
            BitMapBackend::with_buffer(&mut rgb, (layout.width, layout.height)).into_drawing_area();
        draw_heatmap(&root, &layout, title, row_labels, col_labels, values)
            .map_err(|e| format!("heatmap: {e}"))?;
        root.present().map_err(|e| format!("heatmap: {e}"))?;
    }
    Ok((rgb, h, w))
}

fn draw_heatmap<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    layout: &HeatmapLayout,
    title: &str,
    row_labels: &[String],
    col_labels: &[String],
    values: &[Vec<f64>],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let text = |size: u32| ("sans-serif", size).into_font().color(&BLACK);
    root.draw(&Text::new(title.to_string(), (8, 8), text(18)))?;
    for (c, label) in col_labels.iter().enumerate() {
        let (x, _) = layout.cell_origin(0, c);
        let y = (layout.title_h + 8) as i32;
        root.draw(&Text::new(label.clone(), (x + 4, y), text(13)))?;
    }
    for (r, (label, row)) in row_labels.iter().zip(values).enumerate() {
        let (_, y) = layout.cell_origin(r, 0);
        root.draw(&Text::new(label.clone(), (6, y + 6), text(13)))?;
        for (c, &p) in row.iter().enumerate() {
            let (x, y) = layout.cell_origin(r, c);
            let (x1, y1) = (x + layout.cell_w as i32, y + layout.cell_h as i32);
            // NaN marks a cell that does not exist (a state a node cannot read): grey, "-".
            if p.is_nan() {
                root.draw(&Rectangle::new(
                    [(x, y), (x1, y1)],
                    RGBColor(235, 235, 235).filled(),
                ))?;
                root.draw(&Text::new("-".to_string(), (x + 6, y + 6), text(13)))?;
                continue;
            }
            root.draw(&Rectangle::new([(x, y), (x1, y1)], shade(p).filled()))?;
            root.draw(&Rectangle::new([(x, y), (x1, y1)], RGBColor(200, 200, 200)))?;
            let ink = if p > 0.55 { WHITE } else { BLACK };
            let style = ("sans-serif", 13).into_font().color(&ink);
            root.draw(&Text::new(format!("{p:.2}"), (x + 6, y + 6), style))?;
        }
    }
    // The colour scale: 0 at the bottom, 1 at the top, over the grid's height.
    let (_, top) = layout.cell_origin(0, 0);
    let (_, bottom) = layout.cell_origin(row_labels.len(), 0);
    let x = layout.scale_x as i32;
    let span = (bottom - top).max(1);
    for y in top..bottom {
        let p = (bottom - y) as f64 / span as f64;
        root.draw(&PathElement::new(vec![(x, y), (x + 16, y)], shade(p)))?;
    }
    root.draw(&Rectangle::new([(x, top), (x + 16, bottom)], BLACK))?;
    for (p, y) in [(1.0, top), (0.5, (top + bottom) / 2), (0.0, bottom - 12)] {
        root.draw(&Text::new(format!("{p:.1}"), (x + 22, y), text(12)))?;
    }
    Ok(())
}

/// One series of (step, value) points.
pub type Series = Vec<(i64, f64)>;

/// Small multiples of op weights over a search: one panel per edge (titled by its endpoints),
/// one line per op (the same colour in every panel, named in a legend above the panels).
pub struct Trajectories<'a> {
    pub title: &'a str,
    pub edge_labels: &'a [String],
    pub op_labels: &'a [String],
    /// `series[edge][op]`.
    pub series: &'a [Vec<Series>],
}

/// Panels per row of [`Trajectories`] and the pixel size of the picture.
pub fn trajectories_layout(edges: usize) -> (usize, u32, u32) {
    const PANEL_W: u32 = 300;
    const PANEL_H: u32 = 190;
    const LEGEND_H: u32 = 70;
    let per_row = edges.clamp(1, 4);
    let rows = edges.div_ceil(per_row).max(1);
    (
        per_row,
        PANEL_W * per_row as u32,
        LEGEND_H + PANEL_H * rows as u32,
    )
}

/// Writes `t` as PNG (`stem.png`) and SVG (`stem.svg`).
pub fn write_trajectories(stem: &Path, t: &Trajectories<'_>) -> Result<(), String> {
    ensure_font()?;
    let (_, w, h) = trajectories_layout(t.edge_labels.len());
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    {
        let root = BitMapBackend::new(&png, (w, h)).into_drawing_area();
        draw_trajectories(&root, t).map_err(|e| format!("{}: {e}", png.display()))?;
        root.present()
            .map_err(|e| format!("{}: {e}", png.display()))?;
    }
    let root = SVGBackend::new(&svg, (w, h)).into_drawing_area();
    draw_trajectories(&root, t).map_err(|e| format!("{}: {e}", svg.display()))?;
    root.present()
        .map_err(|e| format!("{}: {e}", svg.display()))
}

/// The `i`-th colour of matplotlib's `tab10` cycle (repeating), so that every chart the tool
/// draws (trajectories here, the report's line charts) colours its series alike.
pub fn series_colour(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    PALETTE[i % PALETTE.len()]
}

fn draw_trajectories<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    t: &Trajectories<'_>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let (per_row, w, _) = trajectories_layout(t.edge_labels.len());
    let (legend, panels) = root.split_vertically(70);
    legend.draw(&Text::new(
        t.title.to_string(),
        (8, 6),
        ("sans-serif", 18).into_font(),
    ))?;
    let mut x = 8i32;
    for (o, op) in t.op_labels.iter().enumerate() {
        let y = 40;
        legend.draw(&Rectangle::new(
            [(x, y + 3), (x + 18, y + 9)],
            series_colour(o).filled(),
        ))?;
        legend.draw(&Text::new(
            op.clone(),
            (x + 24, y),
            ("sans-serif", 13).into_font(),
        ))?;
        x += 34 + 8 * op.chars().count() as i32;
        if x > w as i32 - 120 {
            break;
        }
    }
    let max_step = t
        .series
        .iter()
        .flatten()
        .flat_map(|s| s.last().map(|p| p.0))
        .max()
        .unwrap_or(1)
        .max(1);
    let rows = t.edge_labels.len().div_ceil(per_row).max(1);
    for (e, area) in panels
        .split_evenly((rows, per_row))
        .iter()
        .enumerate()
        .take(t.edge_labels.len())
    {
        let mut chart = ChartBuilder::on(area)
            .caption(&t.edge_labels[e], ("sans-serif", 14))
            .margin(6)
            .x_label_area_size(22)
            .y_label_area_size(32)
            .build_cartesian_2d(0i64..max_step, 0f64..1f64)?;
        chart
            .configure_mesh()
            .x_labels(3)
            .y_labels(3)
            .label_style(("sans-serif", 11))
            .draw()?;
        for (o, series) in t.series[e].iter().enumerate() {
            chart.draw_series(LineSeries::new(
                series.iter().copied(),
                series_colour(o).stroke_width(2),
            ))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::{CellSpace, OpSet};

    fn labels(space: &CellSpace) -> (Vec<String>, Vec<String>) {
        let rows = space
            .edges()
            .iter()
            .map(|e| e.label(space.num_inputs))
            .collect();
        let cols = space
            .op_set
            .ops()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        (rows, cols)
    }

    /// The layout follows the cell and the op set: one row per edge, one column per op, every
    /// label wide enough for its text, the colour scale right of the grid.
    #[test]
    fn the_layout_fits_the_cell_and_the_op_names() {
        let (rows, cols) = labels(&CellSpace::darts());
        let l = HeatmapLayout::new(&rows, &cols);
        assert_eq!((rows.len(), cols.len()), (14, 8));
        assert_eq!(l.height, l.title_h + l.header_h + 14 * l.cell_h + 10);
        assert!(l.cell_w >= "dil_conv_3x3".len() as u32 * 8);
        assert!(l.label_w >= "c_{k-2} -> 0".len() as u32 * 8);
        assert_eq!(l.cell_origin(13, 7).0 as u32 + l.cell_w + 16, l.scale_x);
        assert_eq!(l.width, l.scale_x + HeatmapLayout::SCALE_W);
        let (rows, cols) = labels(&CellSpace::rl_darts(OpSet::RlDarts));
        let small = HeatmapLayout::new(&rows, &cols);
        assert!(small.width < l.width && small.height < l.height);
    }

    /// The image has the layout's size, and each cell is shaded by its value: a cell of 1 is
    /// dark blue where no text covers it, a cell of 0 white.
    #[test]
    fn the_heatmap_has_the_layout_size_and_shades_by_value() {
        if let Err(e) = ensure_font() {
            eprintln!("skipped: {e}");
            return;
        }
        let rows = vec!["c_{k-1} -> 0".to_string(), "0 -> 1".to_string()];
        let cols = vec!["conv_3x3".to_string(), "skip_connect".to_string()];
        let values = vec![vec![0.0, 1.0], vec![1.0, 0.0]];
        let (rgb, h, w) = heatmap_rgb("normal", &rows, &cols, &values).unwrap();
        let l = HeatmapLayout::new(&rows, &cols);
        assert_eq!((h, w), (l.height as usize, l.width as usize));
        assert_eq!(rgb.len(), h * w * 3);
        let pixel = |row: usize, col: usize| {
            // Near the cell's bottom-right corner, inside the border, below the text.
            let (x, y) = l.cell_origin(row, col);
            let (x, y) = (
                x as usize + l.cell_w as usize - 3,
                y as usize + l.cell_h as usize - 3,
            );
            let i = (y * w + x) * 3;
            (rgb[i], rgb[i + 1], rgb[i + 2])
        };
        let dark = shade(1.0);
        assert_eq!(pixel(0, 1), (dark.0, dark.1, dark.2));
        assert_eq!(pixel(1, 0), (dark.0, dark.1, dark.2));
        assert_eq!(pixel(0, 0), (255, 255, 255));
        assert!(heatmap_rgb("bad", &rows, &cols, &values[..1]).is_err());
    }
}
