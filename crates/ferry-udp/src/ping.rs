//! The ping engine: sends sequence-numbered probes on a schedule, classifies everything that
//! arrives, and records an event log for [`crate::stats::summarize`].
//!
//! The socket is not connected, so datagrams from anyone reach the engine; they are sorted by
//! [`classify`] (pure) into our replies, foreign probes and malformed datagrams, and the last
//! two are counted and otherwise ignored.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::time::{Instant, MissedTickBehavior};

use crate::probe::{self, DecodeError, Probe, SizeError};
use crate::stats::{self, Event, Summary};

/// What one run does.
#[derive(Debug, Clone)]
pub struct PingConfig {
    pub count: u64,
    /// Time between probe sends; zero sends back to back.
    pub interval: Duration,
    /// Datagram size of every probe, header included.
    pub size: usize,
    /// How long a probe may wait for its echo; also how long the run waits after the last send.
    pub timeout: Duration,
    /// Random per run, so echoes of another run's probes are recognised as foreign.
    pub session: u64,
}

impl PingConfig {
    /// A configuration with a fresh random session id.
    pub fn new(count: u64, interval: Duration, size: usize, timeout: Duration) -> Self {
        Self {
            count,
            interval,
            size,
            timeout,
            session: rand::random(),
        }
    }
}

/// How an arriving datagram was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// A valid echo of our probe `seq`.
    Reply {
        seq: u64,
    },
    /// A well-formed probe of another run.
    Foreign {
        session: u64,
    },
    Malformed(Malformed),
}

/// Why a datagram is not a valid echo of one of our probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Malformed {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("echo of probe {0}, which was never sent")]
    UnknownSequence(u64),
    #[error("echo of probe {0} carries a send time we did not write")]
    TimestampMismatch(u64),
    #[error("echo of probe {seq} is {len} bytes, we sent {sent}")]
    WrongSize { seq: u64, len: usize, sent: usize },
}

impl Malformed {
    pub fn is_upper_cased(&self) -> bool {
        matches!(self, Malformed::Decode(DecodeError::UpperCased))
    }
}

/// Sorts one datagram. `sent_ns[i]` is the send time written into probe `i + 1`.
pub fn classify(datagram: &[u8], session: u64, size: usize, sent_ns: &[u64]) -> Incoming {
    let probe = match probe::decode(datagram) {
        Ok(probe) => probe,
        Err(err) => return Incoming::Malformed(err.into()),
    };
    if probe.session != session {
        return Incoming::Foreign {
            session: probe.session,
        };
    }
    let Some(&written) = usize::try_from(probe.seq)
        .ok()
        .and_then(|seq| seq.checked_sub(1))
        .and_then(|i| sent_ns.get(i))
    else {
        return Incoming::Malformed(Malformed::UnknownSequence(probe.seq));
    };
    if written != probe.sent_ns {
        return Incoming::Malformed(Malformed::TimestampMismatch(probe.seq));
    }
    if datagram.len() != size {
        return Incoming::Malformed(Malformed::WrongSize {
            seq: probe.seq,
            len: datagram.len(),
            sent: size,
        });
    }
    Incoming::Reply { seq: probe.seq }
}

/// What the engine reports as it goes, for live output.
#[derive(Debug)]
pub enum Observation<'a> {
    Sent {
        seq: u64,
    },
    Reply {
        seq: u64,
        from: SocketAddr,
        len: usize,
        rtt: Duration,
        /// Another copy of an echo already seen.
        duplicate: bool,
        /// Arrived after the timeout: counted as lost.
        late: bool,
    },
    Foreign {
        from: SocketAddr,
        len: usize,
        session: u64,
    },
    Malformed {
        from: SocketAddr,
        len: usize,
        why: &'a Malformed,
    },
}

/// The record of one run.
#[derive(Debug, Clone)]
pub struct PingOutcome {
    pub events: Vec<Event>,
    /// When the run stopped, from its start.
    pub end: Duration,
    /// The stop signal ended the run before its schedule did.
    pub interrupted: bool,
}

impl PingOutcome {
    pub fn summary(&self, timeout: Duration) -> Summary {
        stats::summarize(&self.events, timeout, self.end)
    }
}

#[derive(Debug, Error)]
pub enum PingError {
    #[error(transparent)]
    Size(#[from] SizeError),
    #[error("receiving on the ping socket failed")]
    Receive(#[source] io::Error),
}

/// Runs one ping: `config.count` probes to `target`, then waits for outstanding echoes until
/// every probe is answered or `config.timeout` has passed since the last send. Completing
/// `stop` ends the run early (the log so far is returned).
pub async fn run<S, F>(
    socket: &UdpSocket,
    target: SocketAddr,
    config: &PingConfig,
    stop: S,
    mut observe: F,
) -> Result<PingOutcome, PingError>
where
    S: Future<Output = ()>,
    F: FnMut(Observation<'_>),
{
    // Also refuses a bad size before anything is sent.
    let mut encoder = probe::Encoder::new(config.size)?;
    let start = Instant::now();
    let mut events = Vec::new();
    let mut sent_ns: Vec<u64> = Vec::new();
    let mut answered: Vec<bool> = Vec::new();
    let mut unanswered: u64 = 0;
    let mut ticker = (!config.interval.is_zero()).then(|| {
        let mut t = tokio::time::interval(config.interval);
        // After a stall, keep the spacing rather than firing a burst to catch up.
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    });
    // Datagrams bigger than any probe still arrive whole, so they are judged, not truncated.
    let mut buf = vec![0u8; crate::RECV_BUFFER];
    let mut deadline = None;
    let mut interrupted = false;
    tokio::pin!(stop);

    loop {
        let all_sent = sent_ns.len() as u64 >= config.count;
        if all_sent && unanswered == 0 {
            break;
        }
        // A deadline far away stands in while sending; the branch is disabled anyway.
        let wait_until = deadline.unwrap_or_else(|| start + Duration::from_secs(86_400 * 365));
        tokio::select! {
            biased;
            () = &mut stop => {
                interrupted = true;
                break;
            }
            // Sending comes before receiving so probes leave on schedule even while datagrams
            // keep arriving (a flood of junk cannot stall the run).
            () = next_tick(&mut ticker), if !all_sent => {
                let seq = sent_ns.len() as u64 + 1;
                // Nanoseconds since start fit u64 for 584 years. Taken right before encoding,
                // which costs the same tiny time whatever the size (see `Encoder`).
                let ns = start.elapsed().as_nanos() as u64;
                let datagram = encoder.encode(&Probe { session: config.session, seq, sent_ns: ns });
                sent_ns.push(ns);
                answered.push(false);
                unanswered += 1;
                events.push(Event::Sent { seq, at: Duration::from_nanos(ns) });
                // A failed send is an unanswered probe: reported as lost, like ping does.
                if let Err(err) = socket.send_to(datagram, target).await {
                    tracing::warn!(seq, error = %err, "sending probe failed");
                }
                observe(Observation::Sent { seq });
                if seq >= config.count {
                    deadline = Some(Instant::now() + config.timeout);
                }
            }
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, from)) => {
                    let at = start.elapsed();
                    let datagram = &buf[..len];
                    match classify(datagram, config.session, config.size, &sent_ns) {
                        Incoming::Reply { seq } => {
                            let i = (seq - 1) as usize;
                            let rtt = at.saturating_sub(Duration::from_nanos(sent_ns[i]));
                            let duplicate = std::mem::replace(&mut answered[i], true);
                            if !duplicate {
                                unanswered -= 1;
                            }
                            events.push(Event::Reply { seq, at });
                            observe(Observation::Reply {
                                seq,
                                from,
                                len,
                                rtt,
                                duplicate,
                                late: rtt > config.timeout,
                            });
                        }
                        Incoming::Foreign { session } => {
                            events.push(Event::Foreign);
                            observe(Observation::Foreign { from, len, session });
                        }
                        Incoming::Malformed(why) => {
                            events.push(Event::Malformed {
                                upper_cased: why.is_upper_cased(),
                            });
                            observe(Observation::Malformed { from, len, why: &why });
                        }
                    }
                }
                // ICMP errors from earlier sends surface here on some systems; the probe is
                // simply unanswered.
                Err(err) if crate::is_transient(&err) => {
                    tracing::debug!(error = %err, "ignored receive error");
                }
                Err(err) => return Err(PingError::Receive(err)),
            },
            () = tokio::time::sleep_until(wait_until), if deadline.is_some() => break,
        }
    }
    Ok(PingOutcome {
        events,
        end: start.elapsed(),
        interrupted,
    })
}

async fn next_tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        // Back to back, but `yield_now` is pending on its first poll, so the receive branch
        // gets a turn between sends.
        None => tokio::task::yield_now().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: u64 = 42;

    fn probe_bytes(session: u64, seq: u64, sent_ns: u64, size: usize) -> Vec<u8> {
        probe::encode(
            &Probe {
                session,
                seq,
                sent_ns,
            },
            size,
        )
        .unwrap()
    }

    #[test]
    fn classify_sorts_every_kind() {
        let sent = [100, 200];
        let ok = probe_bytes(SESSION, 2, 200, 64);
        assert_eq!(
            classify(&ok, SESSION, 64, &sent),
            Incoming::Reply { seq: 2 }
        );
        assert_eq!(
            classify(&probe_bytes(7, 2, 200, 64), SESSION, 64, &sent),
            Incoming::Foreign { session: 7 }
        );
        assert_eq!(
            classify(&probe_bytes(SESSION, 3, 200, 64), SESSION, 64, &sent),
            Incoming::Malformed(Malformed::UnknownSequence(3))
        );
        assert_eq!(
            classify(&probe_bytes(SESSION, 0, 200, 64), SESSION, 64, &sent),
            Incoming::Malformed(Malformed::UnknownSequence(0))
        );
        assert_eq!(
            classify(&probe_bytes(SESSION, u64::MAX, 200, 64), SESSION, 64, &sent),
            Incoming::Malformed(Malformed::UnknownSequence(u64::MAX))
        );
        assert_eq!(
            classify(&probe_bytes(SESSION, 1, 200, 64), SESSION, 64, &sent),
            Incoming::Malformed(Malformed::TimestampMismatch(1))
        );
        assert_eq!(
            classify(&probe_bytes(SESSION, 1, 100, 65), SESSION, 64, &sent),
            Incoming::Malformed(Malformed::WrongSize {
                seq: 1,
                len: 65,
                sent: 64
            })
        );
        let mut upper = ok.clone();
        upper.make_ascii_uppercase();
        let got = classify(&upper, SESSION, 64, &sent);
        assert!(matches!(got, Incoming::Malformed(m) if m.is_upper_cased()));
        assert!(matches!(
            classify(b"hello", SESSION, 64, &sent),
            Incoming::Malformed(Malformed::Decode(DecodeError::Truncated { len: 5 }))
        ));
    }

    async fn echo_once_each(socket: UdpSocket, copies: usize) {
        let mut buf = vec![0u8; crate::RECV_BUFFER];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            for _ in 0..copies {
                let _ = socket.send_to(&buf[..len], from).await;
            }
        }
    }

    #[tokio::test]
    async fn pings_an_echo_over_loopback() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let target = server.local_addr().unwrap();
        let echo = tokio::spawn(echo_once_each(server, 2));
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let config = PingConfig::new(5, Duration::from_millis(5), 100, Duration::from_secs(2));
        let mut seen = 0;
        let outcome = run(&socket, target, &config, std::future::pending(), |o| {
            if matches!(o, Observation::Reply { .. }) {
                seen += 1;
            }
        })
        .await
        .unwrap();
        echo.abort();
        let s = outcome.summary(config.timeout);
        assert!(!outcome.interrupted);
        assert_eq!((s.sent, s.received, s.lost), (5, 5, 0));
        // The run ends once every probe is answered, so the last probe's second copy may
        // arrive after it; all earlier ones are counted.
        assert!((4..=5).contains(&s.duplicates), "{s:?}");
        assert!(seen >= 9);
    }

    #[tokio::test]
    async fn stop_ends_the_run_with_the_log_so_far() {
        // Nobody answers: without the stop the run would take 100 s.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let config = PingConfig::new(1000, Duration::from_millis(100), 64, Duration::from_secs(1));
        let stop = tokio::time::sleep(Duration::from_millis(350));
        let outcome = run(&socket, silent.local_addr().unwrap(), &config, stop, |_| {})
            .await
            .unwrap();
        assert!(outcome.interrupted);
        let s = outcome.summary(config.timeout);
        assert!((3..=5).contains(&s.sent), "{s:?}");
        assert_eq!((s.received, s.lost, s.pending), (0, 0, s.sent));
    }

    #[tokio::test]
    async fn refuses_a_probe_size_below_the_header() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let config = PingConfig::new(1, Duration::ZERO, 8, Duration::from_secs(1));
        let target = socket.local_addr().unwrap();
        let err = run(&socket, target, &config, std::future::pending(), |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, PingError::Size(SizeError { size: 8 })));
    }
}
