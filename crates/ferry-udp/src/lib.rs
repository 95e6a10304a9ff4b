//! ferry's UDP side: the course's echo server, its line client, and a ping that measures loss,
//! duplication, reordering and round-trip times against the echo server.
//!
//! # Layout
//!
//! - [`probe`]: the ping probe's byte layout as pure encode/decode functions (no IO).
//! - [`stats`]: ping statistics as a pure function of an event log (no IO, no clock).
//! - [`ping`]: the engine that sends probes on a schedule, classifies what comes back and
//!   records the event log.
//! - [`server`]: the echo server, `run(socket, config, shutdown)`; the caller binds (see
//!   [`bind`]) so tests can use port 0.
//! - [`client`]: the blocking send-and-wait client with timeout and retries.
//!
//! `docs/UDP.md` describes the probe format and the statistics for humans.

pub mod client;
pub mod ping;
pub mod probe;
pub mod server;
pub mod stats;

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

pub use client::{Client, SendConfig, SendError};
pub use ping::{PingConfig, PingError, PingOutcome};
pub use server::{ServeError, ServerConfig, ServerStats};
pub use stats::{Summary, summarize};

/// The port the course used, and ferry's default for the echo service.
pub const DEFAULT_PORT: u16 = 9696;

/// The largest UDP payload over IPv4 (65,535 − 8 UDP − 20 IPv4 header bytes); ferry refuses to
/// send more so that every message works over both families.
pub const MAX_DATAGRAM: usize = 65_507;

/// Receive buffer size: the largest possible UDP payload (IPv6 allows 65,527) plus one, so a
/// datagram is never silently truncated.
pub const RECV_BUFFER: usize = 65_536;

/// Kernel receive-queue size requested for the server socket, so bursts from many clients
/// queue instead of being dropped; the kernel may cap it (`net.core.rmem_max`).
const SOCKET_RECV_QUEUE: usize = 4 << 20;

/// Binds a tokio UDP socket at `addr`. A wildcard IPv6 address also accepts IPv4 (dual
/// stack), whatever the system default. Must be called inside a tokio runtime.
pub fn bind(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let SocketAddr::V6(v6) = addr
        && v6.ip().is_unspecified()
    {
        socket.set_only_v6(false)?;
    }
    // Best effort: a smaller queue still works, it only drops sooner under load.
    if let Err(err) = socket.set_recv_buffer_size(SOCKET_RECV_QUEUE) {
        tracing::debug!(error = %err, "could not enlarge the receive queue");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// Receive errors that say nothing about the socket itself: ICMP errors about an earlier
/// datagram (reported by some systems on the next receive) and interruptions.
pub(crate) fn is_transient(err: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        err.kind(),
        ConnectionRefused | ConnectionReset | Interrupted | WouldBlock
    )
}
