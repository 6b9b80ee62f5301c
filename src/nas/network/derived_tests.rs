//! Unit tests of the networks built from a genotype (DARTS evaluation network, derived RL-DARTS
//! encoder) and of drop-path.
use super::*;
use crate::agents::Encoder;
use crate::nas::fixed::drop_path;
use crate::nas::{
    count_parameters, AlphaInit, ArchParams, CellSpace, DeriveRule, NodeNorm, OpSet,
    RlDartsSupernet, DARTS_V2,
};
use tch::{Device, Kind};

/// DARTS_V2 at C = 36, 20 cells, 10 classes: the paper reports 3.3M parameters, counted
/// as DARTS's `utils.count_parameters_in_MB` does (auxiliary head excluded).
#[test]
fn darts_v2_evaluation_network_has_3_3m_parameters() {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = DartsEvalNet::new(
        vs.root(),
        &DartsEvalConfig::default(),
        &DARTS_V2.to_genotype(),
    )
    .unwrap();
    let params = count_parameters(&vs, |name| !name.contains("auxiliary"));
    println!("DARTS_V2, C=36, 20 cells, 10 classes: {params} parameters (auxiliary head excluded)");
    assert!((3_200_000..3_400_000).contains(&params), "{params}");
    // The official `train.py` logs `param size = 3.349342MB` for DARTS_V2 at these settings.
    assert_eq!(params, 3_349_342);
    assert!(count_parameters(&vs, |_| true) > params);
    let names: Vec<String> = vs.variables().into_keys().collect();
    assert!(names.iter().all(|n| !n.contains("__")));
    assert_eq!(net.cells.len(), 20);
}

#[test]
fn darts_v2_forward_with_auxiliary_and_drop_path() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = DartsEvalConfig {
        c: 8,
        layers: 6,
        ..Default::default()
    };
    let net = DartsEvalNet::new(vs.root(), &cfg, &DARTS_V2.to_genotype()).unwrap();
    let x = Tensor::randn([3, 3, 32, 32], (Kind::Float, Device::Cpu));
    let (logits, aux) = net.forward_t(&x, true);
    assert_eq!(logits.size(), [3, 10]);
    assert_eq!(aux.map(|a| a.size()), Some(vec![3, 10]));
    let (logits, aux) = net.forward_t(&x, false);
    assert_eq!(logits.size(), [3, 10]);
    assert!(aux.is_none());
}

#[test]
fn drop_path_zeroes_whole_samples_and_rescales() {
    tch::manual_seed(1);
    let x = Tensor::ones([2000, 2, 3, 3], (Kind::Float, Device::Cpu));
    let y = drop_path(&x, 0.25);
    let per_sample =
        Vec::<f32>::try_from(&y.mean_dim([1, 2, 3].as_slice(), false, Kind::Float)).unwrap();
    // Each sample is all 0 or all 1/0.75.
    assert!(per_sample
        .iter()
        .all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    let kept = per_sample.iter().filter(|&&v| v > 0.0).count() as f64 / 2000.0;
    assert!((kept - 0.75).abs() < 0.05, "kept {kept}");
}

/// Alphas drawn from N(0, 1), so derived genotypes are arbitrary, with reduce cells.
fn random_alphas(space: CellSpace) -> ArchParams {
    ArchParams::new(
        Device::Cpu,
        space,
        true,
        AlphaInit {
            mean: 0.0,
            std: 1.0,
        },
    )
    .unwrap()
}

/// Random alphas -> derived genotype -> a fixed network that runs.
#[test]
fn a_genotype_derived_from_random_alphas_builds_and_runs() {
    tch::manual_seed(2);
    let arch = random_alphas(CellSpace::darts());
    // Gdas may put both genes of a node on one input: the fixed cell must build and sum them.
    for rule in [DeriveRule::Darts, DeriveRule::ArgmaxAll, DeriveRule::Gdas] {
        let genotype = arch.derive_genotype(rule).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = DartsEvalConfig {
            c: 4,
            layers: 5,
            auxiliary: false,
            ..Default::default()
        };
        let net = DartsEvalNet::new(vs.root(), &cfg, &genotype).unwrap();
        let (logits, _) = net.forward_t(
            &Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu)),
            true,
        );
        assert_eq!(logits.size(), [2, 10], "{rule:?}: {genotype}");
    }
}

#[test]
fn derived_rl_darts_encoder_runs_for_each_op_set() {
    tch::manual_seed(3);
    for op_set in [OpSet::RlDarts, OpSet::RlDartsConv] {
        let cfg = RlDartsConfig {
            op_set,
            ..Default::default()
        };
        let arch = random_alphas(cfg.space());
        // GDAS's pair rule gives node 0 of the one-input cell two ops on the same input.
        for rule in [DeriveRule::RlDarts, DeriveRule::Gdas] {
            let genotype = arch.derive_genotype(rule).unwrap();
            let vs = nn::VarStore::new(Device::Cpu);
            let enc =
                RlDartsFixedEncoder::new(vs.root() / "encoder", &cfg, &genotype, &[3, 64, 64])
                    .unwrap();
            let obs = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu));
            assert_eq!(enc.features(&obs, &()).size(), [2, 256], "{genotype}");
            assert_eq!(enc.feature_dim(), 256);
            let names: Vec<String> = vs.variables().into_keys().collect();
            assert!(names.iter().all(|n| !n.contains("__")), "{names:?}");
        }
    }
}

/// A frame's features do not depend on the other frames of its batch under a per-sample
/// node normalisation (the default), for the supernet and for the derived network: a
/// rollout (one step of all envs) and a PPO update (a shuffled minibatch) then evaluate
/// the same policy. Batch statistics break that, which this test also checks (so that it
/// can fail). Neither network keeps running averages.
#[test]
fn rl_darts_features_of_a_frame_do_not_depend_on_its_batch() {
    tch::manual_seed(5);
    assert!(!RlDartsConfig::default().node_norm.mixes_the_batch());
    let obs = Tensor::rand([6, 3, 64, 64], (Kind::Float, Device::Cpu));
    for node_norm in NodeNorm::ALL {
        let cfg = RlDartsConfig {
            channels: vec![4, 8, 8],
            normal_cells_per_stage: 1,
            embedding: 32,
            node_norm,
            ..Default::default()
        };
        let arch = random_alphas(cfg.space());
        let weights = tch::no_grad(|| arch.softmax_weights(1.0));
        let genotype = arch.derive_genotype(DeriveRule::RlDarts).unwrap();
        let supernet_store = nn::VarStore::new(Device::Cpu);
        let supernet =
            RlDartsSupernet::new(supernet_store.root() / "encoder", &cfg, &[3, 64, 64]).unwrap();
        let fixed_store = nn::VarStore::new(Device::Cpu);
        let fixed = RlDartsFixedEncoder::new(
            fixed_store.root() / "encoder",
            &cfg,
            &genotype,
            &[3, 64, 64],
        )
        .unwrap();
        type Features<'a> = Box<dyn Fn(&Tensor) -> Tensor + 'a>;
        let runs: [(&str, Features, &nn::VarStore); 2] = [
            (
                "supernet",
                Box::new(|x: &Tensor| supernet.features(x, &weights)),
                &supernet_store,
            ),
            (
                "derived",
                Box::new(|x: &Tensor| fixed.features(x, &())),
                &fixed_store,
            ),
        ];
        for (name, features, store) in runs {
            let batch = tch::no_grad(|| features(&obs));
            let alone = tch::no_grad(|| features(&obs.narrow(0, 0, 2)));
            assert!(
                batch.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{name}"
            );
            let same = alone.allclose(&batch.narrow(0, 0, 2), 1e-5, 1e-6, false);
            assert_eq!(
                same,
                !node_norm.mixes_the_batch(),
                "{name}, node_norm {node_norm}: features of frames 0-1 alone vs in a batch of 6"
            );
            let buffers: Vec<String> = store
                .variables()
                .into_keys()
                .filter(|n| n.contains("running"))
                .collect();
            assert!(buffers.is_empty(), "{name}: {buffers:?}");
        }
    }
}

#[test]
fn a_darts_genotype_is_rejected_by_the_rl_darts_encoder() {
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = RlDartsConfig::default();
    // DARTS_V2 reads two inputs; as a one-input cell its `('sep_conv_3x3', 1)` in node 0
    // is a forward reference.
    let err = RlDartsFixedEncoder::new(vs.root(), &cfg, &DARTS_V2.to_genotype(), &[3, 64, 64])
        .unwrap_err();
    assert!(matches!(err, NasError::InvalidGenotype(_)), "{err}");
}
