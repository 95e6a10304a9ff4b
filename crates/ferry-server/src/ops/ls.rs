//! `ls`: a directory's entries sorted by name (or the one entry of a file). Entries carry
//! the hash of record only when it is already known: listing never hashes.

use std::os::fd::AsFd;
use std::sync::Arc;

use ferry_proto::{Digest, EntryKind, HashAlgo, Reply};

use super::{OpError, blocking};
use crate::hashes::{FileStamp, HashStore};
use crate::home::{Home, VPath, entry_of};
use crate::session::Session;

pub async fn run(s: &Session, path: Option<&str>) -> Result<Reply, OpError> {
    let target = match path {
        Some(p) => s.cwd.resolve(p)?,
        None => s.cwd.clone(),
    };
    let user = s.user()?;
    let home = Arc::clone(&user.home);
    let name = user.name.clone();
    let hashes = Arc::clone(&s.shared);
    let t = target.clone();
    let entries = blocking(move || {
        let io = |e| OpError::io(&t, e);
        let meta = home.dir().metadata(t.rel()).map_err(io)?;
        if !meta.is_dir() {
            let n = t.name().unwrap_or("/").to_owned();
            let known = known_of_path(&hashes.hashes, &name, &home, &t, &meta);
            return Ok(vec![entry_of(n, &meta, known)]);
        }
        let dir = home.dir().open_dir(t.rel()).map_err(io)?;
        let mut out = Vec::new();
        for entry in dir.entries().map_err(io)? {
            let entry = entry.map_err(io)?;
            let n = entry.file_name().to_string_lossy().into_owned();
            let m = match entry.metadata() {
                Ok(m) => m,
                // Removed between listing and stat: just skip it.
                Err(_) => continue,
            };
            let known = m
                .is_file()
                .then(|| {
                    hashes.hashes.known(
                        &name,
                        dir.as_fd(),
                        &n,
                        &FileStamp::of_cap(&m),
                        HashAlgo::Blake3,
                    )
                })
                .flatten();
            let e = entry_of(n, &m, known);
            debug_assert!(e.kind != EntryKind::File || m.is_file());
            out.push(e);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    })
    .await?;
    Ok(Reply::Ls {
        path: target.display(),
        entries,
    })
}

/// The blake3 on record for the file at `t` (its metadata `meta`), if any. Blocking.
pub(super) fn known_of_path(
    hashes: &HashStore,
    user: &str,
    home: &Home,
    t: &VPath,
    meta: &cap_std::fs::Metadata,
) -> Option<Digest> {
    if !meta.is_file() {
        return None;
    }
    let (parent, name) = (t.parent()?, t.name()?);
    let dir = home.dir().open_dir(parent.rel()).ok()?;
    hashes.known(
        user,
        dir.as_fd(),
        name,
        &FileStamp::of_cap(meta),
        HashAlgo::Blake3,
    )
}
