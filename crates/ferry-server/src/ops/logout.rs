//! `logout`: ends, on the server, the session token this session logged in with.

use ferry_proto::Reply;

use crate::session::Session;

pub fn run(s: &mut Session) -> Reply {
    let revoked = s
        .token_hash
        .take()
        .is_some_and(|hash| s.shared.tokens.revoke_hash(&hash));
    if revoked {
        tracing::info!(peer = %s.peer, "session token ended by logout");
    }
    Reply::Logout { revoked }
}
