//! Session tokens: a password login may be answered with a token that later logins of the
//! same user present instead of the password, so a run of short CLI commands pays for
//! argon2id once rather than per command.
//!
//! A token is 32 bytes from the OS CSPRNG, sent as 64 lowercase hex digits. The server keeps
//! only its blake3 hash (memory only: a restart forgets every token), with the user's name,
//! a fingerprint of the user's password entry when the token was issued, and two deadlines:
//! an idle one that every use pushes forward (the TTL) and a fixed one, [`MAX_AGE_TTLS`] TTLs
//! after issue, that no use extends. A token is refused when either has passed, when the user
//! is gone, or when their password entry changed (`ferry user passwd`, `del`).
//!
//! The table is bounded: at most [`TokenPolicy::per_user`] tokens per user and
//! [`TokenPolicy::total`] in all. Issuing past either bound first drops expired tokens, then
//! the one used least recently (of that user, or of anyone), so the table never grows past
//! its bound and a client cannot make the server remember more by logging in again.
//!
//! Time is passed in, so the rules are tested without sleeping.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_proto::message::TOKEN_HEX_LEN;

/// A token's fixed lifetime, in TTLs: with the default 1 h TTL, a token used all day long
/// still ends after 12 h and the next command logs in with the password again.
pub const MAX_AGE_TTLS: u32 = 12;

/// How long tokens live and how many are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPolicy {
    /// A token unused for this long expires. Zero disables tokens: none are issued and every
    /// token login is refused.
    pub ttl: Duration,
    /// Tokens kept per user; a new one past this replaces that user's least recently used.
    pub per_user: usize,
    /// Tokens kept in all.
    pub total: usize,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        TokenPolicy {
            ttl: Duration::from_secs(3600),
            per_user: 16,
            total: 10_000,
        }
    }
}

impl TokenPolicy {
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.per_user > 0 && self.total > 0
    }
}

/// What identifies the password entry a token was issued under: the blake3 hash of the PHC
/// string. A new password (new salt, new hash) or a re-added user gives a different one.
pub fn credential_of(phc: &str) -> blake3::Hash {
    blake3::hash(phc.as_bytes())
}

#[derive(Debug, Clone)]
struct Entry {
    /// The token's hash again, compared in constant time after the map lookup found it.
    hash: blake3::Hash,
    user: String,
    credential: blake3::Hash,
    last_used: Instant,
    expires_at_most: Instant,
}

impl Entry {
    fn deadline(&self, ttl: Duration) -> Instant {
        (self.last_used + ttl).min(self.expires_at_most)
    }

    fn live(&self, now: Instant, ttl: Duration) -> bool {
        now < self.deadline(ttl)
    }
}

/// Why a token was refused; the client is told `token_invalid` whatever the reason (the
/// reason goes to the server log only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Disabled,
    Malformed,
    Unknown,
    OtherUser,
    Expired,
    /// The user is gone or their password changed since the token was issued.
    Revoked,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Disabled => "tokens are disabled",
            Refusal::Malformed => "malformed token",
            Refusal::Unknown => "unknown token",
            Refusal::OtherUser => "token of another user",
            Refusal::Expired => "expired token",
            Refusal::Revoked => "token revoked by a password change or user removal",
        }
    }
}

/// The server's tokens, by the hash of the token.
#[derive(Debug)]
pub struct TokenBook {
    policy: TokenPolicy,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

impl TokenBook {
    pub fn new(policy: TokenPolicy) -> Self {
        TokenBook {
            policy,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn policy(&self) -> &TokenPolicy {
        &self.policy
    }

    /// Tokens held now, live or not yet swept.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes a token for `user`, whose password entry is `credential`; `None` when disabled.
    pub fn issue(&self, user: &str, credential: blake3::Hash, now: Instant) -> Option<String> {
        if !self.policy.enabled() {
            return None;
        }
        // rand's thread RNG is a CSPRNG seeded from the OS.
        let secret: [u8; 32] = rand::random();
        let token = hex::encode(secret);
        let hash = blake3::hash(token.as_bytes());
        let ttl = self.policy.ttl;
        let mut entries = self.entries.lock().unwrap();
        let users_tokens = entries.values().filter(|e| e.user == user).count();
        if users_tokens >= self.policy.per_user || entries.len() >= self.policy.total {
            entries.retain(|_, e| e.live(now, ttl));
        }
        while entries.values().filter(|e| e.user == user).count() >= self.policy.per_user {
            evict_least_recent(&mut entries, Some(user));
        }
        while entries.len() >= self.policy.total {
            evict_least_recent(&mut entries, None);
        }
        entries.insert(
            *hash.as_bytes(),
            Entry {
                hash,
                user: user.to_owned(),
                credential,
                last_used: now,
                expires_at_most: now + ttl.saturating_mul(MAX_AGE_TTLS),
            },
        );
        Some(token)
    }

    /// Checks a token presented for `user` and, if it is good, marks it used and returns how
    /// long it now stays valid. `credential` is the user's current password entry (`None`
    /// when there is no such user). A refused token that can never become good again is
    /// forgotten.
    pub fn redeem(
        &self,
        token: &str,
        user: &str,
        credential: Option<blake3::Hash>,
        now: Instant,
    ) -> Result<Duration, Refusal> {
        if !self.policy.enabled() {
            return Err(Refusal::Disabled);
        }
        if !well_formed(token) {
            return Err(Refusal::Malformed);
        }
        let hash = blake3::hash(token.as_bytes());
        let ttl = self.policy.ttl;
        let mut entries = self.entries.lock().unwrap();
        // The lookup is keyed by the hash, so its timing can only tell an attacker about the
        // hash of what they sent, never about a stored token; the equality below is
        // blake3's constant-time one.
        let Some(entry) = entries.get_mut(hash.as_bytes()) else {
            return Err(Refusal::Unknown);
        };
        if entry.hash != hash {
            return Err(Refusal::Unknown);
        }
        if entry.user != user {
            // Left in place: its owner may still use it.
            return Err(Refusal::OtherUser);
        }
        let refusal = if !entry.live(now, ttl) {
            Some(Refusal::Expired)
        } else if credential != Some(entry.credential) {
            Some(Refusal::Revoked)
        } else {
            None
        };
        if let Some(r) = refusal {
            entries.remove(hash.as_bytes());
            return Err(r);
        }
        entry.last_used = now;
        Ok(entry.deadline(ttl).saturating_duration_since(now))
    }

    /// Forgets a token (the client logged out); whether it was known.
    pub fn revoke(&self, token: &str) -> bool {
        self.revoke_hash(&blake3::hash(token.as_bytes()))
    }

    /// [`TokenBook::revoke`] by the token's hash, which is all a session keeps of it.
    pub fn revoke_hash(&self, hash: &blake3::Hash) -> bool {
        self.entries
            .lock()
            .unwrap()
            .remove(hash.as_bytes())
            .is_some()
    }
}

/// Exactly 64 lowercase hex digits: anything else cannot be a token this server issued.
pub fn well_formed(token: &str) -> bool {
    token.len() == TOKEN_HEX_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn evict_least_recent(entries: &mut HashMap<[u8; 32], Entry>, user: Option<&str>) {
    let oldest = entries
        .iter()
        .filter(|(_, e)| user.is_none_or(|u| e.user == u))
        .min_by_key(|(_, e)| e.last_used)
        .map(|(k, _)| *k);
    match oldest {
        Some(k) => {
            entries.remove(&k);
        }
        // Nothing of that user to evict: the caller's loop condition is then false already.
        None => debug_assert!(false, "evicting from an empty set"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(ttl_s: u64, per_user: usize, total: usize) -> TokenBook {
        TokenBook::new(TokenPolicy {
            ttl: Duration::from_secs(ttl_s),
            per_user,
            total,
        })
    }

    #[test]
    fn a_token_works_for_its_user_and_slides() {
        let b = book(100, 4, 100);
        let cred = credential_of("phc-a");
        let t0 = Instant::now();
        let tok = b.issue("alice", cred, t0).unwrap();
        assert!(well_formed(&tok), "{tok}");
        assert_eq!(
            b.redeem(&tok, "alice", Some(cred), t0 + Duration::from_secs(90)),
            Ok(Duration::from_secs(100))
        );
        // Used at 90 s, so still good at 180 s, though issued 180 s ago.
        assert!(
            b.redeem(&tok, "alice", Some(cred), t0 + Duration::from_secs(180))
                .is_ok()
        );
        assert_eq!(
            b.redeem(&tok, "bob", Some(cred), t0 + Duration::from_secs(181)),
            Err(Refusal::OtherUser)
        );
        assert_eq!(
            b.redeem(&tok, "alice", Some(cred), t0 + Duration::from_secs(281)),
            Err(Refusal::Expired)
        );
        assert_eq!(
            b.redeem(&tok, "alice", Some(cred), t0 + Duration::from_secs(282)),
            Err(Refusal::Unknown),
            "an expired token is forgotten"
        );
        assert!(b.is_empty());
    }

    #[test]
    fn the_fixed_lifetime_ends_even_a_busy_token() {
        let b = book(10, 4, 100);
        let cred = credential_of("p");
        let t0 = Instant::now();
        let tok = b.issue("a", cred, t0).unwrap();
        let mut t = t0;
        let end = t0 + Duration::from_secs(10 * MAX_AGE_TTLS as u64);
        while t + Duration::from_secs(9) < end {
            t += Duration::from_secs(9);
            let left = b.redeem(&tok, "a", Some(cred), t).unwrap();
            assert!(left <= Duration::from_secs(10));
        }
        assert_eq!(b.redeem(&tok, "a", Some(cred), end), Err(Refusal::Expired));
    }

    #[test]
    fn a_changed_or_missing_password_entry_revokes() {
        let b = book(100, 4, 100);
        let t0 = Instant::now();
        let tok = b.issue("a", credential_of("old"), t0).unwrap();
        assert_eq!(
            b.redeem(&tok, "a", Some(credential_of("new")), t0),
            Err(Refusal::Revoked)
        );
        assert_eq!(
            b.redeem(&tok, "a", Some(credential_of("old")), t0),
            Err(Refusal::Unknown)
        );
        let tok = b.issue("a", credential_of("old"), t0).unwrap();
        assert_eq!(b.redeem(&tok, "a", None, t0), Err(Refusal::Revoked));
    }

    #[test]
    fn malformed_tokens_are_refused_before_any_lookup() {
        let b = book(100, 4, 100);
        let good = "0".repeat(64);
        assert!(well_formed(&good));
        for bad in [
            String::new(),
            "0".repeat(63),
            "0".repeat(65),
            "A".repeat(64),
            "g".repeat(64),
            format!("{}é", "0".repeat(62)),
            "0".repeat(100_000),
        ] {
            assert!(!well_formed(&bad), "{bad:?}");
            assert_eq!(
                b.redeem(&bad, "a", None, Instant::now()),
                Err(Refusal::Malformed)
            );
        }
        assert_eq!(
            b.redeem(&good, "a", None, Instant::now()),
            Err(Refusal::Unknown)
        );
    }

    #[test]
    fn the_table_is_bounded_per_user_and_in_all() {
        let b = book(100, 3, 5);
        let cred = credential_of("p");
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let a: Vec<String> = (0..5).map(|i| b.issue("a", cred, at(i)).unwrap()).collect();
        assert_eq!(b.len(), 3);
        // The two oldest of a's went; the three newest work.
        assert_eq!(
            b.redeem(&a[0], "a", Some(cred), at(6)),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            b.redeem(&a[1], "a", Some(cred), at(6)),
            Err(Refusal::Unknown)
        );
        for t in &a[2..] {
            b.redeem(t, "a", Some(cred), at(6)).unwrap();
        }
        let others: Vec<String> = (0..4)
            .map(|i| b.issue(&format!("u{i}"), cred, at(10 + i)).unwrap())
            .collect();
        assert_eq!(b.len(), 5);
        // The newest of everyone's survive.
        assert!(b.redeem(&others[3], "u3", Some(cred), at(20)).is_ok());
        assert!(b.redeem(&others[2], "u2", Some(cred), at(20)).is_ok());
        // Expired tokens make room before live ones are evicted.
        let late = b.issue("z", cred, at(500)).unwrap();
        assert_eq!(b.len(), 1);
        assert!(b.redeem(&late, "z", Some(cred), at(501)).is_ok());
    }

    #[test]
    fn disabled_issues_nothing_and_accepts_nothing() {
        let b = book(0, 4, 100);
        assert!(!b.policy().enabled());
        assert_eq!(b.issue("a", credential_of("p"), Instant::now()), None);
        assert_eq!(
            b.redeem(&"0".repeat(64), "a", None, Instant::now()),
            Err(Refusal::Disabled)
        );
    }

    #[test]
    fn tokens_are_distinct_and_revocable() {
        let b = book(100, 100, 100);
        let cred = credential_of("p");
        let now = Instant::now();
        let toks: std::collections::HashSet<String> =
            (0..50).map(|_| b.issue("a", cred, now).unwrap()).collect();
        assert_eq!(toks.len(), 50);
        let one = toks.iter().next().unwrap();
        assert!(b.revoke(one));
        assert!(!b.revoke(one));
        assert_eq!(b.redeem(one, "a", Some(cred), now), Err(Refusal::Unknown));
    }
}
