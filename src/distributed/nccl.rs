//! The NCCL engine: gradients all-reduced on the GPU by NCCL (cudarc's binding, loading the
//! torch wheel's `libnccl.so.2` at run time), one GPU per process (the launcher's local rank).
//!
//! Rendezvous, two ways. Under an MPI launcher (`mpirun`, `srun --mpi=pmix`) MPI is
//! initialised first, rank 0 draws NCCL's unique id (`ncclGetUniqueId`) and the id reaches
//! every rank by an MPI broadcast; host-side values (the advantage statistics, checkpoints)
//! travel over MPI too. Under torchrun (`torchrun --no-python`) the ranks are torchrun's, the
//! id reaches every rank over TCP ([`super::rendezvous`]), and host-side values travel through
//! NCCL itself, copied to the GPU and back. Then `ncclCommInitRank`.
//!
//! cudarc looks for `libnccl.so` (not the wheel's `libnccl.so.2`) on the library search path:
//! `make setup` links `.deps/nccl/libnccl.so` to the wheel's library, and a run puts that
//! folder on `LD_LIBRARY_PATH` (the error below says so when it is missing).

use cudarc::nccl::{result as nccl, sys};
use tch::{Device, Kind, Tensor};

use std::time::Duration;

use super::mpi::MpiComm;
use super::rendezvous::{exchange_id, TorchrunEnv};
use super::{flatten_by_kind, unflatten_into, Backend, DistError};
use crate::agents::{AgentError, DataParallel};

pub struct NcclComm {
    comm: sys::ncclComm_t,
    device: Device,
    /// Declared after `comm`: the communicator is destroyed before MPI is finalised.
    host: Host,
}

/// Who numbers the processes and carries the host-side values.
enum Host {
    /// An MPI launcher started the processes: MPI.
    Mpi(MpiComm),
    /// torchrun started them: its rank and size; host values go through NCCL. No watchdog: a
    /// process that fails makes torchrun's agent end the others.
    Torchrun(TorchrunEnv),
}

impl Host {
    fn rank(&self) -> usize {
        match self {
            Host::Mpi(m) => m.rank_index(),
            Host::Torchrun(e) => e.rank,
        }
    }

    fn size(&self) -> usize {
        match self {
            Host::Mpi(m) => m.size(),
            Host::Torchrun(e) => e.world_size,
        }
    }

    fn local_rank(&self) -> usize {
        match self {
            Host::Mpi(m) => super::Communicator::local_rank(m),
            Host::Torchrun(e) => e.local_rank,
        }
    }
}

impl std::fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NcclComm(rank {} on {:?})",
            self.host.rank(),
            self.device
        )
    }
}

fn nccl_err(what: &str) -> impl FnOnce(nccl::NcclError) -> DistError + '_ {
    move |e| DistError::Nccl(format!("{what}: {e:?}"))
}

/// NCCL's element type for a tensor kind.
fn datatype(kind: Kind) -> Result<sys::ncclDataType_t, DistError> {
    Ok(match kind {
        Kind::Float => sys::ncclDataType_t::ncclFloat32,
        Kind::Double => sys::ncclDataType_t::ncclFloat64,
        Kind::Half => sys::ncclDataType_t::ncclFloat16,
        Kind::BFloat16 => sys::ncclDataType_t::ncclBfloat16,
        // Host values sent through NCCL (torchrun): lengths and bytes.
        Kind::Int64 => sys::ncclDataType_t::ncclInt64,
        Kind::Uint8 => sys::ncclDataType_t::ncclUint8,
        other => {
            return Err(DistError::Nccl(format!(
                "no NCCL reduction for tensors of kind {other:?}"
            )))
        }
    })
}

/// Where `make setup` links the wheel's NCCL under the name cudarc loads.
fn nccl_link_hint() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    format!(
        "cudarc loads libnccl.so from the library search path; the torch wheel's library is \
         linked there by `make setup`: run with LD_LIBRARY_PATH={}:$LD_LIBRARY_PATH (or \
         install NCCL's libnccl-dev)",
        root.join(".deps/nccl").display()
    )
}

impl NcclComm {
    /// The ranks and the unique id's exchange from the launcher (MPI, or torchrun's
    /// environment and [`super::rendezvous`]), then this process's GPU (its local rank), then
    /// the NCCL communicator.
    pub fn init(timeout_s: f64) -> Result<Self, DistError> {
        let host = match TorchrunEnv::from_env()? {
            Some(env) => Host::Torchrun(env),
            None => Host::Mpi(MpiComm::init(timeout_s)?),
        };
        if !tch::Cuda::is_available() {
            return Err(DistError::Config(
                "distributed.backend = \"nccl\" needs CUDA GPUs and none is usable here; \
                 use \"mpi\" on CPUs"
                    .into(),
            ));
        }
        let local = host.local_rank();
        let count = tch::Cuda::device_count() as usize;
        if local >= count {
            return Err(DistError::Launch(format!(
                "local rank {local} has no GPU of its own ({count} visible): start at most \
                 {count} processes per node"
            )));
        }
        // SAFETY: only asks whether the dynamic loader finds the library; nothing is called.
        if !unsafe { sys::is_culib_present() } {
            return Err(DistError::Nccl(nccl_link_hint()));
        }
        // NCCL binds its communicator to the calling thread's current device: make it this
        // process's GPU (the primary context is the one the CUDA runtime, and so libtorch,
        // uses for that device).
        set_current_device(local)?;

        let mut id_bytes = Vec::new();
        if host.rank() == 0 {
            let id = nccl::get_uniqueid().map_err(nccl_err("ncclGetUniqueId"))?;
            id_bytes = id.internal.iter().map(|&c| c as u8).collect();
        }
        match &host {
            Host::Mpi(mpi) => mpi.broadcast_bytes(&mut id_bytes),
            Host::Torchrun(env) => {
                let wait =
                    Duration::from_secs_f64(if timeout_s > 0.0 { timeout_s } else { 3600.0 });
                let own = (env.rank == 0).then_some(id_bytes.as_slice());
                id_bytes = exchange_id(env, own, wait)?;
            }
        }
        let mut id = sys::ncclUniqueId { internal: [0; 128] };
        if id_bytes.len() != id.internal.len() {
            return Err(DistError::Nccl(format!(
                "the unique id from rank 0 has {} bytes, not {}",
                id_bytes.len(),
                id.internal.len()
            )));
        }
        for (dst, &b) in id.internal.iter_mut().zip(&id_bytes) {
            *dst = b as std::ffi::c_char;
        }
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out-pointer; the id is the one every rank received; rank
        // and size are MPI's (checked against the launcher by `MpiComm::init`) or torchrun's.
        unsafe { nccl::comm_init_rank(&mut comm, host.size() as i32, id, host.rank() as i32) }
            .map_err(nccl_err("ncclCommInitRank"))?;
        Ok(Self {
            comm,
            device: Device::Cuda(local),
            host,
        })
    }

    /// The device every reduced tensor must live on.
    pub fn device(&self) -> Device {
        self.device
    }

    fn check_device(&self, t: &Tensor) -> Result<(), DistError> {
        if t.device() != self.device {
            return Err(DistError::Nccl(format!(
                "a tensor on {:?} given to the NCCL engine of {:?}",
                t.device(),
                self.device
            )));
        }
        Ok(())
    }
}

fn set_current_device(ordinal: usize) -> Result<(), DistError> {
    use cudarc::driver::result as cu;
    let err =
        |what: &'static str| move |e: cu::DriverError| DistError::Nccl(format!("{what}: {e:?}"));
    cu::init().map_err(err("cuInit"))?;
    let dev = cu::device::get(ordinal as i32).map_err(err("cuDeviceGet"))?;
    // SAFETY: `dev` is a valid device handle from cuDeviceGet; retaining its primary context
    // and making it current are the documented way to select a device with the driver API.
    unsafe {
        let ctx = cu::primary_ctx::retain(dev).map_err(err("cuDevicePrimaryCtxRetain"))?;
        cu::ctx::set_current(ctx).map_err(err("cuCtxSetCurrent"))?;
    }
    Ok(())
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // SAFETY: `comm` came from ncclCommInitRank and is destroyed once, here.
        let _ = unsafe { nccl::comm_destroy(self.comm) };
    }
}

impl NcclComm {
    /// In-place sum over the ranks of one contiguous CUDA tensor, on the legacy default stream
    /// (the one libtorch's kernels of this process run on, so the order is kept).
    fn sum_in_place(&self, flat: &Tensor) -> Result<(), DistError> {
        self.check_device(flat)?;
        let dt = datatype(flat.kind())?;
        let ptr = flat.data_ptr();
        // SAFETY: `flat` is a contiguous tensor of `numel` elements of type `dt` on this
        // communicator's device, alive until the call returns; NCCL reduces in place
        // (send == recv) on the default stream, ordered after the kernels that wrote it.
        unsafe {
            nccl::all_reduce(
                ptr,
                ptr,
                flat.numel(),
                dt,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                std::ptr::null_mut(),
            )
        }
        .map_err(nccl_err("ncclAllReduce"))?;
        Ok(())
    }
}

impl NcclComm {
    /// Rank 0's values of one contiguous tensor on this process's GPU, in place.
    fn broadcast_flat(&self, flat: &Tensor) -> Result<(), DistError> {
        self.check_device(flat)?;
        let dt = datatype(flat.kind())?;
        let ptr = flat.data_ptr();
        // SAFETY: as in `sum_in_place`; rank 0's buffer is the source, the others' are
        // overwritten in place.
        unsafe {
            nccl::broadcast(
                ptr,
                ptr,
                flat.numel(),
                dt,
                0,
                self.comm,
                std::ptr::null_mut(),
            )
        }
        .map_err(nccl_err("ncclBroadcast"))?;
        Ok(())
    }

    /// Every process's `bytes` on rank 0 through NCCL's all-gather (NCCL has no gather of
    /// varying lengths): the lengths first, then every process's bytes padded to the longest.
    fn gather_through_nccl(
        &self,
        bytes: &[u8],
        env: &TorchrunEnv,
    ) -> Result<Option<Vec<Vec<u8>>>, DistError> {
        let n = env.world_size;
        let lens = self.all_gather(&Tensor::from_slice(&[bytes.len() as i64]), n)?;
        let lens = Vec::<i64>::try_from(lens.f_to_device(Device::Cpu)?)?;
        let longest = lens.iter().copied().max().unwrap_or(0).max(1);
        let padded = Tensor::zeros([longest], (Kind::Uint8, Device::Cpu));
        if !bytes.is_empty() {
            padded
                .narrow(0, 0, bytes.len() as i64)
                .f_copy_(&Tensor::from_slice(bytes))?;
        }
        let all = self.all_gather(&padded, n)?.f_to_device(Device::Cpu)?;
        if env.rank != 0 {
            return Ok(None);
        }
        let all = Vec::<u8>::try_from(all)?;
        Ok(Some(
            lens.iter()
                .enumerate()
                .map(|(r, &len)| {
                    let start = r * longest as usize;
                    all[start..start + len as usize].to_vec()
                })
                .collect(),
        ))
    }

    /// The `n` processes' `host` tensors (equal shapes) concatenated in rank order, on the GPU.
    fn all_gather(&self, host: &Tensor, n: usize) -> Result<Tensor, DistError> {
        let send = host.f_to_device(self.device)?.f_contiguous()?;
        let recv = Tensor::f_zeros([send.numel() as i64 * n as i64], (send.kind(), self.device))?;
        let dt = datatype(send.kind())?;
        // SAFETY: `send` holds `numel` elements and `recv` `n * numel` of type `dt`, both
        // contiguous on this communicator's device and alive until the call returns; the call
        // runs on the default stream after the copies that filled them.
        unsafe {
            nccl::all_gather(
                send.data_ptr(),
                recv.data_ptr(),
                send.numel(),
                dt,
                self.comm,
                std::ptr::null_mut(),
            )
        }
        .map_err(nccl_err("ncclAllGather"))?;
        Ok(recv)
    }
}

impl DataParallel for NcclComm {
    fn world_size(&self) -> usize {
        self.host.size()
    }

    fn all_reduce_mean(&self, tensors: &[Tensor]) -> Result<(), AgentError> {
        for (_, flat, members) in flatten_by_kind(tensors) {
            self.sum_in_place(&flat)?;
            let mean = flat.f_div_scalar(self.host.size() as f64)?;
            unflatten_into(&mean, &members, tensors)?;
        }
        Ok(())
    }

    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<(), AgentError> {
        match &self.host {
            Host::Mpi(mpi) => mpi.all_reduce_sum(values),
            Host::Torchrun(_) => {
                let t = Tensor::from_slice(values).f_to_device(self.device)?;
                self.sum_in_place(&t)?;
                let summed = Vec::<f64>::try_from(t.f_to_device(Device::Cpu)?)?;
                values.copy_from_slice(&summed);
            }
        }
        Ok(())
    }
}

impl super::Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.host.rank()
    }

    fn local_rank(&self) -> usize {
        self.host.local_rank()
    }

    fn backend(&self) -> Backend {
        Backend::Nccl
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<(), DistError> {
        match &self.host {
            Host::Mpi(mpi) => mpi.broadcast_bytes(bytes),
            Host::Torchrun(_) => {
                let len = Tensor::from_slice(&[bytes.len() as i64]).f_to_device(self.device)?;
                self.broadcast_flat(&len)?;
                bytes.resize(len.f_int64_value(&[0])? as usize, 0);
                if !bytes.is_empty() {
                    let data = Tensor::from_slice(bytes.as_slice()).f_to_device(self.device)?;
                    self.broadcast_flat(&data)?;
                    let n = bytes.len();
                    data.f_to_device(Device::Cpu)?.f_copy_data(bytes, n)?;
                }
            }
        }
        Ok(())
    }

    fn gather_bytes(&self, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>, DistError> {
        match &self.host {
            Host::Mpi(mpi) => mpi.gather_bytes(bytes),
            Host::Torchrun(env) => self.gather_through_nccl(bytes, env),
        }
    }

    fn broadcast_tensors(&self, tensors: &[Tensor]) -> Result<(), DistError> {
        for (_, flat, members) in flatten_by_kind(tensors) {
            self.broadcast_flat(&flat)?;
            unflatten_into(&flat, &members, tensors)?;
        }
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        // SAFETY: aborting a live communicator frees it; the process ends right after.
        let _ = unsafe { nccl::comm_abort(self.comm) };
        match &self.host {
            Host::Mpi(mpi) => mpi.abort(code),
            // torchrun's agent sees the failed process and ends the others.
            Host::Torchrun(_) => std::process::exit(code),
        }
    }
}
