//! `get`: opens the file, finds its hash (of record, or in the asked algorithm) and hands the
//! session an open file to send with `sendfile`. The file stays open, so a concurrent upload
//! that replaces it (by rename) cannot change the bytes we send.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use ferry_proto::{ErrorCode, HashAlgo, Reply};

use super::{OpError, blocking};
use crate::session::{Session, open_regular};

/// A reply ready to go, with the file its body comes from.
#[derive(Debug)]
pub struct Ready {
    pub reply: Reply,
    pub file: File,
    pub offset: u64,
    pub len: u64,
}

pub async fn run(
    s: &Session,
    path: &str,
    offset: u64,
    algo: Option<HashAlgo>,
) -> Result<Ready, OpError> {
    let target = s.cwd.resolve(path)?;
    let user = s.user()?;
    let home = Arc::clone(&user.home);
    let name = user.name.clone();
    let shared = Arc::clone(&s.shared);
    blocking(move || {
        let file = open_regular(&home, &target)?;
        let meta = file.metadata().map_err(|e| OpError::io(&target, e))?;
        if offset > meta.len() {
            return Err(OpError::new(
                ErrorCode::BadRequest,
                format!(
                    "offset {offset} is past the end of {} ({} bytes)",
                    target.display(),
                    meta.len()
                ),
            ));
        }
        let (hash, stamp) = shared
            .hashes
            .get_or_compute(&name, &file, algo.unwrap_or(HashAlgo::Blake3))
            .map_err(|e| OpError::io(&target, e))?;
        let size = stamp.size;
        let offset = offset.min(size);
        Ok(Ready {
            reply: Reply::Get {
                path: target.display(),
                size,
                offset,
                mtime: meta.mtime(),
                hash,
            },
            file,
            offset,
            len: size - offset,
        })
    })
    .await
}
