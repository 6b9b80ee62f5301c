//! Unit tests of the ops (kept apart so each module stays one concern).
use super::*;
use crate::nas::NasError;
use tch::nn;
use tch::Tensor;
use tch::{Device, Kind};

fn specs(style: StrideStyle, c_in: i64, c_out: i64) -> Vec<OpSpec> {
    let mut out = Vec::new();
    for stride in [1, 2] {
        for (affine, pool_bn) in [(false, true), (true, false)] {
            out.push(OpSpec {
                c_in,
                c_out,
                stride,
                affine,
                pool_bn,
                stride_style: style,
            });
        }
    }
    out
}

fn trainable_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

/// Every op x stride x BN convention x stride style, equal and changing channels: the
/// output has the documented shape, the plan's shape agrees, and the plan's parameter count
/// equals what was actually allocated.
#[test]
fn every_op_has_the_documented_shape_and_parameter_count() {
    tch::manual_seed(0);
    for kind in OpKind::ALL {
        for style in [StrideStyle::Darts, StrideStyle::AvgPool] {
            for (c_in, c_out) in [(6, 6), (3, 8)] {
                for spec in specs(style, c_in, c_out) {
                    let vs = nn::VarStore::new(Device::Cpu);
                    let op = Op::new(vs.root() / kind.name(), kind, spec).unwrap();
                    for (h, w) in [(8, 8), (7, 5)] {
                        let x = Tensor::randn([2, c_in, h, w], (Kind::Float, Device::Cpu));
                        let y = op.forward_t(&x, true);
                        let s = spec.stride;
                        let expected = [2, c_out, (h + s - 1) / s, (w + s - 1) / s];
                        assert_eq!(y.size(), expected, "{kind} {spec:?} on {h}x{w}");
                        assert_eq!(
                            op.out_shape([c_in, h, w]),
                            [c_out, expected[2], expected[3]]
                        );
                    }
                    let cost = op.cost([c_in, 8, 8]);
                    assert_eq!(cost.params, trainable_count(&vs), "{kind} {spec:?}");
                    assert_eq!(kind.cost(&spec, [c_in, 8, 8]).unwrap(), cost);
                    let names: Vec<String> = vs.variables().into_keys().collect();
                    assert!(names.iter().all(|n| !n.contains("__")), "{names:?}");
                }
            }
        }
    }
}

/// Every op read through a [`SharedInput`] gives its plain forward, values and input
/// gradients, and all ops of a set on one shared input compute each distinct chain of
/// leading parameter-free layers once.
#[test]
fn shared_input_forward_equals_the_plain_forward_and_computes_each_chain_once() {
    tch::manual_seed(1);
    for style in [StrideStyle::Darts, StrideStyle::AvgPool] {
        for (c_in, c_out) in [(6, 6), (3, 8)] {
            for spec in specs(style, c_in, c_out) {
                let vs = nn::VarStore::new(Device::Cpu);
                let ops: Vec<Op> = OpKind::ALL
                    .iter()
                    .map(|&k| Op::new(vs.root() / k.name(), k, spec).unwrap())
                    .collect();
                let mut vs = vs;
                vs.double();
                let x = Tensor::randn([2, c_in, 7, 6], (Kind::Double, Device::Cpu))
                    .set_requires_grad(true);
                let shared = SharedInput::new(x.shallow_clone());
                let mut chains: Vec<&[LayerDesc]> = Vec::new();
                for op in &ops {
                    let plain = op.forward_t(&x, false);
                    let via_cache = op.forward_shared(&shared, false);
                    assert!(via_cache.allclose(&plain, 1e-12, 1e-12, false), "{op:?}");
                    if plain.requires_grad() {
                        let grad = |y: &Tensor| {
                            Tensor::run_backward(&[y.sum(Kind::Double)], &[&x], true, false)
                                .remove(0)
                        };
                        assert!(grad(&via_cache).allclose(&grad(&plain), 1e-12, 1e-12, false));
                    }
                    let k = op.plan().iter().take_while(|d| d.is_stateless()).count();
                    for n in 1..=k {
                        if !chains.contains(&&op.plan()[..n]) {
                            chains.push(&op.plan()[..n]);
                        }
                    }
                }
                assert_eq!(shared.cached_chains(), chains.len(), "{style:?} {spec:?}");
            }
        }
    }
}

/// Convs of several ops on one input, fused by `SharedInput::fuse_convs` (3x3 convs fused,
/// a 5x5 conv alone in its geometry, an op with no leading conv), give each op's plain
/// output and the same gradients for every weight, in f64.
#[test]
fn fused_leading_convs_equal_the_separate_convs_in_value_and_gradient() {
    tch::manual_seed(2);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let spec = OpSpec {
        stride_style: StrideStyle::AvgPool,
        ..OpSpec::darts_search(5, 2)
    };
    let kinds = [
        OpKind::Conv3x3,
        OpKind::Conv3x3,
        OpKind::Conv3x3Relu,
        OpKind::Conv5x5Relu,
        OpKind::Tanh,
        OpKind::Conv3x3,
    ];
    let ops: Vec<Op> = kinds
        .iter()
        .enumerate()
        .map(|(i, &k)| Op::new(vs.root() / format!("e{i}") / k.name(), k, spec).unwrap())
        .collect();
    vs.double();
    let x = Tensor::randn([2, 5, 9, 7], (Kind::Double, Device::Cpu));
    let shared = SharedInput::new(x.shallow_clone());
    let convs: Vec<_> = ops
        .iter()
        .filter_map(Op::leading_conv)
        .map(|(c, g)| (c, g, None))
        .collect();
    assert_eq!(convs.len(), 5, "every op but tanh starts with a dense conv");
    shared.fuse_convs(&convs);
    assert_eq!(
        shared.fused.borrow().len(),
        4,
        "the four 3x3 convs run as one"
    );
    let variables = vs.variables();
    for (i, op) in ops.iter().enumerate() {
        let fused = op.forward_shared(&shared, true);
        let plain = op.forward_t(&x, true);
        assert!(
            fused.allclose(&plain, 1e-12, 1e-12, false),
            "{:?}",
            op.kind()
        );
        // The op's own weights (asking autograd for unused inputs is not supported).
        let own: Vec<&Tensor> = variables
            .iter()
            .filter(|(name, _)| name.starts_with(&format!("e{i}.")))
            .map(|(_, v)| v)
            .collect();
        if own.is_empty() {
            continue;
        }
        let w = Tensor::randn_like(&plain);
        let grads =
            |y: &Tensor| Tensor::run_backward(&[(y * &w).sum(Kind::Double)], &own, true, false);
        for (a, b) in grads(&fused).iter().zip(grads(&plain)) {
            assert!(a.allclose(&b, 1e-12, 1e-12, false), "{:?}", op.kind());
        }
    }
}

#[test]
fn darts_ops_follow_the_official_layer_structure() {
    let spec = OpSpec::darts_eval(16, 1);
    let layers = |kind| plan(kind, &spec).unwrap();
    // sep_conv = (relu, depthwise, pointwise, BN) twice.
    let sep = layers(OpKind::SepConv3x3);
    assert_eq!(sep.len(), 8);
    assert!(matches!(
        sep[1],
        LayerDesc::Conv {
            geom: ConvGeom {
                groups: 16,
                kernel: 3,
                padding: 1,
                ..
            },
            ..
        }
    ));
    assert!(matches!(
        sep[5],
        LayerDesc::Conv {
            geom: ConvGeom {
                groups: 16,
                stride: 1,
                ..
            },
            ..
        }
    ));
    // dil_conv 5x5: dilation 2, padding 4.
    let dil = layers(OpKind::DilConv5x5);
    assert!(matches!(
        dil[1],
        LayerDesc::Conv {
            geom: ConvGeom {
                dilation: 2,
                padding: 4,
                kernel: 5,
                ..
            },
            ..
        }
    ));
    // skip_connect: identity at stride 1, FactorizedReduce at stride 2.
    assert!(layers(OpKind::SkipConnect).is_empty());
    let fr = plan(OpKind::SkipConnect, &OpSpec::darts_eval(16, 2)).unwrap();
    assert!(matches!(
        fr[1],
        LayerDesc::FactorizedConvs {
            c_in: 16,
            c_out: 16,
            bias: false
        }
    ));
    // Search: pools followed by BN without affine; evaluation: bare pools.
    let pool = plan(OpKind::MaxPool3x3, &OpSpec::darts_search(16, 1)).unwrap();
    assert_eq!(
        pool[1],
        LayerDesc::BatchNorm {
            name: "bn",
            channels: 16,
            affine: false
        }
    );
    assert_eq!(
        layers(OpKind::AvgPool3x3),
        vec![LayerDesc::AvgPool { stride: 1 }]
    );
}

#[test]
fn sep_conv_cost_matches_a_hand_count() {
    // sep_conv_3x3, C = 16, stride 1, affine, 8x8 input:
    //   params: 2 * (16*9 + 16*16 + 2*16) = 2 * 432 = 864
    //   flops:  2 * (16*9*64 + 16*16*64 + 16*64) + 2 relus * 16*64 = 53_248 + 2_048 = 55_296
    let cost = OpKind::SepConv3x3
        .cost(&OpSpec::darts_eval(16, 1), [16, 8, 8])
        .unwrap();
    assert_eq!(cost.params, 864);
    assert_eq!(cost.flops, 55_296);
    // MAC: 8 layers each read and write 1024 elements, plus 864 parameters.
    assert_eq!(cost.mac, 8 * 2 * 1024 + 864);
    assert_eq!(
        OpKind::None
            .cost(&OpSpec::darts_eval(16, 2), [16, 8, 8])
            .unwrap(),
        OpCost::default()
    );
}

#[test]
fn factorized_reduce_equals_the_official_slicing_on_even_sizes() {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let op = Op::new(
        vs.root() / "skip",
        OpKind::SkipConnect,
        OpSpec::darts_eval(4, 2),
    )
    .unwrap();
    let x = Tensor::randn([2, 4, 6, 6], (Kind::Float, Device::Cpu));
    let y = op.forward_t(&x, false);
    // Reference: cat(conv_1(relu x), conv_2(relu x[:, :, 1:, 1:])) then BN (eval, identity
    // stats: running mean 0, var 1, weight 1, bias 0 -> x / sqrt(1 + eps)).
    let vars = vs.variables();
    let r = x.relu();
    let a = r.conv2d(
        &vars["skip.conv_1.weight"],
        None::<Tensor>,
        [2, 2],
        [0, 0],
        [1, 1],
        1,
    );
    let b = r.narrow(2, 1, 5).narrow(3, 1, 5).conv2d(
        &vars["skip.conv_2.weight"],
        None::<Tensor>,
        [2, 2],
        [0, 0],
        [1, 1],
        1,
    );
    let reference = Tensor::cat(&[a, b], 1) / (1.0f64 + 1e-5).sqrt();
    assert!(y.allclose(&reference, 1e-5, 1e-6, false));
}

#[test]
fn names_round_trip_through_serde_and_from_str() {
    for kind in OpKind::ALL {
        let json = serde_json::to_string(&kind).unwrap();
        assert_eq!(json, format!("\"{}\"", kind.name()));
        assert_eq!(serde_json::from_str::<OpKind>(&json).unwrap(), kind);
        assert_eq!(kind.name().parse::<OpKind>().unwrap(), kind);
    }
    for set in OpSet::ALL {
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, format!("\"{}\"", set.name()));
        assert_eq!(serde_json::from_str::<OpSet>(&json).unwrap(), set);
        assert_eq!(set.name().parse::<OpSet>().unwrap(), set);
    }
    assert_eq!(OpSet::Darts.len(), 8);
    assert_eq!(OpSet::RlDarts.len(), 5);
    assert_eq!(OpSet::RlDartsConv.len(), 6);
    assert_eq!(OpSet::NasBench201.len(), 5);
    assert_eq!(OpSet::Mlp.len(), 4);
    assert_eq!(OpSet::Mlp.none_index(), Some(3));
    assert_eq!(OpSet::Darts.none_index(), Some(0));
}

#[test]
fn unknown_op_names_suggest_the_closest() {
    let err = "sep_conv3x3".parse::<OpKind>().unwrap_err();
    assert!(matches!(
        err,
        NasError::UnknownOp {
            suggestion: Some("sep_conv_3x3"),
            ..
        }
    ));
    assert!(
        err.to_string().contains("did you mean 'sep_conv_3x3'"),
        "{err}"
    );
    assert!(serde_json::from_str::<OpKind>("\"conv_7x7\"").is_err());
}

/// `linear_relu` / `linear_tanh` on `[N, C, 1, 1]` equal `act(x W^T + b)` of the same
/// weights, and cost what a linear layer costs.
#[test]
fn linear_ops_are_linear_layers_on_vector_features() {
    tch::manual_seed(4);
    let spec = OpSpec {
        c_in: 5,
        c_out: 3,
        stride: 1,
        affine: false,
        pool_bn: false,
        stride_style: OpSet::Mlp.stride_style(),
    };
    for (kind, act) in [
        (OpKind::LinearRelu, Tensor::relu as fn(&Tensor) -> Tensor),
        (OpKind::LinearTanh, Tensor::tanh),
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        let op = Op::new(vs.root() / "op", kind, spec).unwrap();
        let x = Tensor::randn([4, 5], (Kind::Float, Device::Cpu));
        let y = op.forward_t(&x.view([4, 5, 1, 1]), false).view([4, 3]);
        let vars = vs.variables();
        let w = vars["op.linear.weight"].view([3, 5]);
        let reference = act(&x.linear(&w, Some(&vars["op.linear.bias"])));
        assert!(y.allclose(&reference, 1e-6, 1e-6, false), "{kind}");
        // 5 * 3 weights + 3 biases; 15 multiply-adds + 3 activations.
        let cost = op.cost([5, 1, 1]);
        assert_eq!((cost.params, cost.flops), (18, 18), "{kind}");
    }
}

#[test]
fn invalid_specs_are_errors() {
    let spec = OpSpec {
        stride: 3,
        ..OpSpec::darts_eval(4, 1)
    };
    assert!(matches!(
        plan(OpKind::SepConv3x3, &spec),
        Err(NasError::Config(_))
    ));
    let spec = OpSpec {
        c_in: 0,
        ..OpSpec::darts_eval(4, 1)
    };
    assert!(matches!(
        plan(OpKind::Conv3x3, &spec),
        Err(NasError::Config(_))
    ));
}
