//! `get`: opens the file, finds its hash (of record, or in the asked algorithm) and hands the
//! session what to send: a small body read into memory (sent with the reply, in the same
//! write as its neighbours in a batch), or the open file for `sendfile`. The file stays open,
//! so a concurrent upload that replaces it (by rename) cannot change the bytes we send.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

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

/// Blocking. `inline_budget` is how many body bytes the caller still accepts in memory; a
/// body read inline is taken from it.
pub fn open(
    u: &UserFs,
    target: &VPath,
    offset: u64,
    algo: Option<HashAlgo>,
    inline_budget: &mut u64,
) -> Result<Ready, OpError> {
    let file = open_regular(&u.home, target)?;
    let meta = file.metadata().map_err(|e| OpError::io(target, e))?;
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
/// (one that shrank is left to `sendfile`, which fails the connection as it must).
fn read_inline(file: &File, offset: u64, len: u64, budget: &mut u64) -> Option<Vec<u8>> {
    if len > INLINE_GET || len > *budget {
        return None;
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, offset).ok()?;
    *budget -= len;
    Some(bytes)
}
