//! Building what a PPO run trains: the encoder its config names, the actor-critic around it,
//! and, for a supernet encoder, the architecture search that supplies its op weights.

use std::path::Path;

use tch::{nn, Device};

use super::config::{EncoderConfig, TrainConfig};
use super::search::ArchSearch;
use crate::agents::{ActorCritic, Encoder, ImpalaCnn, Mlp};
use crate::envs::procgen::ProcgenOptions;
use crate::envs::{make_vec_env, EnvSpec, VecEnv};
use crate::nas::{
    CellWeights, Genotype, MlpFixedEncoder, MlpSupernet, RlDartsFixedEncoder, RlDartsSupernet,
    Supernet,
};
use crate::train::TrainError;

/// Checks everything about `config` that can be checked before a run writes anything: the
/// PPO settings, the device, the env name, a fixed encoder's genotype file, and a searched
/// encoder's search settings. Every error names the key.
pub fn validate(config: &TrainConfig) -> Result<(), TrainError> {
    config
        .ppo
        .validate()
        .map_err(|e| TrainError::about("ppo", e))?;
    crate::device::parse_device(&config.device)?;
    if config.is_procgen() {
        crate::envs::procgen::find_game(&config.env)?;
    }
    match &config.encoder {
        EncoderConfig::RlDartsFixed(c) => {
            load_genotype(&c.genotype, "rl_darts")?;
        }
        EncoderConfig::MlpDartsFixed(c) => {
            load_genotype(&c.genotype, "mlp_darts")?;
        }
        EncoderConfig::RlDarts(_) | EncoderConfig::MlpDarts(_) => {
            if config.search.log_every == 0 {
                return Err(TrainError::Invalid(
                    "search.log_every must be at least 1".into(),
                ));
            }
            super::search_envs::search_env_options(config)?;
        }
        EncoderConfig::Impala(_) | EncoderConfig::Mlp(_) => {}
    }
    Ok(())
}

/// The policy of a run: a fixed network, or a supernet whose op weights its architecture search
/// supplies (the type says which architecture a forward runs with).
#[derive(Debug)]
pub enum Policy {
    Fixed(ActorCritic),
    /// Boxed: the search (alphas, strategy, its optimizer) is far larger than a policy.
    Searched(ActorCritic<CellWeights>, Box<ArchSearch>),
}

/// The weight store and the policy `config` describes for observations of `spec`. A searched
/// encoder's alphas live in the search's own store, never in the weight store.
pub fn build_policy(
    config: &TrainConfig,
    spec: &EnvSpec,
    device: Device,
) -> Result<(nn::VarStore, Policy), TrainError> {
    let vs = nn::VarStore::new(device);
    let p = vs.root() / "encoder";
    let shape = crate::agents::policy::encoder_input_shape(spec);
    let supernet_err = |e: crate::nas::NasError| TrainError::about("encoder.params.supernet", e);
    let searched = |mut net: Box<dyn SearchedEncoder>,
                    space,
                    with_reduce,
                    cost_shape: [i64; 3]|
     -> Result<Policy, TrainError> {
        let edge_normalisation = net.partial_channels().enabled();
        let mut search = ArchSearch::new(
            &config.search,
            space,
            with_reduce,
            edge_normalisation,
            device,
            config.seed,
        )?;
        if let Some(betas) = search.arch().edge_betas() {
            net.set_edge_betas(betas).map_err(supernet_err)?;
        }
        search.set_op_costs(net.op_costs(cost_shape))?;
        // Fails with a clear message if a latency penalty is asked of a network whose cells are
        // not timed alone (MLP cells).
        search.set_latency_from(net.as_supernet(), cost_shape, device)?;
        let policy = ActorCritic::new(vs.root() / "policy", net.into_encoder(), spec.num_actions);
        Ok(Policy::Searched(policy, Box::new(search)))
    };
    let policy = match &config.encoder {
        EncoderConfig::RlDarts(c) => {
            let &[ch, h, w] = shape.as_slice() else {
                return Err(TrainError::Invalid(format!(
                    "the rl_darts encoder needs image observations; '{}' gives vectors of shape {:?} (use kind = \"mlp_darts\")",
                    spec.name, spec.obs_shape
                )));
            };
            let net = RlDartsSupernet::new(p, &c.supernet, &shape).map_err(supernet_err)?;
            let (space, reduce) = (c.supernet.space(), c.supernet.has_reduction_cells());
            searched(Box::new(net), space, reduce, [ch, h, w])?
        }
        EncoderConfig::MlpDarts(c) => {
            let net = MlpSupernet::new(p, &c.supernet, &shape).map_err(supernet_err)?;
            let (space, reduce) = (c.supernet.space(), c.supernet.has_reduction_cells());
            searched(Box::new(net), space, reduce, [shape[0], 1, 1])?
        }
        fixed => {
            let encoder = build_fixed_encoder(p, spec, fixed)?;
            Policy::Fixed(ActorCritic::new(
                vs.root() / "policy",
                encoder,
                spec.num_actions,
            ))
        }
    };
    Ok((vs, policy))
}

/// A supernet that is also an RL encoder (so that one builder serves the image and the vector
/// search networks).
trait SearchedEncoder: Supernet {
    fn as_supernet(&self) -> &dyn Supernet;
    fn into_encoder(self: Box<Self>) -> Box<dyn Encoder<CellWeights>>;
}

impl<T: Supernet + Encoder<CellWeights> + 'static> SearchedEncoder for T {
    fn as_supernet(&self) -> &dyn Supernet {
        self
    }
    fn into_encoder(self: Box<Self>) -> Box<dyn Encoder<CellWeights>> {
        self
    }
}

/// The fixed encoder `config` describes (not a supernet).
pub fn build_fixed_encoder(
    p: nn::Path,
    spec: &EnvSpec,
    config: &EncoderConfig,
) -> Result<Box<dyn Encoder>, TrainError> {
    let shape = crate::agents::policy::encoder_input_shape(spec);
    Ok(match config {
        EncoderConfig::Impala(c) => {
            if shape.len() != 3 {
                return Err(TrainError::Invalid(format!(
                    "the impala encoder needs image observations; '{}' gives vectors of shape {:?} (use kind = \"mlp\")",
                    spec.name, spec.obs_shape
                )));
            }
            Box::new(ImpalaCnn::new(p, &shape, c)?)
        }
        EncoderConfig::Mlp(c) => Box::new(Mlp::new(p, &shape, c)?),
        EncoderConfig::RlDartsFixed(c) => {
            let genotype = load_genotype(&c.genotype, "rl_darts")?;
            let net = RlDartsFixedEncoder::new(p, &c.supernet, &genotype, &shape).map_err(|e| {
                TrainError::Invalid(format!(
                    "encoder.params: genotype {} does not fit the supernet layout: {e}",
                    c.genotype.display()
                ))
            })?;
            Box::new(net)
        }
        EncoderConfig::MlpDartsFixed(c) => {
            let genotype = load_genotype(&c.genotype, "mlp_darts")?;
            let net = MlpFixedEncoder::new(p, &c.supernet, &genotype, &shape).map_err(|e| {
                TrainError::Invalid(format!(
                    "encoder.params: genotype {} does not fit the supernet layout: {e}",
                    c.genotype.display()
                ))
            })?;
            Box::new(net)
        }
        EncoderConfig::RlDarts(_) | EncoderConfig::MlpDarts(_) => {
            return Err(TrainError::Invalid(format!(
                "the {} encoder is a supernet: build it with build_policy, which also builds its architecture search",
                config.name()
            )))
        }
    })
}

/// The genotype a `*_fixed` encoder retrains.
fn load_genotype(path: &Path, search_kind: &str) -> Result<Genotype, TrainError> {
    if path.as_os_str().is_empty() {
        return Err(TrainError::Invalid(format!(
            "encoder.params.genotype is required: the genotype.json an {search_kind} search wrote"
        )));
    }
    Genotype::load(path).map_err(|e| TrainError::about("encoder.params.genotype", e))
}

/// The training envs of `config` on the levels of `procgen`.
pub fn make_env(
    config: &TrainConfig,
    procgen: &ProcgenOptions,
) -> Result<Box<dyn VecEnv>, TrainError> {
    let is_procgen = crate::envs::procgen::find_game(&config.env).is_ok();
    if config
        .ppo
        .async_envs
        .resolve(is_procgen, config.ppo.num_envs)?
    {
        let options = crate::envs::procgen_options_for_seed(procgen, config.seed);
        let env = crate::envs::SplitVecEnv::procgen(&config.env, config.ppo.num_envs, options)?;
        return Ok(Box::new(env));
    }
    Ok(make_vec_env(
        &config.env,
        config.ppo.num_envs,
        config.seed,
        procgen,
    )?)
}
