//! A derived transformer as a [`Genotype`]: the per-split op choice of the searched layer.
//!
//! [`crate::nas::CellSpace::transformer`] sees a layer as a cell with 2 inputs (the splits) and
//! one node, so the DARTS derivation ("per node keep the 2 strongest incoming edges, op =
//! argmax excluding none") is exactly "argmax op per split, excluding zero": gene
//! `(op, k)` says split `k` runs `op`. `normal` is the encoder layer, `reduce` the decoder
//! layer (whose third split is always cross-attention). The DARTS text form then reads
//! `Genotype(normal=[('conv_1d_7', 0), ('self_attention', 1)], normal_concat=[2], ...)`.

use crate::nas::{Genotype, OpKind};

use super::net::SeqArch;
use super::TransformerError;

/// The op of each split of one layer's genes.
fn split_ops(genes: &[Vec<(OpKind, usize)>], what: &str) -> Result<Vec<OpKind>, TransformerError> {
    let mut ops = [None, None];
    for &(op, from) in genes.iter().flatten() {
        if from > 1 {
            return Err(TransformerError::Config(format!(
                "{what} gene ({op}, {from}): a transformer layer has searchable splits 0 and 1"
            )));
        }
        if !(op == OpKind::None || op == OpKind::SkipConnect || op.is_sequence_op())
            || op == OpKind::CrossAttention
        {
            return Err(TransformerError::Config(format!(
                "{what} split {from}: {op} is not a candidate of the transformer space"
            )));
        }
        ops[from] = Some(op);
    }
    match ops {
        [Some(a), Some(b)] => Ok(vec![a, b]),
        _ => Err(TransformerError::Config(format!(
            "{what}: the genotype must name an op for split 0 and split 1, got {genes:?}"
        ))),
    }
}

/// The derived architecture a genotype describes; `seq2seq` requires the decoder genes.
pub fn arch_of(genotype: &Genotype, seq2seq: bool) -> Result<SeqArch, TransformerError> {
    let encoder = split_ops(&genotype.normal, "encoder (normal)")?;
    let decoder = if seq2seq {
        split_ops(&genotype.reduce, "decoder (reduce)")?
    } else {
        Vec::new()
    };
    Ok(SeqArch::Derived { encoder, decoder })
}

/// The standard transformer as a genotype: self-attention then FFN in every layer (with the
/// decoder's cross-attention split: self-attention, FFN, cross-attention). A reversible
/// transformer in the RevNet / Reformer style, the baseline of equal width and depth.
pub fn standard(seq2seq: bool) -> Genotype {
    let layer = vec![vec![(OpKind::SelfAttention, 0), (OpKind::Ffn, 1)]];
    Genotype {
        normal: layer.clone(),
        normal_concat: vec![2],
        reduce: if seq2seq { layer } else { Vec::new() },
        reduce_concat: if seq2seq { vec![2] } else { Vec::new() },
    }
}

/// A readable form: `encoder: [conv_1d_7 | self_attention]  decoder: [... | ... | cross_attention]`.
pub fn describe(genotype: &Genotype, seq2seq: bool) -> Result<String, TransformerError> {
    let SeqArch::Derived { encoder, decoder } = arch_of(genotype, seq2seq)? else {
        return Ok(String::new());
    };
    let names = |ops: &[OpKind]| ops.iter().map(|o| o.name()).collect::<Vec<_>>().join(" | ");
    let mut text = format!("encoder layer splits: [{}]", names(&encoder));
    if seq2seq {
        text += &format!(
            "\ndecoder layer splits: [{} | cross_attention (fixed)]",
            names(&decoder)
        );
    }
    Ok(text)
}

/// Graphviz DOT of the derived layers: `X_k -> op -> Y_k`, with the inputs each `H_k` reads.
pub fn to_dot(genotype: &Genotype, seq2seq: bool) -> Result<String, TransformerError> {
    let SeqArch::Derived { encoder, decoder } = arch_of(genotype, seq2seq)? else {
        return Ok(String::new());
    };
    let mut dot = String::from("digraph transformer {\n  rankdir=BT;\n  node [shape=box];\n");
    let mut layer = |name: &str, ops: &[OpKind]| {
        let n = ops.len();
        dot += &format!("  subgraph cluster_{name} {{\n    label=\"{name} layer\";\n");
        for (k, op) in ops.iter().enumerate() {
            dot += &format!(
                "    {name}_x{k} [label=\"X{k}\"];\n    {name}_g{k} [label=\"{}\", shape=ellipse];\n    {name}_y{k} [label=\"Y{k}\"];\n",
                op.name()
            );
            dot += &format!("    {name}_x{k} -> {name}_y{k};\n    {name}_g{k} -> {name}_y{k};\n");
            for i in 0..n {
                match i.cmp(&k) {
                    std::cmp::Ordering::Less => {
                        dot += &format!("    {name}_y{i} -> {name}_g{k};\n")
                    }
                    std::cmp::Ordering::Greater => {
                        dot += &format!("    {name}_x{i} -> {name}_g{k};\n")
                    }
                    std::cmp::Ordering::Equal => {}
                }
            }
        }
        dot += "  }\n";
    };
    layer("encoder", &encoder);
    if seq2seq {
        let mut ops = decoder.clone();
        ops.push(OpKind::CrossAttention);
        layer("decoder", &ops);
    }
    dot += "}\n";
    Ok(dot)
}
