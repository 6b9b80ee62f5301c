//! UNAS's measured-latency penalty (ISSUE 7): the per-op latency table predicts the measured
//! latency of whole random architectures (Pearson r printed and asserted), the linear model
//! fitted on measured latencies (held-out relative error printed), the per-device JSON cache,
//! the penalty lowering the expected latency in a few alpha steps, and the config table.
//!
//! Timing tests run on CPU with libtorch's thread count as the test environment sets it
//! (OMP_NUM_THREADS=1 in .cargo/config.toml); their thresholds are loose because the machine
//! may be shared.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rl_darts::nas::latency::{
    cache_path, latency_key, load_or_measure, measure_network_latency, measure_table,
    one_hot_weights, pearson, TableSource,
};
use rl_darts::nas::{
    AlphaInit, ArchParams, DartsSearchConfig, DartsSearchNet, LatencyOptions, LatencyTable,
    LinearLatencyModel, Supernet,
};
use rl_darts::search::{
    softmax_weights, ArchAdamConfig, LatencySource, SearchStrategy, Sgd, SgdConfig, StrategyConfig,
    UnasLatencyParams, UnasParams,
};
use rl_darts::train::supervised::VisionObjective;
use tch::{nn, Device, Kind, Tensor};

/// A 3-cell DARTS net (cells 1 and 2 reduce), 2 nodes per cell: 5 edges of 8 ops per cell
/// type, ops from `none` (free) to `sep_conv_5x5` (several convolutions).
/// Tests here time ops and networks; run them one at a time so that they do not share the
/// cores with each other while timing (cargo runs a binary's tests on parallel threads).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn tiny_net(c: i64, in_channels: i64) -> (nn::VarStore, DartsSearchNet) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = DartsSearchNet::new(
        vs.root() / "net",
        &DartsSearchConfig {
            c,
            layers: 3,
            num_nodes: 2,
            in_channels,
            stem_multiplier: 1,
            ..Default::default()
        },
    )
    .unwrap();
    (vs, net)
}

fn options(batch: i64, cache_dir: Option<std::path::PathBuf>) -> LatencyOptions {
    LatencyOptions {
        batch,
        warmup: 2,
        repeats: 7,
        cache_dir,
    }
}

/// An architecture whose edges pick a conv op (DARTS columns 4..8) with probability
/// `p_conv`, else one of none / pools / skip (0..4).
fn random_arch(rng: &mut ChaCha8Rng, edges: usize, p_conv: f64) -> Vec<usize> {
    (0..edges)
        .map(|_| {
            if rng.gen::<f64>() < p_conv {
                rng.gen_range(4..8)
            } else {
                rng.gen_range(0..4)
            }
        })
        .collect()
}

#[test]
fn latency_table_predicts_measured_latency_of_random_architectures() {
    let _serial = serial();
    let (_vs, net) = tiny_net(8, 3);
    let chw = [3, 16, 16];
    let batch = 8;
    // 21 repeats (the default options use 7): the table and the network timings are medians,
    // and on a shared 2-core machine fewer repeats left the correlation at the mercy of noise.
    let repeats = 21;
    let table = measure_table(
        &net,
        chw,
        Device::Cpu,
        &LatencyOptions {
            repeats,
            ..options(batch, None)
        },
    )
    .unwrap();
    let space = net.space();
    let (edges, ops) = (space.num_edges(), space.num_ops());

    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let x = Tensor::randn([batch, 3, 16, 16], (Kind::Float, Device::Cpu));
    let n = 32;
    let (mut predicted, mut measured, mut features) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        // Sweep from all-cheap to all-conv so the sample spans the latency range.
        let p_conv = (i % 16) as f64 / 15.0;
        let normal = random_arch(&mut rng, edges, p_conv);
        let reduce = random_arch(&mut rng, edges, p_conv);
        let w = one_hot_weights(ops, &normal, Some(&reduce), Device::Cpu).unwrap();
        measured.push(measure_network_latency(&net, &w, &x, 2, repeats));
        predicted.push(table.hard(&normal, Some(&reduce)));
        features.push(LinearLatencyModel::features(ops, &normal, Some(&reduce)));
    }
    let r = pearson(&predicted, &measured);

    // Linear model on measured latencies: fit on the first 24, error on the last 8.
    let split = 24;
    let model = LinearLatencyModel::fit(&features[..split], &measured[..split], 0.1).unwrap();
    let rel = |pred: &dyn Fn(usize) -> f64| {
        (split..n)
            .map(|i| (pred(i) - measured[i]).abs() / measured[i])
            .sum::<f64>()
            / (n - split) as f64
    };
    let model_err = rel(&|i| model.predict(&features[i]));
    // The table leaves out what every architecture shares (stem, preprocessing, node sums,
    // classifier): a constant offset, estimated on the fitting split.
    let offset = (0..split).map(|i| measured[i] - predicted[i]).sum::<f64>() / split as f64;
    let table_err = rel(&|i| predicted[i] + offset);
    let (lo, hi) = measured
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &m| (a.min(m), b.max(m)));
    println!(
        "latency: {n} random architectures, measured {lo:.3}..{hi:.3} ms; table vs measured \
         Pearson r = {r:.3}; held-out mean relative error: table + offset {table_err:.3}, \
         linear model {model_err:.3}"
    );
    assert!(r > 0.5, "table vs measured latency: Pearson r = {r}");
    assert!(
        model_err < 0.5,
        "linear model held-out relative error {model_err}"
    );
}

#[test]
fn latency_cache_round_trips_and_a_key_mismatch_remeasures() {
    let _serial = serial();
    let (_vs, net) = tiny_net(4, 1);
    let chw = [1, 8, 8];
    let dir = tempfile::tempdir().unwrap();
    let opts = options(2, Some(dir.path().to_path_buf()));
    let (first, src) = load_or_measure(&net, chw, Device::Cpu, &opts).unwrap();
    assert_eq!(src, TableSource::Measured);
    let (second, src) = load_or_measure(&net, chw, Device::Cpu, &opts).unwrap();
    assert_eq!(src, TableSource::Cache);
    assert_eq!(first, second, "the cache returns the table bit for bit");
    assert_eq!(first.normal.len(), net.space().num_edges());
    assert!(first.reduce.is_some());

    // Another batch size is another key, hence another file.
    let (_, src) =
        load_or_measure(&net, chw, Device::Cpu, &options(3, opts.cache_dir.clone())).unwrap();
    assert_eq!(src, TableSource::Measured);

    // A file at the right path whose key differs (another device wrote it) is re-measured.
    let key = latency_key(&net, chw, Device::Cpu, &opts).unwrap();
    let path = cache_path(dir.path(), &key).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    json["key"]["device"] = serde_json::Value::from("Cuda(7)");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let (_, src) = load_or_measure(&net, chw, Device::Cpu, &opts).unwrap();
    assert_eq!(src, TableSource::Measured);
    let (_, src) = load_or_measure(&net, chw, Device::Cpu, &opts).unwrap();
    assert_eq!(
        src,
        TableSource::Cache,
        "the re-measured table was written back"
    );
}

fn sgd_config() -> SgdConfig {
    SgdConfig {
        lr: 0.025,
        momentum: 0.9,
        weight_decay: 3e-4,
    }
}

/// A synthetic table: conv ops (columns 4..8) cost 1 ms per edge, the rest nothing.
fn conv_table(edges: usize, ops: usize) -> LatencyTable {
    let row: Vec<f64> = (0..ops).map(|o| if o >= 4 { 1.0 } else { 0.0 }).collect();
    LatencyTable {
        normal: vec![row.clone(); edges],
        reduce: Some(vec![row; edges]),
    }
}

fn expected_latency(table: &LatencyTable, arch: &ArchParams) -> f64 {
    let p = tch::no_grad(|| softmax_weights(arch, 1.0));
    table.expected(&p).unwrap().double_value(&[])
}

/// `steps` UNAS alpha steps on the tiny net; returns the expected table latency under
/// `softmax(alpha)` before and after, and the strategy.
fn run_unas(latency: UnasLatencyParams, steps: usize) -> (f64, f64, Box<dyn SearchStrategy>) {
    let (vs, net) = tiny_net(4, 1);
    let arch = ArchParams::new(Device::Cpu, net.space(), true, AlphaInit::default()).unwrap();
    let table = conv_table(net.space().num_edges(), net.space().num_ops());
    let config = StrategyConfig::Unas(UnasParams {
        latency,
        optimizer: ArchAdamConfig {
            lr: 0.05,
            ..UnasParams::default().optimizer
        },
        ..Default::default()
    });
    let mut s = config.build(&arch, 3).unwrap();
    if s.latency_request().is_some() {
        s.set_latency_table(table.clone()).unwrap();
    }
    let sgd = Sgd::new(vs.variables(), sgd_config());
    tch::manual_seed(1);
    let batch = || {
        (
            Tensor::randn([4, 1, 8, 8], (Kind::Float, Device::Cpu)),
            Tensor::randint(10, [4], (Kind::Int64, Device::Cpu)),
        )
    };
    let mut objective = VisionObjective {
        net: &net,
        vs: &vs,
        sgd: &sgd,
        train: batch(),
        search: batch(),
    };
    let before = expected_latency(&table, &arch);
    for _ in 0..steps {
        s.arch_step(&arch, &mut objective).unwrap();
    }
    (before, expected_latency(&table, &arch), s)
}

#[test]
fn latency_penalty_lowers_the_expected_latency() {
    let _serial = serial();
    let on = UnasLatencyParams {
        source: LatencySource::Table,
        target_ms: 0.0,
        weight: 5.0,
        ramp_steps: 0,
        ..Default::default()
    };
    let steps = 25;
    let (before, with_penalty, s) = run_unas(on.clone(), steps);
    let (_, without, _) = run_unas(UnasLatencyParams::default(), steps);
    println!(
        "expected latency (conv edges): start {before:.3}, after {steps} steps without \
         penalty {without:.3}, with penalty {with_penalty:.3}"
    );
    assert!(
        with_penalty < before - 0.5,
        "{with_penalty} vs start {before}"
    );
    assert!(with_penalty < without - 0.5, "{with_penalty} vs {without}");

    let scalars = s.scalars();
    let get = |name: &str| scalars.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    assert_eq!(get("latency_target_ms"), Some(0.0));
    assert_eq!(get("latency_coef"), Some(5.0));
    assert!(get("latency_hard_ms").is_some());
    assert!((get("latency_expected_ms").unwrap() - with_penalty).abs() < 0.5);
}

#[test]
fn latency_coefficient_ramps_and_survives_a_checkpoint() {
    let _serial = serial();
    let on = UnasLatencyParams {
        source: LatencySource::Table,
        target_ms: 1.0,
        weight: 0.2,
        ramp_steps: 8,
        ..Default::default()
    };
    assert_eq!(on.coefficient(0), 0.0);
    assert!((on.coefficient(4) - 0.1).abs() < 1e-12);
    assert_eq!(on.coefficient(100), 0.2);
    let (_, _, s) = run_unas(on.clone(), 2);
    let coef = |s: &dyn SearchStrategy| {
        s.scalars()
            .into_iter()
            .find(|(n, _)| *n == "latency_coef")
            .map(|(_, v)| v)
    };
    assert!((coef(s.as_ref()).unwrap() - 0.05).abs() < 1e-12);
    let dir = tempfile::tempdir().unwrap();
    s.save(dir.path()).unwrap();
    let (_, net) = tiny_net(4, 1);
    let arch = ArchParams::new(Device::Cpu, net.space(), true, AlphaInit::default()).unwrap();
    let config = StrategyConfig::Unas(UnasParams {
        latency: on,
        ..Default::default()
    });
    let mut fresh = config.build(&arch, 9).unwrap();
    fresh.load(dir.path()).unwrap();
    assert_eq!(coef(fresh.as_ref()), coef(s.as_ref()));

    // Asked for a table but never given one: an error, not a silent search without penalty.
    let (vs, net) = tiny_net(4, 1);
    let sgd = Sgd::new(vs.variables(), sgd_config());
    let batch = || {
        (
            Tensor::randn([2, 1, 8, 8], (Kind::Float, Device::Cpu)),
            Tensor::randint(10, [2], (Kind::Int64, Device::Cpu)),
        )
    };
    let mut objective = VisionObjective {
        net: &net,
        vs: &vs,
        sgd: &sgd,
        train: batch(),
        search: batch(),
    };
    let err = fresh.arch_step(&arch, &mut objective).unwrap_err();
    assert!(err.to_string().contains("latency table"), "{err}");
}

#[test]
fn latency_config_table_parses_and_rejects_unknown_keys() {
    let _serial = serial();
    #[derive(serde::Deserialize)]
    struct Search {
        strategy: StrategyConfig,
    }
    let text = r#"
        [strategy]
        kind = "unas"
        [strategy.params.latency]
        source = "table"
        target_ms = 12.5
        weight = 0.1
        ramp_steps = 100
        batch = 32
        cache_dir = "runs/latency-cache"
    "#;
    let parsed: Search = toml::from_str(text).unwrap();
    match parsed.strategy {
        StrategyConfig::Unas(p) => {
            assert_eq!(p.latency.source, LatencySource::Table);
            assert_eq!(p.latency.target_ms, 12.5);
            assert_eq!(p.latency.ramp_steps, 100);
            assert_eq!(p.latency.batch, 32);
            assert_eq!(p.latency.repeats, UnasLatencyParams::default().repeats);
            assert_eq!(
                p.latency.cache_dir.as_deref(),
                Some(std::path::Path::new("runs/latency-cache"))
            );
        }
        other => panic!("{other:?}"),
    }
    // The default is off, so existing presets are unchanged.
    assert_eq!(UnasParams::default().latency.source, LatencySource::Off);
    let typo = text.replace("target_ms", "target_msec");
    let err = toml::from_str::<Search>(&typo).err().unwrap().to_string();
    assert!(err.contains("target_msec"), "{err}");
    let bad_source = text.replace("\"table\"", "\"model\"");
    assert!(toml::from_str::<Search>(&bad_source).is_err());
}

/// The supervised loop measures the table on request, caches it, and logs the latency
/// scalars (TensorBoard's `strategy/latency_*`).
#[test]
fn digits_unas_search_with_latency_logs_latency_and_target() {
    let _serial = serial();
    use rl_darts::logging::MemorySink;
    use rl_darts::train::rl::NoProgress;
    use rl_darts::train::run_dir::RunDir;
    use rl_darts::train::supervised::{search, SearchRun, SupervisedConfig};
    use std::sync::atomic::AtomicBool;

    let base = tempfile::tempdir().unwrap();
    let mut c = SupervisedConfig {
        device: "cpu".into(),
        ..Default::default()
    };
    c.data.path =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps/digits/digits.csv");
    c.network.c = 4;
    c.network.layers = 3;
    c.network.num_nodes = 2;
    c.network.stem_multiplier = 1;
    c.network.in_channels = 1;
    c.search.epochs = 1;
    c.search.batch_size = 64;
    c.search.strategy = StrategyConfig::Unas(UnasParams {
        latency: UnasLatencyParams {
            source: LatencySource::Table,
            target_ms: 0.0,
            ramp_steps: 4,
            repeats: 3,
            batch: 16,
            cache_dir: Some(base.path().join("cache")),
            ..Default::default()
        },
        ..Default::default()
    });
    let run_dir = RunDir::create_at(&base.path().join("run")).unwrap();
    let mut sink = MemorySink::new();
    let stop = AtomicBool::new(false);
    search(SearchRun {
        config: &c,
        run_dir: &run_dir,
        resume: false,
        sink: &mut sink,
        progress: &mut NoProgress,
        stop: &stop,
        max_epochs: None,
    })
    .unwrap();
    let cached = std::fs::read_dir(base.path().join("cache"))
        .unwrap()
        .count();
    assert_eq!(cached, 1, "one cached table");
    let expected = sink.scalars("strategy/latency_expected_ms");
    let hard = sink.scalars("strategy/latency_hard_ms");
    assert!(!expected.is_empty() && !hard.is_empty());
    assert_eq!(
        sink.scalars("strategy/latency_target_ms").len(),
        expected.len()
    );
    println!("digits search: latency scalars {expected:?} (expected), {hard:?} (hard)");
}

/// The RL loop measures the table for the RL-DARTS encoder on request (at the observation
/// shape, cached on disk) and logs the latency scalars: two tiny PPO iterations on CoinRun.
#[test]
fn coinrun_unas_search_with_latency_measures_the_encoder_and_logs_latency() {
    let _serial = serial();
    use rl_darts::logging::MemorySink;
    use rl_darts::nas::RlDartsConfig;
    use rl_darts::train::rl::{
        train, EncoderConfig, NoProgress, RlDartsSearchConfig, TrainConfig, TrainRun,
    };
    use rl_darts::train::run_dir::RunDir;
    use std::sync::atomic::AtomicBool;

    tch::set_num_threads(1);
    let base = tempfile::tempdir().unwrap();
    let cache = base.path().join("cache");
    let mut c = TrainConfig::procgen("coinrun");
    c.device = "cpu".into();
    c.encoder = EncoderConfig::RlDarts(RlDartsSearchConfig {
        supernet: RlDartsConfig {
            channels: vec![4],
            normal_cells_per_stage: 1,
            num_nodes: 2,
            embedding: 16,
            ..RlDartsConfig::default()
        },
    });
    c.ppo.num_envs = 4;
    c.ppo.num_steps = 16;
    c.ppo.num_minibatches = 4;
    c.ppo.update_epochs = 3;
    c.ppo.total_timesteps = 2 * 64;
    c.procgen.num_threads = 1;
    c.search.search_envs = Some(2);
    c.search.strategy = StrategyConfig::Unas(UnasParams {
        latency: UnasLatencyParams {
            source: LatencySource::Table,
            target_ms: 0.0,
            ramp_steps: 2,
            warmup: 1,
            repeats: 2,
            batch: 2,
            cache_dir: Some(cache.clone()),
            ..Default::default()
        },
        ..Default::default()
    });
    let run_dir = RunDir::create_at(&base.path().join("run")).unwrap();
    let mut sink = MemorySink::new();
    let stop = AtomicBool::new(false);
    train(TrainRun {
        config: &c,
        run_dir: &run_dir,
        resume: false,
        sink: &mut sink,
        progress: &mut NoProgress,
        stop: &stop,
        max_iterations: None,
        env: None,
    })
    .unwrap();

    let files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        files.len(),
        1,
        "one cached table for the encoder: {files:?}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    // Timed at the requested batch, one entry per (cell, edge, op) of the encoder.
    assert_eq!(
        json["key"]["batch"],
        serde_json::json!(2),
        "{}",
        json["key"]
    );
    assert!(!json["key"]["ops"].as_array().unwrap().is_empty());

    let expected = sink.scalars("strategy/latency_expected_ms");
    let hard = sink.scalars("strategy/latency_hard_ms");
    let coef = sink.scalars("strategy/latency_coef");
    assert!(
        !expected.is_empty(),
        "no strategy/latency_expected_ms logged"
    );
    assert_eq!(hard.len(), expected.len());
    assert_eq!(
        sink.scalars("strategy/latency_target_ms").len(),
        expected.len()
    );
    assert!(expected
        .iter()
        .chain(&hard)
        .all(|(_, v)| v.is_finite() && *v > 0.0));
    assert!(coef.iter().all(|(_, v)| v.is_finite() && *v >= 0.0));
    println!(
        "coinrun search: latency {expected:?} ms (expected), {hard:?} ms (hard), coef {coef:?}"
    );
}
