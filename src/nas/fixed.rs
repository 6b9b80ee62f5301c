//! Networks built from a [`Genotype`]: the DARTS CIFAR evaluation network (Liu et al., ICLR
//! 2019, `cnn/model.py` `NetworkCIFAR`: drop-path, auxiliary head) and the derived RL-DARTS
//! encoder (Miao et al. 2021), retrained from scratch after the search.

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::cell::{combine_nodes, one_input_preprocess};
use super::network::{is_reduction, RlSkeleton};
use super::ops::{
    conv_layer, factorized_reduce_plan, network_input_layout, relu_conv_bn_plan,
    torch_batch_norm2d, torch_linear, ConvGeom, LayerDesc, Sequence,
};
use super::{
    CellInputs, CellOutput, CellType, Gene, Genotype, NasError, NodeNorm, Op, OpKind, OpSpec,
    RlDartsConfig, StrideStyle,
};
use crate::agents::compute::{self, Conv2d};
use crate::agents::Encoder;

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
fn drop_path(x: &Tensor, p: f64) -> Tensor {
    let keep = 1.0 - p;
    let mask = Tensor::rand([x.size()[0], 1, 1, 1], (x.kind(), x.device()))
        .lt(keep)
        .to_kind(x.kind());
    x / keep * mask
}

// ---------------------------------------------------------------------------------------------
// DARTS evaluation network

/// DARTS CIFAR evaluation network. Defaults: the paper's (C = 36, 20 cells, auxiliary head,
/// drop-path 0.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DartsEvalConfig {
    /// Initial channels. DARTS CIFAR-10: 36.
    pub c: i64,
    /// Cells; `layers/3` and `2*layers/3` reduce. DARTS CIFAR-10: 20.
    pub layers: usize,
    pub num_classes: i64,
    /// Auxiliary classifier on the output of cell `2*layers/3` (its loss weight, 0.4 in DARTS,
    /// belongs to the training loop).
    pub auxiliary: bool,
    /// Maximum drop-path probability; DARTS ramps it linearly over training via
    /// [`DartsEvalNet::set_drop_path_prob`]. DARTS: 0.2.
    pub drop_path_prob: f64,
    pub stem_multiplier: i64,
    pub in_channels: i64,
    /// Input height = width; fixes the auxiliary head's input size (DARTS assumes 8x8 there,
    /// i.e. 32x32 images).
    pub image_size: i64,
}

impl Default for DartsEvalConfig {
    fn default() -> Self {
        Self {
            c: 36,
            layers: 20,
            num_classes: 10,
            auxiliary: true,
            drop_path_prob: 0.2,
            stem_multiplier: 3,
            in_channels: 3,
            image_size: 32,
        }
    }
}

/// DARTS's AuxiliaryHeadCIFAR: relu, avgpool 5 stride 3, conv1x1 -> 128, BN, relu,
/// conv2x2 -> 768, BN, relu, linear.
#[derive(Debug)]
struct AuxiliaryHead {
    conv1: Conv2d,
    bn1: nn::BatchNorm,
    conv2: Conv2d,
    bn2: nn::BatchNorm,
    classifier: nn::Linear,
}

impl AuxiliaryHead {
    fn new(p: nn::Path, c: i64, size: i64, num_classes: i64) -> Result<Self, NasError> {
        // avgpool 5/3 then conv 2x2 (no padding).
        let pooled = (size - 5) / 3 + 1;
        let out = pooled - 1;
        if size < 5 || out < 1 {
            return Err(NasError::Config(format!(
                "the auxiliary head needs a feature map of at least 8x8 (images of 32x32), got {size}x{size}"
            )));
        }
        let geom = |c_in, c_out, kernel| ConvGeom {
            c_in,
            c_out,
            kernel,
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: false,
        };
        Ok(Self {
            conv1: conv_layer(&p / "conv1", &geom(c, 128, 1)),
            bn1: torch_batch_norm2d(&p / "bn1", 128, true),
            conv2: conv_layer(&p / "conv2", &geom(128, 768, 2)),
            bn2: torch_batch_norm2d(&p / "bn2", 768, true),
            classifier: torch_linear(&p / "classifier", 768 * out * out, num_classes),
        })
    }

    /// # Shapes
    /// `[N, C, 8, 8] -> [N, num_classes]`
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let h = x
            .relu()
            .avg_pool2d([5, 5], [3, 3], [0, 0], false, false, None);
        let h = self.bn1.forward_t(&self.conv1.forward(&h), train).relu();
        let h = self.bn2.forward_t(&self.conv2.forward(&h), train).relu();
        compute::linear_layer(&self.classifier, &h.flatten(1, -1))
    }
}

/// The DARTS evaluation network for a genotype.
#[derive(Debug)]
pub struct DartsEvalNet {
    config: DartsEvalConfig,
    stem: Sequence,
    cells: Vec<FixedCell>,
    auxiliary: Option<AuxiliaryHead>,
    classifier: nn::Linear,
    drop_path_prob: f64,
}

impl DartsEvalNet {
    /// Variables under `p`: `stem`, `cells.{i}`, `auxiliary_head`, `classifier`.
    pub fn new(
        p: nn::Path,
        config: &DartsEvalConfig,
        genotype: &Genotype,
    ) -> Result<Self, NasError> {
        if config.c <= 0 || config.layers == 0 || config.num_classes <= 0 || config.image_size <= 0
        {
            return Err(NasError::Config(format!(
                "DARTS evaluation network: every size must be positive, got {config:?}"
            )));
        }
        if !(0.0..1.0).contains(&config.drop_path_prob) {
            return Err(NasError::Config(format!(
                "drop_path_prob must be in [0, 1), got {}",
                config.drop_path_prob
            )));
        }
        genotype.validate(2, true)?;
        let c_stem = config.stem_multiplier * config.c;
        let stem_geom = ConvGeom {
            c_in: config.in_channels,
            c_out: c_stem,
            kernel: 3,
            stride: 1,
            padding: 1,
            dilation: 1,
            groups: 1,
            bias: false,
        };
        let stem = Sequence::new(
            &p / "stem",
            vec![
                LayerDesc::Conv {
                    name: "conv",
                    geom: stem_geom,
                },
                LayerDesc::BatchNorm {
                    name: "bn",
                    channels: c_stem,
                    affine: true,
                },
            ],
        );
        let (mut c_prev_prev, mut c_prev, mut c_curr) = (c_stem, c_stem, config.c);
        let mut reduction_prev = false;
        let mut size = config.image_size;
        let mut aux = None;
        let mut cells = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let reduction = is_reduction(i, config.layers);
            if reduction {
                c_curr *= 2;
                size = (size + 1) / 2;
            }
            let cell_type = if reduction {
                CellType::Reduce
            } else {
                CellType::Normal
            };
            let (genes, concat) = genotype.cell(cell_type);
            let cell_config = FixedCellConfig {
                c: c_curr,
                reduction,
                inputs: CellInputs::Two {
                    c_prev_prev,
                    c_prev,
                    reduction_prev,
                },
                output: CellOutput::Concat,
                node_norm: NodeNorm::None,
                affine: true,
                stride_style: StrideStyle::Darts,
            };
            let cell = FixedCell::new(&p / "cells" / i, genes, concat, cell_config)?;
            reduction_prev = reduction;
            c_prev_prev = c_prev;
            c_prev = cell.out_channels();
            cells.push(cell);
            if i == 2 * config.layers / 3 && config.auxiliary {
                aux = Some(AuxiliaryHead::new(
                    &p / "auxiliary_head",
                    c_prev,
                    size,
                    config.num_classes,
                )?);
            }
        }
        let classifier = torch_linear(&p / "classifier", c_prev, config.num_classes);
        Ok(Self {
            config: config.clone(),
            stem,
            cells,
            auxiliary: aux,
            classifier,
            drop_path_prob: config.drop_path_prob,
        })
    }

    pub fn config(&self) -> &DartsEvalConfig {
        &self.config
    }

    /// DARTS sets `drop_path_prob * epoch / epochs` at the start of every epoch.
    pub fn set_drop_path_prob(&mut self, p: f64) {
        self.drop_path_prob = p;
    }

    pub fn drop_path_prob(&self) -> f64 {
        self.drop_path_prob
    }

    /// Logits, and the auxiliary logits when training with the auxiliary head.
    ///
    /// # Shapes
    /// `x: [N, in_channels, H, W]` -> (`[N, num_classes]`, `Some([N, num_classes])` if training
    /// with `auxiliary`)
    pub fn forward_t(&self, x: &Tensor, train: bool) -> (Tensor, Option<Tensor>) {
        // The run's layout; NHWC on the CPU when none is set, like the search network.
        let s = self.stem.forward_t(&network_input_layout(x), train);
        let (mut s0, mut s1) = (s.shallow_clone(), s);
        let mut aux_logits = None;
        let aux_at = 2 * self.config.layers / 3;
        for (i, cell) in self.cells.iter().enumerate() {
            let out = cell.forward_t(&[&s0, &s1], self.drop_path_prob, train);
            s0 = s1;
            s1 = out;
            if i == aux_at && train {
                aux_logits = self
                    .auxiliary
                    .as_ref()
                    .map(|head| head.forward_t(&s1, train));
            }
        }
        let pooled = s1.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        (compute::linear_layer(&self.classifier, &pooled), aux_logits)
    }
}

// ---------------------------------------------------------------------------------------------
// Derived RL-DARTS encoder

/// The RL-DARTS encoder rebuilt with discrete cells (same layout as the supernet it came
/// from: same [`RlDartsConfig`]), for retraining from scratch.
#[derive(Debug)]
pub struct RlDartsFixedEncoder {
    skeleton: RlSkeleton<FixedCell>,
}

impl RlDartsFixedEncoder {
    /// `genotype` must use ops of `config.op_set` and, for the "standard" variant, have a
    /// reduce cell.
    pub fn new(
        p: nn::Path,
        config: &RlDartsConfig,
        genotype: &Genotype,
        obs_chw: &[i64],
    ) -> Result<Self, NasError> {
        genotype.validate(1, config.has_reduction_cells())?;
        for (op, _) in genotype.normal.iter().chain(&genotype.reduce).flatten() {
            if *op != OpKind::None {
                config.op_set.check_member(*op)?;
            }
        }
        let mut make = |cp: nn::Path, c_prev: i64, c: i64, reduction: bool| {
            let (genes, concat) = genotype.cell(if reduction {
                CellType::Reduce
            } else {
                CellType::Normal
            });
            let cell_config = FixedCellConfig {
                c,
                reduction,
                inputs: CellInputs::One { c_prev },
                output: config.cell_output,
                node_norm: config.node_norm,
                affine: true,
                stride_style: config.op_set.stride_style(),
            };
            let cell = FixedCell::new(cp, genes, concat, cell_config)?;
            let out = cell.out_channels();
            Ok((cell, out))
        };
        Ok(Self {
            skeleton: RlSkeleton::new(&p, config, obs_chw, &mut make)?,
        })
    }
}

impl Encoder for RlDartsFixedEncoder {
    /// Ops in inference mode, as the supernet's ([`crate::nas::RlDartsSupernet`] says why).
    ///
    /// # Shapes
    /// `[N, C, H, W]` f32 in [0, 1] -> `[N, embedding]`
    fn features(&self, obs: &Tensor, _arch: &()) -> Tensor {
        self.skeleton
            .forward(obs, |cell, x, _reduction| cell.forward_t(&[x], 0.0, false))
    }

    fn feature_dim(&self) -> i64 {
        self.skeleton.embedding()
    }
}

#[cfg(test)]
#[path = "fixed_tests.rs"]
mod tests;
