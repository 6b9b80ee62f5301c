//! The PPO run's precision and layout (the `precision` and `layout` keys): resolved once
//! before the first iteration, from the device and a short timed probe of the run's own
//! update pass ([`crate::precision::resolve`]), printed, and recorded in the run directory
//! (`compute.json`, and the resolved values in `config.toml`) so that `--resume` reuses it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tch::{Kind, Tensor};

use super::driver::Driver;
use super::TrainConfig;
use crate::agents::{ppo_loss, Batch, Compute, PpoTrainer};
use crate::precision::{policy_for_run, ComputePolicy};
use crate::train::run_dir::RunDir;
use crate::train::TrainError;

/// Most frames per probe pass: enough for the convolutions to run at their steady-state
/// speed (at 256 frames a loaded 2-core AMD EPYC ranked bf16 NCHW above bf16 channels-last,
/// the reverse of the 2048-frame minibatch's order).
const PROBE_MAX_FRAMES: i64 = 512;

/// Fewest frames per probe pass.
const PROBE_MIN_FRAMES: i64 = 32;

/// Seconds one probe pass should take: the frames per pass are sized from a first fp32 pass
/// on [`PROBE_MIN_FRAMES`] frames so that the whole probe (4 settings x (1 + 3) passes) takes
/// about 15 s whatever the network. 512 frames of the IMPALA-CNN take about this long on 2
/// cores; the paper-size supernet gets fewer frames.
const PROBE_SECONDS_PER_PASS: f64 = 1.0;

/// What the probe closure returns when Ctrl-C / SIGTERM arrived during the probe.
const PROBE_INTERRUPTED: &str = "interrupted";

/// The policy of this run (see the module docs). `config` is the whole run's (what is
/// recorded); `writer`: this process records it. The processes of a data-parallel run do not
/// probe (their timings could disagree): they follow the device rule, the same on each.
/// `stop` (Ctrl-C / SIGTERM) ends the probe early: the run then starts under the device rule
/// without recording it (a resume probes again) and stops at its first env step.
#[allow(clippy::too_many_arguments)]
pub(super) fn choose_compute<D: Driver>(
    trainer: &mut PpoTrainer<D::Arch>,
    driver: &mut D,
    config: &TrainConfig,
    run_dir: &RunDir,
    resume: bool,
    writer: bool,
    data_parallel: bool,
    stop: &AtomicBool,
) -> Result<ComputePolicy, TrainError> {
    let device = trainer.policy.device();
    let obs = trainer.storage.obs.flatten(0, 1);
    let most = PROBE_MAX_FRAMES
        .min(config.ppo.minibatch_size() as i64)
        .min(obs.size()[0]);
    let f32s = (Kind::Float, device);
    let batch_of = |n: i64| Batch {
        obs: obs.narrow(0, 0, n),
        actions: Tensor::zeros([n], (Kind::Int64, device)),
        logprobs: Tensor::zeros([n], f32s),
        values: Tensor::zeros([n], f32s),
        advantages: Tensor::ones([n], f32s),
        returns: Tensor::zeros([n], f32s),
    };
    let mut pass = |compute: Compute, batch: &Batch| -> Result<f64, String> {
        if stop.load(Ordering::Relaxed) {
            return Err(PROBE_INTERRUPTED.to_string());
        }
        let arch = driver.probe_arch().map_err(|e| e.to_string())?;
        let _scope = crate::agents::compute::enter(compute);
        let start = Instant::now();
        let new = trainer.policy.evaluate(&batch.obs, &batch.actions, &arch);
        ppo_loss(&new, batch, &config.ppo)
            .loss
            .f_backward()
            .map_err(|e| e.to_string())?;
        Ok(start.elapsed().as_secs_f64())
    };
    // Sized on the first call, i.e. only when `policy_for_run` does probe: one fp32 pass on
    // a few frames (its first-call overheads make the estimate err towards fewer frames)
    // gives the frames per pass.
    let mut sized: Option<Batch> = None;
    let mut probe = |compute: Compute| -> Result<f64, String> {
        let batch = match sized {
            Some(ref batch) => batch,
            None => {
                let few = PROBE_MIN_FRAMES.min(most);
                let per_frame = pass(Compute::DEFAULT, &batch_of(few))? / few as f64;
                let n = ((PROBE_SECONDS_PER_PASS / per_frame.max(1e-9)) as i64).clamp(few, most);
                eprintln!(
                    "compute: timing the precision and layout settings on {n} frames (about \
                     {:.0} s; set `precision` and `layout` to skip this)",
                    16.0 * per_frame * n as f64
                );
                sized.insert(batch_of(n))
            }
        };
        pass(compute, batch)
    };
    let chosen = policy_for_run(
        config.precision,
        config.layout,
        device,
        &run_dir.root,
        resume,
        writer,
        (!data_parallel).then_some(&mut probe as &mut crate::precision::Probe<'_>),
    );
    let (policy, writer) = match chosen {
        Ok(policy) => (policy, writer),
        Err(_) if stop.load(Ordering::Relaxed) => {
            // Stopping: the loop ends at its first env step. Nothing is recorded, so that a
            // resume (or a rerun) probes in full.
            eprintln!("compute: probe interrupted; the device rule stands for now (not recorded)");
            let policy = policy_for_run(
                config.precision,
                config.layout,
                device,
                &run_dir.root,
                resume,
                false,
                None,
            )?;
            (policy, false)
        }
        Err(e) => return Err(e.into()),
    };
    // The probe's gradients are nobody's.
    trainer.optimizer.zero_grad();
    for alpha in driver.shared_parameters() {
        let mut g = alpha.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    if writer {
        let resolved = TrainConfig {
            precision: policy.precision.into(),
            layout: policy.layout.into(),
            ..config.clone()
        };
        crate::config::save_resolved_config(&resolved, &run_dir.root)?;
    }
    Ok(policy)
}
