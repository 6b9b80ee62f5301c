//! The PPO run's precision and layout (the `precision` and `layout` keys): resolved once
//! before the first iteration, from the device and a short timed probe of the run's own
//! update pass ([`crate::precision::resolve`]), printed, and recorded in the run directory
//! (`compute.json`, and the resolved values in `config.toml`) so that `--resume` reuses it.

use std::time::Instant;

use tch::{Kind, Tensor};

use super::driver::Driver;
use super::TrainConfig;
use crate::agents::{ppo_loss, Batch, Compute, PpoTrainer};
use crate::precision::{policy_for_run, ComputePolicy};
use crate::train::run_dir::RunDir;
use crate::train::TrainError;

/// Frames per probe pass: enough for the convolutions to run at their steady-state speed
/// (at 256 frames a loaded 2-core AMD EPYC ranked bf16 NCHW above bf16 channels-last, the
/// reverse of the 2048-frame minibatch's order), few enough that the probe takes seconds
/// (4 settings x 4 passes of 512 frames of the IMPALA-CNN: about 15 s on 2 cores).
const PROBE_FRAMES: i64 = 512;

/// The policy of this run (see the module docs). `config` is the whole run's (what is
/// recorded); `writer`: this process records it. The processes of a data-parallel run do not
/// probe (their timings could disagree): they follow the device rule, the same on each.
pub(super) fn choose_compute<D: Driver>(
    trainer: &mut PpoTrainer<D::Arch>,
    driver: &mut D,
    config: &TrainConfig,
    run_dir: &RunDir,
    resume: bool,
    writer: bool,
    data_parallel: bool,
) -> Result<ComputePolicy, TrainError> {
    let device = trainer.policy.device();
    let obs = trainer.storage.obs.flatten(0, 1);
    let n = PROBE_FRAMES
        .min(config.ppo.minibatch_size() as i64)
        .min(obs.size()[0]);
    let f32s = (Kind::Float, device);
    let batch = Batch {
        obs: obs.narrow(0, 0, n),
        actions: Tensor::zeros([n], (Kind::Int64, device)),
        logprobs: Tensor::zeros([n], f32s),
        values: Tensor::zeros([n], f32s),
        advantages: Tensor::ones([n], f32s),
        returns: Tensor::zeros([n], f32s),
    };
    let mut probe = |compute: Compute| -> Result<f64, String> {
        let arch = driver.probe_arch().map_err(|e| e.to_string())?;
        let _scope = crate::agents::compute::enter(compute);
        let start = Instant::now();
        let new = trainer.policy.evaluate(&batch.obs, &batch.actions, &arch);
        ppo_loss(&new, &batch, &config.ppo)
            .loss
            .f_backward()
            .map_err(|e| e.to_string())?;
        Ok(start.elapsed().as_secs_f64())
    };
    let policy = policy_for_run(
        config.precision,
        config.layout,
        device,
        &run_dir.root,
        resume,
        writer,
        (!data_parallel).then_some(&mut probe as &mut crate::precision::Probe<'_>),
    )?;
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
