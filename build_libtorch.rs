// Build-script code shared by the three crates that link tch (`include!`d by build.rs,
// envs/build.rs and agents/build.rs; plain `//` comments because an included file cannot
// hold inner doc comments).
//
// `cargo:rustc-link-arg` reaches only the binaries and tests of the package whose build script
// prints it, so each crate that links libtorch prints these lines itself; the code lives here
// once. What it does:
// - embed an rpath to the libtorch lib folder, so that binaries and test binaries run without
//   LD_LIBRARY_PATH;
// - force-link `libtorch_cuda` when it exists. Without `--no-as-needed` the linker drops it
//   (nothing references it by symbol) and CUDA then reads as unavailable on a GPU machine.
//   `RL_DARTS_TORCH_CUDA=runtime` leaves it unlinked; the binary then opens it at start-up.

/// Prints `message` and stops the build. A panic in a build script prints a backtrace hint
/// that hides the message; exit instead.
fn fail(message: &str) -> ! {
    eprintln!("\nerror: {message}\n");
    std::process::exit(1);
}

/// Emits the libtorch link arguments for this package's binaries and tests, and returns the
/// (canonical) libtorch lib folder, or `None` when torch-sys exported none.
///
/// torch-sys (`links = "tch"`) exports the folder as `DEP_TCH_LIBTORCH_LIB` to the packages
/// that depend on it directly: each caller's crate lists torch-sys in `[dependencies]`.
fn link_libtorch() -> Option<std::path::PathBuf> {
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").ok()?;
    let lib = std::fs::canonicalize(&lib).unwrap_or_else(|_| std::path::PathBuf::from(&lib));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // `RL_DARTS_TORCH_CUDA=runtime` (scripts/gpu_check.sh's libtorch 2.11 build): do not
    // link libtorch_cuda; `device::load_cuda_backend` opens it beside the libtorch_cpu the
    // binary runs against. That build links against a PyPI torch installed without its
    // nvidia-* packages, so a linked libtorch_cuda would stop the binary (and its tests) from
    // starting on a machine without CUDA libraries.
    println!("cargo:rerun-if-env-changed=RL_DARTS_TORCH_CUDA");
    let at_runtime = match std::env::var("RL_DARTS_TORCH_CUDA").as_deref() {
        Err(_) | Ok("link") => false,
        Ok("runtime") => true,
        Ok(other) => fail(&format!(
            "RL_DARTS_TORCH_CUDA={other}: use `link` (the default: link libtorch_cuda when it \
             exists) or `runtime` (open it at run time)"
        )),
    };
    if !at_runtime && lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    Some(lib)
}
