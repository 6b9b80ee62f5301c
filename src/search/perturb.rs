//! Weight perturbations and Hessian-vector products for second-order and implicit
//! hypergradients (DARTS, Liu et al. ICLR 2019, eq. 7-8; iDARTS, Zhang et al. ICML 2021).
//!
//! The official DARTS code perturbs the weights in place (`p.data.add_(R, v)`, then
//! `sub_(2R, v)`, then `add_(R, v)`) and trusts the arithmetic to land back on `w`; in floating
//! point it does not, exactly, and every alpha step drifts the weights a little. Here every
//! perturbed value is computed from a snapshot (`w = w0 + s * v`) and the weights are restored
//! by copying the snapshot back, bit for bit, also on early return (the guard restores on
//! drop).

use tch::{Kind, Tensor};

use super::SearchError;

/// Snapshot of a set of tensors (weights, and BatchNorm running statistics that forward passes
/// update) that restores them bit-exactly when dropped or when [`WeightGuard::restore`] is
/// called.
#[derive(Debug)]
pub struct WeightGuard {
    live: Vec<Tensor>,
    saved: Vec<Tensor>,
}

impl WeightGuard {
    /// Copies `tensors` (shallow clones of the live tensors are kept to write back into).
    pub fn snapshot(tensors: &[Tensor]) -> Self {
        let saved = tch::no_grad(|| tensors.iter().map(|t| t.detach().copy()).collect());
        Self {
            live: tensors.iter().map(Tensor::shallow_clone).collect(),
            saved,
        }
    }

    /// The snapshot values (detached copies).
    pub fn saved(&self) -> &[Tensor] {
        &self.saved
    }

    /// Sets the first `direction.len()` live tensors to `saved + scale * direction` (computed
    /// from the snapshot, so repeated perturbations do not accumulate error). Tensors past the
    /// direction (buffers) are reset to their snapshot.
    pub fn perturb(&mut self, direction: &[Tensor], scale: f64) -> Result<(), SearchError> {
        if direction.len() > self.live.len() {
            return Err(SearchError::Invalid(format!(
                "perturbation direction has {} tensors, the guard holds {}",
                direction.len(),
                self.live.len()
            )));
        }
        tch::no_grad(|| -> Result<(), SearchError> {
            for (i, (live, saved)) in self.live.iter_mut().zip(&self.saved).enumerate() {
                match direction.get(i) {
                    Some(v) => live.f_copy_(&(saved + v * scale))?,
                    None => live.f_copy_(saved)?,
                }
            }
            Ok(())
        })
    }

    /// Writes `values` into the first `values.len()` live tensors (a virtual step's `w'`).
    pub fn set(&mut self, values: &[Tensor]) -> Result<(), SearchError> {
        tch::no_grad(|| -> Result<(), SearchError> {
            for (live, v) in self.live.iter_mut().zip(values) {
                live.f_copy_(v)?;
            }
            Ok(())
        })
    }

    /// Copies the snapshot back into every live tensor.
    pub fn restore(&mut self) {
        tch::no_grad(|| {
            for (live, saved) in self.live.iter_mut().zip(&self.saved) {
                live.copy_(saved);
            }
        });
    }
}

impl Drop for WeightGuard {
    fn drop(&mut self) {
        self.restore();
    }
}

/// `sum_i <a_i, b_i>` as an f64.
pub fn dot(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x * y).sum(Kind::Double).double_value(&[]))
        .sum()
}

/// `sqrt(sum_i ||a_i||^2)`.
pub fn norm(a: &[Tensor]) -> f64 {
    dot(a, a).sqrt()
}

/// Gradients of `loss` with respect to `inputs`; an input the loss does not reach gets zeros
/// (libtorch returns an undefined tensor there).
pub fn grad(
    loss: &Tensor,
    inputs: &[Tensor],
    create_graph: bool,
) -> Result<Vec<Tensor>, SearchError> {
    let grads = Tensor::f_run_backward(&[loss], inputs, create_graph, create_graph)?;
    Ok(grads
        .into_iter()
        .zip(inputs)
        .map(|(g, x)| if g.defined() { g } else { x.zeros_like() })
        .collect())
}

/// Mixed second derivative by central differences, DARTS's eq. 8:
/// `grad2_{alpha,w} L * v ~= [grad_alpha L(w + eps v) - grad_alpha L(w - eps v)] / (2 eps)`.
///
/// `guard` holds the weights `w` first (then any buffers); `grad_alpha` evaluates
/// `grad_alpha L` at the weights currently in place. The weights are restored on return.
pub fn fd_mixed_hvp(
    guard: &mut WeightGuard,
    v: &[Tensor],
    eps: f64,
    mut grad_alpha: impl FnMut() -> Result<Vec<Tensor>, SearchError>,
) -> Result<Vec<Tensor>, SearchError> {
    guard.perturb(v, eps)?;
    let plus = grad_alpha();
    let plus = plus.and_then(|p| {
        guard.perturb(v, -eps)?;
        Ok(p)
    });
    let minus = plus.and_then(|p| Ok((p, grad_alpha()?)));
    guard.restore();
    let (plus, minus) = minus?;
    Ok(plus
        .iter()
        .zip(&minus)
        .map(|(p, m)| (p - m) / (2.0 * eps))
        .collect())
}

/// Mixed second derivative by double backward: `grad_alpha <grad_w L, v>`. `loss` must have
/// been built with a graph to both `w` and `alpha`.
pub fn exact_mixed_hvp(
    loss: &Tensor,
    w: &[Tensor],
    alpha: &[Tensor],
    v: &[Tensor],
) -> Result<Vec<Tensor>, SearchError> {
    let gw = grad(loss, w, true)?;
    let inner = inner_product(&gw, v);
    grad(&inner, alpha, false)
}

/// Hessian-vector product `grad2_{w,w} L * v` by double backward (iDARTS's Neumann series
/// needs it): `grad_w <grad_w L, v>`.
pub fn exact_hvp(loss: &Tensor, w: &[Tensor], v: &[Tensor]) -> Result<Vec<Tensor>, SearchError> {
    let gw = grad(loss, w, true)?;
    let inner = inner_product(&gw, v);
    grad(&inner, w, false)
}

/// `sum_i (a_i * sg(b_i)).sum()` as a scalar tensor that keeps `a`'s graph (how an output
/// gradient `b` is backpropagated when `run_backward` takes none).
fn inner_product(a: &[Tensor], b: &[Tensor]) -> Tensor {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x * y.detach()).sum(x.kind()))
        .fold(None, |acc: Option<Tensor>, t| {
            Some(match acc {
                None => t,
                Some(s) => s + t,
            })
        })
        .unwrap_or_else(|| Tensor::zeros([], (Kind::Float, tch::Device::Cpu)))
}

/// Top eigenvalue of `H` by power iteration from `start` (`iterations` Hessian-vector
/// products). For a Hessian with negative eigenvalues of larger magnitude this returns that
/// (signed) eigenvalue, which is what the convergence check needs: the series diverges when
/// any `|1 - gamma * lambda| >= 1`.
pub fn power_iteration(
    start: &[Tensor],
    iterations: usize,
    mut hvp: impl FnMut(&[Tensor]) -> Result<Vec<Tensor>, SearchError>,
) -> Result<f64, SearchError> {
    let n0 = norm(start);
    if !(n0.is_finite() && n0 > 0.0) {
        return Err(SearchError::Invalid(
            "power iteration needs a nonzero finite start vector".into(),
        ));
    }
    let mut u: Vec<Tensor> = start.iter().map(|t| t.detach() / n0).collect();
    let mut lambda = 0.0;
    for _ in 0..iterations.max(1) {
        let h: Vec<Tensor> = hvp(&u)?.iter().map(Tensor::detach).collect();
        // Rayleigh quotient with the unit vector u.
        lambda = dot(&u, &h);
        let n = norm(&h);
        if !(n.is_finite() && n > 0.0) {
            break;
        }
        u = h.iter().map(|t| t / n).collect();
    }
    Ok(lambda)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn opts() -> (Kind, Device) {
        (Kind::Double, Device::Cpu)
    }

    /// L(w, a) = sum(tanh(w * a)) * sum(w^2 a); smooth and coupling w and a in every entry.
    fn loss(w: &Tensor, a: &Tensor) -> Tensor {
        (w * a).tanh().sum(Kind::Double) * (w * w * a).sum(Kind::Double)
    }

    #[test]
    fn guard_restores_bit_exactly_after_perturbation() {
        tch::manual_seed(0);
        let w = Tensor::randn([5, 3], opts()).set_requires_grad(true);
        let buffer = Tensor::randn([3], opts());
        let before_w = w.copy();
        let before_b = buffer.copy();
        {
            let mut guard = WeightGuard::snapshot(&[w.shallow_clone(), buffer.shallow_clone()]);
            let v = [Tensor::randn([5, 3], opts())];
            // 0.1 + 0.2 style values whose in-place add/sub round trip is not exact.
            guard.perturb(&v, 0.1 / 3.0).unwrap();
            let _ = tch::no_grad(|| buffer.shallow_clone().g_add_scalar_(1.0));
            assert!(!w.equal(&before_w));
            guard.perturb(&v, -0.1 / 3.0).unwrap();
            // perturb() resets buffers past the direction to the snapshot.
            assert!(buffer.equal(&before_b));
            let _ = tch::no_grad(|| buffer.shallow_clone().g_add_scalar_(1.0));
        } // dropped: restored
        assert!(w.equal(&before_w), "weights not bit-identical");
        assert!(buffer.equal(&before_b), "buffers not bit-identical");
        assert!(w.requires_grad());
    }

    #[test]
    fn finite_difference_mixed_hvp_matches_double_backward() {
        tch::manual_seed(1);
        let w = Tensor::randn([4, 3], opts()).set_requires_grad(true);
        let a = Tensor::randn([4, 3], opts()).set_requires_grad(true);
        let v = [Tensor::randn([4, 3], opts())];
        let exact = exact_mixed_hvp(
            &loss(&w, &a),
            &[w.shallow_clone()],
            &[a.shallow_clone()],
            &v,
        )
        .unwrap();
        let mut guard = WeightGuard::snapshot(&[w.shallow_clone()]);
        let eps = 1e-4 / norm(&v);
        let fd = fd_mixed_hvp(&mut guard, &v, eps, || {
            grad(&loss(&w, &a), &[a.shallow_clone()], false)
        })
        .unwrap();
        let err = (&fd[0] - &exact[0]).abs().max().double_value(&[]);
        let scale = exact[0].abs().max().double_value(&[]);
        assert!(
            err <= 1e-7 * scale.max(1.0),
            "fd vs exact: {err} (scale {scale})"
        );
        // The weight Hessian-vector product against central differences of the gradient.
        let exact_ww = exact_hvp(&loss(&w, &a), &[w.shallow_clone()], &v).unwrap();
        let fd_ww = fd_mixed_hvp(&mut guard, &v, eps, || {
            grad(&loss(&w, &a), &[w.shallow_clone()], false)
        })
        .unwrap();
        let err = (&fd_ww[0] - &exact_ww[0]).abs().max().double_value(&[]);
        assert!(
            err <= 1e-6 * exact_ww[0].abs().max().double_value(&[]).max(1.0),
            "{err}"
        );
    }

    #[test]
    fn unused_inputs_get_zero_gradients() {
        let w = Tensor::ones([2], opts()).set_requires_grad(true);
        let unused = Tensor::ones([3], opts()).set_requires_grad(true);
        let g = grad(
            &(&w * 2.0).sum(Kind::Double),
            &[w.shallow_clone(), unused.shallow_clone()],
            false,
        )
        .unwrap();
        assert_eq!(Vec::<f64>::try_from(&g[1]).unwrap(), [0.0; 3]);
    }
}
