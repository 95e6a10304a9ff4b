//! ferry's file server as a library: the binary (`ferry serve`, `ferry user …`) only parses
//! flags and calls in here, and tests run the same server in-process on port 0.
//!
//! # Layout
//!
//! - [`server`]: [`run`] — the accept loop, the connection cap (a semaphore answered with a
//!   `busy` frame), graceful shutdown (`CancellationToken` + `TaskTracker`) and the periodic
//!   sweep of abandoned partial uploads.
//! - [`cache`]: keeps disk waits of large download bodies off the async workers (a window not
//!   in the page cache is read into it on the blocking pool first).
//! - [`conn`]: one TCP connection's framed IO: read timeouts (idle and per frame), the reply
//!   buffer, streamed request bodies and zero-copy `sendfile` for download bodies.
//! - [`splice`]: plain-TCP upload bodies moved socket → pipe → partial with `splice(2)` and
//!   hashed from the page cache, on one blocking thread.
//! - [`session`]: the per-connection state machine (connected → greeted → authenticated) and
//!   the dispatch to [`ops`], one module per command.
//! - [`home`]: virtual path cleaning and capability-confined access to a user's home (cap-std),
//!   plus the io-error → wire-code mapping.
//! - [`root`]: the data root's on-disk layout (below).
//! - [`users`]: the users file (argon2id PHC hashes), atomic writes, reload on change, and the
//!   `ferry user` operations.
//! - [`throttle`]: login throttling (growing delays, a lockout that ends by itself, per source
//!   address and per user) and the cap on sessions per user.
//! - [`tokens`]: session tokens — issued after a password login, redeemed instead of the
//!   password; held in memory as blake3 hashes, bounded, revoked by a password change.
//! - [`quota`]: size parsing and the in-memory per-user usage accountant with reservations.
//! - [`hashes`]: the hash of record (per user, keyed by inode, checked against size + mtime).
//! - [`tls`]: the server's certificate — its own self-signed one, made on first start and
//!   kept in the data root, or one given with `--cert`/`--key` — and the rustls config.
//! - [`config`]: [`ServerConfig`], every tunable with its default.
//!
//! # On-disk layout of the data root
//!
//! ```text
//! <root>/settings.json                 format marker ({"format":1})
//! <root>/users.json                    users: name, argon2id PHC string, quota, max files
//! <root>/users.lock                    flock'd by `ferry user` while it rewrites users.json
//! <root>/homes/<user>/                 each user's files; the user sees this as `/`
//! <root>/state/partials/<user>/<k>.part  uploads in progress or interrupted; <k> is derived
//!                                      from (user, path, size, hash) — or (…, mtime) for a
//!                                      put that sends its hash after the body, whose final
//!                                      check discards a prefix of another version
//! <root>/state/hashes/<user>/<ino>.json  hash of record for the file with that inode, valid
//!                                      while its size and mtime (ns) still match — only
//!                                      where a file cannot carry it in its
//!                                      `user.ferry.hash` attribute (`hashes`)
//! <root>/state/tmp/                    temporaries for atomic rewrites
//! <root>/tls/cert.pem, key.pem         the server's own certificate (key mode 0600)
//! ```
//!
//! `state/` lives beside `homes/` on the same filesystem, so placing a finished upload is one
//! `renameat2` from a partial into the home, and nothing under `state/` is reachable from a
//! home through the protocol.

pub mod cache;
pub mod config;
pub mod conn;
pub mod hashes;
pub mod home;
pub mod ops;
pub mod quota;
pub mod root;
pub mod server;
pub mod session;
pub mod splice;
pub mod throttle;
pub mod tls;
pub mod tokens;
pub mod users;

pub use config::ServerConfig;
pub use root::DataRoot;
pub use server::{ServerError, run};
