//! Derivation: op weights `[num_edges, num_ops]` become a discrete cell, by DARTS / RL-DARTS
//! top-2, SNAS argmax on every edge, or GDAS's top-2 (op, input) pairs ([`DeriveRule`]).

use tch::{Device, Kind, Tensor};

use super::{DeriveRule, Gene, Genotype};
use crate::nas::error::NasError;
use crate::nas::ops::OpSet;
use crate::nas::space::CellSpace;

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
    let rule = if space.op_set == OpSet::Transformer {
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
