//! The multi-split reversible supernet (Zhao et al. 2021): the inverse reconstructs the
//! inputs, and the backward by reconstruction, like the per-layer activation checkpointing
//! baseline, gives the gradients of ordinary autograd on the same network (weights, alphas,
//! embeddings), with equal loss values.

use rl_darts::nas::{AlphaInit, ArchParams, CellWeights, OpSet, OpWeights};
use rl_darts::transformer::net::{Mode, SeqBatch, SeqNet, SeqNetConfig};
use rl_darts::transformer::objective::{loss_for_alphas, loss_for_strategy};
use rl_darts::transformer::ops::OpConfig;
use rl_darts::transformer::reversible::{Combine, LayerInputs, RevLayer};
use rl_darts::transformer::search::{build_supernet, SeqConfig};
use rl_darts::transformer::tasks::{TaskConfig, TaskKind};
use tch::{nn, Device, Kind, Tensor};

fn layers(
    vs: &nn::VarStore,
    depth: usize,
    decoder: bool,
    d: i64,
    combine: Combine,
) -> Vec<RevLayer> {
    let config = OpConfig {
        d,
        d_memory: 12,
        heads: 2,
        ffn_mult: 2,
        causal: decoder,
    };
    (0..depth)
        .map(|i| {
            RevLayer::search(
                &(vs.root() / i),
                OpSet::Transformer.ops(),
                2,
                decoder,
                config,
                combine,
            )
            .unwrap()
        })
        .collect()
}

/// `||a - b|| / ||b||` over a list of parts.
fn rel_err(a: &[Tensor], b: &[Tensor]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).square().sum(Kind::Double).double_value(&[]))
        .sum();
    let den: f64 = b
        .iter()
        .map(|y| y.square().sum(Kind::Double).double_value(&[]))
        .sum();
    (num / den).sqrt()
}

/// Forward through `depth` layers, then the inverse down again: the input comes back.
fn reconstruct(
    depth: usize,
    decoder: bool,
    kind: Kind,
    combine: Combine,
    alpha_std: f64,
    stream: Kind,
) -> (f64, f64) {
    tch::manual_seed(3);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let n = if decoder { 3 } else { 2 };
    let d = 16;
    let stack = layers(&vs, depth, decoder, d, combine);
    if kind == Kind::Double {
        vs.double();
    }
    let opts = (kind, Device::Cpu);
    let w = OpWeights::dense((Tensor::randn([2, 10], opts) * alpha_std).softmax(-1, kind));
    let memory = Tensor::randn([3, 4, 12], opts);
    let inputs = LayerInputs {
        weights: Some(&w),
        memory: decoder.then_some(&memory),
    };
    let x0: Vec<Tensor> = (0..n)
        .map(|_| Tensor::randn([3, 5, d], (stream, Device::Cpu)))
        .collect();
    tch::no_grad(|| {
        let mut x: Vec<Tensor> = x0.iter().map(Tensor::copy).collect();
        for l in &stack {
            x = l.forward(&x, &inputs).unwrap();
        }
        let top: Vec<Tensor> = x.iter().map(Tensor::copy).collect();
        for l in stack.iter().rev() {
            x = l.inverse(&x, &inputs).unwrap();
        }
        let max_abs = x
            .iter()
            .zip(&x0)
            .map(|(a, b)| (a - b).abs().max().double_value(&[]))
            .fold(0.0, f64::max);
        // The top differs from the input: the test is not comparing a value with itself.
        assert!(rel_err(&top, &x0) > 0.1);
        (max_abs, rel_err(&x, &x0))
    })
}

#[test]
fn inverse_reconstructs_inputs_in_f64() {
    for decoder in [false, true] {
        for combine in [Combine::Max, Combine::Mean] {
            let (max_abs, _) = reconstruct(3, decoder, Kind::Double, combine, 1.0, Kind::Double);
            assert!(
                max_abs < 1e-12,
                "decoder {decoder} {combine:?}: {max_abs:e}"
            );
        }
    }
}

/// f32 ops with the network's f64 residual stream (`network.residual_f64`, the default), at
/// the search's starting point (DARTS alpha init, near-uniform op weights) and after alphas
/// have moved (std 1). An f32 stream is printed for the record: about 2e-4 at 24 layers.
#[test]
fn inverse_reconstructs_24_layers_in_f32() {
    let (_, rel) = reconstruct(24, false, Kind::Float, Combine::Max, 1e-3, Kind::Float);
    eprintln!("f32 stream: relative error {rel:e}");
    for decoder in [false, true] {
        for alpha_std in [1e-3, 1.0] {
            let (_, rel) = reconstruct(
                24,
                decoder,
                Kind::Float,
                Combine::Max,
                alpha_std,
                Kind::Double,
            );
            eprintln!("decoder {decoder} alpha std {alpha_std}: relative error {rel:e}");
            assert!(
                rel < 1e-4,
                "decoder {decoder} alpha std {alpha_std}: relative error {rel:e}"
            );
        }
    }
}

struct Setup {
    _vs: nn::VarStore,
    net: SeqNet,
    arch: ArchParams,
    batch: SeqBatch,
}

fn setup(depth: usize, task: TaskKind) -> Setup {
    tch::manual_seed(7);
    let seq2seq = task == TaskKind::Addition;
    let config = SeqConfig {
        task: TaskConfig {
            kind: task,
            length: 6,
            digits: 2,
            train_size: 16,
            val_size: 4,
            test_size: 4,
            ..TaskConfig::default()
        },
        network: SeqNetConfig {
            d_model: 12,
            heads: 2,
            encoder_layers: depth,
            decoder_layers: if seq2seq { depth } else { 0 },
            ..SeqNetConfig::default()
        },
        search: rl_darts::transformer::search::SeqSearchConfig {
            // Far from uniform, so every op's weight matters differently.
            alpha_init: AlphaInit {
                mean: 0.0,
                std: 1.0,
            },
            ..Default::default()
        },
        ..SeqConfig::default()
    };
    let task = config.task.generate().unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let (net, mut arch) = build_supernet(&vs, &config, &task).unwrap();
    vs.double();
    arch.var_store_mut().double();
    let batch = task
        .train
        .batch(&Tensor::arange(6, (Kind::Int64, Device::Cpu)), Device::Cpu);
    Setup {
        _vs: vs,
        net,
        arch,
        batch,
    }
}

/// Op weights of three kinds: softmax (DARTS), Gumbel-softmax with fixed noise (SNAS), and
/// straight-through one-hot with one active op per split (GDAS).
fn op_weights(arch: &ArchParams, which: usize) -> CellWeights {
    let alphas: Vec<&Tensor> = [Some(arch.alpha_normal()), arch.alpha_reduce()]
        .into_iter()
        .flatten()
        .collect();
    let make = |a: &Tensor, i: usize| -> OpWeights {
        match which {
            0 => OpWeights::dense(a.softmax(-1, Kind::Double)),
            1 => {
                tch::manual_seed(100 + i as i64);
                let u = Tensor::rand(a.size(), (Kind::Double, Device::Cpu)).clamp(1e-9, 1.0);
                let g = -(-u.log()).log();
                OpWeights::dense(((a + g) / 0.7).softmax(-1, Kind::Double))
            }
            _ => {
                let p = a.softmax(-1, Kind::Double);
                let index: Vec<usize> = if i == 0 { vec![2, 4] } else { vec![7, 9] };
                let idx = Tensor::from_slice(&index.iter().map(|&k| k as i64).collect::<Vec<_>>());
                let hard = p.zeros_like().scatter_value(1, &idx.unsqueeze(1), 1.0);
                OpWeights::one_hot(hard - p.detach() + p, &index).unwrap()
            }
        }
    };
    let mut ws = alphas.iter().enumerate().map(|(i, a)| make(a, i));
    CellWeights {
        normal: ws.next().unwrap(),
        reduce: ws.next(),
    }
}

fn zero_grads(tensors: &mut [Tensor]) {
    for t in tensors {
        t.zero_grad();
    }
}

fn grads(tensors: &[Tensor]) -> Vec<Tensor> {
    tensors
        .iter()
        .map(|t| {
            let g = t.grad();
            if g.defined() {
                g.copy()
            } else {
                t.zeros_like()
            }
        })
        .collect()
}

fn check(depth: usize, task: TaskKind) {
    let mut s = setup(depth, task);
    let mut params = s.net.parameters();
    let mut alphas = rl_darts::search::alphas(&s.arch);
    for which in 0..3 {
        let mut losses = Vec::new();
        let mut results = Vec::new();
        for mode in [Mode::Plain, Mode::Reversible, Mode::Checkpointed] {
            s.net.config.mode = mode;
            zero_grads(&mut params);
            zero_grads(&mut alphas);
            let w = op_weights(&s.arch, which);
            let loss = loss_for_strategy(&s.net, &s.batch, Some(&w)).unwrap();
            loss.backward();
            losses.push(loss.double_value(&[]));
            results.push((grads(&params), grads(&alphas)));
        }
        let plain = &results[0];
        // The embeddings (first parameters) and the alphas got a gradient at all.
        assert!(plain.0[0].norm().double_value(&[]) > 0.0, "{task:?}");
        for (m, mode) in [(1, "reversible"), (2, "checkpointed")] {
            let what = format!("{mode}: {task:?} depth {depth} weights {which}");
            let got = &results[m];
            assert_eq!(losses[0], losses[m], "{what}: losses");
            for (i, (a, b)) in got.0.iter().zip(&plain.0).enumerate() {
                let norm = b.norm().double_value(&[]);
                let err = (a - b).norm().double_value(&[]);
                assert!(
                    err <= 1e-9 * norm.max(1e-30),
                    "{what}: parameter {i} {:?}: {err:e} vs {norm:e}",
                    b.size()
                );
            }
            for (a, b) in got.1.iter().zip(&plain.1) {
                let norm = b.norm().double_value(&[]);
                assert!(norm > 0.0, "{what}: alpha gradient is zero");
                let err = (a - b).norm().double_value(&[]);
                assert!(err <= 1e-9 * norm, "{what}: alphas {err:e} vs {norm:e}");
            }
        }
        // The alphas-only loss (first-order alpha steps; the layers' weight gradients
        // skipped): the same value and the same alpha gradients.
        for mode in [Mode::Reversible, Mode::Checkpointed] {
            s.net.config.mode = mode;
            zero_grads(&mut alphas);
            let w = op_weights(&s.arch, which);
            let loss = loss_for_alphas(&s.net, &s.batch, &w).unwrap();
            loss.backward();
            let what = format!("alphas only, {mode:?}: {task:?} depth {depth} weights {which}");
            assert_eq!(losses[0], loss.double_value(&[]), "{what}: losses");
            for (a, b) in grads(&alphas).iter().zip(&plain.1) {
                let norm = b.norm().double_value(&[]);
                let err = (a - b).norm().double_value(&[]);
                assert!(err <= 1e-9 * norm, "{what}: alphas {err:e} vs {norm:e}");
            }
        }
    }
}

#[test]
fn reversible_gradients_equal_plain_gradients_encoder_only() {
    check(1, TaskKind::Sort);
    check(3, TaskKind::Sort);
}

#[test]
fn reversible_gradients_equal_plain_gradients_seq2seq() {
    check(1, TaskKind::Addition);
    check(3, TaskKind::Addition);
}
