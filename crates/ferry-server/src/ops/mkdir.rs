//! `mkdir`: create a directory; with `parents`, every missing one and no error if it exists.

use std::sync::Arc;

use ferry_proto::{ErrorCode, Reply};

use super::{OpError, blocking};
use crate::session::Session;

pub async fn run(s: &Session, path: &str, parents: bool) -> Result<Reply, OpError> {
    let target = s.cwd.resolve(path)?;
    target.may_create(true)?;
    let user = s.user()?;
    let home = Arc::clone(&user.home);
    let usage = Arc::clone(&user.usage);
    let t = target.clone();
    blocking(move || {
        // No `mv` may be checking the height of a directory this one goes into.
        let _shape = usage.shape.read().unwrap_or_else(|e| e.into_inner());
        if t.is_root() {
            return if parents {
                Ok(())
            } else {
                Err(OpError::new(ErrorCode::AlreadyExists, "/: already exists"))
            };
        }
        let res = if parents {
            home.dir().create_dir_all(t.rel()).and_then(|()| {
                // create_dir_all is fine with an existing directory; make sure it is one.
                if home.dir().metadata(t.rel())?.is_dir() {
                    Ok(())
                } else {
                    Err(std::io::Error::from_raw_os_error(libc::EEXIST))
                }
            })
        } else {
            home.dir().create_dir(t.rel())
        };
        res.map_err(|e| OpError::io(&t, e))
    })
    .await?;
    Ok(Reply::Mkdir {
        path: target.display(),
    })
}
