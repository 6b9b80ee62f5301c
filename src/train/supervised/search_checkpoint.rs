//! What the bilevel search holds between iterations (supernet, weight and alpha stores, the
//! strategy, SGD and the loop's own state), how it is built, and how it is saved into a
//! checkpoint and resumed from one exactly.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, Device};

use super::config::SupervisedConfig;
use super::objective::cross_entropy;
use super::{
    checkpoint_error, load_weights, read_state, write_state, SupervisedError, SGD_FILE,
    WEIGHTS_FILE,
};
use crate::data::Dataset;
use crate::nas::{ArchParams, DartsSearchNet, Supernet};
use crate::search::{SearchStrategy, Sgd};
use crate::train::run_dir::RunDir;

const ALPHAS_FILE: &str = "alphas.safetensors";
const LOOP_FILE: &str = "loop.json";

/// Loop state beyond weights, alphas and optimizers, saved with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SearchLoopState {
    pub epochs_done: usize,
    pub iteration: u64,
    pub rng: ChaCha8Rng,
    /// Position in the cycled search split (DARTS draws `next(iter(valid_queue))`).
    pub search_cursor: usize,
    pub search_order: Vec<i64>,
}

/// Everything a bilevel search carries from one iteration to the next.
pub(super) struct SearchSession {
    /// The supernet's weights (and BatchNorm statistics); the alphas live in `arch`, a store
    /// of their own, so that SGD never touches them.
    pub vs: nn::VarStore,
    pub net: DartsSearchNet,
    pub arch: ArchParams,
    pub strategy: Box<dyn SearchStrategy>,
    pub sgd: Sgd,
    pub state: SearchLoopState,
    /// Search-health measurements so far (checkpointed: an early stop returns an earlier
    /// measurement's architecture).
    pub health: crate::train::health::HealthMonitor,
    /// `search.health` with its period resolved (unset: every
    /// [`super::search::VISION_HEALTH_EVERY`] weight steps).
    pub health_config: crate::train::health::HealthConfig,
}

impl SearchSession {
    /// A fresh search: supernet, alphas, the strategy `config.search.strategy` names (seeded
    /// with `config.seed`, given the op costs and, when it asks, the latency table at this
    /// dataset's input size) and SGD.
    pub fn new(
        config: &SupervisedConfig,
        device: Device,
        w_train: &Dataset,
    ) -> Result<Self, SupervisedError> {
        let sc = &config.search;
        let vs = nn::VarStore::new(device);
        let mut net = DartsSearchNet::new(vs.root() / "net", &config.network)?;
        let mut arch = ArchParams::new(
            device,
            net.space(),
            net.has_reduction_cells(),
            sc.alpha_init,
        )?;
        // PC-DARTS: the betas are architecture parameters (the strategy's optimizer adopts
        // them with the alphas); the supernet weighs its edges by them in every forward.
        if net.partial_channels().enabled() {
            arch = arch.with_edge_normalisation();
            if let Some(betas) = arch.edge_betas() {
                net.set_edge_betas(betas)?;
            }
        }
        let mut strategy = sc.strategy.build(&arch, config.seed)?;
        // Resource-aware strategies (SNAS, UNAS) price ops at this dataset's input size.
        strategy.set_op_costs(&net.op_costs(w_train.image_shape()))?;
        // UNAS's latency penalty times the ops here, on the search device.
        if let Some(options) = strategy.latency_request() {
            let (table, _) = crate::nas::latency::load_or_measure(
                &net,
                w_train.image_shape(),
                device,
                &options,
            )?;
            strategy.set_latency_table(table)?;
        }
        check_search_fits(config, &vs, &net, &arch, w_train)?;
        let sgd = Sgd::new(vs.variables(), sc.weights.sgd());
        let state = SearchLoopState {
            epochs_done: 0,
            iteration: 0,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            search_cursor: 0,
            search_order: Vec::new(),
        };
        Ok(Self {
            vs,
            net,
            arch,
            strategy,
            sgd,
            state,
            health: Default::default(),
            health_config: sc.health.resolved(super::search::VISION_HEALTH_EVERY),
        })
    }

    /// Loads the newest complete checkpoint of `run_dir`: weights, alphas, SGD momentum, the
    /// strategy's own state and the loop state.
    pub fn resume(&mut self, run_dir: &RunDir) -> Result<(), SupervisedError> {
        let ckpt = run_dir.latest_checkpoint()?.ok_or_else(|| {
            SupervisedError::invalid(format!(
                "{} has no complete checkpoint to resume from",
                run_dir.root.display()
            ))
        })?;
        load_weights(&mut self.vs, &ckpt.join(WEIGHTS_FILE))?;
        self.arch.load(ckpt.join(ALPHAS_FILE))?;
        self.sgd.load(&ckpt.join(SGD_FILE))?;
        self.strategy.load(&ckpt)?;
        self.state = read_state(&ckpt.join(LOOP_FILE))?;
        self.health = crate::train::health::HealthMonitor::load(&ckpt)?;
        Ok(())
    }

    /// Writes a checkpoint named by the epochs done, keeping the newest `keep`.
    pub fn save(&self, run_dir: &RunDir, keep: usize) -> Result<(), SupervisedError> {
        run_dir.save_checkpoint(self.state.epochs_done as u64, keep, |dir| {
            self.write(dir).map_err(checkpoint_error(dir))
        })?;
        Ok(())
    }

    fn write(&self, dir: &Path) -> Result<(), SupervisedError> {
        self.vs.save(dir.join(WEIGHTS_FILE))?;
        self.arch.save(dir.join(ALPHAS_FILE))?;
        self.sgd.save(&dir.join(SGD_FILE))?;
        self.strategy.save(dir)?;
        self.health.save(dir)?;
        write_state(&dir.join(LOOP_FILE), &self.state)
    }
}

/// Checks, before the first step, that a search iteration fits the memory budget
/// (`memory.cap_gib`, or 90% of what the process can have): a probe runs the weight step's loss
/// with every op of the supernet evaluated (dense op weights, what the costliest strategy's
/// steps run) and the planner of [`super::micro`] estimates the whole batch's peak. Unlike
/// train-arch, the search cannot split a batch: strategies differentiate one loss tensor of the
/// whole batch (second-order ones twice, through Hessian-vector products), so a batch that does
/// not fit is an error with the numbers and the largest batch size that would.
fn check_search_fits(
    config: &SupervisedConfig,
    vs: &nn::VarStore,
    net: &DartsSearchNet,
    arch: &ArchParams,
    w_train: &Dataset,
) -> Result<(), SupervisedError> {
    let sc = &config.search;
    if config
        .memory
        .micro_batch_size
        .is_some_and(|m| m < sc.batch_size)
    {
        return Err(SupervisedError::invalid(format!(
            "memory.micro_batch_size = {} < search.batch_size = {}: the search cannot split its \
             batches (strategies differentiate one loss of the whole batch); lower \
             search.batch_size instead (train-arch can split)",
            config.memory.micro_batch_size.unwrap_or(0),
            sc.batch_size
        )));
    }
    if config.memory.micro_batch_size.is_some() {
        return Ok(());
    }
    let n = sc.batch_size.min(w_train.len());
    let index: Vec<i64> = (0..n as i64).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let (x, y) = super::batch(w_train, &index, &sc.augment, &mut rng);
    let weights = tch::no_grad(|| crate::search::softmax_weights(arch, 1.0));
    let micro = super::micro::plan_micro_batch(
        "search step",
        "",
        sc.batch_size,
        &config.memory,
        vs,
        &mut |k| {
            cross_entropy(
                &net.forward_with(&x.narrow(0, 0, k), &weights, true),
                &y.narrow(0, 0, k),
            )
        },
    )?;
    match micro {
        None => Ok(()),
        Some(m) => Err(SupervisedError::invalid(format!(
            "a search step on {} examples does not fit the memory budget (see the line above); \
             the search cannot split its batches, so set search.batch_size = {m} (the largest \
             that fits) or raise memory.cap_gib",
            sc.batch_size
        ))),
    }
}
