//! `login`: checks the password (argon2id, on the blocking pool), opens the home and the
//! user's usage accountant. Unknown users and wrong passwords get the same answer after about
//! the same time, plus a delay that grows with repeated failures from the same address or for
//! the same user, and a lockout that ends by itself ([`crate::throttle`]).

use std::sync::Arc;
use std::time::Instant;

use ferry_proto::{ErrorCode, Reply};

use super::{OpError, blocking};
use crate::home::{Home, VPath};
use crate::quota;
use crate::session::{Session, User};
use crate::throttle::{SessionCount, Verdict};
use crate::users::{validate_name, verify_dummy, verify_password};

pub async fn run(s: &mut Session, name: String, password: String) -> Result<Reply, OpError> {
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
    let ok = blocking(move || {
        let record = validate_name(&n).ok().and_then(|()| shared.users.get(&n));
        Ok(match record {
            Some(r) => verify_password(&password, &r.password),
            None => {
                verify_dummy(&password);
                false
            }
        })
    })
    .await?;
    drop(permit);
    if !ok {
        tracing::info!(peer = %s.peer, user = %name, "login failed");
        let delay = s.shared.throttle.failed(addr, &name, Instant::now());
        tokio::time::sleep(delay).await;
        return Err(OpError::new(
            ErrorCode::AuthFailed,
            "unknown user or wrong password",
        ));
    }
    s.shared.throttle.succeeded(addr, &name);
    let max = s.shared.config.max_sessions_per_user;
    let slot = SessionCount::take(&s.shared.sessions, &name, max).map_err(|open| {
        OpError::new(
            ErrorCode::Busy,
            format!("{name} already has {open} sessions open (the most allowed); close one"),
        )
    })?;
    let shared = Arc::clone(&s.shared);
    let n = name.clone();
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
    tracing::info!(peer = %s.peer, user = %name, "logged in");
    s.login(user);
    s.cwd = VPath::root();
    Ok(Reply::Login {
        user: name,
        cwd: s.cwd.display(),
    })
}
