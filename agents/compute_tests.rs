use super::*;
use tch::Device;

fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    (a - b).abs().max().double_value(&[]) / scale
}

/// A bf16 conv and linear keep fp32 outputs, and their gradients reach the fp32 weights as
/// fp32, within bf16's rounding (8-bit mantissa: relative 2^-8 per operand) of the fp32 ones.
#[test]
fn bf16_layers_give_fp32_outputs_and_fp32_gradients_close_to_fp32() {
    tch::manual_seed(0);
    let opts = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([4, 3, 8, 8], opts);
    // Weights at PyTorch's init scale (1 / sqrt(fan_in)), so no layer saturates.
    let w = (Tensor::randn([5, 3, 3, 3], opts) / 27f64.sqrt()).set_requires_grad(true);
    let b = Tensor::randn([5], opts).set_requires_grad(true);
    let lw = (Tensor::randn([7, 5 * 8 * 8], opts) / 320f64.sqrt()).set_requires_grad(true);
    let target = Tensor::randn([4, 7], opts);
    let run = |precision| {
        let _scope = enter(Compute::new(precision, Layout::Nchw));
        let h = conv2d(&x, &w, Some(&b), ConvShape::padded(1)).relu();
        let y = linear(&h.flatten(1, -1), &lw, None);
        assert_eq!(y.kind(), Kind::Float);
        let loss = (&y * &target).sum(Kind::Float);
        let grads = Tensor::run_backward(&[&loss], &[&w, &b, &lw], false, false);
        (y.detach(), grads)
    };
    let (y32, g32) = run(Precision::Fp32);
    let (y16, g16) = run(Precision::Bf16);
    let e = relative_error(&y16, &y32);
    eprintln!("output relative error {e:.2e}");
    // Measured 4e-3; above 0 because bf16 does round (the test would not see a no-op cast).
    assert!(e > 1e-5 && e < 3e-2, "output relative error {e}");
    for (a, b) in g16.iter().zip(&g32) {
        assert_eq!(a.kind(), Kind::Float);
        let e = relative_error(a, b);
        eprintln!("gradient relative error {e:.2e}");
        assert!(e < 5e-2, "gradient relative error {e}");
    }
    // Nothing entered: fp32 again.
    assert_eq!(current(), Compute::DEFAULT);
}

/// An input already in bf16 stays in bf16 through a conv and a linear (the activations of a
/// network that entered the low precision once), while the weights' gradients still arrive
/// as fp32; under fp32 a bf16 activation is never made.
#[test]
fn bf16_activations_stay_bf16_and_weight_gradients_are_fp32() {
    tch::manual_seed(2);
    let opts = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([2, 3, 6, 6], opts);
    let w = (Tensor::randn([4, 3, 3, 3], opts) / 27f64.sqrt()).set_requires_grad(true);
    let lw = (Tensor::randn([5, 4 * 6 * 6], opts) / 12.0).set_requires_grad(true);
    {
        let _scope = enter(Compute::new(Precision::Bf16, Layout::ChannelsLast));
        let h = to_activation_kind(&x);
        assert_eq!(h.kind(), Kind::BFloat16);
        let h = conv2d(&h, &w, None, ConvShape::padded(1)).relu();
        assert_eq!(h.kind(), Kind::BFloat16, "a bf16 activation stays bf16");
        let y = linear(&h.flatten(1, -1), &lw, None);
        assert_eq!(y.kind(), Kind::BFloat16);
        let loss = y.to_kind(Kind::Float).sum(Kind::Float);
        let grads = Tensor::run_backward(&[&loss], &[&w, &lw], false, false);
        for g in &grads {
            assert_eq!(g.kind(), Kind::Float, "master-weight gradients are fp32");
            assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        }
    }
    let _scope = enter(Compute::new(Precision::Fp32, Layout::Nchw));
    assert_eq!(to_activation_kind(&x).kind(), Kind::Float);
}

#[test]
fn f64_tensors_are_never_cast() {
    let opts = (Kind::Double, Device::Cpu);
    let x = Tensor::randn([2, 3], opts);
    let w = Tensor::randn([4, 3], opts);
    let _scope = enter(Compute::new(Precision::Bf16, Layout::Nchw));
    let y = linear(&x, &w, None);
    assert_eq!(y.kind(), Kind::Double);
    assert!(y.allclose(&x.linear(&w, None::<Tensor>), 1e-15, 1e-15, false));
}

#[test]
fn scopes_nest_and_full_precision_restores() {
    let outer = enter(Compute::new(Precision::Bf16, Layout::ChannelsLast));
    full_precision(|| {
        assert_eq!(
            current(),
            Compute::new(Precision::Fp32, Layout::ChannelsLast)
        );
    });
    assert_eq!(current().precision, Precision::Bf16);
    drop(outer);
    assert_eq!(current(), Compute::DEFAULT);
}

#[test]
fn to_layout_follows_the_setting() {
    let x = Tensor::randn([2, 3, 4, 5], (Kind::Float, Device::Cpu));
    assert!(x.is_contiguous());
    {
        let _s = enter(Compute::new(Precision::Fp32, Layout::ChannelsLast));
        let y = to_layout(&x);
        assert!(is_channels_last(&y));
        assert!(y.equal(&x));
        // Already channels-last: the same storage, no copy.
        assert_eq!(to_layout(&y).data_ptr(), y.data_ptr());
    }
    let _s = enter(Compute::new(Precision::Fp32, Layout::Nchw));
    let y = to_layout(&channels_last(&x));
    assert!(y.is_contiguous() && y.equal(&x));
}

/// An overflowed step is reported (so it is skipped) and halves the scale; clean steps
/// unscale the gradient exactly and double the scale after `growth_interval` of them.
#[test]
fn loss_scaler_skips_overflow_and_grows() {
    let p = Tensor::zeros([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let mut scaler = LossScaler {
        scale: 1024.0,
        growth_interval: 2,
        ..LossScaler::default()
    };
    let backward = |scale: f64, value: f64| {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
        ((&p * value).sum(Kind::Float) * scale).backward();
    };
    backward(1024.0, 0.5);
    assert!(scaler.unscale(std::slice::from_ref(&p)));
    assert_eq!(Vec::<f32>::try_from(p.grad()).unwrap(), [0.5, 0.5, 0.5]);
    backward(1024.0, f64::INFINITY);
    assert!(!scaler.unscale(std::slice::from_ref(&p)));
    assert_eq!(
        (scaler.scale, scaler.skipped, scaler.clean_steps),
        (512.0, 1, 0)
    );
    for _ in 0..2 {
        backward(512.0, 1.0);
        assert!(scaler.unscale(std::slice::from_ref(&p)));
    }
    assert_eq!(scaler.scale, 1024.0);
}

/// The conv kernel runs in the layout the setting names, whatever its input's: its output
/// keeps that layout (oneDNN writes the layout it computed in).
#[test]
fn conv_output_follows_the_layout_setting() {
    let x = Tensor::randn([2, 3, 6, 6], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu));
    for precision in [Precision::Fp32, Precision::Bf16] {
        let y = {
            let _s = enter(Compute::new(precision, Layout::ChannelsLast));
            conv2d(&x, &w, None, ConvShape::padded(1))
        };
        assert!(
            is_channels_last(&y),
            "{precision}: NCHW input, channels-last setting"
        );
        let _s = enter(Compute::new(precision, Layout::Nchw));
        let y = conv2d(&channels_last(&x), &w, None, ConvShape::padded(1));
        assert!(
            y.is_contiguous(),
            "{precision}: channels-last input, NCHW setting"
        );
    }
}
