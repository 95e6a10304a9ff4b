//! The echo server: the course's `recvfrom` / `sendto` loop on tokio.
//!
//! One task owns the socket and answers each datagram before reading the next. UDP keeps no
//! per-client state, so many clients at once are just datagrams from many addresses; the
//! socket's receive buffer (enlarged in [`crate::bind`]) absorbs bursts.

use std::future::Future;
use std::io;
use std::time::Duration;

use thiserror::Error;
use tokio::net::UdpSocket;

/// How the server answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerConfig {
    /// Upper-case ASCII letters in the reply, as the course's server does; other bytes pass
    /// through unchanged (the course decoded UTF-8 first, which fails on arbitrary bytes).
    pub upper: bool,
}

/// Counters reported when the server stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub datagrams: u64,
    pub bytes: u64,
    /// Replies the kernel refused to send (the datagram is still counted above).
    pub send_errors: u64,
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("receiving failed {count} times in a row")]
    Receive {
        count: u32,
        #[source]
        source: io::Error,
    },
}

/// Consecutive non-transient receive errors tolerated before giving up: a broken socket
/// should stop the server rather than spin.
const MAX_RECEIVE_ERRORS: u32 = 100;

/// Answers every datagram on `socket` to its sender until `shutdown` completes.
pub async fn run<S>(
    socket: UdpSocket,
    config: ServerConfig,
    shutdown: S,
) -> Result<ServerStats, ServeError>
where
    S: Future<Output = ()>,
{
    let mut stats = ServerStats::default();
    let mut buf = vec![0u8; crate::RECV_BUFFER];
    let mut failures = 0;
    tokio::pin!(shutdown);
    loop {
        let (len, peer) = tokio::select! {
            // Checked first so a flood of datagrams cannot delay shutdown.
            biased;
            () = &mut shutdown => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok(got) => got,
                Err(err) if crate::is_transient(&err) => {
                    tracing::debug!(error = %err, "ignored receive error");
                    continue;
                }
                Err(err) => {
                    failures += 1;
                    if failures >= MAX_RECEIVE_ERRORS {
                        return Err(ServeError::Receive { count: failures, source: err });
                    }
                    tracing::warn!(error = %err, "receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        failures = 0;
        let reply = &mut buf[..len];
        if config.upper {
            reply.make_ascii_uppercase();
        }
        stats.datagrams += 1;
        stats.bytes += len as u64;
        match socket.send_to(reply, peer).await {
            Ok(_) => tracing::debug!(%peer, len, upper = config.upper, "echoed datagram"),
            Err(err) => {
                stats.send_errors += 1;
                tracing::warn!(%peer, len, error = %err, "reply failed");
            }
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start(
        upper: bool,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<ServerStats, ServeError>>,
    ) {
        let socket = crate::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(socket, ServerConfig { upper }, async {
            let _ = stopped.await;
        }));
        (addr, stop, task)
    }

    #[tokio::test]
    async fn echoes_unchanged_or_upper_cased_and_counts() {
        for (upper, expected) in [
            (false, &b"Hi \xff there"[..]),
            (true, &b"HI \xff THERE"[..]),
        ] {
            let (addr, stop, task) = start(upper).await;
            let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            client.send_to(b"Hi \xff there", addr).await.unwrap();
            let mut buf = [0u8; 64];
            let (len, from) =
                tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
            assert_eq!((&buf[..len], from), (expected, addr));
            stop.send(()).unwrap();
            let stats = task.await.unwrap().unwrap();
            assert_eq!((stats.datagrams, stats.bytes), (1, 10));
        }
    }

    #[tokio::test]
    async fn empty_datagrams_get_empty_replies() {
        let (addr, stop, task) = start(true).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"", addr).await.unwrap();
        let mut buf = [0u8; 8];
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(len, 0);
        drop(stop);
        assert_eq!(task.await.unwrap().unwrap().datagrams, 1);
    }
}
