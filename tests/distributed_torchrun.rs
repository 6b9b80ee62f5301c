//! torchrun launches: `torchrun --no-python --nproc-per-node 2 rl-darts dist rendezvous` (the
//! NCCL unique id's exchange from rank 0 to the others over TCP, without a GPU), the same
//! exchange between two processes given torchrun's variables by hand, and the MPI backend
//! under torchrun refused with a message that says to use mpirun. torchrun comes with the
//! torch wheel in the project's .venv; the torchrun cases skip, saying so, only when it is
//! missing and `CI` is unset.

mod common;

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_rl-darts");

fn torchrun() -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/torchrun");
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "torchrun is missing from .venv (make setup installs the torch wheel)"
    );
    eprintln!("skipped: {} not found", path.display());
    None
}

/// A port `p` with `p + 1` free too (torchrun's store takes `p`, the rendezvous `p + 1`).
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let p = TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two consecutive free ports");
}

/// The ids the processes printed, by rank.
fn ids(stdout: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = stdout
        .lines()
        .filter_map(|l| {
            let rest = l.split("rendezvous: rank ").nth(1)?;
            let rank = rest.split_whitespace().next()?.parse().ok()?;
            let id = rest.split("id ").nth(1)?.trim().to_string();
            Some((rank, id))
        })
        .collect();
    out.sort();
    out
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn torchrun_cmd(torchrun: &PathBuf, args: &[impl AsRef<OsStr>]) -> Output {
    let port = free_port_pair().to_string();
    Command::new(torchrun)
        .args([
            "--no-python",
            "--nproc-per-node",
            "2",
            "--master-port",
            &port,
            BIN,
        ])
        .args(args)
        .env_remove("RL_DARTS_RENDEZVOUS_PORT")
        .stdin(Stdio::null())
        .output()
        .expect("torchrun starts")
}

#[test]
fn torchrun_processes_receive_rank_0s_id() {
    let Some(torchrun) = torchrun() else {
        return;
    };
    let o = torchrun_cmd(&torchrun, &["dist", "rendezvous", "--timeout-s", "60"]);
    assert!(o.status.success(), "{}", show(&o));
    let got = ids(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(got.len(), 2, "{}", show(&o));
    assert_eq!((got[0].0, got[1].0), (0, 1));
    assert_eq!(got[0].1.len(), 256, "128 bytes in hex");
    assert_eq!(got[0].1, got[1].1, "{}", show(&o));
}

#[test]
fn two_processes_with_torchrun_variables_exchange_the_id() {
    let port = free_port_pair().to_string();
    let spawn = |rank: &str| {
        Command::new(BIN)
            .args(["dist", "rendezvous", "--timeout-s", "60"])
            .env("RANK", rank)
            .env("LOCAL_RANK", rank)
            .env("WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", &port)
            .env_remove("RL_DARTS_RENDEZVOUS_PORT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Rank 1 first: it must wait for rank 0 to listen.
    let one = spawn("1");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let zero = spawn("0");
    let (zero, one) = (
        zero.wait_with_output().unwrap(),
        one.wait_with_output().unwrap(),
    );
    assert!(zero.status.success(), "{}", show(&zero));
    assert!(one.status.success(), "{}", show(&one));
    let (a, b) = (
        ids(&String::from_utf8_lossy(&zero.stdout)),
        ids(&String::from_utf8_lossy(&one.stdout)),
    );
    assert_eq!((a[0].0, b[0].0), (0, 1));
    assert_eq!(a[0].1, b[0].1);
}

#[test]
fn the_mpi_backend_under_torchrun_says_to_use_mpirun() {
    let Some(torchrun) = torchrun() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = torchrun_cmd(
        &torchrun,
        &common::cartpole_train(
            "mlp",
            &["--distributed", "mpi", "--run-dir", run.to_str().unwrap()],
        ),
    );
    assert!(!o.status.success(), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the mpi backend needs an MPI launcher") && err.contains("mpirun -np 2"),
        "{}",
        show(&o)
    );
}
