//! How every search loop (PPO's, the supervised search's) logs an architecture distribution,
//! so that the same edge has the same name everywhere: per cell type, per edge (named by its
//! endpoints, [`crate::nas::Edge::label`]) and op, the expected op weight as a scalar; each
//! cell type's mean entropy; and one labelled heatmap image (values printed, colour scale).

use super::MetricsSink;
use crate::nas::CellSpace;

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
    let ops: Vec<String> = space
        .op_set
        .ops()
        .iter()
        .map(|op| op.name().to_string())
        .collect();
    let edges = space.edges();
    let rows: Vec<String> = edges.iter().map(|e| e.label(space.num_inputs)).collect();
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
}
