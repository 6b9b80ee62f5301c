//! NAS-Bench-201 arch strings (Dong & Yang, ICLR 2020): one `|op~input|...|` group per node,
//! joined by `+`.

use super::{Gene, Genotype};
use crate::nas::error::NasError;
use crate::nas::ops::OpKind;

impl Genotype {
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
}
