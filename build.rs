//! Build script: Procgen bindings and the libtorch run-time link.
//!
//! 1. bindgen over gym3's `libenv.h` in dynamic-loading mode: the procgen library is opened
//!    at run time, so a missing `libenv.so` is an error message, not a link failure.
//! 2. libtorch: embed an rpath so that binaries and tests run without LD_LIBRARY_PATH, and
//!    force-link `libtorch_cuda` when it exists. Without `--no-as-needed` the linker drops it
//!    (nothing references it by symbol) and CUDA then reads as unavailable on a GPU machine.
//!    `RL_DARTS_TORCH_CUDA=runtime` leaves it unlinked; the binary then opens it at start-up.

use std::env;
use std::path::{Path, PathBuf};

fn fail(message: &str) -> ! {
    // A panic in a build script prints a backtrace hint that hides the message; exit instead.
    eprintln!("\nerror: {message}\n");
    std::process::exit(1);
}

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-env-changed=RL_DARTS_DEPS");
    let deps = env::var_os("RL_DARTS_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir.join(".deps"));

    generate_libenv_bindings(&deps);
    link_libtorch();
    record_tch_version(&manifest_dir);

    // Where `make setup` unpacked the procgen wheel; the run-time default for libenv.so and
    // the assets (overridable with RL_DARTS_PROCGEN_DIR at run time).
    let procgen_data = deps.join("procgen").join("procgen").join("data");
    println!(
        "cargo:rustc-env=RL_DARTS_BUILD_PROCGEN_DIR={}",
        procgen_data.display()
    );
    println!("cargo:rerun-if-changed=build.rs");
}

fn generate_libenv_bindings(deps: &Path) {
    let header = deps.join("gym3").join("gym3").join("libenv.h");
    println!("cargo:rerun-if-changed={}", header.display());
    if !header.exists() {
        fail(&format!(
            "the libenv C header is missing at {}.\n       Run `make setup` (it downloads the gym3==0.3.3 \
             wheel into .deps/), or point RL_DARTS_DEPS at a folder holding gym3/gym3/libenv.h.",
            header.display()
        ));
    }
    let bindings = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .dynamic_library_name("LibEnv")
        .dynamic_link_require_all(true)
        .allowlist_function("libenv_.*")
        .allowlist_type("libenv_.*")
        .allowlist_var("LIBENV_.*")
        .rustified_enum("libenv_.*")
        .derive_debug(true)
        .derive_default(true)
        .layout_tests(false)
        .generate()
        .unwrap_or_else(|e| {
            fail(&format!(
                "bindgen could not parse libenv.h: {e}.\n       bindgen needs libclang: \
                 `apt-get install libclang-dev` (libclang1 alone lacks stddef.h), or run `make setup`."
            ))
        });
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("libenv_bindings.rs");
    bindings
        .write_to_file(&out)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", out.display())));
}

fn link_libtorch() {
    // torch-sys (links = "tch") exports the libtorch lib folder to direct dependents.
    let Ok(lib) = env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let lib = std::fs::canonicalize(&lib).unwrap_or_else(|_| PathBuf::from(&lib));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!(
        "cargo:rustc-env=RL_DARTS_BUILD_LIBTORCH_LIB={}",
        lib.display()
    );
    // `RL_DARTS_TORCH_CUDA=runtime` (scripts/gpu_check.sh's libtorch 2.11 build): do not
    // link libtorch_cuda; `device::load_cuda_backend` opens it beside the libtorch_cpu the
    // binary runs against. That build links against a PyPI torch installed without its
    // nvidia-* packages, so a linked libtorch_cuda would stop the binary (and its tests) from
    // starting on a machine without CUDA libraries.
    println!("cargo:rerun-if-env-changed=RL_DARTS_TORCH_CUDA");
    let at_runtime = match env::var("RL_DARTS_TORCH_CUDA").as_deref() {
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
}

/// `rl-darts info` names the tch release: the default build's and scripts/gpu_check.sh's
/// libtorch 2.11 build (another Cargo.lock) differ there.
fn record_tch_version(manifest_dir: &Path) {
    let lock = manifest_dir.join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let Ok(text) = std::fs::read_to_string(&lock) else {
        return;
    };
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"tch\"" {
            if let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = ")) {
                println!(
                    "cargo:rustc-env=RL_DARTS_BUILD_TCH_VERSION={}",
                    v.trim_matches('"')
                );
            }
            return;
        }
    }
}
