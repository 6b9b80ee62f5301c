//! How every search loop (PPO's, the supervised search's) logs an architecture distribution,
//! so that the same edge has the same name everywhere: per cell type, per edge (named by its
//! endpoints, [`crate::nas::Edge::label`]) and op, the expected op weight as a scalar; each
//! cell type's mean entropy; and one labelled heatmap image (values printed, colour scale).

use std::path::{Path, PathBuf};

use super::MetricsSink;
use crate::nas::CellSpace;
use crate::plots::{write_trajectories as write_trajectories_file, Series, Trajectories};

/// Mean over edges of each edge's op-choice entropy (nats), each row normalised to sum 1
/// (softmax rows already do; UNAS's factorised expected weights sum to the chance that the
/// edge is used).
pub fn mean_entropy(rows: &[Vec<f64>]) -> f64 {
    let entropy = |row: &Vec<f64>| -> f64 {
        let total: f64 = row.iter().sum();
        if total <= 0.0 {
            return 0.0;
        }
        row.iter()
            .map(|&w| w / total)
            .filter(|&p| p > 0.0)
            .map(|p| -p * p.ln())
            .sum()
    };
    rows.iter().map(entropy).sum::<f64>() / rows.len().max(1) as f64
}

/// The cell's edges, their labels (`c_{k-1} -> 0`) and the op names: the rows and columns of
/// every architecture picture.
fn layout(space: &CellSpace) -> (Vec<crate::nas::Edge>, Vec<String>, Vec<String>) {
    let edges = space.edges();
    let labels = edges.iter().map(|e| e.label(space.num_inputs)).collect();
    let ops = space
        .op_set
        .ops()
        .iter()
        .map(|op| op.name().to_string())
        .collect();
    (edges, labels, ops)
}

/// Logs `cells` (cell-type name, then `[edge][op]` weights) under `arch/`:
/// `arch/{cell}/{edge}/{op}` scalars, `arch/{cell}/entropy`, and the image
/// `arch/{cell}/heatmap`. A heatmap that cannot be drawn (no font) is skipped with one
/// warning; logging never ends a run.
pub fn log_architecture(
    sink: &mut dyn MetricsSink,
    space: &CellSpace,
    cells: &[(&str, Vec<Vec<f64>>)],
    step: i64,
) {
    let (edges, rows, ops) = layout(space);
    for (cell, weights) in cells {
        for (edge, row) in edges.iter().zip(weights) {
            let edge_tag = edge.tag(space.num_inputs);
            for (op, &p) in ops.iter().zip(row) {
                sink.scalar(&format!("arch/{cell}/{edge_tag}/{op}"), p, step);
            }
        }
        sink.scalar(&format!("arch/{cell}/entropy"), mean_entropy(weights), step);
        let title = format!("{cell} cell: op weights per edge (step {step})");
        match crate::plots::heatmap_rgb(&title, &rows, &ops, weights) {
            Ok((rgb, h, w)) => sink.image(&format!("arch/{cell}/heatmap"), &rgb, h, w, step),
            Err(e) => warn_once(&e),
        }
    }
}

/// Logs the selector distributions of a factorised cell (UNAS), one pair of labelled heatmaps
/// per cell type: `arch/{cell}/input_selector` (rows `node i / slot s`, columns the states it
/// may read; `-` where it cannot) and `arch/{cell}/op_selector` (columns the ops).
pub fn log_selectors(
    sink: &mut dyn MetricsSink,
    tables: &[crate::search::unas_factorised::SelectorTables],
    step: i64,
) {
    for (cell, t) in ["normal", "reduce"].into_iter().zip(tables) {
        let pictures = [
            (
                "input_selector",
                "input selectors",
                &t.layout.input_cols,
                &t.inputs,
            ),
            ("op_selector", "op selectors", &t.layout.op_cols, &t.ops),
        ];
        for (tag, what, cols, values) in pictures {
            let title = format!("{cell} cell: {what} (step {step})");
            match crate::plots::heatmap_rgb(&title, &t.layout.slot_rows, cols, values) {
                Ok((rgb, h, w)) => sink.image(&format!("arch/{cell}/{tag}"), &rgb, h, w, step),
                Err(e) => warn_once(&e),
            }
        }
    }
}

/// The alpha trajectories of a search, from the scalars [`log_architecture`] wrote to the
/// TensorBoard files in `tb_dir`: per cell type in `cells`, `alpha_trajectories_{cell}.png` and
/// `.svg` in `out_dir` (small multiples, one panel per edge). Read back from the event files
/// rather than kept in memory, so that a resumed run draws its whole search; a step logged
/// twice (before a stop and again after the resume) keeps its later value, as TensorBoard
/// shows it. Returns the files written.
pub fn write_trajectories(
    tb_dir: &Path,
    space: &CellSpace,
    cells: &[&str],
    out_dir: &Path,
) -> Result<Vec<PathBuf>, String> {
    let scalars = crate::sweep::tfevents::read_scalars(tb_dir).map_err(|e| e.to_string())?;
    let (edges, labels, ops) = layout(space);
    let mut written = Vec::new();
    for cell in cells {
        let series: Vec<Vec<Series>> = edges
            .iter()
            .map(|edge| {
                let edge_tag = edge.tag(space.num_inputs);
                ops.iter()
                    .map(|op| last_per_step(scalars.get(&format!("arch/{cell}/{edge_tag}/{op}"))))
                    .collect()
            })
            .collect();
        if series.iter().flatten().all(Vec::is_empty) {
            continue;
        }
        let title = format!("{cell} cell: op weights per edge over the search");
        let stem = out_dir.join(format!("alpha_trajectories_{cell}"));
        write_trajectories_file(
            &stem,
            &Trajectories {
                title: &title,
                edge_labels: &labels,
                op_labels: &ops,
                series: &series,
            },
        )?;
        written.push(stem.with_extension("png"));
        written.push(stem.with_extension("svg"));
    }
    Ok(written)
}

/// One value per step, the last written (points come sorted by step, written order kept).
fn last_per_step(points: Option<&Vec<(i64, f64)>>) -> Series {
    let mut out: Series = Vec::new();
    for &(step, value) in points.into_iter().flatten() {
        match out.last_mut() {
            Some(last) if last.0 == step => last.1 = value,
            _ => out.push((step, value)),
        }
    }
    out
}

fn warn_once(message: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| eprintln!("warning: architecture heatmaps disabled: {message}"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::MemorySink;
    use crate::nas::OpSet;

    #[test]
    fn entropy_normalises_each_row_first() {
        let ln2 = std::f64::consts::LN_2;
        assert!((mean_entropy(&[vec![0.5, 0.5, 0.0]]) - ln2).abs() < 1e-12);
        // Factorised expected weights: an edge used with weight 0.4, split evenly.
        assert!((mean_entropy(&[vec![0.2, 0.2]]) - ln2).abs() < 1e-12);
        assert_eq!(mean_entropy(&[vec![1.0, 0.0], vec![0.0, 0.0]]), 0.0);
    }

    /// Tags name edges by their endpoints and ops by name; the entropy is per cell type; the
    /// heatmap is one image per cell type at the layout's size.
    #[test]
    fn architecture_logs_name_edges_by_their_endpoints() {
        let space = CellSpace::rl_darts(OpSet::RlDarts);
        let (e, o) = (space.num_edges(), space.num_ops());
        let uniform = vec![vec![1.0 / o as f64; o]; e];
        let mut peaked = uniform.clone();
        peaked[0] = (0..o).map(|k| if k == 0 { 1.0 } else { 0.0 }).collect();
        let mut sink = MemorySink::new();
        log_architecture(
            &mut sink,
            &space,
            &[("normal", uniform), ("reduce", peaked)],
            7,
        );
        let tags = sink.scalar_tags();
        assert!(tags.contains("arch/normal/c_k-1_to_0/conv_3x3"), "{tags:?}");
        assert!(tags.contains("arch/reduce/0_to_1/skip_connect"), "{tags:?}");
        let full = (o as f64).ln();
        assert!((sink.last_scalar("arch/normal/entropy").unwrap() - full).abs() < 1e-12);
        let reduce = sink.last_scalar("arch/reduce/entropy").unwrap();
        assert!((reduce - full * (e - 1) as f64 / e as f64).abs() < 1e-12);
        let images = sink.snapshot().images;
        if crate::plots::ensure_font().is_ok() {
            assert_eq!(images.len(), 2);
            let rows: Vec<String> = space.edges().iter().map(|e| e.label(1)).collect();
            let cols: Vec<String> = space
                .op_set
                .ops()
                .iter()
                .map(|x| x.name().to_string())
                .collect();
            let layout = crate::plots::HeatmapLayout::new(&rows, &cols);
            assert_eq!(images[0].tag, "arch/normal/heatmap");
            assert_eq!(
                (images[0].height, images[0].width),
                (layout.height as usize, layout.width as usize)
            );
        }
    }

    #[test]
    fn a_step_logged_twice_keeps_its_later_value() {
        let points = vec![(0, 0.1), (10, 0.2), (10, 0.3), (20, 0.4)];
        assert_eq!(
            last_per_step(Some(&points)),
            vec![(0, 0.1), (10, 0.3), (20, 0.4)]
        );
        assert!(last_per_step(None).is_empty());
    }

    /// Trajectories are drawn from what the TensorBoard files hold: a PNG of the layout's size
    /// and an SVG whose panel titles are the edges and whose legend is the op set.
    #[test]
    fn trajectories_are_drawn_from_the_tensorboard_scalars() {
        if crate::plots::ensure_font().is_err() {
            eprintln!("skipped: no font");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tb = dir.path().join("tb");
        let space = CellSpace::rl_darts(OpSet::RlDarts);
        let (e, o) = (space.num_edges(), space.num_ops());
        {
            let mut sink = crate::logging::TensorBoardSink::create(&tb).unwrap();
            for step in 0..4 {
                let p = 1.0 / o as f64 + 0.1 * step as f64;
                let row: Vec<f64> = (0..o)
                    .map(|k| {
                        if k == 0 {
                            p
                        } else {
                            (1.0 - p) / (o - 1) as f64
                        }
                    })
                    .collect();
                log_architecture(&mut sink, &space, &[("normal", vec![row; e])], step * 100);
            }
            sink.flush();
        }
        let files = write_trajectories(&tb, &space, &["normal", "reduce"], dir.path()).unwrap();
        // Nothing was logged for the reduce cell: no picture of it.
        assert_eq!(files.len(), 2, "{files:?}");
        let png = std::fs::File::open(dir.path().join("alpha_trajectories_normal.png")).unwrap();
        let info = png::Decoder::new(png).read_info().unwrap().info().clone();
        let (_, w, h) = crate::plots::trajectories_layout(e);
        assert_eq!((info.width, info.height), (w, h));
        let svg =
            std::fs::read_to_string(dir.path().join("alpha_trajectories_normal.svg")).unwrap();
        assert!(
            svg.contains("c_{k-1} -&gt; 0") || svg.contains("c_{k-1} -> 0"),
            "edge titles"
        );
        for op in space.op_set.ops() {
            assert!(svg.contains(op.name()), "legend lacks {}", op.name());
        }
    }
}
