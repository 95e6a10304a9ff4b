//! `hello`: version and feature negotiation; tells the client its address as we see it.

use ferry_proto::message::{FEATURES, SESSION_TOKEN};
use ferry_proto::{ErrorCode, PROTOCOL_VERSION, Reply};

use super::OpError;
use crate::session::Session;

pub fn run(s: &mut Session, version: u32, features: &[String]) -> Result<Reply, OpError> {
    if version == 0 {
        return Err(OpError::new(
            ErrorCode::UnsupportedVersion,
            format!("protocol version 0 does not exist; this server speaks {PROTOCOL_VERSION}"),
        ));
    }
    // A server with tokens turned off does not offer them, so clients do not keep trying.
    let tokens = s.shared.tokens.policy().enabled();
    let shared: Vec<String> = FEATURES
        .iter()
        .filter(|f| tokens || **f != SESSION_TOKEN)
        .filter(|f| features.iter().any(|c| c == *f))
        .map(|f| (*f).to_owned())
        .collect();
    s.wants_token = shared.iter().any(|f| f == SESSION_TOKEN);
    Ok(Reply::Hello {
        version: version.min(PROTOCOL_VERSION),
        features: shared,
        server: s.shared.config.server_name.clone(),
        peer: s.peer.to_string(),
        max_header: s.shared.config.limits.max_header,
    })
}
