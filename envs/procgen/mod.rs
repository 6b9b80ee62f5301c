//! Procgen (Cobbe et al. 2020) through its C API: raw bindings (`sys`), validated options
//! (`options`), and `ProcgenVecEnv`, a safe batched env whose frames the C library writes
//! straight into a tch tensor.

pub mod options;
pub(crate) mod split;
pub mod sys;

pub use options::{
    find_game, normalized_return, DistributionMode, Game, ProcgenOptions, ACTION_MEANINGS, GAMES,
};

use std::ffi::c_void;
use std::os::raw::{c_char, c_int};

use tch::{Kind, Tensor};

use super::{check_actions, EnvError, EnvSpec, EpisodeTracker, LevelInfo, StepView, VecEnv};
use options::{validated_c_options, CValue};
use sys::{
    libenv_buffers, libenv_dtype, libenv_env, libenv_option, libenv_options, libenv_space_name,
    libenv_tensortype, LibEnv,
};

/// Observation side length (procgen renders 64x64 RGB).
pub const OBS_SIZE: i64 = 64;
/// Side length of the optional `render_human` frames.
pub const RENDER_SIZE: i64 = 512;

/// A batch of Procgen games in one libenv instance.
///
/// Memory layout follows libenv's structure-of-arrays contract: for each space key, one
/// pointer per env into caller-owned buffers that must outlive the C env. Every buffer is a
/// field of this struct, `Drop` closes the C env first, and nothing here ever reallocates a
/// buffer after `libenv_set_buffers`.
pub struct ProcgenVecEnv {
    lib: &'static LibEnv,
    handle: *mut libenv_env,
    spec: EnvSpec,
    game: &'static Game,
    options: ProcgenOptions,
    /// [N, 64, 64, 3] uint8, contiguous, written by the C library on `libenv_observe`.
    obs: Tensor,
    /// [N, 512, 512, 3] uint8 when `render_human` is on.
    render: Option<Tensor>,
    reward: Vec<f32>,
    first: Vec<u8>,
    actions: Vec<i32>,
    level_seed: Vec<i32>,
    prev_level_seed: Vec<i32>,
    prev_level_complete: Vec<u8>,
    // Pointer tables handed to C; their contents point into the buffers above.
    _ob_ptrs: Vec<*mut c_void>,
    _info_ptrs: Vec<*mut c_void>,
    _ac_ptrs: Vec<*mut c_void>,
    _buffers: Box<libenv_buffers>,
    // The option storage is kept alive as procgen's Python does ("kept alive for the
    // duration of the env").
    _option_items: Vec<libenv_option>,
    _option_data: Vec<Vec<u8>>,
    tracker: EpisodeTracker,
    /// Wall time spent inside libenv_act + libenv_observe (the library's own stepping cost).
    library_time: std::time::Duration,
    /// Buffers and pointer tables replaced by `pin_observations`: libenv's contract keeps
    /// every buffer handed to it valid until the env is closed.
    _retired: Vec<RetiredBuffers>,
}

struct RetiredBuffers {
    _obs: Tensor,
    _ob_ptrs: Vec<*mut c_void>,
    _info_ptrs: Vec<*mut c_void>,
    _ac_ptrs: Vec<*mut c_void>,
}

// SAFETY: the struct exclusively owns the C env and every buffer its pointers refer to; no
// other handle to them exists. libenv requires that "different environments must be usable
// from different threads simultaneously", so moving one env (and its buffers, which are heap
// allocations that do not move with the struct) to another thread is sound. It is not Sync:
// the raw pointers keep the auto-trait off, and all calls into C take `&mut self`.
unsafe impl Send for ProcgenVecEnv {}

fn c_name(name: &str) -> [c_char; sys::LIBENV_MAX_NAME_LEN as usize] {
    const LEN: usize = sys::LIBENV_MAX_NAME_LEN as usize;
    let mut out = [0 as c_char; LEN];
    // Keep the last byte NUL: libenv reads names as C strings.
    for (dst, src) in out.iter_mut().zip(name.bytes().take(LEN - 1)) {
        *dst = src as c_char;
    }
    out
}

fn tensortype_name(t: &libenv_tensortype) -> String {
    let bytes: Vec<u8> = t
        .name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn tensortype_shape(t: &libenv_tensortype) -> Vec<i64> {
    let ndim = t.ndim.clamp(0, sys::LIBENV_MAX_NDIM as c_int) as usize;
    t.shape[..ndim].iter().map(|&d| i64::from(d)).collect()
}

impl ProcgenVecEnv {
    /// Creates `num_envs` copies of `env_name`. Every option is validated before the C
    /// library sees it; an invalid one is an error listing the valid choices.
    pub fn new(env_name: &str, num_envs: usize, options: ProcgenOptions) -> Result<Self, EnvError> {
        let c_options = validated_c_options(env_name, num_envs, &options, &sys::assets_dir())?;
        let game = find_game(env_name)?;
        let lib = sys::library()?;

        // Option storage: each value's bytes, then the C structs pointing at them.
        let mut option_data: Vec<Vec<u8>> = Vec::with_capacity(c_options.len());
        let mut option_items: Vec<libenv_option> = Vec::with_capacity(c_options.len());
        for (name, value) in &c_options {
            let (dtype, count, bytes) = match value {
                CValue::Int32(v) => (
                    libenv_dtype::LIBENV_DTYPE_INT32,
                    1,
                    v.to_ne_bytes().to_vec(),
                ),
                CValue::Bool(b) => (libenv_dtype::LIBENV_DTYPE_UINT8, 1, vec![u8::from(*b)]),
                CValue::Str(s) => {
                    let mut bytes = s.as_bytes().to_vec();
                    let count = bytes.len() as c_int;
                    bytes.push(0); // NUL after the counted bytes, as cffi's char[] has
                    (libenv_dtype::LIBENV_DTYPE_UINT8, count, bytes)
                }
            };
            option_data.push(bytes);
            option_items.push(libenv_option {
                name: c_name(name),
                dtype,
                count,
                data: std::ptr::null_mut(),
            });
        }
        for (item, data) in option_items.iter_mut().zip(option_data.iter_mut()) {
            item.data = data.as_mut_ptr().cast();
        }
        let c_opts = libenv_options {
            items: option_items.as_mut_ptr(),
            count: option_items.len() as c_int,
        };

        // SAFETY: every option was validated above (name known to procgen, dtype and count as
        // it expects, values in range), so libenv_make cannot reach procgen's fatal(). The
        // option structs and the bytes they point to live in `option_items`/`option_data`,
        // which are moved into the returned struct and outlive the env.
        let handle = unsafe { lib.libenv_make(num_envs as c_int, c_opts) };
        if handle.is_null() {
            return Err(EnvError::MakeFailed {
                env: env_name.to_string(),
            });
        }

        // From here on a failure must close the env: build a guard-owning value early.
        let n = num_envs as i64;
        let obs = Tensor::zeros([n, OBS_SIZE, OBS_SIZE, 3], (Kind::Uint8, tch::Device::Cpu));
        let render = options.render_human.then(|| {
            Tensor::zeros(
                [n, RENDER_SIZE, RENDER_SIZE, 3],
                (Kind::Uint8, tch::Device::Cpu),
            )
        });
        let mut env = ProcgenVecEnv {
            lib,
            handle,
            spec: EnvSpec {
                name: game.name.to_string(),
                num_envs,
                obs_shape: vec![OBS_SIZE, OBS_SIZE, 3],
                obs_kind: Kind::Uint8,
                num_actions: ACTION_MEANINGS.len() as i64,
            },
            game,
            options,
            obs,
            render,
            reward: vec![0.0; num_envs],
            first: vec![0; num_envs],
            actions: vec![0; num_envs],
            level_seed: vec![0; num_envs],
            prev_level_seed: vec![0; num_envs],
            prev_level_complete: vec![0; num_envs],
            _ob_ptrs: Vec::new(),
            _info_ptrs: Vec::new(),
            _ac_ptrs: Vec::new(),
            _buffers: Box::new(libenv_buffers {
                ob: std::ptr::null_mut(),
                rew: std::ptr::null_mut(),
                first: std::ptr::null_mut(),
                info: std::ptr::null_mut(),
                ac: std::ptr::null_mut(),
            }),
            _option_items: option_items,
            _option_data: option_data,
            tracker: EpisodeTracker::new(num_envs),
            library_time: std::time::Duration::ZERO,
            _retired: Vec::new(),
        };
        env.bind_buffers()?;
        // SAFETY: buffers are bound; observe fills ob/rew/first/info for the initial state.
        unsafe { env.lib.libenv_observe(env.handle) };
        Ok(env)
    }

    fn tensortypes(&self, space: libenv_space_name) -> Vec<libenv_tensortype> {
        // SAFETY: called with a null pointer libenv returns the number of entries; the second
        // call writes exactly that many structs into a buffer of that length.
        unsafe {
            let count = self
                .lib
                .libenv_get_tensortypes(self.handle, space, std::ptr::null_mut());
            let mut types = vec![libenv_tensortype::default(); count.max(0) as usize];
            if !types.is_empty() {
                self.lib
                    .libenv_get_tensortypes(self.handle, space, types.as_mut_ptr());
            }
            types
        }
    }

    /// Checks the spaces the library reports against what this wrapper allocates, then hands
    /// libenv one pointer per (key, env) into our buffers.
    fn bind_buffers(&mut self) -> Result<(), EnvError> {
        let n = self.spec.num_envs;
        let obs_types = self.tensortypes(libenv_space_name::LIBENV_SPACE_OBSERVATION);
        match obs_types.as_slice() {
            [t] if tensortype_name(t) == "rgb"
                && t.dtype == libenv_dtype::LIBENV_DTYPE_UINT8
                && tensortype_shape(t) == [OBS_SIZE, OBS_SIZE, 3] => {}
            other => {
                return Err(EnvError::UnexpectedSpace {
                    space: "observation",
                    detail: format!(
                        "{:?}",
                        other.iter().map(tensortype_name).collect::<Vec<_>>()
                    ),
                })
            }
        }
        let ac_types = self.tensortypes(libenv_space_name::LIBENV_SPACE_ACTION);
        match ac_types.as_slice() {
            [t] if t.dtype == libenv_dtype::LIBENV_DTYPE_INT32
                && tensortype_shape(t).is_empty() => {}
            other => {
                return Err(EnvError::UnexpectedSpace {
                    space: "action",
                    detail: format!(
                        "{:?}",
                        other.iter().map(tensortype_name).collect::<Vec<_>>()
                    ),
                })
            }
        }

        let frame_bytes = (OBS_SIZE * OBS_SIZE * 3) as usize;
        let obs_base = self.obs.data_ptr() as *mut u8;
        self._ob_ptrs = (0..n)
            .map(|i| {
                // SAFETY: obs is a contiguous [N, 64, 64, 3] u8 tensor owned by self, and
                // i < N, so env i's frame starts i * frame_bytes into the same allocation
                // (the in-bounds offset `add` requires).
                unsafe { obs_base.add(i * frame_bytes) }.cast()
            })
            .collect();
        self._ac_ptrs = (0..n)
            .map(|i| (&mut self.actions[i] as *mut i32).cast())
            .collect();

        let info_types = self.tensortypes(libenv_space_name::LIBENV_SPACE_INFO);
        let mut info_ptrs: Vec<*mut c_void> = vec![std::ptr::null_mut(); info_types.len() * n];
        for (k, t) in info_types.iter().enumerate() {
            let name = tensortype_name(t);
            let shape = tensortype_shape(t);
            for i in 0..n {
                let ptr: *mut c_void = match (name.as_str(), t.dtype) {
                    ("level_seed", libenv_dtype::LIBENV_DTYPE_INT32) if shape.is_empty() => {
                        (&mut self.level_seed[i] as *mut i32).cast()
                    }
                    ("prev_level_seed", libenv_dtype::LIBENV_DTYPE_INT32) if shape.is_empty() => {
                        (&mut self.prev_level_seed[i] as *mut i32).cast()
                    }
                    ("prev_level_complete", libenv_dtype::LIBENV_DTYPE_UINT8)
                        if shape.is_empty() =>
                    {
                        (&mut self.prev_level_complete[i] as *mut u8).cast()
                    }
                    ("rgb", libenv_dtype::LIBENV_DTYPE_UINT8)
                        if shape == [RENDER_SIZE, RENDER_SIZE, 3] && self.render.is_some() =>
                    {
                        let base = self.render.as_ref().map(|r| r.data_ptr() as *mut u8);
                        let per_env = (RENDER_SIZE * RENDER_SIZE * 3) as usize;
                        // SAFETY: render is a contiguous [N, 512, 512, 3] u8 tensor.
                        unsafe { base.expect("checked is_some").add(i * per_env) }.cast()
                    }
                    _ => {
                        return Err(EnvError::UnexpectedSpace {
                            space: "info",
                            detail: format!(
                                "key '{name}' of shape {shape:?} and dtype {:?}",
                                t.dtype
                            ),
                        })
                    }
                };
                // Structure of arrays: key k's pointers for all envs are contiguous.
                info_ptrs[k * n + i] = ptr;
            }
        }
        self._info_ptrs = info_ptrs;
        *self._buffers = libenv_buffers {
            ob: self._ob_ptrs.as_mut_ptr(),
            rew: self.reward.as_mut_ptr(),
            first: self.first.as_mut_ptr(),
            info: self._info_ptrs.as_mut_ptr(),
            ac: self._ac_ptrs.as_mut_ptr(),
        };
        // SAFETY: every pointer in the struct refers to a buffer of the size the library's
        // tensortypes announced (checked above), owned by `self` and never reallocated, and
        // `Drop` closes the env before any of them is freed.
        unsafe {
            self.lib
                .libenv_set_buffers(self.handle, &mut *self._buffers)
        };
        Ok(())
    }

    pub fn game(&self) -> &'static Game {
        self.game
    }

    pub fn options(&self) -> &ProcgenOptions {
        &self.options
    }

    /// Total wall time spent inside the C library's act/observe since creation.
    pub fn library_time(&self) -> std::time::Duration {
        self.library_time
    }

    fn view(&self) -> StepView<'_> {
        StepView {
            obs: &self.obs,
            reward: &self.reward,
            first: &self.first,
            finished: self.tracker.finished(),
            level: LevelInfo {
                level_seed: &self.level_seed,
                prev_level_seed: &self.prev_level_seed,
                prev_level_complete: &self.prev_level_complete,
            },
        }
    }
}

impl VecEnv for ProcgenVecEnv {
    fn spec(&self) -> &EnvSpec {
        &self.spec
    }

    fn observe(&self) -> StepView<'_> {
        self.view()
    }

    fn step(&mut self, actions: &[i64]) -> Result<StepView<'_>, EnvError> {
        check_actions(&self.spec, actions)?;
        for (dst, &a) in self.actions.iter_mut().zip(actions) {
            *dst = a as i32; // in 0..15, checked above
        }
        let start = std::time::Instant::now();
        // SAFETY: the action buffers hold valid actions (checked); act steps every env
        // (possibly on procgen's threads, joined before observe returns) and observe writes
        // only into the buffers bound in `bind_buffers`.
        unsafe {
            self.lib.libenv_act(self.handle);
            self.lib.libenv_observe(self.handle);
        }
        self.library_time += start.elapsed();
        self.tracker.record(
            &self.reward,
            &self.first,
            Some((&self.prev_level_seed, &self.prev_level_complete)),
        );
        Ok(self.view())
    }

    /// Allocates the observation buffer in pinned memory (libtorch's caching host allocator),
    /// copies the current frames over, and hands libenv the new pointers. Safe between steps:
    /// libenv writes observations only inside `libenv_observe`, which has returned.
    fn pin_observations(&mut self, device: tch::Device) -> Result<bool, EnvError> {
        if !device.is_cuda() {
            return Ok(false);
        }
        if self.obs.f_is_pinned(device)? {
            return Ok(true);
        }
        let pinned = self.obs.f_pin_memory(device)?; // [N, 64, 64, 3] u8, a copy
        let old = std::mem::replace(&mut self.obs, pinned);
        self._retired.push(RetiredBuffers {
            _obs: old,
            _ob_ptrs: std::mem::take(&mut self._ob_ptrs),
            _info_ptrs: std::mem::take(&mut self._info_ptrs),
            _ac_ptrs: std::mem::take(&mut self._ac_ptrs),
        });
        self.bind_buffers()?;
        Ok(true)
    }

    /// The 512x512 frames of the last step, `[N, 512, 512, 3]` u8 (with `render_human`).
    fn render_frames(&self) -> Option<&Tensor> {
        self.render.as_ref()
    }

    fn save_state(&self) -> Result<Vec<u8>, EnvError> {
        bincode::serialize(&self.snapshot()?).map_err(|e| EnvError::State(e.to_string()))
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), EnvError> {
        let snap: ProcgenSnapshot = bincode::deserialize(state)
            .map_err(|e| EnvError::State(format!("corrupt procgen state: {e}")))?;
        let n = self.spec.num_envs;
        let lengths_ok = [
            snap.games.len(),
            snap.reward.len(),
            snap.first.len(),
            snap.level_seed.len(),
            snap.prev_level_seed.len(),
            snap.prev_level_complete.len(),
        ]
        .iter()
        .all(|&len| len == n);
        if snap.env != self.spec.name || !lengths_ok || snap.obs.len() != self.obs.numel() {
            return Err(EnvError::State(format!(
                "saved for {} x {}, this env is {} x {n}",
                snap.env,
                snap.games.len(),
                self.spec.name
            )));
        }
        let fns = sys::state_fns()?;
        for (i, game) in snap.games.iter().enumerate() {
            self.set_game_state(fns, i, &mut game.clone());
        }
        // Buffers are refilled in place: their addresses are registered with the C env.
        self.obs
            .copy_(&Tensor::from_slice(&snap.obs).view_as(&self.obs));
        self.reward.copy_from_slice(&snap.reward);
        self.first.copy_from_slice(&snap.first);
        self.level_seed.copy_from_slice(&snap.level_seed);
        self.prev_level_seed.copy_from_slice(&snap.prev_level_seed);
        self.prev_level_complete
            .copy_from_slice(&snap.prev_level_complete);
        self.tracker = snap.tracker;
        Ok(())
    }
}

/// What `save_state` writes: procgen's own per-env serialisation plus our episode counters
/// and the last transition's buffers (what `observe` shows).
#[derive(serde::Serialize, serde::Deserialize)]
struct ProcgenSnapshot {
    env: String,
    games: Vec<Vec<u8>>,
    tracker: EpisodeTracker,
    obs: Vec<u8>,
    reward: Vec<f32>,
    first: Vec<u8>,
    level_seed: Vec<i32>,
    prev_level_seed: Vec<i32>,
    prev_level_complete: Vec<u8>,
}

impl ProcgenVecEnv {
    /// Procgen's serialisation of game `env` (level generator, game RNG, entities, step
    /// counters) into `buf`; returns the bytes written.
    fn game_state<'b>(
        &self,
        fns: &sys::StateFns,
        env: usize,
        buf: &'b mut [u8],
    ) -> Result<&'b mut [u8], EnvError> {
        assert!(
            env < self.spec.num_envs,
            "game {env} of {}",
            self.spec.num_envs
        );
        // SAFETY: the handle is live, env < num_envs (checked above), and buf holds
        // buf.len() bytes, the length passed; get_state returns the number of bytes it wrote.
        let n = unsafe {
            (fns.get_state)(
                self.handle,
                env as c_int,
                buf.as_mut_ptr().cast(),
                buf.len() as c_int,
            )
        };
        if n < 0 || n as usize > buf.len() {
            return Err(EnvError::State(format!(
                "procgen get_state returned {n} for env {env}"
            )));
        }
        Ok(&mut buf[..n as usize])
    }

    /// Sets game `env` to `bytes`, which [`Self::game_state`] produced for a game of the same
    /// name.
    fn set_game_state(&mut self, fns: &sys::StateFns, env: usize, bytes: &mut [u8]) {
        assert!(
            env < self.spec.num_envs,
            "game {env} of {}",
            self.spec.num_envs
        );
        // SAFETY: the handle is live, env < num_envs (checked above), and the buffer holds
        // exactly the bytes procgen's get_state produced for a game of the same name.
        unsafe {
            (fns.set_state)(
                self.handle,
                env as c_int,
                bytes.as_mut_ptr().cast(),
                bytes.len() as c_int,
            )
        };
    }

    fn snapshot(&self) -> Result<ProcgenSnapshot, EnvError> {
        let fns = sys::state_fns()?;
        let mut buf = vec![0u8; sys::MAX_STATE_SIZE];
        let mut games = Vec::with_capacity(self.spec.num_envs);
        for i in 0..self.spec.num_envs {
            games.push(self.game_state(fns, i, &mut buf)?.to_vec());
        }
        Ok(ProcgenSnapshot {
            env: self.spec.name.clone(),
            games,
            tracker: self.tracker.clone(),
            obs: Vec::<u8>::try_from(self.obs.flatten(0, -1))?,
            reward: self.reward.clone(),
            first: self.first.clone(),
            level_seed: self.level_seed.clone(),
            prev_level_seed: self.prev_level_seed.clone(),
            prev_level_complete: self.prev_level_complete.clone(),
        })
    }
}

impl Drop for ProcgenVecEnv {
    fn drop(&mut self) {
        // SAFETY: handle came from libenv_make and is closed exactly once; the buffers it
        // writes into are fields dropped only after this returns.
        unsafe { self.lib.libenv_close(self.handle) };
    }
}

impl std::fmt::Debug for ProcgenVecEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcgenVecEnv")
            .field("spec", &self.spec)
            .field("options", &self.options)
            .finish()
    }
}
