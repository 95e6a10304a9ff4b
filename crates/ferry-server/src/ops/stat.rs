//! `stat`: one path's metadata; with `algo`, the file's hash in that algorithm (computed and
//! cached if not on record).

use std::sync::Arc;

use ferry_proto::{ErrorCode, HashAlgo, Reply};

use super::ls::known_of_path;
use super::{OpError, blocking};
use crate::home::entry_of;
use crate::session::{Session, open_regular};

pub async fn run(s: &Session, path: &str, algo: Option<HashAlgo>) -> Result<Reply, OpError> {
    let target = s.cwd.resolve(path)?;
    let user = s.user()?;
    let home = Arc::clone(&user.home);
    let name = user.name.clone();
    let shared = Arc::clone(&s.shared);
    let entry = blocking(move || {
        let meta = home
            .dir()
            .metadata(target.rel())
            .map_err(|e| OpError::io(&target, e))?;
        let hash = match algo {
            None => known_of_path(&shared.hashes, &name, &home, &target, &meta),
            Some(_) if meta.is_dir() => {
                return Err(OpError::new(
                    ErrorCode::IsADirectory,
                    format!("{}: is a directory", target.display()),
                ));
            }
            Some(algo) => {
                let file = open_regular(&home, &target)?;
                let (digest, _) = shared
                    .hashes
                    .get_or_compute(&name, &file, algo)
                    .map_err(|e| OpError::io(&target, e))?;
                Some(digest)
            }
        };
        Ok(entry_of(target.display(), &meta, hash))
    })
    .await?;
    Ok(Reply::Stat(entry))
}
