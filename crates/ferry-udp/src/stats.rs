//! Ping statistics as a pure function of what happened, so every definition is unit-tested
//! without sockets or clocks. `docs/UDP.md` states the same definitions for users.
//!
//! The engine ([`crate::ping`]) records [`Event`]s in the order it observes them, with times
//! measured from the start of the run; [`summarize`] turns that log into a [`Summary`].

use std::collections::HashMap;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// One thing the ping engine observed, in observation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Probe `seq` was sent `at` after the run started.
    Sent { seq: u64, at: Duration },
    /// A valid echo of our probe `seq` arrived `at` after the run started.
    Reply { seq: u64, at: Duration },
    /// A well-formed probe carrying another run's session id.
    Foreign,
    /// A datagram that is not a valid echo of one of our probes.
    Malformed {
        /// The echo was our probe upper-cased: the server runs with `--upper`.
        upper_cased: bool,
    },
}

/// Counters and RTT statistics of one run. See `docs/UDP.md` for the definitions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub sent: u64,
    /// Probes whose first valid echo came back within the timeout.
    pub received: u64,
    /// Probes with no echo within the timeout whose timeout has expired (includes `late`).
    pub lost: u64,
    /// Probes still inside their timeout when the run ended (only after an interruption).
    pub pending: u64,
    /// `lost / (sent - pending) * 100`, 0 when nothing was decided.
    pub loss_percent: f64,
    /// Extra copies of an echo already seen.
    pub duplicates: u64,
    /// Received echoes whose sequence number is lower than one received before them.
    pub reordered: u64,
    /// First echoes that arrived after the timeout; counted as lost, not received.
    pub late: u64,
    pub foreign: u64,
    pub malformed: u64,
    /// How many of `malformed` were our probes upper-cased by the server.
    pub upper_cased: u64,
    /// `None` when nothing was received.
    pub rtt: Option<RttStats>,
}

/// Round-trip times over received probes (first copies within the timeout), serialized in
/// milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RttStats {
    #[serde(rename = "min_ms", serialize_with = "millis")]
    pub min: Duration,
    #[serde(rename = "avg_ms", serialize_with = "millis")]
    pub avg: Duration,
    #[serde(rename = "max_ms", serialize_with = "millis")]
    pub max: Duration,
    /// Nearest-rank median.
    #[serde(rename = "p50_ms", serialize_with = "millis")]
    pub p50: Duration,
    /// Nearest-rank 99th percentile.
    #[serde(rename = "p99_ms", serialize_with = "millis")]
    pub p99: Duration,
    /// Mean of |RTT(i) − RTT(i−1)| over consecutive received probes in arrival order: the
    /// RFC 3550 difference D(i−1, i), averaged without smoothing.
    #[serde(rename = "jitter_ms", serialize_with = "millis")]
    pub jitter: Duration,
    /// The RFC 3550 §6.4.1 estimator J += (|D| − J) / 16 over the same differences.
    #[serde(rename = "jitter_rfc3550_ms", serialize_with = "millis")]
    pub jitter_rfc3550: Duration,
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(as_millis(*d))
}

/// A duration in fractional milliseconds, for display. Dividing whole nanoseconds keeps
/// values like 1.5 exact, where `as_secs_f64() * 1000.0` would print 1.5000000000000002.
pub fn as_millis(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e6
}

/// Turns an event log into counters and RTT statistics.
///
/// `timeout` is how long a probe may wait for its echo; `end` is when the run stopped, both
/// measured like the events' times. A probe without an echo is lost once `sent + timeout <=
/// end`, and pending before that.
pub fn summarize(events: &[Event], timeout: Duration, end: Duration) -> Summary {
    let mut sent_at: HashMap<u64, Duration> = HashMap::new();
    let mut order: Vec<u64> = Vec::new();
    // Probes whose first echo arrived, on time (`true`) or late (`false`).
    let mut answered: HashMap<u64, bool> = HashMap::new();
    let mut rtts: Vec<Duration> = Vec::new();
    let mut highest_received = 0;
    let mut s = Summary {
        sent: 0,
        received: 0,
        lost: 0,
        pending: 0,
        loss_percent: 0.0,
        duplicates: 0,
        reordered: 0,
        late: 0,
        foreign: 0,
        malformed: 0,
        upper_cased: 0,
        rtt: None,
    };
    for event in events {
        match *event {
            Event::Sent { seq, at } => {
                if sent_at.insert(seq, at).is_none() {
                    order.push(seq);
                }
            }
            Event::Reply { seq, at } => {
                let Some(&sent) = sent_at.get(&seq) else {
                    // An echo of a probe never sent is not one of ours.
                    s.malformed += 1;
                    continue;
                };
                if answered.contains_key(&seq) {
                    s.duplicates += 1;
                    continue;
                }
                let rtt = at.saturating_sub(sent);
                let on_time = rtt <= timeout;
                answered.insert(seq, on_time);
                if !on_time {
                    s.late += 1;
                    continue;
                }
                rtts.push(rtt);
                if seq < highest_received {
                    s.reordered += 1;
                }
                highest_received = highest_received.max(seq);
            }
            Event::Foreign => s.foreign += 1,
            Event::Malformed { upper_cased } => {
                s.malformed += 1;
                s.upper_cased += u64::from(upper_cased);
            }
        }
    }
    s.sent = order.len() as u64;
    s.received = rtts.len() as u64;
    for seq in &order {
        match answered.get(seq) {
            Some(true) => {}
            Some(false) => s.lost += 1,
            None if sent_at[seq] + timeout <= end => s.lost += 1,
            None => s.pending += 1,
        }
    }
    let decided = s.sent - s.pending;
    if decided > 0 {
        s.loss_percent = s.lost as f64 * 100.0 / decided as f64;
    }
    s.rtt = rtt_stats(&rtts);
    s
}

/// RTT statistics over `rtts` in arrival order.
fn rtt_stats(rtts: &[Duration]) -> Option<RttStats> {
    if rtts.is_empty() {
        return None;
    }
    let mut sorted = rtts.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    let total: u128 = sorted.iter().map(Duration::as_nanos).sum();
    let nearest_rank = |percent: usize| sorted[(percent * n).div_ceil(100).max(1) - 1];

    let mut sum_abs_diff: u128 = 0;
    let mut smoothed = 0.0_f64;
    for pair in rtts.windows(2) {
        let diff = pair[1].abs_diff(pair[0]);
        sum_abs_diff += diff.as_nanos();
        smoothed += (diff.as_nanos() as f64 - smoothed) / 16.0;
    }
    let jitter = if n > 1 {
        nanos(sum_abs_diff / (n as u128 - 1))
    } else {
        Duration::ZERO
    };
    Some(RttStats {
        min: sorted[0],
        avg: nanos(total / n as u128),
        max: sorted[n - 1],
        p50: nearest_rank(50),
        p99: nearest_rank(99),
        jitter,
        jitter_rfc3550: Duration::from_nanos(smoothed.round() as u64),
    })
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(1000);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// `n` probes sent 10 ms apart, starting at seq 1 and t = 0.
    fn sends(n: u64) -> Vec<Event> {
        (1..=n)
            .map(|seq| Event::Sent {
                seq,
                at: ms((seq - 1) * 10),
            })
            .collect()
    }

    fn reply(seq: u64, rtt_ms: u64) -> Event {
        Event::Reply {
            seq,
            at: ms((seq - 1) * 10 + rtt_ms),
        }
    }

    #[test]
    fn clean_run() {
        let mut events = sends(4);
        events.extend((1..=4).map(|seq| reply(seq, 2)));
        let s = summarize(&events, TIMEOUT, ms(100));
        assert_eq!((s.sent, s.received, s.lost, s.pending), (4, 4, 0, 0));
        assert_eq!(s.loss_percent, 0.0);
        assert_eq!((s.duplicates, s.reordered, s.late), (0, 0, 0));
        let rtt = s.rtt.unwrap();
        assert_eq!(
            (rtt.min, rtt.avg, rtt.max, rtt.p50, rtt.p99),
            (ms(2), ms(2), ms(2), ms(2), ms(2))
        );
        assert_eq!(rtt.jitter, Duration::ZERO);
    }

    #[test]
    fn the_issue_scenario() {
        // 20 probes; #3 and #7 dropped, #5 duplicated, #10 and #11 swapped.
        let mut events = sends(20);
        for seq in 1..=20u64 {
            match seq {
                3 | 7 | 10 => {}
                5 => events.extend([reply(5, 1), reply(5, 1)]),
                11 => events.extend([
                    reply(11, 1),
                    Event::Reply {
                        seq: 10,
                        at: ms(101 + 5),
                    },
                ]),
                _ => events.push(reply(seq, 1)),
            }
        }
        let s = summarize(&events, TIMEOUT, ms(1200));
        assert_eq!((s.sent, s.received, s.lost, s.pending), (20, 18, 2, 0));
        assert_eq!(s.loss_percent, 10.0);
        assert_eq!((s.duplicates, s.reordered, s.late), (1, 1, 0));
    }

    #[test]
    fn a_long_delay_counts_once_as_reordered() {
        let mut events = sends(5);
        events.extend([
            reply(1, 1),
            reply(3, 1),
            reply(4, 1),
            reply(5, 1),
            reply(2, 50),
        ]);
        let s = summarize(&events, TIMEOUT, ms(2000));
        assert_eq!((s.received, s.reordered), (5, 1));
    }

    #[test]
    fn late_echoes_are_lost_and_their_copies_duplicates() {
        let mut events = sends(2);
        events.extend([reply(1, 1), reply(2, 1500), reply(2, 1600)]);
        let s = summarize(&events, TIMEOUT, ms(2000));
        assert_eq!((s.received, s.lost, s.late, s.duplicates), (1, 1, 1, 1));
        assert_eq!(s.loss_percent, 50.0);
    }

    #[test]
    fn unanswered_probes_inside_their_timeout_are_pending() {
        // Interrupted at t = 500 ms: #1 answered, #2 silent since t = 10 (still within 1 s).
        let mut events = sends(2);
        events.push(reply(1, 1));
        let s = summarize(&events, TIMEOUT, ms(500));
        assert_eq!((s.sent, s.received, s.lost, s.pending), (2, 1, 0, 1));
        assert_eq!(s.loss_percent, 0.0);
        // The same log judged after the timeout: #2 is lost.
        let s = summarize(&events, TIMEOUT, ms(1010));
        assert_eq!((s.lost, s.pending, s.loss_percent), (1, 0, 50.0));
    }

    #[test]
    fn noise_is_counted_apart() {
        let mut events = sends(1);
        events.extend([
            Event::Foreign,
            Event::Malformed { upper_cased: true },
            Event::Malformed { upper_cased: false },
            Event::Reply { seq: 99, at: ms(3) },
            reply(1, 1),
        ]);
        let s = summarize(&events, TIMEOUT, ms(2000));
        assert_eq!((s.foreign, s.malformed, s.upper_cased), (1, 3, 1));
        assert_eq!(s.received, 1);
    }

    #[test]
    fn percentiles_use_nearest_rank_and_jitter_follows_arrival_order() {
        // RTTs 1..=100 ms arriving in order: p50 = 50, p99 = 99, every |D| = 1 ms.
        let mut events = sends(100);
        events.extend((1..=100).map(|seq| reply(seq, seq)));
        let rtt = summarize(&events, TIMEOUT, ms(5000)).rtt.unwrap();
        assert_eq!(
            (rtt.min, rtt.max, rtt.p50, rtt.p99),
            (ms(1), ms(100), ms(50), ms(99))
        );
        assert_eq!(rtt.avg, Duration::from_micros(50_500));
        assert_eq!(rtt.jitter, ms(1));
        // J after 99 steps of |D| = 1 ms from 0: 1 ms × (1 − (15/16)^99).
        let expected = 1e6 * (1.0 - (15.0f64 / 16.0).powi(99));
        assert!((rtt.jitter_rfc3550.as_nanos() as f64 - expected).abs() <= 1.0);
    }

    #[test]
    fn alternating_rtts_give_their_difference_as_jitter() {
        let mut events = sends(4);
        events.extend([reply(1, 2), reply(2, 6), reply(3, 2), reply(4, 6)]);
        let rtt = summarize(&events, TIMEOUT, ms(5000)).rtt.unwrap();
        assert_eq!(rtt.jitter, ms(4));
        assert_eq!((rtt.p50, rtt.p99, rtt.avg), (ms(2), ms(6), ms(4)));
    }

    #[test]
    fn nothing_received_has_no_rtt_and_full_loss() {
        let s = summarize(&sends(3), TIMEOUT, ms(5000));
        assert_eq!((s.lost, s.loss_percent, s.rtt), (3, 100.0, None));
        let empty = summarize(&[], TIMEOUT, ms(0));
        assert_eq!((empty.sent, empty.loss_percent), (0, 0.0));
    }

    #[test]
    fn json_uses_milliseconds() {
        let mut events = sends(1);
        events.push(Event::Reply {
            seq: 1,
            at: Duration::from_micros(1500),
        });
        let json = serde_json::to_value(summarize(&events, TIMEOUT, ms(10))).unwrap();
        assert_eq!(json["rtt"]["min_ms"], 1.5);
        assert_eq!(json["received"], 1);
        assert_eq!(json["loss_percent"], 0.0);
    }
}
