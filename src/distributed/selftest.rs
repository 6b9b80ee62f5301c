//! `rl-darts dist selftest`: checks an engine end to end on the processes a launcher started
//! (`mpirun -np 2 rl-darts dist selftest --backend mpi`; the GPU check runs it with
//! `--backend nccl` on one GPU). Every process runs the same checks:
//! 1. all-reduce of known tensors (odd lengths, f32 and f64 in one call) and of host values;
//! 2. broadcasts from rank 0 (bytes of an odd length, tensors);
//! 3. PPO equivalence: N processes, each given 1/N of one fixed batch, against one process
//!    on the whole batch (computed by every process itself, on the CPU), after several Adam
//!    steps of [`ppo_update`] in f64 on an MLP (no batch statistics), with the gradient clip
//!    active and advantages normalised over the whole minibatch. Without the all-reduce the
//!    same run must differ, or the comparison could not tell.
//!
//! `exit_rank` / `stall_rank` make one process die or hang after the first collective: the
//! others must then end with an error (the launcher's abort, or the watchdog) instead of
//! waiting forever (tests/distributed_mpi.rs).

use std::rc::Rc;

use tch::{nn, Device, Kind, Tensor};

use super::{Backend, Communicator, DistError, DistributedConfig};
use crate::agents::{
    ActorCritic, Adam, AdamConfig, AgentError, Batch, DataParallel, FixedArch, Mlp, MlpConfig,
    NoHeartbeat, PpoConfig, UpdateDriver,
};

/// What to check and how (the CLI's flags).
#[derive(Debug, Clone)]
pub struct SelftestOptions {
    pub backend: Backend,
    /// Where the distributed side of the PPO check runs (the reference runs on the CPU).
    pub device: Device,
    pub timeout_s: f64,
    /// This rank exits (code 3, without finalising) after the first collective.
    pub exit_rank: Option<usize>,
    /// This rank sleeps forever after the first collective.
    pub stall_rank: Option<usize>,
}

/// The equivalence check's result on this process.
#[derive(Debug, Clone, Copy)]
pub struct Equivalence {
    pub world_size: usize,
    pub steps: usize,
    /// Largest |w_N - w_1| over every weight, on any process.
    pub max_gap: f64,
    /// The same with the all-reduce left out (must be large).
    pub control_gap: f64,
    pub tolerance: f64,
}

/// Samples in the fixed batch of the equivalence check: divisible by 1..=8 processes.
const BATCH: i64 = 840;
const UPDATES: usize = 4;

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), DistError> {
    if ok {
        Ok(())
    } else {
        Err(DistError::Config(format!("selftest failed: {}", what())))
    }
}

fn agent(e: AgentError) -> DistError {
    DistError::Config(e.to_string())
}

/// Runs every check; prints one line per check on rank 0.
pub fn run(opts: &SelftestOptions) -> Result<Equivalence, DistError> {
    let config = DistributedConfig {
        backend: opts.backend,
        timeout_s: opts.timeout_s,
    };
    // The process's engine (started once): the CLI runs the bilevel check on it afterwards.
    let comm: Rc<dyn Communicator> = super::world(&config)?.ok_or_else(|| {
        DistError::Config("the selftest needs a backend: --backend mpi or nccl".into())
    })?;
    match checks(&*comm, opts) {
        Ok(eq) => Ok(eq),
        Err(e) if comm.world_size() > 1 => {
            // The others would wait for this process in their next collective.
            eprintln!("error: rank {}: {e}", comm.rank());
            comm.abort(1)
        }
        Err(e) => Err(e),
    }
}

fn checks(comm: &dyn Communicator, opts: &SelftestOptions) -> Result<Equivalence, DistError> {
    let (rank, n) = (comm.rank(), comm.world_size());
    // NCCL reduces on the GPU of this process's local rank.
    let device = match opts.backend {
        Backend::Nccl => Device::Cuda(comm.local_rank()),
        _ => opts.device,
    };
    let say = |line: String| {
        if rank == 0 {
            println!("{line}");
        }
    };
    say(format!(
        "{n} process{}, backend {}, device {:?}",
        if n == 1 { "" } else { "es" },
        opts.backend.name(),
        device
    ));

    let lengths = all_reduce_known(comm, device)?;
    say(format!(
        "all-reduce: ok (lengths {lengths:?}, f32 and f64 in one call; host sums)"
    ));

    if opts.exit_rank == Some(rank) {
        eprintln!("rank {rank}: exiting on purpose (--exit-rank), without finalising");
        std::process::exit(3);
    }
    if opts.stall_rank == Some(rank) {
        eprintln!("rank {rank}: hanging on purpose (--stall-rank)");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }

    broadcasts(comm, device)?;
    say("broadcast: ok (bytes of an odd length, tensors)".into());

    let eq = equivalence(comm, device)?;
    say(format!(
        "ppo equivalence: {n} process{} x {} samples vs 1 process x {BATCH}, {} Adam steps, f64: \
         max |w_N - w_1| = {:.3e} (tolerance {:.0e}); without the all-reduce: {:.3e}",
        if n == 1 { "" } else { "es" },
        BATCH / n as i64,
        eq.steps,
        eq.max_gap,
        eq.tolerance,
        eq.control_gap
    ));
    check(eq.max_gap <= eq.tolerance, || {
        format!(
            "the weights of {n} processes differ from one process's by {:.3e} (> {:.0e})",
            eq.max_gap, eq.tolerance
        )
    })?;
    // With one process there is nothing to leave out (the GPU check's world of one compares
    // the device with the CPU path).
    check(n == 1 || eq.control_gap > 1e3 * eq.tolerance, || {
        format!(
            "without the all-reduce the weights differ by only {:.3e}: the check cannot tell",
            eq.control_gap
        )
    })?;
    say("selftest: ok".into());
    Ok(eq)
}

/// Rank r's value at index i of a test tensor; small halves, so that sums are exact.
fn known(rank: usize, i: i64) -> f64 {
    (rank as f64 + 1.0) * ((i % 17) as f64 - 8.0) + 0.5 * rank as f64
}

fn all_reduce_known(comm: &dyn Communicator, device: Device) -> Result<Vec<i64>, DistError> {
    let (rank, n) = (comm.rank(), comm.world_size());
    let lengths = vec![1i64, 3, 7, 1001, 4, 65537];
    let kinds = [Kind::Float, Kind::Double];
    let mut tensors = Vec::new();
    for (j, &len) in lengths.iter().enumerate() {
        let values: Vec<f64> = (0..len).map(|i| known(rank, i + j as i64)).collect();
        let kind = kinds[j % 2];
        tensors.push(
            Tensor::from_slice(&values)
                .to_kind(kind)
                .to_device(device)
                .reshape(if len % 2 == 1 {
                    vec![len]
                } else {
                    vec![2, len / 2]
                }),
        );
    }
    comm.all_reduce_mean(&tensors)
        .map_err(|e| DistError::Config(e.to_string()))?;
    for (j, (t, &len)) in tensors.iter().zip(&lengths).enumerate() {
        check(
            t.kind() == kinds[j % 2] && t.numel() == len as usize,
            || format!("tensor {j} came back as {:?} x {}", t.kind(), t.numel()),
        )?;
        let got =
            Vec::<f64>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Double).reshape([-1]))
                .map_err(DistError::Tch)?;
        for (i, g) in got.iter().enumerate() {
            let want = (0..n).map(|r| known(r, i as i64 + j as i64)).sum::<f64>() / n as f64;
            // f32 rounds the mean of halves when N is not a power of two.
            check((g - want).abs() <= 1e-6 * want.abs().max(1.0), || {
                format!("all-reduce of tensor {j} (length {len}): element {i} is {g}, want {want}")
            })?;
        }
    }
    let mut host = [rank as f64 + 1.0, 1.0, -0.25];
    comm.all_reduce_sum(&mut host)
        .map_err(|e| DistError::Config(e.to_string()))?;
    let want = [(n * (n + 1)) as f64 / 2.0, n as f64, -0.25 * n as f64];
    check(host == want, || {
        format!("host all-reduce gave {host:?}, want {want:?}")
    })?;
    Ok(lengths)
}

fn broadcasts(comm: &dyn Communicator, device: Device) -> Result<(), DistError> {
    let rank = comm.rank();
    let pattern: Vec<u8> = (0..100_003u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut bytes = if rank == 0 {
        pattern.clone()
    } else {
        vec![9; 5]
    };
    comm.broadcast_bytes(&mut bytes)?;
    check(bytes == pattern, || {
        format!("rank {rank} received {} bytes, not rank 0's", bytes.len())
    })?;
    let source = Tensor::arange(11, (Kind::Double, device)) * 0.5 - 1.0;
    let t = if rank == 0 {
        source.copy()
    } else {
        Tensor::zeros([11], (Kind::Double, device))
    };
    comm.broadcast_tensors(std::slice::from_ref(&t))?;
    let gap = (&t - &source).abs().max().double_value(&[]);
    check(gap == 0.0, || {
        format!("rank {rank}: broadcast tensor off by {gap}")
    })
}

/// A small f64 actor-critic (an MLP: no batch statistics), its Adam, and one fixed batch,
/// built the same way on every process (libtorch's generator seeded, on the CPU).
fn setup() -> Result<(nn::VarStore, ActorCritic, Batch), DistError> {
    tch::manual_seed(17);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let enc = Mlp::new(vs.root() / "encoder", &[4], &MlpConfig::default()).map_err(agent)?;
    let policy = ActorCritic::new(vs.root() / "policy", Box::new(enc), 3);
    vs.double();
    let f64s = (Kind::Double, Device::Cpu);
    let obs = Tensor::randn([BATCH, 4], f64s);
    let act = tch::no_grad(|| policy.act(&obs, &()));
    let batch = Batch {
        obs,
        actions: act.action,
        logprobs: act.logprob + Tensor::randn([BATCH], f64s) * 0.1,
        values: act.value.shallow_clone(),
        // Skewed, so that each process's half has other statistics than the whole.
        advantages: Tensor::randn([BATCH], f64s) * 3.0 + Tensor::linspace(-2.0, 4.0, BATCH, f64s),
        returns: act.value + Tensor::randn([BATCH], f64s),
    };
    Ok((vs, policy, batch))
}

fn batch_to(batch: &Batch, device: Device) -> Batch {
    Batch {
        obs: batch.obs.to_device(device),
        actions: batch.actions.to_device(device),
        logprobs: batch.logprobs.to_device(device),
        values: batch.values.to_device(device),
        advantages: batch.advantages.to_device(device),
        returns: batch.returns.to_device(device),
    }
}

/// The weights (sorted by name, on the CPU) after [`UPDATES`] updates of `batch` on `device`.
fn train(
    device: Device,
    part: Option<(usize, usize)>,
    dp: Option<&dyn DataParallel>,
) -> Result<(Vec<Tensor>, usize), DistError> {
    let (mut vs, policy, batch) = setup()?;
    vs.set_device(device);
    let batch = batch_to(&batch, device);
    let batch = match part {
        Some((rank, n)) => {
            let share = BATCH / n as i64;
            batch.narrow(rank as i64 * share, share)
        }
        None => batch,
    };
    let mut opt = Adam::new(
        &vs,
        AdamConfig {
            lr: 1e-2,
            eps: 1e-5,
            ..Default::default()
        },
    );
    // One minibatch per epoch: with several, each process shuffles its own share, so a global
    // minibatch is a different sample than one process's shuffle of the whole batch would be.
    let config = PpoConfig {
        num_envs: 8,
        num_steps: 8,
        num_minibatches: 1,
        update_epochs: 2,
        // Small, so that the clip acts (at 0.5 no step of this network was clipped).
        max_grad_norm: 0.02,
        target_kl: None,
        ..PpoConfig::default()
    };
    let mut rng: rand_chacha::ChaCha8Rng = rand::SeedableRng::seed_from_u64(3);
    let mut steps = 0;
    let mut clipped = 0;
    for _ in 0..UPDATES {
        let driver = UpdateDriver {
            arch: &mut FixedArch,
            micro_batch: None,
            progress: &mut NoHeartbeat,
            data_parallel: dp,
            loss_scale: None,
        };
        let stats = crate::agents::ppo_update(&policy, &mut opt, driver, &batch, &config, &mut rng)
            .map_err(agent)?;
        steps += stats.minibatches;
        clipped += usize::from(stats.grad_norm > config.max_grad_norm);
    }
    // The clip must act, or the all-reduce could come after it unnoticed.
    check(clipped > 0, || "no update clipped its gradient".into())?;
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((
        named
            .into_iter()
            .map(|(_, t)| t.to_device(Device::Cpu))
            .collect(),
        steps,
    ))
}

fn max_gap(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

fn equivalence(comm: &dyn Communicator, device: Device) -> Result<Equivalence, DistError> {
    let (rank, n) = (comm.rank(), comm.world_size());
    if BATCH % n as i64 != 0 {
        return Err(DistError::Config(format!(
            "the selftest's batch of {BATCH} does not split over {n} processes"
        )));
    }
    let (reference, steps) = train(Device::Cpu, None, None)?;
    let (shared, _) = train(device, Some((rank, n)), Some(comm))?;
    let (alone, _) = train(device, Some((rank, n)), None)?;
    // Every process's gaps, so that rank 0 reports the worst.
    let mut gaps = vec![0.0; 2 * n];
    gaps[rank] = max_gap(&shared, &reference);
    gaps[n + rank] = max_gap(&alone, &reference);
    comm.all_reduce_sum(&mut gaps)
        .map_err(|e| DistError::Config(e.to_string()))?;
    let max_gap = gaps[..n].iter().copied().fold(0.0, f64::max);
    let control_gap = gaps[n..].iter().copied().fold(f64::INFINITY, f64::min);
    let tolerance = if device == Device::Cpu { 1e-9 } else { 1e-7 };
    Ok(Equivalence {
        world_size: n,
        steps,
        max_gap,
        control_gap,
        tolerance,
    })
}
