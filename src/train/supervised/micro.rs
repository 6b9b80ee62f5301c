//! Micro-batching for the supervised weight steps (the search's and train-arch's): the memory
//! planner of the PPO update ([`crate::train::rl::memory`]) measures a pass's peak per sample,
//! and a batch that would not fit runs as micro-batches whose gradients accumulate before the
//! one clip and optimizer step.
//!
//! The losses are means over the batch, so each micro-batch's mean loss is weighted by its share
//! `len / batch`: the accumulated gradient is the whole batch's exactly for a network without
//! batch statistics. The DARTS vision networks normalise with BatchNorm, whose batch mean and
//! variance are then those of each micro-batch, not of the whole batch: the update differs
//! (each micro-batch is normalised on its own statistics, and the running statistics move once
//! per micro-batch), as with a smaller batch on several GPUs without synchronised BN.

use tch::{nn, Tensor};

use super::SupervisedError;
use crate::search::perturb::WeightGuard;
use crate::train::rl::memory::{
    peak_or_err, plan_passes, reset_peak_or_err, MemoryConfig, MemoryPlan,
};

/// The micro-batch size `memory` gives for batches of `batch` examples: by hand
/// (`memory.micro_batch_size`, a divisor of `batch`), or planned from `probe(n)`, one forward +
/// backward pass on `n` examples (its gradients are cleared, and every variable and buffer of
/// `vs`, BatchNorm's running statistics included, is restored after it). Prints the decision
/// (with `split_note` appended when it splits: [`BN_NOTE`] where the split batches train).
/// `None` = one pass per batch.
pub fn plan_micro_batch(
    what: &str,
    split_note: &str,
    batch: usize,
    memory: &MemoryConfig,
    vs: &nn::VarStore,
    probe: &mut dyn FnMut(i64) -> Tensor,
) -> Result<Option<usize>, SupervisedError> {
    if let Some(m) = memory.micro_batch_size {
        if m == 0 || !batch.is_multiple_of(m) {
            return Err(SupervisedError::invalid(format!(
                "memory.micro_batch_size = {m} must divide the {what} batch of {batch}"
            )));
        }
        if m < batch {
            eprintln!(
                "{what}: batch {batch} as {} x {m} (memory.micro_batch_size){split_note}",
                batch / m
            );
        }
        return Ok((m < batch).then_some(m));
    }
    if vs.device() != tch::Device::Cpu {
        return Ok(None);
    }
    let variables: Vec<Tensor> = vs.variables().into_values().collect();
    let mut guard = WeightGuard::snapshot(&variables);
    let plan: Option<MemoryPlan> = plan_passes(batch, batch, memory, what, &mut |n| {
        reset_peak_or_err()?;
        probe(n).backward();
        let peak = peak_or_err();
        for mut v in vs.trainable_variables() {
            v.zero_grad();
        }
        peak
    })?;
    guard.restore();
    let Some(plan) = plan else {
        return Ok(None);
    };
    let line = plan.describe().replacen("minibatch", "batch", 1);
    if plan.micro_batch < batch {
        eprintln!("{what} {line}{split_note}");
        Ok(Some(plan.micro_batch))
    } else {
        eprintln!("{what} {line}");
        Ok(None)
    }
}

/// What a split changes in the DARTS vision networks, printed with the decision.
pub const BN_NOTE: &str = "; BatchNorm then normalises each micro-batch with its own statistics, \
     so the update is not the whole batch's exactly";

/// Runs `pass(start, len)` (the mean loss of examples `start..start + len` and its outputs) on
/// consecutive micro-batches of at most `micro` examples (all `n` at once for `None`), and
/// backpropagates each loss weighted by its share `len / n`, so that the accumulated gradients
/// are those of the whole batch's mean loss. Returns that loss's value and the outputs of every
/// micro-batch concatenated (detached when split).
pub fn accumulate(
    n: i64,
    micro: Option<usize>,
    mut pass: impl FnMut(i64, i64) -> (Tensor, Tensor),
) -> (f64, Tensor) {
    let micro = micro.map_or(n, |m| m as i64).clamp(1, n.max(1));
    if micro >= n {
        let (loss, outputs) = pass(0, n);
        loss.backward();
        return (loss.double_value(&[]), outputs);
    }
    let mut value = 0.0;
    let mut outputs = Vec::new();
    let mut start = 0;
    while start < n {
        let len = micro.min(n - start);
        let (loss, out) = pass(start, len);
        let share = len as f64 / n as f64;
        (&loss * share).backward();
        value += loss.double_value(&[]) * share;
        outputs.push(out.detach());
        start += len;
    }
    (value, Tensor::cat(&outputs, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::Module;
    use tch::{Device, Kind};

    /// A conv net without batch statistics, f64: the micro-batched gradients (3 x 4 and the
    /// uneven 5 + 5 + 2) equal the whole batch's.
    #[test]
    fn micro_batches_give_the_whole_batchs_gradients() {
        tch::manual_seed(0);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let conv = nn::conv2d(vs.root() / "conv", 3, 4, 3, Default::default());
        let fc = nn::linear(vs.root() / "fc", 4 * 4 * 4, 5, Default::default());
        vs.double();
        let x = Tensor::randn([12, 3, 6, 6], (Kind::Double, Device::Cpu));
        let y = Tensor::randint(5, [12], (Kind::Int64, Device::Cpu));
        let run = |micro: Option<usize>| {
            for mut v in vs.trainable_variables() {
                v.zero_grad();
            }
            let (loss, logits) = accumulate(12, micro, |s, l| {
                let logits = fc.forward(&conv.forward(&x.narrow(0, s, l)).relu().flatten(1, -1));
                (
                    logits
                        .log_softmax(-1, Kind::Double)
                        .nll_loss(&y.narrow(0, s, l)),
                    logits,
                )
            });
            let grads: Vec<Tensor> = vs
                .trainable_variables()
                .iter()
                .map(|v| v.grad().copy())
                .collect();
            (loss, logits.detach(), grads)
        };
        let (loss, logits, grads) = run(None);
        for micro in [4, 5] {
            let (l, o, g) = run(Some(micro));
            assert!(
                (l - loss).abs() < 1e-12,
                "micro {micro}: loss {l} vs {loss}"
            );
            assert!(o.allclose(&logits, 1e-12, 1e-12, false));
            for (a, b) in g.iter().zip(&grads) {
                assert!(
                    a.allclose(b, 1e-12, 1e-12, false),
                    "micro {micro}: gradient"
                );
            }
        }
    }

    /// A cap between the resident base and the whole batch's planned peak splits the batch;
    /// the probe leaves no gradient and restores the variables it may have moved.
    #[test]
    fn a_cap_below_the_whole_batchs_peak_splits_it() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = nn::conv2d(vs.root() / "conv", 3, 64, 3, Default::default());
        let x = Tensor::randn([256, 3, 32, 32], (Kind::Float, Device::Cpu));
        let mut probe = |n: i64| {
            conv.forward(&x.narrow(0, 0, n))
                .relu()
                .square()
                .mean(Kind::Float)
        };
        let before: Vec<Tensor> = vs.trainable_variables().iter().map(Tensor::copy).collect();
        let free = plan_passes(
            256,
            256,
            &MemoryConfig {
                cap_gib: Some(64.0),
                micro_batch_size: None,
            },
            "test",
            &mut |n| {
                reset_peak_or_err()?;
                probe(n).backward();
                peak_or_err()
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(free.micro_batch, 256, "{free:?}");
        let cap = free.base_bytes + 0.4 * (free.estimated_peak_bytes - free.base_bytes);
        let memory = MemoryConfig {
            cap_gib: Some(cap / 0.9 / (1u64 << 30) as f64),
            micro_batch_size: None,
        };
        let micro = plan_micro_batch("test step", "", 256, &memory, &vs, &mut probe).unwrap();
        assert!(
            matches!(micro, Some(m) if m < 256 && 256 % m == 0),
            "{micro:?}"
        );
        for (v, b) in vs.trainable_variables().iter().zip(&before) {
            assert!(v.equal(b));
            assert!(
                !v.grad().defined()
                    || f64::try_from(v.grad().abs().sum(Kind::Float)).unwrap() == 0.0
            );
        }
    }
}
