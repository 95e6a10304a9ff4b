//! The hash of record.
//!
//! Stored per user, one small JSON file per file: `state/hashes/<user>/<ino>.json` holding
//! the file's size and mtime (ns) when hashed and its digests by algorithm. A record is used
//! only while the file's inode, size and mtime still match, so a file changed by other means
//! is re-hashed on its next `get`/`stat algo`. An upload records the digest it was verified
//! against right after the rename (the inode survives the rename and later `mv`s). Records are
//! a cache of facts derivable from the file, so they are written atomically but not fsynced;
//! an in-memory map in front of them saves the disk read on repeated downloads.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_proto::{Digest, HashAlgo, Hasher};
use serde::{Deserialize, Serialize};

use crate::root::DataRoot;

/// Read size when hashing a file from disk.
const HASH_BUF: usize = 1 << 20;
/// In-memory records kept before the map is cleared (the disk copy stays).
const MEM_CAP: usize = 100_000;

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

/// Hashes of record for every user.
#[derive(Debug)]
pub struct HashStore {
    root: DataRoot,
    mem: Mutex<HashMap<(String, u64), Record>>,
    /// Temp names for atomic writes: a per-process random prefix and a counter (no getpid
    /// or getrandom call per record).
    tmp_prefix: u64,
    tmp_seq: AtomicU64,
}

impl HashStore {
    pub fn new(root: DataRoot) -> Self {
        HashStore {
            root,
            mem: Mutex::new(HashMap::new()),
            tmp_prefix: rand::random(),
            tmp_seq: AtomicU64::new(0),
        }
    }

    fn path(&self, user: &str, ino: u64) -> PathBuf {
        self.root.hashes_dir(user).join(format!("{ino}.json"))
    }

    fn load(&self, user: &str, stamp: &FileStamp) -> Option<Record> {
        let key = (user.to_owned(), stamp.ino);
        if let Some(r) = self.mem.lock().unwrap().get(&key) {
            if r.matches(stamp) {
                return Some(r.clone());
            }
            return None;
        }
        let bytes = fs::read(self.path(user, stamp.ino)).ok()?;
        let rec: Record = serde_json::from_slice(&bytes).ok()?;
        if !rec.matches(stamp) {
            return None;
        }
        let mut mem = self.mem.lock().unwrap();
        if mem.len() >= MEM_CAP {
            mem.clear();
        }
        mem.insert(key, rec.clone());
        Some(rec)
    }

    /// The digest in `algo` if it is on record for exactly this version of the file.
    /// Does no hashing (this is what `ls` uses).
    pub fn known(&self, user: &str, stamp: &FileStamp, algo: HashAlgo) -> Option<Digest> {
        self.load(user, stamp)?.digests.get(algo.name()).cloned()
    }

    /// Records digests for this version of the file, replacing a record of another version.
    pub fn record(&self, user: &str, stamp: &FileStamp, digests: &[Digest]) {
        let rec = self.load(user, stamp);
        self.put(user, stamp, rec, digests);
    }

    /// Records the digests of a version just written (an upload): nothing on record can be
    /// about it, so nothing is read first.
    pub fn record_new(&self, user: &str, stamp: &FileStamp, digests: &[Digest]) {
        self.put(user, stamp, None, digests);
    }

    fn put(&self, user: &str, stamp: &FileStamp, rec: Option<Record>, digests: &[Digest]) {
        let mut rec = rec.unwrap_or_else(|| Record {
            size: stamp.size,
            mtime: stamp.mtime,
            mtime_nsec: stamp.mtime_nsec,
            digests: BTreeMap::new(),
        });
        for d in digests {
            rec.digests.insert(d.algo().name().to_owned(), d.clone());
        }
        if let Err(e) = self.store(user, stamp.ino, &rec) {
            tracing::warn!(user, ino = stamp.ino, "cannot store a hash record: {e}");
        }
        let mut mem = self.mem.lock().unwrap();
        if mem.len() >= MEM_CAP {
            mem.clear();
        }
        mem.insert((user.to_owned(), stamp.ino), rec);
    }

    /// Drops the record of an inode whose file was removed or replaced (so records do not
    /// pile up for files long gone). Harmless if there is none.
    pub fn forget(&self, user: &str, ino: u64) {
        self.mem.lock().unwrap().remove(&(user.to_owned(), ino));
        let _ = fs::remove_file(self.path(user, ino));
    }

    fn store(&self, user: &str, ino: u64, rec: &Record) -> io::Result<()> {
        let dest = self.path(user, ino);
        let tmp = self.root.tmp_dir().join(format!(
            ".hash.{:016x}.{}",
            self.tmp_prefix,
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let res = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(rec).expect("record serializes"))?;
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
        let rec = self.load(user, &before);
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
            self.record(user, &before, &digests);
        }
        Ok((digests[0].clone(), before))
    }
}
