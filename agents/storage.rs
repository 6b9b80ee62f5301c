//! Rollout storage for `T` steps of `N` environments (CleanRL's `obs`, `actions`, `logprobs`,
//! `rewards`, `dones`, `values` buffers) and the flattened batch the PPO update samples from.

use tch::{Device, Kind, Tensor};

use super::gae::gae;
use super::AgentError;
use crate::envs::EnvSpec;

/// One rollout. Tensors live on the training device; observations keep the environment's kind
/// (u8 pixels: 4x less memory than floats, converted per minibatch). Rewards and `first` flags
/// are produced on the host one step at a time and stay there for GAE.
#[derive(Debug)]
pub struct RolloutStorage {
    pub num_steps: usize,
    pub num_envs: usize,
    /// `[T, N, ..obs_shape]` the observation each action was chosen from.
    pub obs: Tensor,
    /// `[T * N]` 1 where `obs[t, n]` starts an episode (CleanRL's `dones[t]`).
    pub firsts: Vec<u8>,
    /// `[T, N]` i64.
    pub actions: Tensor,
    /// `[T, N]` f32 log pi_old(action | obs).
    pub logprobs: Tensor,
    /// `[T, N]` f32 V_old(obs).
    pub values: Tensor,
    /// `[T * N]` the (normalised) reward that followed each action.
    pub rewards: Vec<f32>,
    /// `[N, ..obs_shape]` the observation after the last step (bootstraps GAE).
    pub next_obs: Tensor,
    /// `[N]` its `first` flags.
    pub next_first: Vec<u8>,
}

impl RolloutStorage {
    pub fn new(spec: &EnvSpec, num_steps: usize, device: Device) -> Result<Self, AgentError> {
        let (t, n) = (num_steps as i64, spec.num_envs as i64);
        if num_steps == 0 || spec.num_envs == 0 {
            return Err(AgentError::Config(format!(
                "rollout storage needs num_steps > 0 and num_envs > 0, got {num_steps} x {}",
                spec.num_envs
            )));
        }
        let obs_dims: Vec<i64> = [t, n].iter().chain(&spec.obs_shape).copied().collect();
        let next_dims: Vec<i64> = [n].iter().chain(&spec.obs_shape).copied().collect();
        Ok(Self {
            num_steps,
            num_envs: spec.num_envs,
            obs: Tensor::f_zeros(obs_dims.as_slice(), (spec.obs_kind, device))?,
            firsts: vec![0; num_steps * spec.num_envs],
            actions: Tensor::f_zeros([t, n], (Kind::Int64, device))?,
            logprobs: Tensor::f_zeros([t, n], (Kind::Float, device))?,
            values: Tensor::f_zeros([t, n], (Kind::Float, device))?,
            rewards: vec![0.0; num_steps * spec.num_envs],
            next_obs: Tensor::f_zeros(next_dims.as_slice(), (spec.obs_kind, device))?,
            next_first: vec![0; spec.num_envs],
        })
    }

    /// Number of transitions, `T * N`.
    pub fn len(&self) -> usize {
        self.num_steps * self.num_envs
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies an observation batch into step `t` (`t == T` means `next_obs`).
    ///
    /// On CUDA the host-to-device copy does not block: from pinned memory (see
    /// [`crate::envs::VecEnv::pin_observations`]) it is a DMA queued on the current stream, and
    /// everything that reads the step (the policy's forward, the update) is queued after it.
    /// The caller must not let `obs` be overwritten before the stream has passed the copy;
    /// [`super::collect_rollout`] reads the sampled actions back, which waits for the stream,
    /// before it steps the env again.
    pub fn set_obs(&mut self, t: usize, obs: &Tensor, first: &[u8]) -> Result<(), AgentError> {
        let n = self.num_envs;
        if first.len() != n {
            return Err(AgentError::Config(format!(
                "{} first flags for {n} envs",
                first.len()
            )));
        }
        let device = self.obs.device();
        // tch's copy_ always blocks on a host-to-device copy; `to` with non_blocking does not.
        // The device-to-device copy into the storage that follows is queued on the stream.
        let obs = if device.is_cuda() && obs.device() != device {
            obs.f_to_device_(device, obs.kind(), true, false)?
        } else {
            obs.shallow_clone()
        };
        if t == self.num_steps {
            self.next_obs.f_copy_(&obs)?;
            self.next_first.copy_from_slice(first);
        } else {
            self.obs.f_get(t as i64)?.f_copy_(&obs)?;
            self.firsts[t * n..(t + 1) * n].copy_from_slice(first);
        }
        Ok(())
    }

    /// GAE advantages and returns (`advantages + values`, the value target), then the whole
    /// rollout flattened to `[T * N]` on the storage's device.
    ///
    /// # Shapes
    /// next_value `[N]` -> a [`Batch`] of `B = T * N` transitions
    pub fn compute_batch(
        &self,
        next_value: &Tensor,
        gamma: f64,
        gae_lambda: f64,
    ) -> Result<Batch, AgentError> {
        let device = self.values.device();
        let values_host = Vec::<f32>::try_from(self.values.to_device(Device::Cpu).flatten(0, -1))?;
        let next_value_host =
            Vec::<f32>::try_from(next_value.to_device(Device::Cpu).to_kind(Kind::Float))?;
        if next_value_host.len() != self.num_envs {
            return Err(AgentError::Config(format!(
                "next_value has {} entries for {} envs",
                next_value_host.len(),
                self.num_envs
            )));
        }
        let advantages = gae(
            &self.rewards,
            &values_host,
            &self.firsts,
            &next_value_host,
            &self.next_first,
            self.num_envs,
            gamma,
            gae_lambda,
        );
        let advantages = Tensor::from_slice(&advantages).to_device(device); // [B]
        let values = self.values.flatten(0, 1); // [B]
        let returns = &advantages + &values;
        Ok(Batch {
            obs: self.obs.flatten(0, 1),
            actions: self.actions.flatten(0, 1),
            logprobs: self.logprobs.flatten(0, 1),
            values,
            advantages,
            returns,
        })
    }
}

/// Transitions flattened over time and envs, ready for minibatches.
#[derive(Debug)]
pub struct Batch {
    /// `[B, ..obs_shape]` as stored (u8 for images).
    pub obs: Tensor,
    /// `[B]` i64.
    pub actions: Tensor,
    /// `[B]` log pi_old.
    pub logprobs: Tensor,
    /// `[B]` V_old.
    pub values: Tensor,
    /// `[B]` GAE advantages (not normalised; the loss normalises per minibatch).
    pub advantages: Tensor,
    /// `[B]` value targets, `advantages + values`.
    pub returns: Tensor,
}

impl Batch {
    pub fn len(&self) -> i64 {
        self.actions.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `len` transitions from `start` (views, no copy).
    pub fn narrow(&self, start: i64, len: i64) -> Batch {
        Batch {
            obs: self.obs.narrow(0, start, len),
            actions: self.actions.narrow(0, start, len),
            logprobs: self.logprobs.narrow(0, start, len),
            values: self.values.narrow(0, start, len),
            advantages: self.advantages.narrow(0, start, len),
            returns: self.returns.narrow(0, start, len),
        }
    }

    /// The transitions at `indices` (`[M]` i64 on the batch's device).
    pub fn select(&self, indices: &Tensor) -> Batch {
        Batch {
            obs: self.obs.index_select(0, indices),
            actions: self.actions.index_select(0, indices),
            logprobs: self.logprobs.index_select(0, indices),
            values: self.values.index_select(0, indices),
            advantages: self.advantages.index_select(0, indices),
            returns: self.returns.index_select(0, indices),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattening_keeps_step_major_order_and_returns_add_values() {
        let spec = EnvSpec {
            name: "test".into(),
            num_envs: 2,
            obs_shape: vec![2, 2, 3],
            obs_kind: Kind::Uint8,
            num_actions: 3,
        };
        let mut s = RolloutStorage::new(&spec, 3, Device::Cpu).unwrap();
        for t in 0..=3 {
            let obs = Tensor::full([2, 2, 2, 3], t as i64, (Kind::Uint8, Device::Cpu));
            s.set_obs(t, &obs, &[u8::from(t == 0), 0]).unwrap();
        }
        s.values
            .copy_(&Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).reshape([3, 2]));
        s.rewards = vec![1.0; 6];
        let b = s
            .compute_batch(&Tensor::from_slice(&[0.0f32, 0.0]), 0.9, 0.95)
            .unwrap();
        assert_eq!(b.obs.size(), [6, 2, 2, 3]);
        assert_eq!(b.obs.kind(), Kind::Uint8);
        // Row t * N + n holds step t: rows 4 and 5 are step 2.
        assert_eq!(b.obs.int64_value(&[5, 0, 0, 0]), 2);
        assert_eq!(s.next_obs.int64_value(&[0, 0, 0, 0]), 3);
        assert!(b
            .returns
            .allclose(&(&b.advantages + &b.values), 1e-6, 1e-6, false));
        // Last step, env 1: delta = 1 + 0.9 * 0 - 6 = -5.
        assert!((b.advantages.double_value(&[5]) + 5.0).abs() < 1e-6);
        let sub = b.select(&Tensor::from_slice(&[5i64, 0]));
        assert_eq!(sub.values.size(), [2]);
        assert_eq!(sub.values.double_value(&[0]), 6.0);
    }
}
