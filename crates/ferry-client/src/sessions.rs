//! The session-token cache: one token per (server address, user), kept in a file beside
//! `known_hosts` so that a command run after a password login logs in with the token instead,
//! without FERRY_PASSWORD or a prompt, like `ssh` with ControlPersist or `gh auth`.
//!
//! A token is a bearer secret: whoever reads the file can log in as that user until the token
//! expires. So the file is only ever written whole, as a new file created with mode 0600 and
//! renamed over the old one (never readable by others, never half-written), and an entry is
//! tied to the server's certificate fingerprint on TLS: a token is only sent to a server that
//! presents the certificate it was issued over, never to another one at the same address.
//!
//! A file that cannot be read or parsed is treated as empty (and replaced by the next write):
//! the worst a corrupt cache costs is one password login.
//!
//! Each change reads, edits and replaces the file under a lock (`flock` on `sessions.lock`
//! beside it), so commands run at once keep each other's tokens.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_proto::Digest;
use serde::{Deserialize, Serialize};

/// One cached token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedSession {
    /// The server address as the user gave it (`host:port`).
    pub server: String,
    pub user: String,
    /// The certificate fingerprint of the server that issued the token; none on plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    pub token: String,
    /// When the token expires if unused, in Unix seconds (the server may end it sooner).
    pub expires: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SessionsFile {
    #[serde(default)]
    sessions: Vec<CachedSession>,
}

/// The cache file.
#[derive(Debug, Clone)]
pub struct SessionCache {
    path: PathBuf,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl SessionCache {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SessionCache { path: path.into() }
    }

    /// The cache at the default place (`$FERRY_CONFIG_DIR/sessions`, …).
    pub fn default_location() -> Self {
        Self::new(crate::tls::default_sessions())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load(&self) -> SessionsFile {
        fs::read(&self.path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Every unexpired entry.
    pub fn entries(&self, now: SystemTime) -> Vec<CachedSession> {
        let now = unix_secs(now);
        let mut all = self.load().sessions;
        all.retain(|s| s.expires > now);
        all
    }

    /// The unexpired entry for `server` and `user` issued over a server with this
    /// certificate fingerprint (`None`: plain TCP).
    pub fn get(
        &self,
        server: &str,
        user: &str,
        fingerprint: Option<&Digest>,
        now: SystemTime,
    ) -> Option<CachedSession> {
        let fingerprint = fingerprint.map(|d| d.to_string());
        let now = unix_secs(now);
        self.load().sessions.into_iter().find(|s| {
            s.server == server && s.user == user && s.fingerprint == fingerprint && s.expires > now
        })
    }

    /// Whether any entry (whatever its certificate or expiry) is kept for `server` and `user`.
    pub fn contains(&self, server: &str, user: &str) -> bool {
        self.load()
            .sessions
            .iter()
            .any(|s| s.server == server && s.user == user)
    }

    /// Records a token for `server` and `user`, replacing any earlier one for them, and drops
    /// expired entries on the way.
    pub fn put(
        &self,
        server: &str,
        user: &str,
        fingerprint: Option<&Digest>,
        token: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> io::Result<()> {
        let _lock = lock_beside(&self.path)?;
        let mut file = self.load();
        let now_s = unix_secs(now);
        file.sessions
            .retain(|s| s.expires > now_s && !(s.server == server && s.user == user));
        file.sessions.push(CachedSession {
            server: server.to_owned(),
            user: user.to_owned(),
            fingerprint: fingerprint.map(|d| d.to_string()),
            token: token.to_owned(),
            expires: unix_secs(now + ttl),
        });
        self.store(&file)
    }

    /// Forgets the token for `server` and `user`; whether there was one. A missing or
    /// unreadable file has none.
    pub fn remove(&self, server: &str, user: &str) -> io::Result<bool> {
        if !self.path.exists() {
            return Ok(false);
        }
        let _lock = lock_beside(&self.path)?;
        let mut file = self.load();
        let before = file.sessions.len();
        file.sessions
            .retain(|s| !(s.server == server && s.user == user));
        if file.sessions.len() == before {
            return Ok(false);
        }
        self.store(&file)?;
        Ok(true)
    }

    /// Removes the whole file; whether it existed.
    pub fn clear(&self) -> io::Result<bool> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn store(&self, file: &SessionsFile) -> io::Result<()> {
        let mut json = serde_json::to_vec_pretty(file).expect("sessions serialize");
        json.push(b'\n');
        write_private(&self.path, &json)
    }
}

/// An exclusive `flock` on `<path>.lock` (made 0600, in a 0700 directory, if missing),
/// released when the returned file is closed. Held around a read-modify-write of a file that
/// [`write_private`] replaces, so concurrent commands (or connections of one) each see the
/// others' changes. Every open of the lock file holds its own lock, so this orders threads of
/// one process as well as separate processes.
pub(crate) fn lock_beside(path: &Path) -> io::Result<fs::File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(name)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
    Ok(file)
}

/// Writes a whole file only its owner may read: a fresh 0600 temp file beside it (in a 0700
/// directory, made if missing), synced, renamed over it. Never half-written, never readable
/// by others; of concurrent writers, the last rename wins.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let name = path
        .file_name()
        .map_or("file".into(), |n| n.to_string_lossy().into_owned());
    let nonce: u64 = {
        // Unique enough among concurrent writers: pid and time; create_new catches the rest.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ u64::from(std::process::id()).rotate_left(32)
    };
    let tmp = dir.join(format!(".{name}.{nonce:016x}.tmp"));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use ferry_proto::HashAlgo;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn put_get_replace_remove() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SessionCache::new(dir.path().join("sub/sessions"));
        let now = SystemTime::now();
        assert_eq!(cache.get("h:1", "a", None, now), None);
        cache.put("h:1", "a", None, "t1", HOUR, now).unwrap();
        cache.put("h:1", "b", None, "t2", HOUR, now).unwrap();
        cache.put("h:2", "a", None, "t3", HOUR, now).unwrap();
        assert_eq!(cache.get("h:1", "a", None, now).unwrap().token, "t1");
        assert_eq!(cache.get("h:1", "b", None, now).unwrap().token, "t2");
        assert_eq!(cache.get("h:2", "a", None, now).unwrap().token, "t3");
        cache.put("h:1", "a", None, "t4", HOUR, now).unwrap();
        assert_eq!(cache.get("h:1", "a", None, now).unwrap().token, "t4");
        let mode = fs::metadata(cache.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let dmode = fs::metadata(dir.path().join("sub"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700, "{dmode:o}");
        assert!(cache.contains("h:1", "a"));
        assert!(cache.remove("h:1", "a").unwrap());
        assert!(!cache.remove("h:1", "a").unwrap());
        assert!(!cache.contains("h:1", "a"));
        assert_eq!(cache.get("h:1", "a", None, now), None);
        assert_eq!(cache.get("h:1", "b", None, now).unwrap().token, "t2");
        // Nothing but the file and its (empty) lock file is left in the directory: no temp
        // files.
        let mut names: Vec<_> = fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["sessions", "sessions.lock"]);
        assert!(cache.clear().unwrap());
        assert!(!cache.clear().unwrap());
    }

    #[test]
    fn entries_are_tied_to_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SessionCache::new(dir.path().join("sessions"));
        let now = SystemTime::now();
        let fp = Digest::of(HashAlgo::Sha256, b"cert one");
        let other = Digest::of(HashAlgo::Sha256, b"cert two");
        cache.put("h:1", "a", Some(&fp), "t", HOUR, now).unwrap();
        assert!(cache.get("h:1", "a", Some(&fp), now).is_some());
        assert_eq!(cache.get("h:1", "a", Some(&other), now), None);
        assert_eq!(cache.get("h:1", "a", None, now), None, "not over plain TCP");
    }

    #[test]
    fn expired_entries_are_skipped_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SessionCache::new(dir.path().join("sessions"));
        let now = SystemTime::now();
        cache.put("h:1", "a", None, "old", HOUR, now).unwrap();
        let later = now + 2 * HOUR;
        assert_eq!(cache.get("h:1", "a", None, later), None);
        cache.put("h:1", "b", None, "new", HOUR, later).unwrap();
        let text = fs::read_to_string(cache.path()).unwrap();
        assert!(!text.contains("\"old\""), "{text}");
    }

    #[test]
    fn concurrent_puts_keep_every_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg/sessions");
        let now = SystemTime::now();
        std::thread::scope(|s| {
            for t in 0..8 {
                let cache = SessionCache::new(&path);
                s.spawn(move || {
                    for i in 0..10 {
                        let user = format!("u{t}-{i}");
                        cache.put("h:1", &user, None, "tok", HOUR, now).unwrap();
                    }
                });
            }
        });
        let cache = SessionCache::new(&path);
        for t in 0..8 {
            for i in 0..10 {
                assert!(cache.contains("h:1", &format!("u{t}-{i}")), "u{t}-{i}");
            }
        }
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("cfg/sessions.lock")), 0o600);
        assert_eq!(mode(&dir.path().join("cfg")), 0o700);
    }

    #[test]
    fn a_corrupt_file_is_ignored_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions");
        let cache = SessionCache::new(&path);
        let now = SystemTime::now();
        for junk in [
            &b""[..],
            b"not json",
            b"{\"sessions\":[{\"server\":1}]}",
            b"[1,2,3]",
            &[0xff, 0xfe, 0x00][..],
        ] {
            fs::write(&path, junk).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            assert_eq!(cache.get("h:1", "a", None, now), None);
            assert!(!cache.remove("h:1", "a").unwrap());
            cache.put("h:1", "a", None, "t", HOUR, now).unwrap();
            assert_eq!(cache.get("h:1", "a", None, now).unwrap().token, "t");
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "rewritten private: {mode:o}");
        }
    }
}
