//! `resume`: how many bytes of an interrupted upload of exactly this file (user, path, size,
//! and hash — or, for a put that sends its hash after the body, the client's mtime) the
//! server holds.

use ferry_proto::{Digest, Reply};

use super::{OpError, blocking};
use crate::session::{Session, UploadKey, partial_name};

pub async fn run(
    s: &Session,
    path: &str,
    size: u64,
    hash: Option<&Digest>,
    mtime: Option<i64>,
) -> Result<Reply, OpError> {
    let target = s.cwd.resolve(path)?;
    let user = s.user()?;
    let name = partial_name(&user.name, &target, size, UploadKey::of_put(hash, mtime));
    let partials = std::sync::Arc::clone(&user.partials);
    let held = blocking(move || {
        Ok(match partials.metadata(&name) {
            Ok(m) if m.is_file() => m.len().min(size),
            _ => 0,
        })
    })
    .await?;
    Ok(Reply::Resume {
        path: target.display(),
        offset: held,
    })
}
