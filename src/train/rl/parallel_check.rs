//! The bilevel half of `rl-darts dist selftest`: N processes, each given 1/N of one fixed
//! training batch and 1/N of one fixed search batch, take the alpha steps of every bilevel
//! strategy that claims a data-parallel form ([`crate::search::SearchStrategy::data_parallel_support`])
//! and must end with the alphas one process gets on the whole batches, in f64, on a small
//! RL-DARTS supernet (no batch statistics) through the RL loop's own [`PpoObjective`] (advantages
//! normalised over the whole minibatch). The control: the same steps with the averaging left
//! out must end elsewhere, or the comparison could not tell.
//!
//! Lives beside the RL loop rather than in [`crate::distributed`]: it needs the loop's
//! objective and the search strategies, and `distributed` sits below both.

use tch::{nn, Device, Kind, Tensor};

use super::objective::PpoObjective;
use crate::agents::{ActorCritic, Batch, DataParallel, PpoConfig};
use crate::nas::{AlphaInit, ArchParams, RlDartsConfig, RlDartsSupernet, Supernet};
use crate::search::{
    ArchAdamConfig, DartsOrder, DartsParams, DartsPrimeParams, GdasParams, HessianMode,
    IDartsParams, StrategyConfig,
};
use crate::train::TrainError;

/// Samples in each fixed batch: divisible by 1, 2, 3, 4, 6 and 8 processes.
const BATCH: i64 = 48;
/// Alpha steps per strategy.
const STEPS: u64 = 3;
/// Largest allowed |alpha_N - alpha_1| in f64 on the CPU.
pub const TOLERANCE: f64 = 1e-9;

/// One strategy's result on this process.
#[derive(Debug, Clone)]
pub struct BilevelGap {
    pub strategy: String,
    /// Largest |alpha_N - alpha_1| over every alpha.
    pub gap: f64,
    /// The same without averaging over the processes.
    pub control_gap: f64,
}

/// The strategies checked: DARTS first order, second order by finite differences and by
/// double backward, iDARTS (Neumann series and power iteration by double backward), DARTS-PRIME
/// (proximal regulariser, every step) and GDAS (one hard sample per step).
fn strategies() -> Vec<(&'static str, StrategyConfig)> {
    // A large alpha step, so that a wrong gradient shows far above the tolerance.
    let adam = ArchAdamConfig {
        lr: 0.05,
        ..ArchAdamConfig::default()
    };
    vec![
        (
            "darts first order",
            StrategyConfig::Darts(DartsParams {
                optimizer: adam,
                ..DartsParams::default()
            }),
        ),
        (
            "darts second order (finite difference)",
            StrategyConfig::Darts(DartsParams {
                order: DartsOrder::Second,
                optimizer: adam,
                ..DartsParams::default()
            }),
        ),
        (
            "darts second order (exact)",
            StrategyConfig::Darts(DartsParams {
                order: DartsOrder::Second,
                hessian: HessianMode::Exact,
                optimizer: adam,
                ..DartsParams::default()
            }),
        ),
        (
            "idarts",
            StrategyConfig::Idarts(IDartsParams {
                inner_steps: 1,
                neumann_terms: 2,
                power_iterations: 2,
                optimizer: adam,
                ..IDartsParams::default()
            }),
        ),
        (
            "darts_prime",
            StrategyConfig::DartsPrime(DartsPrimeParams {
                dynamic_schedule: false,
                optimizer: adam,
                ..DartsPrimeParams::default()
            }),
        ),
        (
            "gdas",
            StrategyConfig::Gdas(GdasParams {
                optimizer: adam,
                ..GdasParams::default()
            }),
        ),
    ]
}

/// A small f64 RL-DARTS supernet policy, its alphas, and the two fixed batches, built the same
/// way on every process.
type Setup = (
    nn::VarStore,
    ActorCritic<crate::nas::CellWeights>,
    ArchParams,
    Batch,
    Batch,
);

fn setup() -> Result<Setup, TrainError> {
    tch::manual_seed(29);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let config = RlDartsConfig {
        channels: vec![4],
        normal_cells_per_stage: 1,
        num_nodes: 2,
        embedding: 8,
        ..RlDartsConfig::default()
    };
    let chw = [3, 8, 8];
    let encoder = RlDartsSupernet::new(vs.root() / "encoder", &config, &chw)?;
    let with_reduce = encoder.has_reduction_cells();
    let policy = ActorCritic::new(vs.root() / "policy", Box::new(encoder), 3);
    vs.double();
    let mut arch = ArchParams::new(
        Device::Cpu,
        config.space(),
        with_reduce,
        AlphaInit {
            mean: 0.0,
            std: 0.5,
        },
    )?;
    arch.var_store_mut().double();
    let f64s = (Kind::Double, Device::Cpu);
    let batch = || {
        let obs = Tensor::rand([BATCH, chw[0], chw[1], chw[2]], f64s);
        let act = tch::no_grad(|| policy.act(&obs, &crate::search::softmax_weights(&arch, 1.0)));
        Batch {
            obs,
            actions: act.action,
            logprobs: act.logprob + Tensor::randn([BATCH], f64s) * 0.1,
            values: act.value.shallow_clone(),
            // Skewed, so that each process's share has other statistics than the whole.
            advantages: Tensor::randn([BATCH], f64s) * 3.0
                + Tensor::linspace(-2.0, 4.0, BATCH, f64s),
            returns: act.value + Tensor::randn([BATCH], f64s),
        }
    };
    let (train, search) = (batch(), batch());
    Ok((vs, policy, arch, train, search))
}

/// The alphas (on the CPU, in name order) after [`STEPS`] alpha steps of `strategy` on
/// this process's share (`part = (rank, n)`) of the batches, averaged over `dp` when given.
fn alphas_after(
    strategy: &StrategyConfig,
    part: (usize, usize),
    dp: Option<&dyn DataParallel>,
) -> Result<Vec<Tensor>, TrainError> {
    let (vs, policy, arch, train, search) = setup()?;
    let share = BATCH / part.1 as i64;
    let (train, search) = (
        train.narrow(part.0 as i64 * share, share),
        search.narrow(part.0 as i64 * share, share),
    );
    let mut strategy = strategy.build(&arch, 5)?;
    let mut parameters: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    parameters.sort_by(|a, b| a.0.cmp(&b.0));
    let ppo = PpoConfig::default();
    for t in 0..STEPS {
        if !strategy.wants_arch_step(t) {
            continue;
        }
        let mut objective = PpoObjective {
            policy: &policy,
            config: ppo.clone(),
            train: train.narrow(0, share),
            search_batch: search.narrow(0, share),
            parameters: parameters.iter().map(|(_, p)| p.shallow_clone()).collect(),
            buffers: Vec::new(),
            lr: 0.05,
            data_parallel: dp,
        }
        .normalise_advantages()?;
        let stats = strategy.arch_step(&arch, &mut objective)?;
        if !stats.loss.is_finite() {
            return Err(TrainError::Invalid(format!(
                "{}: non-finite alpha-step loss {}",
                strategy.name(),
                stats.loss
            )));
        }
    }
    let mut named: Vec<(String, Tensor)> = arch.var_store().variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(named.into_iter().map(|(_, t)| t.detach().copy()).collect())
}

fn max_gap(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

/// Runs every strategy on this process (`rank` of `dp.world_size()`); returns the gaps, the
/// worst over the processes (every process must call it).
pub fn bilevel_equivalence(
    dp: &dyn DataParallel,
    rank: usize,
) -> Result<Vec<BilevelGap>, TrainError> {
    let n = dp.world_size();
    if BATCH % n as i64 != 0 {
        return Err(TrainError::Invalid(format!(
            "the bilevel check's batch of {BATCH} does not split over {n} processes"
        )));
    }
    let mut out = Vec::new();
    for (name, strategy) in strategies() {
        let reference = alphas_after(&strategy, (0, 1), None)?;
        let shared = alphas_after(&strategy, (rank, n), Some(dp))?;
        let alone = alphas_after(&strategy, (rank, n), None)?;
        // The worst process's gap, and the smallest control gap (every process must differ).
        let mut gaps = vec![0.0; 2 * n];
        gaps[rank] = max_gap(&shared, &reference);
        gaps[n + rank] = max_gap(&alone, &reference);
        dp.all_reduce_sum(&mut gaps)?;
        out.push(BilevelGap {
            strategy: name.into(),
            gap: gaps[..n].iter().copied().fold(0.0, f64::max),
            control_gap: gaps[n..].iter().copied().fold(f64::INFINITY, f64::min),
        });
    }
    Ok(out)
}
