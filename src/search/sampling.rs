//! The random draws of the stochastic strategies (GDAS, SNAS, UNAS), in one place: Gumbel
//! noise, unit exponentials and uniforms on the open interval, each drawn through `rand_distr`
//! (0.4, the line that pairs with rand 0.8) from the strategy's own seeded ChaCha8 generator.
//! The generator is part of every strategy's checkpoint (serde), so a resumed search draws the
//! same noise as an uninterrupted one.
//!
//! Draws are made in f64 and cast to the alphas' kind at the end, so an f32 and an f64 search
//! with the same seed see the same noise up to rounding.

use rand::Rng;
use rand_distr::{Distribution, Exp1, Gumbel, Open01};
use tch::Tensor;

use super::SearchError;

/// One standard Gumbel(0, 1) draw.
///
/// `rand_distr::Gumbel` computes `-ln(-ln u)` with `u` in (0, 1]; `u = 1` (probability 2^-53
/// per draw) gives `+inf`. Such a draw is redrawn, as the official GDAS code redraws its noise
/// when it finds an `inf` (the result is the Gumbel law conditioned on a finite value, which
/// differs from it by an event of probability 2^-53).
pub fn gumbel<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    // Location 0, scale 1 are valid parameters; the constructor cannot fail on them.
    let standard = Gumbel::new(0.0, 1.0).unwrap_or_else(|_| unreachable!());
    loop {
        let g: f64 = standard.sample(rng);
        if g.is_finite() {
            return g;
        }
    }
}

/// One unit-rate exponential draw (`Exp1`, ziggurat); strictly positive.
pub fn exp1<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    loop {
        let e: f64 = Exp1.sample(rng);
        // The ziggurat's tail path can return +inf with probability ~2^-53; redraw it so that
        // `-ln e` stays finite.
        if e.is_finite() && e > 0.0 {
            return e;
        }
    }
}

/// `n` uniforms on the open interval (0, 1) (`Open01`).
pub fn open_uniforms<R: Rng + ?Sized>(rng: &mut R, n: usize) -> Vec<f64> {
    (0..n).map(|_| Open01.sample(rng)).collect()
}

/// `n` standard Gumbel draws.
pub fn gumbels<R: Rng + ?Sized>(rng: &mut R, n: usize) -> Vec<f64> {
    (0..n).map(|_| gumbel(rng)).collect()
}

/// `n` unit exponentials.
pub fn exponentials<R: Rng + ?Sized>(rng: &mut R, n: usize) -> Vec<f64> {
    (0..n).map(|_| exp1(rng)).collect()
}

/// `values` (row-major) as a tensor shaped, typed and placed like `like`.
pub fn tensor_like(values: &[f64], like: &Tensor) -> Result<Tensor, SearchError> {
    Ok(Tensor::from_slice(values)
        .f_view(like.size().as_slice())?
        .to_kind(like.kind())
        .to_device(like.device()))
}

/// Standard Gumbel noise shaped like `like` (no graph).
pub fn gumbel_tensor_like<R: Rng + ?Sized>(
    rng: &mut R,
    like: &Tensor,
) -> Result<Tensor, SearchError> {
    tensor_like(&gumbels(rng, like.numel()), like)
}

/// Unit exponentials shaped like `like` (no graph).
pub fn exp1_tensor_like<R: Rng + ?Sized>(
    rng: &mut R,
    like: &Tensor,
) -> Result<Tensor, SearchError> {
    tensor_like(&exponentials(rng, like.numel()), like)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const N: usize = 20_000;

    /// Kolmogorov-Smirnov distance between the sample and the CDF `cdf`.
    fn ks_distance(mut xs: Vec<f64>, cdf: impl Fn(f64) -> f64) -> f64 {
        xs.sort_by(f64::total_cmp);
        let n = xs.len() as f64;
        xs.iter()
            .enumerate()
            .map(|(i, &x)| {
                let f = cdf(x);
                (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
            })
            .fold(0.0, f64::max)
    }

    /// The 0.1% critical value of the one-sample KS statistic, `1.95 / sqrt(n)`.
    fn ks_critical(n: usize) -> f64 {
        1.95 / (n as f64).sqrt()
    }

    fn mean_var(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let m = xs.iter().sum::<f64>() / n;
        let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
        (m, v)
    }

    /// Gumbel(0, 1): CDF `exp(-exp(-x))`, mean Euler's gamma, variance pi^2/6. Catches a sign
    /// slip (`ln(-ln u)` is the *negated* Gumbel: mean -0.577, KS distance ~0.3) or a
    /// location/scale mix-up.
    #[test]
    fn gumbel_draws_follow_the_standard_gumbel_law() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let xs = gumbels(&mut rng, N);
        assert!(xs.iter().all(|x| x.is_finite()));
        let d = ks_distance(xs.clone(), |x| (-(-x).exp()).exp());
        assert!(d < ks_critical(N), "KS distance {d}");
        let (m, v) = mean_var(&xs);
        let gamma = 0.577_215_664_901_532_9;
        let var = std::f64::consts::PI.powi(2) / 6.0;
        // Standard errors: sqrt(var / N) = 0.009 for the mean; the variance's is ~0.02.
        assert!((m - gamma).abs() < 0.04, "mean {m}");
        assert!((v - var).abs() < 0.1, "variance {v}");
    }

    /// Exp(1): CDF `1 - exp(-x)`, mean 1, variance 1, all draws > 0.
    #[test]
    fn exponential_draws_follow_the_unit_exponential_law() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let xs = exponentials(&mut rng, N);
        assert!(xs.iter().all(|&x| x > 0.0 && x.is_finite()));
        let d = ks_distance(xs.clone(), |x| 1.0 - (-x).exp());
        assert!(d < ks_critical(N), "KS distance {d}");
        let (m, v) = mean_var(&xs);
        assert!((m - 1.0).abs() < 0.03 && (v - 1.0).abs() < 0.08, "{m} {v}");
    }

    /// Uniforms lie strictly inside (0, 1) and are uniform (KS).
    #[test]
    fn open_uniforms_are_uniform_and_never_hit_the_ends() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let xs = open_uniforms(&mut rng, N);
        assert!(xs.iter().all(|&u| u > 0.0 && u < 1.0));
        let d = ks_distance(xs, |x| x);
        assert!(d < ks_critical(N), "KS distance {d}");
    }

    /// The same seed gives the same tensor, shaped and typed like the template; the generator
    /// state after a draw continues the stream (what the checkpoints rely on).
    #[test]
    fn tensors_are_reproducible_from_the_seed_and_the_stream_position() {
        let like = Tensor::zeros([3, 4], (tch::Kind::Float, tch::Device::Cpu));
        let mut a = ChaCha8Rng::seed_from_u64(5);
        let mut b = ChaCha8Rng::seed_from_u64(5);
        let ga = gumbel_tensor_like(&mut a, &like).unwrap();
        let gb = gumbel_tensor_like(&mut b, &like).unwrap();
        assert!(ga.equal(&gb));
        assert_eq!(ga.size(), [3, 4]);
        assert_eq!(ga.kind(), tch::Kind::Float);
        let saved = serde_json::to_string(&a).unwrap();
        let mut resumed: ChaCha8Rng = serde_json::from_str(&saved).unwrap();
        let next = exp1_tensor_like(&mut a, &like).unwrap();
        assert!(next.equal(&exp1_tensor_like(&mut resumed, &like).unwrap()));
        assert!(!next.equal(&ga));
    }
}
