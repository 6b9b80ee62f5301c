//! Every search strategy through the RL loop (`train` with a supernet encoder): for each name
//! in `STRATEGY_NAMES`, two PPO iterations on a small CoinRun (image supernet) and on CartPole
//! (MLP supernet). The alphas moved by the route the strategy promises (alpha steps on the
//! search rollout for bilevel strategies, steps on the PPO backward for single-level ones,
//! candidates scored for random search), the weights are finite, and the derived genotype
//! builds the fixed encoder, which runs forward. Plus: in joint first-order mode the PPO
//! optimizer never touches alphas and the alpha optimizer never touches weights; a search
//! resumed from a checkpoint logs exactly what an uninterrupted one logs.

mod common;

use std::path::{Path, PathBuf};

use common::rl::{tiny_cartpole_search, tiny_coinrun_search, tiny_mlp_supernet, train_in};

use rl_darts::agents::{preprocess_obs, Adam, AdamConfig, IterationArch, WeightStep};
use rl_darts::envs::gym::{GymEnvKind, GymVecEnv};
use rl_darts::envs::{make_vec_env, VecEnv};
use rl_darts::logging::MemorySink;
use rl_darts::search::{StrategyConfig, STRATEGY_NAMES};
use rl_darts::train::rl::{
    build_fixed_encoder, build_policy, stores_are_disjoint, EncoderConfig, MlpDartsFixedConfig,
    MlpDartsSearchConfig, Policy, RlDartsFixedConfig, SearchBatch, TrainConfig,
};
use rl_darts::train::run_dir::RunDir;
use tch::{nn, Device, Kind, Tensor};

/// Single-level strategies step the alphas inside the PPO update; the others after it, on the
/// search rollout.
const SINGLE_LEVEL: &[&str] = &["joint", "snas"];

fn small_coinrun(strategy: &str) -> TrainConfig {
    let mut c = tiny_coinrun_search(common::rl::strategy(strategy));
    c.checkpoint.every = 1;
    // Visible alpha moves within two iterations for the strategies with DARTS's Adam (3e-4).
    c.search.alpha_init.std = 1.0;
    c
}

fn small_cartpole(strategy: &str) -> TrainConfig {
    let mut c = tiny_cartpole_search(common::rl::strategy(strategy));
    c.checkpoint.every = 1;
    c.search.alpha_init.std = 1.0;
    c
}

fn read_safetensors(path: &Path) -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The alphas a run starts from: the loop seeds libtorch with `seed` and builds the policy
/// (the supernet, then the alphas), so a fresh `build_policy` after the same seed reproduces
/// them.
fn initial_alphas(config: &TrainConfig, env: &dyn VecEnv) -> Vec<Tensor> {
    tch::manual_seed(config.seed as i64);
    let (_, policy) = build_policy(config, env.spec(), Device::Cpu).unwrap();
    let Policy::Searched(_, search) = policy else {
        panic!("not a supernet encoder")
    };
    search.alphas()
}

fn last_scalar(sink: &MemorySink, tag: &str) -> Option<f64> {
    sink.snapshot()
        .scalars
        .iter()
        .filter(|p| p.tag == tag)
        .map(|p| p.value)
        .next_back()
}

fn sum_scalar(sink: &MemorySink, tag: &str) -> f64 {
    sink.snapshot()
        .scalars
        .iter()
        .filter(|p| p.tag == tag)
        .map(|p| p.value)
        .sum()
}

/// Two PPO iterations of `config`, then every check of the module doc; `fixed` is the
/// derived encoder's config for the written genotype.
fn conformance(config: &TrainConfig, fixed: impl Fn(PathBuf) -> EncoderConfig) {
    let name = config.search.strategy.name();
    let env = make_vec_env(
        &config.env,
        config.ppo.num_envs,
        config.seed,
        &config.procgen,
    )
    .unwrap();
    let before = initial_alphas(config, env.as_ref());

    let base = tempfile::tempdir().unwrap();
    let dir = RunDir::create_at(base.path()).unwrap();
    let sink = MemorySink::new();
    let summary = train_in(config, &dir, false, &mut sink.clone(), None);
    assert_eq!(summary.iterations, 2, "{name}");
    let ckpt = dir.latest_checkpoint().unwrap().unwrap();

    // The route the strategy promises.
    if SINGLE_LEVEL.contains(&name) {
        // One alpha step per PPO minibatch: 12 per iteration.
        assert_eq!(
            sum_scalar(&sink, "search/single_level_arch_steps"),
            24.0,
            "{name}"
        );
        assert_eq!(
            sum_scalar(&sink, "search/bilevel_arch_steps"),
            0.0,
            "{name}"
        );
    } else {
        assert!(
            sum_scalar(&sink, "search/bilevel_arch_steps") >= 1.0,
            "{name}: no alpha step"
        );
        assert!(
            !sink
                .snapshot()
                .scalars
                .iter()
                .any(|p| p.tag == "search/episodic_return")
                || last_scalar(&sink, "search/episodic_return")
                    .unwrap()
                    .is_finite()
        );
        let loss = last_scalar(&sink, "search/bilevel_arch_loss").unwrap();
        assert!(loss.is_finite(), "{name}: search loss {loss}");
    }
    if name == "random" {
        // Random search's contract: it scores candidates on the search rollout and writes the
        // incumbent into the alphas as a one-hot pattern.
        assert!(last_scalar(&sink, "strategy/candidates_scored").unwrap() >= 1.0);
        let best = last_scalar(&sink, "strategy/best_search_loss").unwrap();
        assert!(best.is_finite());
    }
    let after: Vec<Tensor> = read_safetensors(&ckpt.join("alphas.safetensors"))
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(after.len(), before.len(), "{name}");
    let moved = after
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b).abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    assert!(moved > 0.0, "{name}: the alphas did not move");
    assert!(after
        .iter()
        .all(|a| a.isfinite().all().int64_value(&[]) == 1));

    // Weights finite.
    for (n, w) in read_safetensors(&ckpt.join("weights.safetensors")) {
        assert_eq!(
            w.isfinite().all().int64_value(&[]),
            1,
            "{name}: weight {n} is not finite"
        );
    }

    // The genotype derives, builds the fixed encoder, which runs forward.
    let genotype = dir.root.join("genotype.json");
    assert!(genotype.exists(), "{name}: no genotype.json");
    let vs = nn::VarStore::new(Device::Cpu);
    let encoder = build_fixed_encoder(vs.root() / "encoder", env.spec(), &fixed(genotype))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let obs = preprocess_obs(env.observe().obs);
    let features = encoder.features(&obs, &());
    assert_eq!(features.size()[0], config.ppo.num_envs as i64);
    assert_eq!(features.size()[1], encoder.feature_dim());
    assert_eq!(features.isfinite().all().int64_value(&[]), 1, "{name}");
}

#[test]
fn every_strategy_searches_a_procgen_supernet() {
    tch::set_num_threads(1);
    for name in STRATEGY_NAMES {
        let config = small_coinrun(name);
        let EncoderConfig::RlDarts(c) = &config.encoder else {
            unreachable!()
        };
        let supernet = c.supernet.clone();
        conformance(&config, |genotype| {
            EncoderConfig::RlDartsFixed(RlDartsFixedConfig {
                genotype,
                supernet: supernet.clone(),
            })
        });
    }
}

#[test]
fn every_strategy_searches_a_cartpole_mlp_supernet() {
    tch::set_num_threads(1);
    for name in STRATEGY_NAMES {
        conformance(&small_cartpole(name), |genotype| {
            EncoderConfig::MlpDartsFixed(MlpDartsFixedConfig {
                genotype,
                supernet: tiny_mlp_supernet(),
            })
        });
    }
}

/// RL-DARTS's default: the PPO backward reaches both stores; the weights' Adam moves the
/// weights only, the strategy's Adam (through the weight-step hook) the alphas only.
#[test]
fn joint_first_order_keeps_the_two_optimizers_to_their_own_stores() {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let config = small_cartpole("joint");
    let env = GymVecEnv::new(GymEnvKind::CartPole, 4, 0).unwrap();
    let (vs, policy) = build_policy(&config, env.spec(), Device::Cpu).unwrap();
    let Policy::Searched(policy, mut search) = policy else {
        panic!("mlp_darts is a supernet")
    };
    let mut optimizer = Adam::new(&vs, AdamConfig::default());
    let alphas = rl_darts::search::alphas(search.arch());
    assert!(stores_are_disjoint(&vs, &alphas));
    let weights = optimizer.parameters();
    assert!(weights
        .iter()
        .all(|w| alphas.iter().all(|a| w.data_ptr() != a.data_ptr())));

    // The update's forward, its backward fills both stores' gradients.
    let obs = Tensor::randn([8, 4], (Kind::Float, Device::Cpu));
    let actions = Tensor::from_slice(&[0i64, 1, 0, 1, 1, 0, 0, 1]);
    let sample = search.draw().unwrap();
    let mut arch = search.iteration_arch(&sample);
    arch.begin_minibatch().unwrap();
    let ev = policy.evaluate(&obs, &actions, &arch.learning().unwrap());
    optimizer.zero_grad();
    let loss = ev.logprob.sum(Kind::Float) + ev.value.square().sum(Kind::Float);
    loss.backward();
    assert!(alphas
        .iter()
        .all(|a| a.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0));
    let copy = |ts: &[Tensor]| -> Vec<Tensor> { ts.iter().map(Tensor::copy).collect() };
    let same = |a: &[Tensor], b: &[Tensor]| a.iter().zip(b).all(|(x, y)| x.equal(y));

    let (alphas0, weights0) = (copy(&alphas), copy(&weights));
    optimizer.step();
    assert!(same(&alphas, &alphas0), "the PPO optimizer moved an alpha");
    assert!(
        !same(&weights, &weights0),
        "the PPO optimizer did not move the weights"
    );

    let weights1 = copy(&weights);
    arch.after_weight_step(&WeightStep {
        loss: loss.double_value(&[]),
        grad_norm: 1.0,
        lr: 1e-3,
    })
    .unwrap();
    assert!(
        same(&weights, &weights1),
        "the alpha optimizer moved a weight"
    );
    assert!(
        !same(&alphas, &alphas0),
        "the alpha optimizer did not move the alphas"
    );
}

/// Everything logged except wall-clock measurements.
fn deterministic_log(sink: &MemorySink) -> Vec<(String, i64, u64)> {
    let mut out: Vec<(String, i64, u64)> = sink
        .snapshot()
        .scalars
        .iter()
        .filter(|p| !p.tag.starts_with("perf/") && p.tag != "charts/SPS")
        .map(|p| (p.tag.clone(), p.step, p.value.to_bits()))
        .collect();
    out.sort();
    out
}

/// A search resumed after two of four iterations logs bit for bit what the uninterrupted
/// search logs: DARTS (search envs, their normaliser and generator, the alpha optimizer, the
/// weight-step counter) and the joint default (alpha steps inside the PPO update).
///
/// Not GDAS or random search: their sampled forwards leave the unsampled ops' weights without
/// a gradient, which the PPO Adam (agents::Adam, zero_grad keeps zeroed gradients) still steps
/// by momentum in an uninterrupted run but skips in a fresh process (undefined gradients).
#[test]
fn a_resumed_search_reproduces_the_uninterrupted_search() {
    tch::set_num_threads(1);
    for name in ["darts", "joint"] {
        resume_matches(name);
    }
}

fn resume_matches(name: &str) {
    let mut config = small_cartpole(name);
    config.ppo.total_timesteps = 4 * 64;
    let base = tempfile::tempdir().unwrap();

    let straight = RunDir::create_at(&base.path().join("straight")).unwrap();
    let full = MemorySink::new();
    train_in(&config, &straight, false, &mut full.clone(), None);

    let split = RunDir::create_at(&base.path().join("split")).unwrap();
    let first = MemorySink::new();
    assert_eq!(
        train_in(&config, &split, false, &mut first.clone(), Some(2)).iterations,
        2
    );
    let second = MemorySink::new();
    assert_eq!(
        train_in(&config, &split, true, &mut second.clone(), None).iterations,
        4
    );
    let mut joined = deterministic_log(&first);
    joined.extend(deterministic_log(&second));
    joined.sort();
    let straight_log = deterministic_log(&full);
    let kind = if name == "joint" {
        "single_level"
    } else {
        "bilevel"
    };
    let tag = format!("search/{kind}_arch_loss");
    assert!(straight_log.iter().any(|(t, _, _)| *t == tag), "{name}");
    assert_eq!(
        joined, straight_log,
        "{name}: resumed logs differ from the uninterrupted run"
    );
}

/// Bad search settings are clear errors before any training.
#[test]
fn impossible_search_batches_are_clear_errors() {
    let mut config = small_cartpole("darts");
    config.search.search_batch = SearchBatch::HeldoutLevels;
    let base = tempfile::tempdir().unwrap();
    let dir = RunDir::create_at(base.path()).unwrap();
    let err = common::rl::try_train_in(&config, &dir, false, &mut MemorySink::new(), None, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("heldout_levels") && err.contains("Procgen"),
        "{err}"
    );

    let unknown = rl_darts::config::load_config(
        None,
        TrainConfig::classic_control("cartpole"),
        &["search.strategy.kind=\"dartz\"".to_string()],
    )
    .unwrap_err()
    .to_string();
    assert!(
        STRATEGY_NAMES.iter().all(|n| unknown.contains(n)),
        "{unknown}"
    );
}

/// `search_batch = "heldout_levels"`: the search envs play the levels after the training
/// levels, and the bilevel alpha steps run on them.
#[test]
fn heldout_levels_feed_the_alpha_steps() {
    tch::set_num_threads(1);
    let mut config = small_coinrun("darts");
    config.search.search_batch = SearchBatch::HeldoutLevels;
    config.search.heldout_num_levels = 10;
    config.ppo.total_timesteps = 64;
    let base = tempfile::tempdir().unwrap();
    let dir = RunDir::create_at(base.path()).unwrap();
    let sink = MemorySink::new();
    train_in(&config, &dir, false, &mut sink.clone(), None);
    assert_eq!(sum_scalar(&sink, "search/bilevel_arch_steps"), 12.0);
}

/// `rl-darts train --strategy NAME` picks the strategy (and an unknown name lists the valid
/// ones).
#[test]
fn cli_strategy_flag_selects_the_strategy() {
    let base = tempfile::tempdir().unwrap();
    let out = common::rl_darts()
        .args([
            "train",
            "--env",
            "cartpole",
            "--encoder",
            "mlp_darts",
            "--strategy",
            "dartz",
        ])
        .arg("--run-dir")
        .arg(base.path().join("bad"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(STRATEGY_NAMES.iter().all(|n| err.contains(n)), "{err}");

    let run_dir = base.path().join("ok");
    let out = common::rl_darts()
        .args([
            "train",
            "--env",
            "cartpole",
            "--encoder",
            "mlp_darts",
            "--strategy",
            "gdas",
        ])
        .args([
            "--device",
            "cpu",
            "--quiet",
            "--total-steps",
            "512",
            "--set",
        ])
        .arg("encoder.params.supernet.hidden=8")
        .arg("--run-dir")
        .arg(&run_dir)
        .output()
        .unwrap();
    common::assert_success(&out);
    let config = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    assert!(config.contains("kind = \"gdas\""), "{config}");
    assert!(run_dir.join("genotype.json").exists());
}

/// The configs/coinrun-<strategy>.toml presets load onto the defaults, name the strategy their
/// file names, and that strategy builds over the RL-DARTS supernet's alphas.
#[test]
fn coinrun_strategy_presets_load_and_build() {
    let presets = [
        ("coinrun-darts-joint.toml", "joint"),
        ("coinrun-darts-second.toml", "darts"),
        ("coinrun-idarts.toml", "idarts"),
        ("coinrun-gdas.toml", "gdas"),
        ("coinrun-snas.toml", "snas"),
        ("coinrun-unas.toml", "unas"),
        ("coinrun-darts-prime.toml", "darts_prime"),
    ];
    for (file, kind) in presets {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("configs")
            .join(file);
        let config =
            rl_darts::config::load_config(Some(&path), TrainConfig::procgen("coinrun"), &[])
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(config.search.strategy.name(), kind, "{file}");
        let EncoderConfig::RlDarts(c) = &config.encoder else {
            panic!("{file}: not an rl_darts search")
        };
        let arch = rl_darts::nas::ArchParams::new(
            Device::Cpu,
            c.supernet.space(),
            c.supernet.has_reduction_cells(),
            config.search.alpha_init,
        )
        .unwrap();
        config.search.strategy.build(&arch, 0).unwrap();
    }
    let second = rl_darts::config::load_config(
        Some(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/coinrun-darts-second.toml")),
        TrainConfig::procgen("coinrun"),
        &[],
    )
    .unwrap();
    assert!(matches!(
        second.search.strategy,
        StrategyConfig::Darts(rl_darts::search::DartsParams {
            order: rl_darts::search::DartsOrder::Second,
            ..
        })
    ));
}

/// The end-to-end check on CartPole: a joint search with the MLP supernet moves the
/// alphas and derives a genotype, and PPO then trains the derived network from scratch, which
/// learns; the same cell with every op replaced by `none` (features that ignore the state) does
/// not, so the test measures the searched cell and not only the trainer.
#[test]
fn cartpole_search_then_the_derived_network_learns_and_a_cell_of_nones_does_not() {
    tch::set_num_threads(1);
    let mut search = TrainConfig::classic_control("cartpole");
    search.device = "cpu".into();
    search.encoder = EncoderConfig::MlpDarts(MlpDartsSearchConfig {
        supernet: tiny_mlp_supernet(),
    });
    search.ppo.total_timesteps = 4 * 512;
    let base = tempfile::tempdir().unwrap();
    let dir = RunDir::create_at(&base.path().join("search")).unwrap();
    train_in(&search, &dir, false, &mut MemorySink::new(), None);
    let searched = dir.root.join("genotype.json");
    let mut nones = rl_darts::nas::Genotype::load(&searched).unwrap();
    for gene in nones.normal.iter_mut().flatten() {
        gene.0 = rl_darts::nas::OpKind::None;
    }
    let nones_path = base.path().join("nones.json");
    nones.save_json(&nones_path).unwrap();

    let retrain = |genotype: PathBuf, name: &str| -> (f64, f64) {
        let mut config = search.clone();
        config.encoder = EncoderConfig::MlpDartsFixed(MlpDartsFixedConfig {
            genotype,
            supernet: tiny_mlp_supernet(),
        });
        config.ppo.total_timesteps = RETRAIN_STEPS;
        let dir = RunDir::create_at(&base.path().join(name)).unwrap();
        let sink = MemorySink::new();
        let summary = train_in(&config, &dir, false, &mut sink.clone(), None);
        let returns = sink.scalars("charts/episodic_return");
        let first: f64 = returns.iter().take(20).map(|(_, r)| r).sum::<f64>() / 20.0;
        (first, summary.mean_return.unwrap())
    };
    let (first, last) = retrain(searched, "retrain");
    let (nones_first, nones_last) = retrain(nones_path, "nones");
    println!(
        "CartPole, last 100 episodes: derived cell {last:.1} (first 20: {first:.1}), \
         cell of nones {nones_last:.1} (first 20: {nones_first:.1})"
    );
    assert!(
        last > 3.0 * first && last > 100.0,
        "first {first}, last {last}"
    );
    assert!(
        last > 2.0 * nones_last,
        "the derived cell ({last}) is not clearly ahead of a cell of nones ({nones_last})"
    );
}

/// Env steps of the retraining in the CartPole end-to-end test.
const RETRAIN_STEPS: u64 = 40 * 512;
