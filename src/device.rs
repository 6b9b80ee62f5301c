//! Device selection (`auto | cpu | cuda | cuda:N`) and the facts `rl-darts info` prints.

use std::path::PathBuf;

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
                return Err(DeviceError::Unavailable {
                    requested: name.to_string(),
                    reason: "libtorch sees no CUDA device on this machine; use --device cpu".into(),
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

/// The libtorch this binary runs against and its version (read from the Python package
/// beside it, where `make setup` put it).
pub fn libtorch_lib_dir() -> Option<PathBuf> {
    option_env!("RL_DARTS_BUILD_LIBTORCH_LIB").map(PathBuf::from)
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
    let mut lines = vec![format!("cpu ({} libtorch threads)", tch::get_num_threads())];
    if !tch::Cuda::is_available() {
        lines.push("cuda: not available".to_string());
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
    pub fn reset_peak() -> bool {
        fs::write("/proc/self/clear_refs", "5").is_ok()
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
