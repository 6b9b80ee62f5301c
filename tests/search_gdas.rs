//! GDAS: only the sampled op of each edge runs (its parameters are the only ones of that edge
//! that get a gradient), and the straight-through alpha gradient is the relaxed gradient
//! `J_p^T dL/dh` with `dL/dh` on the sampled path equal to the dense forward's.

use rl_darts::nas::{
    AlphaInit, ArchParams, CellWeights, DartsSearchConfig, DartsSearchNet, OpWeights, Supernet,
};
use rl_darts::search::{alphas, Gdas, GdasParams, Phase, SearchStrategy};
use rl_darts::train::supervised::cross_entropy;
use tch::{nn, Device, Kind, Tensor};

fn setup() -> (nn::VarStore, DartsSearchNet, ArchParams) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = DartsSearchNet::new(
        vs.root() / "net",
        &DartsSearchConfig {
            c: 4,
            layers: 3,
            num_nodes: 3,
            in_channels: 1,
            stem_multiplier: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let arch = ArchParams::new(
        Device::Cpu,
        net.space(),
        true,
        AlphaInit {
            std: 1.0,
            ..Default::default()
        },
    )
    .unwrap();
    (vs, net, arch)
}

fn batch() -> (Tensor, Tensor) {
    (
        Tensor::randn([6, 1, 8, 8], (Kind::Float, Device::Cpu)),
        Tensor::randint(10, [6], (Kind::Int64, Device::Cpu)),
    )
}

#[test]
fn only_the_sampled_op_of_each_edge_runs() {
    let (x, y) = batch();
    for phase in [Phase::Arch, Phase::Weights, Phase::Eval] {
        // A fresh network per phase: a parameter's grad is undefined until it is in a graph.
        let (vs, net, arch) = setup();
        let op_names: Vec<&str> = net.space().op_set.ops().iter().map(|k| k.name()).collect();
        let mut gdas = Gdas::new(&arch, GdasParams::default(), 1).unwrap();
        let w = gdas.op_weights(&arch, phase).unwrap();
        cross_entropy(&net.forward_with(&x, &w, true), &y).backward();
        let mut sampled_with_grad = 0;
        for (name, v) in vs.variables() {
            // net/cells/{i}/edge{e}/{op}/...
            let parts: Vec<&str> = name.split('.').flat_map(|s| s.split('/')).collect();
            let Some(c) = parts.iter().position(|&p| p == "cells") else {
                continue;
            };
            let cell: usize = parts[c + 1].parse().unwrap();
            let Some(edge) = parts[c + 2].strip_prefix("edge") else {
                continue;
            };
            let edge: usize = edge.parse().unwrap();
            let op = op_names.iter().position(|&n| n == parts[c + 3]).unwrap();
            // Cells 1 and 2 of 3 reduce.
            let ow = if cell == 0 {
                &w.normal
            } else {
                w.reduce.as_ref().unwrap()
            };
            let active = ow.active(edge).expect("gdas weights are one-hot");
            assert_eq!(active.len(), 1, "{phase:?}");
            if active[0] == op {
                sampled_with_grad += v.grad().defined() as usize;
            } else {
                assert!(
                    !v.grad().defined(),
                    "{phase:?}: {name} of an unsampled op got a gradient (it ran)"
                );
            }
        }
        assert!(sampled_with_grad > 0, "{phase:?}");
    }
}

#[test]
fn straight_through_gradient_is_the_relaxed_gradient_on_the_sampled_path() {
    let (_vs, net, arch) = setup();
    let mut gdas = Gdas::new(
        &arch,
        GdasParams {
            tau_max: 2.0,
            ..Default::default()
        },
        5,
    )
    .unwrap();
    let (x, y) = batch();
    let sn = gdas.sample(arch.alpha_normal()).unwrap();
    let sr = gdas.sample(arch.alpha_reduce().unwrap()).unwrap();
    let one_hot = |s: &rl_darts::search::gdas::GdasSample, w: Tensor| {
        OpWeights::one_hot(w, &s.index).unwrap()
    };

    // The straight-through alpha gradient (what arch_step applies).
    let st = CellWeights {
        normal: one_hot(&sn, sn.hard.shallow_clone()),
        reduce: Some(one_hot(&sr, sr.hard.shallow_clone())),
    };
    let loss = cross_entropy(&net.forward_with(&x, &st, true), &y);
    let a = alphas(&arch);
    let g_alpha = Tensor::run_backward(&[loss], &a, true, false);

    // dL/dh at the hard point, sparse (only sampled ops run) and dense (every op runs).
    let leaf = |s: &rl_darts::search::gdas::GdasSample| s.hard.detach().set_requires_grad(true);
    let (hn, hr) = (leaf(&sn), leaf(&sr));
    let sparse = CellWeights {
        normal: one_hot(&sn, hn.shallow_clone()),
        reduce: Some(one_hot(&sr, hr.shallow_clone())),
    };
    let l_sparse = cross_entropy(&net.forward_with(&x, &sparse, true), &y);
    let g_sparse = Tensor::run_backward(&[l_sparse], &[&hn, &hr], false, false);
    let (dn, dr) = (
        hn.detach().set_requires_grad(true),
        hr.detach().set_requires_grad(true),
    );
    let dense = CellWeights::dense(dn.shallow_clone(), Some(dr.shallow_clone()));
    let l_dense = cross_entropy(&net.forward_with(&x, &dense, true), &y);
    let g_dense = Tensor::run_backward(&[l_dense], &[&dn, &dr], false, false);
    for ((gs, gd), s) in g_sparse.iter().zip(&g_dense).zip([&sn, &sr]) {
        for (e, &o) in s.index.iter().enumerate() {
            let (a, b) = (
                gs.double_value(&[e as i64, o as i64]),
                gd.double_value(&[e as i64, o as i64]),
            );
            assert!(
                (a - b).abs() <= 1e-5 + 1e-4 * b.abs(),
                "edge {e} op {o}: sparse {a} dense {b}"
            );
        }
    }

    // alpha gradient = J_p^T dL/dh.
    let surrogate = (&sn.probs * g_sparse[0].detach()).sum(Kind::Float)
        + (&sr.probs * g_sparse[1].detach()).sum(Kind::Float);
    let expected = Tensor::run_backward(&[surrogate], &a, false, false);
    for (g, e) in g_alpha.iter().zip(&expected) {
        assert!(
            g.allclose(e, 1e-4, 1e-6, false),
            "straight-through {g:?} vs relaxed {e:?}"
        );
        assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
