//! `rl-darts dist`: the data-parallel engines, checked on the processes a launcher started.

use anyhow::bail;
use clap::{Args, Subcommand};
use rl_darts::distributed::selftest::{self, SelftestOptions};
use rl_darts::distributed::Backend;

#[derive(Subcommand, Debug)]
pub enum DistCommand {
    /// All-reduce of known tensors, broadcasts, and N processes on 1/N of a fixed batch each
    /// against one process on all of it (PPO in f64). Run it under the launcher:
    /// `mpirun -np 2 rl-darts dist selftest` (as root add --allow-run-as-root; on fewer cores
    /// than processes --oversubscribe), or `rl-darts dist selftest --backend nccl` on a GPU.
    Selftest(SelftestArgs),
}

#[derive(Args, Debug)]
pub struct SelftestArgs {
    /// mpi (CPU) or nccl (the GPU of each process's local rank).
    #[arg(long, default_value = "mpi")]
    backend: String,
    /// mpi only: where the N-process side of the PPO check runs (cpu, cuda, cuda:N); the
    /// one-process reference always runs on the CPU.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Seconds one process waits in a collective before it ends the run (0: forever).
    #[arg(long, default_value_t = 60.0)]
    timeout_s: f64,
    /// Test hook: this rank exits after the first collective, without finalising.
    #[arg(long, hide = true)]
    exit_rank: Option<usize>,
    /// Test hook: this rank hangs after the first collective.
    #[arg(long, hide = true)]
    stall_rank: Option<usize>,
}

pub fn run(cmd: DistCommand) -> anyhow::Result<()> {
    match cmd {
        DistCommand::Selftest(args) => {
            let backend = Backend::parse(&args.backend)?;
            if backend == Backend::None {
                bail!("the selftest checks an engine: --backend mpi or nccl");
            }
            let device = rl_darts::device::parse_device(&args.device)?;
            // Single-threaded libtorch: the equivalence is compared in f64 to 1e-9, and the
            // processes may share few cores.
            tch::set_num_threads(1);
            selftest::run(&SelftestOptions {
                backend,
                device,
                timeout_s: args.timeout_s,
                exit_rank: args.exit_rank,
                stall_rank: args.stall_rank,
            })?;
            Ok(())
        }
    }
}
