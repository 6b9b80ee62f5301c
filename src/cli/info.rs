//! `rl-darts info`: what this binary runs on.

use rl_darts::envs::procgen::sys;

pub fn run() -> anyhow::Result<()> {
    println!("rl-darts {}", env!("CARGO_PKG_VERSION"));
    println!(
        "tch {}, libtorch {}",
        rl_darts::device::tch_version(),
        rl_darts::device::libtorch_version().unwrap_or_else(|| "(version unknown)".into())
    );
    match rl_darts::device::libtorch_lib_dir() {
        Some(dir) => println!("libtorch: {}", dir.display()),
        None => println!("libtorch: (path not recorded at build time)"),
    }
    match sys::library_present() {
        Some(path) => match sys::library() {
            Ok(_) => println!(
                "procgen: {} (libenv {})",
                path.display(),
                sys::LIBENV_VERSION
            ),
            Err(e) => println!("procgen: {} fails to load: {e}", path.display()),
        },
        None => println!(
            "procgen: missing at {} (run `make setup`)",
            sys::library_path().display()
        ),
    }
    use rl_darts::device::CudaBackend;
    match rl_darts::device::load_cuda_backend() {
        CudaBackend::Linked(p) => println!("libtorch_cuda: {} (linked)", p.display()),
        CudaBackend::Loaded(p) => println!("libtorch_cuda: {} (opened at start-up)", p.display()),
        CudaBackend::Absent => println!("libtorch_cuda: none (CPU-only libtorch)"),
        CudaBackend::Unloadable { path, reason } => {
            println!("libtorch_cuda: {} not loadable: {reason}", path.display())
        }
    }
    println!("devices:");
    for line in rl_darts::device::describe_devices() {
        println!("  {line}");
    }
    Ok(())
}
