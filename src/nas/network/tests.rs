//! Unit tests of the supernets (kept apart so each module stays one concern).
use super::*;
use crate::agents::Encoder;
use crate::nas::{AlphaInit, ArchParams, CellOutput, OpSet, OpWeights};
use tch::{Device, Kind};

fn no_renamed_variables(vs: &nn::VarStore) {
    let names: Vec<String> = vs.variables().into_keys().collect();
    assert!(
        names.iter().all(|n| !n.contains("__")),
        "renamed variables: {names:?}"
    );
}

#[test]
fn darts_search_network_classifies_cifar_sized_images() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = DartsSearchConfig {
        c: 4,
        layers: 5,
        ..Default::default()
    };
    let net = DartsSearchNet::new(vs.root() / "net", &cfg).unwrap();
    let arch = ArchParams::new(Device::Cpu, net.space(), true, AlphaInit::default()).unwrap();
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let logits = net.forward_with(&x, &arch.softmax_weights(1.0), true);
    assert_eq!(logits.size(), [2, 10]);
    no_renamed_variables(&vs);
    assert!(vs
        .variables()
        .contains_key("net.cells.1.edge13.dil_conv_5x5.dw.weight"));
}

#[test]
fn darts_search_network_at_paper_size_builds() {
    // C = 16, 8 cells: 14 edges x 8 ops in each of 8 cells.
    let vs = nn::VarStore::new(Device::Cpu);
    let net = DartsSearchNet::new(vs.root(), &DartsSearchConfig::default()).unwrap();
    let reductions: Vec<usize> = (0..8)
        .filter(|&i| net.cells[i].config().reduction)
        .collect();
    assert_eq!(reductions, [2, 5]);
    assert_eq!(net.cells[7].config().out_channels(), 4 * 64);
    no_renamed_variables(&vs);
    let table = net.op_costs([3, 32, 32]);
    // `none` costs nothing; sep_conv_5x5 has more parameters than sep_conv_3x3 everywhere.
    assert!(table.normal.iter().all(|row| row[0] == OpCost::default()));
    assert!(table.normal.iter().all(|row| row[5].params > row[4].params));
}

#[test]
fn rl_darts_standard_encoder_outputs_256_features() {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = RlDartsConfig::default();
    let arch = ArchParams::new(
        Device::Cpu,
        cfg.space(),
        cfg.has_reduction_cells(),
        AlphaInit::default(),
    )
    .unwrap();
    let enc = RlDartsSupernet::new(vs.root() / "encoder", &cfg, &[3, 64, 64]).unwrap();
    let obs = Tensor::rand([4, 3, 64, 64], (Kind::Float, Device::Cpu));
    let features = enc.features(&obs, &arch.softmax_weights(1.0));
    assert_eq!(features.size(), [4, 256]);
    assert_eq!(enc.feature_dim(), 256);
    no_renamed_variables(&vs);
    // 9 cells: 3 stages x (reduce + 2 normal).
    let cells = enc
        .skeleton
        .cells_with_inputs([3, 64, 64], |c, chw| c.op_costs(&[chw]).1);
    assert_eq!(cells.len(), 9);
    assert_eq!(cells.iter().filter(|(_, r, _)| *r).count(), 3);
    // The PPO-style loss reaches the alphas through the op weights it was given, twice in a
    // row (fresh weights per forward, so the second backward has its own graph).
    for _ in 0..2 {
        let features = enc.features(&obs, &arch.softmax_weights(1.0));
        features.mean(Kind::Float).backward();
    }
    assert!(arch.alpha_normal().grad().defined());
    assert!(arch.alpha_reduce().unwrap().grad().defined());
}

#[test]
fn rl_darts_impala_variant_and_other_op_sets() {
    tch::manual_seed(2);
    for (variant, op_set, output) in [
        (
            RlDartsVariant::Impala,
            OpSet::RlDarts,
            CellOutput::ConcatConv1x1,
        ),
        (
            RlDartsVariant::Standard,
            OpSet::RlDartsConv,
            CellOutput::Sum,
        ),
        (RlDartsVariant::Standard, OpSet::RlDarts, CellOutput::Concat),
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = RlDartsConfig {
            variant,
            op_set,
            cell_output: output,
            stem: true,
            ..Default::default()
        };
        let arch = ArchParams::new(
            Device::Cpu,
            cfg.space(),
            cfg.has_reduction_cells(),
            AlphaInit::default(),
        )
        .unwrap();
        let enc = RlDartsSupernet::new(vs.root(), &cfg, &[3, 20, 20]).unwrap();
        let obs = Tensor::rand([2, 3, 20, 20], (Kind::Float, Device::Cpu));
        let weights = tch::no_grad(|| arch.softmax_weights(1.0));
        assert_eq!(
            enc.features(&obs, &weights).size(),
            [2, 256],
            "{variant:?} {op_set} {output:?}"
        );
        no_renamed_variables(&vs);
    }
}

#[test]
fn gdas_style_hard_weights_drive_the_encoder() {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = RlDartsConfig {
        channels: vec![4, 8],
        op_set: OpSet::RlDartsConv,
        ..Default::default()
    };
    let space = cfg.space();
    let arch = ArchParams::new(Device::Cpu, space, true, AlphaInit::default()).unwrap();
    // Straight-through one-hot of op 0 (conv_3x3_relu) on every edge.
    let hard = |alpha: &Tensor| {
        let p = alpha.softmax(-1, Kind::Float);
        let h = p
            .zeros_like()
            .index_fill(1, &Tensor::from_slice(&[0i64]), 1.0);
        let index = vec![0usize; space.num_edges()];
        OpWeights::one_hot(&h - p.detach() + &p, &index).expect("valid indices")
    };
    let weights = CellWeights {
        normal: hard(arch.alpha_normal()),
        reduce: Some(hard(arch.alpha_reduce().unwrap())),
    };
    let enc = RlDartsSupernet::new(vs.root(), &cfg, &[3, 16, 16]).unwrap();
    let obs = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu));
    enc.features(&obs, &weights).sum(Kind::Float).backward();
    let g = arch.alpha_normal().grad();
    assert!(g.defined() && f64::try_from(g.abs().sum(Kind::Float)).unwrap() > 0.0);
    // Only conv_3x3_relu ran: the dilated conv beside it on the same edge got no gradient.
    let vars = vs.variables();
    assert!(vars["stage0.reduce.edge0.conv_3x3_relu.conv.weight"]
        .grad()
        .defined());
    assert!(!vars["stage0.reduce.edge0.dil_conv_3x3_relu.conv.weight"]
        .grad()
        .defined());
}

#[test]
fn nas_bench_201_search_network_runs() {
    tch::manual_seed(4);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = NasBench201Config {
        c: 4,
        cells_per_stage: 2,
        ..Default::default()
    };
    let net = NasBench201SearchNet::new(vs.root(), &cfg).unwrap();
    let arch = ArchParams::new(Device::Cpu, net.space(), false, AlphaInit::default()).unwrap();
    let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
    assert_eq!(
        net.forward_with(&x, &arch.softmax_weights(1.0), true)
            .size(),
        [2, 10]
    );
    assert_eq!(arch.alpha_normal().size(), [6, 5]);
    no_renamed_variables(&vs);
    let table = net.op_costs([3, 16, 16]);
    // nor_conv_3x3 (index 3) costs more FLOPs than nor_conv_1x1 (index 2) on every edge.
    assert!(table.normal.iter().all(|row| row[3].flops > row[2].flops));
}

/// Every network, dense and sparse weights, forward and backward, on `device`: checks that
/// nothing is left on the CPU (index tensors, zeros, masks) and that gradients reach the
/// alphas there.
fn networks_run_on(device: Device) {
    tch::manual_seed(6);
    let x32 = Tensor::randn([2, 3, 32, 32], (Kind::Float, device));

    let vs = nn::VarStore::new(device);
    let cfg = DartsSearchConfig {
        c: 4,
        layers: 3,
        ..Default::default()
    };
    let net = DartsSearchNet::new(vs.root(), &cfg).unwrap();
    let arch = ArchParams::new(device, net.space(), true, AlphaInit::default()).unwrap();
    let logits = net.forward_with(&x32, &arch.softmax_weights(1.0), true);
    assert_eq!(logits.device(), device);
    logits.sum(Kind::Float).backward();
    assert!(arch.alpha_reduce().unwrap().grad().defined());
    let index = vec![3usize; 14]; // skip_connect everywhere (FactorizedReduce in reductions)
    let hard = |alpha: &Tensor| {
        let w =
            alpha
                .zeros_like()
                .index_fill(1, &Tensor::from_slice(&[3i64]).to_device(device), 1.0);
        OpWeights::one_hot(w, &index).unwrap()
    };
    let sparse = CellWeights {
        normal: hard(arch.alpha_normal()),
        reduce: Some(hard(arch.alpha_reduce().unwrap())),
    };
    assert_eq!(net.forward_with(&x32, &sparse, false).size(), [2, 10]);

    let vs = nn::VarStore::new(device);
    let cfg = RlDartsConfig {
        channels: vec![8, 16],
        ..Default::default()
    };
    let arch = ArchParams::new(device, cfg.space(), true, AlphaInit::default()).unwrap();
    let enc = RlDartsSupernet::new(vs.root(), &cfg, &[3, 32, 32]).unwrap();
    let features = enc.features(&x32.sigmoid(), &arch.softmax_weights(1.0));
    assert_eq!((features.size(), features.device()), (vec![2, 256], device));
    features.mean(Kind::Float).backward();
    assert!(arch.alpha_normal().grad().defined());

    let vs = nn::VarStore::new(device);
    let cfg = NasBench201Config {
        c: 4,
        cells_per_stage: 1,
        ..Default::default()
    };
    let net = NasBench201SearchNet::new(vs.root(), &cfg).unwrap();
    let arch = ArchParams::new(device, net.space(), false, AlphaInit::default()).unwrap();
    assert_eq!(
        net.forward_with(&x32, &arch.softmax_weights(1.0), true)
            .device(),
        device
    );

    let genotype = crate::nas::DARTS_V2.to_genotype();
    let vs = nn::VarStore::new(device);
    let cfg = crate::nas::DartsEvalConfig {
        c: 4,
        layers: 6,
        ..Default::default()
    };
    let net = crate::nas::DartsEvalNet::new(vs.root(), &cfg, &genotype).unwrap();
    let (logits, aux) = net.forward_t(&x32, true);
    assert_eq!(logits.device(), device);
    assert_eq!(aux.map(|a| a.device()), Some(device));
}

#[test]
fn networks_run_on_cpu() {
    networks_run_on(Device::Cpu);
}

/// The same on a GPU: `cargo test --lib nas:: -- --ignored` on a machine with CUDA.
#[test]
#[ignore = "needs a CUDA device"]
fn networks_run_on_cuda() {
    assert!(
        tch::Cuda::is_available(),
        "run this test on a machine with CUDA"
    );
    networks_run_on(Device::Cuda(0));
}

/// The variables of `a` and `b` have the same names and are equal bit for bit.
fn same_variables(a: &nn::VarStore, b: &nn::VarStore) {
    let (a, b) = (a.variables(), b.variables());
    let mut names: Vec<&String> = a.keys().collect();
    names.sort();
    let mut other: Vec<&String> = b.keys().collect();
    other.sort();
    assert_eq!(names, other);
    for name in names {
        assert!(a[name].equal(&b[name]), "{name} differs");
    }
}

/// Both DARTS networks build their cells through one stack builder ([`darts::DartsCells`]);
/// seeded, they must get exactly the initial weights of DARTS's own loop, written out here as
/// the reference: stem, cells 0.. in order, the auxiliary head right after cell
/// `2 * layers / 3`, classifier. With `stem_multiplier == num_nodes` cells 0 and 1 have the
/// same shapes, so building them in swapped order changes only which random draws each gets.
#[test]
fn darts_networks_draw_their_weights_in_the_reference_cell_order() {
    use crate::nas::ops::{torch_linear, Sequence};
    use crate::nas::{
        CellInputs, CellType, FixedCell, FixedCellConfig, NodeNorm, PartialChannels, SearchCell,
        SearchCellConfig, StrideStyle, DARTS_V2,
    };
    use darts::AuxiliaryHead;
    let (c, layers, num_classes) = (4, 6, 10);
    // The reference loop; `make(path, c, reduction, inputs)` builds a cell and returns its
    // output channels.
    let reference =
        |p: &nn::Path,
         c_stem: i64,
         make: &mut dyn FnMut(nn::Path, usize, i64, bool, CellInputs) -> i64| {
            Sequence::new(p / "stem", stem_plan(3, c_stem, false, true));
            let (mut c_prev_prev, mut c_prev, mut c_curr) = (c_stem, c_stem, c);
            let mut reduction_prev = false;
            for i in 0..layers {
                let reduction = i == layers / 3 || i == 2 * layers / 3;
                if reduction {
                    c_curr *= 2;
                }
                let inputs = CellInputs::Two {
                    c_prev_prev,
                    c_prev,
                    reduction_prev,
                };
                let c_out = make(p / "cells" / i, i, c_curr, reduction, inputs);
                reduction_prev = reduction;
                c_prev_prev = c_prev;
                c_prev = c_out;
            }
            torch_linear(p / "classifier", c_prev, num_classes);
        };

    let search = DartsSearchConfig {
        c,
        layers,
        num_nodes: 2,
        stem_multiplier: 2,
        ..Default::default()
    };
    tch::manual_seed(7);
    let built = nn::VarStore::new(Device::Cpu);
    DartsSearchNet::new(built.root() / "net", &search).unwrap();
    tch::manual_seed(7);
    let expected = nn::VarStore::new(Device::Cpu);
    let space = CellSpace {
        num_inputs: 2,
        num_nodes: 2,
        op_set: OpSet::Darts,
    };
    reference(
        &(expected.root() / "net"),
        2 * c,
        &mut |p, _, c, reduction, inputs| {
            let config = SearchCellConfig {
                space,
                c,
                reduction,
                inputs,
                output: CellOutput::Concat,
                node_norm: NodeNorm::None,
                affine: false,
                pool_bn: true,
                partial: PartialChannels::default(),
            };
            SearchCell::new(p, config).unwrap();
            config.out_channels()
        },
    );
    same_variables(&built, &expected);

    let eval = DartsEvalConfig {
        c,
        layers,
        stem_multiplier: 4,
        ..Default::default()
    };
    let genotype = DARTS_V2.to_genotype();
    tch::manual_seed(8);
    let built = nn::VarStore::new(Device::Cpu);
    DartsEvalNet::new(built.root() / "net", &eval, &genotype).unwrap();
    tch::manual_seed(8);
    let expected = nn::VarStore::new(Device::Cpu);
    let root = expected.root() / "net";
    let mut size = eval.image_size;
    reference(&root, 4 * c, &mut |p, i, c, reduction, inputs| {
        if reduction {
            size = (size + 1) / 2;
        }
        let cell_type = if reduction {
            CellType::Reduce
        } else {
            CellType::Normal
        };
        let (genes, concat) = genotype.cell(cell_type);
        let config = FixedCellConfig {
            c,
            reduction,
            inputs,
            output: CellOutput::Concat,
            node_norm: NodeNorm::None,
            affine: true,
            stride_style: StrideStyle::Darts,
        };
        let c_out = FixedCell::new(p, genes, concat, config)
            .unwrap()
            .out_channels();
        if i == 2 * layers / 3 {
            AuxiliaryHead::new(&root / "auxiliary_head", c_out, size, num_classes).unwrap();
        }
        c_out
    });
    same_variables(&built, &expected);
}
