//! Run directories (`runs/{env}__{tag}__{seed}__{time}/`) and atomic checkpoints in them.
//!
//! A checkpoint is a folder `checkpoints/iter_00000042/`. It is written under a temporary
//! name and renamed into place only once complete (with a `COMPLETE` marker inside), so a
//! crash or Ctrl-C mid-write never leaves a half checkpoint where resume would find it.

use std::fs;
use std::path::{Path, PathBuf};

use super::TrainError;

pub const CONFIG_FILE: &str = "config.toml";
pub const TENSORBOARD_DIR: &str = "tb";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
const COMPLETE_MARKER: &str = "COMPLETE";
const PREFIX: &str = "iter_";

#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl RunDir {
    /// A new, uniquely named run directory under `base`.
    pub fn create_new(base: &Path, env: &str, tag: &str, seed: u64) -> Result<Self, TrainError> {
        let time = chrono::Local::now().format("%Y%m%d-%H%M%S");
        let mut root = base.join(format!("{env}__{tag}__{seed}__{time}"));
        // Two runs started in the same second (tests, sweeps) get distinct folders.
        let mut n = 1;
        while root.exists() {
            n += 1;
            root = base.join(format!("{env}__{tag}__{seed}__{time}-{n}"));
        }
        Self::create_at(&root)
    }

    /// Uses `root` as the run directory (created if missing).
    pub fn create_at(root: &Path) -> Result<Self, TrainError> {
        fs::create_dir_all(root.join(CHECKPOINTS_DIR)).map_err(io_err(root))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// An existing run directory, for `--resume`.
    pub fn open(root: &Path) -> Result<Self, TrainError> {
        if !root.join(CONFIG_FILE).is_file() {
            return Err(TrainError::Checkpoint {
                path: root.to_path_buf(),
                reason: format!(
                    "not a run directory (no {CONFIG_FILE}); give the folder a `train` run created"
                ),
            });
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    pub fn tensorboard_dir(&self) -> PathBuf {
        self.root.join(TENSORBOARD_DIR)
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join(CHECKPOINTS_DIR)
    }

    /// Writes a checkpoint for `iteration` through `write` (which fills the folder it is
    /// given), then renames it into place and keeps only the newest `keep`.
    pub fn save_checkpoint(
        &self,
        iteration: u64,
        keep: usize,
        write: impl FnOnce(&Path) -> Result<(), TrainError>,
    ) -> Result<PathBuf, TrainError> {
        let dir = self.checkpoints_dir();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let final_path = dir.join(format!("{PREFIX}{iteration:08}"));
        let tmp = dir.join(format!(
            ".{PREFIX}{iteration:08}.tmp-{}",
            std::process::id()
        ));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let result = write(&tmp).and_then(|()| {
            fs::write(tmp.join(COMPLETE_MARKER), iteration.to_string()).map_err(io_err(&tmp))?;
            if final_path.exists() {
                fs::remove_dir_all(&final_path).map_err(io_err(&final_path))?;
            }
            fs::rename(&tmp, &final_path).map_err(io_err(&final_path))
        });
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        self.prune(keep.max(1))?;
        Ok(final_path)
    }

    /// Complete checkpoints, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<(u64, PathBuf)>, TrainError> {
        let dir = self.checkpoints_dir();
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(iteration) = name
                .strip_prefix(PREFIX)
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if path.join(COMPLETE_MARKER).is_file() {
                found.push((iteration, path));
            }
        }
        found.sort();
        Ok(found)
    }

    pub fn latest_checkpoint(&self) -> Result<Option<PathBuf>, TrainError> {
        Ok(self.checkpoints()?.pop().map(|(_, p)| p))
    }

    fn prune(&self, keep: usize) -> Result<(), TrainError> {
        let all = self.checkpoints()?;
        let excess = all.len().saturating_sub(keep);
        for (_, path) in all.into_iter().take(excess) {
            fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
        Ok(())
    }
}

/// The run directory a checkpoint folder belongs to (`<run>/checkpoints/iter_N`).
pub fn run_of_checkpoint(checkpoint: &Path) -> Option<PathBuf> {
    let run = checkpoint.parent()?.parent()?;
    run.join(CONFIG_FILE).is_file().then(|| run.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_are_atomic_and_pruned() {
        let base = tempfile::tempdir().unwrap();
        let run = RunDir::create_new(base.path(), "cartpole", "mlp", 1).unwrap();
        for it in 1..=5 {
            run.save_checkpoint(it, 2, |dir| {
                fs::write(dir.join("x"), it.to_string()).map_err(io_err(dir))
            })
            .unwrap();
        }
        let kept: Vec<u64> = run.checkpoints().unwrap().iter().map(|(i, _)| *i).collect();
        assert_eq!(kept, [4, 5]);
        // A failed write leaves no checkpoint behind and the previous ones intact.
        let failed = run.save_checkpoint(6, 2, |dir| {
            Err(TrainError::Checkpoint {
                path: dir.into(),
                reason: "boom".into(),
            })
        });
        assert!(failed.is_err());
        assert_eq!(
            run.latest_checkpoint().unwrap().unwrap(),
            run.checkpoints_dir().join("iter_00000005")
        );
        // An incomplete folder (no marker), as a crash would leave, is ignored.
        fs::create_dir_all(run.checkpoints_dir().join("iter_00000009")).unwrap();
        assert_eq!(run.checkpoints().unwrap().len(), 2);
        let second = RunDir::create_new(base.path(), "cartpole", "mlp", 1).unwrap();
        assert_ne!(second.root, run.root);
    }
}
