//! `login`: with a password, checks it (argon2id, on the blocking pool); with a session token
//! ([`crate::tokens`]), checks that instead, which costs a blake3 hash. Either way it then opens
//! the home and the user's usage accountant. Unknown users and wrong passwords get the same
//! answer after about the same time, plus a delay that grows with repeated failures from the
//! same address or for the same user, and a lockout that ends by itself
//! ([`crate::throttle`]). A refused token is answered `token_invalid` at once and counts
//! toward none of that: a token cannot be guessed (256 bits), so refusing one tells an
//! attacker nothing a delay would protect, and a stale token must not lock its owner out.

use std::sync::Arc;
use std::time::Instant;

use ferry_proto::{ErrorCode, Reply};

use super::{OpError, blocking};
use crate::home::{Home, VPath};
use crate::quota;
use crate::session::{Session, User};
use crate::throttle::{SessionCount, Verdict};
use crate::tokens::credential_of;
use crate::users::{
    release_spare_unless_used_since, spare_uses, validate_name, verify_dummy, verify_password,
};

/// How long the argon2 memory stays resident after a password check.
const SPARE_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn run(
    s: &mut Session,
    name: String,
    password: Option<String>,
    token: Option<String>,
) -> Result<Reply, OpError> {
    match (password, token) {
        (Some(password), None) => with_password(s, name, password).await,
        (None, Some(token)) => with_token(s, name, token).await,
        // The decoder already refuses these; kept so the rule holds whoever builds a request.
        _ => Err(OpError::new(
            ErrorCode::BadRequest,
            "login takes either a password or a token",
        )),
    }
}

async fn with_password(s: &mut Session, name: String, password: String) -> Result<Reply, OpError> {
    let addr = s.peer.ip();
    if let Verdict::Locked(left) = s.shared.throttle.check(addr, &name, Instant::now()) {
        tracing::warn!(peer = %s.peer, user = %name, "login refused: locked out after failures");
        // The password is not even checked, so a locked-out guesser learns nothing.
        return Err(OpError::new(
            ErrorCode::AuthFailed,
            format!(
                "too many failed logins; try again in {} s",
                left.as_secs().max(1)
            ),
        ));
    }
    let shared = Arc::clone(&s.shared);
    let n = name.clone();
    // argon2id takes ~19 MiB and real CPU per check: bound how many run at once so a flood
    // of logins cannot exhaust memory or starve the transfers.
    let permit = s
        .shared
        .login_permits
        .acquire()
        .await
        .map_err(|_| OpError::Internal("login semaphore closed".into()))?;
    // The password entry the check passed against, to tie a session token to.
    let credential = blocking(move || {
        let record = validate_name(&n).ok().and_then(|()| shared.users.get(&n));
        Ok(match record {
            Some(r) => verify_password(&password, &r.password).then(|| credential_of(&r.password)),
            None => {
                verify_dummy(&password);
                None
            }
        })
    })
    .await?;
    drop(permit);
    // The argon2 memory stays resident while logins keep coming, and is given back a second
    // after the last one (users.rs `verify_password`).
    let uses = spare_uses();
    tokio::spawn(async move {
        tokio::time::sleep(SPARE_KEPT_FOR).await;
        let _ = tokio::task::spawn_blocking(move || release_spare_unless_used_since(uses)).await;
    });
    let Some(credential) = credential else {
        tracing::info!(peer = %s.peer, user = %name, "login failed");
        let delay = s.shared.throttle.failed(addr, &name, Instant::now());
        tokio::time::sleep(delay).await;
        return Err(OpError::new(
            ErrorCode::AuthFailed,
            "unknown user or wrong password",
        ));
    };
    s.shared.throttle.succeeded(addr, &name);
    enter(s, &name).await?;
    tracing::info!(peer = %s.peer, user = %name, "logged in");
    let token = if s.wants_token {
        s.shared.tokens.issue(&name, credential, Instant::now())
    } else {
        None
    };
    let token_ttl = token
        .as_ref()
        .map(|_| whole_seconds(s.shared.tokens.policy().ttl));
    Ok(Reply::Login {
        user: name,
        cwd: s.cwd.display(),
        token,
        token_ttl,
    })
}

async fn with_token(s: &mut Session, name: String, token: String) -> Result<Reply, OpError> {
    let shared = Arc::clone(&s.shared);
    let n = name.clone();
    // Kept (the hash, not the token) so `logout` can end this token.
    let token_hash = blake3::hash(token.as_bytes());
    // Reading the users file (when it changed) is file-system work, so off the async threads.
    let verdict = blocking(move || {
        let credential = validate_name(&n)
            .ok()
            .and_then(|()| shared.users.get(&n))
            .map(|r| credential_of(&r.password));
        Ok(shared.tokens.redeem(&token, &n, credential, Instant::now()))
    })
    .await?;
    let left = match verdict {
        Ok(left) => left,
        Err(refusal) => {
            tracing::info!(peer = %s.peer, user = %name, "token login refused: {}", refusal.as_str());
            return Err(OpError::new(
                ErrorCode::TokenInvalid,
                "session token not valid (expired, revoked or unknown); log in with the password",
            ));
        }
    };
    enter(s, &name).await?;
    s.token_hash = Some(token_hash);
    tracing::info!(peer = %s.peer, user = %name, "logged in with a session token");
    Ok(Reply::Login {
        user: name,
        cwd: s.cwd.display(),
        token: None,
        token_ttl: Some(whole_seconds(left)),
    })
}

/// Seconds, rounded up: a sub-second TTL (tests use them) must not read as "already expired".
fn whole_seconds(d: std::time::Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}

/// Takes a session slot, opens the home and the usage accountant, and moves the session to
/// authenticated: what every successful login does, whatever proved who the user is.
async fn enter(s: &mut Session, name: &str) -> Result<(), OpError> {
    let max = s.shared.config.max_sessions_per_user;
    let slot = SessionCount::take(&s.shared.sessions, name, max).map_err(|open| {
        OpError::new(
            ErrorCode::Busy,
            format!("{name} already has {open} sessions open (the most allowed); close one"),
        )
    })?;
    let shared = Arc::clone(&s.shared);
    let n = name.to_owned();
    let user = blocking(move || {
        let root = &shared.root;
        let internal = |e: std::io::Error| OpError::Internal(format!("setting up {n}: {e}"));
        root.ensure_user_dirs(&n).map_err(internal)?;
        let home = Home::open(&root.home_dir(&n)).map_err(internal)?;
        let partials =
            cap_std::fs::Dir::open_ambient_dir(root.partials_dir(&n), cap_std::ambient_authority())
                .map_err(internal)?;
        shared
            .quota
            .forget_if_stale(&n, shared.config.remeasure_after);
        let usage = match shared.quota.get(&n) {
            Some(u) => u,
            None => {
                let measured =
                    quota::measure(&root.home_dir(&n), &root.partials_dir(&n)).map_err(internal)?;
                shared.quota.get_or_insert(&n, measured)
            }
        };
        Ok(User {
            name: n,
            home: Arc::new(home),
            partials: Arc::new(partials),
            usage,
            slot,
        })
    })
    .await?;
    s.login(user);
    s.cwd = VPath::root();
    Ok(())
}
