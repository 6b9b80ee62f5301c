//! `rl-darts gpu-check` (hidden): the CPU vs CUDA agreement rows of scripts/gpu_check.sh's
//! table, as Markdown table rows.

use anyhow::bail;
use clap::Args;
use rl_darts::cuda_check::{check_networks, Agreement};
use tch::Kind;

#[derive(Args, Debug)]
pub struct GpuCheckArgs {
    /// The CUDA device to compare with the CPU.
    #[arg(long, default_value = "cuda")]
    device: String,
}

fn row(a: &Agreement) -> String {
    format!(
        "| agreement: {} {:?} {:?} | {} | forward {:.1e}, gradients {:.1e} (worst: {}; {} tensors); tolerance {:.0e} relative to the largest value |",
        a.network,
        a.kind,
        a.input,
        if a.passed() { "pass" } else { "FAIL" },
        a.forward_error,
        a.gradient_error,
        a.worst_gradient,
        a.tensors,
        a.tolerance,
    )
}

pub fn run(args: GpuCheckArgs) -> anyhow::Result<()> {
    let device = rl_darts::device::parse_device(&args.device)?;
    if !device.is_cuda() {
        bail!("--device {} is not a CUDA device", args.device);
    }
    let mut failed = 0;
    // f64 first: a real disagreement shows there without TF32's rounding in the way.
    for kind in [Kind::Double, Kind::Float] {
        for a in check_networks(device, kind)? {
            println!("{}", row(&a));
            failed += usize::from(!a.passed());
        }
    }
    if failed > 0 {
        bail!(
            "{failed} network(s) disagree between the CPU and {}",
            args.device
        );
    }
    Ok(())
}
