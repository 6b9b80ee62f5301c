//! Build script of rl-darts-agents: the libtorch run-time link of its test binaries (an rpath
//! and `libtorch_cuda`), from the code shared with the other crates in ../build_libtorch.rs.

include!("../build_libtorch.rs");

fn main() {
    link_libtorch();
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../build_libtorch.rs");
}
