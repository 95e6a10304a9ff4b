//! `rm`: remove a file, a symlink (never its target), an empty directory, or with
//! `recursive` a whole tree. Frees the removed files' quota.

use std::io;
use std::sync::Arc;

use cap_std::fs::{Dir, MetadataExt};
use ferry_proto::{ErrorCode, Reply};

use super::{OpError, blocking};
use crate::quota::Usage;
use crate::session::Session;

pub async fn run(s: &Session, path: &str, recursive: bool) -> Result<Reply, OpError> {
    let target = s.cwd.resolve(path)?;
    if target.is_root() {
        return Err(OpError::new(
            ErrorCode::PermissionDenied,
            "/: the home directory itself cannot be removed",
        ));
    }
    let user = s.user()?;
    let home = Arc::clone(&user.home);
    let usage = Arc::clone(&user.usage);
    let shared = Arc::clone(&s.shared);
    let name = user.name.clone();
    let t = target.clone();
    blocking(move || {
        let io = |e| OpError::io(&t, e);
        let meta = home.dir().symlink_metadata(t.rel()).map_err(io)?;
        if meta.is_dir() {
            if recursive {
                let mut freed = Usage::default();
                let mut gone = Vec::new();
                let sub = home.dir().open_dir(t.rel()).map_err(io)?;
                measure(&sub, &mut freed, &mut gone).map_err(io)?;
                drop(sub);
                home.dir().remove_dir_all(t.rel()).map_err(io)?;
                usage.adjust(-(freed.bytes as i64), -(freed.files as i64));
                for ino in gone {
                    shared.hashes.forget(&name, ino);
                }
            } else {
                home.dir().remove_dir(t.rel()).map_err(io)?;
            }
        } else {
            home.dir().remove_file(t.rel()).map_err(io)?;
            if meta.is_file() {
                usage.adjust(-(meta.len() as i64), -1);
                if meta.nlink() == 1 {
                    shared.hashes.forget(&name, meta.ino());
                }
            }
        }
        Ok(())
    })
    .await?;
    Ok(Reply::Rm {
        path: target.display(),
    })
}

/// Regular files below `dir` (symlinks not followed), through the capability handle; the
/// inodes of those with a single link go to `inodes` (their hash records can go with them).
pub fn measure(dir: &Dir, usage: &mut Usage, inodes: &mut Vec<u64>) -> io::Result<()> {
    for entry in dir.entries()? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            measure(&entry.open_dir()?, usage, inodes)?;
        } else if ft.is_file() {
            let m = entry.metadata()?;
            usage.bytes += m.len();
            usage.files += 1;
            if m.nlink() == 1 {
                inodes.push(m.ino());
            }
        }
    }
    Ok(())
}
