//! State that rank 0 holds and every process needs: a checkpoint to resume from (only rank 0
//! writes checkpoints, and the others may not see its disk), and the initial weights; and the
//! folders of each process's own state that rank 0 gathers into its checkpoints.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Communicator, DistError};

/// A checkpoint folder as bytes: its name and every file under it (relative paths).
#[derive(Serialize, Deserialize)]
struct Folder {
    name: String,
    files: Vec<(String, Vec<u8>)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DistError + '_ {
    move |source| DistError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_folder(
    root: &Path,
    dir: &Path,
    files: &mut Vec<(String, Vec<u8>)>,
) -> Result<(), DistError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_folder(root, &path, files)?;
        } else {
            let rel = path
                .strip_prefix(root)
                .expect("read_dir yields paths under its folder")
                .to_string_lossy()
                .into_owned();
            files.push((rel, std::fs::read(&path).map_err(io(&path))?));
        }
    }
    Ok(())
}

/// Every file under `dir` as bytes (relative paths; the folder's name is not kept).
pub fn pack_folder(dir: &Path) -> Result<Vec<u8>, DistError> {
    let mut files = Vec::new();
    read_folder(dir, dir, &mut files)?;
    let folder = Folder {
        name: String::new(),
        files,
    };
    Ok(bincode::serialize(&folder).expect("a folder of bytes serialises"))
}

/// Writes what [`pack_folder`] packed into `into` (created).
pub fn unpack_folder(bytes: &[u8], into: &Path) -> Result<(), DistError> {
    let folder: Folder = bincode::deserialize(bytes)
        .map_err(|e| DistError::Config(format!("a packed folder arrived unreadable: {e}")))?;
    write_files(&folder.files, into)
}

fn write_files(files: &[(String, Vec<u8>)], dir: &Path) -> Result<(), DistError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for (rel, data) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, data).map_err(io(&path))?;
    }
    Ok(())
}

/// Rank 0's `checkpoint` folder on every process: rank 0 reads it and broadcasts it; each
/// other process writes it into `into/<its name>` and gets that path (rank 0 gets its own
/// path back). `None` on rank 0 (nothing to resume) is `None` everywhere.
pub fn share_checkpoint(
    comm: &dyn Communicator,
    checkpoint: Option<&Path>,
    into: &Path,
) -> Result<Option<PathBuf>, DistError> {
    let mut bytes = Vec::new();
    if comm.rank() == 0 {
        let folder = match checkpoint {
            Some(dir) => {
                let mut files = Vec::new();
                read_folder(dir, dir, &mut files)?;
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "checkpoint".into());
                Some(Folder { name, files })
            }
            None => None,
        };
        bytes = bincode::serialize(&folder).expect("a folder of bytes serialises");
    }
    comm.broadcast_bytes(&mut bytes)?;
    if comm.rank() == 0 {
        return Ok(checkpoint.map(Path::to_path_buf));
    }
    let folder: Option<Folder> = bincode::deserialize(&bytes)
        .map_err(|e| DistError::Config(format!("rank 0's checkpoint arrived unreadable: {e}")))?;
    let Some(folder) = folder else {
        return Ok(None);
    };
    let dir = into.join(&folder.name);
    write_files(&folder.files, &dir)?;
    Ok(Some(dir))
}
