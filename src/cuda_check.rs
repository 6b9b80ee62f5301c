//! CPU vs CUDA agreement of the networks the project trains: one forward and one backward of
//! the IMPALA-CNN, the DARTS search network and the RL-DARTS supernet, with the same weights
//! and inputs on both devices (`rl-darts gpu-check`, run by scripts/gpu_check.sh).

use tch::{nn, Device, Kind, Tensor};

use crate::agents::{AgentError, Encoder, ImpalaCnn, ImpalaConfig};
use crate::nas::{
    CellWeights, DartsSearchConfig, DartsSearchNet, NasError, RlDartsConfig, RlDartsSupernet,
    Supernet,
};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Tch(#[from] tch::TchError),
    #[error(transparent)]
    Nas(#[from] NasError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("{0}")]
    Mismatch(String),
}

/// How far the CUDA results are from the CPU's for one network.
#[derive(Debug, Clone)]
pub struct Agreement {
    pub network: &'static str,
    pub kind: Kind,
    /// Input shape `[N, C, H, W]`.
    pub input: Vec<i64>,
    /// Number of tensors compared: the output, then every weight gradient and the op-weight
    /// gradients of a supernet.
    pub tensors: usize,
    /// max |cpu - cuda| / max |cpu| over the output.
    pub forward_error: f64,
    /// The same, worst over the gradients.
    pub gradient_error: f64,
    /// Which gradient was worst.
    pub worst_gradient: String,
    pub tolerance: f64,
}

impl Agreement {
    pub fn passed(&self) -> bool {
        self.forward_error <= self.tolerance && self.gradient_error <= self.tolerance
    }
}

/// The tolerance on the relative error (max abs difference over max abs value) for `kind`.
///
/// f64: both devices compute exactly rounded products, only the summation order differs
/// (~1e-15 relative); 1e-9 leaves room for the deep supernets' accumulation. f32: libtorch
/// lets cuDNN run convolutions in TF32 on Ampere and later (10-bit mantissa, ~5e-4 relative
/// per product) by default, as PyTorch does; 1e-2 of the largest value.
pub fn tolerance(kind: Kind) -> f64 {
    match kind {
        Kind::Double => 1e-9,
        _ => 1e-2,
    }
}

/// Relative error of `b` (any device) against `a`.
fn relative_error(a: &Tensor, b: &Tensor) -> Result<f64, CheckError> {
    let a = a.f_to_kind(Kind::Double)?;
    let b = b.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?;
    if a.size() != b.size() {
        return Err(CheckError::Mismatch(format!(
            "shapes differ: {:?} vs {:?}",
            a.size(),
            b.size()
        )));
    }
    let scale = a.f_abs()?.f_max()?.f_double_value(&[])?;
    let diff = (&a - &b).f_abs()?.f_max()?.f_double_value(&[])?;
    Ok(if scale > 0.0 { diff / scale } else { diff })
}

/// One network built twice (same variable names), its forward, and what it needs besides the
/// weights: op weights for a supernet.
trait Subject {
    fn forward(&self, x: &Tensor, op_weights: Option<&CellWeights>) -> Tensor;
}

struct Impala(ImpalaCnn);
impl Subject for Impala {
    fn forward(&self, x: &Tensor, _: Option<&CellWeights>) -> Tensor {
        self.0.features(x, &())
    }
}

struct Darts(DartsSearchNet);
impl Subject for Darts {
    fn forward(&self, x: &Tensor, w: Option<&CellWeights>) -> Tensor {
        // Training mode: BatchNorm normalises with the batch's statistics, as in the search.
        self.0
            .forward_with(x, w.expect("a supernet gets op weights"), true)
    }
}

struct RlDarts(RlDartsSupernet);
impl Subject for RlDarts {
    fn forward(&self, x: &Tensor, w: Option<&CellWeights>) -> Tensor {
        self.0.features(x, w.expect("a supernet gets op weights"))
    }
}

/// Softmax-normalised random op weights for a supernet's cell space, as leaves that require
/// gradients (the architecture gradient is compared too). `[E, O]` each.
fn op_weights(net: &dyn Supernet, device: Device, kind: Kind) -> (CellWeights, Vec<Tensor>) {
    let space = net.space();
    let (e, o) = (space.num_edges() as i64, space.num_ops() as i64);
    let draw = || {
        Tensor::randn([e, o], (Kind::Double, Device::Cpu))
            .softmax(-1, Kind::Double)
            .to_kind(kind)
    };
    let normal = draw();
    let reduce = net.has_reduction_cells().then(draw);
    let leaf = |t: &Tensor| t.to_device(device).detach().set_requires_grad(true);
    let mut leaves = vec![leaf(&normal)];
    if let Some(r) = &reduce {
        leaves.push(leaf(r));
    }
    let weights = CellWeights::dense(
        leaves[0].shallow_clone(),
        leaves.get(1).map(Tensor::shallow_clone),
    );
    (weights, leaves)
}

/// Forward, backward of `sum(out * g)`, and the output plus named gradients on the CPU.
fn run_once(
    net: &dyn Subject,
    vs: &nn::VarStore,
    x: &Tensor,
    g: &Tensor,
    op_weights: Option<(&CellWeights, &[Tensor])>,
) -> Result<Vec<(String, Tensor)>, CheckError> {
    let out = net.forward(x, op_weights.map(|(w, _)| w));
    if out.size() != g.size() {
        return Err(CheckError::Mismatch(format!(
            "output {:?}, expected {:?}",
            out.size(),
            g.size()
        )));
    }
    (&out * g.to_device(out.device()))
        .f_sum(out.kind())?
        .f_backward()?;
    let mut named = vec![("output".to_string(), out.detach().to_device(Device::Cpu))];
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in vars {
        let grad = var.grad();
        // Buffers (BatchNorm statistics) have none; so do weights the forward never used.
        if var.requires_grad() && grad.defined() {
            named.push((name, grad.to_device(Device::Cpu)));
        }
    }
    if let Some((_, leaves)) = op_weights {
        for (i, leaf) in leaves.iter().enumerate() {
            let name = if i == 0 {
                "alpha.normal"
            } else {
                "alpha.reduce"
            };
            named.push((name.to_string(), leaf.grad().to_device(Device::Cpu)));
        }
    }
    Ok(named)
}

/// Builds `build` on the CPU and on `cuda` (any device: the tests compare the CPU with
/// itself), gives the second copy the CPU's weights, runs both on one input and compares.
fn compare<S: Subject>(
    network: &'static str,
    cuda: Device,
    kind: Kind,
    input: &[i64],
    build: impl Fn(nn::Path) -> Result<S, CheckError>,
    supernet: impl Fn(&S) -> Option<&dyn Supernet>,
) -> Result<Agreement, CheckError> {
    let mut cpu_vs = nn::VarStore::new(Device::Cpu);
    let cpu_net = build(cpu_vs.root() / "net")?;
    let mut cuda_vs = nn::VarStore::new(cuda);
    let cuda_net = build(cuda_vs.root() / "net")?;
    cpu_vs.set_kind(kind);
    cuda_vs.set_kind(kind);
    cuda_vs.copy(&cpu_vs)?;

    let (cpu_w, cuda_w) = match supernet(&cpu_net) {
        Some(net) => {
            let (w, leaves) = op_weights(net, Device::Cpu, kind);
            let cuda_leaves: Vec<Tensor> = leaves
                .iter()
                .map(|l| l.detach().to_device(cuda).set_requires_grad(true))
                .collect();
            let cuda_weights = CellWeights::dense(
                cuda_leaves[0].shallow_clone(),
                cuda_leaves.get(1).map(Tensor::shallow_clone),
            );
            (Some((w, leaves)), Some((cuda_weights, cuda_leaves)))
        }
        None => (None, None),
    };
    let x = Tensor::rand(input, (Kind::Double, Device::Cpu)).to_kind(kind); // [N, C, H, W] in [0, 1)
                                                                            // The output gradient: random, of the output's shape (a probe forward tells it).
    let out_shape = tch::no_grad(|| cpu_net.forward(&x, cpu_w.as_ref().map(|(w, _)| w))).size();
    let g = Tensor::randn(out_shape.as_slice(), (Kind::Double, Device::Cpu)).to_kind(kind);
    let a = run_once(
        &cpu_net,
        &cpu_vs,
        &x,
        &g,
        cpu_w.as_ref().map(|(w, l)| (w, l.as_slice())),
    )?;
    let b = run_once(
        &cuda_net,
        &cuda_vs,
        &x.to_device(cuda),
        &g,
        cuda_w.as_ref().map(|(w, l)| (w, l.as_slice())),
    )?;
    if a.len() != b.len() {
        return Err(CheckError::Mismatch(format!(
            "{network}: {} tensors on the CPU, {} on CUDA",
            a.len(),
            b.len()
        )));
    }
    let forward_error = relative_error(&a[0].1, &b[0].1)?;
    let (mut gradient_error, mut worst_gradient) = (0.0f64, String::new());
    for ((name, ta), (name_b, tb)) in a.iter().zip(&b).skip(1) {
        if name != name_b {
            return Err(CheckError::Mismatch(format!(
                "{network}: gradient {name} on the CPU faces {name_b} on CUDA"
            )));
        }
        let e = relative_error(ta, tb)?;
        if e > gradient_error || worst_gradient.is_empty() {
            gradient_error = e;
            worst_gradient = name.clone();
        }
    }
    Ok(Agreement {
        network,
        kind,
        input: input.to_vec(),
        tensors: a.len(),
        forward_error,
        gradient_error,
        worst_gradient,
        tolerance: tolerance(kind),
    })
}

/// The three networks at the sizes the project trains them (the papers' defaults), in `kind`,
/// CPU against `cuda`.
pub fn check_networks(cuda: Device, kind: Kind) -> Result<Vec<Agreement>, CheckError> {
    tch::manual_seed(0);
    let procgen = [3i64, 64, 64];
    let impala = compare(
        "IMPALA-CNN",
        cuda,
        kind,
        &[8, 3, 64, 64],
        |p| {
            Ok(Impala(ImpalaCnn::new(
                p,
                &procgen,
                &ImpalaConfig::default(),
            )?))
        },
        |_| None,
    )?;
    let darts = compare(
        "DARTS search network (C=16, 8 cells)",
        cuda,
        kind,
        &[4, 3, 32, 32],
        |p| {
            Ok(Darts(DartsSearchNet::new(
                p,
                &DartsSearchConfig::default(),
            )?))
        },
        |n| Some(&n.0 as &dyn Supernet),
    )?;
    let rl_darts = compare(
        "RL-DARTS supernet (16/32/32, 4 nodes)",
        cuda,
        kind,
        &[4, 3, 64, 64],
        |p| {
            Ok(RlDarts(RlDartsSupernet::new(
                p,
                &RlDartsConfig::default(),
                &procgen,
            )?))
        },
        |n| Some(&n.0 as &dyn Supernet),
    )?;
    Ok(vec![impala, darts, rl_darts])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_scales_by_the_reference() {
        let a = Tensor::from_slice(&[1.0f64, -4.0, 2.0]);
        let b = Tensor::from_slice(&[1.0f64, -4.0, 2.04]);
        assert!((relative_error(&a, &b).unwrap() - 0.01).abs() < 1e-12);
        assert!(relative_error(&a, &Tensor::from_slice(&[1.0f64, 2.0])).is_err());
    }

    /// The whole comparison (weights copied by name, op-weight leaves, every gradient paired by
    /// name) on the CPU against itself: everything pairs up and agrees to rounding.
    #[test]
    fn the_comparison_pairs_every_gradient() {
        tch::manual_seed(1);
        let small = RlDartsConfig {
            channels: vec![4, 8, 8],
            normal_cells_per_stage: 1,
            embedding: 16,
            ..RlDartsConfig::default()
        };
        let a = compare(
            "RL-DARTS supernet",
            Device::Cpu,
            Kind::Double,
            &[2, 3, 64, 64],
            |p| Ok(RlDarts(RlDartsSupernet::new(p, &small, &[3, 64, 64])?)),
            |n| Some(&n.0 as &dyn Supernet),
        )
        .unwrap();
        assert!(a.passed(), "{a:?}");
        assert!(a.forward_error < 1e-12 && a.gradient_error < 1e-12, "{a:?}");
        // Output, every weight, both op-weight matrices.
        assert!(a.tensors > 10, "{a:?}");
        assert_eq!(a.tolerance, 1e-9);
        let failing = Agreement {
            gradient_error: 2e-9,
            ..a
        };
        assert!(!failing.passed());
    }
}
