//! Evaluation of a checkpoint on chosen levels (the Procgen protocol: training levels, and the
//! full distribution for generalisation), and GIFs of the episodes.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::build::{build_policy, Policy};
use super::config::TrainConfig;
use crate::agents::ActorCritic;
use crate::envs::gym::GYM_ENVS;
use crate::envs::procgen::{find_game, normalized_return, ProcgenOptions, ProcgenVecEnv};
use crate::envs::{make_vec_env, EpisodeStats, VecEnv};
use crate::train::run_dir::{run_of_checkpoint, RunDir};
use crate::train::TrainError;

/// Where and how to evaluate a checkpoint.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Defaults to the training env.
    pub env: Option<String>,
    /// Levels to evaluate on: `num_levels = 0` is the full distribution (the test protocol).
    pub num_levels: i32,
    pub start_level: i32,
    pub episodes: usize,
    pub num_envs: usize,
    /// argmax actions instead of sampling (the paper evaluates the stochastic policy).
    pub greedy: bool,
    pub seed: u64,
    /// Write GIFs of the first episodes of env 0 here.
    pub video: Option<PathBuf>,
    pub device: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalResult {
    pub env: String,
    pub episodes: usize,
    pub mean_return: f64,
    pub std_return: f64,
    pub mean_normalized_return: Option<f64>,
    pub std_normalized_return: Option<f64>,
    pub num_levels: i32,
    pub start_level: i32,
    pub greedy: bool,
}

/// Loads the policy of `checkpoint` (a `checkpoints/iter_N` folder, or a run directory for its
/// newest checkpoint) and plays `episodes` episodes. Each env contributes the same number of
/// episodes, so short episodes are not over-represented.
pub fn evaluate(checkpoint: &Path, opts: &EvalOptions) -> Result<EvalResult, TrainError> {
    let (run_root, ckpt) = match run_of_checkpoint(checkpoint) {
        Some(run) => (run, checkpoint.to_path_buf()),
        None => {
            let run = RunDir::open(checkpoint)?;
            let ckpt = run
                .latest_checkpoint()?
                .ok_or_else(|| TrainError::Checkpoint {
                    path: checkpoint.to_path_buf(),
                    reason: "the run has no complete checkpoint".into(),
                })?;
            (run.root, ckpt)
        }
    };
    let config: TrainConfig = crate::config::load_config(
        Some(&run_root.join(crate::train::run_dir::CONFIG_FILE)),
        TrainConfig::default(),
        &[],
    )?;
    let env_name = opts.env.clone().unwrap_or_else(|| config.env.clone());
    if opts.episodes == 0 || opts.num_envs == 0 {
        return Err(TrainError::Invalid(
            "--episodes and --num-envs must be at least 1".into(),
        ));
    }
    let device = crate::device::parse_device(&opts.device)?;
    tch::manual_seed(opts.seed as i64);
    let procgen = ProcgenOptions {
        num_levels: opts.num_levels,
        start_level: opts.start_level,
        render_human: opts.video.is_some(),
        rand_seed: Some((opts.seed % i32::MAX as u64) as i32),
        ..config.procgen.clone()
    };
    let mut env: Box<dyn VecEnv> = if GYM_ENVS.contains(&env_name.as_str()) {
        make_vec_env(&env_name, opts.num_envs, opts.seed, &procgen)?
    } else {
        Box::new(ProcgenVecEnv::new(
            &env_name,
            opts.num_envs,
            procgen.clone(),
        )?)
    };
    let spec = env.spec().clone();
    let (mut vs, policy) = build_policy(&config, &spec, device)?;
    let weights = ckpt.join("weights.safetensors");
    vs.load(&weights).map_err(|e| TrainError::Checkpoint {
        path: weights.clone(),
        reason: format!(
            "{e} (was the checkpoint written for env '{}' with this encoder?)",
            config.env
        ),
    })?;
    let returns = match policy {
        Policy::Fixed(policy) => play(&policy, &(), env.as_mut(), opts, device)?,
        Policy::Searched(policy, mut search) => {
            // A supernet checkpoint plays the strategy's deterministic architecture.
            search.load(&ckpt)?;
            let weights = search.eval_weights()?;
            play(&policy, &weights, env.as_mut(), opts, device)?
        }
    };
    let stats = |xs: &[f64]| -> (f64, f64) {
        let m = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64;
        (m, var.sqrt())
    };
    let (mean_return, std_return) = stats(&returns);
    let normalized = if GYM_ENVS.contains(&env_name.as_str()) {
        None
    } else {
        let game = find_game(&env_name)?;
        let n: Vec<f64> = returns
            .iter()
            .map(|&r| normalized_return(game, procgen.distribution_mode, r))
            .collect();
        Some(stats(&n))
    };
    Ok(EvalResult {
        env: env_name,
        episodes: returns.len(),
        mean_return,
        std_return,
        mean_normalized_return: normalized.map(|n| n.0),
        std_normalized_return: normalized.map(|n| n.1),
        num_levels: opts.num_levels,
        start_level: opts.start_level,
        greedy: opts.greedy,
    })
}

/// Plays until every env finished `episodes / num_envs` (rounded up) episodes; their returns.
fn play<A>(
    policy: &ActorCritic<A>,
    arch: &A,
    env: &mut dyn VecEnv,
    opts: &EvalOptions,
    device: Device,
) -> Result<Vec<f64>, TrainError> {
    let per_env = opts.episodes.div_ceil(opts.num_envs);
    let mut counted = vec![0usize; opts.num_envs];
    let mut returns: Vec<f64> = Vec::with_capacity(per_env * opts.num_envs);
    let mut video = VideoRecorder::new(opts.video.as_deref(), 3)?;
    let step_limit = 100_000usize;
    for _ in 0..step_limit {
        if counted.iter().all(|&c| c >= per_env) {
            break;
        }
        let obs = env.observe().obs.to_device(device);
        let actions = tch::no_grad(|| {
            if opts.greedy {
                let (logits, _) = policy.forward(&obs, arch);
                logits.argmax(-1, false)
            } else {
                policy.act(&obs, arch).action
            }
        });
        let actions = Vec::<i64>::try_from(actions.to_device(Device::Cpu).to_kind(Kind::Int64))?;
        let view = env.step(&actions)?;
        for ep in view.finished {
            if counted[ep.env] < per_env {
                counted[ep.env] += 1;
                returns.push(ep.episode_return);
            }
        }
        let finished_env0 = view.finished.iter().any(|e: &EpisodeStats| e.env == 0);
        video.frame(env, finished_env0)?;
    }
    if returns.len() < per_env * opts.num_envs {
        return Err(TrainError::Invalid(format!(
            "only {} of {} episodes finished within {step_limit} steps",
            returns.len(),
            per_env * opts.num_envs
        )));
    }
    Ok(returns)
}

/// Writes env 0's episodes as GIFs (512x512 with Procgen's render_human, else the frames).
struct VideoRecorder {
    dir: Option<PathBuf>,
    max_episodes: usize,
    episode: usize,
    writer: Option<crate::media::GifWriter>,
}

impl VideoRecorder {
    fn new(dir: Option<&Path>, max_episodes: usize) -> Result<Self, TrainError> {
        if let Some(d) = dir {
            std::fs::create_dir_all(d).map_err(|source| TrainError::Io {
                path: d.to_path_buf(),
                source,
            })?;
        }
        Ok(Self {
            dir: dir.map(Path::to_path_buf),
            max_episodes,
            episode: 0,
            writer: None,
        })
    }

    fn frame(&mut self, env: &dyn VecEnv, episode_ended: bool) -> Result<(), TrainError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        if self.episode >= self.max_episodes {
            return Ok(());
        }
        if episode_ended {
            self.writer = None; // closes the file
            self.episode += 1;
            if self.episode >= self.max_episodes {
                return Ok(());
            }
        }
        // Only envs that render (Procgen with render_human) have a picture to record.
        let Some(frames) = env.render_frames() else {
            return Ok(());
        };
        let frame: Tensor = frames.get(0);
        let (h, w) = (frame.size()[0] as usize, frame.size()[1] as usize);
        if self.writer.is_none() {
            let path = dir.join(format!("episode_{:02}.gif", self.episode));
            self.writer = Some(crate::media::GifWriter::create(&path, h, w, 15)?);
        }
        let rgb = Vec::<u8>::try_from(frame.flatten(0, -1))?;
        self.writer.as_mut().expect("set above").add_frame(&rgb)?;
        Ok(())
    }
}
