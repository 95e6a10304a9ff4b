//! One module per command. Each exposes clap argument types and a `run`-style function
//! returning the process exit code.

pub mod bench;
pub mod client;
pub mod demo;
pub mod serve;
pub mod udp;
pub mod user;

/// Writes one line of command output to stdout (see `outln!`). A reader that has gone ends
/// the process quietly, with success: what the command did is done, only its report is unread.
pub fn print_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(line).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("ferry: writing to stdout: {e}");
        std::process::exit(i32::from(exit::FAILURE));
    }
}

/// Exit codes, documented in README.md:
/// 0 success, 1 generic failure, 2 usage error (clap's own), 3 connection/network failure,
/// 4 authentication failure, 5 remote error (not found, permission, …), 6 verification failure,
/// 7 TLS failure (handshake failed, or the server's certificate changed).
pub mod exit {
    pub const FAILURE: u8 = 1;
    pub const NETWORK: u8 = 3;
    pub const AUTH: u8 = 4;
    pub const REMOTE: u8 = 5;
    pub const VERIFY: u8 = 6;
    pub const TLS: u8 = 7;
}

/// Picks the exit code for an error that reached `main`.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(client) = cause.downcast_ref::<ferry_client::ClientError>() {
            return exit_code_for_client(client);
        }
        if let Some(wire) = cause.downcast_ref::<ferry_proto::WireError>() {
            return exit_code_for_wire(wire.code);
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut | UnexpectedEof
            ) {
                return exit::NETWORK;
            }
        }
    }
    exit::FAILURE
}

/// The exit code for a client error.
pub fn exit_code_for_client(err: &ferry_client::ClientError) -> u8 {
    use ferry_client::ClientError;
    match err {
        ClientError::Remote(w) => exit_code_for_wire(w.code),
        ClientError::ChecksumMismatch { .. } => exit::VERIFY,
        ClientError::Io { .. }
        | ClientError::Closed
        | ClientError::Proto(_)
        | ClientError::Interrupted(_) => exit::NETWORK,
        ClientError::Tls(_) | ClientError::CertificateChanged(_) => exit::TLS,
        ClientError::Unexpected(_) | ClientError::Local(_) => exit::FAILURE,
    }
}

fn exit_code_for_wire(code: ferry_proto::ErrorCode) -> u8 {
    use ferry_proto::ErrorCode;
    match code {
        ErrorCode::AuthFailed | ErrorCode::AuthRequired | ErrorCode::TokenInvalid => exit::AUTH,
        ErrorCode::ChecksumMismatch => exit::VERIFY,
        _ => exit::REMOTE,
    }
}
