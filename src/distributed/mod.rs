//! Data-parallel PPO over several processes: each process steps its own envs and computes the
//! gradient of its share of every minibatch; the gradients are all-reduced to their mean before
//! the gradient-norm clip (CleanRL's `ppo_atari_multigpu.py`, the Procgen paper's MPI Adam of
//! Cobbe et al. 2020), so N processes take the step one process would take on the whole batch.
//!
//! Engines are existing ones, never a collective written here: MPI on the CPU ([`mpi`], rsmpi
//! over Open MPI, launched by `mpirun` or `srun`) and NCCL on GPUs ([`nccl`], cudarc's binding
//! of the torch wheel's `libnccl.so.2`, loaded at run time; its unique id reaches every rank by
//! an MPI broadcast). [`launch`] reads the launcher's environment.
//!
//! What is shared and what is per process (README "Data-parallel training"):
//! - shared: the weights, the alphas, Adam's moments and the strategy's state (identical on
//!   every process because every step uses the same all-reduced gradient; the initial ones are
//!   broadcast from rank 0, and so is a checkpoint on resume), and the architecture sample of
//!   each iteration (the search's generator has the same seed on every process, so all act
//!   with one sample, as one process with the whole batch would);
//! - global: advantage normalisation (all-reduced sum, sum of squares and count), the loss
//!   terms, the gradient norm, the `target_kl` stop;
//! - per process: the envs and their level seeds (the seed offset by rank), the reward
//!   normaliser (a running statistic of the process's own returns, as each CleanRL process's
//!   `NormalizeReward` wrapper), action sampling and minibatch shuffling, the rollout's
//!   diagnostics (explained variance, episodes). Rank 0 logs its own episodes and writes every
//!   checkpoint.

pub mod launch;
pub mod mpi;
pub mod nccl;
pub mod rendezvous;
pub mod selftest;
pub mod state;

pub use state::{pack_folder, share_checkpoint, unpack_folder};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::agents::DataParallel;

/// Which engine runs the collectives (`distributed.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One process (the default).
    #[default]
    None,
    /// MPI (Open MPI), tensors on the CPU; launched with `mpirun -np N` or `srun`.
    Mpi,
    /// NCCL, tensors on GPUs (one per process); launched like `mpi` (the NCCL unique id is
    /// broadcast over MPI).
    Nccl,
}

impl Backend {
    pub const NAMES: [&'static str; 3] = ["none", "mpi", "nccl"];

    pub fn name(self) -> &'static str {
        match self {
            Backend::None => "none",
            Backend::Mpi => "mpi",
            Backend::Nccl => "nccl",
        }
    }

    /// Parses a backend name (the CLI's `--backend`); an unknown one lists the valid names.
    pub fn parse(name: &str) -> Result<Self, DistError> {
        match name {
            "none" => Ok(Backend::None),
            "mpi" => Ok(Backend::Mpi),
            "nccl" => Ok(Backend::Nccl),
            other => Err(DistError::Config(format!(
                "unknown distributed backend '{other}'; use one of {}",
                Self::NAMES.join(", ")
            ))),
        }
    }
}

/// `[distributed]`: how one run spreads over several processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedConfig {
    /// `none` (one process), `mpi` (CPU) or `nccl` (GPU). With `mpi` or `nccl` the PPO keys
    /// describe the whole run: `ppo.num_envs` (and so the batch and every minibatch) is split
    /// evenly over the processes, which must divide it.
    pub backend: Backend,
    /// Seconds a process waits inside one collective for the others before it ends the run
    /// with an error (a process that hangs, or one whose death the launcher did not report);
    /// 0 waits forever. It bounds the imbalance between processes, e.g. one rollout's length.
    pub timeout_s: f64,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        Self {
            backend: Backend::None,
            timeout_s: 600.0,
        }
    }
}

impl DistributedConfig {
    pub fn validate(&self) -> Result<(), DistError> {
        if !(self.timeout_s >= 0.0 && self.timeout_s.is_finite()) {
            return Err(DistError::Config(format!(
                "distributed.timeout_s = {} must be non-negative (0 = no timeout)",
                self.timeout_s
            )));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("distributed: {0}")]
    Config(String),
    /// The launcher's environment and the engine disagree (e.g. torchrun with the MPI backend).
    #[error("distributed launch: {0}")]
    Launch(String),
    #[error("NCCL: {0}")]
    Nccl(String),
    #[error("tensor error: {0}")]
    Tch(#[from] tch::TchError),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl From<DistError> for crate::agents::AgentError {
    fn from(e: DistError) -> Self {
        crate::agents::AgentError::DataParallel(e.to_string())
    }
}

/// One process's view of a data-parallel run: the [`DataParallel`] collectives the PPO update
/// uses, plus what the loop around it needs (its rank, broadcasts from rank 0, abort).
pub trait Communicator: DataParallel {
    /// This process's index, 0..world_size.
    fn rank(&self) -> usize;

    /// This process's index among those on its node (which GPU it takes).
    fn local_rank(&self) -> usize;

    fn backend(&self) -> Backend;

    /// Rank 0's `bytes` on every process (any length; the others' input is replaced).
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<(), DistError>;

    /// Every process's `bytes` in rank order on rank 0, `None` on the others (what each
    /// process adds to rank 0's checkpoint).
    fn gather_bytes(&self, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>, DistError>;

    /// Rank 0's values of `tensors` copied into every process's tensors, in place.
    fn broadcast_tensors(&self, tensors: &[Tensor]) -> Result<(), DistError>;

    /// Ends every process of the run: this one's error is not the others' to wait for.
    fn abort(&self, code: i32) -> !;
}

/// Starts the engine `config.backend` names (None for `none`), checked against the launcher's
/// environment ([`launch::LaunchEnv`]).
pub fn init(
    config: &DistributedConfig,
) -> Result<Option<std::rc::Rc<dyn Communicator>>, DistError> {
    config.validate()?;
    Ok(match config.backend {
        Backend::None => None,
        Backend::Mpi => Some(std::rc::Rc::new(mpi::MpiComm::init(config.timeout_s)?)),
        Backend::Nccl => Some(std::rc::Rc::new(nccl::NcclComm::init(config.timeout_s)?)),
    })
}

thread_local! {
    /// This process's engine, once started ([`world`]).
    static WORLD: std::cell::RefCell<Option<std::rc::Rc<dyn Communicator>>> =
        const { std::cell::RefCell::new(None) };
}

/// This process's engine for `config`: started on the first call, the same one afterwards.
/// A process initialises MPI once (`MPI_Init` cannot be repeated), and both the command line
/// (which needs the rank to choose who writes the run directory) and the training loop
/// (`train::rl::train`, whose callers, the pipeline and the tests among them, know nothing of
/// processes) use it; so the engine is per process, as MPI itself is. [`finish`] ends it.
pub fn world(
    config: &DistributedConfig,
) -> Result<Option<std::rc::Rc<dyn Communicator>>, DistError> {
    if config.backend == Backend::None {
        return Ok(None);
    }
    if let Some(comm) = WORLD.with(|w| w.borrow().clone()) {
        if comm.backend() != config.backend {
            return Err(DistError::Config(format!(
                "this process already runs the {} backend; it cannot switch to {}",
                comm.backend().name(),
                config.backend.name()
            )));
        }
        return Ok(Some(comm));
    }
    let comm = init(config)?;
    WORLD.with(|w| *w.borrow_mut() = comm.clone());
    Ok(comm)
}

/// Ends this process's engine (`MPI_Finalize` once the last handle is dropped). Call it
/// before the process exits: the destructors of the main thread's thread-locals may not run,
/// and a launcher reports a process that exits without finalising as failed.
pub fn finish() {
    drop(WORLD.with(|w| w.borrow_mut().take()));
}

/// Aborts every process of the run when this process's engine is running (a failed process
/// must not leave the others waiting in a collective); does nothing otherwise.
pub fn abort_if_running(code: i32) {
    if let Some(comm) = WORLD.with(|w| w.borrow().clone()) {
        if comm.world_size() > 1 {
            comm.abort(code);
        }
    }
}

/// A seed for process `rank` derived from the run's `seed`: rank 0 keeps it (a one-process run
/// is unchanged), the others are offset by `rank * 1_000_003`, so that they meet neither each
/// other nor the ranks of a run with another small seed, also after procgen takes the seed
/// modulo 2^31 - 1 (an offset of `rank << 32` would become `2 * rank` there).
pub fn rank_seed(seed: u64, rank: usize) -> u64 {
    seed.wrapping_add(rank as u64 * RANK_SEED_STRIDE)
}

const RANK_SEED_STRIDE: u64 = 1_000_003;

/// Groups `tensors` by kind, flattened into one contiguous 1-D tensor per kind on `device`
/// (the engines reduce one buffer per kind), with where each tensor sits in it.
pub(crate) fn flatten_by_kind(tensors: &[Tensor]) -> Vec<(tch::Kind, Tensor, Vec<usize>)> {
    let mut groups: Vec<(tch::Kind, Vec<usize>)> = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        let kind = t.kind();
        match groups.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, members)) => members.push(i),
            None => groups.push((kind, vec![i])),
        }
    }
    groups
        .into_iter()
        .map(|(kind, members)| {
            let parts: Vec<Tensor> = members.iter().map(|&i| tensors[i].reshape([-1])).collect();
            (kind, Tensor::cat(&parts, 0), members)
        })
        .collect()
}

/// Copies a reduced flat buffer back into the tensors of its kind group, in place.
pub(crate) fn unflatten_into(
    flat: &Tensor,
    members: &[usize],
    tensors: &[Tensor],
) -> Result<(), tch::TchError> {
    let mut offset = 0;
    for &i in members {
        let t = &tensors[i];
        let n = t.numel() as i64;
        let mut target = t.shallow_clone();
        tch::no_grad(|| target.f_copy_(&flat.narrow(0, offset, n).view_as(t)))?;
        offset += n;
    }
    Ok(())
}
