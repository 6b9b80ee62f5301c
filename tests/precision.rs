//! Precision and layout (`precision`, `layout` keys; `agents::compute`): the same networks in
//! channels-last as in NCHW (fp32, equal up to float reordering), in bf16 within a stated
//! tolerance of fp32, and second-order search steps kept in fp32 under a bf16 run.
//!
//! Tolerances are relative to the largest output magnitude. fp32 layouts: 1e-5 (only the
//! summation order inside the convolutions changes). bf16: 5e-2 (each conv and matmul rounds
//! its operands to 8 significant bits, relative 2^-9 = 2e-3 each; the errors of a dozen
//! layers add up: measured 1.9e-3 to 6.5e-3 on these networks).

mod common;

use rl_darts::agents::compute::{self, Compute, Layout, Precision};
use rl_darts::agents::{Encoder, ImpalaCnn, ImpalaConfig};
use rl_darts::nas::{
    AlphaInit, ArchParams, CellInputs, DartsSearchConfig, DartsSearchNet, MixedOp, OpSet, OpSpec,
    RlDartsConfig, RlDartsSupernet, SearchCell, SearchCellConfig, Supernet,
};
use rl_darts::search::{Darts, DartsOrder, DartsParams, HessianMode, Sgd, SgdConfig};
use rl_darts::train::supervised::VisionObjective;
use tch::{nn, Device, Kind, Tensor};

const LAYOUT_TOLERANCE: f64 = 1e-5;
const BF16_TOLERANCE: f64 = 5e-2;

fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    (a - b).abs().max().double_value(&[]) / scale
}

/// `forward` under each setting; returns its outputs (detached) in the order given.
fn outputs(settings: &[Compute], forward: &dyn Fn() -> Tensor) -> Vec<Tensor> {
    settings
        .iter()
        .map(|&c| {
            let _scope = compute::enter(c);
            tch::no_grad(forward)
        })
        .collect()
}

const FP32_NCHW: Compute = Compute {
    precision: Precision::Fp32,
    layout: Some(Layout::Nchw),
};
const FP32_NHWC: Compute = Compute {
    precision: Precision::Fp32,
    layout: Some(Layout::ChannelsLast),
};
const BF16_NHWC: Compute = Compute {
    precision: Precision::Bf16,
    layout: Some(Layout::ChannelsLast),
};
const BF16_NCHW: Compute = Compute {
    precision: Precision::Bf16,
    layout: Some(Layout::Nchw),
};

/// Checks one network: channels-last equals NCHW in fp32, bf16 (both layouts) is close to
/// fp32 but not equal (the cast happened).
fn check(what: &str, forward: &dyn Fn() -> Tensor) {
    let out = outputs(&[FP32_NCHW, FP32_NHWC, BF16_NCHW, BF16_NHWC], forward);
    assert_eq!(out[0].kind(), Kind::Float, "{what}");
    let layout = relative_error(&out[1], &out[0]);
    assert!(
        layout < LAYOUT_TOLERANCE,
        "{what}: channels-last vs NCHW {layout}"
    );
    for (i, name) in [(2, "bf16/nchw"), (3, "bf16/channels_last")] {
        assert_eq!(out[i].kind(), Kind::Float, "{what}: {name} output kind");
        let e = relative_error(&out[i], &out[0]);
        eprintln!("{what}: {name} vs fp32 relative error {e:.2e}; channels-last {layout:.1e}");
        assert!(e < BF16_TOLERANCE && e > 0.0, "{what}: {name} vs fp32 {e}");
    }
}

#[test]
fn impala_cnn_is_layout_independent_and_bf16_close() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = ImpalaCnn::new(vs.root() / "enc", &[3, 32, 32], &ImpalaConfig::default()).unwrap();
    // As the rollout hands frames over: u8 NHWC permuted to [N, C, H, W] (channels-last memory).
    let frames = Tensor::randint(256, [4, 32, 32, 3], (Kind::Uint8, Device::Cpu));
    let obs = rl_darts::agents::preprocess_obs(&frames);
    assert!(
        compute::is_channels_last(&obs),
        "the observation permute is channels-last"
    );
    check("impala", &|| net.features(&obs, &()));
}

#[test]
fn mixed_op_and_cell_are_layout_independent_and_bf16_close() {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let mixed = MixedOp::new(
        vs.root() / "mixed",
        OpSet::Darts,
        OpSpec::darts_search(6, 1),
    )
    .unwrap();
    let x = Tensor::randn([3, 6, 9, 9], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([8], (Kind::Float, Device::Cpu)).softmax(0, Kind::Float);
    check("mixed op", &|| mixed.forward_t(&x, &w, false));

    let rl = RlDartsConfig::default();
    let cell_config = SearchCellConfig {
        space: rl.space(),
        c: 6,
        reduction: false,
        inputs: CellInputs::One { c_prev: 6 },
        output: rl.cell_output,
        node_norm: rl.node_norm,
        affine: false,
        pool_bn: false,
        partial: Default::default(),
    };
    let cell = SearchCell::new(vs.root() / "cell", cell_config).unwrap();
    let arch = ArchParams::new(
        Device::Cpu,
        rl.space(),
        false,
        AlphaInit {
            mean: 0.0,
            std: 0.5,
        },
    )
    .unwrap();
    let weights = arch.softmax_weights(1.0);
    check("cell", &|| cell.forward_t(&[&x], &weights.normal, false));
}

#[test]
fn supernets_are_layout_independent_and_bf16_close() {
    tch::manual_seed(2);
    let vs = nn::VarStore::new(Device::Cpu);
    let config = DartsSearchConfig {
        c: 4,
        layers: 3,
        num_classes: 5,
        num_nodes: 2,
        stem_multiplier: 2,
        in_channels: 3,
        partial_channels: Default::default(),
        op_set: OpSet::Darts,
    };
    let darts = DartsSearchNet::new(vs.root() / "darts", &config).unwrap();
    let arch = ArchParams::new(
        Device::Cpu,
        darts.space(),
        true,
        AlphaInit {
            mean: 0.0,
            std: 0.5,
        },
    )
    .unwrap();
    let weights = arch.softmax_weights(1.0);
    let x = Tensor::randn([3, 3, 12, 12], (Kind::Float, Device::Cpu));
    check("darts supernet", &|| {
        darts.forward_with(&x, &weights, false)
    });

    let rl_config = RlDartsConfig {
        channels: vec![4, 8],
        embedding: 16,
        ..RlDartsConfig::default()
    };
    let rl = RlDartsSupernet::new(vs.root() / "rl", &rl_config, &[3, 16, 16]).unwrap();
    // With the reduction matrix: a network without reduction cells leaves it unused.
    let rl_arch = ArchParams::new(
        Device::Cpu,
        rl.space(),
        true,
        AlphaInit {
            mean: 0.0,
            std: 0.5,
        },
    )
    .unwrap();
    let rl_weights = rl_arch.softmax_weights(1.0);
    let obs = Tensor::rand([3, 3, 16, 16], (Kind::Float, Device::Cpu));
    check("rl-darts supernet", &|| rl.features(&obs, &rl_weights));
}

/// DARTS's second-order hypergradient runs in fp32 inside a bf16 run: bit-identical to the
/// same step with no precision set. (Without `full_precision` in `unrolled_gradient` the
/// finite-difference product would be bf16 rounding noise, and the two would differ.)
#[test]
fn second_order_step_runs_in_fp32_under_bf16() {
    let run = |compute_setting: Option<Compute>| {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = DartsSearchNet::new(vs.root() / "net", &common::nets::tiny_search_net_config())
            .unwrap();
        let arch = ArchParams::new(
            Device::Cpu,
            net.space(),
            true,
            AlphaInit {
                mean: 0.0,
                std: 0.5,
            },
        )
        .unwrap();
        let sgd = Sgd::new(
            vs.variables(),
            SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 3e-4,
            },
        );
        let (train, search) = common::nets::six_image_batches(Kind::Float, Device::Cpu);
        let mut objective = VisionObjective {
            net: &net,
            vs: &vs,
            sgd: &sgd,
            train,
            search,
        };
        let darts = Darts::new(
            &arch,
            DartsParams {
                order: DartsOrder::Second,
                hessian: HessianMode::FiniteDifference,
                ..DartsParams::default()
            },
        )
        .unwrap();
        let _scope = compute_setting.map(compute::enter);
        let (loss, grads) = darts.unrolled_gradient(&arch, &mut objective).unwrap();
        (loss, grads)
    };
    let (l32, g32) = run(None);
    let (l16, g16) = run(Some(BF16_NCHW));
    assert_eq!(l32, l16);
    for (a, b) in g32.iter().zip(&g16) {
        assert!(a.equal(b), "the second-order gradient changed under bf16");
    }
}
