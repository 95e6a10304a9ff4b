//! Users: the users file, password hashing, and the operations behind `ferry user`.
//!
//! `users.json` holds, per user, a name, an argon2id PHC string, and the quota. It is only
//! ever replaced atomically (temp file, fsync, rename) under an exclusive `flock` of
//! `users.lock`, so concurrent `ferry user` runs do not lose each other's changes and a
//! running server never reads half a file. The server re-reads it at login whenever its inode,
//! size or mtime changed, so user changes apply without a restart.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use serde::{Deserialize, Serialize};

use crate::quota::{self, QuotaLimits, Usage};
use crate::root::DataRoot;

/// One user as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// argon2id PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
    pub password: String,
    pub quota_bytes: u64,
    pub max_files: u64,
}

impl UserRecord {
    pub fn limits(&self) -> QuotaLimits {
        QuotaLimits {
            bytes: self.quota_bytes,
            files: self.max_files,
        }
    }
}

/// The whole users file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsersFile {
    #[serde(default)]
    pub users: Vec<UserRecord>,
}

impl UsersFile {
    pub fn get(&self, name: &str) -> Option<&UserRecord> {
        self.users.iter().find(|u| u.name == name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("invalid user name {0:?}: use 1-32 of a-z 0-9 _ . - starting with a-z or _")]
    InvalidName(String),
    #[error("user {0:?} already exists")]
    Exists(String),
    #[error("no user {0:?}")]
    NoSuchUser(String),
    #[error("password must not be empty")]
    EmptyPassword,
    #[error("users file {path}: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Checks a user name: `[a-z_][a-z0-9_.-]{0,31}`.
pub fn validate_name(name: &str) -> Result<(), UserError> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b[1..].iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(UserError::InvalidName(name.to_owned()))
    }
}

/// Hashes a password into an argon2id PHC string (default parameters, random salt).
pub fn hash_password(password: &str) -> Result<String, UserError> {
    hash_password_with(password, argon2::Params::default())
}

/// Hashes with explicit argon2id parameters. Verification reads the parameters back from the
/// PHC string, so cheap parameters (for tests) and stronger ones can coexist in one file.
pub fn hash_password_with(password: &str, params: argon2::Params) -> Result<String, UserError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| UserError::Hash(e.to_string()))?;
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

/// Verifies a password against a PHC string; a malformed PHC string verifies nothing.
///
/// The argon2 memory (19 MiB with the default parameters) is reused from one verification to
/// the next: allocating it fresh cost every login ~4,900 page faults and a 19 MiB memset,
/// about a quarter of a login's CPU. One block set is kept between logins; logins running at
/// once (bounded by the server's login permits) take fresh ones. Kept resident for good, it
/// was 19 MiB of the server's RSS after a single password login (a 1 GiB TLS upload then
/// peaked at 31.9–32.8 MiB against its 32 MiB target), so the login op hands its pages back
/// to the kernel once logins have paused ([`release_spare_unless_used_since`]).
pub fn verify_password(password: &str, phc: &str) -> bool {
    /// 64 MiB of 1 KiB blocks.
    const SPARE_MAX_BLOCKS: usize = 64 * 1024;
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Ok(params), Some(expected)) = (
        argon2::Algorithm::try_from(parsed.algorithm),
        argon2::Params::try_from(&parsed),
        parsed.hash,
    ) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Some(salt) = parsed.salt else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut blocks = std::mem::take(&mut SPARE.lock().unwrap().blocks);
    blocks.resize(params.block_count(), argon2::Block::default());
    let mut out = vec![0u8; expected.len()];
    let hashed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password.as_bytes(),
        salt,
        &mut out,
        &mut blocks,
    );
    // A huge set (a hash made with unusual parameters) is not worth keeping around.
    if blocks.capacity() <= SPARE_MAX_BLOCKS {
        let mut spare = SPARE.lock().unwrap();
        spare.blocks = blocks;
        spare.uses += 1;
    }
    // `Output`'s equality is constant-time.
    hashed.is_ok() && argon2::password_hash::Output::new(&out).is_ok_and(|o| o == expected)
}

/// The argon2 block set kept between verifications.
struct Spare {
    blocks: Vec<argon2::Block>,
    /// Verifications that put it back; tells [`release_spare_unless_used_since`] whether it
    /// was used since.
    uses: u64,
}

static SPARE: Mutex<Spare> = Mutex::new(Spare {
    blocks: Vec::new(),
    uses: 0,
});

/// How many verifications have used the spare block set so far.
pub fn spare_uses() -> u64 {
    SPARE.lock().unwrap().uses
}

/// Hands the spare block set's pages back to the kernel, unless a verification has used it
/// since [`spare_uses`] said `uses`: a burst of logins keeps it resident (a fresh set costs
/// page faults), a server between logins does not keep 19 MiB for nothing. Blocking (an
/// madvise of up to 64 MiB).
pub fn release_spare_unless_used_since(uses: u64) {
    let mut spare = SPARE.lock().unwrap();
    if spare.uses == uses {
        release_pages(&mut spare.blocks);
    }
}

/// Gives the whole pages under `blocks` back to the kernel (`MADV_DONTNEED`): they read as
/// zeros when next touched, which is fine for argon2 memory (every block is written before
/// it is read), and they stop counting in the process's RSS until then.
fn release_pages(blocks: &mut [argon2::Block]) {
    const PAGE: usize = 4096;
    let start = blocks.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(blocks);
    let (first, last) = (start.next_multiple_of(PAGE), end / PAGE * PAGE);
    if last > first {
        // SAFETY: [first, last) lies inside `blocks`, which we borrow mutably; MADV_DONTNEED on
        // private anonymous memory only replaces its contents with zeros, and `Block` is
        // plain data for which all zeros is a valid value.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_DONTNEED,
            )
        };
    }
}

/// Spends about as long as a real verification, so an unknown user name answers no faster
/// than a wrong password.
pub fn verify_dummy(password: &str) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let phc = DUMMY.get_or_init(|| hash_password("ferry-dummy").unwrap_or_default());
    let _ = verify_password(password, phc);
}

/// Reads the users file; a missing file is an empty one.
pub fn load(root: &DataRoot) -> Result<UsersFile, UserError> {
    let path = root.users_file();
    match fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|source| UserError::Corrupt { path, source })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(UsersFile::default()),
        Err(e) => Err(e.into()),
    }
}

/// Runs `f` on the users file under the exclusive lock and writes the result atomically.
fn modify<T>(
    root: &DataRoot,
    f: impl FnOnce(&mut UsersFile) -> Result<T, UserError>,
) -> Result<T, UserError> {
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(root.users_lock())?;
    // SAFETY: flock on an fd we own; the lock is released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    let mut file = load(root)?;
    let out = f(&mut file)?;
    let mut json = serde_json::to_vec_pretty(&file).expect("users file serializes");
    json.push(b'\n');
    root.write_atomic(&root.users_file(), &json)?;
    drop(lock);
    Ok(out)
}

/// `ferry user add`.
pub fn add(
    root: &DataRoot,
    name: &str,
    password: &str,
    quota_bytes: u64,
    max_files: u64,
) -> Result<(), UserError> {
    validate_name(name)?;
    if password.is_empty() {
        return Err(UserError::EmptyPassword);
    }
    add_hashed(root, name, hash_password(password)?, quota_bytes, max_files)
}

/// `add` with a ready PHC string (e.g. one made with cheap parameters for tests).
pub fn add_hashed(
    root: &DataRoot,
    name: &str,
    phc: String,
    quota_bytes: u64,
    max_files: u64,
) -> Result<(), UserError> {
    validate_name(name)?;
    modify(root, |f| {
        if f.get(name).is_some() {
            return Err(UserError::Exists(name.to_owned()));
        }
        f.users.push(UserRecord {
            name: name.to_owned(),
            password: phc,
            quota_bytes,
            max_files,
        });
        f.users.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(())
    })?;
    root.ensure_user_dirs(name)?;
    Ok(())
}

/// `ferry user passwd`.
pub fn passwd(root: &DataRoot, name: &str, password: &str) -> Result<(), UserError> {
    if password.is_empty() {
        return Err(UserError::EmptyPassword);
    }
    let phc = hash_password(password)?;
    modify(root, |f| {
        let u = f
            .users
            .iter_mut()
            .find(|u| u.name == name)
            .ok_or_else(|| UserError::NoSuchUser(name.to_owned()))?;
        u.password = phc;
        Ok(())
    })
}

/// `ferry user del`; with `purge`, the home, partials and hash records go too.
pub fn del(root: &DataRoot, name: &str, purge: bool) -> Result<(), UserError> {
    validate_name(name)?;
    modify(root, |f| {
        let before = f.users.len();
        f.users.retain(|u| u.name != name);
        if f.users.len() == before {
            return Err(UserError::NoSuchUser(name.to_owned()));
        }
        Ok(())
    })?;
    if purge {
        for dir in [
            root.home_dir(name),
            root.partials_dir(name),
            root.hashes_dir(name),
        ] {
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// `ferry user list`: every user with its usage measured from disk.
pub fn list(root: &DataRoot) -> Result<Vec<(UserRecord, Usage)>, UserError> {
    let file = load(root)?;
    let mut out = Vec::new();
    for u in file.users {
        let usage = quota::measure(&root.home_dir(&u.name), &root.partials_dir(&u.name))?;
        out.push((u, usage));
    }
    Ok(out)
}

/// Inode, size, mtime (s, ns): changes whenever the users file is replaced or edited.
type FileId = (u64, u64, i64, i64);

/// The server's view of the users file: cached, re-read when the file changes.
#[derive(Debug)]
pub struct UserStore {
    root: DataRoot,
    cache: Mutex<(Option<FileId>, Arc<UsersFile>)>,
}

impl UserStore {
    pub fn new(root: DataRoot) -> Self {
        UserStore {
            root,
            cache: Mutex::new((None, Arc::new(UsersFile::default()))),
        }
    }

    /// The current users file (re-read if its inode, size or mtime changed). If it cannot
    /// be read, the last good copy is used and the problem logged.
    pub fn current(&self) -> Arc<UsersFile> {
        let stamp = fs::metadata(self.root.users_file())
            .ok()
            .map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec()));
        let mut cache = self.cache.lock().unwrap();
        if cache.0 != stamp || stamp.is_none() {
            match load(&self.root) {
                Ok(f) => *cache = (stamp, Arc::new(f)),
                Err(e) => tracing::error!("cannot read the users file: {e}"),
            }
        }
        Arc::clone(&cache.1)
    }

    pub fn get(&self, name: &str) -> Option<UserRecord> {
        self.current().get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spare block set goes back to the kernel between verifications (its pages read as
    /// zeros after); verifications after that must still agree, whatever ran before.
    #[test]
    fn verifications_in_a_row_reuse_released_memory_correctly() {
        let phc = hash_password("right horse").unwrap();
        let other = hash_password("battery staple").unwrap();
        for _ in 0..3 {
            assert!(verify_password("right horse", &phc));
            release_spare_unless_used_since(spare_uses());
            assert!(!verify_password("wrong horse", &phc));
            assert!(verify_password("battery staple", &other));
            release_spare_unless_used_since(spare_uses());
        }
        // 300 KiB of non-zero blocks: all but the partly covered pages at the two ends read
        // as zeros once released.
        let mut blocks = vec![argon2::Block::default(); 300];
        for b in &mut blocks {
            b.as_mut().fill(7);
        }
        release_pages(&mut blocks);
        let zeroed = blocks
            .iter()
            .filter(|b| b.as_ref().iter().all(|&w| w == 0))
            .count();
        assert!(zeroed >= 300 - 8, "{zeroed} of 300 blocks released");
    }

    #[test]
    fn verification_agrees_with_the_argon2_crate() {
        use argon2::password_hash::PasswordVerifier;
        let cheap = argon2::Params::new(64, 1, 1, None).unwrap();
        let odd = argon2::Params::new(256, 3, 2, Some(48)).unwrap();
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        for (alg, ver, params) in [
            (
                argon2::Algorithm::Argon2id,
                argon2::Version::V0x13,
                argon2::Params::default(),
            ),
            (
                argon2::Algorithm::Argon2id,
                argon2::Version::V0x13,
                cheap.clone(),
            ),
            (
                argon2::Algorithm::Argon2i,
                argon2::Version::V0x13,
                odd.clone(),
            ),
            (argon2::Algorithm::Argon2d, argon2::Version::V0x10, cheap),
            (argon2::Algorithm::Argon2id, argon2::Version::V0x10, odd),
        ] {
            let phc = Argon2::new(alg, ver, params)
                .hash_password(b"s3cret", &salt)
                .unwrap()
                .to_string();
            // Twice each: the second run reuses the first one's memory.
            for _ in 0..2 {
                assert!(verify_password("s3cret", &phc), "{phc}");
                assert!(!verify_password("s3creT", &phc), "{phc}");
                assert!(!verify_password("", &phc), "{phc}");
            }
            let parsed = PasswordHash::new(&phc).unwrap();
            assert!(
                Argon2::default()
                    .verify_password(b"s3cret", &parsed)
                    .is_ok()
            );
        }
        for bad in [
            "",
            "$argon2id$",
            "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ",
            "$scrypt$x",
        ] {
            assert!(!verify_password("s3cret", bad), "{bad}");
        }
    }

    #[test]
    fn names() {
        for ok in ["alice", "_x", "a.b-c_9", &"a".repeat(32)] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "Alice",
            "9a",
            ".a",
            "-a",
            "a/b",
            "a b",
            "..",
            &"a".repeat(33),
            "é",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn add_passwd_del_list() {
        let t = tempfile::tempdir().unwrap();
        let (root, _) = DataRoot::open_or_init(t.path().join("r")).unwrap();
        add(&root, "alice", "pw1", 1000, 10).unwrap();
        assert!(matches!(
            add(&root, "alice", "x", 1, 1),
            Err(UserError::Exists(_))
        ));
        let f = load(&root).unwrap();
        assert!(f.get("alice").unwrap().password.starts_with("$argon2id$"));
        assert!(verify_password("pw1", &f.get("alice").unwrap().password));
        passwd(&root, "alice", "pw2").unwrap();
        let f = load(&root).unwrap();
        assert!(verify_password("pw2", &f.get("alice").unwrap().password));
        assert!(!verify_password("pw1", &f.get("alice").unwrap().password));
        fs::write(root.home_dir("alice").join("f"), b"12345").unwrap();
        let l = list(&root).unwrap();
        assert_eq!(l[0].1, Usage { bytes: 5, files: 1 });
        del(&root, "alice", true).unwrap();
        assert!(!root.home_dir("alice").exists());
        assert!(matches!(
            del(&root, "alice", false),
            Err(UserError::NoSuchUser(_))
        ));
    }
}
