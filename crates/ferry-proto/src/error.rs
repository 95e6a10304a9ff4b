//! Error codes on the wire, and the typed errors of decoding.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code. Clients match on these; the message beside them is
/// for people and may change. A client that meets a code it does not know must treat it as a
/// generic failure of that one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed: bad JSON, unknown op, a field of the wrong type, a body where
    /// none belongs.
    BadRequest,
    UnsupportedVersion,
    /// The command needs a logged-in session.
    AuthRequired,
    /// Unknown user or wrong password (deliberately the same code for both).
    AuthFailed,
    /// A session token that is not (or no longer) valid for this user: unknown, expired,
    /// revoked by a password change, or not even well-formed. Log in with the password.
    TokenInvalid,
    NotFound,
    AlreadyExists,
    NotADirectory,
    IsADirectory,
    DirectoryNotEmpty,
    PermissionDenied,
    /// The path is not acceptable at all: `..` past the home, NUL bytes, over-long names.
    InvalidPath,
    QuotaExceeded,
    /// A header or a declared body is larger than the limit.
    TooLarge,
    ChecksumMismatch,
    /// The server is at a limit (connections, sessions, a file being written) and said no
    /// rather than queueing; try again later.
    Busy,
    Timeout,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::BadRequest,
        ErrorCode::UnsupportedVersion,
        ErrorCode::AuthRequired,
        ErrorCode::AuthFailed,
        ErrorCode::TokenInvalid,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::NotADirectory,
        ErrorCode::IsADirectory,
        ErrorCode::DirectoryNotEmpty,
        ErrorCode::PermissionDenied,
        ErrorCode::InvalidPath,
        ErrorCode::QuotaExceeded,
        ErrorCode::TooLarge,
        ErrorCode::ChecksumMismatch,
        ErrorCode::Busy,
        ErrorCode::Timeout,
        ErrorCode::Internal,
    ];

    /// The code as written on the wire, e.g. `not_found`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::AuthRequired => "auth_required",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::NotADirectory => "not_a_directory",
            ErrorCode::IsADirectory => "is_a_directory",
            ErrorCode::DirectoryNotEmpty => "directory_not_empty",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::InvalidPath => "invalid_path",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::ChecksumMismatch => "checksum_mismatch",
            ErrorCode::Busy => "busy",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as carried in a reply: `{"ok":false,"code":"not_found","message":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
        }
    }
}

/// Everything that can go wrong turning bytes into frames and frames into messages.
///
/// Errors marked *fatal* leave the byte stream without a trustworthy frame boundary, so the
/// connection must be closed after reporting them; the others concern one frame only, whose
/// body (if any) the decoder still skips exactly, so the peer can go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Fatal: a header length of zero (a header is a JSON object, never empty).
    #[error("header length is zero")]
    EmptyHeader,
    /// Fatal: the declared header length is over the limit; nothing was buffered for it.
    #[error("header length {len} exceeds the limit of {max} bytes")]
    HeaderTooLarge { len: u32, max: u32 },
    /// Fatal: the header bytes are not UTF-8.
    #[error("header is not valid UTF-8 (at byte {valid_up_to})")]
    InvalidUtf8 { valid_up_to: usize },
    /// Fatal: the header is not JSON.
    #[error("header is not valid JSON: {0}")]
    InvalidJson(String),
    /// Fatal: the header is JSON but not an object.
    #[error("header must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// Fatal: `body_len` is missing a sane value (negative, fractional, not a number, too big).
    #[error("body_len must be a non-negative integer below 2^64, got {0}")]
    BadBodyLen(String),
    /// Fatal: the stream ended inside a frame.
    #[error("stream ended inside a frame ({0})")]
    Truncated(&'static str),
    /// The `id` field is missing or not a non-negative integer.
    #[error("id must be a non-negative integer, got {0}")]
    BadId(String),
    /// The `op` field names no operation this version knows.
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    /// A field is missing or has the wrong type.
    #[error("malformed {op} message: {detail}")]
    Malformed { op: String, detail: String },
    /// The declared body does not fit the operation (a body where none belongs, or a length
    /// that disagrees with the declared size and offset).
    #[error("{0}")]
    BodyMismatch(String),
    /// A declared size is over the configured limit.
    #[error("declared size {size} exceeds the limit of {max} bytes")]
    TooLarge { size: u64, max: u64 },
}

impl ProtoError {
    /// Whether the stream can no longer be trusted after this error.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ProtoError::EmptyHeader
                | ProtoError::HeaderTooLarge { .. }
                | ProtoError::InvalidUtf8 { .. }
                | ProtoError::InvalidJson(_)
                | ProtoError::NotAnObject(_)
                | ProtoError::BadBodyLen(_)
                | ProtoError::Truncated(_)
        )
    }

    /// The wire code a server answers this error with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtoError::HeaderTooLarge { .. } | ProtoError::TooLarge { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::BadRequest,
        }
    }

    pub fn to_wire(&self) -> WireError {
        WireError::new(self.code(), self.to_string())
    }
}
