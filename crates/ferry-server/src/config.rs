//! Server settings: one struct, built by the binary from flags and env, with defaults here.

use std::path::PathBuf;
use std::time::Duration;

use ferry_proto::Limits;

/// Everything [`crate::run`] needs besides the listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The data root (see the crate's `# Layout`). Created with its layout if missing.
    pub root: PathBuf,
    /// Connections served at once; one more gets a `busy` frame and is closed.
    pub max_connections: usize,
    /// A connection with no request for this long gets `timeout` and is closed.
    pub idle_timeout: Duration,
    /// A started frame header must complete, and a body must make progress, within this.
    pub frame_timeout: Duration,
    /// On shutdown, transfers in flight get this long to finish before connections are cut.
    pub grace: Duration,
    /// Partial uploads untouched for this long are removed (and their quota released).
    pub partial_max_age: Duration,
    /// How often abandoned partials are looked for (also once at startup).
    pub sweep_interval: Duration,
    /// Header and file size limits.
    pub limits: Limits,
    /// Socket read buffer size; bodies arrive in chunks up to this size.
    pub io_buffer: usize,
    /// Name and version sent in `hello`.
    pub server_name: String,
    /// How failed logins are slowed down and locked out.
    pub throttle: crate::throttle::ThrottlePolicy,
    /// Sessions one user may have logged in at once; one more login is answered `busy`.
    pub max_sessions_per_user: usize,
    /// A user's measured disk usage is reused by a login within this long of their previous
    /// login, even with no session open between them (see `quota::REMEASURE_AFTER`).
    pub remeasure_after: Duration,
    /// Session tokens: their idle TTL (zero disables them) and how many are kept.
    pub tokens: crate::tokens::TokenPolicy,
    /// Where hashes of record are kept (see `hashes`).
    pub hash_records: crate::hashes::RecordsIn,
    /// TLS settings; `None` serves plain TCP.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl ServerConfig {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ServerConfig {
            root: root.into(),
            max_connections: 1024,
            idle_timeout: Duration::from_secs(300),
            frame_timeout: Duration::from_secs(30),
            grace: Duration::from_secs(10),
            partial_max_age: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(600),
            limits: Limits::default(),
            io_buffer: 256 * 1024,
            remeasure_after: crate::quota::REMEASURE_AFTER,
            server_name: concat!("ferry/", env!("CARGO_PKG_VERSION")).to_owned(),
            throttle: crate::throttle::ThrottlePolicy::default(),
            max_sessions_per_user: 256,
            tokens: crate::tokens::TokenPolicy::default(),
            hash_records: crate::hashes::RecordsIn::Xattr,
            tls: None,
        }
    }
}
