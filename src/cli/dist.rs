//! `rl-darts dist`: the data-parallel engines, checked on the processes a launcher started.

use anyhow::bail;
use clap::{Args, Subcommand};
use rl_darts::distributed::selftest::{self, SelftestOptions};
use std::time::Duration;

use rl_darts::distributed::rendezvous::{exchange_id, TorchrunEnv};
use rl_darts::distributed::{Backend, DistributedConfig};
use rl_darts::train::rl::parallel_check;

#[derive(Subcommand, Debug)]
pub enum DistCommand {
    /// All-reduce of known tensors, broadcasts, and N processes on 1/N of a fixed batch each
    /// against one process on all of it (PPO in f64). Run it under the launcher:
    /// `mpirun -np 2 rl-darts dist selftest` (as root add --allow-run-as-root; on fewer cores
    /// than processes --oversubscribe), or `rl-darts dist selftest --backend nccl` on a GPU.
    Selftest(SelftestArgs),
    /// torchrun's rendezvous alone (no GPU needed): rank 0 draws a random 128-byte id, as NCCL's
    /// unique id, and every process prints the id it received over the rendezvous. Run it
    /// under torchrun: `torchrun --no-python --nproc-per-node 2 rl-darts dist rendezvous`.
    Rendezvous {
        /// Seconds to wait for the other processes.
        #[arg(long, default_value_t = 60.0)]
        timeout_s: f64,
    },
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

/// The bilevel strategies' alpha steps on N processes against one (f64, CPU; see
/// `train::rl::parallel_check`), on the engine the selftest started.
fn bilevel(timeout_s: f64) -> anyhow::Result<()> {
    let config = DistributedConfig {
        backend: Backend::Mpi,
        timeout_s,
    };
    let Some(comm) = rl_darts::distributed::world(&config)? else {
        bail!("the MPI engine is not running");
    };
    let (rank, n) = (comm.rank(), comm.world_size());
    let gaps = parallel_check::bilevel_equivalence(&*comm, rank)?;
    let mut failed = Vec::new();
    for g in &gaps {
        if rank == 0 {
            println!(
                "bilevel equivalence, {}: max |alpha_N - alpha_1| = {:.3e} (tolerance {:.0e}); \
                 without averaging: {:.3e}",
                g.strategy,
                g.gap,
                parallel_check::TOLERANCE,
                g.control_gap
            );
        }
        if g.gap > parallel_check::TOLERANCE {
            failed.push(format!(
                "{}: the alphas differ by {:.3e}",
                g.strategy, g.gap
            ));
        }
        // With one process there is nothing to leave out.
        if n > 1 && g.control_gap <= 1e3 * parallel_check::TOLERANCE {
            failed.push(format!(
                "{}: without averaging the alphas differ by only {:.3e}: the check cannot tell",
                g.strategy, g.control_gap
            ));
        }
    }
    if !failed.is_empty() {
        bail!("selftest failed: {}", failed.join("; "));
    }
    if rank == 0 {
        println!("bilevel selftest: ok");
    }
    Ok(())
}

fn rendezvous(timeout_s: f64) -> anyhow::Result<()> {
    let Some(env) = TorchrunEnv::from_env()? else {
        bail!(
            "not started by torchrun: RANK and WORLD_SIZE are unset (run it under `torchrun \
             --no-python --nproc-per-node N`)"
        );
    };
    let drawn: Vec<u8> = (0..128).map(|_| rand::random::<u8>()).collect();
    let own = (env.rank == 0).then_some(drawn.as_slice());
    let id = exchange_id(&env, own, Duration::from_secs_f64(timeout_s.max(1.0)))?;
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    println!(
        "rendezvous: rank {} of {} (local rank {}), id {hex}",
        env.rank, env.world_size, env.local_rank
    );
    Ok(())
}

pub fn run(cmd: DistCommand) -> anyhow::Result<()> {
    match cmd {
        DistCommand::Rendezvous { timeout_s } => rendezvous(timeout_s),
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
            if backend == Backend::Mpi {
                bilevel(args.timeout_s)?;
            }
            Ok(())
        }
    }
}
