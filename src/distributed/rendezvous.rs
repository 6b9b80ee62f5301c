//! torchrun launches (`torchrun --no-python --nproc-per-node N rl-darts train ... --distributed
//! nccl`): the rank, world size and local rank come from torchrun's environment (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`), and NCCL's unique id goes from rank 0 to the others over TCP
//! at `MASTER_ADDR`, one connection per process, once, before `ncclCommInitRank`. Nothing else
//! travels this way: every collective after it is NCCL's.
//!
//! Why not torch's own store: torchrun's processes find each other through the TCPStore that
//! torchrun's agent serves on `MASTER_ADDR:MASTER_PORT`, whose wire protocol is internal to
//! torch (no Rust client exists). So rank 0 listens on the next port, `MASTER_PORT + 1` (or
//! `RL_DARTS_RENDEZVOUS_PORT`), which the agent does not use.
//!
//! The MPI backend cannot run under torchrun (torchrun starts no MPI world):
//! [`refuse_mpi_under_torchrun`] says so before MPI is initialised.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::DistError;

/// The variable that overrides the rendezvous port (default `MASTER_PORT + 1`).
pub const PORT_VAR: &str = "RL_DARTS_RENDEZVOUS_PORT";

/// A process torchrun started, as its environment describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchrunEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    /// Where rank 0 serves the id.
    pub port: u16,
}

impl TorchrunEnv {
    /// torchrun's variables read through `var`: `None` when this is not a torchrun launch
    /// (`RANK` or `WORLD_SIZE` unset, or an MPI launcher's variables present: mpirun's
    /// describe the job then); an error naming the variable when one is set but unusable.
    pub fn detect(var: impl Fn(&str) -> Option<String>) -> Result<Option<TorchrunEnv>, DistError> {
        let mpi_launch = ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"]
            .iter()
            .any(|v| var(v).is_some());
        if mpi_launch || var("RANK").is_none() || var("WORLD_SIZE").is_none() {
            return Ok(None);
        }
        let num = |name: &str| -> Result<usize, DistError> {
            let raw = var(name)
                .ok_or_else(|| DistError::Launch(format!("torchrun launch: {name} is not set")))?;
            raw.trim().parse::<usize>().map_err(|_| {
                DistError::Launch(format!("torchrun launch: {name}={raw:?} is not a number"))
            })
        };
        let (rank, world_size) = (num("RANK")?, num("WORLD_SIZE")?);
        if world_size == 0 || rank >= world_size {
            return Err(DistError::Launch(format!(
                "torchrun launch: RANK={rank} is not below WORLD_SIZE={world_size}"
            )));
        }
        let local_rank = match var("LOCAL_RANK") {
            Some(_) => num("LOCAL_RANK")?,
            None => 0,
        };
        let master_addr = var("MASTER_ADDR")
            .ok_or_else(|| DistError::Launch("torchrun launch: MASTER_ADDR is not set".into()))?;
        let master_port = num("MASTER_PORT")?;
        let port = match var(PORT_VAR) {
            Some(_) => num(PORT_VAR)?,
            None => master_port + 1,
        };
        let port = u16::try_from(port).map_err(|_| {
            DistError::Launch(format!(
                "torchrun launch: rendezvous port {port} (MASTER_PORT + 1, or {PORT_VAR}) is \
                 not a TCP port"
            ))
        })?;
        Ok(Some(TorchrunEnv {
            rank,
            world_size,
            local_rank,
            master_addr,
            port,
        }))
    }

    pub fn from_env() -> Result<Option<TorchrunEnv>, DistError> {
        Self::detect(|name| std::env::var(name).ok())
    }
}

/// The MPI backend under torchrun: an error that says to use an MPI launcher (each torchrun
/// process would initialise a world of its own and train alone).
pub fn refuse_mpi_under_torchrun(var: impl Fn(&str) -> Option<String>) -> Result<(), DistError> {
    match TorchrunEnv::detect(var) {
        Ok(Some(env)) if env.world_size > 1 => Err(DistError::Launch(format!(
            "torchrun started this process (RANK={} of WORLD_SIZE={}), but the mpi backend \
             needs an MPI launcher: torchrun starts no MPI world, so each process would train \
             alone. Use `mpirun -np {} rl-darts ...` (or `srun --mpi=pmix`), or torchrun with \
             --distributed nccl on GPUs",
            env.rank, env.world_size, env.world_size
        ))),
        _ => Ok(()),
    }
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> DistError {
    move |e| DistError::Launch(format!("rendezvous: {what}: {e}"))
}

/// Rank 0's `id` on every process: rank 0 (which passes `Some(id)`) listens on
/// `0.0.0.0:port` and answers each of the other `world_size - 1` processes once; the others
/// connect to `MASTER_ADDR:port` (retrying until it listens) and read it. Each process sends
/// its rank and world size first, so that a process of another launch, or a rank twice, is an
/// error. Gives up after `timeout`.
pub fn exchange_id(
    env: &TorchrunEnv,
    id: Option<&[u8]>,
    timeout: Duration,
) -> Result<Vec<u8>, DistError> {
    let deadline = Instant::now() + timeout;
    let late = |what: &str| {
        DistError::Launch(format!(
            "rendezvous: {what} within {:.0} s (rank {} of {}, port {})",
            timeout.as_secs_f64(),
            env.rank,
            env.world_size,
            env.port
        ))
    };
    if env.rank == 0 {
        let id = id.ok_or_else(|| DistError::Launch("rendezvous: rank 0 has no id".into()))?;
        let listener = TcpListener::bind(("0.0.0.0", env.port))
            .map_err(io_err(format!("listening on port {}", env.port)))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("listener".into()))?;
        let mut seen = vec![false; env.world_size];
        seen[0] = true;
        let mut answered = 1;
        while answered < env.world_size {
            let mut stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(late(&format!(
                            "only {answered} of {} processes arrived",
                            env.world_size
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => return Err(io_err("accept".into())(e)),
            };
            stream
                .set_nonblocking(false)
                .and_then(|_| stream.set_read_timeout(Some(timeout)))
                .map_err(io_err("connection".into()))?;
            let mut hello = [0u8; 8];
            stream
                .read_exact(&mut hello)
                .map_err(io_err("reading a process's rank".into()))?;
            let rank = u32::from_le_bytes(hello[..4].try_into().expect("4 bytes")) as usize;
            let size = u32::from_le_bytes(hello[4..].try_into().expect("4 bytes")) as usize;
            if size != env.world_size || rank == 0 || rank >= size || seen[rank] {
                return Err(DistError::Launch(format!(
                    "rendezvous: a process says it is rank {rank} of {size}; rank 0 expects \
                     ranks 1..{} once each (another launch on port {}?)",
                    env.world_size, env.port
                )));
            }
            seen[rank] = true;
            let mut message = (id.len() as u32).to_le_bytes().to_vec();
            message.extend_from_slice(id);
            stream
                .write_all(&message)
                .map_err(io_err(format!("sending the id to rank {rank}")))?;
            answered += 1;
        }
        return Ok(id.to_vec());
    }
    let address = format!("{}:{}", env.master_addr, env.port);
    let mut stream = loop {
        match TcpStream::connect(&address) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(late(&format!("could not reach rank 0 at {address} ({e})"))),
        }
    };
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io_err("connection".into()))?;
    let mut hello = (env.rank as u32).to_le_bytes().to_vec();
    hello.extend_from_slice(&(env.world_size as u32).to_le_bytes());
    stream
        .write_all(&hello)
        .map_err(io_err(format!("greeting rank 0 at {address}")))?;
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .map_err(io_err("reading the id's length".into()))?;
    let mut id = vec![0u8; u32::from_le_bytes(len) as usize];
    stream
        .read_exact(&mut id)
        .map_err(io_err("reading the id".into()))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const TORCHRUN: [(&str, &str); 5] = [
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];

    #[test]
    fn reads_torchrun_variables() {
        let got = TorchrunEnv::detect(env(&TORCHRUN)).unwrap().unwrap();
        assert_eq!(
            got,
            TorchrunEnv {
                rank: 1,
                world_size: 2,
                local_rank: 1,
                master_addr: "127.0.0.1".into(),
                port: 29501,
            }
        );
        let mut with_port = TORCHRUN.to_vec();
        with_port.push((PORT_VAR, "40000"));
        assert_eq!(
            TorchrunEnv::detect(env(&with_port)).unwrap().unwrap().port,
            40000
        );
        // Not a torchrun launch: nothing set, or an MPI launcher's variables present.
        assert_eq!(TorchrunEnv::detect(env(&[])).unwrap(), None);
        let mut under_mpirun = TORCHRUN.to_vec();
        under_mpirun.push(("OMPI_COMM_WORLD_RANK", "0"));
        assert_eq!(TorchrunEnv::detect(env(&under_mpirun)).unwrap(), None);
    }

    #[test]
    fn unusable_variables_are_named() {
        let err = |pairs: &[(&str, &str)]| TorchrunEnv::detect(env(pairs)).unwrap_err().to_string();
        let mut no_addr = TORCHRUN.to_vec();
        no_addr.retain(|(k, _)| *k != "MASTER_ADDR");
        assert!(err(&no_addr).contains("MASTER_ADDR is not set"));
        let mut bad_port = TORCHRUN.to_vec();
        bad_port.retain(|(k, _)| *k != "MASTER_PORT");
        bad_port.push(("MASTER_PORT", "http"));
        assert!(err(&bad_port).contains("MASTER_PORT=\"http\" is not a number"));
        assert!(err(&[("RANK", "2"), ("WORLD_SIZE", "2")]).contains("not below WORLD_SIZE"));
        let mut top_port = TORCHRUN.to_vec();
        top_port.retain(|(k, _)| *k != "MASTER_PORT");
        top_port.push(("MASTER_PORT", "65535"));
        assert!(err(&top_port).contains("is not a TCP port"));
    }

    #[test]
    fn the_mpi_backend_under_torchrun_says_to_use_mpirun() {
        let err = refuse_mpi_under_torchrun(env(&TORCHRUN))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mpi backend needs an MPI launcher"), "{err}");
        assert!(err.contains("mpirun -np 2"), "{err}");
        refuse_mpi_under_torchrun(env(&[])).unwrap();
    }

    #[test]
    fn two_threads_exchange_the_id() {
        // A free port: bind port 0 and release it.
        let port = TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let at = |rank| TorchrunEnv {
            rank,
            world_size: 3,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            port,
        };
        let id: Vec<u8> = (0..128u32).map(|i| (i * 37 % 256) as u8).collect();
        let others: Vec<_> = (1..3)
            .map(|r| {
                let e = at(r);
                std::thread::spawn(move || exchange_id(&e, None, Duration::from_secs(20)))
            })
            .collect();
        let own = exchange_id(&at(0), Some(&id), Duration::from_secs(20)).unwrap();
        assert_eq!(own, id);
        for t in others {
            assert_eq!(t.join().unwrap().unwrap(), id);
        }
    }
}
