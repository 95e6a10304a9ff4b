//! Upload bodies on plain TCP, moved socket → pipe → partial file with `splice(2)` on one
//! blocking thread, and hashed from the page cache right after each window is written.
//!
//! Why: receiving into a user buffer, writing it out and hashing it cost the server two copies
//! of every byte and a thread hand-off per chunk (reader → writer → hasher). With `splice` the
//! kernel moves the socket's pages into a pipe by reference (on loopback, the sender's
//! `sendfile` pages themselves) and copies once, into the file; hashing then reads each
//! just-written window from the page cache through a short-lived mapping ([`hash_written`]),
//! on the same thread or on one beside it (the caller's choice, through the callback of
//! [`receive`]).
//!
//! The thread reads at most the declared body from the socket, so whatever follows the body
//! (a `put_hash` trailer, the next pipelined request) stays in the socket for the connection.
//! The connection lends it the socket, taken out of the runtime (see `Conn::lend_plain`), so
//! the thread owns it until it is done; the connection holds a [`StopOnDrop`] whose drop (the
//! connection cut mid-body by a hard shutdown) wakes and ends the thread.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_proto::Hasher;

/// Pipe capacity asked for (the unprivileged maximum by default, `/proc/sys/fs/pipe-max-size`):
/// each socket splice moves up to this much, so a 1 GiB body takes ~1,000 rounds.
const PIPE_SIZE: usize = 1 << 20;

/// Written bytes are handed to the hashing in windows of at least this size (or the rest of
/// the body): few enough hand-offs to a hash thread and mappings (~1,000 per GiB; 4 MiB
/// windows were no cheaper), small enough to be hashed while still in the L2 cache and to
/// keep the mapped pages, which count in the server's RSS, few.
pub const HASH_WINDOW: u64 = 1 << 20;

/// What the thread sees of [`StopOnDrop`]: a flag it checks between rounds, and the read end
/// of a pipe whose write end the connection holds, which hangs up (waking a thread waiting on
/// the socket) when that is dropped.
pub struct StopSignal {
    stopped: Arc<AtomicBool>,
    wake: OwnedFd,
}

/// Held by the connection while a splicing thread runs; dropped (the connection cut mid-body
/// by a hard shutdown, or the put done), it stops the thread, even one that is busy moving
/// a body that keeps coming.
pub struct StopOnDrop {
    stopped: Arc<AtomicBool>,
    _wake: OwnedFd,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        // `_wake` closes after this, hanging up the pipe under a waiting thread.
    }
}

pub fn stop_pair() -> io::Result<(StopOnDrop, StopSignal)> {
    let (r, w) = pipe()?;
    let stopped = Arc::new(AtomicBool::new(false));
    let signal = StopSignal {
        stopped: Arc::clone(&stopped),
        wake: r,
    };
    Ok((StopOnDrop { stopped, _wake: w }, signal))
}

/// Where the body comes from: the connection's (non-blocking) socket, lent.
pub struct Source {
    pub sock: std::net::TcpStream,
    pub stop: StopSignal,
    /// Each wait for body bytes is bounded by this (the frame timeout).
    pub patience: Duration,
}

/// Why reading the body from the socket stopped before its end.
#[derive(Debug)]
pub enum SourceEnd {
    /// The peer closed the connection.
    Eof,
    /// No byte came within the frame timeout.
    Timeout,
    /// The connection was dropped (server shut down hard).
    Stopped,
    /// The socket failed.
    Io(io::Error),
}

/// What [`receive`] did.
pub struct Received {
    /// Body bytes taken from the socket (the connection's decoder must be told).
    pub from_socket: u64,
    /// Body bytes written to the file, from `pos` on.
    pub written: u64,
    /// `Some` if the socket stopped before the body's end.
    pub source_end: Option<SourceEnd>,
    /// `Some` if writing or hashing the file failed; the socket was left at `from_socket`.
    pub file_error: Option<io::Error>,
}

/// Moves up to `len` body bytes from the socket into `file` at `pos`, calling `written(from,
/// to)` for each window of the file written (at least [`HASH_WINDOW`] bytes, or the rest).
/// Blocking.
pub fn receive(
    src: &Source,
    file: &File,
    pos: u64,
    len: u64,
    written: &mut dyn FnMut(u64, u64) -> io::Result<()>,
) -> Received {
    let mut r = Received {
        from_socket: 0,
        written: 0,
        source_end: None,
        file_error: None,
    };
    if len == 0 {
        return r;
    }
    let (pipe_r, pipe_w) = match pipe() {
        Ok(p) => p,
        Err(e) => {
            r.file_error = Some(e);
            return r;
        }
    };
    // SAFETY: fcntl on a pipe fd we own. Failing (over the per-user pipe quota) leaves the
    // default capacity, which only means more rounds.
    let cap = unsafe {
        let got = libc::fcntl(
            pipe_w.as_raw_fd(),
            libc::F_SETPIPE_SZ,
            PIPE_SIZE as libc::c_int,
        );
        if got > 0 {
            got as usize
        } else {
            libc::fcntl(pipe_w.as_raw_fd(), libc::F_GETPIPE_SZ).max(4096) as usize
        }
    };
    let mut hashed = pos;
    let mut pace = crate::conn::BodyPace::new(src.patience);
    while r.written < len {
        if src.stop.stopped.load(Ordering::Relaxed) {
            r.source_end = Some(SourceEnd::Stopped);
            break;
        }
        let want = ((len - r.written) as usize).min(cap);
        let n = match splice_from_socket(src, pipe_w.as_raw_fd(), want, pace.deadline()) {
            Ok(n) => n,
            Err(end) => {
                r.source_end = Some(end);
                break;
            }
        };
        pace.moved(n as u64);
        r.from_socket += n as u64;
        if let Err(e) = drain_pipe(&pipe_r, file, pos + r.written, n) {
            r.file_error = Some(e);
            return r;
        }
        r.written += n as u64;
        let at = pos + r.written;
        if at - hashed >= HASH_WINDOW || r.written == len {
            if let Err(e) = written(hashed, at) {
                r.file_error = Some(e);
                return r;
            }
            hashed = at;
        }
    }
    // A body cut short is not hashed to its end: its digests are never used (the partial
    // waits for a resume, which hashes the held prefix afresh).
    r
}

/// One `splice` from the socket into the (empty) pipe, waiting for bytes until `deadline`
/// (the body's pace, see `conn::BodyPace`).
fn splice_from_socket(
    src: &Source,
    pipe_w: RawFd,
    want: usize,
    deadline: Instant,
) -> Result<usize, SourceEnd> {
    loop {
        // SAFETY: both fds are open (we own the socket duplicate and the pipe); null offsets
        // are required for sockets and pipes.
        let n = unsafe {
            libc::splice(
                src.sock.as_raw_fd(),
                std::ptr::null_mut(),
                pipe_w,
                std::ptr::null_mut(),
                want,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n > 0 {
            return Ok(n as usize);
        }
        if n == 0 {
            return Err(SourceEnd::Eof);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => {}
            io::ErrorKind::Interrupted => continue,
            _ => return Err(SourceEnd::Io(e)),
        }
        wait_readable(src, deadline)?;
    }
}

/// Waits until the socket is readable (or closed), the stop signal fires, or `deadline`.
fn wait_readable(src: &Source, deadline: Instant) -> Result<(), SourceEnd> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SourceEnd::Timeout);
        }
        let mut fds = [
            libc::pollfd {
                fd: src.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: src.stop.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Rounded up, so a wait never ends just short of the deadline and spins.
        let ms = left.as_millis().saturating_add(1).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: `fds` is a valid array of two pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(SourceEnd::Io(e));
        }
        if fds[1].revents != 0 {
            return Err(SourceEnd::Stopped);
        }
        if fds[0].revents != 0 {
            return Ok(());
        }
    }
}

/// Moves exactly `n` bytes from the pipe into `file` at `at`.
fn drain_pipe(pipe_r: &OwnedFd, file: &File, mut at: u64, mut n: usize) -> io::Result<()> {
    while n > 0 {
        let mut off = at as libc::loff_t;
        // SAFETY: both fds are open; `off` points to our file offset, which splice advances.
        let moved = unsafe {
            libc::splice(
                pipe_r.as_raw_fd(),
                std::ptr::null_mut(),
                file.as_raw_fd(),
                &mut off,
                n,
                libc::SPLICE_F_MOVE,
            )
        };
        if moved < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // A file system that cannot splice: copy through user space.
                Some(libc::EINVAL) => return copy_pipe(pipe_r, file, at, n),
                _ => return Err(e),
            }
        }
        if moved == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "splice into the partial wrote nothing",
            ));
        }
        at += moved as u64;
        n -= moved as usize;
    }
    Ok(())
}

fn copy_pipe(pipe_r: &OwnedFd, file: &File, at: u64, n: usize) -> io::Result<()> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        // SAFETY: reading into our own buffer's unfilled tail.
        let r = unsafe { libc::read(pipe_r.as_raw_fd(), buf[got..].as_mut_ptr().cast(), n - got) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(io::Error::other("pipe ran dry"));
        }
        got += r as usize;
    }
    file.write_all_at(&buf, at)
}

/// Hashes `file[from..to]`, just written and so in the page cache (and mostly still in the
/// CPU's cache), through a short-lived read-only mapping populated in one call. Measured
/// against reading the window back through a reused 256 KiB buffer (`pread`): 0.92 s of
/// server CPU per GiB against 1.01 s (medians of 7 uploads each).
///
/// A mapping faults with `SIGBUS` if the file is truncated under it. Nothing in ferry can do
/// that to a partial while its upload runs: the upload holds the partial's claim
/// (`UploadGuard`), and the sweeper only removes partials, which leaves a mapping intact.
pub fn hash_written(file: &File, from: u64, to: u64, hashers: &mut [Hasher]) -> io::Result<()> {
    if from == to {
        return Ok(());
    }
    let page = page_size();
    let base = from - from % page;
    let len = (to - base) as usize;
    // SAFETY: a fresh read-only mapping of a range of the file that exists (it was just
    // written), unmapped below before anything else could see it.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            file.as_raw_fd(),
            base as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the mapping is `len` readable bytes and lives until the munmap below.
    let mapped = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    let window = &mapped[(from - base) as usize..];
    for h in hashers.iter_mut() {
        h.update(window);
    }
    // SAFETY: unmapping exactly the mapping made above; `mapped` is not used after this.
    unsafe { libc::munmap(ptr, len) };
    Ok(())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
