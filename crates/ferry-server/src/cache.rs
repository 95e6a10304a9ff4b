//! Disk waits kept off the async workers. A download body is sent from the page cache by the
//! connection's task (`sendfile`, or `pread` for TLS); for a file that is not in the cache
//! those calls wait for the disk, and every other connection on that worker thread waits with
//! them. So each window of a large body is checked first ([`resident`], which reads nothing),
//! and one not all in the cache is read into it on the blocking pool ([`warm`]) before the
//! connection sends it: the way nginx's `aio threads` keep its event loop free.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Bytes checked (and, if not cached, read in) at a time: large enough that the check costs
/// little per byte sent, small enough that a blocking thread holds the disk only briefly.
pub const WINDOW: u64 = 4 << 20;

/// Whether `file[from..to]` can be read without waiting for the disk, as far as nine of its
/// pages tell (spread over the range, the first and the last among them). Each is read, one
/// byte, with `preadv2(RWF_NOWAIT)`, which fails rather than wait for a page that is not in
/// the cache or still on its way in (read ahead); where a file system does not take that flag
/// (tmpfs), `mincore(2)` is asked instead, over a mapping that is never touched.
///
/// Nine, not every page: per 4 MiB window of a cached file here, nine such reads cost 1.4 µs
/// and nine `mincore` 10 µs, against 26 µs to count every page with `cachestat(2)` (which
/// also counts pages still being read in) or 98 µs with `mincore`. Files leave the cache in
/// runs as they came in, so a window partly gone shows it at a probe; a hole between two
/// probes is waited for by the connection's task, as without this check. A range past the end
/// of the file is not resident.
pub fn resident(file: &File, from: u64, to: u64) -> bool {
    if to <= from {
        return true;
    }
    let page = page_size();
    let base = from - from % page;
    let pages = (to - base).div_ceil(page);
    let probes = pages.min(9);
    let probe_at = |k: u64| {
        let nth = if probes == 1 {
            0
        } else {
            k * (pages - 1) / (probes - 1)
        };
        base + nth * page
    };
    for k in 0..probes {
        let mut byte = 0u8;
        let iov = libc::iovec {
            iov_base: (&mut byte as *mut u8).cast(),
            iov_len: 1,
        };
        // SAFETY: one iovec over a live local byte; the descriptor is open.
        let n = unsafe {
            libc::preadv2(
                file.as_raw_fd(),
                &iov,
                1,
                probe_at(k) as libc::off_t,
                libc::RWF_NOWAIT,
            )
        };
        match n {
            1 => {}
            0 => return false,
            _ => {
                return match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EOPNOTSUPP | libc::EINVAL) => {
                        resident_by_mincore(file, base, pages, probes, probe_at)
                    }
                    _ => false,
                };
            }
        }
    }
    true
}

/// [`resident`]'s probes through `mincore(2)`, for kernels without `cachestat(2)`: the
/// `pages` from `base` are mapped (never touched) and the probed ones asked about.
fn resident_by_mincore(
    file: &File,
    base: u64,
    pages: u64,
    probes: u64,
    probe_at: impl Fn(u64) -> u64,
) -> bool {
    let page = page_size();
    let Ok(len) = usize::try_from(pages * page) else {
        return false;
    };
    // SAFETY: a fresh read-only shared mapping that is never dereferenced (mincore only asks
    // the kernel about it) and is unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            base as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        return false;
    }
    let all = (0..probes).all(|k| {
        let mut v = 0u8;
        // SAFETY: the probed page lies inside the mapping; `v` takes its one byte.
        let at = unsafe { ptr.cast::<u8>().add((probe_at(k) - base) as usize) };
        let ok = unsafe { libc::mincore(at.cast(), page as usize, &mut v) } == 0;
        ok && v & 1 == 1
    });
    // SAFETY: unmapping exactly the mapping made above.
    unsafe { libc::munmap(ptr, len) };
    all
}

/// Reads `file[from..to]` (up to its end) into the page cache, so that its pages are there
/// when the connection sends them. Blocking: for the blocking pool.
///
/// It is `sendfile`d to /dev/null, which takes the pages as a socket would and drops them
/// without a copy: a cold 512 MiB file on this VM's disk took 0.27 s and 0.01 s of CPU that
/// way, 0.30–0.57 s and 0.07–0.25 s read through a 256 KiB buffer (which is what is done
/// where /dev/null will not take it).
pub fn warm(file: &File, from: u64, to: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    static NULL: std::sync::OnceLock<Option<File>> = std::sync::OnceLock::new();
    let null = NULL.get_or_init(|| {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .ok()
    });
    let mut at = from;
    if let Some(null) = null {
        while at < to {
            let mut off = at as libc::off_t;
            let want = (to - at) as usize;
            // SAFETY: both descriptors are open; `off` is a valid pointer to a local.
            let n = unsafe { libc::sendfile(null.as_raw_fd(), file.as_raw_fd(), &mut off, want) };
            match n {
                0 => return Ok(()),
                n if n > 0 => at += n as u64,
                _ => match io::Error::last_os_error() {
                    e if e.kind() == io::ErrorKind::Interrupted => {}
                    // Not this file system, or not this kernel: read it the plain way.
                    _ => break,
                },
            }
        }
    }
    let mut buf = vec![0u8; 256 * 1024];
    while at < to {
        let want = (to - at).min(buf.len() as u64) as usize;
        match file.read_at(&mut buf[..want], at) {
            Ok(0) => break,
            Ok(n) => at += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A large body's windows, each made sure to be in the page cache before it is sent, the
/// next one read in (if it is not there) while this one goes out.
pub struct Windows {
    file: File,
    end: u64,
    /// The window being sent ends here.
    cached_to: u64,
    /// The next window, `[cached_to, ahead_to)`, and its read into the cache if one runs.
    ahead_to: u64,
    ahead: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

impl Windows {
    /// For `file[from..end]`.
    pub fn new(file: &File, from: u64, end: u64) -> io::Result<Windows> {
        Ok(Windows {
            file: file.try_clone()?,
            end,
            cached_to: from,
            ahead_to: from,
            ahead: None,
        })
    }

    /// Where the bytes from `at` on that are in the page cache end, once at least the window
    /// holding `at` is (waiting for the disk, on the blocking pool, only if it was not).
    pub async fn cached_from(&mut self, at: u64) -> io::Result<u64> {
        if at < self.cached_to {
            return Ok(self.cached_to);
        }
        if at >= self.ahead_to {
            // Not read ahead (the first window, or a jump): this one now.
            self.ahead_to = (at + WINDOW).min(self.end);
            self.ahead = self.read_in(at, self.ahead_to)?;
        }
        if let Some(read) = self.ahead.take() {
            read.await.map_err(io::Error::other)??;
        }
        self.cached_to = self.ahead_to;
        if self.cached_to < self.end {
            self.ahead_to = (self.cached_to + WINDOW).min(self.end);
            self.ahead = self.read_in(self.cached_to, self.ahead_to)?;
        }
        Ok(self.cached_to)
    }

    /// Starts reading `[from, to)` into the page cache on the blocking pool, unless it is
    /// all there already.
    fn read_in(
        &self,
        from: u64,
        to: u64,
    ) -> io::Result<Option<tokio::task::JoinHandle<io::Result<()>>>> {
        if resident(&self.file, from, to) {
            return Ok(None);
        }
        let file = self.file.try_clone()?;
        Ok(Some(tokio::task::spawn_blocking(move || {
            warm(&file, from, to)
        })))
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drops `file`'s clean pages from the page cache, as memory pressure would. Returns
    /// whether they went: tmpfs keeps them (its pages are the file).
    fn evict(file: &File, len: u64) -> bool {
        evict_range(file, 0, len)
    }

    fn evict_range(file: &File, off: u64, len: u64) -> bool {
        file.sync_all().unwrap();
        // SAFETY: advice on an open descriptor we own.
        unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                off as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        !resident(file, off, off + len)
    }

    /// [`resident`] as on a kernel without `cachestat(2)`, every page probed.
    fn by_mincore(file: &File, from: u64, to: u64) -> bool {
        let page = page_size();
        let pages = (to - from).div_ceil(page);
        resident_by_mincore(file, from, pages, pages, |k| from + k * page)
    }

    #[test]
    fn a_window_is_resident_once_warmed() {
        // On a tmpfs /tmp nothing can be evicted, and only the first checks apply.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let len = 3 * WINDOW + 123;
        std::fs::write(&path, vec![7u8; len as usize]).unwrap();
        let file = File::open(&path).unwrap();
        assert!(resident(&file, 0, len), "just written");
        assert!(by_mincore(&file, 0, len), "just written, by mincore");
        assert!(resident(&file, 5, 5), "an empty range");
        assert!(!resident(&file, len, len + 4096), "past the end");
        // A window whose second half left the cache is not resident; its first half is.
        if evict_range(&file, 2 * WINDOW + WINDOW / 2, WINDOW / 2) {
            assert!(!resident(&file, 2 * WINDOW, 3 * WINDOW), "partly evicted");
            assert!(resident(&file, 2 * WINDOW, 2 * WINDOW + WINDOW / 2));
        }
        if evict(&file, len) {
            assert!(!resident(&file, WINDOW + 1, 2 * WINDOW));
            assert!(!by_mincore(&file, WINDOW, 2 * WINDOW));
            warm(&file, WINDOW + 1, 2 * WINDOW).unwrap();
            assert!(resident(&file, WINDOW + 1, 2 * WINDOW), "warmed");
            assert!(by_mincore(&file, WINDOW, 2 * WINDOW), "warmed, by mincore");
            // (What lies after may be in the cache by now: the kernel reads ahead of a
            // sequential reader.)
        }
        // Past the end, warming stops at it.
        warm(&file, len - 10, len + 5000).unwrap();
    }

    #[test]
    fn windows_come_in_order_each_cached_the_next_read_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let len = 3 * WINDOW + 123;
        std::fs::write(&path, vec![9u8; len as usize]).unwrap();
        let file = File::open(&path).unwrap();
        let evicted = evict(&file, len);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let from = 1000;
            if evicted {
                assert!(!resident(&file, from, len), "evicted");
            }
            let mut w = Windows::new(&file, from, len).unwrap();
            assert_eq!(w.cached_from(from).await.unwrap(), from + WINDOW);
            assert!(resident(&file, from, from + WINDOW));
            // Within the window: no wait, the same end.
            assert_eq!(w.cached_from(from + 5).await.unwrap(), from + WINDOW);
            assert_eq!(
                w.cached_from(from + WINDOW).await.unwrap(),
                from + 2 * WINDOW
            );
            assert!(resident(&file, from + WINDOW, from + 2 * WINDOW));
            // The one after it was started ahead; waiting for it makes it so.
            assert_eq!(w.cached_from(from + 2 * WINDOW).await.unwrap(), len);
            assert!(resident(&file, from + 2 * WINDOW, len));
        });
    }
}
