//! `put_hash`: the trailer of a `put` sent without a hash (feature `hash-after-body`).
//!
//! Such a put must be followed directly, after its last body byte, by
//! `{"id":<the put's id>,"op":"put_hash","hash":"blake3:…"}` with no body. The put reads it
//! before the rename and verifies the whole file against it; the put's reply answers both
//! frames. If the put failed before it got that far (a refused target, a full quota, a disk
//! error), the session loop reads the trailer and drops it: the put's error reply already
//! said everything.
//!
//! Any other frame in the trailer's place fails the put (`bad_request`, partial removed) and
//! is then handled as the frame it is, with its own reply: its header was whole, so the frame
//! boundaries are intact and the connection goes on. A `put_hash` met anywhere else is a
//! request of its own, answered with `bad_request`.

use ferry_proto::{Digest, ErrorCode, Limits, Request, RequestFrame};
use tokio_util::sync::CancellationToken;

use super::OpError;
use crate::conn::{Conn, ConnError};

/// What came where a put's `put_hash` was due.
#[derive(Debug)]
pub enum Trailer {
    /// The put's own `put_hash`.
    Hash(Digest),
    /// Another frame; it was put back on the connection to be handled next. Says what it was.
    Missing(String),
    /// The peer closed the connection cleanly (or the server is shutting down) first.
    Closed,
}

/// Reads the trailer due on `conn` (see [`Conn::expect_trailer`]). It is awaited like the
/// next request: within the idle timeout, since the client may still be hashing.
pub async fn read(
    conn: &mut Conn,
    limits: &Limits,
    shutdown: &CancellationToken,
) -> Result<Trailer, ConnError> {
    let Some(id) = conn.take_trailer_due() else {
        return Ok(Trailer::Missing("no put_hash is due".into()));
    };
    let Some(header) = conn.next_header(shutdown).await? else {
        return Ok(Trailer::Closed);
    };
    let why = match RequestFrame::from_header(header.clone(), limits) {
        Ok(RequestFrame {
            id: got,
            request: Request::PutHash { hash },
            ..
        }) if got == id => return Ok(Trailer::Hash(hash)),
        Ok(RequestFrame {
            id: got,
            request: Request::PutHash { .. },
            ..
        }) => format!("a put_hash for id {got} came where the put_hash of put {id} was due"),
        Ok(f) => format!(
            "a {} request came where the put_hash of put {id} was due",
            f.request.op()
        ),
        Err(r) => format!(
            "a frame that is not a valid put_hash ({}) came where the put_hash of put {id} \
             was due",
            r.error
        ),
    };
    conn.put_back(header);
    Ok(Trailer::Missing(why))
}

/// A `put_hash` that is not the trailer of a put without hash.
pub fn stray() -> OpError {
    OpError::new(
        ErrorCode::BadRequest,
        "put_hash is only allowed right after the body of a put sent without hash",
    )
}
