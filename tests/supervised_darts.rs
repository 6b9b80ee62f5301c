//! The DARTS presets and retraining: every supervised preset parses (and the CIFAR-10 one says
//! what the paper says), a missing dataset is an error that says what to download and where,
//! `train-arch` resumed after an interruption computes exactly what an uninterrupted run does,
//! and the published DARTS_V2 cell, parsed from its official text form, trains with the
//! auxiliary head and drop-path on.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use rl_darts::config::{load_config, save_resolved_config};
use rl_darts::logging::MemorySink;
use rl_darts::nas::{DartsEvalConfig, DartsEvalNet, Genotype};
use rl_darts::search::{Sgd, SgdConfig, StrategyConfig};
use rl_darts::train::rl::NoProgress;
use rl_darts::train::run_dir::RunDir;
use rl_darts::train::supervised::{
    cross_entropy, train_arch_run, DatasetKind, SupervisedConfig, TrainArchRun, TrainArchSummary,
    GENOTYPE_JSON,
};
use tch::{nn, Device, Kind, Tensor};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `DARTS_V2` exactly as the official `genotypes.py` prints it.
const DARTS_V2_TEXT: &str = "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=range(2, 6))";

/// The presets `rl-darts search` / `train-arch` read (the others in configs/ are RL configs).
fn supervised_presets() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(repo().join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.ends_with(".toml")
                && ["digits-", "mnist-", "cifar10-"]
                    .iter()
                    .any(|prefix| name.starts_with(prefix))
        })
        .collect();
    found.sort();
    found
}

#[test]
fn every_supervised_preset_parses_and_builds_its_strategy() {
    let presets = supervised_presets();
    let names: Vec<String> = presets
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for required in [
        "digits-darts.toml",
        "mnist-darts.toml",
        "cifar10-darts.toml",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "{required} missing: {names:?}"
        );
    }
    for path in &presets {
        let config: SupervisedConfig = load_config(Some(path), SupervisedConfig::default(), &[])
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // The strategy's parameters are valid, not only well-typed.
        let probe = rl_darts::nas::ArchParams::new(
            Device::Cpu,
            rl_darts::nas::CellSpace {
                num_inputs: 2,
                num_nodes: config.network.num_nodes,
                op_set: config.network.op_set,
            },
            true,
            config.search.alpha_init,
        )
        .unwrap();
        config
            .search
            .strategy
            .build(&probe, config.seed)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// The CIFAR-10 preset holds the DARTS paper's numbers (REFERENCE.md section 4).
#[test]
fn cifar10_preset_is_the_darts_recipe() {
    let c: SupervisedConfig = load_config(
        Some(&repo().join("configs/cifar10-darts.toml")),
        SupervisedConfig::default(),
        &[],
    )
    .unwrap();
    assert_eq!(c.data.dataset, DatasetKind::Cifar10);
    assert_eq!(
        (c.network.c, c.network.layers, c.network.num_nodes),
        (16, 8, 4)
    );
    let s = &c.search;
    assert_eq!((s.epochs, s.batch_size, s.train_portion), (50, 64, 0.5));
    let w = &s.weights;
    assert_eq!(
        (w.lr, w.lr_min, w.momentum, w.weight_decay, w.grad_clip),
        (0.025, 0.001, 0.9, 3e-4, 5.0)
    );
    let StrategyConfig::Darts(p) = &s.strategy else {
        panic!("cifar10-darts.toml should use the darts strategy")
    };
    let o = &p.optimizer;
    assert_eq!(
        (o.lr, o.beta1, o.beta2, o.weight_decay),
        (3e-4, 0.5, 0.999, 1e-3)
    );
    let t = &c.train_arch;
    assert_eq!(
        (t.network.c, t.network.layers, t.epochs, t.batch_size),
        (36, 20, 600, 96)
    );
    assert!(t.network.auxiliary && t.auxiliary_weight == 0.4);
    assert_eq!((t.network.drop_path_prob, t.augment.cutout), (0.2, 16));
}

#[test]
fn a_missing_dataset_says_what_to_download_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let mut c: SupervisedConfig = load_config(
        Some(&repo().join("configs/cifar10-darts.toml")),
        SupervisedConfig::default(),
        &[],
    )
    .unwrap();
    c.data.path = dir.path().join("data/cifar-10-batches-bin");
    for err in [
        c.data.check_present().unwrap_err().to_string(),
        c.data.load().unwrap_err().to_string(),
    ] {
        for needle in [
            "data_batch_1.bin",
            "test_batch.bin",
            "cifar-10-binary.tar.gz",
            "https://www.cs.toronto.edu/~kriz/cifar.html",
            // Unpacking into the parent creates the folder data.path names.
            &format!(
                "tar -xzf cifar-10-binary.tar.gz -C {}",
                dir.path().join("data").display()
            ),
        ] {
            assert!(err.contains(needle), "`{needle}` not in: {err}");
        }
    }
    // Five of six files present: the missing one is named.
    let folder = dir.path().join("cifar");
    std::fs::create_dir_all(&folder).unwrap();
    for name in &rl_darts::data::CIFAR10_FILES[..5] {
        std::fs::write(folder.join(name), [0u8; 3073]).unwrap();
    }
    c.data.path = folder.clone();
    let err = c.data.check_present().unwrap_err().to_string();
    assert!(
        err.starts_with(&folder.join("test_batch.bin").display().to_string()),
        "{err}"
    );

    let mut m: SupervisedConfig = load_config(
        Some(&repo().join("configs/mnist-darts.toml")),
        SupervisedConfig::default(),
        &[],
    )
    .unwrap();
    m.data.path = dir.path().join("mnist");
    let err = m.data.check_present().unwrap_err().to_string();
    assert!(
        err.contains("train-images-idx3-ubyte") && err.contains(&m.data.path.display().to_string()),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// train-arch: exact resume

#[allow(clippy::field_reassign_with_default)] // reads as a list of overrides
fn tiny_retrain_config() -> SupervisedConfig {
    let mut c = SupervisedConfig::default();
    c.device = "cpu".into();
    c.seed = 7;
    c.data.path = repo().join(".deps/digits/digits.csv");
    let t = &mut c.train_arch;
    t.network.c = 4;
    t.network.layers = 3;
    t.network.in_channels = 1;
    t.network.image_size = 8;
    t.network.auxiliary = false; // 8x8 digits are too small for the head (tested below)
    t.network.drop_path_prob = 0.3; // on, so the resumed run must redraw the same masks
    t.epochs = 3;
    t.batch_size = 128;
    t.augment.crop_padding = 1;
    t.augment.flip = true;
    t.augment.cutout = 2;
    c.checkpoint.every = 1;
    c
}

fn retrain(
    config: &SupervisedConfig,
    genotype: &Genotype,
    dir: &Path,
    resume: bool,
    max_epochs: Option<usize>,
    sink: &mut MemorySink,
) -> TrainArchSummary {
    let run_dir = if resume {
        RunDir::open(dir).unwrap()
    } else {
        RunDir::create_at(dir).unwrap()
    };
    save_resolved_config(config, &run_dir.root).unwrap();
    train_arch_run(TrainArchRun {
        config,
        genotype,
        run_dir: &run_dir,
        resume,
        sink,
        progress: &mut NoProgress,
        stop: &AtomicBool::new(false),
        max_epochs,
    })
    .unwrap()
}

fn sorted_tensors(path: PathBuf) -> Vec<(String, Tensor)> {
    let mut named = Tensor::read_safetensors(path).unwrap();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

#[test]
fn train_arch_resumed_after_an_interruption_matches_an_uninterrupted_run() {
    let config = tiny_retrain_config();
    let genotype: Genotype = DARTS_V2_TEXT.parse().unwrap();
    let base = tempfile::tempdir().unwrap();

    let mut straight_sink = MemorySink::new();
    let a = base.path().join("a");
    let straight = retrain(&config, &genotype, &a, false, None, &mut straight_sink);
    assert_eq!((straight.epochs, straight.interrupted), (3, false));
    assert!(a.join("weights.safetensors").is_file());
    // The genotype is kept with the run, so `--resume` needs nothing else.
    assert_eq!(Genotype::load(a.join(GENOTYPE_JSON)).unwrap(), genotype);

    // Interrupted after one epoch: a checkpoint, no final weights.
    let mut sink = MemorySink::new();
    let b = base.path().join("b");
    let first = retrain(&config, &genotype, &b, false, Some(1), &mut sink);
    assert_eq!((first.epochs, first.interrupted), (1, true));
    assert!(!b.join("weights.safetensors").exists());
    let resumed = retrain(&config, &genotype, &b, true, None, &mut sink);
    assert_eq!((resumed.epochs, resumed.interrupted), (3, false));

    // Same per-epoch losses and accuracies, bit for bit ...
    for tag in [
        "train_arch/train_loss",
        "train_arch/train_accuracy",
        "train_arch/test_accuracy",
        "train_arch/lr",
    ] {
        let (x, y) = (straight_sink.scalars(tag), sink.scalars(tag));
        assert_eq!(x.len(), 3, "{tag}");
        assert_eq!(x, y, "{tag} differs after resume");
    }
    assert_eq!(straight.test_accuracy, resumed.test_accuracy);
    // ... and the same final weights and BatchNorm statistics.
    let (wa, wb) = (
        sorted_tensors(a.join("weights.safetensors")),
        sorted_tensors(b.join("weights.safetensors")),
    );
    assert_eq!(wa.len(), wb.len());
    for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs after resume");
    }
    // The run learned something (10 classes: chance is 0.1).
    assert!(
        straight.test_accuracy > 0.3,
        "test accuracy {}",
        straight.test_accuracy
    );

    // Drop-path matters here: without it the run ends elsewhere (so the comparison above did
    // exercise the reseeded masks).
    let mut no_drop = config.clone();
    no_drop.train_arch.network.drop_path_prob = 0.0;
    let c = base.path().join("c");
    retrain(&no_drop, &genotype, &c, false, None, &mut MemorySink::new());
    let wc = sorted_tensors(c.join("weights.safetensors"));
    assert!(wa.iter().zip(&wc).any(|((_, x), (_, y))| !x.equal(y)));
}

// ---------------------------------------------------------------------------------------------
// DARTS_V2 trains

#[test]
fn darts_v2_from_its_text_form_trains_with_auxiliary_head_and_drop_path() {
    tch::manual_seed(0);
    let genotype = Genotype::parse_any(DARTS_V2_TEXT).unwrap();
    let config = DartsEvalConfig {
        c: 8,
        layers: 5,
        num_classes: 10,
        auxiliary: true,
        drop_path_prob: 0.2,
        stem_multiplier: 3,
        in_channels: 3,
        image_size: 32,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let net = DartsEvalNet::new(vs.root() / "net", &config, &genotype).unwrap();
    assert_eq!(net.drop_path_prob(), 0.2);
    // A CIFAR-shaped batch: 8 images of 3x32x32, one label each.
    let x = Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5, 6, 7]);

    // Drop-path is live in training mode: two forwards of the same batch differ (BatchNorm
    // uses batch statistics either way, so only the sampled masks can tell them apart) ...
    let (l1, aux) = tch::no_grad(|| net.forward_t(&x, true));
    let (l2, _) = tch::no_grad(|| net.forward_t(&x, true));
    assert!(
        !l1.allclose(&l2, 1e-6, 1e-6, false),
        "drop-path had no effect"
    );
    assert_eq!(aux.expect("auxiliary logits in training").size(), [8, 10]);
    // ... and off in evaluation, which has no auxiliary output.
    let (e1, aux_eval) = tch::no_grad(|| net.forward_t(&x, false));
    let (e2, _) = tch::no_grad(|| net.forward_t(&x, false));
    assert!(e1.equal(&e2) && aux_eval.is_none());

    // SGD as in train.py (momentum 0.9, wd 3e-4), loss = main + 0.4 auxiliary.
    let mut sgd = Sgd::new(
        vs.variables(),
        SgdConfig {
            lr: 0.025,
            momentum: 0.9,
            weight_decay: 3e-4,
        },
    );
    // The training-mode loss averaged over 8 fixed sets of drop-path masks (the same seeds
    // before and after), so that the comparison is not drowned in mask noise: with 8 samples
    // one mask set alone can drop a sample's whole path.
    let probe = |net: &DartsEvalNet| {
        (0..8)
            .map(|seed| {
                tch::manual_seed(99 + seed);
                let (logits, aux) = tch::no_grad(|| net.forward_t(&x, true));
                (cross_entropy(&logits, &y) + cross_entropy(&aux.unwrap(), &y) * 0.4)
                    .double_value(&[])
            })
            .sum::<f64>()
            / 8.0
    };
    let before = probe(&net);
    let mut losses = Vec::new();
    for _ in 0..40 {
        sgd.zero_grad();
        let (logits, aux) = net.forward_t(&x, true);
        let loss = cross_entropy(&logits, &y) + cross_entropy(&aux.unwrap(), &y) * 0.4;
        loss.backward();
        sgd.step();
        losses.push(loss.double_value(&[]));
    }
    // The auxiliary head is trained too (it has gradients).
    let aux_grad: f64 = vs
        .variables()
        .iter()
        .filter(|(name, t)| name.contains("auxiliary") && t.requires_grad())
        .map(|(_, t)| t.grad().abs().sum(Kind::Double).double_value(&[]))
        .sum();
    assert!(aux_grad > 0.0);
    let after = probe(&net);
    assert!(
        losses.iter().all(|l| l.is_finite()) && after < 0.5 * before,
        "loss {before} -> {after}; training losses {losses:?}"
    );
}

/// A search batch that does not fit `memory.cap_gib` stops before the first step with the
/// numbers (the search cannot split its batches), and leaves no checkpoint.
#[test]
fn a_search_batch_over_the_memory_cap_stops_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rl-darts"))
        .args(["search", "--config", "configs/digits-darts.toml", "--quiet"])
        .args(["--set", "memory.cap_gib=0.01", "--set", "device=\"cpu\""])
        // One epoch, so that a run the check failed to stop ends quickly (and the test fails).
        .args(["--set", "search.epochs=1"])
        .arg("--set")
        .arg(format!(
            "data.path=\"{}\"",
            repo().join(".deps/digits/digits.csv").display()
        ))
        .arg("--run-dir")
        .arg(&run_dir)
        .current_dir(repo())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("does not fit"), "{stderr}");
    assert!(stderr.contains("memory.cap_gib"), "{stderr}");
    assert!(!run_dir.join("checkpoints").join("epoch_00000001").exists());
}
