//! `cd`: change the session's working directory.

use std::sync::Arc;

use ferry_proto::{ErrorCode, Reply};

use super::{OpError, blocking};
use crate::session::Session;

pub async fn run(s: &mut Session, path: &str) -> Result<Reply, OpError> {
    let target = s.cwd.resolve(path)?;
    let home = Arc::clone(&s.user()?.home);
    let t = target.clone();
    blocking(move || {
        let meta = home
            .dir()
            .metadata(t.rel())
            .map_err(|e| OpError::io(&t, e))?;
        if !meta.is_dir() {
            return Err(OpError::new(
                ErrorCode::NotADirectory,
                format!("{}: not a directory", t.display()),
            ));
        }
        Ok(())
    })
    .await?;
    s.cwd = target;
    Ok(Reply::Cd {
        cwd: s.cwd.display(),
    })
}
