//! ferry's client library: a session with a ferry server, its commands, and verified,
//! resumable, pipelined transfers.
//!
//! # Layout
//!
//! - [`Client`] (`client.rs`): connect, greet, log in, and the one-shot commands (`ls`, `cd`,
//!   `mkdir`, …), plus [`Client::call_many`] to pipeline many of them in one round trip.
//! - `transfer.rs`: [`Client::put_files`] and [`Client::get_files`], which pipeline many files
//!   over one connection, verify every byte against the hash of record, and resume.
//! - `conn.rs`: the framed reader and writer halves over the socket (sendfile for uploads).
//! - `bench.rs`: [`Client::bench`], memory-to-memory throughput like iperf3.
//! - [`tls`]: TLS with certificates verified against the system roots or `--ca`, or trusted on
//!   first use and pinned by fingerprint in a known-hosts file.
//! - [`sessions`]: the cache of session tokens per (server, user), so a run of commands logs in
//!   with the password once.
//! - [`hash_cache`]: the hashes of large files already uploaded, so an unchanged file is read
//!   once per upload, not twice.
//! - [`Progress`]: hooks the CLI uses to draw progress bars; the library prints nothing.

mod bench;
mod client;
mod conn;
mod error;
pub mod hash_cache;
mod progress;
pub mod sessions;
pub mod tls;
mod transfer;

pub use bench::{BENCH_CHUNK, BenchSample};
pub use client::{Client, ConnectOptions, Credential, LS_PAGE, LoggedIn, ServerHello};
pub use error::{ClientError, Result};
pub use progress::{NoProgress, Progress};
pub use tls::{TlsMode, Trust};
pub use transfer::{
    GetItem, GetOptions, GetOutcome, LARGE_FILE, PARTIAL_META_SUFFIX, PARTIAL_SUFFIX, PutItem,
    PutOptions, PutOutcome, Transferred, hash_file,
};
