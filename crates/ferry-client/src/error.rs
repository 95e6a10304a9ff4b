//! The client's typed errors.

use ferry_proto::{Digest, ErrorCode, ProtoError, WireError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection or a local file failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The server sent bytes that are not valid protocol.
    #[error("protocol error from server: {0}")]
    Proto(#[from] ProtoError),
    /// The server answered the request with an error.
    #[error("{0}")]
    Remote(#[from] WireError),
    /// A transfer's bytes did not hash to what the other side declared.
    #[error("{path}: checksum mismatch: expected {expected}, got {actual}")]
    ChecksumMismatch {
        path: String,
        expected: Digest,
        actual: Digest,
    },
    /// The server answered something that does not fit the request.
    #[error("unexpected reply from server: {0}")]
    Unexpected(String),
    /// The server closed the connection.
    #[error("server closed the connection")]
    Closed,
    /// The TLS handshake failed.
    #[error("{0}")]
    Tls(String),
    /// The server's certificate differs from the one pinned for it: possibly an attack.
    #[error("{0}")]
    CertificateChanged(String),
    /// A local precondition failed (e.g. a directory where a file is expected).
    #[error("{0}")]
    Local(String),
    /// An item of a batch that the connection's failure (described here) left unfinished.
    /// Whatever of it arrived is kept for a resume.
    #[error("interrupted: {0}")]
    Interrupted(String),
}

impl ClientError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ClientError::Io {
            context: context.into(),
            source,
        }
    }

    /// A local file's failure that leaves the connection, if any, usable: reported as a local
    /// problem (exit code 1), not as the network's.
    pub(crate) fn local_file(path: &std::path::Path, e: std::io::Error) -> Self {
        ClientError::Local(format!("{}: {e}", path.display()))
    }

    /// The wire error code, when the server answered with one.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Remote(w) => Some(w.code),
            ClientError::ChecksumMismatch { .. } => Some(ErrorCode::ChecksumMismatch),
            _ => None,
        }
    }

    /// The [`ClientError::Interrupted`] that the items a failed connection left unfinished
    /// carry.
    pub fn interrupted(cause: &ClientError) -> Self {
        match cause {
            ClientError::Interrupted(why) => ClientError::Interrupted(why.clone()),
            cause => ClientError::Interrupted(cause.to_string()),
        }
    }

    /// Whether the connection can still be used after this error.
    pub fn connection_usable(&self) -> bool {
        matches!(
            self,
            ClientError::Remote(_) | ClientError::ChecksumMismatch { .. } | ClientError::Local(_)
        )
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
