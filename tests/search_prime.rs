//! DARTS-PRIME (../shared/REFERENCE.md section 8): the dynamic schedule takes about one alpha
//! step per `sched_freq + 1` iterations on a stationary gradient-norm signal and re-adapts
//! when the signal jumps; the proximity and ADMM terms have the gradient central differences
//! give (f64); ADMM's projection and dual update; the strategy state survives a checkpoint.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rl_darts::nas::{
    AlphaInit, ArchParams, CellSpace, DartsSearchConfig, DartsSearchNet, OpSet, Supernet,
};
use rl_darts::search::darts_prime::{distance, genotype_masks};
use rl_darts::search::perturb::grad;
use rl_darts::search::{
    alpha_probabilities, alphas, DartsPrime, DartsPrimeParams, PrimeRegularizer, SearchStrategy,
    Sgd, SgdConfig, WeightStepReport,
};
use rl_darts::train::supervised::VisionObjective;
use tch::{nn, Device, Kind, Tensor};

/// Alphas of a 3-node DARTS cell pair (9 edges x 8 ops each), spread out (std 0.5) so the
/// derived genotype has no near-ties; f64 when `double`.
fn arch(double: bool) -> ArchParams {
    tch::manual_seed(0);
    let space = CellSpace {
        num_inputs: 2,
        num_nodes: 3,
        op_set: OpSet::Darts,
    };
    let init = AlphaInit {
        mean: 0.0,
        std: 0.5,
    };
    let mut arch = ArchParams::new(Device::Cpu, space, true, init).unwrap();
    if double {
        arch.var_store_mut().set_kind(Kind::Double);
    }
    arch
}

fn report(iteration: u64, fi: f64) -> WeightStepReport {
    WeightStepReport {
        iteration,
        loss: 1.0,
        grad_norm_sq: fi,
        lr: 0.025,
    }
}

/// Drives the schedule as the loops do (ask, then report the weight step) over the signal
/// `fi(t)`; returns which iterations took an alpha step and the final (ewma, threshold).
fn drive(s: &mut DartsPrime, arch: &ArchParams, fi: &[f64]) -> Vec<bool> {
    fi.iter()
        .enumerate()
        .map(|(t, &v)| {
            let fired = s.wants_arch_step(t as u64);
            s.after_weight_step(arch, &report(t as u64, v)).unwrap();
            fired
        })
        .collect()
}

/// A stationary noisy signal: `level * exp(0.3 N(0, 1))` (log-normal, like a minibatch
/// gradient norm's fluctuation).
fn noisy(rng: &mut ChaCha8Rng, level: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            // Box-Muller from the seeded RNG (rand_distr is not a dependency).
            let (u, v): (f64, f64) = (1.0 - rng.gen::<f64>(), rng.gen());
            let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
            level * (0.3 * z).exp()
        })
        .collect()
}

fn rate(fired: &[bool]) -> f64 {
    fired.iter().filter(|&&f| f).count() as f64 / fired.len() as f64
}

#[test]
fn the_schedule_fires_at_the_configured_frequency_on_a_stationary_signal() {
    let arch = arch(false);
    for (sched_freq, level) in [(10.0, 3.0), (4.0, 0.02), (10.0, 250.0)] {
        let params = DartsPrimeParams {
            sched_freq,
            ..Default::default()
        };
        let mut s = DartsPrime::new(&arch, params).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let fired = drive(&mut s, &arch, &noisy(&mut rng, level, 6000));
        // After the threshold has found the signal's level (at most ln(250)/ln(1.05) ~ 113
        // iterations here), fires * sched_freq ~= non-fires.
        let expected = 1.0 / (sched_freq + 1.0);
        let observed = rate(&fired[1000..]);
        eprintln!("sched_freq {sched_freq}, level {level}: alpha-step rate {observed:.4} (expected {expected:.4})");
        assert!(
            (observed - expected).abs() < 0.1 * expected,
            "sched_freq {sched_freq}, level {level}: rate {observed}, expected {expected}"
        );
        // The threshold hovers around the EWMA: within m^(sched_freq + 1) either way.
        let ratio = s.schedule().threshold / s.schedule().ewma.unwrap();
        let band = 1.05f64.powf(sched_freq + 1.0);
        assert!(
            ratio > 1.0 / band && ratio < band,
            "threshold / ewma {ratio}"
        );
    }
}

#[test]
fn the_schedule_adapts_when_the_signal_changes() {
    let arch = arch(false);
    let mut s = DartsPrime::new(&arch, DartsPrimeParams::default()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let n = 1500;
    let mut signal = noisy(&mut rng, 2.0, n); // settle
    signal.extend(noisy(&mut rng, 100.0, n)); // the gradient norm jumps 50x
    signal.extend(noisy(&mut rng, 0.04, n)); // and falls 2500x
    let fired = drive(&mut s, &arch, &signal);
    let expected = 1.0 / 11.0;

    // After the jump up the threshold has to climb ln(50)/ln(1.05) ~ 80 iterations (less the
    // slack it had above the EWMA) before the next alpha step: the schedule holds off.
    let first_after_up = fired[n..].iter().position(|&f| f).unwrap();
    assert!(
        (40..=140).contains(&first_after_up),
        "first alpha step {first_after_up} iterations after the jump up"
    );
    // After the fall the EWMA sinks below the threshold at once: alpha steps come in a burst
    // (half the iterations while the EWMA decays, against one in 11 when stationary).
    let burst = rate(&fired[2 * n..2 * n + 30]);
    eprintln!("first alpha step {first_after_up} iterations after the jump up; rate {burst:.2} in the 30 after the fall");
    assert!(
        burst > 0.35,
        "alpha-step rate right after the fall: {burst}"
    );
    // And each phase settles back to the configured frequency.
    for phase in 0..3 {
        let tail = &fired[phase * n + 500..(phase + 1) * n];
        let r = rate(tail);
        eprintln!("phase {phase}: settled rate {r:.4}");
        assert!(
            (r - expected).abs() < 0.15 * expected,
            "phase {phase}: rate {r}, expected {expected}"
        );
    }
    let ratio = s.schedule().threshold / s.schedule().ewma.unwrap();
    assert!(ratio > 0.3 && ratio < 3.0, "threshold / ewma {ratio}");
}

/// Central differences of `f` at the alphas, one entry at a time (f64, step `h`).
fn central_differences(arch: &ArchParams, h: f64, mut f: impl FnMut() -> f64) -> Vec<Vec<f64>> {
    alphas(arch)
        .iter()
        .map(|a| {
            let n = a.numel() as i64;
            let set = |i: i64, v: f64| {
                tch::no_grad(|| {
                    let _ = a.view([-1]).get(i).fill_(v);
                })
            };
            (0..n)
                .map(|i| {
                    let x = a.view([-1]).double_value(&[i]);
                    set(i, x + h);
                    let plus = f();
                    set(i, x - h);
                    let minus = f();
                    set(i, x);
                    (plus - minus) / (2.0 * h)
                })
                .collect()
        })
        .collect()
}

fn assert_close(name: &str, autograd: &[Tensor], fd: &[Vec<f64>]) {
    let mut max_err = 0.0f64;
    let mut max_g = 0.0f64;
    for (g, d) in autograd.iter().zip(fd) {
        let g = Vec::<f64>::try_from(&g.view([-1])).unwrap();
        for (a, b) in g.iter().zip(d) {
            max_err = max_err.max((a - b).abs());
            max_g = max_g.max(a.abs());
        }
    }
    assert!(max_g > 1e-4, "{name}: gradient vanishes ({max_g})");
    assert!(
        max_err < 1e-7 * max_g.max(1.0),
        "{name}: max |autograd - central difference| = {max_err} (max |g| {max_g})"
    );
}

#[test]
fn the_proximity_gradient_matches_central_differences() {
    let arch = arch(true);
    let mut s = DartsPrime::new(&arch, DartsPrimeParams::default()).unwrap();
    // Half-way through a 4-epoch search: weight (2/4) * rho/2 = 0.025.
    s.begin_epoch(2, 4);
    assert!((s.penalty_weight() - 0.025).abs() < 1e-15);
    let genotype = s.derive(&arch).unwrap();
    let term = s.penalty(&arch).unwrap().unwrap();
    assert_eq!(term.kind(), Kind::Double);
    let g = grad(&term, &alphas(&arch), false).unwrap();
    let fd = central_differences(&arch, 1e-6, || {
        // The target is the genotype derived at the evaluated alphas (held constant by the
        // term); with spread-out alphas a 1e-6 step never changes it.
        assert_eq!(s.derive(&arch).unwrap(), genotype);
        s.penalty(&arch).unwrap().unwrap().double_value(&[])
    });
    assert_close("proximity", &g, &fd);

    // The analytic form in `distance`'s doc: s (r - <r, s>) / ||r|| per row, r = s - P.
    let a = &alphas(&arch)[0];
    let mask = genotype_masks(arch.space(), &genotype, 2).unwrap();
    let flat: Vec<f64> = mask[0].iter().flatten().copied().collect();
    let p = Tensor::from_slice(&flat).view([9, 8]);
    let d = distance(a, &p);
    let ga = grad(&d, std::slice::from_ref(a), false).unwrap().remove(0);
    let sm = a.softmax(-1, Kind::Double).detach();
    let r = &sm - &p;
    let by_hand =
        &sm * (&r - (&r * &sm).sum_dim_intlist(Some(&[-1i64][..]), true, Kind::Double)) / r.norm();
    let err = (ga - by_hand).abs().max().double_value(&[]);
    assert!(err < 1e-12, "analytic gradient differs by {err}");
}

#[test]
fn the_admm_gradient_matches_central_differences() {
    let arch = arch(true);
    let params = DartsPrimeParams {
        regularizer: PrimeRegularizer::Admm,
        ..Default::default()
    };
    let s = DartsPrime::new(&arch, params).unwrap();
    // Z starts at softmax(alpha) and U at 0, where the norm has a kink: move the alphas away.
    tch::no_grad(|| {
        for mut a in alphas(&arch) {
            let _ = a.g_add_(&(a.randn_like() * 0.3));
        }
    });
    let term = s.penalty(&arch).unwrap().unwrap();
    let g = grad(&term, &alphas(&arch), false).unwrap();
    let fd = central_differences(&arch, 1e-6, || {
        s.penalty(&arch).unwrap().unwrap().double_value(&[])
    });
    assert_close("admm", &g, &fd);
}

/// A 3-cell supernet with a train and a search batch, as in tests/search_conformance.rs.
struct Tiny {
    vs: nn::VarStore,
    net: DartsSearchNet,
    arch: ArchParams,
    sgd: Sgd,
    train: (Tensor, Tensor),
    search: (Tensor, Tensor),
}

fn tiny() -> Tiny {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let config = DartsSearchConfig {
        c: 4,
        layers: 3,
        num_nodes: 3,
        in_channels: 1,
        stem_multiplier: 2,
        ..Default::default()
    };
    let net = DartsSearchNet::new(vs.root() / "net", &config).unwrap();
    let arch = ArchParams::new(Device::Cpu, net.space(), true, AlphaInit::default()).unwrap();
    let sgd = Sgd::new(
        vs.variables(),
        SgdConfig {
            lr: 0.025,
            momentum: 0.9,
            weight_decay: 3e-4,
        },
    );
    let opts = (Kind::Float, Device::Cpu);
    let batch = || {
        (
            Tensor::randn([8, 1, 8, 8], opts),
            Tensor::randint(10, [8], (Kind::Int64, Device::Cpu)),
        )
    };
    let (train, search) = (batch(), batch());
    Tiny {
        vs,
        net,
        arch,
        sgd,
        train,
        search,
    }
}

fn arch_step(t: &Tiny, s: &mut DartsPrime) -> f64 {
    let mut objective = VisionObjective {
        net: &t.net,
        vs: &t.vs,
        sgd: &t.sgd,
        train: (t.train.0.shallow_clone(), t.train.1.shallow_clone()),
        search: (t.search.0.shallow_clone(), t.search.1.shallow_clone()),
    };
    s.arch_step(&t.arch, &mut objective).unwrap().loss
}

#[test]
fn admm_projects_onto_the_derived_genotype_and_accumulates_the_dual() {
    let t = tiny();
    let params = DartsPrimeParams {
        regularizer: PrimeRegularizer::Admm,
        admm_every: 2,
        optimizer: rl_darts::search::ArchAdamConfig {
            lr: 0.05,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut s = DartsPrime::new(&t.arch, params).unwrap();
    let z0 = s.admm_state().unwrap().0.to_vec();
    arch_step(&t, &mut s);
    assert_eq!(
        s.admm_state().unwrap().0,
        &z0[..],
        "Z moved before admm_every steps"
    );
    arch_step(&t, &mut s);
    // U was 0, so Z = mask(derive(softmax(alpha))) = the strategy's own genotype, and
    // U = softmax(alpha) - Z.
    let genotype = s.derive(&t.arch).unwrap();
    let masks = genotype_masks(t.arch.space(), &genotype, 2).unwrap();
    let (z, u) = s.admm_state().unwrap();
    assert_eq!(z, &masks[..]);
    for ((a, zc), uc) in alphas(&t.arch).iter().zip(z).zip(u) {
        let p = alpha_probabilities(a).unwrap();
        for ((pr, zr), ur) in p.iter().zip(zc).zip(uc) {
            for ((p, z), u) in pr.iter().zip(zr).zip(ur) {
                assert!((u - (p - z)).abs() < 1e-12, "U {u} != p - Z {}", p - z);
            }
        }
    }
    // From here on the term pulls towards Z - U, and the reported loss includes it.
    let term = s.penalty(&t.arch).unwrap().unwrap().double_value(&[]);
    assert!(term > 0.0);
    let scalars = s.scalars();
    assert!(scalars
        .iter()
        .any(|(k, v)| *k == "admm_weight" && *v == 0.05));
}

#[test]
fn the_alpha_step_adds_the_term_to_its_loss_and_logs_it() {
    let t = tiny();
    let params = DartsPrimeParams {
        rho: 10.0, // large, so that the term is visible next to the search loss
        ..Default::default()
    };
    let mut s = DartsPrime::new(&t.arch, params).unwrap();
    s.begin_epoch(3, 4);
    let before: Vec<Tensor> = alphas(&t.arch).iter().map(Tensor::copy).collect();
    let loss = arch_step(&t, &mut s);
    let names: Vec<&str> = s.scalars().iter().map(|(k, _)| *k).collect();
    for key in [
        "proximity_term",
        "proximity_weight",
        "schedule_threshold",
        "alpha_steps",
    ] {
        assert!(names.contains(&key), "{key} missing from {names:?}");
    }
    let term = s
        .scalars()
        .into_iter()
        .find(|(k, _)| *k == "proximity_term")
        .unwrap()
        .1;
    assert!(term > 0.0 && term < loss, "term {term}, loss {loss}");
    assert!(alphas(&t.arch)
        .iter()
        .zip(&before)
        .any(|(a, b)| !a.equal(b)));
}

#[test]
fn the_state_survives_a_checkpoint_and_continues_identically() {
    let arch = arch(false);
    for regularizer in [PrimeRegularizer::Prox, PrimeRegularizer::Admm] {
        let params = DartsPrimeParams {
            regularizer,
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let signal = noisy(&mut rng, 5.0, 600);
        let mut a = DartsPrime::new(&arch, params.clone()).unwrap();
        a.begin_epoch(0, 3);
        drive(&mut a, &arch, &signal[..300]);
        let dir = tempfile::tempdir().unwrap();
        a.save(dir.path()).unwrap();
        let mut b = DartsPrime::new(&arch, params.clone()).unwrap();
        b.load(dir.path()).unwrap();
        assert_eq!(a.schedule(), b.schedule());
        assert_eq!(a.scalars(), b.scalars());
        let cont = |s: &mut DartsPrime| -> Vec<bool> {
            signal[300..]
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let t = (300 + i) as u64;
                    let f = s.wants_arch_step(t);
                    s.after_weight_step(&arch, &report(t, v)).unwrap();
                    f
                })
                .collect()
        };
        assert_eq!(cont(&mut a), cont(&mut b), "{regularizer:?}");
        assert_eq!(a.penalty_weight(), b.penalty_weight());

        // A checkpoint of the other regulariser is refused with a reason.
        let other = DartsPrimeParams {
            regularizer: match regularizer {
                PrimeRegularizer::Admm => PrimeRegularizer::Prox,
                _ => PrimeRegularizer::Admm,
            },
            ..params
        };
        let err = DartsPrime::new(&arch, other)
            .unwrap()
            .load(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("regularizer"), "{err}");
    }
}
