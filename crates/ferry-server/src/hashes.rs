//! The hash of record.
//!
//! A record holds the file's size and mtime (ns) when hashed and its digests by algorithm,
//! as JSON. It lives on the file itself, in the extended attribute `user.ferry.hash`, where
//! the file system supports that: one `fsetxattr` on the open file, it follows the inode
//! through renames and `mv`s and goes away with it. Where extended attributes are refused
//! (`ENOTSUP`) or the attribute cannot be set, the record is a small file per inode instead:
//! `state/hashes/<user>/<ino>.json`. (A profile of 2,000 4 KiB uploads showed the file form
//! cost four syscalls and a new inode per upload, a seventh of the server's time.)
//!
//! A record is used only while the file's size and mtime still match (and, for the file
//! form, its inode), so a file changed by other means is re-hashed on its next
//! `get`/`stat algo`. Records are a cache of facts derivable from the file, so they are not
//! fsynced on their own; an in-memory map in front of them saves the read on repeated
//! downloads.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString};
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ferry_proto::{Digest, HashAlgo, Hasher};
use serde::{Deserialize, Serialize};

use crate::root::DataRoot;

/// Read size when hashing a file from disk.
const HASH_BUF: usize = 1 << 20;
/// In-memory records kept before the map is cleared (the disk copy stays).
const MEM_CAP: usize = 100_000;
/// The extended attribute a record is kept in.
const XATTR: &CStr = c"user.ferry.hash";
/// A record is ~100 bytes per digest; a longer attribute is not ours.
const XATTR_MAX: usize = 1024;

/// Where hashes of record are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordsIn {
    /// On each file, in the `user.ferry.hash` extended attribute, where the file system
    /// allows it; in record files where it does not.
    Xattr,
    /// In record files only (for an operator who wants no attribute on the files, e.g.
    /// when they are hard links to files outside the data root).
    Files,
}

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
}

impl FileStamp {
    pub fn of(meta: &fs::Metadata) -> Self {
        FileStamp {
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }

    pub fn of_cap(meta: &cap_std::fs::Metadata) -> Self {
        use cap_std::fs::MetadataExt as _;
        FileStamp {
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    digests: BTreeMap<String, Digest>,
}

impl Record {
    fn matches(&self, s: &FileStamp) -> bool {
        self.size == s.size && self.mtime == s.mtime && self.mtime_nsec == s.mtime_nsec
    }
}

/// Records held in memory, by user, then inode: a lookup (one per file of a listing) needs
/// no owned key, so it allocates nothing.
#[derive(Debug, Default)]
struct MemRecords {
    by_user: HashMap<String, HashMap<u64, Record>>,
    len: usize,
}

impl MemRecords {
    fn get(&self, user: &str, ino: u64) -> Option<&Record> {
        self.by_user.get(user)?.get(&ino)
    }

    fn insert(&mut self, user: &str, ino: u64, rec: Record) {
        if self.len >= MEM_CAP {
            self.by_user.clear();
            self.len = 0;
        }
        let records = match self.by_user.get_mut(user) {
            Some(records) => records,
            None => self.by_user.entry(user.to_owned()).or_default(),
        };
        if records.insert(ino, rec).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, user: &str, ino: u64) {
        if let Some(records) = self.by_user.get_mut(user) {
            if records.remove(&ino).is_some() {
                self.len -= 1;
            }
        }
    }
}

/// Hashes of record for every user.
#[derive(Debug)]
pub struct HashStore {
    root: DataRoot,
    mem: Mutex<MemRecords>,
    /// Temp names for atomic writes: a per-process random prefix and a counter (no getpid
    /// or getrandom call per record).
    tmp_prefix: u64,
    tmp_seq: AtomicU64,
    /// The file system refused the attribute once (`ENOTSUP`): records go to files from then
    /// on, without trying the attribute first.
    no_xattr: AtomicBool,
    records_in: RecordsIn,
}

impl HashStore {
    pub fn new(root: DataRoot, records_in: RecordsIn) -> Self {
        HashStore {
            root,
            mem: Mutex::new(MemRecords::default()),
            tmp_prefix: rand::random(),
            tmp_seq: AtomicU64::new(0),
            no_xattr: AtomicBool::new(records_in == RecordsIn::Files),
            records_in,
        }
    }

    fn path(&self, user: &str, ino: u64) -> PathBuf {
        self.root.hashes_dir(user).join(format!("{ino}.json"))
    }

    /// The record of this version of the file: from memory, else from where the file's
    /// record may be kept (`at`), else from the record file.
    fn load(&self, user: &str, stamp: &FileStamp, at: Option<XattrOf<'_>>) -> Option<Record> {
        if let Some(r) = self.mem.lock().unwrap().get(user, stamp.ino) {
            if r.matches(stamp) {
                return Some(r.clone());
            }
            return None;
        }
        let rec = at
            .filter(|_| self.records_in == RecordsIn::Xattr)
            .and_then(|at| at.get())
            .or_else(|| {
                let bytes = fs::read(self.path(user, stamp.ino)).ok()?;
                serde_json::from_slice::<Record>(&bytes).ok()
            })
            .filter(|r| r.matches(stamp))?;
        self.mem
            .lock()
            .unwrap()
            .insert(user, stamp.ino, rec.clone());
        Some(rec)
    }

    /// The digest in `algo` if it is on record for exactly this version of the file, which
    /// is entry `name` of the open directory `dir`. Does no hashing (this is what `ls` uses).
    pub fn known(
        &self,
        user: &str,
        dir: BorrowedFd<'_>,
        name: &str,
        stamp: &FileStamp,
        algo: HashAlgo,
    ) -> Option<Digest> {
        // In memory: the one digest, not a copy of the whole record (a listing asks this for
        // every file).
        if let Some(r) = self.mem.lock().unwrap().get(user, stamp.ino) {
            return r
                .matches(stamp)
                .then(|| r.digests.get(algo.name()).cloned())
                .flatten();
        }
        self.load(user, stamp, Some(XattrOf::Entry(dir, name)))?
            .digests
            .get(algo.name())
            .cloned()
    }

    /// Records the digests of a version just written (an upload, `file` still open):
    /// nothing on record can be about it, so nothing is read first.
    pub fn record_new(&self, user: &str, file: &fs::File, stamp: &FileStamp, digests: &[Digest]) {
        self.put(user, file, stamp, None, digests);
    }

    fn put(
        &self,
        user: &str,
        file: &fs::File,
        stamp: &FileStamp,
        rec: Option<Record>,
        digests: &[Digest],
    ) {
        let mut rec = rec.unwrap_or_else(|| Record {
            size: stamp.size,
            mtime: stamp.mtime,
            mtime_nsec: stamp.mtime_nsec,
            digests: BTreeMap::new(),
        });
        for d in digests {
            rec.digests.insert(d.algo().name().to_owned(), d.clone());
        }
        let json = serde_json::to_vec(&rec).expect("record serializes");
        if !self.set_xattr(file, &json) {
            if let Err(e) = self.store(user, stamp.ino, &json) {
                tracing::warn!(user, ino = stamp.ino, "cannot store a hash record: {e}");
            }
        }
        self.mem.lock().unwrap().insert(user, stamp.ino, rec);
    }

    /// Puts the record on the file. False if it is not there (the caller writes the record
    /// file instead).
    fn set_xattr(&self, file: &fs::File, json: &[u8]) -> bool {
        if self.no_xattr.load(Ordering::Relaxed) {
            return false;
        }
        // SAFETY: an fd we hold open, a NUL-terminated name, and a buffer of `json.len()`
        // bytes.
        let r = unsafe {
            libc::fsetxattr(
                file.as_raw_fd(),
                XATTR.as_ptr(),
                json.as_ptr().cast(),
                json.len(),
                0,
            )
        };
        if r == 0 {
            return true;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOTSUP) {
            tracing::info!(
                "the data root's file system has no user extended attributes: hash records go to files"
            );
            self.no_xattr.store(true, Ordering::Relaxed);
        }
        // Other refusals (a full file system, a read-only file) concern this file only.
        false
    }

    /// Drops the record of an inode whose file was removed or replaced (so records do not
    /// pile up for files long gone). Harmless if there is none.
    pub fn forget(&self, user: &str, ino: u64) {
        self.mem.lock().unwrap().remove(user, ino);
        let _ = fs::remove_file(self.path(user, ino));
    }

    fn store(&self, user: &str, ino: u64, json: &[u8]) -> io::Result<()> {
        let dest = self.path(user, ino);
        let tmp = self.root.tmp_dir().join(format!(
            ".hash.{:016x}.{}",
            self.tmp_prefix,
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let res = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(json)?;
            fs::rename(&tmp, &dest)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// The file's digest in `algo`: on record, or computed now from the open file (blocking;
    /// call from a blocking thread). Computing another algorithm also computes blake3 if
    /// that is not on record yet, in the same pass. The result is recorded only if the file
    /// did not change while it was read.
    pub fn get_or_compute(
        &self,
        user: &str,
        file: &fs::File,
        algo: HashAlgo,
    ) -> io::Result<(Digest, FileStamp)> {
        self.get_or_compute_stamped(user, file, FileStamp::of(&file.metadata()?), algo)
    }

    /// [`Self::get_or_compute`] for a caller that has just read the file's metadata (one
    /// statx less per download).
    pub fn get_or_compute_stamped(
        &self,
        user: &str,
        file: &fs::File,
        before: FileStamp,
        algo: HashAlgo,
    ) -> io::Result<(Digest, FileStamp)> {
        let rec = self.load(user, &before, Some(XattrOf::File(file)));
        if let Some(d) = rec.as_ref().and_then(|r| r.digests.get(algo.name())) {
            return Ok((d.clone(), before));
        }
        let mut hashers = vec![Hasher::new(algo)];
        let has_blake3 = rec
            .as_ref()
            .is_some_and(|r| r.digests.contains_key("blake3"));
        if algo != HashAlgo::Blake3 && !has_blake3 {
            hashers.push(Hasher::new(HashAlgo::Blake3));
        }
        let mut buf = vec![0u8; HASH_BUF];
        let mut off = 0u64;
        while off < before.size {
            let want = ((before.size - off) as usize).min(buf.len());
            let n = file.read_at(&mut buf[..want], off)?;
            if n == 0 {
                break;
            }
            for h in &mut hashers {
                h.update(&buf[..n]);
            }
            off += n as u64;
        }
        let digests: Vec<Digest> = hashers.into_iter().map(Hasher::finalize).collect();
        let after = FileStamp::of(&file.metadata()?);
        if after == before && off == before.size {
            self.put(user, file, &before, rec, &digests);
        }
        Ok((digests[0].clone(), before))
    }
}

/// Where a file's record attribute can be read: the open file, or an entry of an open
/// directory (`ls` has no file open).
#[derive(Clone, Copy)]
enum XattrOf<'a> {
    File(&'a fs::File),
    Entry(BorrowedFd<'a>, &'a str),
}

impl XattrOf<'_> {
    fn get(self) -> Option<Record> {
        let mut buf = [0u8; XATTR_MAX];
        let n = match self {
            // SAFETY: an fd we hold open, a NUL-terminated name, a buffer of its length.
            XattrOf::File(f) => unsafe {
                libc::fgetxattr(
                    f.as_raw_fd(),
                    XATTR.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            },
            XattrOf::Entry(dir, name) => {
                // No `getxattrat` before Linux 6.13: the entry is reached through the
                // directory's fd in /proc. `name` is one component from a listing (no `/`)
                // and the l- call does not follow a symlink there, so this stays inside
                // the directory.
                if name.contains('/') || name == ".." {
                    return None;
                }
                let path =
                    CString::new(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd())).ok()?;
                // SAFETY: NUL-terminated path and name, a buffer of its length.
                unsafe {
                    libc::lgetxattr(
                        path.as_ptr(),
                        XATTR.as_ptr(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                }
            }
        };
        let n = usize::try_from(n).ok()?;
        serde_json::from_slice(&buf[..n]).ok()
    }
}
