//! `ls`: a directory's entries sorted by name (or the one entry of a file). Entries carry
//! the hash of record only when it is already known: listing never hashes.

use std::os::fd::AsFd;
use std::sync::Arc;

use ferry_proto::{Digest, Entry, HashAlgo, Reply};

use super::{OpError, blocking};
use crate::hashes::{FileStamp, HashStore};
use crate::home::{Home, VPath, entry_of};
use crate::session::Session;

/// From this many entries on, a listing is described by two threads.
const PARALLEL_LISTING: usize = 512;

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
        let listed = dir
            .entries()
            .map_err(io)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(io)?;
        let describe = |part: &[cap_std::fs::DirEntry]| -> Vec<Entry> {
            part.iter()
                .filter_map(|entry| {
                    let n = entry.file_name().to_string_lossy().into_owned();
                    // Removed between listing and stat: just skip it.
                    let m = entry.metadata().ok()?;
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
                    Some(entry_of(n, &m, known))
                })
                .collect()
        };
        // A stat (and a record lookup) per entry is most of a listing's cost, and the client
        // waits for all of it before it can ask for anything listed: a large directory is
        // described by two threads, which halves that wait (2,000 entries: ~7 ms of CPU).
        let mut out = if listed.len() >= PARALLEL_LISTING {
            let (first, second) = listed.split_at(listed.len() / 2);
            std::thread::scope(|scope| {
                let other = std::thread::Builder::new()
                    .name("ferry-ls".into())
                    .spawn_scoped(scope, || describe(second));
                let mut out = describe(first);
                match other {
                    Ok(handle) => out.extend(handle.join().expect("listing thread panicked")),
                    Err(_) => out.extend(describe(second)),
                }
                out
            })
        } else {
            describe(&listed)
        };
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
