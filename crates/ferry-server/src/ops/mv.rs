//! `mv`: rename within the home. `to` is the exact new path; without `overwrite` an existing
//! `to` is refused atomically (`renameat2(RENAME_NOREPLACE)`).

use std::sync::Arc;

use cap_std::fs::MetadataExt;
use ferry_proto::{ErrorCode, Reply};

use super::{OpError, blocking};
use crate::home::{MAX_DIR_DEPTH, rename_at};
use crate::quota::dirs_deeper_than;
use crate::session::Session;

pub async fn run(s: &Session, from: &str, to: &str, overwrite: bool) -> Result<Reply, OpError> {
    let src = s.cwd.resolve(from)?;
    let dst = s.cwd.resolve(to)?;
    if src.is_root() {
        return Err(OpError::new(
            ErrorCode::PermissionDenied,
            "/: the home directory itself cannot be moved",
        ));
    }
    if dst.is_root() {
        return Err(if overwrite {
            OpError::new(
                ErrorCode::PermissionDenied,
                "/: the home directory cannot be replaced",
            )
        } else {
            OpError::new(ErrorCode::AlreadyExists, "/: already exists")
        });
    }
    if dst != src && dst.starts_with(&src) {
        return Err(OpError::new(
            ErrorCode::InvalidPath,
            format!("cannot move {} into itself", src.display()),
        ));
    }
    let user = s.user()?;
    let home = Arc::clone(&user.home);
    let usage = Arc::clone(&user.usage);
    let shared = Arc::clone(&s.shared);
    let name = user.name.clone();
    let (a, b) = (src.clone(), dst.clone());
    blocking(move || {
        let src_parent = a.parent().expect("not root");
        let dst_parent = b.parent().expect("not root");
        let sdir = home
            .dir()
            .open_dir(src_parent.rel())
            .map_err(|e| OpError::io(&src_parent, e))?;
        let name_a = a.name().expect("not root");
        let name_b = b.name().expect("not root");
        let moved = sdir
            .symlink_metadata(name_a)
            .map_err(|e| OpError::io(&a, e))?;
        // Nothing may end up deeper than the usage walks see (home::MAX_DIR_DEPTH): a
        // directory moved deeper is checked for how tall it is, with every `mkdir` of this
        // user held off until it has moved.
        let _shape;
        if moved.is_dir() {
            b.may_create(true)?;
            _shape = usage.shape.write().unwrap_or_else(|e| e.into_inner());
            if b.depth() > a.depth() {
                let room = MAX_DIR_DEPTH - b.depth();
                let tree = sdir.open_dir(name_a).map_err(|e| OpError::io(&a, e))?;
                if dirs_deeper_than(&tree, room).map_err(|e| OpError::io(&a, e))? {
                    return Err(OpError::new(
                        ErrorCode::InvalidPath,
                        format!(
                            "{}: directories may lie at most {MAX_DIR_DEPTH} levels deep, and \
                             {} has directories {} level(s) below it",
                            b.display(),
                            a.display(),
                            room + 1
                        ),
                    ));
                }
            }
        } else {
            b.may_create(false)?;
        }
        let ddir = home
            .dir()
            .open_dir(dst_parent.rel())
            .map_err(|e| OpError::io(&dst_parent, e))?;
        let replaced = if overwrite {
            ddir.symlink_metadata(name_b).ok().filter(|m| m.is_file())
        } else {
            None
        };
        rename_at(&sdir, name_a, &ddir, name_b, !overwrite).map_err(|e| OpError::io(&b, e))?;
        if let Some(old) = replaced {
            usage.adjust(-(old.len() as i64), -1);
            if old.nlink() == 1 {
                shared.hashes.forget(&name, old.ino());
            }
        }
        Ok(())
    })
    .await?;
    Ok(Reply::Mv {
        from: src.display(),
        to: dst.display(),
    })
}
