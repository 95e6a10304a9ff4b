//! Hashes of local files this client has uploaded, kept so that uploading an unchanged large
//! file again reads it once (to send it) instead of twice (to hash it as well): the server's
//! hash of record, on the client's side, and what git's index does for its object ids.
//!
//! An entry names a file by device and inode and is trusted only while the file's size,
//! mtime and ctime are what they were when it was hashed. Any write, truncation, rename or
//! `touch` moves ctime, which no user can set back. Two cases would still let a change go
//! unseen, and neither is kept:
//! - a file changed within the same clock tick as the stat that hashing relies on (entries
//!   are kept only for files whose ctime was at least [`SETTLED`] old when the upload began,
//!   as git treats "racily clean" index entries);
//! - a file that changed while it was being read (its stat after the upload must equal the
//!   one before).
//!
//! Only hashes the server agreed with are kept (the reply to the upload carries the server's
//! own hash of what it received). A stale or forged entry cannot get wrong bytes accepted:
//! the server hashes what arrives and refuses a mismatch with `checksum_mismatch`; the client
//! then drops the entry and uploads the file once more, hashing it as it goes.
//!
//! The file is written whole, as the sessions file is (a new 0600 file renamed over the old
//! one), so it is never half-written; one that cannot be read or parsed counts as empty.
//! Saving merges: under a lock (`flock` on `hashes.lock` beside it) it reads what other
//! commands, or other connections of this one (`--connections`), saved since and applies
//! only this cache's own changes to that, so concurrent uploads keep each other's entries.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_proto::Digest;
use serde::{Deserialize, Serialize};

/// How old a file's last change must be, when its upload begins, for its hash to be kept.
pub const SETTLED: Duration = Duration::from_secs(2);

/// Entries kept at most (the most recently used); about 200 bytes each on disk.
const MAX_ENTRIES: usize = 10_000;

/// What identifies one version of a local file: where it is, and its stat stamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileVersion {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileVersion {
    pub fn of(meta: &fs::Metadata) -> Self {
        FileVersion {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the file had not changed for [`SETTLED`] at `began`.
    fn settled_at(&self, began: SystemTime) -> bool {
        let Ok(began) = began.duration_since(UNIX_EPOCH) else {
            return false;
        };
        let ns = |(secs, nsec): (i64, i64)| i128::from(secs) * 1_000_000_000 + i128::from(nsec);
        let last_change = ns(self.ctime).max(ns(self.mtime));
        last_change + SETTLED.as_nanos() as i128 <= began.as_nanos() as i128
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    version: FileVersion,
    hash: Digest,
    /// When the entry was last recorded or used, in Unix seconds (the oldest go first).
    used: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    #[serde(default)]
    files: Vec<Entry>,
}

/// The cache, loaded into memory for one command; [`HashCache::save`] writes it back.
#[derive(Debug)]
pub struct HashCache {
    path: PathBuf,
    entries: HashMap<(u64, u64), Entry>,
    /// What this cache changed since it was loaded or saved: an entry recorded or used, or
    /// `None` for one forgotten. [`HashCache::save`] applies these to what is on disk then.
    changes: HashMap<(u64, u64), Option<Entry>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl HashCache {
    /// Reads the cache at `path`; a missing or unreadable file is an empty cache.
    pub fn load(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        HashCache {
            entries: read_entries(&path),
            path,
            changes: HashMap::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The hash of this version of the file, if one was kept.
    pub fn get(&mut self, version: &FileVersion) -> Option<Digest> {
        let entry = self.entries.get_mut(&(version.dev, version.ino))?;
        if entry.version != *version {
            return None;
        }
        entry.used = now_secs();
        let (key, entry) = ((version.dev, version.ino), entry.clone());
        let hash = entry.hash.clone();
        self.changes.insert(key, Some(entry));
        Some(hash)
    }

    /// Keeps `hash` for the file if it is the same version `before` (stat when its upload
    /// began, at `began`) and `after` (stat once the server agreed on the hash), and it had
    /// settled by then. Returns whether it was kept.
    pub fn record(
        &mut self,
        before: &FileVersion,
        after: &FileVersion,
        began: SystemTime,
        hash: Digest,
    ) -> bool {
        if before != after || !before.settled_at(began) {
            return false;
        }
        let key = (before.dev, before.ino);
        if self
            .entries
            .get(&key)
            .is_some_and(|e| e.version == *before && e.hash == hash)
        {
            return true;
        }
        let entry = Entry {
            version: *before,
            hash,
            used: now_secs(),
        };
        self.entries.insert(key, entry.clone());
        self.changes.insert(key, Some(entry));
        true
    }

    /// Drops what is kept for this file (its hash turned out wrong).
    pub fn forget(&mut self, version: &FileVersion) {
        let key = (version.dev, version.ino);
        if self.entries.remove(&key).is_some() {
            self.changes.insert(key, None);
        }
    }

    /// Writes the cache back if anything changed, keeping the [`MAX_ENTRIES`] most recently
    /// used entries.
    pub fn save(&mut self) -> io::Result<()> {
        if self.changes.is_empty() {
            return Ok(());
        }
        // Held until the new file is in place: a command saving at the same time reads it
        // after, not before.
        let _lock = crate::sessions::lock_beside(&self.path)?;
        let mut merged = read_entries(&self.path);
        for (key, change) in self.changes.drain() {
            match change {
                Some(entry) => merged.insert(key, entry),
                None => merged.remove(&key),
            };
        }
        let mut files: Vec<Entry> = merged.values().cloned().collect();
        files.sort_by_key(|e| std::cmp::Reverse(e.used));
        files.truncate(MAX_ENTRIES);
        let bytes = serde_json::to_vec(&CacheFile { files }).map_err(io::Error::other)?;
        crate::sessions::write_private(&self.path, &bytes)?;
        self.entries = merged;
        Ok(())
    }
}

/// The entries of the cache file at `path`; none if it is missing or unreadable.
fn read_entries(path: &Path) -> HashMap<(u64, u64), Entry> {
    let file: CacheFile = fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    file.files
        .into_iter()
        .map(|e| ((e.version.dev, e.version.ino), e))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::HashAlgo;

    fn settled_file(dir: &Path, name: &str, body: &[u8]) -> (PathBuf, FileVersion, SystemTime) {
        let path = dir.join(name);
        fs::write(&path, body).unwrap();
        let version = FileVersion::of(&fs::metadata(&path).unwrap());
        // As if the upload began a while after the file was written.
        let began = SystemTime::now() + SETTLED + Duration::from_millis(10);
        (path, version, began)
    }

    #[test]
    fn a_kept_hash_is_found_again_for_the_same_version_only() {
        let dir = tempfile::tempdir().unwrap();
        let (path, v, began) = settled_file(dir.path(), "a", b"first");
        let hash = Digest::of(HashAlgo::Blake3, b"first");
        let mut cache = HashCache::load(dir.path().join("hashes"));
        assert!(cache.record(&v, &v, began, hash.clone()));
        cache.save().unwrap();

        let mut again = HashCache::load(dir.path().join("hashes"));
        assert_eq!(again.get(&v), Some(hash));

        // Rewritten with the same size: ctime (and mtime) move, so the entry no longer fits.
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&path, b"fir5t").unwrap();
        let changed = FileVersion::of(&fs::metadata(&path).unwrap());
        assert_ne!(changed, v);
        assert_eq!(again.get(&changed), None);
    }

    #[test]
    fn racy_or_changing_files_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (_, v, _) = settled_file(dir.path(), "a", b"body");
        let hash = Digest::of(HashAlgo::Blake3, b"body");
        let mut cache = HashCache::load(dir.path().join("hashes"));
        // Written just now: its upload began less than SETTLED after the last change.
        assert!(!cache.record(&v, &v, SystemTime::now(), hash.clone()));
        // Changed between the stat before and the stat after.
        let mut later = v;
        later.ctime.1 += 1;
        let began = SystemTime::now() + SETTLED * 2;
        assert!(!cache.record(&v, &later, began, hash.clone()));
        assert_eq!(cache.get(&v), None);
        cache.save().unwrap();
        assert!(!dir.path().join("hashes").exists(), "nothing to write");
    }

    #[test]
    fn caches_saved_one_after_another_keep_each_others_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hashes");
        let (_, a, began) = settled_file(dir.path(), "a", b"aaa");
        let (_, b, _) = settled_file(dir.path(), "b", b"bbb");
        let (_, c, _) = settled_file(dir.path(), "c", b"ccc");
        let hash = |body: &[u8]| Digest::of(HashAlgo::Blake3, body);
        let mut first = HashCache::load(&path);
        assert!(first.record(&c, &c, began, hash(b"ccc")));
        first.save().unwrap();
        // Two commands (or two connections of one) load the same cache, each uploads a file,
        // and one forgets what the first kept.
        let mut one = HashCache::load(&path);
        let mut two = HashCache::load(&path);
        assert!(one.record(&a, &a, began, hash(b"aaa")));
        assert!(two.record(&b, &b, began, hash(b"bbb")));
        two.forget(&c);
        one.save().unwrap();
        two.save().unwrap();
        let mut after = HashCache::load(&path);
        assert_eq!(after.get(&a), Some(hash(b"aaa")));
        assert_eq!(after.get(&b), Some(hash(b"bbb")));
        assert_eq!(after.get(&c), None);
        // The last to save now holds what the other saved before it.
        assert_eq!(two.get(&a), Some(hash(b"aaa")));
    }

    #[test]
    fn a_forgotten_or_unreadable_cache_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (_, v, began) = settled_file(dir.path(), "a", b"body");
        let path = dir.path().join("hashes");
        let mut cache = HashCache::load(&path);
        assert!(cache.record(&v, &v, began, Digest::of(HashAlgo::Blake3, b"body")));
        cache.forget(&v);
        assert_eq!(cache.get(&v), None);

        fs::write(&path, b"{not json").unwrap();
        let mut garbled = HashCache::load(&path);
        assert_eq!(garbled.get(&v), None);
        assert!(garbled.record(&v, &v, began, Digest::of(HashAlgo::Blake3, b"body")));
        garbled.save().unwrap();
        assert!(HashCache::load(&path).get(&v).is_some());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
