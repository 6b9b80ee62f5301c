//! Unit tests of `darts_prime.rs` (kept apart so the module stays one concern).
use super::*;
use crate::nas::{AlphaInit, OpSet};
use tch::Device;

fn arch() -> ArchParams {
    tch::manual_seed(0);
    let space = CellSpace {
        num_inputs: 2,
        num_nodes: 3,
        op_set: OpSet::Darts,
    };
    ArchParams::new(
        Device::Cpu,
        space,
        true,
        AlphaInit {
            mean: 0.0,
            std: 0.5,
        },
    )
    .unwrap()
}

fn report(iteration: u64, fi: f64) -> WeightStepReport {
    WeightStepReport {
        iteration,
        loss: 1.0,
        grad_norm_sq: fi,
        lr: 0.025,
    }
}

#[test]
fn iteration_zero_never_steps_and_the_first_report_seeds_the_ewma() {
    let arch = arch();
    let mut s = DartsPrime::new(&arch, DartsPrimeParams::default()).unwrap();
    assert!(!s.wants_arch_step(0));
    assert!(s.wants_arch_step(1), "undecided iterations may want a step");
    // Official trace: threshold 1 -> 1.05 at iteration 0 (no FI yet); FI = 0.5 < 1.05.
    s.after_weight_step(&arch, &report(0, 0.5)).unwrap();
    assert_eq!(s.schedule().ewma, Some(0.5));
    assert!(s.wants_arch_step(1));
    let t = 1.05 * 1.05f64.powf(-10.0);
    assert!((s.schedule().threshold - t).abs() < 1e-12);
    // ewma = 0.2 * 2 + 0.8 * 0.5 = 0.8 > t: no step, threshold grows.
    s.after_weight_step(&arch, &report(1, 2.0)).unwrap();
    assert!((s.schedule().ewma.unwrap() - 0.8).abs() < 1e-12);
    assert!(!s.wants_arch_step(2));
    assert!((s.schedule().threshold - t * 1.05).abs() < 1e-12);
}

#[test]
fn without_the_dynamic_schedule_every_iteration_steps() {
    let arch = arch();
    let params = DartsPrimeParams {
        dynamic_schedule: false,
        ..Default::default()
    };
    let mut s = DartsPrime::new(&arch, params).unwrap();
    for i in 0..20 {
        assert!(s.wants_arch_step(i));
        s.after_weight_step(&arch, &report(i, 1e6)).unwrap();
    }
}

/// A NaN or infinite signal from the loop is an error that names the field, its value and
/// the iteration, and leaves the schedule untouched (catches a silent fallback).
#[test]
fn a_non_finite_report_is_an_error_that_names_the_value() {
    let arch = arch();
    let mut s = DartsPrime::new(&arch, DartsPrimeParams::default()).unwrap();
    s.after_weight_step(&arch, &report(0, 0.5)).unwrap();
    let before = s.schedule().clone();
    let err = s
        .after_weight_step(&arch, &report(1, f64::NAN))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("grad_norm_sq = NaN") && err.contains("iteration 1"),
        "{err}"
    );
    let mut bad_loss = report(1, 0.5);
    bad_loss.loss = f64::INFINITY;
    let err = s
        .after_weight_step(&arch, &bad_loss)
        .unwrap_err()
        .to_string();
    assert!(err.contains("loss = inf"), "{err}");
    assert_eq!(s.schedule(), &before);
    assert!(PrimeSchedule::new(&DartsPrimeParams::default())
        .observe(&DartsPrimeParams::default(), 0, f64::NEG_INFINITY)
        .is_err());
}

#[test]
fn the_proximity_target_is_the_derived_genotype_and_ramps_linearly() {
    let arch = arch();
    let s = DartsPrime::new(&arch, DartsPrimeParams::default()).unwrap();
    let genotype = s.derive(&arch).unwrap();
    let masks = genotype_masks(arch.space(), &genotype, 2).unwrap();
    for (mask, nodes) in masks.iter().zip([&genotype.normal, &genotype.reduce]) {
        let ones: f64 = mask.iter().flatten().sum();
        assert_eq!(ones as usize, nodes.iter().map(Vec::len).sum::<usize>());
        for row in mask {
            assert!(row.iter().sum::<f64>() <= 1.0);
            assert_eq!(row[0], 0.0, "none is never a DARTS gene");
        }
    }
    let mut s = s;
    assert_eq!(s.penalty_weight(), 0.0);
    // Epoch 0 of 4 has 10 weight steps; then epoch 1 at its 5th step (4 steps done).
    s.begin_epoch(0, 4);
    for i in 0..10 {
        s.after_weight_step(&arch, &report(i, 1.0)).unwrap();
    }
    s.begin_epoch(1, 4);
    for i in 10..14 {
        s.after_weight_step(&arch, &report(i, 1.0)).unwrap();
    }
    let expected = (1.0 + 5.0 / 10.0) / 4.0 * 0.1 / 2.0;
    assert!((s.penalty_weight() - expected).abs() < 1e-12);
    // The term is the weight times the summed distances to the masks.
    let a = alphas(&arch);
    let by_hand: f64 = a
        .iter()
        .zip(&masks)
        .map(|(alpha, m)| distance(alpha, &matrix(m, alpha).unwrap()).double_value(&[]))
        .sum::<f64>()
        * expected;
    let term = s.penalty(&arch).unwrap().unwrap().double_value(&[]);
    assert!((term - by_hand).abs() < 1e-6, "{term} vs {by_hand}");
}

#[test]
fn a_zero_signal_never_steps_and_the_threshold_stays_serialisable() {
    let params = DartsPrimeParams::default();
    let mut s = PrimeSchedule::new(&params);
    for i in 0..20_000 {
        assert!(
            !s.observe(&params, i, 0.0).unwrap(),
            "0 < ewma fails, as official"
        );
    }
    assert_eq!(s.threshold, THRESHOLD_BOUNDS.1);
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<PrimeSchedule>(&json).unwrap(), s);
    // A real signal brings it back down: / 1.05^10 per alpha step.
    assert!(s.observe(&params, 20_000, 1.0).unwrap());
}

#[test]
fn bad_parameters_are_rejected_with_the_key() {
    let arch = arch();
    for (params, key) in [
        (
            DartsPrimeParams {
                sched_freq: 0.0,
                ..Default::default()
            },
            "sched_freq",
        ),
        (
            DartsPrimeParams {
                ewma: 1.5,
                ..Default::default()
            },
            "ewma",
        ),
        (
            DartsPrimeParams {
                threshold_multiplier: 1.0,
                ..Default::default()
            },
            "threshold_multiplier",
        ),
        (
            DartsPrimeParams {
                admm_every: 0,
                ..Default::default()
            },
            "admm_every",
        ),
    ] {
        let err = DartsPrime::new(&arch, params).unwrap_err().to_string();
        assert!(err.contains(key), "{err}");
    }
}
