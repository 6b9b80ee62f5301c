//! The Slurm runner against a real single-node Slurm that the test starts from Debian's
//! packages (munge, slurmctld, slurmd, slurm-client; `make setup` installs them): a private
//! slurm.conf on free ports in a temp dir, the generated array script submitted with
//! `sbatch --wait`, every trial complete at the end, the daemons this test started stopped.
//! Skips, saying why, when those programs are missing or the test does not run as root (the
//! daemons run as root here and munged needs its system folders).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The processes this test started, stopped (SIGTERM by pid) when dropped.
struct Started {
    pid_files: Vec<PathBuf>,
    dir: PathBuf,
}

impl Drop for Started {
    fn drop(&mut self) {
        for f in self.pid_files.iter().rev() {
            if let Ok(pid) = fs::read_to_string(f) {
                let _ = quiet(Command::new("kill").args(["-s", "TERM", pid.trim()]));
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} not ready within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn skip_reason() -> Option<String> {
    let missing: Vec<&str> = [
        "/usr/sbin/slurmctld",
        "/usr/sbin/slurmd",
        "/usr/bin/sbatch",
        "/usr/sbin/munged",
    ]
    .into_iter()
    .filter(|p| !Path::new(p).exists())
    .collect();
    if !missing.is_empty() {
        return Some(format!(
            "missing {} (Debian packages slurmctld slurmd slurm-client munge; `make setup` installs them)",
            missing.join(", ")
        ));
    }
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root: this test starts munged and the Slurm daemons as root".into());
    }
    None
}

#[test]
fn array_job_runs_every_trial_on_a_real_slurm() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let (ctld_port, d_port) = (free_port(), free_port());
    let dir = PathBuf::from(format!("/tmp/rlds-slurm-{ctld_port}"));
    fs::create_dir_all(dir.join("state")).unwrap();
    fs::create_dir_all(dir.join("spool")).unwrap();
    let mut started = Started {
        pid_files: Vec::new(),
        dir: dir.clone(),
    };

    // munge: reuse a running one, else start it (as its own user, on its system folders).
    let munge_ok = || quiet(Command::new("sh").args(["-c", "munge -n | unmunge"]));
    if !munge_ok() {
        for d in ["/run/munge", "/var/log/munge", "/var/lib/munge"] {
            fs::create_dir_all(d).unwrap();
            assert!(quiet(Command::new("chown").args(["-R", "munge:munge", d])));
        }
        assert!(quiet(Command::new("runuser").args([
            "-u",
            "munge",
            "--",
            "/usr/sbin/munged"
        ])));
        started
            .pid_files
            .push(PathBuf::from("/run/munge/munged.pid"));
        wait_for("munged", Duration::from_secs(20), munge_ok);
    }

    let host = Command::new("hostname").arg("-s").output().unwrap();
    let host = String::from_utf8_lossy(&host.stdout).trim().to_string();
    let d = dir.display();
    let conf = dir.join("slurm.conf");
    fs::write(
        &conf,
        format!(
            "ClusterName=rldstest\nSlurmctldHost={host}\nSlurmUser=root\nSlurmdUser=root\n\
             SlurmctldPort={ctld_port}\nSlurmdPort={d_port}\nAuthType=auth/munge\n\
             StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
             SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\n\
             SlurmctldLogFile={d}/slurmctld.log\nSlurmdLogFile={d}/slurmd.log\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nMpiDefault=none\n\
             SchedulerType=sched/backfill\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n\
             ReturnToService=2\nJobAcctGatherType=jobacct_gather/none\n\
             AccountingStorageType=accounting_storage/none\n\
             NodeName={host} CPUs=2 State=UNKNOWN\n\
             PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
        ),
    )
    .unwrap();
    let slurm = |program: &str| {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &conf);
        c
    };
    assert!(
        quiet(slurm("/usr/sbin/slurmctld").arg("-c")),
        "slurmctld did not start"
    );
    started.pid_files.push(dir.join("slurmctld.pid"));
    assert!(
        quiet(&mut slurm("/usr/sbin/slurmd")),
        "slurmd did not start"
    );
    started.pid_files.push(dir.join("slurmd.pid"));
    wait_for("the Slurm node", Duration::from_secs(60), || {
        slurm("sinfo")
            .args(["-h", "-o", "%t"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
            .unwrap_or(false)
    });

    let tmp = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_rl-darts");
    let plan = tmp.path().join("plan.json");
    let ok = Command::new(bin)
        .current_dir(repo())
        .args([
            "sweep",
            "plan",
            "--env",
            "cartpole",
            "--seeds",
            "1,2",
            "--name",
            "slurmtest",
        ])
        .arg("--config")
        .arg(repo().join("configs/cartpole-ppo.toml"))
        .args([
            "--set",
            "ppo.total_timesteps=2048",
            "--set",
            "torch_threads=1",
        ])
        .args(["--grid", "ppo.learning_rate=1e-3,3e-4"])
        .arg("--out-dir")
        .arg(tmp.path().join("runs"))
        .arg("-o")
        .arg(&plan)
        .status()
        .unwrap();
    assert!(ok.success());
    let script = tmp.path().join("s.sbatch");
    assert!(Command::new(bin)
        .args(["sweep", "slurm"])
        .arg(&plan)
        .arg("-o")
        .arg(&script)
        .status()
        .unwrap()
        .success());
    // --wait: sbatch returns when every array task has ended; bounded by the timeout.
    let out = slurm("timeout")
        .args(["300", "sbatch", "--wait"])
        .arg(&script)
        .output()
        .unwrap();
    eprintln!(
        "sbatch: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the array job failed or took over 300 s"
    );
    let job = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    for i in 0..4 {
        let log = tmp
            .path()
            .join(format!("runs/slurm/slurmtest_{job}_{i}.out"));
        let text = fs::read_to_string(&log).unwrap_or_default();
        assert!(
            text.contains(&format!("trial #{i} ")) && text.contains("complete"),
            "{}: {text}",
            log.display()
        );
    }
    let status = Command::new(bin)
        .args(["sweep", "status"])
        .arg(&plan)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.matches("complete").count(), 4, "{status}");
}
