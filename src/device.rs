//! Device selection (`auto | cpu | cuda | cuda:N`), loading libtorch's CUDA backend, and the
//! facts `rl-darts info` prints.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tch::Device;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device '{0}'; use auto, cpu, cuda or cuda:N")]
    Unknown(String),
    #[error("device '{requested}' asked for, but {reason}")]
    Unavailable { requested: String, reason: String },
}

/// Parses a device name. `auto` is the first GPU when CUDA is usable, else the CPU.
pub fn parse_device(name: &str) -> Result<Device, DeviceError> {
    let backend = load_cuda_backend();
    let cuda_count = if tch::Cuda::is_available() {
        tch::Cuda::device_count()
    } else {
        0
    };
    match name {
        "auto" => Ok(if cuda_count > 0 {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        "cpu" => Ok(Device::Cpu),
        _ => {
            let index = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|i| i.parse::<usize>().ok())
                    .ok_or_else(|| DeviceError::Unknown(name.to_string()))?,
                None => return Err(DeviceError::Unknown(name.to_string())),
            };
            if cuda_count == 0 {
                let reason = match backend {
                    CudaBackend::Unloadable { path, reason } => format!(
                        "libtorch's CUDA backend {} could not be loaded ({reason}); use --device cpu",
                        path.display()
                    ),
                    CudaBackend::Absent => {
                        "this libtorch is built without CUDA; use --device cpu".into()
                    }
                    _ => "libtorch sees no CUDA device on this machine; use --device cpu".into(),
                };
                return Err(DeviceError::Unavailable {
                    requested: name.to_string(),
                    reason,
                });
            }
            if index as i64 >= cuda_count {
                return Err(DeviceError::Unavailable {
                    requested: name.to_string(),
                    reason: format!("only {cuda_count} CUDA device(s) exist"),
                });
            }
            Ok(Device::Cuda(index))
        }
    }
}

/// The folder of the libtorch this process runs against: where the loaded `libtorch_cpu.so`
/// lies, else (not Linux, or not loaded yet) the one the binary was linked with. They differ
/// where the binary travelled (scripts/gpu_check.sh runs it on another machine's libtorch).
pub fn libtorch_lib_dir() -> Option<PathBuf> {
    loaded_library("libtorch_cpu.so")
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .or_else(|| option_env!("RL_DARTS_BUILD_LIBTORCH_LIB").map(PathBuf::from))
}

/// The tch release this binary was built with (from the Cargo.lock it was built from).
pub fn tch_version() -> &'static str {
    option_env!("RL_DARTS_BUILD_TCH_VERSION").unwrap_or("(unknown)")
}

/// The path of a shared library mapped into this process, by file name (`/proc/self/maps`).
fn loaded_library(file_name: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        // address perms offset dev inode path
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(Path::new)
        .find(|p| p.file_name().is_some_and(|n| n == file_name))
        .map(Path::to_path_buf)
}

/// libtorch's CUDA backend (`libtorch_cuda.so`) in this process, as [`load_cuda_backend`]
/// left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaBackend {
    /// Linked into the binary (the default build, see build.rs) and loaded with it.
    Linked(PathBuf),
    /// Opened at run time from beside `libtorch_cpu.so`.
    Loaded(PathBuf),
    /// This libtorch has no CUDA backend (a CPU-only build).
    Absent,
    /// The file exists but could not be opened, typically because the CUDA libraries it needs
    /// (libcudart, cuDNN, ...) are not installed.
    Unloadable { path: PathBuf, reason: String },
}

/// Makes libtorch's CUDA backend available: opens `libtorch_cuda.so` from the folder of the
/// libtorch this process runs against, unless it is already loaded. Idempotent.
///
/// Why: nothing in the binary references libtorch_cuda by symbol; its static initialisers
/// register CUDA with libtorch. The default build links it on purpose (build.rs); the build
/// that travels to the GPU machine (scripts/gpu_check.sh) cannot, since it is linked here
/// against a PyPI torch without its CUDA libraries. libtorch caches the answer to its first
/// "is CUDA there?" question, so this must run before anything asks: `main` calls it first,
/// and [`parse_device`] and [`describe_devices`] call it too.
pub fn load_cuda_backend() -> &'static CudaBackend {
    static BACKEND: OnceLock<CudaBackend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        if let Some(path) = loaded_library("libtorch_cuda.so") {
            return CudaBackend::Linked(path);
        }
        let Some(path) = libtorch_lib_dir().map(|d| d.join("libtorch_cuda.so")) else {
            return CudaBackend::Absent;
        };
        if !path.exists() {
            return CudaBackend::Absent;
        }
        open_global(&path)
    })
}

#[cfg(unix)]
fn open_global(path: &Path) -> CudaBackend {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: libtorch_cuda.so is the CUDA half of the very libtorch this process runs
    // (same folder as the loaded libtorch_cpu.so, hence the same build); its initialisers only
    // register CUDA kernels, hooks and allocators with that libtorch, which is what linking it
    // would have done before `main`. RTLD_GLOBAL: its symbols serve libraries it pulls in.
    match unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) } {
        Ok(lib) => {
            // Never unloaded: libtorch keeps pointers into it for the life of the process.
            std::mem::forget(lib);
            CudaBackend::Loaded(path.to_path_buf())
        }
        Err(e) => CudaBackend::Unloadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    }
}

#[cfg(not(unix))]
fn open_global(path: &Path) -> CudaBackend {
    CudaBackend::Unloadable {
        path: path.to_path_buf(),
        reason: "run-time loading is implemented for Unix only".into(),
    }
}

pub fn libtorch_version() -> Option<String> {
    let version_py = libtorch_lib_dir()?.parent()?.join("version.py");
    let text = std::fs::read_to_string(version_py).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
}

/// One line per device: the CPU with its thread count, then each CUDA device with its name
/// and memory (from nvidia-smi, which ships with the driver; libtorch exposes neither).
pub fn describe_devices() -> Vec<String> {
    let backend = load_cuda_backend();
    let mut lines = vec![format!("cpu ({} libtorch threads)", tch::get_num_threads())];
    if !tch::Cuda::is_available() {
        lines.push(match backend {
            CudaBackend::Unloadable { path, reason } => format!(
                "cuda: not available ({} could not be loaded: {reason})",
                path.display()
            ),
            CudaBackend::Absent => "cuda: not available (libtorch built without CUDA)".into(),
            _ => "cuda: not available (no CUDA device or driver)".into(),
        });
        return lines;
    }
    let names: Vec<String> = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    for i in 0..tch::Cuda::device_count() {
        let detail = names
            .get(i as usize)
            .cloned()
            .unwrap_or_else(|| "name unknown".into());
        lines.push(format!(
            "cuda:{i} ({detail}), cudnn {}",
            tch::Cuda::cudnn_is_available()
        ));
    }
    lines
}

/// Environment variable that turns [`keep_freed_memory_for_reuse`] off (any value).
pub const SYSTEM_MALLOC_ENV: &str = "RL_DARTS_SYSTEM_MALLOC";

/// Makes glibc keep freed memory in the process heap instead of handing it back to the kernel.
///
/// Why: on CPU, libtorch allocates every activation and gradient of a PPO minibatch afresh
/// (the first IMPALA conv output alone is 2048 x 16 x 64 x 64 f32 = 512 MiB). glibc serves
/// blocks above 32 MiB with `mmap` and unmaps them on free, so each minibatch page-faults
/// ~gigabytes of zeroed pages from the kernel again. Measured on 2 cores (BENCHMARKS.md): the
/// PPO update went from 5.5 s to 3.6 s per 2048-sample minibatch with the heap kept. The cost
/// is that the process's resident size stays at its peak, which training reaches anyway.
///
/// The PPO loop calls it on the CPU for every encoder. A supernet's PPO minibatches repeat
/// the same tensor sizes every step, and the RL-DARTS search at paper size ran 2x faster with
/// the heap kept (12 -> 23 env steps/s, 16 envs x 64 steps; at the quick preset's widths no
/// change). Supervised DARTS searches do not call it: their many differently sized op
/// activations fragment a heap that never returns memory, and glibc's malloc then spent most
/// of the time walking its free lists. The DARTS second-order search iteration measured 280 s
/// with the heap kept against 52.5 s with glibc's defaults (first order: 242 s for the first
/// iteration, then 19 s). It is a process-wide setting that cannot be undone (any `mallopt`
/// disables glibc's dynamic mmap threshold).
///
/// Returns a note when the setting could not be applied (non-glibc targets, or opted out with
/// `RL_DARTS_SYSTEM_MALLOC`); None when it was applied.
pub fn keep_freed_memory_for_reuse() -> Option<String> {
    if std::env::var_os(SYSTEM_MALLOC_ENV).is_some() {
        return Some(format!(
            "{SYSTEM_MALLOC_ENV} is set: glibc's default allocator policy is kept"
        ));
    }
    keep_heap_impl()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_heap_impl() -> Option<String> {
    // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time, and
    // blocks already mapped keep being freed the way they were allocated.
    let (no_mmap, no_trim) = unsafe {
        (
            // Serve every block from the heap (brk/arenas), never from a private mmap.
            libc::mallopt(libc::M_MMAP_MAX, 0),
            // Never give the top of the heap back: the next minibatch needs the same memory.
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX),
        )
    };
    if no_mmap == 1 && no_trim == 1 {
        None
    } else {
        Some("glibc rejected the heap settings; large tensors are mmapped per allocation (slower on CPU)".into())
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_heap_impl() -> Option<String> {
    None
}

/// Host memory as this process sees it (Linux `/proc` and cgroup v1/v2 files), in bytes.
pub mod host_memory {
    use std::fs;

    fn status_kib(field: &str) -> Option<u64> {
        let text = fs::read_to_string("/proc/self/status").ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Resident set size now.
    pub fn rss() -> Option<u64> {
        status_kib("VmRSS:").map(|k| k * 1024)
    }

    /// Highest resident set size since the process started or since [`reset_peak`].
    pub fn peak_rss() -> Option<u64> {
        status_kib("VmHWM:").map(|k| k * 1024)
    }

    /// Resets the peak ([`peak_rss`]) to the current resident size (`/proc/self/clear_refs`,
    /// Linux 4.0+). False where that is not possible.
    ///
    /// Gives the heap's free pages back to the kernel first ([`release_free_heap`]): once
    /// [`super::keep_freed_memory_for_reuse`] has run, memory freed by earlier work stays
    /// resident, a pass reuses it without raising the peak, and a probe would then measure
    /// almost nothing per sample (a planner test failed that way after an RL run in the same
    /// process, and a run would have split too little).
    pub fn reset_peak() -> bool {
        release_free_heap();
        fs::write("/proc/self/clear_refs", "5").is_ok()
    }

    /// Returns the free memory of every glibc arena to the kernel (`malloc_trim(0)`, which
    /// ignores the trim threshold that [`super::keep_freed_memory_for_reuse`] raises), so that
    /// the resident size counts live memory only. A no-op elsewhere.
    pub fn release_free_heap() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases pages of free chunks; live allocations are not
        // touched, and it takes the arenas' locks itself.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Memory the kernel could still give (`MemAvailable`).
    pub fn available() -> Option<u64> {
        let text = fs::read_to_string("/proc/meminfo").ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|k| k * 1024)
    }

    /// The memory limit of this process's cgroup minus what the cgroup already uses (v2
    /// `memory.max` / `memory.current`, else v1 `memory.limit_in_bytes` / `usage_in_bytes`);
    /// None without a limit.
    pub fn cgroup_headroom() -> Option<u64> {
        let read = |p: &str| fs::read_to_string(p).ok().map(|s| s.trim().to_string());
        let (limit, usage) = match (
            read("/sys/fs/cgroup/memory.max"),
            read("/sys/fs/cgroup/memory.current"),
        ) {
            (Some(l), Some(u)) => (l, u),
            _ => (
                read("/sys/fs/cgroup/memory/memory.limit_in_bytes")?,
                read("/sys/fs/cgroup/memory/memory.usage_in_bytes")?,
            ),
        };
        let limit: u64 = limit.parse().ok()?; // "max" (v2) -> no limit
                                              // v1 reports "no limit" as a huge number.
        if limit >= 1 << 60 {
            return None;
        }
        Some(limit.saturating_sub(usage.parse().ok()?))
    }

    /// What this process may grow to: its resident size plus the smaller of the kernel's
    /// available memory and the cgroup's headroom.
    pub fn process_limit() -> Option<u64> {
        let rss = rss()?;
        let free = match (available(), cgroup_headroom()) {
            (Some(a), Some(c)) => a.min(c),
            (Some(a), None) => a,
            (None, c) => c?,
        };
        Some(rss + free)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_memory_reads_this_process() {
        let rss = host_memory::rss().unwrap();
        assert!(rss > 1 << 20, "{rss}");
        assert!(host_memory::reset_peak());
        // 256 MiB touched: the peak rises by about that much, the current size too.
        let before = host_memory::peak_rss().unwrap();
        let block = std::hint::black_box(vec![1u8; 256 << 20]);
        let peak = host_memory::peak_rss().unwrap();
        assert!(peak >= before + (200 << 20), "{before} -> {peak}");
        drop(block);
        assert!(host_memory::process_limit().unwrap() > rss);
    }

    #[test]
    fn runtime_libtorch_and_cuda_backend() {
        // The test binary runs on a libtorch: its folder is found at run time and holds the
        // library the process mapped.
        let dir = libtorch_lib_dir().expect("libtorch_cpu.so is mapped");
        assert!(dir.join("libtorch_cpu.so").exists(), "{}", dir.display());
        assert_eq!(
            loaded_library("libtorch_cpu.so").unwrap(),
            dir.join("libtorch_cpu.so")
        );
        assert!(loaded_library("libnot_a_library.so").is_none());
        let backend = load_cuda_backend().clone();
        assert_eq!(&backend, load_cuda_backend(), "idempotent");
        match &backend {
            CudaBackend::Linked(p) | CudaBackend::Loaded(p) => {
                assert!(loaded_library("libtorch_cuda.so").as_ref() == Some(p))
            }
            CudaBackend::Absent => assert!(!dir.join("libtorch_cuda.so").exists()),
            CudaBackend::Unloadable { reason, .. } => {
                assert!(!reason.is_empty());
                assert!(!tch::Cuda::is_available());
            }
        }
        if !matches!(backend, CudaBackend::Linked(_) | CudaBackend::Loaded(_)) {
            // The reason reaches the user.
            let err = parse_device("cuda").unwrap_err().to_string();
            assert!(err.contains("use --device cpu"), "{err}");
        }
    }

    #[test]
    fn device_names() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(matches!(parse_device("gpu"), Err(DeviceError::Unknown(_))));
        assert!(matches!(
            parse_device("cuda:x"),
            Err(DeviceError::Unknown(_))
        ));
        if !tch::Cuda::is_available() {
            assert_eq!(parse_device("auto").unwrap(), Device::Cpu);
            assert!(matches!(
                parse_device("cuda:0"),
                Err(DeviceError::Unavailable { .. })
            ));
        }
    }
}
