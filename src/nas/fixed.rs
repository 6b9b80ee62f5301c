//! The discrete cell built from a genotype's genes (DARTS `cnn/model.py` `Cell`, RL-DARTS's
//! derived cell): what the networks of [`super::network`] are rebuilt from after the search,
//! for retraining from scratch.

use tch::nn;
use tch::Tensor;

use super::cell::{combine_nodes, one_input_preprocess, CellInputs, CellOutput};
use super::error::NasError;
use super::genotype::{Gene, Genotype};
use super::norm::NodeNorm;
use super::ops::{
    conv_layer, factorized_reduce_plan, relu_conv_bn_plan, ConvGeom, Op, OpSpec, Sequence,
    StrideStyle,
};
use crate::agents::compute::Conv2d;

/// How a fixed cell is built (the genes come separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedCellConfig {
    /// Channels of every node.
    pub c: i64,
    /// Stride 2 on the genes reading a cell input.
    pub reduction: bool,
    pub inputs: CellInputs,
    pub output: CellOutput,
    /// Normalisation after each node (RL-DARTS; see [`NodeNorm`]).
    pub node_norm: NodeNorm,
    /// BN affine inside ops and preprocessing (DARTS evaluation: true).
    pub affine: bool,
    pub stride_style: StrideStyle,
}

/// One discrete cell: per node, its genes' ops summed.
#[derive(Debug)]
pub struct FixedCell {
    config: FixedCellConfig,
    num_inputs: usize,
    preprocess: Vec<Sequence>,
    /// Per node: (input state, op).
    nodes: Vec<Vec<(usize, Op)>>,
    concat: Vec<usize>,
    output_proj: Option<Conv2d>,
}

impl FixedCell {
    /// Variables under `p`: `preprocess{0,1}`, `node{j}.{g}_{op}`, `output`.
    pub fn new(
        p: nn::Path,
        genes: &[Vec<Gene>],
        concat: &[usize],
        config: FixedCellConfig,
    ) -> Result<Self, NasError> {
        let c = config.c;
        let (num_inputs, preprocess, c_input) = match config.inputs {
            CellInputs::One { c_prev } => {
                let (preprocess, c_input) = one_input_preprocess(&p, c_prev, c);
                (1, preprocess, c_input)
            }
            CellInputs::Two {
                c_prev_prev,
                c_prev,
                reduction_prev,
            } => {
                let plan0 = if reduction_prev {
                    factorized_reduce_plan(c_prev_prev, c, config.affine)
                } else {
                    relu_conv_bn_plan(c_prev_prev, c, 1, 1, 0, config.affine)
                };
                let plan1 = relu_conv_bn_plan(c_prev, c, 1, 1, 0, config.affine);
                (
                    2,
                    vec![
                        Sequence::new(&p / "preprocess0", plan0),
                        Sequence::new(&p / "preprocess1", plan1),
                    ],
                    c,
                )
            }
        };
        let probe = Genotype {
            normal: genes.to_vec(),
            normal_concat: concat.to_vec(),
            reduce: Vec::new(),
            reduce_concat: Vec::new(),
        };
        probe.validate(num_inputs, false)?;
        if concat.iter().any(|&s| s < num_inputs) {
            return Err(NasError::InvalidGenotype(format!(
                "concat {concat:?} names a cell input; only intermediate nodes (states >= {num_inputs}) can be combined"
            )));
        }
        let mut nodes = Vec::with_capacity(genes.len());
        for (j, node_genes) in genes.iter().enumerate() {
            let node_p = &p / format!("node{j}");
            let ops = node_genes
                .iter()
                .enumerate()
                .map(|(g, &(kind, input))| {
                    let from_input = input < num_inputs;
                    let spec = OpSpec {
                        c_in: if from_input { c_input } else { c },
                        c_out: c,
                        stride: if config.reduction && from_input { 2 } else { 1 },
                        affine: config.affine,
                        pool_bn: false,
                        stride_style: config.stride_style,
                    };
                    // The gene index keeps paths unique when a node uses one op twice.
                    Ok((
                        input,
                        Op::new(&node_p / format!("{g}_{}", kind.name()), kind, spec)?,
                    ))
                })
                .collect::<Result<Vec<_>, NasError>>()?;
            nodes.push(ops);
        }
        let output_proj = (config.output == CellOutput::ConcatConv1x1).then(|| {
            let geom = ConvGeom {
                c_in: concat.len() as i64 * c,
                c_out: c,
                kernel: 1,
                stride: 1,
                padding: 0,
                dilation: 1,
                groups: 1,
                bias: true,
            };
            conv_layer(&p / "output", &geom)
        });
        Ok(Self {
            config,
            num_inputs,
            preprocess,
            nodes,
            concat: concat.to_vec(),
            output_proj,
        })
    }

    /// Output channels.
    pub fn out_channels(&self) -> i64 {
        self.config
            .output
            .channels(self.concat.len(), self.config.c)
    }

    pub fn config(&self) -> &FixedCellConfig {
        &self.config
    }

    /// # Shapes
    /// Like [`crate::nas::SearchCell::forward_t`]: `num_inputs` tensors `[N, C_i, H_i, W_i]`
    /// -> `[N, out_channels, H', W']`.
    ///
    /// `drop_prob`: DARTS drop-path on every non-identity op output while training.
    pub fn forward_t(&self, inputs: &[&Tensor], drop_prob: f64, train: bool) -> Tensor {
        assert_eq!(
            inputs.len(),
            self.num_inputs,
            "cell expects {} inputs",
            self.num_inputs
        );
        let mut states: Vec<Tensor> = if self.preprocess.is_empty() {
            inputs.iter().map(|x| x.shallow_clone()).collect()
        } else {
            self.preprocess
                .iter()
                .zip(inputs)
                .map(|(pre, x)| pre.forward_t(x, train))
                .collect()
        };
        for ops in &self.nodes {
            let mut sum: Option<Tensor> = None;
            for (input, op) in ops {
                let mut h = op.forward_t(&states[*input], train);
                if train && drop_prob > 0.0 && !op.is_identity() {
                    h = drop_path(&h, drop_prob);
                }
                sum = Some(match sum {
                    None => h,
                    Some(acc) => acc + h,
                });
            }
            let mut s = sum.expect("validated: every node has a gene");
            s = self.config.node_norm.apply(&s);
            states.push(s);
        }
        let picked: Vec<Tensor> = self
            .concat
            .iter()
            .map(|&i| states[i].shallow_clone())
            .collect();
        combine_nodes(&picked, self.config.output, self.output_proj.as_ref())
    }
}

/// DARTS's `drop_path`: zero whole samples with probability `p`, scale survivors by 1/(1-p).
///
/// # Shapes
/// `[N, C, H, W] -> [N, C, H, W]`
pub(super) fn drop_path(x: &Tensor, p: f64) -> Tensor {
    let keep = 1.0 - p;
    let mask = Tensor::rand([x.size()[0], 1, 1, 1], (x.kind(), x.device()))
        .lt(keep)
        .to_kind(x.kind());
    x / keep * mask
}
