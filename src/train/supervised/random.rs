//! DARTS's random-search baseline (Li & Talwalkar 2019, DARTS section 3.3): genotypes drawn
//! by the `random` strategy, each trained from scratch on the train split and scored on the
//! search split; the best is the search's result.

use std::sync::atomic::Ordering;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{nn, Device};

use super::config::TrainArchConfig;
use super::retrain::train_genotype;
use super::search::{Outcome, SearchRun};
use super::SupervisedError;
use crate::data::Dataset;
use crate::nas::{AlphaInit, ArchParams, DartsEvalConfig, DartsSearchNet, Genotype, Supernet};
use crate::search::{RandomSearch, StrategyConfig};

/// DARTS's random-search baseline: `num_candidates` genotypes, each trained from scratch for
/// `epochs_per_candidate` epochs at the search network's size on the train split and scored on
/// the search split; the best is kept.
pub(super) fn run_random_search_from_scratch(
    run: &mut SearchRun<'_>,
    device: Device,
    w_train: &Dataset,
    w_search: &Dataset,
) -> Result<Outcome, SupervisedError> {
    let config = run.config;
    let StrategyConfig::Random(params) = &config.search.strategy else {
        return Err(SupervisedError::invalid(
            "run_random_search_from_scratch needs the random strategy",
        ));
    };
    let probe = ArchParams::new(
        Device::Cpu,
        DartsSearchNet::new(nn::VarStore::new(Device::Cpu).root(), &config.network)?.space(),
        true,
        AlphaInit::default(),
    )?;
    let mut sampler = RandomSearch::new(&probe, params.clone(), config.seed)?;
    let net_config = DartsEvalConfig {
        c: config.network.c,
        layers: config.network.layers,
        num_classes: config.network.num_classes,
        auxiliary: false,
        drop_path_prob: 0.0,
        stem_multiplier: config.network.stem_multiplier,
        in_channels: config.network.in_channels,
        image_size: w_train.image_shape()[1],
    };
    let train_config = TrainArchConfig {
        network: net_config,
        epochs: params.epochs_per_candidate,
        batch_size: config.search.batch_size,
        weights: config.search.weights.clone(),
        augment: config.search.augment,
        auxiliary_weight: 0.0,
    };
    let mut best: Option<(f64, Genotype)> = None;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    for k in 0..params.num_candidates {
        if run.stop.load(Ordering::SeqCst) {
            break;
        }
        let genotype = sampler.sample_genotype();
        let result = train_genotype(
            &train_config,
            &config.memory,
            &genotype,
            device,
            (w_train, w_search),
            &mut rng,
            &mut *run.progress,
        )?;
        run.sink.scalar(
            "random/candidate_val_accuracy",
            result.test_accuracy,
            k as i64 + 1,
        );
        run.sink.text(
            "random/candidate",
            &format!("{:.4}: `{}`", result.test_accuracy, genotype),
            k as i64 + 1,
        );
        if best
            .as_ref()
            .is_none_or(|(acc, _)| result.test_accuracy > *acc)
        {
            best = Some((result.test_accuracy, genotype));
        }
        if let Some((acc, _)) = &best {
            run.sink
                .scalar("random/best_val_accuracy", *acc, k as i64 + 1);
        }
        run.sink.flush();
    }
    let interrupted = run.stop.load(Ordering::SeqCst);
    let (acc, genotype) =
        best.ok_or_else(|| SupervisedError::invalid("random search evaluated no candidate"))?;
    run.progress
        .finish(&format!("random search: best val accuracy {acc:.4}"));
    Ok((genotype, params.num_candidates, acc, interrupted))
}
