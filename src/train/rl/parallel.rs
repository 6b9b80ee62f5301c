//! One process of a data-parallel PPO run ([`crate::distributed`]): what the loop of
//! [`super::run`] does differently when it is one of several processes (its device, joining
//! the others, checking at the end that they stayed together).

use std::rc::Rc;

use super::config::TrainConfig;
use super::driver::Driver;
use crate::agents::PpoTrainer;
use crate::distributed::{share_checkpoint, Backend, Communicator};
use crate::train::run_dir::RunDir;
use crate::train::TrainError;

/// This process's place in a data-parallel run.
pub(super) struct Process {
    pub(super) comm: Rc<dyn Communicator>,
    pub(super) rank: usize,
}

impl Process {
    /// This process's place in the run `config` asks for (None: the only process); starts the
    /// engine on first use ([`crate::distributed::world`]).
    pub(super) fn of(config: &TrainConfig) -> Result<Option<Process>, TrainError> {
        let comm = crate::distributed::world(&config.distributed)?;
        Ok(comm.map(|comm| Process {
            rank: comm.rank(),
            comm,
        }))
    }
}

/// The device of this process: with NCCL the GPU of its local rank, else `config.device`.
pub(super) fn device_of(
    process: Option<&Process>,
    config: &TrainConfig,
) -> Result<tch::Device, TrainError> {
    match process {
        Some(p) if p.comm.backend() == Backend::Nccl => {
            if config.device == "cpu" {
                return Err(TrainError::Invalid(
                    "distributed.backend = \"nccl\" runs on GPUs; use device = \"cuda\" (each \
                     process takes the GPU of its local rank) or the \"mpi\" backend on CPUs"
                        .into(),
                ));
            }
            Ok(tch::Device::Cuda(p.comm.local_rank()))
        }
        _ => Ok(crate::device::parse_device(&config.device)?),
    }
}

/// The weights and alphas (sorted by name, alphas last) every process must hold equal.
fn shared_tensors<D: Driver>(trainer: &PpoTrainer<D::Arch>, driver: &D) -> Vec<tch::Tensor> {
    let mut named: Vec<(String, tch::Tensor)> = trainer.vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut shared: Vec<tch::Tensor> = named.into_iter().map(|(_, t)| t).collect();
    shared.extend(driver.shared_parameters());
    shared
}

/// At the end of a data-parallel run: every process must hold the same weights and alphas
/// (they took the same reduced steps). A fingerprint per process, `sum(w) + sum(w^2)` in f64,
/// is all-reduced with its square; their variance over the processes must vanish. A process
/// that stepped apart (a gradient left out of the all-reduce) is then an error, not a run
/// whose checkpoint holds only rank 0's half of the story.
pub(super) fn check_in_sync<D: Driver>(
    process: &Process,
    trainer: &PpoTrainer<D::Arch>,
    driver: &D,
) -> Result<(), TrainError> {
    let fingerprint: f64 = tch::no_grad(|| {
        shared_tensors(trainer, driver)
            .iter()
            .map(|t| {
                let t = t.to_kind(tch::Kind::Double);
                t.sum(tch::Kind::Double).double_value(&[])
                    + t.square().sum(tch::Kind::Double).double_value(&[])
            })
            .sum()
    });
    let mut moments = [fingerprint, fingerprint * fingerprint];
    crate::agents::DataParallel::all_reduce_sum(&*process.comm, &mut moments)?;
    let n = process.comm.world_size() as f64;
    let mean = moments[0] / n;
    let spread = (moments[1] / n - mean * mean).max(0.0).sqrt();
    if spread > 1e-9 * mean.abs().max(1.0) {
        return Err(TrainError::Invalid(format!(
            "the processes' weights drifted apart (fingerprint {fingerprint} on rank {}, spread \
             {spread:.3e} over {n} processes): a gradient was not all-reduced",
            process.rank
        )));
    }
    Ok(())
}

/// Joins `trainer` and `driver` to the other processes: the update all-reduces, and the
/// weights and alphas start from rank 0's.
pub(super) fn join<D: Driver>(
    process: &Process,
    trainer: &mut PpoTrainer<D::Arch>,
    driver: &mut D,
) -> Result<(), TrainError> {
    trainer.set_data_parallel(process.comm.clone());
    driver.join_data_parallel(None)?;
    process
        .comm
        .broadcast_tensors(&shared_tensors(trainer, driver))
        .map_err(TrainError::from)
}

/// The checkpoint to resume from: the run's newest, read by rank 0 (or the only process) and,
/// in a data-parallel run, broadcast to the others, which write it into their scratch
/// `run_dir` (they may not see rank 0's disk).
pub(super) fn newest_checkpoint(
    run_dir: &RunDir,
    process: Option<&Process>,
) -> Result<Option<std::path::PathBuf>, TrainError> {
    let rank = process.map_or(0, |p| p.rank);
    let ckpt = if rank == 0 {
        run_dir.latest_checkpoint()?
    } else {
        None
    };
    match process {
        Some(p) => share_checkpoint(&*p.comm, ckpt.as_deref(), &run_dir.root.join("from-rank-0"))
            .map_err(TrainError::from),
        None => Ok(ckpt),
    }
}

/// Subfolder of a checkpoint holding process `rank`'s own state (rank > 0; rank 0's is the
/// checkpoint itself).
fn rank_folder(rank: usize) -> String {
    format!("rank_{rank}")
}

/// In a data-parallel run, every process's own part of a checkpoint (its envs and their
/// state, its action-sampling and shuffling generator, its reward normaliser, its search
/// rollout), written by `write` into a scratch folder under `scratch` and gathered on rank 0:
/// `Some(packed folders, rank order)` on rank 0, `None` on the others and in a one-process
/// run. Every process must call it at the same iteration (a collective).
pub(super) fn gather_rank_states(
    process: Option<&Process>,
    scratch: &std::path::Path,
    write: impl FnOnce(&std::path::Path) -> Result<(), TrainError>,
) -> Result<Option<Vec<Vec<u8>>>, TrainError> {
    let Some(p) = process.filter(|p| p.comm.world_size() > 1) else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    if p.rank != 0 {
        let dir = scratch.join(format!(".own-state-{}", p.rank));
        let io = |e: std::io::Error| TrainError::Io {
            path: dir.clone(),
            source: e,
        };
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io)?;
        }
        std::fs::create_dir_all(&dir).map_err(io)?;
        write(&dir)?;
        bytes = crate::distributed::pack_folder(&dir)?;
        std::fs::remove_dir_all(&dir).map_err(io)?;
    }
    p.comm.gather_bytes(&bytes).map_err(TrainError::from)
}

/// Writes the gathered states of ranks 1.. into the checkpoint folder `dir` (inside
/// [`RunDir::save_checkpoint`], so that they are committed with rank 0's in one rename).
pub(super) fn write_rank_states(
    dir: &std::path::Path,
    states: &[Vec<u8>],
) -> Result<(), TrainError> {
    for (rank, bytes) in states.iter().enumerate().skip(1) {
        crate::distributed::unpack_folder(bytes, &dir.join(rank_folder(rank)))?;
    }
    Ok(())
}

/// Where process `rank` reads its own state in a checkpoint: the checkpoint itself on rank 0,
/// its rank folder on the others; `None` for a checkpoint written before processes saved
/// their own state (or by another number of processes).
pub(super) fn own_state(ckpt: &std::path::Path, rank: usize) -> Option<std::path::PathBuf> {
    match rank {
        0 => Some(ckpt.to_path_buf()),
        r => Some(ckpt.join(rank_folder(r))).filter(|d| d.is_dir()),
    }
}

/// One decision for every process: each flag is true everywhere when any process raised it
/// (a Ctrl-C that reached the processes at different iterations, a checkpoint due by one
/// process's clock), since saving gathers from every process and stopping ends the
/// collectives.
pub(super) fn any_process<const N: usize>(
    process: Option<&Process>,
    flags: [bool; N],
) -> Result<[bool; N], TrainError> {
    let Some(p) = process.filter(|p| p.comm.world_size() > 1) else {
        return Ok(flags);
    };
    let mut counts = flags.map(|f| f64::from(u8::from(f)));
    crate::agents::DataParallel::all_reduce_sum(&*p.comm, &mut counts)?;
    Ok(counts.map(|c| c > 0.0))
}
