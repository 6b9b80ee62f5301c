//! scripts/gpu_check.sh: what travels to the GPU machine fits the 64 MiB a device call
//! carries, the binary survives the packing, and `run` without a GPU says so and exits 0.
//!
//! `prepare` itself builds rl-darts against libtorch 2.11 (15+ minutes from scratch), too slow
//! for every `make test`; these tests pack the default build's binary with the same `pack`
//! step instead, and check a pack `prepare` left in .gpu-check/pack when there is one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The device call's limit for the working tree and carried paths together.
const CALL_LIMIT: u64 = 64 * 1024 * 1024;
/// What the pack may take of it (the script's PACK_LIMIT_MIB): the tree needs the rest.
const PACK_LIMIT: u64 = 56 * 1024 * 1024;

/// The repository: the git work tree around the manifest. The libtorch 2.11 build's manifest
/// lies in .gpu-check/build/ (scripts/gpu_check.sh), where the scripts are not linked.
fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .current_dir(&manifest)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or(manifest)
}

fn script(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("scripts/gpu_check.sh")).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("bash runs")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                dir_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

/// Every file the MANIFEST lists has its hash, and `run`'s inputs are all there.
fn check_pack(pack: &Path) {
    for f in [
        "rl-darts.xz",
        "procgen-gym3.tar.gz",
        "digits.csv.xz",
        "syslibs.tar.gz",
        "MANIFEST",
    ] {
        assert!(
            pack.join(f).is_file(),
            "{f} missing from {}",
            pack.display()
        );
    }
    let wheels: Vec<String> = std::fs::read_dir(pack.join("wheels"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for prefix in [
        "cleanrl-1.2.0",
        "gym-0.23.1",
        "gym_notices-",
        "cffi-",
        "pycparser-",
    ] {
        assert!(
            wheels
                .iter()
                .any(|w| w.starts_with(prefix) && w.ends_with(".whl")),
            "no {prefix} wheel in {wheels:?}"
        );
    }
    let manifest = std::fs::read_to_string(pack.join("MANIFEST")).unwrap();
    let hashes: String = manifest
        .lines()
        .filter(|l| l.len() > 66 && l.as_bytes()[64] == b' ')
        .map(|l| format!("{l}\n"))
        .collect();
    // The four archives and every wheel.
    assert_eq!(hashes.lines().count(), 4 + wheels.len(), "{manifest}");
    let mut check = Command::new("sha256sum")
        .args(["-c", "--quiet", "-"])
        .current_dir(pack)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(hashes.as_bytes())
        .unwrap();
    assert!(check.wait().unwrap().success(), "MANIFEST does not match");
    let bytes = dir_bytes(pack);
    assert!(
        bytes <= PACK_LIMIT,
        "{} holds {bytes} bytes, over {PACK_LIMIT}",
        pack.display()
    );
}

#[test]
fn run_without_a_gpu_says_so_and_exits_0() {
    // An nvidia-smi that fails, as on a machine with the driver's tools but no device (CI
    // machines have none at all, which the script treats the same way).
    let fake = tempfile::tempdir().unwrap();
    let smi = fake.path().join("nvidia-smi");
    std::fs::write(
        &smi,
        "#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        fake.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // A pack folder that does not exist: the GPU check comes first, so nothing else is read.
    let out = script(
        &["run"],
        &[("PATH", &path), ("GPU_CHECK_PACK_DIR", "/nonexistent/pack")],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no GPU here"),
        "{}",
        text(&out)
    );

    // With a GPU the missing pack is an error that says what to do (the same fake, listing a
    // device): the exit-0 path above is specific to having no GPU.
    std::fs::write(&smi, "#!/bin/sh\necho 'GPU 0: Fake'\n").unwrap();
    let out = script(
        &["run"],
        &[("PATH", &path), ("GPU_CHECK_PACK_DIR", "/nonexistent/pack")],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("prepare"),
        "{}",
        text(&out)
    );
}

#[test]
fn pack_fits_a_device_call_and_the_binary_survives_it() {
    let pack = tempfile::tempdir().unwrap();
    let pack_dir = pack.path().join("pack");
    let out = script(
        &["pack", env!("CARGO_BIN_EXE_rl-darts")],
        &[("GPU_CHECK_PACK_DIR", pack_dir.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("run(command=\"bash scripts/gpu_check.sh run\", carry=[\""),
        "{}",
        text(&out)
    );
    check_pack(&pack_dir);

    // The stripped, compressed binary still runs (here on the default build's libtorch).
    let bin = pack.path().join("rl-darts");
    let unpacked = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "xz -dc '{}' > '{}' && chmod +x '{}'",
            pack_dir.join("rl-darts.xz").display(),
            bin.display(),
            bin.display()
        ))
        .status()
        .unwrap();
    assert!(unpacked.success());
    let info = Command::new(&bin).arg("info").output().unwrap();
    assert!(info.status.success(), "{}", text(&info));
    let stdout = String::from_utf8_lossy(&info.stdout);
    assert!(stdout.contains("libtorch_cuda:"), "{stdout}");
    assert!(stdout.contains("devices:"), "{stdout}");

    // The pack and the working tree together stay within the call's limit.
    let tree = Command::new("sh")
        .arg("-c")
        .arg("{ git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r stat -c %s | awk '{ s += $1 } END { print s + 0 }'")
        .current_dir(root())
        .output()
        .unwrap();
    let tree: u64 = String::from_utf8_lossy(&tree.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(tree > 0);
    assert!(
        dir_bytes(&pack_dir) + tree <= CALL_LIMIT,
        "pack {} + tree {tree} > {CALL_LIMIT}",
        dir_bytes(&pack_dir)
    );
}

#[test]
fn a_prepared_pack_is_complete_and_under_the_limit() {
    let pack = root().join(".gpu-check").join("pack");
    if !pack.join("MANIFEST").exists() {
        eprintln!(
            "no pack from `scripts/gpu_check.sh prepare` at {}: nothing to check",
            pack.display()
        );
        return;
    }
    check_pack(&pack);
    let manifest = std::fs::read_to_string(pack.join("MANIFEST")).unwrap();
    assert!(
        manifest.contains("tch 0.24.0, libtorch 2.11.0"),
        "not the libtorch 2.11 build:\n{manifest}"
    );
}
