//! Size parsing and the per-user usage accountant.
//!
//! Usage is bytes and regular files in the home plus bytes held in the user's partial
//! uploads. It is computed once by walking both (first login or first `ferry user list`), then
//! kept in memory and adjusted by every operation. An upload reserves its bytes and its file
//! *before* the first body byte arrives, under the user's lock, so concurrent uploads cannot
//! together overshoot the quota.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes and files in use (or reserved).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
}

/// A user's limits, as read from the users file at the time of the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimits {
    pub bytes: u64,
    pub files: u64,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("quota exceeded: {used} bytes used + {want} requested > {limit} allowed")]
    Bytes { used: u64, want: u64, limit: u64 },
    #[error("file limit reached: {used} files, at most {limit} allowed")]
    Files { used: u64, limit: u64 },
}

/// One user's live usage.
#[derive(Debug, Default)]
pub struct UserUsage {
    usage: Mutex<Usage>,
    /// Keeps the home's tree within the depth its usage walks see: held shared while `mkdir`
    /// makes directories, alone while `mv` checks how tall a directory is and moves it, so
    /// that no directory grows under the check (see [`crate::home::MAX_DIR_DEPTH`]).
    pub shape: std::sync::RwLock<()>,
}

impl UserUsage {
    pub fn new(initial: Usage) -> Self {
        UserUsage {
            usage: Mutex::new(initial),
            shape: std::sync::RwLock::new(()),
        }
    }

    pub fn get(&self) -> Usage {
        *self.usage.lock().unwrap()
    }

    /// Reserves `bytes` and `files` if they fit under `limits`, atomically with respect to
    /// every other reservation of this user.
    pub fn reserve(
        self: &Arc<Self>,
        bytes: u64,
        files: u64,
        limits: QuotaLimits,
    ) -> Result<Reservation, QuotaError> {
        let mut u = self.usage.lock().unwrap();
        if u.bytes.saturating_add(bytes) > limits.bytes {
            return Err(QuotaError::Bytes {
                used: u.bytes,
                want: bytes,
                limit: limits.bytes,
            });
        }
        if u.files.saturating_add(files) > limits.files {
            return Err(QuotaError::Files {
                used: u.files,
                limit: limits.files,
            });
        }
        u.bytes += bytes;
        u.files += files;
        Ok(Reservation {
            owner: Arc::clone(self),
            bytes,
            files,
        })
    }

    /// Adds (or with negative values removes) usage that needs no check: bytes already on
    /// disk, releases.
    pub fn adjust(&self, bytes: i64, files: i64) {
        let mut u = self.usage.lock().unwrap();
        u.bytes = u.bytes.saturating_add_signed(bytes);
        u.files = u.files.saturating_add_signed(files);
    }
}

/// Reserved usage, released on drop unless [`Reservation::commit`]ted.
#[derive(Debug)]
pub struct Reservation {
    owner: Arc<UserUsage>,
    bytes: u64,
    files: u64,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    pub fn files(&self) -> u64 {
        self.files
    }
    /// The reserved usage is now real (the file is in place): keep it counted.
    pub fn commit(mut self) {
        self.bytes = 0;
        self.files = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes != 0 || self.files != 0 {
            self.owner
                .adjust(-(self.bytes as i64), -(self.files as i64));
        }
    }
}

/// How long a user's measured usage is kept after their last login while no session uses
/// it. A login within this reuses it instead of walking the home again (a client that
/// connects once per command would otherwise pay a walk of every file per command); a login
/// after a longer absence measures the disk again, picking up changes made by hand.
pub const REMEASURE_AFTER: Duration = Duration::from_secs(60);

/// Every user's [`UserUsage`], created on first need.
#[derive(Debug, Default)]
pub struct QuotaBook {
    users: Mutex<HashMap<String, (Arc<UserUsage>, Instant)>>,
}

impl QuotaBook {
    pub fn get(&self, user: &str) -> Option<Arc<UserUsage>> {
        self.users.lock().unwrap().get(user).map(|(u, _)| u.clone())
    }

    /// The user's usage, computing it with `init` if this is the first need. If two callers
    /// race, the first insertion wins and both get it.
    pub fn get_or_insert(&self, user: &str, initial: Usage) -> Arc<UserUsage> {
        self.users
            .lock()
            .unwrap()
            .entry(user.to_owned())
            .or_insert_with(|| (Arc::new(UserUsage::new(initial)), Instant::now()))
            .0
            .clone()
    }

    /// At a login: drops the user's accountant if no session holds it and the previous login
    /// was longer than `max_age` ago, so the next login measures the disk again (files placed
    /// or removed by hand, `ferry user del --purge` and re-add); otherwise marks this login.
    pub fn forget_if_stale(&self, user: &str, max_age: Duration) {
        let mut users = self.users.lock().unwrap();
        let Some((usage, seen)) = users.get_mut(user) else {
            return;
        };
        if Arc::strong_count(usage) == 1 && seen.elapsed() >= max_age {
            users.remove(user);
        } else {
            *seen = Instant::now();
        }
    }
}

/// Directory levels the walkers list (the top one included): every directory as deep as
/// ferry lets one be made ([`crate::home::MAX_DIR_DEPTH`]). Walks are iterative (no recursion
/// to overflow a stack) and fd-relative (no path to outgrow PATH_MAX), holding one open handle
/// per level, so this also bounds the file descriptors one walk uses.
pub const MAX_WALK_DEPTH: usize = crate::home::MAX_DIR_DEPTH + 1;

/// What [`walk_dir`] found.
#[derive(Debug, Default)]
pub struct Walk {
    pub usage: Usage,
    /// Inodes of the regular files with a single link (when asked for).
    pub inodes: Vec<u64>,
    /// Some directory lay deeper than [`MAX_WALK_DEPTH`] and was not entered.
    pub too_deep: bool,
}

/// Counts the regular files below `dir` through capability handles (symlinks are never
/// followed), iteratively and at most [`MAX_WALK_DEPTH`] levels down.
/// An entry listed a moment ago that is gone, or is no longer a directory (replaced by a
/// file or a symlink, which the walk does not follow), was changed by someone else while we
/// walked: it is skipped, not an error. (A login whose home was being rearranged failed with
/// `internal` because of this; found by the confinement test's symlink flipper.)
fn changed_under_us(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP))
        // cap-std's own refusal of a symlink that leads out of the home (no OS error): the
        // directory was listed, then replaced by such a link before it was opened.
        || (e.kind() == io::ErrorKind::PermissionDenied && e.raw_os_error().is_none())
}

pub fn walk_dir(dir: &cap_std::fs::Dir, count_files: bool, inodes: bool) -> io::Result<Walk> {
    use cap_std::fs::MetadataExt as _;
    let mut out = Walk::default();
    walk(dir, |entry, depth, is_dir| {
        if is_dir {
            // A directory at `depth` is listed with `depth + 1` handles open.
            if depth >= MAX_WALK_DEPTH {
                out.too_deep = true;
                return Ok(Step::Skip);
            }
            return Ok(Step::Into);
        }
        let m = match entry.metadata() {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Ok(Step::Skip),
            Err(e) if changed_under_us(&e) => return Ok(Step::Skip),
            Err(e) => return Err(e),
        };
        out.usage.bytes += m.len();
        if count_files {
            out.usage.files += 1;
        }
        if inodes && m.nlink() == 1 {
            out.inodes.push(m.ino());
        }
        Ok(Step::Skip)
    })?;
    Ok(out)
}

/// Whether some directory lies more than `levels` below `dir` (its entries are one below),
/// listing no deeper than needed to tell. The handles held are at most `levels + 1`.
pub fn dirs_deeper_than(dir: &cap_std::fs::Dir, levels: usize) -> io::Result<bool> {
    walk(dir, |_, depth, is_dir| {
        Ok(match is_dir {
            true if depth > levels => Step::Stop,
            true => Step::Into,
            false => Step::Skip,
        })
    })
}

/// What [`walk`] does after an entry.
enum Step {
    /// Enter it (a directory).
    Into,
    /// Go on with the next entry.
    Skip,
    /// End the walk.
    Stop,
}

/// Calls `visit(entry, depth, is_dir)` for everything below `dir` (its own entries at depth
/// 1), depth first, entering the directories it answers [`Step::Into`] for: iteratively, with
/// one open handle per level, never following a symlink. A directory changed under the walk
/// is skipped. Returns whether `visit` stopped it.
fn walk(
    dir: &cap_std::fs::Dir,
    mut visit: impl FnMut(&cap_std::fs::DirEntry, usize, bool) -> io::Result<Step>,
) -> io::Result<bool> {
    let mut stack = vec![dir.entries()?];
    while let Some(top) = stack.last_mut() {
        let Some(entry) = top.next() else {
            stack.pop();
            continue;
        };
        let entry = entry?;
        let ft = entry.file_type()?;
        if !ft.is_dir() && !ft.is_file() {
            continue;
        }
        match visit(&entry, stack.len(), ft.is_dir())? {
            Step::Stop => return Ok(true),
            Step::Skip => {}
            Step::Into => match entry.open_dir().and_then(|d| d.entries()) {
                Ok(sub) => stack.push(sub),
                Err(e) if changed_under_us(&e) => {}
                Err(e) => return Err(e),
            },
        }
    }
    Ok(false)
}

/// A user's usage from disk: regular files in the home (bytes and count) plus the bytes of
/// the partial uploads. Content deeper than [`MAX_WALK_DEPTH`] is not counted (and logged).
pub fn measure(home: &Path, partials: &Path) -> io::Result<Usage> {
    let mut usage = Usage::default();
    for (dir, count_files) in [(home, true), (partials, false)] {
        let d = match cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority()) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let w = walk_dir(&d, count_files, false)?;
        if w.too_deep {
            tracing::warn!(
                "{}: directories deeper than {MAX_WALK_DEPTH} levels are not counted in the quota",
                dir.display()
            );
        }
        usage.bytes += w.usage.bytes;
        usage.files += w.usage.files;
    }
    Ok(usage)
}

/// Parses a size: `1024`, `500MB`, `10GiB`, `1.5G`, `unlimited`. Decimal units (kB, MB, GB,
/// TB) are powers of 1000, binary ones (KiB, MiB, GiB, TiB, and bare K, M, G, T) of 1024.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") || t.eq_ignore_ascii_case("none") {
        return Ok(u64::MAX);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000_u64.pow(2),
        "gb" => 1000_u64.pow(3),
        "tb" => 1000_u64.pow(4),
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => return Err(format!("unknown size unit {unit:?} in {s:?}")),
    };
    if num.is_empty() {
        return Err(format!("no number in size {s:?}"));
    }
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(mult)
            .ok_or_else(|| format!("size {s:?} is too large"));
    }
    let f: f64 = num
        .parse()
        .map_err(|_| format!("bad number {num:?} in size {s:?}"))?;
    let v = f * mult as f64;
    if !v.is_finite() || v < 0.0 || v >= u64::MAX as f64 {
        return Err(format!("size {s:?} is out of range"));
    }
    Ok(v as u64)
}

/// Formats a byte count for people: `10 GiB`, `512 B`, `unlimited`.
pub fn format_size(n: u64) -> String {
    if n == u64::MAX {
        return "unlimited".into();
    }
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("10 gib"), Ok(10 << 30));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size("unlimited"), Ok(u64::MAX));
        assert!(parse_size("10XB").is_err());
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
        assert_eq!(format_size(10 << 30), "10 GiB");
    }

    #[test]
    fn reservations_are_atomic_and_released() {
        let u = Arc::new(UserUsage::new(Usage::default()));
        let lim = QuotaLimits {
            bytes: 100,
            files: 2,
        };
        let a = u.reserve(60, 1, lim).unwrap();
        assert!(matches!(
            u.reserve(60, 1, lim),
            Err(QuotaError::Bytes { .. })
        ));
        let b = u.reserve(40, 1, lim).unwrap();
        assert!(matches!(
            u.reserve(0, 1, lim),
            Err(QuotaError::Files { .. })
        ));
        drop(a);
        assert_eq!(
            u.get(),
            Usage {
                bytes: 40,
                files: 1
            }
        );
        b.commit();
        assert_eq!(
            u.get(),
            Usage {
                bytes: 40,
                files: 1
            }
        );
    }
}
