//! Login protections: failed logins slow down further attempts, per source address and per
//! user name, with delays that grow and a lockout that ends by itself; and a cap on the
//! sessions one user may hold open at once.
//!
//! Both keys matter: per address stops one machine guessing many passwords; per user stops
//! many machines guessing one user's. The per-user side only ever delays and locks for a while,
//! so an attacker can slow a victim's logins down but never lock them out for good.
//!
//! Time is passed in, so the policy is tested without sleeping.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How hard to push back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Failures answered with only the base delay.
    pub free_failures: u32,
    /// Delay after each failure up to `free_failures`; doubles with each failure after.
    pub base_delay: Duration,
    /// The delay never grows past this.
    pub max_delay: Duration,
    /// This many failures in a row lock the key.
    pub lockout_after: u32,
    /// For this long.
    pub lockout: Duration,
    /// A key with no failure for this long starts over.
    pub forget_after: Duration,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        ThrottlePolicy {
            free_failures: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            lockout_after: 10,
            lockout: Duration::from_secs(300),
            forget_after: Duration::from_secs(900),
        }
    }
}

impl ThrottlePolicy {
    fn delay_after(&self, failures: u32) -> Duration {
        let extra = failures.saturating_sub(self.free_failures).min(20);
        self.base_delay
            .saturating_mul(1u32 << extra)
            .min(self.max_delay)
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Failure records for one kind of key, bounded in size.
#[derive(Debug)]
struct Book<K> {
    records: HashMap<K, Record>,
}

/// Records kept per kind of key at most: past this, the oldest are forgotten first, so a flood
/// of made-up user names cannot grow memory without bound.
const MAX_RECORDS: usize = 100_000;

impl<K: Hash + Eq + Clone> Book<K> {
    fn new() -> Self {
        Book {
            records: HashMap::new(),
        }
    }

    fn locked(&mut self, key: &K, now: Instant, policy: &ThrottlePolicy) -> Option<Duration> {
        let rec = self.records.get_mut(key)?;
        if now.duration_since(rec.last) >= policy.forget_after {
            self.records.remove(key);
            return None;
        }
        match rec.locked_until {
            Some(until) if until > now => Some(until - now),
            Some(_) => {
                // The lockout is over: start counting afresh, but from the threshold's edge,
                // so the next failure is slow again rather than free.
                rec.locked_until = None;
                rec.failures = policy.free_failures;
                None
            }
            None => None,
        }
    }

    fn fail(&mut self, key: &K, now: Instant, policy: &ThrottlePolicy) -> Duration {
        if self.records.len() >= MAX_RECORDS && !self.records.contains_key(key) {
            self.prune(now, policy);
        }
        let rec = self.records.entry(key.clone()).or_insert(Record {
            failures: 0,
            last: now,
            locked_until: None,
        });
        if now.duration_since(rec.last) >= policy.forget_after {
            rec.failures = 0;
        }
        rec.failures += 1;
        rec.last = now;
        if rec.failures >= policy.lockout_after {
            rec.locked_until = Some(now + policy.lockout);
        }
        policy.delay_after(rec.failures)
    }

    fn succeed(&mut self, key: &K) {
        self.records.remove(key);
    }

    fn prune(&mut self, now: Instant, policy: &ThrottlePolicy) {
        self.records
            .retain(|_, r| now.duration_since(r.last) < policy.forget_after);
        if self.records.len() >= MAX_RECORDS {
            let mut ages: Vec<Instant> = self.records.values().map(|r| r.last).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            self.records.retain(|_, r| r.last > cutoff);
        }
    }
}

/// What the throttle says before a password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Locked out for this much longer; do not even check the password.
    Locked(Duration),
}

#[derive(Debug)]
pub struct LoginThrottle {
    policy: ThrottlePolicy,
    by_addr: Mutex<Book<IpAddr>>,
    by_user: Mutex<Book<String>>,
}

impl LoginThrottle {
    pub fn new(policy: ThrottlePolicy) -> Self {
        LoginThrottle {
            policy,
            by_addr: Mutex::new(Book::new()),
            by_user: Mutex::new(Book::new()),
        }
    }

    pub fn check(&self, addr: IpAddr, user: &str, now: Instant) -> Verdict {
        let a = self
            .by_addr
            .lock()
            .expect("throttle lock")
            .locked(&addr, now, &self.policy);
        let u =
            self.by_user
                .lock()
                .expect("throttle lock")
                .locked(&user.to_owned(), now, &self.policy);
        match a.max(u) {
            Some(left) => Verdict::Locked(left),
            None => Verdict::Allow,
        }
    }

    /// Records a failure; returns how long to wait before answering.
    pub fn failed(&self, addr: IpAddr, user: &str, now: Instant) -> Duration {
        let a = self
            .by_addr
            .lock()
            .expect("throttle lock")
            .fail(&addr, now, &self.policy);
        let u =
            self.by_user
                .lock()
                .expect("throttle lock")
                .fail(&user.to_owned(), now, &self.policy);
        a.max(u)
    }

    pub fn succeeded(&self, addr: IpAddr, user: &str) {
        self.by_addr.lock().expect("throttle lock").succeed(&addr);
        self.by_user
            .lock()
            .expect("throttle lock")
            .succeed(&user.to_owned());
    }
}

/// Open sessions per user, capped.
#[derive(Debug, Default)]
pub struct SessionCount {
    open: Mutex<HashMap<String, usize>>,
}

/// One open session of a user; the count goes down when it is dropped.
#[derive(Debug)]
pub struct SessionSlot {
    counts: std::sync::Arc<SessionCount>,
    user: String,
}

impl SessionCount {
    /// Takes a slot for `user`, or says how many are open when `max` are already taken.
    pub fn take(
        counts: &std::sync::Arc<SessionCount>,
        user: &str,
        max: usize,
    ) -> Result<SessionSlot, usize> {
        let mut open = counts.open.lock().expect("session count lock");
        let n = open.entry(user.to_owned()).or_insert(0);
        if *n >= max {
            return Err(*n);
        }
        *n += 1;
        Ok(SessionSlot {
            counts: std::sync::Arc::clone(counts),
            user: user.to_owned(),
        })
    }

    pub fn open(&self, user: &str) -> usize {
        self.open
            .lock()
            .expect("session count lock")
            .get(user)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().expect("session count lock");
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ThrottlePolicy {
        ThrottlePolicy {
            free_failures: 2,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            lockout_after: 6,
            lockout: Duration::from_secs(60),
            forget_after: Duration::from_secs(600),
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn delays_grow_then_cap() {
        let t = LoginThrottle::new(policy());
        let now = Instant::now();
        let delays: Vec<u64> = (0..5)
            .map(|_| t.failed(ip(1), "alice", now).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 100, 200, 400, 800]);
        assert_eq!(t.failed(ip(1), "alice", now), Duration::from_millis(1000));
    }

    #[test]
    fn lockout_ends_by_itself_and_success_clears() {
        let t = LoginThrottle::new(policy());
        let now = Instant::now();
        for _ in 0..6 {
            t.failed(ip(1), "alice", now);
        }
        assert_eq!(
            t.check(ip(1), "alice", now + Duration::from_secs(10)),
            Verdict::Locked(Duration::from_secs(50))
        );
        // Another address guessing the same user is locked too (per-user record).
        assert!(matches!(
            t.check(ip(2), "alice", now + Duration::from_secs(10)),
            Verdict::Locked(_)
        ));
        // But not for other users.
        assert_eq!(t.check(ip(2), "bob", now), Verdict::Allow);
        let later = now + Duration::from_secs(61);
        assert_eq!(t.check(ip(1), "alice", later), Verdict::Allow);
        // After a lockout the next failure is slow at once.
        assert_eq!(t.failed(ip(1), "alice", later), Duration::from_millis(200));
        t.succeeded(ip(1), "alice");
        assert_eq!(t.failed(ip(1), "alice", later), Duration::from_millis(100));
    }

    #[test]
    fn old_failures_are_forgotten() {
        let t = LoginThrottle::new(policy());
        let now = Instant::now();
        for _ in 0..5 {
            t.failed(ip(1), "alice", now);
        }
        let much_later = now + Duration::from_secs(601);
        assert_eq!(t.check(ip(1), "alice", much_later), Verdict::Allow);
        assert_eq!(
            t.failed(ip(1), "alice", much_later),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn session_slots_are_capped_and_released() {
        let counts = std::sync::Arc::new(SessionCount::default());
        let a = SessionCount::take(&counts, "alice", 2).unwrap();
        let _b = SessionCount::take(&counts, "alice", 2).unwrap();
        assert_eq!(SessionCount::take(&counts, "alice", 2).unwrap_err(), 2);
        let _bob = SessionCount::take(&counts, "bob", 2).unwrap();
        drop(a);
        assert_eq!(counts.open("alice"), 1);
        assert!(SessionCount::take(&counts, "alice", 2).is_ok());
    }

    #[test]
    fn the_record_book_stays_bounded() {
        let mut book: Book<String> = Book::new();
        let p = policy();
        let now = Instant::now();
        for i in 0..(MAX_RECORDS + 10) {
            let t = now + Duration::from_millis(i as u64 / 1000);
            book.fail(&format!("user{i}"), t, &p);
        }
        assert!(book.records.len() <= MAX_RECORDS);
    }
}
