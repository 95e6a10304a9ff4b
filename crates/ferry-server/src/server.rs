//! The accept loop, the connection cap, graceful shutdown and the partial-upload sweeper.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::conn::{Stream, refuse_busy};
use crate::root::DataRoot;
use crate::session::{Shared, serve_connection};

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data root {path}: {source}")]
    Root {
        path: std::path::PathBuf,
        source: io::Error,
    },
}

/// Serves `listener` until `shutdown` resolves, then stops accepting, lets connections
/// finish what they are doing (idle ones close at once, busy ones after their current
/// request) for up to `config.grace`, and cuts whatever is left.
///
/// The caller binds, so tests can pass a listener on port 0.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let (root, _) = DataRoot::open_or_init(&config.root).map_err(|source| ServerError::Root {
        path: config.root.clone(),
        source,
    })?;
    let grace = config.grace;
    let max = config.max_connections;
    let shared = Arc::new(Shared::new(config, root));
    let cancel = CancellationToken::new();
    let hard = CancellationToken::new();
    let tracker = TaskTracker::new();

    tracker.spawn(sweeper(Arc::clone(&shared), cancel.clone()));

    let permits = Arc::new(Semaphore::new(max));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of fds and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let tls = shared.config.tls.clone();
        let handshake_timeout = shared.config.frame_timeout;
        match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                let (shared, cancel, hard) = (Arc::clone(&shared), cancel.clone(), hard.clone());
                tracker.spawn(async move {
                    tracing::debug!(%peer, "connected");
                    let Some(stream) = secure(stream, tls, handshake_timeout, peer).await else {
                        return;
                    };
                    tokio::select! {
                        _ = serve_connection(shared, stream, peer, cancel) => {}
                        _ = hard.cancelled() => {}
                    }
                    tracing::debug!(%peer, "disconnected");
                    drop(permit);
                });
            }
            Err(_) => {
                tracing::warn!(%peer, "at the connection limit ({max}); refusing");
                // Over TLS the refusal must be encrypted like any reply; the handshake is
                // bounded so a flood of refusals cannot pile up.
                tracker.spawn(async move {
                    let limit = handshake_timeout.min(Duration::from_secs(2));
                    if let Some(stream) = secure(stream, tls, limit, peer).await {
                        refuse_busy(stream).await;
                    }
                });
            }
        }
    }
    drop(listener);
    tracing::info!("shutting down: waiting up to {grace:?} for transfers in flight");
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("grace period over; closing the remaining connections");
        hard.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    }
    Ok(())
}

/// Runs the TLS handshake when TLS is on; a peer that fails or stalls it is dropped.
async fn secure(
    tcp: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    limit: Duration,
    peer: std::net::SocketAddr,
) -> Option<Stream> {
    let Some(config) = tls else {
        return Some(Stream::Plain(tcp));
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => Some(Stream::Tls(Box::new(s))),
        Ok(Err(e)) => {
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

async fn sweeper(shared: Arc<Shared>, cancel: CancellationToken) {
    let interval = shared.config.sweep_interval;
    loop {
        let s = Arc::clone(&shared);
        match tokio::task::spawn_blocking(move || sweep_partials(&s)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!("removed {n} abandoned partial uploads"),
            Ok(Err(e)) => tracing::warn!("sweeping partial uploads: {e}"),
            Err(e) => tracing::warn!("sweeper failed: {e}"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Removes partial uploads not written to for `partial_max_age` (unless an upload is using
/// them right now) and releases their quota; also clears stale temporaries. Returns how many
/// partials went.
pub fn sweep_partials(shared: &Shared) -> io::Result<usize> {
    let max_age = shared.config.partial_max_age;
    let now = SystemTime::now();
    let old = |m: &std::fs::Metadata| {
        m.modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age >= max_age)
    };
    let mut removed = 0;
    for user_dir in std::fs::read_dir(shared.root.partials_root())? {
        let user_dir = user_dir?;
        let user = user_dir.file_name().to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir(user_dir.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() || !old(&meta) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            // Held while deleting, so an upload cannot claim the partial in between.
            let uploads = shared.uploads.lock().unwrap();
            if uploads.partials.contains(&(user.clone(), name)) {
                continue;
            }
            if std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
                if let Some(u) = shared.quota.get(&user) {
                    u.adjust(-(meta.len() as i64), 0);
                }
            }
            drop(uploads);
        }
    }
    if let Ok(entries) = std::fs::read_dir(shared.root.tmp_dir()) {
        for entry in entries.flatten() {
            if let Ok(meta) = entry.metadata() {
                if meta.is_file() && old(&meta) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
    Ok(removed)
}

/// Raises the soft open-file limit to the hard limit (thousands of connections each need a
/// socket, and transfers a file or two). Returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<libc::rlim_t> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Listen backlog for [`bind`]: bursts of thousands of connects must not overflow the accept
/// queue (the kernel caps it at `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (`host:port`; port 0 picks a free one) with [`LISTEN_BACKLOG`] and
/// `SO_REUSEADDR`, trying each resolved address in turn.
pub async fn bind(addr: &str) -> io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "address resolves to nothing")
    }))
}
