//! The data root: where every piece of server state lives (see the crate's `# Layout`).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Paths inside one data root. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DataRoot {
    path: PathBuf,
}

/// What [`DataRoot::open_or_init`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitOutcome {
    /// The layout was created just now.
    Created,
    /// The root already had its layout.
    Existing,
}

impl DataRoot {
    /// A handle on `path` without touching the disk.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DataRoot { path: path.into() }
    }

    /// Opens the root, creating any missing part of its layout (owner-only permissions).
    pub fn open_or_init(path: impl Into<PathBuf>) -> io::Result<(Self, InitOutcome)> {
        let root = DataRoot::new(path);
        let outcome = if root.settings_file().exists() {
            InitOutcome::Existing
        } else {
            InitOutcome::Created
        };
        for dir in [
            root.path.clone(),
            root.homes_dir(),
            root.partials_root(),
            root.hashes_root(),
            root.tmp_dir(),
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
        }
        if outcome == InitOutcome::Created {
            root.write_atomic(&root.settings_file(), b"{\"format\":1}\n")?;
        }
        let homes_dev = fs::metadata(root.homes_dir())?.dev();
        let state_dev = fs::metadata(root.partials_root())?.dev();
        if homes_dev != state_dev {
            tracing::warn!(
                "homes/ and state/ are on different filesystems; finished uploads cannot be \
                 renamed into place and will fail"
            );
        }
        Ok((root, outcome))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn settings_file(&self) -> PathBuf {
        self.path.join("settings.json")
    }
    pub fn users_file(&self) -> PathBuf {
        self.path.join("users.json")
    }
    pub fn users_lock(&self) -> PathBuf {
        self.path.join("users.lock")
    }
    pub fn homes_dir(&self) -> PathBuf {
        self.path.join("homes")
    }
    pub fn home_dir(&self, user: &str) -> PathBuf {
        self.homes_dir().join(user)
    }
    pub fn partials_root(&self) -> PathBuf {
        self.path.join("state").join("partials")
    }
    pub fn partials_dir(&self, user: &str) -> PathBuf {
        self.partials_root().join(user)
    }
    pub fn hashes_root(&self) -> PathBuf {
        self.path.join("state").join("hashes")
    }
    pub fn hashes_dir(&self, user: &str) -> PathBuf {
        self.hashes_root().join(user)
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.path.join("state").join("tmp")
    }

    /// Creates a user's home and state dirs if missing.
    pub fn ensure_user_dirs(&self, user: &str) -> io::Result<()> {
        for dir in [
            self.home_dir(user),
            self.partials_dir(user),
            self.hashes_dir(user),
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
        }
        Ok(())
    }

    /// Replaces `dest` with `data` atomically: a temp file in `state/tmp`, fsync, rename,
    /// fsync of the destination's directory. Readers see the old or the new file, never half.
    pub fn write_atomic(&self, dest: &Path, data: &[u8]) -> io::Result<()> {
        let tmp = self.tmp_dir().join(format!(
            ".{}.{}.{}",
            dest.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
            std::process::id(),
            rand::random::<u64>()
        ));
        let result = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, dest)?;
            if let Some(parent) = dest.parent() {
                fs::File::open(parent)?.sync_all()?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}
