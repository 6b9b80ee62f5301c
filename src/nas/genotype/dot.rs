//! Graphviz diagrams of a genotype's cells, after DARTS's `visualize.py`, and rendering them
//! with the `dot` binary.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{CellType, Genotype};
use crate::nas::error::NasError;
use crate::nas::ops::OpKind;

impl Genotype {
    /// Graphviz description of one cell, after DARTS's `visualize.py`: inputs `c_{k-2}`,
    /// `c_{k-1}` (green), nodes `0..N` (blue), output `c_{k}` (yellow), edges labelled by op;
    /// `none` genes are not drawn.
    pub fn to_dot(&self, cell: CellType, num_inputs: usize) -> String {
        let (nodes, concat) = self.cell(cell);
        let name = |state: usize| -> String {
            if state < num_inputs {
                format!("c_{{k-{}}}", num_inputs - state)
            } else {
                (state - num_inputs).to_string()
            }
        };
        let graph = match cell {
            CellType::Normal => "normal",
            CellType::Reduce => "reduce",
        };
        let mut out = String::new();
        let _ = writeln!(out, "digraph {graph} {{");
        let _ = writeln!(out, "  rankdir=LR;");
        let _ = writeln!(
            out,
            "  node [style=filled, shape=rect, align=center, fontsize=20, height=0.5, width=0.5, penwidth=2, fontname=times];"
        );
        let _ = writeln!(out, "  edge [fontsize=20, fontname=times];");
        for input in 0..num_inputs {
            let _ = writeln!(out, "  \"{}\" [fillcolor=darkseagreen2];", name(input));
        }
        for j in 0..nodes.len() {
            let _ = writeln!(out, "  \"{j}\" [fillcolor=lightblue];");
        }
        for (j, genes) in nodes.iter().enumerate() {
            for (op, input) in genes.iter().filter(|(op, _)| *op != OpKind::None) {
                let _ = writeln!(
                    out,
                    "  \"{}\" -> \"{j}\" [label=\"{}\", fillcolor=gray];",
                    name(*input),
                    op.name()
                );
            }
        }
        let _ = writeln!(out, "  \"c_{{k}}\" [fillcolor=palegoldenrod];");
        for &state in concat {
            let _ = writeln!(
                out,
                "  \"{}\" -> \"c_{{k}}\" [fillcolor=gray];",
                name(state)
            );
        }
        out.push_str("}\n");
        out
    }
}

/// Renders DOT text to `out` with the graphviz `dot` binary; the format comes from the
/// extension (`png`, `svg`, `pdf`).
pub fn render_dot(dot: &str, out: &Path) -> Result<(), NasError> {
    let format = match out.extension().and_then(|e| e.to_str()) {
        Some(ext @ ("png" | "svg" | "pdf")) => ext,
        other => {
            return Err(NasError::Config(format!(
                "cannot render a cell diagram to {} (extension {other:?}); use .png, .svg or .pdf",
                out.display()
            )))
        }
    };
    let spawn = Command::new("dot")
        .arg(format!("-T{format}"))
        .arg("-o")
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawn {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(NasError::GraphvizMissing)
        }
        Err(e) => return Err(NasError::Graphviz(e.to_string())),
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(dot.as_bytes())
            .map_err(|e| NasError::Graphviz(e.to_string()))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| NasError::Graphviz(e.to_string()))?;
    if !output.status.success() {
        return Err(NasError::Graphviz(format!(
            "exit status {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}
