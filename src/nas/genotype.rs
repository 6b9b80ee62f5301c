//! Discrete architectures as plain data (DARTS's `Genotype`, Liu et al., ICLR 2019,
//! `cnn/genotypes.py`): derivation from op weights (DARTS / RL-DARTS top-2, SNAS argmax on
//! every edge), JSON, the official Python text form, NAS-Bench-201 arch strings and Graphviz
//! diagrams (after DARTS's `visualize.py`).

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::{CellSpace, NasError, OpKind};

/// One chosen edge: the op and the state it reads (`0..num_inputs` are the cell inputs, then
/// the intermediate nodes in order). Serialises as `["sep_conv_3x3", 0]`.
pub type Gene = (OpKind, usize);

/// A discrete cell architecture.
///
/// Unlike the official flat lists (two pairs per node implied), genes are grouped per node, so
/// the same type also holds SNAS / NAS-Bench-201 cells where every edge is kept (node `j` has
/// `num_inputs + j` genes). The DARTS text form is printed flat whenever every node has exactly
/// two genes, as the official code does.
///
/// `reduce` is empty for networks without reduction cells (NAS-Bench-201, RL-DARTS "impala").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genotype {
    pub normal: Vec<Vec<Gene>>,
    /// States concatenated into the output; DARTS: `[2, 3, 4, 5]`.
    pub normal_concat: Vec<usize>,
    #[serde(default)]
    pub reduce: Vec<Vec<Gene>>,
    #[serde(default)]
    pub reduce_concat: Vec<usize>,
}

/// Which cell of a genotype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellType {
    Normal,
    Reduce,
}

/// How op weights become a discrete cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeriveRule {
    /// DARTS: per node keep the 2 incoming edges whose largest non-`none` weight is largest;
    /// each kept edge's op is its argmax excluding `none`. Ties go to the lower index, as with
    /// the official `sorted` (stable) and strict `>` argmax.
    Darts,
    /// RL-DARTS: drop `zero`, argmax op per edge, keep the top-2 predecessors per node. This is
    /// the DARTS rule applied to a one-input cell (where node 0 has a single predecessor and
    /// keeps it); a separate name so configs can say which paper they follow.
    RlDarts,
    /// SNAS child network / NAS-Bench-201: argmax on every edge, `none` included; `none` genes
    /// are kept (a fixed network builds them as zeros) so the cell stays a complete DAG.
    ArgmaxAll,
    /// GDAS (the official `genotype()` of `search_model_gdas_nasnet.py`): per node every
    /// (op, input) pair except `none` is ranked by its weight and the top 2 pairs are kept, so
    /// both genes may read the same input (a fixed cell then sums two ops of that input). Ties
    /// keep the lower input, then the lower op index, as the official stable `sorted` does.
    Gdas,
}

/// The published DARTS cells as data (`genotypes.py`, pairs flat, two per node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticGenotype {
    pub normal: &'static [Gene],
    pub normal_concat: &'static [usize],
    pub reduce: &'static [Gene],
    pub reduce_concat: &'static [usize],
}

impl StaticGenotype {
    pub fn to_genotype(&self) -> Genotype {
        Genotype {
            normal: self.normal.chunks(2).map(<[Gene]>::to_vec).collect(),
            normal_concat: self.normal_concat.to_vec(),
            reduce: self.reduce.chunks(2).map(<[Gene]>::to_vec).collect(),
            reduce_concat: self.reduce_concat.to_vec(),
        }
    }
}

use OpKind::{AvgPool3x3, DilConv3x3, MaxPool3x3, SepConv3x3, SkipConnect};

/// DARTS (first order), `genotypes.py` `DARTS_V1`: CIFAR-10 3.00% test error.
pub const DARTS_V1: StaticGenotype = StaticGenotype {
    normal: &[
        (SepConv3x3, 1),
        (SepConv3x3, 0),
        (SkipConnect, 0),
        (SepConv3x3, 1),
        (SkipConnect, 0),
        (SepConv3x3, 1),
        (SepConv3x3, 0),
        (SkipConnect, 2),
    ],
    normal_concat: &[2, 3, 4, 5],
    reduce: &[
        (MaxPool3x3, 0),
        (MaxPool3x3, 1),
        (SkipConnect, 2),
        (MaxPool3x3, 0),
        (MaxPool3x3, 0),
        (SkipConnect, 2),
        (SkipConnect, 2),
        (AvgPool3x3, 0),
    ],
    reduce_concat: &[2, 3, 4, 5],
};

/// DARTS (second order), `genotypes.py` `DARTS_V2` (= `DARTS`): CIFAR-10 2.76% test error,
/// 3.3M parameters at C = 36, 20 cells.
pub const DARTS_V2: StaticGenotype = StaticGenotype {
    normal: &[
        (SepConv3x3, 0),
        (SepConv3x3, 1),
        (SepConv3x3, 0),
        (SepConv3x3, 1),
        (SepConv3x3, 1),
        (SkipConnect, 0),
        (SkipConnect, 0),
        (DilConv3x3, 2),
    ],
    normal_concat: &[2, 3, 4, 5],
    reduce: &[
        (MaxPool3x3, 0),
        (MaxPool3x3, 1),
        (SkipConnect, 2),
        (MaxPool3x3, 1),
        (MaxPool3x3, 0),
        (SkipConnect, 2),
        (SkipConnect, 2),
        (MaxPool3x3, 1),
    ],
    reduce_concat: &[2, 3, 4, 5],
};

impl Genotype {
    /// Derives a genotype from op weights `[num_edges, num_ops]` (DARTS passes
    /// `softmax(alpha)`); `reduce` may be `None` for networks without reduction cells. The
    /// concat lists name every intermediate node.
    pub fn derive(
        space: &CellSpace,
        normal: &Tensor,
        reduce: Option<&Tensor>,
        rule: DeriveRule,
    ) -> Result<Self, NasError> {
        let concat: Vec<usize> = (space.num_inputs..space.num_inputs + space.num_nodes).collect();
        let normal = derive_cell(space, normal, rule)?;
        let reduce = reduce.map(|r| derive_cell(space, r, rule)).transpose()?;
        let reduce_concat = if reduce.is_some() {
            concat.clone()
        } else {
            Vec::new()
        };
        Ok(Self {
            normal,
            normal_concat: concat,
            reduce: reduce.unwrap_or_default(),
            reduce_concat,
        })
    }

    /// The genes of one cell type.
    pub fn cell(&self, cell: CellType) -> (&[Vec<Gene>], &[usize]) {
        match cell {
            CellType::Normal => (&self.normal, &self.normal_concat),
            CellType::Reduce => (&self.reduce, &self.reduce_concat),
        }
    }

    /// Checks indices for a cell with `num_inputs` inputs; `needs_reduce` requires a reduce cell.
    pub fn validate(&self, num_inputs: usize, needs_reduce: bool) -> Result<(), NasError> {
        if needs_reduce && self.reduce.is_empty() {
            return Err(NasError::InvalidGenotype(
                "the network has reduction cells but the genotype has no reduce cell".into(),
            ));
        }
        for cell in [CellType::Normal, CellType::Reduce] {
            let (nodes, concat) = self.cell(cell);
            if cell == CellType::Reduce && nodes.is_empty() && concat.is_empty() {
                continue;
            }
            let name = match cell {
                CellType::Normal => "normal",
                CellType::Reduce => "reduce",
            };
            let bad = |msg: String| Err(NasError::InvalidGenotype(format!("{name} cell: {msg}")));
            if nodes.is_empty() {
                return bad("no nodes".into());
            }
            for (j, genes) in nodes.iter().enumerate() {
                if genes.is_empty() {
                    return bad(format!("node {j} has no incoming edge"));
                }
                if let Some(&(op, input)) = genes.iter().find(|(_, input)| *input >= num_inputs + j)
                {
                    return bad(format!(
                        "node {j} (state {}) reads state {input} via {op}; it may read states 0..{}",
                        num_inputs + j,
                        num_inputs + j
                    ));
                }
            }
            let states = num_inputs + nodes.len();
            if concat.is_empty() {
                return bad("empty concat list".into());
            }
            if let Some(&s) = concat.iter().find(|&&s| s >= states) {
                return bad(format!(
                    "concat names state {s}, the cell has states 0..{states}"
                ));
            }
            let mut sorted = concat.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != concat.len() {
                return bad(format!("concat {concat:?} repeats a state"));
            }
        }
        Ok(())
    }

    /// The official text form, e.g. `Genotype(normal=[('sep_conv_3x3', 0), ...],
    /// normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=[2, 3, 4, 5])`. Cells whose
    /// nodes do not all have two genes are printed grouped per node (`[[(..), ..], ..]`, the
    /// pt.darts form), which [`Genotype::from_str`] reads back.
    pub fn to_darts_string(&self) -> String {
        fn genes(out: &mut String, nodes: &[Vec<Gene>]) {
            let pair = |(op, i): &Gene| format!("('{}', {i})", op.name());
            let flat = nodes.iter().all(|g| g.len() == 2);
            if flat {
                let pairs: Vec<String> = nodes.iter().flatten().map(pair).collect();
                let _ = write!(out, "[{}]", pairs.join(", "));
            } else {
                let groups: Vec<String> = nodes
                    .iter()
                    .map(|g| format!("[{}]", g.iter().map(pair).collect::<Vec<_>>().join(", ")))
                    .collect();
                let _ = write!(out, "[{}]", groups.join(", "));
            }
        }
        let list = |v: &[usize]| {
            format!(
                "[{}]",
                v.iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut out = String::from("Genotype(normal=");
        genes(&mut out, &self.normal);
        let _ = write!(
            out,
            ", normal_concat={}, reduce=",
            list(&self.normal_concat)
        );
        genes(&mut out, &self.reduce);
        let _ = write!(out, ", reduce_concat={})", list(&self.reduce_concat));
        out
    }

    pub fn to_json(&self) -> Result<String, NasError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn from_json(text: &str) -> Result<Self, NasError> {
        Ok(serde_json::from_str(text)?)
    }

    /// Either form: JSON when the text starts with `{`, else the DARTS text form.
    pub fn parse_any(text: &str) -> Result<Self, NasError> {
        if text.trim_start().starts_with('{') {
            Self::from_json(text)
        } else {
            text.parse()
        }
    }

    /// Writes pretty JSON.
    pub fn save_json(&self, path: impl AsRef<Path>) -> Result<(), NasError> {
        let path = path.as_ref();
        std::fs::write(path, self.to_json()? + "\n").map_err(|source| NasError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads a file holding JSON or the DARTS text form.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, NasError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| NasError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_any(&text)
    }

    /// NAS-Bench-201 arch string of the normal cell, e.g.
    /// `|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|`.
    /// Gene inputs are the benchmark's node indices (state 0 is the input node).
    pub fn to_nas_bench_201_string(&self) -> String {
        let nodes: Vec<String> = self
            .normal
            .iter()
            .map(|genes| {
                let ops: Vec<String> = genes
                    .iter()
                    .map(|(op, i)| format!("{}~{i}", op.name()))
                    .collect();
                format!("|{}|", ops.join("|"))
            })
            .collect();
        nodes.join("+")
    }

    /// Parses a NAS-Bench-201 arch string into a one-input genotype (concat: the last node).
    pub fn from_nas_bench_201_str(text: &str) -> Result<Self, NasError> {
        let err = |msg: String| NasError::GenotypeParse {
            line: 1,
            column: 1,
            message: msg,
        };
        let mut normal = Vec::new();
        for (j, node) in text.trim().split('+').enumerate() {
            let inner = node
                .strip_prefix('|')
                .and_then(|n| n.strip_suffix('|'))
                .ok_or_else(|| {
                    err(format!(
                        "node {} `{node}` is not of the form |op~i|...|",
                        j + 1
                    ))
                })?;
            let genes = inner
                .split('|')
                .map(|item| {
                    let (op, input) = item
                        .split_once('~')
                        .ok_or_else(|| err(format!("`{item}` is not of the form op~input")))?;
                    let input = input
                        .parse::<usize>()
                        .map_err(|_| err(format!("`{input}` in `{item}` is not an index")))?;
                    Ok((op.parse::<OpKind>()?, input))
                })
                .collect::<Result<Vec<Gene>, NasError>>()?;
            normal.push(genes);
        }
        let genotype = Genotype {
            normal_concat: vec![normal.len()],
            normal,
            reduce: Vec::new(),
            reduce_concat: Vec::new(),
        };
        genotype.validate(1, false)?;
        Ok(genotype)
    }

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

impl fmt::Display for Genotype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_darts_string())
    }
}

impl FromStr for Genotype {
    type Err = NasError;

    /// Parses the official text form (flat pairs or grouped per node; concat as a list, a tuple
    /// or `range(a, b)`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Parser::new(text)?.genotype()
    }
}

/// `[num_edges, num_ops]` weights as rows of f64 on the CPU, with shape and NaN checks.
fn weight_rows(space: &CellSpace, weights: &Tensor) -> Result<Vec<Vec<f64>>, NasError> {
    let expected = [space.num_edges() as i64, space.num_ops() as i64];
    if weights.size() != expected {
        return Err(NasError::Shape(format!(
            "op weights {:?}, the {} cell space needs {expected:?}",
            weights.size(),
            space.op_set
        )));
    }
    let rows = Vec::<Vec<f64>>::try_from(
        &weights
            .detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Double),
    )?;
    if rows.iter().flatten().any(|v| v.is_nan()) {
        return Err(NasError::InvalidGenotype(
            "op weights contain NaN (did the search diverge?)".into(),
        ));
    }
    Ok(rows)
}

/// Index of the largest entry among `candidates` (first one on ties, like a strict `>` scan).
fn argmax(row: &[f64], candidates: impl Iterator<Item = usize>) -> Option<usize> {
    candidates.fold(None, |best, k| match best {
        Some(b) if row[k] <= row[b] => Some(b),
        _ => Some(k),
    })
}

fn derive_cell(
    space: &CellSpace,
    weights: &Tensor,
    rule: DeriveRule,
) -> Result<Vec<Vec<Gene>>, NasError> {
    let rows = weight_rows(space, weights)?;
    // The transformer space has one edge per split and needs one op on each: a rule that picks
    // edges (top-2 inputs, GDAS's top-2 (op, input) pairs, which may share an input) has no
    // meaning there. DARTS's rule on its 2-input node keeps both splits with their best op.
    let rule = if space.op_set == super::OpSet::Transformer {
        DeriveRule::Darts
    } else {
        rule
    };
    let ops = space.op_set.ops();
    let none = space.op_set.none_index();
    let non_none = || (0..ops.len()).filter(move |&k| Some(k) != none);
    let mut nodes = Vec::with_capacity(space.num_nodes);
    for node in 0..space.num_nodes {
        let edges = space.node_edges(node);
        let genes: Vec<Gene> = match rule {
            DeriveRule::ArgmaxAll => edges
                .enumerate()
                .map(|(from, e)| (ops[argmax(&rows[e], 0..ops.len()).unwrap_or(0)], from))
                .collect(),
            DeriveRule::Gdas => {
                let mut pairs: Vec<(usize, usize, f64)> = edges
                    .enumerate()
                    .flat_map(|(from, e)| non_none().map(move |k| (from, k, e)))
                    .map(|(from, k, e)| (from, k, rows[e][k]))
                    .collect();
                if pairs.is_empty() {
                    return Err(NasError::Config(format!(
                        "op set {} has no op besides none",
                        space.op_set
                    )));
                }
                // Stable sort, descending, as the official `sorted(edges, key=lambda x: -x[-1])`.
                pairs.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
                pairs
                    .iter()
                    .take(2)
                    .map(|&(from, k, _)| (ops[k], from))
                    .collect()
            }
            DeriveRule::Darts | DeriveRule::RlDarts => {
                let best: Vec<(usize, usize, f64)> = edges
                    .enumerate()
                    .map(|(from, e)| {
                        let k = argmax(&rows[e], non_none()).ok_or_else(|| {
                            NasError::Config(format!(
                                "op set {} has no op besides none",
                                space.op_set
                            ))
                        })?;
                        Ok((from, k, rows[e][k]))
                    })
                    .collect::<Result<_, NasError>>()?;
                let mut ranked = best;
                // Stable sort, descending: ties keep the lower source index first, as Python's
                // `sorted(range(i + 2), key=lambda x: -max(...))` does.
                ranked.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
                ranked
                    .iter()
                    .take(2)
                    .map(|&(from, k, _)| (ops[k], from))
                    .collect()
            }
        };
        nodes.push(genes);
    }
    Ok(nodes)
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

// ---------------------------------------------------------------------------------------------
// Text form parser

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(usize),
    Punct(char),
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Str(s) => write!(f, "'{s}'"),
            Tok::Int(i) => write!(f, "{i}"),
            Tok::Punct(c) => write!(f, "`{c}`"),
            Tok::End => f.write_str("end of input"),
        }
    }
}

/// Tokens with their 1-based (line, column).
struct Parser {
    toks: Vec<(Tok, usize, usize)>,
    pos: usize,
}

impl Parser {
    fn new(text: &str) -> Result<Self, NasError> {
        let mut toks = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        let (mut i, mut line, mut col) = (0, 1, 1);
        let err = |line, column, message: String| NasError::GenotypeParse {
            line,
            column,
            message,
        };
        while i < chars.len() {
            let c = chars[i];
            let (start_line, start_col) = (line, col);
            if c == '\n' {
                i += 1;
                line += 1;
                col = 1;
                continue;
            }
            if c.is_whitespace() {
                i += 1;
                col += 1;
                continue;
            }
            if c == '\'' || c == '"' {
                let mut j = i + 1;
                while j < chars.len() && chars[j] != c && chars[j] != '\n' {
                    j += 1;
                }
                if j >= chars.len() || chars[j] != c {
                    return Err(err(start_line, start_col, "unterminated string".into()));
                }
                toks.push((
                    Tok::Str(chars[i + 1..j].iter().collect()),
                    start_line,
                    start_col,
                ));
                col += j + 1 - i;
                i = j + 1;
            } else if c.is_ascii_digit() {
                let mut j = i;
                while j < chars.len() && chars[j].is_ascii_digit() {
                    j += 1;
                }
                let digits: String = chars[i..j].iter().collect();
                let value = digits.parse().map_err(|_| {
                    err(
                        start_line,
                        start_col,
                        format!("integer {digits} is too large"),
                    )
                })?;
                toks.push((Tok::Int(value), start_line, start_col));
                col += j - i;
                i = j;
            } else if c.is_alphabetic() || c == '_' {
                let mut j = i;
                while j < chars.len()
                    && (chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == '.')
                {
                    j += 1;
                }
                toks.push((
                    Tok::Ident(chars[i..j].iter().collect()),
                    start_line,
                    start_col,
                ));
                col += j - i;
                i = j;
            } else if "()[],=".contains(c) {
                toks.push((Tok::Punct(c), start_line, start_col));
                i += 1;
                col += 1;
            } else {
                return Err(err(
                    start_line,
                    start_col,
                    format!("unexpected character `{c}`"),
                ));
            }
        }
        toks.push((Tok::End, line, col));
        Ok(Self { toks, pos: 0 })
    }

    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }

    fn error<T>(&self, message: String) -> Result<T, NasError> {
        let (_, line, column) = self.toks[self.pos];
        Err(NasError::GenotypeParse {
            line,
            column,
            message,
        })
    }

    fn next(&mut self) -> Tok {
        let tok = self.toks[self.pos].0.clone();
        if tok != Tok::End {
            self.pos += 1;
        }
        tok
    }

    fn expect(&mut self, c: char) -> Result<(), NasError> {
        match self.peek() {
            Tok::Punct(p) if *p == c => {
                self.pos += 1;
                Ok(())
            }
            other => self.error(format!("expected `{c}`, found {other}")),
        }
    }

    /// Consumes `c` if it is next.
    fn eat(&mut self, c: char) -> bool {
        if *self.peek() == Tok::Punct(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn int(&mut self) -> Result<usize, NasError> {
        match self.peek() {
            Tok::Int(v) => {
                let v = *v;
                self.pos += 1;
                Ok(v)
            }
            other => self.error(format!("expected an integer, found {other}")),
        }
    }

    fn genotype(mut self) -> Result<Genotype, NasError> {
        // Accept `Genotype(...)` and module-qualified names (`genotypes.Genotype(...)`).
        match self.peek() {
            Tok::Ident(name) if name == "Genotype" || name.ends_with(".Genotype") => {
                self.pos += 1;
            }
            other => return self.error(format!("expected `Genotype(`, found {other}")),
        }
        self.expect('(')?;
        let (mut normal, mut normal_concat, mut reduce, mut reduce_concat) =
            (None, None, None, None);
        while !self.eat(')') {
            let field = match self.next() {
                Tok::Ident(field) => field,
                other => {
                    self.pos -= usize::from(other != Tok::End);
                    return self.error(format!("expected a field name (normal, normal_concat, reduce, reduce_concat), found {other}"));
                }
            };
            let field_pos = self.pos - 1;
            self.expect('=')?;
            let duplicate = match field.as_str() {
                "normal" => normal.replace(self.genes()?).is_some(),
                "reduce" => reduce.replace(self.genes()?).is_some(),
                "normal_concat" => normal_concat.replace(self.concat()?).is_some(),
                "reduce_concat" => reduce_concat.replace(self.concat()?).is_some(),
                _ => {
                    self.pos = field_pos;
                    return self.error(format!(
                        "unknown field `{field}`; a Genotype has normal, normal_concat, reduce, reduce_concat"
                    ));
                }
            };
            if duplicate {
                self.pos = field_pos;
                return self.error(format!("field `{field}` given twice"));
            }
            if !self.eat(',') {
                self.expect(')')?;
                break;
            }
        }
        if *self.peek() != Tok::End {
            return self.error(format!("unexpected {} after the closing `)`", self.peek()));
        }
        let missing = |name: &str| NasError::GenotypeParse {
            line: 1,
            column: 1,
            message: format!("missing field `{name}`"),
        };
        Ok(Genotype {
            normal: normal.ok_or_else(|| missing("normal"))?,
            normal_concat: normal_concat.ok_or_else(|| missing("normal_concat"))?,
            reduce: reduce.ok_or_else(|| missing("reduce"))?,
            reduce_concat: reduce_concat.ok_or_else(|| missing("reduce_concat"))?,
        })
    }

    /// `[('op', i), ...]` (two per node) or `[[('op', i), ...], ...]` (grouped per node).
    fn genes(&mut self) -> Result<Vec<Vec<Gene>>, NasError> {
        let list_start = self.pos;
        self.expect('[')?;
        if *self.peek() == Tok::Punct('[') {
            let mut nodes = Vec::new();
            while !self.eat(']') {
                self.expect('[')?;
                let mut genes = Vec::new();
                while !self.eat(']') {
                    genes.push(self.pair()?);
                    if !self.eat(',') {
                        self.expect(']')?;
                        break;
                    }
                }
                nodes.push(genes);
                if !self.eat(',') {
                    self.expect(']')?;
                    break;
                }
            }
            return Ok(nodes);
        }
        let mut pairs = Vec::new();
        while !self.eat(']') {
            pairs.push(self.pair()?);
            if !self.eat(',') {
                self.expect(']')?;
                break;
            }
        }
        if pairs.len() % 2 != 0 {
            self.pos = list_start;
            return self.error(format!(
                "the flat DARTS form lists two (op, input) pairs per node, found {} pairs; group them per node as [[...], ...] for other counts",
                pairs.len()
            ));
        }
        Ok(pairs.chunks(2).map(<[Gene]>::to_vec).collect())
    }

    /// `('op', i)`.
    fn pair(&mut self) -> Result<Gene, NasError> {
        self.expect('(')?;
        let op = match self.peek().clone() {
            Tok::Str(name) => match name.parse::<OpKind>() {
                Ok(op) => op,
                Err(e) => return self.error(e.to_string()),
            },
            other => return self.error(format!("expected a quoted op name, found {other}")),
        };
        self.pos += 1;
        self.expect(',')?;
        let input = self.int()?;
        self.eat(',');
        self.expect(')')?;
        Ok((op, input))
    }

    /// `[2, 3, 4, 5]`, `(2, 3)`, `range(2, 6)` or `range(6)`.
    fn concat(&mut self) -> Result<Vec<usize>, NasError> {
        match self.peek().clone() {
            Tok::Ident(name) if name == "range" => {
                self.pos += 1;
                self.expect('(')?;
                let first = self.int()?;
                let (start, end) = if self.eat(',') {
                    (first, self.int()?)
                } else {
                    (0, first)
                };
                self.eat(',');
                self.expect(')')?;
                Ok((start..end).collect())
            }
            Tok::Punct(open @ ('[' | '(')) => {
                let close = if open == '[' { ']' } else { ')' };
                self.pos += 1;
                let mut values = Vec::new();
                while !self.eat(close) {
                    values.push(self.int()?);
                    if !self.eat(',') {
                        self.expect(close)?;
                        break;
                    }
                }
                Ok(values)
            }
            other => self.error(format!(
                "expected a concat list `[2, 3, 4, 5]` or `range(2, 6)`, found {other}"
            )),
        }
    }
}

#[cfg(test)]
#[path = "genotype_tests.rs"]
mod tests;
