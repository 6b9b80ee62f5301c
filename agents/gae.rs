//! Generalised advantage estimation (Schulman et al. 2016) over a `[T, N]` rollout with
//! gym3 `first` flags, exactly as CleanRL's `ppo_procgen.py` computes it with `next_done`.

/// GAE(gamma, lambda) advantages.
///
/// Layout: every `[T, N]` slice is row-major, step `t` of env `n` at `t * num_envs + n`.
/// `firsts[t, n] = 1` when `obs[t, n]` starts a new episode, so the reward `rewards[t, n]`
/// (which arrived together with `first[t + 1, n]`) is the last of its episode exactly when
/// `first[t + 1, n] = 1`; then the bootstrap from `values[t + 1, n]` is cut. After the last
/// step, `next_value` / `next_first` describe the observation that follows the rollout.
///
/// The recursion, per env, from the last step backwards:
/// `delta_t = r_t + gamma * V_{t+1} * (1 - first_{t+1}) - V_t`,
/// `A_t = delta_t + gamma * lambda * (1 - first_{t+1}) * A_{t+1}`.
/// Time-limit truncations are treated as terminations, as in CleanRL.
///
/// # Shapes
/// rewards, values, firsts `[T * N]`; next_value, next_first `[N]` -> advantages `[T * N]`
#[allow(clippy::too_many_arguments)]
pub fn gae(
    rewards: &[f32],
    values: &[f32],
    firsts: &[u8],
    next_value: &[f32],
    next_first: &[u8],
    num_envs: usize,
    gamma: f64,
    lambda: f64,
) -> Vec<f32> {
    let n = num_envs;
    assert!(
        n > 0 && rewards.len().is_multiple_of(n),
        "rollout length {} is not a multiple of {n} envs",
        rewards.len()
    );
    assert!(
        values.len() == rewards.len() && firsts.len() == rewards.len(),
        "[T, N] slices differ in length"
    );
    assert!(
        next_value.len() == n && next_first.len() == n,
        "bootstrap slices must have one entry per env"
    );
    let t_len = rewards.len() / n;
    let mut advantages = vec![0f32; rewards.len()];
    // A_{t+1} per env, carried backwards (f64: 256-step sums with gamma 0.999 lose digits in f32).
    let mut last_gae = vec![0f64; n];
    for t in (0..t_len).rev() {
        let (next_values, next_firsts) = if t + 1 == t_len {
            (next_value, next_first)
        } else {
            (
                &values[(t + 1) * n..(t + 2) * n],
                &firsts[(t + 1) * n..(t + 2) * n],
            )
        };
        for env in 0..n {
            let i = t * n + env;
            let next_non_terminal = 1.0 - f64::from(next_firsts[env].min(1));
            let delta = f64::from(rewards[i])
                + gamma * f64::from(next_values[env]) * next_non_terminal
                - f64::from(values[i]);
            last_gae[env] = delta + gamma * lambda * next_non_terminal * last_gae[env];
            advantages[i] = last_gae[env] as f32;
        }
    }
    advantages
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The definition, not the recursion: `A_t = sum_k (gamma lambda)^k delta_{t+k}` over the
    /// rest of t's episode within the rollout, with `delta` bootstrapping from the next value
    /// only when the next observation belongs to the same episode.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        rewards: &[f32],
        values: &[f32],
        firsts: &[u8],
        next_value: &[f32],
        next_first: &[u8],
        n: usize,
        gamma: f64,
        lambda: f64,
    ) -> Vec<f64> {
        let t_len = rewards.len() / n;
        // Per env: value and first flag of observation t, for t in 0..=T.
        let v = |t: usize, e: usize| if t == t_len { next_value[e] } else { values[t * n + e] } as f64;
        let f = |t: usize, e: usize| if t == t_len { next_first[e] } else { firsts[t * n + e] } != 0;
        let mut out = vec![0.0; rewards.len()];
        for e in 0..n {
            for t in 0..t_len {
                let mut sum = 0.0;
                let mut k = t;
                loop {
                    let ends = f(k + 1, e);
                    let bootstrap = if ends { 0.0 } else { gamma * v(k + 1, e) };
                    let delta = rewards[k * n + e] as f64 + bootstrap - v(k, e);
                    sum += (gamma * lambda).powi((k - t) as i32) * delta;
                    k += 1;
                    if ends || k == t_len {
                        break;
                    }
                }
                out[t * n + e] = sum;
            }
        }
        out
    }

    #[test]
    fn matches_the_naive_sum_on_random_rollouts() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for &(t_len, n, gamma, lambda) in &[
            (64usize, 5usize, 0.999, 0.95),
            (17, 3, 0.9, 0.5),
            (1, 4, 0.99, 1.0),
        ] {
            let len = t_len * n;
            let rewards: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let values: Vec<f32> = (0..len).map(|_| rng.gen_range(-2.0..2.0)).collect();
            // ~10% episode starts: several boundaries per env, including at t = 0 and after
            // the last step.
            let firsts: Vec<u8> = (0..len).map(|_| u8::from(rng.gen_bool(0.1))).collect();
            let next_value: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let next_first: Vec<u8> = (0..n).map(|e| u8::from(e % 2 == 0)).collect();
            let boundaries = firsts.iter().filter(|&&f| f != 0).count();
            assert!(
                // Only the 64 x 5 case has enough draws (~32 expected) to demand 10.
                len < 300 || boundaries >= 10,
                "too few episode boundaries: {boundaries}"
            );
            let fast = gae(
                &rewards,
                &values,
                &firsts,
                &next_value,
                &next_first,
                n,
                gamma,
                lambda,
            );
            let slow = naive(
                &rewards,
                &values,
                &firsts,
                &next_value,
                &next_first,
                n,
                gamma,
                lambda,
            );
            for (i, (a, b)) in fast.iter().zip(&slow).enumerate() {
                assert!(
                    (f64::from(*a) - b).abs() < 1e-5 * (1.0 + b.abs()),
                    "index {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn lambda_one_without_boundaries_is_the_discounted_return_minus_value() {
        // One env, 3 steps, rewards 1, gamma 0.5, bootstrap V = 8:
        // return_0 = 1 + 0.5 + 0.25 + 0.125 * 8 = 2.75, A_0 = 2.75 - V_0 = 2.75 - 1.
        let adv = gae(
            &[1.0; 3],
            &[1.0, 0.0, 0.0],
            &[0; 3],
            &[8.0],
            &[0],
            1,
            0.5,
            1.0,
        );
        assert!((adv[0] - 1.75).abs() < 1e-6, "{adv:?}");
        // With the episode ending after the last step, the bootstrap is cut: 1.75 - 1.
        let adv = gae(
            &[1.0; 3],
            &[1.0, 0.0, 0.0],
            &[0; 3],
            &[8.0],
            &[1],
            1,
            0.5,
            1.0,
        );
        assert!((adv[0] - 0.75).abs() < 1e-6, "{adv:?}");
    }
}
