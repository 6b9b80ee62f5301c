//! The encoder's architecture during one PPO iteration, as the trainer sees it.
//!
//! A fixed network (IMPALA-CNN, MLP, a derived cell) has one architecture, `()`. A searched
//! supernet's architecture is data the search side owns: its op weights, computed from the
//! architecture parameters and, for a stochastic strategy, from the sample it drew for this
//! iteration. The trainer never sees how; it asks an [`IterationArch`] for
//! - the architecture that *acts* in the rollout ([`IterationArch::acting`]), and
//! - the architecture that *learns* in each minibatch of the update
//!   ([`IterationArch::learning`]): the same architecture, recomputed from the current
//!   parameters, with whatever graph they learn through.
//!
//! Because both come from the same object for the same iteration, the network whose
//! probability ratio PPO clips is the network that produced the rollout's actions (before the
//! first gradient step the ratio is exactly 1).

use super::AgentError;

/// What one minibatch's weight step did, for an architecture that reacts to it (single-level
/// search strategies step their parameters here; DARTS-PRIME schedules from the norm).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightStep {
    /// The minibatch's PPO loss before the step.
    pub loss: f64,
    /// Global L2 norm of the weights' gradient, before clipping.
    pub grad_norm: f64,
    /// The weights' learning rate of this step.
    pub lr: f64,
}

/// The architecture of one PPO iteration (see the module docs).
pub trait IterationArch<A> {
    /// What the rollout's forwards run with (no gradients are taken through it).
    fn acting(&mut self) -> Result<A, AgentError>;

    /// Start of one minibatch of the update: the architecture's gradients start from zero
    /// (they accumulate over the minibatch's backward passes).
    fn begin_minibatch(&mut self) -> Result<(), AgentError>;

    /// What a forward of the update runs with: the architecture that acted, recomputed from
    /// the current parameters, with the graph through which they learn from the PPO loss if
    /// they do. Call it for every forward (a backward consumes the graph); calls within one
    /// minibatch return the same architecture.
    fn learning(&mut self) -> Result<A, AgentError>;

    /// After the weights' optimizer stepped on one minibatch.
    fn after_weight_step(&mut self, step: &WeightStep) -> Result<(), AgentError>;

    /// The architecture parameters that learn from the update's backward pass (a single-level
    /// strategy's alphas, stepped in [`IterationArch::after_weight_step`]): a data-parallel
    /// update all-reduces their gradients with the weights'. None by default.
    fn gradients(&self) -> Vec<tch::Tensor> {
        Vec::new()
    }
}

/// Which part of an iteration a [`Heartbeat`] hears from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IterationPhase {
    /// Env steps of the rollout (`done` of `num_steps`).
    Rollout,
    /// Env steps of a search's extra rollout (a bilevel strategy's validation data).
    SearchRollout,
    /// Minibatches of the PPO update (`done` of `update_epochs * num_minibatches`).
    Update,
}

/// Hears of an iteration's progress while it runs (after every env step of the rollout and
/// every minibatch of the update), and may stop it: a paper-size iteration takes minutes, and
/// Ctrl-C or a scheduler's SIGTERM must not wait for its end.
pub trait Heartbeat {
    /// `done` of `total` units of `phase` are finished. Returning `false` abandons the
    /// iteration ([`AgentError::Interrupted`]); the trainer is then between two consistent
    /// states only at its last checkpoint.
    fn beat(&mut self, phase: IterationPhase, done: usize, total: usize) -> bool;
}

/// Reports nothing, never stops.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHeartbeat;

impl Heartbeat for NoHeartbeat {
    fn beat(&mut self, _phase: IterationPhase, _done: usize, _total: usize) -> bool {
        true
    }
}

/// The one architecture of a fixed network.
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedArch;

impl IterationArch<()> for FixedArch {
    fn acting(&mut self) -> Result<(), AgentError> {
        Ok(())
    }

    fn begin_minibatch(&mut self) -> Result<(), AgentError> {
        Ok(())
    }

    fn learning(&mut self) -> Result<(), AgentError> {
        Ok(())
    }

    fn after_weight_step(&mut self, _step: &WeightStep) -> Result<(), AgentError> {
        Ok(())
    }
}
