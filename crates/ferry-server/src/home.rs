//! Paths inside a user's home: cleaning the virtual path a client sends, and opening it only
//! through a capability handle on the home directory.
//!
//! Two layers, both required:
//! 1. [`VPath::resolve`] cleans the string lexically (`.`/`..`, control bytes, backslashes,
//!    lengths) and rejects a climb above `/` with `invalid_path`.
//! 2. Every file-system call then goes through [`Home::dir`], a `cap_std::fs::Dir`. cap-std
//!    resolves each component itself relative to that handle (openat2 `RESOLVE_BENEATH` where
//!    available, component by component otherwise), so a symlink inside the home that points
//!    out of it — even one swapped in between our check and our use — fails with an
//!    "escape attempt" (`permission_denied`) instead of being followed. The only ambient
//!    authority used is in [`Home::open`], to open the home directory itself.

use std::io;
use std::path::{Path, PathBuf};

use cap_std::fs::{Dir, Metadata, MetadataExt};
use ferry_proto::{Entry, EntryKind, ErrorCode, WireError};

/// Longest accepted path, in bytes.
pub const MAX_PATH: usize = 4096;
/// Longest accepted path component, in bytes.
pub const MAX_COMPONENT: usize = 255;

/// Deepest a directory may lie in a home, in path components (`/a` is 1); a file may lie one
/// deeper. The walks that measure a home's usage enter exactly that far
/// ([`crate::quota::MAX_WALK_DEPTH`]), with one open handle per level: whatever lay deeper
/// would not count against the quota (a user could store past it), so nothing ferry does may
/// put anything deeper (`mkdir`, `put`, and `mv`, which checks the height of a directory it
/// moves).
pub const MAX_DIR_DEPTH: usize = 255;

/// A cleaned path relative to the home root: no empty, `.` or `..` components.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct VPath(Vec<String>);

impl VPath {
    pub fn root() -> Self {
        VPath(Vec::new())
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path as the client sees it: `/`, `/docs/a.txt`.
    pub fn display(&self) -> String {
        if self.0.is_empty() {
            "/".into()
        } else {
            let mut s = String::new();
            for c in &self.0 {
                s.push('/');
                s.push_str(c);
            }
            s
        }
    }

    /// The path relative to the home directory, for cap-std: `.` for the root.
    pub fn rel(&self) -> PathBuf {
        if self.0.is_empty() {
            PathBuf::from(".")
        } else {
            PathBuf::from(self.0.join("/"))
        }
    }

    /// Components below the home's root (0 for the root).
    pub fn depth(&self) -> usize {
        self.0.len()
    }

    /// Refuses `self` as the path of a new directory (`dir`) or file that would lie deeper
    /// than [`MAX_DIR_DEPTH`] (a file: one more).
    pub fn may_create(&self, dir: bool) -> Result<(), WireError> {
        let max = if dir {
            MAX_DIR_DEPTH
        } else {
            MAX_DIR_DEPTH + 1
        };
        if self.depth() > max {
            return Err(too_deep(self));
        }
        Ok(())
    }

    /// The last component (`None` for the root).
    pub fn name(&self) -> Option<&str> {
        self.0.last().map(String::as_str)
    }

    /// The parent (`None` for the root).
    pub fn parent(&self) -> Option<VPath> {
        if self.0.is_empty() {
            None
        } else {
            Some(VPath(self.0[..self.0.len() - 1].to_vec()))
        }
    }

    /// Whether `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &VPath) -> bool {
        self.0.len() >= other.0.len() && self.0[..other.0.len()] == other.0[..]
    }

    /// Resolves `input` against `self` (the session's cwd), lexically.
    pub fn resolve(&self, input: &str) -> Result<VPath, WireError> {
        let bad =
            |why: &str| WireError::new(ErrorCode::InvalidPath, format!("invalid path: {why}"));
        if input.is_empty() {
            return Err(bad("empty"));
        }
        if input.len() > MAX_PATH {
            return Err(bad("longer than 4096 bytes"));
        }
        if input.chars().any(char::is_control) {
            return Err(bad("contains a NUL or control character"));
        }
        if input.contains('\\') {
            return Err(bad("contains a backslash"));
        }
        let mut comps = if input.starts_with('/') {
            Vec::new()
        } else {
            self.0.clone()
        };
        for c in input.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    if comps.pop().is_none() {
                        return Err(bad("climbs above the home"));
                    }
                }
                c if c.len() > MAX_COMPONENT => {
                    return Err(bad("a component is longer than 255 bytes"));
                }
                c => comps.push(c.to_owned()),
            }
        }
        let out = VPath(comps);
        if out.display().len() > MAX_PATH {
            return Err(bad("longer than 4096 bytes"));
        }
        Ok(out)
    }
}

/// Why `path` may not be made (or moved to where it would be).
pub fn too_deep(path: &VPath) -> WireError {
    WireError::new(
        ErrorCode::InvalidPath,
        format!(
            "{}: directories may lie at most {MAX_DIR_DEPTH} levels deep",
            path.display()
        ),
    )
}

/// A user's home, opened once per session.
#[derive(Debug)]
pub struct Home {
    dir: Dir,
}

impl Home {
    /// Opens the home directory; the only use of ambient authority in request handling.
    pub fn open(path: &Path) -> io::Result<Home> {
        let dir = Dir::open_ambient_dir(path, cap_std::ambient_authority())?;
        Ok(Home { dir })
    }

    pub fn dir(&self) -> &Dir {
        &self.dir
    }
}

/// The wire code for an io error from a file-system call on behalf of a client.
pub fn io_code(e: &io::Error) -> ErrorCode {
    if let Some(n) = e.raw_os_error() {
        return match n {
            libc::ENOENT => ErrorCode::NotFound,
            libc::EEXIST => ErrorCode::AlreadyExists,
            libc::ENOTDIR => ErrorCode::NotADirectory,
            libc::EISDIR => ErrorCode::IsADirectory,
            libc::ENOTEMPTY => ErrorCode::DirectoryNotEmpty,
            libc::EACCES | libc::EPERM | libc::EXDEV | libc::ELOOP => ErrorCode::PermissionDenied,
            libc::ENAMETOOLONG => ErrorCode::InvalidPath,
            libc::ENOSPC | libc::EDQUOT => ErrorCode::QuotaExceeded,
            _ => ErrorCode::Internal,
        };
    }
    match e.kind() {
        io::ErrorKind::NotFound => ErrorCode::NotFound,
        io::ErrorKind::AlreadyExists => ErrorCode::AlreadyExists,
        // cap-std reports an escape attempt as a PermissionDenied error without an errno.
        io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
        io::ErrorKind::NotADirectory => ErrorCode::NotADirectory,
        io::ErrorKind::IsADirectory => ErrorCode::IsADirectory,
        io::ErrorKind::DirectoryNotEmpty => ErrorCode::DirectoryNotEmpty,
        _ => ErrorCode::Internal,
    }
}

/// The entry kind of file metadata (symlinks only when not followed).
pub fn kind_of(meta: &Metadata) -> EntryKind {
    let ft = meta.file_type();
    if ft.is_file() {
        EntryKind::File
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else {
        EntryKind::Other
    }
}

/// An [`Entry`] for metadata. `size` is what the file system says for every kind (a
/// directory's own size, e.g. 4096, as in the protocol's example).
pub fn entry_of(name: String, meta: &Metadata, hash: Option<ferry_proto::Digest>) -> Entry {
    Entry {
        name,
        kind: kind_of(meta),
        size: meta.size(),
        mtime: meta.mtime(),
        hash,
    }
}

/// `renameat2` of a plain name in `from_dir` to a plain name in `to_dir`. Neither name may
/// contain `/` (they are final components of cleaned paths), so no path walk happens here:
/// both directories were opened through cap-std, and a symlink as a final component is
/// renamed or replaced itself, never followed. With `noreplace` an existing target fails
/// with `EEXIST`, atomically.
pub fn rename_at(
    from_dir: &impl std::os::fd::AsRawFd,
    from: &str,
    to_dir: &impl std::os::fd::AsRawFd,
    to: &str,
    noreplace: bool,
) -> io::Result<()> {
    debug_assert!(!from.contains('/') && !to.contains('/'));
    let f = std::ffi::CString::new(from)?;
    let t = std::ffi::CString::new(to)?;
    let flags = if noreplace { libc::RENAME_NOREPLACE } else { 0 };
    // SAFETY: valid fds and NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::renameat2(
            from_dir.as_raw_fd(),
            f.as_ptr(),
            to_dir.as_raw_fd(),
            t.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if noreplace && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
        // A file system without RENAME_NOREPLACE: check, then rename. Not atomic against a
        // racing creator of the same name, which is the best such a file system allows.
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: as above; `st` is written by the call.
        let exists = unsafe {
            libc::fstatat(
                to_dir.as_raw_fd(),
                t.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        } == 0;
        if exists {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        // SAFETY: as above.
        let r = unsafe {
            libc::renameat(
                from_dir.as_raw_fd(),
                f.as_ptr(),
                to_dir.as_raw_fd(),
                t.as_ptr(),
            )
        };
        return if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        };
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_rules() {
        let root = VPath::root();
        let cwd = root.resolve("/a/b").unwrap();
        assert_eq!(cwd.display(), "/a/b");
        assert_eq!(cwd.resolve("c").unwrap().display(), "/a/b/c");
        assert_eq!(cwd.resolve("../c").unwrap().display(), "/a/c");
        assert_eq!(cwd.resolve("/x//y/./z/").unwrap().display(), "/x/y/z");
        assert_eq!(cwd.resolve("../..").unwrap().display(), "/");
        assert_eq!(cwd.resolve("../..").unwrap().rel(), PathBuf::from("."));
        for bad in [
            "../../..",
            "/..",
            "a\0b",
            "a\nb",
            "a\\b",
            "",
            &"x".repeat(256),
            &"a/".repeat(2100),
        ] {
            let e = cwd.resolve(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidPath, "{bad:?}");
        }
        assert!(cwd.resolve(&"x".repeat(255)).is_ok());
    }
}
