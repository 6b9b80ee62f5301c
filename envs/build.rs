//! Build script of rl-darts-envs: the Procgen bindings and the libtorch run-time link.
//!
//! 1. bindgen over gym3's `libenv.h` in dynamic-loading mode: the procgen library is opened
//!    at run time, so a missing `libenv.so` is an error message, not a link failure.
//! 2. `RL_DARTS_BUILD_PROCGEN_DIR`, the run-time default folder of `libenv.so` and its assets
//!    (procgen/sys.rs reads it with `env!`).
//! 3. libtorch: an rpath and `libtorch_cuda` for this crate's test binaries, from the code
//!    shared with the other crates in ../build_libtorch.rs.

use std::env;
use std::path::{Path, PathBuf};

include!("../build_libtorch.rs");

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    // `make setup` fills .deps/ at the top of the workspace, one folder above this crate.
    let workspace_root = manifest_dir.parent().expect("envs/ sits in the workspace");
    println!("cargo:rerun-if-env-changed=RL_DARTS_DEPS");
    let deps = env::var_os("RL_DARTS_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root.join(".deps"));

    generate_libenv_bindings(&deps);
    link_libtorch();

    // Where `make setup` unpacked the procgen wheel; the run-time default for libenv.so and
    // the assets (overridable with RL_DARTS_PROCGEN_DIR at run time).
    let procgen_data = deps.join("procgen").join("procgen").join("data");
    println!(
        "cargo:rustc-env=RL_DARTS_BUILD_PROCGEN_DIR={}",
        procgen_data.display()
    );
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../build_libtorch.rs");
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
