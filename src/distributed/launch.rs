//! Who launched this process and as which rank, from the launcher's environment variables:
//! `mpirun` (Open MPI), `srun` (Slurm), `mpiexec` of MPICH (PMI), `torchrun`. The engines
//! take their rank and size from the engine itself (MPI_Comm_rank); this is the cross-check
//! that turns a wrong launch into an error instead of N independent one-process runs, and the
//! source of the local rank (which GPU a process takes).

/// Rank, size and local rank as a launcher set them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    /// The launcher the variables belong to ("mpirun", "srun", "torchrun", ...).
    pub launcher: &'static str,
    pub rank: usize,
    pub size: usize,
    pub local_rank: usize,
}

/// (launcher, rank var, size var, local rank var), in the order they are tried: mpirun under
/// Slurm sets both Open MPI's and Slurm's variables, and Open MPI's describe the MPI job.
const SCHEMES: [(&str, &str, &str, &str); 5] = [
    (
        "mpirun",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
    ),
    ("mpiexec (PMI)", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("PMIx", "PMIX_RANK", "PMIX_SIZE", "PMIX_LOCAL_RANK"),
];

impl LaunchEnv {
    /// The first launcher whose rank and size variables are both set and numeric, read through
    /// `var` (the process environment in [`LaunchEnv::from_env`]; a map in tests).
    pub fn detect(var: impl Fn(&str) -> Option<String>) -> Option<LaunchEnv> {
        let num = |name: &str| var(name).and_then(|v| v.trim().parse::<usize>().ok());
        SCHEMES.iter().find_map(|&(launcher, rank, size, local)| {
            let (rank, size) = (num(rank)?, num(size)?);
            // srun outside a step (SLURM_NTASKS of the allocation in a batch script) also sets
            // SLURM_PROCID=0; a size of 1 says nothing about a multi-process launch.
            (size >= 1 && rank < size).then(|| LaunchEnv {
                launcher,
                rank,
                size,
                local_rank: num(local).unwrap_or(0),
            })
        })
    }

    pub fn from_env() -> Option<LaunchEnv> {
        Self::detect(|name| std::env::var(name).ok())
    }
}

/// Checks the engine's world against the launcher's: a launcher that started N processes
/// whose engine sees one world each (torchrun's processes under the MPI backend) would train N
/// unrelated copies and overwrite one run directory.
pub fn check_world(
    engine: &str,
    rank: usize,
    size: usize,
    env: Option<&LaunchEnv>,
) -> Result<(), super::DistError> {
    let Some(env) = env else {
        return Ok(());
    };
    if env.size != size || env.rank != rank {
        return Err(super::DistError::Launch(format!(
            "{} started this process as rank {} of {}, but {engine} sees rank {rank} of {size}. \
             The {engine} backend needs an MPI launcher (mpirun -np N, or srun --mpi=pmix); \
             torchrun starts processes without MPI",
            env.launcher, env.rank, env.size
        )));
    }
    Ok(())
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

    #[test]
    fn reads_each_launcher() {
        let mpirun = LaunchEnv::detect(env(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            // mpirun inside a Slurm allocation: Open MPI's variables win.
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
        ]))
        .unwrap();
        assert_eq!(
            (mpirun.launcher, mpirun.rank, mpirun.size, mpirun.local_rank),
            ("mpirun", 1, 4, 1)
        );
        let srun = LaunchEnv::detect(env(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "3"),
        ]))
        .unwrap();
        assert_eq!((srun.launcher, srun.rank, srun.size), ("srun", 3, 8));
        let torchrun = LaunchEnv::detect(env(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "0"),
        ]))
        .unwrap();
        assert_eq!(torchrun.launcher, "torchrun");
        assert_eq!(LaunchEnv::detect(env(&[])), None);
        // A rank outside the world is not a launch.
        assert_eq!(
            LaunchEnv::detect(env(&[("RANK", "2"), ("WORLD_SIZE", "2")])),
            None
        );
    }

    #[test]
    fn a_world_that_disagrees_with_the_launcher_is_an_error() {
        let torchrun = LaunchEnv {
            launcher: "torchrun",
            rank: 1,
            size: 2,
            local_rank: 1,
        };
        let err = check_world("MPI", 0, 1, Some(&torchrun)).unwrap_err();
        assert!(err
            .to_string()
            .contains("torchrun started this process as rank 1 of 2"));
        check_world("MPI", 1, 2, Some(&torchrun)).unwrap();
        check_world("MPI", 0, 1, None).unwrap();
    }
}
