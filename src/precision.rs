//! The `precision` and `layout` keys of every training command, and how `auto` becomes a
//! [`ComputePolicy`]: from what the device supports (CPU flags, the GPU's compute capability)
//! and, where more than one setting qualifies, from a short timed probe of the run's own
//! network in each candidate.
//!
//! The layers follow the resolved policy through [`crate::agents::compute`] (casts to bf16 /
//! fp16 inside the conv and linear kernels, the activation layout at each conv).

use std::fmt;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Device;

pub use crate::agents::compute::{Compute, Layout, Precision};

/// File in the run directory recording the resolved policy and why.
pub const COMPUTE_FILE: &str = "compute.json";

/// A candidate must be this much faster than fp32 / NCHW in the probe to be chosen: the
/// probe's passes are short, and the machines this runs on are often shared.
pub const PROBE_MARGIN: f64 = 0.10;

/// Timed passes per candidate in the probe (after one untimed warm-up each); the minimum
/// counts.
pub const PROBE_REPEATS: usize = 3;

/// The `precision` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrecisionChoice {
    /// The fastest setting the device supports (see [`resolve`]).
    #[default]
    Auto,
    Fp32,
    /// Convolutions and matmuls in bfloat16, the rest in fp32.
    Bf16,
    /// Convolutions and matmuls in fp16 with dynamic loss scaling; CUDA only.
    Fp16,
}

impl PrecisionChoice {
    pub fn fixed(self) -> Option<Precision> {
        match self {
            PrecisionChoice::Auto => None,
            PrecisionChoice::Fp32 => Some(Precision::Fp32),
            PrecisionChoice::Bf16 => Some(Precision::Bf16),
            PrecisionChoice::Fp16 => Some(Precision::Fp16),
        }
    }
}

/// The `layout` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayoutChoice {
    /// NCHW unless channels-last is measurably faster on this device and network.
    #[default]
    Auto,
    Nchw,
    ChannelsLast,
}

impl LayoutChoice {
    pub fn fixed(self) -> Option<Layout> {
        match self {
            LayoutChoice::Auto => None,
            LayoutChoice::Nchw => Some(Layout::Nchw),
            LayoutChoice::ChannelsLast => Some(Layout::ChannelsLast),
        }
    }
}

impl From<Precision> for PrecisionChoice {
    fn from(p: Precision) -> Self {
        match p {
            Precision::Fp32 => PrecisionChoice::Fp32,
            Precision::Bf16 => PrecisionChoice::Bf16,
            Precision::Fp16 => PrecisionChoice::Fp16,
        }
    }
}

impl From<Layout> for LayoutChoice {
    fn from(l: Layout) -> Self {
        match l {
            Layout::Nchw => LayoutChoice::Nchw,
            Layout::ChannelsLast => LayoutChoice::ChannelsLast,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrecisionError {
    #[error(
        "precision = \"fp16\" runs on CUDA only (the CPU has no fast fp16 kernels, and fp16's \
         narrow exponent range needs the loss scaling written for the GPU path); on {device} \
         use precision = \"bf16\" or \"fp32\", or \"auto\""
    )]
    Fp16NeedsCuda { device: String },
    #[error("the precision probe failed in {setting}: {reason}")]
    Probe { setting: String, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
}

/// What a run computes in, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComputePolicy {
    pub precision: Precision,
    pub layout: Layout,
    pub reason: String,
}

impl ComputePolicy {
    pub fn compute(&self) -> Compute {
        Compute::new(self.precision, self.layout)
    }

    /// What `auto` gives in builds with debug assertions (the test profile): fp32, and
    /// channels-last, which is what every fp32 network here computed in before the layout was
    /// a setting (the Procgen frames arrive channels-last from the observation permute, and
    /// the DARTS stems convert to it). Seeded test results then do not depend on the machine,
    /// and no probe runs.
    pub fn pinned_for_tests() -> Self {
        Self {
            precision: Precision::Fp32,
            layout: Layout::ChannelsLast,
            reason: "`auto` in a debug build (the test profile) is fp32 / channels_last, so that \
                     seeded results do not depend on the machine; release builds probe"
                .into(),
        }
    }

    /// The policy recorded in `run_dir` by [`ComputePolicy::save`], if any.
    pub fn load(run_dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(run_dir.join(COMPUTE_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn save(&self, run_dir: &Path) -> Result<(), PrecisionError> {
        let path = run_dir.join(COMPUTE_FILE);
        let err = |e: String| PrecisionError::Write {
            path: path.display().to_string(),
            reason: e,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| err(e.to_string()))?;
        std::fs::write(&path, text + "\n").map_err(|e| err(e.to_string()))
    }
}

impl fmt::Display for ComputePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} / {} ({})", self.precision, self.layout, self.reason)
    }
}

/// What a device can do that matters for the choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCaps {
    /// e.g. "CPU AMD EPYC" or "CUDA device 0, compute capability 8.0".
    pub description: String,
    pub is_cuda: bool,
    /// Why bf16 is fast here ("AMX (amx_bf16, amx_tile)", "AVX-512 BF16", "compute capability
    /// 8.0"), or None when it would only be emulated.
    pub bf16: Option<String>,
}

impl DeviceCaps {
    /// Reads the CPU's flags from `/proc/cpuinfo`, or the GPU's compute capability from
    /// `nvidia-smi` (libtorch's C API, which tch wraps, does not expose it).
    pub fn detect(device: Device) -> Self {
        match device {
            Device::Cuda(index) => cuda_caps(index),
            _ => {
                let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
                cpu_caps(&cpuinfo)
            }
        }
    }
}

/// The CPU's capabilities from the text of `/proc/cpuinfo` (first processor's flags).
pub fn cpu_caps(cpuinfo: &str) -> DeviceCaps {
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| "unknown model".into());
    let flags = field("flags").unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let bf16 = if has("amx_bf16") && has("amx_tile") {
        Some("AMX (amx_bf16, amx_tile)".to_string())
    } else if has("avx512_bf16") {
        Some("AVX-512 BF16 (avx512_bf16, no AMX)".to_string())
    } else {
        None
    };
    DeviceCaps {
        description: format!("CPU {model}"),
        is_cuda: false,
        bf16,
    }
}

fn cuda_caps(index: usize) -> DeviceCaps {
    let capability = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=compute_cap",
            "--format=csv,noheader",
            &format!("--id={index}"),
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok());
    DeviceCaps {
        description: match capability {
            Some(c) => format!("CUDA device {index}, compute capability {c:.1}"),
            None => format!("CUDA device {index}, compute capability unknown (no nvidia-smi)"),
        },
        is_cuda: true,
        // Ampere (8.0) and later have bf16 tensor cores; before, bf16 is emulated.
        bf16: capability
            .filter(|&c| c >= 8.0)
            .map(|c| format!("compute capability {c:.1}")),
    }
}

/// Seconds one pass (forward + backward) of the run's network takes in a setting.
pub type Probe<'a> = dyn FnMut(Compute) -> Result<f64, String> + 'a;

/// Resolves the keys for a device.
///
/// - `fp16` on a CPU is an error; explicit values are otherwise taken as given.
/// - `auto` precision considers fp32, and bf16 when the device runs it natively
///   ([`DeviceCaps::bf16`]); never fp16 (it needs loss scaling and can diverge where bf16
///   does not).
/// - `auto` layout considers NCHW and channels-last.
/// - With more than one candidate, `probe` times each (one warm-up, then the minimum of
///   [`PROBE_REPEATS`] passes, the candidates interleaved so that load on a shared machine
///   hits all alike) and the fastest wins unless it is within [`PROBE_MARGIN`] of fp32 / NCHW,
///   which then stays. Without a probe, fp32 / NCHW stays unless the device has AMX or is a
///   GPU with bf16 tensor cores, where bf16 / channels-last is the known-fast setting.
pub fn resolve(
    precision: PrecisionChoice,
    layout: LayoutChoice,
    caps: &DeviceCaps,
    probe: Option<&mut Probe<'_>>,
) -> Result<ComputePolicy, PrecisionError> {
    if precision == PrecisionChoice::Fp16 && !caps.is_cuda {
        return Err(PrecisionError::Fp16NeedsCuda {
            device: caps.description.clone(),
        });
    }
    let precisions: Vec<Precision> = match precision.fixed() {
        Some(p) => vec![p],
        None if caps.bf16.is_some() => vec![Precision::Fp32, Precision::Bf16],
        None => vec![Precision::Fp32],
    };
    let layouts: Vec<Layout> = match layout.fixed() {
        Some(l) => vec![l],
        None => Layout::ALL.to_vec(),
    };
    let candidates: Vec<Compute> = precisions
        .iter()
        .flat_map(|&p| layouts.iter().map(move |&l| Compute::new(p, l)))
        .collect();
    let bf16_note = match (&caps.bf16, precision) {
        (_, PrecisionChoice::Bf16 | PrecisionChoice::Fp16 | PrecisionChoice::Fp32) => {
            "precision as configured".to_string()
        }
        (Some(why), PrecisionChoice::Auto) => format!("{} has bf16: {why}", caps.description),
        (None, PrecisionChoice::Auto) => format!(
            "{} has no native bf16 (no AMX, no AVX-512 BF16, or a GPU before compute \
             capability 8.0): fp32",
            caps.description
        ),
    };
    let baseline = candidates
        .iter()
        .copied()
        .find(|c| c.layout == Some(Layout::Nchw) && c.precision == Precision::Fp32)
        .unwrap_or(candidates[0]);
    let policy = |c: Compute, reason: String| ComputePolicy {
        precision: c.precision,
        layout: c.layout.unwrap_or(Layout::Nchw),
        reason,
    };
    if candidates.len() == 1 {
        return Ok(policy(candidates[0], bf16_note));
    }
    let Some(probe) = probe else {
        let known_fast = caps.bf16.as_deref().is_some_and(|b| b.starts_with("AMX")) || {
            caps.is_cuda && caps.bf16.is_some()
        };
        let wanted = Compute::new(Precision::Bf16, Layout::ChannelsLast);
        let pick = if known_fast && candidates.contains(&wanted) {
            wanted
        } else {
            baseline
        };
        return Ok(policy(
            pick,
            format!("{bf16_note}; no probe: the device rule"),
        ));
    };
    let times = time_candidates(&candidates, probe)?;
    let time_of = |c: Compute| times[candidates.iter().position(|&x| x == c).unwrap_or(0)];
    let (fastest, best) = candidates
        .iter()
        .copied()
        .zip(times.iter().copied())
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((baseline, time_of(baseline)));
    let base_time = time_of(baseline);
    let pick = if best < base_time * (1.0 - PROBE_MARGIN) {
        fastest
    } else {
        baseline
    };
    let measured: Vec<String> = candidates
        .iter()
        .zip(&times)
        .map(|(c, t)| format!("{} {t:.3}s", name(*c)))
        .collect();
    let verdict = if pick == baseline && fastest != baseline {
        format!(
            "fastest ({}) within {:.0}% of {}: kept {}",
            name(fastest),
            PROBE_MARGIN * 100.0,
            name(baseline),
            name(baseline)
        )
    } else {
        format!("fastest: {}", name(pick))
    };
    Ok(policy(
        pick,
        format!(
            "{bf16_note}; probe (min of {PROBE_REPEATS} passes): {}; {verdict}",
            measured.join(", ")
        ),
    ))
}

fn name(c: Compute) -> String {
    format!(
        "{}/{}",
        c.precision,
        c.layout.map_or("as given", |l| l.name())
    )
}

/// Times each candidate: one untimed warm-up each, then [`PROBE_REPEATS`] rounds over all
/// of them; returns each one's minimum.
fn time_candidates(
    candidates: &[Compute],
    probe: &mut Probe<'_>,
) -> Result<Vec<f64>, PrecisionError> {
    let mut run = |c: Compute| {
        probe(c).map_err(|reason| PrecisionError::Probe {
            setting: name(c),
            reason,
        })
    };
    for &c in candidates {
        run(c)?;
    }
    let mut best = vec![f64::INFINITY; candidates.len()];
    for _ in 0..PROBE_REPEATS {
        for (i, &c) in candidates.iter().enumerate() {
            best[i] = best[i].min(run(c)?);
        }
    }
    Ok(best)
}

/// Seconds `pass` takes with this thread's layers in `compute`.
pub fn timed(compute: Compute, pass: impl FnOnce() -> Result<(), String>) -> Result<f64, String> {
    let _scope = crate::agents::compute::enter(compute);
    let start = Instant::now();
    pass()?;
    Ok(start.elapsed().as_secs_f64())
}

/// The policy a run uses: on resume, the one recorded in `run_dir` unless the keys now name
/// another (which is said); otherwise [`resolve`] with the device's capabilities, except that
/// debug builds pin `auto` ([`ComputePolicy::pinned_for_tests`]). Prints the decision, and
/// records it in `run_dir` when `record` (rank 0).
pub fn policy_for_run(
    precision: PrecisionChoice,
    layout: LayoutChoice,
    device: Device,
    run_dir: &Path,
    resume: bool,
    record: bool,
    probe: Option<&mut Probe<'_>>,
) -> Result<ComputePolicy, PrecisionError> {
    if resume {
        if let Some(saved) = ComputePolicy::load(run_dir) {
            let p = precision.fixed().unwrap_or(saved.precision);
            let l = layout.fixed().unwrap_or(saved.layout);
            if (p, l) == (saved.precision, saved.layout) {
                eprintln!(
                    "compute: {} / {} (as the run started: {})",
                    p, l, saved.reason
                );
                return Ok(saved);
            }
            if p == Precision::Fp16 && !matches!(device, Device::Cuda(_)) {
                return Err(PrecisionError::Fp16NeedsCuda {
                    device: "the CPU".into(),
                });
            }
            let policy = ComputePolicy {
                precision: p,
                layout: l,
                reason: format!(
                    "resumed under {p} / {l} as configured; the run started in {} / {}",
                    saved.precision, saved.layout
                ),
            };
            eprintln!(
                "note: this run was trained in {} / {} and resumes in {p} / {l} as asked: the \
                 weights and optimiser state are fp32 either way, but from here it is not the \
                 run the first setting would have continued",
                saved.precision, saved.layout
            );
            if record {
                policy.save(run_dir)?;
            }
            return Ok(policy);
        }
    }
    let pinned = cfg!(debug_assertions)
        && (precision == PrecisionChoice::Auto || layout == LayoutChoice::Auto);
    let policy = if pinned {
        let pin = ComputePolicy::pinned_for_tests();
        let caps = DeviceCaps::detect(device);
        let mut resolved = resolve(
            precision.fixed().map_or(PrecisionChoice::Fp32, Into::into),
            layout.fixed().map_or(pin.layout.into(), Into::into),
            &caps,
            None,
        )?;
        resolved.reason = format!(
            "{} / {}: {}",
            resolved.precision, resolved.layout, pin.reason
        );
        resolved
    } else {
        let caps = DeviceCaps::detect(device);
        resolve(precision, layout, &caps, probe)?
    };
    eprintln!(
        "compute: {} / {} ({})",
        policy.precision, policy.layout, policy.reason
    );
    if record {
        policy.save(run_dir)?;
    }
    Ok(policy)
}

#[cfg(test)]
#[path = "precision_tests.rs"]
mod tests;
