//! The send client: one datagram out, one reply back, with a timeout and retries.
//!
//! Blocking std sockets on purpose: the client does one thing at a time, reading lines from
//! stdin between requests, and needs no runtime.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::MAX_DATAGRAM;

/// How patient the client is.
#[derive(Debug, Clone, Copy)]
pub struct SendConfig {
    /// How long each attempt waits for the reply.
    pub timeout: Duration,
    /// Extra attempts after the first one gets no reply.
    pub retries: u32,
}

#[derive(Debug, Error)]
pub enum SendError {
    #[error("message of {len} bytes exceeds the largest UDP datagram ({MAX_DATAGRAM} bytes)")]
    TooLarge { len: usize },
    #[error(
        "no reply from {peer} after {attempts} attempt(s) of {} ms each{}",
        timeout.as_millis(),
        if *refused { " (the host reports the port closed: is the server running?)" } else { "" }
    )]
    NoReply {
        peer: SocketAddr,
        attempts: u32,
        timeout: Duration,
        /// An ICMP port-unreachable came back: nothing listens at `peer`.
        refused: bool,
    },
    #[error("UDP socket error with {peer}")]
    Io {
        peer: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// A UDP socket connected to one server, so only its datagrams (and ICMP errors about it)
/// are received.
#[derive(Debug)]
pub struct Client {
    socket: UdpSocket,
    peer: SocketAddr,
    config: SendConfig,
}

impl Client {
    /// Binds an ephemeral port of `peer`'s family and connects to `peer`.
    pub fn connect(peer: SocketAddr, config: SendConfig) -> Result<Self, SendError> {
        let local: SocketAddr = match peer {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let io_err = |source| SendError::Io { peer, source };
        let socket = UdpSocket::bind(local).map_err(io_err)?;
        socket.connect(peer).map_err(io_err)?;
        Ok(Self {
            socket,
            peer,
            config,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Sends `message` and returns the first datagram that comes back, resending up to
    /// `retries` times when an attempt's timeout passes in silence.
    pub fn request(&self, message: &[u8]) -> Result<Vec<u8>, SendError> {
        if message.len() > MAX_DATAGRAM {
            return Err(SendError::TooLarge { len: message.len() });
        }
        let io_err = |source| SendError::Io {
            peer: self.peer,
            source,
        };
        // A reply to an earlier retry may still be queued; it must not answer this message.
        self.drain().map_err(io_err)?;
        let mut buf = vec![0u8; crate::RECV_BUFFER];
        let mut refused = false;
        let attempts = self.config.retries.saturating_add(1);
        for attempt in 1..=attempts {
            match self.socket.send(message) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                    refused = true;
                    continue;
                }
                Err(err) => return Err(io_err(err)),
            }
            let deadline = Instant::now() + self.config.timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                self.socket.set_read_timeout(Some(left)).map_err(io_err)?;
                match self.socket.recv(&mut buf) {
                    Ok(len) => return Ok(buf[..len].to_vec()),
                    Err(err) => match err.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => break,
                        io::ErrorKind::Interrupted => {}
                        // Nothing listens there now; maybe on the next attempt.
                        io::ErrorKind::ConnectionRefused => {
                            refused = true;
                            break;
                        }
                        _ => return Err(io_err(err)),
                    },
                }
            }
            tracing::debug!(attempt, attempts, peer = %self.peer, "no reply");
        }
        Err(SendError::NoReply {
            peer: self.peer,
            attempts,
            timeout: self.config.timeout,
            refused,
        })
    }

    /// Discards whatever is already queued on the socket, including pending ICMP errors.
    fn drain(&self) -> io::Result<()> {
        self.socket.set_nonblocking(true)?;
        let mut buf = [0u8; 1];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(_) => continue,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if crate::is_transient(&err) => continue,
                Err(err) => {
                    self.socket.set_nonblocking(false)?;
                    return Err(err);
                }
            }
        }
        self.socket.set_nonblocking(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: SendConfig = SendConfig {
        timeout: Duration::from_millis(200),
        retries: 1,
    };

    #[test]
    fn gets_the_reply_after_a_lost_first_attempt() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let addr = server.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            // Ignore the first attempt, answer the retry.
            let _ = server.recv_from(&mut buf).unwrap();
            let (len, from) = server.recv_from(&mut buf).unwrap();
            server
                .send_to(&buf[..len].to_ascii_uppercase(), from)
                .unwrap();
        });
        let client = Client::connect(addr, QUICK).unwrap();
        assert_eq!(client.request(b"hello").unwrap(), b"HELLO");
        echo.join().unwrap();
    }

    #[test]
    fn stale_replies_are_drained_before_the_next_request() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let client = Client::connect(server.local_addr().unwrap(), QUICK).unwrap();
        let client_addr = client.local_addr().unwrap();
        server.send_to(b"stale", client_addr).unwrap();
        // Let the stale datagram land in the client's queue.
        std::thread::sleep(Duration::from_millis(50));
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let (len, from) = server.recv_from(&mut buf).unwrap();
            server.send_to(&buf[..len], from).unwrap();
        });
        assert_eq!(client.request(b"fresh").unwrap(), b"fresh");
        echo.join().unwrap();
    }

    #[test]
    fn silence_is_a_no_reply_error_after_all_attempts() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = Client::connect(silent.local_addr().unwrap(), QUICK).unwrap();
        let started = Instant::now();
        let err = client.request(b"anyone?").unwrap_err();
        assert!(
            matches!(
                err,
                SendError::NoReply {
                    attempts: 2,
                    refused: false,
                    ..
                }
            ),
            "{err}"
        );
        assert!(started.elapsed() >= Duration::from_millis(400));
        assert!(err.to_string().contains("2 attempt(s) of 200 ms"), "{err}");
    }

    #[test]
    fn a_closed_port_is_reported_as_such() {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // The socket above is closed now, so the kernel answers port-unreachable.
        let client = Client::connect(port, QUICK).unwrap();
        let err = client.request(b"anyone?").unwrap_err();
        assert!(
            matches!(err, SendError::NoReply { refused: true, .. }),
            "{err}"
        );
    }

    #[test]
    fn oversize_messages_are_refused_before_sending() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = Client::connect(silent.local_addr().unwrap(), QUICK).unwrap();
        let err = client.request(&vec![0; MAX_DATAGRAM + 1]).unwrap_err();
        assert!(matches!(err, SendError::TooLarge { len } if len == MAX_DATAGRAM + 1));
    }
}
