//! ferry's wire protocol, with no IO: bytes in, typed messages out, and back.
//!
//! # Layout
//!
//! - [`frame`]: the frame layout — a 4-byte little-endian header length, a JSON object, then
//!   exactly `body_len` body bytes — and [`FrameDecoder`], a sans-IO state machine that turns
//!   bytes cut anywhere by TCP into frame events, streaming bodies in chunks.
//! - [`message`]: typed requests and replies ([`Request`], [`Reply`]) and the per-operation
//!   checks on declared body sizes.
//! - [`error`]: [`ErrorCode`], the stable codes sent on the wire, and [`ProtoError`], the typed
//!   errors of decoding.
//! - [`digest`]: `algo:hex` integrity values and a streaming [`Hasher`] for blake3, sha256, md5.
//!
//! Nothing here touches a socket, a file or a clock, so every function is deterministic and
//! can be tested by feeding it bytes; `docs/PROTOCOL.md` is the human-readable counterpart.

pub mod digest;
pub mod error;
pub mod frame;
pub mod message;

pub use digest::{Digest, HashAlgo, Hasher};
pub use error::{ErrorCode, ProtoError, WireError};
pub use frame::{FrameDecoder, FrameEvent, Header, LENGTH_PREFIX};
pub use message::{
    BENCH_MAX, Entry, EntryKind, Limits, PROTOCOL_VERSION, Rejected, Reply, ReplyFrame, Request,
    RequestFrame,
};
