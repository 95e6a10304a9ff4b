//! One module per command. Each takes the session (and the connection, if it moves a body)
//! and returns the typed reply or an [`OpError`]; the session turns that into a frame.

use std::io;

use ferry_proto::{ErrorCode, WireError};

use crate::home::{VPath, io_code};

pub mod batch;
pub mod bench;
pub mod cd;
pub mod get;
pub mod hello;
pub mod login;
pub mod logout;
pub mod ls;
pub mod mkdir;
pub mod mv;
pub mod put;
pub mod put_hash;
pub mod pwd;
pub mod quit;
pub mod resume;
pub mod rm;
pub mod stat;

/// Why one request failed. Typed inside the server; [`OpError::into_wire`] picks the stable
/// code and a message that never carries server-internal detail.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Already decided what the client is told.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A file-system call on `path` (the client's virtual path) failed.
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    /// A server-side failure unrelated to the request's path.
    #[error("{0}")]
    Internal(String),
}

impl OpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        OpError::Wire(WireError::new(code, message))
    }

    pub fn io(path: &VPath, source: io::Error) -> Self {
        OpError::Io {
            path: path.display(),
            source,
        }
    }

    /// The error as the client sees it; internal details are logged here, not sent.
    pub fn into_wire(self) -> WireError {
        match self {
            OpError::Wire(w) => w,
            OpError::Io { path, source } => {
                let code = io_code(&source);
                let what = match code {
                    ErrorCode::NotFound => "no such file or directory",
                    ErrorCode::AlreadyExists => "already exists",
                    ErrorCode::NotADirectory => "not a directory",
                    ErrorCode::IsADirectory => "is a directory",
                    ErrorCode::DirectoryNotEmpty => "directory not empty",
                    ErrorCode::PermissionDenied => "permission denied",
                    ErrorCode::InvalidPath => "invalid path",
                    ErrorCode::QuotaExceeded => "no space left on the server",
                    _ => {
                        tracing::error!(path, "internal error: {source}");
                        return WireError::new(ErrorCode::Internal, "internal server error");
                    }
                };
                WireError::new(code, format!("{path}: {what}"))
            }
            OpError::Internal(detail) => {
                tracing::error!("internal error: {detail}");
                WireError::new(ErrorCode::Internal, "internal server error")
            }
        }
    }
}

/// Runs file-system work on the blocking pool, off the async worker threads.
pub async fn blocking<T, F>(f: F) -> Result<T, OpError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, OpError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(OpError::Internal(format!("blocking task failed: {e}"))))
}
