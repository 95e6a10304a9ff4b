//! `ls`: a directory's entries sorted by name (or the one entry of a file). Entries carry
//! the hash of record only when it is already known: listing never hashes.

use std::sync::Arc;

use ferry_proto::{EntryKind, HashAlgo, Reply};

use super::{OpError, blocking};
use crate::hashes::FileStamp;
use crate::home::entry_of;
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
        let known = |m: &cap_std::fs::Metadata| {
            m.is_file()
                .then(|| {
                    hashes
                        .hashes
                        .known(&name, &FileStamp::of_cap(m), HashAlgo::Blake3)
                })
                .flatten()
        };
        if !meta.is_dir() {
            let n = t.name().unwrap_or("/").to_owned();
            return Ok(vec![entry_of(n, &meta, known(&meta))]);
        }
        let mut out = Vec::new();
        for entry in home.dir().read_dir(t.rel()).map_err(io)? {
            let entry = entry.map_err(io)?;
            let n = entry.file_name().to_string_lossy().into_owned();
            let m = match entry.metadata() {
                Ok(m) => m,
                // Removed between listing and stat: just skip it.
                Err(_) => continue,
            };
            let e = entry_of(n, &m, known(&m));
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
