//! Asynchronous env stepping (`ppo.async_envs`): a Procgen batch split into two handles
//! continues every env exactly as the one handle would, and the asynchronous rollout fills the
//! rollout storage bit for bit as the synchronous one does, given the same policy and seeds.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rl_darts::agents::{
    collect_rollout, ActorCritic, Encoder, NoHeartbeat, RewardNormalizer, RolloutStorage,
};
use rl_darts::envs::procgen::{ProcgenOptions, ProcgenVecEnv};
use rl_darts::envs::{EpisodeStats, SplitVecEnv, VecEnv};
use tch::{nn, Device, Kind, Tensor};

fn opts(seed: i32) -> ProcgenOptions {
    ProcgenOptions {
        rand_seed: Some(seed),
        num_threads: 1,
        ..Default::default()
    }
}

/// Every field of a transition, owned: frames, rewards, first flags, finished episodes, level
/// seeds, previous level seeds, previous level completions.
type Transition = (
    Tensor,
    Vec<f32>,
    Vec<u8>,
    Vec<EpisodeStats>,
    Vec<i32>,
    Vec<i32>,
    Vec<u8>,
);

fn snapshot(env: &dyn VecEnv) -> Transition {
    let v = env.observe();
    (
        v.obs.copy(),
        v.reward.to_vec(),
        v.first.to_vec(),
        v.finished.to_vec(),
        v.level.level_seed.to_vec(),
        v.level.prev_level_seed.to_vec(),
        v.level.prev_level_complete.to_vec(),
    )
}

/// Procgen seeds each game's levels from one generator, game after game; the split copies each
/// game's state, so an uneven split (2 + 3) plays the same levels, frames, rewards and episode
/// ends as the single handle, through several episodes per env.
#[test]
fn a_split_batch_steps_every_env_as_the_single_handle_does() {
    let n = 5;
    let mut whole = ProcgenVecEnv::new("coinrun", n, opts(11)).unwrap();
    let mut split = SplitVecEnv::procgen("coinrun", n, opts(11)).unwrap();
    let mut ends = 0;
    assert!(snapshot(&whole).0.equal(&snapshot(&split).0));
    for t in 0..400 {
        // Actions that vary by env and step, with plenty of jumping right (coinrun's episodes
        // then end often: deaths, coins, timeouts are all reached by some env).
        let actions: Vec<i64> = (0..n)
            .map(|i| [8, 7, 5, 2, 6, 4][(t / 5 + i) % 6])
            .collect();
        whole.step(&actions).unwrap();
        split.step(&actions).unwrap();
        let (a, b) = (snapshot(&whole), snapshot(&split));
        assert!(a.0.equal(&b.0), "step {t}: frames differ");
        assert_eq!(a.1, b.1, "step {t}: rewards");
        assert_eq!(a.2, b.2, "step {t}: first flags");
        assert_eq!(a.3, b.3, "step {t}: finished episodes");
        assert_eq!((a.4, a.5, a.6), (b.4, b.5, b.6), "step {t}: level info");
        ends += a.3.len();
    }
    assert!(
        ends >= 2 * n,
        "only {ends} episodes ended: the test needs resets"
    );
    // The split batch saves its state as one batch: a single handle resumes from it, and a
    // split batch from the single handle's state, each exactly.
    let mut whole_resumed = ProcgenVecEnv::new("coinrun", n, opts(99)).unwrap();
    whole_resumed
        .load_state(&split.save_state().unwrap())
        .unwrap();
    let mut split_resumed = SplitVecEnv::procgen("coinrun", n, opts(98)).unwrap();
    split_resumed
        .load_state(&whole.save_state().unwrap())
        .unwrap();
    for t in 0..100 {
        let actions: Vec<i64> = (0..n).map(|i| ((t + 2 * i) % 15) as i64).collect();
        for env in [
            &mut whole as &mut dyn VecEnv,
            &mut split,
            &mut whole_resumed,
            &mut split_resumed,
        ] {
            env.step(&actions).unwrap();
        }
        let reference = snapshot(&whole);
        for (name, env) in [
            ("split", &split as &dyn VecEnv),
            ("single handle resumed from the split", &whole_resumed),
            ("split resumed from the single handle", &split_resumed),
        ] {
            let s = snapshot(env);
            assert!(s.0.equal(&reference.0), "{name}, resumed step {t}: frames");
            assert_eq!(
                (&s.1, &s.2, &s.3, &s.4),
                (&reference.1, &reference.2, &reference.3, &reference.4),
                "{name}, resumed step {t}"
            );
        }
    }
}

/// An encoder whose features are small integers computed from each frame alone: its byte sum
/// in units of 4096 (rounded down) and its count of bright bytes in units of 64. Byte sums
/// stay below 2^24, so every partial sum is exact in f32 and no summation order can change
/// them.
///
/// Why integers: libtorch picks its matrix-product and reduction kernels by batch size, and
/// their rounding differs with the blocking (measured: the log-probabilities of a real
/// network on 2 + 3 frames differ in the last bits from those on 5). With integer features and
/// head weights that are multiples of 2^-12 (set in [`rollouts`]), every product and sum in the
/// heads is exact, so the policy's outputs are the same functions of each frame whatever the
/// batch, and any difference left between the rollouts is the rollouts' own.
#[derive(Debug)]
struct FrameSumEncoder;

impl Encoder for FrameSumEncoder {
    fn features(&self, obs: &Tensor, _arch: &()) -> Tensor {
        let bytes = (obs * 255.0).round();
        let dims = [1i64, 2, 3];
        let sum = bytes.sum_dim_intlist(dims.as_slice(), false, Kind::Float);
        let bright = bytes.gt(200.0).to_kind(Kind::Float).sum_dim_intlist(
            dims.as_slice(),
            false,
            Kind::Float,
        );
        Tensor::stack(&[(sum / 4096.0).floor(), (bright / 64.0).floor()], 1)
    }

    fn feature_dim(&self) -> i64 {
        2
    }
}

struct Rollouts {
    storages: Vec<RolloutStorage>,
    episodes: Vec<Vec<EpisodeStats>>,
}

/// Two consecutive rollouts of `steps` steps on `env`, with reward normalisation.
fn rollouts(mut env: Box<dyn VecEnv>, steps: usize) -> Rollouts {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let policy = ActorCritic::new(vs.root() / "policy", Box::new(FrameSumEncoder), 15);
    // Head weights k / 2^12 with small integers k, biases binary fractions: exact products and sums (see
    // FrameSumEncoder), and logits of a few units, so that frames sway the actions.
    tch::no_grad(|| {
        // In name order: the weights are drawn from the seeded generator one after another.
        let mut variables: Vec<_> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut w) in variables {
            let exact = if name.ends_with("weight") {
                (w.randn_like() * 3.0).round() / 4096.0
                    * if name.contains("actor") { 8.0 } else { 1.0 }
            } else if name.contains("actor") {
                // Mostly right and jump right: coinrun's episodes then end (coins, deaths)
                // within the rollouts.
                let mut bias = vec![0f32; 15];
                (bias[7], bias[8]) = (1.5, 2.0);
                Tensor::from_slice(&bias)
            } else {
                w.zeros_like()
            };
            w.copy_(&exact);
        }
    });
    let spec = env.spec().clone();
    let mut normalizer = RewardNormalizer::new(spec.num_envs, 0.999, 10.0);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut out = Rollouts {
        storages: Vec::new(),
        episodes: Vec::new(),
    };
    for _ in 0..2 {
        let mut storage = RolloutStorage::new(&spec, steps, Device::Cpu).unwrap();
        let episodes = collect_rollout(
            env.as_mut(),
            &policy,
            &mut storage,
            Some(&mut normalizer),
            &mut rng,
            &(),
            &mut NoHeartbeat,
        )
        .unwrap();
        out.storages.push(storage);
        out.episodes.push(episodes);
    }
    out
}

#[test]
fn the_async_rollout_fills_the_storage_exactly_as_the_sync_one() {
    let (n, steps) = (5, 200);
    let sync = rollouts(
        Box::new(ProcgenVecEnv::new("coinrun", n, opts(21)).unwrap()),
        steps,
    );
    let asynchronous = rollouts(
        Box::new(SplitVecEnv::procgen("coinrun", n, opts(21)).unwrap()),
        steps,
    );
    let mut ends = 0;
    let mut distinct_actions = std::collections::BTreeSet::new();
    for (r, (a, b)) in sync.storages.iter().zip(&asynchronous.storages).enumerate() {
        assert!(a.obs.equal(&b.obs), "rollout {r}: observations");
        assert_eq!(a.firsts, b.firsts, "rollout {r}: first flags");
        assert!(a.actions.equal(&b.actions), "rollout {r}: actions");
        assert!(
            a.logprobs.equal(&b.logprobs),
            "rollout {r}: log-probabilities"
        );
        assert!(a.values.equal(&b.values), "rollout {r}: values");
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.rewards), bits(&b.rewards), "rollout {r}: rewards");
        assert!(
            a.next_obs.equal(&b.next_obs),
            "rollout {r}: next observation"
        );
        assert_eq!(a.next_first, b.next_first, "rollout {r}: next first flags");
        assert_eq!(
            sync.episodes[r], asynchronous.episodes[r],
            "rollout {r}: finished episodes"
        );
        ends += sync.episodes[r].len();
        distinct_actions.extend(Vec::<i64>::try_from(a.actions.flatten(0, -1)).unwrap());
        // GAE's inputs agree, so its outputs do: compare them too.
        let next_value = Tensor::zeros([n as i64], (Kind::Float, Device::Cpu));
        let (ba, bb) = (
            a.compute_batch(&next_value, 0.999, 0.95).unwrap(),
            b.compute_batch(&next_value, 0.999, 0.95).unwrap(),
        );
        assert!(
            ba.advantages.equal(&bb.advantages),
            "rollout {r}: advantages"
        );
        assert!(ba.returns.equal(&bb.returns), "rollout {r}: returns");
    }
    assert!(
        ends >= 3,
        "only {ends} episodes ended: the test needs resets"
    );
    assert!(
        distinct_actions.len() >= 5,
        "the policy hardly varies its actions"
    );
}

#[test]
fn async_envs_on_is_refused_where_it_cannot_work() {
    use rl_darts::agents::AsyncEnvs;
    assert!(AsyncEnvs::On.resolve(false, 8).is_err());
    assert!(AsyncEnvs::On.resolve(true, 1).is_err());
    assert!(AsyncEnvs::On.resolve(true, 2).unwrap());
    assert!(!AsyncEnvs::Off.resolve(true, 64).unwrap());
    assert!(!AsyncEnvs::Auto.resolve(false, 64).unwrap());
    assert!(SplitVecEnv::procgen("coinrun", 1, opts(1)).is_err());
}
