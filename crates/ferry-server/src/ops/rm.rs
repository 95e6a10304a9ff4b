//! `rm`: remove a file, a symlink (never its target), an empty directory, or with
//! `recursive` a whole tree. Frees the removed files' quota.

use std::sync::Arc;

use cap_std::fs::MetadataExt;
use ferry_proto::{ErrorCode, Reply};

use super::{OpError, blocking};
use crate::quota::{MAX_WALK_DEPTH, walk_dir};
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
                let sub = home.dir().open_dir(t.rel()).map_err(io)?;
                let walk = walk_dir(&sub, true, true).map_err(io)?;
                drop(sub);
                if walk.too_deep {
                    return Err(OpError::new(
                        ErrorCode::PermissionDenied,
                        format!(
                            "{}: the tree is more than {MAX_WALK_DEPTH} directories deep; remove its deeper parts first",
                            t.display()
                        ),
                    ));
                }
                let (freed, gone) = (walk.usage, walk.inodes);
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
