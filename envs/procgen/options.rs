//! The 16 Procgen games, their distribution modes, and every libenv option with its exact C
//! type (Cobbe et al. 2020, procgen 0.10.7). Everything is validated here, in Rust: procgen
//! answers a bad option with `fatal()`, which aborts the whole process.

use serde::{Deserialize, Serialize};

use super::super::error::did_you_mean;
use super::super::EnvError;

/// One Procgen game and what it allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Game {
    pub name: &'static str,
    /// (R_min, R_max) for the normalised return in easy mode (Cobbe et al. 2020, table).
    pub easy_range: (f64, f64),
    /// (R_min, R_max) in hard mode.
    pub hard_range: (f64, f64),
    pub allows_extreme: bool,
    pub allows_memory: bool,
    /// The fixed level seed of `exploration` mode, for the 8 games that have one.
    pub exploration_seed: Option<i32>,
    /// Steps after which an episode is cut.
    pub timeout: u32,
}

const fn game(
    name: &'static str,
    easy_range: (f64, f64),
    hard_range: (f64, f64),
    allows_extreme: bool,
    allows_memory: bool,
    exploration_seed: Option<i32>,
    timeout: u32,
) -> Game {
    Game {
        name,
        easy_range,
        hard_range,
        allows_extreme,
        allows_memory,
        exploration_seed,
        timeout,
    }
}

/// All games, alphabetically (the order of procgen's ENV_NAMES).
pub const GAMES: [Game; 16] = [
    game(
        "bigfish",
        (1.0, 40.0),
        (0.0, 40.0),
        false,
        false,
        None,
        6000,
    ),
    game(
        "bossfight",
        (0.5, 13.0),
        (0.5, 13.0),
        false,
        false,
        None,
        4000,
    ),
    game(
        "caveflyer",
        (3.5, 12.0),
        (2.0, 13.4),
        false,
        true,
        Some(1259048185),
        1000,
    ),
    game("chaser", (0.5, 13.0), (0.5, 14.2), true, false, None, 1000),
    game(
        "climber",
        (2.0, 12.6),
        (1.0, 12.6),
        false,
        false,
        Some(1561126160),
        1000,
    ),
    game(
        "coinrun",
        (5.0, 10.0),
        (5.0, 10.0),
        false,
        false,
        Some(1949448038),
        1000,
    ),
    game(
        "dodgeball",
        (1.5, 19.0),
        (1.5, 19.0),
        true,
        true,
        None,
        1000,
    ),
    game(
        "fruitbot",
        (-1.5, 32.4),
        (-0.5, 27.2),
        false,
        false,
        None,
        1000,
    ),
    game(
        "heist",
        (3.5, 10.0),
        (2.0, 10.0),
        false,
        true,
        Some(876640971),
        1000,
    ),
    game(
        "jumper",
        (1.0, 10.0),
        (1.0, 10.0),
        false,
        true,
        Some(1434825276),
        1000,
    ),
    game(
        "leaper",
        (1.5, 10.0),
        (1.5, 10.0),
        true,
        false,
        Some(1318677581),
        1000,
    ),
    game(
        "maze",
        (5.0, 10.0),
        (4.0, 10.0),
        false,
        true,
        Some(158988835),
        1000,
    ),
    game("miner", (1.5, 13.0), (1.5, 20.0), false, true, None, 1000),
    game(
        "ninja",
        (3.5, 10.0),
        (2.0, 10.0),
        false,
        false,
        Some(1123500215),
        1000,
    ),
    game(
        "plunder",
        (4.5, 30.0),
        (3.0, 30.0),
        false,
        false,
        None,
        1000,
    ),
    game(
        "starpilot",
        (2.5, 64.0),
        (1.5, 35.0),
        true,
        false,
        None,
        1000,
    ),
];

/// The 15 discrete actions shared by every game (procgen's `get_combos`).
pub const ACTION_MEANINGS: [&str; 15] = [
    "LEFT+DOWN",
    "LEFT",
    "LEFT+UP",
    "DOWN",
    "NOOP",
    "UP",
    "RIGHT+DOWN",
    "RIGHT",
    "RIGHT+UP",
    "D",
    "A",
    "W",
    "S",
    "Q",
    "E",
];

pub fn find_game(name: &str) -> Result<&'static Game, EnvError> {
    GAMES
        .iter()
        .find(|g| g.name == name)
        .ok_or_else(|| EnvError::UnknownEnv {
            name: name.to_string(),
            hint: did_you_mean(name, super::super::all_env_names()),
            valid: super::super::all_env_names().join(", "),
        })
}

/// Level distribution. `exploration` is procgen's Python-side alias: hard mode on one fixed
/// level per game.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DistributionMode {
    #[default]
    Easy,
    Hard,
    Extreme,
    Memory,
    Exploration,
}

impl DistributionMode {
    pub const ALL: [DistributionMode; 5] = [
        DistributionMode::Easy,
        DistributionMode::Hard,
        DistributionMode::Extreme,
        DistributionMode::Memory,
        DistributionMode::Exploration,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DistributionMode::Easy => "easy",
            DistributionMode::Hard => "hard",
            DistributionMode::Extreme => "extreme",
            DistributionMode::Memory => "memory",
            DistributionMode::Exploration => "exploration",
        }
    }

    /// The value of the C option `distribution_mode` (procgen's game.h enum).
    fn c_value(self) -> i32 {
        match self {
            DistributionMode::Easy => 0,
            DistributionMode::Hard | DistributionMode::Exploration => 1,
            DistributionMode::Extreme => 2,
            DistributionMode::Memory => 10,
        }
    }

    pub fn allowed_for(self, game: &Game) -> bool {
        match self {
            DistributionMode::Easy | DistributionMode::Hard => true,
            DistributionMode::Extreme => game.allows_extreme,
            DistributionMode::Memory => game.allows_memory,
            DistributionMode::Exploration => game.exploration_seed.is_some(),
        }
    }

    /// The games that accept this mode, for error messages and `envs list`.
    pub fn games(self) -> Vec<&'static str> {
        GAMES
            .iter()
            .filter(|g| self.allowed_for(g))
            .map(|g| g.name)
            .collect()
    }
}

impl std::fmt::Display for DistributionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every procgen option. Defaults are procgen's Python defaults, except the distribution
/// mode (easy, the paper's training protocol) and `rand_seed`, which a trainer sets from its
/// seed. All of them are always passed to the C library: a missing option takes the C++
/// default, which differs from Python's (different frames, and 9x slower stepping).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcgenOptions {
    /// Number of distinct levels (0 = the unbounded set, ~2^31 seeds). C int32.
    pub num_levels: i32,
    /// First level seed. C int32, must be >= 0.
    pub start_level: i32,
    pub distribution_mode: DistributionMode,
    /// Play levels in order (next seed = current + 997) instead of sampling. C uint8.
    pub use_sequential_levels: bool,
    /// Seeds the level-seed generator; None draws one from the OS like procgen's Python.
    pub rand_seed: Option<i32>,
    /// Threads procgen steps the envs on. C int32.
    pub num_threads: i32,
    /// Also render 512x512 frames (for videos; ~10x slower). C uint8.
    pub render_human: bool,
    pub center_agent: bool,
    pub use_backgrounds: bool,
    pub use_monochrome_assets: bool,
    pub restrict_themes: bool,
    pub use_generated_assets: bool,
    pub paint_vel_info: bool,
    /// procgen's debug_mode int (0 = off). C int32.
    pub debug_mode: i32,
}

impl Default for ProcgenOptions {
    fn default() -> Self {
        Self {
            num_levels: 0,
            start_level: 0,
            distribution_mode: DistributionMode::Easy,
            use_sequential_levels: false,
            rand_seed: None,
            num_threads: 4,
            render_human: false,
            center_agent: true,
            use_backgrounds: true,
            use_monochrome_assets: false,
            restrict_themes: false,
            use_generated_assets: false,
            paint_vel_info: false,
            debug_mode: 0,
        }
    }
}

/// Upper bound on envs in one batch: memory (12 KiB of frame per env, 768 KiB with
/// rendering) rather than any procgen limit.
pub const MAX_NUM_ENVS: usize = 65_536;
/// procgen starts this many OS threads; more than this is a typo, not a plan.
pub const MAX_THREADS: i32 = 256;

/// One libenv option in C form: name, dtype and the bytes its `data` pointer points at.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CValue {
    Int32(i32),
    Bool(bool),
    /// UTF-8 bytes; `count` is the length without the NUL that is stored after them.
    Str(String),
}

/// Checks everything and returns the complete option list in the C library's terms.
pub(crate) fn validated_c_options(
    env_name: &str,
    num_envs: usize,
    options: &ProcgenOptions,
    resource_root: &std::path::Path,
) -> Result<Vec<(&'static str, CValue)>, EnvError> {
    let game = find_game(env_name)?;
    let invalid = |option: &'static str, value: String, reason: String| EnvError::InvalidOption {
        option,
        value,
        reason,
    };
    if num_envs == 0 || num_envs > MAX_NUM_ENVS {
        return Err(invalid(
            "num_envs",
            num_envs.to_string(),
            format!("must be in 1..={MAX_NUM_ENVS}"),
        ));
    }
    let mode = options.distribution_mode;
    if !mode.allowed_for(game) {
        return Err(invalid(
            "distribution_mode",
            mode.name().into(),
            format!(
                "{} does not have it; games with {}: {}",
                game.name,
                mode,
                mode.games().join(", ")
            ),
        ));
    }
    if options.num_levels < 0 {
        return Err(invalid(
            "num_levels",
            options.num_levels.to_string(),
            "must be >= 0 (0 = unbounded)".into(),
        ));
    }
    if options.start_level < 0 {
        return Err(invalid(
            "start_level",
            options.start_level.to_string(),
            "must be >= 0".into(),
        ));
    }
    if i64::from(options.start_level) + i64::from(options.num_levels) > i64::from(i32::MAX) {
        return Err(invalid(
            "start_level",
            options.start_level.to_string(),
            format!(
                "start_level + num_levels must fit in a 32-bit int (max {})",
                i32::MAX
            ),
        ));
    }
    if !(1..=MAX_THREADS).contains(&options.num_threads) {
        return Err(invalid(
            "num_threads",
            options.num_threads.to_string(),
            format!("must be in 1..={MAX_THREADS}"),
        ));
    }
    if options.debug_mode < 0 {
        return Err(invalid(
            "debug_mode",
            options.debug_mode.to_string(),
            "must be >= 0".into(),
        ));
    }
    let rand_seed = match options.rand_seed {
        Some(seed) if seed < 0 => {
            return Err(invalid(
                "rand_seed",
                seed.to_string(),
                "must be >= 0".into(),
            ));
        }
        Some(seed) => seed,
        None => (rand::random::<u32>() >> 1) as i32,
    };
    let (num_levels, start_level) = if mode == DistributionMode::Exploration {
        // As procgen's Python: exploration fixes the level, so explicit levels contradict it.
        if options.num_levels != 0 || options.start_level != 0 {
            return Err(invalid(
                "distribution_mode",
                "exploration".into(),
                "exploration mode chooses the level itself; leave num_levels and start_level at 0"
                    .into(),
            ));
        }
        (
            1,
            game.exploration_seed
                .expect("allowed_for checked the seed exists"),
        )
    } else {
        (options.num_levels, options.start_level)
    };
    if !resource_root.is_dir() {
        return Err(EnvError::LibraryMissing {
            path: resource_root.to_path_buf(),
            reason: "the assets folder is missing".into(),
        });
    }
    let mut root = resource_root.to_string_lossy().into_owned();
    if !root.ends_with('/') {
        root.push('/'); // procgen concatenates file names onto it
    }
    Ok(vec![
        ("center_agent", CValue::Bool(options.center_agent)),
        (
            "use_generated_assets",
            CValue::Bool(options.use_generated_assets),
        ),
        (
            "use_monochrome_assets",
            CValue::Bool(options.use_monochrome_assets),
        ),
        ("restrict_themes", CValue::Bool(options.restrict_themes)),
        ("use_backgrounds", CValue::Bool(options.use_backgrounds)),
        ("paint_vel_info", CValue::Bool(options.paint_vel_info)),
        ("distribution_mode", CValue::Int32(mode.c_value())),
        ("env_name", CValue::Str(game.name.to_string())),
        ("num_levels", CValue::Int32(num_levels)),
        ("start_level", CValue::Int32(start_level)),
        ("num_actions", CValue::Int32(ACTION_MEANINGS.len() as i32)),
        (
            "use_sequential_levels",
            CValue::Bool(options.use_sequential_levels),
        ),
        ("debug_mode", CValue::Int32(options.debug_mode)),
        ("rand_seed", CValue::Int32(rand_seed)),
        ("num_threads", CValue::Int32(options.num_threads)),
        ("render_human", CValue::Bool(options.render_human)),
        ("resource_root", CValue::Str(root)),
    ])
}

/// Normalised return (R - R_min) / (R_max - R_min) with the constants of the Procgen paper.
pub fn normalized_return(game: &Game, mode: DistributionMode, episode_return: f64) -> f64 {
    let (lo, hi) = match mode {
        DistributionMode::Easy => game.easy_range,
        _ => game.hard_range,
    };
    (episode_return - lo) / (hi - lo)
}

#[cfg(test)]
#[path = "options_tests.rs"]
mod tests;
