//! `ferry serve`: the file server.
//!
//! Output contract (tests and scripts rely on it): once bound, one line on stdout,
//! `ferry listening on ADDR` (e.g. `ferry listening on 127.0.0.1:9696`); everything else goes
//! to stderr. SIGINT or SIGTERM stops accepting, lets transfers in flight finish within
//! `--grace`, and exits 0.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use ferry_server::{DataRoot, ServerConfig};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Data root: settings, users, homes, partial uploads (created if missing).
    #[arg(long, env = "FERRY_ROOT", default_value = "ferry-data")]
    pub root: PathBuf,
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:9696")]
    pub listen: String,
    /// Connections served at once; one more is answered `busy` and closed.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Close a connection with no request for this long (e.g. 300, 5m).
    #[arg(long, default_value = "300", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// A started frame header must complete, and a body keep moving, within this.
    #[arg(long, default_value = "30", value_parser = parse_duration)]
    pub frame_timeout: Duration,
    /// On SIGINT/SIGTERM, how long transfers in flight may take to finish.
    #[arg(long, default_value = "10", value_parser = parse_duration)]
    pub grace: Duration,
    /// Remove partial uploads untouched for this long (e.g. 24h).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub partial_max_age: Duration,
    /// Async worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Sessions one user may have logged in at once.
    #[arg(long, default_value_t = 256)]
    pub max_sessions_per_user: usize,
    /// Failed logins in a row (per address, and per user) before a lockout.
    #[arg(long, default_value_t = 10)]
    pub lockout_after: u32,
    /// How long a lockout lasts (e.g. 300, 5m).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub lockout_time: Duration,
    /// Session tokens: a password login is answered with a token that later logins present
    /// instead of the password, valid until unused for this long (at most 12 times this in
    /// all) or until the user's password changes. 0 turns tokens off.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub session_ttl: Duration,
    /// Where the hash of record of each file is kept: `xattr` puts it on the file itself
    /// (the `user.ferry.hash` extended attribute; record files where the file system has no
    /// such attributes), `files` keeps it only in record files under the data root.
    #[arg(long, value_enum, default_value = "xattr")]
    pub hash_records: HashRecords,
    /// Serve plain TCP instead of TLS (for the course's Python client); loopback only unless
    /// --allow-plain-remote.
    #[arg(long, env = "FERRY_PLAIN", value_parser = clap::builder::BoolishValueParser::new())]
    pub plain: bool,
    /// Allow --plain on an address other than loopback: passwords and files cross the
    /// network in clear.
    #[arg(long, requires = "plain")]
    pub allow_plain_remote: bool,
    /// Certificate chain (PEM) to serve instead of the data root's own self-signed one.
    #[arg(long, value_name = "PEM", requires = "key", conflicts_with = "plain")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) for --cert.
    #[arg(long, value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum HashRecords {
    Xattr,
    Files,
}

/// Seconds, or a number with an `s`, `m`, `h` or `d` suffix.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86400),
        _ => (s, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?} (use e.g. 30, 30s, 5m, 24h)"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(n * mult as f64))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (root, _) = DataRoot::open_or_init(&args.root)
        .with_context(|| format!("cannot set up the data root {}", args.root.display()))?;
    let users = ferry_server::users::load(&root)?;
    if users.users.is_empty() {
        eprintln!(
            "ferry: no users yet in {root} — add one with: ferry user add NAME --root {root}",
            root = args.root.display()
        );
    }
    pin_malloc_mmap_threshold();
    match ferry_server::server::raise_fd_limit() {
        Ok(n) if (n as usize) < args.max_connections + 64 => tracing::warn!(
            "open-file limit {n} is below --max-connections {}; connections may fail",
            args.max_connections
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    let mut config = ServerConfig::new(&args.root);
    config.max_connections = args.max_connections.max(1);
    config.idle_timeout = args.idle_timeout;
    config.frame_timeout = args.frame_timeout;
    config.grace = args.grace;
    config.partial_max_age = args.partial_max_age;
    config.max_sessions_per_user = args.max_sessions_per_user.max(1);
    config.throttle.lockout_after = args.lockout_after.max(1);
    config.throttle.lockout = args.lockout_time;
    config.tokens.ttl = args.session_ttl;
    config.hash_records = match args.hash_records {
        HashRecords::Xattr => ferry_server::hashes::RecordsIn::Xattr,
        HashRecords::Files => ferry_server::hashes::RecordsIn::Files,
    };
    if !args.plain {
        let tls = ferry_server::tls::load_or_create(
            &args.root.join("tls"),
            args.cert.as_deref(),
            args.key.as_deref(),
            &[],
        )
        .context("cannot set up TLS")?;
        if tls.created {
            eprintln!(
                "ferry: created a self-signed TLS certificate in {}",
                tls.cert_path.display()
            );
        }
        eprintln!(
            "ferry: TLS certificate fingerprint {} (clients pin it on first use; compare)",
            tls.fingerprint
        );
        config.tls = Some(tls.config);
    }

    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all()
        .max_blocking_threads(blocking_threads(config.max_connections));
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.build().context("cannot start the async runtime")?;
    let result = rt.block_on(async {
        let listener = ferry_server::server::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        if args.plain && !addr.ip().is_loopback() && !args.allow_plain_remote {
            anyhow::bail!(
                "refusing plain TCP on {addr}: passwords and files would cross the network \
                 unencrypted. Use TLS (drop --plain), listen on loopback, or add \
                 --allow-plain-remote if you really mean it"
            );
        }
        if args.plain {
            tracing::warn!("serving plain TCP on {addr}: nothing is encrypted");
        }
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "ferry listening on {addr}")?;
            out.flush()?;
        }
        tracing::info!(root = %args.root.display(), "serving");
        ferry_server::run(listener, config, shutdown_signal()).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    });
    // Blocking work still running (hashing a huge file for a client that is gone) must not
    // hold the exit up.
    rt.shutdown_timeout(Duration::from_secs(2));
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Threads for the blocking pool: one per connection (a large upload holds one for as long as
/// its body flows, and a connection has one upload at a time) and 128 more, so short tasks
/// (a batch of small files, a login's argon2id, a hash) never queue behind all of them; never
/// fewer than tokio's default of 512. Threads are made only when needed and leave after 10 s
/// idle.
fn blocking_threads(max_connections: usize) -> usize {
    (max_connections + 128).max(512)
}

/// Keeps glibc from raising its mmap threshold after the first argon2id check: each check
/// allocates a 19 MiB block, which glibc takes as a sign that large allocations should come
/// from the heap from then on, and the heap then never shrinks — measured at 380 MiB of RSS
/// for 1,000 idle logged-in connections instead of 18 MiB (docs/BENCHMARKS.md). Pinning the
/// threshold keeps blocks of 1 MiB and more in their own mappings, returned when freed.
fn pin_malloc_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called once, before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn every_connection_can_hold_a_blocking_thread_with_room_to_spare() {
        assert_eq!(blocking_threads(1024), 1152);
        assert_eq!(blocking_threads(10_000), 10_128);
        assert_eq!(blocking_threads(1), 512);
    }
}
