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
    let cuda_count = if tch::Cuda::is_available() { tch::Cuda::device_count() } else { 0 };
    match name {
        "auto" => Ok(if cuda_count > 0 { Device::Cuda(0) } else { Device::Cpu }),
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
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect())
        .unwrap_or_default();
    for i in 0..tch::Cuda::device_count() {
        let detail = names.get(i as usize).cloned().unwrap_or_else(|| "name unknown".into());
        lines.push(format!("cuda:{i} ({detail}), cudnn {}", tch::Cuda::cudnn_is_available()));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(matches!(parse_device("gpu"), Err(DeviceError::Unknown(_))));
        assert!(matches!(parse_device("cuda:x"), Err(DeviceError::Unknown(_))));
        if !tch::Cuda::is_available() {
            assert_eq!(parse_device("auto").unwrap(), Device::Cpu);
            assert!(matches!(parse_device("cuda:0"), Err(DeviceError::Unavailable { .. })));
        }
    }
}
