//! The strategy registry: one table, at the bottom of this file, with a row per strategy (its
//! TOML name, its config variant and parameters, how it is built, what it supports). The TOML
//! enum [`StrategyConfig`] (adjacently tagged, unknown keys rejected), the name list
//! [`STRATEGY_NAMES`], [`StrategyConfig::from_name`], [`StrategyConfig::name`] and
//! [`StrategyConfig::build`] are all generated from that table, so a name is spelled once.
//!
//! Compiled in and chosen by name, as the style guide asks: no run-time registration, and
//! building constructs only the strategy that was asked for.

use serde::{Deserialize, Serialize};

use super::{
    Darts, DartsParams, DartsPrime, DartsPrimeParams, Gdas, GdasParams, IDarts, IDartsParams,
    Joint, JointParams, RandomParams, RandomSearch, SearchError, SearchStrategy, Snas, SnasParams,
    Unas, UnasParams,
};
use crate::nas::ArchParams;

/// One row of the registry, as the rest of the crate sees it (for `--help`, name checks and
/// capability checks that need no parameters).
#[derive(Debug, Clone, Copy)]
pub struct StrategyEntry {
    /// The TOML `kind` and the name everything else uses.
    pub name: &'static str,
    /// Whether the strategy trains PC-DARTS's edge-normalisation betas
    /// (`partial_channels > 1`): only strategies whose alpha gradient is one autograd gradient
    /// of a loss reach them. SNAS's resource score function, UNAS's estimators and random
    /// search's written alphas list gradients per op-weight matrix, where betas have no place.
    pub trains_pc_darts_betas: bool,
    /// The strategy with its default parameters.
    pub default_config: fn() -> StrategyConfig,
}

/// How a registry row builds its strategy: over `arch`'s alphas, with the strategy's own
/// sampler seeded by the `u64`.
type BuildFn<P> = fn(&ArchParams, &P, u64) -> Result<Box<dyn SearchStrategy>, SearchError>;

/// Expands the table into the config enum, its TOML twin with optional params, the name list,
/// the entries and the constructors. Each row:
/// `Variant(Params) { name: "toml_name", strategy: Type, build: |arch, params, seed| ..., pc_darts_betas: bool }`.
macro_rules! strategy_registry {
    ($(
        $(#[doc = $doc:expr])*
        $variant:ident($params:ty) {
            name: $name:literal,
            strategy: $strategy:ty,
            build: $build:expr,
            pc_darts_betas: $betas:literal $(,)?
        }
    )*) => {
        /// Which strategy a search uses, with its parameters: TOML
        /// `[search.strategy] kind = "darts"` and `[search.strategy.params]`.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind", content = "params", deny_unknown_fields, from = "RawStrategy")]
        pub enum StrategyConfig {
            $(
                $(#[doc = $doc])*
                #[serde(rename = $name)]
                $variant($params),
            )*
        }

        /// What TOML holds: like [`StrategyConfig`], but `params` may be left out (`--set
        /// search.strategy.kind=random` alone then means the defaults of that strategy;
        /// serde's adjacent tagging reads a missing content as `None` for an `Option`).
        #[derive(Deserialize)]
        #[serde(tag = "kind", content = "params", deny_unknown_fields)]
        enum RawStrategy {
            $(
                #[serde(rename = $name)]
                $variant(Option<$params>),
            )*
        }

        impl From<RawStrategy> for StrategyConfig {
            fn from(raw: RawStrategy) -> Self {
                match raw {
                    $(RawStrategy::$variant(p) => StrategyConfig::$variant(p.unwrap_or_default()),)*
                }
            }
        }

        /// Every strategy name [`StrategyConfig`] accepts, in table order, for tests and
        /// `--help`.
        pub const STRATEGY_NAMES: &[&str] = &[$($name),*];

        /// The registry's rows, in table order.
        pub const STRATEGIES: &[StrategyEntry] = &[$(
            StrategyEntry {
                name: $name,
                trains_pc_darts_betas: $betas,
                default_config: || StrategyConfig::$variant(<$params>::default()),
            },
        )*];

        $(
            impl $strategy {
                /// The strategy's name in the registry (the TOML `kind`).
                pub const NAME: &'static str = $name;
            }
        )*

        impl StrategyConfig {
            /// The variant's name, as in TOML.
            pub fn name(&self) -> &'static str {
                match self {
                    $(StrategyConfig::$variant(_) => $name,)*
                }
            }

            /// Calls the row's constructor (capability checks are [`StrategyConfig::build`]'s).
            fn construct(
                &self,
                arch: &ArchParams,
                seed: u64,
            ) -> Result<Box<dyn SearchStrategy>, SearchError> {
                match self {
                    $(StrategyConfig::$variant(params) => {
                        let build: BuildFn<$params> = $build;
                        build(arch, params, seed)
                    })*
                }
            }
        }
    };
}

impl Default for StrategyConfig {
    fn default() -> Self {
        StrategyConfig::Darts(DartsParams::default())
    }
}

impl StrategyConfig {
    /// This config with UNAS scoring one architecture per minibatch
    /// (`same_alpha_minibatch = true`), for loops whose objective has no per-example losses
    /// (PPO, the transformer search); other strategies unchanged.
    pub fn with_unas_per_minibatch(&self) -> StrategyConfig {
        match self {
            StrategyConfig::Unas(p) => StrategyConfig::Unas(UnasParams {
                same_alpha_minibatch: true,
                ..p.clone()
            }),
            other => other.clone(),
        }
    }
}

impl StrategyConfig {
    /// This strategy's registry row.
    pub fn entry(&self) -> &'static StrategyEntry {
        let name = self.name();
        STRATEGIES
            .iter()
            .find(|e| e.name == name)
            .expect("every variant is generated from a registry row")
    }

    /// Default parameters for `name`, or an error listing the valid names (and the nearest).
    pub fn from_name(name: &str) -> Result<Self, SearchError> {
        match STRATEGIES.iter().find(|e| e.name == name) {
            Some(entry) => Ok((entry.default_config)()),
            None => Err(SearchError::Invalid(format!(
                "unknown search strategy '{name}'; valid: {}{}",
                STRATEGY_NAMES.join(", "),
                crate::config::nearest(name, STRATEGY_NAMES.iter().copied())
                    .map(|s| format!(" (did you mean '{s}'?)"))
                    .unwrap_or_default()
            ))),
        }
    }

    /// Builds the strategy over `arch`'s alphas (its optimizer adopts the arch store only).
    /// `seed` seeds the strategy's own sampler.
    pub fn build(
        &self,
        arch: &ArchParams,
        seed: u64,
    ) -> Result<Box<dyn SearchStrategy>, SearchError> {
        if arch.betas().is_some() && !self.entry().trains_pc_darts_betas {
            let with_betas: Vec<&str> = STRATEGIES
                .iter()
                .filter(|e| e.trains_pc_darts_betas)
                .map(|e| e.name)
                .collect();
            return Err(SearchError::Invalid(format!(
                "{}: PC-DARTS's edge normalisation (partial_channels > 1) works with {}; {} has \
                 no gradient for its betas",
                self.name(),
                with_betas.join(", "),
                self.name()
            )));
        }
        self.construct(arch, seed)
    }
}

strategy_registry! {
    /// DARTS (Liu et al. 2019), first or second order.
    Darts(DartsParams) {
        name: "darts",
        strategy: Darts,
        build: |arch, p, _seed| Ok(Box::new(Darts::new(arch, p.clone())?)),
        pc_darts_betas: true,
    }
    /// Random search over genotypes (Li & Talwalkar 2019; DARTS's baseline).
    Random(RandomParams) {
        name: "random",
        strategy: RandomSearch,
        build: |arch, p, seed| Ok(Box::new(RandomSearch::new(arch, p.clone(), seed)?)),
        pc_darts_betas: false,
    }
    /// GDAS (Dong & Yang 2019): hard Gumbel one-hot, straight-through, one op per edge.
    Gdas(GdasParams) {
        name: "gdas",
        strategy: Gdas,
        build: |arch, p, seed| Ok(Box::new(Gdas::new(arch, p.clone(), seed)?)),
        pc_darts_betas: true,
    }
    /// iDARTS (Zhang et al. 2021): implicit hypergradient, Neumann series.
    Idarts(IDartsParams) {
        name: "idarts",
        strategy: IDarts,
        build: |arch, p, _seed| Ok(Box::new(IDarts::new(arch, p.clone())?)),
        pc_darts_betas: true,
    }
    /// SNAS (Xie et al. 2019): single level, Gumbel-softmax samples, resource constraint.
    Snas(SnasParams) {
        name: "snas",
        strategy: Snas,
        build: |arch, p, seed| Ok(Box::new(Snas::new(arch, p.clone(), seed)?)),
        pc_darts_betas: false,
    }
    /// Joint first-order DARTS (RL-DARTS's default): alphas follow the training loss, single
    /// level.
    Joint(JointParams) {
        name: "joint",
        strategy: Joint,
        build: |arch, p, _seed| Ok(Box::new(Joint::new(arch, p.clone())?)),
        pc_darts_betas: true,
    }
    /// DARTS-PRIME (Maile et al. 2021): dynamic alpha-step schedule, proximity (or ADMM)
    /// regularisation towards the derived genotype.
    DartsPrime(DartsPrimeParams) {
        name: "darts_prime",
        strategy: DartsPrime,
        build: |arch, p, _seed| Ok(Box::new(DartsPrime::new(arch, p.clone())?)),
        pc_darts_betas: true,
    }
    /// UNAS (Vahdat et al. 2020): REINFORCE + relaxed (REBAR) estimator of the expected
    /// generalisation-gap objective.
    Unas(UnasParams) {
        name: "unas",
        strategy: Unas,
        build: |arch, p, seed| Ok(Box::new(Unas::new(arch, p.clone(), seed)?)),
        pc_darts_betas: false,
    }
}
