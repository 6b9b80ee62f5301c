//! The MPI engine (rsmpi over Open MPI): collectives on host buffers, so tensors on the CPU
//! (CUDA tensors work too, through a host copy; use NCCL for GPUs). A process that dies ends
//! the run through the launcher (mpirun and srun kill the other processes of a job when one
//! exits without `MPI_Finalize`); a process that hangs is caught by the watchdog below.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use tch::{Device, Kind, Tensor};

use super::launch::{check_world, LaunchEnv};
use super::{flatten_by_kind, unflatten_into, Backend, DistError};
use crate::agents::{AgentError, DataParallel};

/// MPI counts are `int`: buffers go in chunks below 2^31 elements.
const CHUNK: usize = 1 << 30;

pub struct MpiComm {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    local_rank: usize,
    watchdog: Watchdog,
    /// Finalises MPI when dropped; declared last so that `world` goes first.
    _universe: mpi::environment::Universe,
}

impl std::fmt::Debug for MpiComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MpiComm(rank {} of {})", self.rank, self.size)
    }
}

impl MpiComm {
    /// `MPI_Init`, checked against the launcher's environment. `timeout_s` (0: none) bounds the
    /// wait inside one collective.
    pub fn init(timeout_s: f64) -> Result<Self, DistError> {
        // Before MPI_Init: under torchrun it would make a world of one per process.
        super::rendezvous::refuse_mpi_under_torchrun(|v| std::env::var(v).ok())?;
        let universe = mpi::initialize().ok_or_else(|| {
            DistError::Launch("MPI is already initialised in this process".into())
        })?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let env = LaunchEnv::from_env();
        check_world("MPI", rank, size, env.as_ref())?;
        Ok(Self {
            world,
            rank,
            size,
            local_rank: env.map_or(0, |e| e.local_rank),
            watchdog: Watchdog::start(rank, timeout_s),
            _universe: universe,
        })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn rank_index(&self) -> usize {
        self.rank
    }

    /// Sums `send` over the processes into `recv` (same length).
    fn sum_into<T: Equivalence>(&self, send: &[T], recv: &mut [T]) {
        let _wait = self.watchdog.enter("an all-reduce");
        for (s, r) in send.chunks(CHUNK).zip(recv.chunks_mut(CHUNK)) {
            self.world.all_reduce_into(s, r, SystemOperation::sum());
        }
    }

    fn broadcast_slice<T: Equivalence>(&self, buf: &mut [T]) {
        let _wait = self.watchdog.enter("a broadcast");
        let root = self.world.process_at_rank(0);
        for chunk in buf.chunks_mut(CHUNK) {
            root.broadcast_into(chunk);
        }
    }

    /// Mean over the processes of one flat tensor, returned on its device with its kind. f64
    /// travels as f64; every other kind as f32.
    fn mean_of(&self, flat: &Tensor) -> Result<Tensor, DistError> {
        let (device, kind) = (flat.device(), flat.kind());
        let n = flat.numel();
        let size = self.size as f64;
        let host = flat.f_to_device(Device::Cpu)?;
        let mean = if kind == Kind::Double {
            let mut send = vec![0f64; n];
            host.f_copy_data(&mut send, n)?;
            let mut recv = vec![0f64; n];
            self.sum_into(&send, &mut recv);
            Tensor::from_slice(&recv).f_div_scalar(size)?
        } else {
            let mut send = vec![0f32; n];
            host.f_to_kind(Kind::Float)?.f_copy_data(&mut send, n)?;
            let mut recv = vec![0f32; n];
            self.sum_into(&send, &mut recv);
            Tensor::from_slice(&recv).f_div_scalar(size)?
        };
        Ok(mean.f_to_kind(kind)?.f_to_device(device)?)
    }

    /// `bytes` of rank 0 on every process, as [`super::Communicator::broadcast_bytes`]; the
    /// NCCL engine sends its unique id and the checkpoints through this too.
    pub fn broadcast_bytes(&self, bytes: &mut Vec<u8>) {
        let mut len = [bytes.len() as u64];
        self.broadcast_slice(&mut len);
        bytes.resize(len[0] as usize, 0);
        self.broadcast_slice(bytes.as_mut_slice());
    }

    /// Every process's `bytes`, in rank order, on rank 0 (`None` on the others): MPI's gather
    /// of the lengths, then `MPI_Gatherv` of the bytes.
    pub fn gather_bytes(&self, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>, DistError> {
        let _wait = self.watchdog.enter("a gather");
        let len = mpi::Count::try_from(bytes.len()).map_err(|_| {
            DistError::Config(format!(
                "{} bytes to gather exceed MPI's count limit",
                bytes.len()
            ))
        })?;
        let root = self.world.process_at_rank(0);
        if self.rank != 0 {
            root.gather_into(&len);
            root.gather_varcount_into(bytes);
            return Ok(None);
        }
        let mut counts: Vec<mpi::Count> = vec![0; self.size];
        root.gather_into_root(&len, &mut counts[..]);
        let mut displs = Vec::with_capacity(self.size);
        let mut total: mpi::Count = 0;
        for &c in &counts {
            displs.push(total);
            total = total.checked_add(c).ok_or_else(|| {
                DistError::Config("the gathered bytes exceed MPI's count limit".into())
            })?;
        }
        let mut all = vec![0u8; total as usize];
        {
            let mut partition =
                mpi::datatype::PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            root.gather_varcount_into_root(bytes, &mut partition);
        }
        Ok(Some(
            counts
                .iter()
                .zip(&displs)
                .map(|(&c, &d)| all[d as usize..(d + c) as usize].to_vec())
                .collect(),
        ))
    }

    pub fn all_reduce_sum(&self, values: &mut [f64]) {
        let send = values.to_vec();
        self.sum_into(&send, values);
    }

    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

impl DataParallel for MpiComm {
    fn world_size(&self) -> usize {
        self.size
    }

    fn all_reduce_mean(&self, tensors: &[Tensor]) -> Result<(), AgentError> {
        for (_, flat, members) in flatten_by_kind(tensors) {
            let mean = self.mean_of(&flat)?;
            unflatten_into(&mean, &members, tensors)?;
        }
        Ok(())
    }

    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<(), AgentError> {
        MpiComm::all_reduce_sum(self, values);
        Ok(())
    }
}

impl super::Communicator for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn local_rank(&self) -> usize {
        self.local_rank
    }

    fn backend(&self) -> Backend {
        Backend::Mpi
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<(), DistError> {
        MpiComm::broadcast_bytes(self, bytes);
        Ok(())
    }

    fn gather_bytes(&self, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>, DistError> {
        MpiComm::gather_bytes(self, bytes)
    }

    fn broadcast_tensors(&self, tensors: &[Tensor]) -> Result<(), DistError> {
        for (kind, flat, members) in flatten_by_kind(tensors) {
            let device = flat.device();
            let n = flat.numel();
            let host = flat.f_to_device(Device::Cpu)?;
            let received = if kind == Kind::Double {
                let mut buf = vec![0f64; n];
                host.f_copy_data(&mut buf, n)?;
                self.broadcast_slice(&mut buf);
                Tensor::from_slice(&buf)
            } else {
                let mut buf = vec![0f32; n];
                host.f_to_kind(Kind::Float)?.f_copy_data(&mut buf, n)?;
                self.broadcast_slice(&mut buf);
                Tensor::from_slice(&buf)
            };
            let received = received.f_to_kind(kind)?.f_to_device(device)?;
            unflatten_into(&received, &members, tensors)?;
        }
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        MpiComm::abort(self, code)
    }
}

/// Ends this process when it has waited in one collective longer than the timeout. MPI has no
/// timeout of its own: a peer that hangs (not dies) would keep the others waiting forever.
/// Ending with `_exit` makes the launcher end the rest of the job, as for a process that died.
pub(crate) struct Watchdog {
    state: Option<Arc<WatchState>>,
}

struct WatchState {
    start: Instant,
    /// Milliseconds since `start` at which the current collective began, plus one; 0 when the
    /// process is not in a collective.
    since_ms: AtomicU64,
    what: Mutex<&'static str>,
}

/// Marks the time spent inside one collective; dropping it ends the mark.
pub(crate) struct Waiting<'a>(Option<&'a WatchState>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.0 {
            s.since_ms.store(0, Ordering::SeqCst);
        }
    }
}

impl Watchdog {
    pub(crate) fn start(rank: usize, timeout_s: f64) -> Self {
        if timeout_s <= 0.0 {
            return Self { state: None };
        }
        let state = Arc::new(WatchState {
            start: Instant::now(),
            since_ms: AtomicU64::new(0),
            what: Mutex::new(""),
        });
        let watched = state.clone();
        let timeout = Duration::from_secs_f64(timeout_s);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200).min(timeout));
            let since = watched.since_ms.load(Ordering::SeqCst);
            if since == 0 {
                continue;
            }
            let waited = watched
                .start
                .elapsed()
                .saturating_sub(Duration::from_millis(since - 1));
            if waited > timeout {
                let what = *watched.what.lock().unwrap_or_else(|e| e.into_inner());
                eprintln!(
                    "error: rank {rank} waited {:.0} s in {what} for the other processes \
                     (distributed.timeout_s = {timeout_s}): one of them died or hangs. Ending \
                     this process so that the launcher ends the run.",
                    waited.as_secs_f64()
                );
                // SAFETY: `_exit` ends the process at once without running atexit handlers or
                // destructors; the main thread is blocked inside MPI, so nothing of ours is
                // left half-written (checkpoints are written to a temporary folder and
                // renamed), and stderr is unbuffered.
                unsafe { libc::_exit(124) };
            }
        });
        Self { state: Some(state) }
    }

    pub(crate) fn enter(&self, what: &'static str) -> Waiting<'_> {
        if let Some(s) = &self.state {
            *s.what.lock().unwrap_or_else(|e| e.into_inner()) = what;
            let now = s.start.elapsed().as_millis() as u64;
            s.since_ms.store(now + 1, Ordering::SeqCst);
        }
        Waiting(self.state.as_deref())
    }
}
