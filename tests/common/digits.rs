//! The tiny digits search the vision tests share: the 8x8 digits `make setup` exports, a
//! 3-cell DARTS supernet of 4 channels and 2 nodes, batches of 32, on the CPU. Each test sets
//! what it is about (epochs, strategy, seed, health) on top.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use rl_darts::config::save_resolved_config;
use rl_darts::logging::MetricsSink;
use rl_darts::nas::OpSet;
use rl_darts::train::rl::NoProgress;
use rl_darts::train::run_dir::RunDir;
use rl_darts::train::supervised::{search, SearchRun, SearchSummary, SupervisedConfig};

/// A digits search small enough for an epoch in seconds.
pub fn tiny_digits_config() -> SupervisedConfig {
    let mut c = SupervisedConfig {
        device: "cpu".into(),
        ..Default::default()
    };
    c.data.path = super::repo_root().join(".deps/digits/digits.csv");
    c.network.c = 4;
    c.network.layers = 3;
    c.network.num_nodes = 2;
    c.network.stem_multiplier = 1;
    c.network.in_channels = 1;
    c.network.op_set = OpSet::Darts;
    c.search.batch_size = 32;
    c
}

/// Runs `config`'s search in `run_dir` as `rl-darts search` does (the resolved config saved
/// beside it), without a stop request. A failed search fails the test.
pub fn search_in(
    config: &SupervisedConfig,
    run_dir: &RunDir,
    resume: bool,
    max_epochs: Option<usize>,
    sink: &mut dyn MetricsSink,
) -> SearchSummary {
    save_resolved_config(config, &run_dir.root).unwrap();
    search(SearchRun {
        config,
        run_dir,
        resume,
        sink,
        progress: &mut NoProgress,
        stop: &AtomicBool::new(false),
        max_epochs,
    })
    .unwrap()
}

/// [`search_in`] a run directory at `dir`: created, or opened to resume.
pub fn search_at(
    config: &SupervisedConfig,
    dir: &Path,
    resume: bool,
    max_epochs: Option<usize>,
    sink: &mut dyn MetricsSink,
) -> SearchSummary {
    let run_dir = if resume {
        RunDir::open(dir).unwrap()
    } else {
        RunDir::create_at(dir).unwrap()
    };
    search_in(config, &run_dir, resume, max_epochs, sink)
}
