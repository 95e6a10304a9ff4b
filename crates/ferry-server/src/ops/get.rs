//! `get`: opens the file, finds its hash (of record, or in the asked algorithm) and hands the
//! session what to send: a small body read into memory (sent with the reply, in the same
//! write as its neighbours in a batch), or the open file for `sendfile`. The file stays open,
//! so a concurrent upload that replaces it (by rename) cannot change the bytes we send.

use std::fs::{File, Metadata};
use std::os::unix::fs::{FileExt, MetadataExt};

use cap_std::fs::OpenOptionsExt as _;
use cap_std::fs::{Dir, OpenOptions};

use ferry_proto::{ErrorCode, HashAlgo, Reply};

use super::OpError;
use crate::hashes::FileStamp;
use crate::home::VPath;
use crate::session::{UserFs, open_regular};

/// Bodies up to this size are read into memory and queued behind their reply; larger ones go
/// by `sendfile` (a syscall and a flush of their own).
pub const INLINE_GET: u64 = 64 * 1024;

/// Where a download's body comes from.
#[derive(Debug)]
pub enum Body {
    /// Already read, all `len` bytes.
    Inline(Vec<u8>),
    /// To be sent from the open file.
    File(File),
}

/// A reply ready to go, with its body.
#[derive(Debug)]
pub struct Ready {
    pub reply: Reply,
    pub body: Body,
    pub offset: u64,
    pub len: u64,
}

/// What the gets of one run (ops/batch.rs) share: the parent directory opened last, so that
/// a file in it costs its own calls only (stat, open, fstat, read, close) rather than also
/// a confined walk to its parent for the type check. Runs of gets usually come one
/// directory at a time (`get -r`).
#[derive(Default)]
pub struct Gets {
    parent: Option<(VPath, Dir)>,
}

impl Gets {
    /// The target opened for reading and its metadata: through the cached parent when the
    /// entry there is a regular file, else by the general confined path (symlinks, errors).
    fn open(&mut self, u: &UserFs, target: &VPath) -> Result<(File, Metadata), OpError> {
        if let Some(opened) = self.open_in_parent(u, target) {
            return Ok(opened);
        }
        let file = open_regular(&u.home, target)?;
        let meta = file.metadata().map_err(|e| OpError::io(target, e))?;
        Ok((file, meta))
    }

    fn open_in_parent(&mut self, u: &UserFs, target: &VPath) -> Option<(File, Metadata)> {
        let (parent, name) = (target.parent()?, target.name()?);
        if self.parent.as_ref().is_none_or(|(p, _)| *p != parent) {
            self.parent = None;
            let dir = u.home.dir().open_dir(parent.rel()).ok()?;
            self.parent = Some((parent, dir));
        }
        let (_, dir) = self.parent.as_ref()?;
        // Not following a symlink here: only a regular file (not a device, fifo or socket,
        // which must not be opened) takes this path.
        if !dir.symlink_metadata(name).ok()?.is_file() {
            return None;
        }
        let mut opts = OpenOptions::new();
        opts.read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
        let file = dir.open_with(name, &opts).ok()?.into_std();
        // Replaced between the check and the open: the general path says what it is now.
        let meta = file.metadata().ok().filter(Metadata::is_file)?;
        Some((file, meta))
    }
}

/// Blocking. `inline_budget` is how many body bytes the caller still accepts in memory; a
/// body read inline is taken from it.
pub fn open(
    u: &UserFs,
    run: &mut Gets,
    target: &VPath,
    offset: u64,
    algo: Option<HashAlgo>,
    inline_budget: &mut u64,
) -> Result<Ready, OpError> {
    let (file, meta) = run.open(u, target)?;
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
    let (hash, stamp) = u
        .shared
        .hashes
        .get_or_compute_stamped(
            &u.name,
            &file,
            FileStamp::of(&meta),
            algo.unwrap_or(HashAlgo::Blake3),
        )
        .map_err(|e| OpError::io(target, e))?;
    let size = stamp.size;
    let offset = offset.min(size);
    let len = size - offset;
    let body = match read_inline(&file, offset, len, inline_budget) {
        Some(bytes) => Body::Inline(bytes),
        None => Body::File(file),
    };
    Ok(Ready {
        reply: Reply::Get {
            path: target.display(),
            size,
            offset,
            mtime: meta.mtime(),
            hash,
        },
        body,
        offset,
        len,
    })
}

/// The body, if it is small enough and fits the budget and the file still holds all of it
/// (one that shrank is left to `Conn::send_file`, which completes it with zeros).
fn read_inline(file: &File, offset: u64, len: u64, budget: &mut u64) -> Option<Vec<u8>> {
    if len > INLINE_GET || len > *budget {
        return None;
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, offset).ok()?;
    *budget -= len;
    Some(bytes)
}
